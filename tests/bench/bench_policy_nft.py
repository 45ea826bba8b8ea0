"""MultiNetworkPolicy engine benchmark: compile and apply one pod's rules, for many pods.

N pod namespaces (default 1,000) with one policed interface each; one policy allows TCP 80
from every pod of a network of 1,000 peers (IPv4 and IPv6) and egress to a /16 except a /24.
Measured, as the controller does it after a peer change: compile_pod for every pod, then
nft.apply of every pod's script, sequentially from one thread, for the first apply (a new
libnftables context per namespace) and for a re-apply (the kept context); then a peer pod
comes and every pod is recompiled and updated element-wise (update_script); then the policy
changes (a port more) and every pod's chains are redefined, its sets kept. Prints one JSON
object per line (ms in total and per pod).
"""

from __future__ import annotations

import argparse
import ipaddress
import secrets
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from nodeagent.policy import nft  # noqa: E402
from nodeagent.policy.compile import compile_pod, update_script  # noqa: E402
from nodeagent.policy.model import (  # noqa: E402
    POLICY_FOR,
    ClusterView,
    Peer,
    Target,
    parse_policy,
)
from tests.bench.common import emit  # noqa: E402

NET = "bench/net1"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--peers", type=int, default=1000)
    args = parser.parse_args()
    if not nft.available():
        emit(bench="policy_nft", skipped=True, reason="libnftables.so.1 is not installed")
        return 0
    tag = secrets.token_hex(2)
    names = [f"nab{tag}{i}" for i in range(args.pods)]
    policy = parse_policy({
        "metadata": {"namespace": "bench", "name": "p", "annotations": {POLICY_FOR: "net1"}},
        "spec": {"ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 80}]}],
                 "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16",
                                                 "except": ["10.0.7.0/24"]}}]}]}})
    peers = [Peer("bench", f"p{i}", {}, (ipaddress.ip_address(f"10.1.{i // 200}.{i % 200 + 1}"),
                                        ipaddress.ip_address(f"fd01::{i * 7 + 1:x}")))
             for i in range(args.peers)]
    view = ClusterView({"bench": {}}, {NET: peers})
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True)
            subprocess.run(["ip", "-n", name, "link", "add", "net1", "type", "dummy"],
                           check=False, capture_output=True)  # the rules name it; no need
        targets = {name: [Target("bench", name, {}, NET, "net1", ())] for name in names}
        start = time.perf_counter()
        scripts = {name: compile_pod(targets[name], [policy], view) for name in names}
        compiled = time.perf_counter() - start
        rules = next(iter(scripts.values()))
        emit(bench="policy_nft", step="compile", pods=args.pods, peers=args.peers,
             rule_count=rules.rule_count, script_bytes=len(rules.script),
             ms_total=round(compiled * 1000, 1), ms_per_pod=round(compiled * 1000 / args.pods, 3))
        for step in ("apply_first", "apply_again"):
            start = time.perf_counter()
            for name in names:
                nft.apply(name, scripts[name].script)
            took = time.perf_counter() - start
            emit(bench="policy_nft", step=step, pods=args.pods,
                 ms_total=round(took * 1000, 1), ms_per_pod=round(took * 1000 / args.pods, 3))
        # A peer pod comes: every pod's rules are recompiled, and updated element-wise.
        newcomer = Peer("bench", "new", {}, (ipaddress.ip_address("10.200.0.1"),
                                             ipaddress.ip_address("fd02::1")))
        grown = ClusterView({"bench": {}}, {NET: [*peers, newcomer]})
        start = time.perf_counter()
        for name in names:
            new = compile_pod(targets[name], [policy], grown)
            nft.apply(name, update_script(scripts[name], new))
        took = time.perf_counter() - start
        emit(bench="policy_nft", step="peer_added_compile_and_update", pods=args.pods,
             ms_total=round(took * 1000, 1), ms_per_pod=round(took * 1000 / args.pods, 3))
        # The policy changes (a port more): chains redefined, the 1,000-peer sets kept.
        installed = {name: compile_pod(targets[name], [policy], grown) for name in names}
        wider = parse_policy({
            "metadata": {"namespace": "bench", "name": "p", "annotations": {POLICY_FOR: "net1"}},
            "spec": {"ingress": [{"from": [{"podSelector": {}}],
                                  "ports": [{"port": 80}, {"port": 443}]}],
                     "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16",
                                                     "except": ["10.0.7.0/24"]}}]}]}})
        start = time.perf_counter()
        for name in names:
            new = compile_pod(targets[name], [wider], grown)
            nft.apply(name, update_script(installed[name], new))
        took = time.perf_counter() - start
        emit(bench="policy_nft", step="policy_changed_compile_and_update", pods=args.pods,
             ms_total=round(took * 1000, 1), ms_per_pod=round(took * 1000 / args.pods, 3))
    finally:
        for name in names:
            nft.release(name)
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
