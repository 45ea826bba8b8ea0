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
        return resp

    def range_all(self, key: bytes, end: bytes, *, keys_only: bool = False) -> list[Any]:
        return [kv for kv in self.stored if key <= kv.key < end]

    def range(self, key: bytes, range_end: bytes = b"", **_: Any) -> Any:
        return api.RangeResponse(kvs=[kv for kv in self.stored if kv.key == key])

    def close(self) -> None:
        pass


def sent_txn(client: WireClient, index: int = -1) -> Any:
    return api.TxnRequest.FromString(client.sent[index])


def store_and_claim() -> tuple[EtcdStore, Claim]:
    rng = parse_config({"ipam": {"range": "10.0.0.0/16", "network_name": "net"}}).ranges[0]
    client: Any = WireClient()
    return EtcdStore(client, "net", prefix="/p"), Claim(rng.id, (Pool(rng),))


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
    store, claim = store_and_claim()
    client: WireClient = store.client  # type: ignore[assignment]
    store.claim([claim], Owner("c1", "eth0"))
    claimed = sent_txn(client)
    client.stored = [
        api.KeyValue(key=op.request_put.key, value=op.request_put.value, mod_revision=REVISION)
        for op in claimed.success
    ]
    (released,) = store.release("c1", "eth0")
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
