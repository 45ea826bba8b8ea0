"""DEL's deferred link deletion (cni/teardown.py) against the kernel: the installed shim, an
agent whose teardown runs no workers (so a deleted link stays in flight until something settles
it), real namespaces; and an agent SIGKILLed between DEL's reply and the deletion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from cni.context import Context
from cni.install import install
from cni.server import CniServer
from cni.shim import shim_path
from cni.teardown import TOMBSTONE_PREFIX, Teardown
from nodeagent.ipam.allocator import Ipam
from nodeagent.rtnl import Rtnl
from nodeagent.vfstate import VfState
from tests.host.cni_helpers import run_plugin
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[dict[str, Any]]:
    teardown = Teardown(tmp_path / "teardown", workers=0)
    context = Context(vfs=VfState(tmp_path / "state"), ipam=Ipam(tmp_path / "ipam"),
                      teardown=teardown)
    server = CniServer(str(tmp_path / "run" / "agent.sock"), context=context)
    teardown.start(context.open_netlink)
    server.start()
    install(tmp_path / "bin", shim_path())
    try:
        yield {"env": {"NODEAGENT_SOCKET": server.path}, "bin": tmp_path / "bin",
               "teardown": teardown}
    finally:
        server.stop()
        teardown.stop()
        context.close()


def conf(master: str) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "tdnet", "type": "macvlan", "master": master,
            "ipam": {"type": "nodeagent-ipam", "range": "10.71.0.0/29"}}


def pod_links(netns: str) -> dict[str, int]:
    with IPRoute(netns=netns) as ipr:
        return {link.get_attr("IFLA_IFNAME"): link["index"] for link in ipr.get_links()
                if link.get_attr("IFLA_IFNAME") != "lo"}


def pod_addresses(netns: str) -> list[str]:
    with IPRoute(netns=netns) as ipr:
        return [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr()
                if a.get_attr("IFA_LABEL") != "lo" and a["index"] != 1]


def test_del_replies_before_the_deletion_and_add_after_it_sees_no_old_link(
        agent: dict[str, Any], master: str, test_netns: str) -> None:
    path, env = f"/run/netns/{test_netns}", agent["env"]
    plugin = agent["bin"] / "macvlan"
    assert run_plugin(plugin, "ADD", conf(master), netns=path, env=env).status == 0
    old = pod_links(test_netns)["net1"]

    assert run_plugin(plugin, "DEL", conf(master), netns=path, env=env).status == 0
    (name,) = pod_links(test_netns)
    assert name.startswith(TOMBSTONE_PREFIX), "in flight: renamed, not yet deleted"
    assert pod_addresses(test_netns) == [], "the released address answers nowhere"

    added = run_plugin(plugin, "ADD", conf(master), netns=path, env=env, container_id="c2")
    assert added.status == 0, added.stdout + added.stderr
    links = pod_links(test_netns)
    assert list(links) == ["net1"] and links["net1"] != old
    assert agent["teardown"].pending() == 0


def test_check_after_del_finds_no_link(agent: dict[str, Any], master: str,
                                       test_netns: str) -> None:
    path, env = f"/run/netns/{test_netns}", agent["env"]
    plugin = agent["bin"] / "macvlan"
    added = run_plugin(plugin, "ADD", conf(master), netns=path, env=env)
    assert added.status == 0
    assert run_plugin(plugin, "DEL", conf(master), netns=path, env=env).status == 0

    checked = run_plugin(plugin, "CHECK", {**conf(master), "prevResult": added.doc},
                         netns=path, env=env)

    assert checked.status == 1 and "net1 does not exist" in checked.doc["msg"], checked.stdout
    assert pod_links(test_netns) == {}, "CHECK finished the deletion in flight"


CRASHING_AGENT = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    from cni.context import Context
    from cni.dispatch import handle
    from cni.teardown import Teardown
    from nodeagent.ipam.allocator import Ipam
    from nodeagent.vfstate import VfState
    root, netns, conf, journal = sys.argv[2], sys.argv[3], sys.argv[4].encode(), sys.argv[5]
    teardown = Teardown(journal, workers=0)
    ctx = Context(vfs=VfState(root + "/state"), ipam=Ipam(root + "/ipam"), teardown=teardown)
    for verb in ("ADD", "DEL"):
        env = {"CNI_COMMAND": verb, "CNI_CONTAINERID": "c1", "CNI_IFNAME": "net1",
               "CNI_NETNS": netns, "CNI_PATH": "/nonexistent"}
        out = handle(ctx, env, conf, "macvlan")
        print(verb, out.exit_status, flush=True)
    time.sleep(600)
""")


def test_an_agent_killed_between_del_and_the_deletion_leaves_nothing_after_restart(
        tmp_path: Path, master: str, test_netns: str) -> None:
    path = f"/run/netns/{test_netns}"
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_AGENT, str(REPO), str(tmp_path),
                             path, json.dumps(conf(master)), str(tmp_path / "teardown")],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().split() == ["ADD", "0"]
        assert proc.stdout.readline().split() == ["DEL", "0"]
        (name,) = pod_links(test_netns)
        assert name.startswith(TOMBSTONE_PREFIX), "killed with the deletion still in flight"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(list((tmp_path / "teardown").iterdir())) == 1

    restarted = Teardown(tmp_path / "teardown")  # what the daemon does before it serves
    assert restarted.start(Rtnl) == 1
    restarted.stop()

    assert pod_links(test_netns) == {}
    assert list((tmp_path / "teardown").iterdir()) == []


@pytest.mark.parametrize("journal", ["run/agent.sock.teardown", "cni/teardown"],
                         ids=["next-to-the-socket", "earlier-agent-under-the-state-dir"])
def test_the_daemon_replays_the_journal_before_it_serves(tmp_path: Path, master: str,
                                                         test_netns: str, journal: str) -> None:
    """The same crash, then `nodeagent daemon` with the same socket and state dir: the link
    is gone once its socket exists, whether the journal is where this agent keeps it or
    where an agent before it did."""
    path, state = f"/run/netns/{test_netns}", tmp_path / "cni"
    crashed = subprocess.Popen([sys.executable, "-c", CRASHING_AGENT, str(REPO), str(state),
                                path, json.dumps(conf(master)), str(tmp_path / journal)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert crashed.stdout is not None
        assert [crashed.stdout.readline().split()[1] for _ in range(2)] == ["0", "0"]
        assert next(iter(pod_links(test_netns))).startswith(TOMBSTONE_PREFIX)
    finally:
        crashed.send_signal(signal.SIGKILL)
        crashed.wait()
    sock = tmp_path / "run" / "agent.sock"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "nodeagent", "daemon", "--socket", str(sock),
         "--status-file", str(tmp_path / "status.json"), "--ipam-state-dir", str(state / "ipam"),
         "--device-plugin-config", str(tmp_path / "none.json"), "--no-publish-node-state"],
        env=dict(os.environ, NODEAGENT_STATE_DIR=str(state)), stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(sock.is_socket, 60), "the daemon did not serve"
        assert pod_links(test_netns) == {}
        assert not (state / "teardown").exists(), "an earlier agent's journal dir is left"
        assert not list((tmp_path / "run").glob("agent.sock.teardown/*"))
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
