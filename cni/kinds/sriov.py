"""SR-IOV VFs as sriov-cni attaches them, with its configuration fields unchanged.

``deviceID`` (the VF's PCI address; Multus passes it at top level or in runtimeConfig) names
the VF. A VF on a kernel driver is moved into the pod namespace and renamed; a VF bound to
vfio-pci or uio (DPDK) stays where it is. Either way the PF-side settings are applied (``mac``,
``vlan``/``vlanQoS``/``vlanProto``, ``spoofchk``, ``trust``, ``min_tx_rate``/``max_tx_rate``,
``link_state``) and IPAM runs. Everything DEL must undo is recorded before the first change,
so DEL restores the VF even after a crash, and when the pod's namespace is already gone (the
kernel then hands the VF back to the host namespace under some name: it is found by its PCI
address).
"""

from __future__ import annotations

import errno
import logging
import os
import time
import zlib
from dataclasses import asdict, dataclass, fields
from typing import Any

from cni import ipam, links, sbr
from cni.context import FIELDS, Context, Netlink, attachment_mac
from cni.kinds import FunctionHandler
from cni.protocol import CniRequest
from nodeagent import netns
from nodeagent.cnitypes.errors import INVALID_CONFIG, IO_FAILURE, CniError
from nodeagent.cnitypes.result import Interface, Result
from nodeagent.model import VfConfig, VfDesired
from nodeagent.netlink import RTEXT_FILTER_VF, vf_configs_from_msg
from nodeagent.vfbatch import MAX_RATE, VfBatchError, VfResult, VfUpdate
from nodeagent.vfstate import VfAttachment

log = logging.getLogger(__name__)

DPDK_DRIVERS = frozenset({"vfio-pci", "uio_pci_generic", "igb_uio"})
#: sriov-cni's spellings (any case) -> the settings' own.
VLAN_PROTOS = {"802.1q": "802.1Q", "802.1ad": "802.1ad"}
LINK_STATES = {"auto": "auto", "enable": "enable", "disable": "disable"}
ON_OFF = {"on": True, "off": False}
#: Errnos with which a driver refuses a value it does not support: a configuration problem.
REFUSALS = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.EPROTONOSUPPORT, errno.ERANGE})


@dataclass(frozen=True)
class SriovConf:
    """An sriov network configuration: which VF, the PF-side settings it asks for, and the
    MTU of the VF netdev in the pod (0: leave it)."""

    device_id: str
    pf_side: VfDesired
    mtu: int = 0
    sbr: sbr.SbrConf | None = None


def parse(request: CniRequest) -> SriovConf:
    """sriov-cni's fields with its meaning: ``vlan`` 0-4094 (``vlanQoS`` 0-7 and ``vlanProto``
    802.1q/802.1ad need it), ``spoofchk`` and ``trust`` "on"/"off", ``link_state``
    auto/enable/disable, ``min_tx_rate``/``max_tx_rate`` in Mb/s; values in any case."""
    c = request.config
    if request.runtime_config.get("deviceID"):
        device_id = FIELDS.pci_address(request.runtime_config["deviceID"],
                                       "runtimeConfig.deviceID")
    elif c.get("deviceID") is not None:
        device_id = FIELDS.pci_address(c["deviceID"], "deviceID")
    else:
        FIELDS.fail("deviceID", "is required: the VF's PCI address such as 0000:3b:02.1"
                    " (Multus passes the one the device plugin allocated)")
    vlan = FIELDS.integer(c, "vlan", "", 0, 4094)
    qos = FIELDS.integer(c, "vlanQoS", "", 0, 7)
    proto = FIELDS.choice(c, "vlanProto", "", VLAN_PROTOS, fold_case=True)
    if vlan is None and (qos or proto):
        FIELDS.fail("vlanQoS" if qos else "vlanProto", "needs 'vlan'")
    if vlan is None:
        qos = None  # "vlanQoS": 0 alone leaves the VLAN as it is
    min_rate = FIELDS.integer(c, "min_tx_rate", "", 0, MAX_RATE)
    max_rate = FIELDS.integer(c, "max_tx_rate", "", 0, MAX_RATE)
    if min_rate and max_rate and min_rate > max_rate:
        FIELDS.fail("min_tx_rate", f"{min_rate} is above max_tx_rate {max_rate}")
    return SriovConf(
        device_id=device_id,
        pf_side=VfDesired(
            mac=attachment_mac(request), vlan=vlan, qos=qos, vlan_proto=proto,
            spoofchk=FIELDS.choice(c, "spoofchk", "", ON_OFF, fold_case=True),
            trust=FIELDS.choice(c, "trust", "", ON_OFF, fold_case=True),
            min_tx_rate=min_rate, max_tx_rate=max_rate,
            link_state=FIELDS.choice(c, "link_state", "", LINK_STATES, fold_case=True),
        ),
        mtu=FIELDS.integer(c, "mtu", "", 0, 65535, default=0),
        sbr=sbr.option(c),
    )


# -- ADD --------------------------------------------------------------------------------------


def add(ctx: Context, request: CniRequest, conf: SriovConf) -> Result:
    pf, vf_index = _pf_of(ctx, conf.device_id)
    with ctx.vfs.lock(conf.device_id):
        holder = ctx.vfs.holder(conf.device_id)
        if holder is not None and (holder.container_id, holder.ifname) != (
                request.container_id, request.ifname):
            raise CniError(INVALID_CONFIG, f"VF {conf.device_id} is already attached to container"
                           f" {holder.container_id} as {holder.ifname}")
        attachment = _record(ctx, request, conf, pf, vf_index)
        if attachment.dpdk and conf.sbr is not None:
            raise CniError(INVALID_CONFIG, f"invalid network configuration: sbr: VF"
                           f" {conf.device_id} is bound to a DPDK driver, so the pod has no"
                           " interface to route by")
        ctx.vfs.save(attachment)
        allocated = False
        try:
            _apply_pf_side(ctx, attachment, conf)
            if attachment.dpdk:
                result = ipam.add(ctx, request)
                allocated = True
                mac = None
            else:
                result, mac = _move_into_pod(ctx, request, attachment, conf)
                allocated = True
        except BaseException:
            _undo(ctx, attachment, release=allocated, request=request)
            raise
    result.interfaces = [Interface(request.ifname, mac=mac, sandbox=request.netns,
                                   pci_id=conf.device_id)]
    for ip in result.ips:
        ip.interface = 0
    return result


def _pf_of(ctx: Context, device_id: str) -> tuple[str, int]:
    if not ctx.sysfs.pci_exists(device_id):
        raise CniError(INVALID_CONFIG, f"deviceID {device_id}: no such PCI device")
    pf = ctx.sysfs.pci_physfn(device_id)
    if pf is None:
        raise CniError(INVALID_CONFIG, f"deviceID {device_id} is not an SR-IOV VF")
    index = next((i for i, a in ctx.sysfs.pci_virtfns(pf).items() if a == device_id), None)
    if index is None:
        raise CniError(IO_FAILURE, f"VF {device_id} is not among the VFs of its PF {pf}")
    return pf, index


def _pf_link(ctx: Context, pf: str) -> tuple[str, int]:
    names = ctx.sysfs.pci_netdevs(pf)
    index = ctx.host.link_index(names[0]) if names else None
    if index is None:
        raise CniError(IO_FAILURE, f"PF {pf} has no netdev in the host network namespace")
    return names[0], index


def _record(ctx: Context, request: CniRequest, conf: SriovConf, pf: str,
            vf_index: int) -> VfAttachment:
    pf_name, pf_index = _pf_link(ctx, pf)
    msg = ctx.host.link(index=pf_index, ext_mask=RTEXT_FILTER_VF)
    pf_side = vf_configs_from_msg(msg).get(vf_index) if msg is not None else None
    dpdk = ctx.sysfs.pci_driver(conf.device_id) in DPDK_DRIVERS
    name = mtu = mac = None
    if not dpdk:
        names = ctx.sysfs.pci_netdevs(conf.device_id)
        if not names:
            raise CniError(INVALID_CONFIG, f"VF {conf.device_id} has no netdev in the host"
                           " namespace: it is in use, or bound to no kernel driver",
                           f"driver: {ctx.sysfs.pci_driver(conf.device_id)}")
        link = ctx.host.link(name=names[0])
        name, mtu, mac = names[0], link.get("IFLA_MTU"), link.get("IFLA_ADDRESS")
    return VfAttachment(
        container_id=request.container_id, ifname=request.ifname, netns=request.netns,
        pci=conf.device_id, pf=pf_name, vf_index=vf_index, dpdk=dpdk, original_name=name,
        original_mtu=mtu, original_mac=mac, pf_side=asdict(pf_side) if pf_side else {},
        network=request.network,
        changed=list(VfUpdate.towards(vf_index, conf.pf_side).requested()),
    )


def _apply_pf_side(ctx: Context, att: VfAttachment, conf: SriovConf) -> None:
    update = VfUpdate.towards(att.vf_index, conf.pf_side)
    if not update.requested():
        return
    result = _set_vf(ctx, att, update)
    if not result.ok:
        code = INVALID_CONFIG if all(f.errno in REFUSALS for f in result.failed) else IO_FAILURE
        refused = "; ".join(str(f) for f in result.failed)
        raise CniError(code, f"PF {att.pf} refused {refused} for VF {att.vf_index} ({att.pci})")


def _set_vf(ctx: Context, att: VfAttachment, update: VfUpdate) -> VfResult:
    """One VF's PF-side settings through the batch setter; CniError when nothing could be
    tried (the PF is gone, the VF index is not the PF's)."""
    pf_index = ctx.host.link_index(att.pf)
    if pf_index is None:
        raise CniError(IO_FAILURE, f"PF {att.pf} vanished")
    try:
        (result,) = ctx.host.set_vfs(pf_index, [update])
    except VfBatchError as exc:
        raise CniError(IO_FAILURE, f"VF {att.vf_index} ({att.pci}) of PF {att.pf}: {exc}") from None
    except OSError as exc:
        raise CniError(IO_FAILURE, f"setting VF {att.vf_index} ({att.pci}) on PF {att.pf}:"
                       f" {exc.strerror}") from None
    return result


def _move_into_pod(ctx: Context, request: CniRequest, att: VfAttachment,
                   conf: SriovConf) -> tuple[Result, str | None]:
    index = ctx.host.link_index(att.original_name or "")
    if index is None:
        raise CniError(IO_FAILURE, f"VF netdev {att.original_name} vanished")
    netns_fd = os.open(request.netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with links.kernel_errors(f"moving VF {att.pci} into {request.netns}"):
            ctx.host.link_set(index, up=False)
            ctx.host.link_set(index, netns_fd=netns_fd)
    finally:
        os.close(netns_fd)
    with ctx.pod(request.netns) as pod:
        index = pod.link_index(att.original_name or "")
        with links.kernel_errors(f"renaming the VF to {request.ifname}"):
            pod.link_set(index, name=request.ifname, mtu=conf.mtu or None)
        mac = conf.pf_side.mac
        if mac and (pod.link(index=index).get("IFLA_ADDRESS") or "").lower() != mac:
            _adopt_mac(ctx, att, pod, index, mac)
        result = links.address(ctx, request, pod, index)
        sbr.attach(ctx, request, pod, index, result, conf.sbr)
        return result, pod.link(index=index).get("IFLA_ADDRESS")


def _adopt_mac(ctx: Context, att: VfAttachment, rtnl: Netlink, index: int, mac: str) -> None:
    """Give the VF netdev the MAC set (or about to be set back) on the PF side. Kernel VF
    drivers read the admin MAC only when they probe, and some PFs (igb) refuse an untrusted
    VF's own MAC change once an admin MAC is set: then the VF is trusted for the change, and
    its trust put back. Raises CniError."""
    try:
        rtnl.link_set(index, mac=mac)
        return
    except OSError as exc:
        trust = _trust(ctx, att)
        if exc.errno not in (errno.EADDRNOTAVAIL, errno.EPERM, errno.EINVAL) or trust:
            raise CniError(IO_FAILURE, f"setting MAC {mac} on VF {att.pci}:"
                           f" {exc.strerror}") from None
    trusted = _set_vf(ctx, att, VfUpdate(att.vf_index, trust=True))
    try:
        with links.kernel_errors(f"setting MAC {mac} on VF {att.pci} (trusted)"):
            rtnl.link_set(index, mac=mac)
    finally:
        if trusted.ok:
            _set_vf(ctx, att, VfUpdate(att.vf_index, trust=bool(trust)))


def _trust(ctx: Context, att: VfAttachment) -> bool | None:
    """The VF's trust as its PF reports it now."""
    pf_index = ctx.host.link_index(att.pf)
    msg = ctx.host.link(index=pf_index, ext_mask=RTEXT_FILTER_VF) if pf_index else None
    config = vf_configs_from_msg(msg).get(att.vf_index) if msg is not None else None
    return config.trust if config is not None else None


# -- DEL and the undo both ADD failures and DEL use --------------------------------------------


def delete(ctx: Context, request: CniRequest) -> None:
    att = ctx.vfs.load(request.container_id, request.ifname)
    if att is None:  # never attached, or already detached: DEL succeeds
        ipam.delete(ctx, request)
        return
    with ctx.vfs.lock(att.pci):
        if not att.dpdk:
            sbr.detach(ctx, request)
        _undo(ctx, att, release=True, request=request)


def _undo(ctx: Context, att: VfAttachment, *, release: bool, request: CniRequest) -> None:
    if release:
        ipam.delete(ctx, request)
    if not att.dpdk:
        _return_netdev(ctx, att)
    _restore_pf_side(ctx, att)
    ctx.vfs.remove(att.container_id, att.ifname)


def _return_netdev(ctx: Context, att: VfAttachment) -> None:
    """Bring the VF netdev home under its original name, MTU and MAC, as far as the driver
    lets us: a refusal is logged, never fails DEL (a failing DEL blocks pod termination)."""
    if att.netns and netns.usable(att.netns):
        with ctx.pod(att.netns) as pod:
            # Under the pod's name, still under its own when ADD failed before the rename, or
            # under its transit name when an earlier DEL stopped just before the move.
            index = (pod.link_index(att.ifname) or pod.link_index(att.original_name or "")
                     or pod.link_index(transit_name(att.pci)))
            if index is not None:
                home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    pod.link_set(index, up=False)
                    # The host may have a link of the pod's name (another VF the kernel gave
                    # back when its pod's namespace died): moving under it would fail EEXIST
                    # on every retry. A name of this VF's own travels instead.
                    pod.link_set(index, name=transit_name(att.pci))
                    pod.link_set(index, netns_fd=home)
                finally:
                    os.close(home)
    names = _wait_for_netdev(ctx, att.pci)
    index = ctx.host.link_index(names[0]) if names else None
    if index is None:
        log.warning("VF %s has no netdev in the host namespace to restore", att.pci)
        return
    changes: list[dict[str, Any]] = [{"up": False}, {"mtu": att.original_mtu}]
    if att.original_name and att.original_name != names[0]:
        changes.insert(1, {"name": att.original_name})
    for change in changes:
        try:
            ctx.host.link_set(index, **change)
        except OSError as exc:  # a name may be taken meanwhile
            log.warning("restoring %s of VF %s: %s", ", ".join(change), att.pci, exc)
    current = (ctx.host.link(index=index) or {}).get("IFLA_ADDRESS")
    if att.original_mac and (current or "").lower() != att.original_mac.lower():
        try:
            _adopt_mac(ctx, att, ctx.host, index, att.original_mac)
        except CniError as exc:
            log.warning("restoring the MAC of VF %s: %s", att.pci, exc)


def transit_name(pci: str) -> str:
    """A name only this VF uses, for its way home (15 characters at most)."""
    return f"vf{zlib.crc32(pci.encode()):08x}"


def _wait_for_netdev(ctx: Context, pci: str, timeout: float = 10.0) -> list[str]:
    """The VF's netdevs in the host namespace. When a pod's namespace is deleted, the kernel
    returns its physical devices to the host asynchronously (netns cleanup runs in a
    workqueue), so a DEL arriving right after may have to wait for it."""
    deadline = time.monotonic() + timeout
    while not (names := ctx.sysfs.pci_netdevs(pci)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return names


def _restore_pf_side(ctx: Context, att: VfAttachment) -> None:
    if not att.pf_side:
        return
    known = {f.name for f in fields(VfConfig)}
    original = VfConfig(**{k: v for k, v in att.pf_side.items() if k in known})
    # The MAC always: igb records the VF driver's own MAC on the PF side once the VF was up.
    update = VfUpdate.restoring(att.vf_index, original, ["mac", *att.changed])
    try:
        result = _set_vf(ctx, att, update)
    except CniError as exc:  # DEL must not fail on what it cannot put back
        log.warning("VF %s settings not restored: %s", att.pci, exc.msg)
        return
    for failure in result.failed:
        log.warning("restoring %s of VF %s on %s: %s", failure.setting, att.pci, att.pf,
                    failure.strerror)


# -- GC ---------------------------------------------------------------------------------------


def gc(ctx: Context, request: CniRequest) -> None:
    """Undo this network's attachments the runtime no longer lists (cni.dev/valid-attachments),
    then let IPAM release their addresses."""
    valid = set(request.valid_attachments)
    for att in ctx.vfs.all():
        if att.network == request.network and (att.container_id, att.ifname) not in valid:
            log.info("GC: detaching VF %s from gone container %s", att.pci, att.container_id)
            with ctx.vfs.lock(att.pci):
                _undo(ctx, att, release=False, request=request)
    ipam.gc(ctx, request)


# -- CHECK ------------------------------------------------------------------------------------


def check(ctx: Context, request: CniRequest, conf: SriovConf) -> None:
    prev = links.require_prev_result(request)
    att = ctx.vfs.load(request.container_id, request.ifname)
    if att is None or att.pci != conf.device_id:
        raise CniError(IO_FAILURE, f"no attachment of VF {conf.device_id} as {request.ifname}")
    if not att.dpdk:
        with ctx.pod(request.netns) as pod:
            link = pod.link(name=request.ifname)
            if link is None:
                raise CniError(IO_FAILURE, f"{request.ifname} is not in {request.netns}")
            links.check_addresses(pod, link["index"], prev, request.ifname)
            if conf.sbr is not None:
                sbr.verify(pod, request.ifname, link["index"], prev, conf.sbr)
    ipam.check(ctx, request)


HANDLER = FunctionHandler("sriov", parse, add, delete, check, gc)
