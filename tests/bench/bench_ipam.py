"""IPAM allocation throughput and latency: the etcd store and the node-local file store.

    python -m tests.bench.bench_ipam

Starts its own etcd (Debian ``etcd-server``) on loopback with a temporary data dir.

* etcd, 16 concurrent allocators, 10,000 allocations in all, from a /16: once as 16 worker
  threads of one agent (one store, as the daemon serves concurrent CNI ADDs) and once as 4
  agent processes x 4 threads (separate stores and connections, like 4 nodes). Reports
  allocations/s, p99 latency and duplicates (addresses handed out twice, checked against
  each other and against etcd). Peer: the whereabouts pattern - the whole pool in one object,
  read, scanned for the lowest free address and written back with a compare-and-swap on its
  revision (whereabouts does this on an IPPool resource, under a lease on top); run on the same
  etcd with the same 16 threads, for a bounded time.
* file store: sequential allocations in a warm process vs the reference ``host-local`` plugin
  (``/usr/lib/cni/host-local``, one process per ADD as a runtime runs it).

Prints one JSON object per line; total runtime well under 90 s.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nodeagent.cnitypes.request import Attachment
from nodeagent.ipam.allocator import Ipam
from nodeagent.ipam.config import parse_config
from nodeagent.ipam.configtypes import IPAMConfig
from nodeagent.ipam.etcd import api
from nodeagent.ipam.etcd.client import EtcdClient
from nodeagent.ipam.etcd.store import prefix_end
from tests import ipam_etcd
from tests.bench.common import emit

TOTAL = 10_000
ALLOCATORS = 16
PEER_BUDGET = 8.0  # seconds for the whereabouts-style peer
HOST_LOCAL = Path("/usr/lib/cni/host-local")


def sig(x: float) -> float:
    return float(f"{x:.3g}")


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def etcd_config(endpoint: str, prefix: str) -> IPAMConfig:
    return parse_config(
        {
            "cniVersion": "1.1.0",
            "name": "bench",
            "ipam": {
                "range": "10.0.0.0/16",
                "network_name": "bench",
                "datastore": "etcd",
                "etcd_host": endpoint,
                "etcd_prefix": prefix,
            },
        }
    )


# -- ours ------------------------------------------------------------------------------------


def run_agent(
    endpoint: str, prefix: str, agent: int, threads: int, per_thread: int, start_at: float
) -> tuple[list[float], list[str], float]:
    """One agent: ``threads`` concurrent allocators sharing one Ipam. Returns latencies,
    addresses and the agent's CPU seconds."""
    ipam = Ipam("/nonexistent")
    config = etcd_config(endpoint, prefix)
    ipam.store(config)
    latencies: list[float] = []
    got: list[str] = []

    def worker(t: int) -> None:
        for i in range(per_thread):
            began = time.perf_counter()
            result = ipam.allocate(config, Attachment(f"a{agent}t{t}i{i}", "eth0"))
            latencies.append(time.perf_counter() - began)
            got.append(str(result.ips[0].address.ip))

    while time.time() < start_at:
        time.sleep(0.001)
    cpu = time.process_time()
    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    ipam.close()
    return latencies, got, time.process_time() - cpu


def bench_ours(server: ipam_etcd.EtcdServer, agents: int, prefix: str) -> dict[str, Any]:
    threads = ALLOCATORS // agents
    per_thread = TOTAL // ALLOCATORS
    start_at = time.time() + (2.0 if agents > 1 else 0.2)
    if agents == 1:
        results = [run_agent(server.endpoint, prefix, 0, threads, per_thread, start_at)]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(agents) as pool:
            results = pool.starmap(
                run_agent,
                [
                    (server.endpoint, prefix, a, threads, per_thread, start_at)
                    for a in range(agents)
                ],
            )
    elapsed = time.time() - start_at
    latencies = [x for r in results for x in r[0]]
    got = [x for r in results for x in r[1]]
    stored = stored_addresses(server.endpoint, prefix)
    duplicates = len(got) - len(set(got)) + len(set(got) ^ set(stored))
    return {
        "rate": len(got) / elapsed,
        "p99_ms": p99(latencies) * 1000,
        "p50_ms": sorted(latencies)[len(latencies) // 2] * 1000,
        "duplicates": duplicates,
        "allocations": len(got),
        "cpu_ms_per_alloc": sum(r[2] for r in results) / len(got) * 1000,
    }


def stored_addresses(endpoint: str, prefix: str) -> list[str]:
    client = EtcdClient(etcd_config(endpoint, prefix).etcd)  # type: ignore[arg-type]
    root = f"{prefix}/bench/ip4/".encode()
    kvs = client.range_all(root, prefix_end(root))
    client.close()
    return [json.loads(kv.value)["ip"] for kv in kvs]


# -- peer: the whole pool in one object, compare-and-swap on its revision ---------------------


class PoolObjectAllocator:
    """whereabouts' scheme without its lease: read the pool object, take the lowest offset not
    in its reservation list (a linear scan), write it back if nobody changed it meanwhile."""

    def __init__(self, client: EtcdClient, key: bytes, size: int) -> None:
        self.client, self.key, self.size = client, key, size

    def allocate(self, container_id: str) -> int:
        while True:
            kvs = self.client.range(self.key).kvs
            revision = kvs[0].mod_revision if kvs else 0
            pool = json.loads(kvs[0].value) if kvs else {"allocations": {}}
            taken = pool["allocations"]
            offset = next(o for o in range(1, self.size) if str(o) not in taken)
            taken[str(offset)] = {"id": container_id, "podref": "bench/pod"}
            resp = self.client.txn(
                api.txn(
                    [api.compare(self.key, "mod", revision)],
                    [api.op_put(self.key, json.dumps(pool).encode())],
                )
            )
            if resp.succeeded:
                return offset


def bench_peer(server: ipam_etcd.EtcdServer, prefix: str) -> dict[str, Any]:
    config = etcd_config(server.endpoint, prefix).etcd
    key = f"{prefix}/whereabouts/ippool".encode()
    latencies: list[float] = []
    got: list[int] = []
    deadline = time.monotonic() + PEER_BUDGET
    started = time.monotonic()

    def worker(t: int) -> None:
        client = EtcdClient(config)  # type: ignore[arg-type]
        peer = PoolObjectAllocator(client, key, 1 << 16)
        i = 0
        while time.monotonic() < deadline and len(got) < TOTAL:
            began = time.perf_counter()
            got.append(peer.allocate(f"t{t}i{i}"))
            latencies.append(time.perf_counter() - began)
            i += 1
        client.close()

    run_threads(ALLOCATORS, worker)
    elapsed = time.monotonic() - started
    return {
        "rate": len(got) / elapsed,
        "p99_ms": p99(latencies) * 1000,
        "duplicates": len(got) - len(set(got)),
        "allocations": len(got),
    }


def run_threads(n: int, target: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# -- node-local ------------------------------------------------------------------------------


def bench_file(n: int = 1000) -> float:
    with tempfile.TemporaryDirectory() as state:
        ipam = Ipam(state)
        config = parse_config(
            {"name": "bench", "ipam": {"range": "10.0.0.0/16", "network_name": "bench"}}
        )
        began = time.perf_counter()
        for i in range(n):
            ipam.allocate(config, Attachment(f"c{i}", "eth0"))
        return n / (time.perf_counter() - began)


def bench_host_local(n: int = 200) -> float | None:
    if not os.access(HOST_LOCAL, os.X_OK):
        return None
    with tempfile.TemporaryDirectory() as state:
        conf = json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "bench",
                "type": "host-local",
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.0.0.0/16"}]],
                    "dataDir": state,
                },
            }
        ).encode()
        env = {
            "CNI_COMMAND": "ADD",
            "CNI_NETNS": "/proc/self/ns/net",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(HOST_LOCAL.parent),
            "PATH": os.environ.get("PATH", ""),
        }
        began = time.perf_counter()
        for i in range(n):
            proc = subprocess.run(
                [str(HOST_LOCAL)],
                input=conf,
                capture_output=True,
                env={**env, "CNI_CONTAINERID": f"c{i}"},
                check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"host-local failed: {proc.stdout!r} {proc.stderr!r}")
        return n / (time.perf_counter() - began)


def main() -> None:
    began = time.perf_counter()
    if not ipam_etcd.available():
        print("etcd not installed (Debian package etcd-server)", file=sys.stderr)
        sys.exit(1)
    with ipam_etcd.EtcdServer() as server:
        peer = bench_peer(server, "/bench/peer")
        for agents, label in ((1, "1 agent x 16 threads"), (4, "4 agents x 4 threads")):
            ours = bench_ours(server, agents, f"/bench/ours{agents}")
            emit(
                bench=f"etcd_alloc_rate_{agents}x{ALLOCATORS // agents}",
                ours=sig(ours["rate"]),
                peer=sig(peer["rate"]),
                unit="allocations/s",
                ratio=sig(ours["rate"] / peer["rate"]),
                allocators=label,
                allocations=ours["allocations"],
                peer_allocations=peer["allocations"],
                target=1000,
                cpu_ms_per_alloc=sig(ours["cpu_ms_per_alloc"]),
                peer_impl="whole-pool object, lowest-free scan, CAS on its revision",
            )
            emit(
                bench=f"etcd_alloc_p99_{agents}x{ALLOCATORS // agents}",
                ours=sig(ours["p99_ms"]),
                peer=sig(peer["p99_ms"]),
                unit="ms",
                ratio=sig(ours["p99_ms"] / peer["p99_ms"]),
                p50_ms=sig(ours["p50_ms"]),
                target_below=50,
            )
            emit(
                bench=f"etcd_alloc_duplicates_{agents}x{ALLOCATORS // agents}",
                ours=ours["duplicates"],
                peer=peer["duplicates"],
                unit="addresses",
                ratio=None,
                must_be=0,
            )
    ours_file = bench_file()
    peer_file = bench_host_local()
    emit(
        bench="file_alloc_rate",
        ours=sig(ours_file),
        peer=sig(peer_file) if peer_file else None,
        unit="allocations/s",
        ratio=sig(ours_file / peer_file) if peer_file else None,
        peer_impl=f"{HOST_LOCAL} ADD, one process per allocation" if peer_file else "missing",
    )
    print(f"# total {time.perf_counter() - began:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    if shutil.which("etcd") is None and not ipam_etcd.available():
        print("etcd not installed", file=sys.stderr)
    main()
