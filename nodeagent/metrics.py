"""The agent's Prometheus metrics, in a registry of its own (tests may build several).

Counters and histograms are updated as things happen (CNI requests, reconcile passes); the
state gauges (VF pools, PF provisioning, IPAM usage) are read at scrape time from the
StatusBoard and the IPAM stores, so they can never drift from what the agent reports elsewhere.
docs/observability.md lists every metric.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nodeagent import __version__
from nodeagent.ipam import ops as ipam_ops
from nodeagent.ipam.allocator import Ipam
from nodeagent.ipam.configtypes import IPRange
from nodeagent.status import PF_STATES, StatusBoard

log = logging.getLogger(__name__)

#: CNI requests take from about a millisecond (VERSION, a warm macvlan ADD) to seconds (a VF
#: whose driver rebinds).
CNI_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RECONCILE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
POOL_STATES = ("total", "allocated", "unhealthy")
POLICY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Attachment states of the network policy controller (nodeagent.policy.sync).
POLICY_STATES = ("policed", "open", "deny-all", "unpoliced", "error")


class Metrics:
    """What the agent's parts report to; :attr:`registry` is what /metrics serves."""

    def __init__(self, status: StatusBoard | None = None, version: str = __version__) -> None:
        self.registry = CollectorRegistry()
        self.status = status
        self._ipams: list[Ipam] = []
        self._lock = threading.Lock()
        r = self.registry
        self._cni_requests = Counter(
            "nodeagent_cni_requests", "CNI requests served, by verb, plugin type and result"
            " ('ok' or the CNI error code)", ["verb", "type", "result"], registry=r)
        self._cni_seconds = Histogram(
            "nodeagent_cni_request_duration_seconds", "Time to serve a CNI request",
            ["verb", "type"], buckets=CNI_BUCKETS, registry=r)
        self._reconcile_errors = Counter(
            "nodeagent_reconcile_errors", "Provisioning reconcile passes that failed, by PF",
            ["pf"], registry=r)
        self._reconcile_seconds = Histogram(
            "nodeagent_reconcile_duration_seconds", "Time of one provisioning reconcile pass",
            buckets=RECONCILE_BUCKETS, registry=r)
        self._policy_seconds = Histogram(
            "nodeagent_policy_sync_duration_seconds", "Time for one network policy sync batch"
            " (compile and apply the rules of every affected pod)", buckets=POLICY_BUCKETS,
            registry=r)
        self._policy_failures = Counter(
            "nodeagent_policy_apply_failures", "Pods whose network policy rules could not be"
            " applied in a sync batch", registry=r)
        self._policy_syncs = 0
        Info("nodeagent_build", "The running agent", registry=r).info({"version": version})
        ProcessCollector(registry=r)
        r.register(_StateCollector(self))
        r.register(_PolicyCollector(self))

    # -- what the agent's parts call ---------------------------------------------------------

    def cni_request(self, verb: str, kind: str, result: str, seconds: float) -> None:
        """One CNI request served: ``result`` is "ok" or the CNI error code as a string."""
        self._cni_requests.labels(verb, kind, result).inc()
        self._cni_seconds.labels(verb, kind).observe(seconds)

    def reconcile_error(self, pf: str) -> None:
        """A reconcile pass for PF ``pf`` (its PCI address) failed."""
        self._reconcile_errors.labels(pf).inc()

    def observe_reconcile(self, seconds: float) -> None:
        self._reconcile_seconds.observe(seconds)

    def policy_synced(self, section: dict) -> None:
        """The policy controller's status section: a new sync batch is observed once."""
        last = section.get("lastSync") or {}
        with self._lock:
            fresh = section.get("syncs", 0) != self._policy_syncs
            self._policy_syncs = section.get("syncs", 0)
        if fresh and "seconds" in last:
            self._policy_seconds.observe(float(last["seconds"]))
            if last.get("failed"):
                self._policy_failures.inc(int(last["failed"]))

    def track_ipam(self, ipam: Ipam) -> None:
        """Report the usage of every network ``ipam`` has served (read at scrape time)."""
        with self._lock:
            if all(i is not ipam for i in self._ipams):
                self._ipams.append(ipam)

    def ipams(self) -> list[Ipam]:
        with self._lock:
            return list(self._ipams)


class _StateCollector(Collector):
    """Gauges computed at scrape time from the StatusBoard and the IPAM stores."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        pools, pfs, ipam = self._families()
        status = self._metrics.status
        if status is not None:
            snap = status.snapshot()
            for name, pool in snap["pools"].items():
                for state in POOL_STATES:
                    pools.add_metric([name, state], float(pool.get(state, 0) or 0))
            for pf in snap["pfs"]:
                for state in PF_STATES:
                    pfs.add_metric([pf["pciAddress"], pf["name"] or "", state],
                                   1.0 if pf["state"] == state else 0.0)
        self._ipam_usage(ipam)
        return [pools, pfs, ipam]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("nodeagent_vf_pool_devices", "Devices of a device-plugin resource"
                              " pool: total, allocated to pods, unhealthy",
                              labels=["resource", "state"]),
            GaugeMetricFamily("nodeagent_pf_provisioning_state", "1 for the PF's current"
                              " provisioning state, 0 for the others",
                              labels=["pf", "name", "state"]),
            GaugeMetricFamily("nodeagent_ipam_pool_addresses", "Assignable addresses of an IPAM"
                              " range (total) and those held by attachments (allocated)",
                              labels=["network", "range", "state"]),
        )

    def _ipam_usage(self, family: GaugeMetricFamily) -> None:
        seen: set[tuple[str, str]] = set()
        for ipam in self._metrics.ipams():
            for config in ipam.configs():
                try:
                    usage = ipam_ops.show(config, ipam)
                except Exception as exc:  # an etcd outage must not break the other metrics
                    log.warning("IPAM usage of network %s unavailable: %s", config.name, exc)
                    continue
                for pool in usage.pools:
                    labels = (config.name, _range_label(pool.range))
                    if labels in seen:
                        continue
                    seen.add(labels)
                    family.add_metric([*labels, "total"], float(pool.allocated + pool.free))
                    family.add_metric([*labels, "allocated"], float(pool.allocated))


def _range_label(rng: IPRange) -> str:
    """The subnet (``10.1.0.0/24``) when the range spans it, else ``first-last``."""
    subnet = rng.subnet
    if (rng.start, rng.end) == (subnet.network_address, subnet.broadcast_address):
        return str(subnet)
    return f"{rng.start}-{rng.end}"


class _PolicyCollector(Collector):
    """Network policy gauges from the StatusBoard's ``policy`` section, at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        attachments, invalid, rules = self._families()
        status = self._metrics.status
        section = status.snapshot().get("policy") if status is not None else None
        if section:
            counts = dict.fromkeys(POLICY_STATES, 0)
            pods: dict[str, int] = {}
            for a in section.get("attachments", {}).values():
                counts[a.get("state", "open")] = counts.get(a.get("state", "open"), 0) + 1
                pods[a.get("pod", "")] = int(a.get("rules", 0))
            for state, n in counts.items():
                attachments.add_metric([state], float(n))
            invalid.add_metric([], float(len(section.get("policyErrors", {}))))
            rules.add_metric([], float(sum(pods.values())))
        return [attachments, invalid, rules]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("nodeagent_policy_attachments", "Attachments by network policy"
                              " state: policed, open (no policy), deny-all (waiting for the"
                              " API), unpoliced (DPDK), error", labels=["state"]),
            GaugeMetricFamily("nodeagent_policy_invalid", "MultiNetworkPolicies not enforced"
                              " because they are invalid"),
            GaugeMetricFamily("nodeagent_policy_rules", "nftables rules installed in the pods'"
                              " network namespaces"),
        )
