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
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nodeagent.documents import DocumentError, parse_json, parse_yaml
from nodeagent.fields import Fields, join
from nodeagent.model import Nic, VfDesired
from nodeagent.sysfs import PCI_ADDRESS

KERNEL = "kernel"  # the VF driver the kernel picks for the VF's IDs (iavf, igbvf, mlx5_core...)
VFIO = "vfio-pci"
MAC_KEEP, MAC_DERIVED = "keep", "derived"
VLAN_PROTOS = ("802.1Q", "802.1ad")
# Patterns are matched whole (fullmatch): a trailing newline is not part of a name.
DRIVER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Device plugin resource names as sriov-network-device-plugin accepts them; the prefix is a
# DNS subdomain (the part of an extended resource name before the "/").
RESOURCE_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
RESOURCE_PREFIX = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
#: The policy file: a few PF entries; a megabyte is far beyond any real one.
MAX_BYTES = 1 << 20
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


_F = Fields(lambda path, problem: PolicyError(f"{path}: {problem}"))


def load(path: str | Path) -> Policy:
    """Read and parse the policy; PolicyError for anything wrong with it, readable or not."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise PolicyError(f"{path}: {exc.strerror}") from None
    return parse(data, str(path))


def parse(text: str | bytes, where: str = "policy") -> Policy:
    try:
        raw = (parse_json if _looks_like_json(text) else parse_yaml)(text, max_bytes=MAX_BYTES)
    except DocumentError as exc:
        raise PolicyError(f"{where}: not valid YAML or JSON: {exc}") from None
    if raw is None:
        return Policy()
    doc = _obj(raw, where, {"apiVersion", "kind", "pfs", "resourcePrefix"})
    prefix = _F.string(doc, "resourcePrefix", where, DEFAULT_RESOURCE_PREFIX, max_len=253)
    if not RESOURCE_PREFIX.fullmatch(prefix):
        _F.fail(join(where, "resourcePrefix"), f"must be a DNS subdomain such as"
                f" \"example.com\", got {prefix!r}")
    pfs = _F.items(doc, "pfs", where)
    parsed = tuple(_pf(item, join(join(where, "pfs"), i), i) for i, item in enumerate(pfs))
    names = [p.name for p in parsed]
    if len(set(names)) != len(names):
        raise PolicyError(f"{where}.pfs: entry names must be unique, got {names}")
    return Policy(parsed, prefix)


def _looks_like_json(text: str | bytes) -> bool:
    start = text.lstrip()[:1]
    return start in ("{", b"{")


def _obj(raw: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: must be a mapping")
    obj = _F.obj(raw, where)
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise PolicyError(f"{where}: unknown field(s) {', '.join(unknown)}"
                          f" (allowed: {', '.join(sorted(allowed))})")
    return obj


def _hex_id(raw: dict[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    return None if value is None else _F.pci_id(value, join(where, key))


def _selector(raw: Any, where: str) -> NicSelector:
    raw = _obj(raw, where, {"pfNames", "rootDevices", "vendor", "deviceID"})
    names = _F.strings(raw, "pfNames", where, max_len=256)
    for name in names:
        if "#" in name:
            raise PolicyError(f"{where}.pfNames: {name!r}: VF ranges go in vfGroups, not in"
                              " the PF name")
    roots = _F.strings(raw, "rootDevices", where, max_len=64)
    for address in roots:
        if not PCI_ADDRESS.fullmatch(address):
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
    if not isinstance(driver, str) or not DRIVER_NAME.fullmatch(driver):
        raise PolicyError(f"{where}.driver: must be \"kernel\", \"vfio-pci\" or a driver name,"
                          f" got {driver!r}")
    mac = raw.get("mac", base.mac)
    if isinstance(mac, str) and mac.lower() in (MAC_KEEP, MAC_DERIVED):
        mac = mac.lower()
    else:
        try:
            mac = _F.mac(mac, join(where, "mac"))
        except PolicyError:
            raise PolicyError(f"{where}.mac: must be \"keep\", \"derived\" or a unicast base"
                              f" MAC, got {raw.get('mac')!r}") from None
    proto = _F.choice(raw, "vlanProto", where, {p: p for p in VLAN_PROTOS},
                      base.pf_side.vlan_proto)
    vlan = _F.integer(raw, "vlan", where, 0, 4094)
    qos = _F.integer(raw, "qos", where, 0, 7)
    spoofchk = _F.boolean(raw, "spoofchk", where)
    trust = _F.boolean(raw, "trust", where)
    inherited = base.pf_side
    return VfTemplate(driver, mac, replace(
        inherited, vlan_proto=proto,
        vlan=inherited.vlan if vlan is None else vlan,
        qos=inherited.qos if qos is None else qos,
        spoofchk=inherited.spoofchk if spoofchk is None else spoofchk,
        trust=inherited.trust if trust is None else trust,
    ))


def parse_range(text: Any, where: str, limit: int) -> frozenset[int]:
    """``"0-3,6"`` (or an index, or a list of indexes) -> {0, 1, 2, 3, 6}, each below
    ``limit``."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if isinstance(text, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                      for v in text):
        text = ",".join(str(v) for v in text)
    if not isinstance(text, str):
        raise PolicyError(f"{where}: must be VF indexes such as \"0-3,6\", got {text!r}")
    return _F.index_set(text, where, limit, scope="the PF's VFs")


def _resource_name(raw: dict[str, Any], where: str, inherited: str | None) -> str | None:
    value = raw.get("resourceName", inherited)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 63 or not RESOURCE_NAME.fullmatch(value):
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
    num_vfs = _F.int_value(raw["numVfs"], join(where, "numVfs"), 0, 4096)
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
    name = _F.string(raw, "name", where, f"pfs[{position}]", max_len=253)
    return PfPolicy(
        name=name, selector=_selector(raw["nicSelector"], f"{where}.nicSelector"),
        num_vfs=num_vfs, mtu=_F.integer(raw, "mtu", where, 68, 65535),
        externally_managed=bool(_F.boolean(raw, "externallyManaged", where)),
        allow_default_route=bool(_F.boolean(raw, "allowDefaultRoute", where)),
        defaults=defaults, groups=tuple(groups), resource_name=resource_name,
    )
