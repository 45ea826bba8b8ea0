/*
 * PF-side VF settings in batches over one NETLINK_ROUTE socket.
 *
 * The caller fills one vfset_vf_t per VF: `mask` says which settings to apply (VFSET_MAC ...),
 * the other fields carry their values.  vfset_apply() sends one RTM_SETLINK per VF carrying all
 * of that VF's settings in one IFLA_VF_INFO, many messages per sendmsg(), then collects the
 * ACKs.  The kernel applies the attributes of one IFLA_VF_INFO in its own fixed order and
 * stops at the first one a driver refuses, so a failed message says neither which setting
 * failed nor which were applied: for such a VF every requested setting is then sent again in a
 * message of its own (re-applying a setting is harmless), and `err` holds the outcome of each.
 * After vfset_apply() every setting the driver accepts is applied and every refusal is
 * reported, whatever the order.
 *
 * VLAN: 802.1Q goes as IFLA_VF_VLAN (what every driver knows); another protocol as
 * IFLA_VF_VLAN_LIST { IFLA_VF_VLAN_INFO struct ifla_vf_vlan_info } with the protocol in
 * network byte order.  Drivers that only know 802.1Q refuse that with EPROTONOSUPPORT.
 *
 * Before sending anything vfset_apply() validates every entry (-EINVAL, `bad` names the
 * field) and, when the kernel reports the PF's VF count (IFLA_NUM_VF: devices on a bus, such
 * as PCI PFs and netdevsim), checks the VF indexes against it (-ERANGE, `bad` = VFSET_BAD_VF).
 * A link without a VF count (veth, dummy) is not range-checked: its driver refuses each setting.
 *
 * Functions return a negative errno on failure and never abort.  A socket passed in is used by
 * one call at a time; it must be a bound NETLINK_ROUTE socket in the PF's network namespace.
 */
#ifndef NODEAGENT_VFSET_H
#define NODEAGENT_VFSET_H

#include <stddef.h>
#include <stdint.h>

/* Settings, in the order of vfset_vf_t.err. */
enum {
    VFSET_S_MAC = 0,
    VFSET_S_VLAN,       /* vlan + qos + vlan_proto */
    VFSET_S_SPOOFCHK,
    VFSET_S_TRUST,
    VFSET_S_RATE,       /* min_tx_rate + max_tx_rate (Mb/s) */
    VFSET_S_LINK_STATE, /* 0 auto, 1 enable, 2 disable */
    VFSET_NSETTINGS
};

#define VFSET_MAC (1u << VFSET_S_MAC)
#define VFSET_VLAN (1u << VFSET_S_VLAN)
#define VFSET_SPOOFCHK (1u << VFSET_S_SPOOFCHK)
#define VFSET_TRUST (1u << VFSET_S_TRUST)
#define VFSET_RATE (1u << VFSET_S_RATE)
#define VFSET_LINK_STATE (1u << VFSET_S_LINK_STATE)
#define VFSET_ALL ((1u << VFSET_NSETTINGS) - 1)

/* vfset_vf_t.bad: which field made vfset_apply() refuse the batch. */
#define VFSET_BAD_VF (1u << 16)   /* index out of range for the PF, or a duplicate */
#define VFSET_BAD_MASK (1u << 17) /* unknown bit in mask */

/* err[]: 0 applied, > 0 the errno the kernel answered, VFSET_NOT_SENT not requested or not
 * attempted (the exchange failed before its answer arrived). */
#define VFSET_NOT_SENT (-1)

/* The most entries one vfset_apply() call takes. */
#define VFSET_MAX_VFS 65536

typedef struct {
    /* in */
    uint32_t vf;
    uint32_t mask;
    uint8_t mac[6];
    uint16_t vlan;       /* 0..4095 (0: no VLAN) */
    uint8_t qos;         /* 0..7 */
    uint8_t spoofchk;    /* 0 / 1 */
    uint8_t trust;       /* 0 / 1 */
    uint16_t vlan_proto; /* host byte order: 0x8100 (802.1Q) or 0x88a8 (802.1ad) */
    uint32_t min_tx_rate;
    uint32_t max_tx_rate;
    uint32_t link_state;
    /* out */
    int32_t err[VFSET_NSETTINGS];
    uint32_t bad;
} vfset_vf_t;

/* Open a NETLINK_ROUTE socket in the caller's network namespace: fd, or -errno. */
int vfset_open(void);

/* Apply the batch to the PF with interface index `ifindex` over `fd` (or, if fd < 0, over a
 * socket of its own, closed before returning).  Returns the number of VFs with at least one
 * refused setting (0: everything applied), or -errno: -EINVAL / -ERANGE for bad input
 * (nothing sent), -ENODEV when there is no such link, another -errno when the socket failed
 * (err[] then tells what had been answered). */
int vfset_apply(int fd, uint32_t ifindex, vfset_vf_t *vfs, size_t n);

/* The PF's VF count as the kernel reports it: >= 0, -ENOENT when the link reports none
 * (not on a bus), -ENODEV when there is no such link, another -errno on socket failure. */
int vfset_num_vfs(int fd, uint32_t ifindex);

/* Encode, without sending, the RTM_SETLINK message vfset_apply() sends for vfs[0] with the
 * settings in `mask` (a subset of vfs[0].mask), sequence number `seq`, into buf.  Returns the
 * message length (written only if it fits in cap), or -EINVAL. */
int vfset_encode(uint32_t ifindex, const vfset_vf_t *vf, uint32_t mask, uint32_t seq,
                 uint8_t *buf, size_t cap);

#endif /* NODEAGENT_VFSET_H */
