"""Running another CNI plugin (a delegated IPAM plugin) so that it can never outlive its caller.

Each plugin runs in its own process group with ``PR_SET_PDEATHSIG`` = SIGKILL: if the agent (or
the fallback process) dies, the kernel kills the plugin, and a plugin that overruns its deadline
is killed with everything it started. :func:`stop_all` (agent shutdown) kills the running ones
and refuses new ones while the server stops, so SIGTERM never waits on a delegate chain.

The kernel sends the death signal when the *thread* that started the plugin ends, so run
plugins from long-lived threads (the server's workers, the fallback's main thread), never from
a thread that is about to exit (such as a namespace thread, nodeagent.netns).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence

from nodeagent.cnitypes.errors import IO_FAILURE, TRY_AGAIN_LATER, CniError

#: Counts nested delegations across execs: the shim forwards it to the agent, and the parsed
#: request keeps it (cni/ipam.py bounds it).
DEPTH_VARIABLE = "NODEAGENT_DELEGATE_DEPTH"
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int

_lock = threading.Lock()
_running: set[subprocess.Popen[bytes]] = set()
_stopped = False


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: the kernel kills it when the spawning thread exits (the agent
    dies); if that already happened, do not start at all. Only a resolved C call and os calls:
    nothing that could take a lock another thread held at fork."""
    if _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
        os._exit(127)


def run(argv: Sequence[str], stdin: bytes, env: Mapping[str, str], timeout: float, *,
        what: str) -> tuple[bytes, bytes, int]:
    """Run ``argv`` to completion: (stdout, stderr, exit status). Raises CniError when it cannot
    be started, overruns ``timeout`` seconds, or the agent is stopping."""
    parent = os.getpid()
    with _lock:
        if _stopped:
            raise CniError(TRY_AGAIN_LATER, f"{what} not run: the agent is stopping")
        try:
            proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=dict(env), close_fds=True,
                                    process_group=0, preexec_fn=lambda: _die_with_parent(parent))
        except OSError as exc:
            raise CniError(IO_FAILURE, f"{what} failed to run", str(exc)) from None
        _running.add(proc)
    try:
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=1)
            raise CniError(IO_FAILURE, f"{what} did not finish within {timeout:g} s; killed it"
                           " and what it started") from None
    finally:
        with _lock:
            _running.discard(proc)
        _close(proc)
    return out, err, proc.returncode


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the plugin's process group, unless the plugin was already reaped (its group id
    could then name someone else's group). Holding Popen's wait lock keeps it unreaped."""
    with proc._waitpid_lock:  # type: ignore[attr-defined]
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


def _close(proc: subprocess.Popen[bytes]) -> None:
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    if proc.returncode is None:
        _kill(proc)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1)


def running() -> int:
    """How many delegated plugins are running now."""
    with _lock:
        return len(_running)


def stop_all() -> None:
    """Kill every running delegate (and what it started) and refuse new ones: shutdown."""
    global _stopped
    with _lock:
        _stopped = True
        procs = list(_running)
    for proc in procs:
        _kill(proc)


def restart() -> None:
    """Allow delegates again, once the server stopped (a delegate started after that dies with
    the exiting process anyway: PR_SET_PDEATHSIG)."""
    global _stopped
    with _lock:
        _stopped = False
