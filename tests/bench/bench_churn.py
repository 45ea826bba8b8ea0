"""Pod churn benchmark: DEL one pod at a time, and 200 pods attached and detached at once;
ours (installed shim + running agent with its deferred teardown, cni/teardown.py) against
Debian's reference plugins with the same configuration, in the same run.

  del      per link type (macvlan on this host; ipvlan and vlan in the lab): ADD then DEL of
           one pod, static IPAM, alternating ours / reference round by round; before each
           reference round ours' deferred deletion is let finish (untimed), so the reference
           is never measured against our background work. Median and p99 of DEL (and ADD).
  burst    BURST pods' ADDs issued at once through the shim, then their DELs: macvlan with
           the node-local store (nodeagent-ipam) and with a real etcd (whereabouts
           ``datastore: etcd``), against the reference macvlan + host-local: wall time of all
           and p99 per request.
  sriov    in the lab: DEL of kernel-mode VFs one at a time and all at once, every VF checked
           back on the host under its own name afterwards (no reference plugin to compare).

Prints one JSON object per line (tests/bench/common.emit). On the host it then runs itself in
the lab (hw-lab/run.py --script) for ipvlan, vlan and SR-IOV unless CHURN_LAB=0; in the lab
(NODEAGENT_HWLAB_INVENTORY set) it measures those. CHURN_ROUNDS and CHURN_BURST override the
round count and the burst size.
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # also when hw-lab/run.py --script runs this file in the lab

from tests.bench import common  # noqa: E402
from tests.bench.common import HWLAB, emit  # noqa: E402
from tests.bench.common import LAB_ENV as ENV  # noqa: E402

ROUNDS = int(os.environ.get("CHURN_ROUNDS", "100"))
BURST = int(os.environ.get("CHURN_BURST", "200"))
LAB_ROUNDS = 40
BURST_REPEATS = int(os.environ.get("CHURN_BURST_REPEATS", "3"))
DEL_TARGET, BURST_TARGET = 0.5, 0.4
RUN_TMPFS = "/dev/shm"  # a tmpfs on every Linux host, as /run is on a node


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


def link_fields(kind: str, master: str) -> dict[str, Any]:
    if kind == "macvlan":
        return {"master": master, "mode": "bridge"}
    if kind == "ipvlan":
        return {"master": master, "mode": "l2"}
    return {"master": master, "vlanId": 100}


def static(i: int) -> dict[str, Any]:
    return {"type": "static", "addresses": [{"address": f"10.66.{i // 250}.{i % 250 + 2}/16",
                                             "gateway": "10.66.255.254"}]}


class Agent:
    """The agent as the daemon builds it (CNI socket, node-local IPAM, teardown), in a process
    of its own as the daemon runs: in this one it would share the interpreter (its lock) with
    the benchmark's 200 threads starting plugins, which the reference plugins never do."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # Its socket (and teardown journal) on a tmpfs, as /run/nodeagent is on a node; the
        # IPAM state on the temporary root's disk, as /var/lib/nodeagent is.
        self.run = Path(tempfile.mkdtemp(prefix="nachurn", dir=RUN_TMPFS if os.path.isdir(
            RUN_TMPFS) else None))
        self.path = str(self.run / "agent.sock")
        self.journal = Path(f"{self.path}.teardown")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Agent:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(self.root),
                                      self.path], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"serving":
            raise RuntimeError("the benchmark's agent did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.close()  # the agent stops (finishing its deletions) and exits
        self.proc.wait(30)
        shutil.rmtree(self.run, ignore_errors=True)

    def pending(self) -> int:
        """Deletions in flight: each has its journal file until it is done."""
        try:
            return sum(1 for p in self.journal.iterdir() if p.name.startswith("nadel"))
        except FileNotFoundError:
            return 0

    def quiet(self, timeout: float = 30.0) -> None:
        """Wait (untimed) until no deletion of ours is in flight."""
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.005)


def serve(root: Path, socket: str) -> None:
    """The agent process of :class:`Agent`: serves until its standard input closes."""
    from cni.context import Context
    from cni.server import CniServer
    from cni.teardown import Teardown
    from nodeagent.ipam.allocator import Ipam
    from nodeagent.vfstate import VfState

    teardown = Teardown(f"{socket}.teardown")  # where nodeagent.daemon keeps it
    context = Context(ipam=Ipam(root / "ipam"), vfs=VfState(root / "state"), teardown=teardown)
    server = CniServer(socket, context=context)
    teardown.start(context.open_netlink)
    server.start()
    print("serving", flush=True)
    sys.stdin.read()
    server.stop()
    teardown.stop()
    context.close()


@contextmanager
def world(pods: int, kinds_modules: tuple[str, ...] = ()) -> Iterator[tuple[str, list[str], Path]]:
    """A master link (veth; its peer up), ``pods`` namespaces, a temporary root."""
    from pyroute2 import IPRoute, netns

    for module in kinds_modules:
        subprocess.run(["modprobe", module], check=False, capture_output=True)
    tag = secrets.token_hex(2)
    master, peer = f"nacm{tag}", f"nacp{tag}"
    names = [f"nacpod{tag}{i}" for i in range(pods)]
    with IPRoute() as ipr, ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nachurn")))
        ipr.link("add", ifname=master, kind="veth", peer=peer)
        stack.callback(lambda: [ipr.link("del", index=i) for i in ipr.link_lookup(ifname=master)])
        for name in (master, peer):
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
        for name in names:
            netns.create(name)
            stack.callback(netns.remove, name)
        yield master, [f"/run/netns/{n}" for n in names], root


def shims(root: Path) -> Path:
    from cni.install import install
    from cni.shim import shim_path

    bindir = root / "bin"
    install(bindir, shim_path(), fallback=False)
    return bindir


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    outcome = fn()
    elapsed = (time.perf_counter() - start) * 1000
    assert outcome.status == 0, outcome.stdout + outcome.stderr
    return elapsed


# -- DEL, one pod at a time --------------------------------------------------------------------


def sequential_del(kinds: tuple[str, ...], rounds: int) -> None:
    from tests.host.cni_helpers import REFERENCE_BIN, run_plugin

    with world(2, ("ipvlan", "8021q")) as (master, (pod_ours, pod_ref), root), \
            Agent(root) as agent:
        bindir, env = shims(root), {"NODEAGENT_SOCKET": agent.path}
        for kind in kinds:
            conf = {"cniVersion": "1.0.0", "name": "churn", "type": kind,
                    **link_fields(kind, master), "ipam": static(5)}
            times: dict[str, dict[str, list[float]]] = {
                "ours": {"ADD": [], "DEL": []}, "reference": {"ADD": [], "DEL": []}}
            for _ in range(rounds):
                for name, binary, pod in (("ours", bindir / kind, pod_ours),
                                          ("reference", REFERENCE_BIN / kind, pod_ref)):
                    agent.quiet()
                    for verb in ("ADD", "DEL"):
                        times[name][verb].append(timed(
                            lambda b=binary, v=verb, p=pod, c=conf: run_plugin(b, v, c, netns=p,
                                                                             env=env)))
            for verb in ("DEL", "ADD"):
                o, r = times["ours"][verb], times["reference"][verb]
                emit(bench=f"churn_{kind}_{verb.lower()}_median",
                     ours=round(statistics.median(o), 2), peer=round(statistics.median(r), 2),
                     unit="ms", ratio=round(statistics.median(o) / statistics.median(r), 3),
                     **({"target_ratio": DEL_TARGET} if verb == "DEL" else {}), rounds=rounds)
                emit(bench=f"churn_{kind}_{verb.lower()}_p99", ours=round(p99(o), 2),
                     peer=round(p99(r), 2), unit="ms", ratio=round(p99(o) / p99(r), 3),
                     rounds=rounds)


# -- 200 pods at once --------------------------------------------------------------------------


def burst(binary: Path, conf: Callable[[int], dict[str, Any]], pods: list[str],
          env: dict[str, str]) -> dict[str, tuple[float, float]]:
    """(wall ms, p99 ms per request) of every pod's ADD at once, then every DEL."""
    from tests.host.cni_helpers import run_plugin

    out = {}
    for verb in ("ADD", "DEL"):
        def one(i: int, v: str = verb) -> float:
            return timed(lambda: run_plugin(binary, v, conf(i), netns=pods[i], env=env,
                                            container_id=f"pod{i}"))

        start = time.perf_counter()
        with ThreadPoolExecutor(len(pods)) as pool:
            each = list(pool.map(one, range(len(pods))))
        out[verb] = ((time.perf_counter() - start) * 1000, p99(each))
    return out


def bursts(size: int, with_etcd: bool = True) -> None:
    from tests.host.cni_helpers import REFERENCE_BIN

    with world(size) as (master, pods, root), ExitStack() as stack:
        agent = stack.enter_context(Agent(root))
        bindir, env = shims(root), {"NODEAGENT_SOCKET": agent.path}
        net = f"churn{secrets.token_hex(2)}"

        def conf(ipam: dict[str, Any]) -> Callable[[int], dict[str, Any]]:
            return lambda i: {"cniVersion": "1.0.0", "name": net, "type": "macvlan",
                              "master": master, "mode": "bridge", "ipam": ipam}

        contenders: dict[str, tuple[Path, dict[str, Any]]] = {
            "reference": (REFERENCE_BIN / "macvlan", {"type": "host-local",
                                                      "subnet": "10.67.0.0/16",
                                                      "dataDir": str(root / "hl")}),
            "node-local": (bindir / "macvlan", {"type": "nodeagent-ipam",
                                                "range": "10.68.0.0/16"})}
        if with_etcd:
            from tests import ipam_etcd

            if ipam_etcd.available():
                server = ipam_etcd.EtcdServer()
                server.start()
                stack.callback(server.stop)
                contenders["etcd"] = (bindir / "macvlan", {
                    "type": "whereabouts", "range": "10.69.0.0/16", "network_name": net,
                    "datastore": "etcd", "etcd_host": server.url})
            else:
                emit(bench=f"churn_burst_{size}_etcd", skipped=True, reason="no etcd binary")
        # Alternating repetitions, medians: the load of a shared machine drifts.
        samples: dict[str, list[dict[str, tuple[float, float]]]] = {k: [] for k in contenders}
        for _ in range(BURST_REPEATS):
            for name, (binary, ipam) in contenders.items():
                samples[name].append(burst(binary, conf(ipam), pods, env))
                agent.quiet()
        runs = {name: {verb: (statistics.median(s[verb][0] for s in runs_),
                              statistics.median(s[verb][1] for s in runs_))
                       for verb in ("ADD", "DEL")} for name, runs_ in samples.items()}
        ref = runs.pop("reference")
        for store, figures in runs.items():
            for verb in ("ADD", "DEL"):
                (wall, tail), (rwall, rtail) = figures[verb], ref[verb]
                emit(bench=f"churn_burst_{size}_macvlan_{store}_{verb.lower()}_wall",
                     ours=round(wall, 1), peer=round(rwall, 1), unit="ms (all pods)",
                     ratio=round(wall / rwall, 3), target_ratio=BURST_TARGET,
                     peer_ipam="host-local", repeats=BURST_REPEATS)
                emit(bench=f"churn_burst_{size}_macvlan_{store}_{verb.lower()}_p99",
                     ours=round(tail, 1), peer=round(rtail, 1), unit="ms (per request)",
                     ratio=round(tail / rtail, 3), target_ratio=BURST_TARGET,
                     peer_ipam="host-local", repeats=BURST_REPEATS)


# -- SR-IOV in the lab -------------------------------------------------------------------------


def sriov_del() -> None:
    """DEL of kernel-mode VFs: one pod at a time, then every VF at once; each VF must be back
    on the host under its own name, on its driver."""
    sys.path.insert(0, str(HWLAB))
    from hwlab import sriov
    from hwlab.guard import Guard
    from hwlab.inventory import load
    from hwlab.sysfs import Sysfs

    from tests.host.cni_helpers import run_plugin

    sysfs = Sysfs()
    guard = Guard(load(os.environ[ENV]), sysfs)
    with ExitStack() as stack:
        vfs: list[Any] = []
        drivers: dict[str, str] = {}
        for pf in (guard.pf(spec.pci) for spec in guard.inventory.pfs):
            stack.callback(sysfs.set_numvfs, pf.pci, 0)
            made = sriov.create_vfs(sysfs, pf.pci, pf.spec.max_vfs, pf.spec.vf_driver)
            drivers.update((vf.pci, pf.spec.vf_driver) for vf in made)
            vfs += made
        _, pods, root = stack.enter_context(world(len(vfs)))
        agent = stack.enter_context(Agent(root))
        bindir, env = shims(root), {"NODEAGENT_SOCKET": agent.path}

        def conf(i: int) -> dict[str, Any]:
            return {"cniVersion": "1.0.0", "name": "churn-sriov", "type": "sriov",
                    "deviceID": vfs[i].pci, "ipam": static(i)}

        dels = []
        for _ in range(max(1, LAB_ROUNDS // len(vfs))):
            for i in range(len(vfs)):
                timed(lambda i=i: run_plugin(bindir / "sriov", "ADD", conf(i), netns=pods[i],
                                             env=env, container_id=f"pod{i}"))
                dels.append(timed(lambda i=i: run_plugin(bindir / "sriov", "DEL", conf(i),
                                                         netns=pods[i], env=env,
                                                         container_id=f"pod{i}")))
        emit(bench="churn_sriov_del_median", value=round(statistics.median(dels), 2), unit="ms",
             rounds=len(dels), vfs=len(vfs))
        emit(bench="churn_sriov_del_p99", value=round(p99(dels), 2), unit="ms",
             rounds=len(dels), vfs=len(vfs))
        figures = burst(bindir / "sriov", conf, pods, env)
        for verb, (wall, tail) in figures.items():
            emit(bench=f"churn_burst_{len(vfs)}_sriov_{verb.lower()}_wall", value=round(wall, 1),
                 unit="ms (all VFs)", p99_per_request=round(tail, 1))
        agent.quiet()
        home = {vf.pci: sysfs.netdevs(vf.pci) for vf in vfs}
        emit(bench=f"churn_burst_{len(vfs)}_sriov_vfs_restored",
             value=sum(1 for vf in vfs if home[vf.pci] == [vf.netdev]
                       and sysfs.driver(vf.pci) == drivers[vf.pci]),
             of=len(vfs), unit="VFs back on the host under their own name and driver")


# -- entry ---------------------------------------------------------------------------------------


def main() -> int:
    if sys.argv[1:2] == ["--serve"]:
        serve(Path(sys.argv[2]), sys.argv[3])
        return 0
    if os.environ.get(ENV):  # in the lab
        sequential_del(("ipvlan", "vlan", "macvlan"), LAB_ROUNDS)
        sriov_del()
        return 0
    if shutil.which("ip") is None and not Path("/usr/lib/cni/macvlan").exists():
        emit(bench="churn", skipped=True, reason="no reference CNI plugins")
        return 0
    sequential_del(("macvlan",), ROUNDS)
    bursts(BURST)
    if os.environ.get("CHURN_LAB", "1") == "0":
        return 0
    return common.run_in_lab(__file__, "churn_lab")


if __name__ == "__main__":
    sys.exit(main())
