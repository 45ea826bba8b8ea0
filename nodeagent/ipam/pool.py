"""Pools: a range's addresses as slots of the C bitmap, and a store's view of which are taken.

Slot ``i`` of a :class:`Pool` is address ``range.start + i``; a pool has at most 2^24 slots
(config.py rejects a larger IPv4 range and clamps an IPv6 one to a window from its start).
Reserved slots (the network address, the IPv4 broadcast address, the gateway and ``exclude``
ranges) are marked once in a template bitmap that every view copies, so they are never handed
out and never counted as free.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from nodeagent.ipam.bitmap import Bitmap
from nodeagent.ipam.configtypes import IPAddress, IPRange


class Pool:
    """Immutable mapping between one :class:`IPRange` and bitmap slots."""

    __slots__ = ("_first", "_template", "range", "reserved", "size")

    def __init__(self, rng: IPRange) -> None:
        self.range = rng
        self.size = rng.size
        self._first = int(rng.start)
        template = Bitmap(self.size)
        for lo, hi in self._reserved_spans():
            template.reserve_range(lo, hi)
        self.reserved = template.reserved
        self._template = template.to_bytes()

    def _reserved_spans(self) -> Iterable[tuple[int, int]]:
        rng, net = self.range, self.range.subnet
        singles = [rng.gateway]
        if net.num_addresses > 2:
            singles.append(net.network_address)
            if net.version == 4:
                singles.append(net.broadcast_address)
        for ip in singles:
            slot = self.slot(ip) if ip is not None else None
            if slot is not None:
                yield slot, slot
        for ex in rng.exclude:
            lo = max(int(ex.network_address), self._first) - self._first
            hi = min(int(ex.broadcast_address), int(rng.end)) - self._first
            if ex.version == rng.version and lo <= hi:
                yield lo, hi

    def slot(self, ip: IPAddress) -> int | None:
        """The slot of ``ip``, or None if it lies outside the range."""
        if ip.version != self.range.version:
            return None
        slot = int(ip) - self._first
        return slot if 0 <= slot < self.size else None

    def address(self, slot: int) -> IPAddress:
        return self.range.start + slot

    def int_slot(self, value: int) -> int | None:
        """Like :meth:`slot` for an address already decoded to an integer (same family)."""
        slot = value - self._first
        return slot if 0 <= slot < self.size else None

    def bitmap(self) -> Bitmap:
        """A fresh bitmap with only the reserved slots set."""
        return Bitmap.from_bytes(self._template, self.size)

    def __repr__(self) -> str:
        return f"Pool({self.range}, size={self.size}, reserved={self.reserved})"


class PoolView:
    """Which slots of a pool a store has seen taken. Not thread-safe: stores hold a lock.

    ``taken`` mirrors the bitmap's allocated slots in a Python set, so refreshing a window
    costs bitmap calls only for the slots that changed: every bitmap call releases the GIL
    (cffi), which makes many small calls expensive when threads compete.
    """

    __slots__ = ("_candidates", "bitmap", "pool", "synced_at", "taken")

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.bitmap = pool.bitmap()
        self.taken: set[int] = set()
        self.synced_at = 0.0
        self._candidates: list[int] = []

    def load(self, slots: Iterable[int], now: float = 0.0) -> None:
        """Replace the view with exactly ``slots`` taken (reserved slots stay reserved)."""
        bitmap, taken = self.pool.bitmap(), set()
        for slot in slots:
            if bitmap.allocate(slot):
                taken.add(slot)
        self.bitmap, self.taken, self.synced_at, self._candidates = bitmap, taken, now, []

    def take_lowest(self) -> int | None:
        slot = self.bitmap.allocate_lowest()
        if slot is not None:
            self.taken.add(slot)
        return slot

    def take_spread(self, spread: int, rand: random.Random) -> int | None:
        """One of the ``spread`` lowest free slots at random, so allocators working on the same
        pool at once rarely pick the same address. The batch is set aside in the view (as if
        taken) and handed out one by one; :meth:`settle` returns what is left."""
        if len(self._candidates) < spread // 2:  # top up: a short list means collisions
            more = self.bitmap.allocate_many(spread - len(self._candidates))
            self.taken.update(more)
            self._candidates += more
            if not self._candidates:
                return None
        return self._candidates.pop(rand.randrange(len(self._candidates)))

    def settle(self) -> None:
        """Give back the slots set aside by :meth:`take_spread` and not handed out."""
        for slot in self._candidates:
            self.unmark(slot)
        self._candidates = []

    @property
    def spreading(self) -> bool:
        return bool(self._candidates)

    def mark(self, slot: int) -> None:
        if slot not in self.taken and self.bitmap.allocate(slot):
            self.taken.add(slot)

    def unmark(self, slot: int) -> None:
        if slot in self.taken:
            self.bitmap.release(slot)
            self.taken.discard(slot)

    def replace_window(self, lo: int, hi: int, found: set[int]) -> None:
        """Make slots ``lo``..``hi`` match ``found`` (authoritative for that window); slots set
        aside for spreading stay set aside."""
        taken = self.taken
        current = {s for s in range(lo, hi + 1) if s in taken}
        for slot in found - current:
            self.mark(slot)
        if self._candidates:  # taken by someone else: no longer a candidate
            self._candidates = [s for s in self._candidates if s not in found]
        for slot in current - found - set(self._candidates):
            self.unmark(slot)

    @property
    def free(self) -> int:
        return self.bitmap.free
