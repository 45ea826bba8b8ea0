/* PF-side VF settings in batches over one NETLINK_ROUTE socket: see vfset.h. */
#define _GNU_SOURCE
#include "vfset.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define WINDOW 64          /* messages per sendmsg(); their ACKs fit any sane receive buffer */
#define MSG_MAX 256        /* one encoded message (the largest is ~180 bytes) */
#define ACK_SLOT 2048      /* receive buffer per datagram while collecting ACKs */
#define REPLY_TIMEOUT_MS 10000
#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8

/* A message to send: the entry at `pos` with the settings in `mask`; `err` its answer. */
struct job {
    uint32_t pos;
    uint32_t mask;
    int32_t err;
};

/* -- encoding ------------------------------------------------------------------------------ */

struct enc {
    uint8_t buf[MSG_MAX];
    size_t len;
};

static void *enc_put(struct enc *e, size_t len)
{
    void *p = e->buf + e->len; /* callers stay far below MSG_MAX: see vfset_encode() */
    memset(p, 0, NLA_ALIGN(len));
    e->len += NLA_ALIGN(len);
    return p;
}

static void enc_attr(struct enc *e, uint16_t type, const void *data, size_t len)
{
    struct nlattr *nla = enc_put(e, NLA_HDRLEN);
    nla->nla_type = type;
    nla->nla_len = (uint16_t)(NLA_HDRLEN + len);
    memcpy(enc_put(e, len), data, len);
}

static size_t enc_nest_begin(struct enc *e, uint16_t type)
{
    size_t at = e->len;
    struct nlattr *nla = enc_put(e, NLA_HDRLEN);
    nla->nla_type = type;
    return at;
}

static void enc_nest_end(struct enc *e, size_t at)
{
    struct nlattr *nla = (struct nlattr *)(e->buf + at);
    nla->nla_len = (uint16_t)(e->len - at);
}

static void encode_vlan(struct enc *e, const vfset_vf_t *vf)
{
    if (vf->vlan_proto == ETH_P_8021Q_) {
        struct ifla_vf_vlan v = {.vf = vf->vf, .vlan = vf->vlan, .qos = vf->qos};
        enc_attr(e, IFLA_VF_VLAN, &v, sizeof v);
        return;
    }
    /* sizeof(struct ifla_vf_vlan_info) is 16 (two bytes of tail padding): the kernel checks
     * the attribute is at least that long. */
    struct ifla_vf_vlan_info info;
    memset(&info, 0, sizeof info);
    info.vf = vf->vf;
    info.vlan = vf->vlan;
    info.qos = vf->qos;
    info.vlan_proto = htons(vf->vlan_proto);
    size_t list = enc_nest_begin(e, IFLA_VF_VLAN_LIST);
    enc_attr(e, IFLA_VF_VLAN_INFO, &info, sizeof info);
    enc_nest_end(e, list);
}

static void encode(struct enc *e, uint32_t ifindex, const vfset_vf_t *vf, uint32_t mask,
                   uint32_t seq)
{
    e->len = 0;
    struct nlmsghdr *nlh = enc_put(e, NLMSG_HDRLEN);
    nlh->nlmsg_type = RTM_SETLINK;
    nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    nlh->nlmsg_seq = seq;
    struct ifinfomsg *ifi = enc_put(e, sizeof *ifi);
    ifi->ifi_family = AF_UNSPEC;
    ifi->ifi_index = (int)ifindex;

    size_t list = enc_nest_begin(e, IFLA_VFINFO_LIST);
    size_t info = enc_nest_begin(e, IFLA_VF_INFO);
    if (mask & VFSET_MAC) {
        struct ifla_vf_mac m;
        memset(&m, 0, sizeof m);
        m.vf = vf->vf;
        memcpy(m.mac, vf->mac, sizeof vf->mac);
        enc_attr(e, IFLA_VF_MAC, &m, sizeof m);
    }
    if (mask & VFSET_VLAN)
        encode_vlan(e, vf);
    if (mask & VFSET_SPOOFCHK) {
        struct ifla_vf_spoofchk s = {.vf = vf->vf, .setting = vf->spoofchk};
        enc_attr(e, IFLA_VF_SPOOFCHK, &s, sizeof s);
    }
    if (mask & VFSET_TRUST) {
        struct ifla_vf_trust t = {.vf = vf->vf, .setting = vf->trust};
        enc_attr(e, IFLA_VF_TRUST, &t, sizeof t);
    }
    if (mask & VFSET_RATE) {
        struct ifla_vf_rate r = {
            .vf = vf->vf, .min_tx_rate = vf->min_tx_rate, .max_tx_rate = vf->max_tx_rate};
        enc_attr(e, IFLA_VF_RATE, &r, sizeof r);
    }
    if (mask & VFSET_LINK_STATE) {
        struct ifla_vf_link_state l = {.vf = vf->vf, .link_state = vf->link_state};
        enc_attr(e, IFLA_VF_LINK_STATE, &l, sizeof l);
    }
    enc_nest_end(e, info);
    enc_nest_end(e, list);
    nlh->nlmsg_len = (uint32_t)e->len;
}

/* -- validation ---------------------------------------------------------------------------- */

static uint32_t invalid_fields(const vfset_vf_t *vf)
{
    uint32_t bad = 0;
    if (vf->mask & ~VFSET_ALL)
        bad |= VFSET_BAD_MASK;
    if (vf->vf >= INT_MAX) /* the kernel's own limit */
        bad |= VFSET_BAD_VF;
    if ((vf->mask & VFSET_MAC) && (vf->mac[0] & 1)) /* multicast or broadcast */
        bad |= VFSET_MAC;
    if ((vf->mask & VFSET_VLAN) &&
        (vf->vlan > 4095 || vf->qos > 7 ||
         (vf->vlan_proto != ETH_P_8021Q_ && vf->vlan_proto != ETH_P_8021AD_)))
        bad |= VFSET_VLAN;
    if ((vf->mask & VFSET_SPOOFCHK) && vf->spoofchk > 1)
        bad |= VFSET_SPOOFCHK;
    if ((vf->mask & VFSET_TRUST) && vf->trust > 1)
        bad |= VFSET_TRUST;
    if ((vf->mask & VFSET_RATE) && vf->max_tx_rate && vf->min_tx_rate > vf->max_tx_rate)
        bad |= VFSET_RATE;
    if ((vf->mask & VFSET_LINK_STATE) && vf->link_state > IFLA_VF_LINK_STATE_DISABLE)
        bad |= VFSET_LINK_STATE;
    return bad;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Flags every entry whose VF index another entry also names; returns how many. */
static int flag_duplicates(vfset_vf_t *vfs, size_t n)
{
    if (n < 2)
        return 0;
    uint64_t *keys = malloc(n * sizeof *keys);
    if (keys == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        keys[i] = (uint64_t)vfs[i].vf << 32 | i;
    qsort(keys, n, sizeof *keys, cmp_u64);
    int dups = 0;
    for (size_t i = 1; i < n; i++) {
        if (keys[i] >> 32 == keys[i - 1] >> 32) {
            vfs[(uint32_t)keys[i - 1]].bad |= VFSET_BAD_VF;
            vfs[(uint32_t)keys[i]].bad |= VFSET_BAD_VF;
            dups++;
        }
    }
    free(keys);
    return dups;
}

/* -- socket I/O ---------------------------------------------------------------------------- */

static uint32_t next_seq(uint32_t count)
{
    static uint32_t counter;
    uint32_t start = __atomic_load_n(&counter, __ATOMIC_RELAXED);
    if (start == 0) { /* away from the small numbers other clients of a shared socket use */
        uint32_t seed = 0x40000000u | ((uint32_t)time(NULL) << 12 & 0x3ffff000u);
        __atomic_compare_exchange_n(&counter, &start, seed, 0, __ATOMIC_RELAXED,
                                    __ATOMIC_RELAXED);
    }
    return __atomic_fetch_add(&counter, count, __ATOMIC_RELAXED);
}

int vfset_open(void)
{
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0)
        return -errno;
    struct sockaddr_nl local = {.nl_family = AF_NETLINK};
    if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    int one = 1, rcvbuf = 1 << 20;
    /* Errors then carry only the failed message's header; both are best effort. */
    setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    return fd;
}

static int send_all(int fd, const uint8_t *buf, size_t len)
{
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    for (;;) {
        ssize_t sent = sendto(fd, buf, len, 0, (struct sockaddr *)&kernel, sizeof kernel);
        if (sent >= 0)
            return 0;
        if (errno != EINTR)
            return -errno;
    }
}

static int wait_readable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    for (;;) {
        int rc = poll(&p, 1, REPLY_TIMEOUT_MS);
        if (rc > 0)
            return 0;
        if (rc == 0)
            return -ETIMEDOUT;
        if (errno != EINTR)
            return -errno;
    }
}

/* Records the ACKs in one datagram for jobs[0..count) sent with seq base..base+count-1;
 * returns how many it recorded. */
static int take_acks(const uint8_t *data, size_t len, struct job *jobs, uint32_t count,
                     uint32_t base)
{
    int taken = 0;
    const struct nlmsghdr *nlh = (const struct nlmsghdr *)data;
    int left = (int)len; /* signed: NLMSG_NEXT may step past the end */
    for (; NLMSG_OK(nlh, left); nlh = NLMSG_NEXT(nlh, left)) {
        uint32_t k = nlh->nlmsg_seq - base;
        if (nlh->nlmsg_type != NLMSG_ERROR || k >= count ||
            nlh->nlmsg_len < NLMSG_LENGTH(sizeof(int)))
            continue; /* not ours: another client of a shared socket, a notification */
        const struct nlmsgerr *e = NLMSG_DATA(nlh);
        if (jobs[k].err == VFSET_NOT_SENT) {
            jobs[k].err = -e->error; /* 0 or a positive errno */
            taken++;
        }
    }
    return taken;
}

/* Sends jobs[0..count) (at most WINDOW) in one sendmsg and collects their ACKs. */
static int run_window(int fd, uint32_t ifindex, const vfset_vf_t *vfs, struct job *jobs,
                      uint32_t count, uint8_t *out, uint8_t *slots)
{
    uint32_t base = next_seq(count);
    size_t len = 0;
    struct enc e;
    for (uint32_t k = 0; k < count; k++) {
        encode(&e, ifindex, &vfs[jobs[k].pos], jobs[k].mask, base + k);
        memcpy(out + len, e.buf, e.len);
        len += e.len;
        jobs[k].err = VFSET_NOT_SENT;
    }
    int rc = send_all(fd, out, len);
    if (rc < 0)
        return rc;

    struct mmsghdr msgs[WINDOW];
    struct iovec iov[WINDOW];
    uint32_t answered = 0;
    while (answered < count) {
        rc = wait_readable(fd);
        if (rc < 0)
            return rc;
        unsigned vlen = count - answered;
        for (unsigned i = 0; i < vlen; i++) {
            iov[i].iov_base = slots + (size_t)i * ACK_SLOT;
            iov[i].iov_len = ACK_SLOT;
            memset(&msgs[i], 0, sizeof msgs[i]);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int got = recvmmsg(fd, msgs, vlen, MSG_DONTWAIT, NULL);
        if (got < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -errno; /* ENOBUFS: ACKs were dropped, their outcome is unknown */
        }
        for (int i = 0; i < got; i++)
            answered += (uint32_t)take_acks(iov[i].iov_base, msgs[i].msg_len, jobs,
                                            count, base);
    }
    return 0;
}

static int run_jobs(int fd, uint32_t ifindex, const vfset_vf_t *vfs, struct job *jobs,
                    size_t njobs)
{
    if (njobs == 0)
        return 0;
    uint8_t *out = malloc((size_t)WINDOW * MSG_MAX + (size_t)WINDOW * ACK_SLOT);
    if (out == NULL)
        return -ENOMEM;
    int rc = 0;
    for (size_t at = 0; at < njobs && rc == 0; at += WINDOW) {
        uint32_t count = (uint32_t)(njobs - at < WINDOW ? njobs - at : WINDOW);
        rc = run_window(fd, ifindex, vfs, jobs + at, count, out,
                        out + (size_t)WINDOW * MSG_MAX);
    }
    free(out);
    return rc;
}

/* -- VF count ------------------------------------------------------------------------------ */

static int find_num_vfs(const struct nlmsghdr *nlh)
{
    if (nlh->nlmsg_len < NLMSG_LENGTH(sizeof(struct ifinfomsg)))
        return -EPROTO;
    const struct ifinfomsg *ifi = NLMSG_DATA(nlh);
    const struct rtattr *rta = IFLA_RTA(ifi);
    int left = (int)IFLA_PAYLOAD(nlh);
    for (; RTA_OK(rta, left); rta = RTA_NEXT(rta, left)) {
        if (rta->rta_type == IFLA_NUM_VF && RTA_PAYLOAD(rta) >= sizeof(uint32_t)) {
            uint32_t n;
            memcpy(&n, RTA_DATA(rta), sizeof n);
            return n > INT_MAX ? INT_MAX : (int)n;
        }
    }
    return -ENOENT;
}

int vfset_num_vfs(int fd, uint32_t ifindex)
{
    if (ifindex == 0 || ifindex > INT_MAX)
        return -ENODEV;
    int own = fd < 0;
    if (own && (fd = vfset_open()) < 0)
        return fd;
    struct {
        struct nlmsghdr nlh;
        struct ifinfomsg ifi;
        struct nlattr mask_hdr;
        uint32_t mask;
    } req;
    memset(&req, 0, sizeof req);
    uint32_t seq = next_seq(1);
    req.nlh.nlmsg_len = sizeof req;
    req.nlh.nlmsg_type = RTM_GETLINK;
    req.nlh.nlmsg_flags = NLM_F_REQUEST;
    req.nlh.nlmsg_seq = seq;
    req.ifi.ifi_family = AF_UNSPEC;
    req.ifi.ifi_index = (int)ifindex;
    req.mask_hdr.nla_type = IFLA_EXT_MASK;
    req.mask_hdr.nla_len = NLA_HDRLEN + sizeof req.mask;
    req.mask = RTEXT_FILTER_VF | RTEXT_FILTER_SKIP_STATS;

    int rc = send_all(fd, (const uint8_t *)&req, sizeof req);
    uint8_t *buf = NULL;
    while (rc >= 0) {
        if ((rc = wait_readable(fd)) < 0)
            break;
        /* The reply holds every VF's settings: size the buffer by peeking. */
        ssize_t size = recv(fd, NULL, 0, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
        if (size < 0) {
            rc = (errno == EINTR || errno == EAGAIN) ? 0 : -errno;
            continue;
        }
        uint8_t *grown = realloc(buf, (size_t)size + 1);
        if (grown == NULL) {
            rc = -ENOMEM;
            break;
        }
        buf = grown;
        ssize_t len = recv(fd, buf, (size_t)size + 1, MSG_DONTWAIT);
        if (len < 0) {
            rc = (errno == EINTR || errno == EAGAIN) ? 0 : -errno;
            continue;
        }
        const struct nlmsghdr *nlh = (const struct nlmsghdr *)buf;
        int left = len > INT_MAX ? INT_MAX : (int)len;
        rc = 0;
        for (; NLMSG_OK(nlh, left); nlh = NLMSG_NEXT(nlh, left)) {
            if (nlh->nlmsg_seq != seq)
                continue;
            if (nlh->nlmsg_type == NLMSG_ERROR &&
                nlh->nlmsg_len >= NLMSG_LENGTH(sizeof(int))) {
                const struct nlmsgerr *e = NLMSG_DATA(nlh);
                rc = e->error ? e->error : -EPROTO;
            } else if (nlh->nlmsg_type == RTM_NEWLINK) {
                rc = find_num_vfs(nlh);
            } else {
                continue;
            }
            goto done;
        }
    }
done:
    free(buf);
    if (own)
        close(fd);
    return rc;
}

/* -- the batch ----------------------------------------------------------------------------- */

int vfset_encode(uint32_t ifindex, const vfset_vf_t *vf, uint32_t mask, uint32_t seq,
                 uint8_t *buf, size_t cap)
{
    if (vf == NULL || (mask & ~vf->mask) || invalid_fields(vf))
        return -EINVAL;
    struct enc e;
    encode(&e, ifindex, vf, mask, seq);
    if (buf != NULL && cap >= e.len)
        memcpy(buf, e.buf, e.len);
    return (int)e.len;
}

int vfset_apply(int fd, uint32_t ifindex, vfset_vf_t *vfs, size_t n)
{
    if (n > VFSET_MAX_VFS || (n > 0 && vfs == NULL))
        return -EINVAL;
    if (ifindex == 0 || ifindex > INT_MAX)
        return -ENODEV;
    int invalid = 0;
    for (size_t i = 0; i < n; i++) {
        for (int s = 0; s < VFSET_NSETTINGS; s++)
            vfs[i].err[s] = VFSET_NOT_SENT;
        vfs[i].bad = invalid_fields(&vfs[i]);
        invalid |= vfs[i].bad != 0;
    }
    int dups = flag_duplicates(vfs, n);
    if (dups < 0)
        return dups;
    if (invalid || dups)
        return -EINVAL;

    int own = fd < 0;
    if (own && (fd = vfset_open()) < 0)
        return fd;
    struct job *jobs = NULL;
    int rc = vfset_num_vfs(fd, ifindex);
    if (rc >= 0) {
        uint32_t num = (uint32_t)rc;
        for (size_t i = 0; i < n; i++) {
            if (vfs[i].vf >= num) {
                vfs[i].bad |= VFSET_BAD_VF;
                rc = -ERANGE;
            }
        }
    } else if (rc == -ENOENT) {
        rc = 0; /* no VF count to check against: the driver answers for itself */
    }
    if (rc < 0)
        goto out;

    /* Pass 1: one message per VF with all its settings. */
    /* Pass 1 takes at most n jobs, pass 2 at most n * VFSET_NSETTINGS after them. */
    jobs = malloc((n ? n : 1) * (VFSET_NSETTINGS + 1) * sizeof *jobs);
    if (jobs == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    size_t njobs = 0;
    for (size_t i = 0; i < n; i++)
        if (vfs[i].mask)
            jobs[njobs++] = (struct job){
                .pos = (uint32_t)i, .mask = vfs[i].mask, .err = VFSET_NOT_SENT};
    int io = run_jobs(fd, ifindex, vfs, jobs, njobs);

    /* Pass 2: a refused message of several settings is re-sent one setting per message. */
    size_t nsplit = 0;
    struct job *split = jobs + njobs;
    for (size_t k = 0; k < njobs; k++) {
        vfset_vf_t *vf = &vfs[jobs[k].pos];
        if (jobs[k].err == VFSET_NOT_SENT)
            continue;
        int several = __builtin_popcount(jobs[k].mask) > 1;
        for (int s = 0; s < VFSET_NSETTINGS; s++) {
            if (!(jobs[k].mask & (1u << s)))
                continue;
            if (jobs[k].err == 0 || !several)
                vf->err[s] = jobs[k].err;
            else
                split[nsplit++] = (struct job){
                    .pos = jobs[k].pos, .mask = 1u << s, .err = VFSET_NOT_SENT};
        }
    }
    if (io == 0)
        io = run_jobs(fd, ifindex, vfs, split, nsplit);
    for (size_t k = 0; k < nsplit; k++)
        vfs[split[k].pos].err[__builtin_ctz(split[k].mask)] = split[k].err;
    if (io < 0) {
        rc = io;
        goto out;
    }
    rc = 0;
    for (size_t i = 0; i < n; i++) {
        for (int s = 0; s < VFSET_NSETTINGS; s++) {
            if (vfs[i].err[s] > 0) {
                rc++;
                break;
            }
        }
    }
out:
    free(jobs);
    if (own)
        close(fd);
    return rc;
}
