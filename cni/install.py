"""``nodeagent cni install``: put the shim in a CNI bin dir under the plugin names it serves."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

#: Its own name, the plugins it replaces (sriov-cni, the reference link plugins) and the IPAM
#: plugins it serves in-process.
PLUGIN_NAMES = ("nodeagent", "sriov", "macvlan", "ipvlan", "vlan", "nodeagent-ipam",
                "whereabouts")
FALLBACK_NAME = "nodeagent-cni-fallback"


def _atomic_write(dest: Path, write: Callable[[BinaryIO], object]) -> None:
    """Replace ``dest`` at once: a runtime never executes a half-written plugin."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install(dest: Path, shim: Path, python: str = sys.executable,
            fallback: bool = True) -> list[Path]:
    """The shim under every plugin name, and the fallback script (``fallback``) that runs the
    handlers with ``python`` when the agent is down; without it, a stale one is removed."""
    dest.mkdir(parents=True, exist_ok=True)
    installed = []
    for name in PLUGIN_NAMES:
        target = dest / name
        with open(shim, "rb") as src:
            _atomic_write(target, lambda f, src=src: shutil.copyfileobj(src, f))
        installed.append(target)
    if not fallback:
        (dest / FALLBACK_NAME).unlink(missing_ok=True)
        return installed
    script = f"#!/bin/sh\nexec {shlex.quote(python)} -m cni.fallback\n".encode()
    _atomic_write(dest / FALLBACK_NAME, lambda f: f.write(script))
    installed.append(dest / FALLBACK_NAME)
    return installed
