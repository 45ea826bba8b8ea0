"""JSON-ish values and mutations of real documents, drawn from a :class:`Draw`."""

from __future__ import annotations

import copy
from typing import Any

from tests.fuzz.draw import Draw

#: Keys the parsers look at (CNI, IPAM, device plugin, policy): a mutation adds them often.
KEYS = (
    "cniVersion", "name", "type", "master", "mode", "mtu", "mac", "linkInContainer", "ipam",
    "ranges", "range", "subnet", "rangeStart", "rangeEnd", "gateway", "addresses", "address",
    "routes", "dst", "gw", "dns", "nameservers", "runtimeConfig", "ips", "deviceID", "vlan",
    "vlanQoS", "vlanProto", "spoofchk", "trust", "link_state", "min_tx_rate", "max_tx_rate",
    "prevResult", "interfaces", "interface", "cni.dev/valid-attachments", "containerID",
    "ifname", "capabilities", "network_name", "datastore", "exclude", "enable_overlapping_ranges",
    "sticky", "priority", "table", "scope", "advmss", "resourceList", "resourceName",
    "resourcePrefix", "deviceType", "selectors", "pfNames", "rootDevices", "vendors", "devices",
    "drivers", "pciAddresses", "needVhostNet", "pfs", "nicSelector", "numVfs", "vfGroups",
    "vfs", "vfDefaults", "driver", "externallyManaged", "agentSocket", "sbr", "gateways",
    "addSourceHints",
)

STRINGS = (
    "", " ", "bridge", "static", "macvlan", "ipvlan", "vlan", "sriov", "whereabouts", "sbr",
    "nodeagent-ipam", "host-local", "fzipam-ok", "fzipam-fail", "fzipam-code", "fzipam-junk",
    "fzipam-array", "fzipam-weird", "10.10.0.0/24", "10.10.0.5/24", "10.10.0.1", "fd00::/64",
    "fd00::5/64", "fe80::1%eth0/64", "10.10.0.300/24", "0.0.0.0/0", "::/0", "10.10.0.0/33",
    "10.10.0.9-10.10.0.2", "255.255.255.255/32", "00:11:22:33:44:55", "01:00:5e:00:00:01",
    "0000:3b:01.0", "0000:3b:01.0\n", "net1", "eth0", "fzh0", "fzm0", "a" * 300, "1.1.0",
    "0.3.1", "1.0.0", "9.9.9", "\u0000", "\ud800", "p#0-99999999999", "p#5-1", "p#0-3,x",
    "ens1f0#0-1", "0x8086", "8086", "vfio-pci", "derived", "file", "etcd", "kubernetes",
    "../../etc", "/tmp/x", "${HOME}",
)

INTS = (0, 1, -1, 2, 7, 24, 64, 255, 1500, 4094, 4095, 65535, 65536, 2**31 - 1, 2**31, 2**63,
        -2**63, 10**30)


def value(draw: Draw, depth: int = 0) -> Any:
    """Any JSON value, biased towards the ones that break type checks."""
    kind = draw.int(0, 11 if depth < 3 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return draw.bool()
    if kind == 2:
        return draw.choice(INTS)
    if kind == 3:
        return draw.choice((0.5, -0.0, 1e308, 1.5e-300, 3.0))
    if kind in (4, 5):
        return draw.choice(STRINGS)
    if kind == 6:
        return draw.text(24)
    if kind == 7:
        return draw.choice(([], {}, [5], [{}], [""], [[]], {"": None}))
    if kind in (8, 9):
        return [value(draw, depth + 1) for _ in range(draw.int(0, 3))]
    return {draw.choice(KEYS) if draw.bool(80) else draw.text(8): value(draw, depth + 1)
            for _ in range(draw.int(0, 3))}


def _paths(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(doc, dict):
        for key, item in doc.items():
            out += _paths(item, (*path, key))
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            out += _paths(item, (*path, i))
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def mutate(draw: Draw, doc: Any, rounds: int) -> Any:
    """``doc`` after ``rounds`` random edits: replace, delete, add a known key, wrap, nest."""
    doc = copy.deepcopy(doc)
    for _ in range(rounds):
        path = draw.choice(_paths(doc))
        target = _get(doc, path)
        op = draw.int(0, 5)
        if op == 0 and isinstance(target, dict):  # add (or overwrite) a key
            target[draw.choice(KEYS)] = value(draw)
            continue
        if op == 1 and isinstance(target, list):
            target.insert(draw.int(0, len(target)), value(draw))
            continue
        if not path:  # the root: replaced only sometimes, the parsers want an object
            if op == 2:
                doc = value(draw)
            continue
        parent = _get(doc, path[:-1])
        if op == 3:
            del parent[path[-1]]
        elif op == 4:
            parent[path[-1]] = draw.choice(([target], {"x": target}, str(target), target))
        else:
            parent[path[-1]] = value(draw)
    return doc


def nested(draw: Draw) -> bytes:
    """Deep nesting, in the styles of JSON and YAML."""
    opener = draw.choice(("[", "{\"a\":", "[1,", "{", "- ", "[{\"a\":"))
    return opener.encode() * draw.choice((50, 900, 1100, 5000, 100_000))


def mangle(draw: Draw, data: bytes) -> bytes:
    """Byte-level damage: truncate, splice in bytes, or invalid UTF-8."""
    op = draw.int(0, 3)
    if op == 0 or not data:
        return data[: draw.int(0, len(data))]
    at = draw.int(0, len(data))
    if op == 1:
        return data[:at] + draw.choice((b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00")) + data[at:]
    if op == 2:
        return data[:at] + draw.bytes(16) + data[at:]
    return data + data[at:]
