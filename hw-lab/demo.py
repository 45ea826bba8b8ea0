#!/usr/bin/env python3
"""The `make demo` walk-through, run in the lab (hw-lab/run.py --demo) or on inventory PFs.

Starts the agent (`nodeagent daemon`) with a node policy, which creates the VFs, binds one to
vfio-pci and gives the others their MACs, and with device plugin pools, which it registers with
a kubelet stand-in (tests/kubelet_standin.py); shows `nodeagent status` and `nodeagent
inventory`; asks the device plugin for a VF for a pod as the kubelet does (ListAndWatch,
GetPreferredAllocation, Allocate); installs the CNI shim and attaches exactly the VF it
allocated (its PCI address as `deviceID`, the way Multus passes it) and a macvlan with fixed IPs
to a pod namespace as a container runtime would (CNI ADD through the installed plugins); pings
a peer across the wire, detaches (CNI DEL), shows that everything is back and what the metrics
counted. Exits non-zero if a step fails.
"""

from __future__ import annotations

import os
import queue
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests.kubelet_standin

import grpc
from hwlab import chain, netns, sriov
from hwlab.chain import BIN, show
from hwlab.guard import PF, Guard
from hwlab.inventory import load
from hwlab.sysfs import Sysfs

VF_MAC = "02:00:5e:00:53:21"
POD_VF, POD_MACVLAN, PEER = "203.0.113.10/24", "198.51.100.10/24", "203.0.113.1/24"
METRICS = "127.0.0.1:9808"
NETDEV_POOL, VFIO_POOL = "demo_netdev", "demo_vfio"


def step(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def nodeagent_inventory() -> bool:
    return show([str(BIN / "nodeagent"), "inventory"]) == 0


def metrics(pattern: str) -> None:
    """The metrics lines a user would grep for."""
    print(f"$ curl -s http://{METRICS}/metrics | grep {pattern}", flush=True)
    with urllib.request.urlopen(f"http://{METRICS}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(pattern):
                print(line)


def networks(vf_pci: str, other: PF) -> list[tuple[str, dict]]:
    """The two attachments: the NetworkAttachmentDefinitions' configs as Multus hands them to
    the plugins (the sriov one with the allocated VF injected)."""
    return [
        ("net1", chain.multus_delegate(
            {"cniVersion": "1.1.0", "name": "sriov-net", "type": "sriov", "mac": VF_MAC,
             "spoofchk": "on", "trust": "off",
             "ipam": {"type": "static", "addresses": [{"address": POD_VF}]}}, vf_pci)),
        ("net2", {"cniVersion": "1.1.0", "name": "macvlan-net", "type": "macvlan",
                  "master": other.netdev, "mode": "bridge",
                  "ipam": {"type": "static", "addresses": [{"address": POD_MACVLAN}]}}),
    ]


def main() -> int:
    inventory = load(os.environ.get("NODEAGENT_HWLAB_INVENTORY", "hw-lab/inventories/virtual.yaml"))
    guard, sysfs = Guard(inventory), Sysfs()
    lower = guard.pf(inventory.pfs[0].pci)
    other = guard.pf(inventory.pfs[0].peer) if inventory.pfs[0].peer else lower
    ok = True
    try:
        with chain.node(lower, sysfs, NETDEV_POOL, VFIO_POOL, METRICS, prefix="nahwdemo") as node:
            step(f"1. the agent provisions {lower.pci} ({lower.netdev}, {lower.spec.driver})"
                 " from a policy and serves device plugin pools")
            netns.up_with_carrier(other.netdev)
            node.start_agent("demo")
            vfs = [sriov.VF(i, pci, (sysfs.netdevs(pci) or [None])[0])
                   for i, pci in enumerate(sysfs.virtfns(lower.pci))]
            show(["ip", "link", "show", lower.netdev])
            netns.up_with_carrier(lower.netdev)

            step("2. nodeagent inventory")
            ok = nodeagent_inventory() and ok

            resource = f"{chain.PREFIX}/{NETDEV_POOL}"
            step(f"3. device plugin: the kubelet (a stand-in) allocates one {resource} for a pod")
            vf_pci = node.kubelet_allocates(resource)
            (vf,) = [v for v in vfs if v.pci == vf_pci]
            vf_netdev = vf.netdev
            print(f"allocated: VF {vf.index} ({vf_pci}, {vf_netdev})")

            step(f"4. CNI ADD: the allocated VF {vf_pci} as net1 (deviceID, as Multus passes"
                 f" it), a macvlan on {other.netdev} as net2")
            with netns.namespace("pod") as pod, netns.namespace("peer") as peer:
                attached = networks(vf_pci, other)
                for ifname, conf in attached:
                    node.cni("ADD", conf, pod, ifname)
                show(["ip", "-n", pod, "-br", "address"])
                chain.peer_link(peer, other, "nahwdemomvp", PEER)
                netns.wait_carrier(pod, "net1")
                print(f"$ ip netns exec {pod} busybox ping -c 1 {PEER.split('/')[0]}")
                result = netns.ping(pod, PEER.split("/")[0])
                print(result.stdout, end="", flush=True)
                ok = result.returncode == 0 and ok
                ok = nodeagent_inventory() and ok

                step("5. CNI DEL")
                for ifname, conf in reversed(attached):
                    node.cni("DEL", conf, pod, ifname)
                show(["ip", "-n", pod, "-br", "link"])

            step(f"6. back in the host namespace: {vf_netdev}, its PF-side settings restored")
            back = vf_netdev in sysfs.netdevs(vf_pci)
            ok = nodeagent_inventory() and ok
            where = f"{vf_netdev} on {vf_pci}"
            print(f"OK: {where} is back" if back else f"!! {where} did not come back")
            ok = back and ok

            step("7. what the agent saw")
            time.sleep(0.5)  # the status file follows changes within WRITE_DELAY
            ok = show([str(BIN / "nodeagent"), "status", "--status-file",
                       str(node.status_file)]) == 0 and ok
            metrics("nodeagent_cni_requests_total")
            metrics("nodeagent_pf_provisioning_state{")
    except (RuntimeError, OSError, TimeoutError, KeyError, ValueError, grpc.RpcError,
            queue.Empty) as exc:
        print(f"!! {type(exc).__name__}: {exc}")
        ok = False
    print(f"\ndemo {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
