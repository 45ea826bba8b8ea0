"""Source-based routing in a multi-homed pod, with real traffic: the installed shim, a running
agent, real namespaces.

Two networks, A and B: each a veth whose host end is a macvlan master and whose other end is
in a peer namespace holding the network's gateway. The pod has net1 on A (its default route)
and net2 on B. A client in peer B sends from an address outside B's subnet (the "remote"
address, which peer A holds too) to the pod's net2 address; the pod echoes from that address.
Without source-based routing the echo follows the pod's default route out of net1 and reaches
peer A; with it, it leaves by net2 and reaches the client.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from nodeagent import netns as netns_mod
from tests.host.cni_helpers import REFERENCE_BIN, Outcome, run_plugin, running_agent
from tests.host.conftest import unique


@dataclass(frozen=True)
class Family:
    af: int
    a_net: str  # network A's prefix, without the host part
    b_net: str
    remote: str
    plen: int

    def a(self, host: int) -> str:
        return f"{self.a_net}{host}"

    def b(self, host: int) -> str:
        return f"{self.b_net}{host}"

    @property
    def default(self) -> str:
        return "0.0.0.0/0" if self.af == socket.AF_INET else "::/0"

    @property
    def host_len(self) -> int:
        return 32 if self.af == socket.AF_INET else 128


V4 = Family(socket.AF_INET, "10.81.0.", "10.82.0.", "192.0.2.10", 24)
V6 = Family(socket.AF_INET6, "2001:db8:81::", "2001:db8:82::", "2001:db8:99::10", 64)
FAMILIES = {"ipv4": V4, "ipv6": V6}


def ns(path: str) -> str:
    """The name ip-netns knows a /run/netns path by."""
    return path.rsplit("/", 1)[1]


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def agent(tmp_path_factory) -> Iterator[dict]:
    """A running agent and the shim installed under every name it serves (sbr included)."""
    with running_agent(tmp_path_factory.mktemp("agent")) as agent:
        yield agent


def cni(agent: dict, plugin: str, command: str, conf: dict, pod: str, ifname: str) -> Outcome:
    env = {"NODEAGENT_SOCKET": agent["socket"], "NODEAGENT_STATE_DIR": str(agent["state"])}
    return run_plugin(agent["bin"] / plugin, command, conf, netns=pod, ifname=ifname,
                      path=agent["bin"], env=env)


@dataclass
class Networks:
    pod: str
    peer_a: str
    peer_b: str
    master_a: str
    master_b: str


@pytest.fixture
def nets() -> Iterator[Networks]:
    """The pod namespace, the two peers and their veths (host ends up, as masters)."""
    names = [unique("pod"), unique("pra"), unique("prb")]
    masters = [unique("sma"), unique("smb")]
    for n in names:
        ip("netns", "add", n)
    try:
        pod, peer_a, peer_b = (f"/run/netns/{n}" for n in names)
        for peer, master, net in ((names[1], masters[0], "a"), (names[2], masters[1], "b")):
            inside = unique("pe")
            ip("link", "add", master, "type", "veth", "peer", "name", inside)
            ip("link", "set", inside, "netns", peer)
            ip("link", "set", master, "up")
            ip("-n", peer, "link", "set", inside, "up")
            ip("-n", peer, "link", "set", "lo", "up")
            for fam in (V4, V6):
                gw = fam.a(1) if net == "a" else fam.b(1)
                ip("-n", peer, "addr", "add", f"{gw}/{fam.plen}", "dev", inside, "nodad")
                ip("-n", peer, "addr", "add", f"{fam.remote}/{fam.host_len}", "dev", "lo")
        ip("-n", names[0], "link", "set", "lo", "up")
        yield Networks(pod, peer_a, peer_b, *masters)
    finally:
        for master in masters:
            subprocess.run(["ip", "link", "del", master], capture_output=True, check=False)
        for n in names:
            ip("netns", "del", n)


def macvlan(master: str, version: str = "1.1.0", *, addresses: list[dict],
            routes: list[dict] | None = None, **extra: Any) -> dict:
    return {"cniVersion": version, "name": f"net-{master}", "type": "macvlan",
            "master": master,
            "ipam": {"type": "static", "addresses": addresses, "routes": routes or []},
            **extra}


def attach_both(agent: dict, nets: Networks, *, net2_extra: dict | None = None,
                net2_routes: list[dict] | None = None) -> dict:
    """net1 on A with the default routes, net2 on B (dual stack both); net2's result."""
    first = macvlan(nets.master_a, addresses=[
        {"address": f"{V4.a(5)}/24", "gateway": V4.a(1)},
        {"address": f"{V6.a(5)}/64", "gateway": V6.a(1)}],
        routes=[{"dst": V4.default}, {"dst": V6.default}])
    out = cni(agent, "macvlan", "ADD", first, nets.pod, "net1")
    assert out.status == 0, out.stdout + out.stderr
    second = macvlan(nets.master_b, addresses=[
        {"address": f"{V4.b(5)}/24", "gateway": V4.b(1)},
        {"address": f"{V6.b(5)}/64", "gateway": V6.b(1)}],
        routes=net2_routes, **(net2_extra or {}))
    out = cni(agent, "macvlan", "ADD", second, nets.pod, "net2")
    assert out.status == 0, out.stdout + out.stderr
    return out.doc


def open_udp(where: str, fam: Family, address: str, port: int = 0) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(fam.af, socket.SOCK_DGRAM)
        s.bind((address, port))
        return s
    return netns_mod.run(where, make)


def echo(nets: Networks, fam: Family) -> str | None:
    """Which peer the pod's echo of a request from peer B's remote address reaches: "B" (the
    client, by net2), "A" (the other network, by the default route) or None."""
    server = open_udp(nets.pod, fam, fam.b(5))
    client = open_udp(nets.peer_b, fam, fam.remote)
    port = client.getsockname()[1]
    stray = open_udp(nets.peer_a, fam, fam.remote, port)  # the same address and port on A
    try:
        client.sendto(b"ping", (fam.b(5), server.getsockname()[1]))
        ready, _, _ = select.select([server], [], [], 5)
        assert ready, "the request from peer B never reached the pod's net2"
        data, sender = server.recvfrom(64)
        assert data == b"ping" and sender[0] == fam.remote
        server.sendto(b"pong", sender[:2])
        ready, _, _ = select.select([client, stray], [], [], 3)
        if client in ready:
            assert client.recv(64) == b"pong"
            return "B"
        if stray in ready:
            assert stray.recv(64) == b"pong"
            return "A"
        return None
    finally:
        for s in (server, client, stray):
            s.close()


def rules(pod: str, fam: Family) -> list[str]:
    flag = "-4" if fam.af == socket.AF_INET else "-6"
    return [line.split(":", 1)[1].strip() for line in ip("-n", ns(pod), flag, "rule").splitlines()
            if "lookup" in line and "from all" not in line]


def table(pod: str, fam: Family, number: int | str) -> list[str]:
    flag = "-4" if fam.af == socket.AF_INET else "-6"
    shown = subprocess.run(["ip", "-n", ns(pod), flag, "route", "show", "table", str(number)],
                           capture_output=True, text=True, check=False)
    if "does not exist" in shown.stderr:  # a table with no route of this family
        return []
    assert shown.returncode == 0, shown.stderr
    return [" ".join(line.split()) for line in shown.stdout.splitlines()
            if not line.startswith(("fe80::", "multicast"))]


# -- the chained sbr plugin, as a runtime runs a conflist ---------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_without_sbr_the_reply_leaves_by_the_default_route(agent, nets, family) -> None:
    attach_both(agent, nets)

    assert echo(nets, FAMILIES[family]) == "A", (
        "the reply to a request that came in on net2 leaves by net1, to the wrong network")


def test_chained_sbr_sends_replies_back_by_the_interface_they_came_in_on(agent, nets) -> None:
    net2 = attach_both(agent, nets)
    chained = {"cniVersion": "1.1.0", "name": f"net-{nets.master_b}", "type": "sbr",
               "prevResult": net2}

    out = cni(agent, "sbr", "ADD", chained, nets.pod, "net2")

    assert out.status == 0, out.stdout + out.stderr
    assert out.doc == net2, "sbr passes prevResult through"
    assert echo(nets, V4) == "B" and echo(nets, V6) == "B"
    assert rules(nets.pod, V4) == [f"from {V4.b(5)} lookup 100"]
    assert rules(nets.pod, V6) == [f"from {V6.b(5)} lookup 101"], (
        "each address its own table, the next free one")
    assert f"default via {V4.b(1)} dev net2" in table(nets.pod, V4, 100)
    assert any(r.startswith(f"{V4.b(0)}/24 dev net2") for r in table(nets.pod, V4, 100))
    assert not any("net2" in r for r in table(nets.pod, V4, "main")), (
        "net2's routes moved out of the main table")
    assert any(r.startswith(f"default via {V6.b(1)} dev net2") for r in table(nets.pod, V6, 101))
    assert echo(nets, V4) == "B", "the main table still routes the rest by net1"
    check = cni(agent, "sbr", "CHECK", chained, nets.pod, "net2")
    assert check.status == 0, check.stdout

    for _ in range(2):  # DEL is idempotent
        out = cni(agent, "sbr", "DEL", chained, nets.pod, "net2")
        assert out.status == 0, out.stdout
        assert rules(nets.pod, V4) == [] and rules(nets.pod, V6) == []
        assert table(nets.pod, V4, 100) == [] and table(nets.pod, V6, 101) == []
    failed = cni(agent, "sbr", "CHECK", chained, nets.pod, "net2")
    assert failed.status != 0 and "no rule from" in failed.doc["msg"]
    second = macvlan(nets.master_b, addresses=[])
    assert cni(agent, "macvlan", "DEL", second, nets.pod, "net2").status == 0


def test_chained_sbr_del_after_the_namespace_is_gone(agent, nets) -> None:
    chained = {"cniVersion": "1.0.0", "name": "gone", "type": "sbr"}
    out = cni(agent, "sbr", "DEL", chained, "/run/netns/" + unique("gone"), "net2")
    assert out.status == 0, out.stdout


def test_chained_sbr_needs_a_previous_result(agent, nets) -> None:
    attach_both(agent, nets)
    out = cni(agent, "sbr", "ADD", {"cniVersion": "1.1.0", "name": "n", "type": "sbr"},
              nets.pod, "net2")
    assert out.status == 7 or out.doc["code"] == 7, out.stdout
    assert "prevResult" in out.doc["msg"]
    assert rules(nets.pod, V4) == []


def test_chained_sbr_with_a_table_uses_the_cni_1_1_routes_of_that_table(agent, nets) -> None:
    """CNI 1.1 route attributes: the remote network's route lives in table 5001 and sbr with
    ``table`` only adds the rules to it; traffic follows."""
    net2 = attach_both(agent, nets, net2_routes=[
        {"dst": f"{V4.remote}/32", "gw": V4.b(1), "table": 5001},
        {"dst": f"{V6.remote}/128", "gw": V6.b(1), "table": 5001}])
    assert echo(nets, V4) == "A", "a route in another table alone changes nothing"
    chained = {"cniVersion": "1.1.0", "name": "t", "type": "sbr", "table": 5001,
               "prevResult": net2}

    out = cni(agent, "sbr", "ADD", chained, nets.pod, "net2")

    assert out.status == 0, out.stdout
    assert rules(nets.pod, V4) == [f"from {V4.b(5)} lookup 5001"]
    assert rules(nets.pod, V6) == [f"from {V6.b(5)} lookup 5001"]
    assert any(r.startswith(f"{V4.b(0)}/24 dev net2") for r in table(nets.pod, V4, "main")), (
        "with a table the routes stay where they are")
    assert echo(nets, V4) == "B" and echo(nets, V6) == "B"
    assert cni(agent, "sbr", "CHECK", chained, nets.pod, "net2").status == 0
    assert cni(agent, "sbr", "DEL", chained, nets.pod, "net2").status == 0
    assert rules(nets.pod, V4) == [] and rules(nets.pod, V6) == []
    assert table(nets.pod, V4, 5001) == [f"{V4.remote} via {V4.b(1)} dev net2"], (
        "the table is the configuration's: its routes stay")


def test_chained_sbr_matches_the_reference_plugin(agent, nets) -> None:
    """The reference sbr (Debian's) and ours, each after the same net2, set up the same
    rules and tables."""
    def state() -> dict:
        return {f.af: (rules(nets.pod, f), table(nets.pod, f, 100), table(nets.pod, f, 101),
                       table(nets.pod, f, "main")) for f in (V4, V6)}

    net2 = attach_both(agent, nets)
    chained = {"cniVersion": "1.0.0", "name": f"net-{nets.master_b}", "type": "sbr",
               "prevResult": {**net2, "cniVersion": "1.0.0"}}
    out = run_plugin(REFERENCE_BIN / "sbr", "ADD", chained, netns=nets.pod, ifname="net2")
    assert out.status == 0, out.stdout + out.stderr
    reference = state()
    assert reference[socket.AF_INET][0] == [f"from {V4.b(5)} lookup 100"]
    assert reference[socket.AF_INET6][0] == [f"from {V6.b(5)} lookup 101"]
    assert f"default via {V4.b(1)} dev net2" in reference[socket.AF_INET][1]
    assert echo(nets, V4) == "B" and echo(nets, V6) == "B"
    assert run_plugin(REFERENCE_BIN / "sbr", "DEL", chained, netns=nets.pod,
                      ifname="net2").status == 0
    second = macvlan(nets.master_b, addresses=[])
    assert cni(agent, "macvlan", "DEL", second, nets.pod, "net2").status == 0
    assert rules(nets.pod, V4) == [] and rules(nets.pod, V6) == []

    net2 = attach_both_again(agent, nets)
    out = cni(agent, "sbr", "ADD", {**chained, "prevResult": net2}, nets.pod, "net2")

    assert out.status == 0, out.stdout
    assert state() == reference


def attach_both_again(agent: dict, nets: Networks) -> dict:
    second = macvlan(nets.master_b, addresses=[
        {"address": f"{V4.b(5)}/24", "gateway": V4.b(1)},
        {"address": f"{V6.b(5)}/64", "gateway": V6.b(1)}])
    out = cni(agent, "macvlan", "ADD", second, nets.pod, "net2")
    assert out.status == 0, out.stdout + out.stderr
    return out.doc


# -- the sbr option of this project's kinds ------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_sbr_option_of_macvlan(agent, nets, family) -> None:
    attach_both(agent, nets, net2_extra={"sbr": True})
    fam = FAMILIES[family]

    assert echo(nets, fam) == "B"
    assert len(rules(nets.pod, fam)) == 1

    second = macvlan(nets.master_b, addresses=[], sbr=True)
    assert cni(agent, "macvlan", "DEL", second, nets.pod, "net2").status == 0
    assert rules(nets.pod, V4) == [] and rules(nets.pod, V6) == [], "DEL removes the rules"
    assert table(nets.pod, V4, 100) == []
    assert cni(agent, "macvlan", "DEL", second, nets.pod, "net2").status == 0


def test_sbr_option_with_static_gateway_and_source_hints(agent, nets) -> None:
    attach_both(agent, nets, net2_extra={
        "sbr": {"gateways": [V4.b(1)], "addSourceHints": True}})

    assert echo(nets, V4) == "B"
    main = table(nets.pod, V4, "main")
    assert f"{V4.b(0)}/24 dev net2 scope link src {V4.b(5)}" in main, (
        "the subnet route stays in main with the address as source hint")
    assert f"default via {V4.b(1)} dev net2" in table(nets.pod, V4, 100)


def test_sbr_option_refused_fields_leave_nothing_behind(agent, nets) -> None:
    attach_both(agent, nets)
    for bad in ({"table": "x"}, {"gateways": ["10.0.0.1", "10.0.0.2"]}, 1, {"vrfname": "x"}):
        c = macvlan(nets.master_a, addresses=[{"address": f"{V4.a(9)}/24"}], sbr=bad)
        out = cni(agent, "macvlan", "ADD", c, nets.pod, "net3")
        assert out.status != 0 and out.doc["code"] == 7, out.stdout
        assert "sbr" in out.doc["msg"]
    assert "net3" not in ip("-n", ns(nets.pod), "link")


def test_sbr_option_rolls_back_when_the_kernel_refuses(agent, nets) -> None:
    """A gateway the kernel cannot reach (not on net2's subnet): no rule, no link, no
    address is left."""
    c = macvlan(nets.master_b, addresses=[{"address": f"{V4.b(5)}/24"}],
                sbr={"gateways": ["198.51.100.1"]})
    out = cni(agent, "macvlan", "ADD", c, nets.pod, "net2")
    assert out.status != 0, out.stdout
    assert "198.51.100.1" in out.doc["msg"]
    assert rules(nets.pod, V4) == [] and table(nets.pod, V4, 100) == []
    assert "net2" not in ip("-n", ns(nets.pod), "link")


# -- CNI 1.1 route attributes, with traffic ------------------------------------------------------


def test_route_mtu_advmss_priority_are_applied_and_traffic_follows(agent, nets) -> None:
    attach_both(agent, nets, net2_routes=[
        {"dst": f"{V4.remote}/32", "gw": V4.b(1), "mtu": 1300, "advmss": 1200,
         "priority": 50}])

    (route,) = [r for r in table(nets.pod, V4, "main") if r.startswith(V4.remote)]
    assert route == f"{V4.remote} via {V4.b(1)} dev net2 metric 50 mtu 1300 advmss 1200"
    assert echo(nets, V4) == "B", "the route sends replies to the remote address by net2"

    def send(size: int) -> int | None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
            s.sendto(b"x" * size, (V4.remote, 9))
        except OSError as exc:
            return exc.errno
        finally:
            s.close()
        return None

    assert netns_mod.run(nets.pod, lambda: send(1300 - 28)) is None
    assert netns_mod.run(nets.pod, lambda: send(1300 - 27)) == 90, (
        "EMSGSIZE: the route's MTU, not the link's 1500, bounds a datagram that must not be"
        " fragmented")
    got = json.loads(ip("-j", "-n", ns(nets.pod), "route", "get", V4.remote))
    assert got[0]["dev"] == "net2"


def test_route_in_a_table_with_a_rule_carries_traffic(agent, nets) -> None:
    """A route with ``table`` alone is not looked up; with a rule to its table it is."""
    attach_both(agent, nets, net2_routes=[{"dst": f"{V4.remote}/32", "gw": V4.b(1),
                                           "table": 77, "scope": 0}])
    assert table(nets.pod, V4, 77) == [f"{V4.remote} via {V4.b(1)} dev net2"]
    assert echo(nets, V4) == "A"
    ip("-n", ns(nets.pod), "rule", "add", "from", V4.b(5), "lookup", "77")
    assert echo(nets, V4) == "B"


def test_concurrent_attachments_of_one_pod_get_their_own_tables(agent, nets) -> None:
    """The agent serves requests in parallel: two ADDs with sbr in one pod pick different
    tables (one change at a time per namespace)."""
    confs = [(macvlan(nets.master_a, addresses=[{"address": f"{V4.a(6)}/24",
                                                  "gateway": V4.a(1)}], sbr=True), "net3"),
             (macvlan(nets.master_b, addresses=[{"address": f"{V4.b(5)}/24",
                                                  "gateway": V4.b(1)}], sbr=True), "net2")]
    for _ in range(3):
        with ThreadPoolExecutor(2) as pool:
            outs = list(pool.map(lambda c: cni(agent, "macvlan", "ADD", c[0], nets.pod, c[1]),
                                 confs))
        assert all(o.status == 0 for o in outs), [o.stdout for o in outs]
        tables = sorted(int(r.rsplit(" ", 1)[1]) for r in rules(nets.pod, V4))
        assert tables == [100, 101]
        for c, ifname in confs:
            assert cni(agent, "macvlan", "DEL", c, nets.pod, ifname).status == 0
        assert rules(nets.pod, V4) == []
