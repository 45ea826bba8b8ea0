"""Parsing MultiNetworkPolicy objects and label selectors: what is accepted, what is refused
(with the path of the offending field)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from nodeagent.fields import Fields
from nodeagent.policy.model import (
    EGRESS,
    INGRESS,
    POLICY_FOR,
    IPBlock,
    Policy,
    PolicyError,
    Port,
    parse_policy,
)
from nodeagent.policy.selectors import Selector, parse_selector


def policy(spec: dict[str, Any], networks: str = "net1", **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "k8s.cni.cncf.io/v1beta1", "kind": "MultiNetworkPolicy",
            "metadata": {"namespace": "team", "name": "p", "resourceVersion": "7",
                         "annotations": {POLICY_FOR: networks}, **meta},
            "spec": spec}


def refused(obj: dict[str, Any]) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        parse_policy(obj)
    return info.value


def test_a_full_policy_parses_into_its_typed_parts() -> None:
    p = parse_policy(policy({
        "podSelector": {"matchLabels": {"app": "db"}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}},
                               "podSelector": {"matchExpressions": [
                                   {"key": "role", "operator": "In", "values": ["api"]}]}},
                              {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                     "ports": [{"protocol": "SCTP", "port": 3868},
                               {"protocol": "UDP", "port": 2000, "endPort": 2100},
                               {"port": "metrics"}]}],
        "egress": [{}]}, networks="net1, other/net2"))
    assert isinstance(p, Policy) and p.key == "team/p"
    assert p.networks == {"team/net1", "other/net2"}
    assert p.policy_types == {INGRESS, EGRESS}
    peer = p.ingress[0].peers[0]
    assert peer.namespace_selector is not None and peer.namespace_selector.matches({"env": "prod"})
    assert peer.pod_selector is not None and not peer.pod_selector.matches({"role": "web"})
    assert p.ingress[0].peers[1].ip_block == IPBlock(ipaddress.ip_network("10.0.0.0/8"),
                                                     (ipaddress.ip_network("10.1.0.0/16"),))
    assert p.ingress[0].ports == (Port("sctp", 3868), Port("udp", 2000, 2100),
                                  Port("tcp", "metrics"))
    assert p.egress[0].peers == () and p.egress[0].ports == ()


@pytest.mark.parametrize(("spec", "types"), [
    ({}, {INGRESS}),
    ({"egress": [{}]}, {INGRESS, EGRESS}),
    ({"egress": []}, {INGRESS}),
    ({"policyTypes": ["Egress"]}, {EGRESS}),
    ({"policyTypes": []}, set()),
])
def test_policy_types_default_as_networkpolicy(spec: dict[str, Any], types: set[str]) -> None:
    assert parse_policy(policy(spec)).policy_types == types


def test_policy_for_bare_names_are_in_the_policys_namespace() -> None:
    assert parse_policy(policy({}, networks="a,b/c , d")).networks == {"team/a", "b/c", "team/d"}


@pytest.mark.parametrize(("obj", "path"), [
    (policy({}, networks=""), f"metadata.annotations[{POLICY_FOR}]"),
    (policy({}, networks="a/b/c"), f"metadata.annotations[{POLICY_FOR}]"),
    (policy({}, networks="Net_1"), f"metadata.annotations[{POLICY_FOR}]"),
    ({"metadata": {"name": "p", "namespace": "x"}, "spec": {}},
     f"metadata.annotations[{POLICY_FOR}]"),
    ({"metadata": {"name": "p", "annotations": {POLICY_FOR: "a"}}, "spec": {}},
     "metadata.namespace"),
    (policy({"policyTypes": ["ingress"]}), "spec.policyTypes[0]"),
    (policy({"podSelector": {"matchLabels": {"a": 1}}}), "spec.podSelector.matchLabels.a"),
    (policy({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Has"}]}}),
     "spec.podSelector.matchExpressions[0].operator"),
    (policy({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
     "spec.podSelector.matchExpressions[0].values"),
    (policy({"podSelector": {"matchExpressions": [
        {"key": "a", "operator": "Exists", "values": ["x"]}]}}),
     "spec.podSelector.matchExpressions[0].values"),
    (policy({"ingress": [{"from": [{}]}]}), "spec.ingress[0].from[0]"),
    (policy({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"},
                                    "podSelector": {}}]}]}), "spec.ingress[0].from[0].ipBlock"),
    (policy({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.300/8"}}]}]}),
     "spec.egress[0].to[0].ipBlock.cidr"),
    (policy({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8",
                                             "except": ["11.0.0.0/16"]}}]}]}),
     "spec.egress[0].to[0].ipBlock.except[0]"),
    (policy({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8",
                                             "except": ["fd00::/64"]}}]}]}),
     "spec.egress[0].to[0].ipBlock.except[0]"),
    (policy({"ingress": [{"ports": [{"protocol": "ICMP"}]}]}), "spec.ingress[0].ports[0].protocol"),
    (policy({"ingress": [{"ports": [{"port": 0}]}]}), "spec.ingress[0].ports[0].port"),
    (policy({"ingress": [{"ports": [{"port": 70000}]}]}), "spec.ingress[0].ports[0].port"),
    (policy({"ingress": [{"ports": [{"port": True}]}]}), "spec.ingress[0].ports[0].port"),
    (policy({"ingress": [{"ports": [{"port": "no_such"}]}]}), "spec.ingress[0].ports[0].port"),
    (policy({"ingress": [{"ports": [{"port": 100, "endPort": 99}]}]}),
     "spec.ingress[0].ports[0].endPort"),
    (policy({"ingress": [{"ports": [{"port": "http", "endPort": 99}]}]}),
     "spec.ingress[0].ports[0].endPort"),
    (policy({"ingress": [{"ports": [{"endPort": 99}]}]}), "spec.ingress[0].ports[0].endPort"),
    (policy({"ingress": {"from": []}}), "spec.ingress"),
])
def test_refused_policies_name_the_field(obj: dict[str, Any], path: str) -> None:
    assert refused(obj).path == path
    assert str(refused(obj)).startswith(path)


def selector(value: Any) -> Selector:
    return parse_selector(value, "sel", Fields(PolicyError))


@pytest.mark.parametrize(("sel", "labels", "expected"), [
    ({}, {}, True),
    ({}, {"a": "1"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
    ({"matchLabels": {"a": "1"}}, {}, False),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]},
     {"a": "2"}, True),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]},
     {"a": "1"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {}, False),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {}, True),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": "x"}, False),
    ({"matchLabels": {"a": "1"},
      "matchExpressions": [{"key": "b", "operator": "Exists"}]}, {"a": "1"}, False),
    ({"matchExpressions": [{"key": "example.com/tier", "operator": "In", "values": [""]}]},
     {"example.com/tier": ""}, True),
])
def test_label_selectors(sel: dict[str, Any], labels: dict[str, str], expected: bool) -> None:
    assert selector(sel).matches(labels) is expected
