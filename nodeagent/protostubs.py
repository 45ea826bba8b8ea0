"""Protobuf/gRPC modules generated from .proto files in the source tree, never committed.

A build step (setup.py) generates them into ``<package>/_stubs/``; they are used when its
``proto.sha256`` matches the .proto files next to them. Otherwise (a source checkout that was
not built, or edited .protos) they are generated on first use with ``grpc_tools.protoc`` into a
cache directory keyed by that hash (``$NODEAGENT_CACHE_DIR``, else ``$XDG_CACHE_HOME/nodeagent``,
else ``~/.cache/nodeagent``); an environment variable may name a prebuilt directory instead.

Standard library only: setup.py loads this file with ``runpy`` before the package is importable.
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
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

HASH_FILE = "proto.sha256"
STUBS_DIR = "_stubs"


def cache_root() -> Path:
    if explicit := os.environ.get("NODEAGENT_CACHE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nodeagent"


class ProtoStubs:
    """The ``*.proto`` files of one directory (importing each other by base name), generated
    together; module ``<name>_pb2`` (and ``<name>_pb2_grpc`` for services) per file."""

    def __init__(self, source: Path, *, env: str, cache_name: str) -> None:
        self.source = source
        self.env = env
        self.cache_name = cache_name
        self._lock = threading.Lock()
        self._loaded: dict[str, ModuleType] = {}

    @property
    def protos(self) -> list[Path]:
        return sorted(self.source.glob("*.proto"))

    @property
    def packaged(self) -> Path:
        return self.source / STUBS_DIR

    def digest(self) -> str:
        h = hashlib.sha256()
        for proto in self.protos:
            h.update(proto.name.encode() + b"\0" + proto.read_bytes() + b"\0")
        return h.hexdigest()[:16]

    def generate(self, out_dir: Path) -> Path:
        """Run protoc on every .proto into ``out_dir`` (atomically: a temp dir, then a rename)."""
        from grpc_tools import protoc  # build/first-use dependency only

        if self._complete(out_dir):
            return out_dir
        protos = self.protos
        if not protos:
            raise RuntimeError(f"no .proto files in {self.source}")
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".gen-") as tmp:
            copies = []
            for proto in protos:
                copies.append(Path(tmp) / proto.name)
                copies[-1].write_bytes(proto.read_bytes())
            args = ["protoc", f"-I{tmp}", f"--python_out={tmp}", f"--grpc_python_out={tmp}"]
            if protoc.main([*args, *map(str, copies)]) != 0:
                raise RuntimeError(f"protoc failed on {', '.join(map(str, protos))}")
            for copy in copies:
                copy.unlink()
            (Path(tmp) / HASH_FILE).write_text(self.digest() + "\n")
            if not self._complete(out_dir):
                shutil.rmtree(out_dir, ignore_errors=True)  # stale or partial
            with contextlib.suppress(OSError):
                os.rename(tmp, out_dir)  # another process may have won the race: fine
                os.mkdir(tmp)  # for TemporaryDirectory's cleanup
        if not self._complete(out_dir):
            raise RuntimeError(f"generated stubs missing from {out_dir}")
        return out_dir

    def directory(self) -> Path:
        if prebuilt := os.environ.get(self.env):
            return Path(prebuilt)
        if self._complete(self.packaged):
            return self.packaged
        return self.generate(cache_root() / f"{self.cache_name}-{self.digest()}")

    def load(self, *names: str) -> tuple[ModuleType, ...]:
        """The generated modules ``names`` (e.g. ``"etcd_rpc_pb2"``), generating them first if
        need be. Load a module before those importing it."""
        with self._lock:
            directory: Path | None = None
            for name in names:
                if name not in self._loaded:
                    directory = directory or self.directory()
                    self._loaded[name] = _import(name, directory / f"{name}.py")
            return tuple(self._loaded[name] for name in names)

    def _complete(self, directory: Path) -> bool:
        """Generated from these very .protos."""
        try:
            return (directory / HASH_FILE).read_text().strip() == self.digest()
        except OSError:
            return False


def _import(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # generated modules import each other by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def generate_packaged(sources: Sequence[Path], build_lib: Path, inplace: bool) -> None:
    """setup.py: stubs for each source directory (relative to the project root) into the build
    tree, and next to the sources too for in-place builds."""
    for source in sources:
        stubs = ProtoStubs(source, env="", cache_name="")
        stubs.generate(build_lib / source / STUBS_DIR)
        if inplace:
            stubs.generate(source / STUBS_DIR)
