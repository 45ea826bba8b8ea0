"""The kubelet device plugin API v1beta1: constants and the generated protobuf/gRPC modules.

Stubs are generated from ``api.proto`` on first use with ``grpc_tools.protoc`` into a cache
directory keyed by the .proto's hash (``$NODEAGENT_CACHE_DIR``, else
``$XDG_CACHE_HOME/nodeagent``, else ``~/.cache/nodeagent``), so nothing generated is committed.
A build step may instead generate them into ``deviceplugin/_stubs/`` (used when its
``proto.sha256`` matches), or ``$NODEAGENT_DEVICEPLUGIN_STUBS`` may name such a directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
DEVICE_PLUGIN_PATH = "/var/lib/kubelet/device-plugins/"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"

PROTO = Path(__file__).with_name("api.proto")
PACKAGED = Path(__file__).with_name("_stubs")
HASH_FILE = "proto.sha256"
MODULE = "kubelet_deviceplugin_v1beta1"  # generated: <MODULE>_pb2, <MODULE>_pb2_grpc

_lock = threading.Lock()
_loaded: tuple[ModuleType, ModuleType] | None = None


def proto_hash() -> str:
    return hashlib.sha256(PROTO.read_bytes()).hexdigest()[:16]


def cache_root() -> Path:
    if explicit := os.environ.get("NODEAGENT_CACHE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nodeagent"


def generate(out_dir: Path) -> Path:
    """Run protoc on ``api.proto`` into ``out_dir`` (atomically: a temp dir, then a rename)."""
    from grpc_tools import protoc  # build/first-use dependency only

    if _complete(out_dir):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".gen-") as tmp:
        source = Path(tmp) / f"{MODULE}.proto"
        source.write_bytes(PROTO.read_bytes())
        args = ["protoc", f"-I{tmp}", f"--python_out={tmp}", f"--grpc_python_out={tmp}",
                str(source)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTO}")
        source.unlink()
        (Path(tmp) / HASH_FILE).write_text(proto_hash() + "\n")
        if not _complete(out_dir):
            shutil.rmtree(out_dir, ignore_errors=True)  # stale or partial
        with contextlib.suppress(OSError):
            os.rename(tmp, out_dir)  # another process may have won the race: fine
            os.mkdir(tmp)  # for TemporaryDirectory's cleanup
    if not _complete(out_dir):
        raise RuntimeError(f"generated stubs missing from {out_dir}")
    return out_dir


def _complete(directory: Path) -> bool:
    """Generated from this very .proto."""
    try:
        return (directory / HASH_FILE).read_text().strip() == proto_hash()
    except OSError:
        return False


def _import(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # the _grpc module imports the _pb2 one by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def stubs_dir() -> Path:
    if prebuilt := os.environ.get("NODEAGENT_DEVICEPLUGIN_STUBS"):
        return Path(prebuilt)
    if _complete(PACKAGED):
        return PACKAGED
    return generate(cache_root() / f"deviceplugin-{proto_hash()}")


def modules() -> tuple[Any, Any]:
    """``(pb2, pb2_grpc)``: messages and service stubs, generated on first call."""
    global _loaded
    with _lock:
        if _loaded is None:
            directory = stubs_dir()
            pb2 = _import(f"{MODULE}_pb2", directory / f"{MODULE}_pb2.py")
            grpc_mod = _import(f"{MODULE}_pb2_grpc", directory / f"{MODULE}_pb2_grpc.py")
            _loaded = (pb2, grpc_mod)
        return _loaded
