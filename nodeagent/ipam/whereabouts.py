"""whereabouts' Kubernetes reservations: ``IPPool`` and ``OverlappingRangeIPReservation``.

whereabouts (group ``whereabouts.cni.cncf.io``, version ``v1alpha1``) keeps one ``IPPool`` per
range, named ``[<network_name>-]<range with ':' and '/' as '-'>``, whose ``spec.range`` is the
range in CIDR form and whose ``spec.allocations`` map the decimal offset of an address from
``spec.range``'s address to ``{id, podref, ifname}``; and, for overlapping ranges, one
``OverlappingRangeIPReservation`` per address, named ``[<network_name>-]<address>`` (IPv6 with
':' as '-'), ``spec`` ``{containerid, podref, ifname}``.

This module reads them (a one-shot list, or a list + watch kept by the agent) into
:class:`Holding` s; the allocator imports the holdings of a range into the cluster store before
it serves that range, and ``nodeagent ipam import --from-whereabouts`` does the same for a whole
network at once (docs/ipam.md, "Migrating from whereabouts").
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nodeagent.ipam.configtypes import IPAddress, IPAMConfig, IPNetwork, IPRange
from nodeagent.ipam.errors import ADDRESS_IN_USE, IpamError
from nodeagent.ipam.store import Owner

log = logging.getLogger(__name__)

GROUP, VERSION = "whereabouts.cni.cncf.io", "v1alpha1"
IPPOOLS = f"/apis/{GROUP}/{VERSION}/ippools"
RESERVATIONS = f"/apis/{GROUP}/{VERSION}/overlappingrangeipreservations"
_MAX_OFFSET = 1 << 64


@dataclass(frozen=True)
class Holding:
    """One address whereabouts holds for an attachment."""

    ip: IPAddress
    container_id: str
    ifname: str
    pod: str  # namespace/name
    source: str  # the object, for summaries and logs

    @property
    def key(self) -> tuple[str, str]:
        return self.container_id, self.ifname


def normalize(text: str) -> str:
    """A range or address as whereabouts spells it in object names."""
    if text.endswith(":"):
        text += "0"
    return text.replace(":", "-").replace("/", "-")


def pool_name(network: str, range_text: str) -> str:
    """The ``IPPool`` name whereabouts uses for ``range_text`` of ``network`` ("" unnamed)."""
    name = normalize(range_text)
    return f"{network}-{name}" if network else name


def reservation_name(network: str, ip: IPAddress) -> str:
    name = normalize(str(ip))
    return f"{network}-{name}" if network else name


def ip_at(range_text: str, offset: int) -> IPAddress:
    """The address ``offset`` places after ``spec.range``'s address (as written, unmasked)."""
    base = ipaddress.ip_address(range_text.split("/", 1)[0])
    return ipaddress.ip_address(int(base) + offset) if base.version == 6 else \
        ipaddress.IPv4Address(int(base) + offset)


def offset_of(range_text: str, ip: IPAddress) -> int:
    """Inverse of :func:`ip_at`: the ``spec.allocations`` key of ``ip``."""
    return int(ip) - int(ipaddress.ip_address(range_text.split("/", 1)[0]))


def pool_subnet(obj: dict[str, Any]) -> IPNetwork | None:
    text = _spec(obj).get("range")
    if not isinstance(text, str):
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def pool_holdings(obj: dict[str, Any]) -> list[Holding]:
    """The allocations of one ``IPPool``; entries whereabouts itself would skip are skipped."""
    spec, meta = _spec(obj), obj.get("metadata") or {}
    where = f"IPPool {meta.get('namespace', '')}/{meta.get('name', '')}"
    subnet, text = pool_subnet(obj), spec.get("range")
    allocations = spec.get("allocations") or {}
    if subnet is None or not isinstance(text, str) or not isinstance(allocations, dict):
        log.warning("%s: no usable spec.range/allocations; skipped", where)
        return []
    out = []
    for key, entry in allocations.items():
        if not (isinstance(key, str) and key.isdigit() and int(key) < _MAX_OFFSET
                and isinstance(entry, dict)):
            log.warning("%s: allocation %r is not a decimal offset; skipped", where, key)
            continue
        try:
            ip = ip_at(text, int(key))
        except ValueError:
            continue
        if ip not in subnet:
            log.warning("%s: offset %s lies outside %s; skipped", where, key, subnet)
            continue
        out.append(Holding(ip, _str(entry.get("id")), _str(entry.get("ifname")),
                           _str(entry.get("podref")), f"{where} offset {key}"))
    return out


def reservation_holding(obj: dict[str, Any], network: str) -> Holding | None:
    """The address an ``OverlappingRangeIPReservation`` of ``network`` ("" unnamed) holds,
    or None if the object belongs to another network."""
    meta = obj.get("metadata") or {}
    name = _str(meta.get("name"))
    if network:
        if not name.startswith(network + "-"):
            return None
        name = name[len(network) + 1:]
    text = name if "." in name else name.replace("-", ":")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    spec = _spec(obj)
    return Holding(ip, _str(spec.get("containerid")), _str(spec.get("ifname")),
                   _str(spec.get("podref")),
                   f"OverlappingRangeIPReservation {meta.get('namespace', '')}/{meta.get('name')}")


def _spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec") if isinstance(obj, dict) else None
    return spec if isinstance(spec, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


class Unreadable(Exception):
    """whereabouts' objects could not be read (API away, not listed yet, refused)."""


@dataclass(frozen=True)
class Objects:
    """whereabouts' objects at one moment; ``version`` changes whenever they do."""

    pools: tuple[dict[str, Any], ...] = ()
    reservations: tuple[dict[str, Any], ...] = ()
    version: int = 0

    def holdings(self, config: IPAMConfig) -> list[Holding]:
        """What whereabouts holds inside ``config``'s ranges: every ``IPPool`` of the same
        subnet (whatever its network name: an address one of them holds is never handed out
        here), plus the ``OverlappingRangeIPReservation`` s of the config's network. One
        holding per address (an address in both kinds is the same allocation)."""
        ranges = config.ranges
        subnets = {r.subnet for r in ranges}
        found: dict[IPAddress, Holding] = {}
        for obj in self.pools:
            if pool_subnet(obj) in subnets:
                for h in pool_holdings(obj):
                    if _inside(ranges, h.ip):
                        found.setdefault(h.ip, h)
        network = config.whereabouts_network
        for obj in self.reservations:
            h = reservation_holding(obj, network)
            if h is not None and _inside(ranges, h.ip):
                found.setdefault(h.ip, h)
        return sorted(found.values(), key=lambda h: (h.ip.version, h.ip))


def _inside(ranges: Iterable[IPRange], ip: IPAddress) -> bool:
    return any(r.contains(ip) for r in ranges)


def fetch(api: Any, page_size: int = 500) -> Objects:
    """Every ``IPPool`` and ``OverlappingRangeIPReservation`` (all namespaces). Raises the
    client's ApiError; a cluster without whereabouts' CRDs (404) has none."""
    return Objects(tuple(_list(api, IPPOOLS, page_size)[0]),
                   tuple(_list(api, RESERVATIONS, page_size)[0]), version=1)


def _list(api: Any, path: str, page_size: int) -> tuple[list[dict[str, Any]], str]:
    from nodeagent.k8s.reflector import Reflector

    # A cluster without whereabouts' CRDs (404) holds nothing.
    return Reflector(api, path, page_size=page_size, missing_ok=True).fetch()


class WhereaboutsWatch:
    """whereabouts' objects kept current by list + watch, for the agent's allocations."""

    def __init__(self, api: Any, *, watch_timeout: int = 300) -> None:
        from nodeagent.k8s.client import Backoff
        from nodeagent.k8s.reflector import Reflector

        self.api = api
        # A cluster without whereabouts' CRDs (404) holds nothing.
        self._kinds = tuple(Reflector(api, path, name=f"whereabouts-{path.rsplit('/', 1)[-1]}",
                                      watch_timeout=watch_timeout, backoff=Backoff(1.0, 30.0),
                                      missing_ok=True)
                            for path in (IPPOOLS, RESERVATIONS))
        self._lock = threading.Lock()
        self._cache = Objects()

    @property
    def error(self) -> str:
        return next((k.error for k in self._kinds if k.error), "")

    def start(self) -> WhereaboutsWatch:
        for kind in self._kinds:
            kind.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        for kind in self._kinds:
            kind.stop(timeout)

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(k.wait_synced(max(0.0, deadline - time.monotonic())) for k in self._kinds)

    def objects(self, timeout: float = 2.0) -> Objects:
        """The current objects; raises :class:`Unreadable` until they have been listed."""
        if not self.wait_synced(timeout):
            raise Unreadable(self.error or "not listed yet")
        with self._lock:
            version = sum(k.version for k in self._kinds)
            if self._cache.version != version:
                pools, reservations = (tuple(k.values()) for k in self._kinds)
                self._cache = Objects(pools, reservations, version)
            return self._cache


# -- into the cluster store ------------------------------------------------------------------

_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,1023}")
_IFNAME = re.compile(r"[^/:\s]{1,15}")


@dataclass
class ImportSummary:
    """What an import took (or, with ``dry_run``, would take)."""

    network: str
    imported: list[Holding] = field(default_factory=list)
    present: list[Holding] = field(default_factory=list)  # already there, same attachment
    conflicts: list[tuple[Holding, str]] = field(default_factory=list)

    def render(self, dry_run: bool = False) -> str:
        verb = "would import" if dry_run else "imported"
        lines = [f"network {self.network}: {verb} {len(self.imported)}, already present"
                 f" {len(self.present)}, conflicts {len(self.conflicts)}"]
        lines += [f"  {verb} {h.ip} for {h.pod or '-'} ({h.container_id[:12] or '-'}/"
                  f"{h.ifname or '-'}) from {h.source}" for h in self.imported]
        lines += [f"  CONFLICT {h.ip} ({h.source}): {why}" for h, why in self.conflicts]
        return "\n".join(lines)


def holder(h: Holding, network: str) -> Owner:
    """The store's owner of a holding: its container and interface, or, where whereabouts
    recorded none usable (an OverlappingRangeIPReservation without ``containerid``), a name
    of the address's own, so the address is still held (GC releases it with its pod)."""
    cid = h.container_id if _CONTAINER_ID.fullmatch(h.container_id) else \
        f"whereabouts-{normalize(str(h.ip))}"
    ifname = h.ifname if _IFNAME.fullmatch(h.ifname) else ""
    return Owner(cid, ifname, h.pod, network)


def import_holdings(ipam: Any, config: IPAMConfig, holdings: Iterable[Holding], *,
                    dry_run: bool = False) -> ImportSummary:
    """Reserve each holding in ``config``'s store for its attachment (container ID, ifname,
    pod), as a fixed-address ADD of that attachment would: repeating it changes nothing, and an
    address the store gives to another attachment is a conflict, reported and left alone."""
    summary = ImportSummary(config.network)
    store = ipam.store(config)
    current = store.reservations()
    for h in holdings:
        rset = next((s for s in config.range_sets if s.find(h.ip) is not None), None)
        if rset is None:
            continue
        claim = ipam.claim_for(config, rset, h.ip)
        owner = holder(h, config.name)
        there = next((r for r in current if r.ip == h.ip and claim.covers(r)), None)
        if there is not None:
            if there.owner.key == owner.key:
                summary.present.append(h)
            else:
                summary.conflicts.append((h, f"held here by {there.owner.describe()}"))
            continue
        mine = next((r for r in current if r.owner.key == owner.key and claim.covers(r)), None)
        if mine is not None:
            summary.conflicts.append((h, f"the attachment holds {mine.ip} here already"))
            continue
        if not dry_run:
            try:
                store.claim([claim], owner)
            except IpamError as exc:
                if exc.code not in (ADDRESS_IN_USE,):
                    raise
                summary.conflicts.append((h, exc.msg))
                continue
        summary.imported.append(h)
    return summary
