"""NUMA locality of the PFs, as sysfs reports it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hwlab.guard import PF
from hwlab.inventory import Inventory
from hwlab.sysfs import Sysfs


def test_pf_numa_node_matches_inventory(pf: PF, sysfs: Sysfs) -> None:
    if pf.spec.numa_node is None:
        pytest.skip(f"inventory gives no numa_node for {pf.pci}")
    assert sysfs.numa_node(pf.pci) == pf.spec.numa_node
    assert Path(f"/sys/devices/system/node/node{pf.spec.numa_node}").is_dir()


def test_virtual_lab_pfs_on_nodes_0_and_1(inventory: Inventory, sysfs: Sysfs) -> None:
    if inventory.kind != "virtual":
        pytest.skip("the two-node layout is the virtual lab's")
    assert sorted(sysfs.numa_node(p.pci) for p in inventory.pfs) == [0, 1]
