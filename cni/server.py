"""The agent's CNI socket: one reader thread assembles requests, worker threads serve them.

The reader multiplexes every connection with epoll and never blocks on a client: each
connection must deliver its whole request within REQUEST_TIMEOUT of being accepted, and a
worker only ever receives a complete, parsed request. Open connections are bounded
(``max_connections``): beyond it the oldest one still sending its request is closed to make
room, so idle or slow clients can never keep the workers or the socket from a real request.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import queue
import resource
import selectors
import socket
import stat
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cni import delegates
from cni.context import Context
from cni.delegates import DEPTH_VARIABLE
from cni.dispatch import handle
from cni.wire import Request, WireError, encode_response, parse_request
from nodeagent import netns
from nodeagent.status import StatusBoard

if TYPE_CHECKING:
    from nodeagent.metrics import Metrics

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/nodeagent/agent.sock"
#: A client must send its whole request within this time of connecting, or it is dropped.
REQUEST_TIMEOUT = 10.0
#: A client must take its answer within this time.
SEND_TIMEOUT = 10.0
#: Workers for requests that come from the agent's own delegates: they must never wait behind
#: the requests that wait on them.
NESTED_WORKERS = 4
#: Connections open at once (sending a request, queued, or being served).
MAX_CONNECTIONS = 2048
#: Bytes of unfinished requests buffered across all connections.
MAX_BUFFERED = 64 << 20
#: How long :meth:`CniServer.stop` waits for requests in flight (their delegates are killed).
STOP_TIMEOUT = 1.0
#: How long :meth:`CniServer.start` waits for a previous agent to release the socket.
TAKEOVER_TIMEOUT = 5.0


@dataclass
class _Pending:
    """A connection still sending its request."""

    sock: socket.socket
    pid: int
    deadline: float
    buffer: bytearray = field(default_factory=bytearray)


class CniServer:
    """Serves CNI requests on a root-only unix socket until :meth:`stop`."""

    def __init__(self, path: str = DEFAULT_SOCKET, workers: int = 32,
                 context: Context | None = None, allowed_uid: int = 0, *,
                 metrics: Metrics | None = None, status: StatusBoard | None = None,
                 max_connections: int = MAX_CONNECTIONS,
                 request_timeout: float = REQUEST_TIMEOUT) -> None:
        """``metrics``: count and time requests, report IPAM usage; ``status``: keep the
        attachments' records (either may be None)."""
        self.path = path
        self.context = context or Context()
        self.allowed_uid = allowed_uid
        self.metrics = metrics
        self.status = status
        self.workers = workers
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        if metrics is not None:
            metrics.track_ipam(self.context.ipam)
        self._sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._reader: threading.Thread | None = None
        self._workers: list[threading.Thread] = []
        self._queue: _Queue = queue.SimpleQueue()
        self._nested: _Queue = queue.SimpleQueue()
        self._pending: collections.OrderedDict[int, _Pending] = collections.OrderedDict()
        self._buffered = 0
        self._served = 0  # connections handed to the workers and not yet closed
        self.handled = 0  # requests handed to the workers since the start
        self._served_lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = -1, -1

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        self._take_over()
        _raise_fd_limit(self.max_connections + 256)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others can connect
        try:
            sock.bind(self.path)
        finally:
            os.umask(old_umask)
        st = os.lstat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        sock.listen(1024)
        sock.setblocking(False)
        self._sock = sock
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping.clear()
        self._workers = [
            threading.Thread(target=self._work, args=(self._queue,), name=f"cni-{i}", daemon=True)
            for i in range(self.workers)]
        self._workers += [
            threading.Thread(target=self._work, args=(self._nested,), name=f"cni-nested-{i}",
                             daemon=True)
            for i in range(NESTED_WORKERS)]
        for worker in self._workers:
            worker.start()
        self._reader = threading.Thread(target=self._read_loop, name="cni-reader", daemon=True)
        self._reader.start()
        log.info("serving CNI on %s", self.path)

    def listening(self) -> bool:
        """Accepting requests (a readiness and liveness check)."""
        return (self._sock is not None and self._reader is not None and self._reader.is_alive()
                and not self._stopping.is_set())

    def open_connections(self) -> int:
        """Connections sending a request, queued or being served."""
        return len(self._pending) + self._served

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop accepting, kill running delegates, and give requests in flight ``timeout``
        seconds; workers still busy after that are abandoned (daemon threads)."""
        deadline = time.monotonic() + timeout
        self._stopping.set()
        # While we still listen, a successor waits, so the path is ours: unlink it now. Once
        # the listener closes, a successor binds a new socket that may get our freed inode
        # number, and comparing inodes could no longer tell the two apart.
        self._unlink_own_socket()
        delegates.stop_all()
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
        if self._reader is not None:
            self._reader.join(timeout=max(0.0, deadline - time.monotonic()))
        for _ in self._workers:
            self._queue.put(None)
            self._nested.put(None)
        for worker in self._workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
        busy = sum(w.is_alive() for w in self._workers)
        if busy:
            log.warning("stopped with %d CNI requests still in flight", busy)
        delegates.restart()  # this process may serve again (tests); at exit they die with it
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1

    def _take_over(self) -> None:
        """Remove a socket a dead agent left; wait a little for a stopping one to go."""
        deadline = time.monotonic() + TAKEOVER_TIMEOUT
        while True:
            try:
                self._remove_stale_socket()
                return
            except _Live:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"another agent is already serving {self.path}") from None
                time.sleep(0.1)

    def _remove_stale_socket(self) -> None:
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise FileExistsError(f"{self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        probe.settimeout(1.0)
        try:
            probe.connect(self.path)
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # left by a daemon that died
        except OSError:
            raise _Live from None  # a full backlog: someone is serving it
        else:
            raise _Live
        finally:
            probe.close()

    def _unlink_own_socket(self) -> None:
        """Remove the socket file, unless it is already a successor's."""
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    # -- the reader ------------------------------------------------------------------------

    def _read_loop(self) -> None:
        assert self._sock is not None
        listener = self._sock
        selector = selectors.EpollSelector()
        selector.register(listener, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                timeout = None
                if self._pending:
                    oldest = next(iter(self._pending.values()))
                    timeout = max(0.0, oldest.deadline - time.monotonic())
                for key, _ in selector.select(timeout):
                    if key.fileobj is listener:
                        self._accept(listener, selector)
                    elif key.fileobj == self._wake_r:
                        with contextlib.suppress(OSError):
                            os.read(self._wake_r, 64)
                    else:
                        self._receive(key.fd, selector)
                self._expire(selector)
        except Exception:
            log.exception("the CNI socket reader failed; no more requests are served")
        finally:
            for fd in list(self._pending):
                self._drop(fd, selector)
            selector.close()
            listener.close()  # new clients get ECONNREFUSED: the next agent can take over

    def _accept(self, listener: socket.socket, selector: selectors.BaseSelector) -> None:
        for _ in range(64):  # a burst, then serve the others
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE) and self._pending:
                    log.warning("out of file descriptors: closing the oldest waiting client")
                    self._drop(next(iter(self._pending)), selector)
                    continue
                log.warning("accepting a CNI connection: %s", exc)
                return
            pid, uid, _ = struct.unpack(
                "3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
            if uid != self.allowed_uid:
                log.warning("refused a CNI request from pid %d uid %d", pid, uid)
                conn.close()
                continue
            if self.open_connections() >= self.max_connections:
                if not self._pending:
                    log.warning("refused a CNI connection from pid %d: %d requests in flight",
                                pid, self._served)
                    conn.close()
                    continue
                fd, victim = next(iter(self._pending.items()))
                log.warning("%d connections open: closed the oldest waiting one (pid %d)",
                            self.max_connections, victim.pid)
                self._drop(fd, selector)
            conn.setblocking(False)
            pending = _Pending(conn, pid, time.monotonic() + self.request_timeout)
            self._pending[conn.fileno()] = pending
            selector.register(conn, selectors.EVENT_READ)
            # The shim sends its request right after connecting: often it is there already,
            # and waiting for epoll to say so costs another wake-up of this thread.
            self._receive(conn.fileno(), selector)

    def _receive(self, fd: int, selector: selectors.BaseSelector) -> None:
        pending = self._pending.get(fd)
        if pending is None:
            return
        try:
            chunk = pending.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("dropped a CNI request from pid %d: %s", pending.pid, exc)
            self._drop(fd, selector)
            return
        if not chunk:
            log.log(logging.WARNING if pending.buffer else logging.DEBUG,
                    "pid %d closed its CNI connection after %d bytes of a request",
                    pending.pid, len(pending.buffer))
            self._drop(fd, selector)
            return
        pending.buffer += chunk
        self._buffered += len(chunk)
        try:
            parsed = parse_request(pending.buffer)
        except WireError as exc:
            log.warning("dropped a malformed CNI request from pid %d: %s", pending.pid, exc)
            self._drop(fd, selector)
            return
        if parsed is None:
            while self._buffered > MAX_BUFFERED and self._pending:
                oldest = next(iter(self._pending))
                log.warning("%d bytes of unfinished requests: closed the oldest",
                            self._buffered)
                self._drop(oldest, selector)
            return
        self._forget(fd, selector)
        with self._served_lock:
            self._served += 1
            self.handled += 1
        request = parsed[0]
        # Asked by one of our delegates: served apart, so the request waiting on it cannot
        # starve it (it delegates no further; cni/ipam.py).
        lane = self._nested if DEPTH_VARIABLE in request.env else self._queue
        lane.put((pending.sock, pending.pid, request))

    def _expire(self, selector: selectors.BaseSelector) -> None:
        now = time.monotonic()
        while self._pending:
            fd, oldest = next(iter(self._pending.items()))
            if oldest.deadline > now:
                return
            log.warning("dropped a CNI request from pid %d: not complete within %g s"
                        " (%d bytes received)", oldest.pid, self.request_timeout,
                        len(oldest.buffer))
            self._drop(fd, selector)

    def _forget(self, fd: int, selector: selectors.BaseSelector) -> _Pending:
        pending = self._pending.pop(fd)
        self._buffered -= len(pending.buffer)
        selector.unregister(pending.sock)
        return pending

    def _drop(self, fd: int, selector: selectors.BaseSelector) -> None:
        self._forget(fd, selector).sock.close()

    # -- the workers -----------------------------------------------------------------------

    def _work(self, lane: _Queue) -> None:
        netns.allow_on_this_thread()  # a pod's sockets open here; Stranded ends this loop
        while True:
            item = lane.get()
            if item is None:
                return
            conn, pid, request = item
            try:
                self._serve(conn, pid, request)
            except netns.Stranded:
                return  # left in a pod's namespace: this worker ends (netns logged it)
            except Exception:
                log.exception("serving a CNI request from pid %d", pid)
            finally:
                conn.close()
                with self._served_lock:
                    self._served -= 1

    def _serve(self, conn: socket.socket, pid: int, request: Request) -> None:
        if self._stopping.is_set():
            return  # the shim reports code 11; the runtime retries with the next agent
        response = handle(self.context, request.env, request.stdin, request.argv0,
                          metrics=self.metrics, status=self.status)
        conn.setblocking(True)
        conn.settimeout(SEND_TIMEOUT)
        try:
            conn.sendall(encode_response(response))
        except OSError as exc:
            log.warning("the shim (pid %d) left before its answer: %s", pid, exc)


_Queue = queue.SimpleQueue[tuple[socket.socket, int, Request] | None]


class _Live(Exception):
    """Another agent answers on the socket."""


def _raise_fd_limit(wanted: int) -> None:
    """Room for ``wanted`` descriptors, as far as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
