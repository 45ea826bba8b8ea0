"""The etcd requests the IPAM store builds, as they go on the wire, and group commit; without
a server (tests/host/test_ipam_etcd.py runs them against a real etcd)."""

from __future__ import annotations

import json
import threading
import time
from ipaddress import ip_address
from typing import Any

from nodeagent.ipam.config import parse_config
from nodeagent.ipam.configtypes import EtcdConfig, EtcdEndpoint
from nodeagent.ipam.etcd import api
from nodeagent.ipam.etcd.batch import Batcher
from nodeagent.ipam.etcd.store import WINDOW, EtcdStore, Keys, prefix_end
from nodeagent.ipam.pool import Pool
from nodeagent.ipam.store import Claim, Owner

REVISION = 41


class WireClient:
    """Stands in for EtcdClient at the transport: keeps each request as the bytes gRPC would
    send, answers transactions with success at REVISION and ranges with ``stored``."""

    def __init__(self) -> None:
        self.config = EtcdConfig((EtcdEndpoint("127.0.0.1"),))
        self.sent: list[bytes] = []
        self.stored: list[Any] = []

    def txn(self, request: Any) -> Any:
        self.sent.append(request.SerializeToString())
        resp = api.TxnResponse(succeeded=True, header=api.rpc.ResponseHeader(revision=REVISION))
        for op in request.success:
            if op.WhichOneof("request") == "request_txn":
                resp.responses.add().response_txn.succeeded = True
            elif op.WhichOneof("request") == "request_range":
                r = op.request_range
                found = self.range_all(r.key, r.range_end) if r.range_end else self.range(r.key).kvs
                resp.responses.add().response_range.kvs.extend(found)
        return resp

    def range_all(self, key: bytes, end: bytes, *, keys_only: bool = False) -> list[Any]:
        return [kv for kv in self.stored if key <= kv.key < end]

    def range(self, key: bytes, range_end: bytes = b"", **_: Any) -> Any:
        return api.RangeResponse(kvs=[kv for kv in self.stored if kv.key == key])

    def close(self) -> None:
        pass


def sent_txn(client: WireClient, index: int = -1) -> Any:
    return api.TxnRequest.FromString(client.sent[index])


def store_and_claim(
    block_size: int = 0, ipam: dict[str, Any] | None = None, **kw: Any
) -> tuple[EtcdStore, Claim]:
    doc = {"range": "10.0.0.0/16", "network_name": "net", **(ipam or {})}
    rng = parse_config({"ipam": doc}).ranges[0]
    client: Any = kw.pop("client", None) or WireClient()
    store = EtcdStore(client, "net", prefix="/p", block_size=block_size, node="n1", **kw)
    return store, Claim(rng.id, (Pool(rng),))


def test_a_claim_is_one_create_if_absent_transaction() -> None:
    store, claim = store_and_claim()
    client: WireClient = store.client  # type: ignore[assignment]
    (r,) = store.claim([claim], Owner("c1", "eth0", "ns/pod", "net1"))
    assert r.ip == ip_address("10.0.0.1")
    (raw,) = client.sent
    req = api.TxnRequest.FromString(raw)
    addr, owner = b"/p/net/ip4/0a000001", b"/p/net/owner/c1/eth0/10.0.0.0-16"
    # If: neither key exists. "create_revision == 0" must be on the wire although it is zero
    # (proto3 would drop a plain zero field; etcd would then compare another target).
    assert [(c.key, c.target, c.result) for c in req.compare] == [
        (addr, api.Compare.CREATE, api.Compare.EQUAL),
        (owner, api.Compare.CREATE, api.Compare.EQUAL),
    ]
    assert all(c.WhichOneof("target_union") == "create_revision" for c in req.compare)
    assert all(c.create_revision == 0 for c in req.compare)
    # Then: the address record, and the owner index pointing at it with the same record.
    puts = [op.request_put for op in req.success]
    assert [p.key for p in puts] == [addr, owner]
    record = json.loads(puts[0].value)
    assert record["ip"] == "10.0.0.1" and record["id"] == "c1" and record["pod"] == "ns/pod"
    assert json.loads(puts[1].value) == {"ip": addr.decode(), "rec": record}
    # Else: what the attachment already holds, and the taken keys around the candidate.
    held, window = (op.request_range for op in req.failure)
    assert held.key == owner and not held.range_end and not held.keys_only
    # the aligned block of WINDOW addresses holding 10.0.0.1: 10.0.0.0 - 10.0.0.127
    assert window.keys_only and window.key == b"/p/net/ip4/0a000000"
    assert window.range_end == b"/p/net/ip4/%08x\x00" % (0x0A000000 + WINDOW - 1)


def test_release_deletes_the_address_only_at_the_revision_its_claim_wrote() -> None:
    """A store that did not make the claim (another process, or after a restart) reads the
    owner keys first, then deletes at the revision they carry."""
    store, claim = store_and_claim()
    client: WireClient = store.client  # type: ignore[assignment]
    store.claim([claim], Owner("c1", "eth0"))
    claimed = sent_txn(client)
    client.stored = [
        api.KeyValue(key=op.request_put.key, value=op.request_put.value, mod_revision=REVISION)
        for op in claimed.success
    ]
    restarted = EtcdStore(client, "net", prefix="/p", block_size=0, node="n1")
    (released,) = restarted.release("c1", "eth0")
    assert len(client.sent) == 3, "the owner keys read, then the release"
    assert released.ip == ip_address("10.0.0.1")
    (op,) = sent_txn(client).success
    nested = op.request_txn
    (guard,) = nested.compare
    assert (guard.key, guard.target, guard.mod_revision) == (
        b"/p/net/ip4/0a000001",
        api.Compare.MOD,
        REVISION,
    )
    deleted = {o.request_delete_range.key for o in nested.success}
    assert deleted == {b"/p/net/ip4/0a000001", b"/p/net/owner/c1/eth0/10.0.0.0-16"}
    # Someone else holds the address now: only our owner key goes.
    assert [o.request_delete_range.key for o in nested.failure] == [
        b"/p/net/owner/c1/eth0/10.0.0.0-16"
    ]


def test_release_of_its_own_claim_is_one_guarded_transaction() -> None:
    """The store that made the claim deletes its keys at once, if both still carry the
    claim's revision, and reads what else the attachment holds in the same transaction."""
    store, claim = store_and_claim()
    client: WireClient = store.client  # type: ignore[assignment]
    store.claim([claim], Owner("c1", "eth0"))
    (released,) = store.release("c1", "eth0")
    assert released.ip == ip_address("10.0.0.1")
    assert len(client.sent) == 2, "the claim, then one transaction"
    req = sent_txn(client)
    addr, owner = b"/p/net/ip4/0a000001", b"/p/net/owner/c1/eth0/10.0.0.0-16"
    assert [(c.key, c.target, c.mod_revision) for c in req.compare] == [
        (owner, api.Compare.MOD, REVISION), (addr, api.Compare.MOD, REVISION)]
    *deletes, left = req.success
    assert [op.request_delete_range.key for op in deletes] == [owner, addr]
    (otherwise,) = req.failure
    for read in (left.request_range, otherwise.request_range):
        assert (read.key, read.range_end) == (b"/p/net/owner/c1/eth0/", prefix_end(
            b"/p/net/owner/c1/eth0/"))
    assert store.release("c1", "eth0") == [], "DEL twice: the second one reads and finds none"
    assert len(client.sent) == 3


def test_keys_sort_like_addresses() -> None:
    keys = Keys("/p", "net")
    addrs = [ip_address(a) for a in ("10.0.0.2", "10.0.0.10", "10.0.1.0", "9.255.255.255")]
    assert sorted(addrs) == sorted(addrs, key=lambda a: keys.ip("", a))
    assert keys.ip("", ip_address("fd00::1")).startswith(b"/p/net/ip6/")
    assert keys.ip("10.0.0.0-24", ip_address("10.0.0.1")) == b"/p/net/r/10.0.0.0-24/ip4/0a000001"
    assert prefix_end(b"/p/net/") == b"/p/net0" and prefix_end(b"a\xff") == b"b"


class SlowEtcd:
    """Answers every transaction (nested ones of a batch too) with success, slowly, and
    records how many claims each round trip carried."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.fail = False

    def send(self, request: Any) -> Any:
        time.sleep(0.02)
        if self.fail:
            raise RuntimeError("down")
        resp = api.TxnResponse(header=api.rpc.ResponseHeader(revision=7))
        if request.compare:  # sent alone
            resp.succeeded = request.compare[0].key != b"no"
            self.calls.append(1)
        else:
            resp.succeeded = True
            for op in request.success:
                nested = resp.responses.add().response_txn
                nested.succeeded = op.request_txn.compare[0].key != b"no"
            self.calls.append(len(request.success))
        return resp


def claim_request(key: bytes) -> Any:
    return api.txn([api.compare(key, "create", 0)], [api.op_put(key, b"v")])


def test_group_commit_batches_concurrent_claims_and_splits_shared_keys() -> None:
    fake = SlowEtcd()
    batcher = Batcher(fake.send)
    results: list[Any] = []

    def claim(i: int) -> None:
        key = b"same" if i % 4 == 0 else b"no" if i == 1 else f"k{i}".encode()
        results.append((key, batcher.txn(claim_request(key), frozenset({key}))))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 16 and all(r.header.revision == 7 for _, r in results)
    assert [key for key, r in results if not r.succeeded] == [b"no"]  # each its own outcome
    assert sum(fake.calls) == 16
    assert len(fake.calls) < 16  # shared round trips
    assert len(fake.calls) >= 4  # the four claims on b"same" never share one


def test_group_commit_propagates_errors_to_every_member() -> None:
    fake = SlowEtcd()
    fake.fail = True
    batcher = Batcher(fake.send)
    errors: list[BaseException] = []

    def claim(i: int) -> None:
        try:
            key = f"k{i}".encode()
            batcher.txn(claim_request(key), frozenset({key}))
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 6


# -- blocks and clusters -----------------------------------------------------------------------


class LeasedElsewhere(WireClient):
    """Like WireClient, but block keys in ``held`` (key -> node) already exist: a lease of one
    of them fails and its Else range returns them (as etcd would, sorted)."""

    def __init__(self, held: dict[bytes, str]) -> None:
        super().__init__()
        self.held = held
        self.stored = [
            api.KeyValue(key=k, value=json.dumps({"node": n}).encode(), mod_revision=3)
            for k, n in sorted(held.items())
        ]

    def txn(self, request: Any) -> Any:
        if request.compare and request.compare[0].key in self.held:
            self.sent.append(request.SerializeToString())
            resp = api.TxnResponse(succeeded=False)
            learn = request.failure[0].request_range
            kvs = [kv for kv in self.stored if learn.key <= kv.key < learn.range_end]
            resp.responses.add().response_range.kvs.extend(kvs)
            return resp
        return super().txn(request)


def test_a_node_leases_a_block_before_its_first_claim_and_claims_inside_it() -> None:
    store, claim = store_and_claim(block_size=64)
    client: WireClient = store.client  # type: ignore[assignment]
    first = store.claim([claim], Owner("c1", "eth0"))
    second = store.claim([claim], Owner("c2", "eth0"))
    assert [str(r.ip) for r in first + second] == ["10.0.0.1", "10.0.0.2"]
    lease, claim1, claim2 = (sent_txn(client, i) for i in range(3))
    block = b"/p/net/blk4/0a000000"  # 10.0.0.0/26, keyed by its first address
    (guard,) = lease.compare
    assert (guard.key, guard.target, guard.create_revision) == (block, api.Compare.CREATE, 0)
    (put,) = lease.success
    assert put.request_put.key == block and json.loads(put.request_put.value)["node"] == "n1"
    # A lost lease race brings back this block's holder and the next 15 blocks' holders.
    (learn,) = lease.failure
    assert learn.request_range.key == block
    assert learn.request_range.range_end == b"/p/net/blk4/%08x" % (0x0A000000 + 16 * 64)
    assert not learn.request_range.keys_only
    # The address claims are the plain per-address create-if-absent transactions.
    assert claim1.compare[0].key == b"/p/net/ip4/0a000001"
    assert claim2.compare[0].key == b"/p/net/ip4/0a000002"
    assert store.stats.leases == 1 and store.stats.claims == store.stats.allocations == 2


def test_blocks_held_by_other_nodes_are_skipped_and_a_lost_lease_moves_on() -> None:
    def block(n: int) -> bytes:
        return b"/p/net/blk4/%08x" % (0x0A000000 + 64 * n)

    # Our view knows block 0 is held (loaded at sync); block 1 was leased after that, so the
    # first lease fails and teaches us blocks 1 and 2; block 3 is free.
    client = LeasedElsewhere({block(0): "n2", block(1): "n3", block(2): "n4"})
    known = client.stored[:1]
    client.stored = known
    store, claim = store_and_claim(block_size=64, client=client)
    v = store._view("", claim.pools[0])
    with v.lock:
        store._sync(v)  # what the view saw at its last sync
    assert v.leased == {0x0A000000 // 64: "n2"}
    client.stored = known + [  # what etcd holds by the time we lease
        api.KeyValue(key=block(n), value=json.dumps({"node": f"n{n + 2}"}).encode()) for n in (1, 2)
    ]
    (r,) = store.claim([claim], Owner("c1", "eth0"))
    leases = [sent_txn(client, i).compare[0].key for i in range(len(client.sent) - 1)]
    assert leases[0] == block(1)  # the lowest block our view thought free
    assert block(2) not in leases  # learnt from the failed lease, never tried
    assert leases[-1] != block(1) and store.stats.lease_claims == len(leases)
    held = int(r.ip) // 64 - 0x0A000000 // 64
    assert held not in (0, 1, 2) and store.stats.leases == 1


def test_an_excluded_block_is_never_leased_and_range_edges_are_partial_blocks() -> None:
    # 10.0.0.10 - 10.0.1.4 with 10.0.0.64/26 excluded: block 0 holds 10.0.0.10-63, block 1
    # has nothing to hand out, block 4 holds only 10.0.1.0-4.
    store, claim = store_and_claim(
        block_size=64,
        ipam={
            "range": "10.0.0.0/23",
            "range_start": "10.0.0.10",
            "range_end": "10.0.1.4",
            "exclude": ["10.0.0.64/26"],
        },
    )
    v = store._view("", claim.pools[0])
    assert list(v.blocks()) == [n + 0x0A000000 // 64 for n in range(5)]
    first = v.blocks()[0]
    assert v.block_slots(first) == range(0, 54)  # slots of 10.0.0.10 .. 10.0.0.63
    assert v.block_slots(first + 4) == range(246, 251)  # 10.0.1.0 .. 10.0.1.4
    assert not v.has_free(first + 1) and v.has_free(first)
    got = [str(store.claim([claim], Owner(f"c{i}", "eth0"))[0].ip) for i in range(56)]
    assert got[0] == "10.0.0.10" and got[53] == "10.0.0.63"
    assert got[54:] == ["10.0.0.128", "10.0.0.129"]  # next block: the excluded one skipped
    assert not any(ip.startswith("10.0.0.") and 64 <= int(ip.split(".")[3]) < 128 for ip in got)


def test_clusters_are_key_namespaces_and_default_keeps_the_old_layout() -> None:
    assert Keys("/p", "net").root == b"/p/net/" == Keys("/p", "net", "default").root
    east, west = Keys("/p", "net", "east"), Keys("/p", "net", "west")
    assert east.root == b"/p/@east/net/" and west.root == b"/p/@west/net/"
    # No namespace's range holds another's keys ('@' never starts a network name).
    ip = ip_address("10.0.0.1")
    for a, b in ((Keys("/p", "net"), east), (east, west), (Keys("/p", "east"), east)):
        for key in (b.ip("", ip), b.block_base("", 4), b.owner("c", "eth0", "s")):
            assert not a.root <= key < prefix_end(a.root)
    assert east.is_address(east.ip("10.0.0.0-24", ip)) and not east.is_address(west.ip("", ip))
    assert east.is_block(east.block_base("", 6) + b"0" * 32)
    assert not east.is_address(east.block_base("r1", 4)) and not east.is_block(east.ip("", ip))
    for bad in ("", "a/b", "@x", "x" * 64, "-x"):
        try:
            Keys("/p", "net", bad)
        except ValueError as exc:
            assert "cluster name" in str(exc)
        else:
            raise AssertionError(f"{bad!r} accepted")


def test_the_periodic_reload_with_blocks_reads_the_leases_and_the_own_blocks_only() -> None:
    store, claim = store_and_claim(block_size=64)
    client: WireClient = store.client  # type: ignore[assignment]
    store.claim([claim], Owner("c1", "eth0"))
    lease, claimed = sent_txn(client, 0), sent_txn(client, 1)
    client.stored = [  # what etcd holds now
        api.KeyValue(key=op.request_put.key, value=op.request_put.value, mod_revision=REVISION)
        for op in (*lease.success, claimed.success[0])
    ]
    v = store._view("", claim.pools[0])
    v.next_light = 0.0  # the reload is due
    client.sent.clear()
    (r,) = store.claim([claim], Owner("c2", "eth0"))
    reload, claim2 = (sent_txn(client, i) for i in range(len(client.sent)))  # no new lease
    assert not reload.compare  # a read-only transaction: two ranges, not the whole pool
    leases, own = (op.request_range for op in reload.success)
    assert (leases.key, leases.range_end) == (b"/p/net/blk4/0a000000", b"/p/net/blk4/0a00ffc0\0")
    assert own.keys_only and own.key == b"/p/net/ip4/0a000000"
    assert own.range_end == b"/p/net/ip4/0a00003f\0"
    assert str(r.ip) == "10.0.0.2" and claim2.compare[0].key == b"/p/net/ip4/0a000002"
    assert v.next_light > time.monotonic() and v.mine == [0x0A000000 // 64]


def test_without_blocks_the_periodic_reload_is_the_whole_pool() -> None:
    store, claim = store_and_claim(block_size=0)
    client: WireClient = store.client  # type: ignore[assignment]
    store.claim([claim], Owner("c1", "eth0"))
    v = store._view("", claim.pools[0])
    v.next_light, v.next_full = 0.0, time.monotonic() + 60  # the light reload is for blocks
    client.sent.clear()
    assert str(store.claim([claim], Owner("c2", "eth0"))[0].ip) == "10.0.0.2"
    assert len(client.sent) == 1  # the claim, nothing read
    v.next_full = 0.0  # due: the whole pool, as before blocks
    client.stored = [api.KeyValue(key=b"/p/net/ip4/0a00000%d" % i) for i in (1, 2, 3)]
    assert str(store.claim([claim], Owner("c3", "eth0"))[0].ip) == "10.0.0.4"
