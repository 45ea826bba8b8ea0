"""One target in its own process: ``python -m tests.fuzz.worker TARGET`` serves cases (for
``make test``, tests/fuzz/isolate.py); ``... TARGET --fuzz DEADLINE WORKDIR`` fuzzes it until
DEADLINE (seconds since the epoch; ``make fuzz``, tests/fuzz/fuzz.py).

A separate process keeps a runaway input (memory, recursion, a thread left in a namespace, a
hang) from taking the test session down; its address space is capped per target, so an input
that makes a parser grow without bound fails with MemoryError instead of eating the machine.
"""

from __future__ import annotations

import json
import os
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

from tests.fuzz import cases
from tests.fuzz.draw import Draw

#: Project packages atheris instruments for coverage feedback.
INSTRUMENTED = ["cni", "nodeagent", "deviceplugin"]


def _cap_memory(target: Any) -> None:
    if target.memory_mb is None:
        return
    with open("/proc/self/status") as f:
        vsize_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    limit = (vsize_kb << 10) + (target.memory_mb << 20)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def run_one(target: Any, case: Any) -> cases.Broke | None:
    try:
        target.run(case)
    except cases.Broke as broke:
        return broke
    except MemoryError as exc:
        return cases.Broke("MemoryError (address space capped)", f"input: {cases.show(case)}\n"
                           f"escaped: {cases.escaped(exc)}")
    return None


def serve(name: str) -> int:
    """Cases in, verdicts out, one JSON line each (stdout is kept for the protocol)."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    from tests.fuzz import targets

    target = targets.load(name)
    target.setup()
    _cap_memory(target)
    out.write(json.dumps({"ready": True}) + "\n")
    try:
        for line in sys.stdin:
            request = json.loads(line)
            if "seed" in request:
                case = target.generate(Draw(bytes.fromhex(request["seed"])))
                out.write(json.dumps({"case": case}) + "\n")
            else:
                case = request["case"]
            broke = run_one(target, case)
            # After a MemoryError the heap may stay exhausted: a fresh worker takes over, so
            # the next input is not blamed for it.
            spent = broke is not None and "MemoryError" in broke.kind
            out.write(json.dumps({"broke": str(broke) if broke else None,
                                  "kind": broke.kind if broke else None,
                                  "restart": spent}) + "\n")
            if spent:
                break
    finally:
        target.close()
    return 0


class Finder:
    """Keeps each new kind of failure as a regression case, once per kind."""

    def __init__(self, name: str, current: Path) -> None:
        self.name = name
        self.current = current
        self.known: set[str] = set()
        self.found = 0

    def _confirmed(self, target: Any, case: Any) -> bool:
        """Whether ``case`` fails in a fresh worker too."""
        from tests.fuzz.isolate import Worker

        worker = Worker(self.name, target.timeout)
        try:
            return worker.run(case=case)[1] is not None
        finally:
            worker.stop()

    def learn(self, target: Any) -> None:
        """The kinds of failure the corpus already holds: what its cases break today."""
        from tests.fuzz import targets

        for source in (self.name, *targets.ALSO_REPLAYS.get(self.name, ())):
            for path in cases.corpus_files(source):
                broke = run_one(target, cases.load(path)[1])
                if broke is not None:
                    self.known.add(broke.kind)

    def __call__(self, target: Any, data: bytes) -> None:
        self.current.unlink(missing_ok=True)  # a harness bug in generate() is no finding
        case = target.generate(Draw(data))
        self.current.write_text(json.dumps(case))
        broke = run_one(target, case)
        if broke is None or broke.kind in self.known:
            return
        if "MemoryError" in broke.kind and not self._confirmed(target, case):
            return  # the heap was exhausted by an earlier input, not by this one
        self.known.add(broke.kind)
        self.found += 1
        stamp = time.strftime("%Y-%m-%d")
        path = cases.save(self.name, case, f"{broke.kind} [found by make fuzz {stamp}]")
        print(f"\nNEW FAILURE in {self.name}: {broke.kind}\n  kept as {path}\n"
              f"  {broke.detail[:800]}", file=sys.stderr, flush=True)


def _import_all() -> None:
    import importlib
    import pkgutil

    for package in INSTRUMENTED:
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            if info.name.endswith("__main__"):
                continue
            try:
                importlib.import_module(info.name)
            except Exception as exc:  # an optional dependency: fuzzed without it
                print(f"not instrumented: {info.name}: {exc}", file=sys.stderr)


def fuzz(name: str, deadline: float, work: Path) -> int:
    """Coverage-guided with atheris when it is installed, else random bytes, until
    ``deadline`` (the start-up, which instruments every module, counts)."""
    work.mkdir(parents=True, exist_ok=True)
    finder = Finder(name, work / "current.json")
    try:
        import atheris
    except ImportError:
        atheris = None
    if atheris is not None:
        with atheris.instrument_imports(include=INSTRUMENTED):
            _import_all()  # targets import lazily: instrument every module now
            from tests.fuzz import targets

            target = targets.load(name)
    else:
        from tests.fuzz import targets

        target = targets.load(name)
    target.setup()
    _cap_memory(target)
    finder.learn(target)
    seconds = deadline - time.time()
    try:
        if atheris is None:
            print(f"{name}: atheris is not installed: random inputs for {seconds:.0f} s",
                  file=sys.stderr)
            rng, deadline = random.Random(), time.monotonic() + seconds
            while time.monotonic() < deadline:
                finder(target, rng.randbytes(4096))
            return 0
        corpus = work / "corpus"
        corpus.mkdir(exist_ok=True)
        if not any(corpus.iterdir()):  # start from the seeded pass's inputs, not from nothing
            for i in range(16):
                (corpus / f"seed-{i}").write_bytes(random.Random(f"{name}:{i}").randbytes(4096))
        atheris.Setup([sys.argv[0], f"-max_total_time={max(1, int(seconds))}",
                       f"-timeout={int(target.timeout) * 2}", "-rss_limit_mb=0",
                       "-print_final_stats=1", "-max_len=4096", str(corpus)],
                      lambda data: finder(target, data))
        atheris.Fuzz()  # exits the process when the time is up
    finally:
        target.close()
    return 0


def main(argv: list[str]) -> int:
    name = argv[0]
    if len(argv) >= 3 and argv[1] == "--fuzz":
        return fuzz(name, float(argv[2]), Path(argv[3]))
    return serve(name)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
