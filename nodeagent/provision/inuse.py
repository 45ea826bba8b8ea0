"""Which VFs pods are using, so provisioning never pulls one out from under a pod.

Four signs, any of which counts: a CNI attachment record (netdevice and DPDK attachments made
through this agent); the kubelet having assigned the VF to a pod (device plugin, from the
kubelet's pod-resources API, when the daemon runs the device plugin); the VF's VFIO group open
by some process (a DPDK application); a VF on a kernel network driver whose netdev is not in the
host namespace (moved into a pod by any CNI).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from nodeagent.model import Nic
from nodeagent.provision.policy import VFIO
from nodeagent.sysfs import Sysfs
from nodeagent.vfstate import VfState


def open_vfio_groups(proc: str = "/proc") -> set[int]:
    """IOMMU groups whose /dev/vfio/<group> some process holds open."""
    groups: set[int] = set()
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to read
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith("/dev/vfio/") and target[10:].isdigit():
                groups.add(int(target[10:]))
    return groups


class InUse:
    def __init__(self, sysfs: Sysfs, vfstate: VfState | None, proc: str = "/proc",
                 kubelet_assigned: Callable[[], Mapping[str, str]] | None = None) -> None:
        self.sysfs = sysfs
        self.vfstate = vfstate
        self.proc = proc
        #: VF PCI address -> "namespace/pod" the kubelet assigned it to (device plugin).
        self.kubelet_assigned = kubelet_assigned

    def vfs(self, pf: Nic) -> dict[str, str]:
        """VF PCI address -> why it counts as in use, for one PF's VFs."""
        if pf.sriov is None or not pf.sriov.vfs:
            return {}
        found: dict[str, str] = {}
        if self.vfstate is not None:
            for att in self.vfstate.all():
                found[att.pci] = f"attached by CNI to {att.container_id[:12]}/{att.ifname}"
        if self.kubelet_assigned is not None:
            for address, pod in self.kubelet_assigned().items():
                found.setdefault(address, f"assigned by the kubelet to pod {pod}")
        vfio = open_vfio_groups(self.proc) if any(
            vf.pci.driver == VFIO for vf in pf.sriov.vfs) else set()
        for vf in pf.sriov.vfs:
            address = vf.pci.address
            if address in found:
                continue
            if vf.pci.driver == VFIO and vf.pci.iommu_group in vfio:
                found[address] = f"its VFIO group {vf.pci.iommu_group} is open"
            elif vf.pci.driver not in (None, VFIO) and vf.netdev is None \
                    and not self.sysfs.pci_netdevs(address):
                found[address] = "its netdev is not in the host namespace"
        vf_addresses = {vf.pci.address for vf in pf.sriov.vfs}
        return {k: v for k, v in found.items() if k in vf_addresses}
