"""VXLAN: pods on different nodes on one L2 segment, without multicast (docs/vxlan.md).

Per network and node: one VXLAN device ``vx<vni>`` (learning, on the underlay link, UDP
``port``, local = the underlay's address of the chosen family) in a bridge ``vxbr<vni>``, both
created by the first attachment and removed with the last (under a per-network lock, so
concurrent ADDs and DELs never see half of them). Per pod: a veth pair, the pod end created
directly in the pod's namespace as ``CNI_IFNAME``, the host end a port of the bridge; IPAM as
every kind. Flooded frames go to every other node's VTEP through all-zero-MAC FDB entries:
from the cluster store's members (nodeagent.overlay), or the configuration's static
``remotes``.

Fields: ``vni`` (required, 1-16777215), ``master`` (the underlay link; default: the IPv4
default route's), ``underlay`` ("ipv4" or "ipv6", default ipv4) or ``local`` (the underlay
address to use; its family decides), ``port`` (default 4789), ``mtu`` (default and maximum:
the underlay's MTU less 50 with an IPv4 underlay, 70 with IPv6), ``remotes`` (static VTEP
addresses; without them the agent's cluster store is required), ``mac``, ``ipam``.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cni import ipam, links
from cni.context import FIELDS, Context, Netlink, attachment_mac, master_index
from cni.kinds import FunctionHandler
from cni.protocol import CniRequest
from nodeagent.cnitypes.errors import INVALID_CONFIG, IO_FAILURE, TRY_AGAIN_LATER, CniError
from nodeagent.cnitypes.result import Interface, IPAddress, Result
from nodeagent.fields import join
from nodeagent.overlay import devices, fdb
from nodeagent.overlay.devices import STATIC, STORE, alias, bridge_name, vxlan_name

log = logging.getLogger(__name__)

MAX_VNI = (1 << 24) - 1
DEFAULT_PORT = 4789  # IANA's VXLAN port (the kernel's default is Linux's old 8472)
#: Outer headers: Ethernet 14 + VXLAN 8 + UDP 8 + IPv4 20 / IPv6 40.
OVERHEAD = {4: 50, 6: 70}
#: Fields of other VXLAN setups this kind cannot honour: refused rather than ignored.
UNSUPPORTED = {"group": "multicast groups are not used: flooding goes to each remote VTEP",
               "vxlanGroup": "multicast groups are not used: flooding goes to each remote VTEP",
               "linkInContainer": "the pod end is a veth created in the pod's namespace"}
_UNDERLAYS = {"ipv4": 4, "ipv6": 6}
_OPENING = threading.Lock()


@dataclass(frozen=True)
class VxlanConf:
    network: str
    vni: int
    master: str | None = None
    port: int = DEFAULT_PORT
    mtu: int = 0  # 0: the largest the underlay allows
    family: int = 4
    local: IPAddress | None = None
    remotes: tuple[IPAddress, ...] = ()
    mac: str | None = None

    @property
    def mode(self) -> str:
        return STATIC if self.remotes else STORE


def parse(request: CniRequest) -> VxlanConf:
    c = request.config
    for name, why in UNSUPPORTED.items():
        if c.get(name) is not None:
            FIELDS.fail(name, f"is not supported: {why}")
    vni = FIELDS.integer(c, "vni", "", 1, MAX_VNI)
    if vni is None:
        FIELDS.fail("vni", f"is required (the VXLAN network identifier, 1-{MAX_VNI})")
    family = FIELDS.choice(c, "underlay", "", _UNDERLAYS)
    local = FIELDS.ip(c["local"], "local") if c.get("local") is not None else None
    if local is not None:
        if family is not None and family != local.version:
            FIELDS.fail("local", f"{local} is not an address of underlay {c['underlay']}")
        if local.is_multicast or local.is_unspecified or local.is_loopback:
            FIELDS.fail("local", f"{local} cannot be a VTEP address")
        family = local.version
    family = family or 4
    remotes: list[IPAddress] = []
    for i, raw in enumerate(FIELDS.items(c, "remotes", "", max_items=4096)):
        where = join("remotes", i)
        remote = FIELDS.ip(raw, where)
        if remote.version != family:
            FIELDS.fail(where, f"{remote} is not an IPv{family} address (the underlay's family)")
        if remote.is_multicast or remote.is_unspecified:
            FIELDS.fail(where, f"{remote} cannot be a remote VTEP")
        if remote in remotes:
            FIELDS.fail(where, f"{remote} is listed twice")
        remotes.append(remote)
    return VxlanConf(
        network=request.network, vni=vni,
        master=FIELDS.string(c, "master", "", None, max_len=15),
        port=FIELDS.integer(c, "port", "", 1, 65535, default=DEFAULT_PORT),
        mtu=FIELDS.integer(c, "mtu", "", 68, 65535, default=0),
        family=family, local=local, remotes=tuple(remotes), mac=attachment_mac(request))


# -- the cluster store ------------------------------------------------------------------------


def membership(ctx: Context) -> Any:
    """The overlay members in the agent's cluster store (opened once per Context), or None."""
    with _OPENING:
        return _membership(ctx)


def _membership(ctx: Context) -> Any:
    if ctx.overlay is None and ctx.ipam.cluster is not None:
        from nodeagent.discovery import node_name
        from nodeagent.ipam.etcd.client import EtcdClient  # grpc: only when used
        from nodeagent.overlay.members import Membership

        store = ctx.ipam.cluster
        ctx.overlay = Membership(EtcdClient(store.etcd), node_name(), cluster=store.cluster)
    return ctx.overlay


def _store_error(exc: Exception, what: str) -> CniError:
    return CniError(TRY_AGAIN_LATER, f"{what}: the cluster store did not answer", str(exc))


# -- ADD --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Underlay:
    index: int
    name: str
    local: IPAddress
    mtu: int  # the largest MTU a pod may have on this underlay


def require_membership(ctx: Context) -> Any:
    members = membership(ctx)
    if members is None:
        raise CniError(INVALID_CONFIG, "vxlan needs the other nodes' VTEPs: configure the"
                       " agent's cluster store (ipam.etcd in /etc/nodeagent/agent.yaml, chart"
                       " values ipam.etcd, or --ipam-etcd-endpoints), or list the remote VTEP"
                       " addresses in the network's 'remotes'")
    return members


def add(ctx: Context, request: CniRequest, conf: VxlanConf) -> Result:
    members = require_membership(ctx) if conf.mode == STORE else None
    under = underlay(ctx, request, conf)
    if conf.mtu > under.mtu:
        FIELDS.fail("mtu", f"{conf.mtu} is above {under.mtu}, the most {under.name} (MTU"
                    f" {under.mtu + OVERHEAD[conf.family]}) carries with VXLAN's"
                    f" {OVERHEAD[conf.family]} bytes of IPv{conf.family} encapsulation")
    mtu = conf.mtu or under.mtu
    host_end = host_name(request.container_id, request.ifname)
    with network_lock(ctx, conf.vni):
        vtep, bridge = _ensure_shared(ctx, request, conf, under)
        created = False
        try:
            _flood_to(ctx, conf, vtep, under, members)
            _create_veth(ctx, request, conf, host_end, mtu)
            created = True
            _plug(ctx, request, conf, host_end, bridge)
        except BaseException:
            _rollback(ctx, conf.vni, host_end if created else None, locked=True)
            raise
    try:
        return _configure(ctx, request, host_end, bridge)
    except BaseException:
        _rollback(ctx, conf.vni, host_end, locked=False)
        raise


def _rollback(ctx: Context, vni: int, host_end: str | None, *, locked: bool) -> None:
    """Undo a failed ADD: its veth pair (if it made one), and the shared devices if no other
    attachment uses them. The ADD's own error is the one reported."""
    try:
        if host_end is not None:
            _unplug(ctx, host_end)
        if locked:
            _release_if_unused(ctx, vni)
        else:
            with network_lock(ctx, vni):
                _release_if_unused(ctx, vni)
    except Exception:
        log.exception("VNI %d: rolling back a failed ADD", vni)


def underlay(ctx: Context, request: CniRequest, conf: VxlanConf) -> Underlay:
    """The underlay link, its VTEP address of the configured family, and the pod MTU it
    allows."""
    index = master_index(ctx, ctx.host, conf.master, request)
    link = ctx.host.link(index=index)
    if link is None:
        ctx.masters.clear()
        raise CniError(TRY_AGAIN_LATER, f"underlay {conf.master} went away")
    name = link.get("IFLA_IFNAME")
    family = socket.AF_INET if conf.family == 4 else socket.AF_INET6
    found = []
    for msg in ctx.host.addresses(family):
        if msg["index"] != index:
            continue
        address = ipaddress.ip_address(msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS"))
        if address.version == conf.family and not address.is_link_local:
            found.append(address)
    if conf.local is not None:
        if conf.local not in found:
            FIELDS.fail("local", f"{conf.local} is not an address of the underlay {name}")
        local = conf.local
    elif found:
        local = found[0]
    else:
        raise CniError(INVALID_CONFIG, f"the underlay {name} has no IPv{conf.family} address to"
                       " use as the VTEP's (set 'underlay', 'local' or 'master')")
    return Underlay(index, name, local, link.get("IFLA_MTU") - OVERHEAD[conf.family])


@contextmanager
def network_lock(ctx: Context, vni: int) -> Iterator[None]:
    """One ADD or DEL at a time creates or removes a network's shared devices (across the
    daemon's workers and a fallback process: a file lock in the state directory)."""
    with ctx.vfs.lock(f"vxlan-{vni}"):
        yield


def host_name(container_id: str, ifname: str) -> str:
    """The host end of the pod's veth: stable per attachment, so DEL finds it by name."""
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return f"vxh{digest[:11]}"


def _ensure_shared(ctx: Context, request: CniRequest, conf: VxlanConf,
                   under: Underlay) -> tuple[int, int]:
    """The network's VXLAN device and bridge, created if missing; an existing device must
    match the configuration (another network config may not redefine the VNI)."""
    host = ctx.host
    vtep = host.link(name=vxlan_name(conf.vni))
    if vtep is not None:
        _require_same_vtep(vtep, conf, under)
    bridge = host.link(name=bridge_name(conf.vni))
    if vtep is not None and bridge is not None:
        return vtep["index"], bridge["index"]
    created: list[int] = []
    try:
        if bridge is None:
            with _creating("bridge", bridge_name(conf.vni)):
                host.link_create(bridge_name(conf.vni), "bridge", mtu=under.mtu)
            bridge_index = _index(host, bridge_name(conf.vni))
            created.append(bridge_index)
            host.link_set(bridge_index, extra=[("IFLA_IFALIAS",
                                                alias("bridge", conf.mode, conf.network))])
        else:
            bridge_index = bridge["index"]
        if vtep is None:
            local = "IFLA_VXLAN_LOCAL" if conf.family == 4 else "IFLA_VXLAN_LOCAL6"
            with _creating("VXLAN device", vxlan_name(conf.vni)):
                host.link_create(vxlan_name(conf.vni), "vxlan", mtu=under.mtu, data=[
                    ("IFLA_VXLAN_ID", conf.vni), ("IFLA_VXLAN_LINK", under.index),
                    (local, str(under.local)), ("IFLA_VXLAN_PORT", conf.port),
                    ("IFLA_VXLAN_LEARNING", 1)])
            vtep_index = _index(host, vxlan_name(conf.vni))
            created.append(vtep_index)
            host.link_set(vtep_index, extra=[("IFLA_IFALIAS",
                                              alias("vxlan", conf.mode, conf.network))])
        else:
            vtep_index = vtep["index"]
        with links.kernel_errors(f"adding {vxlan_name(conf.vni)} to {bridge_name(conf.vni)}"):
            host.link_set(vtep_index, up=True, extra=[("IFLA_MASTER", bridge_index)])
            host.link_set(bridge_index, up=True)
    except BaseException:
        for index in reversed(created):
            host.link_delete(index)
        raise
    return vtep_index, bridge_index


@contextmanager
def _creating(what: str, name: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP:
            raise CniError(INVALID_CONFIG, f"this kernel cannot create a {what} (is the vxlan"
                           " module available?)") from None
        if exc.errno in (errno.EINVAL, errno.ERANGE, errno.EADDRINUSE, errno.EEXIST):
            raise CniError(INVALID_CONFIG, f"the kernel refused {what} {name}: {exc.strerror}"
                           " (another device may use the same VNI and port)") from None
        raise CniError(IO_FAILURE, f"creating {what} {name}: {exc.strerror}") from None


def _index(host: Netlink, name: str) -> int:
    index = host.link_index(name)
    if index is None:
        raise CniError(IO_FAILURE, f"{name} vanished right after its creation")
    return index


def _require_same_vtep(msg: Any, conf: VxlanConf, under: Underlay) -> None:
    vtep = devices.vtep_of(msg)
    name = vxlan_name(conf.vni)
    if vtep is None:
        raise CniError(INVALID_CONFIG, f"{name} exists and is not a VXLAN device of the agent's")
    differences = [f"{what} {have} (this network: {want})" for what, have, want in (
        ("VNI", vtep.vni, conf.vni), ("port", vtep.port, conf.port),
        ("local", vtep.local, under.local), ("mode", vtep.mode, conf.mode))
        if have != want]
    if differences:
        raise CniError(INVALID_CONFIG, f"VNI {conf.vni} is already set up on this node with"
                       f" other settings: " + ", ".join(differences),
                       f"{name} belongs to network {vtep.network!r}")


def _flood_to(ctx: Context, conf: VxlanConf, vtep: int, under: Underlay, members: Any) -> None:
    """Static remotes, or: announce this node's VTEP and flood to the members known now (the
    overlay service keeps them current)."""
    if members is None:  # one list for every node: a node's own address is skipped
        wanted = {str(r) for r in conf.remotes if r != under.local}
    else:
        from nodeagent.overlay.members import remotes_for

        try:
            members.publish(conf.vni, under.local, conf.port, conf.network)
            live = members.members(conf.vni)
        except Exception as exc:  # EtcdError, EtcdUnavailable
            raise _store_error(exc, f"announcing VNI {conf.vni}") from None
        wanted, _ = remotes_for(live, members.node, conf.vni, under.local, conf.port)
    with links.kernel_errors(f"adding forwarding entries to {vxlan_name(conf.vni)}"):
        fdb.add_remotes(ctx.host, vtep, wanted)


def _create_veth(ctx: Context, request: CniRequest, conf: VxlanConf, host_end: str,
                 mtu: int) -> None:
    netns_fd = os.open(request.netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        peer = {"attrs": [("IFLA_IFNAME", host_end), ("IFLA_MTU", mtu)]}
        ctx.host.link_create(request.ifname, "veth", data=[("VETH_INFO_PEER", peer)],
                             netns_fd=netns_fd, mtu=mtu, mac=conf.mac)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise CniError(INVALID_CONFIG, f"an interface named {request.ifname} already exists"
                           f" in {request.netns} (or {host_end} on the host)") from None
        code = INVALID_CONFIG if exc.errno in (errno.EINVAL, errno.ERANGE) else IO_FAILURE
        raise CniError(code, f"creating the veth {request.ifname}: {exc.strerror}",
                       f"mtu={mtu} mac={conf.mac}") from None
    finally:
        os.close(netns_fd)


def _plug(ctx: Context, request: CniRequest, conf: VxlanConf, host_end: str,
          bridge: int) -> None:
    index = _index(ctx.host, host_end)
    with links.kernel_errors(f"adding {host_end} to {bridge_name(conf.vni)}"):
        ctx.host.link_set(index, up=True, extra=[
            ("IFLA_MASTER", bridge),
            ("IFLA_IFALIAS", f"{devices.ALIAS_PREFIX} port {request.container_id}"
                             f" {request.ifname}")])


def _configure(ctx: Context, request: CniRequest, host_end: str, bridge: int) -> Result:
    with ctx.pod(request.netns) as pod:
        link = pod.link(name=request.ifname)
        if link is None:
            raise CniError(IO_FAILURE, f"{request.ifname} is not in {request.netns}")
        result = links.address(ctx, request, pod, link["index"])
    bridge_link = ctx.host.link(index=bridge)
    host_link = ctx.host.link(name=host_end)
    result.interfaces = [
        Interface(bridge_link.get("IFLA_IFNAME"), mac=bridge_link.get("IFLA_ADDRESS")),
        Interface(host_end, mac=host_link.get("IFLA_ADDRESS"), mtu=host_link.get("IFLA_MTU")),
        Interface(request.ifname, mac=link.get("IFLA_ADDRESS"), sandbox=request.netns,
                  mtu=link.get("IFLA_MTU")),
    ]
    for ip in result.ips:
        ip.interface = 2
    return result


# -- DEL, GC ----------------------------------------------------------------------------------


def _unplug(ctx: Context, host_end: str) -> int | None:
    """Delete the attachment's veth pair from the host end (its pod end goes with it, even when
    the pod's namespace file is gone); the bridge it was in, if any."""
    link = ctx.host.link(name=host_end)
    if link is None:
        return None
    with links.kernel_errors(f"deleting {host_end}"):
        ctx.host.link_delete(link["index"])
    return link.get("IFLA_MASTER")


def _release_if_unused(ctx: Context, vni: int) -> bool:
    """Remove the network's VXLAN device and bridge, and withdraw this node's membership, if no
    pod is attached any more (caller holds the network lock). True if removed."""
    host = ctx.host
    bridge = host.link(name=bridge_name(vni))
    vtep = host.link(name=vxlan_name(vni))
    ours = [m for m in (bridge, vtep) if m is not None
            and (m.get("IFLA_IFALIAS") or "").startswith(devices.ALIAS_PREFIX)]
    if not ours:
        return False
    vtep_index = vtep["index"] if vtep is not None else None
    if bridge is not None and any(link.get("IFLA_MASTER") == bridge["index"]
                                  and link["index"] != vtep_index for link in host.links()):
        return False
    store = devices.vtep_of(vtep) if vtep is not None else None
    for msg in ours:
        with links.kernel_errors(f"deleting {msg.get('IFLA_IFNAME')}"):
            host.link_delete(msg["index"])
    if store is not None and store.mode == STORE:
        members = membership(ctx)
        if members is not None:
            try:
                members.withdraw(vni)
            except Exception as exc:  # the key expires without renewals anyway
                log.warning("VNI %d: could not withdraw this node's membership: %s", vni, exc)
    log.info("VNI %d: last attachment gone, removed %s", vni,
             ", ".join(m.get("IFLA_IFNAME") for m in ours))
    return True


def _vni_of(request: CniRequest) -> int | None:
    vni = request.config.get("vni")
    return vni if type(vni) is int and 1 <= vni <= MAX_VNI else None


def _vni_of_bridge(ctx: Context, index: int | None) -> int | None:
    if index is None:
        return None
    link = ctx.host.link(index=index)
    name = link.get("IFLA_IFNAME") if link is not None else ""
    prefix = bridge_name(0)[:-1]
    return int(name[len(prefix):]) if name.startswith(prefix) and name[len(prefix):].isdigit() \
        else None


def delete(ctx: Context, request: CniRequest) -> None:
    ipam.delete(ctx, request)
    bridge = _unplug(ctx, host_name(request.container_id, request.ifname))
    vni = _vni_of_bridge(ctx, bridge) or _vni_of(request)
    if vni is not None:
        with network_lock(ctx, vni):
            _release_if_unused(ctx, vni)


def gc(ctx: Context, request: CniRequest) -> None:
    """Remove the network's ports whose attachment the runtime no longer lists, then the shared
    devices if nothing is left; then IPAM's GC."""
    vni = _vni_of(request)
    if vni is not None:
        valid = set(request.valid_attachments)
        with network_lock(ctx, vni):
            bridge = ctx.host.link(name=bridge_name(vni))
            if bridge is not None:
                for link in ctx.host.links():
                    parts = (link.get("IFLA_IFALIAS") or "").split(" ")
                    if link.get("IFLA_MASTER") == bridge["index"] and len(parts) == 4 \
                            and parts[:2] == [devices.ALIAS_PREFIX, "port"] \
                            and (parts[2], parts[3]) not in valid:
                        log.info("GC: removing %s of gone attachment %s/%s",
                                 link.get("IFLA_IFNAME"), parts[2], parts[3])
                        ctx.host.link_delete(link["index"])
            _release_if_unused(ctx, vni)
    ipam.gc(ctx, request)


# -- CHECK ------------------------------------------------------------------------------------


def check(ctx: Context, request: CniRequest, conf: VxlanConf) -> None:
    """What ADD built: the pod's veth with its addresses and MTU, its host end up in the
    network's bridge, the VXLAN device as configured in that bridge, the static remotes or
    this node's membership; then IPAM."""
    prev = links.require_prev_result(request)
    members = require_membership(ctx) if conf.mode == STORE else None
    under = underlay(ctx, request, conf)
    host = ctx.host
    vtep = host.link(name=vxlan_name(conf.vni))
    bridge = host.link(name=bridge_name(conf.vni))
    if vtep is None or bridge is None:
        raise CniError(IO_FAILURE, f"VNI {conf.vni}: {vxlan_name(conf.vni)} or"
                       f" {bridge_name(conf.vni)} is missing on this node")
    _require_same_vtep(vtep, conf, under)
    if vtep.get("IFLA_MASTER") != bridge["index"]:
        raise CniError(IO_FAILURE, f"{vxlan_name(conf.vni)} is not in {bridge_name(conf.vni)}")
    end = host_name(request.container_id, request.ifname)
    host_end = host.link(name=end)
    if host_end is None or host_end.get("IFLA_MASTER") != bridge["index"]:
        raise CniError(IO_FAILURE, f"the host end {end} of {request.ifname} is missing or not"
                       f" in {bridge_name(conf.vni)}")
    if not host_end["flags"] & 1:
        raise CniError(IO_FAILURE, f"the host end {end} is down")
    if conf.mode == STATIC:
        missing = {str(r) for r in conf.remotes if r != under.local} - fdb.flood_remotes(
            host, vtep["index"])
        if missing:
            raise CniError(IO_FAILURE, f"{vxlan_name(conf.vni)} does not flood to"
                           f" {', '.join(sorted(missing))}")
    else:
        try:
            mine = [m for m in members.members(conf.vni) if m.node == members.node]
        except Exception as exc:
            raise _store_error(exc, f"reading VNI {conf.vni}'s members") from None
        if not mine or mine[0].address != under.local:
            raise CniError(IO_FAILURE, f"this node is not a member of VNI {conf.vni} with"
                           f" {under.local} in the cluster store")
    with ctx.pod(request.netns) as pod:
        link = links.require_link(pod, request, "veth")
        expected = next((i.mtu for i in prev.interfaces if i.name == request.ifname and i.mtu),
                        None)
        if expected and link.get("IFLA_MTU") != expected:
            raise CniError(IO_FAILURE, f"{request.ifname} has MTU {link.get('IFLA_MTU')}, the"
                           f" previous result says {expected}")
        links.check_addresses(pod, link["index"], prev, request.ifname)
    ipam.check(ctx, request)


HANDLER = FunctionHandler("vxlan", parse, add, delete, check, gc)
