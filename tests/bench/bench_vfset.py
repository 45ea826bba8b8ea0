"""VF configuration benchmark: every VF of a PF gets a MAC, a VLAN, spoofchk and trust, through

  ours  the C batch (nodeagent.vfbatch.apply: one call, one socket, one message per VF),
  peers pyroute2, one ``IPRoute().link("set", index=PF, vf={...})`` call per setting, and
        one ``ip link set DEV vf N mac .. vlan .. spoofchk on trust on`` process per VF,

alternating round by round in the same run, each round with new values, each result read
back (untimed) so no method gets away with doing less. Prints one JSON object per line:
medians over the rounds and ratios ours / peer (0.2 = five times faster).

It needs SR-IOV PFs, so it runs in the lab: inside it (NODEAGENT_HWLAB_INVENTORY set, as
hw-lab/run.py does) it measures an igb PF with all its VFs and netdevsim with 64; anywhere
else it re-runs itself through ``hw-lab/run.py --script`` and passes the guest's JSON lines
through. When the lab cannot run it prints one line saying why it was skipped and exits 0.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # also when hw-lab/run.py --script runs this file in the lab

from tests.bench import common  # noqa: E402
from tests.bench.common import HWLAB, emit  # noqa: E402
from tests.bench.common import LAB_ENV as ENV  # noqa: E402

ROUNDS = 5
NETDEVSIM_VFS = 64
UNIT = "ms (median per round, all VFs)"

Batch = list[tuple[int, str, int, bool, bool]]  # (vf, mac, vlan, spoofchk, trust)


# -- on the host: through the lab ------------------------------------------------------------


def run_in_lab() -> int:
    return common.run_in_lab(__file__, "vfset")


# -- in the lab --------------------------------------------------------------------------------


def batch_for(count: int, round_no: int) -> Batch:
    """New values every round: MAC, VLAN and both flags change for every VF."""
    flip = round_no % 2 == 0
    return [(vf, f"02:00:5e:{round_no % 256:02x}:{vf // 256:02x}:{vf % 256:02x}",
             100 + round_no * 10 + vf % 10, flip, not flip) for vf in range(count)]


def via_batch(index: int, batch: Batch) -> None:
    from nodeagent.vfbatch import VfUpdate, apply

    results = apply(index, [VfUpdate(vf, mac=mac, vlan=vlan, spoofchk=spoof, trust=trust)
                            for vf, mac, vlan, spoof, trust in batch])
    failed = [str(r) for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"the batch failed: {failed}")


def via_pyroute2(ipr, index: int, batch: Batch) -> None:
    for vf, mac, vlan, spoof, trust in batch:
        ipr.link("set", index=index, vf={"vf": vf, "mac": mac})
        ipr.link("set", index=index, vf={"vf": vf, "vlan": {"vlan": vlan, "qos": 0}})
        ipr.link("set", index=index, vf={"vf": vf, "spoofchk": int(spoof)})
        ipr.link("set", index=index, vf={"vf": vf, "trust": int(trust)})


def via_ip_link(dev: str, batch: Batch) -> None:
    on_off = {True: "on", False: "off"}
    for vf, mac, vlan, spoof, trust in batch:
        subprocess.run(["ip", "link", "set", "dev", dev, "vf", str(vf), "mac", mac,
                        "vlan", str(vlan), "spoofchk", on_off[spoof], "trust", on_off[trust]],
                       check=True)


def check(index: int, batch: Batch, method: str) -> None:
    from nodeagent.netlink import Netlink

    with Netlink() as netlink:
        got = netlink.vf_configs(index)
    wrong = [vf for vf, mac, vlan, spoof, trust in batch
             if (got[vf].mac, got[vf].vlan, got[vf].spoofchk, got[vf].trust)
             != (mac, vlan, spoof, trust)]
    if wrong:
        raise RuntimeError(f"{method} left VFs {wrong} not as asked")


def measure(label: str, dev: str, index: int, count: int) -> None:
    from pyroute2 import IPRoute

    times: dict[str, list[float]] = {"batch": [], "pyroute2": [], "ip_link": []}
    with IPRoute() as ipr:
        methods: dict[str, Callable[[Batch], None]] = {
            "batch": lambda b: via_batch(index, b),
            "pyroute2": lambda b: via_pyroute2(ipr, index, b),
            "ip_link": lambda b: via_ip_link(dev, b),
        }
        for round_no in range(ROUNDS + 1):  # round 0 warms up (imports, caches)
            for offset, (name, method) in enumerate(methods.items()):
                batch = batch_for(count, round_no * 3 + offset)
                start = time.perf_counter()
                method(batch)
                elapsed = (time.perf_counter() - start) * 1000
                check(index, batch, name)
                if round_no:
                    times[name].append(elapsed)
    ours = statistics.median(times["batch"])
    for peer in ("pyroute2", "ip_link"):
        theirs = statistics.median(times[peer])
        emit(bench=f"vfset_{label}_{count}vfs_mac_vlan_spoofchk_trust_vs_{peer}",
             ours=round(ours, 2), peer=round(theirs, 2), unit=UNIT,
             ratio=round(ours / theirs, 4), rounds=ROUNDS)


@contextmanager
def igb_pf() -> Iterator[tuple[str, int, int]]:
    """The inventory's first PF with every VF it has: (netdev, ifindex, VFs)."""
    from hwlab import sriov
    from hwlab.guard import Guard
    from hwlab.inventory import load
    from hwlab.sysfs import Sysfs
    from pyroute2 import IPRoute

    sysfs = Sysfs()
    guard = Guard(load(os.environ[ENV]), sysfs)
    pf = guard.pf(guard.inventory.pfs[0].pci)
    total = int(sysfs.read(pf.pci, "sriov_totalvfs"))
    sriov.create_vfs(sysfs, pf.pci, total, pf.spec.vf_driver)
    try:
        with IPRoute() as ipr:
            yield pf.spec.driver, ipr.link_lookup(ifname=pf.netdev)[0], total
    finally:
        sysfs.set_numvfs(pf.pci, 0)


@contextmanager
def netdevsim_pf(count: int) -> Iterator[tuple[str, int, int]]:
    """The inventory's netdevsim device with `count` VFs (fewer if max_vfs stays at 4)."""
    from hwlab import sriov
    from hwlab.guard import Guard
    from hwlab.inventory import load
    from hwlab.sysfs import Sysfs
    from pyroute2 import IPRoute

    sysfs = Sysfs()
    guard = Guard(load(os.environ[ENV]), sysfs)
    spec = guard.inventory.netdevsim[0]
    created = not (sysfs.root / "bus" / "netdevsim" / "devices" / f"netdevsim{spec.id}").exists()
    sriov.netdevsim_create(sysfs.root, spec.id, spec.ports)
    try:
        dev = guard.netdevsim(spec.id)
        debugfs = Path("/sys/kernel/debug")
        if not (debugfs / "netdevsim").exists():  # VF count above 4: debugfs max_vfs
            subprocess.run(["mount", "-t", "debugfs", "debugfs", str(debugfs)], check=False)
        max_vfs = debugfs / "netdevsim" / f"netdevsim{spec.id}" / "max_vfs"
        numvfs = dev.path / "sriov_numvfs"
        numvfs.write_text("0")
        if max_vfs.exists():
            max_vfs.write_text(str(count))
        else:
            count = 4
        numvfs.write_text(str(count))
        with IPRoute() as ipr:
            yield "netdevsim", ipr.link_lookup(ifname=dev.netdev)[0], count
        numvfs.write_text("0")
    finally:
        if created:
            sriov.netdevsim_delete(sysfs.root, spec.id)


def run_here() -> int:
    sys.path.insert(0, str(HWLAB))
    for target in (igb_pf(), netdevsim_pf(NETDEVSIM_VFS)):
        with target as (label, index, count):
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                dev = ipr.get_links(index)[0].get_attr("IFLA_IFNAME")
            measure(label, dev, index, count)
    return 0


def main() -> int:
    return run_here() if os.environ.get(ENV) else run_in_lab()


if __name__ == "__main__":
    sys.exit(main())
