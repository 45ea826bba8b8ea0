"""The MultiNetworkPolicy engine on real drivers, with real SCTP sockets.

The pod's policed interface is a VLAN or an ipvlan (L2) on one PF, or a kernel-mode VF of it
moved into the pod; the peer sits on the cabled PF. The pod gets ``nft.apply(compile_pod())``
and the flows are real TCP and SCTP sockets (the host kernel has no SCTP: tests/host uses raw
packets, the lab the real protocol, module sctp), IPv4 and IPv6.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hwlab import netns, sriov
from hwlab.guard import PF
from hwlab.sysfs import Sysfs
from hwlab.vfconfig import set_vf
from pyroute2 import IPRoute

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from nodeagent.policy import nft  # noqa: E402
from nodeagent.policy.compile import compile_pod  # noqa: E402
from nodeagent.policy.model import (  # noqa: E402
    POLICY_FOR,
    ClusterView,
    Peer,
    Target,
    parse_policy,
)
from tests.traffic import stream_connects  # noqa: E402

POD4, PEER4 = "198.51.100.1", "198.51.100.2"
POD6, PEER6 = "2001:db8:77::1", "2001:db8:77::2"
VF_MAC = "02:00:5e:00:53:21"
NET = "lab/net1"
WAIT = 1.5  # seconds a blocked connection attempt is given
SCTP = socket.IPPROTO_SCTP if hasattr(socket, "IPPROTO_SCTP") else 132


@pytest.fixture(scope="module", autouse=True)
def sctp_module() -> None:
    if subprocess.run(["modprobe", "sctp"], capture_output=True, check=False).returncode:
        pytest.skip("the sctp module cannot be loaded")


def _add(lower: PF, ns: str, kind: str, **extra: Any) -> str:
    name = netns.unique(kind[:3])
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind=kind, link=netns.index(ipr, lower.netdev),
                 net_ns_fd=ns, **extra)
    return name


def _address(ns: str, ifname: str, v4: str, v6: str, rename: str | None = None) -> str:
    name = netns.configure(ns, ifname, f"{v4}/24", rename=rename)
    with IPRoute(netns=ns) as ipr:
        ipr.addr("add", index=netns.index(ipr, name), address=v6, prefixlen=64, flags=0x02)
    netns.wait_carrier(ns, name)
    return name


def _connects(client: str, server: str, ip: str, port: int, proto: int) -> bool:
    return stream_connects(client, server, ip, port, proto=proto, wait=WAIT)


def _police(pod: str, ifname: str) -> None:
    """Ingress: TCP 80 and SCTP 3868 from the peer pod only; egress: SCTP 3868-3870 only."""
    policy = parse_policy({
        "metadata": {"namespace": "lab", "name": "p", "annotations": {POLICY_FOR: "net1"}},
        "spec": {"podSelector": {"matchLabels": {"app": "diameter"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "peer"}}}],
                              "ports": [{"port": 80},
                                        {"protocol": "SCTP", "port": 3868}]}],
                 "egress": [{"ports": [{"protocol": "SCTP", "port": 3868, "endPort": 3870}]}]}})
    target = Target("lab", "pod", {"app": "diameter"}, NET, ifname,
                    tuple(ipaddress.ip_address(a) for a in (POD4, POD6)))
    peer = Peer("lab", "peer", {"app": "peer"},
                tuple(ipaddress.ip_address(a) for a in (PEER4, PEER6)))
    rules = compile_pod([target], [policy], ClusterView({"lab": {}}, {NET: [peer]}))
    nft.apply(pod, rules.script)


def _check(pod: str, peer: str) -> None:
    tcp, sctp = socket.IPPROTO_TCP, SCTP
    for mine, theirs in ((POD4, PEER4), (POD6, PEER6)):
        assert _connects(peer, pod, mine, 3868, sctp), f"SCTP 3868 to {mine}"
        assert not _connects(peer, pod, mine, 3869, sctp), f"SCTP 3869 to {mine}"
        assert _connects(peer, pod, mine, 80, tcp), f"TCP 80 to {mine}"
        assert not _connects(peer, pod, mine, 81, tcp), f"TCP 81 to {mine}"
        assert _connects(pod, peer, theirs, 3870, sctp), f"SCTP 3870 from {mine}"
        assert not _connects(pod, peer, theirs, 3871, sctp), f"SCTP 3871 from {mine}"
        assert not _connects(pod, peer, theirs, 3868, tcp), f"TCP 3868 from {mine}"


def _run(pod: str, peer: str, pod_if: str) -> None:
    try:
        _police(pod, pod_if)
        _check(pod, peer)
        nft.clear(pod)
        assert _connects(peer, pod, POD4, 3869, SCTP)  # nothing left behind
    finally:
        nft.release(pod)


@pytest.mark.parametrize(("kind", "extra"), [
    ("ipvlan", {"ipvlan_mode": 0}),
    ("vlan", {"vlan_id": 177}),
], ids=["ipvlan-l2", "vlan"])
def test_policy_on_links(pf_pair: tuple[PF, PF], namespaces: Callable[[str], str], kind: str,
                         extra: dict[str, Any]) -> None:
    pod, peer = namespaces("pod"), namespaces("peer")
    pod_if = _address(pod, _add(pf_pair[0], pod, kind, **extra), POD4, POD6, rename="net1")
    _address(peer, _add(pf_pair[1], peer, kind, **extra), PEER4, PEER6)
    _run(pod, peer, pod_if)


def test_policy_on_a_kernel_mode_vf(pf_pair: tuple[PF, PF], namespaces: Callable[[str], str],
                                    make_vfs: Any, sysfs: Sysfs) -> None:
    lower, other = pf_pair
    vf = make_vfs(lower, 1)[0]
    with IPRoute() as ipr:
        set_vf(ipr, netns.index(ipr, lower.netdev), vf.index, mac=VF_MAC)
    netdev = sriov.rebind(sysfs, vf.pci, lower.spec.vf_driver)
    pod, peer = namespaces("pod"), namespaces("peer")
    with IPRoute() as ipr:
        ipr.link("set", index=netns.index(ipr, netdev), net_ns_fd=pod)
    pod_if = _address(pod, netdev, POD4, POD6, rename="net1")
    _address(peer, _add(other, peer, "macvlan", macvlan_mode="bridge"), PEER4, PEER6)
    _run(pod, peer, pod_if)
