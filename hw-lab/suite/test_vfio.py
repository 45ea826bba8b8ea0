"""Binding a VF to vfio-pci (for DPDK/KubeVirt pods) and back to its netdev driver."""

from __future__ import annotations

from pathlib import Path

from hwlab import sriov
from hwlab.guard import PF
from hwlab.sysfs import Sysfs, wait_for


def test_vf_to_vfio_pci_and_back(pf: PF, sysfs: Sysfs, make_vfs) -> None:
    vf = make_vfs(pf, 1)[0]
    group = sysfs.iommu_group(vf.pci)
    assert group is not None, f"{vf.pci} has no IOMMU group (is the IOMMU on?)"

    sysfs.bind(vf.pci, "vfio-pci")
    sriov.wait_driver(sysfs, vf.pci, "vfio-pci")
    assert sysfs.read(vf.pci, "driver_override") == "vfio-pci"
    assert sysfs.netdevs(vf.pci) == []
    wait_for(f"/dev/vfio/{group}", lambda: Path("/dev/vfio", group).is_char_device())

    sysfs.bind(vf.pci, None)  # clear the override: drivers_probe picks the VF driver again
    sriov.wait_driver(sysfs, vf.pci, pf.spec.vf_driver)
    assert sysfs.read(vf.pci, "driver_override") == "(null)"
    assert sriov.wait_netdev(sysfs, vf.pci)
