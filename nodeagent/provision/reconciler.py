"""Brings every PF the policy selects to its declared state, and keeps it there.

One pass reads each selected PF fresh, decides (:mod:`nodeagent.provision.plan`), applies, and
reads again until nothing is left to do; a second pass over an unchanged node changes nothing.
In the daemon a thread runs a pass at start, when the policy file changes, on inventory events
touching a PF (a PF reset, a driver reload, VFs removed by someone else) and every
``RESYNC`` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from nodeagent.discovery import Scanner, node_name
from nodeagent.fileio import WatchedFile
from nodeagent.model import Nic, Node
from nodeagent.netlink import Netlink
from nodeagent.provision.binding import Binder, kernel_vf_driver
from nodeagent.provision.errors import ProvisionError
from nodeagent.provision.inuse import InUse
from nodeagent.provision.numvfs import NumVfsWriter
from nodeagent.provision.plan import (
    Action,
    Bind,
    Decision,
    Facts,
    SetMtu,
    SetNumVfs,
    SetUp,
    SetVfs,
    decide,
)
from nodeagent.provision.policy import KERNEL, PfPolicy, Policy, PolicyError, load
from nodeagent.rtnl import IFF_UP, Rtnl
from nodeagent.status import APPLYING, BLOCKED, FAILED, PfStatus, StatusBoard
from nodeagent.sysfs import Sysfs
from nodeagent.vfstate import VfState

log = logging.getLogger(__name__)

RESYNC = 60.0  # seconds between passes when nothing happens
DEBOUNCE = 0.3  # let a burst of kernel events settle before a pass
MAX_STEPS = 8  # plan/apply rounds per PF in one pass


class ReconcileMetrics(Protocol):
    def reconcile_error(self, pf: str) -> None: ...
    def observe_reconcile(self, seconds: float) -> None: ...


@dataclass(frozen=True)
class Outcome:
    pci: str
    name: str
    policy: str
    decision: Decision
    applied: tuple[str, ...] = ()


@dataclass(frozen=True)
class PassResult:
    outcomes: tuple[Outcome, ...]
    #: Policy entries that selected no PF on this node.
    unmatched: tuple[str, ...] = ()

    @property
    def matches(self) -> bool:
        return all(o.decision.matches for o in self.outcomes)


class Reconciler:
    def __init__(self, sysfs: Sysfs, status: StatusBoard | None = None, *,
                 hostname: str | None = None, vfstate: VfState | None = None,
                 numvfs_timeout: float = 120.0, modules_dir: str | None = None,
                 dev_root: str = "/dev", proc: str = "/proc",
                 metrics: ReconcileMetrics | None = None) -> None:
        self.sysfs = sysfs
        self.status = status or StatusBoard()
        self.hostname = hostname or node_name()
        self.modules_dir = modules_dir
        self.metrics = metrics
        self.numvfs = NumVfsWriter(sysfs, numvfs_timeout)
        self.binder = Binder(sysfs, dev_root)
        self.in_use = InUse(sysfs, vfstate, proc)
        self._managed: set[str] = set()

    # -- one pass ---------------------------------------------------------------------------

    def reconcile(self, policy: Policy, scanner: Scanner, *, dry_run: bool = False
                  ) -> PassResult:
        started = time.monotonic()
        node = scanner.scan()
        outcomes, selected = [], set()
        for nic in node.pfs:
            entries = policy.select(nic)
            if not entries:
                continue
            selected.update(e.name for e in entries)
            if len(entries) > 1:
                names = " and ".join(e.name for e in entries)
                outcome = self._report(nic, entries[0], Decision(
                    FAILED, f"selected by more than one policy entry: {names}"))
            else:
                outcome = self._pf(nic, entries[0], scanner, dry_run)
            outcomes.append(outcome)
        self._forget_unselected({o.pci for o in outcomes})
        if self.metrics is not None:
            self.metrics.observe_reconcile(time.monotonic() - started)
        unmatched = tuple(p.name for p in policy.pfs if p.name not in selected)
        return PassResult(tuple(outcomes), unmatched)

    def _pf(self, nic: Nic, entry: PfPolicy, scanner: Scanner, dry_run: bool) -> Outcome:
        key, applied = nic.key, []
        held_probe = False
        try:
            for _ in range(MAX_STEPS):
                decision = decide(nic, entry, self._facts(nic))
                if decision.state != APPLYING or dry_run:
                    return self._report(nic, entry, decision, applied)
                self._report(nic, entry, decision, applied)
                try:
                    held_probe |= self._execute(nic, decision.actions)
                except ProvisionError as exc:
                    return self._report(nic, entry, Decision(FAILED, str(exc)), applied)
                applied.extend(a.describe(nic) for a in decision.actions)
                fresh = scanner.scan_nics([key])[key]
                if fresh is None:
                    return self._report(nic, entry, Decision(FAILED, "the PF disappeared"),
                                        applied)
                nic = fresh
            return self._report(nic, entry, Decision(
                FAILED, f"not converging after {MAX_STEPS} rounds; still: {decision.reason}"),
                applied)
        finally:
            if held_probe:
                self._autoprobe(nic.key, True)

    def _facts(self, nic: Nic) -> Facts:
        pf_driver = nic.pci.driver if nic.pci else None
        flags = self.sysfs.netdev_int(nic.name, "flags", 16) if nic.netdevs else None
        return Facts(
            hostname=self.hostname, in_use=self.in_use.vfs(nic),
            kernel_driver=lambda pci: kernel_vf_driver(self.sysfs, pci, pf_driver,
                                                       self.modules_dir),
            pf_up=None if flags is None else bool(flags & IFF_UP))

    def _execute(self, nic: Nic, actions: tuple[Action, ...]) -> bool:
        """Apply one plan; True when it turned driver autoprobe off (to be turned back on)."""
        held = False
        for action in actions:
            if isinstance(action, SetUp):
                self._set_link(nic, "bringing it up", up=True)
            elif isinstance(action, SetMtu):
                self._set_link(nic, f"MTU {action.mtu}", mtu=action.mtu)
            elif isinstance(action, SetNumVfs):
                if action.hold_probe and self.sysfs.pci_int(nic.key, "sriov_drivers_autoprobe"):
                    held = self._autoprobe(nic.key, False)
                self.numvfs.set(nic.key, action.count)
            elif isinstance(action, SetVfs):
                self._set_vfs(nic, action)
            elif isinstance(action, Bind):
                if action.driver == KERNEL:
                    raise ProvisionError(f"cannot tell which kernel driver VF {action.pci}"
                                         " needs; name it in the policy (driver: <name>)")
                self.binder.bind(action.pci, action.driver)
        return held

    def _set_vfs(self, nic: Nic, action: SetVfs) -> None:
        """The planned VF settings as one batch; refusals name VF and setting."""
        with Rtnl() as rtnl:
            index = rtnl.link_index(nic.name)
            if index is None:
                raise ProvisionError(f"PF netdev {nic.name} is gone")
            try:
                results = rtnl.set_vfs(index, action.changes)
            except (OSError, ValueError) as exc:
                raise ProvisionError(f"setting VFs of {nic.name}: {exc}") from None
        refused = [str(r) for r in results if not r.ok]
        if refused:
            raise ProvisionError(f"the PF refused: {'; '.join(refused)}")

    def _set_link(self, nic: Nic, what: str, **change: Any) -> None:
        with Rtnl() as rtnl:
            index = rtnl.link_index(nic.name)
            if index is None:
                raise ProvisionError(f"PF netdev {nic.name} is gone")
            try:
                rtnl.link_set(index, **change)
            except OSError as exc:
                raise ProvisionError(f"the PF refused {what}: {exc.strerror}") from None

    def _autoprobe(self, pf: str, on: bool) -> bool:
        try:
            self.sysfs.pci_write(pf, "sriov_drivers_autoprobe", "1" if on else "0")
        except OSError as exc:
            log.warning("%s: setting sriov_drivers_autoprobe=%d: %s", pf, on, exc)
            return False
        return True

    def _report(self, nic: Nic, entry: PfPolicy, decision: Decision,
                applied: list[str] | None = None) -> Outcome:
        numvfs = nic.sriov.numvfs if nic.sriov else 0
        before = self.status.pf(nic.key)
        news = before is None or (before.state, before.reason) != (decision.state,
                                                                   decision.reason)
        self.status.set_pf(PfStatus(nic.key, nic.name, decision.state, decision.reason,
                                    numvfs, entry.num_vfs))
        self._managed.add(nic.key)
        if news and decision.state in (FAILED, BLOCKED):  # once per new reason, not per pass
            log.warning("PF %s (%s): %s: %s", nic.key, nic.name, decision.state, decision.reason)
        if news and decision.state == FAILED:
            self.status.error("provision", decision.reason, nic.key)
            if self.metrics is not None:
                self.metrics.reconcile_error(nic.key)
        return Outcome(nic.key, nic.name, entry.name, decision, tuple(applied or ()))

    def _forget_unselected(self, selected: set[str]) -> None:
        for pci in self._managed - selected:
            self.status.drop_pf(pci)
        self._managed &= selected


class ReconcileLoop:
    """The daemon's reconciler thread: a pass at start, on policy change, on PF events."""

    def __init__(self, reconciler: Reconciler, policy_path: str | os.PathLike[str],
                 resync: float = RESYNC, netlink: bool = True) -> None:
        self.reconciler = reconciler
        self.netlink = netlink  # off for a sysfs tree that is not the kernel's
        self.path = Path(policy_path)
        self.resync = resync
        self.policy: Policy | None = None
        self.passes = 0
        self._file = WatchedFile(self.path, load, (PolicyError,), self._policy_error)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pass_done = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self, subscribe: Callable[[Callable[[Node, frozenset[str]], None]], Any]
              | None = None) -> None:
        """Start the thread; ``subscribe`` is LiveInventory.subscribe, to hear of PF events."""
        if subscribe is not None:
            subscribe(self._on_inventory)
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def trigger(self) -> None:
        self._wake.set()

    def wait_for_pass(self, after: int, timeout: float) -> bool:
        """Block until more than ``after`` passes have completed."""
        with self._pass_done:
            return self._pass_done.wait_for(lambda: self.passes > after, timeout)

    def _on_inventory(self, node: Node, changed: frozenset[str]) -> None:
        if any((nic := node.nic(key)) is None or nic.is_pf for key in changed):
            self._wake.set()

    def _run(self) -> None:
        # devlink queries must stay on the thread that opened them
        with Netlink() if self.netlink else contextlib.nullcontext() as netlink:
            scanner = Scanner(self.reconciler.sysfs, netlink, self.reconciler.hostname)
            last = 0.0
            while not self._stop.is_set():
                woken = self._wake.wait(timeout=1.0)
                if self._stop.is_set():
                    break
                if woken:
                    self._stop.wait(DEBOUNCE)
                    self._wake.clear()
                try:
                    changed = self._reload()
                except Exception as exc:  # the policy file must never end this thread
                    log.exception("policy reload failed")
                    self._policy_error(exc)
                    changed = False
                due = woken or changed or time.monotonic() - last >= self.resync
                if self.policy is None or not due:
                    continue
                last = time.monotonic()
                try:
                    self.reconciler.reconcile(self.policy, scanner)
                except Exception as exc:  # a bug must not end the thread that keeps PFs right
                    log.exception("reconcile pass failed")
                    self.reconciler.status.error("provision", f"reconcile pass failed: {exc}")
                with self._pass_done:
                    self.passes += 1
                    self._pass_done.notify_all()

    def _reload(self) -> bool:
        """Re-read the policy when its file changed (ConfigMap updates swap a symlink)."""
        if not self._file.check():
            return False
        self.policy = self._file.value
        assert self.policy is not None
        log.info("policy %s loaded: %d PF entries", self.path, len(self.policy.pfs))
        return True

    def _policy_error(self, exc: Exception) -> None:
        """Log it and put it on the status board (which the Node event recorder follows); the
        last good policy stays in force."""
        kept = "keeping the last good policy" if self.policy is not None else "no policy yet"
        log.error("policy not applied (%s): %s", kept, exc)
        self.reconciler.status.error("provision", f"policy not applied ({kept}): {exc}",
                                     str(self.path))
