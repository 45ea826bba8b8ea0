"""The link kinds' ADD/DEL/CHECK/GC decisions, without root: every request goes through the
dispatcher as a runtime sends it, and every netlink request to a recording double of the
kinds' seam (tests/fake_netlink.py). What the kernel makes of the same requests is checked by
tests/host (macvlan, real namespaces) and the lab suite (ipvlan, vlan, SR-IOV)."""

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
from nodeagent import netns
from nodeagent.ipam.allocator import Ipam
from nodeagent.model import VfConfig
from nodeagent.sysfs import Sysfs
from nodeagent.vfstate import VfState
from tests.fake_netlink import HOST, FakeKernel, FakeLink
from tests.sysfs_tree import SysfsTree, vf_address

PF_PCI = "0000:3b:00.0"
VF0 = vf_address(PF_PCI, 0x80, 2, 0)  # igb: First VF Offset 0x80, VF Stride 2
VF1 = vf_address(PF_PCI, 0x80, 2, 1)
BEFORE = VfConfig(mac="00:00:00:00:00:00", spoofchk=True, trust=False, link_state="auto")


@dataclass
class World:
    kernel: FakeKernel
    ctx: Context
    tree: SysfsTree
    pod: str
    eth0: FakeLink
    pf: FakeLink
    vf0: FakeLink
    tmp: Path

    def cni(self, command: str, conf: dict[str, Any], container: str = "c1",
            ifname: str = "net1", **env: str) -> tuple[int, dict[str, Any]]:
        environ = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_IFNAME": ifname,
                   "CNI_NETNS": self.pod, "CNI_PATH": "/nonexistent", **env}
        out = handle(self.ctx, environ, json.dumps(conf).encode(), conf.get("type", ""))
        return out.exit_status, json.loads(out.stdout) if out.stdout.strip() else {}

    def records(self) -> list[str]:
        return sorted(p.name for p in (self.tmp / "state").rglob("*.json"))

    def reserved_by(self, container: str) -> list[Any]:
        """The node-local IPAM reservations that name ``container``."""
        found = []
        for path in (self.tmp / "ipam").rglob("reservations.json"):
            for reservation in json.loads(path.read_text())["reservations"]:
                if container in json.dumps(reservation):
                    found.append(reservation)
        return found


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    tree = SysfsTree(tmp_path / "sys")
    tree.add_pf(PF_PCI, "igb", netdev="ens1f0", numvfs=2, vfio=(1,))
    kernel = FakeKernel(tree)
    monkeypatch.setattr(netns, "is_netns", kernel.is_netns)  # the pod's file is a plain file
    eth0 = kernel.add_link("eth0", mac="52:54:00:00:00:01", up=True)
    kernel.routes.append({"netns": HOST, "family": 2, "dst": None, "dst_len": 0,
                          "gateway": "192.0.2.1", "oif": eth0.index})
    pf = kernel.add_link("ens1f0", mac="52:54:00:00:00:02", up=True,
                         vfs={0: BEFORE, 1: BEFORE})
    vf0 = kernel.add_link("ens1f0v0", mac="02:00:00:3b:10:00", pci=VF0)
    pod = tmp_path / "pod-netns"
    pod.write_text("")
    ctx = Context(open_netlink=kernel.open, vfs=VfState(tmp_path / "state"),
                  ipam=Ipam(tmp_path / "ipam"), sysfs=Sysfs(tmp_path / "sys"))
    try:
        yield World(kernel, ctx, tree, os.path.realpath(pod), eth0, pf, vf0, tmp_path)
    finally:
        ctx.close()
    assert kernel.open_clients == 0, "every netlink client opened is closed again"


def nodeagent_ipam() -> dict[str, Any]:
    return {"type": "nodeagent-ipam", "range": "10.9.0.0/29", "gateway": "10.9.0.1",
            "routes": [{"dst": "0.0.0.0/0"}]}


def conf(kind: str, **fields: Any) -> dict[str, Any]:
    return {"cniVersion": "1.1.0", "name": "net-a", "type": kind, "ipam": nodeagent_ipam(),
            **fields}


def with_prev(c: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    return {**c, "prevResult": result}


# -- macvlan, ipvlan, vlan --------------------------------------------------------------------


def test_macvlan_add_creates_the_link_in_the_pod_then_addresses_it(world: World) -> None:
    status, result = world.cni("ADD", conf("macvlan", master="eth0", mtu=1400))

    assert status == 0, result
    (create,) = [r for r in world.kernel.requests if r.op == "link_create"]
    assert create.netns == HOST and create.args["netns"] == world.pod, (
        "created from the host directly inside the pod's namespace")
    assert create.args["lower"] == world.eth0.index
    assert create.args["data"] == [("IFLA_MACVLAN_MODE", 4)], "bridge is the default mode"
    link = world.kernel.in_netns(world.pod)["net1"]
    assert (link.kind, link.mtu, link.up) == ("macvlan", 1400, True)
    assert world.kernel.addresses_of(world.pod) == ["10.9.0.2/29"]
    assert result["interfaces"] == [{"name": "net1", "mac": link.mac, "mtu": 1400,
                                     "sandbox": world.pod}]
    assert result["ips"][0]["address"] == "10.9.0.2/29"
    assert world.kernel.sysctls[(world.pod, "net/ipv4/conf/net1/arp_notify")] == "1"
    pod_ops = world.kernel.ops(world.pod)
    assert pod_ops.index("address_add") < pod_ops.index("link_set") < pod_ops.index(
        "route_add"), "addresses, then up, then routes (a route needs its subnet up)"


def test_macvlan_mac_from_runtime_config_and_mode(world: World) -> None:
    c = conf("macvlan", master="eth0", mode="private",
             runtimeConfig={"mac": "02:AA:BB:CC:DD:EE"})

    status, result = world.cni("ADD", c)

    assert status == 0, result
    (create,) = [r for r in world.kernel.requests if r.op == "link_create"]
    assert create.args["mac"] == "02:aa:bb:cc:dd:ee"
    assert create.args["data"] == [("IFLA_MACVLAN_MODE", 1)]


def test_without_master_the_default_route_link_is_used(world: World) -> None:
    status, result = world.cni("ADD", conf("ipvlan", mode=""))

    assert status == 0, result
    (create,) = [r for r in world.kernel.requests if r.op == "link_create"]
    assert create.args["lower"] == world.eth0.index
    assert create.args["data"] == [("IFLA_IPVLAN_MODE", 0)], "l2 is the default mode (also \"\")"


def test_link_in_container_creates_it_from_inside_the_pod(world: World) -> None:
    world.kernel.add_link("eth0", netns=world.pod, mac="02:00:00:00:00:99")

    status, result = world.cni("ADD", conf("ipvlan", master="eth0", mode="l3s",
                                           linkInContainer=True))

    assert status == 0, result
    (create,) = [r for r in world.kernel.requests if r.op == "link_create"]
    assert create.netns == world.pod and create.args["netns"] == world.pod
    assert create.args["data"] == [("IFLA_IPVLAN_MODE", 2)]
    assert create.args["lower"] == world.kernel.in_netns(world.pod)["eth0"].index


def test_vlan_add_names_its_id(world: World) -> None:
    status, result = world.cni("ADD", conf("vlan", master="eth0", vlanId=42))

    assert status == 0, result
    assert world.kernel.in_netns(world.pod)["net1"].data == [("IFLA_VLAN_ID", 42)]


STACKED_BAD = [
    ("macvlan", {"master": "eth0", "mode": []}, "mode"),
    ("ipvlan", {"master": "eth0", "mode": []}, "mode"),
    ("macvlan", {"master": "eth0", "mode": "bridged"}, "mode"),
    ("ipvlan", {"master": "eth0", "mode": {"l2": 1}}, "mode"),
    ("macvlan", {"master": 5}, "master"),
    ("macvlan", {"master": ""}, "master"),
    ("ipvlan", {"master": "eth0", "mtu": "1500"}, "mtu"),
    ("ipvlan", {"master": "eth0", "mtu": True}, "mtu"),
    ("vlan", {"master": "eth0", "vlanId": 5, "mtu": 70000}, "mtu"),
    ("macvlan", {"master": "eth0", "linkInContainer": "yes"}, "linkInContainer"),
    ("macvlan", {"master": "eth0", "mac": "01:00:5e:00:00:01"}, "mac"),
    ("macvlan", {"master": "eth0", "mac": ["02:00:00:00:00:01"]}, "mac"),
    ("macvlan", {"master": "eth0", "runtimeConfig": {"mac": 7}}, "runtimeConfig.mac"),
    ("vlan", {"master": "eth0"}, "vlanId"),
    ("vlan", {"master": "eth0", "vlanId": 4095}, "vlanId"),
    ("vlan", {"master": "eth0", "vlanId": "10"}, "vlanId"),
    ("vlan", {"vlanId": 10}, "master"),
]


@pytest.mark.parametrize("kind,fields,field", STACKED_BAD,
                         ids=[f"{k}-{f}-{json.dumps(v)[:30]}" for k, v, f in STACKED_BAD])
def test_stacked_bad_field_is_code_7_naming_it_and_touches_nothing(world: World, kind, fields,
                                                                   field) -> None:
    for command in ("ADD", "CHECK"):
        c = conf(kind, **fields)
        if command == "CHECK":
            c = with_prev(c, {"cniVersion": "1.1.0"})
        status, error = world.cni(command, c)

        assert status == 1 and error["code"] == 7, error
        assert error["msg"].startswith(f"invalid network configuration: {field} "), error
    assert world.kernel.requests == []
    assert world.reserved_by("c1") == []


@pytest.mark.parametrize("step", ["address_add", "link_set", "route_add"])
def test_stacked_add_failing_late_removes_the_link_and_releases_the_address(world: World,
                                                                            step) -> None:
    world.kernel.fail(step, errno.EPERM)

    status, error = world.cni("ADD", conf("macvlan", master="eth0"))

    assert status == 1 and error["code"] == 5, error
    assert world.kernel.in_netns(world.pod) == {}
    assert world.reserved_by("c1") == []
    assert world.kernel.ops(world.pod)[-1] == "link_delete"


def test_an_existing_interface_name_is_a_config_error_and_is_left_alone(world: World) -> None:
    taken = world.kernel.add_link("net1", netns=world.pod)

    status, error = world.cni("ADD", conf("macvlan", master="eth0"))

    assert status == 1 and error["code"] == 7 and "already exists" in error["msg"], error
    assert world.kernel.in_netns(world.pod) == {"net1": taken}
    assert world.reserved_by("c1") == []


def test_a_master_that_moved_is_looked_up_again(world: World) -> None:
    assert world.cni("ADD", conf("macvlan", master="eth0"))[0] == 0
    assert world.cni("DEL", conf("macvlan", master="eth0"))[0] == 0
    world.kernel.links.pop(world.eth0.index)
    moved = world.kernel.add_link("eth0")  # deleted and made again: a new ifindex

    status, result = world.cni("ADD", conf("macvlan", master="eth0"), container="c2")

    assert status == 0, result
    assert world.kernel.in_netns(world.pod)["net1"].lower == moved.index


def test_stacked_del_removes_the_link_and_releases_and_repeats_cleanly(world: World) -> None:
    c = conf("vlan", master="eth0", vlanId=7)
    assert world.cni("ADD", c)[0] == 0
    assert world.reserved_by("c1")

    assert world.cni("DEL", c) == (0, {})
    assert world.kernel.in_netns(world.pod) == {}
    assert world.reserved_by("c1") == []
    assert world.cni("DEL", c) == (0, {}), "a second DEL succeeds"
    world.kernel.delete_netns(world.pod)
    assert world.cni("DEL", c) == (0, {}), "DEL succeeds when the namespace is gone"


def test_stacked_check_compares_the_pod_with_the_previous_result(world: World) -> None:
    c = conf("macvlan", master="eth0")
    status, result = world.cni("ADD", c)
    assert status == 0

    assert world.cni("CHECK", with_prev(c, result)) == (0, {})
    assert world.cni("CHECK", c)[1]["code"] == 7, "CHECK needs prevResult"
    world.kernel.addresses.clear()
    status, error = world.cni("CHECK", with_prev(c, result))
    assert status == 1 and "lacks address 10.9.0.2/29" in error["msg"], error
    status, error = world.cni("CHECK", with_prev(conf("ipvlan", master="eth0"), result))
    assert status == 1 and "is a macvlan, not a ipvlan" in error["msg"], error


# -- sriov ------------------------------------------------------------------------------------


def sriov(device: str = VF0, **fields: Any) -> dict[str, Any]:
    return conf("sriov", deviceID=device, **fields)


def host_netdevs(world: World, pci: str) -> list[str]:
    return world.ctx.sysfs.pci_netdevs(pci)


def test_sriov_kernel_mode_add_moves_the_vf_in_and_del_puts_everything_back(
        world: World) -> None:
    c = sriov(vlan=100, vlanQoS=3, spoofchk="off", trust="ON", mac="02:11:22:33:44:55",
              mtu=9000, max_tx_rate=1000, link_state="enable")

    status, result = world.cni("ADD", c)

    assert status == 0, result
    vf = world.kernel.in_netns(world.pod)["net1"]
    assert (vf.pci, vf.mtu, vf.mac, vf.up) == (VF0, 9000, "02:11:22:33:44:55", True)
    assert host_netdevs(world, VF0) == [], "the VF netdev left the host namespace"
    assert world.kernel.addresses_of(world.pod) == ["10.9.0.2/29"]
    assert world.pf.vfs[0] == VfConfig(mac="02:11:22:33:44:55", vlan=100, qos=3,
                                       vlan_proto="802.1Q", spoofchk=False, trust=True,
                                       min_tx_rate=0, max_tx_rate=1000, link_state="enable")
    assert world.pf.vfs[1] == BEFORE, "the other VF is not touched"
    assert result["interfaces"] == [{"name": "net1", "mac": "02:11:22:33:44:55",
                                     "sandbox": world.pod, "pciID": VF0}]
    assert world.records() == ["c1-net1.json"]

    assert world.cni("CHECK", with_prev(c, result)) == (0, {})
    assert world.cni("DEL", c) == (0, {})

    assert world.kernel.in_netns(world.pod) == {}
    home = world.kernel.in_netns(HOST)["ens1f0v0"]
    assert (home.pci, home.mtu, home.mac) == (VF0, 1500, "02:00:00:3b:10:00")
    assert host_netdevs(world, VF0) == ["ens1f0v0"]
    assert world.pf.vfs[0] == BEFORE
    assert world.records() == [] and world.reserved_by("c1") == []


def test_sriov_dpdk_mode_leaves_the_vf_bound_and_sets_the_pf_side(world: World) -> None:
    c = sriov(VF1, vlan=5, vlanProto="802.1AD", trust="on")

    status, result = world.cni("ADD", c)

    assert status == 0, result
    assert world.kernel.in_netns(world.pod) == {}
    assert not [r for r in world.kernel.requests if r.op in ("link_set", "link_create")]
    assert world.pf.vfs[1] == VfConfig(mac="00:00:00:00:00:00", vlan=5, vlan_proto="802.1ad",
                                       spoofchk=True, trust=True, link_state="auto")
    assert result["interfaces"] == [{"name": "net1", "sandbox": world.pod, "pciID": VF1}]
    assert result["ips"][0]["address"] == "10.9.0.2/29"

    assert world.cni("CHECK", with_prev(c, result)) == (0, {})
    assert world.cni("DEL", c) == (0, {})
    assert world.pf.vfs[1] == BEFORE
    assert world.records() == [] and world.reserved_by("c1") == []


def pod_link_set(name: str | None = None, moving: bool = False):
    return lambda r: (r.args["netns"] is not None) == moving and (
        name is None or r.args["name"] == name)


ROLLBACK = [
    # step, how it fails, expected CNI code
    ("PF refuses a setting", lambda k: k.refuse_vf_setting("vlan", errno.EPROTONOSUPPORT), 7),
    ("PF gone", lambda k: k.fail("set_vfs", errno.ENODEV), 5),
    ("move into the pod", lambda k: k.fail("link_set", errno.EBUSY,
                                           when=lambda r: r.args["netns"] is not None), 5),
    ("rename", lambda k: k.fail("link_set", errno.EEXIST,
                                when=lambda r: r.args["name"] == "net1"), 5),
    ("MAC in the pod", lambda k: k.fail("link_set", errno.EIO,
                                        when=lambda r: r.args["mac"] is not None), 5),
    ("address", lambda k: k.fail("address_add", errno.EPERM), 5),
    ("link up", lambda k: k.fail("link_set", errno.ENETDOWN,
                                 when=lambda r: r.args["up"] is True), 5),
    ("route", lambda k: k.fail("route_add", errno.ENETUNREACH), 5),
]


@pytest.mark.parametrize("step,breaks,code", ROLLBACK, ids=[r[0] for r in ROLLBACK])
def test_sriov_add_failing_at_any_step_leaves_nothing_behind(world: World, step, breaks,
                                                              code) -> None:
    breaks(world.kernel)
    c = sriov(vlan=100, trust="on", mac="02:11:22:33:44:55", mtu=9000)

    status, error = world.cni("ADD", c)

    assert status == 1 and error["code"] == code, error
    assert world.kernel.in_netns(world.pod) == {}
    home = world.kernel.in_netns(HOST)["ens1f0v0"]
    assert (home.pci, home.mtu, home.mac) == (VF0, 1500, "02:00:00:3b:10:00")
    assert host_netdevs(world, VF0) == ["ens1f0v0"]
    assert world.pf.vfs[0] == BEFORE, "PF-side settings put back"
    assert world.records() == [], "no attachment record left"
    assert world.reserved_by("c1") == [], "no address left reserved"
    assert world.cni("ADD", sriov(), container="c2")[0] == 0, "the VF can be taken again"


def test_sriov_without_vlan_leaves_the_vlan_as_it_is(world: World) -> None:
    world.pf.vfs[0] = VfConfig(mac="00:00:00:00:00:00", vlan=12, spoofchk=True, trust=False,
                               link_state="auto")

    assert world.cni("ADD", sriov(VF0, vlanQoS=0, trust="on"))[0] == 0

    assert (world.pf.vfs[0].vlan, world.pf.vfs[0].trust) == (12, True)
    (sent,) = [r.args["updates"] for r in world.kernel.requests if r.op == "set_vfs"][:1]
    assert sent[0].requested() == ("trust",)


def test_sriov_a_vf_held_by_another_attachment_is_refused_untouched(world: World) -> None:
    assert world.cni("ADD", sriov(vlan=10))[0] == 0
    requests = len(world.kernel.requests)

    status, error = world.cni("ADD", sriov(vlan=20), container="c2")

    assert status == 1 and error["code"] == 7 and "already attached" in error["msg"], error
    assert not [r for r in world.kernel.requests[requests:] if r.op != "link"]
    assert world.pf.vfs[0].vlan == 10
    assert world.reserved_by("c2") == []


def test_sriov_del_after_the_pod_namespace_is_gone_finds_the_vf_by_pci(world: World) -> None:
    c = sriov(spoofchk="off", mtu=9000)
    assert world.cni("ADD", c)[0] == 0
    world.kernel.delete_netns(world.pod)
    assert host_netdevs(world, VF0) == ["net1"], "back in the host under the pod's name"

    assert world.cni("DEL", c) == (0, {})

    home = world.kernel.in_netns(HOST)
    assert "net1" not in home and home["ens1f0v0"].mtu == 1500
    assert world.pf.vfs[0] == BEFORE
    assert world.records() == [] and world.reserved_by("c1") == []


def test_sriov_del_when_the_host_has_a_link_of_the_pods_name(world: World) -> None:
    """Another VF the kernel gave back under "net1" (its pod's namespace died first) must not
    make this DEL fail EEXIST on every retry, leaving the VF in the pod."""
    taken = world.kernel.add_link("net1", mac="02:00:00:00:99:99")
    assert world.cni("ADD", sriov(mtu=9000))[0] == 0

    assert world.cni("DEL", sriov(mtu=9000)) == (0, {})

    home = world.kernel.in_netns(HOST)
    assert home["ens1f0v0"].pci == VF0 and home["ens1f0v0"].mtu == 1500
    assert home["net1"] is taken, "the other link is left alone"
    assert world.kernel.in_netns(world.pod) == {}
    assert world.records() == [] and world.reserved_by("c1") == []


def test_sriov_del_retried_after_stopping_between_the_transit_rename_and_the_move(
        world: World) -> None:
    """Found by the soak (agent killed mid-DEL): the retry must still find the VF in the pod
    under its transit name, or the VF comes home later under that name for good."""
    assert world.cni("ADD", sriov())[0] == 0
    world.kernel.fail("link_set", errno.EIO, when=lambda r: r.args.get("netns") == HOST)

    assert world.cni("DEL", sriov())[0] == 1
    assert world.cni("DEL", sriov()) == (0, {})

    assert world.kernel.in_netns(world.pod) == {}
    assert world.kernel.in_netns(HOST)["ens1f0v0"].pci == VF0
    assert world.records() == []


def test_sriov_del_without_a_record_only_releases_addresses(world: World) -> None:
    assert world.cni("DEL", sriov()) == (0, {})
    assert world.kernel.requests == []


def test_sriov_check_fails_when_the_vf_left_the_pod(world: World) -> None:
    c = sriov()
    status, result = world.cni("ADD", c)
    assert status == 0
    world.kernel.in_netns(world.pod)["net1"].name = "other"

    status, error = world.cni("CHECK", with_prev(c, result))

    assert status == 1 and error["code"] == 5 and "net1 is not in" in error["msg"], error
    status, error = world.cni("CHECK", with_prev(sriov(VF1), result))
    assert status == 1 and f"no attachment of VF {VF1}" in error["msg"], error


def test_sriov_gc_detaches_what_the_runtime_no_longer_lists(world: World) -> None:
    assert world.cni("ADD", sriov(vlan=3))[0] == 0
    assert world.cni("ADD", sriov(VF1, vlan=4), container="c2")[0] == 0
    gc = {"cniVersion": "1.1.0", "name": "net-a", "type": "sriov", "ipam": nodeagent_ipam(),
          "cni.dev/valid-attachments": [{"containerID": "c2", "ifname": "net1"}]}

    status, out = world.cni("GC", gc)

    assert status == 0, out
    assert world.records() == ["c2-net1.json"]
    assert world.pf.vfs[0] == BEFORE and world.pf.vfs[1].vlan == 4
    assert "ens1f0v0" in world.kernel.in_netns(HOST)


@pytest.mark.parametrize("valid,field", [
    (5, "cni.dev/valid-attachments"),
    ([5], "cni.dev/valid-attachments[0]"),
    ([{"containerID": "c1"}], "cni.dev/valid-attachments[0].ifname"),
])
def test_sriov_gc_with_a_malformed_valid_list_is_code_7_and_detaches_nothing(
        world: World, valid, field) -> None:
    assert world.cni("ADD", sriov(vlan=3))[0] == 0
    gc = {"cniVersion": "1.1.0", "name": "net-a", "type": "sriov",
          "cni.dev/valid-attachments": valid}

    status, error = world.cni("GC", gc)

    assert status == 1 and error["code"] == 7, error
    assert error["msg"].startswith(f"invalid network configuration: {field} "), error
    assert world.records() == ["c1-net1.json"]


SRIOV_BAD = [
    ({"deviceID": None}, "deviceID"),
    ({"deviceID": "eth0"}, "deviceID"),
    ({"deviceID": "0000:3b:10.0\n"}, "deviceID"),
    ({"deviceID": 5}, "deviceID"),
    ({"runtimeConfig": {"deviceID": ["0000:3b:10.0"]}}, "runtimeConfig.deviceID"),
    ({"vlan": 4095}, "vlan"),
    ({"vlan": "100"}, "vlan"),
    ({"vlanQoS": 3}, "vlanQoS"),
    ({"vlan": 10, "vlanQoS": 8}, "vlanQoS"),
    ({"vlanProto": "802.1ad"}, "vlanProto"),
    ({"vlan": 10, "vlanProto": "802.1x"}, "vlanProto"),
    ({"spoofchk": "maybe"}, "spoofchk"),
    ({"spoofchk": True}, "spoofchk"),
    ({"trust": []}, "trust"),
    ({"link_state": "up"}, "link_state"),
    ({"min_tx_rate": -1}, "min_tx_rate"),
    ({"min_tx_rate": 200, "max_tx_rate": 100}, "min_tx_rate"),
    ({"max_tx_rate": 1.5}, "max_tx_rate"),
    ({"mac": "33:33:00:00:00:01"}, "mac"),
    ({"mtu": -1}, "mtu"),
]


@pytest.mark.parametrize("fields,field", SRIOV_BAD,
                         ids=[json.dumps(f)[:40] for f, _ in SRIOV_BAD])
def test_sriov_bad_field_is_code_7_naming_it_and_touches_nothing(world: World, fields,
                                                                 field) -> None:
    c = {**sriov(), **fields}
    if c["deviceID"] is None:
        del c["deviceID"]

    status, error = world.cni("ADD", c)

    assert status == 1 and error["code"] == 7, error
    assert error["msg"].startswith(f"invalid network configuration: {field} "), error
    assert world.kernel.requests == []
    assert world.records() == [] and world.reserved_by("c1") == []


# -- the sbr option on sriov (cni.sbr; the chained kind and macvlan: test_cni_sbr.py) ---------


def test_sriov_with_sbr_routes_the_vf_by_source_and_del_removes_it(world: World) -> None:
    c = sriov(sbr=True)

    status, result = world.cni("ADD", c)

    assert status == 0, result
    rules = [(r["src"], r["table"]) for r in world.kernel.rules if r["netns"] == world.pod]
    assert rules == [("10.9.0.2", 100)]
    ops = world.kernel.ops(world.pod)
    assert ops.index("route_add") < ops.index("rule_add"), "after the result's routes"
    assert world.cni("CHECK", with_prev(c, result)) == (0, {})

    assert world.cni("DEL", c) == (0, {})
    assert world.kernel.rules == []
    assert world.kernel.in_netns(HOST)["ens1f0v0"].pci == VF0


def test_sriov_dpdk_with_sbr_is_refused_untouched(world: World) -> None:
    status, error = world.cni("ADD", sriov(VF1, sbr=True))

    assert (status, error["code"]) == (1, 7) and "sbr" in error["msg"], error
    assert world.pf.vfs[1] == BEFORE and world.records() == []
    assert world.reserved_by("c1") == []
