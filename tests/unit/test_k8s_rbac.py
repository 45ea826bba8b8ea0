"""The deployment's ClusterRole grants exactly the API calls the agent makes: each one is
allowed, and nothing else is."""

from __future__ import annotations

from pathlib import Path

import yaml

from nodeagent.ipam.whereabouts import WhereaboutsWatch
from nodeagent.k8s.client import Backoff, build_client
from nodeagent.k8s.events import NodeEventRecorder
from nodeagent.k8s.nodestate import NodeStatePublisher
from nodeagent.k8s.pods import NodePods
from nodeagent.policy.attachments import AttachmentRecord, AttachmentRegistry
from nodeagent.policy.sync import PolicyController
from nodeagent.status import StatusBoard
from tests.k8s_replay import ReplayApiServer
from tests.waiting import wait_until

CLUSTERROLE = Path(__file__).resolve().parents[2] / "deploy/helm/nodeagent/templates/" \
    "clusterrole.yaml"
NODE = "worker-1"
CR = f"/apis/nodeagent.io/v1alpha1/nodenetworkstates/{NODE}"


def granted() -> set[tuple[str, str, str]]:
    """(verb, group, resource[/subresource]) the ClusterRole template grants."""
    text = "\n".join(line for line in CLUSTERROLE.read_text().splitlines() if "{{" not in line)
    rules = yaml.safe_load(text)["rules"]
    return {(verb, group, resource) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_the_clusterrole_grants_exactly_the_calls_made(tmp_path: Path) -> None:
    with ReplayApiServer() as api:
        api.add_node(NODE)
        api.add_pod("telco", "cnf-0")
        client = build_client(host=api.url, timeout=(1.0, 2.0))
        board = StatusBoard()
        publisher = NodeStatePublisher(client, NODE, board, lambda: None, min_interval=0,
                                       backoff=Backoff(0.01, 0.05)).start()
        recorder = NodeEventRecorder(client, NODE)
        recorder.attach(board)
        recorder.start()
        pods = NodePods(client, NODE).start()
        whereabouts = WhereaboutsWatch(client).start()
        policy = PolicyController(client, AttachmentRegistry(tmp_path),
                                  apply=lambda *_: None).start()
        try:
            assert policy.wait_synced(10)
            api.put_policy("telco", "p", "macnet", {"podSelector": {}})
            assert wait_until(lambda: policy.status()["policyErrors"] == {} and
                              "macnet" in policy._policed_names)
            # an ADD for a pod the watch has not shown yet: the pod is read once
            policy.attached(AttachmentRecord("c1", "net1", "telco", "not-seen-yet",
                                             "/proc/self/ns/net", "macnet", "macvlan"))
            api.inject("PUT", CR + "/status", 409)  # the conflict path re-reads
            board.error("provision", "boom")
            board.error("provision", "boom")  # aggregated: a patch
            assert pods.wait_synced(10)
            assert whereabouts.wait_synced(10)
            assert api.wait_for(lambda calls: sum(
                c.method == "PATCH" for c in calls) == 1 and sum(
                c.path == CR + "/status" for c in calls) >= 2 and sum(
                bool(c.query.get("watch")) for c in calls) == 7)
        finally:
            policy.stop()
            whereabouts.stop()
            pods.stop()
            recorder.stop()
            publisher.stop()
        used = {(verb, group, f"{res}/{sub}" if sub else res)
                for verb, group, res, sub in api.recorded_calls()}
    assert used == {
        ("get", "", "nodes"),
        ("get", "nodeagent.io", "nodenetworkstates"),
        ("create", "nodeagent.io", "nodenetworkstates"),
        ("update", "nodeagent.io", "nodenetworkstates/status"),
        ("create", "", "events"),
        ("patch", "", "events"),
        ("list", "", "pods"),
        ("watch", "", "pods"),
        *((verb, "whereabouts.cni.cncf.io", resource) for verb in ("list", "watch")
          for resource in ("ippools", "overlappingrangeipreservations")),
        *((verb, "k8s.cni.cncf.io", resource) for verb in ("list", "watch")
          for resource in ("multi-networkpolicies", "network-attachment-definitions")),
        ("list", "", "namespaces"),
        ("watch", "", "namespaces"),
        ("get", "", "pods"),
    }
    assert used == granted(), "the ClusterRole must grant exactly these, no more"
