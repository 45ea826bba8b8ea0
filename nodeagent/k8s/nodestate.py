"""The node's NodeNetworkState resource: PFs, VFs, pools, provisioning states and recent errors.

:func:`build_status` turns a StatusBoard snapshot and the inventory into the resource's
``status``; :class:`NodeStatePublisher` keeps the resource current from its own thread. It
writes only when the status changed (``observedTime`` aside), at most once per
``min_interval``, and backs off while the API is unreachable, always publishing the newest state
once it is back. Callers (the StatusBoard, the inventory) only set a flag, so a slow or absent
API server never delays provisioning or CNI requests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from nodeagent import __version__
from nodeagent.k8s.client import GROUP, KIND, PLURAL, VERSION, ApiError, Backoff, KubeClient
from nodeagent.model import Nic, Node, VirtualFunction
from nodeagent.status import APPLYING, BLOCKED, FAILED, StatusBoard

log = logging.getLogger(__name__)

MAX_ERRORS = 20
MAX_MESSAGE = 1000
ZERO_MAC = "00:00:00:00:00:00"


def rfc3339(t: float) -> str:
    """metav1.Time: UTC, whole seconds."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _drop_none(d: dict[str, Any], keep: tuple[str, ...] = ()) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None or k in keep}


def _vf_entry(vf: VirtualFunction, allocation: dict[str, Any] | None) -> dict[str, Any]:
    mac = vf.config.mac if vf.config is not None and vf.config.mac not in (None, ZERO_MAC) \
        else (vf.netdev.mac if vf.netdev is not None else None)
    pod = None
    if allocation is not None and allocation.get("pod"):
        ns = allocation.get("namespace")
        pod = f"{ns}/{allocation['pod']}" if ns else str(allocation["pod"])
    return _drop_none({
        "index": vf.index,
        "pciAddress": vf.pci.address,
        "driver": vf.pci.driver,
        "netdev": vf.netdev.name if vf.netdev is not None else None,
        "mac": mac,
        "vlan": vf.config.vlan if vf.config is not None else 0,
        "allocated": allocation is not None,
        "pod": pod,
    }, keep=("netdev", "pod"))


def _provisioning(board_pf: dict[str, Any]) -> dict[str, Any]:
    return _drop_none({
        "state": board_pf["state"],
        "reason": board_pf.get("reason") or "",
        "desiredNumVfs": board_pf.get("desiredNumVfs"),
        "since": rfc3339(board_pf["since"]) if board_pf.get("since") else None,
    })


def _pf_entry(nic: Nic, board_pf: dict[str, Any] | None,
              allocations: dict[str, dict[str, Any]]) -> dict[str, Any]:
    assert nic.sriov is not None
    netdev = nic.netdevs[0] if nic.netdevs else None
    pci = nic.pci
    entry = _drop_none({
        "pciAddress": pci.address if pci else nic.key,
        "name": nic.name,
        "vendor": pci.vendor if pci else None,
        "device": pci.device if pci else None,
        "driver": pci.driver if pci else None,
        "numaNode": pci.numa_node if pci else None,
        "linkState": netdev.operstate if netdev else None,
        "mtu": netdev.mtu if netdev else None,
        "totalVfs": nic.sriov.totalvfs,
        "numVfs": nic.sriov.numvfs,
    })
    if board_pf is not None:
        entry["provisioning"] = _provisioning(board_pf)
    entry["vfs"] = [_vf_entry(vf, allocations.get(vf.pci.address)) for vf in nic.sriov.vfs]
    return entry


def _condition(ctype: str, ok: bool, reason: str, message: str,
               previous: dict[str, dict[str, Any]], now: float) -> dict[str, Any]:
    status = "True" if ok else "False"
    before = previous.get(ctype)
    since = before["lastTransitionTime"] if before and before.get("status") == status \
        and before.get("lastTransitionTime") else rfc3339(now)
    return {"type": ctype, "status": status, "reason": reason,
            "message": message[:MAX_MESSAGE], "lastTransitionTime": since}


def _conditions(pfs: list[dict[str, Any]], pools: list[dict[str, Any]],
                previous: list[dict[str, Any]] | None, now: float) -> list[dict[str, Any]]:
    prev = {c.get("type", ""): c for c in previous or ()}

    def describe(p: dict[str, Any]) -> str:
        what = f"{p['name']} ({p['pciAddress']})" if p.get("name") else p["pciAddress"]
        return f"{what}: {p['reason']}" if p.get("reason") else what

    by_state: dict[str, list[str]] = {}
    for p in pfs:
        by_state.setdefault(p["state"], []).append(describe(p))
    failed, blocked = by_state.get(FAILED, []), by_state.get(BLOCKED, [])
    applying = by_state.get(APPLYING, [])
    unhealthy = [f"{p['name']}: {p['unhealthy']} unhealthy" for p in pools if p["unhealthy"]]

    problem = "PfFailed" if failed else "PfBlocked"
    if failed or blocked:
        ready = _condition("Ready", False, problem, f"{len(failed) + len(blocked)} of {len(pfs)}"
                           " PFs not in sync: " + "; ".join(failed + blocked), prev, now)
    elif applying:
        ready = _condition("Ready", False, "Applying", "applying: " + "; ".join(applying),
                           prev, now)
    else:
        ready = _condition("Ready", True, "InSync", f"{len(pfs)} managed PFs in sync"
                           if pfs else "no PFs under provisioning policy", prev, now)
    if failed or blocked or unhealthy:
        reason = problem if failed or blocked else "UnhealthyDevices"
        degraded = _condition("Degraded", True, reason, "; ".join(failed + blocked + unhealthy),
                              prev, now)
    else:
        degraded = _condition("Degraded", False, "AsExpected", "", prev, now)
    return [ready, degraded]


def build_status(snapshot: dict[str, Any], node: Node | None, *,
                 previous: dict[str, Any] | None = None, now: float | None = None,
                 agent_version: str = __version__) -> dict[str, Any]:
    """The NodeNetworkState ``status`` from a StatusBoard snapshot and the inventory.

    ``previous`` (the last published status) keeps each condition's lastTransitionTime while its
    status stays the same. PFs without a ``provisioning`` entry are not under the VF policy.
    """
    now = time.time() if now is None else now
    board_pfs = {p["pciAddress"]: p for p in snapshot.get("pfs", [])}
    allocations = {str(a["device"]): a for a in snapshot.get("allocations", {}).values()
                   if a.get("device")}
    pfs = []
    for nic in node.pfs if node is not None else ():
        address = nic.pci.address if nic.pci else nic.key
        pfs.append(_pf_entry(nic, board_pfs.pop(address, None), allocations))
    for address, p in sorted(board_pfs.items()):  # managed, but gone from the inventory
        pfs.append(_drop_none({"pciAddress": address, "name": p.get("name"), "totalVfs": 0,
                               "numVfs": p.get("numVfs", 0),
                               "provisioning": _provisioning(p), "vfs": []}))
    pools = [{"name": name,
              "resourceName": str(p.get("resourceName") or name),
              "total": int(p.get("total", 0)),
              "allocated": int(p.get("allocated", 0)),
              "unhealthy": int(p.get("unhealthy", 0))}
             for name, p in sorted(snapshot.get("pools", {}).items())]
    errors = [{"time": rfc3339(e["time"]), "source": e.get("source", ""),
               "object": e.get("object", ""), "message": str(e.get("message", ""))[:MAX_MESSAGE]}
              for e in snapshot.get("recentErrors", [])[-MAX_ERRORS:]]
    managed = list(snapshot.get("pfs", []))
    return {
        "observedTime": rfc3339(now),
        "agentVersion": agent_version,
        "pfs": pfs,
        "pools": pools,
        "conditions": _conditions(managed, pools, (previous or {}).get("conditions"), now),
        "recentErrors": errors,
    }


def same_status(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Equal but for observedTime."""
    if a is None or b is None:
        return False
    return {k: v for k, v in a.items() if k != "observedTime"} == \
        {k: v for k, v in b.items() if k != "observedTime"}


class NodeStatePublisher:
    """Keeps ``nodenetworkstates/<node_name>`` current. ``start()`` runs it; ``stop()`` ends it.

    ``inventory_provider`` returns the current inventory (or None before the first scan);
    inventory changes must be reported with :meth:`on_inventory` (a LiveInventory subscriber,
    see :meth:`attach`); StatusBoard changes are followed by subscription.
    """

    def __init__(self, api: KubeClient, node_name: str, status_board: StatusBoard,
                 inventory_provider: Callable[[], Node | None], *, min_interval: float = 1.0,
                 backoff: Backoff | None = None, max_conflicts: int = 5,
                 resync_interval: float = 600.0, agent_version: str = __version__) -> None:
        self.api = api
        self.node_name = node_name
        self.board = status_board
        self.inventory_provider = inventory_provider
        self.min_interval = min_interval
        self.backoff = backoff or Backoff(1.0, 60.0)
        self.max_conflicts = max_conflicts
        self.resync_interval = resync_interval
        self.agent_version = agent_version
        self.published: dict[str, Any] | None = None  # the status the API holds, as we know it
        self.last_error: str | None = None
        self.passes = 0  # sync passes done, successful or not
        self._obj: dict[str, Any] | None = None
        self._cond = threading.Condition()
        self._dirty = True
        self._not_before = 0.0
        self._stopping = False
        self._thread: threading.Thread | None = None
        status_board.subscribe(lambda _snapshot: self.publish())

    @property
    def path(self) -> str:
        return f"/apis/{GROUP}/{VERSION}/{PLURAL}/{self.node_name}"

    # -- callers' side: never blocks ----------------------------------------------------------

    def publish(self) -> None:
        """Note that the state changed; the thread publishes it when it can."""
        with self._cond:
            self._dirty = True
            self._cond.notify_all()

    def on_inventory(self, node: Node, changed: frozenset[str]) -> None:
        self.publish()

    def attach(self, inventory: Any) -> None:
        """Follow a LiveInventory's changes."""
        inventory.subscribe(self.on_inventory)

    def start(self) -> NodeStatePublisher:
        self._thread = threading.Thread(target=self._run, name="k8s-nodestate", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the publisher thread ---------------------------------------------------------------

    def _run(self) -> None:
        next_resync = time.monotonic() + self.resync_interval
        while True:
            with self._cond:
                while not self._stopping:
                    now = time.monotonic()
                    if not self._dirty and now >= next_resync:
                        # Re-read now and then: a resource deleted or edited by hand comes back.
                        self._obj, self._dirty = None, True
                    wait = self._not_before - now
                    if self._dirty and wait <= 0:
                        break
                    self._cond.wait(wait if self._dirty else next_resync - now)
                if self._stopping:
                    return
                self._dirty = False
                next_resync = time.monotonic() + self.resync_interval
            self._not_before = time.monotonic() + self.min_interval
            try:
                self._sync()
            except Exception as exc:
                self._failed(exc)
            else:
                self.backoff.reset()
                self.last_error = None
            with self._cond:
                self.passes += 1
                self._cond.notify_all()

    def wait_passes(self, count: int, timeout: float) -> bool:
        """Block until ``count`` sync passes are done (tests, readiness checks)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.passes < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def _failed(self, exc: Exception) -> None:
        delay = self.backoff.next()
        if isinstance(exc, ApiError):
            if exc.retry_after:
                delay = max(delay, exc.retry_after)
            level = logging.WARNING if exc.unavailable else logging.ERROR
            log.log(level, "node state for %s not published (retry in %.1fs): %s",
                    self.node_name, delay, exc)
        else:
            log.exception("node state for %s not published (retry in %.1fs)", self.node_name,
                          delay)
        self.last_error = str(exc)
        with self._cond:
            self._dirty = True
            self._not_before = time.monotonic() + delay

    def _sync(self) -> None:
        if self._obj is None:
            self._obj = self._read_or_create()
        status = build_status(self.board.snapshot(), self._inventory(), previous=self.published,
                              agent_version=self.agent_version)
        if same_status(status, self.published):
            return
        for _ in range(self.max_conflicts):
            try:
                self._obj = self.api.request("PUT", self.path + "/status",
                                             body={**self._obj, "status": status})
            except ApiError as exc:
                if exc.code == 409:  # someone else wrote it: take the new resourceVersion
                    log.info("node state for %s: conflict, re-reading", self.node_name)
                    self._obj = self._read_or_create()
                    continue
                if exc.code == 404:  # deleted under us (by hand, or with the Node)
                    log.warning("node state for %s vanished; recreating it", self.node_name)
                    self._obj = self._create()
                    continue
                raise
            self.published = status
            return
        raise ApiError(409, "Conflict", f"still conflicting after {self.max_conflicts} tries")

    def _inventory(self) -> Node | None:
        try:
            return self.inventory_provider()
        except Exception as exc:  # inventory not ready yet: publish the board's view alone
            log.debug("inventory unavailable for the node state: %s", exc)
            return None

    def _read_or_create(self) -> dict[str, Any]:
        try:
            obj = self.api.request("GET", self.path)
        except ApiError as exc:
            if exc.code != 404:
                raise
            return self._create()
        # What the API holds: after a restart or a re-read, no write when nothing changed.
        status = obj.get("status")
        self.published = status if isinstance(status, dict) else None
        return obj

    def _create(self) -> dict[str, Any]:
        try:
            node = self.api.request("GET", f"/api/v1/nodes/{self.node_name}")
        except ApiError as exc:
            if exc.code == 404:
                raise ApiError(404, "NodeNotFound", f"node {self.node_name} is not registered"
                               " (yet)") from exc
            raise
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {
                "name": self.node_name,
                "labels": {"app.kubernetes.io/managed-by": "nodeagent"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": self.node_name,
                                     "uid": node["metadata"]["uid"]}],
            },
            "spec": {},
        }
        self.published = None
        try:
            return self.api.request("POST", f"/apis/{GROUP}/{VERSION}/{PLURAL}", body=body)
        except ApiError as exc:
            if exc.code != 409:
                raise
            return self.api.request("GET", self.path)  # created meanwhile by someone else
