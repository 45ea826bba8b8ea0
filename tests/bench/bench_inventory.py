"""Inventory benchmarks; prints one JSON object per line.

- Full scan of a fixture node with 8 PFs x 64 VFs (sysfs only, on tmpfs like the kernel's sysfs).
- Kernel event to model update: time from a netlink change returning to the live inventory's
  subscriber seeing it, for link creation and for an MTU change, in a namespace of its own.
"""

from __future__ import annotations

import os
import secrets
import statistics
import tempfile
import threading
import time

from pyroute2 import IPRoute, netns

from nodeagent.discovery import Scanner
from nodeagent.sysfs import Sysfs
from nodeagent.watch import LiveInventory
from tests.bench.common import emit
from tests.sysfs_tree import SysfsTree

SCAN_TARGET_MS = 50.0


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else values[0]


def bench_full_scan(rounds: int = 30) -> None:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=base) as root:
        tree = SysfsTree(root)
        for i in range(8):
            tree.add_pf(f"0000:{0x18 + i * 0x10:02x}:00.0", "ice", netdev=f"ens{i}f0",
                        numvfs=64, numa_node=i % 2, vfio=tuple(range(48, 64)))
        scanner = Scanner(Sysfs(root), hostname="bench")
        assert len(scanner.scan().vfs()) == 512
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            scanner.scan()
            times.append((time.perf_counter() - start) * 1000)
    emit(bench="inventory_full_scan_8pf_x_64vf", ours=round(statistics.median(times), 2),
         p99=round(p99(times), 2), peer=None, unit="ms", ratio=None, target=SCAN_TARGET_MS,
         fs="tmpfs" if base else "disk")


def bench_event_latency(rounds: int = 100) -> None:
    name = f"nab{secrets.token_hex(3)}"
    netns.create(name)
    try:
        with tempfile.TemporaryDirectory() as empty, IPRoute(netns=name) as ipr:
            inventory = LiveInventory(Sysfs(empty), netns=name)
            inventory.start()
            try:
                for kind, samples in _measure(inventory, ipr, rounds).items():
                    emit(bench=f"inventory_event_to_model_{kind}",
                         ours=round(statistics.median(samples), 3),
                         p99=round(p99(samples), 3), peer=None, unit="ms", ratio=None,
                         samples=len(samples))
            finally:
                inventory.stop()
    finally:
        netns.remove(name)


def _measure(inventory: LiveInventory, ipr: IPRoute, rounds: int) -> dict[str, list[float]]:
    seen = threading.Condition()
    state: dict[str, object] = {}

    def on_change(node, changed) -> None:
        with seen:
            state["node"] = node
            state["at"] = time.perf_counter()
            seen.notify_all()

    inventory.subscribe(on_change)

    def wait(predicate) -> float:
        with seen:
            assert seen.wait_for(lambda: "node" in state and predicate(state["node"]), 5)
            return state["at"]  # type: ignore[return-value]

    results: dict[str, list[float]] = {"link_add": [], "mtu_change": []}
    for i in range(rounds):
        a = f"nab{i}a"
        start = time.perf_counter()
        ipr.link("add", ifname=a, kind="veth", peer=f"nab{i}b")
        at = wait(lambda n, a=a: n.nic(a) is not None)
        results["link_add"].append((at - start) * 1000)
        index = ipr.link_lookup(ifname=a)[0]
        start = time.perf_counter()
        ipr.link("set", index=index, mtu=1400 + i)
        at = wait(lambda n, a=a, i=i: n.nic(a).netdevs[0].mtu == 1400 + i)
        results["mtu_change"].append((at - start) * 1000)
        ipr.link("del", index=index)
    return results


if __name__ == "__main__":
    bench_full_scan()
    bench_event_latency()
