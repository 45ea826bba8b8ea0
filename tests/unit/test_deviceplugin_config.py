"""Config parsing, pool membership, Allocate contents and preferred allocation (no gRPC)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deviceplugin.allocate import AllocationError, VfioGroupPaths, allocate, env_name
from deviceplugin.config import ConfigError, VfRange, load, parse, vf_range
from deviceplugin.pools import HealthPolicy, build_pools
from deviceplugin.preferred import preferred
from nodeagent.discovery import Scanner
from nodeagent.model import Node
from nodeagent.sysfs import Sysfs
from tests.sysfs_tree import SysfsTree

ICE_PF, I40E_PF = "0000:3b:00.0", "0000:86:00.0"
ICE_VFS = [f"0000:3b:01.{i}" for i in range(4)]
I40E_VFS = [f"0000:86:02.{i}" for i in range(4)]


def scan(tree: SysfsTree) -> Node:
    return Scanner(Sysfs(tree.root), hostname="node1").scan()


@pytest.fixture
def node(tree: SysfsTree) -> Node:
    tree.add_pf(ICE_PF, "ice", netdev="ens1f0", numvfs=4, numa_node=0, vfio=(1,))
    tree.add_pf(I40E_PF, "i40e", netdev="ens2f0", numvfs=4, numa_node=1)
    return scan(tree)


def test_keys_case_insensitive_defaults_and_unknown_keys() -> None:
    cfg = parse({"ResourceList": [{"RESOURCENAME": "net_a", "Selectors": {"VENDORS": ["8086"]},
                                   "somethingNew": 1}]})
    (res,) = cfg.resources
    assert res.full_name == "intel.com/net_a"
    assert res.device_type == "netDevice"
    assert res.exclude_topology is False
    assert res.selectors[0].vendors == ("8086",)


def test_vf_ranges() -> None:
    assert vf_range("ens1f0") == VfRange("ens1f0")
    assert vf_range("ens1f0#0,2-4") == VfRange("ens1f0", frozenset({0, 2, 3, 4}))
    with pytest.raises(ConfigError, match="pfNames"):
        vf_range("ens1f0#3-1", "pfNames")
    with pytest.raises(ConfigError, match="bad VF range"):
        vf_range("ens1f0#x")


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"selectors": {}}, "resourceList[0].resourceName"),
        ({"resourceName": "a", "deviceType": "gpu"}, "resourceList[0].deviceType"),
        ({"resourceName": "a", "selectors": {"vendors": "8086"}},
         "resourceList[0].selectors.vendors"),
        ({"resourceName": "a", "selectors": [{}, {"devices": ["zz"]}]},
         "resourceList[0].selectors[1].devices"),
        ({"resourceName": "a", "excludeTopology": "yes"}, "resourceList[0].excludeTopology"),
    ],
)
def test_errors_name_the_field(entry: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse({"resourceList": [entry]})


def test_load_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"resourceList": [{"resourceName": "x",
                                                  "resourcePrefix": "example.org"}]}))
    assert load(path).resources[0].full_name == "example.org/x"
    path.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load(path)


def test_first_pool_wins_and_list_selectors(node: Node) -> None:
    cfg = parse({"resourceList": [
        {"resourceName": "dpdk", "selectors": {"drivers": ["vfio-pci"]}},
        {"resourceName": "mixed", "selectors": [
            {"pfNames": ["ens1f0#2-3"]},
            {"rootDevices": [f"{I40E_PF}#0"], "devices": ["154c"]},
        ]},
        {"resourceName": "rest", "selectors": {"vendors": ["8086"], "linkTypes": ["ether"]}},
    ]})
    pools = build_pools(cfg, node)
    ids = {name: [d.id for d in pool.devices] for name, pool in pools.items()}
    assert ids["intel.com/dpdk"] == [ICE_VFS[1]]
    assert ids["intel.com/mixed"] == [ICE_VFS[2], ICE_VFS[3], I40E_VFS[0]]
    assert ids["intel.com/rest"] == [ICE_VFS[0], *I40E_VFS[1:]]
    assert cfg.resources[2].selectors[0].unsupported == ("linkTypes",)


def test_health_from_pf_link_and_driver(tree: SysfsTree) -> None:
    tree.add_pf(ICE_PF, "ice", netdev="ens1f0", numvfs=2)
    tree.unbind(ICE_VFS[0])
    cfg = parse({"resourceList": [{"resourceName": "a"}]})
    health = {d.id: d.healthy for d in build_pools(cfg, scan(tree))["intel.com/a"].devices}
    assert health == {ICE_VFS[0]: False, ICE_VFS[1]: True}
    (tree.root / "class/net/ens1f0/carrier").write_text("0\n")
    node = scan(tree)
    assert not any(d.healthy for d in build_pools(cfg, node)["intel.com/a"].devices)
    relaxed = build_pools(cfg, node, HealthPolicy(pf_link_down=False))["intel.com/a"]
    assert [d.healthy for d in relaxed.devices] == [False, True]


def test_allocate_contents(node: Node) -> None:
    cfg = parse({"resourceList": [{"resourceName": "sriov_net"}]})
    devices = build_pools(cfg, node)["intel.com/sriov_net"].by_id()
    vfio = devices[ICE_VFS[1]]
    result = allocate("intel.com/sriov_net", devices, [ICE_VFS[0], ICE_VFS[1]])
    assert env_name("intel.com/sriov_net") == "PCIDEVICE_INTEL_COM_SRIOV_NET"
    assert result.envs["PCIDEVICE_INTEL_COM_SRIOV_NET"] == f"{ICE_VFS[0]},{ICE_VFS[1]}"
    info = json.loads(result.envs["PCIDEVICE_INTEL_COM_SRIOV_NET_INFO"])
    group = f"/dev/vfio/{vfio.iommu_group}"
    assert info == {
        ICE_VFS[0]: {"generic": {"deviceID": ICE_VFS[0]}},
        ICE_VFS[1]: {"generic": {"deviceID": ICE_VFS[1]},
                     "vfio": {"mount": "/dev/vfio/vfio", "dev-mount": group}},
    }
    assert result.device_specs == [("/dev/vfio/vfio", "/dev/vfio/vfio", "rw"),
                                   (group, group, "rw")]
    assert allocate("intel.com/sriov_net", devices, [ICE_VFS[0]]).device_specs == []
    with pytest.raises(AllocationError, match=r"0000:ff:00\.1"):
        allocate("intel.com/sriov_net", devices, ["0000:ff:00.1"])


def test_noiommu_group_host_node_mapped_to_the_plain_container_path(
        tree: SysfsTree, tmp_path: Path) -> None:
    tree.add_pf(ICE_PF, "ice", netdev="ens1f0", numvfs=3, numa_node=0, vfio=(0, 1, 2))
    cfg = parse({"resourceList": [{"resourceName": "dpdk"}]})
    devices = build_pools(cfg, scan(tree))["intel.com/dpdk"].by_id()
    groups = [devices[vf].iommu_group for vf in ICE_VFS[:3]]
    dev = tmp_path / "dev"
    (dev / "vfio").mkdir(parents=True)
    (dev / "vfio" / "vfio").touch()
    # VF 0: a no-IOMMU group as the kernel shows it (group name and device node).
    (tree.root / f"kernel/iommu_groups/{groups[0]}/name").write_text("vfio-noiommu\n")
    (dev / "vfio" / f"noiommu-{groups[0]}").touch()
    # VF 1: no group name in sysfs; only the device node tells.
    (dev / "vfio" / f"noiommu-{groups[1]}").touch()
    # VF 2: an IOMMU-backed group.
    (dev / "vfio" / str(groups[2])).touch()
    paths = VfioGroupPaths(str(tree.root), str(dev))
    result = allocate("intel.com/dpdk", devices, ICE_VFS[:3], group_paths=paths)
    assert result.device_specs == [
        ("/dev/vfio/vfio", "/dev/vfio/vfio", "rw"),
        (f"/dev/vfio/{groups[0]}", f"/dev/vfio/noiommu-{groups[0]}", "rw"),
        (f"/dev/vfio/{groups[1]}", f"/dev/vfio/noiommu-{groups[1]}", "rw"),
        (f"/dev/vfio/{groups[2]}", f"/dev/vfio/{groups[2]}", "rw"),
    ]
    info = json.loads(result.envs["PCIDEVICE_INTEL_COM_DPDK_INFO"])
    assert info[ICE_VFS[0]]["vfio"] == {"mount": "/dev/vfio/vfio",
                                        "dev-mount": f"/dev/vfio/{groups[0]}"}


def test_preferred_allocation_two_numa(tree: SysfsTree) -> None:
    tree.add_pf(ICE_PF, "ice", netdev="ens1f0", numvfs=2, numa_node=0)
    tree.add_pf("0000:3c:00.0", "ice", netdev="ens1f1", numvfs=4, numa_node=0)
    tree.add_pf(I40E_PF, "i40e", netdev="ens2f0", numvfs=4, numa_node=1)
    cfg = parse({"resourceList": [{"resourceName": "a"}]})
    devices = build_pools(cfg, scan(tree))["intel.com/a"].by_id()
    available = sorted(devices)
    pf_of = {i: devices[i].pf for i in devices}
    numa_of = {i: devices[i].numa_node for i in devices}
    # must-include on NUMA 1 pulls the rest from NUMA 1, same PF.
    got = preferred(devices, available, [I40E_VFS[2]], 3)
    assert got[0] == I40E_VFS[2] and {numa_of[i] for i in got} == {1}
    # Without an anchor: the NUMA node with most devices (0); one VF on each of its PFs, the
    # rest packed on the fuller PF.
    got = preferred(devices, available, [], 4)
    assert sorted(pf_of[i] for i in got) == [ICE_PF] + ["0000:3c:00.0"] * 3
    spread = preferred(devices, available, [], 4, policy="spread")
    assert {numa_of[i] for i in spread} == {0}
    assert len({pf_of[i] for i in spread}) == 2
    # More than one NUMA node can give: spills over.
    assert len(preferred(devices, available, [ICE_VFS[0]], 8)) == 8


def _two_pfs_per_numa(tree: SysfsTree):
    tree.add_pf(ICE_PF, "ice", netdev="ens1f0", numvfs=2, numa_node=0)
    tree.add_pf("0000:3c:00.0", "ice", netdev="ens1f1", numvfs=4, numa_node=0)
    tree.add_pf(I40E_PF, "i40e", netdev="ens2f0", numvfs=4, numa_node=1)
    cfg = parse({"resourceList": [{"resourceName": "a"}]})
    return build_pools(cfg, scan(tree))["intel.com/a"].by_id()


@pytest.mark.parametrize("policy", ["pack", "spread"])
def test_a_pair_lands_on_two_pfs_of_the_chosen_numa_node(tree: SysfsTree, policy) -> None:
    devices = _two_pfs_per_numa(tree)

    got = preferred(devices, sorted(devices), [], 2, policy=policy)

    assert {devices[i].pf for i in got} == {ICE_PF, "0000:3c:00.0"}, "one VF per PF"
    assert {devices[i].numa_node for i in got} == {0}


def test_a_must_include_vf_gets_its_partner_on_another_pf(tree: SysfsTree) -> None:
    devices = _two_pfs_per_numa(tree)
    anchor = next(i for i in sorted(devices) if devices[i].pf == "0000:3c:00.0")

    got = preferred(devices, sorted(devices), [anchor], 2)

    assert got[0] == anchor and devices[got[1]].pf == ICE_PF


def test_the_numa_node_comes_before_a_second_pf(tree: SysfsTree) -> None:
    devices = _two_pfs_per_numa(tree)

    got = preferred(devices, sorted(devices), [I40E_VFS[0]], 2)

    assert [devices[i].pf for i in got] == [I40E_PF, I40E_PF], (
        "NUMA node 1 has one PF: the pair stays on it rather than crossing nodes")


def test_a_single_vf_is_still_packed(tree: SysfsTree) -> None:
    devices = _two_pfs_per_numa(tree)

    (got,) = preferred(devices, sorted(devices), [], 1)

    assert devices[got].pf == "0000:3c:00.0", "the PF with most free VFs"

