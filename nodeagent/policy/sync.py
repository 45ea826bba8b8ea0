"""The MultiNetworkPolicy controller: API caches -> affected local pods -> nft in their netns.

Four reflectors (MultiNetworkPolicies, Pods, Namespaces, NetworkAttachmentDefinitions, all
namespaces) feed one coordinator thread. Each change marks the local pods it can affect (a
policy: the pods of its namespace on the networks it names; a pod: itself when it is local,
and the local pods on the policed networks it is attached to, since it is a peer there; a
namespace's labels: every policed local pod; a NetworkAttachmentDefinition: the pods on it).
The coordinator takes the marked pods in batches, builds the cluster view once per batch and
compiles and applies each pod on a worker pool; a pod whose script did not change is skipped.

The CNI side calls :meth:`PolicyController.attached` at the end of an ADD, before it returns:
a network no policy names costs a set lookup (and the attachment record); a policed one gets
its pod's rules applied at once, or, before the caches are synced, rules that drop everything
on the pod's interfaces until they are (fail closed). Failing to apply fails the ADD.
See docs/policy-sync.md.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nodeagent.policy.attachments import AttachmentRecord, AttachmentRegistry, nad_network_name
from nodeagent.policy.cluster import (
    LocalAttachment,
    PodView,
    PolicyEntry,
    affected_by_pod,
    affected_by_policy,
    namespace_labels,
    pod_view,
    policy_entry,
)
from nodeagent.policy.model import (
    ClusterView,
    Peer,
    Policy,
    Target,
)

if TYPE_CHECKING:
    from nodeagent.policy.compile import PodRules

# The compiler and libnftables (nodeagent.policy.compile, .nft) are imported when a pod first
# needs rules: a node no policy applies to never loads them (docs/observability.md, "Memory").

log = logging.getLogger(__name__)

GROUP = "k8s.cni.cncf.io"
POLICIES_PATH = f"/apis/{GROUP}/v1beta1/multi-networkpolicies"
NADS_PATH = f"/apis/{GROUP}/v1/network-attachment-definitions"
PODS_PATH = "/api/v1/pods"
NAMESPACES_PATH = "/api/v1/namespaces"
#: A pod whose rules could not be applied is tried again after this many seconds.
RETRY_DELAY = 5.0
#: How often contexts kept for namespaces that are gone are closed (seconds).
PRUNE_INTERVAL = 60.0


class PolicyApplyError(Exception):
    """The rules of a new attachment could not be put in place (the ADD must fail)."""


@dataclass(frozen=True)
class Plan:
    """One pod's rules as compiled from its ``records``."""

    records: list[AttachmentRecord]
    netns: str
    rules: PodRules
    deny: bool = False
    digest: str = ""

    def __post_init__(self) -> None:
        if not self.digest:
            object.__setattr__(self, "digest", _digest(self.rules.script))


class Compiler:
    """compile_pod over one set of policies and one cluster view, remembering its results.

    A pod's rules depend on its namespace, labels, named ports and interfaces, never on its
    own addresses: the replicas of one workload share one compilation per batch."""

    def __init__(self, policies: list[Policy], view: ClusterView) -> None:
        self.policies, self.view = policies, view
        self._done: dict[tuple[Any, ...], tuple[PodRules, str]] = {}

    def compile(self, targets: list[Target]) -> tuple[PodRules, str]:
        """The rules and their script's digest."""
        key = tuple((t.namespace, frozenset(t.labels.items()), t.network, t.ifname, t.dpdk,
                     frozenset(t.named_ports.items())) for t in targets)
        done = self._done.get(key)
        if done is None:
            from nodeagent.policy.compile import compile_pod

            rules = compile_pod(targets, self.policies, self.view)
            done = self._done[key] = (rules, _digest(rules.script))
        return done


# -- the controller --------------------------------------------------------------------------


@dataclass
class PodState:
    """What is in place in one pod's namespace, and how it went."""

    digest: str | None  # of the script applied; None: unknown (a previous agent's)
    applied: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    rule_count: int = 0
    unpoliced: tuple[str, ...] = ()
    deny_all: bool = False
    error: str = ""
    at: float = 0.0
    rules: PodRules | None = None  # what the namespace's table holds, for update_script


def _digest(script: str) -> str:
    return hashlib.sha256(script.encode()).hexdigest()


def _deny_all(ifnames: list[str]) -> PodRules:
    from nodeagent.policy.compile import deny_all

    return deny_all(ifnames)


def nft_apply(netns: str | None, script: str) -> Any:
    """:func:`nodeagent.policy.nft.apply`, imported on the first use."""
    from nodeagent.policy import nft

    return nft.apply(netns, script)


def nft_release(netns: str | None) -> None:
    """:func:`nodeagent.policy.nft.release`: nothing to release before any apply."""
    nft = sys.modules.get("nodeagent.policy.nft")
    if nft is not None:
        nft.release(netns)


def nft_prune() -> int:
    """:func:`nodeagent.policy.nft.prune`: no context to prune before any apply."""
    nft = sys.modules.get("nodeagent.policy.nft")
    return nft.prune() if nft is not None else 0


Reporter = Callable[[dict[str, Any]], None]


class PolicyController:
    """Keeps the nft rules of every local pod in line with the API's policies.

    ``api``: a :class:`nodeagent.k8s.client.KubeClient`, or None for a controller without
    caches (tests of the CNI hook; every policed ADD then fails closed). ``report``: called
    with the status section after each batch and error (see :meth:`status`).
    """

    def __init__(self, api: Any, registry: AttachmentRegistry, *, node_name: str = "",
                 workers: int | None = None, report: Reporter | None = None,
                 apply: Callable[[str | None, str], Any] = nft_apply,
                 release: Callable[[str | None], None] = nft_release,
                 prune: Callable[[], int] = nft_prune, watch_timeout: int = 300) -> None:
        self.registry = registry
        self.node_name = node_name
        self.report = report
        self._apply_script = apply
        self._release = release
        self._prune = prune
        self._pruned_at = time.monotonic()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._dirty: set[str] = set()
        self._retry: dict[str, float] = {}
        self._states: dict[str, PodState] = {}
        self._pod_locks: dict[str, threading.Lock] = {}
        self._stop = threading.Event()
        self._started = threading.Event()  # the first full pass after the sync is queued
        self._thread: threading.Thread | None = None
        # Applying is kernel and libnftables work: about one thread per CPU keeps them busy.
        self.workers = workers or min(8, os.cpu_count() or 2)
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.workers),
                                        thread_name_prefix="policy")
        self._policed: frozenset[str] = frozenset()  # "ns/nad" some valid policy names
        self._policed_names: frozenset[str] = frozenset()  # their CNI network names
        self._view: tuple[tuple[int, int, int], ClusterView] | None = None
        self._records_version = 0  # local records' addresses are peers too
        self._all_synced = False
        self.errors: dict[str, str] = {}  # policy key -> why it is not enforced
        self.last_sync: dict[str, Any] = {}
        self.syncs = 0
        self.reflectors: list[Any] = []
        if api is not None:
            from nodeagent.k8s.client import Backoff
            from nodeagent.k8s.reflector import Reflector

            def make(path: str, transform: Any, handler: Any, **kw: Any) -> Any:
                return Reflector(api, path, transform=transform, on_event=handler,
                                 watch_timeout=watch_timeout, backoff=Backoff(0.5, 30.0), **kw)

            self.policies = make(POLICIES_PATH, policy_entry, self._policy_event,
                                 name="multi-networkpolicies", missing_ok=True)
            self.pods = make(PODS_PATH, pod_view, self._pod_event, name="policy-pods")
            self.namespaces = make(NAMESPACES_PATH, namespace_labels, self._namespace_event,
                                   name="policy-namespaces")
            self.nads = make(NADS_PATH, nad_network_name, self._nad_event,
                             name="network-attachment-definitions", missing_ok=True)
            self.reflectors = [self.policies, self.pods, self.namespaces, self.nads]

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> PolicyController:
        self.registry.set_enforcing(True)  # the fallback fails closed while we are down
        loaded = self.registry.load()
        with self._lock:  # a previous agent's tables may be there: never trust them
            for key in self.registry.pods():
                self._states[key] = PodState(None)
        log.info("policy: %d attachment records from the previous run", loaded)
        self._publish()  # "not synced" shows before the first list
        for r in self.reflectors:
            r.start()
        self._thread = threading.Thread(target=self._loop, name="policy-sync", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        for r in self.reflectors:
            r.stop(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)

    @property
    def synced(self) -> bool:
        if not self._all_synced and self.reflectors \
                and all(r.synced for r in self.reflectors):
            self._all_synced = True
        return self._all_synced

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.synced:
            if time.monotonic() > deadline or self._stop.is_set():
                return False
            time.sleep(0.01)
        return True

    def wait_idle(self, timeout: float) -> bool:
        """Until no pod is marked and no batch runs (tests, the benchmark)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._started.is_set() and not self._dirty and not self._busy:
                    return True
            time.sleep(0.005)
        return False

    _busy = False

    # -- the CNI hook -----------------------------------------------------------------------

    def attached(self, record: AttachmentRecord) -> None:
        """An ADD configured its link: record it and, if a policy may apply, put the pod's
        rules in place now. Raises PolicyApplyError (the ADD fails and is rolled back)."""
        self.registry.add(record)
        self._records_version += 1
        if record.dpdk:
            return  # no netdev: nothing the kernel could filter
        if self.synced and record.network not in self._policed_names:
            with self._lock:
                state = self._states.get(record.pod_key)
            if state is None or not state.rule_count:
                return  # the common case: no policy for this network, nothing to replace
        try:
            self._program(record.pod_key, record)
        except Exception as exc:
            self.registry.remove(*record.key)
            raise PolicyApplyError(f"network policy for {record.pod_key} interface "
                                   f"{record.ifname} could not be applied: {exc}") from exc
        if self.synced:  # it is a peer of the other local pods there, before Multus says so
            network = self.resolve(record)
            if network in self._policed:
                self._mark(a.pod_key for a in self._local()
                           if a.network == network and a.pod_key != record.pod_key)

    def detached(self, container_id: str, ifname: str) -> None:
        """A DEL: forget the attachment; the pod's other interfaces are reprogrammed."""
        record = self.registry.remove(container_id, ifname)
        if record is not None:
            self._forget(record)

    def collected(self, network: str, keep: Iterable[tuple[str, str]]) -> None:
        """A GC of ``network``: forget its attachments not in ``keep``."""
        for record in self.registry.gc(network, keep):
            self._forget(record)

    def _forget(self, record: AttachmentRecord) -> None:
        self._records_version += 1
        if not self.registry.for_pod(record.pod_key):
            # The pod's last attachment: its namespace goes; a kept nft context would hold it.
            with self._lock:
                self._states.pop(record.pod_key, None)
            self._release(record.netns)
        else:
            self._mark([record.pod_key])

    # -- cache events (reflector threads) ---------------------------------------------------

    def _policy_event(self, etype: str, key: str, old: PolicyEntry | None,
                      new: PolicyEntry | None) -> None:
        with self._lock:
            if new is not None and new.error:
                if self.errors.get(key) != new.error:
                    log.warning("MultiNetworkPolicy %s is not enforced: %s", key, new.error)
                self.errors[key] = new.error
            else:
                self.errors.pop(key, None)
        self._refresh_policed()
        if not self.synced:
            return
        self._mark(affected_by_policy(old.policy if old else None,
                                      new.policy if new else None, self._local()))
        self._publish()

    def _pod_event(self, etype: str, key: str, old: PodView | None,
                   new: PodView | None) -> None:
        self._view = None
        if not self.synced:
            return
        # Most pod events in a cluster concern no policed network and no local pod: decide
        # that before resolving every local attachment.
        touched = {n for p in (old, new) if p is not None
                   for n in (*p.interfaces.values(), *p.ips)}
        if touched.isdisjoint(self._policed) and not self.registry.for_pod(key):
            return
        self._mark(affected_by_pod(old, new, self._local(), self._policed))

    def _namespace_event(self, etype: str, key: str, old: Any, new: Any) -> None:
        self._view = None
        if self.synced and old != new:
            self._mark(a.pod_key for a in self._local() if a.network in self._policed)

    def _nad_event(self, etype: str, key: str, old: str | None, new: str | None) -> None:
        self._refresh_policed()
        if self.synced:
            names = {n for n in (old, new) if n}
            self._mark(a.pod_key for a in self._local()
                       if a.network == key or a.record.network in names)

    def _refresh_policed(self) -> None:
        policed = frozenset(n for e in self.policies.values() if e.policy is not None
                            for n in e.policy.networks)
        names = set()
        for network in policed:
            name = self.nads.get(network)
            names.add(name if name else network.rsplit("/", 1)[-1])
        self._policed, self._policed_names = policed, frozenset(names)

    # -- resolution and views ---------------------------------------------------------------

    def resolve(self, record: AttachmentRecord, pod: PodView | None = None) -> str:
        """The ``ns/nad`` of an attachment: the pod's Multus annotations, else the only
        NetworkAttachmentDefinition whose CNI network name is the attachment's ("" if none
        or several)."""
        pod = pod or (self.pods.get(record.pod_key) if self.reflectors else None)
        if pod is not None:
            network = pod.interfaces.get(record.ifname)
            if network:
                return network
        if not self.reflectors:
            return ""
        candidates = [k for k, name in self.nads.items().items() if name == record.network]
        if len(candidates) > 1:
            same = [k for k in candidates if k.startswith(record.namespace + "/")]
            candidates = same if len(same) == 1 else candidates
        return candidates[0] if len(candidates) == 1 else ""

    def _local(self) -> list[LocalAttachment]:
        return [LocalAttachment(r, self.resolve(r)) for r in self.registry.all()]

    def view(self) -> ClusterView:
        """Namespaces' labels and every pod's addresses per network (the pods' network-status,
        plus what this node's records know of local pods Multus has not annotated yet)."""
        version = (self.pods.version, self.namespaces.version, self._records_version)
        cached = self._view
        if cached is not None and cached[0] == version:
            return cached[1]
        peers: dict[str, list[Peer]] = {}
        known: set[tuple[str, str]] = set()
        for pod in self.pods.values():
            for network, ips in pod.ips.items():
                addrs = _addresses(ips)
                if addrs:
                    peers.setdefault(network, []).append(
                        Peer(pod.namespace, pod.name, pod.labels, addrs, pod.named_ports))
                    known.add((pod.key, network))
        for a in self._local():
            if a.network and (a.pod_key, a.network) not in known:
                pod = self.pods.get(a.pod_key)
                if pod is not None and a.record.ips:
                    peers.setdefault(a.network, []).append(Peer(
                        pod.namespace, pod.name, pod.labels, _addresses(a.record.ips),
                        pod.named_ports))
        view = ClusterView(self.namespaces.items(), peers)
        self._view = (version, view)
        return view

    # -- programming ------------------------------------------------------------------------

    def _mark(self, pods: Iterable[str]) -> None:
        with self._wake:
            before = len(self._dirty)
            self._dirty.update(pods)
            if len(self._dirty) != before:
                self._wake.notify()

    def _loop(self) -> None:
        while not self._stop.is_set() and not self.synced:
            self._stop.wait(0.02)
        if self._stop.is_set():
            return
        self._refresh_policed()
        self._mark(self.registry.pods())  # everything, once the caches are complete
        for key in list(self._states):
            self._mark([key])
        self._started.set()
        self._publish()  # synced, even with nothing to program
        while not self._stop.is_set():
            with self._wake:
                now = time.monotonic()
                due = [k for k, at in self._retry.items() if at <= now]
                for k in due:
                    del self._retry[k]
                self._dirty.update(due)
                if not self._dirty:
                    wait = min((at - now for at in self._retry.values()), default=1.0)
                    self._wake.wait(max(0.01, min(wait, 1.0)))
                    prune = now - self._pruned_at > PRUNE_INTERVAL
                else:
                    prune = False
            if prune:  # contexts of namespaces that went without a DEL reaching us
                self._pruned_at = now
                try:
                    self._prune()
                except Exception:
                    log.exception("pruning nft contexts")
                continue
            with self._wake:
                if not self._dirty:
                    continue
                batch, self._dirty = self._dirty, set()
                self._busy = True
            try:
                self._run_batch(batch)
            finally:
                with self._lock:
                    self._busy = False

    def _run_batch(self, batch: set[str]) -> None:
        """Compile on this thread (pure Python: threads would only contend for the GIL), and
        apply on the pool (libnftables and the kernel run without it)."""
        started = time.perf_counter()
        compiler = Compiler(self._policies(), self.view())
        results: list[str] = []
        pending = []
        for key in sorted(batch):
            try:
                plan = self._plan(key, None, compiler)
            except Exception as exc:
                results.append(self._failed(key, exc))
                continue
            if isinstance(plan, str):
                results.append(plan)
            elif self._unchanged(key, plan.digest):
                results.append("unchanged")
            else:
                pending.append(self._pool.submit(self._apply_planned, key, plan, compiler))
        planned = time.perf_counter() - started
        for future in pending:
            results.append(future.result())
        seconds = time.perf_counter() - started
        self.syncs += 1
        self.last_sync = {"pods": len(batch), "applied": sum(r == "applied" for r in results),
                          "unchanged": sum(r == "unchanged" for r in results),
                          "failed": sum(r == "failed" for r in results),
                          "seconds": round(seconds, 6), "compileSeconds": round(planned, 6),
                          "at": time.time()}
        log.debug("policy sync: %s", self.last_sync)
        self._publish()

    def _apply_planned(self, pod_key: str, plan: Plan, compiler: Compiler) -> str:
        try:
            with self._pod_lock(pod_key):
                if self.registry.for_pod(pod_key) != plan.records:  # an ADD or DEL came
                    again = self._plan(pod_key, None, compiler)
                    if isinstance(again, str):
                        return again
                    plan = again
                return self._install(pod_key, plan.netns, plan.rules, plan.deny, plan.digest)
        except Exception as exc:
            return self._failed(pod_key, exc)

    def _failed(self, pod_key: str, exc: Exception) -> str:
        log.warning("policy for pod %s not applied: %s", pod_key, exc)
        with self._lock:
            self._retry[pod_key] = time.monotonic() + RETRY_DELAY
        return "failed"

    def _unchanged(self, pod_key: str, digest: str) -> bool:
        with self._lock:
            state = self._states.get(pod_key)
        return state is not None and not state.error and state.digest == digest

    def _pod_lock(self, pod_key: str) -> threading.Lock:
        with self._lock:
            lock = self._pod_locks.get(pod_key)
            if lock is None:
                lock = self._pod_locks[pod_key] = threading.Lock()
            return lock

    def _policies(self) -> list[Policy]:
        return [e.policy for e in self.policies.values() if e.policy is not None]

    def _program(self, pod_key: str, fresh: AttachmentRecord | None = None) -> str:
        """Compile and apply one pod's rules now; "applied", "unchanged" or "gone"."""
        with self._pod_lock(pod_key):
            plan = self._plan(pod_key, fresh, None)
            if isinstance(plan, str):
                return plan
            return self._install(pod_key, plan.netns, plan.rules, plan.deny, plan.digest)

    def _plan(self, pod_key: str, fresh: AttachmentRecord | None,
              compiler: Compiler | None) -> Plan | str:
        """The rules one pod needs, or what to report when there is nothing to apply."""
        records = self.registry.for_pod(pod_key)
        if not records:
            with self._lock:
                self._states.pop(pod_key, None)
            return "gone"
        netns = (fresh or records[0]).netns
        if fresh is None and not os.path.exists(netns):
            with self._lock:  # the pod went without a DEL (yet): nothing to program
                self._states.pop(pod_key, None)
            self._release(netns)
            return "gone"
        if not self.synced:
            return Plan(records, netns, _deny_all([r.ifname for r in records if not r.dpdk]),
                        deny=True)
        pod = self.pods.get(pod_key)
        if pod is None and fresh is not None:
            try:
                pod = self._fetch_pod(fresh)
            except Exception as exc:
                log.warning("pod %s unreadable (%s): its interfaces pass nothing for now",
                            pod_key, exc)
            if pod is None:  # fail closed, and look again soon
                with self._lock:
                    self._retry[pod_key] = time.monotonic() + RETRY_DELAY
                return Plan(records, netns, _deny_all([r.ifname for r in records if not r.dpdk]),
                            deny=True)
        if pod is None:
            return "unchanged"  # not in the API (any more): leave what is there
        targets = [Target(pod.namespace, pod.name, pod.labels, self.resolve(r, pod),
                          r.ifname, _addresses(r.ips), r.dpdk, pod.named_ports)
                   for r in records]
        compiler = compiler or Compiler(self._policies(), self.view())
        rules, digest = compiler.compile([t for t in targets if t.network])
        return Plan(records, netns, rules, digest=digest)

    def _install(self, pod_key: str, netns: str, rules: PodRules, deny: bool = False,
                 digest: str = "") -> str:
        digest = digest or _digest(rules.script)
        with self._lock:
            state = self._states.get(pod_key)
        if state is not None and state.digest == digest and not state.error:
            return "unchanged"
        if state is None and rules.rule_count == 0:
            # Nothing was installed here, and nothing is to be: no table to write.
            self._set_state(pod_key, PodState(digest, rules.applied, 0, rules.unpoliced,
                                              rules=rules))
            return "unchanged"
        # What is installed is known: send only the difference (the table and its hooks stay;
        # new peers are set elements). Unknown or after an error: the whole table.
        installed = state.rules if state is not None and not state.error else None
        try:
            if installed is None:
                self._apply_script(netns, rules.script)
            else:
                self._apply_update(netns, installed, rules)
        except Exception as exc:
            self._set_state(pod_key, PodState(
                state.digest if state else None, state.applied if state else {},
                state.rule_count if state else 0, rules.unpoliced, deny, str(exc), time.time(),
                state.rules if state else None))
            raise
        self._set_state(pod_key, PodState(digest, rules.applied, rules.rule_count,
                                          rules.unpoliced, deny, "", time.time(), rules))
        return "applied"

    def _apply_update(self, netns: str, installed: PodRules, rules: PodRules) -> None:
        from nodeagent.policy import nft
        from nodeagent.policy.compile import update_script

        script = update_script(installed, rules)
        if not script:
            return
        try:
            self._apply_script(netns, script)
        except nft.NftError as exc:
            if script == rules.script:
                raise
            # The namespace's table is not what we installed (someone changed it): replace it.
            log.info("incremental nft update refused (%s); replacing the table", exc)
            self._apply_script(netns, rules.script)

    def _set_state(self, pod_key: str, state: PodState) -> None:
        with self._lock:
            self._states[pod_key] = state

    def _fetch_pod(self, record: AttachmentRecord) -> PodView | None:
        """A pod the cache has not seen yet (its ADD can come before the watch event)."""
        from nodeagent.k8s.client import ApiError

        try:
            obj = self.pods.api.request(
                "GET", f"/api/v1/namespaces/{record.namespace}/pods/{record.pod}")
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise
        return pod_view(obj)

    # -- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The ``policy`` section of the status: per attachment the policies that apply and
        the pod's rule count, the last sync, the policies not enforced and why."""
        with self._lock:
            states = dict(self._states)
            errors = dict(sorted(self.errors.items()))
        attachments = {}
        for r in self.registry.all():
            state = states.get(r.pod_key)
            attachments[f"{r.container_id}/{r.ifname}"] = {
                "pod": r.pod_key, "ifname": r.ifname, "network": r.network,
                "policies": list(state.applied.get(r.ifname, ())) if state else [],
                "rules": state.rule_count if state else 0,
                "state": ("unpoliced" if r.dpdk else "deny-all" if state and state.deny_all
                          else "error" if state and state.error else
                          "policed" if state and state.applied.get(r.ifname) else "open"),
                **({"error": state.error} if state and state.error else {}),
            }
        return {"synced": self.synced, "attachments": attachments,
                "lastSync": dict(self.last_sync), "syncs": self.syncs,
                "policyErrors": errors,
                "apiErrors": {r.name: r.error for r in self.reflectors if r.error}}

    def _publish(self) -> None:
        if self.report is not None:
            try:
                self.report(self.status())
            except Exception:
                log.exception("reporting policy status")


def _addresses(ips: tuple[str, ...]) -> tuple[Any, ...]:
    return _parsed(tuple(ips))


@functools.lru_cache(maxsize=1 << 16)
def _parsed(ips: tuple[str, ...]) -> tuple[Any, ...]:
    out = []
    for text in ips:
        try:
            out.append(ipaddress.ip_address(text.split("/", 1)[0]))
        except ValueError:
            continue
    return tuple(out)


class OfflineHook:
    """The attachments hook of the in-process CNI fallback (the agent is down): it records
    every attachment, so the agent polices it when it is back, and, if the agent enforces
    policies, drops everything on the pod's interfaces until then (fail closed, as before
    the caches are synced)."""

    def __init__(self, registry: AttachmentRegistry,
                 apply: Callable[[str | None, str], Any] = nft_apply) -> None:
        self.registry = registry
        self._apply = apply

    def attached(self, record: AttachmentRecord) -> None:
        self.registry.load()  # the pod's other interfaces, which the agent attached
        self.registry.add(record)
        if record.dpdk or not self.registry.enforcing():
            return
        ifnames = [r.ifname for r in self.registry.for_pod(record.pod_key) if not r.dpdk]
        try:
            self._apply(record.netns, _deny_all(ifnames).script)
        except Exception as exc:
            self.registry.remove(*record.key)
            raise PolicyApplyError(f"network policy for {record.pod_key} interface "
                                   f"{record.ifname} could not be applied: {exc}") from exc

    def detached(self, container_id: str, ifname: str) -> None:
        self.registry.remove(container_id, ifname)

    def collected(self, network: str, keep: Iterable[tuple[str, str]]) -> None:
        self.registry.gc(network, keep)
