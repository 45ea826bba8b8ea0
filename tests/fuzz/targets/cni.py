"""The CNI request path: in process (cni.dispatch.handle) and through the installed shim to a
running CniServer. Property: an answer, and a failure is CNI error JSON with a spec (or the
agent's documented) code, never "internal error"; a failed ADD leaves no reservation, VF
record, stray file or link behind; the daemon keeps answering."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from cni.install import PLUGIN_NAMES
from tests.fuzz import jsongen, seeds
from tests.fuzz.cases import Broke, as_payload, escaped, escaped_kind, payload, show
from tests.fuzz.draw import Draw
from tests.fuzz.sandbox import Sandbox, confine, confine_stdin, env_safe, scratch, tag

ALLOWED_CODES = frozenset({1, 2, 3, 4, 5, 6, 7, 11, 50, 51, 100, 101})
COMMANDS = ("ADD", "ADD", "ADD", "ADD", "DEL", "DEL", "CHECK", "GC", "STATUS", "VERSION")
CIDR = re.compile(r"\A[0-9A-Fa-f:.]+/[0-9]{1,3}\Z")
PLAIN_IP = re.compile(r"\A[0-9A-Fa-f:.]+\Z")
#: How long one request may take in process (a lock wait is 2 s here).
SLOW = 15.0


# -- generation -------------------------------------------------------------------------------


def _env(draw: Draw) -> dict[str, str]:
    env = {
        "CNI_COMMAND": draw.choice(COMMANDS) if draw.bool(95) else draw.choice(
            ("", "add", "ADD\n", "VERSIONX", draw.text(6))),
        "CNI_CONTAINERID": draw.choice(("fz1", "fz1", "fz2", "c0ffee-1.x_y")) if draw.bool(90)
        else draw.choice(("", "fz1\n", "-x", "../x", "a" * 1100, draw.text(12))),
        "CNI_NETNS": draw.choice(("$NETNS",) * 6 + ("", "$NONS", "$FILE")),
        "CNI_IFNAME": draw.choice(("net1", "net1", "eth1", "net2")) if draw.bool(90)
        else draw.choice(("", "a" * 16, "a/b", "lo", "..", "n\n1", "fzm0", draw.text(8))),
        "CNI_PATH": draw.choice(("$BIN",) * 8 + ("", "/nonexistent")),
    }
    if draw.bool(50):
        pairs = [draw.choice((
            "IgnoreUnknown=1", "K8S_POD_NAMESPACE=default", "K8S_POD_NAME=pod-1",
            "K8S_POD_INFRA_CONTAINER_ID=fz1", "IP=10.10.0.15/24", "IP=10.10.0.15",
            "IP=fe80::1%eth0/64", "IP=10.99.0.1/24,fd00::9/64", "GATEWAY=10.10.0.1",
            "GATEWAY=fe80::ffff", "MAC=02:00:00:00:00:09", "MAC=ff:ff:ff:ff:ff:ff",
            "K8S_POD_NAME=Bad_Name")) if draw.bool(90) else draw.choice((
                "x", "=1", f"{draw.text(5)}={draw.text(8)}"))
            for _ in range(draw.int(1, 4))]
        env["CNI_ARGS"] = ";".join(pairs)
    if draw.bool(5):
        env[draw.choice(("CNI_FOO", "PATH", "NODEAGENT_SOCKET"))] = draw.text(10)
    return env


def stdin_spec(draw: Draw, configs: tuple[dict[str, Any], ...]) -> Any:
    kind = draw.int(0, 19)
    if kind < 16:
        doc = jsongen.mutate(draw, draw.choice(configs), draw.choice((0, 1, 1, 1, 2, 2, 3, 4)))
        if draw.bool(10) and isinstance(doc, dict):
            doc = {**doc, "cniVersion": draw.choice(("0.3.1", "0.4.0", "1.0.0", "2.0.0"))}
        return {"json": doc}
    if kind < 17:
        return as_payload(jsongen.nested(draw))
    if kind < 19:
        doc = jsongen.mutate(draw, draw.choice(configs), draw.int(0, 2))
        return as_payload(jsongen.mangle(draw, json.dumps(doc).encode()))
    return as_payload(draw.bytes(64))


def _call(draw: Draw) -> dict[str, Any]:
    plugin = draw.choice(PLUGIN_NAMES) if draw.bool(90) else draw.choice(("", draw.text(8)))
    return {"plugin": plugin, "env": _env(draw), "stdin": stdin_spec(draw, seeds.cni_configs())}


def generate(draw: Draw) -> dict[str, Any]:
    calls = [_call(draw)]
    for _ in range(draw.choice((0, 0, 1, 1, 2))):
        if draw.bool(60):  # the same attachment, another verb
            follow = json.loads(json.dumps(calls[0]))
            follow["env"]["CNI_COMMAND"] = draw.choice(("CHECK", "DEL", "DEL", "ADD", "GC"))
            doc = follow["stdin"].get("json") if isinstance(follow["stdin"], dict) else None
            if isinstance(doc, dict) and draw.bool(70):
                doc["prevResult"] = "$PREV_RESULT"
            calls.append(follow)
        else:
            calls.append(_call(draw))
    return {"calls": calls}


# -- running ----------------------------------------------------------------------------------


def _unparsable_addresses(result: dict[str, Any]) -> list[Any]:
    """Addresses and gateways of a result that are not plain CIDR / IP text (as Go's
    net.ParseCIDR and net.ParseIP, which runtimes use, read them: no zone, no spaces)."""
    bad = []
    for ip in result.get("ips") or []:
        address = ip.get("address") if isinstance(ip, dict) else ip
        gateway = ip.get("gateway") if isinstance(ip, dict) else None
        if not isinstance(address, str) or not CIDR.match(address):
            bad.append(address)
        else:
            try:
                ipaddress.ip_interface(address)
            except ValueError:
                bad.append(address)
        if gateway is not None and (not isinstance(gateway, str) or not PLAIN_IP.match(gateway)):
            bad.append(gateway)
    return bad


class _Logged(logging.Handler):
    """The last exception the handlers logged (dispatch logs what it turns into code 5)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.exc: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.exc = record.exc_info[1]


def _error_doc(stdout: bytes) -> Any:
    try:
        return json.loads(stdout)
    except ValueError:
        return None


class _Base:
    seeded = 150
    memory_mb: int | None = 1024
    timeout = 60.0

    def __init__(self) -> None:
        self.sandbox: Sandbox | None = None
        self.logged = _Logged()

    def generate(self, draw: Draw) -> dict[str, Any]:
        return generate(draw)

    def setup(self) -> None:
        name_tag = tag()
        self.sandbox = Sandbox(scratch(name_tag, "cni"), name_tag)
        logging.getLogger().addHandler(self.logged)

    def close(self) -> None:
        logging.getLogger().removeHandler(self.logged)
        if self.sandbox is not None:
            self.sandbox.close()

    def _request(self, call: dict[str, Any], state: Path, prev: Any
                 ) -> tuple[str, dict[str, str], bytes]:
        assert self.sandbox is not None
        env = {str(k): str(self.sandbox.substitute(v)) for k, v in call["env"].items()}
        spec = call["stdin"]
        if isinstance(spec, dict) and isinstance(spec.get("json"), dict):
            doc = dict(spec["json"])
            if doc.get("prevResult") == "$PREV_RESULT":
                if prev is None:
                    del doc["prevResult"]
                else:
                    doc["prevResult"] = prev
            stdin = json.dumps(confine(self.sandbox.substitute(doc), state)).encode()
        else:
            stdin = confine_stdin(payload(spec), state)
        return str(call.get("plugin", "")), env, stdin

    def _check_answer(self, call: dict[str, Any], status: int, stdout: bytes, where: str) -> Any:
        """The CNI result (ADD) or None; raises Broke for a bad answer."""
        said = f"input: {show(call)}\nanswer: exit {status}, {stdout[:500]!r}"
        if status == 0:
            if call["env"].get("CNI_COMMAND") in ("ADD", "VERSION"):
                doc = _error_doc(stdout)
                if not isinstance(doc, dict):
                    raise Broke(f"{where}: success without a JSON result", said)
                bad = _unparsable_addresses(doc)
                if bad:
                    raise Broke(f"{where}: a result with addresses a runtime cannot parse",
                                f"{said}\nunparsable: {bad}")
                return doc
            return None
        doc = _error_doc(stdout)
        if not isinstance(doc, dict) or not isinstance(doc.get("msg"), str):
            raise Broke(f"{where}: a failure without CNI error JSON", said)
        code = doc.get("code")
        if code not in ALLOWED_CODES or isinstance(code, bool):
            raise Broke(f"{where}: CNI error code {code!r} is not one of the spec's", said)
        if code == 5 and doc["msg"].startswith("internal error"):
            logged = self.logged.exc
            kind = escaped_kind(logged) if logged is not None else doc["msg"][:60]
            raise Broke(f"{where}: code 5 internal error: {kind}",
                        said + (f"\nlogged: {escaped(logged)}" if logged else ""))
        if self.logged.exc is not None:  # whatever the code: a catch-all caught a bug
            raise Broke(f"{where}: an unexpected exception became code {code}:"
                        f" {escaped_kind(self.logged.exc)}",
                        f"{said}\nlogged: {escaped(self.logged.exc)}")
        return None

    def _check_nothing_left(self, call: dict[str, Any], state: Path,
                            before: tuple[Any, Any], where: str) -> None:
        assert self.sandbox is not None
        state_before, links_before = before
        state_after, links_after = self.sandbox.snapshot(state), self.sandbox.links()
        left = sorted(state_after - state_before)
        if left:
            raise Broke(f"{where}: a failed ADD left state behind",
                        f"input: {show(call)}\nleft: {left[:5]}")
        if links_after != links_before:
            raise Broke(f"{where}: a failed ADD left links behind",
                        f"input: {show(call)}\nbefore: {links_before}\nafter: {links_after}")


class InProcess(_Base):
    """cni.dispatch.handle with a Context over the sandbox, a fresh state dir per case."""

    name = "cni"

    def run(self, case: dict[str, Any]) -> None:
        from cni.dispatch import handle
        from cni.wire import Response

        assert self.sandbox is not None
        state = self.sandbox.fresh_state()
        ctx = self.sandbox.context(state)
        prev = None
        try:
            for call in case["calls"]:
                plugin, env, stdin = self._request(call, state, prev)
                before = (self.sandbox.snapshot(state), self.sandbox.links())
                self.logged.exc = None
                started = time.monotonic()
                try:
                    response = handle(ctx, env, stdin, plugin)
                except BaseException as exc:
                    raise Broke(f"handle() raised {escaped_kind(exc)}",
                                f"input: {show(call)}\nescaped: {escaped(exc)}") from exc
                took = time.monotonic() - started
                if took > SLOW:
                    raise Broke("handle() took too long", f"input: {show(call)}\n{took:.1f} s")
                if not isinstance(response, Response):
                    raise Broke("handle() returned no Response", f"got {response!r}")
                result = self._check_answer(call, response.exit_status, response.stdout,
                                            "handle()")
                if env.get("CNI_COMMAND") == "ADD":
                    if response.exit_status == 0:
                        prev = result
                    else:
                        self._check_nothing_left(call, state, before, "handle()")
        finally:
            ctx.close()
            self.sandbox.reset_links()


class ThroughShim(_Base):
    """The installed shim binary (cni.install) to a CniServer on a temp socket."""

    name = "shim"
    seeded = 50

    def setup(self) -> None:
        from cni.install import install
        from cni.server import CniServer
        from cni.shim import shim_path

        super().setup()
        assert self.sandbox is not None
        root = self.sandbox.root
        self.shims = root / "shims"
        install(self.shims, shim_path(), fallback=False)
        self.state = root / "daemon-state"
        self.state.mkdir()
        self.socket = root / "agent.sock"
        self.server = CniServer(str(self.socket), workers=4,
                                context=self.sandbox.context(self.state))
        self.server.start()

    def close(self) -> None:
        server = getattr(self, "server", None)
        if server is not None:
            server.stop()
            server.context.close()
        super().close()

    def _exec(self, plugin: str, env: dict[str, str], stdin: bytes
              ) -> subprocess.CompletedProcess[bytes]:
        env = env_safe({k: v for k, v in env.items() if k.startswith("CNI_")})
        env.update(NODEAGENT_SOCKET=str(self.socket), NODEAGENT_TIMEOUT="30",
                   NODEAGENT_CNI_FALLBACK=str(self.sandbox.root / "no-fallback"),  # type: ignore[union-attr]
                   PATH="/usr/sbin:/usr/bin:/sbin:/bin")
        argv0 = plugin.replace("\x00", "").replace("/", "") or "nodeagent"
        return subprocess.run([argv0], executable=self.shims / "nodeagent", env=env,
                              input=stdin, capture_output=True, timeout=40, check=False)

    def run(self, case: dict[str, Any]) -> None:
        assert self.sandbox is not None
        prev = None
        try:
            for call in case["calls"]:
                plugin, env, stdin = self._request(call, self.state, prev)
                before = (self.sandbox.snapshot(self.state), self.sandbox.links())
                self.logged.exc = None
                try:
                    proc = self._exec(plugin, env, stdin)
                except subprocess.TimeoutExpired:
                    raise Broke("shim: no answer within 40 s", f"input: {show(call)}") from None
                doc = _error_doc(proc.stdout) if proc.returncode else None
                msg = doc.get("msg", "") if isinstance(doc, dict) else ""
                if isinstance(msg, str) and msg.startswith(("nodeagent agent at",
                                                            "nodeagent CNI shim")):
                    logged = self.logged.exc
                    raise Broke(f"shim: the daemon dropped the request"
                                f"{': ' + escaped_kind(logged) if logged else ''}",
                                f"input: {show(call)}\nshim said: {msg}"
                                + (f"\nlogged: {escaped(logged)}" if logged else ""))
                result = self._check_answer(call, proc.returncode, proc.stdout, "shim")
                if env.get("CNI_COMMAND") == "ADD":
                    if proc.returncode == 0:
                        prev = result
                    else:
                        self._check_nothing_left(call, self.state, before, "shim")
                self._still_answering(call)
        finally:
            self.sandbox.reset_links()

    def _still_answering(self, call: dict[str, Any]) -> None:
        started = time.monotonic()
        try:
            proc = self._exec("nodeagent", {"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"1.1.0"}')
        except subprocess.TimeoutExpired:
            proc = None
        if proc is None or proc.returncode != 0 or time.monotonic() - started > 5:
            raise Broke("shim: the daemon stopped answering VERSION after a request",
                        f"input: {show(call)}\nVERSION: "
                        f"{proc.stdout[:300] if proc else 'no answer'!r}")
