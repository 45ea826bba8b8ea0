"""The chain a pod's VF goes through on a node, end to end on real VFs: the running agent's
device plugin pool registered with a kubelet stand-in, GetPreferredAllocation and Allocate of one
VF, its PCI address injected into the sriov network's config as Multus does, CNI ADD through the
installed shim, traffic to a peer on the cabled PF, DEL, the VF home under its own name.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hwlab import netns
from hwlab.guard import PF
from hwlab.sysfs import Sysfs
from pyroute2 import IPRoute

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests.kubelet_standin

from hwlab import chain

POD, PEER = "203.0.113.20/24", "203.0.113.2"
NETDEV_POOL, VFIO_POOL = "chain_netdev", "chain_vfio"
METRICS = "127.0.0.1:9818"


def test_allocated_vf_attached_through_the_shim_carries_traffic_and_comes_home(
        pf_pair: tuple[PF, PF], namespaces, sysfs: Sysfs) -> None:
    lower, other = pf_pair
    with chain.node(lower, sysfs, NETDEV_POOL, VFIO_POOL, METRICS, prefix="nahwchain") as node:
        node.start_agent("chain")
        netns.up_with_carrier(lower.netdev)  # VFs are healthy while their PF has carrier
        names = {pci: sysfs.netdevs(pci) for pci in sysfs.virtfns(lower.pci)}

        vf_pci = node.kubelet_allocates(f"{chain.PREFIX}/{NETDEV_POOL}")

        assert len(names.get(vf_pci, [])) == 1, f"{vf_pci}: not a kernel-driver VF of {lower.pci}"
        (vf_netdev,) = names[vf_pci]
        pod, peer = namespaces("pod"), namespaces("peer")
        nad = {"cniVersion": "1.1.0", "name": "lab-chain", "type": "sriov",
               "ipam": {"type": "static", "addresses": [{"address": POD}]}}
        conf = chain.multus_delegate(nad, vf_pci)

        result = node.cni("ADD", conf, pod, "net1", container="chainpod")

        assert result is not None
        assert result["interfaces"][0]["pciID"] == vf_pci
        assert result["ips"][0]["address"] == POD
        with IPRoute() as ipr:
            assert not ipr.link_lookup(ifname=vf_netdev), "the allocated VF left the host"
        with IPRoute(netns=pod) as ipr:
            assert ipr.link_lookup(ifname="net1"), "the allocated VF is the pod's net1"
        chain.peer_link(peer, other, netns.unique("pv"), f"{PEER}/24")
        netns.wait_carrier(pod, "net1")
        ping = netns.ping(pod, PEER)
        assert ping.returncode == 0, f"VF in pod -> peer failed:\n{ping.stdout}{ping.stderr}"

        node.cni("DEL", conf, pod, "net1", container="chainpod")

        with IPRoute(netns=pod) as ipr:
            assert not ipr.link_lookup(ifname="net1")
        assert sysfs.netdevs(vf_pci) == [vf_netdev], "the VF is back under its original name"
