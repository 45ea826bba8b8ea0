"""Events on the Node from StatusBoard records, against the replay API server: the Event's
shape, aggregation by patching count, expiry, rate limiting, and the API being down."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from nodeagent.k8s.client import Backoff, build_client
from nodeagent.k8s.events import NodeEventRecorder, reason_for
from nodeagent.status import APPLYING, IN_SYNC, PfStatus, StatusBoard
from tests.k8s_replay import ReplayApiServer, parse_path
from tests.waiting import wait_until

NODE = "worker-1"
EVENTS = "/api/v1/namespaces/default/events"


@pytest.fixture
def api() -> Iterator[ReplayApiServer]:
    with ReplayApiServer() as server:
        server.add_node(NODE)
        yield server


def make(api: ReplayApiServer, **kw: Any) -> tuple[NodeEventRecorder, StatusBoard]:
    client = build_client(host=api.url, timeout=(1.0, 2.0))
    recorder = NodeEventRecorder(client, NODE, instance="nodeagent-x7k2p", **kw)
    board = StatusBoard()
    recorder.attach(board)
    recorder.start()
    return recorder, board


def events(api: ReplayApiServer) -> list[dict[str, Any]]:
    return api.objects("", "events")


def test_error_record_becomes_a_warning_event_on_the_node(api: ReplayApiServer) -> None:
    recorder, board = make(api)
    try:
        board.error("provision", "sriov_numvfs write failed: EIO", "0000:3b:00.0")
        assert wait_until(lambda: events(api))
        (event,) = events(api)
        node_uid = api.get("", "nodes", NODE)["metadata"]["uid"]
        assert event["metadata"]["namespace"] == "default"
        assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": NODE,
                                           "uid": node_uid}
        assert (event["type"], event["reason"], event["count"]) == (
            "Warning", "ProvisioningFailed", 1)
        assert event["message"] == "0000:3b:00.0: sriov_numvfs write failed: EIO"
        assert event["source"] == {"component": "nodeagent", "host": NODE}
        assert (event["reportingComponent"], event["reportingInstance"]) == (
            "nodeagent", "nodeagent-x7k2p")
        assert event["firstTimestamp"] == event["lastTimestamp"]
    finally:
        recorder.stop()


def test_repeated_failure_patches_count_instead_of_new_events(api: ReplayApiServer) -> None:
    recorder, board = make(api)
    try:
        for _ in range(3):
            board.error("bind", "vfio-pci bind failed: EBUSY", "0000:3b:01.1")
        board.error("bind", "another message", "0000:3b:01.1")
        assert wait_until(lambda: len(events(api)) == 2 and max(
            e["count"] for e in events(api)) == 3)
        by_message = {e["message"]: e for e in events(api)}
        repeated = by_message["0000:3b:01.1: vfio-pci bind failed: EBUSY"]
        assert repeated["reason"] == "VfBindFailed" and repeated["count"] == 3
        assert by_message["0000:3b:01.1: another message"]["count"] == 1
        verbs = [v for v in api.recorded_calls() if v[2] == "events"]
        assert verbs.count(("create", "", "events", "")) == 2
        assert verbs.count(("patch", "", "events", "")) == 2
    finally:
        recorder.stop()


def test_outside_the_window_a_new_event_is_created(api: ReplayApiServer) -> None:
    recorder, board = make(api, window=0.0)
    try:
        board.error("cni", "ADD failed")
        assert wait_until(lambda: len(events(api)) == 1)
        time.sleep(0.01)
        board.error("cni", "ADD failed")
        assert wait_until(lambda: len(events(api)) == 2)
        assert [e["count"] for e in events(api)] == [1, 1]
    finally:
        recorder.stop()


def test_expired_event_is_created_again(api: ReplayApiServer) -> None:
    recorder, board = make(api)
    try:
        board.error("cni", "ADD failed")
        assert wait_until(lambda: len(events(api)) == 1)
        name = events(api)[0]["metadata"]["name"]
        api.delete(api_route(name))  # events expire after an hour
        board.error("cni", "ADD failed")
        assert wait_until(lambda: len(events(api)) == 1
                          and events(api)[0]["metadata"]["name"] != name)
        assert events(api)[0]["count"] == 1
    finally:
        recorder.stop()


def api_route(name: str) -> Any:
    return parse_path(f"{EVENTS}/{name}")


def test_pf_reaching_in_sync_is_a_normal_event(api: ReplayApiServer) -> None:
    recorder, board = make(api)
    try:
        board.set_pf(PfStatus("0000:3b:00.0", "ens1f0", APPLYING, numvfs=0, desired_numvfs=8))
        board.set_pf(PfStatus("0000:3b:00.0", "ens1f0", IN_SYNC, numvfs=8, desired_numvfs=8))
        assert wait_until(lambda: events(api))
        (event,) = events(api)
        assert (event["type"], event["reason"]) == ("Normal", "Provisioned")
        assert "ens1f0" in event["message"] and "8 VFs" in event["message"]
    finally:
        recorder.stop()


def test_rate_limit_drops_beyond_the_burst(api: ReplayApiServer) -> None:
    recorder, board = make(api, burst=3, every=3600)
    try:
        for n in range(6):
            board.error("provision", f"failure {n}")
        assert wait_until(lambda: recorder.dropped == 3)
        assert sorted(e["message"] for e in events(api)) == [f"failure {n}" for n in range(3)]
    finally:
        recorder.stop()


@pytest.mark.parametrize("mode", ["closed", "reset"])
def test_api_down_drops_events_and_recovers(api: ReplayApiServer, mode: str) -> None:
    recorder, board = make(api, backoff=Backoff(0.2, 0.2, jitter=0))
    try:
        board.error("provision", "before")
        assert wait_until(lambda: len(events(api)) == 1)
        api.down(mode)
        for n in range(5):
            board.error("provision", f"while down {n}")  # returns at once: nothing waits
        assert wait_until(lambda: recorder.dropped == 5)
        api.up()
        time.sleep(0.25)  # past the backoff
        board.error("provision", "after")
        assert wait_until(lambda: any(e["message"] == "after" for e in events(api)))
        assert not any("while down" in e["message"] for e in events(api))
    finally:
        recorder.stop()


def test_queue_overflow_never_blocks(api: ReplayApiServer) -> None:
    client = build_client(host=api.url)
    recorder = NodeEventRecorder(client, NODE, queue_size=2)  # not started: nothing drains
    for n in range(5):
        recorder.warning("Test", f"m{n}")
    assert recorder.dropped == 3


def test_reasons() -> None:
    assert reason_for("provision") == "ProvisioningFailed"
    assert reason_for("vf-bind") == "VfBindFailed"
    assert reason_for("link-watch") == "LinkWatchFailed"
