"""The device plugin against a kubelet stand-in speaking v1beta1 over unix sockets."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from deviceplugin import api
from deviceplugin.config import parse
from deviceplugin.manager import DevicePluginManager
from deviceplugin.server import socket_name
from nodeagent.discovery import Scanner
from nodeagent.model import Node
from nodeagent.sysfs import Sysfs
from tests.kubelet_standin import Kubelet, plugin
from tests.sysfs_tree import SysfsTree

PB2, PB2_GRPC = api.modules()
ICE_PF, I40E_PF = "0000:3b:00.0", "0000:86:00.0"
ICE_VFS = [f"0000:3b:01.{i}" for i in range(4)]
RESOURCE = "intel.com/sriov_net"
CONFIG = parse({"resourceList": [
    {"resourceName": "sriov_net", "selectors": {"pfNames": ["ens1f0"]}},
    {"resourceName": "plain", "resourcePrefix": "example.org", "excludeTopology": True,
     "selectors": {"rootDevices": [I40E_PF]}},
]})


def scan(tree: SysfsTree) -> Node:
    return Scanner(Sysfs(tree.root), hostname="node1").scan()


@pytest.fixture
def setup(tree: SysfsTree, tmp_path: Path) -> Iterator[tuple[Kubelet, DevicePluginManager, Path]]:
    tree.add_pf(ICE_PF, "ice", netdev="ens1f0", numvfs=4, numa_node=0, vfio=(1,))
    tree.add_pf(I40E_PF, "i40e", netdev="ens2f0", numvfs=2, numa_node=1)
    plugin_dir = tmp_path / "dp"
    plugin_dir.mkdir()
    kubelet = Kubelet(plugin_dir)
    kubelet.start()
    manager = DevicePluginManager(CONFIG, str(plugin_dir), poll_interval=0.05)
    manager.start(scan(tree))
    try:
        yield kubelet, manager, plugin_dir
    finally:
        manager.stop()
        kubelet.stop()


def test_registers_every_pool_and_again_after_kubelet_restart(setup: Any) -> None:
    kubelet, _manager, plugin_dir = setup
    got = kubelet.registered(2)
    assert set(got) == {RESOURCE, "example.org/plain"}
    request = got[RESOURCE]
    assert request.version == "v1beta1"
    assert request.endpoint == socket_name(RESOURCE)
    assert (plugin_dir / request.endpoint).exists()
    assert request.options.get_preferred_allocation_available
    # A restarting kubelet removes plugin sockets and recreates its own.
    kubelet.stop()
    for name in os.listdir(plugin_dir):
        (plugin_dir / name).unlink()
    kubelet.start()
    start = time.monotonic()
    assert set(kubelet.registered(2)) == {RESOURCE, "example.org/plain"}
    assert time.monotonic() - start < 2
    channel, stub = plugin(plugin_dir, RESOURCE)
    with channel:
        options = stub.GetDevicePluginOptions(PB2.Empty(), timeout=2)
        assert options.get_preferred_allocation_available


def test_list_and_watch_follows_the_tree(setup: Any, tree: SysfsTree) -> None:
    _kubelet, manager, plugin_dir = setup
    channel, stub = plugin(plugin_dir, RESOURCE)
    with channel:
        stream = stub.ListAndWatch(PB2.Empty(), timeout=10)
        first = next(stream)
        assert [(d.ID, d.health, [n.ID for n in d.topology.nodes]) for d in first.devices] == [
            (vf, "Healthy", [0]) for vf in ICE_VFS
        ]
        tree.unbind(ICE_VFS[3])
        start = time.monotonic()
        manager.update(scan(tree))
        second = next(stream)
        assert time.monotonic() - start < 1
        assert {d.ID: d.health for d in second.devices}[ICE_VFS[3]] == "Unhealthy"
        tree.set_numvfs(ICE_PF, 2, "ice", netdev_prefix="ens1f0")
        manager.follow(iter([scan(tree)]))
        third = next(stream)
        assert [d.ID for d in third.devices] == ICE_VFS[:2]
        stream.cancel()
    channel, stub = plugin(plugin_dir, "example.org/plain")
    with channel:
        stream = stub.ListAndWatch(PB2.Empty(), timeout=10)
        devices = next(stream).devices
        assert [len(d.topology.nodes) for d in devices] == [0, 0]  # excludeTopology
        stream.cancel()


def test_allocate_field_by_field(setup: Any, tree: SysfsTree) -> None:
    _, _, plugin_dir = setup
    group = Sysfs(tree.root).pci_iommu_group(ICE_VFS[1])
    channel, stub = plugin(plugin_dir, RESOURCE)
    with channel:
        response = stub.Allocate(PB2.AllocateRequest(container_requests=[
            PB2.ContainerAllocateRequest(devices_ids=[ICE_VFS[1], ICE_VFS[2]]),
            PB2.ContainerAllocateRequest(devices_ids=[ICE_VFS[0]]),
        ]), timeout=2)
    first, second = response.container_responses
    envs = dict(first.envs)
    assert set(envs) == {"PCIDEVICE_INTEL_COM_SRIOV_NET", "PCIDEVICE_INTEL_COM_SRIOV_NET_INFO"}
    assert envs["PCIDEVICE_INTEL_COM_SRIOV_NET"] == f"{ICE_VFS[1]},{ICE_VFS[2]}"
    info = json.loads(envs["PCIDEVICE_INTEL_COM_SRIOV_NET_INFO"])
    assert info[ICE_VFS[1]] == {"generic": {"deviceID": ICE_VFS[1]},
                                "vfio": {"mount": "/dev/vfio/vfio",
                                         "dev-mount": f"/dev/vfio/{group}"}}
    assert info[ICE_VFS[2]] == {"generic": {"deviceID": ICE_VFS[2]}}
    assert [(d.container_path, d.host_path, d.permissions) for d in first.devices] == [
        ("/dev/vfio/vfio", "/dev/vfio/vfio", "rw"),
        (f"/dev/vfio/{group}", f"/dev/vfio/{group}", "rw"),
    ]
    assert not first.mounts
    assert dict(second.envs)["PCIDEVICE_INTEL_COM_SRIOV_NET"] == ICE_VFS[0]
    assert not second.devices


def test_allocate_rejects_unknown_and_unhealthy(setup: Any, tree: SysfsTree) -> None:
    _, manager, plugin_dir = setup
    tree.unbind(ICE_VFS[2])
    manager.update(scan(tree))
    channel, stub = plugin(plugin_dir, RESOURCE)
    with channel:
        for ids, word in (([ICE_VFS[0], "0000:ff:00.1"], "unknown"), ([ICE_VFS[2]], "unhealthy")):
            with pytest.raises(grpc.RpcError) as err:
                stub.Allocate(PB2.AllocateRequest(container_requests=[
                    PB2.ContainerAllocateRequest(devices_ids=ids)]), timeout=2)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert word in err.value.details() and ids[-1] in err.value.details()


def test_preferred_allocation_over_grpc(tmp_path: Path, tree: SysfsTree) -> None:
    tree.add_pf(ICE_PF, "ice", netdev="ens1f0", numvfs=2, numa_node=0)
    tree.add_pf(I40E_PF, "i40e", netdev="ens2f0", numvfs=4, numa_node=1)
    tree.add_pf("0000:87:00.0", "i40e", netdev="ens2f1", numvfs=2, numa_node=1)
    manager = DevicePluginManager(parse({"resourceList": [{"resourceName": "a"}]}),
                                  str(tmp_path), poll_interval=0.05)
    manager.start(scan(tree))
    try:
        node = scan(tree)
        numa = {vf.pci.address: vf.pci.numa_node for _, vf in node.vfs()}
        pf_of = {vf.pci.address: pf.key for pf, vf in node.vfs()}
        channel, stub = plugin(tmp_path, "intel.com/a")
        with channel:
            response = stub.GetPreferredAllocation(PB2.PreferredAllocationRequest(
                container_requests=[PB2.ContainerPreferredAllocationRequest(
                    available_deviceIDs=sorted(numa), must_include_deviceIDs=["0000:87:02.1"],
                    allocation_size=3)]), timeout=2)
        (ids,) = [list(r.deviceIDs) for r in response.container_responses]
        assert ids[0] == "0000:87:02.1"
        assert {numa[i] for i in ids} == {1}
        assert {pf_of[i] for i in ids} == {"0000:87:00.0", I40E_PF}
        # one VF per PF first (the must-include one's partner on the other PF), then packed
        # on the PF with most free VFs
        assert [pf_of[i] for i in ids] == ["0000:87:00.0", I40E_PF, I40E_PF]
    finally:
        manager.stop()
