#!/usr/bin/env python3
"""The `make demo` walk-through, run in the lab (hw-lab/run.py --demo) or on inventory PFs.

Starts the agent (`nodeagent daemon`) with a node policy, which creates the VFs, binds one to
vfio-pci and gives the others their MACs; shows `nodeagent status` and `nodeagent inventory`;
installs the CNI shim and attaches a VF and a macvlan with fixed IPs to a pod namespace exactly
as a container runtime would (CNI ADD through the installed plugins); pings a peer across the
wire, detaches (CNI DEL), shows that everything is back and what the metrics counted. Exits
non-zero if a step fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hwlab import netns, sriov
from hwlab.guard import PF, Guard
from hwlab.inventory import load
from hwlab.sysfs import Sysfs
from pyroute2 import IPRoute

BIN = Path(sys.executable).parent
VF_MAC = "02:00:5e:00:53:21"
POD_VF, POD_MACVLAN, PEER = "203.0.113.10/24", "198.51.100.10/24", "203.0.113.1/24"
METRICS = "127.0.0.1:9808"


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


def start_agent(root: Path, pf: PF) -> subprocess.Popen:
    sock = root / "run" / "agent.sock"
    policy = root / "policy.yaml"
    policy.write_text(POLICY.format(pf=pf.netdev))
    print(f"$ cat {policy}\n{policy.read_text()}", end="", flush=True)
    argv = [str(BIN / "nodeagent"), "--log-level", "warning", "daemon", "--socket", str(sock),
            "--policy", str(policy), "--status-file", str(root / "status.json"),
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
    try:
        step(f"1. the agent provisions {lower.pci} ({lower.netdev}, {lower.spec.driver})"
             " from a policy")
        netns.up_with_carrier(other.netdev)
        agent = start_agent(root, lower)
        vfs = [sriov.VF(i, pci, (sysfs.netdevs(pci) or [None])[0])
               for i, pci in enumerate(sysfs.virtfns(lower.pci))]
        vf_netdev = vfs[0].netdev
        show(["ip", "link", "show", lower.netdev])
        netns.up_with_carrier(lower.netdev)

        step("2. nodeagent inventory")
        ok = nodeagent_inventory() and ok

        step(f"3. CNI ADD: VF {vfs[0].pci} as net1, a macvlan on {other.netdev} as net2")
        with netns.namespace("pod") as pod, netns.namespace("peer") as peer:
            attached = networks(vfs[0].pci, other)
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

            step("4. CNI DEL")
            for ifname, conf in reversed(attached):
                cni(root, "DEL", conf, pod, ifname)
            show(["ip", "-n", pod, "-br", "link"])

        step(f"5. back in the host namespace: {vf_netdev}, its PF-side settings restored")
        back = vf_netdev in sysfs.netdevs(vfs[0].pci)
        ok = nodeagent_inventory() and ok
        where = f"{vf_netdev} on {vfs[0].pci}"
        print(f"OK: {where} is back" if back else f"!! {where} did not come back")
        ok = back and ok

        step("6. what the agent saw")
        time.sleep(0.5)  # the status file follows changes within WRITE_DELAY
        ok = show([str(BIN / "nodeagent"), "status", "--status-file",
                   str(root / "status.json")]) == 0 and ok
        metrics("nodeagent_cni_requests_total")
        metrics("nodeagent_pf_provisioning_state{")
    except (RuntimeError, OSError, TimeoutError) as exc:
        print(f"!! {exc}")
        ok = False
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=30)
        sysfs.set_numvfs(lower.pci, 0)
        shutil.rmtree(root, ignore_errors=True)
    print(f"\ndemo {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
