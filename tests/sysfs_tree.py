"""Builds sysfs trees laid out exactly as the kernel lays them out, under a temporary root.

Devices live under ``devices/pci0000:00/<root port>/<function>``; ``bus/pci/devices``,
``bus/pci/drivers/<driver>``, ``class/net`` and ``kernel/iommu_groups`` hold relative symlinks
to them, as do a device's ``driver``, ``iommu_group``, ``subsystem``, ``physfn`` and ``virtfn<N>``
links and a netdev's ``device`` link. ``hw-lab/suite/test_discovery.py`` checks this layout
against a real kernel's ``/sys``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Profile:
    """A real NIC family: PF and VF IDs, drivers and the PF's SR-IOV capability."""

    vendor: int
    pf_device: int
    vf_device: int
    pf_driver: str
    vf_driver: str
    totalvfs: int
    vf_offset: int
    vf_stride: int
    speed: int


PROFILES = {
    # Intel E810-C (ice / iavf)
    "ice": Profile(0x8086, 0x1592, 0x1889, "ice", "iavf", 256, 8, 1, 100000),
    # Intel X710 (i40e / iavf)
    "i40e": Profile(0x8086, 0x1572, 0x154C, "i40e", "iavf", 64, 16, 1, 10000),
    # Intel 82576 (igb / igbvf), the NIC QEMU emulates in the virtual lab
    "igb": Profile(0x8086, 0x10C9, 0x10CA, "igb", "igbvf", 7, 0x80, 2, 1000),
    # NVIDIA ConnectX-5 (mlx5_core for PF and VF)
    "mlx5": Profile(0x15B3, 0x1017, 0x1018, "mlx5_core", "mlx5_core", 16, 2, 1, 25000),
}


def split_address(address: str) -> tuple[int, int, int, int]:
    domain, bus, devfn = address.split(":")
    dev, fn = devfn.split(".")
    return int(domain, 16), int(bus, 16), int(dev, 16), int(fn)


def vf_address(pf_address: str, offset: int, stride: int, index: int) -> str:
    """A VF's address from the PF's routing ID and the SR-IOV First VF Offset and VF Stride."""
    domain, bus, dev, fn = split_address(pf_address)
    rid = (bus << 8 | dev << 3 | fn) + offset + stride * index
    return f"{domain:04x}:{rid >> 8:02x}:{(rid >> 3) & 0x1F:02x}.{rid & 7}"


class SysfsTree:
    """A fake ``/sys`` root with the kernel's layout. Methods return device directories."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._ifindex = 1
        self._next_group = 1
        for sub in ("bus/pci/devices", "bus/pci/drivers", "class/net", "kernel/iommu_groups",
                    "devices/virtual/net"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._write(self.root / "bus" / "pci" / "drivers_probe", "")

    # -- primitives -------------------------------------------------------------------------

    @staticmethod
    def _write(path: Path, value: object) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")

    @staticmethod
    def _link(link: Path, target: Path) -> None:
        """A relative symlink, as the kernel makes them."""
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(target, link.parent))

    def device_dir(self, address: str) -> Path:
        return Path(os.path.realpath(self.root / "bus" / "pci" / "devices" / address))

    # -- PCI functions ----------------------------------------------------------------------

    def add_root_port(self, address: str) -> Path:
        """A PCIe root port (bridge) under host bridge ``pci<domain>:00``."""
        domain = address.split(":")[0]
        port = self.root / "devices" / f"pci{domain}:00" / address
        self._pci_function(port, address, 0x8086, 0x1901, 0x060400, None, -1, None)
        return port

    def add_pci(
        self,
        address: str,
        vendor: int,
        device: int,
        *,
        driver: str | None,
        pci_class: int = 0x020000,
        numa_node: int = -1,
        iommu_group: int | None = None,
        parent: Path | None = None,
    ) -> Path:
        if parent is None:
            parent = self.add_root_port(f"{address.split(':')[0]}:00:{self._next_port():02x}.0")
        path = parent / address
        self._pci_function(path, address, vendor, device, pci_class, driver, numa_node,
                           self._group(iommu_group))
        return path

    def _next_port(self) -> int:
        used = {p.name for p in (self.root / "devices").glob("pci*/*")}
        return next(n for n in range(1, 32) if not any(u.endswith(f":00:{n:02x}.0") for u in used))

    def _group(self, group: int | None) -> int:
        if group is None:
            group = self._next_group
        self._next_group = max(self._next_group, group + 1)
        return group

    def _pci_function(
        self,
        path: Path,
        address: str,
        vendor: int,
        device: int,
        pci_class: int,
        driver: str | None,
        numa_node: int,
        iommu_group: int | None,
    ) -> None:
        path.mkdir(parents=True, exist_ok=True)
        for name, value in {
            "vendor": f"0x{vendor:04x}",
            "device": f"0x{device:04x}",
            "subsystem_vendor": f"0x{vendor:04x}",
            "subsystem_device": "0x0000",
            "class": f"0x{pci_class:06x}",
            "revision": "0x01",
            "numa_node": numa_node,
            "enable": 1,
            "driver_override": "(null)",
            "modalias": f"pci:v{vendor:08X}d{device:08X}sv{vendor:08X}sd00000000"
            f"bc{pci_class >> 16:02X}sc{(pci_class >> 8) & 0xFF:02X}i00",
            "uevent": f"PCI_CLASS={pci_class:X}\nPCI_ID={vendor:04X}:{device:04X}\n"
            f"PCI_SLOT_NAME={address}",
        }.items():
            self._write(path / name, value)
        (path / "power").mkdir(exist_ok=True)
        self._link(path / "subsystem", self.root / "bus" / "pci")
        self._link(self.root / "bus" / "pci" / "devices" / address, path)
        if iommu_group is not None:
            group_dir = self.root / "kernel" / "iommu_groups" / str(iommu_group)
            self._link(group_dir / "devices" / address, path)
            self._link(path / "iommu_group", group_dir)
        if driver is not None:
            self.bind(address, driver)

    def bind(self, address: str, driver: str) -> None:
        path = self.device_dir(address)
        driver_dir = self.root / "bus" / "pci" / "drivers" / driver
        for name in ("bind", "unbind", "new_id", "remove_id"):
            if not (driver_dir / name).exists():
                self._write(driver_dir / name, "")
        self._link(driver_dir / address, path)
        self._link(path / "driver", driver_dir)

    def unbind(self, address: str) -> None:
        path = self.device_dir(address)
        driver = path / "driver"
        if driver.is_symlink():
            (Path(os.path.realpath(driver)) / address).unlink(missing_ok=True)
            driver.unlink()
        for netdev in list((path / "net").glob("*")):
            self.remove_netdev(netdev.name)

    def remove_pci(self, address: str) -> None:
        """What the kernel does when a function goes away: the device and every link to it."""
        path = self.device_dir(address)
        self.unbind(address)
        group = path / "iommu_group"
        if group.is_symlink():
            (Path(os.path.realpath(group)) / "devices" / address).unlink(missing_ok=True)
        (self.root / "bus" / "pci" / "devices" / address).unlink(missing_ok=True)
        shutil.rmtree(path)

    # -- SR-IOV -----------------------------------------------------------------------------

    def add_pf(
        self,
        address: str,
        profile: str,
        *,
        netdev: str | None,
        numvfs: int = 0,
        numa_node: int = 0,
        vf_netdevs: bool = True,
        vfio: tuple[int, ...] = (),
        mac: str | None = None,
    ) -> Path:
        """A PF with ``numvfs`` VFs; VFs in ``vfio`` are bound to vfio-pci (no netdev)."""
        p = PROFILES[profile]
        path = self.add_pci(address, p.vendor, p.pf_device, driver=p.pf_driver,
                            numa_node=numa_node)
        for name, value in {
            "sriov_totalvfs": p.totalvfs,
            "sriov_numvfs": 0,
            "sriov_offset": p.vf_offset,
            "sriov_stride": p.vf_stride,
            "sriov_vf_device": f"{p.vf_device:x}",
            "sriov_drivers_autoprobe": 1,
        }.items():
            self._write(path / name, value)
        if netdev:
            self.add_netdev(netdev, path, mac=mac or self._mac(address), speed=p.speed)
        self.set_numvfs(address, numvfs, profile, netdev_prefix=netdev if vf_netdevs else None,
                        vfio=vfio)
        return path

    def set_numvfs(
        self,
        pf_address: str,
        numvfs: int,
        profile: str,
        *,
        netdev_prefix: str | None = None,
        vfio: tuple[int, ...] = (),
    ) -> list[str]:
        """Create or remove VFs as writing ``sriov_numvfs`` does; returns the VF addresses."""
        p = PROFILES[profile]
        pf = self.device_dir(pf_address)
        for link in sorted(pf.glob("virtfn*")):
            self.remove_pci(os.path.basename(os.readlink(link)))
            link.unlink()
        self._write(pf / "sriov_numvfs", numvfs)
        numa_node = int((pf / "numa_node").read_text())
        addresses = []
        for index in range(numvfs):
            address = vf_address(pf_address, p.vf_offset, p.vf_stride, index)
            driver = "vfio-pci" if index in vfio else p.vf_driver
            vf = self.add_pci(address, p.vendor, p.vf_device, driver=driver,
                              numa_node=numa_node, parent=pf.parent)
            self._link(vf / "physfn", pf)
            self._link(pf / f"virtfn{index}", vf)
            if netdev_prefix and index not in vfio:
                self.add_netdev(f"{netdev_prefix}v{index}", vf, mac=self._mac(address))
            addresses.append(address)
        return addresses

    # -- netdevs ----------------------------------------------------------------------------

    def add_netdev(
        self,
        name: str,
        device: Path | None,
        *,
        mac: str = "02:00:00:00:00:01",
        mtu: int = 1500,
        operstate: str = "up",
        carrier: int | None = 1,
        speed: int | None = None,
        phys_port_name: str = "",
    ) -> Path:
        """A netdev under a device directory (``<device>/net/<name>``), or a virtual one."""
        if device is None:
            path = self.root / "devices" / "virtual" / "net" / name
        else:
            path = device / "net" / name
        self._ifindex += 1
        for attr, value in {
            "address": mac,
            "addr_len": 6,
            "broadcast": "ff:ff:ff:ff:ff:ff",
            "mtu": mtu,
            "operstate": operstate,
            "ifindex": self._ifindex,
            "iflink": self._ifindex,
            "type": 772 if name == "lo" else 1,
            "flags": "0x1003" if operstate == "up" else "0x1002",
            "tx_queue_len": 1000,
            "phys_port_name": phys_port_name,
            "uevent": f"INTERFACE={name}\nIFINDEX={self._ifindex}",
        }.items():
            self._write(path / attr, value)
        # carrier and speed exist but fail with EINVAL while the link is down: leave them out.
        if carrier is not None:
            self._write(path / "carrier", carrier)
        if speed is not None:
            self._write(path / "speed", speed)
        for sub in ("queues", "statistics", "power"):
            (path / sub).mkdir(exist_ok=True)
        if device is not None:
            self._link(path / "device", device)
        self._link(path / "subsystem", self.root / "class" / "net")
        self._link(self.root / "class" / "net" / name, path)
        return path

    def remove_netdev(self, name: str) -> None:
        link = self.root / "class" / "net" / name
        path = Path(os.path.realpath(link))
        link.unlink()
        shutil.rmtree(path)

    @staticmethod
    def _mac(address: str) -> str:
        _, bus, dev, fn = split_address(address)
        return f"02:00:00:{bus:02x}:{dev:02x}:{fn:02x}"
