"""The overlay service: keeps every VXLAN network this node holds announced in the cluster
store and its flooding entries equal to the other members, as nodes come and go.

Each pass (every ``interval`` seconds): the agent's VTEPs from the kernel (links the vxlan kind
created, found by their alias), the members from the store; then this node's keys renewed (or
withdrawn for a network it no longer holds), expired keys of other nodes removed, and each
store-mode VTEP's all-zero-MAC entries set to the live members' addresses. When the store does
not answer, the entries stay as they are (a store outage must not cut pods off) and the pass is
retried. The kernel and the store are the only state: a restarted agent picks up where the
last left off.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nodeagent.overlay import fdb
from nodeagent.overlay.devices import STORE, VtepDevice, vtep_of
from nodeagent.overlay.members import Member, Membership, remotes_for
from nodeagent.rtnl import Rtnl
from nodeagent.status import StatusBoard

log = logging.getLogger(__name__)

INTERVAL = 2.0


@dataclass
class PassResult:
    """What one pass saw and changed."""

    vteps: list[VtepDevice] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    added: dict[int, list[str]] = field(default_factory=dict)  # VNI -> remotes
    removed: dict[int, list[str]] = field(default_factory=dict)
    expired: int = 0
    overlays: dict[str, dict[str, Any]] = field(default_factory=dict)


class OverlayService:
    def __init__(self, membership: Membership, *, open_netlink: Callable[[], Any] = Rtnl,
                 status: StatusBoard | None = None, interval: float = INTERVAL) -> None:
        self.membership = membership
        self.status = status
        self.interval = interval
        self._open_netlink = open_netlink
        self._nl: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one pass at a time
        self._failing = False
        self.last: PassResult | None = None

    # -- running ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="overlay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            if self._nl is not None:
                self._nl.close()
                self._nl = None

    def close(self) -> None:
        """Stop, and close the store's client."""
        self.stop()
        self.membership.client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
                if self._failing:
                    log.info("overlay: the cluster store answers again")
                self._failing = False
            except Exception as exc:  # the store or the kernel: try again next pass
                if not self._failing and self.status is not None:
                    self.status.error("overlay", f"overlay pass failed: {exc}")
                log.log(logging.DEBUG if self._failing else logging.WARNING,
                        "overlay pass failed (entries kept as they are): %s", exc)
                self._failing = True
            self._stop.wait(self.interval)

    # -- one pass ---------------------------------------------------------------------------

    def sync(self) -> PassResult:
        with self._lock:
            if self._nl is None:
                self._nl = self._open_netlink()
            result = self._sync(self._nl)
            self.last = result
        if self.status is not None:
            self.status.set_overlays(result.overlays)
        return result

    def _sync(self, nl: Any) -> PassResult:
        m = self.membership
        vteps = [v for v in (vtep_of(msg) for msg in nl.links()) if v is not None]
        stored = [v for v in vteps if v.mode == STORE and v.local is not None]
        live, expired = m.scan()
        mine = {x.vni: x for x in live if x.node == m.node}
        now = m.now()
        for v in stored:  # announce, or renew a third of the TTL ahead of expiry
            own = mine.get(v.vni)
            if own is None or (own.address, own.port, own.network) != (v.local, v.port, v.network) \
                    or now - own.at > m.ttl / 3:
                assert v.local is not None
                m.publish(v.vni, v.local, v.port, v.network)
        held = {v.vni for v in stored}
        for x in [*live, *expired]:
            if x.node == m.node and x.vni not in held:
                log.info("overlay: VNI %d no longer held here: withdrawing", x.vni)
                m.withdraw(x.vni)
        gone = [x for x in expired if x.node != m.node]
        result = PassResult(vteps=vteps, members=[x for x in live if x.node != m.node])
        if gone:
            result.expired = m.expire(gone)
            for x in gone:
                log.info("overlay: node %s left VNI %d (not renewed for %.0f s)", x.node, x.vni,
                         now - x.at)
        for v in vteps:
            others = [x for x in live if x.vni == v.vni and x.node != m.node]
            mismatched: list[Member] = []
            if v.mode == STORE:
                wanted, mismatched = remotes_for(others, m.node, v.vni, v.local, v.port)
                added, removed = fdb.sync_remotes(nl, v.index, wanted)
                if added or removed:
                    log.info("overlay: VNI %d floods to %s (added %s, removed %s)", v.vni,
                             ", ".join(sorted(wanted)) or "nobody", added or "-",
                             removed or "-")
                    result.added[v.vni], result.removed[v.vni] = added, removed
            result.overlays[str(v.vni)] = _overlay_status(v, others, mismatched,
                                                          fdb.flood_remotes(nl, v.index))
        return result


def _overlay_status(v: VtepDevice, others: Iterable[Member], mismatched: list[Member],
                    flood: set[str]) -> dict[str, Any]:
    return {
        "network": v.network, "device": v.name, "mode": v.mode,
        "local": str(v.local) if v.local else None, "port": v.port,
        "members": {x.node: str(x.address) for x in sorted(others, key=lambda x: x.node)},
        "floodTo": sorted(flood),
        "mismatched": [f"{x.node} ({x.address} port {x.port})" for x in mismatched],
    }


class OverlayCollector(Collector):
    """``nodeagent_overlay_members`` and ``nodeagent_overlay_flood_entries`` per VNI, from
    the status board's ``overlays`` (what the last pass saw)."""

    def __init__(self, status: StatusBoard) -> None:
        self._status = status

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        members, entries = self._families()
        for vni, o in self._status.snapshot().get("overlays", {}).items():
            labels = [vni, o.get("network", "")]
            members.add_metric(labels, float(len(o.get("members", {}))))
            entries.add_metric(labels, float(len(o.get("floodTo", []))))
        return [members, entries]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (GaugeMetricFamily("nodeagent_overlay_members", "Other nodes with a VTEP in a"
                                  " VXLAN network this node holds", labels=["vni", "network"]),
                GaugeMetricFamily("nodeagent_overlay_flood_entries", "All-zero-MAC forwarding"
                                  " entries (remote VTEPs flooded to) of a VXLAN network's"
                                  " device", labels=["vni", "network"]))


def open_service(store: Any, node: str, status: StatusBoard, registry: Any) -> OverlayService:
    """The daemon's overlay service on its cluster store (nodeagent.settings.ClusterStore),
    its gauges registered in ``registry``; :meth:`OverlayService.close` also closes the
    store's client."""
    from nodeagent.ipam.etcd.client import EtcdClient  # grpc: only when used

    service = OverlayService(Membership(EtcdClient(store.etcd), node, cluster=store.cluster),
                             status=status)
    registry.register(OverlayCollector(status))
    return service
