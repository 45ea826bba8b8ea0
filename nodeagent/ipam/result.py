"""What allocation returns: addresses with prefix and gateway, routes and DNS, as a CNI result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nodeagent.ipam.config import DNS, IPAddress, IPInterface, Route


@dataclass(frozen=True)
class IPResult:
    address: IPInterface
    gateway: IPAddress | None = None


@dataclass(frozen=True)
class Result:
    ips: tuple[IPResult, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = field(default_factory=DNS)

    def to_cni(self, cni_version: str = "1.1.0") -> dict[str, Any]:
        """The IPAM plugin result: ``ips``, ``routes``, ``dns`` (0.3.x/0.4.0 add ``version``)."""
        legacy = cni_version.startswith("0.")
        ips = []
        for ip in self.ips:
            doc: dict[str, Any] = {"address": str(ip.address)}
            if legacy:
                doc["version"] = str(ip.address.version)
            if ip.gateway is not None:
                doc["gateway"] = str(ip.gateway)
            ips.append(doc)
        out: dict[str, Any] = {"cniVersion": cni_version, "ips": ips}
        if self.routes:
            out["routes"] = [_route(r, legacy) for r in self.routes]
        dns: dict[str, Any] = {}
        if self.dns.nameservers:
            dns["nameservers"] = list(self.dns.nameservers)
        if self.dns.domain:
            dns["domain"] = self.dns.domain
        if self.dns.search:
            dns["search"] = list(self.dns.search)
        if self.dns.options:
            dns["options"] = list(self.dns.options)
        out["dns"] = dns
        return out


def _route(r: Route, legacy: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {"dst": str(r.dst)}
    if r.gw is not None:
        doc["gw"] = str(r.gw)
    if not legacy:  # CNI 1.1 route attributes
        for key in ("mtu", "advmss", "priority", "table", "scope"):
            value = getattr(r, key)
            if value is not None:
                doc[key] = value
    return doc
