"""Pools from the node policy's resourceName / resourcePrefix, alone and next to config.json."""

from __future__ import annotations

import logging

import pytest

from deviceplugin.config import parse
from deviceplugin.policypools import merged, policy_resources, resource_names
from deviceplugin.pools import build_pools
from nodeagent.discovery import Scanner
from nodeagent.model import Node
from nodeagent.provision.policy import PolicyError
from nodeagent.provision.policy import parse as parse_policy
from nodeagent.sysfs import Sysfs
from tests.sysfs_tree import SysfsTree

ICE_PF, I40E_PF = "0000:3b:00.0", "0000:86:00.0"
ICE_VFS = [f"0000:3b:01.{i}" for i in range(6)]
I40E_VFS = [f"0000:86:02.{i}" for i in range(4)]

POLICY = """
resourcePrefix: example.com
pfs:
  - name: ice
    nicSelector: {pfNames: [ens1f0]}
    numVfs: 4
    resourceName: ice_net
    vfGroups:
      - {vfs: "0-1", driver: vfio-pci, resourceName: ice_dpdk}
      - {vfs: "2", vlan: 100}
  - name: x710
    nicSelector: {rootDevices: ["0000:86:00.0"]}
    numVfs: 4
    resourceName: ice_net
"""


def scan(tree: SysfsTree) -> Node:
    return Scanner(Sysfs(tree.root), hostname="node1").scan()


def ids(pools: dict, name: str) -> list[str]:
    return [d.id for d in pools[name].devices]


@pytest.fixture
def node(tree: SysfsTree) -> Node:
    # 6 VFs on the ice PF (the policy wants 4: VFs 4-5 are not the policy's); VF 1 not yet on
    # vfio-pci, VF 0 already is.
    tree.add_pf(ICE_PF, "ice", netdev="ens1f0", numvfs=6, numa_node=0, vfio=(0,))
    tree.add_pf(I40E_PF, "i40e", netdev="ens2f0", numvfs=4, numa_node=1)
    return scan(tree)


def test_entry_and_group_names_make_pools_of_exactly_their_vfs(node: Node) -> None:
    policy = parse_policy(POLICY)
    assert resource_names(policy) == ["example.com/ice_dpdk", "example.com/ice_net"]
    pools = build_pools(merged(parse({"resourceList": []}), policy, node), node)
    assert set(pools) == {"example.com/ice_dpdk", "example.com/ice_net"}
    # The vfio-pci group: only the VF already on vfio-pci (VF 1 joins once it is bound).
    assert ids(pools, "example.com/ice_dpdk") == [ICE_VFS[0]]
    # The entry's name: VF 2 (a group without a name inherits it), VF 3, and the x710's VFs;
    # not VFs 4-5 (beyond numVfs).
    assert ids(pools, "example.com/ice_net") == [ICE_VFS[2], ICE_VFS[3], *I40E_VFS]


def test_group_joins_its_pool_once_bound(tree: SysfsTree, node: Node) -> None:
    policy = parse_policy(POLICY)
    tree.unbind(ICE_VFS[1])
    tree.bind(ICE_VFS[1], "vfio-pci")
    node = scan(tree)
    pools = build_pools(merged(parse({"resourceList": []}), policy, node), node)
    assert ids(pools, "example.com/ice_dpdk") == ICE_VFS[:2]


def test_a_name_whose_pf_is_absent_is_an_empty_pool(tree: SysfsTree) -> None:
    tree.add_pf(I40E_PF, "i40e", netdev="ens2f0", numvfs=2, numa_node=1)
    node = scan(tree)
    policy = parse_policy(POLICY)
    (dpdk, net) = policy_resources(policy, node)
    assert dpdk.full_name == "example.com/ice_dpdk" and dpdk.selectors == ()
    pools = build_pools(merged(parse({"resourceList": []}), policy, node), node)
    assert ids(pools, "example.com/ice_dpdk") == []
    assert ids(pools, "example.com/ice_net") == I40E_VFS[:2]
    assert net.resource_prefix == "example.com"


def test_config_json_wins_a_shared_name(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    from deviceplugin.manager import DevicePluginManager

    config = parse({"resourceList": [
        {"resourceName": "ice_net", "resourcePrefix": "example.com",
         "selectors": {"pfNames": ["ens2f0#0"]}}]})
    policy = parse_policy(POLICY)
    pools = build_pools(merged(config, policy, node), node)
    assert ids(pools, "example.com/ice_net") == [I40E_VFS[0]]  # config.json's selector
    assert ids(pools, "example.com/ice_dpdk") == [ICE_VFS[0]]  # the policy's other name
    with caplog.at_level(logging.WARNING, logger="deviceplugin.manager"):
        DevicePluginManager(config, "/nonexistent", node_policy=policy)._warn_shadowed()
    assert "example.com/ice_net is defined by config.json and by the node policy" in caplog.text


def test_default_prefix_and_no_names() -> None:
    policy = parse_policy("pfs: [{nicSelector: {pfNames: [a]}, numVfs: 2, resourceName: n}]")
    assert resource_names(policy) == ["intel.com/n"]
    assert resource_names(parse_policy("pfs: [{nicSelector: {pfNames: [a]}, numVfs: 2}]")) == []


@pytest.mark.parametrize(("text", "field"), [
    ("resourcePrefix: Example.COM\npfs: []", "policy.resourcePrefix"),
    ("resourcePrefix: 7\npfs: []", "policy.resourcePrefix"),
    ("pfs: [{nicSelector: {pfNames: [a]}, numVfs: 2, resourceName: 'bad/name'}]",
     "policy.pfs[0].resourceName"),
    ("pfs: [{nicSelector: {pfNames: [a]}, numVfs: 2, resourceName: '-x'}]",
     "policy.pfs[0].resourceName"),
    ("pfs: [{nicSelector: {pfNames: [a]}, numVfs: 2,"
     " vfGroups: [{vfs: '0', resourceName: 'a b'}]}]", "policy.pfs[0].vfGroups[0].resourceName"),
    ("pfs: [{nicSelector: {pfNames: [a]}, numVfs: 2, vfDefaults: {resourceName: x}}]",
     "policy.pfs[0].vfDefaults: unknown field(s) resourceName"),
])
def test_bad_names_are_refused_naming_the_field(text: str, field: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(text)
    assert field in str(err.value)


def test_names_allow_letters_digits_underscore_dot_dash() -> None:
    policy = parse_policy("pfs: [{nicSelector: {pfNames: [a]}, numVfs: 2,"
                          " resourceName: Net_1.a-b}]")
    assert resource_names(policy) == ["intel.com/Net_1.a-b"]
