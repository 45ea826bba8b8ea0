"""``make fuzz``: every target (or those named) in turn, coverage-guided with atheris, for as
long as asked; each new kind of failure is written to tests/fuzz/corpus/<target>/ (commit
it: ``make test`` replays it from then on).

    python -m tests.fuzz.fuzz --seconds 600 [target ...]

The time is shared between the targets. libFuzzer's working corpus (the inputs that reached
new code) is kept under build/fuzz/<target>/ and resumed by the next run. An input that kills
the fuzzer process (a hang past libFuzzer's -timeout, a crash of the interpreter) is kept too.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from tests.fuzz import cases, targets
from tests.fuzz.sandbox import remove_leftovers
from tests.fuzz.seeds import REPO

WORK = REPO / "build" / "fuzz"


def _died(target: str, work: Path, status: int, log: str) -> Path | None:
    """Keep the input a dead fuzzer process was running (the worker writes it first)."""
    current = work / "current.json"
    if not current.exists():
        return None
    case = json.loads(current.read_text())
    current.unlink()
    last = [line for line in log.splitlines() if line.strip()][-3:]
    return cases.save(target, case, f"the fuzzer process died (exit status {status}) on this"
                      f" input [found by make fuzz {time.strftime('%Y-%m-%d')}]: "
                      + " | ".join(last)[:300])


def fuzz(target: str, seconds: float) -> list[Path]:
    work = WORK / target
    work.mkdir(parents=True, exist_ok=True)
    before = set(cases.corpus_files(target))
    kept: list[Path] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 5:
        tag = secrets.token_hex(3)
        log_path = work / "fuzzer.log"
        (work / "current.json").unlink(missing_ok=True)  # written by the worker per input
        print(f"== {target}: {left:.0f} s (log: {log_path.relative_to(REPO)})", flush=True)
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.fuzz.worker", target, "--fuzz",
                 f"{time.time() + left:.0f}", str(work)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO), "NAFZ_TAG": tag})
            try:
                status = proc.wait(timeout=left + 180)
            except subprocess.TimeoutExpired:
                proc.kill()
                status = proc.wait()
        remove_leftovers(tag)
        text = log_path.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith(("NEW FAILURE", "  kept as")) or "stat::" in line:
                print(f"   {line}", flush=True)
        if status == 0:
            break
        path = _died(target, work, status, text)
        if path is None:
            print(f"   the {target} fuzzer failed to run (exit status {status}):\n"
                  + "\n".join(text.splitlines()[-15:]), flush=True)
            break
        print(f"   the fuzzer process died (exit status {status}); input kept as {path}")
    kept += sorted(set(cases.corpus_files(target)) - before)
    return kept


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="in total, shared")
    parser.add_argument("targets", nargs="*", metavar="target",
                        help=f"one of {', '.join(targets.TARGETS)} (default: all)")
    args = parser.parse_args()
    names = args.targets or list(targets.TARGETS)
    unknown = sorted(set(names) - set(targets.TARGETS))
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}")
    each = max(15.0, args.seconds / len(names))
    kept: list[Path] = []
    for name in names:
        kept += fuzz(name, each)
    if kept:
        print(f"\n{len(kept)} new regression case(s); look at them, then commit them:")
        for path in kept:
            print(f"  {path.relative_to(REPO)}: {cases.load(path)[0]}")
        return 1
    print("\nno new kind of failure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
