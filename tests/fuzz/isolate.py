"""The test session's side of tests/fuzz/worker.py: one worker process per target, restarted
when an input kills it or makes it hang."""

from __future__ import annotations

import json
import os
import secrets
import select
import subprocess
import sys
import tempfile
import time
from typing import Any

from tests.fuzz.sandbox import remove_leftovers
from tests.fuzz.seeds import REPO


class WorkerGone(Exception):
    """The worker died or hung on an input; the message says which."""


class Worker:
    def __init__(self, target: str, timeout: float) -> None:
        self.target = target
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  (lives as long as the worker)
        self.tag = secrets.token_hex(3)

    def _start(self) -> None:
        self._buffer = b""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fuzz.worker", self.target], cwd=REPO,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            env={**os.environ, "PYTHONPATH": str(REPO), "NAFZ_TAG": self.tag})
        self._read(120.0, "starting")

    def _stderr_tail(self) -> str:
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - 1500))
        return self._stderr.read().decode("utf-8", "replace")

    def _read(self, timeout: float, what: str) -> Any:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.stop(kill=True)
                raise WorkerGone(f"the {self.target} worker hung for more than {timeout:.0f} s"
                                 f" {what}")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                status = self.proc.wait()
                tail = self._stderr_tail()
                self.proc = None
                remove_leftovers(self.tag)
                raise WorkerGone(f"the {self.target} worker died (exit status {status}) {what};"
                                 f" its last words:\n{tail}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def run(self, *, case: Any = None, seed: bytes | None = None) -> tuple[Any, str | None]:
        """(the case, None) when the property held, else (the case, what broke)."""
        if self.proc is None:
            self._start()
        assert self.proc is not None and self.proc.stdin is not None
        request = {"seed": seed.hex()} if seed is not None else {"case": case}
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()
        if seed is not None:
            case = self._read(60.0, "generating an input")["case"]
        try:
            verdict = self._read(self.timeout, "on this input")
        except WorkerGone as gone:
            return case, str(gone)
        if verdict.get("restart"):  # the worker exits: the next input gets a fresh one
            self.stop()
        return case, verdict["broke"]

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None:
            if kill:
                self.proc.kill()
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        remove_leftovers(self.tag)
