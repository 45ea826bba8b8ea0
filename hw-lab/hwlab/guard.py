"""The guard: the lab suite obtains PFs only through it.

It hands out a PF only if the inventory names it, the device in sysfs is what the inventory says
(vendor, device, driver), and neither the PF nor anything stacked on it carries a default route
of the host. Everything else is refused with a GuardError that says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from hwlab import routes
from hwlab.inventory import Inventory, NetdevsimSpec, PFSpec
from hwlab.sysfs import Sysfs


class GuardError(RuntimeError):
    """The lab refuses to touch a device."""


@dataclass(frozen=True)
class PF:
    """A PF the guard has checked."""

    spec: PFSpec
    netdev: str

    @property
    def pci(self) -> str:
        return self.spec.pci


@dataclass(frozen=True)
class NetdevsimDevice:
    """A netdevsim device named by the inventory."""

    spec: NetdevsimSpec
    path: Path
    netdev: str

    @property
    def devlink_name(self) -> str:
        return f"netdevsim{self.spec.id}"


class Guard:
    """Hands out inventory devices after checking them against the running system."""

    def __init__(
        self, inventory: Inventory, sysfs: Sysfs | None = None, netns: str | None = None
    ) -> None:
        self.inventory = inventory
        self.sysfs = sysfs or Sysfs()
        self.netns = netns  # where the host's routes live; None = this process's namespace

    def _refuse(self, what: str, why: str) -> GuardError:
        return GuardError(f"hw-lab guard refuses {what}: {why} (inventory {self.inventory.path})")

    def pf(self, pci: str) -> PF:
        """The checked PF at `pci`; raises GuardError for anything the inventory does not allow."""
        spec = self.inventory.pf(pci)
        if spec is None:
            named = ", ".join(p.pci for p in self.inventory.pfs)
            raise self._refuse(pci, f"not named by the inventory (it names {named})")
        if not self.sysfs.exists(pci):
            raise self._refuse(pci, "no such PCI device on this system")
        vendor, device = self.sysfs.pci_id(pci)
        if (vendor, device) != (spec.vendor, spec.device):
            raise self._refuse(
                pci, f"it is {vendor}:{device}, the inventory expects {spec.vendor}:{spec.device}"
            )
        driver = self.sysfs.driver(pci)
        if driver != spec.driver:
            raise self._refuse(
                pci, f"bound to driver {driver!r}, the inventory expects {spec.driver!r}"
            )
        netdevs = self.sysfs.netdevs(pci)
        if len(netdevs) != 1:
            raise self._refuse(pci, f"expected exactly one netdev, found {netdevs}")
        self.check_no_default_route(netdevs[0], what=pci)
        return PF(spec=spec, netdev=netdevs[0])

    def pfs(self) -> list[PF]:
        """Every PF of the inventory, checked."""
        return [self.pf(spec.pci) for spec in self.inventory.pfs]

    def pf_by_netdev(self, name: str) -> PF:
        """The checked PF whose netdev is `name`; any other interface is refused."""
        for spec in self.inventory.pfs:
            if self.sysfs.exists(spec.pci) and name in self.sysfs.netdevs(spec.pci):
                return self.pf(spec.pci)
        raise self._refuse(f"interface {name!r}", "it is not the netdev of an inventory PF")

    def vf_of(self, pf: PF, vf_pci: str) -> int:
        """The VF index of `vf_pci` under `pf`; refuses a device that is not one of its VFs."""
        vfs = self.sysfs.virtfns(pf.pci)
        if vf_pci not in vfs:
            raise self._refuse(vf_pci, f"not a VF of inventory PF {pf.pci}")
        return vfs.index(vf_pci)

    def netdevsim(self, dev_id: int) -> NetdevsimDevice:
        """The netdevsim device `dev_id`, if the inventory names it and it exists."""
        spec = next((n for n in self.inventory.netdevsim if n.id == dev_id), None)
        if spec is None:
            raise self._refuse(f"netdevsim{dev_id}", "not named by the inventory")
        path = self.sysfs.root / "bus" / "netdevsim" / "devices" / f"netdevsim{dev_id}"
        net = path / "net"
        netdevs = sorted(p.name for p in net.iterdir()) if net.is_dir() else []
        if not netdevs:
            raise self._refuse(f"netdevsim{dev_id}", f"{path} has no netdev (not created?)")
        self.check_no_default_route(netdevs[0], what=f"netdevsim{dev_id}")
        return NetdevsimDevice(spec=spec, path=path, netdev=netdevs[0])

    def check_no_default_route(self, netdev: str, what: str) -> None:
        """Refuse `netdev` if it or a link stacked on it carries an IPv4/IPv6 default route."""
        with IPRoute(netns=self.netns) as ipr:
            found = ipr.link_lookup(ifname=netdev)
            if not found:
                raise self._refuse(what, f"interface {netdev!r} not found")
            try:
                carriers = routes.default_route_links(ipr)
            except routes.UnresolvedRouteError as exc:
                raise self._refuse(what, str(exc)) from exc
            stacked = routes.stacked_on(ipr, found[0])
            hit = stacked & carriers
            if hit:
                names = sorted(_ifname(ipr, i) for i in hit)
                raise self._refuse(
                    what, f"{netdev} carries the host's default route (via {', '.join(names)})"
                )


def _ifname(ipr: Any, index: int) -> str:
    links = ipr.get_links(index)
    return links[0].get_attr("IFLA_IFNAME") if links else str(index)
