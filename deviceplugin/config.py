"""Parses the sriov-network-device-plugin ``config.json`` (``{"resourceList": [...]}``) unchanged.

Keys match case-insensitively and unknown keys are ignored, as in the original. Errors raise
:class:`ConfigError` naming the offending field (``resourceList[1].selectors.vendors``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from nodeagent.documents import DocumentError, parse_json
from nodeagent.fields import Fields, join
from nodeagent.provision.policy import (
    DEFAULT_RESOURCE_PREFIX,
    DRIVER_NAME,
    RESOURCE_NAME,
    RESOURCE_PREFIX,
)
from nodeagent.sysfs import PCI_ADDRESS

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


#: config.json is a handful of pools; a megabyte is far beyond any real one.
MAX_BYTES = 1 << 20
#: VF indexes in ``pfNames``/``rootDevices`` ranges: SR-IOV's TotalVFs is a 16-bit field.
MAX_VFS = 65535

_F = Fields(lambda path, problem: ConfigError(f"{path}: {problem}"), fold_case=True)


def load(path: str | os.PathLike[str] = DEFAULT_PATH) -> PluginConfig:
    """Read and parse ``path``; ConfigError for any content, OSError if it cannot be read."""
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    try:
        doc = parse_json(data, max_bytes=MAX_BYTES)
    except DocumentError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    return parse(doc)


def parse(data: Any) -> PluginConfig:
    top = _F.obj(data, "config")
    if not isinstance(_F.raw(top, "resourceList"), list):
        _F.fail("resourceList", "must be a list")
    parsed = tuple(_resource(item, join("resourceList", i))
                   for i, item in enumerate(_F.items(top, "resourceList", "")))
    seen: set[str] = set()
    for i, res in enumerate(parsed):
        if res.full_name in seen:
            raise ConfigError(f"resourceList[{i}].resourceName: duplicate {res.full_name!r}")
        seen.add(res.full_name)
    return PluginConfig(parsed)


def _resource(item: Any, where: str) -> ResourceConfig:
    obj = _F.obj(item, where)
    name = _F.string(obj, "resourceName", where, max_len=63)
    if not RESOURCE_NAME.fullmatch(name):
        _F.fail(join(where, "resourceName"), f"{name!r} is not a valid resource name")
    prefix = _F.string(obj, "resourcePrefix", where, DEFAULT_PREFIX, max_len=253)
    if not RESOURCE_PREFIX.fullmatch(prefix):
        _F.fail(join(where, "resourcePrefix"), f"{prefix!r} is not a DNS subdomain such as"
                " \"example.com\"")
    device_type = _F.choice(obj, "deviceType", where,
                            {v: v for v in DEVICE_TYPES.values()}, "netDevice", fold_case=True)
    raw = _F.raw(obj, "selectors", {})
    if isinstance(raw, dict):
        selectors = (_selector(raw, join(where, "selectors")),)
    elif isinstance(raw, list) and raw:
        selectors = tuple(_selector(s, join(join(where, "selectors"), i))
                          for i, s in enumerate(_F.items(obj, "selectors", where)))
    else:
        _F.fail(join(where, "selectors"), "must be an object or a non-empty list of objects")
    return ResourceConfig(
        resource_name=name,
        resource_prefix=prefix,
        device_type=device_type,
        exclude_topology=_F.boolean(obj, "excludeTopology", where, False),
        selectors=selectors,
    )


def _selector(raw: Any, where: str) -> Selector:
    obj = _F.obj(raw, where)
    lists = {key: _F.strings(obj, key, where, max_len=256) for key in _LIST_KEYS}
    flags = {key: _F.boolean(obj, key, where, False) for key in _BOOL_KEYS}
    strings = {key: _F.string(obj, key, where, "", empty=True) for key in _STRING_KEYS}
    given = {k for k in _LIST_KEYS if lists[k]} | {k for k in _BOOL_KEYS if flags[k]}
    given |= {k for k in _STRING_KEYS if strings[k]}

    def each(key: str) -> list[tuple[str, str]]:
        return [(v, join(join(where, key), i)) for i, v in enumerate(lists[key])]

    return Selector(
        vendors=tuple(_F.pci_id(v, w) for v, w in each("vendors")),
        devices=tuple(_F.pci_id(v, w) for v, w in each("devices")),
        drivers=tuple(_F.text(v, w, pattern=DRIVER_NAME) for v, w in each("drivers")),
        pci_addresses=tuple(_pci_address(v.lower(), w) for v, w in each("pciAddresses")),
        pf_names=tuple(vf_range(v, w) for v, w in each("pfNames")),
        root_devices=tuple(_root_device(v.lower(), w) for v, w in each("rootDevices")),
        need_vhost_net=flags["needVhostNet"],
        unsupported=tuple(k for k in UNSUPPORTED if k in given),
    )


def _pci_address(value: str, where: str) -> str:
    if not PCI_ADDRESS.fullmatch(value):
        _F.fail(where, f"{value!r} is not a PCI address such as 0000:41:00.0")
    return value


def _root_device(value: str, where: str) -> VfRange:
    vfs = vf_range(value, where)
    _pci_address(vfs.pf, where)
    return vfs


def vf_range(value: str, where: str = "pfNames") -> VfRange:
    """``"ens1f0"`` (all VFs) or ``"ens1f0#0,2-7"`` (those VF indexes, below MAX_VFS)."""
    pf, sep, spec = value.partition("#")
    if not pf:
        _F.fail(where, f"{value!r} has no PF name")
    if not sep:
        return VfRange(pf)
    return VfRange(pf, _F.index_set(spec, where, MAX_VFS))
