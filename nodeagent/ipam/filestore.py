"""Node-local store: one directory per network, one JSON state file, ``flock`` between processes.

Layout under the state dir (``/var/lib/nodeagent/ipam``, or host-local's ``dataDir``)::

    <network>/lock               flock(2) target; held for every read-modify-write
    <network>/reservations.json  all reservations of the network
    <network>/.reservations.json.<pid>.<thread>.tmp
                                 the next state while it is written; one that a process
                                 killed mid-write left is removed by the next process to
                                 take the lock (writers hold it while theirs exists)

Every change rewrites the state file as write-temp + fsync + rename + fsync(dir), under the
lock, so a process killed at any instant leaves the old state or the new one: never a
half-written record, never an address given twice, and a dual-stack claim lands whole or not
at all. The lock dies with its holder (the kernel drops a dead process's flock).
Claims and releases that threads of one process make at the same time are committed together
(group commit): one thread runs every waiting change, each all or nothing, and one write
carries them all; every caller returns once the write holding its change is on disk.

The state is root's alone: directories 0700, files 0600, set when created and made so again
when a store first touches an existing directory (:func:`secure_state_dir` does a whole state
dir at agent start). Reservations name pods, and ``flock`` needs only an open descriptor, so a
user who could open the lock file could stall every ADD on the network. (A descriptor opened
before the modes were tightened keeps its power until its process exits: a lock timeout names
the holding pid, from /proc/locks.)

The file starts with a fresh random nonce; a process keeps the last state it parsed and
re-parses only when the first bytes differ, so an uncontended allocation costs one small
read, one write and two fsyncs. A directory that host-local used (files named by address,
holding ``<containerID>\\r\\n<ifname>``) is imported once, so its addresses stay taken; the
legacy files are left as they are.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from ipaddress import ip_address
from pathlib import Path
from typing import Any, TypeVar

from nodeagent.fileio import make_private_dir, replace_file, restrict
from nodeagent.ipam.errors import IO_FAILURE, TRY_AGAIN_LATER, IpamError
from nodeagent.ipam.pool import Pool, PoolView
from nodeagent.ipam.store import (
    Claim,
    Owner,
    Reservation,
    Store,
    exhausted,
    from_record,
    in_use,
    other_address,
    to_record,
)

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/var/lib/nodeagent/ipam")
DIR_MODE, FILE_MODE = 0o700, 0o600
STATE_FILE = "reservations.json"
LOCK_FILE = "lock"
_TEMP_FILES = f".{STATE_FILE}.*.tmp"  # nodeagent.fileio.replace_file's names for STATE_FILE
FORMAT_VERSION = 1
_HEAD = 48  # '{"nonce":"<32 hex>"' fits: equal heads mean an unchanged file

Key = tuple[str, str]  # (scope, address)
T = TypeVar("T")


def _key(r: Reservation) -> Key:
    return r.scope, str(r.ip)


class _State(dict[Key, Reservation]):
    """The reservations a transaction edits; ``changed`` maps each touched key to its value
    before the transaction (None: absent), so committing costs O(changes), not O(state)."""

    def __init__(self, base: dict[Key, Reservation]) -> None:
        super().__init__(base)
        self.changed: dict[Key, Reservation | None] = {}
        self.undo: list[tuple[Key, Reservation | None]] = []  # every edit's value before it

    def __setitem__(self, key: Key, value: Reservation) -> None:
        if key not in self.changed:
            self.changed[key] = self.get(key)
        self.undo.append((key, self.get(key)))
        super().__setitem__(key, value)

    def __delitem__(self, key: Key) -> None:
        if key not in self.changed:
            self.changed[key] = self[key]
        self.undo.append((key, self[key]))
        super().__delitem__(key)

    def rollback(self, savepoint: int) -> None:
        """Undo the edits made since ``len(self.undo)`` was ``savepoint``."""
        while len(self.undo) > savepoint:
            key, before = self.undo.pop()
            if before is None:
                super().pop(key, None)
            else:
                super().__setitem__(key, before)


class _Op:
    """One change waiting for the next group commit."""

    def __init__(self, fn: Callable[[_State], Any]) -> None:
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False


class FileStore(Store):
    def __init__(
        self,
        state_dir: Path | str,
        network: str,
        *,
        lock_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.network = network
        self.dir = Path(state_dir) / network
        self.lock_timeout = lock_timeout
        self._clock = clock
        self._mutex = threading.Lock()  # threads of this process queue here, not on flock
        self._waiting: list[_Op] = []  # claims and releases for the next group commit
        self._group = threading.Condition()  # guards _waiting and _leading
        self._leading = False  # a thread is committing a group
        self._secured = False
        # The last state read or written, and what is derived from it: one JSON line per
        # record and a bitmap view per pool. Dropped when another process changed the file.
        self._head: bytes | None = None  # None: nothing cached
        self._state: dict[Key, Reservation] = {}
        self._lines: dict[Key, str] = {}
        self._views: dict[tuple[str, int, int], PoolView] = {}
        self._swept = False  # temporary files of killed writers removed (once per process)

    # -- Store API -----------------------------------------------------------------------

    def claim(self, claims: Sequence[Claim], owner: Owner) -> list[Reservation]:
        return self._grouped(lambda state: [self._claim_one(state, c, owner) for c in claims])

    def release(self, container_id: str, ifname: str) -> list[Reservation]:
        return self.release_many([(container_id, ifname)])

    def release_many(self, owners: Iterable[tuple[str, str]]) -> list[Reservation]:
        """Release several attachments in one write (GC)."""
        wanted = set(owners)
        ids = {cid for cid, _ in wanted}
        if not self.dir.is_dir():  # nothing was ever reserved here: nothing to create either
            return []

        def release(state: _State) -> list[Reservation]:
            gone = [
                r
                for r in state.values()
                if r.owner.container_id in ids and r.owner.key in wanted and not r.held
            ]
            for r in gone:
                if r.sticky and r.owner.pod:
                    state[_key(r)] = r.as_hold()
                else:
                    del state[_key(r)]
            return gone

        return self._grouped(release)

    def reservations(self) -> list[Reservation]:
        if not self.dir.is_dir():
            return []
        with self._transaction() as state:
            return sorted(state.values(), key=lambda r: (r.scope, r.ip.version, r.ip))

    def drop_holds(self, pod: str | None = None) -> list[Reservation]:
        if not self.dir.is_dir():
            return []
        with self._transaction() as state:
            gone = [r for r in state.values() if r.held and pod in (None, r.owner.pod)]
            for r in gone:
                del state[_key(r)]
        return gone

    # -- claiming ------------------------------------------------------------------------

    def _claim_one(self, state: _State, c: Claim, owner: Owner) -> Reservation:
        cid, ifname = owner.key
        mine = next(
            (
                r
                for r in state.values()
                if r.owner.container_id == cid and r.owner.ifname == ifname and c.covers(r)
            ),
            None,
        )
        if mine is not None:  # repeated ADD: same answer
            if c.ip is not None and mine.ip != c.ip:
                raise other_address(mine, c.ip)
            return mine
        now = int(self._clock())
        if c.ip is not None:
            pool = c.pool_of(c.ip)
            if pool is None:
                raise ValueError(f"{c.ip} is outside the claim's pools")  # config.py checks
            holder = state.get((c.scope(pool), str(c.ip)))
            if holder is not None and not (holder.held and owner.pod == holder.owner.pod):
                raise in_use(c.ip, holder)
            r = Reservation(c.ip, owner, c.set_id, c.scope(pool), c.sticky, now)
            return self._put(state, r)
        if c.sticky and owner.pod:
            hold = next(
                (r for r in state.values() if r.held and r.owner.pod == owner.pod and c.covers(r)),
                None,
            )
            if hold is not None:
                r = Reservation(hold.ip, owner, c.set_id, hold.scope, True, now)
                return self._put(state, r)
        for pool in c.pools:
            scope = c.scope(pool)
            slot = self._view(state, scope, pool).take_lowest()
            if slot is not None:
                ip = pool.address(slot)
                return self._put(state, Reservation(ip, owner, c.set_id, scope, c.sticky, now))
        raise exhausted(c)

    @staticmethod
    def _put(state: _State, r: Reservation) -> Reservation:
        state[_key(r)] = r
        return r

    def _view(self, state: _State, scope: str, pool: Pool) -> PoolView:
        key = (scope, int(pool.range.start), int(pool.range.end))
        view = self._views.get(key)
        if view is None or view.pool is not pool:
            view = self._views[key] = PoolView(pool)
            view.load(
                slot
                for r in state.values()
                if r.scope == scope and (slot := pool.slot(r.ip)) is not None
            )
        return view

    # -- state file ----------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[_State]:
        """Lock, load, let the caller edit the state, and persist it if it changed.

        An exception inside leaves the state file untouched (all or nothing).
        """
        with self._mutex, self._flock():
            if not self._swept:
                self._sweep()
            head = self._refresh()
            state = _State(self._state)
            try:
                yield state
                if state.changed or (not head and state):
                    self._write(state)
            except BaseException:
                self._forget()  # views and lines may hold a change that was not committed
                raise

    def _grouped(self, fn: Callable[[_State], T]) -> T:
        """Run ``fn`` on the state in the next group commit: the thread that takes the store
        runs every change waiting then, each all or nothing, and writes them in one file
        write (two fsyncs for the group, not for each); each caller returns once the write
        holding its change is on disk. Under a burst of ADDs or DELs the fsyncs, not the
        changes, were what every request queued for. Callers whose change was written wake
        at once (not after taking the store's mutex, which the next group's leader holds
        through its own write)."""
        op = _Op(fn)
        with self._group:
            self._waiting.append(op)
            while not op.done and self._leading:  # woken as soon as the write is on disk
                self._group.wait()
            lead = not op.done
            if lead:
                ops, self._waiting, self._leading = self._waiting, [], True
        if lead:
            try:
                with self._mutex:
                    self._commit_group(ops)
            finally:
                with self._group:
                    self._leading = False
                    self._group.notify_all()
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[no-any-return]

    def _commit_group(self, ops: list[_Op]) -> None:
        failed = False
        try:
            with self._flock():
                if not self._swept:
                    self._sweep()
                head = self._refresh()
                state = _State(self._state)
                for op in ops:
                    savepoint = len(state.undo)
                    try:
                        op.result = op.fn(state)
                    except BaseException as exc:  # this change only: the others go on
                        op.error, failed = exc, True
                        state.rollback(savepoint)
                if state.changed or (not head and state):
                    self._write(state)
        except BaseException as exc:  # nothing of the group was written
            for op in ops:
                op.error = op.error or exc
            failed = True
        finally:
            if failed:
                self._forget()  # views and lines may hold a change that was not committed
            for op in ops:
                op.done = True

    def _sweep(self) -> None:
        """Remove the temporary state files of writers killed mid-write. Writers hold the lock
        while theirs exists and we hold it now: every one there is garbage."""
        for path in self.dir.glob(_TEMP_FILES):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._swept = True

    def _forget(self) -> None:
        self._head, self._state, self._lines, self._views = None, {}, {}, {}

    @contextmanager
    def _flock(self) -> Iterator[None]:
        try:
            if not self._secured:
                make_private_dir(self.dir)
                secure_network_dir(self.dir)
                self._secured = True
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
            fd = os.open(self.dir / LOCK_FILE, flags, FILE_MODE)
        except OSError as exc:
            raise _io_error("cannot open", self.dir / LOCK_FILE, exc) from exc
        try:
            deadline = time.monotonic() + self.lock_timeout
            delay = 0.0002
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise IpamError(
                            TRY_AGAIN_LATER,
                            f"IPAM state of network {self.network} is locked by another process",
                            f"{self.dir / LOCK_FILE} held for over {self.lock_timeout:g} s"
                            + _holders(fd),
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.005)
            yield
        finally:
            os.close(fd)  # drops the lock

    def _refresh(self) -> bytes:
        """Bring the cached state up to date; returns its head (b"": no state file yet)."""
        path = self.dir / STATE_FILE
        try:
            with open(path, "rb") as f:
                head = f.read(_HEAD)
                if head == self._head:
                    return head
                data = head + f.read()
        except FileNotFoundError:
            self._forget()
            self._state, self._head = self._import_legacy(), b""
            return b""
        except OSError as exc:
            raise _io_error("cannot read", path, exc) from exc
        self._forget()
        try:
            doc = json.loads(data)
            records = [from_record(d) for d in doc["reservations"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise _io_error("corrupt state file", path, exc) from exc
        self._state = {_key(r): r for r in records}
        self._head = head
        return head

    def _write(self, state: _State) -> None:
        lines = self._lines
        for key in state.changed:
            if key in state:
                lines[key] = _line(state[key])
            else:
                lines.pop(key, None)
        if len(lines) != len(state):  # first write since the file was read
            lines.clear()
            lines.update((key, _line(r)) for key, r in state.items())
        nonce = os.urandom(16).hex()
        head = json.dumps({"nonce": nonce, "version": FORMAT_VERSION, "network": self.network})
        body = ",\n".join(lines.values())
        data = f'{head[:-1]}, "reservations": [\n{body}\n]}}\n'.encode()
        path = self.dir / STATE_FILE
        try:
            replace_file(path, data, mode=FILE_MODE)
        except OSError as exc:
            raise _io_error("cannot write", path, exc) from exc
        self._commit(state, data[:_HEAD])

    def _commit(self, state: _State, head: bytes) -> None:
        for key, before in state.changed.items():
            after = state.get(key)
            if (before is None) == (after is None):
                continue  # same address before and after (a hold taken back): still taken
            r = after or before
            assert r is not None
            for (scope, _, _), view in self._views.items():
                slot = view.pool.slot(r.ip) if r.scope == scope else None
                if slot is not None:
                    if after is None:
                        view.unmark(slot)
                    else:
                        view.mark(slot)
        state.changed = {}
        self._state, self._head = state, head

    def _import_legacy(self) -> dict[Key, Reservation]:
        """host-local's files: one per address, ``<containerID>\\r\\n<ifname>``."""
        state: dict[Key, Reservation] = {}
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return state
        for entry in entries:
            try:
                ip = ip_address(entry.name)
            except ValueError:
                continue
            try:
                lines = Path(entry.path).read_text(errors="replace").splitlines()
            except OSError:
                continue
            if lines and lines[0].strip():
                ifname = lines[1].strip() if len(lines) > 1 else ""
                r = Reservation(ip, Owner(lines[0].strip(), ifname))
                state[_key(r)] = r
        return state


def _line(r: Reservation) -> str:
    return json.dumps(to_record(r), separators=(",", ":"))


def _io_error(what: str, path: Path, exc: BaseException) -> IpamError:
    detail = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        detail += " (disk full)"
    return IpamError(IO_FAILURE, f"IPAM store: {what} {path}", detail)


def secure_network_dir(path: Path) -> None:
    """Root only: the network's directory 0700, its files (lock, state, host-local's legacy
    files) 0600 and owned by root. Costs a stat per entry when nothing needs changing."""
    restrict(path, DIR_MODE)
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                restrict(Path(entry.path), FILE_MODE)


def secure_state_dir(root: str | os.PathLike[str]) -> None:
    """Every network directory under ``root`` (agent start), and ``root`` itself when it is
    the agent's own default; a missing root is left to be created when first used."""
    root = Path(root)
    if not root.is_dir():
        return
    if root == DEFAULT_STATE_DIR:
        restrict(root, DIR_MODE)
    for entry in os.scandir(root):
        if entry.is_dir(follow_symlinks=False):
            try:
                secure_network_dir(Path(entry.path))
            except OSError as exc:
                log.warning("cannot restrict IPAM state %s to root: %s", entry.path, exc)


def _holders(fd: int) -> str:
    """Who holds the flock on ``fd``'s file, from /proc/locks (for the error's details)."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    try:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == inode:
                    pids.append(fields[4])
    except OSError:
        return ""
    return f"; held by pid {', '.join(pids)}" if pids else ""
