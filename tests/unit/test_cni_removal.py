"""The preStop hook's question, "removed for good or replaced?", against a recorded API server:
the shim goes only when the agent will not come back to the node."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nodeagent.k8s.client import ApiError, build_client
from nodeagent.k8s.removal import removal_reason
from tests.k8s_replay import ReplayApiServer, parse_path

NS, POD, NODE, DS = "nodeagent", "nodeagent-x7k2p", "worker-1", "nodeagent"
ROLE = Path(__file__).resolve().parents[2] / "deploy/helm/nodeagent/templates/role.yaml"
SELECTOR = {"feature.node.kubernetes.io/network-sriov.capable": "true"}


def cluster(api: ReplayApiServer, *, selector: dict[str, str] | None = None,
            labelled: bool = True) -> dict:
    node = api.add_node(NODE)
    if labelled:
        node["metadata"]["labels"].update(SELECTOR)
        api.put(parse_path(f"/api/v1/nodes/{NODE}"), node)
    ds = api.put(parse_path(f"/apis/apps/v1/namespaces/{NS}/daemonsets/{DS}"), {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": DS, "namespace": NS},
        "spec": {"template": {"spec": {"nodeSelector": selector or SELECTOR}}}})
    pod = api.add_pod(NS, POD, NODE)
    pod["metadata"]["ownerReferences"] = [{
        "apiVersion": "apps/v1", "kind": "DaemonSet", "name": DS,
        "uid": ds["metadata"]["uid"], "controller": True}]
    api.put(parse_path(f"/api/v1/namespaces/{NS}/pods/{POD}"), pod)
    return ds


def ask(api: ReplayApiServer) -> str | None:
    return removal_reason(build_client(host=api.url, timeout=(1.0, 2.0)), NS, POD, NODE)


def test_a_rolling_update_or_restart_keeps_the_shim() -> None:
    with ReplayApiServer() as api:
        cluster(api)
        assert ask(api) is None
        used = {(verb, group, res) for verb, group, res, _ in api.recorded_calls()}
    # Exactly what the chart's Role grants (and `nodes get`, from the ClusterRole).
    rules = yaml.safe_load("\n".join(
        line for line in ROLE.read_text().split("---")[0].splitlines() if "{{" not in line))
    granted = {(verb, group, res) for rule in rules["rules"] for group in rule["apiGroups"]
               for res in rule["resources"] for verb in rule["verbs"]}
    assert used == granted | {("get", "", "nodes")}


def test_a_deleted_daemonset_removes_it() -> None:
    with ReplayApiServer() as api:
        cluster(api)
        api.delete(parse_path(f"/apis/apps/v1/namespaces/{NS}/daemonsets/{DS}"))
        assert ask(api) == f"DaemonSet {NS}/{DS} is deleted"


def test_a_daemonset_being_deleted_or_recreated_removes_it() -> None:
    with ReplayApiServer() as api:
        ds = cluster(api)
        ds["metadata"]["deletionTimestamp"] = "2026-12-07T01:00:00Z"
        api.put(parse_path(f"/apis/apps/v1/namespaces/{NS}/daemonsets/{DS}"), ds)
        assert ask(api) == f"DaemonSet {NS}/{DS} is being deleted"
        del ds["metadata"]["deletionTimestamp"]
        ds["metadata"]["uid"] = "another"
        api.put(parse_path(f"/apis/apps/v1/namespaces/{NS}/daemonsets/{DS}"), ds)
        assert "another of that name exists" in (ask(api) or "")


def test_a_node_no_longer_selected_removes_it() -> None:
    with ReplayApiServer() as api:
        cluster(api, labelled=False)
        reason = ask(api)
        assert reason is not None and "no longer selects node worker-1" in reason
        assert "network-sriov.capable" in reason


def refused(code: int) -> dict:
    reason = {401: "Unauthorized", 403: "Forbidden"}[code]
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "reason": reason, "message": reason}


def test_credentials_refused_mean_the_release_is_gone() -> None:
    """helm uninstall deletes the ServiceAccount and RBAC right after the DaemonSet."""
    with ReplayApiServer() as api:
        cluster(api)
        api.inject("GET", f"/api/v1/namespaces/{NS}/pods/{POD}", 401, refused(401))
        assert "API access is gone" in (ask(api) or "")
        api.inject("GET", f"/apis/apps/v1/namespaces/{NS}/daemonsets/{DS}", 403, refused(403))
        assert "API access is gone" in (ask(api) or "")


def test_an_unreachable_api_keeps_the_shim() -> None:
    with ReplayApiServer() as api:
        cluster(api)
        api.inject("GET", f"/apis/apps/v1/namespaces/{NS}/daemonsets/{DS}", 503)
        with pytest.raises(ApiError):
            ask(api)
        api.down()
        with pytest.raises(ApiError):
            ask(api)
