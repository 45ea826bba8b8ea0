"""`nodeagent daemon` as the DaemonSet runs it: probes, the status file, policy errors, exit."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.waiting import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_daemon_serves_probes_status_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    policy = tmp_path / "policy.yaml"
    policy.write_text("pfs: [{nicSelector: {pfNames: [nat-none]}, numVfs: lots}]")
    status_file = tmp_path / "status.json"
    sock = tmp_path / "run" / "agent.sock"
    cmd = [sys.executable, "-m", "nodeagent", "--log-level", "info", "daemon",
           "--socket", str(sock), "--status-file", str(status_file), "--policy", str(policy),
           "--metrics-address", f"127.0.0.1:{port}", "--ipam-state-dir", str(tmp_path / "ipam"),
           "--device-plugin-config", str(tmp_path / "none.json"), "--no-publish-node-state",
           "--log-format", "json"]
    env = dict(os.environ, NODEAGENT_STATE_DIR=str(tmp_path / "cni"))
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_until(lambda: _ready(base), 30), "the daemon did not become ready"
        assert get(f"{base}/healthz")[0] == 200
        assert "nodeagent_build_info" in get(f"{base}/metrics")[1]
        assert sock.is_socket() and sock.stat().st_mode & 0o777 == 0o600
        snap = wait_until(lambda: _policy_error(status_file), 30)
        assert snap, "no policy error in the status file"
        assert "numVfs: must be an integer" in snap["message"]
        out = subprocess.run([sys.executable, "-m", "nodeagent", "status", "--status-file",
                              str(status_file)], capture_output=True, text=True, check=True)
        assert "policy not applied" in out.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any("policy not applied" in line["msg"] for line in lines), err
    assert not sock.exists(), "the socket is removed at exit"


def _ready(base: str) -> bool:
    try:
        return get(f"{base}/readyz")[0] == 200
    except OSError:
        return False


def _policy_error(path: Path) -> dict | None:
    try:
        errors = json.loads(path.read_text())["recentErrors"]
    except (OSError, ValueError):
        return None
    return next((e for e in errors if "policy not applied" in e["message"]), None)
