"""Cluster-wide store in etcd: one key per address, claimed by compare-and-swap transactions.

Key layout under ``<prefix>/<network>/`` (``prefix`` is ``/nodeagent/ipam/v1``; the network
is ``network_name``, so clusters sharing an etcd share a pool by naming it alike)::

    ip4/<8 hex digits>                    reservation record (JSON) of one IPv4 address
    ip6/<32 hex digits>                   ... of one IPv6 address
    r/<range id>/ip4/...                  ... with enable_overlapping_ranges false
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
``resync_interval`` and whenever it looks full). Uncontended, it takes the lowest free address;
for a while after a conflict it picks at random among the SPREAD lowest free ones, so
allocators on many nodes spread out instead of colliding on the same lowest address.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from nodeagent.ipam.configtypes import IPAddress
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


def prefix_end(prefix: bytes) -> bytes:
    """The range end covering every key that starts with ``prefix``."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\x00"
    end[-1] += 1
    return bytes(end)


class Keys:
    """Key names of one network (see the module docstring)."""

    def __init__(self, prefix: str, network: str) -> None:
        self.root = f"{prefix}/{network}/".encode()

    def ip_base(self, scope: str, version: int) -> bytes:
        scoped = f"r/{scope}/".encode() if scope else b""
        return self.root + scoped + (b"ip4/" if version == 4 else b"ip6/")

    def ip(self, scope: str, ip: IPAddress) -> bytes:
        return self.ip_base(scope, ip.version) + _hex(int(ip), ip.version).encode()

    def owner_prefix(self, container_id: str, ifname: str) -> bytes:
        return self.root + f"owner/{container_id}/{ifname}/".encode()

    def owner(self, container_id: str, ifname: str, set_id: str) -> bytes:
        return self.owner_prefix(container_id, ifname) + set_id.encode()

    def pod(self, pod: str, set_id: str) -> bytes:
        return self.root + f"pod/{pod}/{set_id}".encode()

    def is_address(self, key: bytes) -> bool:
        rest = key[len(self.root) :]
        return rest.startswith((b"ip4/", b"ip6/", b"r/"))


def _hex(value: int, version: int) -> str:
    return format(value, "08x" if version == 4 else "032x")


@dataclass
class _View:
    """A pool's view plus its key base; ``lock`` guards the view."""

    view: PoolView
    base: bytes
    version: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    contended_until: float = 0.0
    pattern: re.Pattern[bytes] = field(init=False)

    def __post_init__(self) -> None:
        digits = 8 if self.version == 4 else 32
        self.pattern = re.compile(re.escape(self.base) + b"([0-9a-f]{%d})" % digits)

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


class EtcdStore(Store):
    def __init__(
        self,
        client: EtcdClient,
        network: str,
        *,
        prefix: str = "/nodeagent/ipam/v1",
        resync_interval: float = 30.0,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
    ) -> None:
        self.client = client
        self.network = network
        self.keys = Keys(prefix, network)
        # How long another node's release can go unnoticed (its claims are learnt at once,
        # from the window a failed claim returns).
        self.resync_interval = resync_interval
        self._clock = clock
        self._rand = random.Random(seed)
        self._views: dict[tuple[str, str, int, int], _View] = {}
        self._views_lock = threading.Lock()
        self._batcher = Batcher(self._txn)

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
        return out

    def release(self, container_id: str, ifname: str) -> list[Reservation]:
        kvs = self._range_prefix(self.keys.owner_prefix(container_id, ifname))
        if not kvs:
            return []
        txns, records = [], []
        for kv in kvs:
            doc = json.loads(kv.value)
            addr_key = doc["ip"].encode()
            r = from_record(doc["rec"])
            records.append(r)
            then = [pb.op_delete(kv.key)]
            if r.sticky and r.owner.pod:  # the pod's address waits for it
                hold = json.dumps(to_record(r.as_hold())).encode()
                then.append(pb.op_put(addr_key, hold))
            else:
                then.append(pb.op_delete(addr_key))
                self._forget(addr_key)
            txns.append(
                pb.op_txn(
                    pb.txn(
                        [pb.compare(addr_key, "mod", kv.mod_revision)], then, [pb.op_delete(kv.key)]
                    )
                )
            )
        resp = self._txn(pb.txn(success=txns))
        return [
            r for r, op in zip(records, resp.responses, strict=True) if op.response_txn.succeeded
        ]

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
                return r, resp.header.revision
            existing, window = (op.response_range for op in resp.responses)
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
                    v = self._views[key] = _View(PoolView(pool), base, rng.version)
        return v

    def _pick(self, v: _View) -> int | None:
        with v.lock:
            now = time.monotonic()
            if now - v.view.synced_at > self.resync_interval:
                self._sync(v)
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
        """Reload the whole view (caller holds ``v.lock``): one keys-only range."""
        pool = v.view.pool
        kvs = self._range_all(v.key(0), v.key(pool.size - 1) + b"\x00", keys_only=True)
        v.view.load((s for kv in kvs if (s := v.slot_of(kv.key)) is not None), time.monotonic())

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


def _parse(value: bytes) -> Reservation | None:
    try:
        return from_record(json.loads(value))
    except (ValueError, KeyError, TypeError):
        return None
