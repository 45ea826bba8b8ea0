"""Discovery: builds node snapshots from sysfs (devices) and netlink (links, VF settings, routes).

A full :meth:`Scanner.scan` runs at start-up and for recovery; live updates rescan only the NICs
an event touched (:meth:`Scanner.scan_nics`), with the same code, so both always agree.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from nodeagent.model import Netdev, Nic, Node, PciInfo, Sriov, VfConfig, VirtualFunction, sort_nics
from nodeagent.netlink import LinkInfo, Netlink, default_route_links
from nodeagent.sysfs import PCI_CLASS_NETWORK, Sysfs

log = logging.getLogger(__name__)

REPRESENTOR_PORT = re.compile(r"^(?:c\d+)?pf\d+vf(\d+)$")
ARPHRD_LOOPBACK = 772


def node_name() -> str:
    """The Kubernetes node name when the DaemonSet passes it, else the host name."""
    return os.environ.get("NODE_NAME") or socket.gethostname()


@dataclass
class ScanContext:
    """Facts shared by every NIC of one scan or one batch of events, read once."""

    links: dict[str, LinkInfo] = field(default_factory=dict)
    carrying: set[int] = field(default_factory=set)
    sysfs_netdevs: set[str] = field(default_factory=set)
    #: netdev names per PCI function and VFs per PF, filled while listing NICs
    pci_netdevs: dict[str, list[str]] = field(default_factory=dict)
    virtfns: dict[str, dict[int, str]] = field(default_factory=dict)


class Scanner:
    """Reads a node's NICs. ``netlink`` is None where only sysfs is available (fixture trees)."""

    def __init__(
        self, sysfs: Sysfs, netlink: Netlink | None = None, hostname: str | None = None
    ) -> None:
        self.sysfs = sysfs
        self.netlink = netlink
        self.hostname = hostname or node_name()

    # -- entry points -----------------------------------------------------------------------

    def scan(self) -> Node:
        ctx = self.context()
        keys = self._nic_keys(ctx)
        return Node(self.hostname, sort_nics(self._nic(key, ctx) for key in keys))

    def context(self) -> ScanContext:
        """Read what every NIC record needs (links, routes); valid for one batch of work."""
        ctx = ScanContext(sysfs_netdevs=set(self.sysfs.netdev_names()))
        if self.netlink is not None:
            ctx.links = self.netlink.links()
            ctx.carrying = self.default_route_ifindexes(ctx.links)
        return ctx

    def scan_nics(
        self, keys: Iterable[str], ctx: ScanContext | None = None
    ) -> dict[str, Nic | None]:
        """Fresh records for the given NIC keys; None for a NIC that is gone."""
        ctx = ctx or self.context()
        present = set(self._nic_keys(ctx))
        return {key: self._nic(key, ctx) if key in present else None for key in keys}

    def owner_key(
        self,
        pci_address: str | None = None,
        netdev: str | None = None,
        ctx: ScanContext | None = None,
    ) -> str | None:
        """The NIC key an event about a PCI function or a netdev belongs to, if it still exists.

        A VF belongs to its PF; a netdev to its PCI function's owner, or to itself if virtual.
        """
        if netdev is not None:
            pci_address = self.sysfs.netdev_pci_address(netdev)
            if pci_address is None:
                links = ctx.links if ctx else self.netlink.links() if self.netlink else {}
                exists = self.sysfs.netdev_exists(netdev) or netdev in links
                return netdev if exists else None
        if pci_address is None or not self.sysfs.pci_exists(pci_address):
            return None
        return self.sysfs.pci_physfn(pci_address) or pci_address

    def default_route_ifindexes(self, links: dict[str, LinkInfo] | None = None) -> set[int]:
        """Links carrying a default route, directly or as a lower/slave of one that does."""
        if self.netlink is None:
            return set()
        links = self.netlink.links() if links is None else links
        return default_route_links(links.values(), self.netlink.default_route_oifs())

    # -- scan context -----------------------------------------------------------------------

    def _nic_keys(self, ctx: ScanContext) -> list[str]:
        """PCI network functions and SR-IOV PFs (not their VFs), then virtual netdevs."""
        keys = []
        claimed: set[str] = set()
        vfs: set[str] = set()
        # Sorted addresses put a PF before its VFs (a VF's routing ID is the PF's plus an
        # offset), so known VFs are skipped without reading anything.
        for address in self.sysfs.pci_addresses():
            if address in vfs or self.sysfs.pci_physfn(address):
                continue
            pci_class = self.sysfs.pci_class(address)
            is_network = pci_class is not None and pci_class >> 16 == PCI_CLASS_NETWORK
            if is_network or self.sysfs.pci_has_sriov(address):
                keys.append(address)
                claimed.update(self._pci_netdev_names(address, ctx))
                ctx.virtfns[address] = self.sysfs.pci_virtfns(address)
                vfs.update(ctx.virtfns[address].values())
                for vf in ctx.virtfns[address].values():
                    claimed.update(self._pci_netdev_names(vf, ctx))
        for name in sorted(ctx.sysfs_netdevs | set(ctx.links)):
            if name in claimed or self._is_loopback(name, ctx):
                continue
            if name in ctx.sysfs_netdevs and self.sysfs.netdev_pci_address(name) is not None:
                continue  # a netdev of a PCI function we do not list as a NIC (a VF, say)
            keys.append(name)
        return keys

    def _is_loopback(self, name: str, ctx: ScanContext) -> bool:
        if name in ctx.sysfs_netdevs:
            return self.sysfs.netdev_int(name, "type") == ARPHRD_LOOPBACK
        return ctx.links[name].loopback

    # -- records ----------------------------------------------------------------------------

    def _nic(self, key: str, ctx: ScanContext) -> Nic:
        if not self.sysfs.pci_exists(key):
            return Nic(key=key, netdevs=(self._netdev(key, ctx),))
        pci = self._pci_info(key)
        netdevs = [self._netdev(name, ctx) for name in self._pci_netdev_names(key, ctx)]
        representors = {
            int(m.group(1)): n.name
            for n in netdevs
            if (m := REPRESENTOR_PORT.match(self.sysfs.netdev_attr(n.name, "phys_port_name") or ""))
        }
        # The PF's own netdev first, port representors after it.
        netdevs.sort(key=lambda n: n.name in representors.values())
        sriov = None
        if self.sysfs.pci_has_sriov(key):
            own = [n for n in netdevs if n.name not in representors.values()]
            uplink = own[0] if own else None
            sriov = self._sriov(pci, uplink, representors, ctx)
        self._check_stable(pci)
        return Nic(key=key, pci=pci, netdevs=tuple(netdevs), sriov=sriov)

    def _pci_info(
        self,
        address: str,
        numa_node: int | None = None,
        ids: tuple[str | None, str | None] | None = None,
    ) -> PciInfo:
        sysfs = self.sysfs
        vendor, device = ids or (sysfs.pci_id(address, "vendor"), sysfs.pci_id(address, "device"))
        if numa_node is None:
            numa = sysfs.pci_int(address, "numa_node")
            numa_node = numa if numa is not None and numa >= 0 else None
        return PciInfo(
            address=address,
            vendor=vendor,
            device=device,
            driver=sysfs.pci_driver(address),
            numa_node=numa_node,
            iommu_group=sysfs.pci_iommu_group(address),
        )

    def _sriov(
        self, pf: PciInfo, uplink: Netdev | None, representors: dict[int, str], ctx: ScanContext
    ) -> Sriov:
        sysfs = self.sysfs
        configs: dict[int, VfConfig] = {}
        numvfs = sysfs.pci_int(pf.address, "sriov_numvfs") or 0
        if self.netlink is not None and uplink is not None and uplink.ifindex and numvfs:
            configs = self.netlink.vf_configs(uplink.ifindex)
        # Every VF of a PF has the PF's vendor, its sriov_vf_device and its NUMA node.
        vf_device = sysfs.pci_id(pf.address, "sriov_vf_device")
        vfs = []
        for index, address in ctx.virtfns[pf.address].items():
            ids = (pf.vendor, vf_device) if vf_device else None
            pci = self._pci_info(address, numa_node=pf.numa_node, ids=ids)
            names = self._pci_netdev_names(address, ctx)
            netdev = self._netdev(names[0], ctx) if names else None
            vfs.append(
                VirtualFunction(
                    index=index,
                    pci=pci,
                    netdev=netdev,
                    config=configs.get(index),
                    representor=representors.get(index),
                )
            )
            self._check_stable(pci)
        autoprobe = sysfs.pci_int(pf.address, "sriov_drivers_autoprobe")
        return Sriov(
            totalvfs=sysfs.pci_int(pf.address, "sriov_totalvfs") or 0,
            numvfs=numvfs,
            drivers_autoprobe=None if autoprobe is None else bool(autoprobe),
            eswitch_mode=self.netlink.eswitch_mode(pf.address) if self.netlink else None,
            vfs=tuple(vfs),
        )

    def _pci_netdev_names(self, address: str, ctx: ScanContext) -> list[str]:
        """Netdevs of a PCI function: under ``net/``, or under a ``virtioN`` child (virtio-net)."""
        if address in ctx.pci_netdevs:
            return ctx.pci_netdevs[address]
        names = self.sysfs.pci_netdevs(address)
        if not names and self.sysfs.pci_driver(address) == "virtio-pci":
            device_dir = self.sysfs.pci_dir(address)
            for child in self.sysfs.listdir(device_dir):
                if child.startswith("virtio"):
                    names += self.sysfs.listdir(f"{device_dir}/{child}/net")
        ctx.pci_netdevs[address] = names
        return names

    def _netdev(self, name: str, ctx: ScanContext) -> Netdev:
        sysfs = self.sysfs
        in_sysfs = name in ctx.sysfs_netdevs
        speed = sysfs.netdev_int(name, "speed") if in_sysfs else None
        speed = speed if speed is not None and speed > 0 else None
        link = ctx.links.get(name)
        if link is not None:
            return Netdev(
                name=name,
                ifindex=link.index,
                mac=link.mac,
                mtu=link.mtu,
                operstate=link.operstate,
                carrier=link.carrier,
                speed=speed,
                kind=link.kind,
                default_route=link.index in ctx.carrying,
            )
        carrier = sysfs.netdev_int(name, "carrier")
        return Netdev(
            name=name,
            ifindex=sysfs.netdev_int(name, "ifindex"),
            mac=sysfs.netdev_attr(name, "address"),
            mtu=sysfs.netdev_int(name, "mtu"),
            operstate=sysfs.netdev_attr(name, "operstate"),
            carrier=None if carrier is None else bool(carrier),
            speed=speed,
        )

    def _check_stable(self, pci: PciInfo) -> None:
        """Warn when a device vanished or changed driver while it was being read."""
        driver = self.sysfs.pci_driver(pci.address)
        if driver is None and not self.sysfs.pci_exists(pci.address):
            log.warning(
                "PCI device %s vanished during the scan; reported with what could be read",
                pci.address,
            )
        elif driver != pci.driver:
            log.warning(
                "PCI device %s changed driver during the scan (%s -> %s)",
                pci.address,
                pci.driver,
                driver,
            )
