"""What the policy controller keeps of the cluster's objects, and which local pods a change
affects (pure functions, unit-tested without an API)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nodeagent.policy.attachments import (
    STATUS_ANNOTATION,
    AttachmentRecord,
    annotations,
    parse_network_status,
    pod_interfaces,
)
from nodeagent.policy.model import PROTOCOLS, Policy, PolicyError, parse_policy


@dataclass(frozen=True)
class PodView:
    """What the controller needs of one pod (any node)."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    interfaces: Mapping[str, str]  # ifname -> "ns/nad"
    ips: Mapping[str, tuple[str, ...]]  # "ns/nad" -> addresses (network-status)
    named_ports: Mapping[str, tuple[str, int]]
    node: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def pod_view(obj: Mapping[str, Any]) -> PodView:
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    ns = str(meta.get("namespace") or "")
    ips: dict[str, tuple[str, ...]] = {}
    for s in parse_network_status(annotations(obj).get(STATUS_ANNOTATION, ""), ns):
        if not s.default and s.ips:
            ips[s.network] = ips.get(s.network, ()) + s.ips
    ports: dict[str, tuple[str, int]] = {}
    for container in spec.get("containers") or ():
        for p in (container.get("ports") or ()) if isinstance(container, dict) else ():
            if isinstance(p, dict) and isinstance(p.get("name"), str) \
                    and isinstance(p.get("containerPort"), int):
                proto = PROTOCOLS.get(str(p.get("protocol") or "TCP"), "tcp")
                ports[p["name"]] = (proto, p["containerPort"])
    labels = meta.get("labels") or {}
    return PodView(ns, str(meta.get("name") or ""),
                   {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict)
                   else {}, pod_interfaces(obj), ips, ports, str(spec.get("nodeName") or ""))


@dataclass(frozen=True)
class PolicyEntry:
    """A MultiNetworkPolicy as parsed: the policy, or why it is not enforced."""

    key: str
    policy: Policy | None
    error: str = ""


def policy_entry(obj: Mapping[str, Any]) -> PolicyEntry:
    meta = obj.get("metadata") or {}
    key = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    try:
        return PolicyEntry(key, parse_policy(obj))
    except PolicyError as exc:
        return PolicyEntry(key, None, str(exc))
    except (ValueError, TypeError, AttributeError) as exc:  # never let one object stop us
        return PolicyEntry(key, None, f"unreadable: {exc}")


def namespace_labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


# -- pure decisions --------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalAttachment:
    """A local attachment with the NetworkAttachmentDefinition it was resolved to."""

    record: AttachmentRecord
    network: str  # "ns/nad", "" when unresolved

    @property
    def pod_key(self) -> str:
        return self.record.pod_key


def affected_by_policy(old: Policy | None, new: Policy | None,
                       local: Iterable[LocalAttachment]) -> set[str]:
    """Local pods a policy's change can affect: those in its namespace on a network it names
    (before or after the change)."""
    scopes = {(p.namespace, n) for p in (old, new) if p is not None for n in p.networks}
    return {a.pod_key for a in local if (a.record.namespace, a.network) in scopes}


def affected_by_pod(old: PodView | None, new: PodView | None,
                    local: Iterable[LocalAttachment], policed: Iterable[str]) -> set[str]:
    """Local pods a pod's change can affect: the pod itself when it is local (its labels
    choose its policies), and the local pods on the policed networks it is (or was) attached
    to, for which it is a peer. A change that touches neither labels, interfaces, addresses
    nor named ports affects nobody."""
    pod = new or old
    if pod is None:
        return set()
    if old is not None and new is not None and (old.labels, old.interfaces, old.ips,
                                                 old.named_ports) == (
            new.labels, new.interfaces, new.ips, new.named_ports):
        return set()
    networks = {n for p in (old, new) if p is not None
                for n in (*p.interfaces.values(), *p.ips)} & set(policed)
    return {a.pod_key for a in local if a.pod_key == pod.key or a.network in networks}
