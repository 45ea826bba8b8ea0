"""The reusable reflector against the replay API server: events for every change, a relist
after 410 reported as the difference, a missing CRD as an empty synced list."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from nodeagent.k8s.client import ApiError, Backoff, build_client
from nodeagent.k8s.reflector import Reflector
from tests.k8s_replay import ReplayApiServer
from tests.waiting import wait_until


@pytest.fixture
def api() -> Iterator[ReplayApiServer]:
    with ReplayApiServer() as server:
        yield server


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, etype: str, key: str, old: object, new: object) -> None:
        with self.lock:
            self.events.append((etype, key))

    def take(self) -> list[tuple[str, str]]:
        with self.lock:
            out, self.events = self.events, []
            return out


def reflector(api: ReplayApiServer, path: str = "/api/v1/pods", **kw) -> Reflector:
    client = build_client(host=api.url, timeout=(1.0, 2.0))
    return Reflector(client, path, backoff=Backoff(0.05, 0.2), **kw)


def test_list_then_watch_reports_each_change(api: ReplayApiServer) -> None:
    api.add_pod("telco", "a")
    seen = Recorder()
    r = reflector(api, on_event=seen, transform=lambda o: o["metadata"]["name"],
                  page_size=1).start()
    try:
        assert r.wait_synced(5)
        assert r.items() == {"telco/a": "a"}
        api.add_pod("telco", "b")
        api.delete_pod("telco", "a")
        assert wait_until(lambda: r.items() == {"telco/b": "b"})
        assert seen.take() == [("ADDED", "telco/a"), ("ADDED", "telco/b"),
                               ("DELETED", "telco/a")]
    finally:
        r.stop()


def test_a_relist_after_410_reports_only_the_difference(api: ReplayApiServer) -> None:
    for name in ("keep", "change", "gone"):
        api.add_pod("telco", name)
    seen = Recorder()
    r = reflector(api, on_event=seen).start()
    try:
        assert r.wait_synced(5)
        seen.take()
        calls = len(api.calls())
        # Changes the watch never delivers: the history is compacted before it reconnects.
        api.down("closed")
        pod = api.get("", "pods", "change", "telco")
        pod["metadata"]["labels"] = {"app": "changed"}
        api.put_pod(pod)
        api.delete_pod("telco", "gone")
        api.add_pod("telco", "new")
        api.compact()
        api.up()
        assert wait_until(lambda: set(r.items()) == {"telco/keep", "telco/change", "telco/new"},
                          timeout=10)
        assert r.get("telco/change")["metadata"]["labels"] == {"app": "changed"}
        assert sorted(seen.take()) == [("ADDED", "telco/new"), ("DELETED", "telco/gone"),
                                       ("MODIFIED", "telco/change")]
        assert r.relists == 2 and len(api.calls()) > calls
    finally:
        r.stop()


def test_a_missing_crd_is_an_empty_synced_list_only_when_allowed(api: ReplayApiServer) -> None:
    path = "/apis/k8s.cni.cncf.io/v1beta1/multi-networkpolicies"
    api.inject("GET", path, 404, times=10)
    assert reflector(api, path, missing_ok=True).fetch() == ([], "")
    with pytest.raises(ApiError) as err:
        reflector(api, path).fetch()
    assert err.value.code == 404


def test_a_failing_api_leaves_it_unsynced_with_the_error(api: ReplayApiServer) -> None:
    api.inject("GET", "/api/v1/namespaces", 503, times=1000)
    r = reflector(api, "/api/v1/namespaces").start()
    try:
        assert wait_until(lambda: "503" in r.error)
        assert not r.synced
    finally:
        r.stop()


def test_a_consumer_that_raises_does_not_stop_the_cache(api: ReplayApiServer) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("consumer bug")

    r = reflector(api, on_event=broken).start()
    try:
        assert r.wait_synced(5)
        api.add_pod("telco", "a")
        api.add_pod("telco", "b")
        assert wait_until(lambda: set(r.items()) == {"telco/a", "telco/b"})
    finally:
        r.stop()


def test_an_object_the_transform_cannot_read_is_left_out(api: ReplayApiServer) -> None:
    def labels(obj: dict) -> dict:
        return dict(obj["metadata"]["labels"])

    api.add_pod("telco", "good")
    odd = api.get("", "pods", "good", "telco")
    odd["metadata"].update(name="odd", labels=5)
    api.put_pod(odd)
    r = reflector(api, transform=labels).start()
    try:
        assert r.wait_synced(5)
        assert set(r.items()) == {"telco/good"}
        api.add_pod("telco", "later")
        assert wait_until(lambda: set(r.items()) == {"telco/good", "telco/later"})
    finally:
        r.stop()
