"""nodeagent's CNI plugin on real drivers: macvlan, ipvlan and VLAN attachments on an igb PF,
made through the installed shim and a running agent, with traffic to a peer on the cabled PF.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hwlab import netns, sriov
from hwlab.guard import PF
from pyroute2 import IPRoute

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cni.context import Context  # noqa: E402
from cni.install import install  # noqa: E402
from cni.server import CniServer  # noqa: E402
from cni.shim import shim_path  # noqa: E402
from nodeagent import vfbatch  # noqa: E402
from nodeagent.ipam.allocator import Ipam  # noqa: E402
from nodeagent.netlink import Netlink  # noqa: E402
from nodeagent.vfstate import VfState  # noqa: E402

POD, PEER = "198.51.100.1/24", "198.51.100.2"
KINDS = [("macvlan", {"mode": "bridge"}, {"macvlan_mode": "bridge"}),
         ("ipvlan", {"mode": "l2"}, {"ipvlan_mode": 0}),
         ("vlan", {"vlanId": 100}, {"vlan_id": 100})]


@pytest.fixture(scope="module")
def agent() -> Iterator[dict[str, Path]]:
    with tempfile.TemporaryDirectory(prefix="nahwcni") as root:
        server = CniServer(f"{root}/run/agent.sock", context=Context(
            vfs=VfState(f"{root}/state"), ipam=Ipam(f"{root}/ipam")))
        server.start()
        install(Path(root) / "bin", shim_path())
        try:
            yield {"socket": Path(server.path), "bin": Path(root) / "bin",
                   "state": Path(root) / "state"}
        finally:
            server.stop()


def cni(agent: dict[str, Path], command: str, conf: dict[str, Any], ns: str,
        container: str = "labpod", expect: int = 0) -> Any:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container,
           "CNI_NETNS": f"/run/netns/{ns}",
           "CNI_IFNAME": "net1", "CNI_PATH": str(agent["bin"]),
           "NODEAGENT_SOCKET": str(agent["socket"])}
    proc = subprocess.run([str(agent["bin"] / conf["type"])], input=json.dumps(conf).encode(),
                          env=env, capture_output=True, timeout=120, check=False)
    assert proc.returncode == expect, proc.stdout.decode() + proc.stderr.decode()
    return json.loads(proc.stdout) if proc.stdout.strip() else None


@pytest.mark.parametrize(("kind", "fields", "peer_fields"), KINDS, ids=[k[0] for k in KINDS])
def test_attachment_carries_traffic_and_is_undone(agent, pf_pair: tuple[PF, PF], namespaces,
                                                  kind, fields, peer_fields) -> None:
    lower, other = pf_pair
    pod, peer = namespaces("pod"), namespaces("peer")
    conf = {"cniVersion": "1.0.0", "name": f"lab-{kind}", "type": kind, "master": lower.netdev,
            **fields, "ipam": {"type": "static", "addresses": [{"address": POD}]}}

    result = cni(agent, "ADD", conf, pod)

    assert result["ips"][0]["address"] == POD
    with IPRoute(netns=pod) as ipr:
        (link,) = ipr.get_links(ifname="net1")
        assert link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == kind
    peer_if = netns.unique(kind[:3])
    with IPRoute() as ipr:
        ipr.link("add", ifname=peer_if, kind=kind, link=netns.index(ipr, other.netdev),
                 net_ns_fd=peer, **peer_fields)
    netns.configure(peer, peer_if, f"{PEER}/24")
    netns.wait_carrier(pod, "net1")
    netns.wait_carrier(peer, peer_if)
    ping = netns.ping(pod, PEER)
    assert ping.returncode == 0, f"{kind}: pod -> peer failed:\n{ping.stdout}{ping.stderr}"

    cni(agent, "CHECK", {**conf, "prevResult": result}, pod)
    cni(agent, "DEL", conf, pod)
    with IPRoute(netns=pod) as ipr:
        assert not ipr.link_lookup(ifname="net1")
    cni(agent, "DEL", conf, pod)  # a second DEL succeeds


def vf_config(pf: PF, index: int):
    with Netlink() as netlink:
        with IPRoute() as ipr:
            pf_index = netns.index(ipr, pf.netdev)
        return netlink.vf_configs(pf_index)[index]


def sriov_conf(vf_pci: str, **extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.1.0", "name": "lab-sriov", "type": "sriov", "deviceID": vf_pci,
            **extra, "ipam": {"type": "static", "addresses": [{"address": POD}]}}


def test_sriov_vf_netdev_into_pod_and_back(agent, pf_pair: tuple[PF, PF], namespaces,
                                           make_vfs) -> None:
    lower, other = pf_pair
    vf = make_vfs(lower, 1)[0]
    before = vf_config(lower, vf.index)
    pod, peer = namespaces("pod"), namespaces("peer")
    conf = sriov_conf(vf.pci, mac="02:00:5e:00:53:21", spoofchk="off", trust="on")

    result = cni(agent, "ADD", conf, pod)

    assert result["interfaces"][0]["name"] == "net1"
    assert result["interfaces"][0]["pciID"] == vf.pci
    with IPRoute() as ipr:
        assert not ipr.link_lookup(ifname=vf.netdev), "the VF netdev left the host namespace"
    with IPRoute(netns=pod) as ipr:
        (link,) = ipr.get_links(ifname="net1")
        assert link.get_attr("IFLA_ADDRESS") == "02:00:5e:00:53:21"
    applied = vf_config(lower, vf.index)
    assert (applied.mac, applied.spoofchk, applied.trust) == ("02:00:5e:00:53:21", False, True)
    peer_if = netns.unique("pv")
    with IPRoute() as ipr:
        ipr.link("add", ifname=peer_if, kind="macvlan", link=netns.index(ipr, other.netdev),
                 net_ns_fd=peer, macvlan_mode="bridge")
    netns.configure(peer, peer_if, f"{PEER}/24")
    netns.wait_carrier(pod, "net1")
    ping = netns.ping(pod, PEER)
    assert ping.returncode == 0, f"VF in pod -> peer failed:\n{ping.stdout}{ping.stderr}"

    cni(agent, "DEL", conf, pod)

    with IPRoute() as ipr:
        assert ipr.link_lookup(ifname=vf.netdev), "the VF is back under its original name"
    assert vf_config(lower, vf.index) == before, "PF-side settings restored"


def test_sriov_mac_on_a_vf_whose_pf_already_set_one(agent, pf: PF, make_vfs, sysfs,
                                                    namespaces) -> None:
    """Provisioning gave the VF an admin MAC before igbvf probed; igb then refuses the
    untrusted VF's own MAC change, so the CNI trusts it for the change and puts trust back."""
    netns.up_with_carrier(pf.netdev)  # a VF fetches its MAC from a PF that is up
    vf = make_vfs(pf, 1)[0]
    with IPRoute() as ipr:
        pf_index = netns.index(ipr, pf.netdev)
    (set_mac,) = vfbatch.apply(pf_index, [vfbatch.VfUpdate(vf.index, mac="02:00:5e:00:53:30",
                                                             trust=False)])
    assert set_mac.ok, str(set_mac)
    sysfs.bind(vf.pci, pf.spec.vf_driver)  # the driver reads the admin MAC as it probes
    sriov.wait_driver(sysfs, vf.pci, pf.spec.vf_driver)
    name = sriov.wait_netdev(sysfs, vf.pci)
    assert (Path("/sys/class/net") / name / "address").read_text().strip() == "02:00:5e:00:53:30"
    pod = namespaces("mac")
    conf = sriov_conf(vf.pci, mac="02:00:5e:00:53:31")

    cni(agent, "ADD", conf, pod)

    with IPRoute(netns=pod) as ipr:
        (link,) = ipr.get_links(ifname="net1")
        assert link.get_attr("IFLA_ADDRESS") == "02:00:5e:00:53:31"
    applied = vf_config(pf, vf.index)
    assert (applied.mac, applied.trust) == ("02:00:5e:00:53:31", False), "trust put back"
    cni(agent, "DEL", conf, pod)
    assert vf_config(pf, vf.index).mac == "02:00:5e:00:53:30", "the provisioned MAC is back"
    assert vf_config(pf, vf.index).trust is False
    (name,) = sysfs.netdevs(vf.pci)
    assert (Path("/sys/class/net") / name / "address").read_text().strip() == \
        "02:00:5e:00:53:30", "and the VF netdev has it too, not the pod's"


def test_sriov_del_after_the_pod_namespace_is_gone(agent, pf: PF, make_vfs) -> None:
    vf = make_vfs(pf, 1)[0]
    before = vf_config(pf, vf.index)
    with netns.namespace("gone") as pod:
        cni(agent, "ADD", sriov_conf(vf.pci, vlan=10, vlanQoS=2), pod)
        assert vf_config(pf, vf.index).vlan == 10
    # The namespace is deleted; the kernel hands the VF back to the host under some name.

    cni(agent, "DEL", sriov_conf(vf.pci, vlan=10, vlanQoS=2), pod)

    with IPRoute() as ipr:
        assert ipr.link_lookup(ifname=vf.netdev), "found by PCI address and renamed back"
    assert vf_config(pf, vf.index) == before


def test_sriov_dpdk_vf_stays_bound_and_gets_pf_side_settings(agent, pf: PF, make_vfs, sysfs,
                                                              namespaces) -> None:
    vf = make_vfs(pf, 1)[0]
    sysfs.bind(vf.pci, "vfio-pci")
    pod = namespaces("dpdk")
    conf = sriov_conf(vf.pci, vlan=100)

    result = cni(agent, "ADD", conf, pod)

    assert result["ips"][0]["address"] == POD
    assert sysfs.driver(vf.pci) == "vfio-pci"
    assert vf_config(pf, vf.index).vlan == 100
    with IPRoute(netns=pod) as ipr:
        assert not ipr.link_lookup(ifname="net1"), "nothing moves in DPDK mode"
    other = namespaces("dpdk2")
    refused = cni(agent, "ADD", conf, other, container="another", expect=1)
    assert refused["code"] == 7 and "already attached" in refused["msg"]

    cni(agent, "DEL", conf, pod)
    assert vf_config(pf, vf.index).vlan == 0


def test_sriov_gc_detaches_vfs_of_containers_that_are_gone(agent, pf: PF, make_vfs,
                                                           namespaces) -> None:
    vf = make_vfs(pf, 1)[0]
    before = vf_config(pf, vf.index)
    pod = namespaces("gc")
    conf = sriov_conf(vf.pci, vlan=20)
    cni(agent, "ADD", conf, pod, container="leaked")
    assert vf_config(pf, vf.index).vlan == 20

    # The runtime lost track of "leaked" (no DEL ever came) and lists only other attachments.
    cni(agent, "GC", {**conf, "cni.dev/valid-attachments": [
        {"containerID": "someone-else", "ifname": "net1"}]}, pod)

    with IPRoute() as ipr:
        assert ipr.link_lookup(ifname=vf.netdev), "the VF is back in the host namespace"
    assert vf_config(pf, vf.index) == before
    cni(agent, "DEL", conf, pod, container="leaked")  # a late DEL still succeeds



def test_sriov_vlan_proto_802_1ad_refused_by_igb_leaves_nothing_behind(agent, pf: PF, make_vfs,
                                                                      namespaces) -> None:
    if pf.spec.driver != "igb":
        pytest.skip(f"{pf.pci} runs {pf.spec.driver}; only igb is known to refuse 802.1ad")
    vf = make_vfs(pf, 1)[0]
    before = vf_config(pf, vf.index)
    pod = namespaces("qinq")
    conf = sriov_conf(vf.pci, mac="02:00:5e:00:53:51", vlan=100, vlanProto="802.1ad",
                      trust="on")

    refused = cni(agent, "ADD", conf, pod, expect=1)

    assert refused["code"] == 7, refused
    assert "vlan 100 qos 0 (802.1ad)" in refused["msg"] and "EPROTONOSUPPORT" in refused["msg"]
    assert vf_config(pf, vf.index) == before, "the MAC and trust igb took are put back"
    with IPRoute() as ipr:
        assert ipr.link_lookup(ifname=vf.netdev), "the VF netdev never left the host"
    with IPRoute(netns=pod) as ipr:
        assert [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()] == ["lo"]
    assert not list((agent["state"] / "sriov").glob("*.json")), "no attachment record left"
