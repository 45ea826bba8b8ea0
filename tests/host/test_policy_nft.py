"""Applying nft scripts in a namespace through libnftables: atomic, and the kept per-namespace
contexts follow the namespace (never the path) and are released."""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from pyroute2 import netns as pr_netns

from nodeagent.policy import nft
from nodeagent.policy.compile import PodRules, compile_pod, deny_all, update_script
from nodeagent.policy.model import POLICY_FOR, ClusterView, Peer, Target, parse_policy
from tests.host.conftest import unique


def _ips(*texts: str) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_address(t) for t in texts)

pytestmark = pytest.mark.skipif(not nft.available(), reason="libnftables.so.1 is not installed")

TABLE = ("add table inet nodeagent\ndelete table inet nodeagent\n"
         "table inet nodeagent {\n  chain c {\n    drop\n  }\n}\n")


def test_apply_show_clear_in_the_namespace_only(test_netns: str) -> None:
    nft.apply(test_netns, TABLE)
    try:
        assert "chain c" in (nft.show(test_netns) or "")
        assert nft.show(None) is None or "chain c" not in (nft.show(None) or "")
    finally:
        nft.clear(test_netns)
    assert nft.show(test_netns) is None
    nft.clear(test_netns)  # no table: still fine


def test_an_error_names_nfts_complaint_and_changes_nothing(test_netns: str) -> None:
    nft.apply(test_netns, TABLE)
    try:
        with pytest.raises(nft.NftError, match=r"syntax error|Could not process"):
            nft.apply(test_netns, "add table inet nodeagent\ndelete table inet nodeagent\n"
                                  "add chain inet nodeagent d\nadd rule inet nodeagent d frob\n")
        assert "chain c" in (nft.show(test_netns) or "")
        nft.apply(test_netns, TABLE)  # the kept context still works after an error
    finally:
        nft.clear(test_netns)


def test_a_namespace_recreated_under_the_same_name_gets_a_new_context() -> None:
    name = unique("nf")
    pr_netns.create(name)
    try:
        nft.apply(name, TABLE)
        pr_netns.remove(name)
        pr_netns.create(name)
        # The old context's socket still lives in the old namespace: it must not be used.
        assert nft.show(name) is None
    finally:
        nft.release(name)
        pr_netns.remove(name)


def test_release_and_prune_drop_kept_contexts(test_netns: str) -> None:
    before = nft.kept()
    nft.apply(test_netns, "add table inet nodeagent\n")
    assert nft.kept() == before + 1
    nft.release(test_netns)
    assert nft.kept() == before
    other = unique("nf")
    pr_netns.create(other)
    nft.apply(other, "add table inet nodeagent\n")
    pr_netns.remove(other)
    assert not os.path.exists(f"/run/netns/{other}")
    assert nft.prune() >= 1
    assert nft.kept() == before


def _listing(ns: str) -> dict[str, Any]:
    """The agent's table as the kernel has it (nft -j), without handles and with set elements
    sorted: equal for equal tables, whatever order they were built in."""
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet",
                          "nodeagent"], capture_output=True, text=True, check=True).stdout
    objects: dict[str, Any] = {}
    for item in json.loads(out)["nftables"]:
        for kind, body in item.items():
            if kind in ("metainfo", "table"):
                continue
            body = {k: v for k, v in body.items() if k != "handle"}
            if kind == "set":
                body["elem"] = sorted(json.dumps(e, sort_keys=True) for e in body.get("elem", ()))
                objects[f"set {body['name']}"] = body
            elif kind == "chain":
                objects.setdefault(f"chain {body['name']}", {}).update(body)
            elif kind == "rule":
                rules = objects.setdefault(f"rules {body['chain']}", [])
                rules.append(json.dumps(body["expr"], sort_keys=True))
    return objects


def test_updates_leave_the_table_a_fresh_apply_would_make() -> None:
    """Every transition through update_script ends in the very table wanted.script makes."""
    net = "team/net1"
    target = Target("team", "p", {"app": "db"}, net, "net1", ())
    api = Peer("team", "a", {"app": "api"}, _ips("10.0.0.20", "fd00::20"))
    more = Peer("team", "c", {"app": "api"}, _ips("10.0.0.21", "fd00::21"))
    small = ClusterView({"team": {}}, {net: [api]})
    grown = ClusterView({"team": {}}, {net: [api, more]})
    peers = {"from": [{"podSelector": {"matchLabels": {"app": "api"}}}]}

    def pod(view: ClusterView, *specs: dict[str, Any]) -> PodRules:
        policies = [parse_policy({"metadata": {"namespace": "team", "name": f"p{i}",
                                               "annotations": {POLICY_FOR: "net1"}},
                                  "spec": spec}) for i, spec in enumerate(specs)]
        return compile_pod([target], policies, view)

    block = {"from": [{"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.64/26"]}}]}
    wider = {"from": [{"ipBlock": {"cidr": "192.0.2.0/23"}}]}
    states = [
        pod(small, {"ingress": [peers]}),
        pod(grown, {"ingress": [peers]}),                                   # elements added
        pod(grown, {"ingress": [{**peers, "ports": [{"port": 80}]}]}),      # a port
        pod(grown, {"ingress": [{**peers, "ports": [{"port": 80}]}, block]}),  # interval set
        pod(grown, {"ingress": [{**peers, "ports": [{"port": 80}]}, wider]}),  # it changes
        pod(small, {"ingress": [peers, wider], "egress": [peers]}),        # output chain comes
        pod(small, {"ingress": [peers]}),                                   # and goes
        deny_all(["net1"]),
        pod(grown, {"ingress": [peers]}),
        pod(grown),                                                          # nothing policed
        pod(small, {"ingress": [peers]}),
    ]
    updated, fresh = unique("nf"), unique("nf")
    for ns in (updated, fresh):
        pr_netns.create(ns)
    try:
        nft.apply(updated, states[0].script)
        for before, after in itertools.pairwise(states):
            script = update_script(before, after)
            if before.blocks and after.blocks:
                assert "delete table" not in script
            nft.apply(updated, script)
            nft.apply(fresh, after.script)
            if after.blocks:
                assert _listing(updated) == _listing(fresh), script
            else:
                assert nft.show(updated) is None
    finally:
        for ns in (updated, fresh):
            nft.release(ns)
            pr_netns.remove(ns)


_NEAR_THE_CEILING = r"""
import os, sys
from nodeagent.policy import nft
# Descriptors taken up to just under the ceiling, as a node with ~1,000 policed pods does.
while nft._lowest_free_fd() < nft.FD_CEILING - 10:
    os.open("/dev/null", os.O_RDONLY)
for name in sys.argv[1:]:
    nft.apply(name, "add table inet nodeagent\ndelete table inet nodeagent\n"
                    "table inet nodeagent {\n  chain c {\n    drop\n  }\n}\n")
    assert "chain c" in (nft.show(name) or "")
print("kept", nft.kept())
"""


def test_contexts_never_get_a_descriptor_libnftables_cannot_select() -> None:
    # libnftables 1.0.x select()s on its socket: descriptor 1024 or above aborts the process.
    names = [unique("fd") for _ in range(40)]
    for name in names:
        pr_netns.create(name)
    try:
        done = subprocess.run([sys.executable, "-c", _NEAR_THE_CEILING, *names],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-500:]
        assert int(done.stdout.split()[-1]) < len(names)  # old contexts were closed for room
    finally:
        for name in names:
            pr_netns.remove(name)


def test_kept_contexts_do_not_keep_a_copy_of_the_ruleset() -> None:
    # libnftables caches the ruleset in the context (~0.5 MB per table): dropped after a run.
    names = [unique("mem") for _ in range(40)]
    for name in names:
        pr_netns.create(name)
    try:
        nft.apply(names[0], TABLE)
        rss = _rss()
        for name in names:
            nft.apply(name, TABLE)
            nft.apply(name, TABLE.replace("drop", "accept"))
        assert _rss() - rss < 10 << 20  # the contexts (~130 kB each), not their caches
        assert all("accept" in (nft.show(name) or "") for name in names)
    finally:
        for name in names:
            nft.release(name)
            pr_netns.remove(name)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
