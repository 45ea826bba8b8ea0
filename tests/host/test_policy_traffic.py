"""MultiNetworkPolicy enforcement with real packets on the host kernel.

Pods are network namespaces with a macvlan (bridge mode) on one veth: the policed pod P, a peer
A (team namespace, app=api) and a peer B (other namespace, app=web). P gets
``nft.apply(compile_pod(...))``; flows are real TCP/UDP sockets, IPv4 and IPv6. The host kernel
has no SCTP sockets: SCTP rules are checked with raw IP packets of protocol 132 carrying an
SCTP common header (nftables' ``sctp dport`` reads that header; a raw socket in P sees only
what the input hook let through). The lab test (hw-lab/suite/test_policy.py) uses real SCTP
sockets.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from nodeagent import netns
from nodeagent.policy import nft
from nodeagent.policy.compile import compile_pod, deny_all, update_script
from nodeagent.policy.model import POLICY_FOR, ClusterView, Peer, Target, parse_policy
from tests.host.conftest import unique
from tests.traffic import stream_connects

pytestmark = pytest.mark.skipif(not nft.available(), reason="libnftables.so.1 is not installed")

NET = "team/net1"
BLOCKED_WAIT = 0.4  # seconds a dropped packet is waited for


@dataclass
class Pod:
    ns: str
    v4: str
    v6: str
    v4b: str = ""  # on the second interface (net2), if any


@dataclass
class Lab:
    p: Pod
    a: Pod
    b: Pod


def _add_pod(ipr: IPRoute, master: str, tag: str, host: int, second: str | None) -> Pod:
    ns = unique(tag)
    pr_netns.create(ns)
    pod = Pod(ns, f"10.77.0.{host}", f"fd77::{host}")
    links = [("net1", master, f"10.77.0.{host}/24", f"fd77::{host}/64")]
    if second is not None:
        pod.v4b = f"10.78.0.{host}"
        links.append(("net2", second, f"10.78.0.{host}/24", None))
    for ifname, parent, v4, v6 in links:
        tmp = unique("mv")
        ipr.link("add", ifname=tmp, kind="macvlan", link=ipr.link_lookup(ifname=parent)[0],
                 macvlan_mode="bridge")
        ipr.link("set", index=ipr.link_lookup(ifname=tmp)[0], net_ns_fd=ns)
        with IPRoute(netns=ns) as inner:
            idx = inner.link_lookup(ifname=tmp)[0]
            inner.link("set", index=idx, ifname=ifname)
            inner.addr("add", index=idx, address=v4.split("/")[0], prefixlen=24)
            if v6:
                inner.addr("add", index=idx, address=v6.split("/")[0], prefixlen=64,
                           flags=0x02)  # IFA_F_NODAD: usable at once
            inner.link("set", index=idx, state="up")
            inner.link("set", index=inner.link_lookup(ifname="lo")[0], state="up")
    return pod


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    masters = [(unique("pm"), unique("pq")), (unique("pm"), unique("pq"))]
    made: list[str] = []
    with IPRoute() as ipr:
        try:
            for name, peer in masters:
                ipr.link("add", ifname=name, kind="veth", peer=peer)
                for n in (name, peer):
                    ipr.link("set", index=ipr.link_lookup(ifname=n)[0], state="up")
            second = masters[1][0]
            for tag, host, net2 in (("pp", 10, second), ("pa", 20, second), ("pb", 30, None)):
                pod = _add_pod(ipr, masters[0][0], tag, host, net2)
                made.append(pod.ns)
            pods = [Pod(ns, f"10.77.0.{h}", f"fd77::{h}", f"10.78.0.{h}" if h != 30 else "")
                    for ns, h in zip(made, (10, 20, 30), strict=True)]
            yield Lab(*pods)
        finally:
            for ns in made:
                nft.release(ns)
                pr_netns.remove(ns)
            for name, _ in masters:
                for index in ipr.link_lookup(ifname=name):
                    ipr.link("del", index=index)


@pytest.fixture
def policed(lab: Lab) -> Iterator[Callable[..., None]]:
    """``policed(*specs, ports=...)``: P's net1 (and net2 with ``net2=True``) enforce the
    policies; the table is removed after the test."""
    def apply(*specs: dict[str, Any], net2: bool = False, named: Any = None) -> None:
        policies = [parse_policy({"metadata": {"namespace": "team", "name": f"p{i}",
                                               "annotations": {POLICY_FOR: "net1"}},
                                  "spec": spec}) for i, spec in enumerate(specs)]
        targets = [Target("team", "p", {"app": "db"}, NET, "net1",
                          _ips(lab.p.v4, lab.p.v6), named_ports=named or {})]
        if net2:
            targets.append(Target("team", "p", {"app": "db"}, "team/net2", "net2",
                                  _ips(lab.p.v4b)))
        view = ClusterView({"team": {"env": "team"}, "other": {"env": "other"}}, {NET: [
            Peer("team", "a", {"app": "api"}, _ips(lab.a.v4, lab.a.v6)),
            Peer("other", "b", {"app": "web"}, _ips(lab.b.v4, lab.b.v6))]})
        nft.apply(lab.p.ns, compile_pod(targets, policies, view).script)

    yield apply
    nft.clear(lab.p.ns)


def _ips(*texts: str) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_address(t) for t in texts)


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _sock(ns: str, ip: str, kind: int, proto: int = 0) -> socket.socket:
    return netns.run(ns, lambda: socket.socket(_family(ip), kind, proto))


_port_counter = [20000]


def tcp(client: Pod, server: Pod, ip: str, port: int | None = None) -> bool:
    """A TCP connection from ``client`` to ``server``'s ``ip``:``port`` opens and carries data
    both ways."""
    return stream_connects(client.ns, server.ns, ip, port or _next_port(), wait=BLOCKED_WAIT,
                           accept_wait=2)


def udp(client: Pod, server: Pod, ip: str, port: int | None = None,
        reply: bool = False) -> bool:
    """A UDP datagram from ``client`` reaches ``server`` (and, with ``reply``, its answer
    comes back)."""
    port = port or _next_port()
    with _sock(server.ns, ip, socket.SOCK_DGRAM) as srv, \
            _sock(client.ns, ip, socket.SOCK_DGRAM) as cli:
        srv.bind((ip, port))
        srv.settimeout(BLOCKED_WAIT)
        cli.settimeout(BLOCKED_WAIT)
        try:
            cli.sendto(b"hello", (ip, port))
            data, source = srv.recvfrom(64)
        except OSError:
            return False
        assert data == b"hello"
        if not reply:
            return True
        srv.sendto(b"back", source)
        try:
            return cli.recv(64) == b"back"
        except OSError:
            return False


def sctp(client: Pod, server: Pod, ip: str, port: int) -> bool:
    """A raw IP packet of protocol 132 (an SCTP common header and an INIT chunk) to ``port``
    reaches a raw socket in ``server`` (the host kernel has no SCTP sockets)."""
    header = struct.pack("!HHII", 40000, port, 0, 0)
    init = struct.pack("!BBHIIHHI", 1, 0, 20, 0x1234, 65535, 1, 1, 1)
    with _sock(server.ns, ip, socket.SOCK_RAW, 132) as srv, \
            _sock(client.ns, ip, socket.SOCK_RAW, 132) as cli:
        srv.settimeout(BLOCKED_WAIT)
        try:
            cli.sendto(header + init, (ip, 0))
            while True:
                data = srv.recv(2048)
                if _family(ip) == socket.AF_INET:
                    data = data[(data[0] & 0x0F) * 4:]  # IPv4 raw sockets see the IP header
                if struct.unpack("!H", data[2:4])[0] == port:
                    return True
        except OSError:
            return False


def _next_port() -> int:
    _port_counter[0] += 1
    return _port_counter[0]


def both(check: Callable[..., bool], client: Pod, server: Pod, *args: Any) -> tuple[bool, bool]:
    """``check`` over IPv4 and IPv6 of ``server``."""
    return check(client, server, server.v4, *args), check(client, server, server.v6, *args)


def test_without_policy_everything_flows(lab: Lab) -> None:
    assert both(tcp, lab.a, lab.p) == (True, True)
    assert both(udp, lab.b, lab.p) == (True, True)
    assert both(tcp, lab.p, lab.b) == (True, True)
    assert both(sctp, lab.a, lab.p, 3868) == (True, True)


def test_default_deny_ingress_keeps_egress_and_its_replies(lab: Lab, policed: Any) -> None:
    policed({"podSelector": {}})
    assert both(tcp, lab.a, lab.p) == (False, False)
    assert both(udp, lab.a, lab.p) == (False, False)
    assert both(sctp, lab.a, lab.p, 3868) == (False, False)
    # P's own connections still work, their replies are let in (conntrack).
    assert both(tcp, lab.p, lab.a) == (True, True)
    assert udp(lab.p, lab.a, lab.a.v4, None, True) and udp(lab.p, lab.a, lab.a.v6, None, True)


def test_default_deny_egress_keeps_ingress_and_its_replies(lab: Lab, policed: Any) -> None:
    policed({"policyTypes": ["Egress"]})
    assert both(tcp, lab.p, lab.a) == (False, False)
    assert both(udp, lab.p, lab.b) == (False, False)
    assert both(tcp, lab.a, lab.p) == (True, True)
    assert udp(lab.a, lab.p, lab.p.v4, None, True) and udp(lab.a, lab.p, lab.p.v6, None, True)


def test_pod_selector_peers(lab: Lab, policed: Any) -> None:
    policed({"ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}]}],
             "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "api"}}}]}]})
    assert both(tcp, lab.a, lab.p) == (True, True)
    assert both(udp, lab.a, lab.p) == (True, True)
    assert both(tcp, lab.b, lab.p) == (False, False)  # other namespace, other labels
    assert both(tcp, lab.p, lab.a) == (True, True)
    assert both(udp, lab.p, lab.b) == (False, False)


def test_namespace_and_pod_selector_in_one_peer(lab: Lab, policed: Any) -> None:
    policed({"ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"env": "other"}},
                                    "podSelector": {"matchLabels": {"app": "web"}}}]}]})
    assert both(tcp, lab.b, lab.p) == (True, True)
    assert both(tcp, lab.a, lab.p) == (False, False)


def test_ip_block_with_except(lab: Lab, policed: Any) -> None:
    policed({"ingress": [{"from": [
        {"ipBlock": {"cidr": "10.77.0.0/24", "except": ["10.77.0.30/32"]}},
        {"ipBlock": {"cidr": "fd77::/64", "except": ["fd77::30/128"]}}]}],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.77.0.16/29"}},
                           {"ipBlock": {"cidr": "fd77::/120", "except": ["fd77::20/124"]}}]}]})
    assert both(tcp, lab.a, lab.p) == (True, True)
    assert both(udp, lab.b, lab.p) == (False, False)
    assert tcp(lab.p, lab.a, lab.a.v4) and not tcp(lab.p, lab.b, lab.b.v4)  # .30 is outside .16/29
    assert not tcp(lab.p, lab.a, lab.a.v6)  # fd77::20 is in the excepted fd77::20/124
    assert udp(lab.p, lab.b, lab.b.v6)  # fd77::30 is not


def test_ports_end_port_and_protocols(lab: Lab, policed: Any) -> None:
    policed({"ingress": [{"ports": [{"protocol": "TCP", "port": 8000, "endPort": 8010},
                                    {"protocol": "UDP", "port": 5353},
                                    {"protocol": "SCTP", "port": 3868}]}]})
    for port in (8000, 8010):
        assert both(tcp, lab.a, lab.p, port) == (True, True)
    assert both(tcp, lab.a, lab.p, 8011) == (False, False)
    assert both(tcp, lab.a, lab.p, 7999) == (False, False)
    assert both(udp, lab.a, lab.p, 5353) == (True, True)
    assert both(udp, lab.a, lab.p, 8000) == (False, False)  # the range is TCP only
    assert both(sctp, lab.b, lab.p, 3868) == (True, True)
    assert both(sctp, lab.b, lab.p, 3869) == (False, False)


def test_named_port_resolves_on_the_policed_pod(lab: Lab, policed: Any) -> None:
    policed({"ingress": [{"ports": [{"port": "pg"}]}]}, named={"pg": ("tcp", 5432)})
    assert both(tcp, lab.a, lab.p, 5432) == (True, True)
    assert both(tcp, lab.a, lab.p, 5433) == (False, False)


def test_only_the_policed_interface_is_touched(lab: Lab, policed: Any) -> None:
    policed({"policyTypes": ["Ingress", "Egress"]})
    assert not tcp(lab.a, lab.p, lab.p.v4)
    assert tcp(lab.a, lab.p, lab.p.v4b)  # net2: no policy names it
    assert tcp(lab.p, lab.a, lab.a.v4b)
    with _sock(lab.p.ns, "127.0.0.1", socket.SOCK_STREAM) as s:  # loopback too
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        assert tcp(lab.p, lab.p, "127.0.0.1", _next_port())


def test_deny_all_then_policy_then_clear(lab: Lab) -> None:
    nft.apply(lab.p.ns, deny_all(["net1"]).script)
    try:
        assert not tcp(lab.a, lab.p, lab.p.v4) and not tcp(lab.p, lab.a, lab.a.v6)
        policy = parse_policy({"metadata": {"namespace": "team", "name": "x",
                                            "annotations": {POLICY_FOR: "net1"}},
                               "spec": {"ingress": [{}]}})
        target = Target("team", "p", {}, NET, "net1", _ips(lab.p.v4))
        rules = compile_pod([target], [policy], ClusterView({}, {}))
        nft.apply(lab.p.ns, rules.script)  # one transaction replaces the deny-all table
        assert tcp(lab.a, lab.p, lab.p.v4) and tcp(lab.p, lab.a, lab.a.v6)
        assert "chain in_0" in (nft.show(lab.p.ns) or "")
    finally:
        nft.clear(lab.p.ns)
    assert nft.show(lab.p.ns) is None
    nft.clear(lab.p.ns)  # idempotent


def test_a_refused_script_changes_nothing(lab: Lab, policed: Any) -> None:
    policed({"podSelector": {}})
    with pytest.raises(nft.NftError):
        nft.apply(lab.p.ns, "add table inet nodeagent\ndelete table inet nodeagent\n"
                            "table inet nodeagent { chain c { bogus; } }\n")
    assert not tcp(lab.a, lab.p, lab.p.v4)  # the deny-all table is still there


def test_a_peer_update_applies_as_element_changes(lab: Lab) -> None:
    policy = parse_policy({"metadata": {"namespace": "team", "name": "x",
                                        "annotations": {POLICY_FOR: "net1"}},
                           "spec": {"ingress": [{"from": [{"podSelector": {}}]}]}})
    target = Target("team", "p", {}, NET, "net1", _ips(lab.p.v4, lab.p.v6))
    a = Peer("team", "a", {}, _ips(lab.a.v4, lab.a.v6))
    b = Peer("team", "b", {}, _ips(lab.b.v4, lab.b.v6))
    only_a = compile_pod([target], [policy], ClusterView({}, {NET: [a]}))
    only_b = compile_pod([target], [policy], ClusterView({}, {NET: [b]}))
    nft.apply(lab.p.ns, only_a.script)
    try:
        assert both(tcp, lab.a, lab.p) == (True, True)
        assert both(tcp, lab.b, lab.p) == (False, False)
        update = update_script(only_a, only_b)
        assert "table inet nodeagent {" not in update
        nft.apply(lab.p.ns, update)
        assert both(tcp, lab.b, lab.p) == (True, True)
        assert both(tcp, lab.a, lab.p) == (False, False)
    finally:
        nft.clear(lab.p.ns)
