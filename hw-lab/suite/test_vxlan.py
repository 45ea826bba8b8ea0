"""The vxlan kind on the real kernel: two "nodes" as network namespaces joined by a veth (the
underlay, IPv4 or IPv6), an etcd as the cluster store, the agent's vxlan kind run with each
node's namespace as its host namespace (a Context whose host netlink is opened there), and the
overlay service of each node. Pods on both nodes reach each other (ping, a TCP transfer of
full-size segments); a node whose last pod goes leaves the other node's forwarding entries;
DEL leaves nothing behind.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hwlab import netns

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cni.context import Context  # noqa: E402
from cni.dispatch import handle  # noqa: E402
from nodeagent import netns as agent_netns  # noqa: E402
from nodeagent.ipam.allocator import Ipam  # noqa: E402
from nodeagent.ipam.etcd.client import EtcdClient  # noqa: E402
from nodeagent.overlay.members import Membership  # noqa: E402
from nodeagent.overlay.service import OverlayService  # noqa: E402
from nodeagent.rtnl import Rtnl  # noqa: E402
from nodeagent.vfstate import VfState  # noqa: E402
from tests import ipam_etcd  # noqa: E402

IP = shutil.which("ip") or "/sbin/ip"
VNI = 4242
UNDERLAYS = {
    "ipv4": ("ipv4", ["192.0.2.1/24", "192.0.2.2/24"], 50),
    "ipv6": ("ipv6", ["2001:db8:77::1/64", "2001:db8:77::2/64"], 70),
}


def ip(*args: str) -> None:
    subprocess.run([IP, *args], check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def etcd() -> Iterator[ipam_etcd.EtcdServer]:
    if not ipam_etcd.available():
        pytest.skip("no etcd binary (etcd-server) in the guest")
    server = ipam_etcd.EtcdServer()
    try:
        server.start(timeout=120)  # the lab VM shares a busy machine: etcd may start slowly
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module", autouse=True)
def vxlan_module() -> None:
    if subprocess.run(["modprobe", "vxlan"], capture_output=True, check=False).returncode:
        pytest.skip("the kernel has no vxlan module")


@dataclass
class Node:
    name: str
    ns: str
    underlay: str  # this node's underlay address
    ctx: Context
    service: OverlayService

    @property
    def path(self) -> str:
        return f"/run/netns/{self.ns}"

    def cni(self, command: str, conf: dict[str, Any], pod: str,
            expect: int = 0) -> dict[str, Any]:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": f"ctr-{pod}",
               "CNI_NETNS": f"/run/netns/{pod}", "CNI_IFNAME": "net1", "CNI_PATH": "/nonexistent"}
        out = handle(self.ctx, env, json.dumps(conf).encode(), "vxlan")
        doc = json.loads(out.stdout) if out.stdout.strip() else {}
        assert out.exit_status == expect, doc
        return doc

    def links(self) -> dict[str, Any]:
        with Rtnl(self.path) as rtnl:
            return {link.get("IFLA_IFNAME"): link for link in rtnl.links()}

    def flood(self) -> list[str]:
        with Rtnl(self.path) as rtnl:
            index = rtnl.link_index(f"vx{VNI}")
            return sorted(dst for mac, dst in rtnl.fdb_entries(index)
                          if mac == "00:00:00:00:00:00") if index else []


@pytest.fixture(params=sorted(UNDERLAYS))
def nodes(request: pytest.FixtureRequest, namespaces, etcd: ipam_etcd.EtcdServer
          ) -> Iterator[tuple[str, list[Node]]]:
    family, addresses, _ = UNDERLAYS[request.param]
    a, b = namespaces("na"), namespaces("nb")
    ends = netns.unique("ua"), netns.unique("ub")
    ip("link", "add", ends[0], "type", "veth", "peer", "name", ends[1])
    for ns, end in zip((a, b), ends, strict=True):
        ip("link", "set", end, "netns", ns)
        ip("-n", ns, "link", "set", end, "name", "und0")
    for ns, cidr in zip((a, b), addresses, strict=True):
        ip("-n", ns, "addr", "add", cidr, "dev", "und0", *(["nodad"] if ":" in cidr else []))
        ip("-n", ns, "link", "set", "und0", "up")
    prefix = f"/nahw-overlay-{secrets.token_hex(4)}"
    clients = []
    made = []
    with tempfile.TemporaryDirectory(prefix="nahwvx") as root:
        for name, ns, cidr in (("node-a", a, addresses[0]), ("node-b", b, addresses[1])):
            client = EtcdClient(etcd.client_config(timeout=2.0))
            clients.append(client)
            members = Membership(client, name, prefix=prefix)
            path = f"/run/netns/{ns}"

            def opener(target: str | None, path: str = path) -> Rtnl:
                return Rtnl(target or path)

            ctx = Context(open_netlink=opener, vfs=VfState(f"{root}/{name}/state"),
                          ipam=Ipam(f"{root}/{name}/ipam"), overlay=members)
            service = OverlayService(members, open_netlink=lambda path=path: Rtnl(path))
            made.append(Node(name, ns, cidr.split("/")[0], ctx, service))
        try:
            yield family, made
        finally:
            for node in made:
                node.service.stop()
                node.ctx.close()
            for client in clients:
                client.close()


def conf(family: str, address: str) -> dict[str, Any]:
    return {"cniVersion": "1.1.0", "name": "lab-overlay", "type": "vxlan", "vni": VNI,
            "master": "und0", "underlay": family,
            "ipam": {"type": "static", "addresses": [{"address": address}]}}


def tcp_transfer(server_ns: str, client_ns: str, address: str, size: int = 1 << 20) -> int:
    """Send ``size`` bytes from ``client_ns`` to ``address`` in ``server_ns``; bytes received."""
    listener = agent_netns.run(f"/run/netns/{server_ns}", lambda: socket.create_server(
        (address, 0), family=socket.AF_INET6 if ":" in address else socket.AF_INET))
    port = listener.getsockname()[1]
    listener.settimeout(20)
    received = [0]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(20)
            while chunk := conn.recv(65536):
                received[0] += len(chunk)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        sender = agent_netns.run(f"/run/netns/{client_ns}", lambda: socket.create_connection(
            (address, port), timeout=20))
        with sender:
            sender.sendall(b"x" * size)
    finally:
        thread.join(timeout=30)
        listener.close()
    return received[0]


def test_pods_on_two_nodes_share_one_segment(nodes, namespaces) -> None:
    family, (a, b) = nodes
    overhead = UNDERLAYS[family][2]
    pod_a, pod_b = namespaces("pa"), namespaces("pb")
    c_a, c_b = conf(family, "10.77.0.1/24"), conf(family, "10.77.0.2/24")

    result = a.cni("ADD", c_a, pod_a)
    b.cni("ADD", c_b, pod_b)
    a.service.sync()
    b.service.sync()

    assert a.flood() == [b.underlay] and b.flood() == [a.underlay]
    vtep = a.links()[f"vx{VNI}"]
    data = vtep.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    assert data.get("IFLA_VXLAN_ID") == VNI and data.get("IFLA_VXLAN_PORT") == 4789
    local = data.get("IFLA_VXLAN_LOCAL6" if family == "ipv6" else "IFLA_VXLAN_LOCAL")
    assert local == a.underlay
    assert vtep.get("IFLA_MASTER") == a.links()[f"vxbr{VNI}"]["index"]
    assert result["interfaces"][2]["mtu"] == 1500 - overhead

    ping = netns.ping(pod_a, "10.77.0.2")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert tcp_transfer(pod_b, pod_a, "10.77.0.2") == 1 << 20, "full-size segments cross"
    a.cni("CHECK", {**c_a, "prevResult": result}, pod_a)

    # node b's last pod goes: its devices and key go, and node a stops flooding to it
    b.cni("DEL", c_b, pod_b)
    assert not {f"vx{VNI}", f"vxbr{VNI}"} & set(b.links()), "nothing left on node b"
    assert not [n for n in b.links() if n.startswith("vxh")]
    b.service.sync()
    a.service.sync()
    assert a.flood() == [], "node b's entry is gone from node a"
    assert [m.node for m in a.service.membership.members(VNI)] == ["node-a"]

    a.cni("DEL", c_a, pod_a)
    assert set(a.links()) == {"lo", "und0"}
    a.cni("DEL", c_a, pod_a)  # idempotent


def test_a_second_pod_shares_the_device_and_keeps_it(nodes, namespaces) -> None:
    family, (a, _) = nodes
    pods = [namespaces("p1"), namespaces("p2")]
    confs = [conf(family, "10.77.0.11/24"), conf(family, "10.77.0.12/24")]
    for pod, c in zip(pods, confs, strict=True):
        a.cni("ADD", c, pod)
    ports = [n for n, link in a.links().items()
             if link.get("IFLA_MASTER") == a.links()[f"vxbr{VNI}"]["index"]]
    assert len(ports) == 3, f"the VXLAN device and two pods in the bridge: {ports}"
    ping = netns.ping(pods[0], "10.77.0.12")
    assert ping.returncode == 0, "pods of one node talk through the bridge"

    a.cni("DEL", confs[0], pods[0])
    assert f"vx{VNI}" in a.links()
    a.cni("DEL", confs[1], pods[1])
    assert set(a.links()) == {"lo", "und0"}
