"""The etcd store against a real etcd server (Debian ``etcd-server``) on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from ipaddress import ip_address
from typing import Any

import pytest

from nodeagent.cnitypes.request import Attachment
from nodeagent.ipam.allocator import Ipam
from nodeagent.ipam.config import parse_config
from nodeagent.ipam.configtypes import IPAMConfig
from nodeagent.ipam.errors import ADDRESS_IN_USE, POOL_EXHAUSTED, TRY_AGAIN_LATER, IpamError
from nodeagent.ipam.etcd import api
from nodeagent.ipam.etcd.client import EtcdClient, EtcdUnavailable
from nodeagent.ipam.etcd.store import prefix_end
from nodeagent.ipam.ops import release_leases_of_gone_nodes, render, show
from tests import ipam_etcd

pytestmark = pytest.mark.skipif(
    not ipam_etcd.available(), reason="etcd not installed (Debian package etcd-server)"
)



@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of its own per test, so tests sharing the server do not meet."""
    return f"/test/{request.node.name.replace('[', '-').replace(']', '')}"


def config(
    endpoint: str, prefix: str, ipam: dict[str, Any] | None = None, **top: Any
) -> IPAMConfig:
    doc = {
        "range": "10.0.0.0/16",
        "network_name": "pool1",
        "datastore": "etcd",
        "etcd_host": endpoint,
        "etcd_prefix": prefix,
        "etcd_timeout": 1.0,
        **(ipam or {}),
    }
    return parse_config({"cniVersion": "1.1.0", "name": "net1", "ipam": doc, **top})


def addresses(result: Any) -> list[str]:
    return [str(ip.address) for ip in result.ips]


def etcd_addresses(endpoint: str, prefix: str) -> dict[str, str]:
    """Address -> container ID, straight from etcd."""
    client = EtcdClient(config(endpoint, prefix).etcd)  # type: ignore[arg-type]
    try:
        root = f"{prefix}/pool1/".encode()
        out = {}
        for kv in client.range_all(root, prefix_end(root)):
            if b"/ip4/" in kv.key or b"/ip6/" in kv.key:
                doc = json.loads(kv.value)
                assert doc["ip"] not in out
                out[doc["ip"]] = doc["id"]
        return out
    finally:
        client.close()


def run_threads(n: int, target: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def wrap(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]


def test_allocate_release_check_fixed_and_sticky(etcd: ipam_etcd.EtcdServer, prefix: str) -> None:
    ipam = Ipam("/nonexistent")
    c = config(
        etcd.endpoint,
        prefix,
        {"ipRanges": [{"range": "fd00::/120"}], "sticky": True, "gateway": "10.0.0.1"},
    )
    a = Attachment("c1", "eth0", "db", "db-0")
    first = ipam.allocate(c, a)
    assert addresses(first) == ["10.0.0.2/16", "fd00::1/120"]
    assert first.ips[0].gateway == ip_address("10.0.0.1")
    assert ipam.allocate(c, a) == first  # repeated ADD
    assert addresses(ipam.allocate(c, Attachment("c2", "eth0"))) == ["10.0.0.3/16", "fd00::2/120"]
    assert addresses(ipam.check(c, a)) == addresses(first)
    assert {str(r.ip) for r in ipam.release(c, a)} == {"10.0.0.2", "fd00::1"}
    assert ipam.release(c, a) == []  # DEL twice
    # db-0's addresses wait for it
    assert addresses(ipam.allocate(c, Attachment("c3", "eth0"))) == ["10.0.0.4/16", "fd00::3/120"]
    assert addresses(ipam.allocate(c, Attachment("c4", "eth0", "db", "db-0"))) == addresses(first)
    fixed = config(etcd.endpoint, prefix, runtimeConfig={"ips": ["10.0.0.3"]})
    with pytest.raises(IpamError) as info:
        ipam.allocate(fixed, Attachment("c5", "eth0"))
    assert info.value.code == ADDRESS_IN_USE and "c2/eth0" in info.value.msg
    fixed = config(etcd.endpoint, prefix, runtimeConfig={"ips": ["10.0.0.9"]})
    assert addresses(ipam.allocate(fixed, Attachment("c5", "eth0"))) == ["10.0.0.9/16"]
    usage = show(c, ipam)
    assert usage.pools[0].allocated == 4 and len(usage.reservations) == 7
    gone = ipam.gc(c, [Attachment("c4", "eth0")])
    assert {r.owner.container_id for r in gone} == {"c2", "c3", "c5"}
    ipam.close()


def test_show_lists_block_leases_and_gc_drops_those_of_nodes_that_left(
    etcd: ipam_etcd.EtcdServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = config(etcd.endpoint, prefix)
    monkeypatch.setenv("NODE_NAME", "worker-gone")
    gone = Ipam("/nonexistent")
    left_behind = ip_address(addresses(gone.allocate(c, Attachment("g1", "eth0")))[0].split("/")[0])
    gone.close()
    monkeypatch.setenv("NODE_NAME", "worker-1")
    ipam = Ipam("/nonexistent")
    ipam.allocate(c, Attachment("w1", "eth0"))

    usage = show(c, ipam)
    assert {node for _, node in usage.leases} == {"worker-gone", "worker-1"}
    assert [node for block, node in usage.leases if left_behind in block] == ["worker-gone"]
    assert all(block.prefixlen == 26 for block, _ in usage.leases)
    assert "worker-gone" in render(usage)

    would = release_leases_of_gone_nodes(c, {"worker-1"}, dry_run=True, ipam=ipam)
    assert {node for _, node in would} == {"worker-gone"}
    assert {node for _, node in show(c, ipam).leases} == {"worker-gone", "worker-1"}
    assert release_leases_of_gone_nodes(c, {"worker-1"}, ipam=ipam) == would
    after = show(c, ipam)
    assert {node for _, node in after.leases} == {"worker-1"}
    assert str(left_behind) in {str(r.ip) for r in after.reservations}, "addresses stay"
    ipam.close()


def test_a_del_of_this_agents_claims_is_one_transaction_and_spares_what_changed(
        etcd: ipam_etcd.EtcdServer, prefix: str) -> None:
    """The agent remembers the keys its claims wrote: a DEL deletes them in one transaction
    that only succeeds if they still carry the claim's revision, and reads what else the
    attachment holds in the same round trip."""
    ours, other = Ipam("/nonexistent"), Ipam("/nonexistent")  # another node's agent
    c = config(etcd.endpoint, prefix, {"ipRanges": [{"range": "fd00::/120"}]})
    store = ours.store(c)
    sent = []
    txn = store.client.txn  # type: ignore[attr-defined]
    store.client.txn = lambda request: sent.append(request) or txn(request)  # type: ignore

    first = ours.allocate(c, Attachment("c1", "eth0"))
    sent.clear()
    released = ours.release(c, Attachment("c1", "eth0"))
    assert sorted(f"{r.ip}" for r in released) == ["10.0.0.1", "fd00::1"]
    assert len(sent) == 1, "one round trip"
    assert etcd_addresses(etcd.endpoint, prefix) == {}
    assert addresses(ours.allocate(c, Attachment("c2", "eth0"))) == addresses(first)

    # Released behind our back (a GC elsewhere), and the address given to another pod:
    # our DEL must not free it.
    assert len(other.gc(c, [])) == 2
    assert addresses(other.allocate(c, Attachment("c3", "eth0"))) == addresses(first)
    assert ours.release(c, Attachment("c2", "eth0")) == []
    assert set(etcd_addresses(etcd.endpoint, prefix).values()) == {"c3"}

    # What the attachment holds besides our claims (another range, claimed by another
    # agent) goes with the same DEL, as it does without the memory.
    elsewhere = config(etcd.endpoint, prefix, {"range": "10.1.0.0/16"})
    ours.allocate(c, Attachment("c4", "eth0"))
    other.allocate(elsewhere, Attachment("c4", "eth0"))
    assert len(ours.release(c, Attachment("c4", "eth0"))) == 3
    assert set(etcd_addresses(etcd.endpoint, prefix).values()) == {"c3"}
    ours.close()
    other.close()


def test_exhaustion_and_dual_stack_rollback(etcd: ipam_etcd.EtcdServer, prefix: str) -> None:
    ipam = Ipam("/nonexistent")
    c = config(
        etcd.endpoint, prefix, {"range": "10.0.0.0/29", "ipRanges": [{"range": "fd00::/127"}]}
    )
    ipam.allocate(c, Attachment("a", "eth0"))
    ipam.allocate(c, Attachment("b", "eth0"))
    with pytest.raises(IpamError) as info:
        ipam.allocate(c, Attachment("c", "eth0"))  # v4 has room, v6 is full
    assert info.value.code == POOL_EXHAUSTED
    assert "c" not in etcd_addresses(etcd.endpoint, prefix).values()
    ipam.close()


def test_concurrent_allocators_all_unique(etcd: ipam_etcd.EtcdServer, prefix: str) -> None:
    results: list[str] = []

    def allocator(i: int) -> None:
        ipam = Ipam("/nonexistent")  # its own client and pool view, like another node
        c = config(etcd.endpoint, prefix)
        for j in range(50):
            results.extend(addresses(ipam.allocate(c, Attachment(f"n{i}-{j}", "eth0"))))
        ipam.close()

    run_threads(16, allocator)
    assert len(results) == 800 == len(set(results))
    stored = etcd_addresses(etcd.endpoint, prefix)
    assert sorted(f"{ip}/16" for ip in stored) == sorted(results)


def test_two_clusters_share_one_pool(etcd: ipam_etcd.EtcdServer, prefix: str) -> None:
    """Different client configs (endpoint spelling, CNI network name), one network_name."""
    small = {"range": "10.9.0.0/24", "range_end": "10.9.0.100"}  # 100 usable addresses
    cluster_a = config(etcd.endpoint, prefix, small, name="cluster-a-net")
    cluster_b = config(f"localhost:{etcd.client_port}", prefix, small, name="cluster-b-net")
    got: dict[str, list[str]] = {"a": [], "b": []}

    def cluster(i: int) -> None:
        ipam, c, key = (Ipam("/x"), cluster_a, "a") if i % 2 == 0 else (Ipam("/x"), cluster_b, "b")
        for j in range(60):
            try:
                got[key].extend(addresses(ipam.allocate(c, Attachment(f"{key}{i}-{j}", "eth0"))))
            except IpamError as exc:
                assert exc.code == POOL_EXHAUSTED
                break
        ipam.close()

    run_threads(4, cluster)
    everything = got["a"] + got["b"]
    assert len(everything) == 100 == len(set(everything))  # the pool, each address once
    assert got["a"] and got["b"]


def test_etcd_restart_mid_run(etcd: ipam_etcd.EtcdServer, prefix: str) -> None:
    results: dict[str, str] = {}
    retries = [0]
    under_way = threading.Event()  # a quarter of the allocations are in: stop etcd now

    def allocator(i: int) -> None:
        ipam = Ipam("/x")
        c = config(etcd.endpoint, prefix)
        for j in range(40):
            a = Attachment(f"r{i}-{j}", "eth0")
            deadline = time.monotonic() + 20
            while True:  # the runtime retries a failed ADD; same attachment, same answer
                try:
                    results[a.container_id] = addresses(ipam.allocate(c, a))[0]
                    if len(results) >= 80:
                        under_way.set()
                    break
                except IpamError as exc:
                    assert exc.code == TRY_AGAIN_LATER, exc
                    assert time.monotonic() < deadline, "allocations did not resume"
                    retries[0] += 1
                    time.sleep(0.05)
        ipam.close()

    def restarter(_: int) -> None:
        # Not a fixed delay: on a quick run every allocation was done before etcd stopped.
        assert under_way.wait(30), "allocations never got under way"
        etcd.stop()
        time.sleep(1.0)
        etcd.start()

    run_threads(9, lambda i: restarter(i) if i == 8 else allocator(i))
    assert retries[0] > 0, "etcd was never seen down"
    assert len(results) == 320 == len(set(results.values()))
    stored = etcd_addresses(etcd.endpoint, prefix)
    assert {f"{ip}/16": cid for ip, cid in stored.items()} == {v: k for k, v in results.items()}


def test_etcd_down_fails_fast_with_code_11(prefix: str) -> None:
    with ipam_etcd.EtcdServer() as server:
        ipam = Ipam("/x")
        c = config(server.endpoint, prefix)
        ipam.allocate(c, Attachment("before", "eth0"))
        server.stop()
        began = time.monotonic()
        with pytest.raises(IpamError) as info:
            ipam.allocate(c, Attachment("during", "eth0"))
        assert info.value.code == TRY_AGAIN_LATER and "etcd" in info.value.msg
        assert time.monotonic() - began < 2.5
        with pytest.raises(IpamError) as info:  # DEL too: the runtime retries later
            ipam.release(c, Attachment("before", "eth0"))
        assert info.value.code == TRY_AGAIN_LATER
        server.start()
        assert set(etcd_addresses(server.endpoint, prefix).values()) == {"before"}
        ipam.close()


def test_nothing_listening_fails_fast() -> None:
    c = config(f"127.0.0.1:{ipam_etcd.free_port()},127.0.0.1:{ipam_etcd.free_port()}", "/t")
    client = EtcdClient(c.etcd)  # type: ignore[arg-type]
    began = time.monotonic()
    with pytest.raises(EtcdUnavailable):
        client.range(b"/x")
    assert time.monotonic() - began < 1.5
    client.close()


def test_failover_to_the_endpoint_that_answers(etcd: ipam_etcd.EtcdServer, prefix: str) -> None:
    dead = f"127.0.0.1:{ipam_etcd.free_port()}"
    ipam = Ipam("/x")
    c = config(f"{dead},{etcd.endpoint}", prefix)
    assert addresses(ipam.allocate(c, Attachment("f", "eth0"))) == ["10.0.0.1/16"]
    ipam.close()


def test_generated_api_against_etcd(etcd: ipam_etcd.EtcdServer, prefix: str) -> None:
    """Nested transactions, compares on value/mod/version, ranges with limits."""
    client = EtcdClient(config(etcd.endpoint, prefix).etcd)  # type: ignore[arg-type]
    k = f"{prefix}/k".encode()
    put = client.put(k, b"v1")
    assert put.header.revision > 0
    (kv,) = client.range(k).kvs
    assert (kv.value, kv.version, kv.mod_revision) == (b"v1", 1, put.header.revision)
    resp = client.txn(
        api.txn(
            [api.compare(k, "value", b"v1"), api.compare(k, "mod", kv.mod_revision)],
            [api.op_txn(api.txn([api.compare(k, "version", 1)], [api.op_put(k, b"v2")]))],
        )
    )
    assert resp.succeeded and resp.responses[0].response_txn.succeeded
    assert client.range(k).kvs[0].value == b"v2"
    missed = client.txn(api.txn([api.compare(k, "create", 0)], [api.op_put(k, b"v3")]))
    assert not missed.succeeded and client.range(k).kvs[0].value == b"v2"  # k exists
    for i in range(5):
        client.put(f"{prefix}/r/{i}".encode(), b"x")
    page = client.range(f"{prefix}/r/".encode(), prefix_end(f"{prefix}/r/".encode()), limit=2)
    assert len(page.kvs) == 2 and page.more
    assert (
        len(client.range_all(f"{prefix}/r/".encode(), prefix_end(f"{prefix}/r/".encode()), page=2))
        == 5
    )
    assert client.delete(f"{prefix}/r/".encode(), prefix_end(f"{prefix}/r/".encode())).deleted == 5
    client.close()
