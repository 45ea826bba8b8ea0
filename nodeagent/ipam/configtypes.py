"""IPAM configuration types: the frozen dataclasses that ``config.parse_config`` builds."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nodeagent.cnitypes.result import Route

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

#: A pool is a window of at most this many addresses (the C bitmap's limit, an IPv4 /8).
MAX_WINDOW = 1 << 24
#: Store namespace of whereabouts configs without ``network_name`` (whereabouts' unnamed
#: network): every such config shares it, so equal ranges never hand out the same address.
UNNAMED_NETWORK = "_unnamed"
DEFAULT_ETCD_PORT = 2379
DEFAULT_ETCD_PREFIX = "/nodeagent/ipam/v1"
DEFAULT_ETCD_TIMEOUT = 2.0


@dataclass(frozen=True)
class IPRange:
    """Addresses ``start``..``end`` (inclusive) of ``subnet``; the unit a :class:`Pool` maps."""

    subnet: IPNetwork
    start: IPAddress
    end: IPAddress
    gateway: IPAddress | None = None
    exclude: tuple[IPNetwork, ...] = ()

    @property
    def version(self) -> int:
        return self.subnet.version

    @property
    def id(self) -> str:
        """Stable name of the subnet, as whereabouts names its pools: ``10.0.0.0-24``."""
        return f"{self.subnet.network_address}-{self.subnet.prefixlen}"

    @property
    def size(self) -> int:
        return int(self.end) - int(self.start) + 1

    def contains(self, ip: IPAddress) -> bool:
        return ip.version == self.version and self.start <= ip <= self.end

    def reserved_reason(self, ip: IPAddress) -> str | None:
        """Why ``ip`` (inside the range) is never handed out, or None if it can be."""
        net = self.subnet
        if ip == net.network_address and net.num_addresses > 2:
            return "the network address"
        if ip.version == 4 and ip == net.broadcast_address and net.num_addresses > 2:
            return "the broadcast address"
        if ip == self.gateway:
            return "the gateway"
        for ex in self.exclude:
            if ip in ex:
                return f"excluded by {ex}"
        return None

    def __str__(self) -> str:
        return f"{self.subnet} ({self.start}-{self.end})"


@dataclass(frozen=True)
class RangeSet:
    """Ranges of one family an attachment gets one address from, tried in order."""

    ranges: tuple[IPRange, ...]

    @property
    def id(self) -> str:
        """Names the set in reservation keys (idempotent ADD per set): its first range's id."""
        return self.ranges[0].id

    @property
    def version(self) -> int:
        return self.ranges[0].version

    def find(self, ip: IPAddress) -> IPRange | None:
        return next((r for r in self.ranges if r.contains(ip)), None)


@dataclass(frozen=True)
class StaticAddress:
    """An address given in full (static IPAM ``addresses``, whereabouts ``addresses``)."""

    address: IPInterface
    gateway: IPAddress | None = None


@dataclass(frozen=True)
class RequestedIP:
    """A fixed address asked for by the runtime (``runtimeConfig.ips``, ``args.cni.ips``,
    ``CNI_ARGS`` ``IP=``); the prefix length comes from its range when not given."""

    ip: IPAddress
    prefixlen: int | None = None
    gateway: IPAddress | None = None
    source: str = "runtimeConfig.ips"


@dataclass(frozen=True)
class DNS:
    nameservers: tuple[str, ...] = ()
    domain: str | None = None
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class EtcdEndpoint:
    host: str
    port: int = DEFAULT_ETCD_PORT

    def target(self) -> str:
        """gRPC target: ``host:port``, IPv6 literals bracketed."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[EtcdEndpoint, ...]
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    key_file: Path | None = None
    cert_file: Path | None = None
    ca_cert_file: Path | None = None
    prefix: str = DEFAULT_ETCD_PREFIX
    timeout: float = DEFAULT_ETCD_TIMEOUT


@dataclass(frozen=True)
class IPAMConfig:
    """Everything allocation needs, validated. ``network`` is the store namespace."""

    name: str
    network: str
    cni_version: str = "1.1.0"
    type: str = ""
    range_sets: tuple[RangeSet, ...] = ()
    addresses: tuple[StaticAddress, ...] = ()
    requested: tuple[RequestedIP, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = DNS()
    #: "cluster": the agent's cluster store (settings), resolved by the allocator.
    datastore: Literal["file", "etcd", "cluster"] = "file"
    data_dir: Path | None = None
    etcd: EtcdConfig | None = None
    overlapping_ranges: bool = True
    sticky: bool = False

    @property
    def whereabouts_network(self) -> str:
        """The network name as whereabouts writes it into object names ("" when unnamed)."""
        return "" if self.network == UNNAMED_NETWORK else self.network

    @property
    def ranges(self) -> tuple[IPRange, ...]:
        return tuple(r for s in self.range_sets for r in s.ranges)
