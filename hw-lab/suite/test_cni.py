"""nodeagent's CNI plugin on real drivers: macvlan, ipvlan and VLAN attachments on an igb PF,
made through the installed shim and a running agent, with traffic to a peer on the cabled PF.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hwlab import netns
from hwlab.guard import PF
from pyroute2 import IPRoute

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cni.install import install  # noqa: E402
from cni.server import CniServer  # noqa: E402
from cni.shim import shim_path  # noqa: E402

POD, PEER = "198.51.100.1/24", "198.51.100.2"
KINDS = [("macvlan", {"mode": "bridge"}, {"macvlan_mode": "bridge"}),
         ("ipvlan", {"mode": "l2"}, {"ipvlan_mode": 0}),
         ("vlan", {"vlanId": 100}, {"vlan_id": 100})]


@pytest.fixture(scope="module")
def agent() -> Iterator[dict[str, Path]]:
    with tempfile.TemporaryDirectory(prefix="nahwcni") as root:
        server = CniServer(f"{root}/run/agent.sock")
        server.start()
        install(Path(root) / "bin", shim_path())
        try:
            yield {"socket": Path(server.path), "bin": Path(root) / "bin"}
        finally:
            server.stop()


def cni(agent: dict[str, Path], command: str, conf: dict[str, Any], ns: str) -> Any:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "labpod", "CNI_NETNS": f"/run/netns/{ns}",
           "CNI_IFNAME": "net1", "CNI_PATH": str(agent["bin"]),
           "NODEAGENT_SOCKET": str(agent["socket"])}
    proc = subprocess.run([str(agent["bin"] / conf["type"])], input=json.dumps(conf).encode(),
                          env=env, capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    return json.loads(proc.stdout) if proc.stdout.strip() else None


@pytest.mark.parametrize(("kind", "fields", "peer_fields"), KINDS, ids=[k[0] for k in KINDS])
def test_attachment_carries_traffic_and_is_undone(agent, pf_pair: tuple[PF, PF], namespaces,
                                                  kind, fields, peer_fields) -> None:
    lower, other = pf_pair
    pod, peer = namespaces("pod"), namespaces("peer")
    conf = {"cniVersion": "1.0.0", "name": f"lab-{kind}", "type": kind, "master": lower.netdev,
            **fields, "ipam": {"type": "static", "addresses": [{"address": POD}]}}

    result = cni(agent, "ADD", conf, pod)

    assert result["ips"][0]["address"] == POD
    with IPRoute(netns=pod) as ipr:
        (link,) = ipr.get_links(ifname="net1")
        assert link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == kind
    peer_if = netns.unique(kind[:3])
    with IPRoute() as ipr:
        ipr.link("add", ifname=peer_if, kind=kind, link=netns.index(ipr, other.netdev),
                 net_ns_fd=peer, **peer_fields)
    netns.configure(peer, peer_if, f"{PEER}/24")
    netns.wait_carrier(pod, "net1")
    netns.wait_carrier(peer, peer_if)
    ping = netns.ping(pod, PEER)
    assert ping.returncode == 0, f"{kind}: pod -> peer failed:\n{ping.stdout}{ping.stderr}"

    cni(agent, "CHECK", {**conf, "prevResult": result}, pod)
    cni(agent, "DEL", conf, pod)
    with IPRoute(netns=pod) as ipr:
        assert not ipr.link_lookup(ifname="net1")
    cni(agent, "DEL", conf, pod)  # a second DEL succeeds
