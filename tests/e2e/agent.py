"""The agent as the chart's DaemonSet runs it, on this host without a kubelet.

The chart is rendered with Helm's engine (tests/deploy_render.py); the pod spec of the
DaemonSet is translated into ``podman run`` (host network, the rendered command, args, env,
volume mounts, capabilities and security context; the init container first, as the kubelet
does). Host paths the chart takes from values (CNI bin and conf dirs, the kubelet's root) are
given under a temporary root; of the fixed ones, those that are the agent's own
(/run/nodeagent, /var/lib/nodeagent, /dev/vfio) are pointed there too, and those the node
shares (/sys, /run/netns, /run/udev, /lib/modules) stay the host's.

Fallback (no image: ``E2E_IMAGE=venv``, or no way to build one): the same rendered command,
args and env run from the project's venv in a mount namespace of their own where the same
volumes are bind-mounted at the same paths (tests/e2e/mountexec.py), with the same capability
set; documented in docs/deploy.md.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import deploy_render

ROOT = Path(__file__).resolve().parents[2]
#: Host paths fixed by the chart that belong to the agent alone: under the test's root.
OWN_PATHS = ("/run/nodeagent", "/var/lib/nodeagent", "/dev/vfio")
POD_NAMESPACE = "nodeagent"

CONTAINERS_CONF = """[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def chart_values(root: Path, image: str, metrics_port: int, etcd_url: str) -> dict[str, Any]:
    repository, tag = image.rsplit(":", 1)
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "nodeSelector": {},
        "metrics": {"port": metrics_port, "host": "127.0.0.1"},
        "cni": {"binDir": str(root / "opt/cni/bin"), "confDir": str(root / "etc/cni/net.d")},
        "kubelet": {"rootDir": str(root / "var/lib/kubelet")},
        # No API server here: nothing to publish to, no IPPools to read.
        "agent": {"publishNodeState": False},
        # The cluster store: an etcd on loopback (the agent is on the host network).
        "ipam": {"whereabouts": {"honourIPPools": False}, "clusterName": "e2e",
                 "etcd": {"endpoints": [etcd_url]}},
    }


@dataclass
class Mount:
    source: Path  # on the host
    target: str  # in the container
    readonly: bool
    propagation: str = ""  # "rslave" for HostToContainer
    tmpfs_size: str = ""  # an emptyDir in memory


@dataclass
class Rendered:
    """What the kubelet would run for the DaemonSet's pod on this node."""

    objects: list[dict[str, Any]]
    pod: dict[str, Any]
    config_dir: Path
    probes: dict[str, str] = field(default_factory=dict)  # probe name -> URL

    @property
    def containers(self) -> list[dict[str, Any]]:
        return self.pod["spec"]["containers"]

    @property
    def init_containers(self) -> list[dict[str, Any]]:
        return self.pod["spec"].get("initContainers", [])


def render(root: Path, image: str, metrics_port: int, etcd_url: str) -> Rendered:
    objects = deploy_render.render(chart_values(root, image, metrics_port, etcd_url))
    daemonset = deploy_render.find(objects, "DaemonSet")
    configmap = deploy_render.find(objects, "ConfigMap")
    config_dir = root / "configmap"
    config_dir.mkdir(parents=True, exist_ok=True)
    for name, text in configmap["data"].items():
        (config_dir / name).write_text(text)
    pod = daemonset["spec"]["template"]
    rendered = Rendered(objects, pod, config_dir)
    (agent,) = rendered.containers
    ports = {p["name"]: p["containerPort"] for p in agent.get("ports", [])}
    for probe in ("livenessProbe", "readinessProbe"):
        get = agent[probe]["httpGet"]
        port = ports.get(get["port"], get["port"])
        rendered.probes[probe] = f"http://{get.get('host') or '127.0.0.1'}:{port}{get['path']}"
    return rendered


def host_path(root: Path, path: str) -> Path:
    if any(path == own or path.startswith(own + "/") for own in OWN_PATHS):
        return root / path.lstrip("/")
    return Path(path)


def mounts(rendered: Rendered, container: dict[str, Any], root: Path) -> list[Mount]:
    volumes = {v["name"]: v for v in rendered.pod["spec"]["volumes"]}
    out = []
    for vm in container.get("volumeMounts", []):
        volume = volumes[vm["name"]]
        readonly = bool(vm.get("readOnly"))
        propagation = {"HostToContainer": "rslave", "Bidirectional": "rshared"}.get(
            vm.get("mountPropagation", ""), "")
        if "hostPath" in volume:
            source = host_path(root, volume["hostPath"]["path"])
            kind = volume["hostPath"].get("type", "")
            if kind == "DirectoryOrCreate":
                source.mkdir(parents=True, exist_ok=True)
            elif kind == "Directory" and not source.is_dir():
                raise RuntimeError(f"hostPath {source} ({vm['name']}) is not a directory")
            out.append(Mount(source, vm["mountPath"], readonly, propagation))
        elif "configMap" in volume:
            out.append(Mount(rendered.config_dir, vm["mountPath"], True))
        elif "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit", "64Mi").replace("Mi", "m")
            out.append(Mount(Path(), vm["mountPath"], False, tmpfs_size=size))
        else:
            raise RuntimeError(f"volume {vm['name']}: kind not translated: {sorted(volume)}")
    return out


def environment(container: dict[str, Any], pod_name: str) -> dict[str, str]:
    """The container's env as the kubelet fills it (downward API fields of this pod)."""
    fields = {"spec.nodeName": socket.gethostname(), "metadata.name": pod_name,
              "metadata.namespace": POD_NAMESPACE}
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of command and args ($$ escapes)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), arg)


def command(container: dict[str, Any], env: dict[str, str]) -> list[str]:
    return [expand(a, env) for a in [*container.get("command", []), *container.get("args", [])]]


def capabilities(container: dict[str, Any]) -> tuple[list[str], list[str]]:
    caps = container.get("securityContext", {}).get("capabilities", {})
    return list(caps.get("drop", [])), list(caps.get("add", []))


def podman_run(rendered: Rendered, container: dict[str, Any], root: Path, image: str,
               name: str, detach: bool) -> list[str]:
    """``podman run`` for one of the pod's containers."""
    spec = rendered.pod["spec"]
    sc = container.get("securityContext", {})
    env = environment(container, name)
    argv = ["podman", "run", "--name", name, "--replace", "--pull", "never"]
    argv += ["-d"] if detach else ["--rm"]
    if spec.get("hostNetwork"):
        argv += ["--network", "host"]
    if spec.get("hostPID"):
        argv += ["--pid", "host"]
    seccomp = (sc.get("seccompProfile") or spec.get("securityContext", {}).get("seccompProfile")
               or {}).get("type", "RuntimeDefault")
    if seccomp == "Unconfined":
        argv += ["--security-opt", "seccomp=unconfined"]
    if sc.get("privileged"):
        argv.append("--privileged")
    if "runAsUser" in sc:
        argv += ["--user", str(sc["runAsUser"])]
    if sc.get("allowPrivilegeEscalation") is False:
        argv += ["--security-opt", "no-new-privileges"]
    if sc.get("readOnlyRootFilesystem"):
        argv += ["--read-only", "--read-only-tmpfs=false"]
    if sc.get("appArmorProfile", {}).get("type") == "Unconfined":
        argv += ["--security-opt", "apparmor=unconfined"]
    drop, add = capabilities(container)
    argv += [f"--cap-drop={c}" for c in drop] + [f"--cap-add={c}" for c in add]
    limit = container.get("resources", {}).get("limits", {}).get("memory")
    if limit:
        argv += ["--memory", limit.replace("Mi", "m").replace("Gi", "g")]
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    for m in mounts(rendered, container, root):
        if m.tmpfs_size:
            argv += ["--tmpfs", f"{m.target}:rw,size={m.tmpfs_size},mode=1777"]
            continue
        options = ["ro" if m.readonly else "rw"] + ([m.propagation] if m.propagation else [])
        argv += ["--volume", f"{m.source}:{m.target}:{','.join(options)}"]
    cmd = command(container, env)
    argv += ["--entrypoint", json.dumps(cmd[:1]), image, *cmd[1:]]
    return argv


def venv_run(rendered: Rendered, container: dict[str, Any], root: Path,
             argv: list[str] | None = None) -> list[str]:
    """The fallback: the same command (or ``argv``) from the venv, the same mounts in a mount
    namespace of its own (mountexec), the same capability bounding set."""
    env = environment(container, "venv")
    argv = argv or command(container, env)
    spec = {
        "mounts": [{"source": str(m.source), "target": m.target, "readonly": m.readonly,
                    "tmpfs_size": m.tmpfs_size} for m in mounts(rendered, container, root)],
        "argv": [str(ROOT / ".venv/bin" / c) if i == 0 else c for i, c in enumerate(argv)],
        "env": {**env, "PATH": f"{ROOT / '.venv/bin'}:/usr/sbin:/usr/bin:/sbin:/bin"},
        "drop": capabilities(container)[0], "add": capabilities(container)[1],
        "created": str(root / "venv-mountpoints.json"),
    }
    return ["unshare", "--mount", "--propagation", "slave", "--", sys.executable, "-m",
            "tests.e2e.mountexec", json.dumps(spec)]


class Agent:
    """One generation of the agent's pod: init container, then the agent, as the kubelet runs
    them; ``stop`` as the kubelet stops a pod (SIGTERM, grace period, SIGKILL)."""

    def __init__(self, rendered: Rendered, root: Path, image: str, name: str) -> None:
        self.rendered, self.root, self.image, self.name = rendered, root, image, name
        self.env = {**os.environ, "CONTAINERS_CONF": str(root / "containers.conf")}
        (root / "containers.conf").write_text(CONTAINERS_CONF)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / f"{name}.log"

    @property
    def venv(self) -> bool:
        return self.image == "venv"

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, check=False)

    def start(self) -> None:
        for init in self.rendered.init_containers:
            argv = (venv_run(self.rendered, init, self.root) if self.venv else
                    podman_run(self.rendered, init, self.root, self.image,
                               f"{self.name}-{init['name']}", detach=False))
            done = self._run(argv)
            if done.returncode != 0:
                raise RuntimeError(f"init container {init['name']} failed: {done.stderr}")
        (agent,) = self.rendered.containers
        if self.venv:
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(venv_run(self.rendered, agent, self.root),
                                             stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        else:
            done = self._run(podman_run(self.rendered, agent, self.root, self.image, self.name,
                                        detach=True))
            if done.returncode != 0:
                raise RuntimeError(f"podman run {self.name} failed: {done.stderr}")

    def probe(self, which: str) -> int:
        try:
            with urllib.request.urlopen(self.rendered.probes[which], timeout=5) as reply:
                return reply.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.probe("readinessProbe") != 200:
            if time.monotonic() > deadline or not self.running():
                raise RuntimeError(f"agent {self.name} not ready:\n{self.logs()[-4000:]}")
            time.sleep(0.3)

    def running(self) -> bool:
        if self.venv:
            return self.proc is not None and self.proc.poll() is None
        done = self._run(["podman", "inspect", "-f", "{{.State.Running}}", self.name])
        return done.stdout.strip() == "true"

    def logs(self) -> str:
        if self.venv:
            return self.log.read_text(errors="replace") if self.log.exists() else ""
        done = self._run(["podman", "logs", self.name])
        return done.stdout + done.stderr

    def pre_stop(self) -> None:
        """The container's preStop exec hook, run in it as the kubelet does before SIGTERM
        (a failing hook does not stop the termination)."""
        (agent,) = self.rendered.containers
        hook = agent.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
        if not hook or not self.running():
            return
        if self.venv:
            self._run(venv_run(self.rendered, agent, self.root, list(hook)))
        else:
            self._run(["podman", "exec", self.name, *hook])

    def stop(self, kill: bool = False) -> None:
        grace = int(self.rendered.pod["spec"].get("terminationGracePeriodSeconds", 30))
        if not kill:
            self.pre_stop()
        if self.venv:
            if self.proc is None or self.proc.poll() is not None:
                return
            os.killpg(self.proc.pid, 9 if kill else 15)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        elif kill:
            self._run(["podman", "kill", "--signal", "KILL", self.name])
            self._run(["podman", "wait", self.name])
        else:
            self._run(["podman", "stop", "--time", str(grace), self.name])

    def remove(self) -> None:
        self.stop(kill=True)
        if not self.venv:
            self._run(["podman", "rm", "--force", self.name])
