"""`nodeagent ipam gc --from-cluster`: the pods the API lists on the node decide which
reservations stay; an API that cannot be asked means no garbage collection at all."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from nodeagent import cli
from nodeagent.cnitypes.request import Attachment
from nodeagent.ipam.allocator import Ipam
from nodeagent.ipam.config import parse_config
from tests.k8s_replay import ReplayApiServer

NODE = "worker-1"
NET = {"cniVersion": "1.1.0", "name": "net1", "type": "macvlan",
       "ipam": {"type": "whereabouts", "range": "10.0.0.0/24", "datastore": "file"}}


@pytest.fixture
def api() -> Iterator[ReplayApiServer]:
    with ReplayApiServer() as server:
        server.add_node(NODE)
        yield server


@pytest.fixture
def setup(tmp_path: Path, api: ReplayApiServer) -> dict[str, Path]:
    conf = tmp_path / "net1.conf"
    conf.write_text(json.dumps(NET))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": api.url}}],
        "users": [{"name": "agent", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "agent"}}],
    }))
    state = tmp_path / "state"
    ipam = Ipam(state)
    config = parse_config(NET)
    store = ipam.store(config)
    store._clock = lambda: time.time() - 3600  # type: ignore[attr-defined]  # made an hour ago
    for cid, pod in (("c-live", "telco/cnf-0"), ("c-dead", "telco/cnf-old"),
                     ("c-other-node", "telco/moved"), ("c-nopod", "")):
        ns, _, name = pod.partition("/")
        ipam.allocate(config, Attachment(cid, "net1", ns, name))
    store._clock = time.time  # type: ignore[attr-defined]
    ipam.allocate(config, Attachment("c-fresh", "net1", "telco", "just-scheduled"))
    ipam.close()
    api.add_pod("telco", "cnf-0")
    api.add_pod("telco", "moved", node="worker-2")
    return {"conf": conf, "kubeconfig": kubeconfig, "state": state}


def remaining(state: Path) -> set[str]:
    ipam = Ipam(state)
    try:
        return {r.owner.container_id for r in ipam.store(parse_config(NET)).reservations()}
    finally:
        ipam.close()


def gc(setup: dict[str, Path], *extra: str) -> int:
    return cli.main(["ipam", "gc", "--config", str(setup["conf"]), "--state-dir",
                     str(setup["state"]), "--from-cluster", "--kubeconfig",
                     str(setup["kubeconfig"]), "--node-name", NODE, *extra])


def test_releases_only_reservations_of_pods_gone_from_the_node(
        setup: dict[str, Path], api: ReplayApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert gc(setup) == 0
    out = capsys.readouterr().out
    assert "c-dead/net1 telco/cnf-old" in out and "c-other-node" in out
    # Kept: the live pod, the one without a pod record, the one made after the list began.
    assert remaining(setup["state"]) == {"c-live", "c-nopod", "c-fresh"}
    lists = [c for c in api.calls() if c.path == "/api/v1/pods"]
    assert lists and lists[0].query["fieldSelector"] == f"spec.nodeName={NODE}"


def test_live_option_still_keeps_attachments(setup: dict[str, Path]) -> None:
    assert gc(setup, "--live", "c-dead/net1") == 0
    assert remaining(setup["state"]) == {"c-live", "c-nopod", "c-fresh", "c-dead"}


@pytest.mark.parametrize("failure", ["down", "503", "403"])
def test_refuses_when_pods_cannot_be_listed(
        setup: dict[str, Path], api: ReplayApiServer, failure: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    before = remaining(setup["state"])
    if failure == "down":
        api.down()
    else:
        api.inject("GET", "/api/v1/pods", int(failure), body={
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "pods is forbidden: User \"system:serviceaccount:nodeagent:nodeagent\""
            " cannot list resource \"pods\" in API group \"\" at the cluster scope",
            "reason": "Forbidden", "details": {"kind": "pods"}, "code": 403}
            if failure == "403" else None)
    assert gc(setup) == 1
    err = capsys.readouterr().err
    assert "refusing to garbage-collect" in err
    if failure == "403":
        assert "403 Forbidden" in err
    assert remaining(setup["state"]) == before


def test_dry_run_reports_without_releasing(setup: dict[str, Path],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    before = remaining(setup["state"])
    assert gc(setup, "--dry-run") == 0
    assert "would release" in capsys.readouterr().out
    assert remaining(setup["state"]) == before
