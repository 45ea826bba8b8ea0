"""The pods on this node, from the API: a one-shot list (``fetch``) or a live view kept by
list + watch (``start``), for IPAM garbage collection and allocation records.

The watch follows the API's rules: it resumes from the last resourceVersion it saw; when that
version is gone (a watch ``ERROR`` event with code 410, or HTTP 410) it lists from scratch;
other failures back off. A view that could not be fetched is an error, never an empty list:
garbage collection must not release addresses because the API was away.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nodeagent.ipam.store import Reservation
from nodeagent.k8s.client import Backoff, KubeClient
from nodeagent.k8s.reflector import Reflector

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
        selector = {"fieldSelector": f"spec.nodeName={node_name}"} if node_name else {}
        self._view: Reflector[PodInfo] = Reflector(
            api, PODS_PATH, name="pods", transform=pod_info,
            key=lambda obj: str((obj.get("metadata") or {}).get("uid", "")), query=selector,
            page_size=page_size, watch_timeout=watch_timeout,
            backoff=backoff or Backoff(1.0, 60.0))

    @property
    def relists(self) -> int:
        return self._view.relists

    def fetch(self) -> tuple[dict[str, PodInfo], str]:
        """One consistent list (all pages) and its resourceVersion. Raises ApiError; a
        continuation that expired (410) restarts the list, up to three times."""
        objs, rv = self._view.fetch()
        pods = {info.ref.uid: info for info in map(pod_info, objs)}
        return pods, rv

    def start(self) -> NodePods:
        self._view.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._view.stop(timeout)

    def wait_synced(self, timeout: float) -> bool:
        return self._view.wait_synced(timeout)

    @property
    def synced(self) -> bool:
        return self._view.synced

    def pods(self) -> list[PodInfo]:
        return self._view.values()

    def live(self) -> frozenset[PodRef]:
        return frozenset(p.ref for p in self._view.values())

    def container_ids(self) -> frozenset[str]:
        return frozenset(c for p in self._view.values() for c in p.container_ids)


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


def node_names(api: KubeClient) -> frozenset[str]:
    """Every Node the API lists (all pages): a cluster store's block leases held by any other
    node are a gone node's. Raises ApiError."""
    objs, _ = Reflector(api, "/api/v1/nodes", name="nodes").fetch()
    return frozenset(str((obj.get("metadata") or {}).get("name", "")) for obj in objs)


def gc_keep_from_cluster(api: KubeClient, node_name: str | None,
                         reservations: Iterable[Reservation]) -> list[tuple[str, str]]:
    """The attachments IPAM GC must keep according to the API's pods (on ``node_name``, or all
    pods when None: a cluster-wide datastore). Raises ApiError when the pods cannot be listed."""
    started = time.time()
    pods, _ = NodePods(api, node_name).fetch()
    return keep_for_pods(reservations, {p.ref.key for p in pods.values()}, started - GC_GRACE)
