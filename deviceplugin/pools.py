"""Pool membership: which VFs of a node snapshot each configured resource advertises.

A VF joins the first pool (in ``resourceList`` order) with a selector that matches it; within a
pool, a list of selectors is tried in order. Every key present in a selector must match.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from deviceplugin.config import PluginConfig, ResourceConfig, Selector
from nodeagent.model import Nic, Node, VirtualFunction

log = logging.getLogger(__name__)

VFIO_DRIVER = "vfio-pci"


@dataclass(frozen=True)
class HealthPolicy:
    """When a VF is advertised as unhealthy."""

    pf_link_down: bool = True  # its PF's netdev has no carrier / is not up
    driver_unbound: bool = True  # the VF has no driver


@dataclass(frozen=True)
class PoolDevice:
    """One advertised VF."""

    id: str  # the VF's PCI address
    pf: str  # the PF's PCI address
    pf_name: str | None
    index: int
    vendor: str | None
    device: str | None
    driver: str | None
    numa_node: int | None
    iommu_group: int | None
    healthy: bool

    @property
    def vfio(self) -> bool:
        return self.driver == VFIO_DRIVER


@dataclass(frozen=True)
class Pool:
    resource: ResourceConfig
    devices: tuple[PoolDevice, ...]

    def by_id(self) -> dict[str, PoolDevice]:
        return {d.id: d for d in self.devices}


def _pf_link_up(pf: Nic) -> bool:
    if not pf.netdevs:
        return True  # nothing to judge by
    uplink = pf.netdevs[0]
    if uplink.carrier is False:
        return False
    return uplink.operstate in (None, "up", "unknown")


def _device(pf: Nic, vf: VirtualFunction, policy: HealthPolicy) -> PoolDevice:
    healthy = not (
        (policy.driver_unbound and vf.pci.driver is None)
        or (policy.pf_link_down and not _pf_link_up(pf))
    )
    return PoolDevice(
        id=vf.pci.address,
        pf=pf.key,
        pf_name=pf.netdevs[0].name if pf.netdevs else None,
        index=vf.index,
        vendor=vf.pci.vendor,
        device=vf.pci.device,
        driver=vf.pci.driver,
        numa_node=vf.pci.numa_node,
        iommu_group=vf.pci.iommu_group,
        healthy=healthy,
    )


def selector_matches(selector: Selector, device: PoolDevice, device_type: str) -> bool:
    if selector.vendors and device.vendor not in selector.vendors:
        return False
    if selector.devices and device.device not in selector.devices:
        return False
    if selector.drivers and device.driver not in selector.drivers:
        return False
    if selector.pci_addresses and device.id not in selector.pci_addresses:
        return False
    if device_type == "accelerator":
        return True  # PF-based keys belong to network devices
    if selector.pf_names and not any(
        r.matches(device.pf_name or "", device.index) for r in selector.pf_names
    ):
        return False
    return not selector.root_devices or any(
        r.matches(device.pf, device.index) for r in selector.root_devices
    )


def resource_matches(resource: ResourceConfig, device: PoolDevice) -> bool:
    if resource.device_type == "auxNetDevice":
        return False  # the node model has no auxiliary (SF) devices
    return any(selector_matches(s, device, resource.device_type) for s in resource.selectors)


def build_pools(
    config: PluginConfig, node: Node, policy: HealthPolicy | None = None
) -> dict[str, Pool]:
    """Pools keyed by full resource name, in config order; each VF lands in at most one."""
    policy = policy or HealthPolicy()
    members: dict[str, list[PoolDevice]] = {r.full_name: [] for r in config.resources}
    for pf, vf in node.vfs():
        device = _device(pf, vf, policy)
        for resource in config.resources:
            if resource_matches(resource, device):
                members[resource.full_name].append(device)
                break
    return {
        r.full_name: Pool(r, tuple(sorted(members[r.full_name], key=lambda d: d.id)))
        for r in config.resources
    }


def log_unsupported(config: PluginConfig) -> None:
    """One note per pool for selector keys and device types the node model cannot answer."""
    for resource in config.resources:
        keys = sorted({k for s in resource.selectors for k in s.unsupported})
        if keys:
            log.warning("pool %s: selector keys %s are accepted but ignored (not in the node "
                        "model)", resource.full_name, ", ".join(keys))
        if resource.device_type == "auxNetDevice":
            log.warning("pool %s: deviceType auxNetDevice has no devices in the node model; "
                        "the pool stays empty", resource.full_name)
