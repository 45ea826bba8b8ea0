"""The node model: immutable snapshots of a node's NICs, SR-IOV PFs and VFs.

Names follow the kernel (PF, VF, ``sriov_numvfs``, ``numa_node``). A snapshot never changes once
built; discovery replaces whole :class:`Nic` records and publishes a new :class:`Node`.
:meth:`Node.to_dict` is the stable JSON document described in ``docs/inventory.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class PciInfo:
    """A PCI function as sysfs describes it."""

    address: str
    vendor: str | None = None
    device: str | None = None
    driver: str | None = None
    numa_node: int | None = None
    iommu_group: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "pciAddress": self.address,
            "vendor": self.vendor,
            "device": self.device,
            "driver": self.driver,
            "numaNode": self.numa_node,
            "iommuGroup": self.iommu_group,
        }


@dataclass(frozen=True)
class Netdev:
    """A kernel network interface in the agent's network namespace."""

    name: str
    ifindex: int | None = None
    mac: str | None = None
    mtu: int | None = None
    operstate: str | None = None
    carrier: bool | None = None
    speed: int | None = None
    kind: str | None = None
    default_route: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ifindex": self.ifindex,
            "mac": self.mac,
            "mtu": self.mtu,
            "operstate": self.operstate,
            "carrier": self.carrier,
            "speed": self.speed,
            "kind": self.kind,
            "defaultRoute": self.default_route,
        }


#: IFLA_VF_VLAN_INFO protocols and IFLA_VF_LINK_STATE values, as VF settings spell them.
VLAN_PROTOS = {0x8100: "802.1Q", 0x88A8: "802.1ad"}
LINK_STATES = {0: "auto", 1: "enable", 2: "disable"}


@dataclass(frozen=True)
class VfConfig:
    """Observed: the PF-side settings of one VF as the PF reports them (IFLA_VFINFO_LIST, the
    kernel's ``ndo_get_vf_config``). Its two siblings: :class:`VfDesired` (what a policy or a
    CNI configuration asks for) and :class:`nodeagent.vfbatch.VfUpdate` (what is sent)."""

    mac: str | None = None
    vlan: int = 0
    qos: int = 0
    vlan_proto: str = "802.1Q"
    spoofchk: bool | None = None
    trust: bool | None = None
    min_tx_rate: int = 0
    max_tx_rate: int = 0
    link_state: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "mac": self.mac,
            "vlan": self.vlan,
            "qos": self.qos,
            "vlanProto": self.vlan_proto,
            "spoofchk": self.spoofchk,
            "trust": self.trust,
            "minTxRate": self.min_tx_rate,
            "maxTxRate": self.max_tx_rate,
            "linkState": self.link_state,
        }


@dataclass(frozen=True)
class VfDesired:
    """Desired: the PF-side settings of one VF as a node policy or a CNI configuration asks for
    them; None leaves a setting as it is. ``vlan``, ``qos`` and ``vlan_proto`` are one setting
    on the wire (IFLA_VF_VLAN_LIST), and so are the two tx rates (IFLA_VF_RATE): when only part
    of one is given, the rest comes from what the PF reports (or the kernel's defaults)."""

    mac: str | None = None
    vlan: int | None = None
    qos: int | None = None
    vlan_proto: str | None = None
    spoofchk: bool | None = None
    trust: bool | None = None
    min_tx_rate: int | None = None
    max_tx_rate: int | None = None
    link_state: str | None = None


@dataclass(frozen=True)
class VirtualFunction:
    index: int
    pci: PciInfo
    netdev: Netdev | None = None
    config: VfConfig | None = None
    representor: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            **self.pci.to_dict(),
            "netdev": None if self.netdev is None else self.netdev.to_dict(),
            "config": None if self.config is None else self.config.to_dict(),
            "representor": self.representor,
        }


@dataclass(frozen=True)
class Sriov:
    """The SR-IOV side of a physical function."""

    totalvfs: int
    numvfs: int
    drivers_autoprobe: bool | None = None
    eswitch_mode: str | None = None
    vfs: tuple[VirtualFunction, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "totalVfs": self.totalvfs,
            "numVfs": self.numvfs,
            "driversAutoprobe": self.drivers_autoprobe,
            "eswitchMode": self.eswitch_mode,
            "vfs": [vf.to_dict() for vf in self.vfs],
        }


@dataclass(frozen=True)
class Nic:
    """A NIC: a PCI network function (possibly an SR-IOV PF) or a virtual / non-PCI netdev.

    ``key`` identifies it across snapshots: the PCI address, or the netdev name when it has none.
    """

    key: str
    pci: PciInfo | None = None
    netdevs: tuple[Netdev, ...] = ()
    sriov: Sriov | None = None

    @property
    def name(self) -> str:
        return self.netdevs[0].name if self.netdevs else self.key

    @property
    def default_route(self) -> bool:
        return any(n.default_route for n in self.netdevs)

    @property
    def is_pf(self) -> bool:
        return self.sriov is not None

    def to_dict(self) -> dict[str, Any]:
        pci = self.pci.to_dict() if self.pci else dict.fromkeys(PciInfo("").to_dict())
        return {
            "name": self.name,
            **pci,
            "netdevs": [n.to_dict() for n in self.netdevs],
            "defaultRoute": self.default_route,
            "sriov": None if self.sriov is None else self.sriov.to_dict(),
        }


@dataclass(frozen=True)
class Node:
    hostname: str
    nics: tuple[Nic, ...] = ()
    _by_key: dict[str, Nic] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_key.update((nic.key, nic) for nic in self.nics)

    def nic(self, key: str) -> Nic | None:
        return self._by_key.get(key)

    @property
    def pfs(self) -> tuple[Nic, ...]:
        return tuple(nic for nic in self.nics if nic.is_pf)

    def vfs(self) -> list[tuple[Nic, VirtualFunction]]:
        return [(pf, vf) for pf in self.pfs for vf in pf.sriov.vfs]  # type: ignore[union-attr]

    def owner_of_pci(self, address: str) -> str | None:
        """The key of the NIC that owns a PCI function: itself, or the PF of a VF."""
        if address in self._by_key:
            return address
        for pf, vf in self.vfs():
            if vf.pci.address == address:
                return pf.key
        return None

    def owner_of_netdev(self, name: str | None = None, ifindex: int | None = None) -> str | None:
        """The key of the NIC whose netdev (or VF netdev) has this name or ifindex."""

        def matches(netdev: Netdev | None) -> bool:
            return netdev is not None and (
                (name is not None and netdev.name == name)
                or (ifindex is not None and netdev.ifindex == ifindex)
            )

        for nic in self.nics:
            if any(matches(n) for n in nic.netdevs):
                return nic.key
            if nic.sriov and any(matches(vf.netdev) for vf in nic.sriov.vfs):
                return nic.key
        return None

    def replace(self, updated: dict[str, Nic | None]) -> Node:
        """A new snapshot with NICs replaced, added, or removed (value None)."""
        merged = dict(self._by_key)
        for key, nic in updated.items():
            if nic is None:
                merged.pop(key, None)
            else:
                merged[key] = nic
        return Node(self.hostname, sort_nics(merged.values()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schemaVersion": SCHEMA_VERSION,
            "kind": "NodeInventory",
            "hostname": self.hostname,
            "nics": [nic.to_dict() for nic in self.nics],
        }


def sort_nics(nics: Any) -> tuple[Nic, ...]:
    """PCI NICs first in PCI address order, then virtual ones by name."""
    return tuple(sorted(nics, key=lambda n: (n.pci is None, n.key)))
