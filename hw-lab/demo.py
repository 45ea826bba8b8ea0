#!/usr/bin/env python3
"""The `make demo` walk-through, run in the lab (hw-lab/run.py --demo) or on inventory PFs.

Creates VFs, shows `nodeagent inventory`, attaches a VF netdev and a macvlan with fixed IPs to a
pod namespace, pings a peer, detaches, and shows the VF back in the host namespace by its name.
Exits non-zero if a step fails (including a missing or failing `nodeagent inventory`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hwlab import netns, sriov
from hwlab.guard import PF, Guard
from hwlab.inventory import load
from hwlab.sysfs import Sysfs
from hwlab.vfconfig import set_vf
from pyroute2 import IPRoute

VF_MAC = "02:00:5e:00:53:21"
POD_VF, POD_MACVLAN, PEER = "203.0.113.10/24", "198.51.100.10/24", "203.0.113.1/24"


def step(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def show(argv: list[str]) -> int:
    """Run a command, echoing it and its output; returns its exit status."""
    print(f"$ {' '.join(argv)}", flush=True)
    return subprocess.run(argv, check=False).returncode


def nodeagent_inventory() -> bool:
    cli = Path(sys.executable).parent / "nodeagent"
    if not cli.exists():
        print(f"!! {cli} is not installed (pip install -e . in the project venv)")
        return False
    return show([str(cli), "inventory"]) == 0


def attach(pod: str, peer: str, vf_netdev: str, other: PF) -> None:
    """VF netdev -> pod as net1, a macvlan on the other PF -> pod as net2; the peer's macvlan
    sits on the other PF too, so the pod's VF reaches it across the wire."""
    with IPRoute() as ipr:
        ipr.link("set", index=netns.index(ipr, vf_netdev), net_ns_fd=pod)
        for ns, name in ((pod, "nahwdemomv2"), (peer, "nahwdemomvp")):
            ipr.link("add", ifname=name, kind="macvlan", link=netns.index(ipr, other.netdev),
                     macvlan_mode="bridge", net_ns_fd=ns)
    netns.configure(pod, vf_netdev, POD_VF, rename="net1")
    netns.configure(pod, "nahwdemomv2", POD_MACVLAN, rename="net2")
    netns.configure(peer, "nahwdemomvp", PEER)


def detach(pod: str, vf_netdev: str) -> None:
    """Give the VF back to the host namespace under its own name; drop the pod's macvlan."""
    with IPRoute(netns=pod) as ipr:
        ipr.link("del", index=netns.index(ipr, "net2"))
        idx = netns.index(ipr, "net1")
        ipr.flush_addr(index=idx)
        ipr.link("set", index=idx, state="down")
        ipr.link("set", index=idx, ifname=vf_netdev)
        ipr.link("set", index=idx, net_ns_pid=1)


def main() -> int:
    inventory = load(os.environ.get("NODEAGENT_HWLAB_INVENTORY", "hw-lab/inventories/virtual.yaml"))
    guard, sysfs = Guard(inventory), Sysfs()
    lower = guard.pf(inventory.pfs[0].pci)
    other = guard.pf(inventory.pfs[0].peer) if inventory.pfs[0].peer else lower
    ok = True
    try:
        step(f"1. two VFs on {lower.pci} ({lower.netdev}, {lower.spec.driver})")
        netns.up_with_carrier(lower.netdev)
        netns.up_with_carrier(other.netdev)
        vfs = sriov.create_vfs(sysfs, lower.pci, 2, lower.spec.vf_driver)
        with IPRoute() as ipr:
            set_vf(ipr, netns.index(ipr, lower.netdev), 0, mac=VF_MAC)
        vf_netdev = sriov.rebind(sysfs, vfs[0].pci, lower.spec.vf_driver)
        show(["ip", "link", "show", lower.netdev])

        step("2. nodeagent inventory")
        ok = nodeagent_inventory() and ok

        step(f"3. attach VF {vf_netdev} (net1) and a macvlan on {other.netdev} (net2) to a pod")
        with netns.namespace("pod") as pod, netns.namespace("peer") as peer:
            attach(pod, peer, vf_netdev, other)
            show(["ip", "-n", pod, "-br", "address"])
            netns.wait_carrier(pod, "net1")
            print(f"$ ip netns exec {pod} busybox ping -c 1 {PEER.split('/')[0]}")
            result = netns.ping(pod, PEER.split("/")[0])
            print(result.stdout, end="", flush=True)
            ok = result.returncode == 0 and ok

            step("4. detach")
            detach(pod, vf_netdev)
            show(["ip", "-n", pod, "-br", "link"])

        step(f"5. back in the host namespace: {vf_netdev}")
        back = vf_netdev in sysfs.netdevs(vfs[0].pci)
        show(["ip", "-br", "link"])
        where = f"{vf_netdev} on {vfs[0].pci}"
        print(f"OK: {where} is back" if back else f"!! {where} did not come back")
        ok = back and ok
    finally:
        sysfs.set_numvfs(lower.pci, 0)
    print(f"\ndemo {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
