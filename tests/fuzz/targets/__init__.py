"""The fuzz targets by name. Each generates an input from a Draw and checks one property.

A target is a class with ``name``, ``generate(draw) -> case`` (JSON-able), ``setup()``,
``run(case)`` (raises :class:`tests.fuzz.cases.Broke` when the property fails), ``close()``,
``seeded`` (cases in the ``make test`` pass), ``memory_mb`` (address-space headroom of its
worker; None: unlimited) and ``timeout`` (seconds one case may take before it counts as hung).
"""

from __future__ import annotations

import importlib
from typing import Any

TARGETS = {
    "cni": "tests.fuzz.targets.cni:InProcess",
    "shim": "tests.fuzz.targets.cni:ThroughShim",
    "wire": "tests.fuzz.targets.wire:FrameReader",
    "dpconfig": "tests.fuzz.targets.parsers:DevicePluginConfig",
    "policy": "tests.fuzz.targets.parsers:Policy",
    "ipamconfig": "tests.fuzz.targets.parsers:IpamConfig",
    "grpc": "tests.fuzz.targets.grpc:DevicePluginHandlers",
}

#: Targets whose regression cases are replayed too, through this one.
ALSO_REPLAYS = {"shim": ("cni",)}


def load(name: str) -> Any:
    module, _, cls = TARGETS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
