"""The device plugin's gRPC handlers check what a caller sends before doing any work, and
answer INVALID_ARGUMENT naming the field (issue #12: every gRPC handler)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from deviceplugin import api
from deviceplugin.allocate import MAX_REQUEST_IDS
from deviceplugin.config import parse
from deviceplugin.manager import DevicePluginManager
from nodeagent.discovery import Scanner
from nodeagent.sysfs import Sysfs
from tests.kubelet_standin import plugin
from tests.sysfs_tree import SysfsTree

PB2, _ = api.modules()
PF = "0000:3b:00.0"
VFS = [f"0000:3b:01.{i}" for i in range(2)]


@pytest.fixture
def stub(tree: SysfsTree, tmp_path: Path) -> Iterator[Any]:
    tree.add_pf(PF, "ice", netdev="ens1f0", numvfs=2, numa_node=0)
    manager = DevicePluginManager(parse({"resourceList": [{"resourceName": "a"}]}),
                                  str(tmp_path), poll_interval=0.05)
    manager.start(Scanner(Sysfs(tree.root), hostname="n1").scan())
    channel, client = plugin(tmp_path, "intel.com/a")
    try:
        yield client
    finally:
        channel.close()
        manager.stop()


def refused(call: Any, request: Any) -> str:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return err.value.details()


def test_allocate_names_a_few_unknown_devices_not_all(stub: Any) -> None:
    ids = [VFS[0], *(f"0000:ff:{i // 8:02x}.{i % 8}" for i in range(5000))]
    details = refused(stub.Allocate, PB2.AllocateRequest(container_requests=[
        PB2.ContainerAllocateRequest(devices_ids=[VFS[0]]),
        PB2.ContainerAllocateRequest(devices_ids=ids)]))
    assert details.startswith("container_requests[1]: devices_ids: unknown devices")
    assert "and 4995 more" in details and len(details) < 500


def test_allocate_refuses_more_ids_than_any_node_has(stub: Any) -> None:
    details = refused(stub.Allocate, PB2.AllocateRequest(container_requests=[
        PB2.ContainerAllocateRequest(devices_ids=[VFS[0]] * (MAX_REQUEST_IDS + 1))]))
    assert "devices_ids" in details and str(MAX_REQUEST_IDS) in details


def test_preferred_allocation_refuses_a_negative_size(stub: Any) -> None:
    details = refused(stub.GetPreferredAllocation, PB2.PreferredAllocationRequest(
        container_requests=[PB2.ContainerPreferredAllocationRequest(
            available_deviceIDs=VFS, allocation_size=-1)]))
    assert "container_requests[0].allocation_size" in details


def test_preferred_allocation_skips_devices_that_left_the_pool(stub: Any) -> None:
    response = stub.GetPreferredAllocation(PB2.PreferredAllocationRequest(
        container_requests=[PB2.ContainerPreferredAllocationRequest(
            available_deviceIDs=["0000:ff:00.0", *VFS], allocation_size=2)]), timeout=10)
    (answer,) = response.container_responses
    assert list(answer.deviceIDs) == VFS
