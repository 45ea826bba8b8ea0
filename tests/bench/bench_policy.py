"""MultiNetworkPolicy convergence on a node with many pods.

1,000 pod network namespaces (``--pods``), one veth end each as ``net1`` with an address,
attached through the policy controller's CNI hook, and the replay API server holding the pods,
a NetworkAttachmentDefinition and the policies. Prints one JSON object per line:
- the CNI hook's cost per ADD on a network no policy names (target: ~ a dict lookup);
- a policy created, then changed, reaching every affected pod (time from the API write until
  every pod's table holds it; target < 1 s);
- a change of one local pod (its labels), and of one remote peer that every pod's rules name.
With the first two: the libnftables contexts kept (``nft_contexts``), how many were closed
for descriptors so far (``nft_evictions``: beyond ~980 pods) and the process's RSS.

Run as root: ``.venv/bin/python -m tests.bench.bench_policy [--pods N] [--workers N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import tempfile
import time
from pathlib import Path

from nodeagent.k8s.client import build_client
from nodeagent.policy import nft
from nodeagent.policy.attachments import AttachmentRecord, AttachmentRegistry
from nodeagent.policy.sync import PolicyController
from tests.bench.common import emit
from tests.k8s_replay import ReplayApiServer, fixture
from tests.waiting import wait_until

SPEC = fixture("multus.json")["multi-networkpolicy"]["spec"]


def ip_of(n: int) -> str:
    return f"10.{80 + n // 65536}.{n // 256 % 256}.{n % 256 or 1}"


def make_namespaces(prefix: str, count: int) -> list[str]:
    """``count`` namespaces with a veth end named net1 each, in two ``ip -batch`` runs."""
    names = [f"{prefix}{n}" for n in range(count)]
    subprocess.run(["ip", "-batch", "-"], input="".join(f"netns add {n}\n" for n in names),
                   text=True, check=True)
    links = "".join(f"link add {prefix}h{i} type veth peer name net1 netns {n}\n"
                    f"link set {prefix}h{i} up\n" for i, n in enumerate(names))
    subprocess.run(["ip", "-batch", "-"], input=links, text=True, check=True)
    return names


def remove_namespaces(names: list[str]) -> None:
    subprocess.run(["ip", "-batch", "-"], input="".join(f"netns del {n}\n" for n in names),
                   text=True, check=False)


def pod(name: str, labels: dict[str, str], ip: str, node: str = "worker-1") -> dict:
    obj = fixture("pod.json")
    obj["metadata"].update(namespace="telco", name=name, labels=labels, annotations={
        "k8s.v1.cni.cncf.io/networks": "macnet",
        "k8s.v1.cni.cncf.io/network-status": json.dumps(
            [{"name": "telco/macnet", "interface": "net1", "ips": [ip]}])})
    obj["spec"]["nodeName"] = node
    return obj


def rss_mb() -> int:
    """The process's resident memory (the agent's, with its kept libnftables contexts)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20


def policed_by(ctl: PolicyController, key: str, digests: dict[str, str | None]) -> int:
    """Pods whose table changed since ``digests`` and names policy ``key``."""
    with ctl._lock:
        states = dict(ctl._states)
    return sum(1 for pod, s in states.items()
               if s.digest != digests.get(pod) and key in s.applied.get("net1", ()))


def digests(ctl: PolicyController) -> dict[str, str | None]:
    with ctl._lock:
        return {k: s.digest for k, s in ctl._states.items()}


def converge(ctl: PolicyController, count: int, key: str, change) -> float:
    before = digests(ctl)
    started = time.perf_counter()
    change()
    ok = wait_until(lambda: policed_by(ctl, key, before) >= count, timeout=120, interval=0.002)
    elapsed = time.perf_counter() - started
    if not ok:
        raise SystemExit(f"did not converge: {policed_by(ctl, key, before)}/{count}")
    ctl.wait_idle(30)  # so that last_sync is this change's batch
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=None,
                        help="apply threads (default: the controller's, one per CPU up to 8)")
    parser.add_argument("--state-base", default="/var/lib", help="where the records go")
    args = parser.parse_args()
    prefix = f"nap{secrets.token_hex(2)}"
    t0 = time.perf_counter()
    names = make_namespaces(prefix, args.pods)
    emit(bench="policy_setup", pods=args.pods,
         namespaces_seconds=round(time.perf_counter() - t0, 3))
    # The records live where the agent keeps them (/var/lib): /tmp here is ~20x slower to
    # create files in, which would be measured instead of the hook.
    with ReplayApiServer() as api, tempfile.TemporaryDirectory(prefix="nabench",
                                                               dir=args.state_base) as tmp:
        api.add_namespace("telco")
        api.add_nad("telco", "macnet", {"cniVersion": "1.0.0", "name": "macnet",
                                        "type": "macvlan"})
        for n in range(args.pods):
            api.put_pod(pod(f"server-{n}", {"app": "server"}, ip_of(n)))
        client_ip = ip_of(args.pods + 10)
        api.put_pod(pod("client-0", {"role": "client"}, client_ip, node="worker-2"))
        ctl = PolicyController(build_client(host=api.url, timeout=(2.0, 10.0)),
                               AttachmentRegistry(Path(tmp)), workers=args.workers).start()
        try:
            assert ctl.wait_synced(30) and ctl.wait_idle(30)
            hook = []
            for n, ns in enumerate(names):
                rec = AttachmentRecord(f"cid{n:06d}", "net1", "telco", f"server-{n}",
                                       f"/run/netns/{ns}", "macnet", "veth", (ip_of(n),))
                started = time.perf_counter()
                ctl.attached(rec)
                hook.append(time.perf_counter() - started)
            hook.sort()
            emit(bench="policy_add_hook_unpoliced", adds=len(hook),
                 median_us=round(hook[len(hook) // 2] * 1e6, 1),
                 p99_us=round(hook[int(len(hook) * 0.99)] * 1e6, 1))
            assert ctl.wait_idle(30)

            seconds = converge(ctl, args.pods, "telco/allow-clients",
                               lambda: api.put_policy("telco", "allow-clients", "macnet", SPEC))
            emit(bench="policy_create", pods=args.pods, workers=ctl.workers,
                 converge_seconds=round(seconds, 3), target_seconds=1.0,
                 last_batch=ctl.last_sync, load_average=os.getloadavg()[0],
                 nft_contexts=nft.kept(), nft_evictions=nft.evictions(), rss_mb=rss_mb())

            changed = json.loads(json.dumps(SPEC))
            changed["ingress"][0]["ports"] = [{"protocol": "TCP", "port": 9090}]
            seconds = converge(ctl, args.pods, "telco/allow-clients",
                               lambda: api.put_policy("telco", "allow-clients", "macnet",
                                                      changed))
            emit(bench="policy_change", pods=args.pods, workers=ctl.workers,
                 converge_seconds=round(seconds, 3), target_seconds=1.0,
                 last_batch=ctl.last_sync, load_average=os.getloadavg()[0],
                 nft_contexts=nft.kept(), nft_evictions=nft.evictions())

            # A peer on another node moves to a new address: every pod's rules name it.
            moved = ip_of(args.pods + 20)
            seconds = converge(ctl, args.pods, "telco/allow-clients",
                               lambda: api.put_pod(pod("client-0", {"role": "client"}, moved,
                                                       node="worker-2")))
            emit(bench="policy_peer_change", pods=args.pods, workers=ctl.workers,
                 converge_seconds=round(seconds, 3), last_batch=ctl.last_sync)

            # One local pod stops being selected: only it is reprogrammed.
            assert ctl.wait_idle(30)
            before = digests(ctl)
            started = time.perf_counter()
            api.put_pod(pod("server-0", {"app": "retired"}, ip_of(0)))
            ok = wait_until(lambda: digests(ctl).get("telco/server-0") != before[
                "telco/server-0"], timeout=30, interval=0.001)
            elapsed = time.perf_counter() - started
            assert ok and ctl.wait_idle(30)
            emit(bench="policy_single_pod_change", pods=args.pods,
                 converge_seconds=round(elapsed, 4), last_batch=ctl.last_sync)
        finally:
            ctl.stop()
            remove_namespaces(names)


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("bench_policy needs root (network namespaces)")
    main()
