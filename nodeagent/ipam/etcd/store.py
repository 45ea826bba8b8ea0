"""Cluster-wide store in etcd: one key per address, claimed by compare-and-swap transactions.

Key layout under ``<prefix>/<network>/`` for the default cluster and
``<prefix>/@<cluster>/<network>/`` for any other (``prefix`` is ``/nodeagent/ipam/v1``; the
network is ``network_name``; ``@`` cannot start a network name, so no cluster's keys fall in
another's ranges; agents of one cluster share a pool by naming it alike)::

    ip4/<8 hex digits>                    reservation record (JSON) of one IPv4 address
    ip6/<32 hex digits>                   ... of one IPv6 address
    blk4/<8 hex digits>, blk6/<32 ...>    block lease: {"node": <node>, "at": <unix s>}
    r/<range id>/ip4/..., r/<id>/blk4/... the same with enable_overlapping_ranges false
    owner/<container>/<ifname>/<set id>   {"ip": <address key>, "rec": <record>}
    pod/<namespace>/<name>/<set id>       <address key> (sticky pods)

Fixed-width hex keys sort like the addresses, so a pool is one key range. A claim is one
transaction: ``If(create_revision(addr) == 0 && create_revision(owner) == 0)
Then(put addr, put owner) Else(range owner, keys-only range of the WINDOW keys around addr)``.
Two allocators can never both create the address key; the owner compare makes a repeated ADD
return the same address; a failed compare brings back the taken keys near the candidate, so
the next try is informed. No lock, no lease, no read before the write: one round trip per
allocation; concurrent claims of one agent even share one (nodeagent.ipam.etcd.batch: group commit).
Address and owner keys are written by the same transactions, so they share a
``mod_revision``; a release deletes the address only if it still carries that revision.

Each store keeps a bitmap view of every pool (loaded with a keys-only range, reloaded every
``resync_interval`` - with blocks: only the leases and the node's own blocks, the whole pool
every FULL_SYNC_FACTOR intervals - and whenever it looks full; intervals jittered). Where it
looks for a candidate is a matter of performance only, never of uniqueness:

* Blocks (as Calico's IPAM): the pool is cut into aligned blocks of BLOCK addresses; a node
  leases a block with a create-if-absent transaction on its block key and proposes the lowest
  free address of its own blocks, so nodes rarely propose the same address. A full node leases
  the lowest free block (after losing a lease race: the first free one from a place of its
  own, a hash of its node name). The address claim is the same transaction as without blocks.
* Fallback, when the node's blocks are full and no block is free: the lowest free address of
  the whole range, other nodes' blocks included; for a while after a conflict it picks at
  random among the SPREAD lowest free ones, so allocators spread out.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import random
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from nodeagent.ipam.configtypes import IPAddress, IPNetwork
from nodeagent.ipam.errors import TRY_AGAIN_LATER, IpamError, unavailable
from nodeagent.ipam.etcd import api as pb
from nodeagent.ipam.etcd.batch import Batcher
from nodeagent.ipam.etcd.client import EtcdAuthError, EtcdClient, EtcdError, EtcdUnavailable
from nodeagent.ipam.pool import Pool, PoolView
from nodeagent.ipam.store import (
    Claim,
    Owner,
    Reservation,
    Store,
    exhausted,
    from_record,
    in_use,
    other_address,
    to_record,
)

WINDOW = 128  # keys returned with a failed claim: the aligned block around the candidate
SPREAD = 128  # candidates to choose from while contended
CONTENDED_FOR = 2.0  # seconds of spreading after a conflict
MAX_ATTEMPTS = 64
BLOCK = 64  # addresses per block (Calico's /26); the same constant on every agent
LEASE_ATTEMPTS = 8  # block lease transactions per allocation before falling back
LEARN_BLOCKS = 16  # block keys a failed lease returns (the lost one and those after it)
FULL_SYNC_FACTOR = 10  # with blocks, the whole pool is reloaded every 10 resync intervals
MAX_TXN_OPS = 128  # etcd's default --max-txn-ops
REMEMBERED = 1024  # attachments whose claims a store remembers for their release
DEFAULT_CLUSTER = "default"  # its keys have no cluster segment: the layout before clusters
_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def prefix_end(prefix: bytes) -> bytes:
    """The range end covering every key that starts with ``prefix``."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\x00"
    end[-1] += 1
    return bytes(end)


def check_cluster(cluster: str) -> str:
    """``cluster`` if it is a valid name (letters, digits, '.', '_', '-'), else ValueError."""
    if not _CLUSTER_NAME.match(cluster):
        raise ValueError(f"cluster name {cluster!r} must be 1-63 letters, digits, '.', '_' or '-'")
    return cluster


class Keys:
    """Key names of one network of one cluster (see the module docstring)."""

    _ADDRESS = re.compile(rb"(?:r/[^/]*/)?ip[46]/")
    _BLOCK = re.compile(rb"(?:r/[^/]*/)?blk[46]/")

    def __init__(self, prefix: str, network: str, cluster: str = DEFAULT_CLUSTER) -> None:
        check_cluster(cluster)
        segment = "" if cluster == DEFAULT_CLUSTER else f"@{cluster}/"
        self.root = f"{prefix}/{segment}{network}/".encode()

    def ip_base(self, scope: str, version: int) -> bytes:
        scoped = f"r/{scope}/".encode() if scope else b""
        return self.root + scoped + (b"ip4/" if version == 4 else b"ip6/")

    def block_base(self, scope: str, version: int) -> bytes:
        scoped = f"r/{scope}/".encode() if scope else b""
        return self.root + scoped + (b"blk4/" if version == 4 else b"blk6/")

    def ip(self, scope: str, ip: IPAddress) -> bytes:
        return self.ip_base(scope, ip.version) + _hex(int(ip), ip.version).encode()

    def owner_prefix(self, container_id: str, ifname: str) -> bytes:
        return self.root + f"owner/{container_id}/{ifname}/".encode()

    def owner(self, container_id: str, ifname: str, set_id: str) -> bytes:
        return self.owner_prefix(container_id, ifname) + set_id.encode()

    def pod(self, pod: str, set_id: str) -> bytes:
        return self.root + f"pod/{pod}/{set_id}".encode()

    def is_address(self, key: bytes) -> bool:
        return key.startswith(self.root) and bool(self._ADDRESS.match(key, len(self.root)))

    def is_block(self, key: bytes) -> bool:
        return key.startswith(self.root) and bool(self._BLOCK.match(key, len(self.root)))


_BLOCK_KEY = re.compile(rb"blk([46])/([0-9a-f]{8}|[0-9a-f]{32})$")


def _hex(value: int, version: int) -> str:
    return format(value, "08x" if version == 4 else "032x")


@dataclass
class _View:
    """A pool's view plus its key bases and block leases; ``lock`` guards all of it.

    Blocks are numbered by absolute address (block ``n`` holds addresses ``n * size`` to
    ``n * size + size - 1``), so every agent agrees on them whatever its range's bounds."""

    view: PoolView
    base: bytes
    version: int
    block_base: bytes = b""
    block_size: int = 0  # 0: no blocks
    lock: threading.Lock = field(default_factory=threading.Lock)
    contended_until: float = 0.0
    next_full: float = 0.0  # monotonic time of the next reload of the whole view
    next_light: float = 0.0  # ... of the next reload of the leases and this node's blocks
    lease_contended_until: float = 0.0
    leased: dict[int, str] = field(default_factory=dict)  # block -> node, as last seen
    mine: list[int] = field(default_factory=list)  # blocks this node holds, in lease order
    no_free_block: bool = False  # until the next sync: every block is leased or full
    pattern: re.Pattern[bytes] = field(init=False)
    block_pattern: re.Pattern[bytes] = field(init=False)

    def __post_init__(self) -> None:
        digits = 8 if self.version == 4 else 32
        self.pattern = re.compile(re.escape(self.base) + b"([0-9a-f]{%d})" % digits)
        self.block_pattern = re.compile(re.escape(self.block_base) + b"([0-9a-f]{%d})$" % digits)

    def slots_in(self, window: Any) -> set[int]:
        """Slots of the address keys in a keys-only RangeResponse. The keys are the only
        strings in its encoding, so one scan of that finds them: about half the time of
        reading up to WINDOW KeyValue messages one by one (this runs on every lost race)."""
        to_slot = self.view.pool.int_slot
        raw = window.SerializeToString()
        return {s for h in self.pattern.findall(raw) if (s := to_slot(int(h, 16))) is not None}

    def key(self, slot: int) -> bytes:
        return self.base + _hex(int(self.view.pool.address(slot)), self.version).encode()

    def slot_of(self, key: bytes) -> int | None:
        suffix = key[len(self.base) :]
        if len(suffix) != (8 if self.version == 4 else 32):
            return None
        return self.view.pool.int_slot(int(suffix, 16))

    # -- blocks ---------------------------------------------------------------------------

    @property
    def first(self) -> int:
        return int(self.view.pool.range.start)

    def block_of(self, slot: int) -> int:
        return (self.first + slot) // self.block_size

    def block_slots(self, block: int) -> range:
        """The pool's slots inside ``block`` (fewer than its size at the range's edges)."""
        lo = max(0, block * self.block_size - self.first)
        hi = min(self.view.pool.size, (block + 1) * self.block_size - self.first)
        return range(lo, hi)

    def blocks(self) -> range:
        """Every block that holds a slot of the pool."""
        return range(self.block_of(0), self.block_of(self.view.pool.size - 1) + 1)

    def block_key(self, block: int) -> bytes:
        return self.block_base + _hex(block * self.block_size, self.version).encode()

    def block_number(self, key: bytes) -> int | None:
        m = self.block_pattern.match(key)
        if m is None:
            return None
        start = int(m.group(1), 16)
        return start // self.block_size if start % self.block_size == 0 else None

    def take_in(self, block: int, rand: random.Random | None = None) -> int | None:
        """The lowest free slot of ``block`` (with ``rand``: a free one at random), marked
        taken; None if it has none."""
        view, taken = self.view, self.view.taken
        slots: Sequence[int] = self.block_slots(block)
        if rand is not None:
            slots = [s for s in slots if s not in taken and not view.bitmap.is_reserved(s)]
            rand.shuffle(slots)  # type: ignore[arg-type]
        for slot in slots:
            if slot not in taken and view.bitmap.allocate(slot):
                taken.add(slot)
                return slot
        return None

    def has_free(self, block: int) -> bool:
        bitmap, taken = self.view.bitmap, self.view.taken
        return any(s not in taken and not bitmap.is_reserved(s) for s in self.block_slots(block))

    def learn_leases(self, kvs: Any, node: str) -> None:
        """Block keys (with values) read from etcd: who holds which block."""
        for kv in kvs:
            block = self.block_number(kv.key)
            if block is None:
                continue
            holder = _block_holder(kv.value)
            self.leased[block] = holder
            if holder == node and block not in self.mine:
                self.mine.append(block)


@dataclass(frozen=True)
class _Claimed:
    """A claim this store made: its owner and address keys, written at ``revision``."""

    owner_key: bytes
    addr_key: bytes
    revision: int
    record: Reservation


def _keeps_hold(r: Reservation) -> bool:
    """A sticky pod's address is held for it when released, not freed."""
    return bool(r.sticky and r.owner.pod)


@dataclass
class ClaimStats:
    """What a store sent to claim addresses (for benchmarks and metrics)."""

    allocations: int = 0  # dynamic addresses won
    claims: int = 0  # address claim transactions sent for them (lost races included)
    lost: int = 0  # claims that found the address taken
    leases: int = 0  # blocks leased
    lease_claims: int = 0  # block lease transactions sent
    fallback: int = 0  # candidates proposed outside this node's blocks


class EtcdStore(Store):
    def __init__(
        self,
        client: EtcdClient,
        network: str,
        *,
        prefix: str = "/nodeagent/ipam/v1",
        cluster: str = DEFAULT_CLUSTER,
        node: str | None = None,
        block_size: int = BLOCK,
        resync_interval: float = 30.0,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
    ) -> None:
        """``cluster`` names the key namespace (module docstring); ``node`` the holder of this
        store's block leases (default: $NODE_NAME, else the host name); ``block_size`` 0
        turns blocks off (every node proposes the lowest free address of the range)."""
        self.client = client
        self.network = network
        self.cluster = cluster
        self.node = node or os.environ.get("NODE_NAME") or socket.gethostname()
        self.block_size = block_size
        self.keys = Keys(prefix, network, cluster)
        self.stats = ClaimStats()
        self._stats_lock = threading.Lock()
        # How long another node's release can go unnoticed (its claims are learnt at once,
        # from the window a failed claim returns).
        self.resync_interval = resync_interval
        self._clock = clock
        self._rand = random.Random(seed)
        self._views: dict[tuple[str, str, int, int], _View] = {}
        self._views_lock = threading.Lock()
        self._batcher = Batcher(self._txn)
        #: (container, ifname) -> the claims this store made for it, until released
        self._claimed: dict[tuple[str, str], list[_Claimed]] = {}
        self._claimed_lock = threading.Lock()

    # -- Store API -----------------------------------------------------------------------

    def claim(self, claims: Sequence[Claim], owner: Owner) -> list[Reservation]:
        taken: list[tuple[Reservation, int]] = []  # fresh reservations and their revision
        out: list[Reservation] = []
        try:
            for c in claims:
                r, revision = self._claim_one(c, owner)
                out.append(r)
                if revision:
                    taken.append((r, revision))
        except BaseException:
            self._undo(taken, owner)
            raise
        if taken:
            self._remember(owner, taken)
        return out

    def _remember(self, owner: Owner, taken: list[tuple[Reservation, int]]) -> None:
        """Keep the keys and revision of fresh claims, for a one-round-trip release."""
        made = [_Claimed(self.keys.owner(owner.container_id, owner.ifname, r.set_id),
                         self.keys.ip(r.scope, r.ip), revision, r) for r, revision in taken]
        with self._claimed_lock:
            self._claimed.setdefault((owner.container_id, owner.ifname), []).extend(made)
            while len(self._claimed) > REMEMBERED:  # DELs that never came: the oldest go
                del self._claimed[next(iter(self._claimed))]

    def release(self, container_id: str, ifname: str) -> list[Reservation]:
        """One round trip when this store made the attachment's claims (the common DEL), two
        otherwise (the owner's keys, then their deletion); both go through the group commit:
        a burst of DELs shares etcd transactions as a burst of ADDs does."""
        prefix = self.keys.owner_prefix(container_id, ifname)
        owned = pb.op_range(prefix, prefix_end(prefix))
        with self._claimed_lock:
            known = self._claimed.pop((container_id, ifname), None)
        if known:
            return self._release_known(known, owned)
        read = self._batcher.txn(pb.txn(success=[owned]), frozenset())
        return self._release_owned(read.responses[0].response_range.kvs)

    def _release_known(self, known: list[_Claimed], owned: Any) -> list[Reservation]:
        """Release the claims this store made, from what it remembers of them: deleted if
        their keys still carry the revision that created them, in one transaction that also
        reads what is left under the owner prefix; anything left (or everything, when a key
        changed since) goes the two-step way."""
        compares, then, writes = [], [], set()
        for k in known:
            compares += [pb.compare(k.owner_key, "mod", k.revision),
                         pb.compare(k.addr_key, "mod", k.revision)]
            then += [pb.op_delete(k.owner_key), self._free(k.record, k.addr_key)]
            writes.update((k.owner_key, k.addr_key))
        resp = self._batcher.txn(pb.txn(compares, [*then, owned], [owned]), frozenset(writes))
        released = []
        if resp.succeeded:
            released = [k.record for k in known]
            for k in known:
                if not _keeps_hold(k.record):
                    self._forget(k.addr_key)
        left = resp.responses[-1].response_range.kvs
        return released + (self._release_owned(left) if left else [])

    def _release_owned(self, kvs: Any) -> list[Reservation]:
        """Release what the owner keys ``kvs`` index: each address deleted (or turned into its
        pod's hold) only if it still carries the revision its owner key was written at."""
        if not kvs:
            return []
        txns, records, writes = [], [], set()
        for kv in kvs:
            doc = json.loads(kv.value)
            addr_key = doc["ip"].encode()
            r = from_record(doc["rec"])
            records.append(r)
            writes.update((kv.key, addr_key))
            then = [pb.op_delete(kv.key), self._free(r, addr_key)]
            if not _keeps_hold(r):
                self._forget(addr_key)
            txns.append(
                pb.op_txn(
                    pb.txn(
                        [pb.compare(addr_key, "mod", kv.mod_revision)], then, [pb.op_delete(kv.key)]
                    )
                )
            )
        resp = self._batcher.txn(pb.txn(success=txns), frozenset(writes))
        return [
            r for r, op in zip(records, resp.responses, strict=True) if op.response_txn.succeeded
        ]

    @staticmethod
    def _free(r: Reservation, addr_key: bytes) -> Any:
        """The op that frees ``r``'s address: deleted, or a sticky pod's hold."""
        if _keeps_hold(r):  # the pod's address waits for it
            return pb.op_put(addr_key, json.dumps(to_record(r.as_hold())).encode())
        return pb.op_delete(addr_key)

    def reservations(self) -> list[Reservation]:
        out = []
        for kv in self._range_prefix(self.keys.root):
            if self.keys.is_address(kv.key):
                try:
                    out.append(from_record(json.loads(kv.value)))
                except (ValueError, KeyError, TypeError):
                    continue  # not ours to judge; show() lists what parses
        return sorted(out, key=lambda r: (r.scope, r.ip.version, r.ip))

    def find(self, container_id: str, ifname: str) -> list[Reservation]:
        owned = self._range_prefix(self.keys.owner_prefix(container_id, ifname))
        return [from_record(json.loads(kv.value)["rec"]) for kv in owned]

    def drop_holds(self, pod: str | None = None) -> list[Reservation]:
        holds = [
            (kv, r)
            for kv in self._range_prefix(self.keys.root)
            if self.keys.is_address(kv.key)
            and (r := _parse(kv.value)) is not None
            and r.held
            and pod in (None, r.owner.pod)
        ]
        if not holds:
            return []
        ops = []
        for kv, r in holds:
            pod_key = self.keys.pod(r.owner.pod, r.set_id)
            unindex = pb.txn([pb.compare(pod_key, "value", kv.key)], [pb.op_delete(pod_key)])
            ops.append(
                pb.op_txn(
                    pb.txn(
                        [pb.compare(kv.key, "mod", kv.mod_revision)],
                        [pb.op_delete(kv.key), pb.op_txn(unindex)],
                    )
                )
            )
            self._forget(kv.key)
        resp = self._txn(pb.txn(success=ops))
        return [
            r for (_, r), op in zip(holds, resp.responses, strict=True) if op.response_txn.succeeded
        ]

    def leases(self) -> dict[bytes, str]:
        """Every block lease of the network: block key -> the node holding it."""
        return {
            kv.key: _block_holder(kv.value)
            for kv in self._range_prefix(self.keys.root)
            if self.keys.is_block(kv.key)
        }

    def block_leases(self) -> list[tuple[IPNetwork, str]]:
        """Every block lease of the network as (the block's addresses, the node holding it),
        in address order (``nodeagent ipam show``)."""
        out = []
        size = (self.block_size or BLOCK).bit_length() - 1  # a power of two
        for key, node in self.leases().items():
            m = _BLOCK_KEY.search(key)
            if m is not None:
                first = ipaddress.ip_address(int(m.group(2), 16))
                bits = (32 if m.group(1) == b"4" else 128) - size
                out.append((ipaddress.ip_network(f"{first}/{bits}"), node))
        return sorted(out, key=lambda lease: (lease[0].version, lease[0]))

    def release_leases(self, node: str) -> int:
        """Drop the block leases of ``node`` (a node that left the cluster); its addresses stay
        reserved. Leases only steer where nodes look, so this is never needed for uniqueness.
        Returns how many went."""
        gone = [
            kv
            for kv in self._range_prefix(self.keys.root)
            if self.keys.is_block(kv.key) and _block_holder(kv.value) == node
        ]
        if not gone:
            return 0
        ops = [
            pb.op_txn(pb.txn([pb.compare(kv.key, "mod", kv.mod_revision)], [pb.op_delete(kv.key)]))
            for kv in gone
        ]
        resp = self._txn(pb.txn(success=ops))
        for v in list(self._views.values()):
            with v.lock:
                v.next_full = 0.0  # reload leases on next use
        return sum(op.response_txn.succeeded for op in resp.responses)

    def close(self) -> None:
        self.client.close()

    # -- claiming ------------------------------------------------------------------------

    def _claim_one(self, c: Claim, owner: Owner) -> tuple[Reservation, int]:
        """The reservation, and the revision that created it (0: it existed already)."""
        if c.ip is not None:
            return self._claim_fixed(c, owner, c.ip)
        if c.sticky and owner.pod:
            found = self._reclaim_hold(c, owner)
            if found is not None:
                return found
        for pool in c.pools:
            result = self._claim_dynamic(c, owner, pool)
            if result is not None:
                return result
        raise exhausted(c)

    def _claim_dynamic(self, c: Claim, owner: Owner, pool: Pool) -> tuple[Reservation, int] | None:
        v = self._view(c.scope(pool), pool)
        for _ in range(MAX_ATTEMPTS):
            slot = self._pick(v)
            if slot is None:
                return None
            self._count(claims=1)
            ip = pool.address(slot)
            r = self._new(c, owner, ip, c.scope(pool))
            addr_key = v.key(slot)
            lo = slot - slot % WINDOW
            hi = min(lo + WINDOW, pool.size) - 1
            window_op = pb.op_range(v.key(lo), v.key(hi) + b"\x00", keys_only=True)
            try:
                resp = self._create(c, owner, r, addr_key, [window_op])
            except IpamError:
                with v.lock:
                    v.view.unmark(slot)
                raise
            if resp.succeeded:
                self._count(allocations=1)
                return r, resp.header.revision
            existing, window = (op.response_range for op in resp.responses)
            if not existing.kvs:
                self._count(lost=1)
            taken = v.slots_in(window)
            with v.lock:
                v.view.replace_window(lo, hi, taken)  # drops our candidate if it is not taken
                if not existing.kvs:  # lost a race for the address: spread out for a while
                    v.contended_until = time.monotonic() + CONTENDED_FOR
            if existing.kvs:  # this attachment already has an address in the set
                return self._existing(existing.kvs[0]), 0
        raise IpamError(
            TRY_AGAIN_LATER,
            f"too much contention on {pool.range}: {MAX_ATTEMPTS} addresses taken under us",
        )

    def _claim_fixed(
        self, c: Claim, owner: Owner, ip: IPAddress, attempt: int = 0
    ) -> tuple[Reservation, int]:
        pool = c.pool_of(ip)
        if pool is None:
            raise ValueError(f"{ip} is outside the claim's pools")  # config.py checks
        scope = c.scope(pool)
        addr_key = self.keys.ip(scope, ip)
        r = self._new(c, owner, ip, scope)
        resp = self._create(c, owner, r, addr_key, [pb.op_range(addr_key)])
        if resp.succeeded:
            self._mark(scope, pool, ip)
            return r, resp.header.revision
        existing, current = (op.response_range for op in resp.responses)
        if existing.kvs:
            found = self._existing(existing.kvs[0])
            if found.ip != ip:
                raise other_address(found, ip)
            return found, 0
        if not current.kvs:  # released in between: try again
            if attempt >= 3:
                raise IpamError(TRY_AGAIN_LATER, f"{ip} keeps changing hands, retry")
            return self._claim_fixed(c, owner, ip, attempt + 1)
        holder = from_record(json.loads(current.kvs[0].value))
        if holder.owner.key == owner.key:
            return holder, 0
        if holder.held and owner.pod and holder.owner.pod == owner.pod:
            result = self._take_hold(c, owner, holder, current.kvs[0])
            if result is not None:
                return result
        raise in_use(ip, holder)

    def _reclaim_hold(self, c: Claim, owner: Owner) -> tuple[Reservation, int] | None:
        index = self._get(self.keys.pod(owner.pod, c.set_id))
        if not index.kvs:
            return None
        current = self._get(index.kvs[0].value)
        if not current.kvs:
            return None
        holder = _parse(current.kvs[0].value)
        if holder is None or not holder.held or holder.owner.pod != owner.pod:
            return None
        if not c.covers(holder):
            return None
        return self._take_hold(c, owner, holder, current.kvs[0])

    def _take_hold(
        self, c: Claim, owner: Owner, hold: Reservation, kv: Any
    ) -> tuple[Reservation, int] | None:
        r = self._new(c, owner, hold.ip, hold.scope)
        owner_key = self.keys.owner(owner.container_id, owner.ifname, c.set_id)
        resp = self._txn(
            pb.txn(
                [pb.compare(kv.key, "mod", kv.mod_revision), pb.compare(owner_key, "create", 0)],
                self._writes(c, owner, r, kv.key, owner_key),
                [pb.op_range(owner_key)],
            )
        )
        if resp.succeeded:
            return r, resp.header.revision
        existing = resp.responses[0].response_range
        if existing.kvs:
            return self._existing(existing.kvs[0]), 0
        return None  # the hold changed under us: allocate normally

    def _create(
        self,
        c: Claim,
        owner: Owner,
        r: Reservation,
        addr_key: bytes,
        extra: list[Any],
    ) -> Any:
        """The claim transaction (module docstring); ``extra`` ops join its Else branch."""
        owner_key = self.keys.owner(owner.container_id, owner.ifname, c.set_id)
        writes = [addr_key, owner_key]
        if r.sticky and owner.pod:
            writes.append(self.keys.pod(owner.pod, c.set_id))
        request = pb.txn(
            [pb.compare(addr_key, "create", 0), pb.compare(owner_key, "create", 0)],
            self._writes(c, owner, r, addr_key, owner_key),
            [pb.op_range(owner_key), *extra],
        )
        return self._batcher.txn(request, frozenset(writes))

    def _writes(
        self, c: Claim, owner: Owner, r: Reservation, addr_key: bytes, owner_key: bytes
    ) -> list[Any]:
        index = {"ip": addr_key.decode(), "rec": to_record(r)}
        ops = [
            pb.op_put(addr_key, json.dumps(to_record(r)).encode()),
            pb.op_put(owner_key, json.dumps(index).encode()),
        ]
        if r.sticky and owner.pod:
            ops.append(pb.op_put(self.keys.pod(owner.pod, c.set_id), addr_key))
        return ops

    @staticmethod
    def _existing(owner_kv: Any) -> Reservation:
        """The reservation an owner key points at (written with it, so no second read)."""
        return from_record(json.loads(owner_kv.value)["rec"])

    def _new(self, c: Claim, owner: Owner, ip: IPAddress, scope: str) -> Reservation:
        return Reservation(ip, owner, c.set_id, scope, c.sticky, int(self._clock()))

    def _undo(self, taken: list[tuple[Reservation, int]], owner: Owner) -> None:
        """Best effort: drop what this claim took before it failed (DEL covers the rest)."""
        if not taken:
            return
        ops = []
        for r, revision in taken:
            addr_key = self.keys.ip(r.scope, r.ip)
            owner_key = self.keys.owner(owner.container_id, owner.ifname, r.set_id)
            ops.append(
                pb.op_txn(
                    pb.txn(
                        [pb.compare(addr_key, "mod", revision)],
                        [pb.op_delete(addr_key), pb.op_delete(owner_key)],
                    )
                )
            )
            self._forget(addr_key)
        with contextlib.suppress(IpamError):
            self._txn(pb.txn(success=ops))

    # -- views ---------------------------------------------------------------------------

    def _view(self, scope: str, pool: Pool) -> _View:
        rng = pool.range
        key = (scope, rng.id, int(rng.start), int(rng.end))
        v = self._views.get(key)
        if v is None:
            with self._views_lock:
                v = self._views.get(key)
                if v is None:
                    base = self.keys.ip_base(scope, rng.version)
                    blocks = self.keys.block_base(scope, rng.version)
                    v = self._views[key] = _View(
                        PoolView(pool), base, rng.version, blocks, self.block_size
                    )
        return v

    def _pick(self, v: _View) -> int | None:
        with v.lock:
            now = time.monotonic()
            if now >= v.next_full:
                self._sync(v)
            elif v.block_size and now >= v.next_light:
                self._sync_blocks(v)
            if v.block_size:
                slot = self._from_blocks(v)
                if slot is not None:
                    return slot
                self._count(fallback=1)
            for attempt in range(2):
                if now < v.contended_until:
                    slot = v.view.take_spread(SPREAD, self._rand)
                else:
                    if v.view.spreading:
                        v.view.settle()  # calm again: back to the lowest free address
                    slot = v.view.take_lowest()
                if slot is not None or attempt:
                    return slot
                self._sync(v)  # looks full: is it?
            return None

    def _sync(self, v: _View) -> None:
        """Reload the whole view (caller holds ``v.lock``): one keys-only range, and one range
        of the pool's block leases."""
        pool = v.view.pool
        kvs = self._range_all(v.key(0), v.key(pool.size - 1) + b"\x00", keys_only=True)
        if v.block_size:
            blocks = v.blocks()
            leases = self._range_all(v.block_key(blocks[0]), v.block_key(blocks[-1]) + b"\x00")
            v.leased, v.mine, v.no_free_block = {}, [], False
            v.learn_leases(leases, self.node)
            v.mine.sort()
        now = time.monotonic()
        v.view.load((s for kv in kvs if (s := v.slot_of(kv.key)) is not None), now)
        # Jittered, so agents that started together do not reload together ever after.
        factor = FULL_SYNC_FACTOR if v.block_size else 1
        v.next_full = now + self.resync_interval * factor * self._rand.uniform(0.5, 1.5)
        v.next_light = now + self.resync_interval * self._rand.uniform(0.5, 1.5)

    def _sync_blocks(self, v: _View) -> None:
        """The periodic reload with blocks (caller holds ``v.lock``): the pool's leases and the
        address keys of this node's own blocks, in one read-only transaction, instead of every
        address of the pool on every node every ``resync_interval``."""
        mine = v.mine[: MAX_TXN_OPS - 1]
        blocks = v.blocks()
        ops = [pb.op_range(v.block_key(blocks[0]), v.block_key(blocks[-1]) + b"\x00")]
        spans = [v.block_slots(b) for b in mine]
        ops += [pb.op_range(v.key(r[0]), v.key(r[-1]) + b"\x00", keys_only=True) for r in spans]
        resp = self._txn(pb.txn(success=ops))
        leases, *windows = (op.response_range for op in resp.responses)
        v.leased, v.mine, v.no_free_block = {}, [], False
        v.learn_leases(leases.kvs, self.node)
        v.mine.sort()
        for r, window in zip(spans, windows, strict=True):
            v.view.replace_window(r[0], r[-1], v.slots_in(window))
        v.next_light = time.monotonic() + self.resync_interval * self._rand.uniform(0.5, 1.5)

    # -- blocks (caller holds v.lock) ------------------------------------------------------

    def _from_blocks(self, v: _View) -> int | None:
        """A free slot of this node's blocks, leasing a block if they are full; None when no
        block can be had (the caller falls back to the whole range). After a lost race inside
        them (another agent under the same node name, or one that fell back), a free slot at
        random instead of the lowest."""
        rand = self._rand if time.monotonic() < v.contended_until else None
        for block in v.mine:
            slot = v.take_in(block, rand)
            if slot is not None:
                return slot
        for _ in range(LEASE_ATTEMPTS):
            block = self._free_block(v)
            if block is None:
                return None
            if self._lease(v, block):
                slot = v.take_in(block)
                if slot is not None:
                    return slot
        return None

    def _free_block(self, v: _View) -> int | None:
        """A block nobody holds with free addresses: the lowest (so a lone agent hands out the
        lowest free address, as before blocks, also where fixed or imported addresses already
        sit), or after a lost lease race the first from a place of this node's own (a hash of
        its name), so nodes that start at once stop meeting on the same blocks."""
        if v.no_free_block:
            return None
        blocks = v.blocks()
        start = 0
        if time.monotonic() < v.lease_contended_until:
            start = zlib.crc32(self.node.encode()) % len(blocks)
        for block in itertools.chain(blocks[start:], blocks[:start]):
            if block not in v.leased and v.has_free(block):
                return block
        v.no_free_block = True
        return None

    def _lease(self, v: _View, block: int) -> bool:
        """Lease ``block`` for this node: create-if-absent on its key. A lost race brings back
        the holders of that block and the next LEARN_BLOCKS - 1."""
        key = v.block_key(block)
        record = json.dumps({"node": self.node, "at": int(self._clock())}).encode()
        learn_end = v.block_key(block + LEARN_BLOCKS)
        self._count(lease_claims=1)
        resp = self._txn(
            pb.txn(
                [pb.compare(key, "create", 0)],
                [pb.op_put(key, record)],
                [pb.op_range(key, learn_end)],
            )
        )
        if resp.succeeded:
            self._count(leases=1)
            v.leased[block] = self.node
            v.mine.append(block)
            return True
        v.learn_leases(resp.responses[0].response_range.kvs, self.node)
        if block in v.mine:  # ours already (a lease that timed out but landed)
            return True
        v.lease_contended_until = time.monotonic() + CONTENDED_FOR
        return False

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    def _mark(self, scope: str, pool: Pool, ip: IPAddress) -> None:
        v = self._view(scope, pool)
        slot = pool.slot(ip)
        if slot is not None:
            with v.lock:
                v.view.mark(slot)

    def _forget(self, addr_key: bytes) -> None:
        """An address this store frees becomes free in its views too."""
        for v in list(self._views.values()):
            if addr_key.startswith(v.base):
                slot = v.slot_of(addr_key)
                if slot is not None:
                    with v.lock:
                        v.view.unmark(slot)

    # -- etcd calls, errors mapped to CNI codes ------------------------------------------

    def _txn(self, request: Any) -> Any:
        with self._errors("transaction"):
            return self.client.txn(request)

    def _get(self, key: bytes) -> Any:
        with self._errors("read"):
            return self.client.range(key)

    def _range_prefix(self, prefix: bytes) -> list[Any]:
        return self._range_all(prefix, prefix_end(prefix))

    def _range_all(self, key: bytes, end: bytes, *, keys_only: bool = False) -> list[Any]:
        with self._errors("read"):
            return self.client.range_all(key, end, keys_only=keys_only)

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """etcd client errors as CNI errors, all code 11: nothing was reserved (a timed-out
        write aside, see EtcdUnavailable), and the runtime retries."""
        cfg = self.client.config
        where = f"etcd ({','.join(e.target() for e in cfg.endpoints)})"
        try:
            yield
        except EtcdUnavailable as exc:
            if exc.tls:
                raise IpamError(
                    TRY_AGAIN_LATER,
                    f"{where}: TLS failed (certificate not trusted, or refused by the server);"
                    " check etcd_ca_cert_file, etcd_cert_file and etcd_key_file",
                    str(exc),
                ) from exc
            raise unavailable(where, str(exc)) from exc
        except EtcdAuthError as exc:
            raise IpamError(
                TRY_AGAIN_LATER,
                f"{where} refused etcd_username {cfg.username!r} and its etcd_password",
                str(exc),
            ) from exc
        except EtcdError as exc:
            raise IpamError(TRY_AGAIN_LATER, f"{where} rejected an IPAM {what}", str(exc)) from exc


def _block_holder(value: bytes) -> str:
    try:
        return str(json.loads(value)["node"])
    except (ValueError, KeyError, TypeError):
        return ""  # unreadable: held by nobody we know, still not ours to take


def _parse(value: bytes) -> Reservation | None:
    try:
        return from_record(json.loads(value))
    except (ValueError, KeyError, TypeError):
        return None
