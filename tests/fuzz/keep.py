"""Keep inputs of the seeded pass as regression cases:
``python -m tests.fuzz.keep TARGET INDEX...`` (the indexes a failing seeded pass printed)."""

from __future__ import annotations

import sys
import time

from tests.fuzz import cases, targets
from tests.fuzz.isolate import Worker


def seed(target: str, index: int) -> bytes:
    import random

    from tests.fuzz.test_fuzz import INPUT_BYTES, SEED

    return random.Random(f"{SEED}:{target}:{index}").randbytes(INPUT_BYTES)


def main(argv: list[str]) -> int:
    target, indexes = argv[0], [int(i) for i in argv[1:]]
    worker = Worker(target, targets.load(target).timeout)
    try:
        for index in indexes:
            case, broke = worker.run(seed=seed(target, index))
            if broke is None:
                print(f"{target} #{index}: passes now, not kept")
                continue
            kind = broke.split("\n", 1)[0]
            path = cases.save(target, case, f"{kind} [found by the seeded pass"
                              f" {time.strftime('%Y-%m-%d')}]")
            print(f"{target} #{index}: kept as {path}")
    finally:
        worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
