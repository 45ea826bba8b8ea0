"""The vxlan kind's decisions without root: fields, the shared device's lifecycle, rollback at
each step, DEL and GC, CHECK, results per CNI version. Netlink goes to the recording double
(tests/fake_netlink.py); the cluster-store side is in tests/host/test_overlay_members.py and
the real kernel's answers in hw-lab/suite/test_vxlan.py."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cni.context import Context
from cni.dispatch import handle
from cni.kinds.vxlan import host_name
from nodeagent import netns
from nodeagent.cnitypes.request import SUPPORTED_VERSIONS
from nodeagent.ipam.allocator import Ipam
from nodeagent.sysfs import Sysfs
from nodeagent.vfstate import VfState
from tests.fake_netlink import HOST, FakeKernel, FakeLink

REMOTES = ["192.0.2.20", "192.0.2.30"]


@dataclass
class World:
    kernel: FakeKernel
    ctx: Context
    eth0: FakeLink
    tmp: Path
    pods: dict[str, str]

    def pod(self, container: str) -> str:
        if container not in self.pods:
            path = self.tmp / f"netns-{container}"
            path.write_text("")
            self.pods[container] = os.path.realpath(path)
        return self.pods[container]

    def cni(self, command: str, conf: dict[str, Any], container: str = "c1",
            ifname: str = "net1") -> tuple[int, dict[str, Any]]:
        environ = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_IFNAME": ifname,
                   "CNI_NETNS": self.pod(container), "CNI_PATH": "/nonexistent"}
        out = handle(self.ctx, environ, json.dumps(conf).encode(), "vxlan")
        return out.exit_status, json.loads(out.stdout) if out.stdout.strip() else {}

    def host_links(self) -> dict[str, FakeLink]:
        return self.kernel.in_netns(HOST)

    def reservations(self) -> list[Any]:
        found = []
        for path in (self.tmp / "ipam").rglob("reservations.json"):
            found += json.loads(path.read_text())["reservations"]
        return found

    def assert_nothing_left(self) -> None:
        assert set(self.host_links()) == {"eth0"}, "no bridge, VXLAN device or veth left"
        assert self.kernel.fdb == []
        assert all(self.kernel.in_netns(p) == {} for p in self.pods.values())
        assert self.reservations() == [], "no address left reserved"


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    kernel = FakeKernel()
    monkeypatch.setattr(netns, "is_netns", kernel.is_netns)
    eth0 = kernel.add_link("eth0", mac="52:54:00:00:00:01", up=True, mtu=1500)
    kernel.routes.append({"netns": HOST, "family": 2, "dst": None, "dst_len": 0,
                          "gateway": "192.0.2.1", "oif": eth0.index})
    kernel.addresses += [(HOST, eth0.index, "192.0.2.10", 24),
                         (HOST, eth0.index, "fe80::1", 64),
                         (HOST, eth0.index, "2001:db8::10", 64)]
    ctx = Context(open_netlink=kernel.open, vfs=VfState(tmp_path / "state"),
                  ipam=Ipam(tmp_path / "ipam"), sysfs=Sysfs(tmp_path / "sys"))
    try:
        yield World(kernel, ctx, eth0, tmp_path, {})
    finally:
        ctx.close()
    assert kernel.open_clients == 0, "every netlink client opened is closed again"


def conf(version: str = "1.1.0", **fields: Any) -> dict[str, Any]:
    doc = {"cniVersion": version, "name": "overlay-a", "type": "vxlan", "vni": 4242,
           "remotes": REMOTES,
           "ipam": {"type": "nodeagent-ipam", "range": "10.42.0.0/24"}}
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not None}


# -- ADD ----------------------------------------------------------------------------------------


def test_add_builds_the_network_devices_and_the_pod_veth(world: World) -> None:
    status, result = world.cni("ADD", conf())

    assert status == 0, result
    host = world.host_links()
    vtep, bridge = host["vx4242"], host["vxbr4242"]
    assert vtep.kind == "vxlan" and dict(vtep.data) == {
        "IFLA_VXLAN_ID": 4242, "IFLA_VXLAN_LINK": world.eth0.index,
        "IFLA_VXLAN_LOCAL": "192.0.2.10", "IFLA_VXLAN_PORT": 4789, "IFLA_VXLAN_LEARNING": 1}
    assert vtep.master == bridge.index and vtep.up and bridge.up
    assert (vtep.mtu, bridge.mtu) == (1450, 1450), "IPv4 underlay: 1500 - 50"
    pod_end = world.kernel.in_netns(world.pod("c1"))["net1"]
    host_end = host[host_name("c1", "net1")]
    assert (pod_end.kind, pod_end.mtu, pod_end.up) == ("veth", 1450, True)
    assert host_end.master == bridge.index and host_end.up and host_end.peer == pod_end.index
    assert sorted(dst for _, _, dst in world.kernel.fdb) == REMOTES
    assert {mac for _, mac, _ in world.kernel.fdb} == {"00:00:00:00:00:00"}
    assert world.kernel.addresses_of(world.pod("c1")) == ["10.42.0.1/24"]
    assert [i["name"] for i in result["interfaces"]] == ["vxbr4242", host_end.name, "net1"]
    assert result["interfaces"][2] == {"name": "net1", "mac": pod_end.mac, "mtu": 1450,
                                       "sandbox": world.pod("c1")}
    assert result["ips"] == [{"address": "10.42.0.1/24", "interface": 2}]


def test_static_remotes_skip_the_node_itself(world: World) -> None:
    """One list of every node's address serves every node (a NAD is cluster-wide)."""
    status, result = world.cni("ADD", conf(remotes=["192.0.2.10", *REMOTES]))

    assert status == 0, result
    assert sorted(dst for _, _, dst in world.kernel.fdb) == REMOTES
    assert world.cni("CHECK", conf(remotes=["192.0.2.10", *REMOTES], prevResult=result)) == (
        0, {})


def test_ipv6_underlay_takes_the_global_address_and_70_bytes(world: World) -> None:
    status, result = world.cni("ADD", conf(underlay="ipv6", remotes=["2001:db8::20"],
                                           port=8472))

    assert status == 0, result
    vtep = world.host_links()["vx4242"]
    assert dict(vtep.data)["IFLA_VXLAN_LOCAL6"] == "2001:db8::10", "not the link-local one"
    assert dict(vtep.data)["IFLA_VXLAN_PORT"] == 8472
    assert result["interfaces"][2]["mtu"] == 1430
    assert [dst for _, _, dst in world.kernel.fdb] == ["2001:db8::20"]


def test_a_smaller_mtu_is_honoured_a_larger_refused(world: World) -> None:
    status, result = world.cni("ADD", conf(mtu=1400))
    assert status == 0 and result["interfaces"][2]["mtu"] == 1400

    status, error = world.cni("ADD", conf(mtu=1451), container="c2")
    assert status == 1 and error["code"] == 7, error
    assert error["msg"].startswith("invalid network configuration: mtu 1451 is above 1450")
    assert world.kernel.in_netns(world.pod("c2")) == {}


def test_without_store_or_remotes_it_says_what_to_configure(world: World) -> None:
    for command in ("ADD", "CHECK"):
        c = conf(remotes=None, prevResult={"cniVersion": "1.1.0"} if command == "CHECK" else None)
        status, error = world.cni(command, c)

        assert status == 1 and error["code"] == 7, error
        assert "cluster store" in error["msg"] and "'remotes'" in error["msg"]
    world.assert_nothing_left()


BAD = [
    ({"vni": None}, "vni"), ({"vni": 0}, "vni"), ({"vni": 16777216}, "vni"),
    ({"vni": "42"}, "vni"), ({"vni": True}, "vni"),
    ({"port": 0}, "port"), ({"port": 65536}, "port"), ({"port": "4789"}, "port"),
    ({"mtu": 10}, "mtu"), ({"mtu": 1500.0}, "mtu"),
    ({"master": ""}, "master"), ({"master": "a-name-too-long-for-a-link"}, "master"),
    ({"master": "nosuch0"}, "master"),
    ({"underlay": "ipv5"}, "underlay"),
    ({"local": "not-an-ip"}, "local"), ({"local": "192.0.2.99"}, "local"),
    ({"local": "2001:db8::10", "underlay": "ipv4"}, "local"), ({"local": "224.0.0.1"}, "local"),
    ({"remotes": "192.0.2.20"}, "remotes"), ({"remotes": ["2001:db8::20"]}, "remotes[0]"),
    ({"remotes": ["192.0.2.20", "192.0.2.20"]}, "remotes[1]"),
    ({"remotes": ["0.0.0.0"]}, "remotes[0]"), ({"remotes": [7]}, "remotes[0]"),
    ({"group": "239.1.1.1"}, "group"), ({"linkInContainer": True}, "linkInContainer"),
    ({"mac": "01:00:5e:00:00:01"}, "mac"),
]


@pytest.mark.parametrize("fields,field", BAD, ids=[json.dumps(f)[:40] for f, _ in BAD])
def test_a_bad_field_is_code_7_naming_it_and_leaves_nothing(world: World, fields: dict,
                                                            field: str) -> None:
    for command in ("ADD", "CHECK"):
        c = conf(**fields)
        if fields.get("vni", 1) is None:
            c.pop("vni", None)
        if command == "CHECK":
            c["prevResult"] = {"cniVersion": "1.1.0"}
        status, error = world.cni(command, c)

        assert status == 1 and error["code"] == 7, error
        assert error["msg"].startswith(f"invalid network configuration: {field} ") \
            or field in error["msg"], error
    world.assert_nothing_left()


def test_master_missing_names_it(world: World) -> None:
    status, error = world.cni("ADD", conf(master="nosuch0"))
    assert status == 1 and error["code"] == 7 and "nosuch0" in error["msg"]


# -- the shared devices -------------------------------------------------------------------------


def test_pods_share_the_network_devices_and_the_last_del_removes_them(world: World) -> None:
    assert world.cni("ADD", conf(), container="c1")[0] == 0
    assert world.cni("ADD", conf(), container="c2")[0] == 0

    creates = [r.args["name"] for r in world.kernel.requests if r.op == "link_create"]
    assert creates.count("vx4242") == 1 and creates.count("vxbr4242") == 1
    assert len(world.kernel.fdb) == 2, "the remotes once, not per pod"

    assert world.cni("DEL", conf(), container="c1")[0] == 0
    assert {"vx4242", "vxbr4242"} <= set(world.host_links()), "c2 still uses them"
    assert host_name("c1", "net1") not in world.host_links()
    assert world.kernel.in_netns(world.pod("c1")) == {}, "the pod end went with its peer"

    assert world.cni("DEL", conf(), container="c2")[0] == 0
    world.assert_nothing_left()
    assert world.cni("DEL", conf(), container="c2")[0] == 0, "DEL is idempotent"
    assert world.cni("DEL", {"cniVersion": "1.1.0", "name": "overlay-a", "type": "vxlan"},
                     container="c3")[0] == 0, "DEL needs no valid configuration"


def test_del_without_a_valid_config_still_removes_the_pod_and_the_network(world: World) -> None:
    assert world.cni("ADD", conf())[0] == 0

    status, out = world.cni("DEL", {"cniVersion": "1.1.0", "name": "overlay-a", "type": "vxlan",
                                    "vni": "garbage", "ipam": conf()["ipam"]})

    assert status == 0, out
    world.assert_nothing_left()


def test_del_after_the_pod_namespace_went(world: World) -> None:
    assert world.cni("ADD", conf())[0] == 0
    world.kernel.delete_netns(world.pod("c1"))
    world.pod("c1")  # the runtime passes the path again; the namespace is gone

    assert world.cni("DEL", conf())[0] == 0
    world.assert_nothing_left()


def test_another_network_cannot_redefine_a_vni_in_use(world: World) -> None:
    assert world.cni("ADD", conf())[0] == 0

    status, error = world.cni("ADD", conf(name="overlay-b", port=8472), container="c2")

    assert status == 1 and error["code"] == 7, error
    assert "VNI 4242 is already set up on this node" in error["msg"] and "port 4789" in \
        error["msg"]
    assert world.kernel.in_netns(world.pod("c2")) == {}
    assert world.host_links()["vx4242"].up, "the network in use is left alone"


def test_a_foreign_device_with_the_name_is_not_taken_over(world: World) -> None:
    world.kernel.add_link("vx4242", kind="vxlan")

    status, error = world.cni("ADD", conf())

    assert status == 1 and error["code"] == 7 and "not a VXLAN device of the agent" in \
        error["msg"], error
    assert "vxbr4242" not in world.host_links()


# -- rollback -----------------------------------------------------------------------------------

@pytest.mark.parametrize("op,nth", [
    ("link_create", 0), ("link_create", 1), ("link_create", 2),
    ("link_set", 0), ("link_set", 1), ("link_set", 2), ("link_set", 3), ("link_set", 4),
    ("fdb_append", 1), ("address_add", 0), ("link", 6),
])
def test_a_failure_at_any_step_of_the_first_add_leaves_nothing(world: World, op: str,
                                                               nth: int) -> None:
    seen = {"n": 0}

    def nth_call(_: Any) -> bool:
        seen["n"] += 1
        return seen["n"] == nth + 1

    world.kernel.fail(op, errno.EBUSY, when=nth_call)

    status, error = world.cni("ADD", conf())

    assert status == 1, f"{op} #{nth} never failed: pick a step ADD takes"
    assert error["code"] in (5, 7, 11), error
    world.assert_nothing_left()


@pytest.mark.parametrize("op", ["link_create", "link_set", "address_add"])
def test_a_failed_add_leaves_the_network_of_other_pods_alone(world: World, op: str) -> None:
    assert world.cni("ADD", conf(), container="c1")[0] == 0
    before = set(world.host_links())
    world.kernel.fail(op, errno.EIO)

    status, error = world.cni("ADD", conf(), container="c2")

    assert status == 1 and error["code"] == 5, error
    assert set(world.host_links()) == before
    assert len(world.kernel.fdb) == 2
    assert world.kernel.in_netns(world.pod("c2")) == {}
    assert [r for r in world.reservations() if "c2" in json.dumps(r)] == []


def test_an_interface_of_that_name_in_the_pod_is_refused_and_kept(world: World) -> None:
    world.kernel.add_link("net1", netns=world.pod("c1"))

    status, error = world.cni("ADD", conf())

    assert status == 1 and error["code"] == 7 and "already exists" in error["msg"], error
    assert set(world.kernel.in_netns(world.pod("c1"))) == {"net1"}
    assert set(world.host_links()) == {"eth0"}


# -- CHECK, GC, versions ------------------------------------------------------------------------


def test_check_verifies_what_add_built(world: World) -> None:
    status, result = world.cni("ADD", conf())
    assert status == 0
    checked = conf(prevResult=result)

    assert world.cni("CHECK", checked) == (0, {})

    bridge = world.host_links()["vxbr4242"]
    host_end = world.host_links()[host_name("c1", "net1")]
    host_end.master = None
    status, error = world.cni("CHECK", checked)
    assert status == 1 and "not in vxbr4242" in error["msg"], error
    host_end.master = bridge.index

    world.kernel.fdb.pop()
    status, error = world.cni("CHECK", checked)
    assert status == 1 and REMOTES[1] in error["msg"], error
    world.kernel.fdb.append((world.host_links()["vx4242"].index, "00:00:00:00:00:00",
                             REMOTES[1]))

    world.kernel.in_netns(world.pod("c1"))["net1"].mtu = 1300
    status, error = world.cni("CHECK", checked)
    assert status == 1 and "MTU 1300" in error["msg"], error

    status, error = world.cni("CHECK", conf())
    assert status == 1 and error["code"] == 7 and "prevResult" in error["msg"]


def test_gc_removes_what_the_runtime_no_longer_lists(world: World) -> None:
    for container in ("c1", "c2"):
        assert world.cni("ADD", conf(), container=container)[0] == 0
    gc = conf(**{"cni.dev/valid-attachments": [{"containerID": "c2", "ifname": "net1"}]})

    assert world.cni("GC", gc)[0] == 0
    assert host_name("c1", "net1") not in world.host_links()
    assert host_name("c2", "net1") in world.host_links()

    assert world.cni("GC", conf(**{"cni.dev/valid-attachments": []}))[0] == 0
    world.assert_nothing_left()


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_results_in_every_supported_version(world: World, version: str) -> None:
    status, result = world.cni("ADD", conf(version))

    assert status == 0, result
    assert result["cniVersion"] == version
    (ip,) = result["ips"]
    assert ip["interface"] == 2 and ip["address"] == "10.42.0.1/24"
    assert ("version" in ip) == version.startswith("0."), "0.x results name the IP family"
    assert ("mtu" in result["interfaces"][2]) == (version == "1.1.0")
    assert world.cni("DEL", conf(version))[0] == 0
    world.assert_nothing_left()


def test_status_screen_shows_the_overlays() -> None:
    from nodeagent.status import StatusBoard
    from nodeagent.statusview import status_screen

    board = StatusBoard()
    assert "VXLAN" not in status_screen(board.snapshot()), "no section on nodes without any"
    board.set_overlays({"4242": {"network": "overlay-a", "device": "vx4242",
                                 "local": "192.0.2.10", "members": {"node-b": "192.0.2.20"},
                                 "floodTo": ["192.0.2.20"], "mismatched": []}})

    screen = status_screen(board.snapshot())
    assert "VXLAN OVERLAYS" in screen
    row = next(line for line in screen.splitlines() if line.strip().startswith("4242"))
    assert "overlay-a" in row and "node-b=192.0.2.20" in row and "vx4242" in row
