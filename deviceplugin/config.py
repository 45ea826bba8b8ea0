"""Parses the sriov-network-device-plugin ``config.json`` (``{"resourceList": [...]}``) unchanged.

Keys match case-insensitively and unknown keys are ignored, as in the original. Errors raise
:class:`ConfigError` naming the offending field (``resourceList[1].selectors.vendors``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from nodeagent.provision.policy import DEFAULT_RESOURCE_PREFIX, RESOURCE_NAME

log = logging.getLogger(__name__)

DEFAULT_PATH = "/etc/pcidp/config.json"
DEFAULT_PREFIX = DEFAULT_RESOURCE_PREFIX
DEVICE_TYPES = {"netdevice": "netDevice", "accelerator": "accelerator",
                "auxnetdevice": "auxNetDevice"}
_LIST_KEYS = ("vendors", "devices", "drivers", "pciAddresses", "pfNames", "rootDevices",
              "linkTypes", "acpiIndexes", "ddpProfiles", "pKeys", "auxTypes")
_BOOL_KEYS = ("isRdma", "needVhostNet")
_STRING_KEYS = ("vdpaType",)
# Accepted but not answerable from the node model: logged once per pool, then ignored.
UNSUPPORTED = ("linkTypes", "acpiIndexes", "ddpProfiles", "pKeys", "auxTypes", "isRdma",
               "vdpaType")


class ConfigError(ValueError):
    """An invalid device plugin configuration; the message names the field."""


@dataclass(frozen=True)
class VfRange:
    """A PF named by netdev name or PCI address, optionally limited to some VF indexes."""

    pf: str
    indexes: frozenset[int] | None = None  # None: every VF

    def matches(self, pf: str, index: int) -> bool:
        return pf == self.pf and (self.indexes is None or index in self.indexes)


@dataclass(frozen=True)
class Selector:
    vendors: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    drivers: tuple[str, ...] = ()
    pci_addresses: tuple[str, ...] = ()
    pf_names: tuple[VfRange, ...] = ()
    root_devices: tuple[VfRange, ...] = ()
    need_vhost_net: bool = False
    unsupported: tuple[str, ...] = ()  # keys given that the node model cannot answer


@dataclass(frozen=True)
class ResourceConfig:
    resource_name: str
    resource_prefix: str = DEFAULT_PREFIX
    device_type: str = "netDevice"
    exclude_topology: bool = False
    selectors: tuple[Selector, ...] = (Selector(),)

    @property
    def full_name(self) -> str:
        return f"{self.resource_prefix}/{self.resource_name}"


@dataclass(frozen=True)
class PluginConfig:
    resources: tuple[ResourceConfig, ...]


def load(path: str | os.PathLike[str] = DEFAULT_PATH) -> PluginConfig:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
    return parse(data)


def parse(data: Any) -> PluginConfig:
    top = _object(data, "config")
    resources = top.get("resourcelist")
    if not isinstance(resources, list):
        raise ConfigError("resourceList: must be a list")
    parsed = tuple(_resource(item, f"resourceList[{i}]") for i, item in enumerate(resources))
    seen: set[str] = set()
    for i, res in enumerate(parsed):
        if res.full_name in seen:
            raise ConfigError(f"resourceList[{i}].resourceName: duplicate {res.full_name!r}")
        seen.add(res.full_name)
    return PluginConfig(parsed)


def _object(value: Any, where: str) -> dict[str, Any]:
    """A JSON object with lower-cased keys (the first spelling of a key wins)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be an object")
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.setdefault(str(key).lower(), item)
    return out


def _string(obj: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = obj.get(key.lower(), default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key}: must be a non-empty string")
    return value


def _bool(obj: dict[str, Any], key: str, where: str) -> bool:
    value = obj.get(key.lower(), False)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: must be true or false")
    return value


def _resource(item: Any, where: str) -> ResourceConfig:
    obj = _object(item, where)
    name = _string(obj, "resourceName", where)
    if not RESOURCE_NAME.match(name):
        raise ConfigError(f"{where}.resourceName: {name!r} is not a valid resource name")
    prefix = _string(obj, "resourcePrefix", where, DEFAULT_PREFIX)
    device_type = _string(obj, "deviceType", where, "netDevice")
    if device_type.lower() not in DEVICE_TYPES:
        raise ConfigError(f"{where}.deviceType: {device_type!r} is not one of "
                          f"{', '.join(DEVICE_TYPES.values())}")
    raw = obj.get("selectors", {})
    if isinstance(raw, dict):
        selectors = (_selector(raw, f"{where}.selectors"),)
    elif isinstance(raw, list) and raw:
        selectors = tuple(_selector(s, f"{where}.selectors[{i}]") for i, s in enumerate(raw))
    else:
        raise ConfigError(f"{where}.selectors: must be an object or a non-empty list of objects")
    return ResourceConfig(
        resource_name=name,
        resource_prefix=prefix,
        device_type=DEVICE_TYPES[device_type.lower()],
        exclude_topology=_bool(obj, "excludeTopology", where),
        selectors=selectors,
    )


def _strings(obj: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = obj.get(key.lower(), [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}.{key}: must be a list of non-empty strings")
    return tuple(value)


def _selector(raw: Any, where: str) -> Selector:
    obj = _object(raw, where)
    lists = {key: _strings(obj, key, where) for key in _LIST_KEYS}
    flags = {key: _bool(obj, key, where) for key in _BOOL_KEYS}
    for key in _STRING_KEYS:
        if key.lower() in obj and not isinstance(obj[key.lower()], str):
            raise ConfigError(f"{where}.{key}: must be a string")
    given = {k for k in _LIST_KEYS if lists[k]} | {k for k in _BOOL_KEYS if flags[k]}
    given |= {k for k in _STRING_KEYS if obj.get(k.lower())}
    return Selector(
        vendors=tuple(_hex_id(v, f"{where}.vendors") for v in lists["vendors"]),
        devices=tuple(_hex_id(v, f"{where}.devices") for v in lists["devices"]),
        drivers=lists["drivers"],
        pci_addresses=tuple(a.lower() for a in lists["pciAddresses"]),
        pf_names=tuple(vf_range(v, f"{where}.pfNames") for v in lists["pfNames"]),
        root_devices=tuple(vf_range(v.lower(), f"{where}.rootDevices")
                           for v in lists["rootDevices"]),
        need_vhost_net=flags["needVhostNet"],
        unsupported=tuple(k for k in UNSUPPORTED if k in given),
    )


def _hex_id(value: str, where: str) -> str:
    """A PCI vendor/device ID as the node model spells it: 4 lower-case hex digits."""
    text = value.lower().removeprefix("0x")
    if not re.fullmatch(r"[0-9a-f]{1,4}", text):
        raise ConfigError(f"{where}: {value!r} is not a hexadecimal PCI ID")
    return text.zfill(4)


def vf_range(value: str, where: str = "pfNames") -> VfRange:
    """``"ens1f0"`` (all VFs) or ``"ens1f0#0,2-7"`` (those VF indexes)."""
    pf, sep, spec = value.partition("#")
    if not pf:
        raise ConfigError(f"{where}: {value!r} has no PF name")
    if not sep:
        return VfRange(pf)
    indexes: set[int] = set()
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if m is None:
            raise ConfigError(f"{where}: {value!r}: bad VF range {part!r}")
        low, high = int(m.group(1)), int(m.group(2) or m.group(1))
        if high < low:
            raise ConfigError(f"{where}: {value!r}: range {part!r} ends before it starts")
        indexes.update(range(low, high + 1))
    return VfRange(pf, frozenset(indexes))
