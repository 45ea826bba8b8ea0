"""etcd wire codec and group commit, without a server (tests/host covers the real one)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from nodeagent.ipam import etcdpb as pb
from nodeagent.ipam.etcdbatch import Batcher
from nodeagent.ipam.etcdstore import Keys, prefix_end


def test_varints_and_compare_encoding() -> None:
    assert pb._varint(0) == b"\x00" and pb._varint(300) == b"\xac\x02"
    assert pb._varint(-1) == b"\xff" * 9 + b"\x01"  # int64 two's complement
    # create_revision == 0 is a oneof member: present on the wire although zero
    assert pb.compare(b"k", "create", 0) == b"\x10\x01\x1a\x01k\x28\x00"
    assert pb.compare(b"k", "value", b"v", pb.NOT_EQUAL) == b"\x08\x03\x10\x03\x1a\x01k\x3a\x01v"


def kv(key: bytes, value: bytes = b"", mod: int = 0) -> bytes:
    return pb._len(1, key) + pb._int(3, mod) + pb._len(5, value)


def test_txn_response_decoding() -> None:
    header = pb._msg(1, pb._int(3, 42))
    rng = pb._msg(1, pb._int(3, 42)) + pb._msg(2, kv(b"a", b"x", 7)) + pb._int(3, 1)
    nested = pb._msg(1, b"") + pb._int(2, 1)
    raw = (
        header
        + pb._int(2, 1)
        + pb._msg(3, pb._msg(1, rng))
        + pb._msg(3, pb._msg(2, header))
        + pb._msg(3, pb._msg(4, nested))
    )
    resp = pb.TxnResponse.decode(raw)
    assert resp.revision == 42 and resp.succeeded
    r, put, txn = resp.responses
    assert isinstance(r, pb.RangeResponse) and r.more and r.revision == 42
    assert r.kvs == (pb.KeyValue(b"a", 0, 7, 0, b"x"),)
    assert isinstance(put, pb.PutResponse) and put.revision == 42
    assert isinstance(txn, pb.TxnResponse) and txn.succeeded
    with pytest.raises(ValueError):
        list(pb._fields(b"\x0a\x05ab"))  # truncated


def test_keys_sort_like_addresses() -> None:
    from ipaddress import ip_address

    keys = Keys("/p", "net")
    addrs = [ip_address(a) for a in ("10.0.0.2", "10.0.0.10", "10.0.1.0", "9.255.255.255")]
    assert sorted(addrs) == sorted(addrs, key=lambda a: keys.ip("", a))
    assert keys.ip("", ip_address("fd00::1")).startswith(b"/p/net/ip6/")
    assert keys.ip("10.0.0.0-24", ip_address("10.0.0.1")) == b"/p/net/r/10.0.0.0-24/ip4/0a000001"
    assert prefix_end(b"/p/net/") == b"/p/net0" and prefix_end(b"a\xff") == b"b"


class FakeEtcd:
    """Answers every nested transaction with success, slowly, and records the batches."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.fail = False

    def send(
        self, compares: Sequence[bytes], success: Sequence[bytes], failure: Sequence[bytes]
    ) -> pb.TxnResponse:
        time.sleep(0.02)
        if self.fail:
            raise RuntimeError("down")
        nested = success if not compares else [b"x"]
        self.calls.append(len(nested))
        return pb.TxnResponse(
            7, True, tuple(pb.TxnResponse(0, True, ()) for _ in nested) if not compares else ()
        )


def test_group_commit_batches_concurrent_claims_and_splits_shared_keys() -> None:
    fake = FakeEtcd()
    batcher = Batcher(fake.send)
    results: list[pb.TxnResponse] = []

    def claim(i: int) -> None:
        key = b"same" if i % 4 == 0 else f"k{i}".encode()
        results.append(batcher.txn([b"c"], [b"s"], [], frozenset({key})))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 16 and all(r.succeeded and r.revision == 7 for r in results)
    assert sum(fake.calls) == 16
    assert len(fake.calls) < 16  # shared round trips
    assert len(fake.calls) >= 4  # the four claims on b"same" never share one


def test_group_commit_propagates_errors_to_every_member() -> None:
    fake = FakeEtcd()
    fake.fail = True
    batcher = Batcher(fake.send)
    errors: list[BaseException] = []

    def claim(i: int) -> None:
        try:
            batcher.txn([b"c"], [b"s"], [], frozenset({f"k{i}".encode()}))
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 6
