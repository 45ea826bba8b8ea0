"""The IPAM rules of :mod:`nodeagent.ipam.config`, over the shared typed fields
(:mod:`nodeagent.fields`): each function validates one part of the ``ipam`` object and raises
``config_error`` (code 7) naming the JSON path of what it rejects."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from nodeagent.cnitypes.request import ROUTE_ATTRIBUTE_MAX
from nodeagent.cnitypes.result import ROUTE_ATTRIBUTES, Route
from nodeagent.fields import Fields, join
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
    IPNetwork,
    IPRange,
    RangeSet,
    RequestedIP,
    StaticAddress,
)
from nodeagent.ipam.errors import UNSUPPORTED_FIELD, IpamError, config_error, env_error

#: DNS-label-ish names: safe as a directory name and as an etcd key segment.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")

#: Ranges in one configuration: real ones have a few; the overlap check compares every pair.
MAX_RANGES = 256

#: Typed fields of an IPAM configuration: code 7 naming the JSON path.
F = Fields(config_error)


def opt_str(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    """A string or None (absent or null); empty strings pass (whereabouts treats them as unset)."""
    return F.string(obj, key, where, None, empty=True)


def network(ipam: Mapping[str, Any], name: str) -> str:
    """The store namespace: ``network_name``, the network's ``name`` (host-local), or the
    unnamed network's."""
    explicit = opt_str(ipam, "network_name", "ipam")
    if explicit:
        return _name(explicit, "ipam.network_name")
    if "ranges" in ipam or "subnet" in ipam:  # host-local: state lives under the net name
        if not name:
            raise config_error("name", "required for host-local ranges (names the state)")
        return _name(name, "name")
    return UNNAMED_NETWORK


def _name(value: str, where: str) -> str:
    if not NAME.fullmatch(value) or value in (".", ".."):
        raise config_error(where, f"{value!r} must be letters, digits, '.', '_' or '-'")
    return value


def boolean(obj: Mapping[str, Any], key: str, default: bool) -> bool:
    value = F.boolean(obj, key, "ipam", default)
    return bool(value)


def path(obj: Mapping[str, Any], key: str, where: str) -> Path | None:
    value = opt_str(obj, key, where)
    if not value:
        return None
    if "\x00" in value or not value.startswith("/"):
        raise config_error(join(where, key), f"{value!r} must be an absolute path")
    return Path(value)


def datastore(ipam: Mapping[str, Any]) -> Literal["file", "etcd", "cluster"]:
    """``file`` (node-local), ``etcd`` (the config's own ``etcd_host``) or ``cluster`` (the
    agent's cluster store). whereabouts keeps its addresses cluster-wide by default, so a
    ``whereabouts`` config, whereabouts' ``kubernetes`` datastore or a ``kubernetes``
    block is never served from node-local files unless it says ``"datastore": "file"``."""
    value = opt_str(ipam, "datastore", "ipam")
    if value == "etcd":
        return "etcd"
    if value in ("file", "local"):
        return "file"
    if value == "kubernetes" or (
        not value and ("kubernetes" in ipam or ipam.get("type") == "whereabouts")
    ):
        return "cluster"
    if not value:
        return "file"  # nodeagent-ipam and host-local-style configs: node-local
    raise IpamError(
        UNSUPPORTED_FIELD,
        f"unsupported ipam.datastore {value!r}: use \"kubernetes\" (or omit it) for the"
        ' agent\'s cluster store, "etcd" with etcd_host, or "file" for node-local',
    )


# -- addresses ----------------------------------------------------------------------


def opt_ip(obj: Mapping[str, Any], key: str, where: str) -> IPAddress | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    return F.ip(value, join(where, key))


# -- ranges -------------------------------------------------------------------------


def range_sets(ipam: Mapping[str, Any]) -> tuple[RangeSet, ...]:
    given = (len(_list(ipam, "ipRanges", "ipam")) + bool(ipam.get("range"))
             + bool(ipam.get("subnet"))
             + sum(len(r) if isinstance(r, list) else 1 for r in _list(ipam, "ranges", "ipam")))
    if given > MAX_RANGES:  # counted before any is parsed
        raise config_error("ipam", f"has more than {MAX_RANGES} ranges")
    sets: list[RangeSet] = []
    if ipam.get("range"):
        sets.append(RangeSet((whereabouts_range(ipam, "ipam", ipam),)))
    elif any(ipam.get(k) for k in ("range_start", "range_end")):
        raise config_error("ipam.range", "required with range_start / range_end")
    for i, entry in enumerate(_list(ipam, "ipRanges", "ipam")):
        where = f"ipam.ipRanges[{i}]"
        if not isinstance(entry, Mapping):
            raise config_error(where, "must be an object")
        sets.append(RangeSet((whereabouts_range(entry, where, ipam),)))
    if ipam.get("subnet"):  # host-local before `ranges` existed
        sets.append(RangeSet((host_local_range(ipam, "ipam"),)))
    for i, rset in enumerate(_list(ipam, "ranges", "ipam")):
        where = f"ipam.ranges[{i}]"
        if not isinstance(rset, list) or not rset:
            raise config_error(where, "must be a non-empty list of ranges")
        ranges = tuple(
            host_local_range(r, f"{where}[{j}]") for j, r in enumerate(rset)
        )
        _check_set(ranges, where)
        sets.append(RangeSet(ranges))
    _check_sets(sets)
    return tuple(_apply_top_gateway(ipam, sets))


def whereabouts_range(
    obj: Mapping[str, Any], where: str, ipam: Mapping[str, Any]
) -> IPRange:
    raw = obj.get("range")
    if not isinstance(raw, str) or not raw.strip():
        raise config_error(join(where, "range"), "must be a CIDR string")
    first: IPAddress | None = None
    last: IPAddress | None = None
    if "-" in raw:  # <firstIP>-<lastIP>/<len>
        head, _, tail = raw.partition("-")
        first = F.ip(head, join(where, "range") + " (first address)")
        last = F.interface(tail, join(where, "range")).ip
        subnet = F.cidr(tail, join(where, "range"))
    else:
        subnet = F.cidr(raw, join(where, "range"))
    start = opt_ip(obj, "range_start", where) or first or subnet.network_address
    end = opt_ip(obj, "range_end", where) or last or subnet[-1]
    exclude = tuple(
        F.cidr(e, f"{where}.exclude[{i}]")
        for i, e in enumerate(_list(obj, "exclude", where))
    )
    return _range(subnet, start, end, None, exclude, where, ("range_start", "range_end"))


def host_local_range(obj: Any, where: str) -> IPRange:
    if not isinstance(obj, Mapping):
        raise config_error(where, "must be an object with a subnet")
    if not obj.get("subnet"):
        raise config_error(join(where, "subnet"), "required")
    subnet = F.cidr(obj["subnet"], join(where, "subnet"))
    start = opt_ip(obj, "rangeStart", where) or _first_host(subnet)
    end = opt_ip(obj, "rangeEnd", where) or _last_host(subnet)
    gateway = opt_ip(obj, "gateway", where)
    if gateway is None and subnet.num_addresses > 2:
        gateway = subnet.network_address + 1  # host-local's default gateway: ".1"
    return _range(subnet, start, end, gateway, (), where, ("rangeStart", "rangeEnd"))


def _range(
    subnet: IPNetwork,
    start: IPAddress,
    end: IPAddress,
    gateway: IPAddress | None,
    exclude: tuple[IPNetwork, ...],
    where: str,
    names: tuple[str, str],
) -> IPRange:
    for ip, key in ((start, names[0]), (end, names[1])):
        if ip not in subnet:
            raise config_error(join(where, key), f"{ip} is outside the subnet {subnet}")
    if start > end:
        raise config_error(where, f"{names[0]} {start} is after {names[1]} {end}")
    if gateway is not None and gateway not in subnet:
        raise config_error(join(where, "gateway"), f"{gateway} is outside {subnet}")
    for i, ex in enumerate(exclude):
        if ex.version != subnet.version:
            raise config_error(f"{where}.exclude[{i}]", f"{ex} is not IPv{subnet.version}")
    if int(end) - int(start) + 1 > MAX_WINDOW:
        if subnet.version == 4:
            raise config_error(
                where, f"{start}-{end} has more than 2^24 addresses (at most a /8)"
            )
        end = start + (MAX_WINDOW - 1)  # IPv6: a bounded window from range_start
    return IPRange(subnet, start, end, gateway, exclude)


def _check_set(ranges: tuple[IPRange, ...], where: str) -> None:
    if len({r.version for r in ranges}) > 1:
        raise config_error(where, "mixes IPv4 and IPv6 ranges")


def _check_sets(sets: list[RangeSet]) -> None:
    flat = [(i, r) for i, s in enumerate(sets) for r in s.ranges]
    for a, (i, ra) in enumerate(flat):
        for j, rb in flat[a + 1 :]:
            if ra.version == rb.version and ra.start <= rb.end and rb.start <= ra.end:
                raise config_error(
                    "ipam", f"range {ra} (set {i}) overlaps range {rb} (set {j})"
                )


def _apply_top_gateway(ipam: Mapping[str, Any], sets: list[RangeSet]) -> list[RangeSet]:
    """whereabouts' top-level ``gateway`` goes to the ranges whose subnet holds it."""
    gateway = opt_ip(ipam, "gateway", "ipam")
    if gateway is None:
        return sets
    if sets and not any(gateway in r.subnet for s in sets for r in s.ranges):
        raise config_error("ipam.gateway", f"{gateway} is outside every range's subnet")
    return [
        RangeSet(
            tuple(
                replace(r, gateway=gateway)
                if r.gateway is None and gateway in r.subnet
                else r
                for r in rset.ranges
            )
        )
        for rset in sets
    ]


# -- fixed addresses ----------------------------------------------------------------


def addresses(ipam: Mapping[str, Any]) -> tuple[StaticAddress, ...]:
    out = []
    for i, entry in enumerate(_list(ipam, "addresses", "ipam")):
        where = f"ipam.addresses[{i}]"
        if not isinstance(entry, Mapping):
            raise config_error(where, "must be an object with an address")
        address = F.interface(entry.get("address"), join(where, "address"))
        gateway = opt_ip(entry, "gateway", where)
        if gateway is not None and gateway.version != address.version:
            raise config_error(
                join(where, "gateway"), f"{gateway} is not IPv{address.version}"
            )
        out.append(StaticAddress(address, gateway))
    return tuple(out)


def requested(doc: Mapping[str, Any], args: Mapping[str, str]) -> tuple[RequestedIP, ...]:
    out: list[RequestedIP] = []
    runtime = doc.get("runtimeConfig") or {}
    if not isinstance(runtime, Mapping):
        raise config_error("runtimeConfig", "must be an object")
    conf_args = doc.get("args")
    cni = conf_args.get("cni") if isinstance(conf_args, Mapping) else None
    for where, values in (
        ("runtimeConfig.ips", runtime.get("ips")),
        ("args.cni.ips", cni.get("ips") if isinstance(cni, Mapping) else None),
    ):
        if values is None:
            continue
        if not isinstance(values, list):
            raise config_error(where, "must be a list of addresses")
        out += [_requested(v, f"{where}[{i}]", None) for i, v in enumerate(values)]
    gateways = []
    for item in filter(None, (g.strip() for g in args.get("GATEWAY", "").split(","))):
        try:
            gateways.append(F.ip(item, "CNI_ARGS GATEWAY"))
        except IpamError:
            raise env_error("CNI_ARGS", f"GATEWAY={item!r} is not an IP address") from None
    for item in filter(None, (i.strip() for i in args.get("IP", "").split(","))):
        try:
            req = _requested(item, "CNI_ARGS IP", gateways)
        except IpamError as exc:
            raise env_error("CNI_ARGS", f"IP={item!r} is not an address") from exc
        out.append(req)
    seen: set[IPAddress] = set()
    for req in out:
        if req.ip in seen:
            raise config_error(req.source, f"{req.ip} is requested twice")
        seen.add(req.ip)
    return tuple(out)


def _requested(value: Any, where: str, gateways: list[IPAddress] | None) -> RequestedIP:
    if isinstance(value, str) and "/" in value:
        iface = F.interface(value, where)
        ip, prefixlen = iface.ip, iface.network.prefixlen
    else:
        ip, prefixlen = F.ip(value, where), None
    gateway = None
    if gateways and prefixlen is not None:
        net = ipaddress.ip_network(f"{ip}/{prefixlen}", strict=False)
        gateway = next((g for g in gateways if g in net), None)
    return RequestedIP(ip, prefixlen, gateway, where)


# -- routes, dns, etcd --------------------------------------------------------------


def routes(value: Any, where: str) -> tuple[Route, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise config_error(where, "must be a list of routes")
    out = []
    for i, entry in enumerate(value):
        w = f"{where}[{i}]"
        if not isinstance(entry, Mapping) or "dst" not in entry:
            raise config_error(w, "must be an object with a dst")
        ints = {key: F.integer(entry, key, w, 0, ROUTE_ATTRIBUTE_MAX[key])
                for key in ROUTE_ATTRIBUTES}
        out.append(
            Route(F.cidr(entry["dst"], join(w, "dst")), opt_ip(entry, "gw", w), **ints)
        )
    return tuple(out)


def dns(value: Any, where: str) -> DNS:
    if value is None:
        return DNS()
    if not isinstance(value, Mapping):
        raise config_error(where, "must be an object")

    def strings(key: str) -> tuple[str, ...]:
        items = _list(value, key, where)
        if not all(isinstance(s, str) for s in items):
            raise config_error(join(where, key), "must be a list of strings")
        return tuple(items)

    for i, ns in enumerate(strings("nameservers")):
        _nameserver(ns, f"{where}.nameservers[{i}]")
    return DNS(
        strings("nameservers"), opt_str(value, "domain", where), strings("search"),
        strings("options"),
    )


def _nameserver(value: str, where: str) -> None:
    """An IP address; a link-local one may name its zone (``fe80::1%eth0``), as in
    resolv.conf."""
    try:
        ipaddress.ip_address(value.strip())
    except ValueError:
        raise config_error(where, f"{value!r} is not an IP address") from None


def etcd(ipam: Mapping[str, Any]) -> EtcdConfig | None:
    hosts = opt_str(ipam, "etcd_host", "ipam")
    if ipam.get("datastore") != "etcd":
        return None
    if not hosts:
        raise config_error("ipam.etcd_host", 'required with "datastore": "etcd"')
    tls = False
    endpoints = []
    for item in (h.strip() for h in hosts.split(",")):
        if not item:
            raise config_error("ipam.etcd_host", f"{hosts!r} has an empty entry")
        scheme, sep, rest = item.partition("://")
        if sep:
            if scheme not in ("http", "https"):
                raise config_error("ipam.etcd_host", f"{item!r}: scheme must be http(s)")
            tls = tls or scheme == "https"
            item = rest.rstrip("/")
        endpoints.append(endpoint(item))
    files = {
        key: path(ipam, key, "ipam")
        for key in ("etcd_key_file", "etcd_cert_file", "etcd_ca_cert_file")
    }
    for key, file in files.items():
        if file is not None and not file.is_file():
            raise config_error(join("ipam", key), f"{file} is not a readable file")
    if (files["etcd_key_file"] is None) != (files["etcd_cert_file"] is None):
        raise config_error("ipam.etcd_cert_file", "goes together with etcd_key_file")
    username = opt_str(ipam, "etcd_username", "ipam") or None
    password = opt_str(ipam, "etcd_password", "ipam") or None
    if (username is None) != (password is None):
        raise config_error("ipam.etcd_password", "goes together with etcd_username")
    prefix = opt_str(ipam, "etcd_prefix", "ipam") or DEFAULT_ETCD_PREFIX
    if not prefix.startswith("/") or prefix.endswith("/"):
        raise config_error("ipam.etcd_prefix", f"{prefix!r} must start and not end with '/'")
    timeout = ipam.get("etcd_timeout", DEFAULT_ETCD_TIMEOUT)
    number = isinstance(timeout, int | float) and not isinstance(timeout, bool)
    if not number or not 0 < timeout <= 60:
        raise config_error("ipam.etcd_timeout", "must be a number of seconds in (0, 60]")
    return EtcdConfig(
        endpoints=tuple(endpoints),
        tls=tls or any(files.values()),
        username=username,
        password=password,
        key_file=files["etcd_key_file"],
        cert_file=files["etcd_cert_file"],
        ca_cert_file=files["etcd_ca_cert_file"],
        prefix=prefix,
        timeout=float(timeout),
    )


def endpoint(item: str) -> EtcdEndpoint:
    if item.startswith("["):  # [v6]:port
        host, _, port = item[1:].partition("]")
        port = port.removeprefix(":")
    elif item.count(":") == 1:
        host, _, port = item.partition(":")
    else:
        host, port = item, ""
    if not port:
        number = DEFAULT_ETCD_PORT
    else:
        number = int(port) if port.isascii() and port.isdigit() and len(port) < 6 else -1
    if not host or not 0 < number < 65536:
        raise config_error("ipam.etcd_host", f"{item!r} is not host:port")
    return EtcdEndpoint(host, number)


def _list(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    return F.items(obj, key, where)


def _first_host(subnet: IPNetwork) -> IPAddress:
    return subnet.network_address + 1 if subnet.num_addresses > 2 else subnet.network_address


def _last_host(subnet: IPNetwork) -> IPAddress:
    if subnet.version == 4 and subnet.num_addresses > 2:
        return subnet.broadcast_address - 1
    return subnet[-1]
