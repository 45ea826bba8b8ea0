"""The compiled CNI shim (native/cni_shim.c) against an in-test agent: docs/cni-socket.md."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cni.shim
from cni.shim import FALLBACK_NAME, SHIM_NAME, ShimNotBuiltError, shim_path
from cni.wire import MAX_STDIN, Request, Response, encode_response, read_request

DEFAULT_SOCKET = Path("/run/nodeagent/agent.sock")
CONFIG = b'{"cniVersion": "0.4.0", "name": "net1", "type": "macvlan"}'
BASE_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
OK = Response(0, b"{}")

Handler = Callable[[socket.socket], None]
Result = subprocess.CompletedProcess[bytes]


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def built_shim() -> Path:
    try:
        return shim_path()
    except ShimNotBuiltError as exc:  # a build problem must not read as a skip
        pytest.fail(str(exc))


@pytest.fixture
def plugins(tmp_path: Path, built_shim: Path) -> Path:
    """A CNI bin dir with a copy of the shim (so /proc/self/exe's directory is this one, with
    no fallback unless a test puts one there) and the names a runtime would call it by."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy2(built_shim, bin_dir / SHIM_NAME)
    for name in ("macvlan", "sriov"):
        (bin_dir / name).symlink_to(SHIM_NAME)
    return bin_dir


@pytest.fixture
def sock_dir(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, unless it is too long for a unix socket address (108 bytes)."""
    if len(str(tmp_path)) < 80:
        yield tmp_path
        return
    short = Path(tempfile.mkdtemp(prefix="shim", dir="/tmp"))
    yield short
    shutil.rmtree(short, ignore_errors=True)


class Agent:
    """A stand-in for the agent daemon: for each connection, ``handler(conn)``."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(8)
        self._listener.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                try:
                    self.handler(conn)
                except Exception as exc:
                    self.errors.append(exc)

    def close(self) -> None:
        self.stop.set()
        self._thread.join(5)
        self._listener.close()


@pytest.fixture
def agent_factory(sock_dir: Path) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def start(handler: Handler, name: str = "agent.sock") -> Agent:
        agent = Agent(sock_dir / name, handler)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.close()
    for agent in agents:
        assert not agent.errors, agent.errors


class Recorder:
    """Handler answering every request with ``response`` and keeping the requests."""

    def __init__(self, response: Response | bytes = OK) -> None:
        self.response = response
        self.requests: list[Request] = []

    def __call__(self, conn: socket.socket) -> None:
        self.requests.append(read_request(conn))
        reply = self.response
        conn.sendall(reply if isinstance(reply, bytes) else encode_response(reply))

    @property
    def only(self) -> Request:
        assert len(self.requests) == 1, self.requests
        return self.requests[0]


Factory = Callable[..., Agent]
Served = tuple[Recorder, Agent]


@pytest.fixture
def recorder(agent_factory: Factory) -> Iterator[Served]:
    handler = Recorder()
    yield handler, agent_factory(handler)


def run(
    exe: Path | str,
    stdin: bytes | Any = CONFIG,
    env: dict[str, str] | None = None,
    argv: list[str] | None = None,
    timeout: float = 30,
    **kwargs: Any,
) -> Result:
    """Runs the shim like a runtime: given environment only, config on stdin."""
    pipe = {"input": stdin} if isinstance(stdin, bytes) else {"stdin": stdin}
    return subprocess.run(
        argv or [str(exe)], executable=exe, env={**BASE_ENV, **(env or {})},
        capture_output=True, timeout=timeout, check=False, **pipe, **kwargs,
    )


def cni_error(result: Result) -> dict[str, Any]:
    """The shim's own error: code 11 JSON on stdout, exit 1."""
    assert result.returncode == 1, result
    doc = json.loads(result.stdout)
    assert doc["code"] == 11, doc
    assert set(doc) == {"cniVersion", "code", "msg", "details"}
    return doc


def no_default_socket() -> None:
    if DEFAULT_SOCKET.exists():
        pytest.skip(f"{DEFAULT_SOCKET} exists: a real agent would receive these configs")


# ---- the request ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["macvlan", "sriov"])
def test_argv0_is_the_basename_it_was_invoked_as(
    plugins: Path, recorder: Served, name: str
) -> None:
    handler, agent = recorder
    env = {"NODEAGENT_SOCKET": str(agent.path)}
    run(plugins / name, env=env)  # argv[0] is the full path
    run(plugins / name, env=env, argv=[name])
    run(plugins / name, env=env, argv=["./" + name, "extra"])
    assert [r.argv0 for r in handler.requests] == [name, name, name]


def test_only_cni_variables_are_sent_exactly(plugins: Path, recorder: Served) -> None:
    handler, agent = recorder
    cni_env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c0ffee",
        "CNI_NETNS": "/var/run/netns/x y",
        "CNI_IFNAME": "net1",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=a=b;K8S_POD_NAMESPACE=",
        "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
        "CNI_EMPTY": "",
        "CNI_UNICODE": "ünï ☃",
        "CNI_": "bare prefix",
    }
    others = {"NOT_CNI": "x", "cni_lower": "x", "XCNI_COMMAND": "x", "CNI": "x",
              "NODEAGENT_SOCKET": str(agent.path)}
    result = run(plugins / "macvlan", env={**cni_env, **others})
    assert result.returncode == 0, result
    assert handler.only.env == cni_env


@pytest.mark.parametrize(
    "data",
    [b"", CONFIG, b'{"cniVersion":"1.0.0"}\n\x00\xff\xfe\x80 not utf-8', bytes(range(256)) * 999],
    ids=["empty", "config", "non-utf8", "binary"],
)
def test_stdin_arrives_exactly(plugins: Path, recorder: Served, data: bytes) -> None:
    handler, agent = recorder
    run(plugins / "macvlan", stdin=data, env={"NODEAGENT_SOCKET": str(agent.path)})
    assert handler.only.stdin == data


@pytest.mark.parametrize(
    ("size", "sent"), [(MAX_STDIN, MAX_STDIN), (MAX_STDIN + 100, MAX_STDIN + 1)])
def test_stdin_is_cut_one_byte_past_the_limit(
    plugins: Path, recorder: Served, size: int, sent: int
) -> None:
    handler, agent = recorder
    data = os.urandom(size)
    run(plugins / "macvlan", stdin=data, env={"NODEAGENT_SOCKET": str(agent.path)})
    assert handler.only.stdin == data[:sent]


def test_closed_stdin_is_sent_as_empty(plugins: Path, recorder: Served) -> None:
    handler, agent = recorder
    shell = ["/bin/sh", "-c", 'exec "$0" <&-', str(plugins / "macvlan")]  # stdin closed
    result = run("/bin/sh", argv=shell, stdin=subprocess.DEVNULL,
                 env={"NODEAGENT_SOCKET": str(agent.path)})
    assert result.returncode == 0, result
    assert handler.only.stdin == b""


# ---- the response ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "status"),
    [
        (Response(0, b'{"cniVersion":"1.1.0","interfaces":[]}', b""), 0),
        (Response(7, b"\x00\xff binary \n" * 1000, b"diag\x00\xfe\n"), 7),
        (Response(255, b"", b"only stderr"), 255),
        (Response(1, os.urandom(3 << 20), os.urandom(1 << 20)), 1),  # beyond pipe buffers
        (Response(256, b"x"), 1),  # would exit as 0
    ],
    ids=["result", "binary", "stderr-only", "large", "status-256"],
)
def test_response_is_relayed_exactly(
    plugins: Path, agent_factory: Factory, response: Response, status: int
) -> None:
    agent = agent_factory(Recorder(response))
    result = run(plugins / "sriov", env={"NODEAGENT_SOCKET": str(agent.path)})
    assert (result.returncode, result.stdout, result.stderr) == (
        status, response.stdout, response.stderr)


def test_closed_stdout_fails_without_sigpipe(plugins: Path, agent_factory: Factory) -> None:
    agent = agent_factory(Recorder(Response(0, b"x" * (1 << 20))))
    proc = subprocess.Popen(
        [plugins / "macvlan"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env={**BASE_ENV, "NODEAGENT_SOCKET": str(agent.path)},
    )
    assert proc.stdout is not None and proc.stdin is not None
    proc.stdout.close()
    proc.stdin.write(CONFIG)
    proc.stdin.close()
    assert proc.wait(30) == 1  # not -SIGPIPE, and not the daemon's 0: the result was lost


# ---- fallback --------------------------------------------------------------------------------

FALLBACK_SCRIPT = """\
#!{python} -I
# Records what it was given: argv[1:], the exec'd environment, stdin, what stdin is.
import os, stat, sys
record = {record!r}
os.makedirs(record)
with open(os.path.join(record, "args"), "wb") as f:
    f.write(b"\\0".join(os.fsencode(a) for a in sys.argv[1:]))
with open("/proc/self/environ", "rb") as src, open(os.path.join(record, "environ"), "wb") as f:
    f.write(src.read())  # not os.environ: Python may coerce the locale into it
with open(os.path.join(record, "stdin-kind"), "w") as f:
    f.write("fifo" if stat.S_ISFIFO(os.fstat(0).st_mode) else "other")
with open(os.path.join(record, "stdin"), "wb") as f:
    f.write(sys.stdin.buffer.read())
sys.stdout.buffer.write(b"fallback stdout\\0\\xff")
sys.stderr.buffer.write(b"fallback stderr")
sys.exit(5)
"""


class Fallback:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.record = path.parent / f"{path.name}.record"
        path.write_text(FALLBACK_SCRIPT.format(python=sys.executable, record=str(self.record)))
        path.chmod(0o755)

    def file(self, name: str) -> bytes:
        return (self.record / name).read_bytes()

    @property
    def environ(self) -> dict[str, str]:
        entries = self.file("environ").split(b"\0")[:-1]
        return dict(e.decode().split("=", 1) for e in entries)

    def check(self, result: Result, env: dict[str, str], args: list[str], stdin: bytes,
              plugin: str = "macvlan") -> None:
        assert (result.returncode, result.stdout, result.stderr) == (
            5, b"fallback stdout\0\xff", b"fallback stderr"), result
        # The environment is the runtime's, plus the name the shim was invoked as.
        assert self.environ == {**BASE_ENV, **env, "NODEAGENT_CNI_PLUGIN": plugin}
        assert self.file("args") == b"\0".join(a.encode() for a in args)
        assert self.file("stdin") == stdin


@pytest.fixture
def fallback(tmp_path: Path) -> Fallback:
    return Fallback(tmp_path / "fallback.py")


def refused_socket(directory: Path) -> Path:
    """A socket file nobody listens on: connect gets ECONNREFUSED."""
    path = directory / "refused.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
    return path


def test_unreachable_socket_runs_the_fallback_untouched(
    plugins: Path, fallback: Fallback, sock_dir: Path
) -> None:
    for sock in (sock_dir / "missing.sock", refused_socket(sock_dir)):
        env = {"NODEAGENT_SOCKET": str(sock), "NODEAGENT_CNI_FALLBACK": str(fallback.path),
               "CNI_COMMAND": "DEL", "OTHER": "kept"}
        data = CONFIG + b"\xff\x00"
        result = run(plugins / "macvlan", stdin=data, env=env, argv=["macvlan", "a b", ""])
        fallback.check(result, env, ["a b", ""], data)
        # With NODEAGENT_SOCKET set the shim connects first: the fallback gets the same pipe.
        assert fallback.file("stdin-kind") == b"fifo"
        shutil.rmtree(fallback.record)


def test_fallback_next_to_the_binary(plugins: Path, sock_dir: Path) -> None:
    fallback = Fallback(plugins / FALLBACK_NAME)
    env = {"NODEAGENT_SOCKET": str(sock_dir / "missing.sock"), "CNI_COMMAND": "ADD"}
    fallback.check(run(plugins / "sriov", env=env), env, [], CONFIG, plugin="sriov")


def test_fallback_gets_exact_argv_and_default_sigpipe(
    plugins: Path, sock_dir: Path, tmp_path: Path
) -> None:
    """A script cannot see its argv[0] (the kernel replaces it), so this one is compiled."""
    source = tmp_path / "fallback.c"
    source.write_text(textwrap.dedent("""\
        #include <signal.h>
        #include <stdio.h>
        #include <string.h>
        int main(int argc, char **argv) {
            struct sigaction sa;
            sigaction(SIGPIPE, NULL, &sa);
            for (int i = 0; i < argc; i++)
                fwrite(argv[i], 1, strlen(argv[i]) + 1, stdout);
            fputs(sa.sa_handler == SIG_DFL ? "SIGPIPE default" : "SIGPIPE changed", stdout);
            return 6;
        }
    """))
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    exe = tmp_path / "fallback"
    if shutil.which(cc[0]) is None or subprocess.run(
            [*cc, "-o", str(exe), str(source)], check=False).returncode:
        pytest.skip(f"no working C compiler ({cc[0]}) for the argv[0] probe")
    env = {"NODEAGENT_SOCKET": str(sock_dir / "missing.sock"),
           "NODEAGENT_CNI_FALLBACK": str(exe)}
    result = run(plugins / "macvlan", env=env, argv=["/opt/cni/bin/macvlan", "x", ""])
    assert result.returncode == 6, result
    assert result.stdout == b"/opt/cni/bin/macvlan\0x\0\0SIGPIPE default"


@pytest.mark.parametrize("fallback_env", [{}, {"NODEAGENT_CNI_FALLBACK": "/nonexistent/fb"}])
def test_no_socket_no_fallback_is_code_11(
    plugins: Path, sock_dir: Path, fallback_env: dict[str, str]
) -> None:
    sock = sock_dir / "missing.sock"
    result = run(plugins / "macvlan", env={"NODEAGENT_SOCKET": str(sock), **fallback_env})
    doc = cni_error(result)
    assert doc["cniVersion"] == "0.4.0"
    assert str(sock) in doc["msg"]
    expected = fallback_env.get("NODEAGENT_CNI_FALLBACK", str(plugins / FALLBACK_NAME))
    assert expected in doc["details"]


@pytest.mark.parametrize(
    ("config", "version"),
    [
        (b'{"cniVersion": "1.0.0"}', "1.0.0"),
        (b'{"ipam": {"cniVersion": "0.1.0"}, "cniVersion": "0.3.1"}', "0.3.1"),
        (b'{"cniVersion": "0.3.1", "cniVersion": "1.0.0"}', "1.0.0"),
        (b'{"cniVersion": "\\u0031.\\u0030\\"\\n\xff"}', '1.0"\n\ufffd'),
        (b'{"cniVersion": 1.0}', "1.1.0"),
        (b"[]", "1.1.0"),
        (b"", "1.1.0"),
        (b'{"cniVersion": "' + b"9" * 100 + b'"}', "1.1.0"),
    ],
)
def test_error_cni_version_comes_from_the_config(
    plugins: Path, sock_dir: Path, config: bytes, version: str
) -> None:
    env = {"NODEAGENT_SOCKET": str(sock_dir / "missing.sock")}
    assert cni_error(run(plugins / "macvlan", stdin=config, env=env))["cniVersion"] == version


# ---- misbehaving agents -------------------------------------------------------------------


def close_at_once(conn: socket.socket) -> None:
    pass


def close_after_request(conn: socket.socket) -> None:
    read_request(conn)


def cut_short(conn: socket.socket) -> None:
    read_request(conn)
    conn.sendall(encode_response(Response(0, b'{"result": 1}', b"log"))[:-2])


def wrong_magic(conn: socket.socket) -> None:
    read_request(conn)
    conn.sendall(b"NAR2" + encode_response(Response(0, b"{}"))[4:])


def huge_field(conn: socket.socket) -> None:
    read_request(conn)
    conn.sendall(b"NAR1\0\0\0\0\xff\xff\xff\xff")


@pytest.mark.parametrize(
    "handler", [close_at_once, close_after_request, cut_short, wrong_magic, huge_field])
def test_broken_response_is_code_11(
    plugins: Path, agent_factory: Factory, handler: Handler
) -> None:
    agent = agent_factory(handler)
    result = run(plugins / "macvlan", stdin=os.urandom(100_000) if handler is close_at_once
                 else CONFIG, env={"NODEAGENT_SOCKET": str(agent.path)})
    doc = cni_error(result)
    assert str(agent.path) in doc["msg"]
    assert result.stderr == b""


def test_silent_agent_times_out(plugins: Path, agent_factory: Factory) -> None:
    def never_answer(conn: socket.socket) -> None:
        read_request(conn)
        agent.stop.wait(30)

    agent = agent_factory(never_answer)
    start = time.monotonic()
    result = run(plugins / "macvlan", env={"NODEAGENT_SOCKET": str(agent.path),
                                           "NODEAGENT_TIMEOUT": "1"})
    assert 0.9 < time.monotonic() - start < 5
    assert "timed out" in cni_error(result)["msg"]


def test_full_accept_queue_times_out(plugins: Path, sock_dir: Path) -> None:
    path = sock_dir / "busy.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as filler:
        listener.bind(str(path))
        listener.listen(0)
        filler.connect(str(path))  # never accepted: the next connect blocks
        start = time.monotonic()
        result = run(plugins / "macvlan", env={"NODEAGENT_SOCKET": str(path),
                                               "NODEAGENT_TIMEOUT": "1"})
        assert time.monotonic() - start < 5
    assert "timed out" in cni_error(result)["msg"]


# ---- "agentSocket" ---------------------------------------------------------------------------


def json_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def test_config_agent_socket_is_used(plugins: Path, recorder: Served) -> None:
    handler, agent = recorder
    config = json_bytes({"cniVersion": "1.0.0", "agentSocket": str(agent.path)})
    assert run(plugins / "macvlan", stdin=config).returncode == 0
    assert handler.only.stdin == config


def test_env_socket_beats_config(plugins: Path, agent_factory: Factory) -> None:
    env_handler, config_handler = Recorder(), Recorder()
    env_agent = agent_factory(env_handler, "env.sock")
    config_agent = agent_factory(config_handler, "config.sock")
    config = json_bytes({"agentSocket": str(config_agent.path)})
    run(plugins / "macvlan", stdin=config, env={"NODEAGENT_SOCKET": str(env_agent.path)})
    assert (len(env_handler.requests), len(config_handler.requests)) == (1, 0)


def test_only_the_last_top_level_agent_socket_counts(
    plugins: Path, agent_factory: Factory
) -> None:
    winner, loser = Recorder(), Recorder()
    good, bad = agent_factory(winner, "good.sock"), agent_factory(loser, "bad.sock")
    escaped = str(good.path).replace("/", "\\/").encode()
    config = (b'{"agentSocket": "' + str(bad.path).encode() + b'", "ipam": {"agentSocket": "'
              + str(bad.path).encode() + b'", "x": [{"agentSocket": 1}, "]}"]}, '
              b'"agentSocket": "' + escaped + b'", "plugins": [{"agentSocket": "'
              + str(bad.path).encode() + b'"}]}')
    assert json.loads(config)["agentSocket"] == str(good.path)
    assert run(plugins / "macvlan", stdin=config).returncode == 0
    assert (len(winner.requests), len(loser.requests)) == (1, 0)


def test_unreachable_config_socket_replays_stdin_to_the_fallback(
    plugins: Path, fallback: Fallback, sock_dir: Path, tmp_path: Path
) -> None:
    config = json_bytes({"agentSocket": str(sock_dir / "missing.sock"), "pad": "\xff" * 70000})
    env = {"NODEAGENT_CNI_FALLBACK": str(fallback.path), "CNI_COMMAND": "CHECK"}
    # From a pipe (read, so replayed from memory: more than a pipe buffer's worth).
    fallback.check(run(plugins / "macvlan", stdin=config, env=env), env, [], config)
    shutil.rmtree(fallback.record)
    # From a file, already read up to some offset by the runtime: rewound to that offset.
    file = tmp_path / "stdin"
    file.write_bytes(b"SKIPPED" + config)
    with file.open("rb") as stdin:
        stdin.seek(len(b"SKIPPED"))
        fallback.check(run(plugins / "macvlan", stdin=stdin, env=env), env, [], config)


def test_agent_socket_too_long_is_code_11(plugins: Path) -> None:
    sock = "/tmp/" + "x" * 200
    doc = cni_error(run(plugins / "macvlan", stdin=json_bytes({"agentSocket": sock})))
    assert sock in doc["msg"]


# ---- hostile input ---------------------------------------------------------------------------

MIB = 1 << 20
HOSTILE = [
    b'{"agentSocket": "' + b"a" * (2 * MIB),
    b'{"cniVersion": "' + b"\\" * (MIB + 1),
    b'{"cniVersion": "1.0.0", "agentSocket": "\x00/x\x00"}',
    b'{"cniVersion\x00": "\x00", "agentSocket": "\\u0000"}',
    b'{"a": ' + b"[" * MIB,
    b'{"a": ' + b"{" * (MIB - 10),
    b"]" * MIB,
    b'{"agentSocket": "\\ud800", "cniVersion": "\\ud800\\u0041"}',
    b'{"agentSocket": "\\u', b'{"agentSocket": "\\', b'{"agentSocket"', b'{"agentSocket":',
    b'{"', b"{", b'"', b"\x00" * 1000, b"\xff" * 100,
    b'{"' + b"k" * 5000 + b'": 1, "cniVersion": "9.9.9"}',
    b'{"x": "}", "y": "\\"{", "cniVersion": "2.0.0"',
]


@pytest.mark.parametrize("config", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_config_is_survived(plugins: Path, config: bytes) -> None:
    no_default_socket()
    doc = cni_error(run(plugins / "macvlan", stdin=config))
    assert str(DEFAULT_SOCKET) in doc["msg"]  # no usable "agentSocket" in any of them


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300) | st.text('{}[]":,\\u0aAZ cniVersion agentSocket/', max_size=300)
       .map(str.encode))
def test_fuzzed_config_is_survived(plugins: Path, config: bytes) -> None:
    no_default_socket()
    # Relative "agentSocket" paths resolve in plugins/, where nothing listens.
    cni_error(run(plugins / "macvlan", stdin=config, cwd=plugins))


# ---- valgrind ------------------------------------------------------------------------------


@pytest.fixture
def valgrind(tmp_path: Path, plugins: Path) -> list[str]:
    """valgrind, and the shim in ``plugins`` rebuilt dynamically linked from the same source:
    memcheck cannot replace malloc in the static build setup.py installs, and reports glibc's
    own start-up code there."""
    exe, cc = shutil.which("valgrind"), shutil.which("gcc")
    if exe is None:
        pytest.skip("valgrind is not installed")
    if cc is None:
        pytest.skip("gcc is not installed (to build the shim dynamically linked)")
    source = Path(cni.shim.__file__).resolve().parent.parent / "native" / "cni_shim.c"
    if not source.is_file():
        pytest.skip("not a source checkout: no native/cni_shim.c to build")
    subprocess.run([cc, "-std=c11", "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-o",
                    str(plugins / SHIM_NAME), str(source)], check=True)
    return [exe, "-q", "--error-exitcode=9", "--leak-check=full"]


def test_valgrind_round_trip(
    plugins: Path, agent_factory: Factory, valgrind: list[str]
) -> None:
    response = Response(3, b"out\0" * 5000, b"err")
    handler = Recorder(response)
    agent = agent_factory(handler)
    shim = plugins / "sriov"
    result = run(valgrind[0], argv=[*valgrind, str(shim)], stdin=CONFIG * 1000, timeout=120,
                 env={"NODEAGENT_SOCKET": str(agent.path), "CNI_COMMAND": "ADD"})
    assert (result.returncode, result.stdout, result.stderr) == (3, response.stdout, b"err")
    assert handler.only.argv0 == "sriov"
    assert handler.only.stdin == CONFIG * 1000


def test_valgrind_broken_response(
    plugins: Path, agent_factory: Factory, valgrind: list[str]
) -> None:
    agent = agent_factory(cut_short)
    result = run(valgrind[0], argv=[*valgrind, str(plugins / "macvlan")], timeout=120,
                 env={"NODEAGENT_SOCKET": str(agent.path)})
    assert result.stderr == b""
    assert "closed the connection" in cni_error(result)["msg"]


@pytest.mark.parametrize("config", [HOSTILE[0], HOSTILE[4], HOSTILE[7], CONFIG])
def test_valgrind_error_paths(plugins: Path, valgrind: list[str], config: bytes) -> None:
    no_default_socket()
    result = run(valgrind[0], argv=[*valgrind, str(plugins / "macvlan")], stdin=config,
                 timeout=120)
    assert result.returncode == 1, result.stderr.decode(errors="replace")
    assert result.stderr == b""
    cni_error(result)


# ---- the build -------------------------------------------------------------------------------


def test_stale_binary_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                 built_shim: Path) -> None:
    source = tmp_path / "cni_shim.c"
    source.write_bytes(b"/* edited */\n")
    monkeypatch.setattr(cni.shim, "_SOURCE", source)
    with pytest.raises(ShimNotBuiltError, match="not built from the current"):
        shim_path()
    monkeypatch.setattr(cni.shim, "_SOURCE", tmp_path / "absent.c")  # an installed wheel
    assert shim_path() == built_shim


def test_install_without_fallback_removes_a_stale_one(tmp_path: Path) -> None:
    from cni.install import FALLBACK_NAME, install
    from cni.shim import shim_path

    install(tmp_path, shim_path())
    assert (tmp_path / FALLBACK_NAME).exists()
    installed = install(tmp_path, shim_path(), fallback=False)
    assert not (tmp_path / FALLBACK_NAME).exists()
    assert FALLBACK_NAME not in {p.name for p in installed}
    assert (tmp_path / "sriov").stat().st_mode & 0o111
