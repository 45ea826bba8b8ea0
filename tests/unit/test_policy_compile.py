"""NetworkPolicy semantics of the compiled rule model: which new connections a pod's policed
interface lets through (asserted with :func:`allows` on the model the nft script enforces)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from nodeagent.policy.compile import (
    EGRESS,
    INGRESS,
    InterfaceProgram,
    PodRules,
    allows,
    compile_pod,
    deny_all,
    policies_for,
    update_script,
)
from nodeagent.policy.model import POLICY_FOR, ClusterView, Peer, Policy, Target, parse_policy

NET = "team/net1"


def ips(*texts: str) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_address(t) for t in texts)


TARGET = Target("team", "db-0", {"app": "db"}, NET, "net1", ips("10.0.0.10", "fd00::10"),
                named_ports={"pg": ("tcp", 5432), "dns": ("udp", 53)})
API = Peer("team", "api-0", {"app": "api"}, ips("10.0.0.20", "fd00::20"),
           {"web": ("tcp", 8080)})
OTHER = Peer("team", "web-0", {"app": "web"}, ips("10.0.0.21"), {"web": ("tcp", 9090)})
PROD = Peer("prod", "api-1", {"app": "api"}, ips("10.0.0.30"))
DEV = Peer("dev", "api-2", {"app": "api"}, ips("10.0.0.40"))
ELSEWHERE = Peer("team", "api-9", {"app": "api"}, ips("10.9.9.9"))  # on another network
VIEW = ClusterView({"team": {"env": "team"}, "prod": {"env": "prod"}, "dev": {"env": "dev"}},
                   {NET: [API, OTHER, PROD, DEV], "team/net2": [ELSEWHERE]})


def pol(spec: dict[str, Any], networks: str = "net1", name: str = "p",
        namespace: str = "team") -> Policy:
    return parse_policy({"metadata": {"namespace": namespace, "name": name,
                                      "annotations": {POLICY_FOR: networks}}, "spec": spec})


def program(*policies: Policy, target: Target = TARGET, view: ClusterView = VIEW
            ) -> InterfaceProgram:
    return compile_pod([target], policies, view).programs[target.ifname]


def ok_in(prog: InterfaceProgram, peer: str, proto: str = "tcp", port: int = 80) -> bool:
    return allows(prog, INGRESS, peer, proto, port)


def ok_out(prog: InterfaceProgram, peer: str, proto: str = "tcp", port: int = 80) -> bool:
    return allows(prog, EGRESS, peer, proto, port)


def test_no_policy_leaves_both_directions_open_and_installs_nothing() -> None:
    rules = compile_pod([TARGET], [], VIEW)
    assert rules.programs["net1"].ingress is None and rules.programs["net1"].egress is None
    assert rules.rule_count == 0 and rules.applied == {"net1": ()}
    assert "table inet nodeagent {" not in rules.script


def test_empty_ingress_list_denies_all_ingress_but_not_egress() -> None:
    prog = program(pol({"podSelector": {}}))
    assert prog.ingress == ()
    assert not ok_in(prog, "10.0.0.20") and not ok_in(prog, "fd00::20", "udp", 53)
    assert ok_out(prog, "192.0.2.1")


def test_egress_policy_type_alone_isolates_egress_only() -> None:
    prog = program(pol({"policyTypes": ["Egress"]}))
    assert not ok_out(prog, "10.0.0.20") and ok_in(prog, "10.0.0.20")


def test_empty_rule_allows_all_peers_and_ports() -> None:
    prog = program(pol({"ingress": [{}], "egress": [{}]}))
    assert ok_in(prog, "198.51.100.7", "sctp", 1) and ok_out(prog, "2001:db8::1", "udp", 9)


def test_pod_selector_peer_is_in_the_policys_namespace_on_the_same_network() -> None:
    prog = program(pol({"ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}]}]}))
    assert ok_in(prog, "10.0.0.20") and ok_in(prog, "fd00::20")
    assert not ok_in(prog, "10.0.0.21")  # label does not match
    assert not ok_in(prog, "10.0.0.30")  # same label, other namespace
    assert not ok_in(prog, "10.9.9.9")  # same pod kind, on another network


def test_namespace_selector_alone_selects_every_pod_of_those_namespaces() -> None:
    prog = program(pol({"ingress": [{"from": [
        {"namespaceSelector": {"matchExpressions": [
            {"key": "env", "operator": "In", "values": ["prod", "team"]}]}}]}]}))
    assert ok_in(prog, "10.0.0.30") and ok_in(prog, "10.0.0.20") and ok_in(prog, "10.0.0.21")
    assert not ok_in(prog, "10.0.0.40")


def test_namespace_and_pod_selector_in_one_peer_are_and_ed() -> None:
    both = program(pol({"ingress": [{"from": [{
        "namespaceSelector": {"matchLabels": {"env": "prod"}},
        "podSelector": {"matchLabels": {"app": "api"}}}]}]}))
    assert ok_in(both, "10.0.0.30")
    assert not ok_in(both, "10.0.0.20") and not ok_in(both, "10.0.0.40")
    separate = program(pol({"ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"env": "prod"}}},
        {"podSelector": {"matchLabels": {"app": "web"}}}]}]}))
    assert ok_in(separate, "10.0.0.30") and ok_in(separate, "10.0.0.21")
    assert not ok_in(separate, "10.0.0.20")


def test_ip_block_with_except_applies_to_any_address() -> None:
    prog = program(pol({"egress": [{"to": [
        {"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25", "192.0.2.4/32"]}},
        {"ipBlock": {"cidr": "2001:db8::/32", "except": ["2001:db8:1::/48"]}}]}]}))
    assert ok_out(prog, "192.0.2.1") and ok_out(prog, "192.0.2.127")
    assert not ok_out(prog, "192.0.2.4") and not ok_out(prog, "192.0.2.200")
    assert ok_out(prog, "2001:db8:2::1") and not ok_out(prog, "2001:db8:1::1")
    assert not ok_out(prog, "10.0.0.20")


def test_ports_protocols_and_end_port() -> None:
    prog = program(pol({"ingress": [{"ports": [
        {"port": 80}, {"protocol": "UDP", "port": 5000, "endPort": 5010},
        {"protocol": "SCTP", "port": 3868}, {"protocol": "SCTP"}]}]}, name="a"),
        pol({"ingress": [{"ports": [{"protocol": "UDP"}]}]}, name="b", networks="net9"))
    assert ok_in(prog, "10.0.0.20", "tcp", 80) and not ok_in(prog, "10.0.0.20", "tcp", 81)
    assert not ok_in(prog, "10.0.0.20", "udp", 80)
    assert ok_in(prog, "10.0.0.20", "udp", 5000) and ok_in(prog, "10.0.0.20", "udp", 5010)
    assert not ok_in(prog, "10.0.0.20", "udp", 5011) and not ok_in(prog, "10.0.0.20", "udp", 4999)
    assert ok_in(prog, "fd00::20", "sctp", 1)  # protocol without port: every port


def test_peers_and_ports_of_one_rule_are_and_ed_rules_are_or_ed() -> None:
    prog = program(pol({"ingress": [
        {"from": [{"podSelector": {"matchLabels": {"app": "api"}}}], "ports": [{"port": 5432}]},
        {"from": [{"ipBlock": {"cidr": "198.51.100.0/24"}}], "ports": [{"port": 22}]}]}))
    assert ok_in(prog, "10.0.0.20", "tcp", 5432) and not ok_in(prog, "10.0.0.20", "tcp", 22)
    assert ok_in(prog, "198.51.100.9", "tcp", 22)
    assert not ok_in(prog, "198.51.100.9", "tcp", 5432)


def test_several_policies_are_or_ed_and_isolation_needs_only_one() -> None:
    deny = pol({}, name="deny")
    allow = pol({"ingress": [{"from": [{"podSelector": {}}]}]}, name="allow")
    egress_only = pol({"policyTypes": ["Egress"], "egress": [{"ports": [{"port": 53,
                                                                          "protocol": "UDP"}]}]},
                      name="dns")
    prog = program(deny, allow, egress_only)
    assert prog.policies == ("team/allow", "team/deny", "team/dns")
    assert ok_in(prog, "10.0.0.21") and not ok_in(prog, "192.0.2.1")
    assert ok_out(prog, "192.0.2.1", "udp", 53) and not ok_out(prog, "192.0.2.1", "tcp", 53)


def test_named_ports_resolve_on_the_pod_that_receives() -> None:
    ingress = program(pol({"ingress": [{"ports": [{"port": "pg"}, {"port": "dns"},
                                                  {"port": "missing"}]}]}))
    assert ok_in(ingress, "10.0.0.20", "tcp", 5432)
    assert not ok_in(ingress, "10.0.0.20", "udp", 5432)
    assert not ok_in(ingress, "10.0.0.20", "udp", 53)  # protocol of "dns" is UDP, rule says TCP
    egress = program(pol({"policyTypes": ["Egress"], "egress": [{"ports": [{"port": "web"}]}]}))
    assert ok_out(egress, "10.0.0.20", "tcp", 8080) and not ok_out(egress, "10.0.0.20", "tcp", 9090)
    assert ok_out(egress, "10.0.0.21", "tcp", 9090) and not ok_out(egress, "10.0.0.21", "tcp", 8080)
    assert not ok_out(egress, "192.0.2.1", "tcp", 8080)


def test_ipv4_and_ipv6_go_to_separate_sets() -> None:
    rules = compile_pod([TARGET], [pol({"ingress": [{"from": [{"podSelector": {}}]}]})], VIEW)
    assert "type ipv4_addr" in rules.script and "type ipv6_addr" in rules.script
    assert ok_in(rules.programs["net1"], "fd00::20") and not ok_in(rules.programs["net1"],
                                                                    "fd00::99")


def test_a_thousand_peers_stay_one_set_and_a_few_rules() -> None:
    peers = [Peer("team", f"p{i}", {"app": "api"},
                  ips(f"10.1.{i // 250}.{i % 250 + 1}", f"fd01::{i + 1:x}")) for i in range(1000)]
    view = ClusterView({"team": {}}, {NET: peers})
    rules = compile_pod([TARGET], [pol({"ingress": [{"from": [{"podSelector": {}}],
                                                     "ports": [{"port": 80}]}]})], view)
    assert rules.rule_count <= 6
    assert ok_in(rules.programs["net1"], "10.1.3.250") and ok_in(rules.programs["net1"],
                                                                  "fd01::3e8")


@pytest.mark.parametrize(("networks", "target_network", "selected"), [
    ("net1", "team/net1", True),
    ("team/net1", "team/net1", True),
    ("other/net1", "team/net1", False),
    ("net1", "other/net1", False),
    ("net2,net1", "team/net1", True),
])
def test_policy_for_matching(networks: str, target_network: str, selected: bool) -> None:
    target = Target("team", "x", {}, target_network, "net1", ())
    assert bool(policies_for(target, [pol({}, networks=networks)])) is selected


def test_policies_select_pods_of_their_own_namespace_only() -> None:
    target = Target("team", "x", {"app": "db"}, "team/net1", "net1", ())
    assert not policies_for(target, [pol({}, networks="team/net1", namespace="prod")])
    assert not policies_for(target, [pol({"podSelector": {"matchLabels": {"app": "web"}}})])


def test_interfaces_are_policed_separately_and_other_networks_stay_open() -> None:
    net2 = Target("team", "db-0", {"app": "db"}, "team/net2", "net2", ips("10.2.0.10"))
    rules = compile_pod([TARGET, net2], [pol({})], VIEW)
    assert rules.programs["net1"].ingress == () and rules.programs["net2"].ingress is None
    assert rules.applied == {"net1": ("team/p",), "net2": ()}
    assert 'iifname vmap { "net1" : jump' in rules.script and '"net2"' not in rules.script


def test_dpdk_attachments_are_reported_unpoliced() -> None:
    dpdk = Target("team", "db-0", {"app": "db"}, NET, "net3", (), dpdk=True)
    rules = compile_pod([TARGET, dpdk], [pol({})], VIEW)
    assert rules.unpoliced == ("net3",)
    assert "net3" not in rules.applied and '"net3"' not in rules.script


def test_deny_all_isolates_both_directions() -> None:
    rules: PodRules = deny_all(["net1", "net2"])
    for name in ("net1", "net2"):
        assert not ok_in(rules.programs[name], "10.0.0.1") and not ok_out(rules.programs[name],
                                                                          "10.0.0.1")
    assert rules.rule_count > 0



def test_interface_names_that_cannot_be_quoted_are_refused() -> None:
    bad = Target("team", "db-0", {"app": "db"}, NET, 'x"y', ())
    with pytest.raises(ValueError, match="cannot be policed"):
        compile_pod([bad], [pol({})], VIEW)


def test_a_peer_change_is_an_element_update_and_a_policy_change_a_replacement() -> None:
    allow_api = pol({"ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}]}]})
    before = compile_pod([TARGET], [allow_api], VIEW)
    assert update_script(before, compile_pod([TARGET], [allow_api], VIEW)) == ""
    newcomer = Peer("team", "api-3", {"app": "api"}, ips("10.0.0.50", "fd00::50"))
    grown = ClusterView(VIEW.namespaces, {NET: [*VIEW.peers[NET], newcomer]})
    after = compile_pod([TARGET], [allow_api], grown)
    script = update_script(before, after)
    assert "10.0.0.50" in script and "fd00::50" in script
    assert all(line.startswith("add element inet nodeagent ") for line in script.splitlines())
    assert update_script(after, before).startswith("delete element inet nodeagent ")
    ports = pol({"ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}],
                              "ports": [{"port": 80}]}]})
    changed = compile_pod([TARGET], [ports], VIEW)
    script = update_script(before, changed)  # chains redefined, the unchanged sets kept
    assert "delete table" not in script and "flush chain inet nodeagent input" in script
    assert "tcp dport { 80 }" in script and "10.0.0.20" not in script
    blocks = [pol({"ingress": [{"from": [{"ipBlock": {"cidr": c}}]}]}, name="b")
              for c in ("192.0.2.0/25", "192.0.2.0/24")]
    wide, wider = (compile_pod([TARGET], [allow_api, b], VIEW) for b in blocks)
    script = update_script(wide, wider)  # interval sets are sent whole
    assert "delete set inet nodeagent in_0_0_v4" in script and "192.0.2.0/24" in script
    assert update_script(before, compile_pod([TARGET], [], VIEW)).startswith("add table")
