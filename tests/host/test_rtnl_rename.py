"""Renaming a link back to a name it carries as an altname (udev's predictable name)."""

from __future__ import annotations

import subprocess

from pyroute2 import IPRoute

from nodeagent.rtnl import Rtnl
from tests.host.conftest import unique


def test_a_link_takes_back_the_name_it_holds_as_an_altname(test_netns: str,
                                                          ipr: IPRoute) -> None:
    link, peer, alias = unique("a"), unique("b"), unique("c")
    ipr.link("add", ifname=link, kind="veth", peer=peer)
    subprocess.run(["ip", "-n", test_netns, "link", "property", "add", "dev", link,
                    "altname", alias], check=True)
    with Rtnl(test_netns) as rtnl:
        index = rtnl.link_index(link)
        assert index is not None and rtnl.altnames(index) == [alias]

        rtnl.link_set(index, name=alias)

        assert rtnl.link_index(alias) == index
        assert rtnl.altnames(index) == []
