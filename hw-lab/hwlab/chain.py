"""The chain a pod's SR-IOV VF goes through on a node, shared by `make demo` and the lab suite.

The agent (`nodeagent daemon`, as the DaemonSet runs it) provisions a PF from a policy and
registers device plugin pools with a kubelet stand-in (tests/kubelet_standin.py); the kubelet
allocates a VF for a pod (ListAndWatch, GetPreferredAllocation, Allocate); Multus hands the
allocated PCI address to the sriov plugin in the delegate's configuration; the container runtime
runs the installed CNI shim, which talks to the running agent. Callers put the repository root
on sys.path (for tests.kubelet_standin) before importing this module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from hwlab import netns
from hwlab.guard import PF
from hwlab.sysfs import Sysfs
from tests.kubelet_standin import PB2, Kubelet, plugin

BIN = Path(sys.executable).parent
PREFIX = "intel.com"
WAIT = 60.0

POLICY = """\
pfs:
  - name: {name}
    nicSelector: {{pfNames: [{pf}]}}
    numVfs: 3
    vfDefaults: {{mac: derived, spoofchk: true}}
    vfGroups:
      - {{vfs: 2, driver: vfio-pci}}
"""


def show(argv: list[str]) -> int:
    """Run a command, echoing it and its output; returns its exit status."""
    print(f"$ {' '.join(argv)}", flush=True)
    return subprocess.run(argv, check=False).returncode


@dataclass
class Node:
    """A node's agent and kubelet stand-in, their files under ``root``."""

    root: Path
    pf: PF
    netdev_pool: str
    vfio_pool: str
    metrics: str
    kubelet: Kubelet
    agent: subprocess.Popen | None = None

    @property
    def plugin_dir(self) -> Path:
        return self.root / "device-plugins"

    @property
    def status_file(self) -> Path:
        return self.root / "status.json"

    @property
    def env(self) -> dict[str, str]:
        """What the agent and the shim share besides the socket: the VF state directory."""
        return {"NODEAGENT_STATE_DIR": str(self.root / "state")}

    def pools(self) -> dict[str, Any]:
        """sriov-network-device-plugin's config.json: the PF's kernel-driver VFs, its
        vfio-pci VF."""
        return {"resourceList": [
            {"resourceName": self.netdev_pool, "resourcePrefix": PREFIX,
             "selectors": {"drivers": [self.pf.spec.vf_driver], "pfNames": [self.pf.netdev]}},
            {"resourceName": self.vfio_pool, "resourcePrefix": PREFIX,
             "selectors": {"drivers": ["vfio-pci"], "pfNames": [self.pf.netdev]}},
        ]}

    def start_agent(self, policy_name: str) -> None:
        """`nodeagent daemon` with a policy for the PF and the pools; returns once the PF is
        in sync, after installing the CNI shims into ``root/bin``."""
        policy = self.root / "policy.yaml"
        policy.write_text(POLICY.format(name=policy_name, pf=self.pf.netdev))
        print(f"$ cat {policy}\n{policy.read_text()}", end="", flush=True)
        dp_config = self.root / "config.json"
        dp_config.write_text(json.dumps(self.pools(), indent=1) + "\n")
        print(f"$ cat {dp_config}\n{dp_config.read_text()}", end="", flush=True)
        argv = [str(BIN / "nodeagent"), "--log-level", "warning", "daemon",
                "--socket", str(self.root / "run" / "agent.sock"), "--policy", str(policy),
                "--status-file", str(self.status_file), "--device-plugin-config", str(dp_config),
                "--device-plugin-dir", f"{self.plugin_dir}/", "--metrics-address", self.metrics,
                "--ipam-state-dir", str(self.root / "ipam"), "--no-publish-node-state",
                "--log-format", "text"]
        print(f"$ {' '.join(argv[1:])} &", flush=True)
        self.agent = subprocess.Popen(argv, env={**os.environ, **self.env})
        deadline = time.monotonic() + 120
        while not self.pf_in_sync():
            if self.agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nodeagent daemon did not bring the PF to its policy")
            time.sleep(0.2)
        show([str(BIN / "nodeagent"), "status", "--status-file", str(self.status_file)])
        show([str(BIN / "nodeagent"), "cni", "install", "--dest", str(self.root / "bin")])

    def pf_in_sync(self) -> bool:
        try:
            pfs = json.loads(self.status_file.read_text())["pfs"]
        except (OSError, ValueError, KeyError):
            return False
        return any(p["pciAddress"] == self.pf.pci and p["state"] == "in-sync" for p in pfs)

    def kubelet_allocates(self, resource: str) -> str:
        """What the kubelet does for a pod asking for one ``resource``: wait for the agent's
        registrations, take the healthy devices from ListAndWatch, ask GetPreferredAllocation,
        Allocate; returns the PCI address the Allocate response hands the pod."""
        registered = self.kubelet.registered(2, timeout=WAIT)
        for name, request in sorted(registered.items()):
            print(f"kubelet: Register {name} (endpoint {request.endpoint}, preferred allocation:"
                  f" {request.options.get_preferred_allocation_available})")
        channel, stub = plugin(self.plugin_dir, resource)
        with channel:
            healthy: list[str] = []
            for update in stub.ListAndWatch(PB2.Empty(), timeout=WAIT):
                print(f"kubelet: ListAndWatch {resource}: "
                      + ", ".join(f"{d.ID} {d.health}" for d in update.devices))
                healthy = [d.ID for d in update.devices if d.health == "Healthy"]
                if healthy:
                    break
            if not healthy:
                raise RuntimeError(f"{resource}: no healthy device")
            if registered[resource].options.get_preferred_allocation_available:
                preferred = stub.GetPreferredAllocation(PB2.PreferredAllocationRequest(
                    container_requests=[PB2.ContainerPreferredAllocationRequest(
                        available_deviceIDs=healthy, allocation_size=1)]), timeout=WAIT)
                chosen = list(preferred.container_responses[0].deviceIDs)
                print(f"kubelet: GetPreferredAllocation 1 of {healthy}: {chosen}")
            else:
                chosen = healthy[:1]
            response = stub.Allocate(PB2.AllocateRequest(container_requests=[
                PB2.ContainerAllocateRequest(devices_ids=chosen)]), timeout=WAIT)
        (container,) = response.container_responses
        print(f"kubelet: Allocate {chosen}: the pod's environment:")
        for key, value in sorted(container.envs.items()):
            print(f"  {key}={value}")
        env = f"PCIDEVICE_{resource.upper().replace('.', '_').replace('/', '_')}"
        allocated = container.envs[env]
        if allocated != ",".join(chosen):
            raise RuntimeError(f"Allocate handed {allocated}, the kubelet asked for {chosen}")
        return allocated

    def cni(self, command: str, conf: dict[str, Any], pod: str, ifname: str,
            container: str = "demo-pod") -> dict[str, Any] | None:
        """Run an installed plugin as a container runtime does: environment, config on stdin.
        Raises RuntimeError (with the plugin's output) when it fails."""
        binary = self.root / "bin" / conf["type"]
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_IFNAME": ifname,
               "CNI_NETNS": f"/run/netns/{pod}", "CNI_PATH": str(self.root / "bin"),
               "NODEAGENT_SOCKET": str(self.root / "run" / "agent.sock"), **self.env}
        print(f"$ CNI_COMMAND={command} CNI_IFNAME={ifname} {binary} <<< '{json.dumps(conf)}'")
        proc = subprocess.run([str(binary)], input=json.dumps(conf).encode(), env=env,
                              capture_output=True, timeout=120, check=False)
        out = proc.stdout.decode().strip()
        if out:
            print(json.dumps(json.loads(out), indent=1))
        if proc.returncode != 0:
            raise RuntimeError(f"CNI {command} {conf['type']} failed ({proc.returncode}):"
                               f" {out} {proc.stderr.decode()}")
        return json.loads(out) if out else None


@contextmanager
def node(pf: PF, sysfs: Sysfs, netdev_pool: str, vfio_pool: str, metrics: str,
         prefix: str = "nahw") -> Iterator[Node]:
    """A kubelet stand-in listening before the agent starts (as on a node); on exit the agent
    is stopped, the kubelet too, the PF's VFs removed and the files deleted, whatever
    happened."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    (root / "device-plugins").mkdir()
    kubelet = Kubelet(root / "device-plugins")
    kubelet.start()
    this = Node(root, pf, netdev_pool, vfio_pool, metrics, kubelet)
    try:
        yield this
    finally:
        if this.agent is not None:
            this.agent.terminate()
            this.agent.wait(timeout=30)
        kubelet.stop()
        sysfs.set_numvfs(pf.pci, 0)
        shutil.rmtree(root, ignore_errors=True)


def multus_delegate(conf: dict[str, Any], device_id: str) -> dict[str, Any]:
    """A NetworkAttachmentDefinition's config as Multus hands it to the delegate plugin when
    the network's resource gave the pod a device: the PCI address injected at the top level as
    ``deviceID`` (and ``pciBusID``, which Multus writes alongside)."""
    return {**conf, "deviceID": device_id, "pciBusID": device_id}


def peer_link(peer: str, other: PF, ifname: str, cidr: str) -> None:
    """A macvlan on the cabled PF in namespace ``peer``, addressed ``cidr``: the far end."""
    with IPRoute() as ipr:
        ipr.link("add", ifname=ifname, kind="macvlan", link=netns.index(ipr, other.netdev),
                 macvlan_mode="bridge", net_ns_fd=peer)
    netns.configure(peer, ifname, cidr)
