"""Reads and writes of PCI sysfs attributes, rooted so that tests can use a fixture tree."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    """Poll probe() until it returns something truthy; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


class Sysfs:
    """PCI device attributes under <root>/bus/pci/devices."""

    def __init__(self, root: str | Path = "/sys") -> None:
        self.root = Path(root)
        self.pci_devices = self.root / "bus" / "pci" / "devices"

    def device(self, addr: str) -> Path:
        return self.pci_devices / addr

    def exists(self, addr: str) -> bool:
        return self.device(addr).is_dir()

    def read(self, addr: str, attr: str) -> str:
        return (self.device(addr) / attr).read_text().strip()

    def write(self, addr: str, attr: str, value: str) -> None:
        (self.device(addr) / attr).write_text(value)

    def pci_id(self, addr: str) -> tuple[str, str]:
        """(vendor, device) as 4 lowercase hex digits."""
        return (
            self.read(addr, "vendor").lower().removeprefix("0x"),
            self.read(addr, "device").lower().removeprefix("0x"),
        )

    def driver(self, addr: str) -> str | None:
        link = self.device(addr) / "driver"
        return Path(os.readlink(link)).name if link.is_symlink() else None

    def netdevs(self, addr: str) -> list[str]:
        net = self.device(addr) / "net"
        return sorted(p.name for p in net.iterdir()) if net.is_dir() else []

    def numa_node(self, addr: str) -> int:
        return int(self.read(addr, "numa_node"))

    def iommu_group(self, addr: str) -> str | None:
        link = self.device(addr) / "iommu_group"
        return Path(os.readlink(link)).name if link.is_symlink() else None

    def virtfns(self, addr: str) -> list[str]:
        """VF PCI addresses in VF-index order (virtfn0, virtfn1, ...)."""
        dev = self.device(addr)
        links = [p for p in dev.glob("virtfn*") if p.name[6:].isdigit()]
        links.sort(key=lambda p: int(p.name[6:]))
        return [Path(os.readlink(p)).name for p in links]

    def set_numvfs(self, addr: str, count: int) -> None:
        """Write sriov_numvfs: 0 first (the kernel refuses N -> M with both non-zero)."""
        if int(self.read(addr, "sriov_numvfs")) != 0:
            self.write(addr, "sriov_numvfs", "0")
        if count:
            self.write(addr, "sriov_numvfs", str(count))

    def bind(self, addr: str, driver: str | None) -> None:
        """Rebind a device: driver_override, unbind, drivers_probe (None clears the override)."""
        self.write(addr, "driver_override", f"{driver}\n" if driver else "\n")
        current = self.driver(addr)
        if current is not None:
            (self.device(addr) / "driver" / "unbind").write_text(addr)
        (self.root / "bus" / "pci" / "drivers_probe").write_text(addr)
