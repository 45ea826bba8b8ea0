"""VF creation and removal through sriov_numvfs, as the kernel and udev report it."""

from __future__ import annotations

import os
import time

import pyudev
from hwlab.guard import PF
from hwlab.sysfs import Sysfs
from pyroute2 import IPRoute


def test_totalvfs_covers_inventory(pf: PF, sysfs: Sysfs) -> None:
    total = int(sysfs.read(pf.pci, "sriov_totalvfs"))
    assert total >= pf.spec.max_vfs
    if pf.spec.total_vfs is not None:
        assert total == pf.spec.total_vfs


def test_create_and_remove_vfs(pf: PF, sysfs: Sysfs, make_vfs) -> None:
    count = pf.spec.max_vfs
    vfs = make_vfs(pf, count)

    assert int(sysfs.read(pf.pci, "sriov_numvfs")) == count
    assert sysfs.virtfns(pf.pci) == [vf.pci for vf in vfs]
    with IPRoute() as ipr:
        for vf in vfs:
            assert sysfs.pci_id(vf.pci) == (pf.spec.vf_vendor, pf.spec.vf_device)
            assert sysfs.driver(vf.pci) == pf.spec.vf_driver
            assert os.path.basename(os.readlink(sysfs.device(vf.pci) / "physfn")) == pf.pci
            assert ipr.link_lookup(ifname=vf.netdev)
            assert sysfs.numa_node(vf.pci) == sysfs.numa_node(pf.pci)

    sysfs.set_numvfs(pf.pci, 0)
    assert int(sysfs.read(pf.pci, "sriov_numvfs")) == 0
    assert sysfs.virtfns(pf.pci) == []
    assert not any(sysfs.exists(vf.pci) for vf in vfs)
    with IPRoute() as ipr:
        assert not any(ipr.link_lookup(ifname=vf.netdev) for vf in vfs)


def test_udev_sees_vf_add_events(pf: PF, make_vfs) -> None:
    monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="udev")
    monitor.filter_by(subsystem="pci")
    monitor.start()
    vfs = make_vfs(pf, pf.spec.max_vfs)
    expected = {vf.pci for vf in vfs}

    added: set[str] = set()
    deadline = time.monotonic() + 30
    while expected - added and time.monotonic() < deadline:
        device = monitor.poll(timeout=1)
        if device is not None and device.action == "add":
            added.add(device.sys_name)
            if device.sys_name in expected:
                pci_id = device.properties.get("PCI_ID", "").lower()
                assert pci_id == f"{pf.spec.vf_vendor}:{pf.spec.vf_device}"
    assert expected <= added
