"""Discovery against sysfs trees laid out as the kernel lays them out."""

from __future__ import annotations

import logging
import os

import pytest

from nodeagent.discovery import Scanner
from nodeagent.model import Node
from nodeagent.sysfs import Sysfs
from tests.sysfs_tree import PROFILES, SysfsTree, vf_address


def scan(tree: SysfsTree) -> Node:
    return Scanner(Sysfs(tree.root), hostname="worker-1").scan()


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_pf_and_vfs_of_each_vendor(tree: SysfsTree, profile: str) -> None:
    p = PROFILES[profile]
    tree.add_pf("0000:3b:00.0", profile, netdev="ens1f0", numvfs=3, numa_node=1)

    node = scan(tree)

    (pf,) = node.pfs
    assert pf.key == "0000:3b:00.0" and pf.name == "ens1f0"
    assert (pf.pci.vendor, pf.pci.device) == (f"{p.vendor:04x}", f"{p.pf_device:04x}")
    assert pf.pci.driver == p.pf_driver and pf.pci.numa_node == 1
    assert pf.sriov.totalvfs == p.totalvfs and pf.sriov.numvfs == 3
    assert pf.sriov.drivers_autoprobe is True
    assert pf.netdevs[0].speed == p.speed and pf.netdevs[0].operstate == "up"
    assert [vf.index for vf in pf.sriov.vfs] == [0, 1, 2]
    for vf in pf.sriov.vfs:
        assert vf.pci.address == vf_address("0000:3b:00.0", p.vf_offset, p.vf_stride, vf.index)
        assert (vf.pci.vendor, vf.pci.device) == (f"{p.vendor:04x}", f"{p.vf_device:04x}")
        assert vf.pci.driver == p.vf_driver
        assert vf.pci.numa_node == 1
        assert vf.netdev is not None and vf.netdev.name == f"ens1f0v{vf.index}"
        assert vf.pci.iommu_group is not None
    # VF netdevs are nested under their PF, never listed as NICs of their own.
    assert [nic.key for nic in node.nics] == ["0000:3b:00.0"]


def test_vfio_bound_vf_has_no_netdev_and_keeps_its_iommu_group(tree: SysfsTree) -> None:
    tree.add_pf("0000:3b:00.0", "ice", netdev="ens1f0", numvfs=2, vfio=(1,))

    (pf,) = scan(tree).pfs

    vf0, vf1 = pf.sriov.vfs
    assert vf0.pci.driver == "iavf" and vf0.netdev is not None
    assert vf1.pci.driver == "vfio-pci" and vf1.netdev is None
    group = os.path.basename(os.readlink(tree.device_dir(vf1.pci.address) / "iommu_group"))
    assert vf1.pci.iommu_group == int(group)
    assert vf0.pci.iommu_group != vf1.pci.iommu_group


def test_unbound_vfs_without_netdevs(tree: SysfsTree) -> None:
    tree.add_pf("0000:18:00.0", "i40e", netdev="ens2f0", numvfs=2, vf_netdevs=False)
    for address in tree.set_numvfs("0000:18:00.0", 2, "i40e"):
        tree.unbind(address)

    (pf,) = scan(tree).pfs

    assert [(vf.pci.driver, vf.netdev) for vf in pf.sriov.vfs] == [(None, None), (None, None)]


def test_pf_without_vfs_and_pf_without_netdev(tree: SysfsTree) -> None:
    tree.add_pf("0000:af:00.0", "mlx5", netdev="ens3f0np0", numvfs=0)
    tree.add_pf("0000:af:00.1", "mlx5", netdev=None, numvfs=0)

    a, b = scan(tree).pfs

    assert a.sriov.numvfs == 0 and a.sriov.vfs == ()
    assert b.netdevs == () and b.name == "0000:af:00.1" and b.sriov.totalvfs == 16


def test_switchdev_representors_follow_the_uplink(tree: SysfsTree) -> None:
    pf_dir = tree.add_pf("0000:af:00.0", "mlx5", netdev="ens3f0np0", numvfs=2)
    for index in range(2):
        tree.add_netdev(f"eth{index}", pf_dir, phys_port_name=f"pf0vf{index}")

    (pf,) = scan(tree).pfs

    assert [n.name for n in pf.netdevs] == ["ens3f0np0", "eth0", "eth1"]
    assert [vf.representor for vf in pf.sriov.vfs] == ["eth0", "eth1"]


def test_virtual_and_virtio_nics_are_plain_nics_and_loopback_is_left_out(
    tree: SysfsTree,
) -> None:
    virtio = tree.add_pci("0000:00:03.0", 0x1AF4, 0x1041, driver="virtio-pci")
    tree.add_netdev("eth0", virtio / "virtio2", mtu=1400)
    (virtio / "virtio2" / "net" / "eth0" / "device").unlink()
    (virtio / "virtio2" / "net" / "eth0" / "device").symlink_to("../../../virtio2")
    tree.add_netdev("veth0", None, operstate="lowerlayerdown", carrier=0)
    tree.add_netdev("lo", None, operstate="unknown")

    node = scan(tree)

    assert [(n.key, n.name) for n in node.nics] == [("0000:00:03.0", "eth0"), ("veth0", "veth0")]
    eth0, veth0 = node.nics
    assert eth0.pci.vendor == "1af4" and eth0.netdevs[0].mtu == 1400 and eth0.sriov is None
    assert veth0.pci is None and veth0.netdevs[0].carrier is False
    assert veth0.netdevs[0].operstate == "lowerlayerdown"


def test_link_down_reads_as_unknown_carrier_and_speed(tree: SysfsTree) -> None:
    pf_dir = tree.add_pf("0000:3b:00.0", "ice", netdev=None, numvfs=0)
    tree.add_netdev("ens1f0", pf_dir, operstate="down", carrier=None, speed=None)

    (pf,) = scan(tree).pfs

    assert pf.netdevs[0].operstate == "down"
    assert pf.netdevs[0].carrier is None and pf.netdevs[0].speed is None


def test_non_network_devices_are_ignored(tree: SysfsTree) -> None:
    tree.add_pci("0000:00:1f.2", 0x8086, 0xA352, driver="ahci", pci_class=0x010601)
    tree.add_pf("0000:3b:00.0", "ice", netdev="ens1f0")

    assert [n.key for n in scan(tree).nics] == ["0000:3b:00.0"]


class VanishingSysfs(Sysfs):
    """Sysfs where the kernel removes one VF (or rebinds it) just as the scan reads it."""

    def __init__(self, tree: SysfsTree, victim: str, action: str) -> None:
        super().__init__(tree.root)
        self.tree, self.victim, self.action, self.fired = tree, victim, action, False

    def pci_iommu_group(self, address: str) -> int | None:
        group = super().pci_iommu_group(address)
        if address == self.victim and not self.fired:
            self.fired = True
            if self.action == "remove":
                self.tree.remove_pci(address)
            else:
                self.tree.unbind(address)
                self.tree.bind(address, "vfio-pci")
        return group


def test_vf_vanishing_mid_scan_is_reported_with_what_was_read(
    tree: SysfsTree, caplog: pytest.LogCaptureFixture
) -> None:
    (victim, *_) = tree.set_numvfs(
        tree.add_pf("0000:3b:00.0", "ice", netdev="ens1f0").name, 3, "ice",
        netdev_prefix="ens1f0",
    )
    sysfs = VanishingSysfs(tree, victim, "remove")

    with caplog.at_level(logging.WARNING):
        (pf,) = Scanner(sysfs, hostname="n").scan().pfs

    vf0 = pf.sriov.vfs[0]
    assert vf0.pci.address == victim and vf0.pci.driver == "iavf"
    # Its netdev name was listed before it vanished; its attributes could not be read.
    assert vf0.netdev.name == "ens1f0v0" and vf0.netdev.mac is None and vf0.netdev.mtu is None
    assert [vf.netdev.name for vf in pf.sriov.vfs[1:]] == ["ens1f0v1", "ens1f0v2"]
    assert f"{victim} vanished during the scan" in caplog.text


def test_vf_changing_driver_mid_scan_logs_a_warning(
    tree: SysfsTree, caplog: pytest.LogCaptureFixture
) -> None:
    tree.add_pf("0000:3b:00.0", "ice", netdev="ens1f0", numvfs=2)
    victim = vf_address("0000:3b:00.0", 8, 1, 1)

    with caplog.at_level(logging.WARNING):
        (pf,) = Scanner(VanishingSysfs(tree, victim, "rebind"), hostname="n").scan().pfs

    assert pf.sriov.vfs[1].pci.driver == "iavf"
    assert f"{victim} changed driver during the scan (iavf -> vfio-pci)" in caplog.text


def test_unreadable_attributes_never_crash_the_scan(tree: SysfsTree) -> None:
    pf_dir = tree.add_pf("0000:3b:00.0", "ice", netdev="ens1f0", numvfs=1)
    for name in ("sriov_totalvfs", "numa_node", "vendor"):
        (pf_dir / name).write_text("garbage\n")
    (pf_dir / "net" / "ens1f0" / "mtu").unlink()

    (pf,) = scan(tree).pfs

    assert pf.pci.vendor is None and pf.pci.numa_node is None and pf.sriov.totalvfs == 0
    assert pf.netdevs[0].mtu is None and len(pf.sriov.vfs) == 1


def test_partial_rescan_matches_full_scan_and_sees_removals(tree: SysfsTree) -> None:
    tree.add_pf("0000:3b:00.0", "ice", netdev="ens1f0", numvfs=4, vfio=(3,))
    tree.add_pf("0000:5e:00.0", "i40e", netdev="ens2f0", numvfs=2)
    tree.add_netdev("veth0", None)
    scanner = Scanner(Sysfs(tree.root), hostname="n")
    full = scanner.scan()

    assert scanner.scan_nics([n.key for n in full.nics]) == {n.key: n for n in full.nics}

    tree.set_numvfs("0000:3b:00.0", 1, "ice", netdev_prefix="ens1f0")
    tree.remove_pci("0000:5e:00.0")
    updated = scanner.scan_nics(["0000:3b:00.0", "0000:5e:00.0"])

    assert [vf.index for vf in updated["0000:3b:00.0"].sriov.vfs] == [0]
    assert updated["0000:5e:00.0"] is None
    node = full.replace(updated)
    assert [n.key for n in node.nics] == ["0000:3b:00.0", "veth0"]


def test_event_owner_of_a_vf_is_its_pf(tree: SysfsTree) -> None:
    tree.add_pf("0000:3b:00.0", "ice", netdev="ens1f0", numvfs=2)
    tree.add_netdev("veth0", None)
    scanner = Scanner(Sysfs(tree.root), hostname="n")
    vf1 = vf_address("0000:3b:00.0", 8, 1, 1)

    assert scanner.owner_key(pci_address=vf1) == "0000:3b:00.0"
    assert scanner.owner_key(netdev="ens1f0v1") == "0000:3b:00.0"
    assert scanner.owner_key(netdev="ens1f0") == "0000:3b:00.0"
    assert scanner.owner_key(netdev="veth0") == "veth0"
    assert scanner.owner_key(netdev="gone0") is None

    node = scanner.scan()
    tree.remove_pci(vf1)
    # A removed VF can no longer be found in sysfs; the last snapshot still knows its PF.
    assert scanner.owner_key(pci_address=vf1) is None
    assert node.owner_of_pci(vf1) == "0000:3b:00.0"
    assert node.owner_of_netdev(name="ens1f0v1") == "0000:3b:00.0"


def test_json_document_follows_the_published_schema(tree: SysfsTree, inventory_validator) -> None:
    pf_dir = tree.add_pf("0000:3b:00.0", "ice", netdev="ens1f0", numvfs=2, vfio=(1,),
                         numa_node=0)
    tree.add_netdev("rep0", pf_dir, phys_port_name="pf0vf0")
    tree.add_pf("0000:af:00.0", "mlx5", netdev=None)
    tree.add_netdev("veth0", None, carrier=None)

    doc = scan(tree).to_dict()

    inventory_validator.validate(doc)
    assert doc["hostname"] == "worker-1"
    ice = doc["nics"][0]
    assert ice["sriov"]["vfs"][1]["driver"] == "vfio-pci"
    assert ice["sriov"]["vfs"][0]["representor"] == "rep0"
