"""IPAM configuration: whereabouts, host-local and static fields parsed into frozen dataclasses.

``parse_config(netconf, args)`` takes the network configuration the runtime passes on stdin
(the whole plugin config: ``name``, ``cniVersion``, ``ipam``, ``runtimeConfig``, ``args``) and
the request's parsed ``CNI_ARGS``, and returns an :class:`IPAMConfig` or raises
:class:`IpamError` with code 7 (6 for undecodable JSON, 4 for a bad ``CNI_ARGS`` ``IP``, 2 for an
unknown datastore) and a message naming the field by its JSON path.

Every field of the three incumbents is accepted unchanged; docs/ipam.md lists them. Ranges
become :class:`RangeSet` s (one address each per attachment): whereabouts' top-level ``range``
first, then each ``ipRanges`` entry, then host-local's ``ranges`` (and legacy ``subnet``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nodeagent.cnitypes.request import SUPPORTED_VERSIONS
from nodeagent.documents import DocumentError, parse_json
from nodeagent.ipam import fields
from nodeagent.ipam.configtypes import IPAddress, IPAMConfig, IPRange, RangeSet
from nodeagent.ipam.errors import DECODE_FAILURE, INCOMPATIBLE_VERSION, IpamError, config_error
from nodeagent.ipam.fields import opt_str

#: The largest network configuration accepted, as on the CNI socket.
MAX_CONFIG_BYTES = 1 << 20


def parse_config(netconf: bytes | str | Mapping[str, Any],
                 args: Mapping[str, str] | None = None) -> IPAMConfig:
    """Parse and validate a plugin's network configuration; ``args``: the request's
    ``CNI_ARGS``, parsed (nodeagent.cnitypes.request.parse_cni_args)."""
    doc = _decode(netconf)
    ipam = doc.get("ipam")
    if not isinstance(ipam, Mapping):
        raise config_error("ipam", "missing, or not an object")
    name = opt_str(doc, "name", "") or ""
    version = opt_str(doc, "cniVersion", "") or "1.1.0"
    if version not in SUPPORTED_VERSIONS:
        raise IpamError(
            INCOMPATIBLE_VERSION,
            f"incompatible CNI version {version!r}: supported {', '.join(SUPPORTED_VERSIONS)}",
        )
    config = IPAMConfig(
        name=name,
        network=fields.network(ipam, name),
        cni_version=version,
        type=opt_str(ipam, "type", "ipam") or "",
        range_sets=fields.range_sets(ipam),
        addresses=fields.addresses(ipam),
        requested=fields.requested(doc, args or {}),
        routes=fields.routes(ipam.get("routes"), "ipam.routes"),
        dns=fields.dns(ipam.get("dns"), "ipam.dns"),
        datastore=fields.datastore(ipam),
        data_dir=fields.path(ipam, "dataDir", "ipam"),
        etcd=fields.etcd(ipam),
        overlapping_ranges=fields.boolean(ipam, "enable_overlapping_ranges", True),
        sticky=fields.boolean(ipam, "sticky", False),
    )
    validate_requests(config)
    return config


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
        doc = parse_json(netconf, max_bytes=MAX_CONFIG_BYTES)
    except DocumentError as exc:
        raise IpamError(DECODE_FAILURE, "cannot decode the network config", str(exc)) from None
    if not isinstance(doc, dict):
        raise IpamError(DECODE_FAILURE, "the network configuration is not a JSON object")
    return doc
