"""The deployment path end to end: the agent pod from the rendered chart (image, or the venv
fallback), containerd's CRI plugin as the node's runtime, pod sandboxes on this project's
plugins created and removed through the CRI, as the kubelet does.

The tests share one node (containerd, the agent) and run in file order: the later ones replace
and kill the agent the earlier ones started."""

from __future__ import annotations

import json
import subprocess
import time
from ipaddress import ip_address, ip_interface, ip_network
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.e2e import agent as agent_mod
from tests.e2e.containerd import Containerd
from tests.e2e.cri import CriClient, Sandbox
from tests.ipam_etcd import EtcdServer

CNI_VERSION = "1.0.0"  # containerd 1.6's libcni takes results up to 1.0.0
WB_RANGE = "10.77.1.0/27"
TUNED_RANGE = "10.77.3.0/27"
STATIC_ADDRESS = "10.77.2.10/24"
V110_RANGE = "10.77.4.0/28"
CLUSTER_RANGE = "10.77.5.0/28"


class Node:
    """containerd, the agent's pod (one generation at a time) and the networks on offer."""

    def __init__(self, root: Path, rendered: agent_mod.Rendered, image: str,
                 containerd: Containerd, cri: CriClient, master: str) -> None:
        self.root, self.rendered, self.image = root, rendered, image
        self.containerd, self.cri, self.master = containerd, cri, master
        self.bin_dir = root / "opt/cni/bin"
        self.conf_dir = root / "etc/cni/net.d"
        self.socket = root / "run/nodeagent/agent.sock"
        self.generation = 0
        self.agent: agent_mod.Agent | None = None
        self.agents: list[agent_mod.Agent] = []  # every generation, removed at the end

    def start_agent(self) -> agent_mod.Agent:
        """A new generation of the agent's pod (init container, agent), waited ready."""
        self.generation += 1
        agent = agent_mod.Agent(self.rendered, self.root, self.image,
                                f"nodeagent-e2e-{self.root.name[-8:]}-{self.generation}")
        self.agents.append(agent)
        agent.start()
        agent.wait_ready()
        self.agent = agent
        return agent

    # -- networks

    def macvlan(self, ipam: dict[str, Any]) -> dict[str, Any]:
        return {"type": "macvlan", "master": self.master, "mode": "bridge",
                "agentSocket": str(self.socket), "ipam": ipam}

    def use_network(self, name: str, plugins: list[dict[str, Any]],
                    version: str = CNI_VERSION) -> None:
        """The runtime's one network: ``name`` with ``plugins`` (a conflist), once containerd
        has loaded it."""
        for old in self.conf_dir.glob("*.conflist"):
            old.unlink()
        doc = {"cniVersion": version, "name": name, "plugins": plugins}
        partial = self.conf_dir / f".{name}.tmp"
        partial.write_text(json.dumps(doc, indent=1))
        partial.rename(self.conf_dir / f"10-{name}.conflist")
        deadline = time.monotonic() + 30
        while name not in self.loaded_networks():
            assert time.monotonic() < deadline, f"containerd did not load network {name}"
            time.sleep(0.2)

    def loaded_networks(self) -> list[str]:
        info = json.loads(self.cri.status_info().get("cniconfig", "{}"))
        return [net["Config"]["Name"] for net in info.get("Networks") or []]

    # -- what the kernel and the store say

    def reservations(self) -> dict[str, str]:
        """The node-local IPAM stores under the agent's state dir: {address: container id}."""
        stores = sorted((self.root / "var/lib/nodeagent/ipam").glob("**/reservations.json"))
        assert stores, "no node-local IPAM store written"
        return {r["ip"]: r["id"] for path in stores
                for r in json.loads(path.read_text())["reservations"]}

    def host_children(self) -> list[str]:
        """Links on the host whose parent is the test's master (none should stay)."""
        links = json.loads(subprocess.run(["ip", "-j", "link", "show"], check=True,
                                          capture_output=True, text=True).stdout)
        return [link["ifname"] for link in links
                if link.get("link") == self.master and link["ifname"] != self.master + "p"]

    def remove(self, sandbox: Sandbox) -> None:
        self.cri.stop_pod(sandbox.id)
        self.cri.remove_pod(sandbox.id)
        assert sandbox.id not in self.cri.sandbox_ids()
        assert not Path(sandbox.netns).exists(), f"{sandbox.netns} left behind"


def pod_link(sandbox: Sandbox, ifname: str = "eth0") -> dict[str, Any]:
    """``ip -j addr show`` of ``ifname`` inside the pod's network namespace."""
    out = subprocess.run(["nsenter", f"--net={sandbox.netns}", "ip", "-j", "-d", "addr", "show",
                          "dev", ifname], check=True, capture_output=True, text=True).stdout
    (link,) = json.loads(out)
    return link


def ipv4(link: dict[str, Any]) -> list[str]:
    return [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["family"] == "inet"]


def shim_request(node: Node, command: str, sandbox: Sandbox, conf: dict[str, Any],
                 network: str) -> tuple[int, dict[str, Any]]:
    """One CNI request to the installed shim exactly as containerd's libcni sends it."""
    plugin = {"cniVersion": CNI_VERSION, "name": network, **conf}
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": sandbox.id, "CNI_NETNS": sandbox.netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": str(node.bin_dir),
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME={sandbox.name}",
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    done = subprocess.run([str(node.bin_dir / "macvlan")], input=json.dumps(plugin).encode(),
                          env=env, capture_output=True, timeout=30, check=False)
    return done.returncode, json.loads(done.stdout or b"{}")


@pytest.fixture(scope="module")
def node(node_root: Path, rendered: agent_mod.Rendered, image: str,
         runtime: tuple[Containerd, CriClient], master: str):
    containerd, cri = runtime
    n = Node(node_root, rendered, image, containerd, cri, master)
    yield n
    for sandbox in cri.sandbox_ids():
        try:
            cri.stop_pod(sandbox)
            cri.remove_pod(sandbox)
        except grpc.RpcError:
            pass
    for agent in n.agents:
        agent.remove()


def test_agent_pod_runs_as_rendered_and_answers_its_probes(node: Node) -> None:
    agent = node.start_agent()
    assert agent.probe("livenessProbe") == 200
    assert agent.probe("readinessProbe") == 200
    installed = {p.name for p in node.bin_dir.iterdir()}
    assert {"macvlan", "whereabouts", "sriov"} <= installed, installed
    assert node.socket.is_socket()
    assert node.socket.stat().st_mode & 0o077 == 0, "the CNI socket is root's alone"


def test_macvlan_static(node: Node) -> None:
    node.use_network("e2e-static", [node.macvlan({
        "type": "static", "addresses": [{"address": STATIC_ADDRESS}]})])
    pod = node.cri.run_pod("static-0")
    link = pod_link(pod)
    assert ipv4(link) == [STATIC_ADDRESS]
    assert link["linkinfo"]["info_kind"] == "macvlan"
    assert pod.ip == STATIC_ADDRESS.split("/")[0]
    node.remove(pod)
    assert node.host_children() == []


def test_macvlan_whereabouts_file_store(node: Node) -> None:
    node.use_network("e2e-wb", [node.macvlan({
        "type": "whereabouts", "range": WB_RANGE, "datastore": "file"})])
    pods = [node.cri.run_pod(f"wb-{i}") for i in range(4)]
    addresses = [ipv4(pod_link(p)) for p in pods]
    flat = [a for pod in addresses for a in pod]
    assert len(flat) == len(set(flat)) == len(pods), addresses
    assert all(ip_interface(a).ip in ip_network(WB_RANGE) for a in flat), flat
    held = node.reservations()
    assert {held.get(a.split("/")[0]) for a in flat} == {p.id for p in pods}, held
    for pod in pods:
        node.remove(pod)
    held = node.reservations()
    assert not {p.id for p in pods} & set(held.values()), held
    assert node.host_children() == []


def test_macvlan_whereabouts_cluster_store(node: Node, etcd: EtcdServer) -> None:
    """A whereabouts configuration as its README writes it (no datastore): the agent's cluster
    store, here the chart's ``ipam.etcd.endpoints`` on a loopback etcd."""
    node.use_network("e2e-cluster", [node.macvlan({"type": "whereabouts",
                                                    "range": CLUSTER_RANGE})])

    def held() -> str:
        return etcd.etcdctl("get", "--prefix", "/", "--print-value-only").stdout

    pods = [node.cri.run_pod(f"cluster-{i}") for i in range(3)]
    addresses = [a for p in pods for a in ipv4(pod_link(p))]
    assert len(set(addresses)) == len(pods), addresses
    assert all(ip_interface(a).ip in ip_network(CLUSTER_RANGE) for a in addresses), addresses
    in_etcd = held()
    assert all(p.id in in_etcd for p in pods), in_etcd
    assert not {p.id for p in pods} & set(node.reservations().values())  # not node-local
    for pod in pods:
        node.remove(pod)
    in_etcd = held()
    assert not any(p.id in in_etcd for p in pods), in_etcd
    assert node.host_children() == []


def test_chained_reference_tuning_after_macvlan(node: Node) -> None:
    node.use_network("e2e-tuned", [
        node.macvlan({"type": "whereabouts", "range": TUNED_RANGE, "datastore": "file"}),
        {"type": "tuning", "mtu": 1400, "promisc": True},
    ])
    pod = node.cri.run_pod("tuned-0")
    link = pod_link(pod)
    assert link["mtu"] == 1400  # tuning got the macvlan's result and acted on its interface
    assert "PROMISC" in link["flags"]
    (address,) = ipv4(link)
    assert ip_interface(address).ip in ip_network(TUNED_RANGE)
    node.remove(pod)
    assert pod.id not in node.reservations().values()
    assert node.host_children() == []


def test_containerd_1_6_refuses_a_1_1_0_result_and_nothing_stays(node: Node) -> None:
    """What docs/deploy.md's table says: containerd 1.6's libcni takes results up to 1.0.0."""
    node.use_network("e2e-v110", [node.macvlan({
        "type": "whereabouts", "range": V110_RANGE, "datastore": "file"})], version="1.1.0")
    netns_before = set(Path("/run/netns").glob("cni-*"))
    with pytest.raises(grpc.RpcError) as refused:
        node.cri.run_pod("v110-0")
    assert "unsupported CNI result version" in refused.value.details()
    # containerd sent DEL after the refused result: the address is free, no netns, no link
    assert not [a for a in node.reservations() if ip_address(a) in ip_network(V110_RANGE)]
    assert set(Path("/run/netns").glob("cni-*")) == netns_before
    assert node.host_children() == []


def test_rolling_upgrade_with_pods_attached(node: Node) -> None:
    node.use_network("e2e-wb", [node.macvlan({
        "type": "whereabouts", "range": WB_RANGE, "datastore": "file"})])
    pods = [node.cri.run_pod(f"upgrade-{i}") for i in range(3)]
    before = {p.id: ipv4(pod_link(p)) for p in pods}
    old = node.agent
    assert old is not None
    old.stop()  # the DaemonSet's RollingUpdate: the old pod terminates, then the new one starts
    assert not old.running()
    # Its preStop hook (if the chart has one) kept the shim: between the two agents a request
    # gets "try again later", not a missing or restored plugin.
    conf = node.macvlan({"type": "whereabouts", "range": WB_RANGE, "datastore": "file"})
    status, reply = shim_request(node, "DEL", pods[0], conf, "e2e-wb")
    assert status != 0 and reply.get("code") == 11, reply
    node.start_agent()
    assert {p.id: ipv4(pod_link(p)) for p in pods} == before  # attachments untouched
    extra = node.cri.run_pod("upgrade-new")  # the new agent serves ADD ...
    assert ipv4(pod_link(extra)) not in before.values()
    for pod in [*pods, extra]:  # ... and DEL of what the old one attached
        node.remove(pod)
    held = node.reservations()
    assert not {p.id for p in [*pods, extra]} & set(held.values()), held
    assert node.host_children() == []
    old.remove()


def test_agent_killed_with_pods_attached_then_back(node: Node) -> None:
    node.use_network("e2e-wb", [node.macvlan({
        "type": "whereabouts", "range": WB_RANGE, "datastore": "file"})])
    conf = node.macvlan({"type": "whereabouts", "range": WB_RANGE, "datastore": "file"})
    pods = [node.cri.run_pod(f"killed-{i}") for i in range(2)]
    killed = node.agent
    assert killed is not None
    killed.stop(kill=True)
    assert killed.probe("livenessProbe") == 0  # nobody answers on the probe port

    # What the runtime sends now gets CNI error 11 (try again later) from the shim ...
    status, reply = shim_request(node, "DEL", pods[0], conf, "e2e-wb")
    assert status != 0 and reply.get("code") == 11, reply
    # ... so the kubelet's calls fail and are retried: no pod starts, none is torn down.
    with pytest.raises(grpc.RpcError):
        node.cri.run_pod("killed-new")
    with pytest.raises(grpc.RpcError):
        node.cri.stop_pod(pods[0].id)
    assert Path(pods[0].netns).exists()
    assert {p.id for p in pods} <= set(node.reservations().values())

    node.start_agent()  # the DaemonSet restarts it; the stale socket is taken over
    later = node.cri.run_pod("killed-new")
    assert ipv4(pod_link(later))
    for pod in [*pods, later]:
        node.remove(pod)
    held = node.reservations()
    assert not {p.id for p in [*pods, later]} & set(held.values()), held
    assert node.host_children() == []
    killed.remove()
