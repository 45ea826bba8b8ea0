"""The live inventory follows real kernel events in a namespace the test owns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from nodeagent.model import Node
from nodeagent.sysfs import Sysfs
from nodeagent.watch import LiveInventory
from tests.host.conftest import unique

WAIT = 5.0  # generous: this asserts that updates happen, the benchmark measures how fast


@pytest.fixture
def live(test_netns: str, tmp_path: Path) -> Iterator[LiveInventory]:
    # An empty sysfs root: the namespace's links are known from netlink alone.
    inventory = LiveInventory(Sysfs(tmp_path), netns=test_netns)
    inventory.start()
    try:
        yield inventory
    finally:
        inventory.stop()


def netdev(node: Node, name: str):
    nic = node.nic(name)
    return nic.netdevs[0] if nic else None


def test_follows_a_veth_pair_from_creation_to_deletion(live: LiveInventory, ipr: IPRoute) -> None:
    a, b = unique("a"), unique("b")
    seen: list[frozenset[str]] = []
    live.subscribe(lambda node, changed: seen.append(changed))
    assert live.snapshot.nics == ()

    ipr.link("add", ifname=a, kind="veth", peer=b)
    node = live.wait_for(lambda n: n.nic(a) and n.nic(b), WAIT)
    assert node is not None, "the new veth pair never appeared"
    assert netdev(node, a).kind == "veth" and netdev(node, a).operstate == "down"
    assert node.nic(a).pci is None

    for name in (a, b):
        ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
    node = live.wait_for(
        lambda n: all(netdev(n, x) and netdev(n, x).operstate == "up" for x in (a, b)), WAIT
    )
    assert node is not None, "link up was not followed"
    assert netdev(node, a).carrier is True

    ipr.link("set", index=ipr.link_lookup(ifname=a)[0], mtu=9000, address="02:aa:bb:cc:dd:ee")
    node = live.wait_for(lambda n: netdev(n, a).mtu == 9000, WAIT)
    assert node is not None and netdev(node, a).mac == "02:aa:bb:cc:dd:ee"

    ipr.link("del", index=ipr.link_lookup(ifname=a)[0])
    assert live.wait_for(lambda n: n.nic(a) is None and n.nic(b) is None, WAIT) is not None
    assert any(a in changed for changed in seen)


def test_macvlan_on_a_veth_and_default_route_through_it(
    live: LiveInventory, ipr: IPRoute
) -> None:
    lower, peer, mv = unique("l"), unique("p"), unique("m")
    ipr.link("add", ifname=lower, kind="veth", peer=peer)
    lower_index = ipr.link_lookup(ifname=lower)[0]
    ipr.link("add", ifname=mv, kind="macvlan", link=lower_index, macvlan_mode="bridge")
    mv_index = ipr.link_lookup(ifname=mv)[0]
    for index in (lower_index, mv_index, ipr.link_lookup(ifname=peer)[0]):
        ipr.link("set", index=index, state="up")
    node = live.wait_for(lambda n: n.nic(mv) is not None, WAIT)
    assert node is not None and netdev(node, mv).kind == "macvlan"
    assert not node.nic(lower).default_route

    ipr.addr("add", index=mv_index, address="198.51.100.10", prefixlen=24)
    ipr.route("add", dst="0.0.0.0/0", gateway="198.51.100.1", oif=mv_index)
    node = live.wait_for(lambda n: n.nic(mv).default_route, WAIT)
    assert node is not None, "the default route was not noticed"
    # The veth under the macvlan carries the default route too; its peer does not.
    assert node.nic(lower).default_route and not node.nic(peer).default_route

    ipr.route("del", dst="0.0.0.0/0", gateway="198.51.100.1", oif=mv_index)
    node = live.wait_for(lambda n: not n.nic(mv).default_route, WAIT)
    assert node is not None and not node.nic(lower).default_route


def test_resync_rebuilds_the_same_model(live: LiveInventory, ipr: IPRoute) -> None:
    a = unique("r")
    ipr.link("add", ifname=a, kind="veth", peer=unique("q"))
    node = live.wait_for(lambda n: n.nic(a) is not None, WAIT)
    changes: list[frozenset[str]] = []
    live.subscribe(lambda n, changed: changes.append(changed))

    live.resync()

    again = live.wait_for(lambda n: n is not node, WAIT)
    assert again == node
    assert changes == [frozenset()]
