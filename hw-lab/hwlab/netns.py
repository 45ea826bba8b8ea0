"""Network namespaces and links the lab creates: unique names, removal, ping between them."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2 import IPRoute, netns
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP

from hwlab.sysfs import wait_for

PREFIX = "nahw"  # every namespace and link the lab creates starts with this


def unique(tag: str) -> str:
    """A fresh name `nahw<6 hex><tag>`, short enough for an interface (15 chars)."""
    name = f"{PREFIX}{secrets.token_hex(3)}{tag}"
    if len(name) > 15:
        raise ValueError(f"name {name!r} longer than IFNAMSIZ-1")
    return name


@contextmanager
def namespace(tag: str) -> Iterator[str]:
    """A new named network namespace with lo up; removed on exit whatever happened."""
    name = unique(tag)
    netns.create(name)
    try:
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        yield name
    finally:
        netns.remove(name)


def index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LookupError(f"no interface {ifname!r}")
    return found[0]


def up_with_carrier(ifname: str) -> None:
    """Set a link of this namespace admin up and wait until it reports carrier."""
    with IPRoute() as ipr:
        ipr.link("set", index=index(ipr, ifname), state="up")
    wait_carrier(None, ifname)


def configure(ns: str, ifname: str, cidr: str, rename: str | None = None) -> str:
    """In `ns`: optionally rename `ifname`, add `cidr`, set it up. Returns the final name."""
    addr, prefix = cidr.split("/")
    with IPRoute(netns=ns) as ipr:
        idx = index(ipr, ifname)
        if rename:
            ipr.link("set", index=idx, ifname=rename)
        ipr.addr("add", index=idx, address=addr, prefixlen=int(prefix))
        ipr.link("set", index=idx, state="up")
    return rename or ifname


def wait_carrier(ns: str | None, ifname: str, timeout: float = 30.0) -> None:
    """Wait until `ifname` in `ns` (None: this one) is admin up with carrier."""

    def carrier() -> bool:
        with IPRoute(netns=ns) as ipr:
            link = ipr.link("get", index=index(ipr, ifname))[0]
            return bool(link["flags"] & IFF_UP) and link.get_attr("IFLA_CARRIER") == 1

    wait_for(f"carrier on {ifname} in {ns}", carrier, timeout)


def ping(ns: str, address: str, deadline: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Ping from inside `ns` (busybox ping), one probe at a time until a reply or `deadline`.

    Returns the last finished ping: returncode 0 when a reply came back.
    """
    ip = shutil.which("ip") or "/sbin/ip"
    busybox = shutil.which("busybox") or "/bin/busybox"
    cmd = [ip, "netns", "exec", ns, busybox, "ping", "-c", "1", "-W", "2", address]
    end = time.monotonic() + deadline
    while True:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode == 0 or time.monotonic() > end:
            return result
