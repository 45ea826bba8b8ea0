"""Access to sysfs under a configurable root.

This is the only module that builds ``/sys`` paths. Every reader tolerates the kernel removing a
device underneath it: a missing or unreadable attribute is ``None``, never an exception, because
devices vanish (VF removal, driver unbind) while a scan is running. Writers (provisioning's) raise
OSError with the kernel's errno: a refused write must be reported, not skipped.
"""

from __future__ import annotations

import os
import re

PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
VIRTFN = re.compile(r"^virtfn(\d+)$")

#: PCI base class 0x02: network controllers (Ethernet, InfiniBand, ...).
PCI_CLASS_NETWORK = 0x02


class Sysfs:
    """A sysfs tree rooted at ``root`` (``/sys`` on a real node, a fixture tree in unit tests)."""

    def __init__(self, root: str | os.PathLike[str] = "/sys") -> None:
        # Plain strings, not pathlib: a scan builds thousands of paths and pathlib is 10x slower.
        self.root = os.fspath(root)
        self._pci_devices = f"{self.root}/bus/pci/devices"
        self._class_net = f"{self.root}/class/net"

    # -- raw access -------------------------------------------------------------------------

    def read(self, path: str) -> str | None:
        """The stripped text of an attribute, or None when it is absent or unreadable.

        Some attributes exist but fail to read (``carrier`` and ``speed`` of a link that is down
        return EINVAL): those are None too.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return os.read(fd, 4096).decode("utf-8", "replace").strip()
        except OSError:
            return None
        finally:
            os.close(fd)

    def read_int(self, path: str, base: int = 10) -> int | None:
        text = self.read(path)
        if text is None:
            return None
        try:
            return int(text, base)
        except ValueError:
            return None

    def link_name(self, path: str) -> str | None:
        """The last component of a symlink's target (a driver, an IOMMU group), or None."""
        try:
            return os.path.basename(os.readlink(path))
        except OSError:
            return None

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except OSError:
            return []

    # -- PCI --------------------------------------------------------------------------------

    def pci_dir(self, address: str) -> str:
        return f"{self._pci_devices}/{address}"

    def pci_addresses(self) -> list[str]:
        return [a for a in self.listdir(self._pci_devices) if PCI_ADDRESS.match(a)]

    def pci_exists(self, address: str) -> bool:
        return os.path.exists(self.pci_dir(address))

    def pci_class(self, address: str) -> int | None:
        return self.read_int(f"{self._pci_devices}/{address}/class", 16)

    def pci_attr(self, address: str, name: str) -> str | None:
        return self.read(f"{self._pci_devices}/{address}/{name}")

    def pci_int(self, address: str, name: str, base: int = 10) -> int | None:
        return self.read_int(f"{self._pci_devices}/{address}/{name}", base)

    def pci_id(self, address: str, name: str) -> str | None:
        """``vendor`` or ``device`` as four lower-case hex digits (``0x8086`` -> ``8086``)."""
        value = self.pci_int(address, name, 16)
        return None if value is None else f"{value:04x}"

    def pci_driver(self, address: str) -> str | None:
        return self.link_name(f"{self._pci_devices}/{address}/driver")

    def pci_iommu_group(self, address: str) -> int | None:
        name = self.link_name(f"{self._pci_devices}/{address}/iommu_group")
        return int(name) if name is not None and name.isdigit() else None

    def iommu_group_name(self, group: int) -> str | None:
        """An IOMMU group's ``name`` (``vfio-noiommu`` for VFIO's no-IOMMU groups)."""
        return self.read(f"{self.root}/kernel/iommu_groups/{group}/name")

    def pci_physfn(self, address: str) -> str | None:
        """The PF of a VF (its ``physfn`` link), or None for anything else."""
        return self.link_name(f"{self._pci_devices}/{address}/physfn")

    def pci_virtfns(self, address: str) -> dict[int, str]:
        """A PF's VFs from its ``virtfn<N>`` links: index -> PCI address."""
        found: dict[int, str] = {}
        device_dir = self.pci_dir(address)
        for entry in self.listdir(device_dir):
            match = VIRTFN.match(entry)
            if match:
                target = self.link_name(f"{device_dir}/{entry}")
                if target is not None:
                    found[int(match.group(1))] = target
        return dict(sorted(found.items()))

    def pci_netdevs(self, address: str) -> list[str]:
        """Netdevs of a PCI function in this sysfs' network namespace (``net/``)."""
        return self.listdir(f"{self._pci_devices}/{address}/net")

    def pci_has_sriov(self, address: str) -> bool:
        return os.path.exists(f"{self._pci_devices}/{address}/sriov_totalvfs")

    def pci_attr_path(self, address: str, name: str) -> str:
        return f"{self._pci_devices}/{address}/{name}"

    # -- PCI writes (provisioning) ----------------------------------------------------------

    def write(self, path: str, value: str) -> None:
        """One write(2) of ``value``, as the kernel wants sysfs stores; OSError on refusal."""
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def pci_write(self, address: str, name: str, value: str) -> None:
        self.write(self.pci_attr_path(address, name), value)

    def pci_unbind(self, address: str) -> None:
        """Detach a function from its driver (nothing to do when it has none)."""
        driver = self.pci_driver(address)
        if driver is not None:
            self.write(f"{self.root}/bus/pci/drivers/{driver}/unbind", address)

    def pci_probe(self, address: str) -> None:
        """Ask the PCI core to bind a driver: ``driver_override`` if set, else by ID match."""
        self.write(f"{self.root}/bus/pci/drivers_probe", address)

    def pci_driver_loaded(self, driver: str) -> bool:
        return os.path.isdir(f"{self.root}/bus/pci/drivers/{driver}")

    # -- net class --------------------------------------------------------------------------

    def netdev_dir(self, name: str) -> str:
        return f"{self._class_net}/{name}"

    def netdev_exists(self, name: str) -> bool:
        return os.path.exists(self.netdev_dir(name))

    def netdev_names(self) -> list[str]:
        return self.listdir(self._class_net)

    def netdev_attr(self, name: str, attr: str) -> str | None:
        return self.read(f"{self._class_net}/{name}/{attr}")

    def netdev_int(self, name: str, attr: str, base: int = 10) -> int | None:
        return self.read_int(f"{self._class_net}/{name}/{attr}", base)

    def netdev_pci_address(self, name: str) -> str | None:
        """The PCI function behind a netdev, or None for a virtual or non-PCI one.

        A netdev's ``device`` link points at a PCI function (igb, ice, mlx5) or at a bus device
        whose parent is one (``virtioN`` under a virtio-pci function).
        """
        try:
            device = os.path.realpath(f"{self.netdev_dir(name)}/device", strict=True)
        except OSError:
            return None
        for candidate in (device, os.path.dirname(device)):
            address = os.path.basename(candidate)
            if PCI_ADDRESS.match(address) and self.link_name(f"{candidate}/subsystem") == "pci":
                return address
        return None
