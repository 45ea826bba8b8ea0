"""What the dispatcher reports for requests that need no kernel: GC of allocation records,
the type label, and the fields of refused requests."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cni.context import Context
from cni.dispatch import handle
from nodeagent import logs
from nodeagent.ipam.allocator import Ipam
from nodeagent.metrics import Metrics
from nodeagent.status import StatusBoard
from nodeagent.vfstate import VfState


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    context = Context(vfs=VfState(tmp_path / "vf"), ipam=Ipam(tmp_path / "ipam"))
    try:
        yield context
    finally:
        context.close()


def counts(metrics: Metrics) -> dict[tuple[str, str, str], float]:
    text = generate_latest(metrics.registry).decode()
    return {(s.labels["verb"], s.labels["type"], s.labels["result"]): s.value
            for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "nodeagent_cni_requests_total"}


def test_gc_drops_the_records_of_its_network_not_in_the_valid_list(ctx) -> None:
    board = StatusBoard()
    for key, network in (("a/net1", "blue"), ("b/net1", "blue"), ("c/net1", "red")):
        board.set_allocation(key, {"network": network, "pod": key[0]})
    conf = {"cniVersion": "1.1.0", "name": "blue", "type": "macvlan",
            "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "net1"}]}

    out = handle(ctx, {"CNI_COMMAND": "GC"}, json.dumps(conf).encode(), "macvlan",
                 status=board)

    assert out.exit_status == 0, out.stdout
    assert set(board.snapshot()["allocations"]) == {"a/net1", "c/net1"}


def test_failed_del_keeps_the_record(ctx) -> None:
    board = StatusBoard()
    board.set_allocation("a/net1", {"network": "blue"})
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "a", "CNI_IFNAME": "net1"}

    out = handle(ctx, env, b'{"cniVersion": "1.0.0", "name": "blue", "type": "nosuch"}', "",
                 status=board)

    assert out.exit_status == 1 and json.loads(out.stdout)["code"] == 7
    assert set(board.snapshot()["allocations"]) == {"a/net1"}


def test_type_label_is_bounded_and_names_ipam_service(ctx) -> None:
    m = Metrics()
    version = b'{"cniVersion": "1.0.0"}'
    handle(ctx, {"CNI_COMMAND": "VERSION"}, version, "macvlan", metrics=m)
    handle(ctx, {"CNI_COMMAND": "VERSION"}, version, "whereabouts", metrics=m)
    handle(ctx, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0", "type": "x' + b"y" * 50
           + b'"}', "nodeagent", metrics=m)
    handle(ctx, {"CNI_COMMAND": "BOGUS"}, version, "sriov", metrics=m)

    assert counts(m) == {("VERSION", "macvlan", "ok"): 1, ("VERSION", "ipam", "ok"): 1,
                         ("VERSION", "unknown", "ok"): 1, ("invalid", "sriov", "4"): 1}


def test_a_refused_request_is_logged_with_what_is_known(ctx, caplog) -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "net1",
           "CNI_NETNS": "/nonexistent/netns", "CNI_ARGS": "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p"}
    conf = b'{"cniVersion": "1.0.0", "name": "blue", "type": "macvlan", "master": "eth9"}'

    caplog.handler.addFilter(logs.ContextFilter())
    with caplog.at_level(logging.INFO, logger="nodeagent.cni"):
        out = handle(ctx, env, conf, "macvlan")

    assert out.exit_status == 1
    (record,) = [r for r in caplog.records if r.name == "nodeagent.cni"]
    assert record.levelno == logging.WARNING and record.code == 3
    assert (record.pod, record.containerID, record.network) == ("ns/p", "c1", "blue")
