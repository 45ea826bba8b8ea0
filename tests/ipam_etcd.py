"""A throwaway etcd server on loopback for IPAM tests and benchmarks.

``EtcdServer`` runs Debian's ``etcd`` (package ``etcd-server``) on 127.0.0.1 with free ports
and a temporary data dir, can be stopped and started again on the same ports and data (an etcd
restart), and removes everything on ``close``. Nothing here listens beyond loopback.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def available() -> bool:
    return os.access(ETCD, os.X_OK)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdServer:
    def __init__(self, data_dir: Path | None = None) -> None:
        self._own_dir = data_dir is None
        self.dir = data_dir or Path(tempfile.mkdtemp(prefix="nodeagent-etcd-"))
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 15.0) -> None:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            ETCD,
            "--name", "ipam-test",
            "--data-dir", str(self.dir / "data"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"ipam-test={peer}",
            "--logger", "zap",
            "--log-level", "error",
        ]  # fmt: skip
        log = open(self.dir / "etcd.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}: {self.log_tail()}")
            if self._serving():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd did not come up in {timeout} s: {self.log_tail()}")

    def _serving(self) -> bool:
        """The v3 API answers a linearizable read (so a leader is elected)."""
        import grpc

        from nodeagent.ipam import etcdpb

        with grpc.insecure_channel(self.endpoint) as channel:
            call = channel.unary_unary("/etcdserverpb.KV/Range")
            try:
                call(etcdpb.range_request(b"/health"), timeout=0.5)
            except grpc.RpcError:
                return False
        return True

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join((self.dir / "etcd.log").read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
