"""Host-kernel fixtures: network namespaces and links that tests create and always remove."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute, netns

from tests import ipam_etcd

#: Every namespace and link a test creates starts with this, so leftovers are recognisable.
PREFIX = "nat"


def unique(tag: str = "") -> str:
    """A name of at most 15 characters (IFNAMSIZ-1) that no other test run uses."""
    return f"{PREFIX}{tag}{secrets.token_hex(3)}"[:15]


@pytest.fixture
def test_netns() -> Iterator[str]:
    name = unique("ns")
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


@pytest.fixture
def ipr(test_netns: str) -> Iterator[IPRoute]:
    """rtnetlink inside the test namespace; links in it die with the namespace."""
    with IPRoute(netns=test_netns) as ipr:
        yield ipr


@pytest.fixture
def master() -> Iterator[str]:
    """A veth in the host namespace to hang macvlans on; removed even if the test fails."""
    name, peer = unique("mst"), unique("mpr")
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="veth", peer=peer)
        try:
            for n in (name, peer):
                ipr.link("set", index=ipr.link_lookup(ifname=n)[0], state="up")
            yield name
        finally:
            for index in ipr.link_lookup(ifname=name):
                ipr.link("del", index=index)


@pytest.fixture(scope="module")
def etcd() -> Iterator[ipam_etcd.EtcdServer]:
    """A real etcd (Debian etcd-server) on loopback, one per test module."""
    with ipam_etcd.EtcdServer() as server:
        yield server
