"""Every fuzz target: its regression corpus replayed, and a short seeded pass.

Each target runs in its own worker process (tests/fuzz/worker.py), so an input that hangs,
exhausts memory or kills the interpreter fails its test instead of the session. The seeded pass
draws its inputs from ``random.Random(f"{SEED}:{target}:{i}")``: the same inputs every run.
``make fuzz`` searches much longer (docs/fuzzing.md); what it finds lands in the corpus.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz import cases, targets
from tests.fuzz.isolate import Worker

SEED = "nodeagent-fuzz-1"
INPUT_BYTES = 4096


def _regressions() -> list[tuple[str, Path]]:
    found = []
    for target in targets.TARGETS:
        for source in (target, *targets.ALSO_REPLAYS.get(target, ())):
            found += [(target, path) for path in cases.corpus_files(source)]
    return found


#: Targets that create network namespaces.
NEEDS_ROOT = {"cni", "shim"}


def _require(target: str) -> None:
    if target in NEEDS_ROOT and os.geteuid() != 0:
        pytest.skip("needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN): creates network namespaces")


class Workers:
    def __init__(self) -> None:
        self._workers: dict[str, Worker] = {}

    def __getitem__(self, target: str) -> Worker:
        if target not in self._workers:
            self._workers[target] = Worker(target, targets.load(target).timeout)
        return self._workers[target]

    def stop(self) -> None:
        for worker in self._workers.values():
            worker.stop()


@pytest.fixture(scope="module")
def workers() -> Iterator[Workers]:
    pool = Workers()
    yield pool
    pool.stop()


@pytest.mark.parametrize(("target", "path"), _regressions(),
                         ids=[f"{t}:{p.parent.name}/{p.stem}" for t, p in _regressions()])
def test_regression_case(target: str, path: Path, workers: Workers) -> None:
    _require(target)
    once, case = cases.load(path)
    _, broke = workers[target].run(case=case)
    assert broke is None, (f"{path.relative_to(cases.CORPUS)} (once broke: {once})\n"
                           f"through target {target!r} it still breaks:\n{broke}")


@pytest.mark.parametrize("target", list(targets.TARGETS))
def test_seeded_pass(target: str, workers: Workers) -> None:
    _require(target)
    count = targets.load(target).seeded
    failures: dict[str, tuple[int, str]] = {}
    for i in range(count):
        seed = random.Random(f"{SEED}:{target}:{i}").randbytes(INPUT_BYTES)
        _, broke = workers[target].run(seed=seed)
        if broke is not None:
            failures.setdefault(broke.split("\n", 1)[0], (i, broke))
    report = "\n\n".join(f"[#{i}] {broke}" for i, broke in failures.values())
    indexes = " ".join(str(i) for i, _ in failures.values())
    assert not failures, (f"{len(failures)} kind(s) of failure in {count} seeded inputs of"
                          f" {target!r}; keep them as regression cases with\n"
                          f"  python -m tests.fuzz.keep {target} {indexes}\n\n{report}")
