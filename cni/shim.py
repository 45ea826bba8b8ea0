"""Where the compiled CNI shim is installed.

``native/cni_shim.c`` is built by setup.py (``pip install -e .`` or a wheel build) into this
package as ``bin/nodeagent-cni-shim``; it needs no Python at run time. Its protocol is
docs/cni-socket.md.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SHIM_NAME = "nodeagent-cni-shim"
#: What the shim executes, from its own directory, when the agent daemon is unreachable.
FALLBACK_NAME = "nodeagent-cni-fallback"

_PACKAGE = Path(__file__).resolve().parent
#: Present in a source checkout (editable install), absent from an installed wheel.
_SOURCE = _PACKAGE.parent / "native" / "cni_shim.c"
#: setup.py compiles ``<marker><sha256 of the source>`` into the binary.
_MARKER = b"NODEAGENT_SHIM_SOURCE="


class ShimNotBuiltError(RuntimeError):
    """The shim binary is missing, or was built from another version of its source."""


def shim_path() -> Path:
    """Path of the built shim binary.

    In a source checkout the binary must have been built from the current
    ``native/cni_shim.c``; a stale one raises instead of silently running old code.
    """
    path = _PACKAGE / "bin" / SHIM_NAME
    rebuild = "rebuild with `pip install -e .` (or reinstall the package)"
    if not path.is_file():
        raise ShimNotBuiltError(f"{path} does not exist; {rebuild}")
    if _SOURCE.is_file():
        digest = hashlib.sha256(_SOURCE.read_bytes()).hexdigest().encode()
        if _MARKER + digest not in path.read_bytes():
            raise ShimNotBuiltError(f"{path} was not built from the current {_SOURCE}; {rebuild}")
    return path
