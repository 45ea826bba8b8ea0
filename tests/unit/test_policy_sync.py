"""The policy controller's decisions: which local pods a change affects, what the caches keep
of a pod, and the controller against the replay API server with the scripts it would apply
recorded (the host tests apply them for real)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.k8s.client import build_client
from nodeagent.policy.attachments import AttachmentRecord, AttachmentRegistry
from nodeagent.policy.cluster import (
    LocalAttachment,
    affected_by_pod,
    affected_by_policy,
    pod_view,
)
from nodeagent.policy.model import parse_policy
from nodeagent.policy.sync import PolicyApplyError, PolicyController
from tests.k8s_replay import ReplayApiServer, fixture
from tests.waiting import wait_until

ALLOW_CLIENTS = fixture("multus.json")["multi-networkpolicy"]["spec"]


def record(pod: str, cid: str = "", network: str = "macnet", ns: str = "telco",
           netns: str = "/proc/self/ns/net", ips: tuple[str, ...] = ("10.77.0.5",)
           ) -> AttachmentRecord:
    return AttachmentRecord(cid or f"c-{pod}", "net1", ns, pod, netns, network, "macvlan", ips)


def local(pod: str, network: str, ns: str = "telco") -> LocalAttachment:
    return LocalAttachment(record(pod, ns=ns), network)


def policy(ns: str, name: str, nets: str) -> object:
    obj = fixture("multus.json")["multi-networkpolicy"]
    obj["metadata"].update(namespace=ns, name=name)
    obj["metadata"]["annotations"] = {"k8s.v1.cni.cncf.io/policy-for": nets}
    return parse_policy(obj)


def pod_obj(name: str, labels: dict[str, str], ips: dict[str, str] | None = None,
            ns: str = "telco", node: str = "worker-1", networks: str = "macnet") -> dict:
    pod = fixture("pod.json")
    pod["metadata"].update(namespace=ns, name=name, labels=labels)
    notes = {"k8s.v1.cni.cncf.io/networks": networks}
    if ips:
        notes["k8s.v1.cni.cncf.io/network-status"] = json.dumps(
            [{"name": net, "interface": f"net{i}", "ips": [ip]}
             for i, (net, ip) in enumerate(ips.items(), start=1)])
    pod["metadata"]["annotations"] = notes
    pod["spec"]["nodeName"] = node
    pod["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": 8080}]
    return pod


def test_a_policy_affects_its_namespaces_pods_on_its_networks() -> None:
    attached = [local("a", "telco/macnet"), local("b", "telco/other"),
                local("c", "telco/macnet", ns="edge"), local("d", "")]
    assert affected_by_policy(None, policy("telco", "p", "macnet"), attached) == {"telco/a"}
    # a changed policy-for: the pods of the old network and of the new
    assert affected_by_policy(policy("telco", "p", "macnet"), policy("telco", "p", "other"),
                              attached) == {"telco/a", "telco/b"}
    assert affected_by_policy(policy("edge", "p", "telco/macnet"), None, attached) == \
        {"edge/c"}


def test_a_pod_affects_itself_and_the_local_pods_it_is_a_peer_of() -> None:
    attached = [local("server", "telco/macnet"), local("other", "telco/open")]
    policed = {"telco/macnet"}
    client = pod_view(pod_obj("client", {"role": "client"}, {"telco/macnet": "10.77.0.9"},
                              node="worker-2"))
    relabelled = pod_view(pod_obj("client", {"role": "x"}, {"telco/macnet": "10.77.0.9"},
                                  node="worker-2"))
    assert affected_by_pod(None, client, attached, policed) == {"telco/server"}
    assert affected_by_pod(client, relabelled, attached, policed) == {"telco/server"}
    assert affected_by_pod(client, client, attached, policed) == set()  # e.g. status only
    elsewhere = pod_view(pod_obj("x", {}, {"telco/open": "10.78.0.9"}, networks="open"))
    assert affected_by_pod(None, elsewhere, attached, policed) == set()  # unpoliced network
    server = pod_view(pod_obj("server", {"app": "server"}))
    assert affected_by_pod(None, server, attached, policed) == {"telco/server"}


def test_the_pod_view_keeps_interfaces_addresses_and_named_ports() -> None:
    view = pod_view(pod_obj("p", {"app": "server"}, {"telco/macnet": "10.77.0.5"}))
    assert view.interfaces == {"net1": "telco/macnet"}
    assert view.ips == {"telco/macnet": ("10.77.0.5",)}
    assert view.named_ports == {"http": ("tcp", 8080)}


# -- the controller --------------------------------------------------------------------------


class Recorded:
    def __init__(self) -> None:
        self.scripts: list[tuple[str | None, str]] = []
        self.fail = False
        self.lock = threading.Lock()

    def __call__(self, netns: str | None, script: str) -> None:
        if self.fail:
            raise OSError("cannot enter the namespace")
        with self.lock:
            self.scripts.append((netns, script))

    def count(self) -> int:
        with self.lock:
            return len(self.scripts)


@pytest.fixture
def api() -> Iterator[ReplayApiServer]:
    with ReplayApiServer() as server:
        server.add_namespace("telco")
        server.add_nad("telco", "macnet", {"cniVersion": "1.0.0", "name": "macnet",
                                           "type": "macvlan"})
        server.add_nad("telco", "open", {"cniVersion": "1.0.0", "name": "opennet",
                                         "type": "macvlan"})
        yield server


@pytest.fixture
def controller(api: ReplayApiServer, tmp_path: Path) -> Iterator[tuple[PolicyController,
                                                                         Recorded]]:
    recorded = Recorded()
    ctl = PolicyController(build_client(host=api.url, timeout=(1.0, 2.0)),
                           AttachmentRegistry(tmp_path), apply=recorded, workers=2)
    try:
        yield ctl, recorded
    finally:
        ctl.stop()


def test_new_attachments_fail_closed_until_synced_then_get_their_policy(
        api: ReplayApiServer, controller: tuple[PolicyController, Recorded]) -> None:
    ctl, recorded = controller
    api.put_pod(pod_obj("server-0", {"app": "server"}))
    api.put_policy("telco", "allow-clients", "macnet", ALLOW_CLIENTS)
    ctl.attached(record("server-0"))  # not started: nothing is synced
    assert ctl.status()["attachments"]["c-server-0/net1"]["state"] == "deny-all"
    assert "drop" in recorded.scripts[-1][1]
    ctl.start()
    assert ctl.wait_synced(5)
    assert wait_until(lambda: ctl.wait_idle(0.1) and recorded.count() == 2)
    state = ctl.status()["attachments"]["c-server-0/net1"]
    assert state["state"] == "policed" and state["policies"] == ["telco/allow-clients"]
    # ingress only now (no client exists yet: nothing allowed in); egress open again
    assert "chain output" in recorded.scripts[0][1]
    assert "chain output" not in recorded.scripts[-1][1]


def test_unpoliced_networks_cost_no_apply_and_unchanged_scripts_are_skipped(
        api: ReplayApiServer, controller: tuple[PolicyController, Recorded]) -> None:
    ctl, recorded = controller
    api.put_pod(pod_obj("server-0", {"app": "server"}))
    api.put_pod(pod_obj("plain-0", {"app": "server"}, networks="open"))
    api.put_policy("telco", "allow-clients", "macnet", ALLOW_CLIENTS)
    ctl.start()
    assert ctl.wait_synced(5)
    ctl.attached(record("plain-0", network="opennet"))
    assert recorded.count() == 0
    ctl.attached(record("server-0"))
    assert recorded.count() == 1
    assert ctl.wait_idle(5)
    before = ctl.syncs
    pod = api.get("", "pods", "server-0", "telco")
    pod["metadata"]["labels"]["unrelated"] = "x"  # still selected the same way
    api.put_pod(pod)
    assert wait_until(lambda: ctl.syncs > before) and ctl.wait_idle(2)
    assert recorded.count() == 1
    assert ctl.last_sync["unchanged"] == 1


def test_a_client_appearing_elsewhere_reprograms_the_server(
        api: ReplayApiServer, controller: tuple[PolicyController, Recorded]) -> None:
    ctl, recorded = controller
    api.put_pod(pod_obj("server-0", {"app": "server"}))
    api.put_policy("telco", "allow-clients", "macnet", ALLOW_CLIENTS)
    ctl.start()
    assert ctl.wait_synced(5)
    ctl.attached(record("server-0"))
    assert "10.77.0.9" not in recorded.scripts[-1][1]
    api.put_pod(pod_obj("client-0", {"role": "client"}, {"telco/macnet": "10.77.0.9"},
                        node="worker-2"))
    assert wait_until(lambda: "10.77.0.9" in recorded.scripts[-1][1])


def test_a_bad_policy_is_reported_by_name_and_field_and_others_still_apply(
        api: ReplayApiServer, controller: tuple[PolicyController, Recorded]) -> None:
    ctl, _ = controller
    api.put_pod(pod_obj("server-0", {"app": "server"}))
    bad = {**ALLOW_CLIENTS, "ingress": [{"ports": [{"protocol": "TCP", "port": 70000}]}]}
    api.put_policy("telco", "broken", "macnet", bad)
    api.put_policy("telco", "allow-clients", "macnet", ALLOW_CLIENTS)
    ctl.start()
    assert ctl.wait_synced(5)
    ctl.attached(record("server-0"))
    errors = ctl.status()["policyErrors"]
    assert list(errors) == ["telco/broken"]
    assert "spec.ingress[0].ports[0].port" in errors["telco/broken"]
    assert ctl.status()["attachments"]["c-server-0/net1"]["policies"] == \
        ["telco/allow-clients"]
    api.put_policy("telco", "broken", "macnet", ALLOW_CLIENTS)  # fixed: no longer reported
    assert wait_until(lambda: not ctl.status()["policyErrors"])


def test_an_apply_failure_fails_the_attachment_and_drops_its_record(
        api: ReplayApiServer, controller: tuple[PolicyController, Recorded]) -> None:
    ctl, recorded = controller
    api.put_pod(pod_obj("server-0", {"app": "server"}))
    api.put_policy("telco", "allow-clients", "macnet", ALLOW_CLIENTS)
    ctl.start()
    assert ctl.wait_synced(5)
    recorded.fail = True
    with pytest.raises(PolicyApplyError, match="telco/server-0 interface net1"):
        ctl.attached(record("server-0"))
    assert ctl.registry.all() == []


def test_status_metrics_and_the_status_screen_show_the_policy_section(
        api: ReplayApiServer, tmp_path: Path) -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from nodeagent.metrics import Metrics
    from nodeagent.status import StatusBoard
    from nodeagent.statusview import status_screen

    board = StatusBoard()
    metrics = Metrics(board)

    def report(section: dict) -> None:
        board.set_policy(section)
        metrics.policy_synced(section)

    api.put_pod(pod_obj("server-0", {"app": "server"}))
    api.put_policy("telco", "allow-clients", "macnet", ALLOW_CLIENTS)
    api.put_policy("telco", "broken", "macnet", {"podSelector": {"matchLabels": 5}})
    ctl = PolicyController(build_client(host=api.url, timeout=(1.0, 2.0)),
                           AttachmentRegistry(tmp_path), apply=Recorded(), report=report)
    try:
        ctl.start()
        assert ctl.wait_synced(5)
        ctl.attached(record("server-0"))
        api.put_pod(pod_obj("client-0", {"role": "client"}, {"telco/macnet": "10.77.0.9"},
                            node="worker-2"))
        assert wait_until(lambda: ctl.syncs >= 1 and ctl.wait_idle(0.1))
        snap = board.snapshot()
        assert snap["policy"]["attachments"]["c-server-0/net1"]["state"] == "policed"
        screen = status_screen(snap)
        assert "NETWORK POLICY" in screen and "telco/allow-clients" in screen
        assert "not enforced: telco/broken: spec.podSelector.matchLabels" in screen
        samples = {(s.name, frozenset(s.labels.items())): s.value for family in
                   text_string_to_metric_families(generate_latest(metrics.registry).decode())
                   for s in family.samples}
        assert samples[("nodeagent_policy_attachments", frozenset({("state", "policed")}))] == 1
        assert samples[("nodeagent_policy_invalid", frozenset())] == 1
        assert samples[("nodeagent_policy_sync_duration_seconds_count", frozenset())] >= 1
    finally:
        ctl.stop()


def test_an_add_whose_pod_cannot_be_read_fails_closed_then_gets_its_rules(
        api: ReplayApiServer, controller: tuple[PolicyController, Recorded]) -> None:
    ctl, recorded = controller
    api.put_policy("telco", "allow-clients", "macnet", ALLOW_CLIENTS)
    ctl.start()
    assert ctl.wait_synced(5)
    api.inject("GET", "/api/v1/namespaces/telco/pods/server-0", 503)
    ctl.attached(record("server-0"))  # the watch has not shown the pod, the API is away
    assert ctl.status()["attachments"]["c-server-0/net1"]["state"] == "deny-all"
    api.put_pod(pod_obj("server-0", {"app": "server"}))
    assert wait_until(lambda: ctl.status()["attachments"]["c-server-0/net1"]["state"]
                      == "policed")
    assert "chain output" not in recorded.scripts[-1][1]
