"""DEL's link removal, finished after the reply (docs/teardown.md).

Deleting a link waits in the kernel for an RCU grace period: most of a DEL. So DEL makes the
link unobservable with cheap requests (a tombstone name, no addresses), answers, and a
teardown worker deletes it afterwards. Until then the link is *in flight*, keyed by its pod
namespace's identity (device, inode) and its interface name: an ADD, CHECK or DEL for that
namespace and name settles it first (finishes the deletion itself if no worker has started
it, else waits for it), GC settles every one. Each link in flight has a journal file (0600,
written before the rename) that the agent replays when it starts, so a crash between the
reply and the deletion leaves no link behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cni.context import Netlink
from nodeagent import fileio

log = logging.getLogger(__name__)

#: Names of links whose deletion is in flight: this prefix and 10 hex digits (IFNAMSIZ - 1).
TOMBSTONE_PREFIX = "nadel"
#: How long a settle waits for a deletion a worker is running (the kernel's, milliseconds).
SETTLE_TIMEOUT = 10.0
#: How long :meth:`Teardown.stop` finishes deletions before leaving them to the journal.
STOP_TIMEOUT = 2.0
#: Workers wait for this long without a new DEL before deleting (a deletion holds the
#: kernel's rtnl lock through a grace period, and every request of a burst needs that lock),
#: but never leave a link in flight longer than MAX_DEFER (a 200-pod burst lasts ~2 s here).
QUIET, MAX_DEFER = 0.25, 5.0

Key = tuple[int, int, str]


def netns_key(netns: str, ifname: str) -> Key | None:
    """(device, inode) of the namespace at ``netns`` and ``ifname``; None when it is gone."""
    try:
        st = os.stat(netns)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, ifname)


@dataclass
class Record:
    """One link in flight, as journaled."""

    netns: str
    dev: int
    ino: int
    ifname: str
    index: int
    tombstone: str


@dataclass(eq=False)
class _InFlight:
    record: Record
    pod: Netlink
    renamed: bool
    done: threading.Event = field(default_factory=threading.Event)
    claimed: bool = False
    since: float = field(default_factory=time.monotonic)


class Teardown:
    """Links in flight between DEL's reply and their deletion.

    ``journal_dir``: where each one's journal file lives (None: no journal, for tests that
    need none); the daemon's is next to its socket, on ``/run``'s tmpfs (the journal must
    outlive the agent, not the machine, and a file created and removed per DEL on the state
    directory's disk would ride in every IPAM fsync's journal commit). ``earlier``: journal
    directories of earlier agent versions, replayed at start too. ``workers``: threads
    deleting links (0: deletions run only when settled or at :meth:`stop`, which the crash
    tests use to hold a link in flight).
    """

    def __init__(self, journal_dir: str | os.PathLike[str] | None = None,
                 workers: int = 2, *, earlier: Sequence[str | os.PathLike[str]] = ()) -> None:
        self.journal_dir = None if journal_dir is None else Path(journal_dir)
        self.earlier = [Path(d) for d in earlier]
        self.workers = workers
        self._lock = threading.Lock()
        self._inflight: dict[Key, _InFlight] = {}
        self._queue: queue.SimpleQueue[_InFlight | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        #: False once the kernel refused to rename a live link (before Linux 6.2): not asked
        #: again, a request saved per DEL.
        self.live_rename = True
        self._last_retired = 0.0
        self._stopping = False

    # -- life cycle -------------------------------------------------------------------------

    def start(self, open_netlink: Callable[[str | None], Netlink]) -> int:
        """Replay the journal a previous agent left (before any request is served), then
        start the workers. Returns how many links the replay deleted."""
        deleted = self.replay(open_netlink)
        self._threads = [threading.Thread(target=self._work, name=f"teardown-{i}", daemon=True)
                         for i in range(self.workers)]
        for thread in self._threads:
            thread.start()
        return deleted

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Finish the deletions in flight for up to ``timeout`` seconds; any left stay in the
        journal for the next start."""
        self._stopping = True
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []
        while True:
            with self._lock:
                entry = next((e for e in self._inflight.values() if not e.claimed), None)
                if entry is not None:
                    entry.claimed = True
            if entry is None:
                return
            self._finish(entry)

    def pending(self) -> int:
        """Links whose deletion has not finished."""
        with self._lock:
            return len(self._inflight)

    # -- DEL --------------------------------------------------------------------------------

    def retire(self, pod: Netlink, netns: str, ifname: str, index: int) -> None:
        """Make link ``index`` (``ifname`` in ``pod``, the namespace at ``netns``) invisible
        and queue its deletion; the teardown owns ``pod`` from here (closes it)."""
        key = netns_key(netns, ifname)
        if key is None:  # the namespace went while we looked: so did the link
            pod.close()
            return
        record = Record(netns, key[0], key[1], ifname, index,
                        TOMBSTONE_PREFIX + secrets.token_hex(5))
        try:
            self._journal(record)
            renamed = _strip(pod, index, record.tombstone if self.live_rename else None)
            if renamed is False:
                self.live_rename = False
        except BaseException:
            pod.close()
            self._forget(record)
            raise
        if renamed is None:  # already gone
            pod.close()
            self._forget(record)
            return
        entry = _InFlight(record, pod, renamed)
        with self._lock:
            self._inflight[key] = entry
        self._last_retired = entry.since
        if self._threads:
            self._queue.put(entry)

    # -- ADD, CHECK, DEL, GC ----------------------------------------------------------------

    def settle(self, netns: str, ifname: str) -> None:
        """Finish (or wait for) the deletion of a link in flight at ``netns``/``ifname``."""
        if not self._inflight:  # the common case, without a stat
            return
        key = netns_key(netns, ifname)
        if key is not None:
            self._settle(key)

    def settle_all(self) -> None:
        """Finish (or wait for) every deletion in flight now."""
        with self._lock:
            keys = list(self._inflight)
        for key in keys:
            self._settle(key)

    def _settle(self, key: Key) -> None:
        with self._lock:
            entry = self._inflight.get(key)
            if entry is None:
                return
            mine = not entry.claimed
            entry.claimed = True
        if mine:
            self._finish(entry)
        elif not entry.done.wait(SETTLE_TIMEOUT):
            log.warning("deleting %s (was %s) in %s takes more than %g s",
                        entry.record.tombstone, entry.record.ifname, entry.record.netns,
                        SETTLE_TIMEOUT)

    # -- the workers ------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is None:
                return
            self._wait_for_quiet(entry)
            with self._lock:
                if entry.claimed:
                    continue
                entry.claimed = True
            self._finish(entry)

    def _wait_for_quiet(self, entry: _InFlight) -> None:
        """Let a burst of DELs pass before taking the kernel's lock for a deletion."""
        while not entry.claimed and not self._stopping:
            now = time.monotonic()
            wait = min(self._last_retired + QUIET, entry.since + MAX_DEFER) - now
            if wait <= 0:
                return
            time.sleep(wait)

    def _finish(self, entry: _InFlight) -> None:
        record = entry.record
        try:
            link = entry.pod.link_brief(record.tombstone if entry.renamed else record.ifname)
            if link is not None and link.index == record.index:
                entry.pod.link_delete(record.index)
            self._forget(record)
        except Exception:  # left to the journal: the next start tries again
            log.exception("deleting %s (was %s) in %s", record.tombstone, record.ifname,
                          record.netns)
        finally:
            entry.pod.close()
            with self._lock:
                key = (record.dev, record.ino, record.ifname)
                if self._inflight.get(key) is entry:  # not a later DEL's of the same name
                    del self._inflight[key]
            entry.done.set()

    # -- the journal ------------------------------------------------------------------------

    def _path(self, record: Record) -> Path | None:
        return None if self.journal_dir is None else self.journal_dir / record.tombstone

    def _journal(self, record: Record) -> None:
        """Not fsynced: it must outlive the agent, not the machine; the pod namespaces it
        names do not outlive a reboot either."""
        path = self._path(record)
        if path is not None:
            fileio.make_private_dir(path.parent)
            fileio.replace_file(path, json.dumps(asdict(record)).encode(), mode=0o600,
                                durable=False)

    def _forget(self, record: Record) -> None:
        path = self._path(record)
        if path is not None:
            path.unlink(missing_ok=True)

    def replay(self, open_netlink: Callable[[str | None], Netlink]) -> int:
        """Delete the links a previous agent left in flight (its journal, and an earlier
        version's); returns how many."""
        deleted = 0
        for directory in self.earlier:
            deleted += _replay_dir(directory, open_netlink)
            with contextlib.suppress(OSError):  # not empty: what could not be finished stays
                directory.rmdir()
        if self.journal_dir is not None:
            deleted += _replay_dir(self.journal_dir, open_netlink)
        return deleted


def _replay_dir(directory: Path, open_netlink: Callable[[str | None], Netlink]) -> int:
    if not directory.is_dir():
        return 0
    fileio.restrict(directory, 0o700)
    deleted = 0
    for path in sorted(directory.iterdir()):
        if not path.name.startswith(TOMBSTONE_PREFIX):
            continue  # a temporary file of an interrupted write: its record was never used
        try:
            record = Record(**json.loads(path.read_bytes()))
            deleted += _replay_one(record, open_netlink)
        except (ValueError, TypeError) as exc:
            log.warning("dropped an unreadable teardown journal file %s: %s", path, exc)
        except OSError as exc:
            log.warning("could not finish the teardown in %s: %s", path, exc)
            continue
        path.unlink(missing_ok=True)
    for path in directory.glob(".*.tmp"):
        path.unlink(missing_ok=True)
    return deleted


def _replay_one(record: Record, open_netlink: Callable[[str | None], Netlink]) -> int:
    """Delete ``record``'s link if its namespace is still the one journaled (the same path
    may name another namespace by now) and the link still has one of its names."""
    if netns_key(record.netns, record.ifname) != (record.dev, record.ino, record.ifname):
        return 0  # the namespace is gone, and its links with it
    with open_netlink(record.netns) as pod:
        link = pod.link(index=record.index)
        if link is None or link.get("IFLA_IFNAME") not in (record.tombstone, record.ifname):
            return 0
        deleted = pod.link_delete(record.index)
    if deleted:
        log.info("deleted %s (was %s) in %s, left in flight by the previous agent",
                 record.tombstone, record.ifname, record.netns)
    return int(deleted)


def _strip(pod: Netlink, index: int, tombstone: str | None) -> bool | None:
    """Give the link its tombstone name, which frees its pod name at once, and remove its
    addresses (and so their subnet routes): the addresses IPAM has just released answer
    nowhere on this node once DEL has replied. One dump and one batch of requests.

    True: renamed; False: not renamed (``tombstone`` None, or the kernel renames only links
    that are down, before Linux 6.2, and taking it down costs a grace period itself: it keeps
    its name until deleted, ADD, CHECK and DEL settle it first); None: the link is gone."""
    code = pod.retire_link(index, tombstone)
    if code in (errno.ENODEV, errno.ENOENT):
        return None
    return tombstone is not None and code == 0
