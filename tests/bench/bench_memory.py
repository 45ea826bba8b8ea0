"""Agent memory: the resident set of ``nodeagent daemon`` idle and after a 10,000-request soak.

The daemon runs as in a cluster, every part on:
- the device plugin: two pools from a config.json (netdevice VFs, vfio-pci VFs) over a fixture
  sysfs tree (a 16-VF ice PF), registered with a kubelet stand-in (tests/kubelet_standin.py);
  during the soak a ListAndWatch stream stays open and every 100 requests the bench calls
  GetPreferredAllocation and Allocate, as the kubelet does for a pod;
- the Kubernetes client: the API test server (tests/k8s_replay.py) over TLS, reached as in a
  pod: KUBERNETES_SERVICE_HOST/PORT and a service account token and CA bind-mounted at
  /var/run/secrets/kubernetes.io/serviceaccount in the bench's own mount namespace (nothing on
  the host sees it); ``MEMORY_BENCH_API=kubeconfig`` gives the agent a kubeconfig instead (as
  `--kubeconfig` outside a cluster: the library's kubeconfig loader adds ~13 MiB). The agent
  publishes its NodeNetworkState and Node events there;
- metrics: ``--metrics-address`` on loopback, scraped (/metrics, /readyz) every 100 requests.

The soak: ``REQUESTS`` CNI requests (default 10,000), macvlan + static IPAM ADD/DEL pairs in
real namespaces through the installed shim, on ``LANES`` pods at once (each lane its own
namespace, a new container ID each cycle), the macvlan master a veth of its own.

Printed (one JSON object per line, MB = MiB): RSS idle (started, registered, published, first
scrape done, settled), RSS after the soak (settled), the growth between them and after the
first ``WARMUP`` requests (first-use imports and caches are not growth); each with RssAnon,
RssFile, threads and malloc arenas. Targets (issue #18): RSS < 60 MB, growth < 5 MB.
``python -m tests.bench.bench_memory [REQUESTS [LANES]]``. Everything is made with a unique
prefix under a temporary directory and removed at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml
from pyroute2 import IPRoute, netns

from cni.install import install
from cni.shim import shim_path
from nodeagent.daemon import TRIM_INTERVAL
from tests.bench.common import REPO, emit
from tests.host.cni_helpers import run_plugin
from tests.k8s_replay import ReplayApiServer
from tests.kubelet_standin import PB2, Kubelet, plugin
from tests.sysfs_tree import SysfsTree
from tests.waiting import wait_until

REQUESTS = 10_000
LANES = 8
WARMUP = 500
EVERY = 100  # scrape metrics and call the device plugin every this many requests
SETTLE = 3.0  # seconds before a reading: threads finish, the publisher catches up
TARGET_RSS_MB, TARGET_GROWTH_MB = 60.0, 5.0
CHURN_LINKS, CHURN_ROUNDS = 150, 3  # veth pairs created and deleted next to the agent
PF = "0000:3b:00.0"
NODE = "bench-node"
MB = 1024 * 1024
#: More ``nodeagent daemon`` flags, to measure a variant (e.g. "--workers 4").
EXTRA_ARGS = "MEMORY_BENCH_DAEMON_ARGS"
INSIDE = "MEMORY_BENCH_NETNS"  # set in the bench's own network namespace


# -- reading a process's memory ----------------------------------------------------------------


def memory(pid: int) -> dict[str, Any]:
    """RSS and its parts (MiB), PSS, threads, and malloc arenas of process ``pid``."""
    status: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads"):
                status[key] = int(value.split()[0])
    pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    return {"rss_mb": round(status["VmRSS"] / 1024, 1),
            "anon_mb": round(status["RssAnon"] / 1024, 1),
            "file_mb": round(status["RssFile"] / 1024, 1),
            "pss_mb": round(pss / 1024, 1), "threads": status["Threads"],
            "arenas": malloc_arenas(pid)}


def malloc_arenas(pid: int) -> int:
    """glibc malloc's thread arenas: each reserves a 64 MiB-aligned heap mapping (the main
    arena lives on the brk heap and is not counted)."""
    heaps = 0
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 5:  # a path, [heap], [stack]...: not an arena heap
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start % (64 * MB) == 0 and "rw" in fields[1] and end - start <= 64 * MB:
                heaps += 1
    return heaps


# -- the scene: API server, kubelet, sysfs tree, daemon ----------------------------------------


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "bench",
        "clusters": [{"name": "bench", "cluster": {"server": server}}],
        "users": [{"name": "agent", "user": {"token": "bench-token"}}],
        "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "agent"}}]}))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
API_MODE = "MEMORY_BENCH_API"  # "in-cluster" (default) or "kubeconfig"


def serve_tls(api: ReplayApiServer, root: Path) -> Path:
    """The API test server answers over TLS (a certificate for 127.0.0.1); its CA file."""
    key, cert = root / "api.key", root / "api.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd = api._httpd
    assert httpd is not None
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    return cert


@contextmanager
def service_account(root: Path, ca: Path) -> Iterator[None]:
    """A pod's service account files, bind-mounted where the library looks for them. Only in
    the bench's mount namespace (``ip netns exec`` made it; mounts do not propagate out)."""
    files = root / "serviceaccount"
    files.mkdir()
    (files / "token").write_text("bench-token")  # as the kubelet writes it: no newline
    (files / "namespace").write_text("kube-system\n")
    shutil.copy(ca, files / "ca.crt")
    made = [p for p in (*reversed(SERVICE_ACCOUNT.parents[:3]), SERVICE_ACCOUNT)
            if not p.exists()]
    SERVICE_ACCOUNT.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(files), str(SERVICE_ACCOUNT)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", str(SERVICE_ACCOUNT)], check=False)
        for path in reversed(made):  # what we made on the host's /run, and nothing else
            with suppress(OSError):
                path.rmdir()


@contextmanager
def daemon(root: Path, api: ReplayApiServer, plugin_dir: Path, mode: str
           ) -> Iterator[tuple[Any, str]]:
    """``nodeagent daemon`` with every part on; yields (process, metrics URL)."""
    tree = SysfsTree(root / "sys")
    tree.add_pf(PF, "ice", netdev="nabmemf0", numvfs=16, numa_node=0, vfio=tuple(range(8, 16)))
    config = root / "config.json"
    config.write_text(json.dumps({"resourceList": [
        {"resourceName": "mem_netdevice", "selectors": {"drivers": ["iavf"]}},
        {"resourceName": "mem_vfio", "selectors": {"drivers": ["vfio-pci"]}}]}))
    (root / "no-settings.yaml").write_text("{}\n")
    port = free_port()
    cmd = [sys.executable, "-m", "nodeagent", "--log-level", "warning", "daemon",
           "--socket", str(root / "run" / "agent.sock"), "--sysfs-root", str(tree.root),
           "--settings", str(root / "no-settings.yaml"),
           "--state-dir", str(root / "vf"), "--ipam-state-dir", str(root / "ipam"),
           "--status-file", str(root / "status.json"), "--policy", str(root / "no-policy.yaml"),
           "--device-plugin-config", str(config), "--device-plugin-dir", str(plugin_dir),
           "--metrics-address", f"127.0.0.1:{port}", "--node-name", NODE,
           "--publish-node-state", *shlex.split(os.environ.get(EXTRA_ARGS, ""))]
    env = {k: v for k, v in os.environ.items() if k not in ("NODEAGENT_SETTINGS",)}
    env["NODEAGENT_STATE_DIR"] = str(root / "cni-state")
    if mode == "kubeconfig":
        cmd += ["--kubeconfig", str(kubeconfig(root / "kubeconfig", api.url))]
    else:
        env.update(KUBERNETES_SERVICE_HOST="127.0.0.1",
                   KUBERNETES_SERVICE_PORT=api.url.rsplit(":", 1)[1])
    with open(root / "daemon.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                cwd=REPO)
    failed = True
    try:
        yield proc, f"http://127.0.0.1:{port}"
        failed = False
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if failed or proc.returncode not in (0, -15):
            sys.stderr.write((root / "daemon.log").read_text()[-4000:])


def scrape(url: str) -> int:
    size = 0
    for path in ("/metrics", "/readyz"):
        with urllib.request.urlopen(url + path, timeout=10) as resp:
            size += len(resp.read())
    return size


class KubeletTraffic:
    """What the kubelet does to the plugin: a ListAndWatch stream per pool, kept open, and
    GetPreferredAllocation + Allocate for a pod now and then."""

    def __init__(self, plugin_dir: Path) -> None:
        self.clients = {name: plugin(plugin_dir, f"intel.com/{name}")
                        for name in ("mem_netdevice", "mem_vfio")}
        self.devices: dict[str, list[str]] = {}
        self.streams = []
        for name, (_, stub) in self.clients.items():
            call = stub.ListAndWatch(PB2.Empty(), timeout=3600)
            self.devices[name] = [d.ID for d in next(call).devices]
            self.streams.append(call)
            threading.Thread(target=self._drain, args=(call,), daemon=True).start()
        self.calls = 0

    @staticmethod
    def _drain(call: Any) -> None:
        try:
            for _ in call:
                pass
        except Exception:  # cancelled at the end
            return

    def pod(self) -> None:
        for name, (_, stub) in self.clients.items():
            ids = self.devices[name]
            chosen = stub.GetPreferredAllocation(PB2.PreferredAllocationRequest(
                container_requests=[PB2.ContainerPreferredAllocationRequest(
                    available_deviceIDs=ids, allocation_size=1)]), timeout=5)
            picked = list(chosen.container_responses[0].deviceIDs)
            stub.Allocate(PB2.AllocateRequest(container_requests=[
                PB2.ContainerAllocateRequest(devices_ids=picked)]), timeout=5)
            self.calls += 2

    def close(self) -> None:
        for call in self.streams:
            call.cancel()
        for channel, _ in self.clients.values():
            channel.close()


# -- the soak ----------------------------------------------------------------------------------


class Soak:
    """ADD/DEL pairs through the shim on ``lanes`` pod namespaces at once."""

    def __init__(self, shim: Path, env: dict[str, str], master: str, pods: list[str]) -> None:
        self.shim, self.env, self.master, self.pods = shim, env, master, pods
        self.done = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()

    def config(self, lane: int) -> dict[str, Any]:
        return {"cniVersion": "1.1.0", "name": "memnet", "type": "macvlan",
                "master": self.master, "mode": "bridge",
                "ipam": {"type": "static", "addresses": [
                    {"address": f"10.67.{lane // 250}.{lane % 250 + 2}/16"}]}}

    def run(self, requests: int, on_progress: Any = None) -> None:
        """``requests`` more requests (ADD/DEL pairs), calling ``on_progress(done)`` from one
        lane every EVERY requests."""
        target = self.done + requests
        cycles = iter(range(requests // 2))
        cycles_lock = threading.Lock()

        def lane(i: int) -> None:
            conf = self.config(i)
            while True:
                with cycles_lock:
                    n = next(cycles, None)
                if n is None:
                    return
                cid = f"nabmem{i}x{n}"
                for verb in ("ADD", "DEL"):
                    out = run_plugin(self.shim, verb, conf, netns=f"/run/netns/{self.pods[i]}",
                                     container_id=cid, env=self.env)
                    with self._lock:
                        self.done += 1
                        if out.status != 0:
                            self.failures.append(f"{verb} {cid}: {out.stdout}{out.stderr}"[:300])
                        tick = self.done % EVERY == 0
                    if tick and on_progress is not None:
                        on_progress(self.done)

        threads = [threading.Thread(target=lane, args=(i,)) for i in range(len(self.pods))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert self.done == target, (self.done, target)


def settled(pid: int) -> dict[str, Any]:
    time.sleep(SETTLE)
    return memory(pid)


def main() -> int:
    """In a network namespace of its own: the agent follows every link change in its
    namespace, and other processes' link churn on this host is no part of its footprint."""
    if os.environ.get(INSIDE) is None:
        name = f"nabmem{secrets.token_hex(3)}"
        netns.create(name)
        try:
            cmd = ["ip", "netns", "exec", name, sys.executable, "-m", "tests.bench.bench_memory",
                   *sys.argv[1:]]
            return subprocess.run(cmd, env={**os.environ, INSIDE: name}, cwd=REPO,
                                  check=False).returncode
        finally:
            netns.remove(name)
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    return soak()


def soak() -> int:
    args = sys.argv[1:]
    requests = int(args[0]) if args else REQUESTS
    lanes = int(args[1]) if len(args) > 1 else LANES
    tag = secrets.token_hex(2)
    master, peer = f"nabmm{tag}", f"nabmp{tag}"
    pods = [f"nabmem{tag}{i}" for i in range(lanes)]
    root = Path(tempfile.mkdtemp(prefix="nabmem", dir="/tmp"))
    with IPRoute() as ipr, ExitStack() as stack:
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        ipr.link("add", ifname=master, kind="veth", peer=peer)
        stack.callback(lambda: [ipr.link("del", index=i) for i in ipr.link_lookup(ifname=master)])
        for name in (master, peer):
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
        for pod in pods:
            netns.create(pod)
            stack.callback(netns.remove, pod)
        api = stack.enter_context(ReplayApiServer())
        api.add_node(NODE)
        mode = os.environ.get(API_MODE, "in-cluster")
        if mode != "kubeconfig":
            stack.enter_context(service_account(root, serve_tls(api, root)))
        plugin_dir = root / "device-plugins"
        plugin_dir.mkdir()
        kubelet = Kubelet(plugin_dir)
        kubelet.start()
        stack.callback(kubelet.stop)
        bindir = root / "bin"
        install(bindir, shim_path())
        proc, url = stack.enter_context(daemon(root, api, plugin_dir, mode))
        # Idle: serving, both pools registered, node state published, probes answered.
        kubelet.registered(2, timeout=60)
        published = wait_until(lambda: api.objects("nodeagent.io", "nodenetworkstates"), 60)
        assert published, "the agent did not publish its NodeNetworkState"
        assert wait_until(lambda: _ready(url), 60), "the agent never got ready"
        traffic = KubeletTraffic(plugin_dir)
        stack.callback(traffic.close)
        traffic.pod()
        scrape(url)
        idle = settled(proc.pid)
        emit(bench="daemon_rss_idle", ours=idle["rss_mb"], unit="MiB", target=TARGET_RSS_MB,
             api=mode, **idle)

        soak = Soak(bindir / "macvlan", {"NODEAGENT_SOCKET": str(root / "run" / "agent.sock")},
                    master, pods)
        curve: list[float] = []

        def progress(done: int) -> None:
            scrape(url)
            traffic.pod()
            if done % 1000 == 0:
                curve.append(memory(proc.pid)["rss_mb"])

        started = time.monotonic()
        warm_requests = min(WARMUP, requests)
        soak.run(warm_requests, progress)
        warm = settled(proc.pid)
        soak.run(requests - warm_requests, progress)
        seconds = time.monotonic() - started
        after = settled(proc.pid)
        if soak.failures:
            sys.stderr.write("\n".join(soak.failures[:5]) + "\n")
        emit(bench=f"daemon_rss_after_{requests}_cni_requests", ours=after["rss_mb"], unit="MiB",
             target=TARGET_RSS_MB, api=mode, requests=soak.done, failed=len(soak.failures),
             lanes=lanes, seconds=round(seconds, 1), kubelet_calls=traffic.calls, **after,
             rss_every_1000_mb=curve)
        emit(bench=f"daemon_rss_growth_{requests}_cni_requests",
             ours=round(after["rss_mb"] - idle["rss_mb"], 1), unit="MiB",
             target=TARGET_GROWTH_MB,
             after_warmup=round(after["rss_mb"] - warm["rss_mb"], 1), warmup_requests=WARMUP,
             anon_growth_mb=round(after["anon_mb"] - idle["anon_mb"], 1))
        churned = link_churn(ipr, proc.pid, tag)
        emit(bench="daemon_rss_after_link_churn", ours=churned["rss_mb"], unit="MiB",
             target=TARGET_RSS_MB, veth_pairs=CHURN_LINKS, rounds=CHURN_ROUNDS, **churned)
        return 1 if soak.failures else 0


def link_churn(ipr: IPRoute, pid: int, tag: str) -> dict[str, Any]:
    """What a node's cluster network does next to the agent: host-side veths come and go
    (the live inventory follows each); RSS once the agent's periodic trim has run."""
    names = [f"nabmc{tag}{i}" for i in range(CHURN_LINKS)]
    try:
        for _ in range(CHURN_ROUNDS):
            for name in names:
                ipr.link("add", ifname=name, kind="veth", peer=name + "p")
            time.sleep(2)
            for name in names:
                ipr.link("del", ifname=name)
            time.sleep(2)
    finally:
        for name in names:
            for index in ipr.link_lookup(ifname=name):
                ipr.link("del", index=index)
    time.sleep(TRIM_INTERVAL + SETTLE)
    return memory(pid)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
