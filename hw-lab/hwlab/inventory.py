"""Inventory files: the only devices the lab may touch, and what they are expected to be.

An inventory is YAML (format in hw-lab/README.md). Loading validates it strictly: unknown keys,
malformed PCI addresses or IDs, duplicate devices and dangling peers are errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PCI_ADDR = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
HEX_ID = re.compile(r"^[0-9a-f]{4}$")
VF_SETTINGS = frozenset({"mac", "vlan", "spoofchk", "trust", "max_tx_rate", "link_state"})
KINDS = frozenset({"virtual", "hardware"})


class InventoryError(ValueError):
    """The inventory file is missing or malformed."""


@dataclass(frozen=True)
class PFSpec:
    """One SR-IOV physical function the lab may use."""

    pci: str
    vendor: str
    device: str
    driver: str
    vf_device: str
    vf_driver: str
    max_vfs: int
    vf_vendor: str = ""
    total_vfs: int | None = None
    numa_node: int | None = None
    vf_settings: frozenset[str] = frozenset()
    vf_unsupported: frozenset[str] = frozenset()
    peer: str | None = None


@dataclass(frozen=True)
class NetdevsimSpec:
    """A netdevsim device (software SR-IOV PF) the lab creates and may use."""

    id: int
    ports: int = 1
    max_vfs: int = 2
    vf_settings: frozenset[str] = VF_SETTINGS


@dataclass(frozen=True)
class Inventory:
    """A validated inventory."""

    name: str
    kind: str
    path: Path
    pfs: tuple[PFSpec, ...]
    netdevsim: tuple[NetdevsimSpec, ...] = ()

    def pf(self, pci: str) -> PFSpec | None:
        """The PF spec for a PCI address, or None when the inventory does not name it."""
        return next((p for p in self.pfs if p.pci == pci), None)


def _take(raw: dict[str, Any], allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InventoryError(f"{where}: expected a mapping, got {type(raw).__name__}")
    unknown = set(raw) - allowed
    if unknown:
        raise InventoryError(
            f"{where}: unknown key(s) {sorted(unknown)}; allowed {sorted(allowed)}"
        )
    return raw


def _hex_id(value: Any, where: str) -> str:
    text = str(value).lower().removeprefix("0x")
    if not HEX_ID.match(text):
        raise InventoryError(f"{where}: {value!r} is not a 4-digit hex PCI ID (e.g. '8086')")
    return text


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InventoryError(f"{where}: {value!r} must be an integer >= {minimum}")
    return value


def _settings(value: Any, where: str) -> frozenset[str]:
    items = frozenset(value or ())
    bad = items - VF_SETTINGS
    if bad:
        raise InventoryError(
            f"{where}: unknown VF setting(s) {sorted(bad)}; known {sorted(VF_SETTINGS)}"
        )
    return items


def _str(raw: dict[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise InventoryError(f"{where}: '{key}' is required and must be a non-empty string")
    return value


PF_KEYS = {
    "pci", "vendor", "device", "driver", "vf_vendor", "vf_device", "vf_driver", "max_vfs",
    "total_vfs", "numa_node", "vf_settings", "vf_unsupported", "peer",
}


def _pf(raw: Any, index: int) -> PFSpec:
    where = f"pfs[{index}]"
    raw = _take(raw, PF_KEYS, where)
    pci = str(raw.get("pci", "")).lower()
    if not PCI_ADDR.match(pci):
        raise InventoryError(
            f"{where}: pci {raw.get('pci')!r} is not a full address like 0000:41:00.0"
        )
    where = f"pfs[{index}] ({pci})"
    for key in ("vendor", "device", "vf_device"):
        if key not in raw:
            raise InventoryError(f"{where}: '{key}' is required")
    vendor = _hex_id(raw["vendor"], f"{where}.vendor")
    numa = raw.get("numa_node")
    total = raw.get("total_vfs")
    spec = PFSpec(
        pci=pci,
        vendor=vendor,
        device=_hex_id(raw["device"], f"{where}.device"),
        driver=_str(raw, "driver", where),
        vf_vendor=_hex_id(raw.get("vf_vendor", vendor), f"{where}.vf_vendor"),
        vf_device=_hex_id(raw["vf_device"], f"{where}.vf_device"),
        vf_driver=_str(raw, "vf_driver", where),
        max_vfs=_int(raw.get("max_vfs"), f"{where}.max_vfs", 1),
        total_vfs=None if total is None else _int(total, f"{where}.total_vfs", 1),
        numa_node=None if numa is None else _int(numa, f"{where}.numa_node", -1),
        vf_settings=_settings(raw.get("vf_settings"), f"{where}.vf_settings"),
        vf_unsupported=_settings(raw.get("vf_unsupported"), f"{where}.vf_unsupported"),
        peer=str(raw["peer"]).lower() if raw.get("peer") is not None else None,
    )
    if spec.total_vfs is not None and spec.max_vfs > spec.total_vfs:
        raise InventoryError(f"{where}: max_vfs {spec.max_vfs} exceeds total_vfs {spec.total_vfs}")
    if spec.vf_settings & spec.vf_unsupported:
        both = sorted(spec.vf_settings & spec.vf_unsupported)
        raise InventoryError(f"{where}: {both} listed as both supported and unsupported")
    return spec


def _nsim(raw: Any, index: int) -> NetdevsimSpec:
    where = f"netdevsim[{index}]"
    raw = _take(raw, {"id", "ports", "max_vfs", "vf_settings"}, where)
    return NetdevsimSpec(
        id=_int(raw.get("id"), f"{where}.id", 0),
        ports=_int(raw.get("ports", 1), f"{where}.ports", 1),
        max_vfs=_int(raw.get("max_vfs", 2), f"{where}.max_vfs", 1),
        vf_settings=_settings(raw.get("vf_settings", sorted(VF_SETTINGS)), f"{where}.vf_settings"),
    )


def parse(data: Any, path: Path) -> Inventory:
    """Validate parsed YAML and build an Inventory."""
    raw = _take(data, {"name", "kind", "description", "pfs", "netdevsim"}, str(path))
    kind = raw.get("kind", "hardware")
    if kind not in KINDS:
        raise InventoryError(f"{path}: kind {kind!r} must be one of {sorted(KINDS)}")
    pfs_raw = raw.get("pfs") or []
    if not isinstance(pfs_raw, list) or not pfs_raw:
        raise InventoryError(f"{path}: 'pfs' must be a non-empty list of PFs")
    pfs = tuple(_pf(item, i) for i, item in enumerate(pfs_raw))
    nsims = tuple(_nsim(item, i) for i, item in enumerate(raw.get("netdevsim") or []))
    addrs = [p.pci for p in pfs]
    dupes = sorted({a for a in addrs if addrs.count(a) > 1})
    if dupes:
        raise InventoryError(f"{path}: PF(s) listed twice: {dupes}")
    ids = [n.id for n in nsims]
    if len(set(ids)) != len(ids):
        raise InventoryError(f"{path}: netdevsim ids must be unique, got {ids}")
    for pf in pfs:
        if pf.peer is not None and (pf.peer == pf.pci or pf.peer not in addrs):
            raise InventoryError(
                f"{path}: {pf.pci}.peer {pf.peer!r} must be another PF listed here"
            )
    return Inventory(
        name=str(raw.get("name") or path.stem), kind=kind, path=path, pfs=pfs, netdevsim=nsims
    )


def load(path: str | Path) -> Inventory:
    """Read and validate an inventory file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InventoryError(f"cannot read inventory {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InventoryError(f"{path}: not valid YAML: {exc}") from exc
    return parse(data, path)
