"""What a running agent reports after real CNI requests: /metrics over HTTP, the status
board's allocation records, and the log fields of every CNI line."""

from __future__ import annotations

import io
import json
import logging
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pyroute2 import netns

from cni.context import Context
from cni.install import install
from cni.server import CniServer
from cni.shim import shim_path
from nodeagent import logs
from nodeagent.httpserver import HttpServer
from nodeagent.ipam.allocator import Ipam
from nodeagent.metrics import Metrics
from nodeagent.status import StatusBoard
from nodeagent.vfstate import VfState
from tests.host import test_cni_macvlan as macvlan_tests
from tests.host.cni_helpers import Outcome, run_plugin
from tests.host.conftest import unique

pod = macvlan_tests.pod  # a fresh network namespace

NETWORK = "metricsnet"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[dict]:
    """A CNI server with metrics and a status board, its HTTP endpoint, and the shim."""
    board = StatusBoard()
    metrics = Metrics(board)
    server = CniServer(str(tmp_path / "run" / "agent.sock"), workers=4,
                       context=Context(vfs=VfState(tmp_path / "state"),
                                       ipam=Ipam(tmp_path / "ipam")),
                       metrics=metrics, status=board)
    http = HttpServer("127.0.0.1:0", metrics.registry)
    http.add_readiness("cni-socket", server.listening)
    http.start()
    bindir = tmp_path / "bin"
    install(bindir, shim_path())
    server.start()
    try:
        yield {"socket": server.path, "bin": bindir, "state": tmp_path / "state",
               "board": board, "http": http}
    finally:
        server.stop()
        http.stop()


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Every log record, as the DaemonSet writes it (JSON with the bound fields)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.ContextFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def cni(agent: dict, command: str, conf: dict, netns_path: str, container_id: str,
        pod_name: str) -> Outcome:
    return run_plugin(agent["bin"] / "macvlan", command, conf, netns=netns_path,
                      container_id=container_id, path=agent["bin"],
                      args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={pod_name}",
                      env={"NODEAGENT_SOCKET": agent["socket"],
                           "NODEAGENT_STATE_DIR": str(agent["state"])})


def scrape(agent: dict) -> dict[tuple[str, frozenset], float]:
    url = f"http://127.0.0.1:{agent['http'].port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, metric: str, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def ipam_allocated(agent: dict) -> float | None:
    return value(scrape(agent), "nodeagent_ipam_pool_addresses", network=NETWORK,
                 range="10.93.0.0/29", state="allocated")


def test_metrics_status_and_logs_follow_real_cni_requests(agent, master, pod, tmp_path,
                                                          log_lines) -> None:
    conf = {"cniVersion": "1.0.0", "name": NETWORK, "type": "macvlan", "master": master,
            "ipam": {"type": "whereabouts", "range": "10.93.0.0/29", "datastore": "file",
                     "dataDir": str(tmp_path / "whereabouts")}}
    other = unique("o")
    netns.create(other)
    try:
        first = cni(agent, "ADD", conf, pod, "podA", "web-0")
        assert first.status == 0, first.stdout + first.stderr
        assert ipam_allocated(agent) == 1
        second = cni(agent, "ADD", conf, f"/run/netns/{other}", "podB", "web-1")
        assert second.status == 0, second.stdout + second.stderr
        assert ipam_allocated(agent) == 2
        missing = unique("gone")
        failed = cni(agent, "ADD", {**conf, "master": missing}, pod, "podC", "web-2")
        assert failed.status == 1 and failed.doc["code"] == 7, failed.stdout

        allocations = agent["board"].snapshot()["allocations"]
        assert set(allocations) == {"podA/net1", "podB/net1"}, "a failed ADD records nothing"
        record = allocations["podA/net1"]
        assert (record["pod"], record["namespace"], record["network"], record["device"]) == (
            "web-0", "shop", NETWORK, master)
        assert record["type"] == "macvlan"
        assert record["ips"] == [first.doc["ips"][0]["address"]]
        assert record["mac"] == first.doc["interfaces"][0]["mac"]

        assert cni(agent, "DEL", conf, pod, "podA", "web-0").status == 0
        assert ipam_allocated(agent) == 1
        assert set(agent["board"].snapshot()["allocations"]) == {"podB/net1"}
        assert cni(agent, "DEL", conf, f"/run/netns/{other}", "podB", "web-1").status == 0
    finally:
        netns.remove(other)

    s = scrape(agent)
    assert ipam_allocated(agent) == 0
    assert agent["board"].snapshot()["allocations"] == {}
    total = "nodeagent_cni_requests_total"
    assert value(s, total, verb="ADD", type="macvlan", result="ok") == 2
    assert value(s, total, verb="ADD", type="macvlan", result="7") == 1
    assert value(s, total, verb="DEL", type="macvlan", result="ok") == 2
    assert sum(v for (name, _), v in s.items() if name == total) == 5, "nothing else counted"
    seconds = "nodeagent_cni_request_duration_seconds_count"
    assert value(s, seconds, verb="ADD", type="macvlan") == 3
    assert value(s, seconds, verb="DEL", type="macvlan") == 2

    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    requests = [d for d in lines if d["logger"] == "nodeagent.cni" and d["msg"].startswith("CNI")]
    assert [(d["verb"], d["containerID"], d["result"]) for d in requests] == [
        ("ADD", "podA", "ok"), ("ADD", "podB", "ok"), ("ADD", "podC", "7"),
        ("DEL", "podA", "ok"), ("DEL", "podB", "ok")]
    ok = requests[0]
    assert (ok["pod"], ok["network"], ok["device"], ok["type"], ok["ifname"]) == (
        "shop/web-0", NETWORK, master, "macvlan", "net1")
    assert ok["level"] == "info" and ok["durationMs"] > 0
    bad = requests[2]
    assert bad["level"] == "warning" and bad["code"] == 7 and missing in bad["msg"]
    assert (bad["pod"], bad["device"], bad["network"]) == ("shop/web-2", missing, NETWORK)
