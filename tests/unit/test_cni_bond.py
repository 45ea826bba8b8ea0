"""The bond kind's ADD/DEL/CHECK/GC decisions, without root: requests go through the dispatcher
as a runtime sends them, netlink to the recording double (tests/fake_netlink.py). The host
kernel has no bonding driver: what the kernel makes of the same requests (failover, traffic,
slaves given back) is checked in the lab (hw-lab/suite/test_bond.py)."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from cni.context import Context
from cni.dispatch import KINDS, handle
from cni.install import PLUGIN_NAMES
from nodeagent import netns
from nodeagent.ipam.allocator import Ipam
from nodeagent.metrics import Metrics
from nodeagent.status import StatusBoard
from nodeagent.vfstate import VfState
from tests.fake_netlink import FakeKernel, FakeLink

MAC1, MAC2 = "02:00:00:00:01:01", "02:00:00:00:02:02"


@dataclass
class World:
    kernel: FakeKernel
    ctx: Context
    pod: str
    net1: FakeLink
    net2: FakeLink
    tmp: Path

    def cni(self, command: str, conf: dict[str, Any], container: str = "c1",
            ifname: str = "bond0") -> tuple[int, dict[str, Any]]:
        environ = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_IFNAME": ifname,
                   "CNI_NETNS": self.pod, "CNI_PATH": "/nonexistent"}
        out = handle(self.ctx, environ, json.dumps(conf).encode(), conf.get("type", ""))
        return out.exit_status, json.loads(out.stdout) if out.stdout.strip() else {}

    def pod_links(self) -> dict[str, FakeLink]:
        return self.kernel.in_netns(self.pod)

    def records(self) -> list[str]:
        return sorted(p.name for p in (self.tmp / "state").rglob("*.json"))

    def reserved(self) -> list[Any]:
        return [r for path in (self.tmp / "ipam").rglob("reservations.json")
                for r in json.loads(path.read_text())["reservations"]]


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    kernel = FakeKernel()
    monkeypatch.setattr(netns, "is_netns", kernel.is_netns)
    pod = tmp_path / "pod-netns"
    pod.write_text("")
    pod_path = os.path.realpath(pod)
    # two VFs as the sriov kind leaves them in the pod: renamed, own MACs, up, no address
    net1 = kernel.add_link("net1", netns=pod_path, mac=MAC1, mtu=1500, up=True)
    net2 = kernel.add_link("net2", netns=pod_path, mac=MAC2, mtu=9000, up=False)
    ctx = Context(open_netlink=kernel.open, vfs=VfState(tmp_path / "state"),
                  ipam=Ipam(tmp_path / "ipam"))
    try:
        yield World(kernel, ctx, pod_path, net1, net2, tmp_path)
    finally:
        ctx.close()
    assert kernel.open_clients == 0, "every netlink client opened is closed again"


def bond(version: str = "1.1.0", **fields: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "bond-net", "type": "bond", "mode": "active-backup",
            "miimon": "100", "linksInContainer": True,
            "links": [{"name": "net1"}, {"name": "net2"}],
            "ipam": {"type": "nodeagent-ipam", "range": "10.9.0.0/29", "gateway": "10.9.0.1",
                     "routes": [{"dst": "0.0.0.0/0"}]}, **fields}


def slave_state(link: FakeLink) -> tuple[Any, ...]:
    return (link.name, link.mtu, link.mac, link.up, link.master)


def test_bond_is_a_kind_and_an_installed_name() -> None:
    assert "bond" in KINDS and "bond" in PLUGIN_NAMES


def test_add_bonds_the_links_and_puts_the_addresses_on_the_bond(world: World) -> None:
    status, result = world.cni("ADD", bond(failOverMac=1, xmitHashPolicy="layer2+3"))

    assert status == 0, result
    (create,) = [r for r in world.kernel.requests if r.op == "link_create"]
    assert create.netns == world.pod and create.args["kind"] == "bond"
    assert create.args["data"] == [("IFLA_BOND_MODE", 1), ("IFLA_BOND_MIIMON", 100),
                                   ("IFLA_BOND_FAIL_OVER_MAC", 1),
                                   ("IFLA_BOND_XMIT_HASH_POLICY", 2)]
    assert create.args["mtu"] == 1500, "bond-cni's default MTU"
    b = world.pod_links()["bond0"]
    assert b.up and world.net1.master == b.index and world.net2.master == b.index
    assert world.net1.up and world.net2.up
    assert world.kernel.addresses_of(world.pod) == ["10.9.0.2/29"]
    assert [a[1] for a in world.kernel.addresses] == [b.index]
    assert result["interfaces"] == [{"name": "bond0", "mac": b.mac, "mtu": 1500,
                                     "sandbox": world.pod}]
    assert result["ips"] == [{"address": "10.9.0.2/29", "gateway": "10.9.0.1", "interface": 0}]


def test_each_slave_is_down_when_enslaved(world: World) -> None:
    assert world.cni("ADD", bond())[0] == 0

    sets = [r.args for r in world.kernel.requests
            if r.op == "link_set" and r.args["index"] == world.net1.index]
    enslave = next(i for i, a in enumerate(sets) if a.get("extra"))
    assert sets[enslave - 1]["up"] is False and sets[enslave + 1]["up"] is True


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_result_in_every_supported_version(world: World, version: str) -> None:
    status, result = world.cni("ADD", bond(version))

    assert status == 0, result
    assert result["cniVersion"] == version
    assert result["interfaces"][0]["name"] == "bond0"
    (ip,) = result["ips"]
    assert ip["address"] == "10.9.0.2/29" and ip["interface"] == 0
    if version == "0.3.1":
        assert ip["version"] == "4"


def test_without_ipam_the_bond_is_up_without_addresses(world: World) -> None:
    c = bond()
    del c["ipam"]

    status, result = world.cni("ADD", c)

    assert status == 0, result
    assert world.pod_links()["bond0"].up and world.kernel.addresses == []
    assert "ips" not in result or result["ips"] == []


BAD = [
    ({"mode": None}, "mode"),
    ({"mode": "round-robin"}, "mode"),
    ({"mode": "Active-Backup"}, "mode"),
    ({"mode": 1}, "mode"),
    ({"miimon": None}, "miimon"),
    ({"miimon": "fast"}, "miimon"),
    ({"miimon": "-5"}, "miimon"),
    ({"miimon": -5}, "miimon"),
    ({"miimon": True}, "miimon"),
    ({"miimon": ""}, "miimon"),
    ({"linksInContainer": None}, "linksInContainer"),
    ({"linksInContainer": False}, "linksInContainer"),
    ({"linksInContainer": "true"}, "linksInContainer"),
    ({"links": None}, "links"),
    ({"links": [{"name": "net1"}]}, "links"),
    ({"links": {"name": "net1"}}, "links"),
    ({"links": ["net1", "net2"]}, "links[0]"),
    ({"links": [{"name": "net1"}, {}]}, "links[1].name"),
    ({"links": [{"name": "net1"}, {"name": 2}]}, "links[1].name"),
    ({"links": [{"name": "net1"}, {"name": "net1"}]}, "links[1].name"),
    ({"links": [{"name": "net1"}, {"name": "a/b"}]}, "links[1].name"),
    ({"links": [{"name": "net1"}, {"name": "x" * 16}]}, "links[1].name"),
    ({"links": [{"name": "net1"}, {"name": "bond0"}]}, "links[1].name"),
    ({"mtu": 67}, "mtu"),
    ({"mtu": 65536}, "mtu"),
    ({"mtu": "1500"}, "mtu"),
    ({"failOverMac": 3}, "failOverMac"),
    ({"failOverMac": "1"}, "failOverMac"),
    ({"allSlavesActive": 2}, "allSlavesActive"),
    ({"tlbDynamicLb": 1}, "tlbDynamicLb"),
    ({"mode": "balance-tlb", "tlbDynamicLb": 2}, "tlbDynamicLb"),
    ({"xmitHashPolicy": "layer5"}, "xmitHashPolicy"),
    ({"ifname": "bond1"}, "ifname"),
    ({"ipam": {"type": "bond"}}, "ipam.type"),
]


@pytest.mark.parametrize("fields,field", BAD, ids=[f"{f}-{json.dumps(v)[:40]}" for v, f in BAD])
def test_bad_field_is_code_7_naming_it_and_touches_nothing(world: World, fields, field) -> None:
    before = [slave_state(world.net1), slave_state(world.net2)]
    for command in ("ADD", "CHECK"):
        c = {k: v for k, v in {**bond(), **fields}.items() if v is not None}
        if command == "CHECK":
            c["prevResult"] = {"cniVersion": "1.1.0"}
        status, error = world.cni(command, c)

        assert status == 1 and error["code"] == 7, error
        assert error["msg"].startswith(f"invalid network configuration: {field} "), error
    assert world.kernel.requests == []
    assert [slave_state(world.net1), slave_state(world.net2)] == before
    assert world.records() == [] and world.reserved() == []


def test_fields_bond_cni_accepts_are_taken(world: World) -> None:
    c = bond(mode="balance-tlb", miimon=50, mtu=0, tlbDynamicLb=0, allSlavesActive=1,
             ifname="bond0")

    status, result = world.cni("ADD", c)

    assert status == 0, result
    (create,) = [r for r in world.kernel.requests if r.op == "link_create"]
    assert create.args["data"] == [("IFLA_BOND_MODE", 5), ("IFLA_BOND_MIIMON", 50),
                                   ("IFLA_BOND_FAIL_OVER_MAC", 0),
                                   ("IFLA_BOND_ALL_SLAVES_ACTIVE", 1),
                                   ("IFLA_BOND_TLB_DYNAMIC_LB", 0)]
    assert create.args["mtu"] == 1500, "mtu 0 is bond-cni's 1500"


@pytest.mark.parametrize("problem,expected", [
    ("missing", "links[1].name: there is no interface net2"),
    ("enslaved", "links[0].name: net1 already has a master"),
    ("mtu", "mtu 1500 is above the MTU 1400 of net2"),
    ("exists", "an interface named bond0 already exists"),
])
def test_links_that_cannot_be_bonded_are_refused_before_any_change(world: World, problem,
                                                                    expected) -> None:
    if problem == "missing":
        world.kernel.links.pop(world.net2.index)
    elif problem == "enslaved":
        world.net1.master = world.kernel.add_link("team0", netns=world.pod).index
    elif problem == "mtu":
        world.net2.mtu = 1400
    else:
        world.kernel.add_link("bond0", netns=world.pod)
    links_before = {n: slave_state(v) for n, v in world.pod_links().items()}

    status, error = world.cni("ADD", bond())

    assert status == 1 and error["code"] == 7 and expected in error["msg"], error
    assert {n: slave_state(v) for n, v in world.pod_links().items()} == links_before
    assert set(world.kernel.ops()) <= {"link"}, "only looked"
    assert world.records() == [] and world.reserved() == []


def _nth_enslave(n: int):
    seen = []

    def when(request) -> bool:
        if request.args.get("extra"):
            seen.append(request)
        return len(seen) == n and seen[-1] is request
    return when


@pytest.mark.parametrize("step,when,code", [
    ("link_create", lambda r: True, 5),
    ("link_set", _nth_enslave(1), 5),
    ("link_set", _nth_enslave(2), 5),
    ("link_set", lambda r: r.args.get("up") is True and r.args["index"] > 3, 5),
    ("address_add", lambda r: True, 5),
    ("route_add", lambda r: True, 5),
], ids=["create", "enslave-first", "enslave-second", "bond-up", "address", "route"])
def test_add_failing_at_any_step_puts_every_slave_back(world: World, step, when, code) -> None:
    before = [slave_state(world.net1), slave_state(world.net2)]
    world.kernel.fail(step, errno.EIO, when=when)

    status, error = world.cni("ADD", bond(mtu=1400))

    assert status == 1 and error["code"] == code, error
    assert set(world.pod_links()) == {"net1", "net2"}, "the bond is gone"
    assert [slave_state(world.net1), slave_state(world.net2)] == before
    assert world.records() == [] and world.reserved() == []


def test_del_restores_each_slave_and_deletes_the_bond_and_repeats_cleanly(world: World) -> None:
    before = [slave_state(world.net1), slave_state(world.net2)]
    c = bond(mtu=1400, failOverMac=2)
    assert world.cni("ADD", c)[0] == 0
    assert world.net2.mtu == 1400 and world.net2.master is not None

    assert world.cni("DEL", c) == (0, {})

    assert set(world.pod_links()) == {"net1", "net2"}
    assert [slave_state(world.net1), slave_state(world.net2)] == before, (
        "names, MTUs, MACs and up/down as before the bond")
    assert world.records() == [] and world.reserved() == []
    assert world.cni("DEL", c) == (0, {}), "a second DEL succeeds"


def test_del_when_a_slave_is_already_gone_restores_the_other(world: World) -> None:
    before = slave_state(world.net1)
    assert world.cni("ADD", bond())[0] == 0
    world.kernel.links.pop(world.net2.index)

    assert world.cni("DEL", bond()) == (0, {})

    assert slave_state(world.net1) == before and set(world.pod_links()) == {"net1"}


def test_del_after_the_namespace_is_gone_succeeds_and_forgets(world: World) -> None:
    assert world.cni("ADD", bond())[0] == 0
    world.kernel.delete_netns(world.pod)

    assert world.cni("DEL", bond()) == (0, {})
    assert world.records() == [] and world.reserved() == []


def test_del_without_a_record_releases_what_the_bond_holds(world: World) -> None:
    assert world.cni("ADD", bond())[0] == 0
    for record in (world.tmp / "state").rglob("*.json"):
        record.unlink()

    assert world.cni("DEL", bond()) == (0, {})

    assert set(world.pod_links()) == {"net1", "net2"}
    assert world.net1.master is None and world.net2.master is None


def test_del_leaves_an_interface_of_that_name_that_is_no_bond(world: World) -> None:
    other = world.kernel.add_link("bond0", netns=world.pod, kind="macvlan")

    assert world.cni("DEL", bond()) == (0, {})
    assert world.pod_links()["bond0"] is other


def test_check_verifies_what_add_built(world: World) -> None:
    c = bond()
    status, result = world.cni("ADD", c)
    assert status == 0
    checked = {**c, "prevResult": result}

    assert world.cni("CHECK", checked) == (0, {})
    assert world.cni("CHECK", c)[1]["code"] == 7, "CHECK needs prevResult"

    world.net2.master = None
    status, error = world.cni("CHECK", checked)
    assert status == 1 and "net2 is not enslaved to bond0" in error["msg"], error

    world.kernel.links.pop(world.net2.index)
    status, error = world.cni("CHECK", checked)
    assert status == 1 and "slave net2 of bond0 is not in" in error["msg"], error

    world.kernel.links.pop(world.pod_links()["bond0"].index)
    status, error = world.cni("CHECK", checked)
    assert status == 1 and "bond0 does not exist" in error["msg"], error


def test_check_catches_another_mode_and_lost_addresses(world: World) -> None:
    c = bond()
    status, result = world.cni("ADD", c)
    assert status == 0

    status, error = world.cni("CHECK", {**bond(mode="802.3ad"), "prevResult": result})
    assert status == 1 and "mode active-backup, the configuration says 802.3ad" in error["msg"]

    world.kernel.addresses.clear()
    status, error = world.cni("CHECK", {**c, "prevResult": result})
    assert status == 1 and "lacks address 10.9.0.2/29" in error["msg"], error


def test_check_of_a_bond_never_added_fails(world: World) -> None:
    status, error = world.cni("CHECK", {**bond(), "prevResult": {"cniVersion": "1.1.0"}})
    assert status == 1 and "no bond bond0 was added" in error["msg"], error


def test_gc_takes_apart_bonds_the_runtime_no_longer_lists(world: World) -> None:
    before = [slave_state(world.net1), slave_state(world.net2)]
    assert world.cni("ADD", bond())[0] == 0
    gc = {**bond(), "cni.dev/valid-attachments": [{"containerID": "c2", "ifname": "bond0"}]}

    status, out = world.cni("GC", gc)

    assert status == 0, out
    assert [slave_state(world.net1), slave_state(world.net2)] == before
    assert "bond0" not in world.pod_links() and world.records() == []


def test_the_bond_shows_in_status_and_metrics(world: World) -> None:
    board, metrics = StatusBoard(), Metrics()
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "bond0",
           "CNI_NETNS": world.pod, "CNI_ARGS": "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p"}

    out = handle(world.ctx, env, json.dumps(bond()).encode(), "bond", status=board,
                 metrics=metrics)

    assert out.exit_status == 0, out.stdout
    allocation = board.snapshot()["allocations"]["c1/bond0"]
    assert (allocation["kind"], allocation["device"], allocation["ips"]) == (
        "bond", "net1+net2", ["10.9.0.2/29"])
    assert 'verb="ADD"' in (text := generate_latest(metrics.registry).decode())
    assert 'type="bond"' in text
    out = handle(world.ctx, {**env, "CNI_COMMAND": "DEL"}, json.dumps(bond()).encode(), "bond",
                 status=board)
    assert out.exit_status == 0 and board.snapshot()["allocations"] == {}

