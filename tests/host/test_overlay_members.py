"""VXLAN overlay membership against a real etcd: nodes announcing their VTEPs, the overlay
service programming each node's flooding entries as members come and go (a node leaving, a
node dying), and the vxlan kind announcing and withdrawing its node. Netlink goes to the
recording double (the host kernel has no vxlan driver; hw-lab/suite/test_vxlan.py runs the
real one)."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni.context import Context
from cni.dispatch import handle
from nodeagent import netns
from nodeagent.ipam.allocator import Ipam
from nodeagent.ipam.etcd.client import EtcdClient
from nodeagent.metrics import Metrics
from nodeagent.overlay.devices import ZERO_MAC, alias
from nodeagent.overlay.members import Membership
from nodeagent.overlay.service import OverlayCollector, OverlayService
from nodeagent.status import StatusBoard
from nodeagent.vfstate import VfState
from tests import ipam_etcd
from tests.fake_netlink import HOST, FakeKernel

pytestmark = pytest.mark.skipif(not ipam_etcd.available(), reason="needs etcd (etcd-server)")

VNI = 7001


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client(etcd: ipam_etcd.EtcdServer) -> Iterator[EtcdClient]:
    c = EtcdClient(etcd.client_config(timeout=2.0))
    yield c
    c.close()


@pytest.fixture
def prefix() -> str:
    return f"/test-overlay-{secrets.token_hex(4)}"


class Node:
    """One node: its own kernel (a VTEP the vxlan kind would have made), membership, service."""

    def __init__(self, client: EtcdClient, prefix: str, name: str, address: str,
                 clock: Clock, port: int = 4789, vni: int = VNI) -> None:
        self.kernel = FakeKernel()
        self.name = name
        self.members = Membership(client, name, cluster="lab", prefix=prefix, clock=clock)
        self.status = StatusBoard()
        self.service = OverlayService(self.members, open_netlink=lambda: self.kernel.open(None),
                                      status=self.status)
        self.eth0 = self.kernel.add_link("eth0", up=True)
        self.vtep = self.add_vtep(vni, address, port)

    def add_vtep(self, vni: int, address: str, port: int = 4789) -> Any:
        local = "IFLA_VXLAN_LOCAL6" if ":" in address else "IFLA_VXLAN_LOCAL"
        return self.kernel.add_link(
            f"vx{vni}", kind="vxlan", up=True, alias=alias("vxlan", "store", "overlay-a"),
            data=[("IFLA_VXLAN_ID", vni), ("IFLA_VXLAN_LINK", self.eth0.index),
                  (local, address), ("IFLA_VXLAN_PORT", port)])

    def flood(self, vni: int = VNI) -> list[str]:
        index = self.kernel.in_netns(HOST)[f"vx{vni}"].index
        return sorted(dst for i, mac, dst in self.kernel.fdb if i == index and mac == ZERO_MAC)

    def close(self) -> None:
        self.service.stop()


@pytest.fixture
def nodes(client: EtcdClient, prefix: str) -> Iterator[tuple[Clock, list[Node]]]:
    clock = Clock()
    made = [Node(client, prefix, f"node-{c}", f"198.51.100.{i + 1}", clock)
            for i, c in enumerate("abc")]
    yield clock, made
    for node in made:
        node.close()


def test_members_are_keys_in_the_cluster_namespace(client: EtcdClient, prefix: str) -> None:
    m = Membership(client, "node-a", cluster="lab", prefix=prefix)
    m.publish(VNI, ipaddress.ip_address("198.51.100.1"), 4789, "overlay-a")

    kvs = client.range_all(prefix.encode(), prefix.encode() + b"\xff")
    assert [kv.key for kv in kvs] == [f"{prefix}/@lab/vxlan/{VNI}/node-a".encode()]
    doc = json.loads(kvs[0].value)
    assert (doc["address"], doc["port"], doc["network"]) == ("198.51.100.1", 4789, "overlay-a")

    m.withdraw(VNI)
    assert m.members(VNI) == []


def test_every_node_floods_to_the_others_and_a_leaving_node_is_dropped(nodes) -> None:
    _, (a, b, c) = nodes
    for node in (a, b, c):
        node.service.sync()
    for node in (a, b, c):
        node.service.sync()

    assert a.flood() == ["198.51.100.2", "198.51.100.3"]
    assert b.flood() == ["198.51.100.1", "198.51.100.3"]
    assert c.flood() == ["198.51.100.1", "198.51.100.2"]

    # node b's last pod goes: the kind removes its device; b's next pass withdraws the key
    b.kernel.links.pop(b.vtep.index)
    b.service.sync()
    a.service.sync()
    c.service.sync()

    assert a.flood() == ["198.51.100.3"] and c.flood() == ["198.51.100.1"]
    assert [m.node for m in a.members.members(VNI)] == ["node-a", "node-c"]


def test_a_dead_node_expires_and_its_entries_go_everywhere(nodes) -> None:
    clock, (a, b, c) = nodes
    for _ in range(2):
        for node in (a, b, c):
            node.service.sync()
    assert a.flood() == ["198.51.100.2", "198.51.100.3"]

    # c dies: no more passes; a and b renew, and after the TTL c's key is gone
    for _ in range(4):
        clock.now += 10
        a.service.sync()
        b.service.sync()

    assert a.flood() == ["198.51.100.2"] and b.flood() == ["198.51.100.1"]
    assert sorted(m.node for m in a.members.members(VNI)) == ["node-a", "node-b"]
    _, expired = a.members.scan(VNI)
    assert expired == [], "the dead node's key was deleted, not just ignored"

    # a node that comes back is taken in again
    c.service.sync()
    a.service.sync()
    assert a.flood() == ["198.51.100.2", "198.51.100.3"]


def test_renewal_beats_expiry(nodes) -> None:
    """A reader deletes an expired key only if it was not renewed since it read it."""
    clock, (a, b, _) = nodes
    a.service.sync()
    clock.now += 31
    _, expired = b.members.scan(VNI)
    assert [m.node for m in expired] == ["node-a"]
    a.service.sync()  # a renews in between

    assert b.members.expire(expired) == 0
    assert [m.node for m in b.members.members(VNI)] == ["node-a"]


def test_members_of_another_port_or_family_are_reported_not_flooded(
        client: EtcdClient, prefix: str) -> None:
    clock = Clock()
    a = Node(client, prefix, "node-a", "198.51.100.1", clock)
    b = Node(client, prefix, "node-b", "198.51.100.2", clock, port=8472)
    c = Node(client, prefix, "node-c", "2001:db8::3", clock)
    try:
        for node in (b, c, a):
            node.service.sync()

        assert a.flood() == []
        overlay = a.status.snapshot()["overlays"][str(VNI)]
        assert overlay["mismatched"] == ["node-b (198.51.100.2 port 8472)",
                                         "node-c (2001:db8::3 port 4789)"]
    finally:
        for node in (a, b, c):
            node.close()


def test_status_and_metrics_show_members_and_entries(nodes) -> None:
    _, (a, b, _) = nodes
    b.service.sync()
    a.service.sync()

    overlay = a.status.snapshot()["overlays"][str(VNI)]
    assert overlay["members"] == {"node-b": "198.51.100.2"}
    assert overlay["floodTo"] == ["198.51.100.2"]
    assert (overlay["network"], overlay["device"], overlay["local"]) == (
        "overlay-a", f"vx{VNI}", "198.51.100.1")
    metrics = Metrics(a.status)
    metrics.registry.register(OverlayCollector(a.status))
    labels = {"vni": str(VNI), "network": "overlay-a"}
    assert metrics.registry.get_sample_value("nodeagent_overlay_members", labels) == 1.0
    assert metrics.registry.get_sample_value("nodeagent_overlay_flood_entries", labels) == 1.0


def test_a_store_outage_keeps_the_entries(nodes, etcd: ipam_etcd.EtcdServer) -> None:
    _, (a, b, _) = nodes
    b.service.sync()
    a.service.sync()
    etcd.stop()
    try:
        with pytest.raises(Exception):  # noqa: B017 - whichever etcd error: the pass fails
            a.service.sync()
        assert a.flood() == ["198.51.100.2"], "pods keep their peers while the store is down"
    finally:
        etcd.start()


# -- the kind in store mode --------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client: EtcdClient,
          prefix: str) -> Iterator[dict[str, Any]]:
    kernel = FakeKernel()
    monkeypatch.setattr(netns, "is_netns", kernel.is_netns)
    eth0 = kernel.add_link("eth0", up=True)
    kernel.routes.append({"netns": HOST, "family": 2, "dst": None, "dst_len": 0,
                          "gateway": "192.0.2.1", "oif": eth0.index})
    kernel.addresses.append((HOST, eth0.index, "192.0.2.10", 24))
    pod = tmp_path / "pod"
    pod.write_text("")
    members = Membership(client, "node-a", prefix=prefix)
    ctx = Context(open_netlink=kernel.open, vfs=VfState(tmp_path / "state"),
                  ipam=Ipam(tmp_path / "ipam"), overlay=members)
    yield {"kernel": kernel, "ctx": ctx, "pod": os.path.realpath(pod), "members": members,
           "peer": Membership(client, "node-b", prefix=prefix)}
    ctx.close()


def cni(w: dict[str, Any], command: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    conf = {"cniVersion": "1.1.0", "name": "overlay-a", "type": "vxlan", "vni": VNI,
            "ipam": {"type": "nodeagent-ipam", "range": "10.71.0.0/24"}, **extra}
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_IFNAME": "net1",
           "CNI_NETNS": w["pod"], "CNI_PATH": "/nonexistent"}
    out = handle(w["ctx"], env, json.dumps(conf).encode(), "vxlan")
    return out.exit_status, json.loads(out.stdout) if out.stdout.strip() else {}


def test_the_kind_announces_floods_to_the_known_and_withdraws_with_the_last_pod(world) -> None:

    world["peer"].publish(VNI, ipaddress.ip_address("192.0.2.20"), 4789, "overlay-a")

    status, result = cni(world, "ADD")

    assert status == 0, result
    assert [(m.node, str(m.address)) for m in world["members"].members(VNI)] == [
        ("node-a", "192.0.2.10"), ("node-b", "192.0.2.20")]
    assert [dst for _, _, dst in world["kernel"].fdb] == ["192.0.2.20"]
    assert cni(world, "CHECK", prevResult=result) == (0, {})

    world["members"].withdraw(VNI)
    status, error = cni(world, "CHECK", prevResult=result)
    assert status == 1 and "not a member of VNI" in error["msg"], error
    world["members"].publish(VNI, ipaddress.ip_address("192.0.2.10"), 4789, "overlay-a")

    assert cni(world, "DEL")[0] == 0
    assert [m.node for m in world["members"].members(VNI)] == ["node-b"]
    assert set(world["kernel"].in_netns(HOST)) == {"eth0"}


def test_the_kind_fails_cleanly_when_the_store_is_down(world, etcd) -> None:
    etcd.stop()
    try:
        status, error = cni(world, "ADD")
    finally:
        etcd.start()

    assert status == 1 and error["code"] == 11, error
    assert "cluster store" in error["msg"]
    assert set(world["kernel"].in_netns(HOST)) == {"eth0"}
    assert world["kernel"].in_netns(world["pod"]) == {}


# -- the daemon ---------------------------------------------------------------------------------


def test_the_daemon_runs_the_overlay_service_on_its_cluster_store(
        tmp_path: Path, etcd: ipam_etcd.EtcdServer, client: EtcdClient) -> None:
    """With a cluster store the daemon keeps this node's membership true to the kernel: a key
    for a network the node does not hold (a crash before DEL withdrew it) is withdrawn."""
    import subprocess
    import sys
    import urllib.request

    from tests.host.test_daemon import free_port
    from tests.waiting import wait_until

    node = f"nat-node-{secrets.token_hex(3)}"
    stale = Membership(client, node, cluster="lab")
    stale.publish(VNI, ipaddress.ip_address("192.0.2.99"), 4789, "overlay-a")
    port = free_port()
    cmd = [sys.executable, "-m", "nodeagent", "daemon", "--socket", str(tmp_path / "a.sock"),
           "--status-file", str(tmp_path / "status.json"), "--node-name", node,
           "--metrics-address", f"127.0.0.1:{port}", "--ipam-state-dir", str(tmp_path / "ipam"),
           "--ipam-etcd-endpoints", etcd.url, "--ipam-cluster-name", "lab",
           "--no-publish-node-state"]
    env = dict(os.environ, NODEAGENT_STATE_DIR=str(tmp_path / "cni"))
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: stale.members(VNI) == [], 30), "the stale key stayed"

        def metrics() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                return r.read().decode()

        assert "nodeagent_overlay_members" in metrics()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]


def test_without_a_given_membership_the_kind_uses_the_agents_cluster_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, etcd: ipam_etcd.EtcdServer,
        client: EtcdClient) -> None:
    """The in-process fallback's case: the Context has only the settings' cluster store; the
    node is $NODE_NAME, the keys are in the cluster's namespace."""
    from nodeagent.settings import ClusterStore

    node = f"nat-node-{secrets.token_hex(3)}"
    monkeypatch.setenv("NODE_NAME", node)
    kernel = FakeKernel()
    monkeypatch.setattr(netns, "is_netns", kernel.is_netns)
    eth0 = kernel.add_link("eth0", up=True)
    kernel.addresses.append((HOST, eth0.index, "192.0.2.10", 24))
    pod = tmp_path / "pod"
    pod.write_text("")
    ctx = Context(open_netlink=kernel.open, vfs=VfState(tmp_path / "state"), ipam=Ipam(
        tmp_path / "ipam", cluster=ClusterStore(etcd.client_config(timeout=2.0), cluster="lab")))
    w = {"ctx": ctx, "pod": os.path.realpath(pod)}
    try:
        assert cni(w, "ADD", master="eth0")[0] == 0
        mine = Membership(client, node, cluster="lab")
        assert [str(m.address) for m in mine.members(VNI)] == ["192.0.2.10"]
        assert cni(w, "DEL", master="eth0")[0] == 0
        assert mine.members(VNI) == []
    finally:
        ctx.overlay.client.close()
        ctx.close()
