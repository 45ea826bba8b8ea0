"""``nodeagent cni install``: put the shim in a CNI bin dir under the plugin names it serves."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from nodeagent.fileio import replace_file

#: Its own name, the plugins it replaces (sriov-cni, the reference link plugins) and the IPAM
#: plugins it serves in-process.
PLUGIN_NAMES = ("nodeagent", "sriov", "macvlan", "ipvlan", "vlan", "nodeagent-ipam",
                "whereabouts")
FALLBACK_NAME = "nodeagent-cni-fallback"


def install(dest: Path, shim: Path, python: str = sys.executable,
            fallback: bool = True) -> list[Path]:
    """The shim under every plugin name, and the fallback script (``fallback``) that runs the
    handlers with ``python`` when the agent is down; without it, a stale one is removed."""
    dest.mkdir(parents=True, exist_ok=True)
    installed = []
    binary = shim.read_bytes()
    for name in PLUGIN_NAMES:
        replace_file(dest / name, binary, mode=0o755, durable=False)  # never half-written
        installed.append(dest / name)
    if not fallback:
        (dest / FALLBACK_NAME).unlink(missing_ok=True)
        return installed
    script = f"#!/bin/sh\nexec {shlex.quote(python)} -m cni.fallback\n".encode()
    replace_file(dest / FALLBACK_NAME, script, mode=0o755, durable=False)
    installed.append(dest / FALLBACK_NAME)
    return installed
