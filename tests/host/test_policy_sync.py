"""MultiNetworkPolicy enforcement end to end: the replay API server holds the policies,
pods and NetworkAttachmentDefinitions; pods are network namespaces whose macvlan links are
made through the agent's CNI path (shim -> socket -> server); real TCP connections between
them are allowed or blocked as the policies say."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns

from cni.context import Context
from cni.install import install
from cni.server import CniServer
from cni.shim import shim_path
from nodeagent import netns as netns_mod
from nodeagent.ipam.allocator import Ipam
from nodeagent.k8s.client import build_client
from nodeagent.policy import nft
from nodeagent.policy.attachments import AttachmentRegistry
from nodeagent.policy.sync import PolicyController
from nodeagent.vfstate import VfState
from tests.host.cni_helpers import run_plugin
from tests.host.conftest import unique
from tests.k8s_replay import ReplayApiServer, fixture
from tests.waiting import wait_until

pytestmark = pytest.mark.skipif(not nft.available(), reason="needs libnftables (nftables)")

ALLOW_CLIENTS = fixture("multus.json")["multi-networkpolicy"]["spec"]
PORT = 8080


@pytest.fixture
def api() -> Iterator[ReplayApiServer]:
    with ReplayApiServer() as server:
        server.add_namespace("telco")
        server.add_nad("telco", "macnet", {"cniVersion": "1.0.0", "name": "macnet",
                                           "type": "macvlan"})
        yield server


@pytest.fixture
def agent(tmp_path: Path, api: ReplayApiServer) -> Iterator[dict]:
    controller = PolicyController(build_client(host=api.url, timeout=(1.0, 2.0)),
                                  AttachmentRegistry(tmp_path / "state"), workers=4)
    socket_path = str(tmp_path / "run" / "agent.sock")
    server = CniServer(socket_path, context=Context(
        vfs=VfState(tmp_path / "state"), ipam=Ipam(tmp_path / "ipam"),
        attachments=controller))
    controller.start()
    server.start()
    bindir = tmp_path / "bin"
    install(bindir, shim_path())
    try:
        assert controller.wait_synced(10)
        yield {"socket": socket_path, "bin": bindir, "state": tmp_path / "state",
               "controller": controller}
    finally:
        server.stop()
        controller.stop()


@pytest.fixture
def namespaces() -> Iterator[list[str]]:
    made: list[str] = []

    def make() -> str:
        name = unique("pol")
        netns.create(name)
        made.append(name)
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        return name

    try:
        yield make  # type: ignore[misc]
    finally:
        for name in made:
            netns.remove(name)


class Pod:
    def __init__(self, agent: dict, api: ReplayApiServer, master: str, ns: str, name: str,
                 ip: str, labels: dict[str, str]) -> None:
        self.agent, self.api, self.master, self.ns, self.name, self.ip = \
            agent, api, master, ns, name, ip
        self.netns = f"/run/netns/{ns}"
        self.ifname = "net1"
        pod = fixture("pod.json")
        pod["metadata"].update(namespace="telco", name=name, labels=labels,
                               annotations={"k8s.v1.cni.cncf.io/networks": "macnet"})
        api.put_pod(pod)

    def cni(self, command: str):
        conf = {"cniVersion": "1.0.0", "name": "macnet", "type": "macvlan",
                "master": self.master, "mode": "bridge",
                "ipam": {"type": "static", "addresses": [{"address": f"{self.ip}/24"}]}}
        return run_plugin(self.agent["bin"] / "macvlan", command, conf, netns=self.netns,
                          container_id=f"cid-{self.name}", ifname=self.ifname,
                          args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=telco;"
                               f"K8S_POD_NAME={self.name}", path=self.agent["bin"],
                          env={"NODEAGENT_SOCKET": self.agent["socket"],
                               "NODEAGENT_STATE_DIR": str(self.agent["state"])})

    def add(self) -> None:
        out = self.cni("ADD")
        assert out.status == 0, out.stdout + out.stderr

    def listen(self, port: int = PORT) -> socket.socket:
        sock = netns_mod.run(self.netns, lambda: socket.socket(socket.AF_INET,
                                                               socket.SOCK_STREAM))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.ip, port))
        sock.listen(16)
        sock.settimeout(0)
        return sock

    def connects(self, to: Pod, port: int = PORT, timeout: float = 0.3) -> bool:
        sock = netns_mod.run(self.netns, lambda: socket.socket(socket.AF_INET,
                                                               socket.SOCK_STREAM))
        sock.settimeout(timeout)
        try:
            sock.connect((to.ip, port))
            return True
        except OSError:
            return False
        finally:
            sock.close()


def converged(agent: dict) -> bool:
    return agent["controller"].wait_idle(5)


def test_policies_created_changed_deleted_allow_and_block_real_packets(
        agent: dict, api: ReplayApiServer, master: str, namespaces) -> None:
    server = Pod(agent, api, master, namespaces(), "server-0", "10.77.0.5", {"app": "server"})
    client = Pod(agent, api, master, namespaces(), "client-0", "10.77.0.9", {"role": "client"})
    other = Pod(agent, api, master, namespaces(), "other-0", "10.77.0.10", {"role": "other"})
    for p in (server, client, other):
        p.add()
    listeners = [server.listen(PORT), server.listen(9090)]
    try:
        assert other.connects(server) and client.connects(server)  # no policy: open

        api.put_policy("telco", "allow-clients", "macnet", ALLOW_CLIENTS)
        assert wait_until(lambda: not other.connects(server))
        assert client.connects(server)
        assert not client.connects(server, 9090)  # only the port the policy names
        status = agent["controller"].status()["attachments"]["cid-server-0/net1"]
        assert status["state"] == "policed" and status["policies"] == ["telco/allow-clients"]
        assert agent["controller"].status()["attachments"]["cid-other-0/net1"]["state"] == "open"

        changed = json.loads(json.dumps(ALLOW_CLIENTS))
        changed["ingress"][0]["ports"] = [{"protocol": "TCP", "port": 9090}]
        api.put_policy("telco", "allow-clients", "macnet", changed)
        assert wait_until(lambda: not client.connects(server))
        assert client.connects(server, 9090)

        # The client's labels change: it is no longer a peer the policy allows.
        pod = api.get("", "pods", "client-0", "telco")
        pod["metadata"]["labels"] = {"role": "retired"}
        api.put_pod(pod)
        assert wait_until(lambda: not client.connects(server, 9090))

        api.delete_policy("telco", "allow-clients")
        assert wait_until(lambda: other.connects(server))
        assert converged(agent)
        assert nft.show(server.netns) is None  # the table is gone with the last policy
    finally:
        for sock in listeners:
            sock.close()
        for p in (server, client, other):
            assert p.cni("DEL").status == 0
    assert agent["controller"].registry.all() == []


def test_a_new_pod_on_a_policed_network_is_protected_before_add_returns(
        agent: dict, api: ReplayApiServer, master: str, namespaces) -> None:
    api.put_policy("telco", "allow-clients", "macnet", ALLOW_CLIENTS)
    other = Pod(agent, api, master, namespaces(), "other-0", "10.77.0.10", {"role": "other"})
    other.add()
    server = Pod(agent, api, master, namespaces(), "server-1", "10.77.0.6", {"app": "server"})
    server.add()
    # No waiting: the rules were in place when ADD returned.
    table = nft.show(server.netns)
    assert table is not None and '"net1"' in table
    listener = server.listen()
    try:
        assert not other.connects(server)
    finally:
        listener.close()
        for p in (server, other):
            assert p.cni("DEL").status == 0


def test_records_survive_an_agent_restart_and_policies_still_apply(
        agent: dict, api: ReplayApiServer, master: str, namespaces, tmp_path: Path) -> None:
    server = Pod(agent, api, master, namespaces(), "server-0", "10.77.0.5", {"app": "server"})
    other = Pod(agent, api, master, namespaces(), "other-0", "10.77.0.10", {"role": "other"})
    server.add()
    other.add()
    agent["controller"].stop()
    # A new controller (a restarted agent) reads the records and polices what it finds.
    api.put_policy("telco", "allow-clients", "macnet", ALLOW_CLIENTS)
    again = PolicyController(build_client(host=api.url, timeout=(1.0, 2.0)),
                             AttachmentRegistry(agent["state"])).start()
    listener = server.listen()
    try:
        assert wait_until(lambda: again.status()["attachments"].get(
            "cid-server-0/net1", {}).get("state") == "policed")
        assert not other.connects(server)
    finally:
        listener.close()
        again.stop()
        for p in (server, other):
            assert p.cni("DEL").status == 0


def test_an_add_whose_rules_cannot_be_applied_fails_and_leaves_nothing(
        agent: dict, api: ReplayApiServer, master: str, namespaces) -> None:
    api.put_policy("telco", "allow-clients", "macnet", ALLOW_CLIENTS)
    server = Pod(agent, api, master, namespaces(), "server-0", "10.77.0.5", {"app": "server"})
    # A name the kernel and CNI accept but an nft script cannot carry: the policy that
    # names this network cannot be enforced on it, so the attachment must not exist.
    server.ifname = "net'1"
    pod = api.get("", "pods", "server-0", "telco")
    pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] = "macnet@net'1"
    api.put_pod(pod)
    out = server.cni("ADD")
    assert out.status != 0
    assert json.loads(out.stdout)["code"] == 11
    assert "could not be applied" in json.loads(out.stdout)["msg"]
    assert "cannot be policed" in json.loads(out.stdout)["msg"]
    with IPRoute(netns=server.ns) as ipr:
        assert [link.get("IFLA_IFNAME") for link in ipr.get_links()] == ["lo"]
    assert agent["controller"].registry.all() == []
    assert not list((agent["state"] / "attachments").glob("*.json"))
    assert server.cni("DEL").status == 0


def test_while_the_agent_is_down_the_fallback_records_and_fails_closed(
        agent: dict, api: ReplayApiServer, master: str, namespaces, tmp_path: Path) -> None:
    agent["controller"].stop()  # it marked the state dir: this node enforces policies
    down = {**agent, "socket": str(tmp_path / "nobody-listens.sock")}
    server = Pod(down, api, master, namespaces(), "server-0", "10.77.0.5", {"app": "server"})
    other = Pod(down, api, master, namespaces(), "other-0", "10.77.0.10", {"role": "other"})
    server.add()
    other.add()
    listener = server.listen()
    try:
        assert not other.connects(server)  # no policy known: nothing passes yet
        # The agent is back: it finds the records and, no policy naming the network, opens.
        again = PolicyController(build_client(host=api.url, timeout=(1.0, 2.0)),
                                 AttachmentRegistry(agent["state"])).start()
        try:
            assert wait_until(lambda: other.connects(server))
            assert again.status()["attachments"]["cid-server-0/net1"]["state"] == "open"
        finally:
            again.stop()
    finally:
        listener.close()
        for p in (server, other):
            assert p.cni("DEL").status == 0  # served by the fallback, in its own process
            nft.release(p.netns)  # the contexts this process kept for them
    assert AttachmentRegistry(agent["state"]).load() == 0


def test_the_daemon_enforces_with_a_kubeconfig_and_reports_in_nodeagent_status(
        api: ReplayApiServer, master: str, namespaces, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    import yaml

    from nodeagent.status import read as read_status
    from nodeagent.statusview import status_screen

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": api.url}}],
        "users": [{"name": "agent", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "agent"}}]}))
    sock, status_file = tmp_path / "run" / "agent.sock", tmp_path / "status.json"
    (tmp_path / "absent.yaml").write_text("{}\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("NODEAGENT_SETTINGS", "NODEAGENT_STATE_DIR", "KUBERNETES_SERVICE_HOST")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodeagent", "daemon", "--socket", str(sock),
         "--status-file", str(status_file), "--metrics-address", "",
         "--no-publish-node-state", "--settings", str(tmp_path / "absent.yaml"),
         "--state-dir", str(tmp_path / "state"), "--ipam-state-dir", str(tmp_path / "ipam"),
         "--kubeconfig", str(kubeconfig)], env=env, stderr=subprocess.PIPE, text=True)
    bindir = tmp_path / "bin"
    install(bindir, shim_path())
    daemon = {"socket": str(sock), "bin": bindir, "state": tmp_path / "state"}
    api.put_policy("telco", "allow-clients", "macnet", ALLOW_CLIENTS)
    try:
        assert wait_until(sock.is_socket, 30), "the agent did not listen"
        # the daemon lists the policies in the background; wait for it through the status
        assert wait_until(lambda: status_file.exists() and read_status(status_file).get(
            "policy", {}).get("synced"), 30)
        server = Pod(daemon, api, master, namespaces(), "server-0", "10.77.0.5",
                     {"app": "server"})
        other = Pod(daemon, api, master, namespaces(), "other-0", "10.77.0.10",
                    {"role": "other"})
        server.add()
        other.add()
        listener = server.listen()
        try:
            assert not other.connects(server)
        finally:
            listener.close()
        assert wait_until(lambda: read_status(status_file)["policy"]["attachments"].get(
            "cid-server-0/net1", {}).get("state") == "policed")
        screen = status_screen(read_status(status_file))
        assert "NETWORK POLICY" in screen and "telco/allow-clients" in screen
        for p in (server, other):
            assert p.cni("DEL").status == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
