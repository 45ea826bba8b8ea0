"""Binding a VF to a driver: ``driver_override``, unbind, ``drivers_probe``, verified.

``driver_override`` stays set after a successful bind, so the VF goes back to the same driver
when that driver is reloaded, and so the PCI core probes it even with
``sriov_drivers_autoprobe`` 0 (a VF with autoprobe off is only probed when overridden). A bind
that does not end on the wanted driver is rolled back to the previous driver.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import subprocess
import time

from nodeagent.provision.errors import ProvisionError
from nodeagent.provision.policy import DRIVER_NAME, VFIO
from nodeagent.sysfs import Sysfs

log = logging.getLogger(__name__)

#: The VF driver of common PF drivers, where modules.alias is not readable (containers).
VF_DRIVER_OF_PF = {
    "igb": "igbvf", "ixgbe": "ixgbevf", "i40e": "iavf", "ice": "iavf", "mlx5_core": "mlx5_core",
    "bnxt_en": "bnxt_en", "qede": "qede", "nfp": "nfp", "hinic": "hinic", "enic": "enic",
}


def kernel_vf_driver(sysfs: Sysfs, vf: str, pf_driver: str | None,
                     modules_dir: str | None = None) -> str | None:
    """The kernel driver the VF's PCI IDs call for: from modules.alias, else the PF's family."""
    modalias = sysfs.pci_attr(vf, "modalias")
    if modalias:
        modules_dir = modules_dir or f"/lib/modules/{os.uname().release}"
        for name in ("modules.alias", "modules.builtin.alias"):
            driver = _alias_match(os.path.join(modules_dir, name), modalias)
            if driver:
                return driver
    return VF_DRIVER_OF_PF.get(pf_driver or "")


def _alias_match(path: str, modalias: str) -> str | None:
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if (len(parts) == 3 and parts[0] == "alias" and parts[1].startswith("pci:")
                        and parts[2] not in ("vfio_pci", "pci_stub")
                        and fnmatch.fnmatchcase(modalias, parts[1])):
                    return parts[2]
    except OSError:
        return None
    return None


class Binder:
    def __init__(self, sysfs: Sysfs, dev_root: str = "/dev", timeout: float = 5.0) -> None:
        self.sysfs = sysfs
        self.dev_root = dev_root
        self.timeout = timeout

    def bind(self, pci: str, driver: str) -> None:
        """Bind ``pci`` to ``driver`` (also: rebind to the same driver, which makes a kernel VF
        driver read an admin MAC set since). Raises ProvisionError after rolling back."""
        if not DRIVER_NAME.match(driver):
            raise ProvisionError(f"{driver!r} is not a driver name")
        group = self.sysfs.pci_iommu_group(pci)
        if driver == VFIO and group is None:
            raise ProvisionError(f"VF {pci} has no IOMMU group: enable the IOMMU (intel_iommu=on"
                                 " or amd_iommu=on) to use vfio-pci")
        self._ensure_loaded(driver)
        previous = self.sysfs.pci_driver(pci)
        previous_override = self.sysfs.pci_attr(pci, "driver_override")
        try:
            self._attach(pci, driver)
            if driver == VFIO:
                self._wait_for_group_device(pci, group)
        except ProvisionError as exc:
            self._roll_back(pci, previous, previous_override)
            restored = self.sysfs.pci_driver(pci)
            raise ProvisionError(f"{exc}; VF left on {restored or 'no driver'}") from None

    def _ensure_loaded(self, driver: str) -> None:
        if self.sysfs.pci_driver_loaded(driver):
            return
        module = driver.replace("-", "_")
        try:  # an argument vector, never a shell; the name matched DRIVER_NAME
            subprocess.run(["modprobe", "--", module], check=False, timeout=30,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.debug("modprobe %s: %s", module, exc)
        if not self.sysfs.pci_driver_loaded(driver):
            raise ProvisionError(f"driver {driver} is not available (not loaded, and no module"
                                 " of that name could be loaded)")

    def _attach(self, pci: str, driver: str) -> None:
        try:
            self.sysfs.pci_write(pci, "driver_override", driver)
            self.sysfs.pci_unbind(pci)
        except OSError as exc:
            raise ProvisionError(f"unbinding VF {pci}: {exc.strerror or exc}") from None
        try:
            self.sysfs.pci_probe(pci)
        except OSError as exc:  # the probe's own error; the check below says what happened
            log.debug("drivers_probe %s: %s", pci, exc)
        deadline = time.monotonic() + self.timeout
        while (bound := self.sysfs.pci_driver(pci)) != driver:
            if time.monotonic() > deadline:
                raise ProvisionError(f"VF {pci} did not bind to {driver}"
                                     f" (now on {bound or 'no driver'})")
            time.sleep(0.02)

    def _wait_for_group_device(self, pci: str, group: int | None) -> None:
        path = f"{self.dev_root}/vfio/{group}"
        deadline = time.monotonic() + self.timeout
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise ProvisionError(f"VF {pci} is on vfio-pci but {path} did not appear")
            time.sleep(0.02)

    def _roll_back(self, pci: str, previous: str | None, previous_override: str | None) -> None:
        try:
            self.sysfs.pci_write(pci, "driver_override", previous or "\n")
            self.sysfs.pci_unbind(pci)
            if previous is not None:
                self.sysfs.pci_probe(pci)
            override = previous_override if previous_override not in (None, "(null)") else ""
            self.sysfs.pci_write(pci, "driver_override", override or "\n")
        except OSError as exc:
            log.warning("rolling VF %s back to %s: %s", pci, previous, exc)
