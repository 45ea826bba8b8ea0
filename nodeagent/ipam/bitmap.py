"""Slot bitmaps for IPAM: which IP offsets / VF indexes of a pool are taken.

``Bitmap`` wraps the C allocator (native/bitmap.c, built by cffi as ``nodeagent._bitmap``);
``PyBitmap`` is a deliberately simple pure-Python reference with the same API and the same
serialization format, used by the differential tests and the benchmark.

Every slot is free, allocated or reserved.  Reserved slots (network, broadcast, gateway,
``exclude`` ranges) are never handed out, cannot be released, and count neither as
allocated nor as free.  The wire format is documented in native/bitmap.h.
"""

import itertools
import struct
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, Self

from nodeagent._bitmap import ffi, lib

MAX_SIZE: int = lib.BM_MAX_SIZE
FORMAT_VERSION: int = lib.BM_FORMAT_VERSION

__all__ = ["FORMAT_VERSION", "MAX_SIZE", "Bitmap", "BitmapFormatError", "PyBitmap"]


class BitmapFormatError(ValueError):
    """Serialized bitmap is malformed, of an unsupported version or of an unexpected size."""


class _BitmapBase(ABC):
    """API shared by both implementations; subclasses provide the primitives."""

    __slots__ = ()

    @property
    @abstractmethod
    def size(self) -> int: ...

    @property
    @abstractmethod
    def allocated(self) -> int:
        """Number of allocated slots."""

    @property
    @abstractmethod
    def reserved(self) -> int:
        """Number of reserved slots."""

    @property
    def free(self) -> int:
        """Number of slots that can still be allocated."""
        return self.size - self.allocated - self.reserved

    @abstractmethod
    def allocate_lowest(self) -> int | None:
        """Allocate the lowest free slot; None when full."""

    @abstractmethod
    def allocate_many(self, n: int) -> list[int]:
        """Allocate up to ``n`` lowest free slots (fewer once full), in ascending order."""

    @abstractmethod
    def allocate(self, slot: int) -> bool:
        """Allocate ``slot``; False if it is already allocated or reserved."""

    @abstractmethod
    def release(self, slot: int) -> bool:
        """Release ``slot``; False if it was not allocated (free or reserved)."""

    @abstractmethod
    def test(self, slot: int) -> bool:
        """Whether ``slot`` is allocated."""

    @abstractmethod
    def is_reserved(self, slot: int) -> bool: ...

    @abstractmethod
    def reserve_range(self, lo: int, hi: int) -> int:
        """Reserve [lo, hi] inclusive and return how many slots were newly reserved.

        All or nothing: ValueError if any slot in the range is allocated.
        """

    @abstractmethod
    def next_allocated(self, start: int = 0) -> int | None:
        """Lowest allocated slot >= ``start`` (any start >= 0), or None."""

    @abstractmethod
    def to_bytes(self) -> bytes: ...

    @classmethod
    @abstractmethod
    def from_bytes(cls, data: bytes, size: int | None = None) -> Self:
        """Decode ``to_bytes`` output (of either implementation).

        ``size``, if given, must match the serialized size.  Raises BitmapFormatError.
        """

    def __contains__(self, slot: object) -> bool:
        """``slot in bitmap``: allocated; False (not an error) for non-slots."""
        return isinstance(slot, int) and 0 <= slot < self.size and self.test(slot)

    def __iter__(self) -> Iterator[int]:
        """Allocated slots in ascending order."""
        slot = self.next_allocated(0)
        while slot is not None:
            yield slot
            slot = self.next_allocated(slot + 1)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, allocated={self.allocated}, "
            f"reserved={self.reserved}, free={self.free})"
        )

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.size:
            raise ValueError(f"slot {slot} out of range for a bitmap of size {self.size}")

    def _check_range(self, lo: int, hi: int) -> None:
        if not 0 <= lo <= hi < self.size:
            raise ValueError(
                f"invalid range [{lo}, {hi}] for a bitmap of size {self.size} "
                f"(need 0 <= lo <= hi < size)"
            )

    def _busy_error(self, lo: int, hi: int) -> ValueError:
        return ValueError(
            f"cannot reserve [{lo}, {hi}]: slot {self.next_allocated(lo)} is allocated"
        )


def _check_size(size: int) -> None:
    if not 1 <= size <= MAX_SIZE:
        raise ValueError(f"bitmap size must be in 1..{MAX_SIZE}, got {size}")


def _check_count(n: int) -> None:
    if n < 0:
        raise ValueError(f"cannot allocate a negative number of slots ({n})")


class Bitmap(_BitmapBase):
    """Bitmap backed by the C allocator: lowest-free costs the same at any fullness.

    Thread-safe: cffi releases the GIL around every C call, so each call holds a lock.
    """

    __slots__ = ("_bm", "_lock", "_size")

    def __init__(self, size: int) -> None:
        _check_size(size)
        out = ffi.new("bm_t **")
        _raise_for(lib.bm_create(size, out))
        self._adopt(out[0])

    def _adopt(self, bm: Any) -> None:  # bm: a "bm_t *" cdata
        self._bm = ffi.gc(bm, lib.bm_destroy)
        self._size: int = lib.bm_size(bm)
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._size

    @property
    def allocated(self) -> int:
        with self._lock:
            return lib.bm_count_allocated(self._bm)

    @property
    def reserved(self) -> int:
        with self._lock:
            return lib.bm_count_reserved(self._bm)

    @property
    def free(self) -> int:
        with self._lock:
            return lib.bm_count_free(self._bm)

    def allocate_lowest(self) -> int | None:
        with self._lock:
            slot = lib.bm_alloc_lowest(self._bm)
        return slot if slot >= 0 else None

    def allocate_many(self, n: int) -> list[int]:
        _check_count(n)
        with self._lock:
            n = min(n, lib.bm_count_free(self._bm))
            out = ffi.new("uint32_t[]", n)
            return ffi.unpack(out, lib.bm_alloc_many(self._bm, n, out))

    def allocate(self, slot: int) -> bool:
        self._check_slot(slot)
        with self._lock:
            return lib.bm_alloc(self._bm, slot) == lib.BM_OK

    def release(self, slot: int) -> bool:
        self._check_slot(slot)
        with self._lock:
            return lib.bm_release(self._bm, slot) == lib.BM_OK

    def test(self, slot: int) -> bool:
        self._check_slot(slot)
        with self._lock:
            return lib.bm_test(self._bm, slot) == 1

    def is_reserved(self, slot: int) -> bool:
        self._check_slot(slot)
        with self._lock:
            return lib.bm_is_reserved(self._bm, slot) == 1

    def reserve_range(self, lo: int, hi: int) -> int:
        self._check_range(lo, hi)
        with self._lock:
            added = lib.bm_reserve_range(self._bm, lo, hi)
        if added == lib.BM_EBUSY:
            raise self._busy_error(lo, hi)
        _raise_for(added)
        return added

    def next_allocated(self, start: int = 0) -> int | None:
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        if start >= self._size:
            return None
        with self._lock:
            slot = lib.bm_next_allocated(self._bm, start)
        return slot if slot >= 0 else None

    def to_bytes(self) -> bytes:
        with self._lock:
            n = lib.bm_serialize(self._bm, ffi.NULL, 0)
            buf = ffi.new("uint8_t[]", n)
            lib.bm_serialize(self._bm, buf, n)
        return ffi.buffer(buf)[:]

    @classmethod
    def from_bytes(cls, data: bytes, size: int | None = None) -> Self:
        if size is not None:
            _check_size(size)
        out = ffi.new("bm_t **")
        err = lib.bm_deserialize(ffi.from_buffer("uint8_t[]", data), len(data), size or 0, out)
        if err != lib.BM_OK:
            reason = ffi.string(lib.bm_strerror(err)).decode()
            raise BitmapFormatError(f"cannot load bitmap: {reason}")
        self = cls.__new__(cls)
        self._adopt(out[0])
        return self


def _raise_for(code: int) -> None:
    """Turn an unexpected negative C return code into an exception."""
    if code >= 0:
        return
    reason = ffi.string(lib.bm_strerror(code)).decode()
    if code == lib.BM_ENOMEM:
        raise MemoryError(reason)
    raise ValueError(reason)


# ---- pure-Python reference ----

_FREE, _ALLOC, _RESV = 0, 1, 2
_ZERO_RUN, _ONES_RUN, _LITERAL_RUN = 0, 1, 2
_ONES = (1 << 64) - 1
_HEADER = struct.Struct("<4sBBHIII")  # magic, version, flags, padding, size, allocated, reserved
_MAGIC = b"NABM"


class PyBitmap(_BitmapBase):
    """Reference implementation: one state byte per slot and linear scans.  Not thread-safe.

    Written for obviousness, not speed; the layers of the wire format are built through
    big integers (bit i = slot i) so that even 2^24 slots convert in well under a second.
    """

    __slots__ = ("_state",)

    def __init__(self, size: int) -> None:
        _check_size(size)
        self._state = bytearray(size)

    @property
    def size(self) -> int:
        return len(self._state)

    @property
    def allocated(self) -> int:
        return self._state.count(_ALLOC)

    @property
    def reserved(self) -> int:
        return self._state.count(_RESV)

    def allocate_lowest(self) -> int | None:
        slot = self._state.find(_FREE)
        if slot < 0:
            return None
        self._state[slot] = _ALLOC
        return slot

    def allocate_many(self, n: int) -> list[int]:
        _check_count(n)
        slots: list[int] = []
        slot = 0
        # Everything below the slot just taken is used, so each search resumes there.
        while len(slots) < n and (slot := self._state.find(_FREE, slot)) >= 0:
            self._state[slot] = _ALLOC
            slots.append(slot)
        return slots

    def allocate(self, slot: int) -> bool:
        self._check_slot(slot)
        if self._state[slot] != _FREE:
            return False
        self._state[slot] = _ALLOC
        return True

    def release(self, slot: int) -> bool:
        self._check_slot(slot)
        if self._state[slot] != _ALLOC:
            return False
        self._state[slot] = _FREE
        return True

    def test(self, slot: int) -> bool:
        self._check_slot(slot)
        return self._state[slot] == _ALLOC

    def is_reserved(self, slot: int) -> bool:
        self._check_slot(slot)
        return self._state[slot] == _RESV

    def reserve_range(self, lo: int, hi: int) -> int:
        self._check_range(lo, hi)
        if self._state.find(_ALLOC, lo, hi + 1) >= 0:
            raise self._busy_error(lo, hi)
        added = self._state.count(_FREE, lo, hi + 1)
        self._state[lo : hi + 1] = bytes([_RESV]) * (hi + 1 - lo)
        return added

    def next_allocated(self, start: int = 0) -> int | None:
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        slot = self._state.find(_ALLOC, start)
        return slot if slot >= 0 else None

    def to_bytes(self) -> bytes:
        header = _HEADER.pack(
            _MAGIC, FORMAT_VERSION, 0, 0, self.size, self.allocated, self.reserved
        )
        nwords = -(-self.size // 64)
        return (
            header
            + _encode_layer(self._layer(_RESV), nwords)
            + _encode_layer(self._layer(_ALLOC), nwords)
        )

    @classmethod
    def from_bytes(cls, data: bytes, size: int | None = None) -> Self:
        if size is not None:
            _check_size(size)
        data = bytes(data)
        if len(data) < _HEADER.size:
            raise BitmapFormatError("cannot load bitmap: truncated header")
        magic, version, flags, padding, n, n_alloc, n_resv = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise BitmapFormatError("cannot load bitmap: bad magic")
        if version != FORMAT_VERSION:
            raise BitmapFormatError(f"cannot load bitmap: unsupported version {version}")
        if flags or padding or not 1 <= n <= MAX_SIZE:
            raise BitmapFormatError("cannot load bitmap: malformed header")
        if size is not None and n != size:
            raise BitmapFormatError(f"cannot load bitmap: size {n}, expected {size}")
        nwords = -(-n // 64)
        resv, pos = _decode_layer(data, _HEADER.size, nwords)
        alloc, pos = _decode_layer(data, pos, nwords)
        if pos != len(data):
            raise BitmapFormatError("cannot load bitmap: trailing bytes")
        if (resv | alloc) >> n:
            raise BitmapFormatError("cannot load bitmap: bits set beyond size")
        if resv & alloc:
            raise BitmapFormatError("cannot load bitmap: slot both reserved and allocated")
        if alloc.bit_count() != n_alloc or resv.bit_count() != n_resv:
            raise BitmapFormatError("cannot load bitmap: counts do not match the header")
        self = cls.__new__(cls)
        # Disjoint layers as one byte per slot (1 = allocated, 2 = reserved); OR-ing the
        # big-endian integers of two byte strings ORs them bytewise.
        state = int.from_bytes(_slot_bytes(alloc, n, _ALLOC), "big") | int.from_bytes(
            _slot_bytes(resv, n, _RESV), "big"
        )
        self._state = bytearray(state.to_bytes(n, "big"))
        return self

    def _layer(self, state: int) -> int:
        """Slots in ``state`` as an integer whose bit i is slot i."""
        table = bytearray(b"0" * 256)
        table[state] = ord("1")
        return int(self._state.translate(table)[::-1], 2)


def _slot_bytes(bits: int, size: int, value: int) -> bytes:
    """One byte per slot: ``value`` where bit i of ``bits`` is set, else 0."""
    table = bytearray(256)
    table[ord("1")] = value
    return format(bits, f"0{size}b")[::-1].encode().translate(table)


def _word_kind(word: int) -> int:
    return _ZERO_RUN if word == 0 else _ONES_RUN if word == _ONES else _LITERAL_RUN


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _encode_layer(bits: int, nwords: int) -> bytes:
    """Maximal runs of zero / all-ones / literal 64-bit words (see bitmap.h)."""
    words = struct.unpack(f"<{nwords}Q", bits.to_bytes(nwords * 8, "little"))
    out = bytearray()
    for kind, group in itertools.groupby(words, _word_kind):
        run = list(group)
        out += _varint(len(run) << 2 | kind)
        if kind == _LITERAL_RUN:
            out += struct.pack(f"<{len(run)}Q", *run)
    return bytes(out)


def _decode_layer(data: bytes, pos: int, nwords: int) -> tuple[int, int]:
    """Decode one layer at ``pos``; returns (bits, position after it)."""
    words: list[int] = []
    while len(words) < nwords:
        token = 0
        for shift in range(0, 28, 7):
            if pos >= len(data):
                raise BitmapFormatError("cannot load bitmap: truncated run")
            byte = data[pos]
            pos += 1
            token |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
        else:
            raise BitmapFormatError("cannot load bitmap: run token longer than 4 bytes")
        count, kind = token >> 2, token & 3
        if not 1 <= count <= nwords - len(words) or kind > _LITERAL_RUN:
            raise BitmapFormatError("cannot load bitmap: bad run")
        if kind == _LITERAL_RUN:
            if pos + 8 * count > len(data):
                raise BitmapFormatError("cannot load bitmap: truncated literal words")
            words += struct.unpack_from(f"<{count}Q", data, pos)
            pos += 8 * count
        else:
            words += [0 if kind == _ZERO_RUN else _ONES] * count
    return int.from_bytes(struct.pack(f"<{nwords}Q", *words), "little"), pos
