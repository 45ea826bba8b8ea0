"""Netlink reads for discovery: links, PF-side VF settings, default routes, and link events.

Requests go through :class:`nodeagent.rtnl.Rtnl` (pyroute2 encodes and decodes, plain sockets
carry them); event sockets are plain sockets decoded with pyroute2's marshal. Devlink goes
through pyroute2's own generic-netlink socket, which must stay in the thread that made it.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from pyroute2.netlink import NLM_F_REQUEST

from nodeagent import netns as netns_mod
from nodeagent.model import LINK_STATES, VLAN_PROTOS, VfConfig
from nodeagent.rtnl import (
    IFINFOMSG,
    NLMSGHDR,
    RT_TABLE_MAIN,
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    Rtnl,
    parse_attrs,
    parse_link_brief,
)

if TYPE_CHECKING:
    from pyroute2.devlink import DL

log = logging.getLogger(__name__)

RTEXT_FILTER_VF = 1
RTMGRP_LINK = 0x1
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_ROUTE = 0x400
#: Kernels report "not supported by this driver" for spoofchk and trust as (u32)-1.
UNSUPPORTED = 0xFFFFFFFF
ARPHRD_LOOPBACK = 772
ESWITCH_MODES = {0: "legacy", 1: "switchdev", 2: "switchdev_inactive"}
#: Link kinds whose IFLA_LINK names the lower device they are stacked on.
STACKED_KINDS = frozenset({"vlan", "macvlan", "macvtap", "ipvlan", "ipvtap"})


@dataclass(frozen=True)
class LinkInfo:
    """What RTM_NEWLINK says of one link."""

    index: int
    name: str
    mac: str | None
    mtu: int | None
    operstate: str | None
    carrier: bool | None
    kind: str | None
    master: int | None
    lower: int | None
    loopback: bool = False


def link_from_msg(msg: Any) -> LinkInfo:
    carrier = msg.get("IFLA_CARRIER")
    operstate = msg.get("IFLA_OPERSTATE")
    kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    lower = msg.get("IFLA_LINK")
    # IFLA_LINK of a link whose peer is in another namespace (IFLA_LINK_NETNSID) is no lower here.
    if msg.get("IFLA_LINK_NETNSID") is not None or lower == msg["index"]:
        lower = None
    return LinkInfo(
        index=msg["index"],
        name=msg.get("IFLA_IFNAME"),
        mac=msg.get("IFLA_ADDRESS"),
        mtu=msg.get("IFLA_MTU"),
        operstate=operstate.lower() if operstate else None,
        carrier=None if carrier is None else bool(carrier),
        kind=kind,
        master=msg.get("IFLA_MASTER") or None,
        lower=lower or None,
        loopback=msg["ifi_type"] == ARPHRD_LOOPBACK,
    )


_U32 = struct.Struct("=I")
#: IFLA_* attributes read by link_from_data
_ADDRESS, _IFNAME, _MTU, _LINK, _MASTER, _OPERSTATE, _LINKINFO, _CARRIER, _LINK_NETNSID = (
    1, 3, 4, 5, 10, 16, 18, 33, 37)
_INFO_KIND = 1
#: IF_OPER_* (RFC 2863), as pyroute2 names them
OPERSTATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")


def link_from_data(data: bytes) -> LinkInfo:
    """:func:`link_from_msg` of one RTM_NEWLINK message read from its bytes (header included),
    without building pyroute2's objects."""
    _family, ifi_type, index, _flags, _change = IFINFOMSG.unpack_from(data, NLMSGHDR.size)
    attrs = parse_attrs(data, NLMSGHDR.size + IFINFOMSG.size, len(data))

    def u32(key: int) -> int | None:
        value = attrs.get(key)
        return _U32.unpack_from(value)[0] if value is not None and len(value) >= 4 else None

    def text(value: bytes | None) -> str | None:
        return None if value is None else value.split(b"\0", 1)[0].decode("utf-8", "replace")

    kind = None
    if _LINKINFO in attrs:
        info = attrs[_LINKINFO]
        kind = text(parse_attrs(info, 0, len(info)).get(_INFO_KIND))
    lower = u32(_LINK)
    if _LINK_NETNSID in attrs or lower == index:
        lower = None
    operstate, carrier = attrs.get(_OPERSTATE), attrs.get(_CARRIER)
    address = attrs.get(_ADDRESS)
    return LinkInfo(
        index=index,
        name=text(attrs.get(_IFNAME)) or "",
        mac=":".join(f"{b:02x}" for b in address) if address is not None else None,
        mtu=u32(_MTU),
        operstate=(OPERSTATES[operstate[0]] if operstate[0] < len(OPERSTATES) else None)
        if operstate else None,
        carrier=bool(carrier[0]) if carrier else None,
        kind=kind,
        master=u32(_MASTER) or None,
        lower=lower or None,
        loopback=ifi_type == ARPHRD_LOOPBACK,
    )


def vf_configs_from_msg(msg: Any) -> dict[int, VfConfig]:
    """PF-side VF settings from a link message requested with RTEXT_FILTER_VF."""
    vflist = msg.get_attr("IFLA_VFINFO_LIST")
    if vflist is None:
        return {}
    configs: dict[int, VfConfig] = {}
    for info in vflist.get_attrs("IFLA_VF_INFO"):
        mac = info.get_attr("IFLA_VF_MAC")
        if mac is None:
            continue
        # The kernel reports the VLAN twice: IFLA_VF_VLAN (no protocol) and IFLA_VF_VLAN_LIST,
        # whose one IFLA_VF_VLAN_INFO adds the protocol (network byte order on the wire).
        vlan = info.get_attr("IFLA_VF_VLAN") or {}
        vlan_proto = "802.1Q"
        vlist = info.get_attr("IFLA_VF_VLAN_LIST")
        ivvi = None if vlist is None else next(iter(vlist.get_attrs("IFLA_VF_VLAN_INFO")), None)
        if ivvi is not None:
            vlan = ivvi
            # 0: a VF netdevsim never had a VLAN set on (the kernel's default is 802.1Q).
            proto = ivvi["proto"] or 0x8100
            vlan_proto = VLAN_PROTOS.get(proto, hex(proto))
        spoofchk = info.get_attr("IFLA_VF_SPOOFCHK")
        trust = info.get_attr("IFLA_VF_TRUST")
        rate = info.get_attr("IFLA_VF_RATE")
        link_state = info.get_attr("IFLA_VF_LINK_STATE")
        configs[mac["vf"]] = VfConfig(
            mac=mac["mac"],
            vlan=vlan.get("vlan", 0),
            qos=vlan.get("qos", 0),
            vlan_proto=vlan_proto,
            spoofchk=_flag(spoofchk, "spoofchk"),
            trust=_flag(trust, "trust"),
            min_tx_rate=rate["min_tx_rate"] if rate else 0,
            max_tx_rate=rate["max_tx_rate"] if rate else 0,
            link_state=LINK_STATES.get(link_state["link_state"]) if link_state else None,
        )
    return configs


def _flag(attr: Any, field: str) -> bool | None:
    if attr is None or attr[field] == UNSUPPORTED:
        return None
    return bool(attr[field])


def default_route_links(links: Iterable[LinkInfo], oifs: set[int]) -> set[int]:
    """Links that carry a default route: its output links and every link they are stacked on.

    A PF enslaved to a bond or bridge, or under a VLAN, that carries the default route carries
    it too: taking it away cuts the node off.
    """
    by_index = {link.index: link for link in links}
    carrying = set(oifs)
    changed = True
    while changed:
        changed = False
        for link in by_index.values():
            if link.index in carrying:
                continue
            stacked_on_carrier = link.master in carrying
            lower_of_carrier = any(
                upper.lower == link.index and upper.kind in STACKED_KINDS
                for upper in by_index.values()
                if upper.index in carrying
            )
            if stacked_on_carrier or lower_of_carrier:
                carrying.add(link.index)
                changed = True
    return carrying


def default_route_oifs(rtnl: Rtnl, families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6)
                       ) -> list[int]:
    """Output links of the default routes in the main table, in the kernel's order."""
    oifs: list[int] = []
    for family in families:
        for route in rtnl.routes(family):
            table = route.get("RTA_TABLE") or route["table"]
            if route["dst_len"] != 0 or table != RT_TABLE_MAIN:
                continue
            hops = [route.get("RTA_OIF")] + [h.get("oif") for h in route.get("RTA_MULTIPATH") or ()]
            oifs += [oif for oif in hops if oif and oif not in oifs]
    return oifs


_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope...
_RTNEXTHOP = struct.Struct("=HBBi")  # length, flags, hops, ifindex
_RTA_OIF, _RTA_MULTIPATH, _RTA_TABLE = 4, 9, 15


def default_route_hops(data: bytes) -> list[int]:
    """The output links of one RTM_NEWROUTE message (header included) if it is a default
    route of the main table, else none."""
    _family, dst_len, _src, _tos, table, *_rest = _RTMSG.unpack_from(data, NLMSGHDR.size)
    attrs = parse_attrs(data, NLMSGHDR.size + _RTMSG.size, len(data))
    if _RTA_TABLE in attrs and len(attrs[_RTA_TABLE]) >= 4:
        table = _U32.unpack_from(attrs[_RTA_TABLE])[0] or table
    if dst_len != 0 or table != RT_TABLE_MAIN:
        return []
    hops = []
    if _RTA_OIF in attrs and len(attrs[_RTA_OIF]) >= 4:
        hops.append(_U32.unpack_from(attrs[_RTA_OIF])[0])
    multipath, at = attrs.get(_RTA_MULTIPATH, b""), 0
    while at + _RTNEXTHOP.size <= len(multipath):
        length, _flags, _hops, ifindex = _RTNEXTHOP.unpack_from(multipath, at)
        if length < _RTNEXTHOP.size:
            break
        hops.append(ifindex)
        at += (length + 3) & ~3
    return [oif for oif in hops if oif]


class Netlink:
    """Discovery's netlink queries in one network namespace (devlink: from one thread)."""

    def __init__(self, netns: str | None = None) -> None:
        self._netns = netns
        self._devlink: DL | bool | None = None  # False: the kernel has no devlink family
        self._rtnl = Rtnl(netns)

    def close(self) -> None:
        self._rtnl.close()
        if self._devlink is not None and self._devlink is not False:
            self._devlink.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def links(self) -> dict[str, LinkInfo]:
        links = (link_from_data(data) for data in self._rtnl.links_raw())
        return {link.name: link for link in links}

    def vf_configs(self, ifindex: int) -> dict[int, VfConfig]:
        """PF-side settings of a PF's VFs; empty if the link is gone or reports none."""
        try:
            msg = self._rtnl.link(index=ifindex, ext_mask=RTEXT_FILTER_VF)
        except OSError as exc:
            log.debug("VF info of ifindex %s unavailable: %s", ifindex, exc)
            return {}
        return {} if msg is None else vf_configs_from_msg(msg)

    def default_route_oifs(self) -> set[int]:
        """Output links of IPv4 and IPv6 default routes in the main table (as
        :func:`default_route_oifs`, read from the raw messages: the inventory asks on every
        rescan, and pyroute2's route messages are reference cycles)."""
        oifs: set[int] = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            for data in self._rtnl.routes_raw(family):
                oifs.update(default_route_hops(data))
        return oifs

    def eswitch_mode(self, pci_address: str, bus: str = "pci") -> str | None:
        """A PF's eswitch mode from devlink, or None where the kernel or driver reports none."""
        # pyroute2's generic netlink socket (and its asyncio machinery): only for SR-IOV PFs
        from pyroute2.devlink import DL
        from pyroute2.netlink.devlink import DEVLINK_NAMES, devlinkcmd

        if self._devlink is None:
            try:
                self._devlink = netns_mod.run(self._netns, DL)
            except Exception as exc:  # no devlink generic netlink family in this kernel
                log.debug("devlink unavailable: %s", exc)
                self._devlink = False
        if self._devlink is False:
            return None
        msg = devlinkcmd()
        msg["cmd"] = DEVLINK_NAMES["DEVLINK_CMD_ESWITCH_GET"]
        msg["version"] = 1
        msg["attrs"] = [("DEVLINK_ATTR_BUS_NAME", bus), ("DEVLINK_ATTR_DEV_NAME", pci_address)]
        try:
            replies = self._devlink.nlm_request(
                msg, msg_type=self._devlink.prid, msg_flags=NLM_F_REQUEST
            )
        except Exception as exc:  # EOPNOTSUPP / ENODEV: no eswitch on this device
            log.debug("no eswitch mode for %s/%s: %s", bus, pci_address, exc)
            return None
        for reply in replies:
            mode = reply.get_attr("DEVLINK_ATTR_ESWITCH_MODE")
            if mode is not None:
                return ESWITCH_MODES.get(mode, str(mode))
        return None


class EventSocket:
    """A raw rtnetlink socket subscribed to link and route changes, readable from any thread."""

    GROUPS = RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE

    def __init__(self, netns: str | None = None, rcvbuf: int = 4 << 20) -> None:
        self._sock = netns_mod.run(netns, lambda: socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self._sock.bind((0, self.GROUPS))

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def changes(self) -> list[Change]:
        """The link and default-route changes of one datagram, read from the raw messages:
        decoding them with pyroute2 builds a hundred objects per link event (statistics
        included), in reference cycles only the garbage collector frees, and the inventory
        needs three fields of them. Raises OSError(ENOBUFS) when events were lost."""
        data = self._sock.recv(1 << 20)
        changes: list[Change] = []
        at = 0
        while at + NLMSGHDR.size <= len(data):
            length, kind, _flags, _seq, _port = NLMSGHDR.unpack_from(data, at)
            if length < NLMSGHDR.size or at + length > len(data):
                break
            if kind in (RTM_NEWLINK, RTM_DELLINK):
                brief = parse_link_brief(data[at:at + length])
                changes.append(Change(True, brief.name or None, brief.index))
            elif kind in (RTM_NEWROUTE, RTM_DELROUTE) and length > NLMSGHDR.size + 1 \
                    and data[at + NLMSGHDR.size + 1] == 0:  # rtmsg's dst_len: a default route
                changes.append(Change(False))
            at += (length + 3) & ~3
        return changes



class Change(NamedTuple):
    """A link added, changed or removed (``link``), or a default route added or removed."""

    link: bool
    name: str | None = None
    index: int | None = None
