"""Block leases and cluster namespaces of the etcd store, against a real etcd on loopback."""

from __future__ import annotations

import threading
from ipaddress import ip_address
from typing import Any

import pytest

from nodeagent.ipam.config import parse_config
from nodeagent.ipam.errors import ADDRESS_IN_USE, POOL_EXHAUSTED, IpamError
from nodeagent.ipam.etcd.client import EtcdClient
from nodeagent.ipam.etcd.store import BLOCK, EtcdStore
from nodeagent.ipam.pool import Pool
from nodeagent.ipam.store import Claim, Owner
from tests import ipam_etcd

pytestmark = pytest.mark.skipif(
    not ipam_etcd.available(), reason="etcd not installed (Debian package etcd-server)"
)



@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"/blocks/{request.node.name}"


def claim(range_: str = "10.0.0.0/16", **ipam: Any) -> Claim:
    rng = parse_config({"ipam": {"range": range_, **ipam}}).ranges[0]
    return Claim(rng.id, (Pool(rng),))


def store(etcd: ipam_etcd.EtcdServer, prefix: str, node: str, **kw: Any) -> EtcdStore:
    client = EtcdClient(etcd.client_config(timeout=2.0))
    return EtcdStore(client, "pool1", prefix=prefix, node=node, **kw)


def block_of(ip: str) -> int:
    return int(ip_address(ip)) // BLOCK


def test_nodes_claim_inside_their_own_blocks_and_never_lose_a_race(
    etcd: ipam_etcd.EtcdServer, prefix: str
) -> None:
    c = claim()
    stores = [store(etcd, prefix, f"node{i}") for i in range(6)]
    got: dict[str, list[str]] = {}

    def node(i: int) -> None:
        s = stores[i]
        got[s.node] = [str(s.claim([c], Owner(f"n{i}-{j}", "eth0"))[0].ip) for j in range(80)]

    threads = [threading.Thread(target=node, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    everything = [ip for ips in got.values() for ip in ips]
    assert len(everything) == 480 == len(set(everything))
    holders = {int(key.rsplit(b"/", 1)[1], 16) // BLOCK: n for key, n in stores[0].leases().items()}
    for name, ips in got.items():  # 80 addresses: two blocks of 64 each, all of them its own
        assert {holders[block_of(ip)] for ip in ips} == {name}
    assert sum(s.stats.lost for s in stores) == 0  # nobody proposed another node's address
    assert all(s.stats.claims == s.stats.allocations == 80 for s in stores)
    # Block keys are not reservations: show() and GC see only addresses.
    assert len(stores[0].reservations()) == 480
    for s in stores:
        s.close()


def test_a_node_without_a_free_block_falls_back_to_the_whole_range(
    etcd: ipam_etcd.EtcdServer, prefix: str
) -> None:
    c = claim("10.0.0.0/25")  # two blocks, 126 addresses to hand out
    a, b, late = (store(etcd, prefix, n) for n in ("a", "b", "late"))
    assert str(a.claim([c], Owner("a0", "eth0"))[0].ip) == "10.0.0.1"
    assert str(b.claim([c], Owner("b0", "eth0"))[0].ip) == "10.0.0.64"  # the other block
    # No block left for "late": it takes the lowest free address, in a's block.
    assert str(late.claim([c], Owner("l0", "eth0"))[0].ip) == "10.0.0.2"
    assert late.stats.fallback >= 1 and late.stats.leases == 0
    got = {"10.0.0.1", "10.0.0.64", "10.0.0.2"}
    for i in range(1, 200):
        s = (a, b, late)[i % 3]
        try:
            got.add(str(s.claim([c], Owner(f"x{i}", "eth0"))[0].ip))
        except IpamError as exc:
            assert exc.code == POOL_EXHAUSTED
    assert len(got) == 126 == len(a.reservations())  # every address, each once
    for s in (a, b, late):
        s.close()


def test_leases_outlive_the_agent_and_are_dropped_for_a_node_that_left(
    etcd: ipam_etcd.EtcdServer, prefix: str
) -> None:
    c = claim()
    first = store(etcd, prefix, "worker-1")
    ip1 = str(first.claim([c], Owner("c1", "eth0"))[0].ip)
    other = store(etcd, prefix, "worker-2")
    ip2 = str(other.claim([c], Owner("c2", "eth0"))[0].ip)
    assert block_of(ip1) != block_of(ip2)
    first.close()
    again = store(etcd, prefix, "worker-1")  # the agent restarted: same node, same block
    ip3 = str(again.claim([c], Owner("c3", "eth0"))[0].ip)
    assert block_of(ip3) == block_of(ip1) and again.stats.lease_claims == 0
    assert sorted(again.leases().values()) == ["worker-1", "worker-2"]
    assert other.release_leases("worker-1") == 1
    assert list(other.leases().values()) == ["worker-2"]
    assert {str(r.ip) for r in other.reservations()} == {ip1, ip2, ip3}  # addresses stay
    again.close()
    other.close()


def test_two_clusters_on_one_etcd_and_network_name_never_meet(
    etcd: ipam_etcd.EtcdServer, prefix: str
) -> None:
    c = claim()
    fixed = Claim(c.set_id, c.pools, ip=ip_address("10.0.0.9"))
    east = store(etcd, prefix, "n1", cluster="east")
    west = store(etcd, prefix, "n1", cluster="west")
    legacy = store(etcd, prefix, "n1")  # the default cluster
    firsts = [str(s.claim([c], Owner("c1", "eth0"))[0].ip) for s in (east, west, legacy)]
    assert firsts == ["10.0.0.1"] * 3  # each cluster's own pool
    east.claim([fixed], Owner("e9", "eth0"))
    assert str(west.claim([fixed], Owner("w9", "eth0"))[0].ip) == "10.0.0.9"
    with pytest.raises(IpamError) as info:
        east.claim([fixed], Owner("e10", "eth0"))
    assert info.value.code == ADDRESS_IN_USE and "e9" in info.value.msg
    assert {r.owner.container_id for r in east.reservations()} == {"c1", "e9"}
    assert {r.owner.container_id for r in west.reservations()} == {"c1", "w9"}
    assert {r.owner.container_id for r in legacy.reservations()} == {"c1"}
    assert [str(r.ip) for r in west.release("c1", "eth0")] == ["10.0.0.1"]
    assert {r.owner.container_id for r in east.reservations()} == {"c1", "e9"}  # untouched
    for s in (east, west, legacy):
        s.close()
