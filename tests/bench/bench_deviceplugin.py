"""Device plugin benchmark: Allocate latency, and kernel event -> ListAndWatch update latency.

  allocate  on the host: Allocate calls (one VF on vfio-pci each, so the VFIO group lookup is
            in the path) through the pool's real gRPC unix socket, as the kubelet stand-in
            makes them, on a fixture sysfs tree. Median and p99 over ALLOCATE_CALLS calls.
  events    in the lab (SR-IOV needs it): a LiveInventory and a DevicePluginManager on the
            emulated PF, a ListAndWatch stream open; the clock runs from the sysfs write to the
            stream message that reflects it: ``sriov_numvfs`` 0 -> 2 (both VFs listed), and one
            VF rebound to vfio-pci (listed in the vfio pool). Median and p99 over the rounds;
            ``kernel_write_median_ms`` is how long the writes themselves took (the kernel's
            share: the VFs exist, or the VF is bound, when they return).

No peer is measured: sriov-network-device-plugin (Go) is not built or run here, so every line
says ``"peer": null``. Prints one JSON object per line. Inside the lab (NODEAGENT_HWLAB_INVENTORY
set, as hw-lab/run.py does) only the events part runs; on the host the allocate part runs, then
this file re-runs itself through ``hw-lab/run.py --script``; when the lab cannot run, one line
says why the events part was skipped, and the exit status is 0.
"""

from __future__ import annotations

import math
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # also when hw-lab/run.py --script runs this file in the lab

from tests.bench import common  # noqa: E402
from tests.bench.common import HWLAB, emit  # noqa: E402
from tests.bench.common import LAB_ENV as ENV  # noqa: E402

ALLOCATE_CALLS = 2000
WARMUP = 100
ROUNDS = 10
NO_PEER = "nothing: sriov-network-device-plugin is not built or run here"


def summary(samples_ms: list[float]) -> dict[str, float]:
    """Median and p99 (nearest rank: the maximum when there are fewer than 100 samples)."""
    ordered = sorted(samples_ms)
    p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
    return {"median_ms": round(statistics.median(ordered), 3), "p99_ms": round(p99, 3)}


# -- on the host: Allocate over gRPC -----------------------------------------------------------


def bench_allocate() -> None:
    from deviceplugin.config import parse
    from deviceplugin.manager import DevicePluginManager
    from nodeagent.discovery import Scanner
    from nodeagent.sysfs import Sysfs
    from tests.kubelet_standin import PB2, Kubelet, plugin
    from tests.sysfs_tree import SysfsTree

    with tempfile.TemporaryDirectory(prefix="nabdp") as tmp:
        tree = SysfsTree(Path(tmp) / "sys")
        tree.add_pf("0000:3b:00.0", "ice", netdev="ens1f0", numvfs=32, numa_node=0,
                    vfio=tuple(range(16)))
        plugin_dir = Path(tmp) / "dp"
        plugin_dir.mkdir()
        kubelet = Kubelet(plugin_dir)
        kubelet.start()
        config = parse({"resourceList": [
            {"resourceName": "bench_dpdk", "selectors": {"drivers": ["vfio-pci"]}}]})
        manager = DevicePluginManager(config, str(plugin_dir), sysfs_root=str(tree.root))
        manager.start(Scanner(Sysfs(tree.root), hostname="bench").scan())
        try:
            kubelet.registered(1, timeout=10)
            devices = [d.id for d in manager.servers["intel.com/bench_dpdk"].pool.devices]
            channel, stub = plugin(plugin_dir, "intel.com/bench_dpdk")
            times = []
            with channel:
                for n in range(WARMUP + ALLOCATE_CALLS):
                    request = PB2.AllocateRequest(container_requests=[
                        PB2.ContainerAllocateRequest(devices_ids=[devices[n % len(devices)]])])
                    start = time.perf_counter()
                    response = stub.Allocate(request, timeout=5)
                    elapsed = (time.perf_counter() - start) * 1000
                    if len(response.container_responses[0].devices) != 2:
                        raise RuntimeError("Allocate returned no VFIO device specs")
                    if n >= WARMUP:
                        times.append(elapsed)
        finally:
            manager.stop()
            kubelet.stop()
    emit(bench="deviceplugin_allocate_grpc_1vf_vfio", **summary(times), unit="ms per call",
         calls=ALLOCATE_CALLS, peer=None, compared_against=NO_PEER)


# -- on the host: the lab part through hw-lab/run.py -------------------------------------------


def run_in_lab() -> int:
    return common.run_in_lab(__file__, "deviceplugin_kernel_to_listandwatch")


# -- in the lab: kernel event -> ListAndWatch ----------------------------------------------------


class Stream:
    """ListAndWatch read on a thread: (arrival time, device IDs) per message."""

    def __init__(self, plugin_dir: Path, resource: str) -> None:
        from tests.kubelet_standin import PB2, plugin

        self.channel, stub = plugin(plugin_dir, resource)
        self.call = stub.ListAndWatch(PB2.Empty(), timeout=3600)
        self.messages: queue.Queue[tuple[float, list[str]]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        import grpc

        try:
            for message in self.call:
                self.messages.put((time.perf_counter(), [d.ID for d in message.devices]))
        except grpc.RpcError:
            pass

    def until(self, predicate: Callable[[list[str]], bool], timeout: float = 60.0) -> float:
        """Arrival time of the first message satisfying ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            arrived, ids = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            if predicate(ids):
                return arrived

    def drain(self) -> None:
        """Forget messages so far (after letting the node settle), so none is taken for the
        next event's."""
        time.sleep(0.5)
        while not self.messages.empty():
            self.messages.get_nowait()

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()


@contextmanager
def lab_plugin() -> Iterator[tuple[Any, Any, Stream, Stream]]:
    """The inventory's first PF, a LiveInventory, the manager and both pools' streams."""
    from hwlab.guard import Guard
    from hwlab.inventory import load
    from hwlab.sysfs import Sysfs as LabSysfs

    from deviceplugin.config import parse
    from deviceplugin.manager import DevicePluginManager
    from nodeagent.sysfs import Sysfs
    from nodeagent.watch import LiveInventory
    from tests.kubelet_standin import Kubelet

    sysfs = LabSysfs()
    guard = Guard(load(os.environ[ENV]), sysfs)
    pf = guard.pf(guard.inventory.pfs[0].pci)
    sysfs.set_numvfs(pf.pci, 0)
    config = parse({"resourceList": [
        {"resourceName": "bench_vfio", "selectors": {"drivers": ["vfio-pci"],
                                                     "rootDevices": [pf.pci]}},
        {"resourceName": "bench_all", "selectors": {"rootDevices": [pf.pci]}},
    ]})
    inventory = LiveInventory(Sysfs("/sys"))
    inventory.start()
    with tempfile.TemporaryDirectory(prefix="nabdp") as plugin_dir:
        kubelet = Kubelet(Path(plugin_dir))
        kubelet.start()
        manager = DevicePluginManager(config, plugin_dir)
        streams: list[Stream] = []
        try:
            manager.attach(inventory)
            kubelet.registered(2, timeout=30)
            streams = [Stream(Path(plugin_dir), "intel.com/bench_all"),
                       Stream(Path(plugin_dir), "intel.com/bench_vfio")]
            yield sysfs, pf, streams[0], streams[1]
        finally:
            for stream in streams:
                stream.close()
            manager.stop()
            kubelet.stop()
            inventory.stop()
            sysfs.set_numvfs(pf.pci, 0)


def bench_events() -> None:
    sys.path.insert(0, str(HWLAB))
    from hwlab import sriov

    create: list[float] = []
    bind: list[float] = []
    writes: dict[str, list[float]] = {"create": [], "bind": []}  # the kernel's share
    with lab_plugin() as (sysfs, pf, all_vfs, vfio):
        all_vfs.until(lambda ids: ids == [])
        for round_no in range(ROUNDS + 1):  # round 0 warms up
            # VFs created: sriov_numvfs 0 -> 2, until ListAndWatch lists both.
            all_vfs.drain()
            vfio.drain()
            start = time.perf_counter()
            sysfs.write(pf.pci, "sriov_numvfs", "2")
            written = time.perf_counter()
            arrived = all_vfs.until(lambda ids: len(ids) == 2)
            if round_no:
                create.append((arrived - start) * 1000)
                writes["create"].append((written - start) * 1000)
            vfs = sysfs.virtfns(pf.pci)
            for vf in vfs:
                sriov.wait_driver(sysfs, vf, pf.spec.vf_driver)
            # One VF rebound to vfio-pci, until the vfio pool lists it.
            start = time.perf_counter()
            sysfs.bind(vfs[0], "vfio-pci")
            written = time.perf_counter()
            arrived = vfio.until(lambda ids, vf=vfs[0]: vf in ids)
            if round_no:
                bind.append((arrived - start) * 1000)
                writes["bind"].append((written - start) * 1000)
            sysfs.bind(vfs[0], None)  # untimed: back to the VF driver, then no VFs
            vfio.until(lambda ids: ids == [])
            sysfs.set_numvfs(pf.pci, 0)
            all_vfs.until(lambda ids: ids == [])
    label = f"{pf.spec.driver}"
    emit(bench=f"deviceplugin_kernel_to_listandwatch_{label}_numvfs_0_to_2", **summary(create),
         unit="ms from the sriov_numvfs write to the ListAndWatch message", rounds=ROUNDS,
         kernel_write_median_ms=round(statistics.median(writes["create"]), 3),
         peer=None, compared_against=NO_PEER)
    emit(bench=f"deviceplugin_kernel_to_listandwatch_{label}_bind_vfio_pci", **summary(bind),
         unit="ms from the driver_override/unbind/probe writes to the ListAndWatch message",
         rounds=ROUNDS, kernel_write_median_ms=round(statistics.median(writes["bind"]), 3),
         peer=None, compared_against=NO_PEER)


def main() -> int:
    if os.environ.get(ENV):
        bench_events()
        return 0
    bench_allocate()
    return run_in_lab()


if __name__ == "__main__":
    sys.exit(main())
