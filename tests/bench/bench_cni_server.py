"""CNI socket under idle clients, the namespace hand-off, and shutdown with work in flight.

Prints one JSON object per line:
- VERSION round trip (connect, request, answer) with 0, 200 and 1,000 idle connections open;
- ``nodeagent.netns.run`` into a namespace (a hand-off to a namespace thread) against entering
  on the calling thread, as the agent did before (setns there and back);
- the time `nodeagent daemon` takes to exit on SIGTERM with a 600 s delegate in flight.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pyroute2 import netns as pyroute_netns

from cni.context import Context
from cni.server import CniServer
from cni.wire import Request, encode_request, read_response
from nodeagent import netns
from nodeagent.ipam.allocator import Ipam
from nodeagent.vfstate import VfState
from tests.bench.common import emit
from tests.waiting import wait_until

VERSION = Request("macvlan", {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.1.0"}')
ROUNDS = 200


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def ask(path: str, request: Request = VERSION, timeout: float = 10) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(encode_request(request))
        return read_response(sock).exit_status


def version_with_idle(root: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    server = CniServer(str(root / "run" / "agent.sock"),
                       context=Context(vfs=VfState(root / "state"), ipam=Ipam(root / "ipam")))
    server.start()
    idlers: list[socket.socket] = []
    try:
        for idle in (0, 200, 1000):
            while len(idlers) < idle:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(server.path)
                idlers.append(s)
            times = []
            for _ in range(ROUNDS):
                start = time.perf_counter()
                assert ask(server.path) == 0
                times.append((time.perf_counter() - start) * 1000)
            emit(bench=f"cni_socket_version_{idle}_idle", median=round(statistics.median(times), 3),
                 p99=round(p99(times), 3), max=round(max(times), 3), unit="ms")
    finally:
        for s in idlers:
            s.close()
        server.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _enter_on_caller(path: str, fn):  # the agent's way before: setns here and back
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        netns._setns(target)
        try:
            return fn()
        finally:
            netns._setns(home)
    finally:
        os.close(target)
        os.close(home)


def netns_handoff() -> None:
    name = f"nabns{secrets.token_hex(3)}"
    pyroute_netns.create(name)
    try:
        path = f"/run/netns/{name}"
        make = lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()  # noqa: E731
        results = {}
        for label, call in (("on_caller", lambda: _enter_on_caller(path, make)),
                            ("dedicated_thread", lambda: netns.run(path, make))):
            for _ in range(50):
                call()
            times = []
            for _ in range(2000):
                start = time.perf_counter()
                call()
                times.append((time.perf_counter() - start) * 1e6)
            results[label] = statistics.median(times)
        emit(bench="netns_enter_open_socket", ours=round(results["dedicated_thread"], 1),
             peer=round(results["on_caller"], 1), unit="us (median; peer: setns on the caller)",
             ratio=round(results["dedicated_thread"] / results["on_caller"], 3))
    finally:
        pyroute_netns.remove(name)


def sigterm_with_delegate(root: Path) -> None:
    bin_dir = root / "bin"
    bin_dir.mkdir()
    pidfile = root / "delegate.pid"
    slow = bin_dir / "slowipam"
    slow.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 600\n")
    slow.chmod(0o755)
    sock = root / "run2" / "agent.sock"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "nodeagent", "daemon", "--socket", str(sock),
           "--ipam-state-dir", str(root / "ipam2"), "--status-file", str(root / "status.json"),
           "--policy", str(root / "none.yaml"), "--device-plugin-config", str(root / "none.json"),
           "--no-publish-node-state", "--metrics-address", f"127.0.0.1:{port}"]
    env = dict(os.environ, NODEAGENT_STATE_DIR=str(root / "cni2"))
    daemon = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: _answers(str(sock)), 30)
        config = {"cniVersion": "1.1.0", "name": "slownet", "type": "macvlan",
                  "ipam": {"type": "slowipam"}}
        request = Request("macvlan", {"CNI_COMMAND": "STATUS", "CNI_PATH": str(bin_dir)},
                          json.dumps(config).encode())
        threading.Thread(target=lambda: _quiet(ask, str(sock), request, 30), daemon=True).start()
        assert wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10)
        start = time.perf_counter()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        emit(bench="daemon_sigterm_with_delegate_in_flight",
             ours=round((time.perf_counter() - start) * 1000, 1), unit="ms to exit",
             exit_status=daemon.returncode)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def _answers(path: str) -> bool:
    try:
        return ask(path, timeout=1) == 0
    except OSError:
        return False


def _quiet(fn, *args):
    try:
        return fn(*args)
    except Exception:
        return None


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="nabsrv", dir="/tmp"))
    try:
        version_with_idle(root)
        netns_handoff()
        sigterm_with_delegate(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
