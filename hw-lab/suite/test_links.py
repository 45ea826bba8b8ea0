"""Secondary-network links moved into a pod namespace, with traffic to a peer namespace.

The pod side sits on one PF (or one of its VFs), the peer side on the PF cabled to it (inventory
`peer`; in the virtual lab the two igb ports share a QEMU hub), so frames cross real drivers.
"""

from __future__ import annotations

from typing import Any

import pytest
from hwlab import netns, sriov
from hwlab.guard import PF
from hwlab.sysfs import Sysfs
from hwlab.vfconfig import set_vf
from pyroute2 import IPRoute

POD, PEER = "198.51.100.1/24", "198.51.100.2/24"
VF_MAC = "02:00:5e:00:53:11"


def _add(lower: PF, ns: str, kind: str, **extra: Any) -> str:
    """Create a `kind` link on `lower` directly inside `ns`; returns its name there."""
    name = netns.unique(kind[:3])
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind=kind, link=netns.index(ipr, lower.netdev),
                 net_ns_fd=ns, **extra)
    return name


def _assert_pod_reaches_peer(pod: str, pod_if: str, peer: str, peer_if: str, kind: str) -> None:
    netns.configure(pod, pod_if, POD, rename="net1")
    netns.configure(peer, peer_if, PEER)
    with IPRoute(netns=pod) as ipr:
        link = ipr.link("get", index=netns.index(ipr, "net1"))[0]
        linkinfo = link.get_attr("IFLA_LINKINFO")
        assert linkinfo is None or linkinfo.get_attr("IFLA_INFO_KIND") == kind
        addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=link["index"])]
        assert POD.split("/")[0] in addrs
    netns.wait_carrier(pod, "net1")
    netns.wait_carrier(peer, peer_if)
    result = netns.ping(pod, PEER.split("/")[0])
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{kind}: ping pod -> peer failed:\n{output}"


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("macvlan", {"macvlan_mode": "bridge"}),
        ("ipvlan", {"ipvlan_mode": 0}),  # 0 = l2
        ("vlan", {"vlan_id": 100}),
    ],
    ids=["macvlan", "ipvlan-l2", "vlan"],
)
def test_link_on_pf_in_pod_namespace(pf_pair: tuple[PF, PF], namespaces, kind: str, extra) -> None:
    pod, peer = namespaces("pod"), namespaces("peer")
    pod_if = _add(pf_pair[0], pod, kind, **extra)
    peer_if = _add(pf_pair[1], peer, kind, **extra)
    _assert_pod_reaches_peer(pod, pod_if, peer, peer_if, kind)


def test_vf_netdev_in_pod_namespace(
    pf_pair: tuple[PF, PF], namespaces, make_vfs, sysfs: Sysfs
) -> None:
    """The SR-IOV CNI case: admin MAC, rebind, the VF netdev itself moves into the pod.

    igb steers received frames to a VF only by a MAC the PF assigned: igbvf's random MAC
    is never programmed, so (as the CNI does) the PF sets one and the VF driver is rebound.
    """
    lower, other = pf_pair
    vf = make_vfs(lower, 1)[0]
    with IPRoute() as ipr:
        set_vf(ipr, netns.index(ipr, lower.netdev), vf.index, mac=VF_MAC)
    netdev = sriov.rebind(sysfs, vf.pci, lower.spec.vf_driver)
    pod, peer = namespaces("pod"), namespaces("peer")
    with IPRoute() as ipr:
        ipr.link("set", index=netns.index(ipr, netdev), net_ns_fd=pod)
        assert not ipr.link_lookup(ifname=netdev)
    peer_if = _add(other, peer, "macvlan", macvlan_mode="bridge")
    _assert_pod_reaches_peer(pod, netdev, peer, peer_if, "vf")
