"""C ``Bitmap`` vs pure-Python ``PyBitmap``: differential, serialization and edge-case tests."""

import random
import re
import shutil
import struct
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from nodeagent.ipam.bitmap import MAX_SIZE, Bitmap, BitmapFormatError, PyBitmap

NATIVE = Path(__file__).resolve().parents[2] / "native"
IMPLS = [Bitmap, PyBitmap]
BitmapType = Bitmap | PyBitmap


def outcome(fn: Callable[[], Any]) -> tuple[Any, ...]:
    """Result of fn, or the exception type and message, for comparing implementations."""
    try:
        return ("ok", fn())
    except ValueError as exc:
        return ("error", type(exc), str(exc))


# Sizes around word (64) and summary-level (4096, 262144) boundaries, plus small odd ones.
SIZES = st.one_of(
    st.integers(1, 200),
    st.sampled_from([63, 64, 65, 127, 128, 129, 4095, 4096, 4097, 3 * 4096 + 70]),
)


class Differential(RuleBasedStateMachine):
    """Drives both implementations with the same operations; results must be identical."""

    c: Bitmap
    py: PyBitmap

    @initialize(size=SIZES)
    def create(self, size: int) -> None:
        self.c, self.py = Bitmap(size), PyBitmap(size)

    def same(self, op: Callable[[BitmapType], Any]) -> Any:
        got_c, got_py = outcome(lambda: op(self.c)), outcome(lambda: op(self.py))
        assert got_c == got_py
        return got_c

    def slot(self, data: st.DataObject) -> int:
        """Mostly valid slots, sometimes just out of range."""
        return data.draw(st.integers(-1, self.c.size))

    @rule()
    def allocate_lowest(self) -> None:
        self.same(lambda bm: bm.allocate_lowest())

    @rule(data=st.data())
    def allocate_many(self, data: st.DataObject) -> None:
        n = data.draw(st.one_of(st.integers(0, 70), st.integers(0, self.c.size + 1)))
        self.same(lambda bm: bm.allocate_many(n))

    @rule(data=st.data())
    def allocate(self, data: st.DataObject) -> None:
        slot = self.slot(data)
        self.same(lambda bm: bm.allocate(slot))

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        slot = self.slot(data)
        self.same(lambda bm: bm.release(slot))

    @precondition(lambda self: self.py.allocated > 0)
    @rule(data=st.data())
    def release_allocated(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from(list(self.py)))
        assert self.same(lambda bm: bm.release(slot)) == ("ok", True)

    @rule(data=st.data())
    def reserve_range(self, data: st.DataObject) -> None:
        lo = self.slot(data)
        hi = data.draw(st.one_of(st.integers(lo - 1, lo + 3), st.integers(-1, self.c.size)))
        self.same(lambda bm: bm.reserve_range(lo, hi))

    @rule(data=st.data())
    def query(self, data: st.DataObject) -> None:
        slot = self.slot(data)
        self.same(lambda bm: (bm.test(slot), bm.is_reserved(slot)))
        self.same(lambda bm: slot in bm)
        self.same(lambda bm: bm.next_allocated(slot))

    @rule()
    def iterate(self) -> None:
        self.same(list)

    @rule()
    def swap_through_bytes(self) -> None:
        """Continue with each implementation loaded from the other's serialization."""
        self.c, self.py = (
            Bitmap.from_bytes(self.py.to_bytes()),
            PyBitmap.from_bytes(self.c.to_bytes(), size=self.c.size),
        )

    @invariant()
    def same_state(self) -> None:
        assert (self.c.allocated, self.c.reserved, self.c.free) == (
            self.py.allocated,
            self.py.reserved,
            self.py.free,
        )
        assert self.c.allocated + self.c.reserved + self.c.free == self.c.size
        assert self.c.to_bytes() == self.py.to_bytes()


TestDifferential = Differential.TestCase
TestDifferential.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ---- edge cases, run against both implementations ----


@pytest.fixture(params=IMPLS, ids=lambda cls: cls.__name__)
def impl(request: pytest.FixtureRequest) -> type[BitmapType]:
    return request.param


@pytest.mark.parametrize("size", [0, -1, MAX_SIZE + 1])
def test_invalid_size(impl: type[BitmapType], size: int) -> None:
    with pytest.raises(ValueError, match="size"):
        impl(size)


def test_size_one(impl: type[BitmapType]) -> None:
    bm = impl(1)
    assert bm.allocate_lowest() == 0
    assert bm.allocate_lowest() is None
    assert bm.release(0) and not bm.release(0)
    assert bm.reserve_range(0, 0) == 1
    assert bm.allocate_lowest() is None
    assert (bm.allocated, bm.reserved, bm.free) == (0, 1, 0)


def test_max_size(impl: type[BitmapType]) -> None:
    bm = impl(MAX_SIZE)
    assert bm.reserve_range(MAX_SIZE - 2, MAX_SIZE - 1) == 2
    assert bm.allocate(MAX_SIZE - 3)
    assert not bm.allocate(MAX_SIZE - 1)
    assert bm.allocate_lowest() == 0
    assert list(bm) == [0, MAX_SIZE - 3]
    assert bm.free == MAX_SIZE - 4
    with pytest.raises(ValueError, match="out of range"):
        bm.test(MAX_SIZE)


@pytest.mark.parametrize("size", [64, 130, 4096 + 1])
def test_full_map(impl: type[BitmapType], size: int) -> None:
    bm = impl(size)
    assert bm.allocate_many(size + 10) == list(range(size))
    assert bm.allocate_lowest() is None
    assert bm.allocate_many(5) == []
    assert bm.free == 0 and bm.allocated == size
    assert bm.release(size // 2)
    assert bm.allocate_lowest() == size // 2


def test_reserved_ranges_like_a_slash_24(impl: type[BitmapType]) -> None:
    bm = impl(256)
    for lo, hi in [(0, 0), (255, 255), (1, 1), (10, 19)]:  # network, broadcast, gw, exclude
        bm.reserve_range(lo, hi)
    assert bm.reserve_range(5, 12) == 5  # overlap with an existing reservation is fine
    assert bm.allocate_many(3) == [2, 3, 4]
    assert bm.allocate_lowest() == 20
    assert not bm.allocate(0) and not bm.release(255)
    assert bm.is_reserved(15) and not bm.test(15) and 15 not in bm
    assert (bm.allocated, bm.reserved, bm.free) == (4, 18, 234)


def test_reserve_over_allocated_is_all_or_nothing(impl: type[BitmapType]) -> None:
    bm = impl(200)
    bm.allocate(150)
    before = bm.to_bytes()
    with pytest.raises(ValueError, match=r"cannot reserve \[100, 199\]: slot 150 is allocated"):
        bm.reserve_range(100, 199)
    assert bm.to_bytes() == before


def test_release_free_or_reserved_slot(impl: type[BitmapType]) -> None:
    bm = impl(10)
    bm.reserve_range(3, 3)
    assert not bm.release(0) and not bm.release(3)
    assert bm.allocated == 0 and bm.is_reserved(3)


@pytest.mark.parametrize(
    "call",
    [
        lambda bm: bm.allocate(10),
        lambda bm: bm.allocate(-1),
        lambda bm: bm.release(10),
        lambda bm: bm.test(-1),
        lambda bm: bm.is_reserved(10),
        lambda bm: bm.reserve_range(5, 10),
        lambda bm: bm.reserve_range(-1, 3),
        lambda bm: bm.reserve_range(5, 4),
        lambda bm: bm.next_allocated(-1),
        lambda bm: bm.allocate_many(-1),
    ],
)
def test_out_of_range(impl: type[BitmapType], call: Callable[[BitmapType], Any]) -> None:
    with pytest.raises(ValueError):
        call(impl(10))


def test_contains_and_next_allocated_tolerate_non_slots(impl: type[BitmapType]) -> None:
    bm = impl(10)
    bm.allocate(9)
    assert 9 in bm and 10 not in bm and -1 not in bm and "9" not in bm
    assert bm.next_allocated(10) is None and bm.next_allocated(2**40) is None


def test_iteration_over_sparse_map(impl: type[BitmapType]) -> None:
    bm = impl(1 << 20)
    slots = sorted(random.Random(1).sample(range(1 << 20), 300))
    for slot in slots:
        bm.allocate(slot)
    with pytest.raises(ValueError, match="is allocated"):
        bm.reserve_range(slots[5], slots[5])
    assert list(bm) == slots


# ---- serialization ----


@pytest.mark.parametrize(("src", "dst"), [(Bitmap, PyBitmap), (PyBitmap, Bitmap)])
def test_roundtrip_across_implementations(src: type[BitmapType], dst: type[BitmapType]) -> None:
    bm = src(70_000)
    bm.reserve_range(0, 0)
    bm.reserve_range(65_000, 69_999)
    bm.allocate_many(5000)
    for slot in random.Random(2).sample(range(1, 65_000), 2000):
        if slot in bm:
            bm.release(slot)
        else:
            bm.allocate(slot)
    data = bm.to_bytes()
    loaded = dst.from_bytes(data, size=70_000)
    assert loaded.to_bytes() == data
    assert list(loaded) == list(bm)
    assert loaded.allocate_many(10) == bm.allocate_many(10)


def test_serialization_is_compact(impl: type[BitmapType]) -> None:
    assert len(impl(MAX_SIZE).to_bytes()) < 32  # empty
    size = 1 << 20
    bm = impl(size)
    bm.reserve_range(0, 0)
    bm.reserve_range(size - 1, size - 1)
    bm.allocate_many(size // 2)
    assert len(bm.to_bytes()) < 100  # dense prefix
    bm.allocate_many(size)
    assert len(bm.to_bytes()) < 80  # full
    for slot in random.Random(3).sample(range(1, size - 1), 1000):
        bm.release(slot)
    assert len(bm.to_bytes()) < 1000 * 12  # sparse holes


def blob(size: int, n_alloc: int, n_resv: int, body: bytes) -> bytes:
    """A serialized bitmap built by hand from the format described in bitmap.h."""
    return struct.pack("<4sBBHIII", b"NABM", 1, 0, 0, size, n_alloc, n_resv) + body


def zeros(n: int) -> bytes:
    return bytes([n << 2 | 0])


def ones(n: int) -> bytes:
    return bytes([n << 2 | 1])


def lit(*words: int) -> bytes:
    return bytes([len(words) << 2 | 2]) + struct.pack(f"<{len(words)}Q", *words)


# 130 slots (3 words): 0-1 reserved, 2-6 and 100 allocated.
VALID_BODY = lit(0b11) + zeros(2) + lit(0b1111100, 1 << 36) + zeros(1)
VALID = blob(130, 6, 2, VALID_BODY)


def test_format_matches_documentation(impl: type[BitmapType]) -> None:
    bm = impl(130)
    bm.reserve_range(0, 1)
    bm.allocate_many(5)
    bm.allocate(100)
    assert bm.to_bytes() == VALID
    full = impl(128)
    full.allocate_many(128)
    assert full.to_bytes() == blob(128, 128, 0, zeros(2) + ones(2))


@pytest.mark.parametrize(
    "data",
    [
        blob(130, 6, 2, lit(0b11) + zeros(1) + zeros(1) + lit(0b1111100) + lit(1 << 36) + zeros(1)),
        blob(130, 6, 2, lit(0b11, 0, 0) + lit(0b1111100, 1 << 36, 0)),
        blob(130, 6, 2, lit(0b11) + b"\x88\x80\x80\x00" + VALID_BODY[10:]),  # 4-byte token
    ],
    ids=["split runs", "zero literals", "overlong token"],
)
def test_non_canonical_input_accepted(impl: type[BitmapType], data: bytes) -> None:
    assert impl.from_bytes(data).to_bytes() == VALID


def patched(offset: int, fmt: str, value: int) -> bytes:
    data = bytearray(VALID)
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


CORRUPT = {
    "empty": b"",
    "truncated header": VALID[:19],
    "truncated body": VALID[:-1],
    "trailing byte": VALID + b"\0",
    "bad magic": patched(0, "<B", ord("X")),
    "version 0": patched(4, "<B", 0),
    "version 2": patched(4, "<B", 2),
    "flags": patched(5, "<B", 1),
    "header padding": patched(6, "<H", 1),
    "size 0": patched(8, "<I", 0),
    "size too big": patched(8, "<I", MAX_SIZE + 1),
    "size bigger than body": patched(8, "<I", 200),
    "allocated count": patched(12, "<I", 5),
    "reserved count": patched(16, "<I", 3),
    "zero-length run": blob(130, 6, 2, bytes([0 << 2 | 0]) + VALID_BODY),
    "run kind 3": blob(130, 0, 0, bytes([3 << 2 | 3]) + zeros(3)),
    "run past the end": blob(130, 0, 0, zeros(4) + zeros(3)),
    "truncated literal": blob(130, 0, 0, lit(1, 0)[:-1]),
    "bit beyond size": blob(130, 0, 1, zeros(2) + lit(1 << 2) + zeros(3)),
    "ones over padding": blob(130, 0, 192, ones(3) + zeros(3)),
    "reserved and allocated": blob(130, 1, 1, lit(1) + zeros(2) + lit(1) + zeros(2)),
    "5-byte run token": blob(130, 0, 0, b"\x8c\x80\x80\x80\x00" + zeros(3)),
}


@pytest.mark.parametrize("data", CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupted_input_rejected(impl: type[BitmapType], data: bytes) -> None:
    with pytest.raises(BitmapFormatError):
        impl.from_bytes(data)


def test_expected_size_mismatch_rejected(impl: type[BitmapType]) -> None:
    with pytest.raises(BitmapFormatError, match="size"):
        impl.from_bytes(VALID, size=131)
    assert impl.from_bytes(VALID, size=130).size == 130


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_input_same_verdict(data: st.DataObject) -> None:
    """Random byte edits: both implementations accept (with equal state) or both reject."""
    buf = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(buf)))
        match data.draw(st.sampled_from(["set", "insert", "delete", "truncate"])):
            case "set" if pos < len(buf):
                buf[pos] = data.draw(st.integers(0, 255))
            case "insert":
                buf.insert(pos, data.draw(st.integers(0, 255)))
            case "delete" if pos < len(buf):
                del buf[pos]
            case "truncate":
                del buf[pos:]
    results = []
    for cls in IMPLS:
        try:
            results.append(cls.from_bytes(bytes(buf)).to_bytes())
        except BitmapFormatError:
            results.append(None)
    assert results[0] == results[1]


# ---- scale ----


def test_lowest_free_in_99_percent_full_max_map() -> None:
    bm = Bitmap(MAX_SIZE)
    bm.reserve_range(0, 0)
    for _ in range(16):
        bm.allocate_many(1 << 20)
    assert bm.free == 0 and bm.allocate_lowest() is None
    holes = sorted(random.Random(4).sample(range(1, MAX_SIZE), MAX_SIZE // 100))
    for slot in holes:
        assert bm.release(slot)
    assert bm.free == len(holes)
    assert bm.allocate_lowest() == holes[0]
    assert bm.allocate_many(1000) == holes[1:1001]
    # the cross-check against the reference at full scale goes through serialization
    ref = PyBitmap.from_bytes(bm.to_bytes())
    assert ref.allocate_many(10) == bm.allocate_many(10) == holes[1001:1011]
    assert bm.allocate_many(MAX_SIZE) == holes[1011:]
    assert bm.allocate_lowest() is None


# ---- native source hygiene ----


def test_cdef_matches_header() -> None:
    header = (NATIVE / "bitmap.h").read_text()
    cdef = (NATIVE / "build_bitmap.py").read_text()
    assert set(re.findall(r"\b(bm_\w+)\(", header)) == set(re.findall(r"\b(bm_\w+)\(", cdef))


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_c_source_compiles_without_warnings(tmp_path: Path) -> None:
    cmd = ["cc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-c", str(NATIVE / "bitmap.c")]
    subprocess.run([*cmd, "-o", str(tmp_path / "bitmap.o")], check=True)


def test_concurrent_allocations_are_unique() -> None:
    """cffi drops the GIL inside C calls; Bitmap's lock must keep allocations exclusive."""
    bm = Bitmap(1 << 18)
    results: list[list[int | None]] = [[] for _ in range(4)]

    def worker(out: list[int | None]) -> None:
        for _ in range(20_000):
            out.append(bm.allocate_lowest())
            if len(out) % 3 == 0:
                bm.allocate_many(2)

    threads = [threading.Thread(target=worker, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    singles = [slot for out in results for slot in out]
    assert None not in singles and len(set(singles)) == len(singles) == 80_000
    assert bm.allocated == 80_000 + 2 * 4 * (20_000 // 3)
    assert list(bm) == list(range(bm.allocated))
