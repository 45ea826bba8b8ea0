"""Allocation throughput through the Python API, at several pool sizes and fullness levels.

    python tests/bench/bench_bitmap.py

Compares the C ``Bitmap`` (one call per allocation, and ``allocate_many`` batches) with the
whereabouts-style peer (sorted list of reserved offsets, scanned for the first gap) and the
pure-Python ``PyBitmap`` reference.  Pools are filled as lowest-first allocation leaves
them: a contiguous allocated prefix.  Each measurement allocates rounds of slots (timed)
and releases them again (untimed), so fullness stays put; slow implementations run fewer
operations under a time budget.  Rates are per second of process CPU time, best of several
slices interleaved across fullness levels, so a busy shared host skews them less.
``allocate_many`` batches are 64 slots at every fullness, so those rates compare.
Prints one JSON object per line.
"""

import bisect
import sys
import time
from array import array
from collections.abc import Callable, Sequence

from nodeagent.ipam.bitmap import Bitmap, PyBitmap
from tests.bench.common import emit

PREFIXES = {"/16": 1 << 16, "/8": 1 << 24}
FULLNESS = (0.0, 0.5, 0.99)
UNIT = "allocs/s"
SLICES = 8
BATCH = 64  # allocate_many size; fits the 655 free slots of a 99 % full /16 (rounds use <= 10 %)


class SortedListScan:
    """The incumbent's method: reserved offsets in a sorted list, scanned for the first gap.

    (whereabouts walks the range and checks each IP against its reservation list; scanning
    the sorted list is the same O(position of the lowest free IP) work, with less overhead.)
    """

    def __init__(self, size: int, taken: int) -> None:
        self.size = size
        self.reserved = array("I", range(taken))

    def allocate_lowest(self) -> int | None:
        offset = 0
        for ip in self.reserved:
            if ip != offset:
                break
            offset += 1
        if offset >= self.size:
            return None
        self.reserved.insert(offset, offset)  # every offset below is taken: stays sorted
        return offset

    def release(self, offset: int) -> None:
        del self.reserved[bisect.bisect_left(self.reserved, offset)]


class Meter:
    """Allocation rate of one implementation at one fullness, measured in slices.

    A slice allocates rounds of slots (timed; rounds double up to ``cap``) and releases them
    again (untimed), so fullness stays put.  The rate is the best slice's, in CPU time.
    """

    def __init__(
        self,
        take: Callable[[int], Sequence[int | None]],
        release: Callable[[int], object],
        cap: int,
        budget: float,
    ) -> None:
        self.take, self.release, self.cap, self.budget = take, release, cap, budget
        self.round, self.best, self.ops, self.wall = 1, 0.0, 0, 0.0

    def measure_slice(self) -> None:
        """One slice of ~budget/SLICES seconds, unless the budget is spent (slow peers: 1 op)."""
        if self.ops and self.wall > self.budget:
            return
        began, done, elapsed = time.perf_counter(), 0, 0.0
        while not done or elapsed < self.budget / SLICES:
            start = time.process_time()
            slots = self.take(self.round)
            elapsed += time.process_time() - start
            for slot in slots:
                assert slot is not None, "pool ran out of free slots"
                self.release(slot)
            done += self.round
            self.round = min(2 * self.round, self.cap)
        self.best, self.ops = max(self.best, done / elapsed), self.ops + done
        self.wall += time.perf_counter() - began


def single(allocate: Callable[[], int | None]) -> Callable[[int], list[int | None]]:
    """One API call per allocation."""
    return lambda n: [allocate() for _ in range(n)]


def filled_bitmap(size: int, taken: int) -> Bitmap:
    bm = Bitmap(size)
    while taken:
        taken -= len(bm.allocate_many(min(taken, 1 << 20)))
    return bm


def sig(x: float) -> float:
    return float(f"{x:.3g}")


def main() -> None:
    began = time.perf_counter()
    for prefix, size in PREFIXES.items():
        meters: dict[float, dict[str, Meter]] = {}
        for fullness in FULLNESS:
            taken = int(size * fullness)
            cap = max(1, min((size - taken) // 10, 10_000))  # drifts fullness by <= 0.1 %
            ours = filled_bitmap(size, taken)
            ref = PyBitmap.from_bytes(ours.to_bytes())
            peer = SortedListScan(size, taken)
            for impl in (ours, ref, peer):  # same answer from all three
                assert impl.allocate_lowest() == taken
                impl.release(taken)
            meters[fullness] = {
                "single": Meter(single(ours.allocate_lowest), ours.release, cap, 0.3),
                "batch": Meter(ours.allocate_many, ours.release, min(cap, BATCH), 0.3),
                "pyref": Meter(single(ref.allocate_lowest), ref.release, cap, 0.5),
                "peer": Meter(single(peer.allocate_lowest), peer.release, cap, 0.5),
            }
        for _ in range(SLICES):  # interleaved, so load changes hit every fullness alike
            for by_impl in meters.values():
                for meter in by_impl.values():
                    meter.measure_slice()

        for fullness, m in meters.items():
            for bench, mode in (("alloc_lowest_single", "single"), ("alloc_lowest_batch", "batch")):
                ours_rate, peer_rate, py_rate = m[mode].best, m["peer"].best, m["pyref"].best
                emit(
                    bench=bench,
                    ours=sig(ours_rate),
                    peer=sig(peer_rate),
                    unit=UNIT,
                    ratio=sig(ours_rate / peer_rate),
                    prefix=prefix,
                    size=size,
                    fullness=fullness,
                    peer_impl="whereabouts-style sorted-list scan",
                    pyref=sig(py_rate),
                    ratio_vs_pyref=sig(ours_rate / py_rate),
                    ops={"ours": m[mode].ops, "peer": m["peer"].ops, "pyref": m["pyref"].ops},
                    **({"batch": m[mode].cap} if mode == "batch" else {}),
                )
        flat_ours, flat_peer = (
            min(m[impl].best for m in meters.values()) / max(m[impl].best for m in meters.values())
            for impl in ("single", "peer")
        )
        emit(
            bench="alloc_lowest_single_flatness",
            ours=sig(flat_ours),
            peer=sig(flat_peer),
            unit="min/max rate over fullness 0-99 %",
            ratio=sig(flat_ours / flat_peer),
            prefix=prefix,
        )
    print(f"# total {time.perf_counter() - began:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
