"""Which VF went to which pod: the kubelet's PodResourcesLister (a real gRPC stand-in on a unix
socket) -> the StatusBoard, `nodeagent status`, and provisioning's in-use check."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deviceplugin.config import parse
from deviceplugin.manager import DevicePluginManager
from deviceplugin.podresources import PodResourcesWatch
from nodeagent.discovery import Scanner
from nodeagent.provision.inuse import InUse
from nodeagent.status import StatusBoard
from nodeagent.statusview import status_screen
from nodeagent.sysfs import Sysfs
from tests.kubelet_standin import PB2, Kubelet, PodResourcesLister, plugin
from tests.sysfs_tree import SysfsTree

ICE_PF = "0000:3b:00.0"
ICE_VFS = [f"0000:3b:01.{i}" for i in range(4)]
NET = "intel.com/sriov_net"


@pytest.fixture
def lister(tmp_path: Path) -> Iterator[PodResourcesLister]:
    server = PodResourcesLister(tmp_path / "pod-resources.sock")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_assignments_reach_the_board_and_status_screen(lister: PodResourcesLister) -> None:
    lister.pods = {
        ("ran", "du-0"): {"l1": {NET: [ICE_VFS[0], ICE_VFS[1]], "example.com/gpu": ["gpu-7"]}},
        ("ran", "cu-0"): {"main": {NET: [ICE_VFS[2]]}},
    }
    status = StatusBoard()
    watch = PodResourcesWatch(status, lambda: [NET], socket=str(lister.path))
    assert watch.poll()
    assert watch.pods() == {ICE_VFS[0]: "ran/du-0", ICE_VFS[1]: "ran/du-0",
                            ICE_VFS[2]: "ran/cu-0"}  # not the GPU: not our resource
    allocations = status.snapshot()["allocations"]
    assert allocations[f"device/{ICE_VFS[0]}"] == {
        "pod": "du-0", "namespace": "ran", "container": "l1", "device": ICE_VFS[0],
        "type": "device-plugin", "network": NET}
    screen = status_screen(status.snapshot())
    line = next(ln for ln in screen.splitlines() if ICE_VFS[2] in ln)
    assert "ran/cu-0" in line and NET in line and "device-plugin" in line
    # The pod ends: its VFs are released on the board at the next poll.
    del lister.pods[("ran", "du-0")]
    assert watch.poll()
    assert set(status.snapshot()["allocations"]) == {f"device/{ICE_VFS[2]}"}


def test_unreachable_kubelet_records_nothing_and_stays_quiet(
        tmp_path: Path, lister: PodResourcesLister, caplog: pytest.LogCaptureFixture) -> None:
    status = StatusBoard()
    missing = PodResourcesWatch(status, socket=str(tmp_path / "absent.sock"))
    with caplog.at_level(logging.INFO):
        assert not missing.poll()
        assert not missing.poll()
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]
    assert status.snapshot()["allocations"] == {} and status.snapshot()["recentErrors"] == []
    # Known assignments survive a kubelet that stops answering (a kubelet restart).
    lister.pods = {("ns", "p"): {"c": {NET: [ICE_VFS[0]]}}}
    watch = PodResourcesWatch(status, socket=str(lister.path), timeout=0.5)
    assert watch.poll()
    lister.stop()
    lister.path.touch()  # a stale socket file: connection refused
    assert not watch.poll()
    assert watch.pods() == {ICE_VFS[0]: "ns/p"}
    assert status.snapshot()["recentErrors"] == []


def test_a_vf_held_by_a_pod_counts_as_in_use(tree: SysfsTree, tmp_path: Path,
                                             lister: PodResourcesLister) -> None:
    tree.add_pf(ICE_PF, "ice", netdev="ens1f0", numvfs=4, numa_node=0, vfio=(1,))
    node = Scanner(Sysfs(tree.root), hostname="node1").scan()
    (pf,) = node.pfs
    watch = PodResourcesWatch(socket=str(lister.path))
    proc = tmp_path / "proc"  # no process holds a VFIO group open
    proc.mkdir()
    in_use = InUse(Sysfs(tree.root), None, proc=str(proc), kubelet_assigned=watch.pods)
    assert in_use.vfs(pf) == {}
    lister.pods = {("ran", "du-0"): {"l1": {NET: [ICE_VFS[1], "0000:99:00.1"]}}}
    watch.poll()
    assert in_use.vfs(pf) == {ICE_VFS[1]: "assigned by the kubelet to pod ran/du-0"}


def test_allocate_triggers_a_poll(tree: SysfsTree, tmp_path: Path,
                                  lister: PodResourcesLister) -> None:
    tree.add_pf(ICE_PF, "ice", netdev="ens1f0", numvfs=4, numa_node=0)
    plugin_dir = tmp_path / "dp"
    plugin_dir.mkdir()
    kubelet = Kubelet(plugin_dir)
    kubelet.start()
    status = StatusBoard()
    # A long interval: only the Allocate can make the second poll happen soon.
    watch = PodResourcesWatch(status, socket=str(lister.path), interval=60,
                              after_allocate=0.05)
    manager = DevicePluginManager(parse({"resourceList": [{"resourceName": "sriov_net"}]}),
                                  str(plugin_dir), poll_interval=0.05,
                                  on_allocate=watch.poke)
    manager.start(Scanner(Sysfs(tree.root), hostname="node1").scan())
    watch.start()
    try:
        _wait(lambda: watch.polls >= 1)
        lister.pods = {("ns", "pod-a"): {"c": {NET: [ICE_VFS[3]]}}}  # the kubelet records it
        channel, stub = plugin(plugin_dir, NET)
        with channel:
            stub.Allocate(PB2.AllocateRequest(container_requests=[
                PB2.ContainerAllocateRequest(devices_ids=[ICE_VFS[3]])]), timeout=2)
        _wait(lambda: f"device/{ICE_VFS[3]}" in status.snapshot()["allocations"])
        assert watch.polls == 2
    finally:
        watch.stop()
        manager.stop()
        kubelet.stop()


def _wait(probe: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
