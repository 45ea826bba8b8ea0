"""Soak with fault injection: ADD/DEL cycles through the installed shim to a running
``nodeagent daemon`` that is SIGKILLed at random points (while ADDs and DELs are in flight)
and restarted, with a runtime that retries as a runtime does: an ADD that failed is followed by
a DEL, a DEL is retried until it succeeds (code 11: try again later), and the next ADD gets a
new sandbox.

  host  macvlan on a veth in a namespace of its own (where the daemon runs), whereabouts IPAM
        with the node-local store ("datastore": "file"), then with the etcd store (a real etcd
        on loopback, restarted mid-run);
  lab   sriov on igb VFs (the virtual SR-IOV lab), node-local IPAM, the same kills.

Counted afterwards (each printed as a figure, unit "count"; all must be 0): links left in pod
namespaces and in the daemon's namespace, reservations left in the IPAM store (every attachment
was DELeted), duplicate addresses (after every ADD, checked against the pods that are live then:
ADD succeeded, teardown not begun), DELs that never succeeded; in the lab, VFs not back in the
host namespace under their name, off their driver, or with an attachment record left. The kills,
daemon restarts and etcd restarts that happened are printed too.

Cycle counts: ``SOAK_CYCLES`` (host, per store; default 1000) and ``SOAK_LAB_CYCLES`` (default
100), or ``python -m tests.bench.bench_soak [CYCLES [LAB_CYCLES]]``; ``SOAK_LAB=0`` skips the lab.
Everything is made with a unique prefix under a temporary directory and removed at the end.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # also when hw-lab/run.py --script runs this file in the lab

from tests.bench import common  # noqa: E402
from tests.bench.common import HWLAB, emit  # noqa: E402
from tests.bench.common import LAB_ENV as ENV  # noqa: E402

HOST_CYCLES = 1000
LAB_CYCLES = 100
PREFIX = "nasoak"
#: Kills come this long (uniform, seconds) after the daemon answers again, then at the next
#: moment a request of the chosen verb is in flight, plus up to KILL_JITTER.
KILL_GAP = (0.5, 3.0)
KILL_JITTER = 0.015
LAB_KILL_GAP = (10.0, 40.0)  # the lab's emulated CPU is slow (a daemon start takes ~50 s):
LAB_KILLS = 8  # fewer kills there, spread over the run
DEL_GIVE_UP = 120.0  # seconds of failing DELs after which a pod counts as never deleted
COUNT = "count"
LAB_TIMEOUT = 2400


def cycles_arg(position: int, env: str, default: int) -> int:
    args = sys.argv[1:]
    if len(args) > position:
        return int(args[position])
    return int(os.environ.get(env, default))


# -- the agent under test ------------------------------------------------------------------


class Agent:
    """``nodeagent daemon`` in a network namespace, with its own socket and state dirs."""

    def __init__(self, root: Path, netns: str | None) -> None:
        self.root = root
        self.netns = netns
        self.socket = root / "run" / "agent.sock"
        self.ipam_dir = root / "ipam"
        self.cni_state = root / "cni-state"
        self.log = root / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.dead_inode: tuple[int, int] | None = None
        self.start_times: list[float] = []
        self._lock = threading.Lock()

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "nodeagent", "--log-level", "warning", "daemon",
               "--socket", str(self.socket), "--ipam-state-dir", str(self.ipam_dir),
               "--status-file", str(self.root / "status.json"),
               "--policy", str(self.root / "no-policy.yaml"),
               "--device-plugin-config", str(self.root / "no-config.json"),
               "--device-plugin-dir", str(self.root / "device-plugins"),
               "--metrics-address", "", "--no-publish-node-state"]
        # `ip netns exec` execs the daemon itself: the pid we SIGKILL is the daemon's
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else cmd

    def start(self) -> None:
        env = {**os.environ, "NODEAGENT_STATE_DIR": str(self.cni_state),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                           os.environ.get("PYTHONPATH")]))}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, cwd=REPO)

    def socket_inode(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.socket)
        except OSError:
            return None
        return (st.st_ino, st.st_ctime_ns) if stat.S_ISSOCK(st.st_mode) else None

    def answering(self) -> bool:
        """The daemon has bound a new socket (a connect would be logged as a dropped request:
        the inode tells a new socket from the one a killed daemon left)."""
        inode = self.socket_inode()
        return inode is not None and inode != self.dead_inode

    def wait_serving(self, timeout: float = 300.0) -> None:
        start = time.monotonic()
        while not self.answering():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.proc.returncode}: "
                                   f"{self.tail()}")
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"the daemon did not serve in {timeout} s: {self.tail()}")
            time.sleep(0.01)
        self.start_times.append(time.monotonic() - start)

    def kill_and_restart(self) -> None:
        with self._lock:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.dead_inode = self.socket_inode()
            self.start()
            self.restarts += 1

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def lines_about(self, text: str, most: int = 12) -> list[str]:
        """The daemon's last log lines (of every run) that mention ``text``."""
        try:
            found = [line for line in self.log.read_text(errors="replace").splitlines()
                     if text in line]
        except OSError:
            return []
        return found[-most:]

    def tail(self, lines: int = 8) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# -- namespaces and links --------------------------------------------------------------------


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=60)


def links_in(netns: str) -> list[str]:
    from nodeagent.rtnl import Rtnl

    with Rtnl(f"/run/netns/{netns}") as rtnl:
        return [link.get_attr("IFLA_IFNAME") for link in rtnl.links()]


# -- the runtime -------------------------------------------------------------------------------


@dataclass
class Pod:
    name: str  # the network namespace, also the container ID
    ips: tuple[str, ...] = ()
    resource: Any = None  # what the "device plugin" gave it (a VF), returned after DEL


@dataclass
class Tally:
    adds_ok: int = 0
    adds_failed: int = 0
    dels_ok: int = 0
    dels_failed: int = 0
    duplicates: int = 0
    pod_links_leaked: int = 0
    dels_never_ok: int = 0
    codes: Counter = field(default_factory=Counter)
    in_flight: Counter = field(default_factory=Counter)
    kills: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


class Runtime:
    """Worker threads acting as a container runtime: each keeps ``depth`` pods up and, for
    every new pod, tears down its oldest one."""

    def __init__(self, bindir: Path, agent: Agent, conf: Callable[[Pod], dict[str, Any]],
                 cycles: int, workers: int, depth: int,
                 resources: list[Any] | None = None) -> None:
        self.bindir, self.agent, self.conf = bindir, agent, conf
        self.cycles, self.workers, self.depth = cycles, workers, depth
        self.tag = secrets.token_hex(2)
        self.seq = 0
        self.tally = Tally()
        self.live: dict[str, tuple[str, ...]] = {}  # pod -> addresses, while live
        self.lock = threading.Lock()
        self.pooled = resources is not None  # each pod needs one (a VF)
        self.resources = list(resources or [])
        self.kill_gap = KILL_GAP
        self.max_kills: int | None = None
        self.progress_every = 0  # print a line to stderr every this many cycles (0: never)
        #: run on a thread of its own once half the cycles are done (the etcd restart)
        self.midway: Callable[[], None] | None = None
        self._midway_thread: threading.Thread | None = None
        self.label = "soak"
        self.free = threading.Condition(self.lock)
        self.done = threading.Event()
        self.deleted: list[str] = []
        self.errors: list[BaseException] = []

    # one CNI call, as the runtime makes it
    def call(self, verb: str, pod: Pod) -> tuple[int, dict[str, Any] | None]:
        conf = self.conf(pod)
        env = {"CNI_COMMAND": verb, "CNI_CONTAINERID": pod.name,
               "CNI_NETNS": f"/run/netns/{pod.name}", "CNI_IFNAME": "net1",
               "CNI_PATH": str(self.bindir), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
               "NODEAGENT_SOCKET": str(self.agent.socket), "NODEAGENT_TIMEOUT": "60",
               "CNI_ARGS": f"K8S_POD_NAMESPACE=soak;K8S_POD_NAME={pod.name}"}
        with self.lock:
            self.tally.in_flight[verb] += 1
        try:
            proc = subprocess.run([str(self.bindir / conf["type"])],
                                  input=json.dumps(conf).encode(), env=env,
                                  capture_output=True, timeout=120, check=False)
        finally:
            with self.lock:
                self.tally.in_flight[verb] -= 1
        try:
            doc = json.loads(proc.stdout) if proc.stdout.strip() else None
        except ValueError:
            doc = {"code": -1, "msg": proc.stdout.decode(errors="replace")}
        if proc.returncode != 0:
            code = doc.get("code", -1) if isinstance(doc, dict) else -1
            with self.lock:
                self.tally.codes[f"{verb} {code}"] += 1
            return int(code) if isinstance(code, int) else -1, doc
        return 0, doc

    def new_pod(self) -> Pod | None:
        resource = None
        with self.lock:
            if self.pooled:
                while not self.resources:
                    self.free.wait(1)
                resource = self.resources.pop()
            self.seq += 1
            name = f"{PREFIX}{self.tag}{self.seq:05d}"
        ip("netns", "add", name)
        return Pod(name, resource=resource)

    def add(self, pod: Pod) -> bool:
        code, doc = self.call("ADD", pod)
        if code != 0:
            with self.lock:
                self.tally.adds_failed += 1
            return False
        assert isinstance(doc, dict)
        ips = tuple(entry["address"].split("/")[0] for entry in doc.get("ips", []))
        with self.lock:
            self.tally.adds_ok += 1
            if self.progress_every and self.tally.adds_ok % self.progress_every == 0:
                print(f"{self.label}: {self.tally.adds_ok} cycles", file=sys.stderr, flush=True)
            if self.midway is not None and self.tally.adds_ok == max(1, self.cycles // 2):
                self._midway_thread = threading.Thread(target=self._run_midway, daemon=True)
                self._midway_thread.start()
            holders = {address: other for other, addrs in self.live.items() for address in addrs}
            for address in ips:
                if address in holders:
                    self.tally.duplicates += 1
                    self.tally.notes.append(f"{address} given to {pod.name} while live in"
                                            f" {holders[address]}")
            pod.ips = ips
            self.live[pod.name] = ips
        return True

    def _run_midway(self) -> None:
        assert self.midway is not None
        try:
            self.midway()
        except BaseException as exc:  # reported by run()
            self.errors.append(exc)

    def delete(self, pod: Pod) -> None:
        with self.lock:
            self.live.pop(pod.name, None)  # teardown begins: its addresses may go any moment
        start, delay = time.monotonic(), 0.02
        while True:
            code, doc = self.call("DEL", pod)
            if code == 0:
                break
            with self.lock:
                self.tally.dels_failed += 1
            if time.monotonic() - start > DEL_GIVE_UP:
                with self.lock:
                    self.tally.dels_never_ok += 1
                    self.tally.notes.append(f"DEL of {pod.name} never succeeded: {doc}; the"
                                            f" daemon's log ends: {self.agent.tail(4)}")
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
        extra = [name for name in links_in(pod.name) if name != "lo"]
        ip("netns", "del", pod.name)
        with self.lock:
            if extra:
                self.tally.pod_links_leaked += len(extra)
                self.tally.notes.append(f"{pod.name} still had {extra} after DEL")
            self.tally.dels_ok += code == 0
            self.deleted.append(pod.name)
            if pod.resource is not None:
                self.resources.append(pod.resource)
                self.free.notify()

    def worker(self) -> None:
        up: list[Pod] = []
        try:
            while True:
                with self.lock:
                    more = self.tally.adds_ok < self.cycles
                if not more:
                    break
                if len(up) >= self.depth:
                    self.delete(up.pop(0))
                pod = self.new_pod()
                assert pod is not None
                if self.add(pod):
                    up.append(pod)
                else:
                    self.delete(pod)  # the runtime tears the failed sandbox down
            while up:
                self.delete(up.pop(0))
        except BaseException as exc:  # reported by run(); never lose a pod's teardown
            self.errors.append(exc)
            for pod in up:
                with self.lock:
                    self.live.pop(pod.name, None)
                subprocess.run(["ip", "netns", "del", pod.name], check=False,
                               capture_output=True)

    def killer(self) -> None:
        """SIGKILL the daemon while an ADD or a DEL (alternately, at random) is in flight."""
        rng = random.Random()
        start = time.monotonic()
        while not self.done.is_set():
            self.agent.wait_serving()
            if self.max_kills is not None and self.tally.kills["total"] >= self.max_kills:
                return
            if self.done.wait(rng.uniform(*self.kill_gap)):
                return
            verb = rng.choice(("ADD", "DEL"))
            while not self.done.is_set():
                with self.lock:
                    busy = self.tally.in_flight[verb] > 0
                if busy:
                    break
                time.sleep(0.001)
            if self.done.is_set():
                return
            time.sleep(rng.uniform(0, KILL_JITTER))
            with self.lock:
                during = [v for v, n in self.tally.in_flight.items() if n > 0]
            self.agent.kill_and_restart()
            with self.lock:
                self.tally.kills["total"] += 1
                for v in during:
                    self.tally.kills[v] += 1
            print(f"{self.label}: kill {self.tally.kills['total']} (in flight: {during}) after"
                  f" {self.tally.adds_ok} cycles, {time.monotonic() - start:.0f} s",
                  file=sys.stderr, flush=True)

    def run(self) -> float:
        """All cycles with kills; returns the wall time."""
        start = time.monotonic()
        threads = [threading.Thread(target=self.worker, daemon=True)
                   for _ in range(self.workers)]
        killer = threading.Thread(target=self.killer, daemon=True)
        killer.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.done.set()
        killer.join()
        if self._midway_thread is not None:
            self._midway_thread.join()
        if self.errors:
            raise self.errors[0]
        return time.monotonic() - start


def emit_common(label: str, rt: Runtime, wall: float, leaks: dict[str, int]) -> None:
    t = rt.tally
    base = f"soak_{label}"
    emit(bench=f"{base}_cycles", value=t.adds_ok, unit=COUNT, adds_failed=t.adds_failed,
         dels_failed=t.dels_failed, wall_s=round(wall, 1),
         codes=dict(sorted(t.codes.items())))
    emit(bench=f"{base}_daemon_kills", value=t.kills["total"], unit=COUNT,
         during_add=t.kills["ADD"], during_del=t.kills["DEL"],
         restarts=rt.agent.restarts,
         restart_to_serving_s_median=round(sorted(rt.agent.start_times)[
             len(rt.agent.start_times) // 2], 2) if rt.agent.start_times else None)
    emit(bench=f"{base}_duplicate_addresses", value=t.duplicates, unit=COUNT, target=0)
    emit(bench=f"{base}_leaked_links_pod_netns", value=t.pod_links_leaked, unit=COUNT, target=0)
    emit(bench=f"{base}_dels_never_succeeded", value=t.dels_never_ok, unit=COUNT, target=0)
    for name, value in leaks.items():
        emit(bench=f"{base}_{name}", value=value, unit=COUNT, target=0)
    for note in t.notes[:20]:
        print(f"soak {label}: {note}", file=sys.stderr)


# -- host: macvlan, file store then etcd ------------------------------------------------------


@contextmanager
def master_namespace(tag: str) -> Iterator[tuple[str, str]]:
    """A namespace holding a veth pair (the macvlan master and its peer), up."""
    ns, master, peer = f"{PREFIX}{tag}m", f"{PREFIX}{tag}a", f"{PREFIX}{tag}b"
    ip("netns", "add", ns)
    try:
        ip("-n", ns, "link", "add", master, "type", "veth", "peer", "name", peer)
        for name in (master, peer, "lo"):
            ip("-n", ns, "link", "set", name, "up")
        yield ns, master
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@contextmanager
def loopback_relay(netns: str, port: int) -> Iterator[None]:
    """127.0.0.1:``port`` inside ``netns`` relayed to 127.0.0.1:``port`` here: the daemon runs
    in its own namespace (with the macvlan master), etcd listens on this one's loopback only.
    A connection whose far end goes away (etcd restarted) is closed, as a dead peer would be."""
    from nodeagent import netns as netns_mod

    listener = netns_mod.run(netns, lambda: socket.socket(
        socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    open_socks: set[socket.socket] = set()
    guard = threading.Lock()

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        while True:
            try:
                inner, _ = listener.accept()
            except OSError:
                return
            try:
                outer = socket.create_connection(("127.0.0.1", port), timeout=2)
                outer.settimeout(None)
            except OSError:
                inner.close()
                continue
            with guard:
                open_socks.update((inner, outer))
            for a, b in ((inner, outer), (outer, inner)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        with guard:
            for s in open_socks:
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


def stray_files(directory: Path) -> int:
    """Temporary files a killed writer left behind."""
    return sum(1 for p in directory.rglob("*.tmp")) if directory.exists() else 0


def host_soak(store: str, cycles: int) -> None:
    from cni.install import install
    from cni.shim import shim_path
    from nodeagent.ipam import ops
    from nodeagent.ipam.allocator import Ipam
    from nodeagent.ipam.config import parse_config
    from tests import ipam_etcd

    tag = secrets.token_hex(2)
    network = f"soak-{tag}"
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nasoak")))
        etcd = None
        ipam: dict[str, Any] = {"type": "whereabouts", "range": "10.77.0.0/26",
                                "network_name": network}
        if store == "etcd":
            if not ipam_etcd.available():
                emit(bench="soak_macvlan_etcd", skipped=True,
                     reason=f"no etcd at {ipam_etcd.ETCD} (Debian package etcd-server)")
                return
            etcd = ipam_etcd.EtcdServer(root / "etcd")
            (root / "etcd").mkdir()
            etcd.start()
            stack.callback(etcd.close)
            ipam.update(datastore="etcd", etcd_host=etcd.endpoint, etcd_timeout=1,
                        etcd_prefix=f"/{PREFIX}{tag}")
        else:
            ipam["datastore"] = "file"
        ns, master = stack.enter_context(master_namespace(tag))
        if etcd is not None:
            stack.enter_context(loopback_relay(ns, etcd.client_port))
        bindir = root / "bin"
        install(bindir, shim_path(), fallback=False)  # agent down: code 11, the runtime retries
        agent = Agent(root, ns)
        agent.start()
        stack.callback(agent.stop)
        agent.wait_serving()
        conf = {"cniVersion": "1.0.0", "name": network, "type": "macvlan", "master": master,
                "mode": "bridge", "ipam": ipam}
        rt = Runtime(bindir, agent, lambda pod: conf, cycles, workers=4, depth=4)
        rt.label = f"soak macvlan_{store}"
        etcd_restarts = 0

        def restart_etcd() -> None:
            nonlocal etcd_restarts
            assert etcd is not None
            etcd.stop(signal.SIGKILL)
            time.sleep(1.0)
            etcd.start()
            etcd_restarts += 1
            print(f"{rt.label}: etcd restarted after {rt.tally.adds_ok} cycles", file=sys.stderr,
                  flush=True)

        if etcd is not None:
            rt.midway = restart_etcd
        wall = rt.run()
        agent.stop()
        leaks = {"leaked_links_master_netns": len(set(links_in(ns)) - {"lo", master,
                                                                      f"{PREFIX}{tag}b"})}
        config = parse_config(json.dumps(conf).encode(), "")
        reservations = ops.show(config, Ipam(str(agent.ipam_dir))).reservations
        leaks["leaked_reservations"] = len(reservations)
        if etcd is not None:
            keys = etcd.etcdctl("get", "--prefix", "--keys-only", f"/{PREFIX}{tag}/").stdout
            # A node keeps its block leases (blk4/, blk6/) by design: they steer where it
            # looks next and hold no address; everything else left is a leak.
            left = [k for k in keys.splitlines() if k.strip()]
            leaks["leaked_etcd_keys"] = len([k for k in left if "/blk4/" not in k
                                             and "/blk6/" not in k])
        else:
            leaks["ipam_stray_temp_files"] = stray_files(agent.ipam_dir)
        for r in reservations[:10]:
            print(f"soak macvlan_{store}: left: {r}", file=sys.stderr)
        emit_common(f"macvlan_{store}", rt, wall, leaks)
        if etcd is not None:
            emit(bench="soak_macvlan_etcd_etcd_restarts", value=etcd_restarts, unit=COUNT)


# -- lab: sriov on igb VFs -----------------------------------------------------------------------


def lab_soak(cycles: int) -> None:
    sys.path.insert(0, str(HWLAB))
    from hwlab import sriov
    from hwlab.guard import Guard
    from hwlab.inventory import load
    from hwlab.sysfs import Sysfs

    from cni.install import install
    from cni.shim import shim_path
    from nodeagent.ipam import ops
    from nodeagent.ipam.allocator import Ipam
    from nodeagent.ipam.config import parse_config

    sysfs = Sysfs()
    guard = Guard(load(os.environ[ENV]), sysfs)
    pfs = [guard.pf(spec.pci) for spec in guard.inventory.pfs]
    tag = secrets.token_hex(2)
    network = f"soak-{tag}"
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nasoak")))
        vfs: list[sriov.VF] = []
        drivers: dict[str, str] = {}
        for pf in pfs:
            stack.callback(sysfs.set_numvfs, pf.pci, 0)
            made = sriov.create_vfs(sysfs, pf.pci, pf.spec.max_vfs, pf.spec.vf_driver)
            drivers.update((vf.pci, pf.spec.vf_driver) for vf in made)
            vfs += made
        bindir = root / "bin"
        install(bindir, shim_path(), fallback=False)
        print(f"soak sriov_lab: {len(vfs)} VFs made", file=sys.stderr, flush=True)
        agent = Agent(root, None)
        agent.start()
        stack.callback(agent.stop)
        agent.wait_serving()
        print(f"soak sriov_lab: the daemon serves after {agent.start_times[-1]:.0f} s",
              file=sys.stderr, flush=True)
        ipam = {"type": "whereabouts", "datastore": "file", "range": "10.78.0.0/28",
                "network_name": network}

        def conf(pod: Pod) -> dict[str, Any]:
            return {"cniVersion": "1.0.0", "name": network, "type": "sriov",
                    "deviceID": pod.resource.pci, "ipam": ipam}

        rt = Runtime(bindir, agent, conf, cycles, workers=2, depth=max(1, len(vfs) // 2 - 1),
                     resources=vfs)
        rt.kill_gap, rt.max_kills, rt.label = LAB_KILL_GAP, LAB_KILLS, "soak sriov_lab"
        rt.progress_every = 10
        wall = rt.run()
        agent.stop()
        config = parse_config(json.dumps(conf(Pod("x", resource=vfs[0]))).encode(), "")
        reservations = ops.show(config, Ipam(str(agent.ipam_dir))).reservations
        host_names = {vf.pci: sysfs.netdevs(vf.pci) for vf in vfs}
        leaks = {
            "vfs_not_in_host_netns": sum(1 for vf in vfs if not host_names[vf.pci]),
            "vfs_renamed": sum(1 for vf in vfs if host_names[vf.pci] not in ([], [vf.netdev])),
            "vfs_off_driver": sum(1 for vf in vfs if sysfs.driver(vf.pci) != drivers[vf.pci]),
            "vf_attachment_records_left": len(list((agent.cni_state / "sriov").glob("*.json")))
            if (agent.cni_state / "sriov").exists() else 0,
            "leaked_reservations": len(reservations),
            "ipam_stray_temp_files": stray_files(agent.ipam_dir),
        }
        for vf in vfs:
            if host_names[vf.pci] != [vf.netdev] or sysfs.driver(vf.pci) != drivers[vf.pci]:
                rt.tally.notes.append(f"VF {vf.pci} ({vf.netdev}) ends as {host_names[vf.pci]}"
                                      f" on {sysfs.driver(vf.pci)}")
                rt.tally.notes += [f"  daemon: {line[:300]}" for line in agent.lines_about(vf.pci)]
        emit_common("sriov_lab", rt, wall, leaks)
        emit(bench="soak_sriov_lab_vfs", value=len(vfs), unit=COUNT)


# -- entry --------------------------------------------------------------------------------------


def main() -> int:
    # `timeout` or Ctrl-C: unwind, so the daemon, etcd and every namespace are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.environ.get(ENV):  # in the lab: the host passed the lab's cycle count
        lab_soak(cycles_arg(0, "SOAK_LAB_CYCLES", LAB_CYCLES))
        return 0
    if shutil.which("ip") is None:
        emit(bench="soak", skipped=True, reason="no `ip` (iproute2)")
        return 0
    cycles = cycles_arg(0, "SOAK_CYCLES", HOST_CYCLES)
    for store in ("file", "etcd"):
        host_soak(store, cycles)
    if os.environ.get("SOAK_LAB", "1") == "0":
        return 0
    lab_cycles = cycles_arg(1, "SOAK_LAB_CYCLES", LAB_CYCLES)
    # the lab's boot and an emulated CPU: more than run.py's default 900 s
    return common.run_in_lab(__file__, "soak_sriov_lab",
                             ["--timeout", str(LAB_TIMEOUT), str(lab_cycles)])


if __name__ == "__main__":
    sys.exit(main())
