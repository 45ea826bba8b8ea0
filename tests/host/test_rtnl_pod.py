"""The netlink client of a pod's namespace: what the ADD path reads and writes there."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from nodeagent import netns
from nodeagent.rtnl import Rtnl
from tests.host.conftest import unique


@pytest.fixture
def same_name_in_host() -> Iterator[str]:
    """A veth in the host namespace, whose name the test reuses in its namespace."""
    name, peer = unique("h"), unique("p")
    with IPRoute() as host:
        host.link("add", ifname=name, kind="veth", peer=peer)
        try:
            yield name
        finally:
            for index in host.link_lookup(ifname=name):
                host.link("del", index=index)


def test_sysctls_of_a_link_created_after_the_client_are_the_pods(
        test_netns: str, ipr: IPRoute, same_name_in_host: str) -> None:
    name = same_name_in_host
    keys = (f"net/ipv4/conf/{name}/arp_notify", f"net/ipv6/conf/{name}/ndisc_notify")
    host_before = [Path(f"/proc/sys/{key}").read_text() for key in keys]
    with Rtnl(test_netns) as rtnl:
        ipr.link("add", ifname=name, kind="veth", peer=unique("q"))  # after the client opened
        for key in keys:
            rtnl.set_sysctl(key, "1")
        with pytest.raises(OSError) as missing:
            rtnl.set_sysctl(f"net/ipv4/conf/{unique('x')}/arp_notify", "1")
    assert missing.value.errno == errno.ENOENT
    assert [Path(f"/proc/sys/{key}").read_text() for key in keys] == host_before
    in_pod = netns.run(test_netns, lambda: [Path(f"/proc/sys/{key}").read_text().strip()
                                            for key in keys])
    assert in_pod == ["1", "1"]


def test_link_brief_agrees_with_the_full_link_message(test_netns: str, ipr: IPRoute) -> None:
    name = unique("l")
    ipr.link("add", ifname=name, kind="veth", peer=unique("m"), mtu=1400,
             address="02:12:34:56:78:9a")
    with Rtnl(test_netns) as rtnl:
        full = rtnl.link(name=name)
        brief = rtnl.link_brief(name)
        assert brief is not None
        assert (brief.index, brief.name, brief.mac, brief.mtu) == (
            full["index"], name, "02:12:34:56:78:9a", 1400)
        assert rtnl.link_brief(unique("n")) is None
