"""CNI benchmark: macvlan + static IP, ours (installed shim + running agent) against Debian's
reference macvlan plugin with the identical configuration, alternating, in the same run.

Prints one JSON object per line: ADD and DEL medians and p99 with ratios (ours / reference),
then 50 concurrent ADDs (and DELs) of different pods for each. The agent is configured as the
daemon runs it: DEL replies before the kernel's link deletion ends (docs/teardown.md), so each
figure says ``"del_path": "deferred"``; our deletions left in flight are let finish (untimed)
before every reference round, so the reference never runs against our background work. Where
an ADD's time goes: docs/performance.md.
"""

from __future__ import annotations

import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pyroute2 import IPRoute, netns

from cni.install import install
from cni.shim import shim_path
from tests.bench.bench_churn import Agent
from tests.bench.common import emit
from tests.host.cni_helpers import REFERENCE_BIN, run_plugin

ROUNDS = 200
CONCURRENT = 50


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def config(master: str, i: int = 5) -> dict:
    return {"cniVersion": "1.0.0", "name": "benchnet", "type": "macvlan", "master": master,
            "mode": "bridge",
            "ipam": {"type": "static",
                     "addresses": [{"address": f"10.66.{i // 250}.{i % 250 + 2}/16",
                                    "gateway": "10.66.255.254"}]}}


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    outcome = fn()
    elapsed = (time.perf_counter() - start) * 1000
    assert outcome.status == 0, outcome.stdout + outcome.stderr  # type: ignore[attr-defined]
    return elapsed


def main() -> None:
    tag = secrets.token_hex(2)
    master, peer = f"nabm{tag}", f"nabp{tag}"
    pods = [f"nabpod{tag}{i}" for i in range(CONCURRENT)]
    with tempfile.TemporaryDirectory() as root, IPRoute() as ipr:
        ipr.link("add", ifname=master, kind="veth", peer=peer)
        for pod in pods:
            netns.create(pod)
        agent = Agent(Path(root))  # the daemon's configuration: CNI socket, IPAM, teardown
        try:
            for name in (master, peer):
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
            agent.__enter__()
            bindir = Path(root) / "bin"
            install(bindir, shim_path())
            env = {"NODEAGENT_SOCKET": agent.path}
            ours = bindir / "macvlan"
            ref = REFERENCE_BIN / "macvlan"
            sequential(agent, ours, ref, master, f"/run/netns/{pods[0]}", env)
            walls = {}
            for name, binary in (("ours", ours), ("reference", ref)):
                agent.quiet()
                walls[name] = concurrent(binary, master, pods, env)
            for verb in ("add", "del"):
                o, r = walls["ours"][verb], walls["reference"][verb]
                emit(bench=f"cni_macvlan_static_{CONCURRENT}_concurrent_{verb}",
                     ours=round(o, 1), peer=round(r, 1), unit="ms (wall, all pods)",
                     ratio=round(o / r, 3), **({"del_path": "deferred"} if verb == "del" else {}))
        finally:
            agent.__exit__(None, None, None)
            for pod in pods:
                netns.remove(pod)
            for index in ipr.link_lookup(ifname=master):
                ipr.link("del", index=index)


def sequential(agent: Agent, ours: Path, ref: Path, master: str, pod: str, env: dict) -> None:
    times: dict[str, dict[str, list[float]]] = {
        "ours": {"ADD": [], "DEL": []}, "reference": {"ADD": [], "DEL": []}}
    c = config(master)
    for _ in range(ROUNDS):
        for name, binary in (("ours", ours), ("reference", ref)):
            agent.quiet()  # our deferred deletion ends before the reference's round
            for verb in ("ADD", "DEL"):
                times[name][verb].append(timed(
                    lambda b=binary, v=verb: run_plugin(b, v, c, netns=pod, env=env)))
    for verb in ("ADD", "DEL"):
        o, r = times["ours"][verb], times["reference"][verb]
        emit(bench=f"cni_macvlan_static_{verb.lower()}_median", ours=round(statistics.median(o), 2),
             peer=round(statistics.median(r), 2), unit="ms",
             ratio=round(statistics.median(o) / statistics.median(r), 3),
             target_ratio=0.4 if verb == "ADD" else 0.5, rounds=ROUNDS,
             **({"del_path": "deferred"} if verb == "DEL" else {}))
        emit(bench=f"cni_macvlan_static_{verb.lower()}_p99", ours=round(p99(o), 2),
             peer=round(p99(r), 2), unit="ms", ratio=round(p99(o) / p99(r), 3), rounds=ROUNDS,
             **({"del_path": "deferred"} if verb == "DEL" else {}))


def concurrent(binary: Path, master: str, pods: list[str], env: dict) -> dict[str, float]:
    """Wall time of attaching (then detaching) every pod at once."""
    def run(verb: str, i: int) -> float:
        return timed(lambda: run_plugin(binary, verb, config(master, i),
                                        netns=f"/run/netns/{pods[i]}", env=env,
                                        container_id=f"pod{i}"))

    walls = {}
    for verb in ("ADD", "DEL"):
        start = time.perf_counter()
        with ThreadPoolExecutor(len(pods)) as pool:
            list(pool.map(lambda i, v=verb: run(v, i), range(len(pods))))
        walls[verb.lower()] = (time.perf_counter() - start) * 1000
    return walls


if __name__ == "__main__":
    main()
