"""`nodeagent inventory` end to end through the installed command, on the real kernel."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

from pyroute2 import IPRoute

from tests.host.conftest import unique

NODEAGENT = str(Path(sys.executable).parent / "nodeagent")


def run_json(*argv: str) -> dict:
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout
    return json.loads(out)


def test_inventory_of_a_namespace_through_its_own_sysfs(
    test_netns: str, ipr: IPRoute, inventory_validator
) -> None:
    a, b, mv = unique("a"), unique("b"), unique("m")
    ipr.link("add", ifname=a, kind="veth", peer=b)
    ipr.link("add", ifname=mv, kind="macvlan", link=ipr.link_lookup(ifname=a)[0],
             macvlan_mode="bridge")
    ipr.link("set", index=ipr.link_lookup(ifname=mv)[0], mtu=1400)

    # `ip netns exec` mounts a sysfs that shows the namespace's own netdevs.
    doc = run_json("ip", "netns", "exec", test_netns, NODEAGENT, "inventory", "--json")

    inventory_validator.validate(doc)
    nics = {nic["name"]: nic for nic in doc["nics"]}
    assert {a, b, mv} <= set(nics)
    assert nics[mv]["pciAddress"] is None and nics[mv]["netdevs"][0]["kind"] == "macvlan"
    assert nics[mv]["netdevs"][0]["mtu"] == 1400
    assert nics[a]["netdevs"][0]["mac"] == ipr.get_links(ifname=a)[0].get("IFLA_ADDRESS")


def test_watch_streams_a_document_per_change(test_netns: str, ipr: IPRoute, tmp_path) -> None:
    proc = subprocess.Popen(
        [NODEAGENT, "inventory", "--watch", "--json", "--netns", test_netns,
         "--sysfs-root", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first = json.loads(read_line(proc))
        assert first["changed"] == [] and first["nics"] == []
        a = unique("w")
        ipr.link("add", ifname=a, kind="veth", peer=unique("v"))
        while True:
            doc = json.loads(read_line(proc))
            if a in doc["changed"]:
                break
        assert a in {nic["name"] for nic in doc["nics"]}
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0, proc.stderr.read()


def read_line(proc: subprocess.Popen, timeout: float = 10.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "nodeagent printed nothing"
    line = proc.stdout.readline()
    assert line, f"nodeagent exited: {proc.stderr.read()}"
    return line


def test_inventory_of_this_host_lists_every_netdev_and_the_default_route(
    inventory_validator,
) -> None:
    doc = run_json(NODEAGENT, "inventory", "--json")

    inventory_validator.validate(doc)
    listed = [n["name"] for nic in doc["nics"] for n in nic["netdevs"]]
    expected = sorted(
        name for name in os.listdir("/sys/class/net")
        if Path(f"/sys/class/net/{name}/type").read_text().strip() != "772"
    )
    assert sorted(listed) == expected
    routes = json.loads(subprocess.run(["ip", "-j", "route", "show", "default"], check=True,
                                       capture_output=True, text=True).stdout)
    carrying = {n["name"] for nic in doc["nics"] for n in nic["netdevs"] if n["defaultRoute"]}
    assert {r["dev"] for r in routes if "dev" in r} <= carrying
