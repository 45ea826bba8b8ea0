"""The node policy: which PFs to manage and the state to keep them in.

A YAML or JSON file (docs/provisioning.md)::

    pfs:
      - name: fronthaul
        nicSelector: {pfNames: [ens1f0], rootDevices: [], vendor: "8086", deviceID: "1592"}
        numVfs: 8
        mtu: 9000
        vfDefaults: {driver: kernel, mac: derived, spoofchk: true, trust: false, vlan: 0}
        resourceName: fronthaul_netdev   # optional: a device plugin pool of these VFs
        vfGroups:
          - {vfs: "0-3", driver: vfio-pci, resourceName: fronthaul_dpdk}

``nicSelector`` uses sriov-network-operator's field names; every field given must match (a
list matches any of its entries). Each PF may be selected by one entry only. ``resourceName``
(on an entry or a group; a group without one inherits the entry's) and the top-level
``resourcePrefix`` name device plugin pools, as in SriovNetworkNodePolicy.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from nodeagent.model import Nic, VfDesired
from nodeagent.sysfs import PCI_ADDRESS

KERNEL = "kernel"  # the VF driver the kernel picks for the VF's IDs (iavf, igbvf, mlx5_core...)
VFIO = "vfio-pci"
MAC_KEEP, MAC_DERIVED = "keep", "derived"
VLAN_PROTOS = ("802.1Q", "802.1ad")
DRIVER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
HEX_ID = re.compile(r"^[0-9a-f]{4}$")
# Device plugin resource names as sriov-network-device-plugin accepts them; the prefix is a
# DNS subdomain (the part of an extended resource name before the "/").
RESOURCE_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
RESOURCE_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DEFAULT_RESOURCE_PREFIX = "intel.com"


class PolicyError(ValueError):
    """The policy file is unreadable or invalid; the message names the field."""


@dataclass(frozen=True)
class VfTemplate:
    """What the policy says a VF should look like before any pod takes it: its driver, its
    admin MAC scheme, and the other PF-side settings it wants (``pf_side``; None: leave as it
    is). :meth:`desired` makes it one VF's :class:`~nodeagent.model.VfDesired`."""

    driver: str = KERNEL
    mac: str = MAC_KEEP  # keep | derived | a base MAC (VF i gets base + i)
    pf_side: VfDesired = field(default_factory=VfDesired)

    def desired(self, hostname: str, pf_pci: str, index: int) -> VfDesired:
        """VF ``index``'s PF-side settings, with the MAC its scheme gives it."""
        return replace(self.pf_side, mac=vf_mac(self.mac, hostname, pf_pci, index))


@dataclass(frozen=True)
class VfGroup:
    vfs: frozenset[int]
    settings: VfTemplate
    resource_name: str | None = None  # the entry's unless the group names its own


@dataclass(frozen=True)
class NicSelector:
    pf_names: tuple[str, ...] = ()
    root_devices: tuple[str, ...] = ()
    vendor: str | None = None
    device_id: str | None = None

    def matches(self, nic: Nic) -> bool:
        if nic.sriov is None:
            return False
        pci = nic.pci
        if self.pf_names and not any(n.name in self.pf_names for n in nic.netdevs):
            return False
        if self.root_devices and (pci is None or pci.address not in self.root_devices):
            return False
        if self.vendor and (pci is None or pci.vendor != self.vendor):
            return False
        return not (self.device_id and (pci is None or pci.device != self.device_id))


@dataclass(frozen=True)
class PfPolicy:
    name: str
    selector: NicSelector
    num_vfs: int
    mtu: int | None = None
    externally_managed: bool = False
    allow_default_route: bool = False
    defaults: VfTemplate = field(default_factory=VfTemplate)
    groups: tuple[VfGroup, ...] = ()
    resource_name: str | None = None

    def vf_settings(self, index: int) -> VfTemplate:
        """The defaults, overridden by the first group that lists the VF."""
        for group in self.groups:
            if index in group.vfs:
                return group.settings
        return self.defaults


@dataclass(frozen=True)
class Policy:
    pfs: tuple[PfPolicy, ...] = ()
    resource_prefix: str = DEFAULT_RESOURCE_PREFIX

    def select(self, nic: Nic) -> list[PfPolicy]:
        return [p for p in self.pfs if p.selector.matches(nic)]


def derived_mac(hostname: str, pf_pci: str, index: int) -> str:
    """A locally administered unicast MAC, stable per node, PF and VF index: unique across a
    cluster's nodes (node names are) and the same after every reboot."""
    digest = hashlib.sha256(f"{hostname}/{pf_pci}".encode()).digest()
    octets = [0x02, *digest[:4], index & 0xFF]
    return ":".join(f"{o:02x}" for o in octets)


def vf_mac(scheme: str, hostname: str, pf_pci: str, index: int) -> str | None:
    """The admin MAC a scheme gives VF ``index``; None for ``keep``."""
    if scheme == MAC_KEEP:
        return None
    if scheme == MAC_DERIVED:
        return derived_mac(hostname, pf_pci, index)
    value = int(scheme.replace(":", ""), 16) + index
    return ":".join(f"{(value >> s) & 0xFF:02x}" for s in range(40, -8, -8))


# -- parsing ----------------------------------------------------------------------------------


def load(path: str | Path) -> Policy:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(f"{path}: {exc.strerror}") from None
    return parse(text, str(path))


def parse(text: str, where: str = "policy") -> Policy:
    try:
        raw = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise PolicyError(f"{where}: not valid YAML or JSON: {exc}") from None
    if raw is None:
        return Policy()
    doc = _obj(raw, where, {"apiVersion", "kind", "pfs", "resourcePrefix"})
    prefix = doc.get("resourcePrefix", DEFAULT_RESOURCE_PREFIX)
    if not isinstance(prefix, str) or len(prefix) > 253 or not RESOURCE_PREFIX.match(prefix):
        raise PolicyError(f"{where}.resourcePrefix: must be a DNS subdomain such as"
                          f" \"example.com\", got {prefix!r}")
    pfs = doc.get("pfs") or []
    if not isinstance(pfs, list):
        raise PolicyError(f"{where}.pfs: must be a list")
    parsed = tuple(_pf(item, f"{where}.pfs[{i}]", i) for i, item in enumerate(pfs))
    names = [p.name for p in parsed]
    if len(set(names)) != len(names):
        raise PolicyError(f"{where}.pfs: entry names must be unique, got {names}")
    return Policy(parsed, prefix)


def _obj(raw: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: must be a mapping")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise PolicyError(f"{where}: unknown field(s) {', '.join(unknown)}"
                          f" (allowed: {', '.join(sorted(allowed))})")
    return raw


def _int(raw: dict[str, Any], key: str, where: str, low: int, high: int) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PolicyError(f"{where}.{key}: must be an integer from {low} to {high}, got {value!r}")
    return value


def _bool(raw: dict[str, Any], key: str, where: str) -> bool | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, bool):
        raise PolicyError(f"{where}.{key}: must be true or false, got {value!r}")
    return value


def _strings(raw: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = raw.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{where}.{key}: must be a list of strings")
    return tuple(value)


def _hex_id(raw: dict[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    text = str(value).lower().removeprefix("0x")
    if not HEX_ID.match(text):
        raise PolicyError(f"{where}.{key}: must be 4 hex digits such as \"8086\", got {value!r}")
    return text


def _selector(raw: Any, where: str) -> NicSelector:
    raw = _obj(raw, where, {"pfNames", "rootDevices", "vendor", "deviceID"})
    names = _strings(raw, "pfNames", where)
    for name in names:
        if "#" in name:
            raise PolicyError(f"{where}.pfNames: {name!r}: VF ranges go in vfGroups, not in"
                              " the PF name")
    roots = _strings(raw, "rootDevices", where)
    for address in roots:
        if not PCI_ADDRESS.match(address):
            raise PolicyError(f"{where}.rootDevices: {address!r} is not a PCI address such as"
                              " 0000:41:00.0")
    selector = NicSelector(names, roots, _hex_id(raw, "vendor", where),
                           _hex_id(raw, "deviceID", where))
    if selector == NicSelector():
        raise PolicyError(f"{where}: selects nothing; give pfNames, rootDevices or vendor/deviceID")
    return selector


def _settings(raw: Any, where: str, base: VfTemplate) -> VfTemplate:
    raw = _obj(raw, where, {"driver", "mac", "vlan", "qos", "vlanProto", "spoofchk", "trust",
                            "vfs"})
    driver = raw.get("driver", base.driver)
    if not isinstance(driver, str) or not DRIVER_NAME.match(driver):
        raise PolicyError(f"{where}.driver: must be \"kernel\", \"vfio-pci\" or a driver name,"
                          f" got {driver!r}")
    mac = str(raw.get("mac", base.mac)).lower()
    if mac not in (MAC_KEEP, MAC_DERIVED) and not (MAC.match(mac) and not int(mac[:2], 16) & 1):
        raise PolicyError(f"{where}.mac: must be \"keep\", \"derived\" or a unicast base MAC,"
                          f" got {raw.get('mac')!r}")
    proto = raw.get("vlanProto", base.pf_side.vlan_proto)
    if proto is not None and proto not in VLAN_PROTOS:
        raise PolicyError(f"{where}.vlanProto: must be one of {', '.join(VLAN_PROTOS)}")
    vlan = _int(raw, "vlan", where, 0, 4094)
    qos = _int(raw, "qos", where, 0, 7)
    spoofchk = _bool(raw, "spoofchk", where)
    trust = _bool(raw, "trust", where)
    inherited = base.pf_side
    return VfTemplate(driver, mac, replace(
        inherited, vlan_proto=proto,
        vlan=inherited.vlan if vlan is None else vlan,
        qos=inherited.qos if qos is None else qos,
        spoofchk=inherited.spoofchk if spoofchk is None else spoofchk,
        trust=inherited.trust if trust is None else trust,
    ))


def parse_range(text: Any, where: str, limit: int) -> frozenset[int]:
    """``"0-3,6"`` (or a list of indexes) -> {0, 1, 2, 3, 6}, each below ``limit``."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if isinstance(text, list):
        text = ",".join(str(v) for v in text)
    if not isinstance(text, str) or not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*",
                                                     text.replace(" ", "")):
        raise PolicyError(f"{where}: must be VF indexes such as \"0-3,6\", got {text!r}")
    found: set[int] = set()
    for part in text.replace(" ", "").split(","):
        low, _, high = part.partition("-")
        first, last = int(low), int(high or low)
        if first > last or last >= limit:
            raise PolicyError(f"{where}: {part} is not within the PF's VFs 0-{limit - 1}")
        found.update(range(first, last + 1))
    return frozenset(found)


def _resource_name(raw: dict[str, Any], where: str, inherited: str | None) -> str | None:
    value = raw.get("resourceName", inherited)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 63 or not RESOURCE_NAME.match(value):
        raise PolicyError(f"{where}.resourceName: must be letters, digits, '_', '.' or '-'"
                          f" (starting and ending with a letter or digit), got {value!r}")
    return value


def _pf(raw: Any, where: str, position: int) -> PfPolicy:
    raw = _obj(raw, where, {"name", "nicSelector", "numVfs", "mtu", "externallyManaged",
                            "allowDefaultRoute", "vfDefaults", "vfGroups", "resourceName"})
    resource_name = _resource_name(raw, where, None)
    if "nicSelector" not in raw:
        raise PolicyError(f"{where}: nicSelector is required")
    if "numVfs" not in raw:
        raise PolicyError(f"{where}: numVfs is required")
    num_vfs = _int(raw, "numVfs", where, 0, 4096)
    assert num_vfs is not None
    defaults = _settings(raw.get("vfDefaults") or {}, f"{where}.vfDefaults", VfTemplate())
    if "vfs" in (raw.get("vfDefaults") or {}):
        raise PolicyError(f"{where}.vfDefaults.vfs: VF ranges go in vfGroups")
    if raw.get("vfGroups") is not None and not isinstance(raw["vfGroups"], list):
        raise PolicyError(f"{where}.vfGroups: must be a list")
    groups = []
    claimed: set[int] = set()
    for i, item in enumerate(raw.get("vfGroups") or []):
        gw = f"{where}.vfGroups[{i}]"
        if not isinstance(item, dict) or "vfs" not in item:
            raise PolicyError(f"{gw}: needs vfs (VF indexes such as \"0-3\")")
        vfs = parse_range(item["vfs"], f"{gw}.vfs", max(num_vfs, 1))
        if vfs & claimed:
            raise PolicyError(f"{gw}.vfs: VF(s) {sorted(vfs & claimed)} are in an earlier group")
        claimed |= vfs
        settings = _settings({k: v for k, v in item.items() if k != "resourceName"}, gw,
                             defaults)
        groups.append(VfGroup(vfs, settings, _resource_name(item, gw, resource_name)))
    name = raw.get("name", f"pfs[{position}]")
    if not isinstance(name, str) or not name:
        raise PolicyError(f"{where}.name: must be a non-empty string")
    return PfPolicy(
        name=name, selector=_selector(raw["nicSelector"], f"{where}.nicSelector"),
        num_vfs=num_vfs, mtu=_int(raw, "mtu", where, 68, 65535),
        externally_managed=bool(_bool(raw, "externallyManaged", where)),
        allow_default_route=bool(_bool(raw, "allowDefaultRoute", where)),
        defaults=defaults, groups=tuple(groups), resource_name=resource_name,
    )
