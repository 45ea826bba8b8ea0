"""IPAM configuration: whereabouts, host-local and static fields parsed into frozen dataclasses.

``parse_config(netconf, cni_args)`` takes the network configuration the runtime passes on stdin
(the whole plugin config: ``name``, ``cniVersion``, ``ipam``, ``runtimeConfig``, ``args``) and
the ``CNI_ARGS`` string, and returns an :class:`IPAMConfig` or raises :class:`IpamError` with
code 7 (6 for undecodable JSON, 4 for a bad ``CNI_ARGS``, 2 for an unknown datastore) and a
message naming the field by its JSON path.

Every field of the three incumbents is accepted unchanged; docs/ipam.md lists them. Ranges
become :class:`RangeSet` s (one address each per attachment): whereabouts' top-level ``range``
first, then each ``ipRanges`` entry, then host-local's ``ranges`` (and legacy ``subnet``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from nodeagent.ipam.configtypes import (
    DEFAULT_ETCD_PORT,
    DEFAULT_ETCD_PREFIX,
    DEFAULT_ETCD_TIMEOUT,
    DNS,
    MAX_WINDOW,
    UNNAMED_NETWORK,
    EtcdConfig,
    EtcdEndpoint,
    IPAddress,
    IPAMConfig,
    IPInterface,
    IPNetwork,
    IPRange,
    RangeSet,
    RequestedIP,
    Route,
    StaticAddress,
)
from nodeagent.ipam.errors import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    IpamError,
    config_error,
    env_error,
)
from nodeagent.ipam.fields import FieldParser, opt_str

__all__ = [
    "DEFAULT_ETCD_PORT",
    "DEFAULT_ETCD_PREFIX",
    "DEFAULT_ETCD_TIMEOUT",
    "DNS",
    "MAX_WINDOW",
    "UNNAMED_NETWORK",
    "EtcdConfig",
    "EtcdEndpoint",
    "IPAMConfig",
    "IPAddress",
    "IPInterface",
    "IPNetwork",
    "IPRange",
    "RangeSet",
    "RequestedIP",
    "Route",
    "StaticAddress",
    "locate",
    "parse_cni_args",
    "parse_config",
    "validate_requests",
]

_SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


def parse_config(netconf: bytes | str | Mapping[str, Any], cni_args: str = "") -> IPAMConfig:
    """Parse and validate a plugin's network configuration plus ``CNI_ARGS``."""
    doc = _decode(netconf)
    ipam = doc.get("ipam")
    if not isinstance(ipam, Mapping):
        raise config_error("ipam", "missing, or not an object")
    args = parse_cni_args(cni_args)
    name = opt_str(doc, "name", "") or ""
    version = opt_str(doc, "cniVersion", "") or "1.1.0"
    if version not in _SUPPORTED_VERSIONS:
        raise IpamError(
            INCOMPATIBLE_VERSION,
            f"incompatible CNI version {version!r}: supported {', '.join(_SUPPORTED_VERSIONS)}",
        )
    p = FieldParser()
    range_sets = p.range_sets(ipam)
    config = IPAMConfig(
        name=name,
        network=p.network(ipam, name),
        cni_version=version,
        type=opt_str(ipam, "type", "ipam") or "",
        range_sets=range_sets,
        addresses=p.addresses(ipam),
        requested=p.requested(doc, args),
        routes=p.routes(ipam.get("routes"), "ipam.routes"),
        dns=p.dns(ipam.get("dns"), "ipam.dns"),
        datastore=p.datastore(ipam),
        data_dir=p.path(ipam, "dataDir", "ipam"),
        etcd=p.etcd(ipam),
        overlapping_ranges=p.bool(ipam, "enable_overlapping_ranges", True),
        sticky=p.bool(ipam, "sticky", False),
    )
    validate_requests(config)
    return config


def parse_cni_args(cni_args: str) -> dict[str, str]:
    """``CNI_ARGS`` (``K1=V1;K2=V2``) as a dict; code 4 if a pair has no ``=``."""
    out: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in cni_args.split(";"))):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise env_error("CNI_ARGS", f"{pair!r} is not KEY=VALUE")
        out[key] = value
    return out


def validate_requests(config: IPAMConfig) -> None:
    """Fixed addresses must each fall in exactly one range set, usable, one per set."""
    taken: dict[str, IPAddress] = {}
    for req in config.requested:
        if not config.range_sets:
            if req.prefixlen is None:
                raise config_error(req.source, f"{req.ip} needs a prefix length (no ranges)")
            continue
        where = locate(config, req.ip)
        if where is None:
            ranges = ", ".join(str(r) for r in config.ranges)
            raise config_error(req.source, f"{req.ip} is outside every range ({ranges})")
        rset, rng = where
        reason = rng.reserved_reason(req.ip)
        if reason:
            raise config_error(req.source, f"{req.ip} is {reason} of {rng.subnet}")
        if rset.id in taken:
            raise config_error(
                req.source, f"{req.ip} and {taken[rset.id]} both fall in range set {rset.id}"
            )
        taken[rset.id] = req.ip
    for i, static in enumerate(config.addresses):
        where = locate(config, static.address.ip)
        if where is None:
            continue
        rset, rng = where
        reason = rng.reserved_reason(static.address.ip)
        if reason:
            raise config_error(f"ipam.addresses[{i}]", f"{static.address.ip} is {reason}")
        if rset.id in taken:
            raise config_error(
                f"ipam.addresses[{i}]",
                f"{static.address.ip} and {taken[rset.id]} both fall in range set {rset.id}",
            )
        taken[rset.id] = static.address.ip


def locate(config: IPAMConfig, ip: IPAddress) -> tuple[RangeSet, IPRange] | None:
    for rset in config.range_sets:
        rng = rset.find(ip)
        if rng is not None:
            return rset, rng
    return None


def _decode(netconf: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(netconf, Mapping):
        return netconf
    try:
        doc = json.loads(netconf)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IpamError(DECODE_FAILURE, "cannot decode the network config", str(exc)) from exc
    if not isinstance(doc, dict):
        raise IpamError(DECODE_FAILURE, "the network configuration is not a JSON object")
    return doc
