"""Pools added, removed and changed without a restart, seen through a kubelet stand-in; and the
daemon-side file watch that feeds them (config.json and the policy, ConfigMap-style swaps)."""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from deviceplugin.config import parse
from deviceplugin.manager import DevicePluginManager
from deviceplugin.server import socket_name
from deviceplugin.sources import PluginSources
from nodeagent.discovery import Scanner
from nodeagent.model import Node
from nodeagent.provision.policy import parse as parse_policy
from nodeagent.status import StatusBoard
from nodeagent.sysfs import Sysfs
from tests.kubelet_standin import PB2, Kubelet, plugin
from tests.sysfs_tree import SysfsTree

ICE_PF, I40E_PF = "0000:3b:00.0", "0000:86:00.0"
ICE_VFS = [f"0000:3b:01.{i}" for i in range(4)]
I40E_VFS = [f"0000:86:02.{i}" for i in range(2)]
NET, EXTRA = "intel.com/net", "intel.com/extra"


def scan(tree: SysfsTree) -> Node:
    return Scanner(Sysfs(tree.root), hostname="node1").scan()


def config(*entries: dict) -> Any:
    return parse({"resourceList": list(entries)})


class Stream:
    """A ListAndWatch stream read on its own thread, so a test can wait with a timeout."""

    def __init__(self, plugin_dir: Path, resource: str) -> None:
        self.channel, stub = plugin(plugin_dir, resource)
        self.call = stub.ListAndWatch(PB2.Empty(), timeout=30)
        self.messages: queue.Queue[Any] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for message in self.call:
                self.messages.put([d.ID for d in message.devices])
        except grpc.RpcError as exc:
            self.messages.put(exc.code())
        self.messages.put(None)  # the stream ended

    def next(self, timeout: float = 1.0) -> Any:
        return self.messages.get(timeout=timeout)

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()


@pytest.fixture
def running(tree: SysfsTree, tmp_path: Path) -> Iterator[tuple[Kubelet, DevicePluginManager,
                                                               Path]]:
    tree.add_pf(ICE_PF, "ice", netdev="ens1f0", numvfs=4, numa_node=0)
    tree.add_pf(I40E_PF, "i40e", netdev="ens2f0", numvfs=2, numa_node=1)
    plugin_dir = tmp_path / "dp"
    plugin_dir.mkdir()
    kubelet = Kubelet(plugin_dir)
    kubelet.start()
    manager = DevicePluginManager(
        config({"resourceName": "net", "selectors": {"pfNames": ["ens1f0"]}}),
        str(plugin_dir), poll_interval=0.05)
    manager.start(scan(tree))
    try:
        assert set(kubelet.registered(1)) == {NET}
        yield kubelet, manager, plugin_dir
    finally:
        manager.stop()
        kubelet.stop()


def test_add_change_remove_pools_while_a_stream_is_open(running: Any) -> None:
    kubelet, manager, plugin_dir = running
    stream = Stream(plugin_dir, NET)
    try:
        assert stream.next() == ICE_VFS
        # Change: the pool narrows; add: a new resource, served and registered at once.
        manager.reload(config(
            {"resourceName": "net", "selectors": {"pfNames": ["ens1f0#0-1"]}},
            {"resourceName": "extra", "selectors": {"pfNames": ["ens2f0"]}}))
        assert stream.next() == ICE_VFS[:2]  # within 1 s, on the stream already open
        assert set(kubelet.registered(1)) == {EXTRA}
        extra = Stream(plugin_dir, EXTRA)
        assert extra.next() == I40E_VFS
        # Remove: its server stops (its stream ends), its socket goes; the other stays.
        manager.reload(config({"resourceName": "net", "selectors": {"pfNames": ["ens1f0"]}}))
        assert stream.next() == ICE_VFS
        assert extra.next() in (None, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert not (plugin_dir / socket_name(EXTRA)).exists()
        assert set(manager.servers) == {NET}
        extra.close()
        time.sleep(0.3)  # several watch ticks: nothing re-registers or revives the removed one
        assert kubelet.requests.empty()
        assert not (plugin_dir / socket_name(EXTRA)).exists()
    finally:
        stream.close()


def test_policy_pools_come_and_go_with_reload(running: Any, tree: SysfsTree) -> None:
    kubelet, manager, plugin_dir = running
    base = manager.config
    policy = parse_policy("pfs: [{nicSelector: {pfNames: [ens2f0]}, numVfs: 2,"
                          " resourceName: extra}]")
    manager.reload(base, policy)
    assert set(kubelet.registered(1)) == {EXTRA}
    stream = Stream(plugin_dir, EXTRA)
    try:
        assert stream.next() == I40E_VFS
        # The node changes under the policy pool: it follows.
        tree.set_numvfs(I40E_PF, 1, "i40e", netdev_prefix="ens2f0")
        manager.update(scan(tree))
        assert stream.next() == I40E_VFS[:1]
        manager.reload(base, None)
        assert stream.next() in (None, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert set(manager.servers) == {NET}
    finally:
        stream.close()


def test_sources_follow_config_and_policy_files(tmp_path: Path) -> None:
    status = StatusBoard()
    cfg = tmp_path / "config.json"
    policy = tmp_path / "policy.yaml"
    sources = PluginSources(cfg, policy, status=status)
    assert not sources.check() and not sources.wanted  # neither file exists yet
    cfg.write_text(json.dumps({"resourceList": [{"resourceName": "a"}]}))
    assert sources.check() and sources.wanted
    assert [r.full_name for r in sources.config.resources] == ["intel.com/a"]
    # Invalid: the last good config stays, and the error is on the board, naming the file.
    cfg.write_text('{"resourceList": [{"resourceName": "a", "deviceType": "gpu"}]}')
    assert not sources.check()
    assert [r.full_name for r in sources.config.resources] == ["intel.com/a"]
    (error,) = status.snapshot()["recentErrors"]
    assert error["source"] == "deviceplugin" and error["object"] == str(cfg)
    assert "resourceList[0].deviceType" in error["message"]
    # A ConfigMap update: the file is a symlink into a directory that is swapped.
    data = tmp_path / "..data_1"
    data.mkdir()
    (data / "config.json").write_text(json.dumps({"resourceList": [{"resourceName": "b"}]}))
    cfg.unlink()
    cfg.symlink_to(data / "config.json")
    assert sources.check()
    assert [r.full_name for r in sources.config.resources] == ["intel.com/b"]
    # The policy: a resourceName change is a change; another edit is not.
    policy.write_text("pfs: [{nicSelector: {pfNames: [x]}, numVfs: 2, resourceName: p}]")
    assert sources.check() and sources.policy is not None
    policy.write_text("pfs: [{nicSelector: {pfNames: [x]}, numVfs: 2, resourceName: p, "
                      "mtu: 9000}]")
    assert not sources.check()
    policy.write_text("pfs: [{nicSelector: {pfNames: [x]}, numVfs: 2, resourceName: q}]")
    assert sources.check()
    policy.write_text("pfs: [")  # invalid: the last good policy stays
    assert not sources.check()
    assert sources.policy.pfs[0].resource_name == "q"
    # Removed: kept, not an error.
    os.unlink(cfg)
    assert not sources.check()
    assert [r.full_name for r in sources.config.resources] == ["intel.com/b"]


def test_sources_thread_reloads_a_running_manager(running: Any, tmp_path: Path) -> None:
    _kubelet, manager, plugin_dir = running
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"resourceList": [
        {"resourceName": "net", "selectors": {"pfNames": ["ens1f0"]}}]}))
    sources = PluginSources(cfg, None, interval=0.05)
    sources.check()
    sources.start(manager.reload)
    stream = Stream(plugin_dir, NET)
    try:
        assert stream.next() == ICE_VFS
        cfg.write_text(json.dumps({"resourceList": [
            {"resourceName": "net", "selectors": {"pfNames": ["ens1f0#3"]}}]}))
        assert stream.next(timeout=2) == ICE_VFS[3:]
    finally:
        stream.close()
        sources.stop()
