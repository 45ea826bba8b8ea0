"""The agent's CNI socket: requests from the shim, served by a pool of worker threads."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from cni.context import Context
from cni.dispatch import handle
from cni.wire import WireError, encode_response, read_request
from nodeagent.status import StatusBoard

if TYPE_CHECKING:
    from nodeagent.metrics import Metrics

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/nodeagent/agent.sock"
#: A client that does not send its whole request within this time is dropped.
REQUEST_TIMEOUT = 30.0


class CniServer:
    """Serves CNI requests on a root-only unix socket until :meth:`stop`."""

    def __init__(self, path: str = DEFAULT_SOCKET, workers: int = 32,
                 context: Context | None = None, allowed_uid: int = 0, *,
                 metrics: Metrics | None = None, status: StatusBoard | None = None) -> None:
        """``metrics``: count and time requests, report IPAM usage; ``status``: keep the
        attachments' records (either may be None)."""
        self.path = path
        self.context = context or Context()
        self.allowed_uid = allowed_uid
        self.metrics = metrics
        self.status = status
        if metrics is not None:
            metrics.track_ipam(self.context.ipam)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cni")
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        self._remove_stale_socket()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others can connect
        try:
            sock.bind(self.path)
        finally:
            os.umask(old_umask)
        sock.listen(256)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="cni-accept", daemon=True)
        self._thread.start()
        log.info("serving CNI on %s", self.path)

    def listening(self) -> bool:
        """Accepting requests (a readiness and liveness check)."""
        return self._sock is not None and self._thread is not None and self._thread.is_alive()

    def _remove_stale_socket(self) -> None:
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise FileExistsError(f"{self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.path)
        except OSError:
            os.unlink(self.path)  # left by a daemon that died
        else:
            raise RuntimeError(f"another agent is already serving {self.path}")
        finally:
            probe.close()

    def stop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._sock = None
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _accept(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # stopped
            self._pool.submit(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _ = struct.unpack("3i", creds)
            if uid != self.allowed_uid:
                log.warning("refused a CNI request from pid %d uid %d", pid, uid)
                return
            conn.settimeout(REQUEST_TIMEOUT)
            try:
                request = read_request(conn)
            except (WireError, OSError) as exc:
                log.warning("dropped a malformed CNI request from pid %d: %s", pid, exc)
                return
            conn.settimeout(None)
            response = handle(self.context, request.env, request.stdin, request.argv0,
                              metrics=self.metrics, status=self.status)
            try:
                conn.sendall(encode_response(response))
            except OSError as exc:
                log.warning("the shim (pid %d) left before its answer: %s", pid, exc)
