"""The pods on this node, from the API: a one-shot list (``fetch``) or a live view kept by
list + watch (``start``), for IPAM garbage collection and allocation records.

The watch follows the API's rules: it resumes from the last resourceVersion it saw; when that
version is gone (a watch ``ERROR`` event with code 410, or HTTP 410) it lists from scratch;
other failures back off. A view that could not be fetched is an error, never an empty list:
garbage collection must not release addresses because the API was away.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nodeagent.ipam.store import Reservation
from nodeagent.k8s.client import ApiError, Backoff, KubeClient, WatchStream

log = logging.getLogger(__name__)

PODS_PATH = "/api/v1/pods"


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: str

    @property
    def key(self) -> str:
        """``namespace/name``, as IPAM reservations record the pod."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PodInfo:
    ref: PodRef
    phase: str
    container_ids: frozenset[str]  # runtime IDs without the ``containerd://`` scheme


def pod_info(obj: dict[str, Any]) -> PodInfo:
    meta, status = obj.get("metadata", {}), obj.get("status") or {}
    ids = set()
    for group in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(group) or ():
            cid = cs.get("containerID") or ""
            if cid:
                ids.add(cid.split("://", 1)[-1])
    ref = PodRef(str(meta.get("namespace", "")), str(meta.get("name", "")),
                 str(meta.get("uid", "")))
    return PodInfo(ref, str(status.get("phase", "")), frozenset(ids))


class NodePods:
    """Pods with ``spec.nodeName`` = ``node_name`` (every pod when ``node_name`` is None)."""

    def __init__(self, api: KubeClient, node_name: str | None, *, page_size: int = 500,
                 watch_timeout: int = 300, backoff: Backoff | None = None) -> None:
        self.api = api
        self.node_name = node_name
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.backoff = backoff or Backoff(1.0, 60.0)
        self.relists = 0
        self._pods: dict[str, PodInfo] = {}  # by uid
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._stream: WatchStream | None = None
        self._thread: threading.Thread | None = None

    @property
    def _selector(self) -> dict[str, str]:
        return {"fieldSelector": f"spec.nodeName={self.node_name}"} if self.node_name else {}

    # -- one-shot ---------------------------------------------------------------------------

    def fetch(self) -> tuple[dict[str, PodInfo], str]:
        """One consistent list (all pages) and its resourceVersion. Raises ApiError; a
        continuation that expired (410) restarts the list, up to three times."""
        for _ in range(3):
            pods: dict[str, PodInfo] = {}
            query: dict[str, Any] = {**self._selector, "limit": self.page_size}
            try:
                while True:
                    page = self.api.request("GET", PODS_PATH, query=query)
                    for obj in page.get("items") or ():
                        info = pod_info(obj)
                        pods[info.ref.uid] = info
                    meta = page.get("metadata") or {}
                    token = meta.get("continue")
                    if not token:
                        return pods, str(meta.get("resourceVersion", ""))
                    query = {**query, "continue": token}
            except ApiError as exc:
                if exc.code != 410:
                    raise
                log.info("pod list continuation expired; listing again")
        raise ApiError(410, "Expired", "pod list kept expiring")

    # -- live view --------------------------------------------------------------------------

    def start(self) -> NodePods:
        self._thread = threading.Thread(target=self._run, name="k8s-pods", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def pods(self) -> list[PodInfo]:
        with self._lock:
            return list(self._pods.values())

    def live(self) -> frozenset[PodRef]:
        with self._lock:
            return frozenset(p.ref for p in self._pods.values())

    def container_ids(self) -> frozenset[str]:
        with self._lock:
            return frozenset(c for p in self._pods.values() for c in p.container_ids)

    def _run(self) -> None:
        rv: str | None = None
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if rv is None:
                    pods, rv = self.fetch()
                    with self._lock:
                        self._pods = pods
                    self.relists += 1
                    self._synced.set()
                rv, events = self._watch(rv)
                if rv is not None and (events or time.monotonic() - started > 1):
                    self.backoff.reset()
                    continue
                if rv is None:
                    continue  # expired: relist at once
                delay = self.backoff.next()  # a stream ending at once, again and again
            except ApiError as exc:
                if exc.code == 410:
                    rv = None
                    continue
                delay = self.backoff.next()
                log.warning("pods on %s: %s (retry in %.1fs)", self.node_name or "the cluster",
                            exc, delay)
            self._stop.wait(delay)

    def _watch(self, rv: str) -> tuple[str | None, int]:
        """Follow one watch stream; the resourceVersion to resume from (None: relist) and the
        number of events seen."""
        query = {**self._selector, "resourceVersion": rv, "allowWatchBookmarks": "true",
                 "timeoutSeconds": self.watch_timeout}
        stream = self.api.watch(PODS_PATH, query, read_timeout=self.watch_timeout + 30)
        self._stream = stream
        count = 0
        try:
            if self._stop.is_set():
                return rv, count
            for event in stream.events():
                count += 1
                etype, obj = event.get("type"), event.get("object") or {}
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        log.info("pods watch expired (%s); listing again", obj.get("message"))
                        return None, count
                    raise ApiError(int(obj.get("code") or 0), str(obj.get("reason", "")),
                                   str(obj.get("message", "watch error")))
                rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                if etype == "BOOKMARK":
                    continue
                info = pod_info(obj)
                with self._lock:
                    if etype == "DELETED":
                        self._pods.pop(info.ref.uid, None)
                    else:
                        self._pods[info.ref.uid] = info
        finally:
            self._stream = None
            stream.close()
        return rv, count


def keep_for_pods(reservations: Iterable[Reservation], live_pods: Iterable[str],
                  not_before: float) -> list[tuple[str, str]]:
    """Attachments (container ID, ifname) to keep given the live ``namespace/name`` pods.

    Kept: reservations of a live pod, those recording no pod (nothing to judge them by) and
    those made at or after ``not_before`` (their pod may be newer than the pod list).
    """
    live = set(live_pods)
    return [r.owner.key for r in reservations
            if not r.held and (not r.owner.pod or r.owner.pod in live or r.since >= not_before)]


GC_GRACE = 60.0  # seconds: reservations this fresh are kept (clock skew across nodes, too)


def gc_keep_from_cluster(api: KubeClient, node_name: str | None,
                         reservations: Iterable[Reservation]) -> list[tuple[str, str]]:
    """The attachments IPAM GC must keep according to the API's pods (on ``node_name``, or all
    pods when None: a cluster-wide datastore). Raises ApiError when the pods cannot be listed."""
    started = time.time()
    pods, _ = NodePods(api, node_name).fetch()
    return keep_for_pods(reservations, {p.ref.key for p in pods.values()}, started - GC_GRACE)
