#!/usr/bin/env python3
"""The `make demo` walk-through, run in the lab (hw-lab/run.py --demo) or on inventory PFs.

Starts the agent (`nodeagent daemon`) with a node policy, which creates the VFs, binds one to
vfio-pci and gives the others their MACs, and with device plugin pools, which it registers with
a kubelet stand-in (tests/kubelet_standin.py); shows `nodeagent status` and `nodeagent
inventory`; asks the device plugin for a VF for a pod as the kubelet does (ListAndWatch,
GetPreferredAllocation, Allocate); installs the CNI shim and attaches exactly the VF it
allocated (its PCI address as `deviceID`, the way Multus passes it) and a macvlan with fixed IPs
to a pod namespace as a container runtime would (CNI ADD through the installed plugins); pings
a peer across the wire, detaches (CNI DEL), shows that everything is back and what the metrics
counted. Exits non-zero if a step fails.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests.kubelet_standin

import grpc
from hwlab import netns, sriov
from hwlab.guard import PF, Guard
from hwlab.inventory import load
from hwlab.sysfs import Sysfs
from pyroute2 import IPRoute

from tests.kubelet_standin import PB2, Kubelet, plugin

BIN = Path(sys.executable).parent
VF_MAC = "02:00:5e:00:53:21"
POD_VF, POD_MACVLAN, PEER = "203.0.113.10/24", "198.51.100.10/24", "203.0.113.1/24"
METRICS = "127.0.0.1:9808"
PREFIX = "intel.com"
NETDEV_POOL, VFIO_POOL = "demo_netdev", "demo_vfio"
WAIT = 60.0


def step(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def show(argv: list[str]) -> int:
    """Run a command, echoing it and its output; returns its exit status."""
    print(f"$ {' '.join(argv)}", flush=True)
    return subprocess.run(argv, check=False).returncode


def nodeagent_inventory() -> bool:
    return show([str(BIN / "nodeagent"), "inventory"]) == 0


POLICY = """\
pfs:
  - name: demo
    nicSelector: {{pfNames: [{pf}]}}
    numVfs: 3
    vfDefaults: {{mac: derived, spoofchk: true}}
    vfGroups:
      - {{vfs: 2, driver: vfio-pci}}
"""


def pools(pf: PF) -> dict:
    """sriov-network-device-plugin's config.json: the PF's kernel-driver VFs, its vfio-pci VF."""
    return {"resourceList": [
        {"resourceName": NETDEV_POOL, "resourcePrefix": PREFIX,
         "selectors": {"drivers": [pf.spec.vf_driver], "pfNames": [pf.netdev]}},
        {"resourceName": VFIO_POOL, "resourcePrefix": PREFIX,
         "selectors": {"drivers": ["vfio-pci"], "pfNames": [pf.netdev]}},
    ]}


def start_agent(root: Path, pf: PF) -> subprocess.Popen:
    sock = root / "run" / "agent.sock"
    policy = root / "policy.yaml"
    policy.write_text(POLICY.format(pf=pf.netdev))
    print(f"$ cat {policy}\n{policy.read_text()}", end="", flush=True)
    dp_config = root / "config.json"
    dp_config.write_text(json.dumps(pools(pf), indent=1) + "\n")
    print(f"$ cat {dp_config}\n{dp_config.read_text()}", end="", flush=True)
    argv = [str(BIN / "nodeagent"), "--log-level", "warning", "daemon", "--socket", str(sock),
            "--policy", str(policy), "--status-file", str(root / "status.json"),
            "--device-plugin-config", str(dp_config),
            "--device-plugin-dir", f"{root / 'device-plugins'}/",
            "--metrics-address", METRICS, "--ipam-state-dir", str(root / "ipam"),
            "--no-publish-node-state", "--log-format", "text"]
    print(f"$ {' '.join(argv[1:])} &", flush=True)
    agent = subprocess.Popen(argv, env={**os.environ, **agent_env(root)})
    deadline = time.monotonic() + 120
    while not pf_in_sync(root / "status.json", pf):
        if agent.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("nodeagent daemon did not bring the PF to its policy")
        time.sleep(0.2)
    show([str(BIN / "nodeagent"), "status", "--status-file", str(root / "status.json")])
    show([str(BIN / "nodeagent"), "cni", "install", "--dest", str(root / "bin")])
    return agent


def pf_in_sync(path: Path, pf: PF) -> bool:
    try:
        pfs = json.loads(path.read_text())["pfs"]
    except (OSError, ValueError, KeyError):
        return False
    return any(p["pciAddress"] == pf.pci and p["state"] == "in-sync" for p in pfs)


def kubelet_allocates(plugin_dir: Path, kubelet: Kubelet, resource: str) -> str:
    """What the kubelet does for a pod asking for one ``resource``: wait for the plugin's
    registration, take its healthy devices from ListAndWatch, ask GetPreferredAllocation,
    Allocate; returns the PCI address the Allocate response hands the pod."""
    registered = kubelet.registered(2, timeout=WAIT)
    for name, request in sorted(registered.items()):
        print(f"kubelet: Register {name} (endpoint {request.endpoint}, preferred allocation: "
              f"{request.options.get_preferred_allocation_available})")
    channel, stub = plugin(plugin_dir, resource)
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


def metrics(pattern: str) -> None:
    """The metrics lines a user would grep for."""
    print(f"$ curl -s http://{METRICS}/metrics | grep {pattern}", flush=True)
    with urllib.request.urlopen(f"http://{METRICS}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(pattern):
                print(line)


def agent_env(root: Path) -> dict[str, str]:
    return {"NODEAGENT_STATE_DIR": str(root / "state")}


def cni(root: Path, command: str, conf: dict, pod: str, ifname: str) -> dict | None:
    """Run an installed plugin as a container runtime does: environment, config on stdin."""
    plugin = root / "bin" / conf["type"]
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "demo-pod", "CNI_IFNAME": ifname,
           "CNI_NETNS": f"/run/netns/{pod}", "CNI_PATH": str(root / "bin"),
           "NODEAGENT_SOCKET": str(root / "run" / "agent.sock"), **agent_env(root)}
    print(f"$ CNI_COMMAND={command} CNI_IFNAME={ifname} {plugin} <<< '{json.dumps(conf)}'")
    proc = subprocess.run([str(plugin)], input=json.dumps(conf).encode(), env=env,
                          capture_output=True, check=False)
    out = proc.stdout.decode().strip()
    if out:
        print(json.dumps(json.loads(out), indent=1))
    if proc.returncode != 0:
        raise RuntimeError(f"CNI {command} {conf['type']} failed: {proc.stderr.decode()}")
    return json.loads(out) if out else None


def networks(vf_pci: str, other: PF) -> list[tuple[str, dict]]:
    """The two attachments, as NetworkAttachmentDefinitions would carry them."""
    return [
        ("net1", {"cniVersion": "1.1.0", "name": "sriov-net", "type": "sriov",
                  "deviceID": vf_pci, "mac": VF_MAC, "spoofchk": "on", "trust": "off",
                  "ipam": {"type": "static", "addresses": [{"address": POD_VF}]}}),
        ("net2", {"cniVersion": "1.1.0", "name": "macvlan-net", "type": "macvlan",
                  "master": other.netdev, "mode": "bridge",
                  "ipam": {"type": "static", "addresses": [{"address": POD_MACVLAN}]}}),
    ]


def peer_link(peer: str, other: PF) -> None:
    with IPRoute() as ipr:
        ipr.link("add", ifname="nahwdemomvp", kind="macvlan",
                 link=netns.index(ipr, other.netdev), macvlan_mode="bridge", net_ns_fd=peer)
    netns.configure(peer, "nahwdemomvp", PEER)


def main() -> int:
    inventory = load(os.environ.get("NODEAGENT_HWLAB_INVENTORY", "hw-lab/inventories/virtual.yaml"))
    guard, sysfs = Guard(inventory), Sysfs()
    lower = guard.pf(inventory.pfs[0].pci)
    other = guard.pf(inventory.pfs[0].peer) if inventory.pfs[0].peer else lower
    ok = True
    root = Path(tempfile.mkdtemp(prefix="nahwdemo"))
    agent = None
    plugin_dir = root / "device-plugins"
    plugin_dir.mkdir()
    kubelet = Kubelet(plugin_dir)  # the kubelet's registration socket, before the agent starts
    kubelet.start()
    try:
        step(f"1. the agent provisions {lower.pci} ({lower.netdev}, {lower.spec.driver})"
             " from a policy and serves device plugin pools")
        netns.up_with_carrier(other.netdev)
        agent = start_agent(root, lower)
        vfs = [sriov.VF(i, pci, (sysfs.netdevs(pci) or [None])[0])
               for i, pci in enumerate(sysfs.virtfns(lower.pci))]
        show(["ip", "link", "show", lower.netdev])
        netns.up_with_carrier(lower.netdev)

        step("2. nodeagent inventory")
        ok = nodeagent_inventory() and ok

        resource = f"{PREFIX}/{NETDEV_POOL}"
        step(f"3. device plugin: the kubelet (a stand-in) allocates one {resource} for a pod")
        vf_pci = kubelet_allocates(plugin_dir, kubelet, resource)
        (vf,) = [v for v in vfs if v.pci == vf_pci]
        vf_netdev = vf.netdev
        print(f"allocated: VF {vf.index} ({vf_pci}, {vf_netdev})")

        step(f"4. CNI ADD: the allocated VF {vf_pci} as net1 (deviceID, as Multus passes it),"
             f" a macvlan on {other.netdev} as net2")
        with netns.namespace("pod") as pod, netns.namespace("peer") as peer:
            attached = networks(vf_pci, other)
            for ifname, conf in attached:
                cni(root, "ADD", conf, pod, ifname)
            show(["ip", "-n", pod, "-br", "address"])
            peer_link(peer, other)
            netns.wait_carrier(pod, "net1")
            print(f"$ ip netns exec {pod} busybox ping -c 1 {PEER.split('/')[0]}")
            result = netns.ping(pod, PEER.split("/")[0])
            print(result.stdout, end="", flush=True)
            ok = result.returncode == 0 and ok
            ok = nodeagent_inventory() and ok

            step("5. CNI DEL")
            for ifname, conf in reversed(attached):
                cni(root, "DEL", conf, pod, ifname)
            show(["ip", "-n", pod, "-br", "link"])

        step(f"6. back in the host namespace: {vf_netdev}, its PF-side settings restored")
        back = vf_netdev in sysfs.netdevs(vf_pci)
        ok = nodeagent_inventory() and ok
        where = f"{vf_netdev} on {vf_pci}"
        print(f"OK: {where} is back" if back else f"!! {where} did not come back")
        ok = back and ok

        step("7. what the agent saw")
        time.sleep(0.5)  # the status file follows changes within WRITE_DELAY
        ok = show([str(BIN / "nodeagent"), "status", "--status-file",
                   str(root / "status.json")]) == 0 and ok
        metrics("nodeagent_cni_requests_total")
        metrics("nodeagent_pf_provisioning_state{")
    except (RuntimeError, OSError, TimeoutError, KeyError, ValueError, grpc.RpcError,
            queue.Empty) as exc:
        print(f"!! {type(exc).__name__}: {exc}")
        ok = False
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=30)
        kubelet.stop()
        sysfs.set_numvfs(lower.pci, 0)
        shutil.rmtree(root, ignore_errors=True)
    print(f"\ndemo {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
