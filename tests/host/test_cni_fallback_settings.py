"""The agent and the in-process fallback use one set of settings: an ADD served by an agent
started with its own state directory and cluster store is released by a DEL that reaches the
fallback after that agent went down (issue #12, item 13)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cni.install import install
from cni.shim import shim_path
from nodeagent import settings as agent_settings
from nodeagent.ipam import ops
from nodeagent.ipam.config import parse_config
from nodeagent.settings import ClusterStore, Settings
from tests import ipam_etcd
from tests.host.cni_helpers import Outcome, run_plugin
from tests.k8s_replay import ReplayApiServer
from tests.waiting import wait_until

pytestmark = pytest.mark.skipif(
    not ipam_etcd.available(), reason="etcd not installed (Debian package etcd-server)"
)



def netconf(ipam_type: str, **ipam: object) -> dict:
    return {"cniVersion": "1.1.0", "name": "fbnet", "type": "macvlan",
            "ipam": {"type": ipam_type, **ipam}}


@pytest.fixture
def api() -> Iterator[ReplayApiServer]:
    with ReplayApiServer() as server:
        yield server


def kubeconfig(tmp_path: Path, api: ReplayApiServer) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": api.url}}],
        "users": [{"name": "agent", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "agent"}}]}))
    return path


def start_agent(tmp_path: Path, etcd: ipam_etcd.EtcdServer,
                api: ReplayApiServer) -> tuple[subprocess.Popen, Path]:
    sock = tmp_path / "run" / "agent.sock"
    cmd = [sys.executable, "-m", "nodeagent", "daemon", "--socket", str(sock),
           "--status-file", str(tmp_path / "status.json"), "--metrics-address", "",
           "--policy", str(tmp_path / "none.yaml"),
           "--device-plugin-config", str(tmp_path / "none.json"), "--no-publish-node-state",
           "--settings", str(tmp_path / "absent.yaml"),
           "--state-dir", str(tmp_path / "vf"), "--ipam-state-dir", str(tmp_path / "ipam"),
           "--ipam-etcd-endpoints", etcd.url, "--kubeconfig", str(kubeconfig(tmp_path, api)),
           "--log-format", "text"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("NODEAGENT_SETTINGS", "NODEAGENT_STATE_DIR")}
    (tmp_path / "absent.yaml").write_text("{}\n")
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    if not wait_until(sock.is_socket, 30):
        proc.kill()
        raise AssertionError(f"the agent did not listen: {proc.communicate()[1]}")
    return proc, sock


def test_del_through_the_fallback_releases_what_the_agent_reserved(
        tmp_path: Path, etcd: ipam_etcd.EtcdServer, test_netns: str,
        api: ReplayApiServer) -> None:
    bindir = tmp_path / "bin"
    install(bindir, shim_path())
    # whereabouts still holds .1 of the cluster range: neither the agent nor the fallback
    # hands it out.
    pool = {"1": {"id": "c-wb-1", "podref": "default/old", "ifname": "net1"}}
    api.add_ippool("kube-system", "fb-test-10.67.0.0-24", "10.67.0.0/24", pool)
    proc, sock = start_agent(tmp_path, etcd, api)
    env = {"NODEAGENT_SOCKET": str(sock)}
    node_local = netconf("nodeagent-ipam", ranges=[[{"subnet": "10.66.0.0/24"}]])
    cluster = netconf("whereabouts", range="10.67.0.0/24", network_name="fb-test")

    def call(name: str, command: str, conf: dict, cid: str = "c-fb") -> Outcome:
        return run_plugin(bindir / name, command, conf, container_id=cid, env=env,
                          netns=f"/run/netns/{test_netns}")

    try:
        for name, conf, ip in (("nodeagent-ipam", node_local, "10.66.0.2/24"),
                               ("whereabouts", cluster, "10.67.0.2/24")):
            added = call(name, "ADD", conf)
            assert added.status == 0, added.stdout + added.stderr
            assert added.doc["ips"][0]["address"] == ip
        left = agent_settings.effective_path(str(sock))
        assert left.stat().st_mode & 0o777 == 0o600
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    records = tmp_path / "ipam" / "fbnet" / "reservations.json"
    assert "c-fb" in records.read_text(), "the agent used its own state directory"

    # The agent is down: the shim runs the fallback, which must find the same stores and
    # the same API (whereabouts took .3 meanwhile).
    api.add_ippool("kube-system", "fb-test-10.67.0.0-24", "10.67.0.0/24",
                   {**pool, "3": {"id": "c-wb-3", "podref": "default/old3", "ifname": "net1"}})
    late = call("whereabouts", "ADD", cluster, cid="c-fb2")
    assert late.status == 0 and late.doc["ips"][0]["address"] == "10.67.0.4/24", late.stdout
    assert call("whereabouts", "DEL", cluster, cid="c-fb2").status == 0
    for name, conf in (("nodeagent-ipam", node_local), ("whereabouts", cluster)):
        deleted = call(name, "DEL", conf)
        assert deleted.status == 0, deleted.stdout + deleted.stderr
    assert "c-fb" not in records.read_text(), "released in the agent's state directory"
    store = ClusterStore(dataclasses.replace(etcd.client_config(1.0)))
    ipam = agent_settings.ipam_for(Settings(ipam_state_dir=tmp_path / "x", cluster_store=store),
                                   whereabouts=None)
    try:
        left = {str(r.ip) for r in ops.show(parse_config(cluster), ipam).reservations}
        assert left == {"10.67.0.1", "10.67.0.3"}, "ours released; whereabouts' imported stay"
    finally:
        ipam.close()


def test_unusable_settings_fail_the_fallback_with_a_cni_error(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    install(bindir, shim_path())
    bad = tmp_path / "agent.yaml"
    bad.write_text("ipam: {stateDir: relative/dir}\n")
    env = {"NODEAGENT_SOCKET": str(tmp_path / "absent.sock"), "NODEAGENT_SETTINGS": str(bad)}

    out = run_plugin(bindir / "nodeagent-ipam", "DEL",
                     netconf("nodeagent-ipam", range="10.66.0.0/24"), env=env)

    assert out.status != 0
    doc = json.loads(out.stdout)
    assert doc["code"] == 7 and "ipam.stateDir" in doc["msg"] and str(bad) in doc["msg"]
