"""Delegated IPAM plugins (cni/ipam.py, cni/delegates.py): never the agent calling itself,
never a chain without end, never a plugin that outlives its caller or its deadline."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cni import ipam
from cni.context import Context
from cni.install import PLUGIN_NAMES
from cni.protocol import CniRequest
from cni.server import CniServer
from cni.shim import shim_path
from cni.wire import Request, encode_request, read_response
from nodeagent.cnitypes.errors import INVALID_CONFIG, IO_FAILURE, CniError
from nodeagent.ipam.allocator import Ipam
from nodeagent.vfstate import VfState
from tests.waiting import alive, wait_until


def plugin(bin_dir: Path, name: str, body: str) -> Path:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def request(bin_dir: Path, ipam_type: str, *, kind: str = "macvlan", command: str = "ADD",
            env: dict[str, str] | None = None) -> CniRequest:
    config = {"cniVersion": "1.0.0", "name": "dnet", "type": kind, "ipam": {"type": ipam_type}}
    return CniRequest(command=command, config=config, version="1.0.0", container_id="c1",
                      netns="/var/run/netns/x", ifname="net1", path=(str(bin_dir),),
                      env={"CNI_COMMAND": command, **(env or {})},
                      stdin=json.dumps(config).encode())


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    return path


SERVED = [*sorted(set(PLUGIN_NAMES) - ipam.INLINE_TYPES), "nodeagent-cni-fallback",
          "nodeagent-cni-shim"]


@pytest.mark.parametrize("name", SERVED)
@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_a_name_the_agent_serves_is_refused_as_ipam(
    bin_dir: Path, tmp_path: Path, name: str, command: str
) -> None:
    marker = tmp_path / "ran"
    plugin(bin_dir, name, f"touch {marker}\necho '{{}}'\n")
    req = request(bin_dir, name, command=command)
    with pytest.raises(CniError) as err:
        ipam.add(Context(), req) if command == "ADD" else ipam.delete(Context(), req)
    assert err.value.code == INVALID_CONFIG
    assert "ipam.type" in err.value.msg and name in err.value.msg
    assert not marker.exists(), f"{name} was executed"


def test_a_plugin_naming_itself_as_ipam_is_refused(bin_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    plugin(bin_dir, "mybridge", f"touch {marker}\n")
    with pytest.raises(CniError) as err:
        ipam.delegate(request(bin_dir, "mybridge", kind="mybridge"), "mybridge", "ADD")
    assert err.value.code == INVALID_CONFIG and "itself" in err.value.msg
    assert not marker.exists()


def test_the_delegation_depth_is_counted_and_bounded(bin_dir: Path, tmp_path: Path) -> None:
    plugin(bin_dir, "echoipam", """
        echo "{\\"depth\\": \\"$NODEAGENT_DELEGATE_DEPTH\\"}"
    """)
    assert ipam.delegate(request(bin_dir, "echoipam"), "echoipam", "ADD") == {"depth": "1"}
    assert ipam.delegate(request(bin_dir, "echoipam", env={ipam.DEPTH_VARIABLE: "0"}),
                         "echoipam", "ADD") == {"depth": "1"}
    for depth in (str(ipam.MAX_DELEGATE_DEPTH), "99999", "-1", "x", ""):
        too_deep = request(bin_dir, "echoipam", env={ipam.DEPTH_VARIABLE: depth})
        with pytest.raises(CniError) as err:
            ipam.delegate(too_deep, "echoipam", "ADD")
        assert err.value.code == INVALID_CONFIG and "delegation chain" in err.value.msg


@pytest.mark.parametrize("code", ['"7x"', "true", "1e3", "null", "[7]", "-3", "4294967297"])
def test_a_delegate_error_code_that_is_not_a_code_is_reported_as_such(
    bin_dir: Path, code: str
) -> None:
    plugin(bin_dir, "badipam", f"""
        echo '{{"cniVersion": "1.0.0", "code": {code}, "msg": "nope"}}'
        exit 1
    """)
    with pytest.raises(CniError) as err:
        ipam.delegate(request(bin_dir, "badipam"), "badipam", "ADD")
    assert err.value.code == IO_FAILURE
    assert "invalid error code" in err.value.msg and "nope" in err.value.msg


def test_a_delegate_error_code_is_passed_on(bin_dir: Path) -> None:
    plugin(bin_dir, "busyipam", """
        echo '{"cniVersion": "1.0.0", "code": 11, "msg": "busy", "details": {"x": 1}}'
        exit 1
    """)
    with pytest.raises(CniError) as err:
        ipam.delegate(request(bin_dir, "busyipam"), "busyipam", "ADD")
    assert err.value.code == 11 and "busy" in err.value.msg and '"x"' in err.value.details


def test_a_delegate_past_its_deadline_is_killed_with_what_it_started(
    bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pids = tmp_path / "pids"
    plugin(bin_dir, "hangipam", f"""
        sleep 600 &
        echo $$ $! > {pids}
        wait
    """)
    monkeypatch.setattr(ipam, "DELEGATE_TIMEOUT", 0.5)
    with pytest.raises(CniError) as err:
        ipam.delegate(request(bin_dir, "hangipam"), "hangipam", "ADD")
    assert "did not finish within 0.5 s" in err.value.msg
    for pid in map(int, pids.read_text().split()):
        assert wait_until(lambda pid=pid: not alive(pid), 5), f"pid {pid} outlived its deadline"


def test_a_delegate_dies_with_its_caller(bin_dir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    plugin(bin_dir, "slowipam", f"echo $$ > {pidfile}\nexec sleep 600\n")
    caller = textwrap.dedent(f"""
        from cni import ipam
        from tests.unit.test_cni_delegate import request
        from pathlib import Path
        ipam.delegate(request(Path({str(bin_dir)!r}), "slowipam"), "slowipam", "ADD")
    """)
    proc = subprocess.Popen([sys.executable, "-c", caller], cwd=Path(__file__).parents[2])
    try:
        assert wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10)
        pid = int(pidfile.read_text())
        assert alive(pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert wait_until(lambda: not alive(pid), 5), "the delegate outlived the killed agent"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="nadel", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_chain_back_into_the_agent_ends_with_code_7(short_dir: Path) -> None:
    """A plugin under a name the agent does not know it serves (a copy of the shim) as IPAM:
    the chain comes back through the socket and is cut off at the depth bound, quickly,
    holding no worker: one worker is enough."""
    bin_dir = short_dir / "bin"
    bin_dir.mkdir()
    shutil.copy2(shim_path(), bin_dir / "loopipam")
    sock = short_dir / "agent.sock"
    server = CniServer(str(sock), workers=1, allowed_uid=os.getuid(),
                       context=Context(vfs=VfState(short_dir / "state"),
                                       ipam=Ipam(short_dir / "ipam")))
    server.start()
    try:
        config = {"cniVersion": "1.1.0", "name": "loopnet", "type": "macvlan",
                  "agentSocket": str(sock), "ipam": {"type": "loopipam"}}
        env = {"CNI_COMMAND": "STATUS", "CNI_PATH": str(bin_dir)}
        for _ in range(3):  # again and again: no worker is left stuck
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(20)
                client.connect(str(sock))
                client.sendall(encode_request(Request("macvlan", env,
                                                      json.dumps(config).encode())))
                response = read_response(client)
            doc = json.loads(response.stdout)
            assert response.exit_status == 1 and doc["code"] == INVALID_CONFIG, doc
            assert "delegation chain" in doc["msg"]
        started = time.monotonic()
        assert wait_until(lambda: server.open_connections() == 0, 5)
        assert time.monotonic() - started < 5
    finally:
        server.stop()
