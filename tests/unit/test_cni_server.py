"""The agent's CNI socket under idle, slow and too many clients (cni/server.py)."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cni.context import Context
from cni.server import CniServer
from cni.wire import Request, Response, encode_request, read_response
from nodeagent.ipam.allocator import Ipam
from nodeagent.vfstate import VfState

VERSION = Request("macvlan", {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.1.0"}')


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose paths fit a unix socket address."""
    path = Path(tempfile.mkdtemp(prefix="nasrv", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def serving(root: Path, **kwargs: object) -> Iterator[CniServer]:
    server = CniServer(str(root / "run" / "agent.sock"), allowed_uid=_uid(),
                       context=Context(vfs=VfState(root / "state"), ipam=Ipam(root / "ipam")),
                       **kwargs)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _uid() -> int:
    return os.getuid()


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    return sock


def ask(path: str, request: Request = VERSION, timeout: float = 5) -> Response:
    with connect(path) as sock:
        sock.settimeout(timeout)
        sock.sendall(encode_request(request))
        return read_response(sock)


def closed_by_server(sock: socket.socket, timeout: float = 5) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except (TimeoutError, BlockingIOError):
        return False


@pytest.fixture
def many_fds() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"needs 4096 file descriptors (hard limit {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("idle", [200, 1000])
def test_version_is_answered_while_many_clients_sit_idle(
    short_dir: Path, many_fds: None, idle: int
) -> None:
    with serving(short_dir, workers=4) as server:
        idlers = [connect(server.path) for _ in range(idle)]
        try:
            response = ask(server.path)  # times out (5 s) if idle clients hold the workers
            assert response.exit_status == 0, response
            assert "supportedVersions" in json.loads(response.stdout)
            assert not any(closed_by_server(s, timeout=0) for s in idlers[-10:])
        finally:
            for s in idlers:
                s.close()


def test_a_client_that_does_not_finish_its_request_is_dropped(short_dir: Path) -> None:
    with serving(short_dir, workers=1, request_timeout=0.3) as server, \
            connect(server.path) as slow:
        slow.sendall(encode_request(VERSION)[:10])
        assert closed_by_server(slow), "a partial request was kept past its deadline"
        assert ask(server.path).exit_status == 0


def test_a_client_dripping_bytes_is_dropped_at_the_whole_request_deadline(
    short_dir: Path
) -> None:
    """The deadline covers the whole request, not each read: a byte per 0.1 s does not keep
    the connection open past it."""
    frame = encode_request(VERSION)
    with serving(short_dir, workers=1, request_timeout=0.5) as server, \
            connect(server.path) as slow:
        closed = False
        for byte in frame[:-1]:
            try:
                slow.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if closed_by_server(slow, timeout=0.1):
                closed = True
                break
        assert closed, "a client sending one byte at a time kept its connection"


def test_beyond_the_connection_bound_the_oldest_waiting_client_is_closed(
    short_dir: Path
) -> None:
    with serving(short_dir, workers=2, max_connections=8) as server:
        idlers = [connect(server.path) for _ in range(8)]
        try:
            assert ask(server.path).exit_status == 0
            assert closed_by_server(idlers[0]), "the oldest idle connection is still open"
            assert not closed_by_server(idlers[-1], timeout=0.1)
            assert server.open_connections() <= 8
        finally:
            for s in idlers:
                s.close()


def test_a_malformed_frame_is_dropped_without_waiting_for_more(short_dir: Path) -> None:
    with serving(short_dir, workers=1) as server, connect(server.path) as bad:
        bad.sendall(b"NAC1" + (1 << 30).to_bytes(4, "big"))  # argv0 of 1 GiB announced
        assert closed_by_server(bad, timeout=2)
        assert ask(server.path).exit_status == 0


def test_a_stopped_server_releases_its_socket_to_the_next_one(short_dir: Path) -> None:
    with serving(short_dir) as first:
        assert ask(first.path).exit_status == 0
    with serving(short_dir) as second:
        assert ask(second.path).exit_status == 0


def test_a_socket_left_by_a_dead_server_is_taken_over(short_dir: Path) -> None:
    path = short_dir / "run" / "agent.sock"
    path.parent.mkdir()
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()  # the file stays, nobody listens: as after a SIGKILL
    with serving(short_dir) as server:
        assert ask(server.path).exit_status == 0


def test_a_new_server_waits_for_a_stopping_one_and_takes_over(short_dir: Path) -> None:
    """A rolling update: the new agent starts while the old one is still stopping."""
    with serving(short_dir) as old:
        successor = CniServer(old.path, allowed_uid=_uid(),
                              context=Context(vfs=VfState(short_dir / "state"),
                                              ipam=Ipam(short_dir / "ipam")))
        started = threading.Event()
        thread = threading.Thread(target=lambda: (successor.start(), started.set()))
        thread.start()
        assert not started.wait(0.3), "started while another agent was serving"
    try:
        assert started.wait(5), "the successor did not take the socket over"
        assert ask(successor.path).exit_status == 0
    finally:
        thread.join(5)
        successor.stop()
