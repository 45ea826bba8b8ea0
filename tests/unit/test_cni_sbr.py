"""Source-based routing's decisions (the chained ``sbr`` kind and the ``sbr`` option), without
root: requests through the dispatcher, netlink through the recording double
(tests/fake_netlink.py). tests/host/test_cni_sbr.py checks the same with real traffic."""

from __future__ import annotations

import errno
import inspect
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cni.context import Context, Netlink
from cni.dispatch import handle
from cni.sbr import KernelRoute
from nodeagent import netns
from nodeagent.ipam.allocator import Ipam
from nodeagent.policy.attachments import AttachmentRecord
from nodeagent.rtnl import Rtnl
from nodeagent.status import StatusBoard
from nodeagent.vfstate import VfState
from tests.fake_netlink import HOST, FakeKernel, FakeLink, FakeNetlink

RTPROT_KERNEL = 2
SCOPE_LINK = 253


@dataclass
class World:
    kernel: FakeKernel
    ctx: Context
    pod: str
    eth0: FakeLink
    net2: FakeLink
    tmp: Path

    def cni(self, command: str, conf: dict[str, Any], ifname: str = "net2",
            netns_path: str | None = None) -> tuple[int, dict[str, Any]]:
        environ = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_IFNAME": ifname,
                   "CNI_NETNS": self.pod if netns_path is None else netns_path,
                   "CNI_PATH": "/nonexistent"}
        out = handle(self.ctx, environ, json.dumps(conf).encode(), conf.get("type", ""))
        return out.exit_status, json.loads(out.stdout) if out.stdout.strip() else {}

    def rules(self) -> list[tuple[str, int, int]]:
        """(source/len, table, priority) of the pod's rules."""
        return [(f"{r['src']}/{r['src_len']}", r["table"], r["priority"])
                for r in self.kernel.rules if r["netns"] == self.pod]

    def routes(self) -> set[KernelRoute]:
        """The pod's routes as the kinds see them (every table)."""
        with self.kernel.open(self.pod) as pod:
            return {KernelRoute.from_msg(m) for m in pod.routes()}

    def table(self, number: int) -> set[tuple[str, str | None]]:
        default = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}
        return {(f"{r.dst or default[r.family]}/{r.dst_len}", r.gateway)
                for r in self.routes() if r.table == number}


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """A pod with net2 addressed (10.82.0.5/24 and 2001:db8:82::5/64) and the main-table
    routes the kernel gives it; eth0 in the host as a master for the option's tests."""
    kernel = FakeKernel()
    monkeypatch.setattr(netns, "is_netns", kernel.is_netns)
    eth0 = kernel.add_link("eth0", up=True)
    pod_file = tmp_path / "pod-netns"
    pod_file.write_text("")
    pod = os.path.realpath(pod_file)
    net2 = kernel.add_link("net2", netns=pod, kind="macvlan", up=True)
    kernel.addresses += [(pod, net2.index, "10.82.0.5", 24),
                         (pod, net2.index, "2001:db8:82::5", 64)]
    kernel.routes += [
        {"netns": pod, "family": 2, "dst": "10.82.0.0", "dst_len": 24, "oif": net2.index,
         "prefsrc": "10.82.0.5", "scope": SCOPE_LINK, "proto": RTPROT_KERNEL},
        {"netns": pod, "family": 10, "dst": "2001:db8:82::", "dst_len": 64, "oif": net2.index,
         "proto": RTPROT_KERNEL, "priority": 256},
        {"netns": pod, "family": 2, "dst": "198.51.100.0", "dst_len": 24, "oif": net2.index,
         "gateway": "10.82.0.1"},
    ]
    ctx = Context(open_netlink=kernel.open, vfs=VfState(tmp_path / "state"),
                  ipam=Ipam(tmp_path / "ipam"))
    try:
        yield World(kernel, ctx, pod, eth0, net2, tmp_path)
    finally:
        ctx.close()
    assert kernel.open_clients == 0, "every netlink client opened is closed again"


def prev_result(pod: str) -> dict[str, Any]:
    return {"cniVersion": "1.1.0",
            "interfaces": [{"name": "net2", "mac": "02:00:00:00:00:02", "sandbox": pod}],
            "ips": [{"address": "10.82.0.5/24", "gateway": "10.82.0.1", "interface": 0},
                    {"address": "2001:db8:82::5/64", "gateway": "2001:db8:82::1",
                     "interface": 0}],
            "routes": [{"dst": "198.51.100.0/24", "gw": "10.82.0.1"}], "dns": {}}


def chained(world: World, **fields: Any) -> dict[str, Any]:
    return {"cniVersion": "1.1.0", "name": "net-b", "type": "sbr",
            "prevResult": prev_result(world.pod), **fields}


# -- the chained kind -----------------------------------------------------------------------------


def test_add_gives_each_address_a_table_and_rule_and_passes_the_result_through(world) -> None:
    status, result = world.cni("ADD", chained(world))

    assert status == 0, result
    assert result == prev_result(world.pod), "prevResult passes through unchanged"
    assert world.rules() == [("10.82.0.5/32", 100, 32765), ("2001:db8:82::5/128", 101, 32764)]
    assert world.table(100) == {("0.0.0.0/0", "10.82.0.1"), ("10.82.0.0/24", None),
                                ("198.51.100.0/24", "10.82.0.1"), ("2001:db8:82::/64", None)}, (
        "the default route, and the interface's routes whose source hint or gateway is in"
        " the subnet, or that have neither (the reference's copy)")
    assert world.table(101) == {("::/0", "2001:db8:82::1"), ("2001:db8:82::/64", None)}
    assert world.table(254) == set(), "the interface's routes left the main table"
    copied = next(r for r in world.routes() if r.table == 100 and r.dst == "10.82.0.0")
    assert (copied.prefsrc, copied.scope, copied.proto) == ("10.82.0.5", SCOPE_LINK,
                                                             RTPROT_KERNEL)


def test_table_numbers_skip_those_rules_or_routes_use(world) -> None:
    world.kernel.rules.append({"netns": world.pod, "family": 2, "src": "10.9.9.9",
                               "src_len": 32, "table": 100, "priority": 100})
    world.kernel.routes.append({"netns": world.pod, "family": 2, "dst": "10.9.0.0",
                                "dst_len": 16, "oif": world.net2.index, "table": 101})

    assert world.cni("ADD", chained(world))[0] == 0

    assert [table for _, table, _ in world.rules()] == [100, 102, 103]


def test_with_a_table_only_rules_are_added(world) -> None:
    before = world.routes()

    status, _ = world.cni("ADD", chained(world, table=5001))

    assert status == 0
    assert [(src, table) for src, table, _ in world.rules()] == [
        ("10.82.0.5/32", 5001), ("2001:db8:82::5/128", 5001)]
    assert world.routes() == before, "the routes stay where they are"
    assert world.cni("CHECK", chained(world, table=5001))[0] == 0
    assert world.cni("DEL", chained(world, table=5001))[0] == 0
    assert world.rules() == []


def test_static_gateways_override_the_result(world) -> None:
    status, _ = world.cni("ADD", chained(world, gateways=["10.82.0.254", "2001:db8:82::fe"]))

    assert status == 0
    assert ("0.0.0.0/0", "10.82.0.254") in world.table(100)
    assert ("::/0", "2001:db8:82::fe") in world.table(101)


def test_source_hints_keep_subnet_routes_in_main(world) -> None:
    status, _ = world.cni("ADD", chained(world, addSourceHints=True))

    assert status == 0
    main = {r for r in world.routes() if r.table == 254}
    assert {(r.dst, r.prefsrc, r.scope) for r in main} == {
        ("10.82.0.0", "10.82.0.5", SCOPE_LINK), ("2001:db8:82::", "2001:db8:82::5", SCOPE_LINK)}
    assert ("198.51.100.0/24", "10.82.0.1") in world.table(100)


@pytest.mark.parametrize("op,nth", [("rule_add", 1), ("rule_add", 2), ("route_add", 1),
                                    ("route_add", 2), ("route_replace", 1),
                                    ("route_replace", 4), ("route_delete", 1),
                                    ("route_delete", 3)])
def test_a_failure_at_any_step_undoes_every_earlier_one(world, op, nth) -> None:
    routes, rules = world.routes(), world.rules()
    calls = {"n": 0}

    def nth_call(_: Any) -> bool:
        calls["n"] += 1
        return calls["n"] == nth

    world.kernel.fail(op, errno.EIO, when=nth_call)

    status, error = world.cni("ADD", chained(world))

    assert status != 0 and error["code"] == 5, error
    assert calls["n"] >= nth, f"the {op} number {nth} was reached"
    assert world.rules() == rules
    assert world.routes() == routes, "tables emptied, main-table routes back"


def test_add_needs_a_previous_result_with_an_address_on_the_interface(world) -> None:
    c = chained(world)
    del c["prevResult"]
    status, error = world.cni("ADD", c)
    assert (status, error["code"]) == (1, 7) and "prevResult" in error["msg"]

    other = prev_result(world.pod)
    other["interfaces"][0]["name"] = "net9"
    status, error = world.cni("ADD", {**chained(world), "prevResult": other})
    assert error["code"] == 7 and "net2" in error["msg"]
    assert world.rules() == []


@pytest.mark.parametrize("fields,named", [
    ({"table": "100"}, "table"), ({"table": 0}, "table"), ({"table": True}, "table"),
    ({"table": 2**32}, "table"), ({"gateways": "10.0.0.1"}, "gateways"),
    ({"gateways": ["10.0.0.1", "10.0.0.2"]}, "gateways[1]"),
    ({"gateways": ["a", "b", "c"]}, "gateways"), ({"gateways": ["nope"]}, "gateways[0]"),
    ({"addSourceHints": "yes"}, "addSourceHints"),
])
def test_bad_fields_are_refused_with_code_7_naming_them(world, fields, named) -> None:
    _, error = world.cni("ADD", chained(world, **fields))

    assert error["code"] == 7, error
    assert f"configuration: {named} " in error["msg"]
    assert world.rules() == [] and "rule_add" not in world.kernel.ops()


def test_del_is_idempotent_and_empties_the_tables_it_made(world) -> None:
    assert world.cni("ADD", chained(world))[0] == 0
    assert world.cni("CHECK", chained(world))[0] == 0

    for _ in range(2):
        assert world.cni("DEL", chained(world))[0] == 0
        assert world.rules() == []
        assert world.table(100) == set() and world.table(101) == set()
    _, error = world.cni("CHECK", chained(world))
    assert error["code"] == 5 and "no rule from 10.82.0.5" in error["msg"]


def test_del_without_the_interface_uses_the_previous_result(world) -> None:
    assert world.cni("ADD", chained(world))[0] == 0
    with world.kernel.open(world.pod) as pod:
        pod.link_delete(world.net2.index)

    assert world.cni("DEL", chained(world))[0] == 0
    assert world.rules() == []


def test_del_after_the_namespace_is_gone_and_with_a_broken_config(world) -> None:
    assert world.cni("ADD", chained(world))[0] == 0
    assert world.cni("DEL", chained(world, table="broken"))[0] == 0
    assert world.rules() == [], "an unreadable configuration still removes the rules"
    world.kernel.delete_netns(world.pod)
    assert world.cni("DEL", chained(world))[0] == 0


def test_check_finds_a_table_that_lost_its_default_route(world) -> None:
    assert world.cni("ADD", chained(world))[0] == 0
    with world.kernel.open(world.pod) as pod:
        pod.route_delete(socket.AF_INET, None, 0, table=100)

    _, error = world.cni("CHECK", chained(world))

    assert error["code"] == 5 and "default route via 10.82.0.1" in error["msg"]


def test_rules_are_left_to_other_interfaces(world) -> None:
    world.kernel.rules.append({"netns": world.pod, "family": 2, "src": "10.81.0.5",
                               "src_len": 32, "table": 100, "priority": 100})
    assert world.cni("ADD", chained(world))[0] == 0
    assert world.cni("DEL", chained(world))[0] == 0
    assert world.rules() == [("10.81.0.5/32", 100, 100)]


# -- the option of this project's kinds ---------------------------------------------------------


def macvlan(sbr: Any) -> dict[str, Any]:
    return {"cniVersion": "1.1.0", "name": "net-c", "type": "macvlan", "master": "eth0",
            "ipam": {"type": "static", "addresses": [{"address": "10.83.0.5/24",
                                                      "gateway": "10.83.0.1"}]},
            "sbr": sbr}


def test_the_option_routes_the_new_interface_by_source(world) -> None:
    status, result = world.cni("ADD", macvlan(True), ifname="net3")

    assert status == 0, result
    net3 = world.kernel.in_netns(world.pod)["net3"]
    assert world.rules() == [("10.83.0.5/32", 100, 32765)]
    assert ("0.0.0.0/0", "10.83.0.1") in world.table(100)
    ops = world.kernel.ops(world.pod)
    assert ops.index("address_add") < ops.index("rule_add"), "after the addresses"
    assert world.cni("CHECK", {**macvlan(True), "prevResult": result}, ifname="net3")[0] == 0
    with world.kernel.open(world.pod) as pod:
        pod.rule_delete(socket.AF_INET, "10.83.0.5", 32, table=100)
    _, error = world.cni("CHECK", {**macvlan(True), "prevResult": result}, ifname="net3")
    assert error["code"] == 5 and "no rule from 10.83.0.5" in error["msg"]
    world.kernel.rules.append({"netns": world.pod, "family": 2, "src": "10.83.0.5",
                               "src_len": 32, "table": 100, "priority": 32765})

    assert world.cni("DEL", macvlan(True), ifname="net3")[0] == 0
    assert world.rules() == [] and net3.index not in world.kernel.links
    assert world.cni("DEL", macvlan(True), ifname="net3")[0] == 0


def test_the_option_with_a_table(world) -> None:
    status, _ = world.cni("ADD", macvlan({"table": 7}), ifname="net3")
    assert status == 0
    assert world.rules() == [("10.83.0.5/32", 7, 32765)]
    assert world.cni("DEL", macvlan({"table": 7}), ifname="net3")[0] == 0
    assert world.rules() == []


@pytest.mark.parametrize("value,named", [(1, "sbr"), ("yes", "sbr"), ([], "sbr"),
                                         ({"vrfname": "blue"}, "sbr.vrfname"),
                                         ({"table": -1}, "sbr.table"),
                                         ({"gateways": ["x"]}, "sbr.gateways[0]")])
def test_a_bad_option_is_refused_before_anything_is_made(world, value, named) -> None:
    _, error = world.cni("ADD", macvlan(value), ifname="net3")

    assert error["code"] == 7 and f"configuration: {named} " in error["msg"], error
    assert "link_create" not in world.kernel.ops()


def test_the_option_failing_removes_the_link_and_releases_the_addresses(world) -> None:
    world.kernel.fail("route_add", errno.ENETUNREACH, when=lambda r: r.args["dst"] == "None/0")
    c = macvlan(True)
    c["ipam"] = {"type": "nodeagent-ipam", "range": "10.83.0.0/29", "gateway": "10.83.0.1"}

    status, error = world.cni("ADD", c, ifname="net3")

    assert status != 0 and "default route via 10.83.0.1" in error["msg"], error
    assert "net3" not in world.kernel.in_netns(world.pod)
    assert world.rules() == []
    reserved = [r for p in (world.tmp / "ipam").rglob("reservations.json")
                for r in json.loads(p.read_text())["reservations"]]
    assert reserved == [], "the address is released"
    assert world.kernel.in_netns(HOST)["eth0"] is world.eth0


@pytest.mark.parametrize("kind,fields", [("ipvlan", {}), ("vlan", {"vlanId": 7})])
def test_every_stacked_kind_takes_the_option(world, kind, fields) -> None:
    c = {**macvlan({"table": 9}), "type": kind, **fields}

    status, result = world.cni("ADD", c, ifname="net3")

    assert status == 0, result
    assert world.rules() == [("10.83.0.5/32", 9, 32765)]
    assert world.cni("CHECK", {**c, "prevResult": result}, ifname="net3")[0] == 0
    assert world.cni("DEL", c, ifname="net3")[0] == 0
    assert world.rules() == []


def test_del_without_the_addresses_on_the_link_uses_the_previous_result(world) -> None:
    assert world.cni("ADD", chained(world))[0] == 0
    world.kernel.addresses = []

    assert world.cni("DEL", chained(world))[0] == 0
    assert world.rules() == []


def test_the_chained_plugin_leaves_the_attachment_record_to_the_first(world) -> None:
    board = StatusBoard()
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "net3",
           "CNI_NETNS": world.pod, "CNI_PATH": "/nonexistent"}
    first = handle(world.ctx, env, json.dumps(macvlan(False)).encode(), status=board)
    assert first.exit_status == 0
    prev = json.loads(first.stdout)
    c = {"cniVersion": "1.1.0", "name": "net-c", "type": "sbr", "prevResult": prev}

    assert handle(world.ctx, env, json.dumps(c).encode(), status=board).exit_status == 0

    (record,) = board.snapshot()["allocations"].values()
    assert record["type"] == "macvlan" and record["ips"] == ["10.83.0.5/24"]


def test_the_chained_plugin_leaves_the_policy_record_to_the_first(world) -> None:
    """The network policy controller polices the attachment the first plugin made: a chained
    ADD must not replace its record (kind, IPs) with the chained plugin's."""
    class Hook:
        def __init__(self) -> None:
            self.records: list[AttachmentRecord] = []

        def attached(self, record: AttachmentRecord) -> None:
            self.records.append(record)

        def detached(self, container_id: str, ifname: str) -> None: ...

        def collected(self, network: str, keep: Any) -> None: ...

    hook = Hook()
    world.ctx.attachments = hook
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "net3",
           "CNI_NETNS": world.pod, "CNI_PATH": "/nonexistent",
           "CNI_ARGS": "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p1"}
    first = handle(world.ctx, env, json.dumps(macvlan(False)).encode())
    assert first.exit_status == 0
    c = {"cniVersion": "1.1.0", "name": "net-c", "type": "sbr",
         "prevResult": json.loads(first.stdout)}

    assert handle(world.ctx, env, json.dumps(c).encode()).exit_status == 0

    assert [(r.kind, r.ips) for r in hook.records] == [("macvlan", ("10.83.0.5",))]


@pytest.mark.parametrize("name", ["rules", "rule_add", "rule_delete", "route_replace",
                                  "route_delete"])
def test_the_client_and_the_double_take_the_calls_as_the_protocol_says(name) -> None:
    """cni.sbr's calls: the real client and the double have the Protocol's parameters."""
    def params(cls: type) -> list[tuple[str, Any, Any]]:
        sig = inspect.signature(getattr(cls, name))
        return [(p.name, p.kind, p.default) for p in sig.parameters.values()]

    assert params(Rtnl) == params(Netlink) == params(FakeNetlink)


def test_del_goes_on_past_a_refusal_and_reports_it(world) -> None:
    assert world.cni("ADD", chained(world))[0] == 0
    world.kernel.fail("rule_delete", errno.EPERM, when=lambda r: r.args["table"] == 100)

    status, error = world.cni("DEL", chained(world))

    assert status != 0 and "deleting the rule from 10.82.0.5" in error["msg"], error
    assert world.rules() == [("10.82.0.5/32", 100, 32765)], "the other rule went"
    assert world.cni("DEL", chained(world))[0] == 0, "a retry finishes"
    assert world.rules() == []


def test_the_option_never_fails_del_over_its_rules(world) -> None:
    assert world.cni("ADD", macvlan(True), ifname="net3")[0] == 0
    world.kernel.fail("rule_delete", errno.EPERM)

    assert world.cni("DEL", macvlan(True), ifname="net3")[0] == 0
    assert "net3" not in world.kernel.in_netns(world.pod)
