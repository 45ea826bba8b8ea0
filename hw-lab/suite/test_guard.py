"""The guard against the real kernel: what it refuses on this system."""

from __future__ import annotations

import dataclasses
import socket

import pytest
from hwlab import netns
from hwlab.guard import Guard, GuardError
from hwlab.inventory import Inventory
from hwlab.sysfs import Sysfs
from pyroute2 import IPRoute


def test_guard_refuses_devices_not_in_inventory(guard: Guard, inventory: Inventory, sysfs: Sysfs):
    named = {p.pci for p in inventory.pfs}
    others = sorted(p.name for p in sysfs.pci_devices.iterdir() if p.name not in named)
    assert others, "expected other PCI devices on this system"
    with pytest.raises(GuardError, match="not named by the inventory"):
        guard.pf(others[0])
    with pytest.raises(GuardError, match="not the netdev of an inventory PF"):
        guard.pf_by_netdev("lo")


def test_guard_refuses_wrong_driver(inventory: Inventory, sysfs: Sysfs) -> None:
    spec = dataclasses.replace(inventory.pfs[0], driver="not-" + inventory.pfs[0].driver)
    wrong = dataclasses.replace(inventory, pfs=(spec, *inventory.pfs[1:]))
    with pytest.raises(GuardError, match="expects 'not-"):
        Guard(wrong, sysfs).pf(spec.pci)


def test_guard_refuses_pf_whose_vlan_carries_default_route(guard: Guard, inventory: Inventory):
    """Lab only: a default route (v4 and v6) on a VLAN upper of the PF makes the PF untouchable."""
    if inventory.kind != "virtual":
        pytest.skip("adds a default route: done only inside the virtual lab")
    pf = guard.pf(inventory.pfs[0].pci)
    netns.up_with_carrier(pf.netdev)  # a VLAN cannot go up on a down lower
    vlan = netns.unique("vl")
    with IPRoute() as ipr:
        ipr.link("add", ifname=vlan, kind="vlan", link=netns.index(ipr, pf.netdev), vlan_id=42)
        try:
            idx = netns.index(ipr, vlan)
            ipr.link("set", index=idx, state="up")
            for family, dst in ((socket.AF_INET, "0.0.0.0/0"), (socket.AF_INET6, "::/0")):
                ipr.route("add", dst=dst, oif=idx, family=family)
                with pytest.raises(GuardError, match="default route"):
                    guard.pf(pf.pci)
                ipr.route("del", dst=dst, oif=idx, family=family)
            assert guard.pf(pf.pci) == pf
        finally:
            ipr.link("del", index=netns.index(ipr, vlan))
