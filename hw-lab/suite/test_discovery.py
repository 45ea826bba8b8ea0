"""nodeagent discovery against the real kernel: the emulated PFs' real /sys and netlink.

Expectations are read independently (os.readlink, pyroute2's IPRoute), never through the code
under test. The last test checks that tests/sysfs_tree.py lays out its fixture trees as this
kernel lays out /sys, so the unit tests built on it mean something.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from hwlab.guard import PF
from hwlab.sysfs import Sysfs as LabSysfs
from pyroute2 import IPRoute

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from nodeagent.discovery import Scanner  # noqa: E402
from nodeagent.model import Node  # noqa: E402
from nodeagent.netlink import Netlink  # noqa: E402
from nodeagent.sysfs import Sysfs  # noqa: E402
from nodeagent.watch import LiveInventory  # noqa: E402
from tests.sysfs_tree import PROFILES, SysfsTree, vf_address  # noqa: E402

WAIT = 30.0  # TCG is slow; this asserts that the model follows, not how fast


def scan() -> Node:
    with Netlink() as netlink:
        return Scanner(Sysfs("/sys"), netlink).scan()


def iommu_group(address: str) -> int:
    return int(os.path.basename(os.readlink(f"/sys/bus/pci/devices/{address}/iommu_group")))


def test_pf_and_vfs_as_the_kernel_reports_them(pf: PF, make_vfs: Callable) -> None:
    vfs = make_vfs(pf, 2)

    nic = scan().nic(pf.pci)

    assert nic is not None and nic.is_pf
    spec = pf.spec
    assert (nic.pci.vendor, nic.pci.device, nic.pci.driver) == (spec.vendor, spec.device,
                                                                 spec.driver)
    assert nic.pci.numa_node == spec.numa_node
    assert nic.name == pf.netdev and not nic.default_route
    assert nic.sriov.totalvfs == spec.total_vfs and nic.sriov.numvfs == 2
    assert [(vf.index, vf.pci.address) for vf in nic.sriov.vfs] == [
        (vf.index, vf.pci) for vf in vfs]
    for found, made in zip(nic.sriov.vfs, vfs, strict=True):
        assert (found.pci.vendor, found.pci.device) == (spec.vendor, spec.vf_device)
        assert found.pci.driver == spec.vf_driver
        assert found.pci.iommu_group == iommu_group(made.pci)
        assert found.netdev is not None and found.netdev.name == made.netdev
        assert found.config is not None, "PF-side settings come from IFLA_VFINFO_LIST"


def test_vf_settings_set_on_the_pf_are_read_back(pf: PF, make_vfs: Callable) -> None:
    make_vfs(pf, 2)
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=pf.netdev)[0]
        ipr.link("set", index=index, vf={"vf": 1, "mac": "02:00:00:aa:bb:01"})
        ipr.link("set", index=index, vf={"vf": 1, "vlan": {"vlan": 42, "qos": 3}})
        ipr.link("set", index=index, vf={"vf": 1, "spoofchk": 0})
        ipr.link("set", index=index, vf={"vf": 1, "trust": 1})

    vf = scan().nic(pf.pci).sriov.vfs[1]

    c = vf.config
    assert (c.mac, c.vlan, c.qos, c.spoofchk, c.trust) == ("02:00:00:aa:bb:01", 42, 3, False, True)
    assert c.vlan_proto == "802.1Q"


def test_live_inventory_follows_vfs_without_a_restart(pf: PF, make_vfs: Callable,
                                                       sysfs: LabSysfs) -> None:
    inventory = LiveInventory(Sysfs("/sys"))
    inventory.start()
    try:
        vfs = make_vfs(pf, 2)
        node = inventory.wait_for(lambda n: _vfs(n, pf) == [vf.pci for vf in vfs], WAIT)
        assert node is not None, "new VFs never appeared in the live model"

        sysfs.bind(vfs[1].pci, "vfio-pci")
        # A scan may run while the VF is between drivers (its netdev read before the unbind,
        # its driver after the bind); the events that follow bring the model to the end state.
        node = inventory.wait_for(lambda n: _vf(n, pf, 1).pci.driver == "vfio-pci"
                                  and _vf(n, pf, 1).netdev is None, WAIT)
        assert node is not None, "the driver change was not followed"

        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=pf.netdev)[0],
                     vf={"vf": 0, "vlan": 7})
        assert inventory.wait_for(lambda n: _vf(n, pf, 0).config.vlan == 7, WAIT) is not None

        sysfs.set_numvfs(pf.pci, 0)
        assert inventory.wait_for(lambda n: _vfs(n, pf) == [], WAIT) is not None
    finally:
        inventory.stop()


def _vfs(node: Node, pf: PF) -> list[str]:
    nic = node.nic(pf.pci)
    return [vf.pci.address for vf in nic.sriov.vfs] if nic and nic.sriov else []


def _vf(node: Node, pf: PF, index: int):
    return node.nic(pf.pci).sriov.vfs[index]


# -- the fixture builder's layout against this kernel's ---------------------------------------

#: Attributes and links discovery reads from a PF, a VF and a netdev.
PF_ENTRIES = {"vendor", "device", "class", "numa_node", "driver", "iommu_group", "subsystem",
              "sriov_totalvfs", "sriov_numvfs", "sriov_drivers_autoprobe", "sriov_vf_device",
              "sriov_offset", "sriov_stride", "net", "virtfn0", "virtfn1"}
VF_ENTRIES = {"vendor", "device", "class", "numa_node", "driver", "iommu_group", "subsystem",
              "physfn", "net"}
NETDEV_ENTRIES = {"address", "mtu", "operstate", "carrier", "ifindex", "type", "device",
                  "subsystem", "phys_port_name"}


def shape(root: Path, device: Path) -> dict[str, str]:
    """Where each link of a device resolves to, relative to the sysfs root and the device."""
    out = {}
    for entry in sorted(device.iterdir()):
        if not entry.is_symlink():
            continue
        assert not os.path.isabs(os.readlink(entry)), f"{entry} is an absolute link"
        target = Path(os.path.realpath(entry))
        if target.parent == device.parent:
            out[entry.name] = "sibling"
        elif target.is_relative_to(root / "bus") or target.is_relative_to(root / "kernel"):
            out[entry.name] = str(target.relative_to(root).parent)
        else:
            out[entry.name] = "elsewhere"
    return out


def test_fixture_tree_has_the_kernels_layout(pf: PF, make_vfs: Callable) -> None:
    make_vfs(pf, 2)
    real = Path("/sys")
    igb = PROFILES["igb"]
    with tempfile.TemporaryDirectory() as tmp:
        tree = SysfsTree(tmp)
        tree.add_pf(pf.pci, "igb", netdev=pf.netdev, numvfs=2, numa_node=pf.spec.numa_node)
        fake = Path(tmp)

        # The profile's SR-IOV capability is the emulated 82576's.
        pf_dir = real / "bus/pci/devices" / pf.pci
        assert int((pf_dir / "sriov_offset").read_text()) == igb.vf_offset
        assert int((pf_dir / "sriov_stride").read_text()) == igb.vf_stride
        assert int((pf_dir / "sriov_totalvfs").read_text()) == igb.totalvfs
        assert int((pf_dir / "sriov_vf_device").read_text(), 16) == igb.vf_device

        for root in (real, fake):
            pf_dir = Path(os.path.realpath(root / "bus/pci/devices" / pf.pci))
            vf_dirs = [Path(os.path.realpath(pf_dir / f"virtfn{i}")) for i in range(2)]
            # VF addresses follow from the PF's routing ID, offset and stride.
            assert [d.name for d in vf_dirs] == [
                vf_address(pf.pci, igb.vf_offset, igb.vf_stride, i) for i in range(2)]
            assert PF_ENTRIES.issubset(e.name for e in pf_dir.iterdir()), root
            for vf_dir in vf_dirs:
                assert VF_ENTRIES.issubset(e.name for e in vf_dir.iterdir()), root
            netdev = Path(os.path.realpath(root / "class/net" / pf.netdev))
            assert netdev.parent == pf_dir / "net"
            assert NETDEV_ENTRIES.issubset(e.name for e in netdev.iterdir()), root
            assert Path(os.path.realpath(netdev / "device")) == pf_dir

        real_pf = Path(os.path.realpath(real / "bus/pci/devices" / pf.pci))
        fake_pf = Path(os.path.realpath(fake / "bus/pci/devices" / pf.pci))
        expected = shape(real, real_pf)
        got = shape(fake, fake_pf)
        for name in ("driver", "iommu_group", "subsystem", "virtfn0", "virtfn1"):
            assert got[name] == expected[name], name
        real_vf = Path(os.path.realpath(real_pf / "virtfn0"))
        fake_vf = Path(os.path.realpath(fake_pf / "virtfn0"))
        expected, got = shape(real, real_vf), shape(fake, fake_vf)
        for name in ("driver", "iommu_group", "subsystem", "physfn"):
            assert got[name] == expected[name], name

        # And discovery sees the same node in both, up to values the fixture makes up.
        def skeleton(node: Node) -> list[tuple]:
            nic = node.nic(pf.pci)
            return [(nic.pci.vendor, nic.pci.device, nic.pci.driver, nic.pci.numa_node,
                     nic.sriov.totalvfs, nic.sriov.numvfs, nic.name)] + [
                (vf.index, vf.pci.address, vf.pci.vendor, vf.pci.device, vf.pci.driver,
                 vf.netdev is not None) for vf in nic.sriov.vfs]

        fixture_node = Scanner(Sysfs(fake), hostname="lab").scan()
        assert skeleton(fixture_node) == skeleton(scan())


def test_eswitch_mode_from_devlink(netdevsims: list) -> None:
    """igb has no eswitch (None); netdevsim reports one, as mlx5 and ice do."""
    with Netlink() as netlink:
        for dev in netdevsims:
            assert netlink.eswitch_mode(dev.devlink_name, bus="netdevsim") == "legacy"
        assert scan().pfs and all(pf.sriov.eswitch_mode is None for pf in scan().pfs)
