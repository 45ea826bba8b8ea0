"""Is this node's agent going away for good, or only being replaced?

The DaemonSet's pod is stopped on a rolling update, a restart or a node reboot, and a new agent
follows: the CNI shim must stay (requests get "try again later" meanwhile). It is stopped for
good when its DaemonSet is deleted (``helm uninstall``) or stops selecting the node: then the
plugins the shim replaced must come back. The pod's preStop hook asks here.
"""

from __future__ import annotations

from typing import Any

from nodeagent.k8s.client import ApiError, KubeClient


def removal_reason(client: KubeClient, namespace: str, pod: str, node: str) -> str | None:
    """Why the agent will not come back on ``node`` (a sentence), or None when a replacement
    will follow. Raises ApiError when the API cannot tell (down, overloaded): the caller keeps
    the shim, the safe side for an upgrade."""
    try:
        obj = client.request("GET", f"/api/v1/namespaces/{namespace}/pods/{pod}")
        owner = _controller(obj)
        if owner is None:
            return f"pod {namespace}/{pod} has no DaemonSet: nothing starts another one"
        name = str(owner.get("name", ""))
        try:
            ds = client.request("GET", f"/apis/apps/v1/namespaces/{namespace}/daemonsets/{name}")
        except ApiError as exc:
            if exc.code == 404:
                return f"DaemonSet {namespace}/{name} is deleted"
            raise
        meta = ds.get("metadata", {})
        if meta.get("uid") != owner.get("uid"):
            return f"DaemonSet {namespace}/{name} was deleted (another of that name exists)"
        if meta.get("deletionTimestamp"):
            return f"DaemonSet {namespace}/{name} is being deleted"
        selector = ds.get("spec", {}).get("template", {}).get("spec", {}).get("nodeSelector")
        if selector:
            labels = client.request("GET", f"/api/v1/nodes/{node}").get(
                "metadata", {}).get("labels") or {}
            missing = sorted(k for k, v in selector.items() if labels.get(k) != v)
            if missing:
                return (f"DaemonSet {namespace}/{name} no longer selects node {node}"
                        f" ({', '.join(missing)})")
    except ApiError as exc:
        # `helm uninstall` deletes the ServiceAccount and the RBAC objects right after the
        # DaemonSet, before its pods finish: refused credentials mean the release is gone.
        if exc.code in (401, 403):
            return f"the agent's API access is gone with its release ({exc})"
        raise
    return None


def _controller(pod: dict[str, Any]) -> dict[str, Any] | None:
    for ref in pod.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == "DaemonSet" and ref.get("controller"):
            return dict(ref)
    return None
