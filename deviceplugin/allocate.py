"""What a container gets for a set of VFs: environment and device nodes (no gRPC here).

A VFIO group in no-IOMMU mode (``vfio.enable_unsafe_noiommu_mode``, typically in VMs) has the
device node ``/dev/vfio/noiommu-<group>``, and its sysfs group's ``name`` reads
``vfio-noiommu``. As sriov-network-device-plugin does, the container then gets that host node
under the plain path ``/dev/vfio/<group>``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from deviceplugin.pools import PoolDevice
from nodeagent.sysfs import Sysfs

VFIO_CONTAINER = "/dev/vfio/vfio"
NOIOMMU_GROUP_NAME = "vfio-noiommu"
VHOST_NET = ("/dev/vhost-net", "/dev/net/tun")


#: More device IDs than any node has VFs: a request beyond it is refused before any work.
MAX_REQUEST_IDS = 65536


class AllocationError(ValueError):
    """The request names devices the pool cannot give; the message names them."""


def request_ids(ids: Iterable[str], field: str, known: Mapping[str, PoolDevice],
                resource: str) -> list[str]:
    """The IDs of a request field, deduplicated; AllocationError naming ``field`` when there
    are too many or some are not in the pool (at most a few named: the message stays short)."""
    ids = list(ids)
    if len(ids) > MAX_REQUEST_IDS:
        raise AllocationError(f"{field}: {len(ids)} device IDs, more than {MAX_REQUEST_IDS}")
    ids = list(dict.fromkeys(ids))
    unknown = [i for i in ids if i not in known]
    if unknown:
        shown = ", ".join(repr(i[:64]) for i in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise AllocationError(f"{field}: unknown devices for {resource}: {shown}{more}")
    return ids


@dataclass(frozen=True)
class Allocation:
    envs: dict[str, str]
    device_specs: list[tuple[str, str, str]] = field(default_factory=list)  # container, host, perm


GroupPaths = Callable[[int], tuple[str, str]]  # IOMMU group -> (host path, container path)


def plain_group_paths(group: int) -> tuple[str, str]:
    return f"/dev/vfio/{group}", f"/dev/vfio/{group}"


class VfioGroupPaths:
    """Host and container paths of a VFIO group's device node, no-IOMMU groups included.

    ``sysfs_root`` and ``dev_root`` are where this process sees the host's /sys and /dev; the
    paths returned are the host's own (``/dev/vfio/...``), as the kubelet needs them.
    """

    def __init__(self, sysfs_root: str = "/sys", dev_root: str = "/dev") -> None:
        self.sysfs = Sysfs(sysfs_root)
        self.dev_root = dev_root

    def noiommu(self, group: int) -> bool:
        name = self.sysfs.iommu_group_name(group)
        if name is not None:
            return name == NOIOMMU_GROUP_NAME
        # No group name in sysfs: go by the device node the vfio driver made.
        return (not os.path.exists(f"{self.dev_root}/vfio/{group}")
                and os.path.exists(f"{self.dev_root}/vfio/noiommu-{group}"))

    def __call__(self, group: int) -> tuple[str, str]:
        container = f"/dev/vfio/{group}"
        return (f"/dev/vfio/noiommu-{group}" if self.noiommu(group) else container), container


def env_name(full_resource_name: str) -> str:
    """``intel.com/sriov_net`` -> ``PCIDEVICE_INTEL_COM_SRIOV_NET``."""
    return "PCIDEVICE_" + full_resource_name.replace(".", "_").replace("/", "_").upper()


def allocate(
    full_resource_name: str,
    devices: Mapping[str, PoolDevice],
    ids: Iterable[str],
    *,
    need_vhost_net: bool = False,
    group_paths: GroupPaths = plain_group_paths,
) -> Allocation:
    ids = request_ids(ids, "devices_ids", devices, full_resource_name)
    unhealthy = [i for i in ids if not devices[i].healthy]
    if unhealthy:
        raise AllocationError(
            f"unhealthy devices for {full_resource_name}: {', '.join(unhealthy)}"
        )
    info: dict[str, dict[str, dict[str, str]]] = {}
    specs: dict[str, tuple[str, str, str]] = {}
    for device_id in ids:
        device = devices[device_id]
        info[device_id] = {"generic": {"deviceID": device_id}}
        if device.vfio and device.iommu_group is not None:
            host, container = group_paths(device.iommu_group)
            info[device_id]["vfio"] = {"mount": VFIO_CONTAINER, "dev-mount": container}
            specs.setdefault(VFIO_CONTAINER, (VFIO_CONTAINER, VFIO_CONTAINER, "rw"))
            specs.setdefault(container, (container, host, "rw"))
    if need_vhost_net:
        for path in VHOST_NET:
            specs.setdefault(path, (path, path, "rw"))
    name = env_name(full_resource_name)
    envs = {name: ",".join(ids), f"{name}_INFO": json.dumps(info, separators=(",", ":"))}
    return Allocation(envs, list(specs.values()))
