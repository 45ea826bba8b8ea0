"""Cluster-wide IPAM at scale: many nodes on one /16 on a 3-member etcd cluster.

    python -m tests.bench.bench_ipam_scale [--quick]      (or NODEAGENT_BENCH_QUICK=1)

Starts three Debian ``etcd`` members on loopback (tests/ipam_etcd.EtcdCluster), removes them at
the end. A simulated node is an ``Ipam`` with its own etcd client and store (its own node name,
so its own block leases), allocating through the whole ADD path; the nodes are threads spread
over PROCESSES processes. Each attachment that fails with code 11 is retried (same container,
as a runtime retries ADD) until it succeeds. Lines printed (one JSON object each):

* ``etcd_scale_claims_<design>_<n>_nodes``: n nodes each attach PODS pods back to back, all at
  once (the worst case for lost races), with blocks (``blocks``) and with every node proposing
  the lowest free address (``lowest_free``, the design before blocks): claim transactions per
  successful allocation, lost races, rate, p99.
* ``etcd_scale_nodes_x_pods``: NODES x PODS attachments arriving at random over WINDOW seconds
  (each node's pods at uniformly random times), the steady cluster-wide load a p99 means
  something for: total time, p99/p50 per allocation, duplicates, acknowledged allocations
  missing from etcd at the end.
* ``etcd_scale_member_kill``: the same run again, the leader killed (SIGKILL) at 30 % and
  restarted 5 s later: duplicates, lost acknowledged allocations, errors and when they
  happened against the leaderless window.
* ``etcd_scale_peer``: whereabouts' scheme, the whole pool in one object updated with a
  compare-and-swap on its mod_revision, 16 allocators (tests/bench/bench_ipam.py has it).
* ``etcd_scale_multi_cluster``: two groups of nodes under cluster names ``east`` and ``west``,
  one etcd, one network name, at once: per cluster duplicates and missing allocations, the
  other cluster's records found in a cluster's keys (must be 0), addresses both hold (legit).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nodeagent.ipam.allocator import Attachment, Ipam
from nodeagent.ipam.config import IPAMConfig, parse_config
from nodeagent.ipam.errors import TRY_AGAIN_LATER, IpamError
from nodeagent.ipam.etcd.client import EtcdClient
from nodeagent.ipam.etcd.store import BLOCK, ClaimStats, EtcdStore, Keys, prefix_end
from nodeagent.ipam.store import Store
from tests import ipam_etcd
from tests.bench.bench_ipam import PoolObjectAllocator, p99, sig
from tests.bench.common import emit

QUICK = "--quick" in sys.argv or os.environ.get("NODEAGENT_BENCH_QUICK") == "1"
NODES = 60 if QUICK else 200
PODS = 20 if QUICK else 50
WINDOW = 10.0 if QUICK else 40.0  # seconds over which the paced runs' pods arrive
LADDER = (10, 50, NODES)
PROCESSES = 4
PEER_ALLOCATORS = 16
PEER_BUDGET = 5.0 if QUICK else 8.0
KILL_AT = 0.3  # of WINDOW
DOWN_FOR = 5.0  # seconds the killed member stays down
RETRY_FOR = 30.0  # a runtime gives up on an ADD after this long
NETWORK = "scale"
RANGE = "10.0.0.0/16"


def ipam_config(endpoints: str, prefix: str) -> IPAMConfig:
    return parse_config(
        {
            "cniVersion": "1.1.0",
            "name": NETWORK,
            "ipam": {
                "range": RANGE,
                "network_name": NETWORK,
                "datastore": "etcd",
                "etcd_host": endpoints,
                "etcd_prefix": prefix,
            },
        }
    )


class NodeIpam(Ipam):
    """One simulated node: its store carries the node's name, cluster and block size."""

    def __init__(self, node: str, cluster: str, block_size: int) -> None:
        super().__init__("/nonexistent")
        self.node, self.cluster, self.block_size = node, cluster, block_size

    def _open(self, config: IPAMConfig) -> Store:
        assert config.etcd is not None
        return EtcdStore(
            EtcdClient(config.etcd),
            config.network,
            prefix=config.etcd.prefix,
            cluster=self.cluster,
            node=self.node,
            block_size=self.block_size,
        )


@dataclass
class Job:
    """What one worker process runs: ``nodes`` simulated nodes of one cluster."""

    endpoints: str
    prefix: str
    cluster: str
    nodes: list[str]
    pods: int
    block_size: int
    start_at: float  # wall clock, so all processes begin together
    window: float  # 0: each node's pods back to back; else arrivals spread over it
    seed: int


@dataclass
class Outcome:
    acks: dict[str, str] = field(default_factory=dict)  # container -> address
    latencies: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)  # each node's first allocation (leases)
    errors: list[tuple[float, float, str]] = field(default_factory=list)  # call began, ended, msg
    failed: list[str] = field(default_factory=list)  # containers given up on
    stats: dict[str, int] = field(default_factory=dict)
    finished_at: float = 0.0
    cpu: float = 0.0  # client CPU seconds of the worker processes

    def merge(self, other: Outcome) -> None:
        self.acks.update(other.acks)
        self.latencies += other.latencies
        self.first += other.first
        self.errors += other.errors
        self.failed += other.failed
        for k, v in other.stats.items():
            self.stats[k] = self.stats.get(k, 0) + v
        self.finished_at = max(self.finished_at, other.finished_at)
        self.cpu += other.cpu


def run_job(job: Job) -> Outcome:
    """A worker process: one thread per simulated node."""
    config = ipam_config(job.endpoints, job.prefix)
    out = Outcome()
    lock = threading.Lock()
    ipams = [NodeIpam(n, job.cluster, job.block_size) for n in job.nodes]
    for ipam in ipams:
        ipam.store(config)  # connect before the clock starts

    def node(ipam: NodeIpam, rand: random.Random) -> None:
        try:
            attach_all(ipam, rand)
        except Exception as exc:  # a bug, not an etcd outage: count it, do not hide it
            with lock:
                out.errors.append((time.time(), time.time(), f"{type(exc).__name__}: {exc}"))
                out.failed.append(f"{ipam.node}: gave up: {exc!r}")

    def attach_all(ipam: NodeIpam, rand: random.Random) -> None:
        arrivals = sorted(rand.uniform(0, job.window) for _ in range(job.pods))
        for i, offset in enumerate(arrivals):
            delay = job.start_at + offset - time.time()
            if delay > 0:
                time.sleep(delay)
            attachment = Attachment(f"{job.cluster}-{ipam.node}-{i}", "eth0")
            give_up = time.monotonic() + RETRY_FOR
            while True:
                began, began_wall = time.perf_counter(), time.time()
                try:
                    result = ipam.allocate(config, attachment)
                except IpamError as exc:
                    with lock:
                        out.errors.append((began_wall, time.time(), f"{exc.code}: {exc.msg}"))
                    if exc.code != TRY_AGAIN_LATER or time.monotonic() > give_up:
                        with lock:
                            out.failed.append(attachment.container_id)
                        break
                    time.sleep(0.1)
                    continue
                took = time.perf_counter() - began
                with lock:
                    (out.first if i == 0 else out.latencies).append(took)
                    out.acks[attachment.container_id] = str(result.ips[0].address.ip)
                break

    cpu = time.process_time()
    threads = [
        threading.Thread(target=node, args=(ipam, random.Random(job.seed * 7919 + i)))
        for i, ipam in enumerate(ipams)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.finished_at = time.time()
    out.cpu = time.process_time() - cpu
    total = ClaimStats()
    for ipam in ipams:
        store = ipam.store(config)
        assert isinstance(store, EtcdStore)
        for name in vars(total):
            setattr(total, name, getattr(total, name) + getattr(store.stats, name))
        ipam.close()
    out.stats = dict(vars(total))
    return out


def run_nodes(
    pool: Any,
    endpoints: str,
    prefix: str,
    groups: Sequence[tuple[str, int]],  # (cluster, nodes)
    pods: int,
    block_size: int,
    window: float,
    start_at: float | None = None,
) -> tuple[dict[str, Outcome], float]:
    """Run the groups' nodes over the worker processes; outcome per cluster, start time."""
    start_at = start_at or time.time() + 3.0  # time for every process to connect its nodes
    jobs: list[Job] = []
    for cluster, count in groups:
        names = [f"node{i:03d}" for i in range(count)]
        per = PROCESSES // len(groups) or 1
        for p in range(per):
            part = names[p::per]
            if part:
                jobs.append(
                    Job(
                        endpoints,
                        prefix,
                        cluster,
                        part,
                        pods,
                        block_size,
                        start_at,
                        window,
                        seed=len(jobs),
                    )
                )
    results = pool.map(run_job, jobs)
    by_cluster: dict[str, Outcome] = {}
    for job, result in zip(jobs, results, strict=True):
        by_cluster.setdefault(job.cluster, Outcome()).merge(result)
    return by_cluster, start_at


def stored(endpoints: str, prefix: str, cluster: str) -> dict[str, list[str]]:
    """Address -> container IDs, from the address keys of one cluster's namespace."""
    config = ipam_config(endpoints, prefix).etcd
    assert config is not None
    client = EtcdClient(dataclasses.replace(config, timeout=30.0))  # not a measurement
    keys = Keys(prefix, NETWORK, cluster)
    try:
        out: dict[str, list[str]] = {}
        for kv in client.range_all(keys.root, prefix_end(keys.root)):
            if keys.is_address(kv.key):
                doc = json.loads(kv.value)
                out.setdefault(doc["ip"], []).append(doc["id"])
        return out
    finally:
        client.close()


def verify(outcome: Outcome, in_etcd: dict[str, list[str]]) -> dict[str, int]:
    """Duplicates among the acknowledged addresses and in etcd; acknowledged allocations not in
    etcd as acknowledged; etcd records nobody acknowledged."""
    ips = list(outcome.acks.values())
    holder = {ip: ids[0] for ip, ids in in_etcd.items()}
    return {
        "duplicates": len(ips) - len(set(ips)) + sum(len(ids) - 1 for ids in in_etcd.values()),
        "lost_acks": sum(1 for cid, ip in outcome.acks.items() if holder.get(ip) != cid),
        "unacknowledged_in_etcd": sum(1 for cid in holder.values() if cid not in outcome.acks),
    }


def per_alloc(stats: dict[str, int], name: str) -> float:
    return sig(stats[name] / max(1, stats["allocations"]))


def ladder(pool: Any, cluster: ipam_etcd.EtcdCluster) -> None:
    for design, block_size in (("blocks", BLOCK), ("lowest_free", 0)):
        for nodes in LADDER:
            prefix = f"/bench/ladder-{design}-{nodes}"
            outcomes, start_at = run_nodes(
                pool, cluster.endpoints, prefix, [("default", nodes)], PODS, block_size, 0.0
            )
            o = outcomes["default"]
            checks = verify(o, stored(cluster.endpoints, prefix, "default"))
            elapsed = o.finished_at - start_at
            emit(
                bench=f"etcd_scale_claims_{design}_{nodes}_nodes",
                ours=per_alloc(o.stats, "claims"),
                unit="claim transactions per allocation",
                nodes=nodes,
                allocations=len(o.acks),
                lost_races_per_alloc=per_alloc(o.stats, "lost"),
                block_leases=o.stats["leases"],
                lease_claims_per_alloc=per_alloc(o.stats, "lease_claims"),
                fallback_candidates=o.stats["fallback"],
                rate=sig(len(o.acks) / elapsed),
                p99_ms=sig(p99(o.latencies + o.first) * 1000),
                errors=len(o.errors),
                failed=len(o.failed),
                arrival="all pods of all nodes at once, back to back per node",
                **checks,
            )


def paced(pool: Any, cluster: ipam_etcd.EtcdCluster, peer: dict[str, Any]) -> None:
    prefix = "/bench/paced"
    outcomes, start_at = run_nodes(
        pool, cluster.endpoints, prefix, [("default", NODES)], PODS, BLOCK, WINDOW
    )
    o = outcomes["default"]
    checks = verify(o, stored(cluster.endpoints, prefix, "default"))
    elapsed = o.finished_at - start_at
    emit(
        bench=f"etcd_scale_{NODES}_nodes_x_{PODS}_pods",
        ours=sig(elapsed),
        peer=sig(NODES * PODS / peer["rate"]),
        unit="s for every attachment",
        ratio=sig(elapsed / (NODES * PODS / peer["rate"])),
        target_below=60,
        allocations=len(o.acks),
        p99_ms=sig(p99(o.latencies + o.first) * 1000),
        p99_target_below=100,
        p99_ms_without_first_per_node=sig(p99(o.latencies) * 1000),
        first_per_node_p50_ms=sig(sorted(o.first)[len(o.first) // 2] * 1000),
        p50_ms=sig(sorted(o.latencies)[len(o.latencies) // 2] * 1000),
        claims_per_alloc=per_alloc(o.stats, "claims"),
        client_cpu_ms_per_alloc=sig(o.cpu / max(1, len(o.acks)) * 1000),
        errors=len(o.errors),
        failed=len(o.failed),
        arrival=f"each node's pods at random times over {WINDOW:g} s",
        members=len(cluster.members),
        load_average_1m=sig(os.getloadavg()[0]),
        peer_impl="whole-pool object with CAS: time for the same count at its measured rate",
        **checks,
    )


def member_kill(pool: Any, cluster: ipam_etcd.EtcdCluster) -> None:
    prefix = "/bench/kill"
    result: dict[str, Any] = {}

    def killer() -> None:
        time.sleep(max(0.0, start_at + KILL_AT * WINDOW - time.time()))
        leader = cluster.leader()
        victim = leader if leader is not None else 0
        result["killed"] = time.time()
        cluster.kill(victim)
        try:
            while cluster.leader() is None:  # the leaderless window: writes cannot commit
                time.sleep(0.05)
            result["elected"] = time.time()
            time.sleep(max(0.0, result["killed"] + DOWN_FOR - time.time()))
        finally:
            cluster.restart(victim)
        result["restarted"] = time.time()
        result["victim_was_leader"] = leader is not None

    start_at = time.time() + 3.0
    thread = threading.Thread(target=killer)
    thread.start()
    outcomes, _ = run_nodes(
        pool, cluster.endpoints, prefix, [("default", NODES)], PODS, BLOCK, WINDOW, start_at
    )
    thread.join()
    o = outcomes["default"]
    checks = verify(o, stored(cluster.endpoints, prefix, "default"))
    killed, elected = result["killed"], result["elected"]
    # an error is expected only of a call that was under way while there was no leader
    outside = [e for e in o.errors if e[1] < killed or e[0] > elected]
    emit(
        bench="etcd_scale_member_kill",
        ours=checks["duplicates"] + checks["lost_acks"],
        unit="duplicates + lost acknowledged allocations",
        must_be=0,
        allocations=len(o.acks),
        failed=len(o.failed),
        errors=len(o.errors),
        errors_outside_leaderless_window=len(outside),
        first_error_after_kill_s=sig(min((e[1] for e in o.errors), default=killed) - killed),
        last_error_after_kill_s=sig(max((e[1] for e in o.errors), default=killed) - killed),
        last_failed_call_began_after_kill_s=sig(
            max((e[0] for e in o.errors), default=killed) - killed
        ),
        leaderless_s=sig(elected - killed),
        down_s=sig(result["restarted"] - killed),
        killed_at_s=sig(killed - start_at),
        killed_the_leader=result["victim_was_leader"],
        p99_ms=sig(p99(o.latencies + o.first) * 1000),
        sample_error=o.errors[0][2][:160] if o.errors else None,
        **checks,
    )


def bench_peer(cluster: ipam_etcd.EtcdCluster) -> dict[str, Any]:
    key = b"/bench/peer/whereabouts/ippool"
    latencies: list[float] = []
    got: list[int] = []
    deadline = time.monotonic() + PEER_BUDGET
    started = time.monotonic()

    def worker(t: int) -> None:
        client = EtcdClient(cluster.client_config())
        peer = PoolObjectAllocator(client, key, 1 << 16)
        i = 0
        while time.monotonic() < deadline:
            began = time.perf_counter()
            got.append(peer.allocate(f"t{t}i{i}"))
            latencies.append(time.perf_counter() - began)
            i += 1
        client.close()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(PEER_ALLOCATORS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    result = {
        "rate": len(got) / elapsed,
        "p99_ms": p99(latencies) * 1000,
        "duplicates": len(got) - len(set(got)),
        "allocations": len(got),
    }
    emit(
        bench="etcd_scale_peer",
        peer=sig(result["rate"]),
        unit="allocations/s",
        p99_ms=sig(result["p99_ms"]),
        duplicates=result["duplicates"],
        allocations=result["allocations"],
        allocators=PEER_ALLOCATORS,
        peer_impl="whereabouts-style: whole pool in one key, read-modify-write txn,"
        " compare mod_revision",
        members=len(cluster.members),
    )
    return result


def multi_cluster(pool: Any, cluster: ipam_etcd.EtcdCluster) -> None:
    prefix = "/bench/multi"
    nodes = NODES // 4
    outcomes, _ = run_nodes(
        pool, cluster.endpoints, prefix, [("east", nodes), ("west", nodes)], PODS, BLOCK, 0.0
    )
    line: dict[str, Any] = {}
    held: dict[str, set[str]] = {}
    foreign = 0
    for name, other in (("east", "west"), ("west", "east")):
        o = outcomes[name]
        in_etcd = stored(cluster.endpoints, prefix, name)
        checks = verify(o, in_etcd)
        foreign += sum(1 for ids in in_etcd.values() for cid in ids if cid.startswith(other))
        held[name] = set(o.acks.values())
        line[name] = {"allocations": len(o.acks), "errors": len(o.errors), **checks}
    emit(
        bench="etcd_scale_multi_cluster",
        ours=foreign,
        unit="records of one cluster in the other's keys",
        must_be=0,
        duplicates=sum(line[c]["duplicates"] for c in line),
        lost_acks=sum(line[c]["lost_acks"] for c in line),
        addresses_in_both_clusters=len(held["east"] & held["west"]),
        nodes_per_cluster=nodes,
        network=NETWORK,
        **line,
    )


def main() -> None:
    if not ipam_etcd.available():
        print("etcd not installed (Debian package etcd-server)", file=sys.stderr)
        sys.exit(1)
    began = time.perf_counter()
    # SIGTERM (a timeout) unwinds like Ctrl-C, so the etcd members are stopped and removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ctx = multiprocessing.get_context("spawn")
    with ipam_etcd.EtcdCluster(3) as cluster, ctx.Pool(PROCESSES) as pool:
        peer = bench_peer(cluster)
        paced(pool, cluster, peer)
        ladder(pool, cluster)
        multi_cluster(pool, cluster)
        member_kill(pool, cluster)
    print(
        f"# total {time.perf_counter() - began:.1f} s, load average {os.getloadavg()}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
