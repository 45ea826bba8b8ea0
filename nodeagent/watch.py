"""The live inventory: a node snapshot kept current from kernel events.

Two reader threads turn kernel events into work items: rtnetlink (links and default routes, in
the agent's network namespace) and udev (PCI functions appearing, leaving, binding or unbinding
drivers; netdevs appearing). One worker thread owns the scanner, coalesces the items, rescans only
the NICs they touch and publishes a new snapshot to subscribers. A full rescan runs at start and
when events were lost (netlink buffer overrun); there is no polling.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyudev

from nodeagent import netns as netns_mod
from nodeagent.discovery import ScanContext, Scanner
from nodeagent.model import Node
from nodeagent.netlink import EventSocket, Netlink
from nodeagent.sysfs import Sysfs

log = logging.getLogger(__name__)

Subscriber = Callable[[Node, frozenset[str]], None]
UDEV_CONTROL = "/run/udev/control"


@dataclass(frozen=True)
class _Item:
    """One unit of work for the worker: what an event was about."""

    kind: str  # "pci", "netdev", "routes", "resync"
    name: str | None = None
    ifindex: int | None = None


_STOP = _Item("stop")


class LiveInventory:
    """Discovery that follows the kernel. ``start()`` returns once the first full scan is done.

    ``netns`` selects the network namespace whose links are followed (default: the agent's own);
    ``netlink=False`` and ``udev=False`` turn event sources off (fixture trees, tests).
    """

    def __init__(
        self,
        sysfs: Sysfs,
        *,
        netns: str | None = None,
        netlink: bool = True,
        udev: bool = True,
        quiet_period: float = 0.005,
    ) -> None:
        self.sysfs = sysfs
        self.netns = netns
        self.use_netlink = netlink
        self.use_udev = udev
        self.quiet_period = quiet_period
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._snapshot: Node | None = None
        self._threads: list[threading.Thread] = []
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- public API -------------------------------------------------------------------------

    @property
    def snapshot(self) -> Node:
        with self._lock:
            if self._snapshot is None:
                raise RuntimeError("LiveInventory.start() has not completed")
            return self._snapshot

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(node, changed_keys)`` after every change; returns an unsubscribe."""
        with self._lock:
            self._subscribers.append(callback)
        return lambda: self._unsubscribe(callback)

    def _unsubscribe(self, callback: Subscriber) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._subscribers.remove(callback)

    def wait_for(self, predicate: Callable[[Node], bool], timeout: float) -> Node | None:
        """Block until a snapshot satisfies ``predicate``; None on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._snapshot is None or not predicate(self._snapshot):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)
            return self._snapshot

    def resync(self) -> None:
        """Ask for a full rescan (recovery)."""
        self._queue.put(_Item("resync"))

    def start(self, timeout: float = 30.0) -> Node:
        sources: list[tuple[str, Callable[[], None]]] = [("worker", self._work)]
        if self.use_netlink:
            sources.append(("netlink", self._read_netlink(EventSocket(self.netns))))
        if self.use_udev:
            reader = self._udev_reader()
            if reader is not None:
                sources.append(("udev", reader))
        for name, target in sources:
            thread = threading.Thread(target=target, name=f"inventory-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if not self._ready.wait(timeout):
            self.stop()
            raise TimeoutError("the initial inventory scan did not finish")
        if self._error is not None:
            self.stop()
            raise self._error
        return self.snapshot

    def stop(self) -> None:
        self._queue.put(_STOP)
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> LiveInventory:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- worker -----------------------------------------------------------------------------

    def _work(self) -> None:
        netlink: Netlink | None = None
        try:
            # pyroute2's synchronous sockets must live in the thread that uses them.
            netlink = Netlink(self.netns) if self.use_netlink else None
            scanner = Scanner(self.sysfs, netlink)
            self._publish(scanner.scan(), frozenset())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            if netlink is not None:
                netlink.close()
            return
        self._ready.set()
        try:
            while True:
                items = self._drain()
                if _STOP in items:
                    return
                try:
                    self._apply(scanner, items)
                except Exception:
                    log.exception("inventory update failed; rescanning the node")
                    time.sleep(0.5)
                    self.resync()
        finally:
            if netlink is not None:
                netlink.close()

    def _drain(self) -> set[_Item]:
        """The next item and everything that follows it within the quiet period."""
        items = {self._queue.get()}
        while True:
            try:
                items.add(self._queue.get(timeout=self.quiet_period))
            except queue.Empty:
                return items

    def _apply(self, scanner: Scanner, items: set[_Item]) -> None:
        current = self.snapshot
        if any(item.kind == "resync" for item in items):
            node = scanner.scan()
            changed = {nic.key for nic in node.nics} ^ {nic.key for nic in current.nics} | {
                nic.key for nic in node.nics if current.nic(nic.key) != nic
            }
            self._publish(node, frozenset(changed))
            return
        ctx = scanner.context()
        keys: set[str] = set()
        for item in items:
            keys.update(self._keys_for(scanner, ctx, current, item))
        if not keys:
            return
        updates = scanner.scan_nics(keys, ctx)
        changed = frozenset(k for k, nic in updates.items() if current.nic(k) != nic)
        if changed:
            self._publish(current.replace({k: updates[k] for k in changed}), changed)

    @staticmethod
    def _keys_for(scanner: Scanner, ctx: ScanContext, current: Node, item: _Item) -> set[str]:
        """NIC keys an event may have changed: where the device is now and where it was."""
        if item.kind == "pci":
            return {k for k in (scanner.owner_key(pci_address=item.name, ctx=ctx),
                                current.owner_of_pci(item.name or "")) if k}
        if item.kind == "netdev":
            return {k for k in (scanner.owner_key(netdev=item.name, ctx=ctx),
                                current.owner_of_netdev(item.name, item.ifindex)) if k}
        if item.kind == "routes":
            return {
                nic.key
                for nic in current.nics
                if any(n.default_route != (n.ifindex in ctx.carrying) for n in nic.netdevs)
            }
        return set()

    def _publish(self, node: Node, changed: frozenset[str]) -> None:
        with self._changed:
            self._snapshot = node
            subscribers = list(self._subscribers)
            self._changed.notify_all()
        for callback in subscribers:
            try:
                callback(node, changed)
            except Exception:
                log.exception("inventory subscriber %r failed", callback)

    # -- event readers ----------------------------------------------------------------------

    def _read_netlink(self, events: EventSocket) -> Callable[[], None]:
        def run() -> None:
            try:
                while self._wait_readable(events.fileno()):
                    try:
                        changes = events.changes()
                    except OSError as exc:
                        if exc.errno == errno.ENOBUFS:
                            log.warning("netlink events were lost; rescanning the node")
                            self.resync()
                            continue
                        raise
                    for change in changes:
                        self._queue.put(_Item("netdev", change.name, change.index)
                                        if change.link else _Item("routes"))
            except Exception:
                log.exception("netlink event reader stopped; the inventory no longer follows links")
            finally:
                events.close()

        return run

    def _udev_reader(self) -> Callable[[], None] | None:
        # With udevd running, its events come after renames and rules; without it, the kernel's.
        source = "udev" if os.path.exists(UDEV_CONTROL) else "kernel"
        try:
            monitor = netns_mod.run(
                self.netns, lambda: pyudev.Monitor.from_netlink(pyudev.Context(), source=source))
            monitor.filter_by("pci")
            monitor.filter_by("net")
            monitor.set_receive_buffer_size(4 << 20)
            monitor.start()
        except Exception as exc:
            log.warning("udev events unavailable (%s); following netlink only", exc)
            return None

        def run() -> None:
            try:
                while self._wait_readable(monitor.fileno()):
                    device = monitor.poll(timeout=0)
                    if device is None:
                        continue
                    kind = "pci" if device.subsystem == "pci" else "netdev"
                    self._queue.put(_Item(kind, device.sys_name))
            except Exception:
                log.exception("udev event reader stopped; rescanning the node")
                self.resync()

        return run

    def _wait_readable(self, fd: int) -> bool:
        """Block until ``fd`` is readable (True) or the inventory is stopping (False)."""
        readable, _, _ = select.select([fd, self._stop_r], [], [])
        return self._stop_r not in readable

