"""SIGTERM ends `nodeagent daemon` at once, whatever CNI work is in flight, and the next agent
takes the socket over."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cni.context import Context
from cni.server import CniServer
from cni.wire import Request, Response, WireError, encode_request, read_response
from nodeagent.ipam.allocator import Ipam
from nodeagent.vfstate import VfState
from tests.waiting import alive, wait_until

VERSION = Request("macvlan", {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.1.0"}')


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="nastop", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def ask(path: Path, request: Request, timeout: float = 5) -> Response:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(encode_request(request))
        return read_response(sock)


def answers(path: Path) -> bool:
    try:
        return ask(path, VERSION, timeout=1).exit_status == 0
    except (OSError, WireError):
        return False


def test_sigterm_stops_the_daemon_with_a_delegate_in_flight(short_dir: Path) -> None:
    bin_dir = short_dir / "bin"
    bin_dir.mkdir()
    pidfile = short_dir / "delegate.pid"
    slow = bin_dir / "slowipam"
    slow.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 600\n")
    slow.chmod(0o755)
    sock = short_dir / "run" / "agent.sock"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "nodeagent", "daemon", "--socket", str(sock),
           "--ipam-state-dir", str(short_dir / "ipam"), "--status-file",
           str(short_dir / "status.json"), "--policy", str(short_dir / "none.yaml"),
           "--device-plugin-config", str(short_dir / "none.json"), "--no-publish-node-state",
           "--metrics-address", f"127.0.0.1:{port}"]
    env = dict(os.environ, NODEAGENT_STATE_DIR=str(short_dir / "cni"))
    daemon = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: answers(sock), 30), "the daemon did not serve"
        config = {"cniVersion": "1.1.0", "name": "slownet", "type": "macvlan",
                  "ipam": {"type": "slowipam"}}
        request = Request("macvlan", {"CNI_COMMAND": "STATUS", "CNI_PATH": str(bin_dir)},
                          json.dumps(config).encode())
        outcome: list[object] = []
        client = threading.Thread(target=lambda: outcome.append(_try(sock, request)))
        client.start()
        assert wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10)
        delegate = int(pidfile.read_text())
        started = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=10)  # before: waited for the delegate (600 s), then its 120 s cap
        stopped_in = time.monotonic() - started
        client.join(10)
    finally:
        if daemon.poll() is None:
            daemon.kill()
        _, err = daemon.communicate()
    print(f"SIGTERM with a delegate in flight: exited in {stopped_in * 1000:.0f} ms")
    assert stopped_in < 2.0 + 1.0, err  # 2 s is the promise; 1 s for a loaded CI machine
    assert wait_until(lambda: not alive(delegate), 5), "the delegate outlived the daemon"
    assert not isinstance(outcome[0], Response) or outcome[0].exit_status != 0, outcome

    server = CniServer(str(sock), allowed_uid=0,
                       context=Context(vfs=VfState(short_dir / "cni"),
                                       ipam=Ipam(short_dir / "ipam")))
    server.start()  # the socket was released (or is taken over if it was left behind)
    try:
        assert answers(sock)
    finally:
        server.stop()


def _try(sock: Path, request: Request) -> Response | Exception:
    try:
        return ask(sock, request, timeout=20)
    except (OSError, WireError) as exc:
        return exc


def test_a_sigkilled_daemon_socket_is_taken_over(short_dir: Path) -> None:
    sock = short_dir / "run" / "agent.sock"
    code = ("import time, sys; from cni.server import CniServer; "
            f"CniServer({str(sock)!r}).start(); print('up', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parents[2])
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        assert answers(sock)
    finally:
        proc.kill()
        proc.wait()
    assert sock.is_socket()  # left behind
    server = CniServer(str(sock), context=Context(vfs=VfState(short_dir / "cni"),
                                                  ipam=Ipam(short_dir / "ipam")))
    server.start()
    try:
        assert answers(sock)
    finally:
        server.stop()
