"""Network namespace work (setns), on threads that never serve anything else.

setns(2) moves only the calling thread. So work in another namespace never runs on the
caller's thread: :func:`run` hands it to a namespace thread, which enters the namespace, runs
it, and switches back. If switching back fails, that thread is stuck in the pod's namespace: it
is discarded (it exits), the failure is logged, and :func:`healthy` turns False (the agent
reports not ready), as containernetworking's ``ns.Do`` does. Idle namespace threads are kept,
so a call costs a hand-off between two threads, no thread start and no fork.

Netlink sockets stay bound to the namespace they were created in, so the agent enters a
namespace only long enough to open its sockets and then works from its own namespace. That
short visit may run on the caller's thread (:func:`run_on_this_thread`, the CNI ADD path), on
threads that said they end when they get :class:`Stranded` (they could not switch back).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import queue
import stat
import threading
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file (Linux 4.11): the namespace's CLONE_* type
NETNS_RUN_DIR = "/run/netns"
#: Idle namespace threads kept for the next calls; more are started when needed.
MAX_IDLE = 8

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)
_idle: list[_Worker] = []
_idle_lock = threading.Lock()
_stranded = 0
_listeners: list[Callable[[str], None]] = []


def netns_path(netns: str) -> str:
    """A namespace given by name (``ip netns`` style, under /run/netns) or by path."""
    return netns if "/" in netns else os.path.join(NETNS_RUN_DIR, netns)


def is_netns(path: str) -> bool:
    """Whether ``path`` is a network namespace (a bind mount or /proc/<pid>/ns/net), not just
    any file: setns on anything else fails with EINVAL deep inside a request.
    Raises FileNotFoundError when there is nothing at ``path``."""
    if not stat.S_ISREG(os.stat(path).st_mode):  # nsfs files are regular; never open a FIFO
        return False                                # or a device on a runtime's word
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EINVAL):
            return False  # not a namespace file at all
        raise
    finally:
        os.close(fd)


def usable(path: str) -> bool:
    """A network namespace is at ``path`` now: not deleted, not a plain file left unmounted."""
    try:
        return is_netns(path)
    except OSError:
        return False


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def run(netns: str | None, fn: Callable[[], T]) -> T:
    """``fn()`` with the network namespace ``netns`` (a name or a path; None: ours, run
    here). Its result or exception is the caller's. Raises OSError if the namespace cannot be
    opened or entered."""
    if netns is None:
        return fn()
    target = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        job = _Job(target, fn)
        _take().jobs.put(job)
        job.done.wait()
    finally:
        os.close(target)
    if job.error is not None:
        raise job.error
    return job.value  # type: ignore[return-value]


def healthy() -> bool:
    """No namespace thread has ever failed to switch back (a readiness check)."""
    return _stranded == 0


def stranded() -> int:
    """How many namespace threads were discarded because they could not switch back."""
    return _stranded


def on_stranded(listener: Callable[[str], None]) -> None:
    """Call ``listener(message)`` whenever a namespace thread is discarded (status, events)."""
    _listeners.append(listener)


class _Job:
    def __init__(self, target: int, fn: Callable[[], Any]) -> None:
        self.target = target
        self.fn = fn
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()


class _Worker:
    """A thread that runs namespace jobs, back in its own namespace after each one."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="netns", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            while True:
                job = self.jobs.get()
                if not self._run(job, home):
                    return  # in the wrong namespace for good: this thread ends here
                kept = _park(self)
                job.done.set()
                if not kept:
                    return
        finally:
            os.close(home)

    @staticmethod
    def _run(job: _Job, home: int) -> bool:
        """Run one job; False when the thread could not get back to ``home``."""
        try:
            _setns(job.target)
        except OSError as exc:
            job.error = exc
            return True
        try:
            job.value = job.fn()
        except BaseException as exc:  # the caller's to handle, in the caller's thread
            job.error = exc
        try:
            _setns(home)
        except OSError as exc:
            _strand(exc)
            job.done.set()
            return False
        return True


def _take() -> _Worker:
    with _idle_lock:
        if _idle:
            return _idle.pop()
    return _Worker()


def _park(worker: _Worker) -> bool:
    with _idle_lock:
        if len(_idle) >= MAX_IDLE:
            return False
        _idle.append(worker)
        return True


def _strand(exc: OSError) -> None:
    global _stranded
    _stranded += 1
    message = (f"a namespace thread could not switch back to the agent's network namespace"
               f" ({exc}); it was discarded and serves nothing more")
    log.critical(message)
    for listener in list(_listeners):
        try:
            listener(message)
        except Exception:
            log.exception("reporting a stranded namespace thread")


class Stranded(BaseException):
    """The calling thread could not switch back to its own namespace after
    :func:`run_on_this_thread`: it must end, serving nothing more (a BaseException, so the
    usual ``except Exception`` of a serving loop lets it through)."""


_this_thread = threading.local()


def allow_on_this_thread() -> None:
    """Declare that the calling thread ends when :class:`Stranded` reaches its loop (the CNI
    server's workers): :func:`run_on_this_thread` may then enter namespaces on it."""
    _this_thread.may_strand = True


def run_on_this_thread(netns: str | None, fn: Callable[[], T]) -> T:
    """``fn()`` with the network namespace ``netns``; on the calling thread if it allowed it
    (:func:`allow_on_this_thread`), else as :func:`run`. On the calling thread there is no
    hand-off to a namespace thread and back (two thread wake-ups: ~0.1 ms on an idle node,
    milliseconds on a busy one, on every CNI ADD). Only for short work that blocks on nothing
    and starts no thread, such as opening a socket or a file there. Raises OSError as
    :func:`run`, and :class:`Stranded` (the failure is also logged and counted, as for a
    namespace thread) if the thread cannot switch back."""
    if netns is None:
        return fn()
    if not getattr(_this_thread, "may_strand", False):
        return run(netns, fn)
    target = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                return fn()
            finally:
                try:
                    _setns(home)
                except OSError as exc:
                    _strand(exc)
                    raise Stranded(str(exc)) from exc
        finally:
            os.close(home)
    finally:
        os.close(target)
