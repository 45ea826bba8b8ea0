"""What the agent is doing, in one place: PF provisioning states, pools, allocations, errors.

The daemon's parts report here; readers take a JSON-able snapshot: ``nodeagent status`` (from
the file the daemon keeps at ``DEFAULT_PATH``), the metrics endpoint and the node's custom
resource in the Kubernetes API.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nodeagent.fileio import replace_file

log = logging.getLogger(__name__)

DEFAULT_PATH = "/run/nodeagent/status.json"
RECENT_ERRORS = 50

# PF provisioning states, as `nodeagent status` and the node resource show them.
IN_SYNC, APPLYING, BLOCKED, FAILED, VERIFY_ONLY = "in-sync", "applying", "blocked", "failed", \
    "externally-managed"
PF_STATES = (IN_SYNC, APPLYING, BLOCKED, FAILED, VERIFY_ONLY)


@dataclass(frozen=True)
class PfStatus:
    """One managed PF: where provisioning stands and, unless in sync, why."""

    pci: str
    name: str | None
    state: str
    reason: str = ""
    numvfs: int = 0
    desired_numvfs: int | None = None
    since: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"pciAddress": d["pci"], "name": d["name"], "state": d["state"],
                "reason": d["reason"], "numVfs": d["numvfs"],
                "desiredNumVfs": d["desired_numvfs"], "since": d["since"]}


@dataclass(frozen=True)
class ErrorRecord:
    time: float
    source: str  # "provision", "cni", "deviceplugin", ...
    message: str
    object: str = ""  # what it is about: a PCI address, pod, network

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Listener = Callable[[dict[str, Any]], None]


#: The status file is rewritten at most this often (seconds): CNI requests change the board,
#: and must not wait for a file write. Listeners hear of allocation changes as often.
WRITE_DELAY = 0.2


class StatusBoard:
    """Thread-safe; every change notifies listeners, and a writer thread rewrites the status
    file (if any) shortly after. Allocation changes (every CNI ADD and DEL) reach listeners
    from that thread too, one snapshot per burst: a request never copies the whole board nor
    waits for a listener."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._path = Path(path) if path is not None else None
        self._dirty = threading.Event()
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pfs: dict[str, PfStatus] = {}
        self._pools: dict[str, dict[str, Any]] = {}
        self._allocations: dict[str, dict[str, Any]] = {}
        self._errors: deque[ErrorRecord] = deque(maxlen=RECENT_ERRORS)
        self._listeners: list[Listener] = []
        self._listeners_due = False  # an allocation changed since listeners last heard
        self._policy: dict[str, Any] | None = None

    # -- writers ----------------------------------------------------------------------------

    def set_pf(self, status: PfStatus) -> None:
        """Record a PF's state; a repeat of the same state and reason keeps its ``since``."""
        with self._lock:
            old = self._pfs.get(status.pci)
            if old is not None and (old.state, old.reason, old.numvfs, old.desired_numvfs,
                                    old.name) == (status.state, status.reason, status.numvfs,
                                                  status.desired_numvfs, status.name):
                return
            self._pfs[status.pci] = status
        self._changed()

    def drop_pf(self, pci: str) -> None:
        with self._lock:
            if self._pfs.pop(pci, None) is None:
                return
        self._changed()

    def set_pools(self, pools: dict[str, dict[str, Any]]) -> None:
        """Device-plugin pools: name -> {"total", "allocated", "unhealthy", ...}."""
        with self._lock:
            if pools == self._pools:
                return
            self._pools = {k: dict(v) for k, v in pools.items()}
        self._changed()

    def set_allocation(self, key: str, allocation: dict[str, Any] | None) -> None:
        """An attachment (``containerID/ifname``): pod, network, device, IPs; None removes it."""
        with self._lock:
            if allocation is None:
                if self._allocations.pop(key, None) is None:
                    return
            else:
                self._allocations[key] = dict(allocation)
        self._changed(defer_listeners=True)

    def set_policy(self, section: dict[str, Any] | None) -> None:
        """The network policy controller's report (nodeagent.policy.sync): per attachment the
        policies and rule counts, the last sync, the policies not enforced and why."""
        with self._lock:
            if section == self._policy:
                return
            self._policy = section
        self._changed(defer_listeners=True)

    def error(self, source: str, message: str, obj: str = "") -> ErrorRecord:
        record = ErrorRecord(time.time(), source, message, obj)
        with self._lock:
            self._errors.append(record)
        self._changed()
        return record

    # -- readers ----------------------------------------------------------------------------

    def pf(self, pci: str) -> PfStatus | None:
        with self._lock:
            return self._pfs.get(pci)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "time": time.time(),
                "pfs": [s.to_dict() for _, s in sorted(self._pfs.items())],
                "pools": {k: dict(v) for k, v in sorted(self._pools.items())},
                "allocations": {k: dict(v) for k, v in sorted(self._allocations.items())},
                "recentErrors": [e.to_dict() for e in self._errors],
                **({"policy": self._policy} if self._policy is not None else {}),
            }

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def flush(self) -> None:
        """Write the status file now (the daemon does at exit; tests do)."""
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            # No fsync: the file lives in /run and is rewritten on every change.
            replace_file(self._path, json.dumps(self.snapshot(), indent=1).encode(),
                         durable=False)

    def _changed(self, *, defer_listeners: bool = False) -> None:
        with self._lock:
            listeners = list(self._listeners)
            deferred = defer_listeners and bool(listeners)
            self._listeners_due |= deferred
            background = self._path is not None or deferred
            if background and self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                                name="status-file")
                self._writer.start()
        if background:
            self._dirty.set()
        if defer_listeners or not listeners:  # CNI requests: no copy, no wait, here
            return
        self._notify(listeners, self.snapshot())

    @staticmethod
    def _notify(listeners: list[Listener], snap: dict[str, Any]) -> None:
        for listener in listeners:
            listener(snap)

    def _write_loop(self) -> None:
        while True:
            self._dirty.wait()
            time.sleep(WRITE_DELAY)  # one write (and one notification) for a burst of changes
            self._dirty.clear()
            with self._lock:
                due, self._listeners_due = self._listeners_due, False
                listeners = list(self._listeners)
            if due:
                try:
                    self._notify(listeners, self.snapshot())
                except Exception:
                    log.exception("notifying a status listener")
            try:
                self.flush()
            except OSError as exc:
                log.warning("writing %s: %s", self._path, exc)


def read(path: str | Path = DEFAULT_PATH) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
