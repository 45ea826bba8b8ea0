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
from dataclasses import asdict, dataclass, fields
from typing import Any

from cni import ipam, links
from cni.context import Context, attachment_mac
from cni.protocol import CniRequest
from nodeagent import vfbatch
from nodeagent.cnitypes.errors import INVALID_CONFIG, IO_FAILURE, CniError, config_error
from nodeagent.cnitypes.result import Interface, Result
from nodeagent.model import VfConfig
from nodeagent.netlink import RTEXT_FILTER_VF, vf_configs_from_msg
from nodeagent.rtnl import Rtnl
from nodeagent.sysfs import PCI_ADDRESS
from nodeagent.vfbatch import VfBatchError, VfResult, VfSettings
from nodeagent.vfstate import VfAttachment

log = logging.getLogger(__name__)

DPDK_DRIVERS = frozenset({"vfio-pci", "uio_pci_generic", "igb_uio"})
VLAN_PROTOS = {"802.1q": 0x8100, "802.1ad": 0x88A8}
LINK_STATES = {"auto": 0, "enable": 1, "disable": 2}
#: Errnos with which a driver refuses a value it does not support: a configuration problem.
REFUSALS = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.EPROTONOSUPPORT, errno.ERANGE})
ON_OFF = {"on": True, "off": False}


@dataclass(frozen=True)
class SriovConf:
    device_id: str
    mac: str | None
    vlan: int | None
    qos: int
    proto: str
    spoofchk: bool | None
    trust: bool | None
    link_state: str | None
    min_tx_rate: int | None
    max_tx_rate: int | None
    mtu: int


def _int(c: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = c.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise config_error(key, f"{value!r} is not an integer from {low} to {high}")
    return value


def _choice(c: dict[str, Any], key: str, choices: dict[str, Any]) -> str | None:
    value = c.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in choices:
        raise config_error(key, f"{value!r} is not one of {', '.join(choices)}")
    return value.lower()


def parse(request: CniRequest) -> SriovConf:
    c = request.config
    device_id = request.runtime_config.get("deviceID") or c.get("deviceID")
    if not isinstance(device_id, str) or not PCI_ADDRESS.match(device_id.lower()):
        raise config_error("deviceID", f"{device_id!r} is not a PCI address such as"
                           " 0000:3b:02.1 (Multus passes the one the device plugin allocated)")
    vlan = _int(c, "vlan", 0, 4094)
    qos = _int(c, "vlanQoS", 0, 7)
    proto = _choice(c, "vlanProto", VLAN_PROTOS)
    if vlan is None and (qos or proto):
        raise config_error("vlanQoS/vlanProto", "need 'vlan'")
    spoofchk, trust = _choice(c, "spoofchk", ON_OFF), _choice(c, "trust", ON_OFF)
    min_rate, max_rate = _int(c, "min_tx_rate", 0, 1 << 31), _int(c, "max_tx_rate", 0, 1 << 31)
    if min_rate and max_rate and min_rate > max_rate:
        raise config_error("min_tx_rate", f"{min_rate} is above max_tx_rate {max_rate}")
    return SriovConf(
        device_id=device_id.lower(), mac=attachment_mac(request), vlan=vlan, qos=qos or 0,
        proto=proto or "802.1q",
        spoofchk=None if spoofchk is None else ON_OFF[spoofchk],
        trust=None if trust is None else ON_OFF[trust],
        link_state=_choice(c, "link_state", LINK_STATES), min_tx_rate=min_rate,
        max_tx_rate=max_rate, mtu=_int(c, "mtu", 0, 65535) or 0,
    )


# -- ADD --------------------------------------------------------------------------------------


def add(ctx: Context, request: CniRequest) -> Result:
    conf = parse(request)
    pf, vf_index = _pf_of(ctx, conf.device_id)
    with ctx.vfs.lock(conf.device_id):
        holder = ctx.vfs.holder(conf.device_id)
        if holder is not None and (holder.container_id, holder.ifname) != (
                request.container_id, request.ifname):
            raise CniError(INVALID_CONFIG, f"VF {conf.device_id} is already attached to container"
                           f" {holder.container_id} as {holder.ifname}")
        attachment = _record(ctx, request, conf, pf, vf_index)
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
        network=request.network, changed=list(_pf_settings(conf, vf_index).requested()),
    )


def _pf_settings(conf: SriovConf, vf_index: int) -> VfSettings:
    """The PF-side settings the configuration asks for."""
    return VfSettings(
        vf=vf_index, mac=conf.mac, vlan=conf.vlan, qos=conf.qos,
        vlan_proto=conf.proto, spoofchk=conf.spoofchk, trust=conf.trust,
        min_tx_rate=conf.min_tx_rate, max_tx_rate=conf.max_tx_rate, link_state=conf.link_state,
    )


def _apply_pf_side(ctx: Context, att: VfAttachment, conf: SriovConf) -> None:
    settings = _pf_settings(conf, att.vf_index)
    if not settings.requested():
        return
    result = _set_vf(ctx, att, settings)
    if not result.ok:
        code = INVALID_CONFIG if all(f.errno in REFUSALS for f in result.failed) else IO_FAILURE
        refused = "; ".join(str(f) for f in result.failed)
        raise CniError(code, f"PF {att.pf} refused {refused} for VF {att.vf_index} ({att.pci})")


def _set_vf(ctx: Context, att: VfAttachment, settings: VfSettings) -> VfResult:
    """One VF's PF-side settings through the batch setter; CniError when nothing could be
    tried (the PF is gone, the VF index is not the PF's)."""
    pf_index = ctx.host.link_index(att.pf)
    if pf_index is None:
        raise CniError(IO_FAILURE, f"PF {att.pf} vanished")
    try:
        (result,) = vfbatch.apply(pf_index, [settings])
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
    with Rtnl(request.netns) as pod:
        index = pod.link_index(att.original_name or "")
        with links.kernel_errors(f"renaming the VF to {request.ifname}"):
            pod.link_set(index, name=request.ifname, mtu=conf.mtu or None)
        if conf.mac and (pod.link(index=index).get("IFLA_ADDRESS") or "").lower() != conf.mac:
            _adopt_mac(ctx, att, pod, index, conf.mac)
        result = links.address(ctx, request, pod, index)
        return result, pod.link(index=index).get("IFLA_ADDRESS")


def _adopt_mac(ctx: Context, att: VfAttachment, rtnl: Rtnl, index: int, mac: str) -> None:
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
    trusted = _set_vf(ctx, att, VfSettings(att.vf_index, trust=True))
    try:
        with links.kernel_errors(f"setting MAC {mac} on VF {att.pci} (trusted)"):
            rtnl.link_set(index, mac=mac)
    finally:
        if trusted.ok:
            _set_vf(ctx, att, VfSettings(att.vf_index, trust=bool(trust)))


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
    if att.netns and os.path.exists(att.netns):
        with Rtnl(att.netns) as pod:
            # Under the pod's name, or still under its own when ADD failed before the rename.
            index = pod.link_index(att.ifname) or pod.link_index(att.original_name or "")
            if index is not None:
                home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    pod.link_set(index, up=False)
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
    settings = VfSettings.from_config(att.vf_index, original, ["mac", *att.changed])
    try:
        result = _set_vf(ctx, att, settings)
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
    valid = {(a.get("containerID"), a.get("ifname"))
             for a in request.config.get("cni.dev/valid-attachments") or []
             if isinstance(a, dict)}
    for att in ctx.vfs.all():
        if att.network == request.network and (att.container_id, att.ifname) not in valid:
            log.info("GC: detaching VF %s from gone container %s", att.pci, att.container_id)
            with ctx.vfs.lock(att.pci):
                _undo(ctx, att, release=False, request=request)
    ipam.gc(ctx, request)


# -- CHECK ------------------------------------------------------------------------------------


def check(ctx: Context, request: CniRequest) -> None:
    conf = parse(request)
    prev = links.require_prev_result(request)
    att = ctx.vfs.load(request.container_id, request.ifname)
    if att is None or att.pci != conf.device_id:
        raise CniError(IO_FAILURE, f"no attachment of VF {conf.device_id} as {request.ifname}")
    if not att.dpdk:
        with Rtnl(request.netns) as pod:
            link = pod.link(name=request.ifname)
            if link is None:
                raise CniError(IO_FAILURE, f"{request.ifname} is not in {request.netns}")
            links.check_addresses(pod, link["index"], prev, request.ifname)
    ipam.check(ctx, request)


class _Handler:
    kind = "sriov"
    add = staticmethod(add)
    delete = staticmethod(delete)
    check = staticmethod(check)
    gc = staticmethod(gc)


HANDLER = _Handler()
