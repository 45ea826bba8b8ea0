"""Events on the Node for what goes wrong (and right) on it, as ``kubectl describe node`` shows.

:class:`NodeEventRecorder` follows a StatusBoard: every new error record becomes a Warning
event, a PF reaching ``in-sync`` after provisioning a Normal one. Like kubelet's recorder it
aggregates: the same type, reason and message again within ``window`` seconds patches the
existing Event's ``count`` and ``lastTimestamp`` instead of creating another. Sending happens on
its own thread behind a bounded queue and a token bucket; while the API is unreachable events
are dropped (and logged), so recording never blocks the caller.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from nodeagent.k8s.client import (
    EVENTS_NAMESPACE,
    STRATEGIC_MERGE_PATCH,
    ApiError,
    Backoff,
    KubeClient,
)
from nodeagent.k8s.nodestate import rfc3339
from nodeagent.status import IN_SYNC, StatusBoard

log = logging.getLogger(__name__)

COMPONENT = "nodeagent"
WARNING, NORMAL = "Warning", "Normal"
MAX_MESSAGE = 1024
# StatusBoard error sources -> Event reasons; others become "<Source>Failed".
REASONS = {
    "provision": "ProvisioningFailed",
    "provisioning": "ProvisioningFailed",
    "policy": "PolicyInvalid",
    "bind": "VfBindFailed",
    "vf-bind": "VfBindFailed",
    "driver": "VfBindFailed",
    "cni": "AttachFailed",
    "ipam": "IpamFailed",
    "deviceplugin": "DevicePluginFailed",
    "device-plugin": "DevicePluginFailed",
}


def reason_for(source: str) -> str:
    if source in REASONS:
        return REASONS[source]
    words = [w for w in re.split(r"[^A-Za-z0-9]+", source) if w]
    return "".join(w[:1].upper() + w[1:] for w in words) + "Failed" if words else "Failed"


@dataclass(frozen=True)
class _Pending:
    type: str
    reason: str
    message: str
    at: float


@dataclass
class _Sent:
    name: str
    count: int
    last: float


class TokenBucket:
    """``burst`` events at once, then one per ``every`` seconds."""

    def __init__(self, burst: int, every: float) -> None:
        self.burst, self.every = burst, every
        self._tokens = float(burst)
        self._at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) / self.every)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class NodeEventRecorder:
    """Emits core/v1 Events about node ``node_name`` in namespace "default"."""

    def __init__(self, api: KubeClient, node_name: str, *, instance: str | None = None,
                 window: float = 600.0, burst: int = 25, every: float = 10.0,
                 queue_size: int = 200, backoff: Backoff | None = None) -> None:
        self.api = api
        self.node_name = node_name
        self.instance = instance or os.environ.get("POD_NAME") or socket.gethostname()
        self.window = window
        self.bucket = TokenBucket(burst, every)
        self.backoff = backoff or Backoff(1.0, 60.0)
        self.dropped = 0
        self._queue: queue.Queue[_Pending | None] = queue.Queue(maxsize=queue_size)
        self._sent: OrderedDict[tuple[str, str, str], _Sent] = OrderedDict()
        self._node_uid: str | None = None
        self._down_until = 0.0
        self._seen: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        self._pf_states: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- callers' side ----------------------------------------------------------------------

    def warning(self, reason: str, message: str) -> None:
        self._enqueue(_Pending(WARNING, reason, message, time.time()))

    def normal(self, reason: str, message: str) -> None:
        self._enqueue(_Pending(NORMAL, reason, message, time.time()))

    def attach(self, board: StatusBoard) -> None:
        """Emit for the board's error records (those already there, then every new one)."""
        board.subscribe(self.on_snapshot)
        self.on_snapshot(board.snapshot())

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:
        with self._lock:
            fresh = []
            for e in snapshot.get("recentErrors", []):
                key = (e.get("time"), e.get("source"), e.get("message"), e.get("object"))
                if key not in self._seen:
                    self._seen[key] = None
                    fresh.append(e)
            while len(self._seen) > 1000:
                self._seen.popitem(last=False)
            reached = []
            for p in snapshot.get("pfs", []):
                before = self._pf_states.get(p["pciAddress"])
                self._pf_states[p["pciAddress"]] = p["state"]
                if before is not None and before != IN_SYNC and p["state"] == IN_SYNC:
                    reached.append(p)
        for e in fresh:
            obj = e.get("object") or ""
            message = f"{obj}: {e.get('message', '')}" if obj else str(e.get("message", ""))
            self.warning(reason_for(str(e.get("source", ""))), message)
        for p in reached:
            what = f"{p['name']} ({p['pciAddress']})" if p.get("name") else p["pciAddress"]
            self.normal("Provisioned", f"PF {what} in sync: {p.get('numVfs', 0)} VFs")

    def _enqueue(self, item: _Pending) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._drop(item, "queue full")

    def start(self) -> NodeEventRecorder:
        self._thread = threading.Thread(target=self._run, name="k8s-events", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ends the thread; events still queued are dropped."""
        self._stopping.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)  # wakes the thread if it waits on an empty queue
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the sender thread ------------------------------------------------------------------

    def _drop(self, item: _Pending, why: str) -> None:
        self.dropped += 1
        log.warning("event %s on node %s dropped (%s): %s", item.reason, self.node_name, why,
                    item.message)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._stopping.is_set():
                return
            if time.monotonic() < self._down_until:
                self._drop(item, "API unreachable")
                continue
            if not self.bucket.take():
                self._drop(item, "rate limit")
                continue
            try:
                self._send(item)
            except ApiError as exc:
                if exc.unavailable:
                    self._down_until = time.monotonic() + self.backoff.next()
                self._drop(item, str(exc))
            except Exception:
                log.exception("event %s on node %s failed", item.reason, self.node_name)
            else:
                self.backoff.reset()

    def _send(self, item: _Pending) -> None:
        message = item.message[:MAX_MESSAGE]
        key = (item.type, item.reason, message)
        sent = self._sent.get(key)
        stamp = rfc3339(item.at)
        if sent is not None and item.at - sent.last <= self.window:
            try:
                self.api.request(
                    "PATCH", f"/api/v1/namespaces/{EVENTS_NAMESPACE}/events/{sent.name}",
                    body={"count": sent.count + 1, "lastTimestamp": stamp, "message": message},
                    content_type=STRATEGIC_MERGE_PATCH)
            except ApiError as exc:
                if exc.code != 404:  # expired (events live an hour): start a new one
                    raise
            else:
                sent.count += 1
                sent.last = item.at
                self._sent.move_to_end(key)
                return
        name = f"{self.node_name}.{time.time_ns():x}"
        self.api.request("POST", f"/api/v1/namespaces/{EVENTS_NAMESPACE}/events",
                         body=self._event(name, item.type, item.reason, message, stamp))
        self._sent[key] = _Sent(name, 1, item.at)
        self._sent.move_to_end(key)
        while len(self._sent) > 256:
            self._sent.popitem(last=False)

    def _event(self, name: str, etype: str, reason: str, message: str,
               stamp: str) -> dict[str, Any]:
        if self._node_uid is None:
            node = self.api.request("GET", f"/api/v1/nodes/{self.node_name}")
            self._node_uid = str(node["metadata"]["uid"])
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": EVENTS_NAMESPACE},
            "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": self.node_name,
                               "uid": self._node_uid},
            "reason": reason,
            "message": message,
            "type": etype,
            "source": {"component": COMPONENT, "host": self.node_name},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "reportingComponent": COMPONENT,
            "reportingInstance": self.instance,
        }
