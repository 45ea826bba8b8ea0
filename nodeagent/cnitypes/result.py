"""CNI results, rendered in the version the runtime asked for."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class Interface:
    name: str
    mac: str | None = None
    sandbox: str = ""
    mtu: int | None = None
    pci_id: str | None = None
    socket_path: str | None = None


@dataclass
class IPConfig:
    address: IPInterface
    gateway: IPAddress | None = None
    interface: int | None = None


@dataclass(frozen=True)
class Route:
    """A result's route, as IPAM configurations declare it too (nodeagent.ipam uses it)."""

    dst: IPNetwork
    gw: IPAddress | None = None
    # CNI 1.1: reported in 1.1 results, applied to the route in the pod
    mtu: int | None = None
    advmss: int | None = None
    priority: int | None = None
    table: int | None = None
    scope: int | None = None


@dataclass
class Result:
    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dns: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, version: str) -> dict[str, Any]:
        legacy = version.startswith("0.")
        doc: dict[str, Any] = {"cniVersion": version}
        if self.interfaces:
            doc["interfaces"] = [_interface(i, version) for i in self.interfaces]
        if self.ips:
            doc["ips"] = [_ip(ip, legacy) for ip in self.ips]
        if self.routes:
            doc["routes"] = [_route(r, version) for r in self.routes]
        doc["dns"] = dict(self.dns)
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Result:
        """Parse a result of any supported version (an IPAM plugin's, or a prevResult)."""
        interfaces = [
            Interface(name=i.get("name", ""), mac=i.get("mac"), sandbox=i.get("sandbox", ""),
                      mtu=i.get("mtu"), pci_id=i.get("pciID"), socket_path=i.get("socketPath"))
            for i in doc.get("interfaces") or []
        ]
        ips = [
            IPConfig(
                address=ipaddress.ip_interface(ip["address"]),
                gateway=ipaddress.ip_address(ip["gateway"]) if ip.get("gateway") else None,
                interface=ip.get("interface"),
            )
            for ip in doc.get("ips") or []
        ]
        routes = [
            Route(dst=ipaddress.ip_network(r["dst"], strict=False),
                  gw=ipaddress.ip_address(r["gw"]) if r.get("gw") else None,
                  **{k: r[k] for k in ROUTE_ATTRIBUTES if isinstance(r.get(k), int)})
            for r in doc.get("routes") or []
        ]
        return cls(interfaces, ips, routes, dict(doc.get("dns") or {}))


#: The route attributes CNI 1.1 added.
ROUTE_ATTRIBUTES = ("mtu", "advmss", "priority", "table", "scope")


def _route(r: Route, version: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"dst": str(r.dst)}
    if r.gw:
        doc["gw"] = str(r.gw)
    if version == "1.1.0":
        doc.update((k, getattr(r, k)) for k in ROUTE_ATTRIBUTES if getattr(r, k) is not None)
    return doc


def _interface(i: Interface, version: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": i.name}
    if i.mac:
        doc["mac"] = i.mac
    if i.sandbox:
        doc["sandbox"] = i.sandbox
    if version == "1.1.0":  # fields added by CNI 1.1.0
        if i.mtu:
            doc["mtu"] = i.mtu
        if i.pci_id:
            doc["pciID"] = i.pci_id
        if i.socket_path:
            doc["socketPath"] = i.socket_path
    return doc


def _ip(ip: IPConfig, legacy: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if legacy:  # 0.3.x and 0.4.0 name the family; 1.0.0 dropped it
        doc["version"] = str(ip.address.version)
    doc["address"] = str(ip.address)
    if ip.gateway:
        doc["gateway"] = str(ip.gateway)
    if ip.interface is not None:
        doc["interface"] = ip.interface
    return doc
