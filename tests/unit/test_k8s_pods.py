"""The pods on the node from the replay API server: paginated list, watch, relist on 410 (an
ERROR event or HTTP 410), errors that must not look like an empty node."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from nodeagent.k8s.client import ApiError, Backoff, build_client
from nodeagent.k8s.pods import NodePods
from tests.k8s_replay import ReplayApiServer
from tests.waiting import wait_until

NODE = "worker-1"


@pytest.fixture
def api() -> Iterator[ReplayApiServer]:
    with ReplayApiServer() as server:
        server.add_node(NODE)
        yield server


def pods_of(api: ReplayApiServer, **kw: Any) -> NodePods:
    client = build_client(host=api.url, timeout=(1.0, 2.0))
    return NodePods(client, NODE, backoff=Backoff(0.05, 0.2), **kw)


def names(view: NodePods) -> set[str]:
    return {p.key for p in view.live()}


def test_fetch_lists_every_page_of_this_nodes_pods(api: ReplayApiServer) -> None:
    for n in range(5):
        api.add_pod("telco", f"cnf-{n}", container_id=f"{n:064x}")
    api.add_pod("telco", "elsewhere", node="worker-2")
    pods, rv = pods_of(api, page_size=2).fetch()
    assert {p.ref.key for p in pods.values()} == {f"telco/cnf-{n}" for n in range(5)}
    assert {next(iter(p.container_ids)) for p in pods.values()} == {f"{n:064x}" for n in range(5)}
    assert rv
    lists = [c for c in api.calls() if c.path == "/api/v1/pods"]
    assert len(lists) == 3
    assert all(c.query["fieldSelector"] == f"spec.nodeName={NODE}" for c in lists)


def test_expired_continuation_restarts_the_list(api: ReplayApiServer) -> None:
    for n in range(3):
        api.add_pod("telco", f"cnf-{n}")

    def before(method: str, path: str, query: dict[str, str]) -> None:
        if "continue" in query and api.get("", "pods", "late", "telco") is None:
            # Between the pages a pod comes and the history is compacted: the continuation
            # gets the API's 410 "Expired".
            api.add_pod("telco", "late")
            api.compact()

    api.on_request = before
    pods, _ = pods_of(api, page_size=2).fetch()
    assert {p.ref.key for p in pods.values()} == {"telco/cnf-0", "telco/cnf-1", "telco/cnf-2",
                                                  "telco/late"}
    assert sum(1 for c in api.calls() if "continue" not in c.query) == 2  # listed twice


def test_fetch_error_raises_instead_of_an_empty_view(api: ReplayApiServer) -> None:
    api.add_pod("telco", "cnf-0")
    api.inject("GET", "/api/v1/pods", 503)
    with pytest.raises(ApiError) as err:
        pods_of(api).fetch()
    assert err.value.code == 503 and err.value.unavailable
    api.down()
    with pytest.raises(ApiError) as err:
        pods_of(api).fetch()
    assert err.value.code == 0


def test_watch_follows_adds_and_deletes(api: ReplayApiServer) -> None:
    api.add_pod("telco", "cnf-0")
    view = pods_of(api).start()
    try:
        assert view.wait_synced(10)
        assert names(view) == {"telco/cnf-0"}
        api.add_pod("telco", "cnf-1")
        api.add_pod("other", "not-here", node="worker-2")
        assert wait_until(lambda: names(view) == {"telco/cnf-0", "telco/cnf-1"})
        api.delete_pod("telco", "cnf-0")
        assert wait_until(lambda: names(view) == {"telco/cnf-1"})
        assert view.relists == 1
        verbs = api.recorded_calls()
        assert ("list", "", "pods", "") in verbs and ("watch", "", "pods", "") in verbs
    finally:
        view.stop()


def test_watch_410_error_event_relists(api: ReplayApiServer) -> None:
    api.add_pod("telco", "cnf-0")
    api.add_pod("telco", "cnf-1")
    view = pods_of(api).start()
    try:
        assert view.wait_synced(10)
        # The watch breaks; meanwhile pods change and the history is compacted, so the
        # resumed watch gets ERROR 410 and only a new list can tell what happened.
        api.down()
        api.delete_pod("telco", "cnf-0")
        api.add_pod("telco", "cnf-2")
        api.compact()
        api.up()
        assert wait_until(lambda: view.relists == 2)
        assert wait_until(lambda: names(view) == {"telco/cnf-1", "telco/cnf-2"})
        watches = [c for c in api.calls() if c.query.get("watch") == "1"]
        assert len(watches) >= 2
        assert watches[1].query["resourceVersion"] == watches[0].query["resourceVersion"]
    finally:
        view.stop()


def test_open_watch_ended_by_410_relists(api: ReplayApiServer) -> None:
    view = pods_of(api).start()
    try:
        assert view.wait_synced(10)
        assert api.wait_for(lambda calls: any(c.query.get("watch") for c in calls))
        api.compact()  # the open stream gets {"type": "ERROR", "object": {... "code": 410}}
        assert wait_until(lambda: view.relists == 2)
    finally:
        view.stop()


def test_http_410_on_watch_relists(api: ReplayApiServer) -> None:
    api.add_pod("telco", "cnf-0")
    api.inject("GET", "/api/v1/pods", 410, query={"watch": "1"})
    view = pods_of(api).start()
    try:
        assert wait_until(lambda: view.relists == 2)
        assert names(view) == {"telco/cnf-0"}
        api.add_pod("telco", "cnf-1")
        assert wait_until(lambda: names(view) == {"telco/cnf-0", "telco/cnf-1"})
    finally:
        view.stop()


def test_watch_resumes_after_a_normal_end(api: ReplayApiServer) -> None:
    view = pods_of(api).start()
    try:
        assert view.wait_synced(10)
        assert api.wait_for(lambda calls: any(c.query.get("watch") for c in calls))
        api.end_watches()
        api.add_pod("telco", "cnf-0")
        assert wait_until(lambda: names(view) == {"telco/cnf-0"})
        assert view.relists == 1  # resumed from its resourceVersion, no new list
    finally:
        view.stop()
