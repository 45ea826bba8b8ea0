"""Applying nft scripts inside a network namespace, in-process through libnftables.

libnftables (Debian package libnftables1, pulled in by ``nftables``) opens its netlink socket
when its context is made, so the context is made on a namespace thread
(:func:`nodeagent.netns.run`) that has entered the pod's namespace (no ``ip netns exec``, no
fork) and then kept: its socket stays in that namespace, usable from any thread. A script is
one ``nft -f`` buffer, which the kernel applies as one transaction: all of it or nothing.

A thin ctypes wrapper of seven calls, no dependency: the PyPI packages (``pip-nftables``,
last release 2024-01) are copies of the upstream binding, itself ctypes over the same library.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from nodeagent import netns as netns_mod
from nodeagent.policy.compile import FAMILY, TABLE

LIBRARY = "libnftables.so.1"
#: Namespace contexts kept open at most (one netlink socket each); the least recently used
#: beyond it are closed.
MAX_CONTEXTS = 4096
#: Not nft syntax: running it drops the context's ruleset cache (see _Context.run).
DROP_CACHE = b"!\n"

_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


class NftError(Exception):
    """libnftables is missing, or the kernel refused a script (the message is nft's)."""


def _library() -> ctypes.CDLL:
    global _lib
    with _lib_lock:
        if _lib is None:
            try:
                lib = ctypes.CDLL(LIBRARY)
            except OSError as exc:
                raise NftError(f"{LIBRARY} cannot be loaded ({exc}); install the Debian"
                               " package nftables (libnftables1)") from None
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            _lib = lib
        return _lib


def available() -> bool:
    """Whether libnftables can be loaded on this machine."""
    try:
        _library()
    except NftError:
        return False
    return True


class _Context:
    """One libnftables context, its netlink socket bound to one namespace for good."""

    def __init__(self, pointer: int, identity: tuple[int, int]) -> None:
        self.pointer = pointer
        self.identity = identity  # (st_dev, st_ino) of the namespace when it was made
        self.lock = threading.Lock()
        self.freed = False

    def run(self, script: str) -> str:
        lib = _library()
        with self.lock:
            if self.freed:
                raise _Stale()
            rc = lib.nft_run_cmd_from_buffer(self.pointer, script.encode())
            # Reading rewinds both buffers, so one call's text never leaks into the next.
            output = (lib.nft_ctx_get_output_buffer(self.pointer) or b"").decode(errors="replace")
            error = (lib.nft_ctx_get_error_buffer(self.pointer) or b"").decode(errors="replace")
            if rc == 0:
                # libnftables keeps its copy of the ruleset after a command that succeeds,
                # ~0.5 MB per table (four 8,192-bucket hashes): 1,000 kept contexts would
                # hold 0.5 GB, and a new one faults its pages in (half of a first apply's
                # time). A command that fails to parse drops it (libnftables releases the
                # cache on any error); the kernel sees only two generation queries.
                lib.nft_run_cmd_from_buffer(self.pointer, DROP_CACHE)
                lib.nft_ctx_get_output_buffer(self.pointer)
                lib.nft_ctx_get_error_buffer(self.pointer)
        if rc != 0:
            raise NftError(error.strip() or f"nft failed ({rc})")
        return output

    def free(self) -> None:
        with self.lock:
            if not self.freed:
                self.freed = True
                _library().nft_ctx_free(self.pointer)


class _Stale(Exception):
    """The context was freed while a caller waited for it: make a new one."""


_contexts: OrderedDict[str, _Context] = OrderedDict()
_contexts_lock = threading.Lock()
_making = threading.Lock()


class _NoRoom(Exception):
    """The socket of a context made now would get a descriptor libnftables cannot select."""


def _new_context(identity: tuple[int, int]) -> _Context:
    """Made in the calling thread's namespace (the socket stays bound to it). Raises _NoRoom
    when the descriptor it would get is FD_CEILING or above: checked here, with the
    namespace file open, just before the socket is made (the slack below 1024 covers the
    descriptors other threads open meanwhile)."""
    if _lowest_free_fd() >= FD_CEILING:
        raise _NoRoom()
    lib = _library()
    pointer = lib.nft_ctx_new(0)
    if not pointer:
        raise NftError("libnftables could not make a context (netlink socket)")
    lib.nft_ctx_buffer_output(pointer)
    lib.nft_ctx_buffer_error(pointer)
    return _Context(pointer, identity)


def _identity(path: str | None) -> tuple[int, int]:
    st = os.stat(path or "/proc/thread-self/ns/net")
    return st.st_dev, st.st_ino


def _context(netns: str | None) -> _Context:
    key = "" if netns is None else netns_mod.netns_path(netns)
    identity = _identity(key or None)
    with _contexts_lock:
        ctx = _contexts.get(key)
        if ctx is not None and ctx.identity == identity:
            _contexts.move_to_end(key)
            return ctx
    if ctx is not None:  # the path now holds another namespace: the old one is gone
        _drop(key, ctx)
    while True:
        try:
            # One at a time: between the check and the socket, another apply thread's
            # namespace file would take the descriptor checked, and such slips above the
            # ceiling would pile up in kept contexts until one crossed 1024.
            with _making:
                made = netns_mod.run(netns, lambda: _new_context(identity))
            break
        except _NoRoom:
            _evict_one()
            _wait_for_room()
    evicted = []
    with _contexts_lock:
        old = _contexts.pop(key, None)
        if old is not None:
            evicted.append(old)
        _contexts[key] = made
        while len(_contexts) > MAX_CONTEXTS:
            evicted.append(_contexts.popitem(last=False)[1])
    for ctx in evicted:
        ctx.free()
    return made


def _drop(key: str, ctx: _Context | None = None) -> None:
    with _contexts_lock:
        current = _contexts.get(key)
        if current is None or (ctx is not None and current is not ctx):
            return
        del _contexts[key]
    _close_soon(current)  # off the caller's path (a CNI DEL)


def apply(netns: str | None, script: str) -> str:
    """Run ``script`` (one atomic transaction) in network namespace ``netns`` (a name under
    /run/netns or a path; None: the agent's own); nft's output. Raises NftError, or OSError
    when the namespace cannot be opened or entered.

    The namespace's libnftables context is kept for the next call (see :func:`release`):
    closing its socket after a deletion waits for an RCU grace period (~10 ms), keeping it
    makes a replacement cost ~0.2 ms."""
    for _ in range(3):
        ctx = _context(netns)
        try:
            return ctx.run(script)
        except _Stale:
            continue
    raise NftError("the namespace's libnftables context kept being released")


def clear(netns: str | None) -> None:
    """Remove the agent's table from ``netns`` (nothing happens if there is none), and
    release its context."""
    try:
        apply(netns, f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n")
    finally:
        release(netns)


def release(netns: str | None) -> None:
    """Close the context kept for ``netns`` (on a background thread, within milliseconds:
    right after a deletion the close waits ~12 ms in the kernel). Call it when the pod's
    attachments go (CNI DEL): an open netlink socket holds its namespace, and the
    interfaces in it, alive."""
    _drop("" if netns is None else netns_mod.netns_path(netns))


def prune() -> int:
    """Release the contexts of namespaces that are gone (or whose path now holds another
    one); how many. A safety net for :func:`release` calls that never came."""
    with _contexts_lock:
        items = list(_contexts.items())
    stale = 0
    for key, ctx in items:
        try:
            alive = _identity(key or None) == ctx.identity and (not key or netns_mod.usable(key))
        except OSError:
            alive = False
        if not alive:
            _drop(key, ctx)
            stale += 1
    return stale


def kept() -> int:
    """How many namespace contexts are kept open."""
    with _contexts_lock:
        return len(_contexts)


def show(netns: str | None) -> str | None:
    """The agent's table in ``netns`` as nft lists it, None when there is none."""
    try:
        return apply(netns, f"list table {FAMILY} {TABLE}")
    except NftError as exc:
        if "No such file or directory" in str(exc):
            return None
        raise


#: libnftables 1.0.x waits on its netlink socket with select(): a socket numbered FD_SETSIZE
#: (1024) or above aborts the whole process (glibc's fortified FD_SET), and the agent raises
#: its descriptor limit. A context is made only while the lowest free descriptor is below
#: this; kept contexts are closed to make room (see _evict_one).
FD_CEILING = 1000
_evictions = 0


def _lowest_free_fd() -> int:
    fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    os.close(fd)
    return fd


def _evict_one() -> None:
    """Close a context, for a descriptor below FD_CEILING: the most recently used one. The
    controller's batches visit the pods in the same order each time; with more pods than
    room, closing the least recently used would close the very context needed next, every
    time (a whole batch of new contexts), where this closes only as many as are missing."""
    with _contexts_lock:
        if not _contexts:
            raise NftError(f"{FD_CEILING} file descriptors are open: libnftables cannot use"
                           " a socket numbered 1024 or above (it would abort the agent)")
        _, ctx = _contexts.popitem(last=True)
        global _evictions
        _evictions += 1
    _close_soon(ctx)


def _wait_for_room(timeout: float = 0.05) -> None:
    """Until the socket of a context made now would get a descriptor below FD_CEILING (the
    one being closed is free), or ``timeout``; the namespace thread checks again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)  # as the namespace file
        try:
            if _lowest_free_fd() < FD_CEILING:
                return
        finally:
            os.close(held)
        time.sleep(0.0002)


#: Closing sleeps in the kernel: several at once cost no CPU.
_closers = ThreadPoolExecutor(max_workers=16, thread_name_prefix="nft-close")


def _close_soon(ctx: _Context) -> None:
    """Free ``ctx`` on a closer thread. Closing a socket whose namespace just had a deletion
    waits ~12 ms for an RCU grace period, its descriptor free after ~0.2 ms: that wait is
    the closers', not the caller's. Here when the interpreter is exiting."""
    try:
        _closers.submit(ctx.free)
    except RuntimeError:  # no new threads at interpreter exit
        ctx.free()


def evictions() -> int:
    """How many contexts were closed so far to keep descriptors below FD_CEILING (each one
    costs its namespace a new context at its next change)."""
    return _evictions
