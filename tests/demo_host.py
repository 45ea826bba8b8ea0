"""`make demo` on this host's kernel: the inventory, then the live model following a pod's links.

It shows the host's NICs, then creates a namespace standing in for a pod, follows it with
`nodeagent inventory --watch` while veth and macvlan links come and go, and removes everything.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pyroute2 import IPRoute, netns

NODEAGENT = str(Path(sys.executable).parent / "nodeagent")


def step(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def main() -> int:
    step("nodeagent inventory (this host)")
    subprocess.run([NODEAGENT, "inventory"], check=True)

    ns = f"nademo{secrets.token_hex(3)}"
    netns.create(ns)
    try:
        with tempfile.TemporaryDirectory() as empty, IPRoute(netns=ns) as ipr:
            step(f"following namespace {ns} with `nodeagent inventory --watch`")
            watch = subprocess.Popen([NODEAGENT, "inventory", "--watch", "--netns", ns,
                                      "--sysfs-root", empty])
            try:
                time.sleep(2)
                step("create veth pair demo0/demo1 and a macvlan on demo0, bring them up")
                ipr.link("add", ifname="demo0", kind="veth", peer="demo1")
                lower = ipr.link_lookup(ifname="demo0")[0]
                ipr.link("add", ifname="demo-mv", kind="macvlan", link=lower,
                         macvlan_mode="bridge")
                for name in ("demo0", "demo1", "demo-mv"):
                    ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
                time.sleep(1)
                step("delete the veth pair (the macvlan goes with it)")
                ipr.link("del", index=lower)
                time.sleep(1)
            finally:
                watch.terminate()
                watch.wait(timeout=10)
    finally:
        netns.remove(ns)
    step(f"namespace {ns} removed; nothing left behind")
    return 0


if __name__ == "__main__":
    sys.exit(main())
