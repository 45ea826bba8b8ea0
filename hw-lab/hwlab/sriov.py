"""Creating VFs through sysfs and waiting until the kernel and udev have finished with them."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hwlab.sysfs import Sysfs, wait_for


@dataclass(frozen=True)
class VF:
    """A VF of an inventory PF."""

    index: int
    pci: str
    netdev: str


@dataclass(frozen=True)
class VFOwner:
    """What VF settings are configured on: a PCI PF (igb, ice, ...) or a netdevsim device."""

    label: str
    netdev: str
    settings: frozenset[str]
    unsupported: frozenset[str]
    enable: Callable[[int], list[int]]  # creates N VFs, returns their indexes


def settle(timeout: int = 60) -> None:
    """Wait for udev to finish processing events (renames), if udev runs here."""
    udevadm = shutil.which("udevadm")
    if udevadm is not None:
        subprocess.run([udevadm, "settle", f"--timeout={timeout}"], check=False)


def wait_netdev(sysfs: Sysfs, pci: str, timeout: float = 60.0) -> str:
    """The (settled, udev-renamed) netdev name of a PCI function."""
    wait_for(f"a netdev on {pci}", lambda: sysfs.netdevs(pci), timeout)
    settle()
    return wait_for(f"a netdev on {pci}", lambda: (sysfs.netdevs(pci) or [None])[0], timeout)


def wait_driver(sysfs: Sysfs, pci: str, driver: str, timeout: float = 60.0) -> None:
    wait_for(f"{pci} bound to {driver}", lambda: sysfs.driver(pci) == driver, timeout)


def rebind(sysfs: Sysfs, pci: str, driver: str) -> str:
    """Unbind and re-probe `pci` with `driver` (a VF driver then takes an admin MAC).

    Returns the device's netdev name once udev has settled.
    """
    sysfs.bind(pci, driver)
    wait_driver(sysfs, pci, driver)
    sysfs.write(pci, "driver_override", "\n")
    return wait_netdev(sysfs, pci)


def create_vfs(sysfs: Sysfs, pf_pci: str, count: int, vf_driver: str) -> list[VF]:
    """sriov_numvfs = 0, then `count`; wait for the virtfn links, the VF driver and netdevs."""
    sysfs.set_numvfs(pf_pci, count)

    def all_virtfns() -> list[str] | None:
        addrs = sysfs.virtfns(pf_pci)
        return addrs if len(addrs) == count else None

    addrs = wait_for(f"{count} virtfn links on {pf_pci}", all_virtfns)
    for addr in addrs:
        wait_driver(sysfs, addr, vf_driver)
        wait_for(f"a netdev on {addr}", lambda addr=addr: sysfs.netdevs(addr))
    settle()  # udev renames the new netdevs: read their names only after it is done
    return [VF(i, addr, sysfs.netdevs(addr)[0]) for i, addr in enumerate(addrs)]


def netdevsim_create(root: Path, dev_id: int, ports: int) -> Path:
    """Create netdevsim<dev_id> (if absent) and return its sysfs directory."""
    path = root / "bus" / "netdevsim" / "devices" / f"netdevsim{dev_id}"
    if not path.exists():
        (root / "bus" / "netdevsim" / "new_device").write_text(f"{dev_id} {ports}")
    wait_for(f"{path}/net", lambda: (path / "net").is_dir() and any((path / "net").iterdir()))
    settle()
    return path


def netdevsim_delete(root: Path, dev_id: int) -> None:
    (root / "bus" / "netdevsim" / "del_device").write_text(str(dev_id))
