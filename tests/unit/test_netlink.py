"""Decoding of rtnetlink link messages and the default-route carrier rule.

The messages are real wire bytes (encoded by pyroute2, as the kernel would send them) decoded
through the same marshal the agent's event socket uses. The lab suite checks the same decoding
against real igb PFs.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from nodeagent.model import VfConfig
from nodeagent.netlink import (
    Change,
    EventSocket,
    LinkInfo,
    default_route_hops,
    default_route_links,
    default_route_oifs,
    link_from_data,
    link_from_msg,
    vf_configs_from_msg,
)

RTM_NEWLINK = 16


def wire(index: int, attrs: list[tuple[str, Any]]) -> Any:
    msg = ifinfmsg()
    msg["header"]["type"] = RTM_NEWLINK
    msg["index"] = index
    msg["attrs"] = attrs
    msg.encode()
    (decoded,) = MarshalRtnl().parse(msg.data)
    return decoded


def vf_info(vf: int, **extra: Any) -> tuple[str, Any]:
    attrs = [("IFLA_VF_MAC", {"vf": vf, "mac": f"02:00:00:00:00:{vf:02x}"})]
    attrs += [(name, {"vf": vf, **value}) for name, value in extra.items()]
    return ("IFLA_VF_INFO", {"attrs": attrs})


def test_vf_settings_from_ifla_vfinfo_list() -> None:
    msg = wire(5, [
        ("IFLA_IFNAME", "ens1f0"),
        ("IFLA_VFINFO_LIST", {"attrs": [
            vf_info(
                0,
                IFLA_VF_VLAN={"vlan": 100, "qos": 3},
                IFLA_VF_VLAN_LIST={"attrs": [("IFLA_VF_VLAN_INFO",
                                              {"vf": 0, "vlan": 100, "qos": 3, "proto": 0x88A8})]},
                IFLA_VF_SPOOFCHK={"spoofchk": 1},
                IFLA_VF_TRUST={"trust": 0},
                IFLA_VF_RATE={"min_tx_rate": 10, "max_tx_rate": 100},
                IFLA_VF_LINK_STATE={"link_state": 2},
            ),
            # igb-like: no trust support (-1), no VLAN list, link state "auto"
            vf_info(
                1,
                IFLA_VF_VLAN={"vlan": 0, "qos": 0},
                IFLA_VF_SPOOFCHK={"spoofchk": 0},
                IFLA_VF_TRUST={"trust": 0xFFFFFFFF},
                IFLA_VF_LINK_STATE={"link_state": 0},
            ),
        ]}),
    ])

    assert vf_configs_from_msg(msg) == {
        0: VfConfig(mac="02:00:00:00:00:00", vlan=100, qos=3, vlan_proto="802.1ad",
                    spoofchk=True, trust=False, min_tx_rate=10, max_tx_rate=100,
                    link_state="disable"),
        1: VfConfig(mac="02:00:00:00:00:01", spoofchk=False, trust=None, link_state="auto"),
    }


def test_a_link_without_vf_info_has_no_vf_settings() -> None:
    assert vf_configs_from_msg(wire(2, [("IFLA_IFNAME", "veth0")])) == {}


def test_link_fields() -> None:
    msg = wire(7, [("IFLA_IFNAME", "mv0"), ("IFLA_ADDRESS", "02:aa:00:00:00:01"),
                   ("IFLA_MTU", 9000), ("IFLA_OPERSTATE", "UP"), ("IFLA_CARRIER", 1),
                   ("IFLA_LINK", 3), ("IFLA_MASTER", 9),
                   ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "macvlan")]})])

    assert link_from_msg(msg) == LinkInfo(index=7, name="mv0", mac="02:aa:00:00:00:01",
                                          mtu=9000, operstate="up", carrier=True,
                                          kind="macvlan", master=9, lower=3)


def link(index: int, kind: str | None = None, master: int | None = None,
         lower: int | None = None) -> LinkInfo:
    return LinkInfo(index, f"l{index}", None, 1500, "up", True, kind, master, lower)


@pytest.mark.parametrize("attrs", [
    [("IFLA_IFNAME", "mv0"), ("IFLA_ADDRESS", "02:aa:00:00:00:01"), ("IFLA_MTU", 9000),
     ("IFLA_OPERSTATE", "UP"), ("IFLA_CARRIER", 1), ("IFLA_LINK", 3), ("IFLA_MASTER", 9),
     ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "macvlan")]})],
    [("IFLA_IFNAME", "veth1"), ("IFLA_OPERSTATE", "LOWERLAYERDOWN"), ("IFLA_CARRIER", 0),
     ("IFLA_LINK", 12), ("IFLA_LINK_NETNSID", 0),
     ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "veth")]})],
    [("IFLA_IFNAME", "eth0"), ("IFLA_LINK", 7), ("IFLA_MASTER", 0), ("IFLA_OPERSTATE", "DOWN")],
    [("IFLA_IFNAME", "dummy-no-extras")],
], ids=["macvlan", "veth-peer-elsewhere", "self-lower", "bare"])
def test_link_fields_read_from_the_bytes_as_pyroute2_reads_them(attrs: list) -> None:
    """Discovery reads link dumps without pyroute2 (link_from_data): the same LinkInfo."""
    msg = wire(7, attrs)
    assert link_from_data(bytes(msg.data)) == link_from_msg(msg)


def test_default_route_carriers_include_slaves_and_lowers() -> None:
    links = [
        link(1, master=3),        # PF under the bond
        link(2, master=3),        # second PF under the bond
        link(3, kind="bond"),     # bond0, lower of the VLAN
        link(4, kind="vlan", lower=3),
        link(5),                  # unrelated PF
        link(6, kind="veth", lower=7),  # a veth's peer is no lower device
        link(7, kind="veth", lower=6),
    ]

    assert default_route_links(links, {4}) == {4, 3, 1, 2}
    assert default_route_links(links, {6}) == {6}
    assert default_route_links(links, set()) == set()


def test_event_datagram_read_without_pyroute2() -> None:
    """What the live inventory follows of one datagram of events: links (by name and index)
    and default routes; other routes and message types are no change to it."""
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    def encoded(msg: Any, kind: int) -> bytes:
        msg["header"]["type"] = kind
        msg.encode()
        return bytes(msg.data)

    def link(index: int, name: str | None, kind: int) -> bytes:
        msg = ifinfmsg()
        msg["index"] = index
        msg["attrs"] = [("IFLA_MTU", 1500)] + ([("IFLA_IFNAME", name)] if name else [])
        return encoded(msg, kind)

    def route(dst_len: int, kind: int) -> bytes:
        msg = rtmsg()
        msg["family"], msg["dst_len"] = 2, dst_len
        msg["attrs"] = [("RTA_OIF", 7)] + ([("RTA_DST", "10.1.0.0")] if dst_len else [])
        return encoded(msg, kind)

    datagram = (link(7, "eth7", RTM_NEWLINK) + route(0, 24) + route(16, 24)
                + link(8, "veth-x", 17) + route(0, 25) + link(9, None, RTM_NEWLINK))
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    events = EventSocket.__new__(EventSocket)
    events._sock = b
    try:
        a.send(datagram)
        assert events.changes() == [Change(True, "eth7", 7), Change(False),
                                    Change(True, "veth-x", 8), Change(False),
                                    Change(True, None, 9)]
    finally:
        a.close()
        events.close()


def test_default_route_hops_read_from_the_bytes_as_from_pyroute2() -> None:
    """The inventory reads route dumps without pyroute2 (default_route_hops): the same output
    links as default_route_oifs finds in pyroute2's messages."""
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    def route(dst_len: int, table: int, attrs: list[tuple[str, Any]]) -> bytes:
        msg = rtmsg()
        msg["header"]["type"] = 24
        msg["family"], msg["dst_len"], msg["table"] = 2, dst_len, min(table, 252)
        msg["attrs"] = attrs + ([("RTA_TABLE", table)] if table > 252 else [])
        msg.encode()
        return bytes(msg.data)

    routes = [route(0, 254, [("RTA_OIF", 4), ("RTA_GATEWAY", "10.0.0.1")]),
              route(0, 254, [("RTA_MULTIPATH", [{"oif": 6, "attrs": [("RTA_GATEWAY", "10.0.1.1")]},
                                                {"oif": 7}])]),
              route(16, 254, [("RTA_OIF", 8), ("RTA_DST", "10.1.0.0")]),
              route(0, 100, [("RTA_OIF", 9)]),
              route(0, 1000, [("RTA_OIF", 10)])]

    class Dump:
        def routes(self, family: int) -> list[Any]:
            return [m for data in routes for m in MarshalRtnl().parse(data)] if family == 2 else []

    raw = [oif for data in routes for oif in default_route_hops(data)]
    assert raw == default_route_oifs(Dump()) == [4, 6, 7]  # type: ignore[arg-type]
