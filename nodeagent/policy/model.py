"""MultiNetworkPolicy objects (``k8s.cni.cncf.io/v1beta1``) and what the agent knows of pods.

A MultiNetworkPolicy has the spec of a Kubernetes NetworkPolicy; the annotation
``k8s.v1.cni.cncf.io/policy-for`` names the NetworkAttachmentDefinitions it polices
(comma-separated, ``ns/name``, or ``name`` for one in the policy's namespace). The parser
checks what the Kubernetes API server checks for a NetworkPolicy, so a policy is refused here
with the path of the offending field (``spec.ingress[0].from[1].ipBlock.except[0]``) rather
than half-enforced.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nodeagent.fields import Fields, IPAddress, IPNetwork, join
from nodeagent.policy.selectors import EVERYTHING, Selector, parse_selector

POLICY_FOR = "k8s.v1.cni.cncf.io/policy-for"
INGRESS = "Ingress"
EGRESS = "Egress"
#: Protocols of NetworkPolicy ports, as the API spells them -> nftables' names.
PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
#: A Kubernetes object name (DNS-1123 subdomain) and a namespace name (DNS-1123 label).
OBJECT_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
NAMESPACE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
#: A named port (IANA_SVC_NAME): at most 15 characters, a letter among them, no "--".
PORT_NAME = re.compile(r"(?!.*--)[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?")


class PolicyError(ValueError):
    """A MultiNetworkPolicy the agent cannot enforce; the message names the field's path."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path} {problem}" if path else problem)
        self.path = path
        self.problem = problem


_fields = Fields(PolicyError)


@dataclass(frozen=True)
class Port:
    """One ``ports`` entry. ``port`` None: every port of the protocol; an int with ``end_port``:
    the inclusive range; a str: a named port, resolved against the pods' container ports."""

    protocol: str  # tcp, udp, sctp
    port: int | str | None = None
    end_port: int | None = None


@dataclass(frozen=True)
class IPBlock:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class PeerRule:
    """One ``from``/``to`` entry: either ``ip_block``, or selectors. A None namespace selector
    means the policy's namespace; a None pod selector means every pod of those namespaces."""

    pod_selector: Selector | None = None
    namespace_selector: Selector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class Rule:
    """One ingress/egress rule. No peers: every address; no ports: every port and protocol."""

    peers: tuple[PeerRule, ...] = ()
    ports: tuple[Port, ...] = ()


@dataclass(frozen=True)
class Policy:
    namespace: str
    name: str
    networks: frozenset[str]  # "ns/nad"
    pod_selector: Selector = EVERYTHING
    policy_types: frozenset[str] = frozenset({INGRESS})
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Peer:
    """A pod attached to a network (on any node): its IPs on that network. ``named_ports``:
    its container ports by name -> (protocol as tcp/udp/sctp, number), for named ports."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    ips: tuple[IPAddress, ...]
    named_ports: Mapping[str, tuple[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """One attachment of a pod on this node that the agent polices: interface ``ifname``
    inside the pod, on NetworkAttachmentDefinition ``network`` ("ns/nad"). ``dpdk``: the
    interface is a VF bound to a userspace driver; the kernel never sees its packets, so it
    cannot be policed (reported as unpoliced)."""

    namespace: str
    pod: str
    labels: Mapping[str, str]
    network: str
    ifname: str
    ips: tuple[IPAddress, ...]
    dpdk: bool = False
    named_ports: Mapping[str, tuple[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterView:
    """What the controller knows of the cluster when compiling."""

    namespaces: Mapping[str, Mapping[str, str]]  # namespace -> labels
    peers: Mapping[str, Sequence[Peer]]  # network "ns/nad" -> pods attached to it


def network_key(ref: str, namespace: str) -> str:
    """``ns/name`` for a policy-for entry (a bare name is in the policy's namespace)."""
    return ref if "/" in ref else f"{namespace}/{ref}"


def parse_policy(obj: Mapping[str, Any]) -> Policy:
    """A MultiNetworkPolicy object as the API returns it (decoded JSON)."""
    f = _fields
    top = f.obj(obj, "")
    meta = f.obj(f.raw(top, "metadata"), "metadata")
    namespace = f.string(meta, "namespace", "metadata", pattern=NAMESPACE_NAME, max_len=63)
    name = f.string(meta, "name", "metadata", pattern=OBJECT_NAME, max_len=253)
    annotations = f.opt_obj(meta, "annotations", "metadata") or {}
    where = f"metadata.annotations[{POLICY_FOR}]"
    if annotations.get(POLICY_FOR) is None:
        f.fail(where, "is required: it names the NetworkAttachmentDefinitions the policy is for")
    text = f.text(annotations[POLICY_FOR], where)
    networks = set()
    for part in text.split(","):
        ref = part.strip()
        ns, _, nad = ref.rpartition("/")
        if not (NAMESPACE_NAME.fullmatch(ns or namespace) and OBJECT_NAME.fullmatch(nad)
                and len(nad) <= 253 and ref.count("/") <= 1):
            f.fail(where, f"names {ref!r}, not a NetworkAttachmentDefinition"
                          " (\"name\" or \"namespace/name\")")
        networks.add(network_key(ref, namespace))
    spec = f.obj(f.raw(top, "spec"), "spec")
    pod_selector = parse_selector(f.raw(spec, "podSelector", {}), "spec.podSelector", f)
    ingress = tuple(_rule(r, join("spec.ingress", i), "from")
                    for i, r in enumerate(f.items(spec, "ingress", "spec")))
    egress = tuple(_rule(r, join("spec.egress", i), "to")
                   for i, r in enumerate(f.items(spec, "egress", "spec")))
    if f.raw(spec, "policyTypes") is None:
        types = {INGRESS} | ({EGRESS} if egress else set())
    else:
        types = {f.choice_value(v, join("spec.policyTypes", i), {INGRESS: INGRESS,
                                                                  EGRESS: EGRESS})
                 for i, v in enumerate(f.items(spec, "policyTypes", "spec"))}
    return Policy(namespace, name, frozenset(networks), pod_selector, frozenset(types),
                  ingress, egress)


def _rule(value: Any, where: str, peers_key: str) -> Rule:
    f = _fields
    obj = f.obj(value, where)
    peers = tuple(_peer(p, join(join(where, peers_key), i))
                  for i, p in enumerate(f.items(obj, peers_key, where)))
    ports = tuple(_port(p, join(join(where, "ports"), i))
                  for i, p in enumerate(f.items(obj, "ports", where)))
    return Rule(peers, ports)


def _peer(value: Any, where: str) -> PeerRule:
    f = _fields
    obj = f.obj(value, where, allowed=("podSelector", "namespaceSelector", "ipBlock"))
    pods = f.raw(obj, "podSelector")
    spaces = f.raw(obj, "namespaceSelector")
    block = f.raw(obj, "ipBlock")
    if block is not None:
        if pods is not None or spaces is not None:
            f.fail(join(where, "ipBlock"), "may not be combined with podSelector or"
                                           " namespaceSelector")
        return PeerRule(ip_block=_ip_block(block, join(where, "ipBlock")))
    if pods is None and spaces is None:
        f.fail(where, "must have podSelector, namespaceSelector or ipBlock")
    return PeerRule(
        None if pods is None else parse_selector(pods, join(where, "podSelector"), f),
        None if spaces is None else parse_selector(spaces, join(where, "namespaceSelector"), f))


def _ip_block(value: Any, where: str) -> IPBlock:
    f = _fields
    obj = f.obj(value, where, allowed=("cidr", "except"))
    cidr = _network(f.raw(obj, "cidr"), join(where, "cidr"))
    excepts = []
    for i, item in enumerate(f.items(obj, "except", where)):
        path = join(join(where, "except"), i)
        net = _network(item, path)
        if net.version != cidr.version or not net.subnet_of(cidr) or net == cidr:  # type: ignore[arg-type]
            f.fail(path, f"{net} must be a strict subnet of cidr {cidr}")
        excepts.append(net)
    return IPBlock(cidr, tuple(excepts))


def _network(value: Any, path: str) -> IPNetwork:
    text = _fields.text(value, path, max_len=64)
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        _fields.fail(path, f"{text!r} is not a CIDR such as 10.0.0.0/8 or 2001:db8::/32")


def _port(value: Any, where: str) -> Port:
    f = _fields
    obj = f.obj(value, where, allowed=("protocol", "port", "endPort"))
    protocol = f.choice(obj, "protocol", where, PROTOCOLS, "tcp")
    raw = f.raw(obj, "port")
    path = join(where, "port")
    port: int | str | None
    if raw is None:
        port = None
    elif isinstance(raw, str):
        if raw.isdigit():
            port = f.int_value(int(raw), path, 1, 65535)
        else:
            port = f.text(raw, path, pattern=PORT_NAME, max_len=15)
            if not re.search("[a-z]", port):
                f.fail(path, f"{port!r} is not a port name (it needs a letter)")
    else:
        port = f.int_value(raw, path, 1, 65535)
    end = f.integer(obj, "endPort", where, 1, 65535)
    if end is not None:
        if not isinstance(port, int):
            f.fail(join(where, "endPort"), "needs a numeric port")
        if end < port:
            f.fail(join(where, "endPort"), f"must be at least port ({port}), got {end}")
    return Port(protocol, port, end)
