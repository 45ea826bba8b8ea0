"""The daemon's device plugin wiring: it starts once there is something to serve, follows
config.json and the policy without a restart, and records pod assignments from the kubelet."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nodeagent.daemon import Daemon, DaemonConfig
from tests.kubelet_standin import Kubelet, PodResourcesLister
from tests.sysfs_tree import SysfsTree

ICE_PF = "0000:3b:00.0"
ICE_VFS = [f"0000:3b:01.{i}" for i in range(4)]


def wait(what: str, probe: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_daemon_starts_and_reloads_pools_from_files(
        tree: SysfsTree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODEAGENT_STATE_DIR", str(tmp_path / "cni"))
    tree.add_pf(ICE_PF, "ice", netdev="ens1f0", numvfs=4, numa_node=0)
    plugin_dir = tmp_path / "dp"
    plugin_dir.mkdir()
    kubelet = Kubelet(plugin_dir)
    kubelet.start()
    lister = PodResourcesLister(tmp_path / "pod-resources.sock")
    lister.start()
    cfg_path, policy_path = tmp_path / "config.json", tmp_path / "policy.yaml"
    daemon = Daemon(DaemonConfig(
        socket=str(tmp_path / "agent.sock"), sysfs_root=str(tree.root),
        device_plugin_config=cfg_path, device_plugin_dir=str(plugin_dir), policy=policy_path,
        ipam_state_dir=str(tmp_path / "ipam"), node_name="node1",
        pod_resources_socket=str(lister.path)))
    daemon.reconcile = None  # provisioning is not under test (it would write the fixture tree)
    daemon.start()
    try:
        assert daemon.plugins is None, "nothing to serve yet: no config.json, no resourceName"
        # The policy names a pool: the plugin starts serving it, without a restart.
        policy_path.write_text("pfs: [{nicSelector: {pfNames: [ens1f0]}, numVfs: 4,"
                               " resourceName: pol}]")
        assert set(kubelet.registered(1, timeout=5)) == {"intel.com/pol"}
        # config.json appears: its pool joins.
        cfg_path.write_text(json.dumps({"resourceList": [
            {"resourceName": "cfg", "selectors": {"pfNames": ["ens1f0#3"]}}]}))
        assert set(kubelet.registered(1, timeout=5)) == {"intel.com/cfg"}
        assert daemon.plugins is not None
        wait("both pools", lambda: daemon.status.snapshot()["pools"].keys()
             == {"intel.com/cfg", "intel.com/pol"})
        pools = daemon.status.snapshot()["pools"]
        assert pools["intel.com/cfg"]["total"] == 1 and pools["intel.com/pol"]["total"] == 3
        # An invalid config.json: pools stay, the error is on the board.
        cfg_path.write_text("{")
        wait("the config error", lambda: any(
            e["source"] == "deviceplugin" for e in daemon.status.snapshot()["recentErrors"]))
        assert set(daemon.plugins.servers) == {"intel.com/cfg", "intel.com/pol"}
        # The kubelet gives a VF to a pod: recorded on the board.
        lister.pods = {("ns", "pod-a"): {"c": {"intel.com/pol": [ICE_VFS[0]]}}}
        daemon.pod_resources.poke()
        wait("the pod's VF on the board",
             lambda: f"device/{ICE_VFS[0]}" in daemon.status.snapshot()["allocations"])
    finally:
        daemon.stop()
        lister.stop()
        kubelet.stop()
    assert not list(plugin_dir.glob("nodeagent-*.sock")), "plugin sockets removed at stop"
