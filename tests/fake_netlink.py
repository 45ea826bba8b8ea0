"""A recording double of the kinds' netlink seam (cni.context.Netlink), for unit tests without root.

It stands in for our own client interface, not for the kernel: a small world of namespaces
holding links, addresses, routes, sysctls and PF-side VF settings, answered with real rtnetlink
messages (encoded and decoded by pyroute2, as nodeagent.rtnl returns them). Every request is
recorded in order; :meth:`FakeKernel.fail` makes a chosen step fail with an errno, and
:meth:`FakeKernel.refuse_vf_setting` makes the PF refuse a VF setting. The real-kernel tests
(tests/host, the lab) check what these answers stand for.

A VF netdev (a link with ``pci``) shows in the fixture sysfs tree while it is in the host
namespace, as the kernel shows ``<device>/net/<name>`` there.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from nodeagent.model import LINK_STATES, VLAN_PROTOS, VfConfig
from nodeagent.rtnl import LinkBrief
from nodeagent.vfbatch import SettingError, VfResult, VfUpdate
from tests.sysfs_tree import SysfsTree

HOST = "host"
RTEXT_FILTER_VF = 1
_PROTO_NUMBERS = {name: number for number, name in VLAN_PROTOS.items()}
_LINK_STATE_NUMBERS = {name: number for number, name in LINK_STATES.items()}


@dataclass
class FakeLink:
    index: int
    name: str
    netns: str = HOST
    kind: str | None = None
    mac: str = "02:00:00:00:00:01"
    mtu: int = 1500
    up: bool = False
    lower: int | None = None
    data: list[tuple[str, Any]] = field(default_factory=list)
    #: A VF netdev's PCI address.
    pci: str | None = None
    #: A PF's VFs: index -> PF-side settings.
    vfs: dict[int, VfConfig] = field(default_factory=dict)
    #: The bridge this link is a port of (IFLA_MASTER), its ifalias, a veth's other end.
    master: int | None = None
    alias: str | None = None
    peer: int | None = None


@dataclass(frozen=True)
class Request:
    netns: str
    op: str
    args: dict[str, Any]


@dataclass
class _Failure:
    op: str
    errno: int
    when: Callable[[Request], bool]
    times: int


def _decode(msg: Any, msg_type: int) -> Any:
    msg["header"]["type"] = msg_type
    msg.encode()
    (decoded,) = MarshalRtnl().parse(msg.data)
    return decoded


class FakeKernel:
    """The world behind every client :meth:`open` returns."""

    def __init__(self, sysfs: SysfsTree | None = None) -> None:
        self.sysfs = sysfs
        self.links: dict[int, FakeLink] = {}
        self.addresses: list[tuple[str, int, str, int]] = []  # netns, index, address, prefix
        self.routes: list[dict[str, Any]] = []
        #: Policy rules: netns, family, src, src_len, table, priority.
        self.rules: list[dict[str, Any]] = []
        self.sysctls: dict[tuple[str, str], str] = {}
        self.fdb: list[tuple[int, str, str]] = []  # device index, MAC, remote
        self.requests: list[Request] = []
        self.open_clients = 0
        self._failures: list[_Failure] = []
        self._refused: dict[str, int] = {}
        self._next_index = 1

    # -- building the world and steering it -------------------------------------------------

    def add_link(self, name: str, **attrs: Any) -> FakeLink:
        self._next_index += 1
        link = FakeLink(self._next_index, name, **attrs)
        self.links[link.index] = link
        return link

    def fail(self, op: str, code: int, *, when: Callable[[Request], bool] = lambda r: True,
             times: int = 1) -> None:
        """The next ``times`` requests ``op`` for which ``when`` holds raise OSError(code)."""
        self._failures.append(_Failure(op, code, when, times))

    def refuse_vf_setting(self, setting: str, code: int) -> None:
        """The PF refuses ``setting`` (vfbatch.SETTINGS) with ``code`` from now on."""
        self._refused[setting] = code

    def open(self, netns: str | None) -> FakeNetlink:
        self.open_clients += 1
        return FakeNetlink(self, HOST if netns is None else netns)

    def is_netns(self, path: str) -> bool:
        """nodeagent.netns.is_netns for this kernel's namespaces, whose files are plain files
        here: a namespace while its file exists."""
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        return True

    def delete_netns(self, netns: str) -> None:
        """What the kernel does when a pod's namespace goes: its virtual links die with it,
        physical ones (VF netdevs) come back to the host namespace."""
        for link in list(self.links.values()):
            if link.netns != netns:
                continue
            if link.pci is None:
                self.drop_link(link.index)
            else:
                if self.find(HOST, name=link.name) is not None:
                    self._rename(link, f"dev{link.index}")  # the kernel's dev%d when taken
                self._move(link, HOST)
        self.addresses = [a for a in self.addresses if a[0] != netns]
        self.routes = [r for r in self.routes if r["netns"] != netns]
        self.rules = [r for r in self.rules if r["netns"] != netns]
        os.unlink(netns)

    # -- looking at it ----------------------------------------------------------------------

    def in_netns(self, netns: str) -> dict[str, FakeLink]:
        return {link.name: link for link in self.links.values() if link.netns == netns}

    def ops(self, netns: str | None = None) -> list[str]:
        return [r.op for r in self.requests if netns is None or r.netns == netns]

    def addresses_of(self, netns: str) -> list[str]:
        return [f"{a}/{p}" for ns, _, a, p in self.addresses if ns == netns]

    # -- what clients call ------------------------------------------------------------------

    def record(self, where: str, op: str, args: dict[str, Any]) -> None:
        request = Request(where, op, args)
        self.requests.append(request)
        for failure in self._failures:
            if failure.op == op and failure.times > 0 and failure.when(request):
                failure.times -= 1
                raise OSError(failure.errno, os.strerror(failure.errno))

    def find(self, netns: str, index: int = 0, name: str | None = None) -> FakeLink | None:
        for link in self.links.values():
            if link.netns == netns and (link.index == index or (name and link.name == name)):
                return link
        return None

    def _move(self, link: FakeLink, netns: str) -> None:
        if self.sysfs is not None and link.pci is not None:
            if link.netns == HOST:
                self.sysfs.remove_netdev(link.name)
            if netns == HOST:
                self.sysfs.add_netdev(link.name, self.sysfs.device_dir(link.pci), mac=link.mac,
                                      mtu=link.mtu)
        self.addresses = [a for a in self.addresses if a[1] != link.index]
        link.netns = netns
        link.up = False

    def _rename(self, link: FakeLink, name: str) -> None:
        if self.sysfs is not None and link.pci is not None and link.netns == HOST:
            self.sysfs.remove_netdev(link.name)
            self.sysfs.add_netdev(name, self.sysfs.device_dir(link.pci), mac=link.mac,
                                  mtu=link.mtu)
        link.name = name

    def drop_link(self, index: int) -> None:
        """A link goes: its addresses, routes and FDB entries, its veth peer, its ports'
        membership (the kernel's unregister_netdevice)."""
        link = self.links.pop(index)
        self.addresses = [a for a in self.addresses if a[1] != index]
        self.routes = [r for r in self.routes if r["oif"] != index]
        self.fdb = [e for e in self.fdb if e[0] != index]
        for other in self.links.values():
            if other.master == index and other.netns == link.netns:
                other.master = None
        if link.peer is not None and link.peer in self.links:
            self.drop_link(link.peer)

    def netns_of_fd(self, fd: int) -> str:
        """The namespace a file descriptor names: a pod's file, or ours (/proc/self/ns/net)."""
        target = os.readlink(f"/proc/self/fd/{fd}")
        return HOST if target.startswith("net:[") else target

    def link_msg(self, link: FakeLink, ext_mask: int) -> Any:
        msg = ifinfmsg()
        msg["index"] = link.index
        msg["flags"] = 1 if link.up else 0
        attrs: list[tuple[str, Any]] = [("IFLA_IFNAME", link.name), ("IFLA_ADDRESS", link.mac),
                                        ("IFLA_MTU", link.mtu)]
        if link.kind:
            info: list[tuple[str, Any]] = [("IFLA_INFO_KIND", link.kind)]
            if link.kind == "bond":
                info.append(("IFLA_INFO_DATA", {"attrs": link.data}))
            attrs.append(("IFLA_LINKINFO", {"attrs": info}))
            if link.kind == "vxlan" and link.data:
                info.append(("IFLA_INFO_DATA", {"attrs": link.data}))
        if link.lower:
            attrs.append(("IFLA_LINK", link.lower))
        if link.master:
            attrs.append(("IFLA_MASTER", link.master))
        if link.alias:
            attrs.append(("IFLA_IFALIAS", link.alias))
        if ext_mask & RTEXT_FILTER_VF and link.vfs:
            attrs.append(("IFLA_VFINFO_LIST", {"attrs": [
                _vf_info(vf, config) for vf, config in sorted(link.vfs.items())]}))
        msg["attrs"] = attrs
        return _decode(msg, 16)


def _vf_info(vf: int, c: VfConfig) -> tuple[str, Any]:
    unsupported = 0xFFFFFFFF
    return ("IFLA_VF_INFO", {"attrs": [
        ("IFLA_VF_MAC", {"vf": vf, "mac": c.mac or "00:00:00:00:00:00"}),
        ("IFLA_VF_VLAN", {"vf": vf, "vlan": c.vlan, "qos": c.qos}),
        ("IFLA_VF_VLAN_LIST", {"attrs": [("IFLA_VF_VLAN_INFO", {
            "vf": vf, "vlan": c.vlan, "qos": c.qos, "proto": _PROTO_NUMBERS[c.vlan_proto]})]}),
        ("IFLA_VF_SPOOFCHK", {"vf": vf, "spoofchk": unsupported if c.spoofchk is None
                              else int(c.spoofchk)}),
        ("IFLA_VF_TRUST", {"vf": vf, "trust": unsupported if c.trust is None
                           else int(c.trust)}),
        ("IFLA_VF_RATE", {"vf": vf, "min_tx_rate": c.min_tx_rate,
                          "max_tx_rate": c.max_tx_rate}),
        ("IFLA_VF_LINK_STATE", {"vf": vf, "link_state": _LINK_STATE_NUMBERS[
            c.link_state or "auto"]}),
    ]})


class FakeNetlink:
    """One client in one namespace of a :class:`FakeKernel` (cni.context.Netlink)."""

    def __init__(self, kernel: FakeKernel, netns: str) -> None:
        self.kernel = kernel
        self.netns: str | None = None if netns == HOST else netns
        self._ns = netns
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.kernel.open_clients -= 1

    def __enter__(self) -> FakeNetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _record(self, op: str, **args: Any) -> None:
        assert not self.closed, f"{op} on a closed client"
        self.kernel.record(self._ns, op, args)

    # -- links ------------------------------------------------------------------------------

    def link(self, *, index: int = 0, name: str | None = None, ext_mask: int = 0) -> Any:
        self._record("link", index=index, name=name)
        found = self.kernel.find(self._ns, index, name)
        return None if found is None else self.kernel.link_msg(found, ext_mask)

    def link_index(self, name: str) -> int | None:
        found = self.link(name=name) if name else None
        return None if found is None else found["index"]

    def link_create(self, name: str, kind: str, *, data: list[tuple[str, Any]] | None = None,
                    lower: int | None = None, netns_fd: int | None = None,
                    mtu: int | None = None, mac: str | None = None) -> None:
        target = self._ns if netns_fd is None else self.kernel.netns_of_fd(netns_fd)
        self._record("link_create", name=name, kind=kind, data=data, lower=lower,
                     netns=target, mtu=mtu, mac=mac)
        master = self.kernel.find(self._ns, lower or -1)
        if lower is not None and master is None:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        if self.kernel.find(target, name=name) is not None:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        peer = dict(data or []).get("VETH_INFO_PEER") if kind == "veth" else None
        peer_attrs = dict(peer["attrs"]) if peer else {}
        if peer and self.kernel.find(self._ns, name=peer_attrs["IFLA_IFNAME"]) is not None:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        link = self.kernel.add_link(
            name, netns=target, kind=kind, lower=lower, data=list(data or []),
            mtu=mtu or (master.mtu if master else 1500),
            mac=mac or (master.mac if master and kind == "ipvlan" else
                        f"02:fa:00:00:00:{self.kernel._next_index + 1:02x}"))
        if peer:
            other = self.kernel.add_link(
                peer_attrs["IFLA_IFNAME"], netns=self._ns, kind="veth",
                mtu=peer_attrs.get("IFLA_MTU") or 1500,
                mac=f"02:fb:00:00:00:{self.kernel._next_index + 1:02x}")
            link.peer, other.peer = other.index, link.index

    def link_set(self, index: int, *, up: bool | None = None, name: str | None = None,
                 mtu: int | None = None, mac: str | None = None, netns_fd: int | None = None,
                 extra: list[tuple[str, Any]] | None = None) -> None:
        target = None if netns_fd is None else self.kernel.netns_of_fd(netns_fd)
        self._record("link_set", index=index, up=up, name=name, mtu=mtu, mac=mac, netns=target,
                     **({"extra": extra} if extra else {}))
        link = self.kernel.find(self._ns, index)
        if link is None:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        if name and name != link.name:
            if self.kernel.find(self._ns, name=name) is not None:
                raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
            self.kernel._rename(link, name)
        if mtu:
            link.mtu = mtu
        if mac:
            link.mac = mac.lower()
        if up is not None:
            link.up = up
        for key, value in extra or []:
            if key == "IFLA_MASTER":
                self._set_master(link, value)
            elif key == "IFLA_IFALIAS":
                link.alias = value
        if target is not None and target != link.netns:
            if self.kernel.find(target, name=link.name) is not None:
                raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))  # the kernel
            self.kernel._move(link, target)

    def link_delete(self, index: int) -> bool:
        self._record("link_delete", index=index)
        link = self.kernel.find(self._ns, index)
        if link is None:
            return False
        self.kernel.drop_link(index)
        return True

    # -- addresses and routes ---------------------------------------------------------------

    def addresses(self, family: int = socket.AF_UNSPEC) -> list[Any]:
        self._record("addresses")
        out = []
        for ns, index, address, prefixlen in self.kernel.addresses:
            if ns != self._ns:
                continue
            msg = ifaddrmsg()
            msg["family"] = socket.AF_INET6 if ":" in address else socket.AF_INET
            msg["index"] = index
            msg["prefixlen"] = prefixlen
            msg["attrs"] = [("IFA_ADDRESS", address)]
            out.append(_decode(msg, 20))
        return out

    def address_add(self, index: int, address: str, prefixlen: int, family: int,
                    nodad: bool = False) -> None:
        self._record("address_add", index=index, address=address, prefixlen=prefixlen)
        if self.kernel.find(self._ns, index) is None:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        self.kernel.addresses.append((self._ns, index, address, prefixlen))

    def routes(self, family: int = socket.AF_UNSPEC) -> list[Any]:
        self._record("routes")
        out = []
        for route in self.kernel.routes:
            if route["netns"] != self._ns or family not in (socket.AF_UNSPEC, route["family"]):
                continue
            msg = rtmsg()
            msg["family"] = route["family"]
            msg["dst_len"] = route["dst_len"]
            table = route.get("table") or 254
            msg["table"] = table if table < 256 else 0
            msg["type"] = 1  # unicast
            msg["scope"] = route.get("scope") or 0
            msg["proto"] = route.get("proto") or 0
            attrs: list[tuple[str, Any]] = [("RTA_TABLE", table), ("RTA_OIF", route["oif"])]
            if route["dst_len"]:
                attrs.append(("RTA_DST", route["dst"]))
            for key, name in (("gateway", "RTA_GATEWAY"), ("prefsrc", "RTA_PREFSRC"),
                              ("priority", "RTA_PRIORITY")):
                if route.get(key) is not None:
                    attrs.append((name, route[key]))
            if route.get("metrics"):
                attrs.append(("RTA_METRICS", {"attrs": sorted(route["metrics"].items())}))
            msg["attrs"] = attrs
            out.append(_decode(msg, 24))
        return out

    def route_add(self, family: int, dst: str | None, dst_len: int, *,
                  gateway: str | None = None, oif: int | None = None, table: int | None = None,
                  scope: int | None = None, priority: int | None = None,
                  mtu: int | None = None, advmss: int | None = None) -> None:
        self._record("route_add", dst=f"{dst}/{dst_len}", gateway=gateway, oif=oif)
        self.kernel.routes.append({"netns": self._ns, "family": family, "dst": dst,
                                   "dst_len": dst_len, "gateway": gateway, "oif": oif,
                                   "table": table})

    # -- VFs and sysctls --------------------------------------------------------------------

    def set_vfs(self, pf_index: int, updates: Sequence[VfUpdate]) -> list[VfResult]:
        self._record("set_vfs", pf_index=pf_index, updates=list(updates))
        pf = self.kernel.find(self._ns, pf_index)
        if pf is None:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        results = []
        for update in updates:
            config = pf.vfs[update.vf]
            applied, failed = [], []
            for setting in update.requested():
                if setting in self.kernel._refused:
                    failed.append(SettingError(setting, update.describe(setting),
                                               self.kernel._refused[setting]))
                    continue
                applied.append(setting)
                config = _applied(config, update, setting)
            pf.vfs[update.vf] = config
            results.append(VfResult(update.vf, tuple(applied), tuple(failed)))
        return results

    def set_sysctl(self, key: str, value: str) -> None:
        self._record("set_sysctl", key=key, value=value)
        self.kernel.sysctls[(self._ns, key)] = value

    def link_brief(self, name: str) -> LinkBrief | None:
        self._record("link", index=0, name=name)
        found = self.kernel.find(self._ns, 0, name)
        return None if found is None else LinkBrief(found.index, found.name, found.mac,
                                                     found.mtu)


    # -- policy routing ---------------------------------------------------------------------

    def rules(self, family: int = socket.AF_UNSPEC) -> list[Any]:
        self._record("rules")
        out = []
        for rule in self.kernel.rules:
            if rule["netns"] != self._ns or family not in (socket.AF_UNSPEC, rule["family"]):
                continue
            msg = fibmsg()
            msg["family"] = rule["family"]
            msg["src_len"] = rule["src_len"]
            msg["table"] = rule["table"] if rule["table"] < 256 else 0
            msg["action"] = 1  # FR_ACT_TO_TBL
            msg["attrs"] = [("FRA_TABLE", rule["table"]), ("FRA_SRC", rule["src"]),
                            ("FRA_PRIORITY", rule["priority"])]
            out.append(_decode(msg, 32))
        return out

    def rule_add(self, family: int, src: str, src_len: int, *, table: int,
                 priority: int | None = None) -> None:
        self._record("rule_add", src=f"{src}/{src_len}", table=table, priority=priority)
        mine = [r for r in self.kernel.rules if r["netns"] == self._ns]
        if priority is None:  # the kernel: just before the first rule after 0 (main: 32766)
            priority = min([r["priority"] for r in mine] + [32766]) - 1
        rule = {"netns": self._ns, "family": family, "src": src, "src_len": src_len,
                "table": table, "priority": priority}
        if rule in mine:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        self.kernel.rules.append(rule)

    def rule_delete(self, family: int, src: str, src_len: int, *, table: int,
                    priority: int | None = None) -> bool:
        self._record("rule_delete", src=f"{src}/{src_len}", table=table, priority=priority)
        for rule in self.kernel.rules:
            if (rule["netns"], rule["family"], rule["src"], rule["src_len"], rule["table"]) == (
                    self._ns, family, src, src_len, table) and priority in (
                    None, rule["priority"]):
                self.kernel.rules.remove(rule)
                return True
        return False

    def route_replace(self, family: int, dst: str | None, dst_len: int, *, table: int,
                      gateway: str | None = None, oif: int | None = None,
                      scope: int | None = None, priority: int | None = None,
                      prefsrc: str | None = None, proto: int | None = None,
                      metrics: dict[str, int] | None = None) -> None:
        self._record("route_replace", dst=f"{dst}/{dst_len}", table=table, gateway=gateway,
                     oif=oif, prefsrc=prefsrc)
        self._drop_route(family, dst, dst_len, table, None, oif, priority)
        self.kernel.routes.append({"netns": self._ns, "family": family, "dst": dst,
                                   "dst_len": dst_len, "gateway": gateway, "oif": oif,
                                   "table": table, "scope": scope, "priority": priority,
                                   "prefsrc": prefsrc, "proto": proto, "metrics": metrics})

    def route_delete(self, family: int, dst: str | None, dst_len: int, *, table: int,
                     gateway: str | None = None, oif: int | None = None,
                     priority: int | None = None) -> bool:
        self._record("route_delete", dst=f"{dst}/{dst_len}", table=table, gateway=gateway,
                     oif=oif)
        return self._drop_route(family, dst, dst_len, table, gateway, oif, priority)

    def _drop_route(self, family: int, dst: str | None, dst_len: int, table: int,
                    gateway: str | None, oif: int | None, priority: int | None) -> bool:
        for route in self.kernel.routes:
            if (route["netns"] == self._ns and route["family"] == family
                    and route["dst_len"] == dst_len
                    and (not dst_len or route["dst"] == dst)
                    and (route.get("table") or 254) == table
                    and gateway in (None, route.get("gateway"))
                    and oif in (None, route["oif"])
                    and priority in (None, route.get("priority"))):
                self.kernel.routes.remove(route)
                return True
        return False

    # -- link dumps and FDB entries (the vxlan kind) ----------------------------------------

    def links(self, ext_mask: int = 0) -> list[Any]:
        self._record("links")
        return [self.kernel.link_msg(link, ext_mask) for link in list(self.kernel.links.values())
                if link.netns == self._ns]

    def fdb_append(self, index: int, mac: str, dst: str) -> None:
        self._record("fdb_append", index=index, mac=mac, dst=dst)
        link = self.kernel.find(self._ns, index)
        if link is None:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        if link.kind != "vxlan":
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        if (index, mac, dst) in self.kernel.fdb:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        self.kernel.fdb.append((index, mac, dst))

    def fdb_delete(self, index: int, mac: str, dst: str) -> bool:
        self._record("fdb_delete", index=index, mac=mac, dst=dst)
        if (index, mac, dst) not in self.kernel.fdb:
            return False
        self.kernel.fdb.remove((index, mac, dst))
        return True

    def fdb_entries(self, index: int) -> list[tuple[str, str | None]]:
        self._record("fdb_entries", index=index)
        return [(mac, dst) for i, mac, dst in self.kernel.fdb if i == index]

    def address_delete(self, index: int, address: str, prefixlen: int, family: int) -> bool:
        self._record("address_delete", index=index, address=address, prefixlen=prefixlen)
        entry = (self._ns, index, address, prefixlen)
        if entry not in self.kernel.addresses:
            return False
        self.kernel.addresses.remove(entry)
        return True

    def retire_link(self, index: int, name: str | None) -> int:
        """As Rtnl's: the rename, then each of the link's addresses removed."""
        code = 0
        if name:
            try:
                self.link_set(index, name=name)
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.ENODEV, errno.ENOENT):
                    raise
                code = errno.ENODEV if exc.errno == errno.ENOENT else exc.errno
        for ns, at, address, prefixlen in list(self.kernel.addresses):
            if ns == self._ns and at == index:
                self.address_delete(index, address, prefixlen,
                                    socket.AF_INET6 if ":" in address else socket.AF_INET)
        return code


    # -- bonds ------------------------------------------------------------------------------

    def _set_master(self, link: FakeLink, master: int) -> None:
        """IFLA_MASTER: 0 releases the link; a bridge takes any link; the bonding driver only
        a link that is down, and an enslaved link takes the bond's MTU and MAC and comes up."""
        if not master:
            link.master = None
            return
        bond = self.kernel.find(self._ns, master)
        if bond is None:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        if bond.kind != "bond":
            link.master = master
            return
        if link.up or link.master:  # "Device can not be enslaved while up"
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        link.master, link.mtu, link.mac, link.up = master, bond.mtu, bond.mac, True


def _applied(config: VfConfig, u: VfUpdate, setting: str) -> VfConfig:
    if setting == "mac":
        return replace(config, mac=u.mac)
    if setting == "vlan":
        return replace(config, vlan=u.vlan, qos=u.qos, vlan_proto=u.vlan_proto)
    if setting == "rate":
        return replace(config, min_tx_rate=u.min_tx_rate or 0, max_tx_rate=u.max_tx_rate or 0)
    return replace(config, **{setting: getattr(u, setting)})

