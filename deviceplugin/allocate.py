"""What a container gets for a set of VFs: environment and device nodes (no gRPC here)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from deviceplugin.pools import PoolDevice

VFIO_CONTAINER = "/dev/vfio/vfio"
VHOST_NET = ("/dev/vhost-net", "/dev/net/tun")


class AllocationError(ValueError):
    """The request names devices the pool cannot give; the message names them."""


@dataclass(frozen=True)
class Allocation:
    envs: dict[str, str]
    device_specs: list[tuple[str, str, str]] = field(default_factory=list)  # container, host, perm


def env_name(full_resource_name: str) -> str:
    """``intel.com/sriov_net`` -> ``PCIDEVICE_INTEL_COM_SRIOV_NET``."""
    return "PCIDEVICE_" + full_resource_name.replace(".", "_").replace("/", "_").upper()


def allocate(
    full_resource_name: str,
    devices: Mapping[str, PoolDevice],
    ids: Iterable[str],
    *,
    need_vhost_net: bool = False,
) -> Allocation:
    ids = list(dict.fromkeys(ids))
    unknown = [i for i in ids if i not in devices]
    if unknown:
        raise AllocationError(f"unknown devices for {full_resource_name}: {', '.join(unknown)}")
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
            group = f"/dev/vfio/{device.iommu_group}"
            info[device_id]["vfio"] = {"mount": VFIO_CONTAINER, "dev-mount": group}
            for path in (VFIO_CONTAINER, group):
                specs.setdefault(path, (path, path, "rw"))
    if need_vhost_net:
        for path in VHOST_NET:
            specs.setdefault(path, (path, path, "rw"))
    name = env_name(full_resource_name)
    envs = {name: ",".join(ids), f"{name}_INFO": json.dumps(info, separators=(",", ":"))}
    return Allocation(envs, list(specs.values()))
