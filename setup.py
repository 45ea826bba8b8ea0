"""Build hooks: native/ through cffi (API mode), the compiled CNI shim (native/cni_shim.c,
installed as cni/bin/nodeagent-cni-shim) and the gRPC stubs of the .protos under PROTO_DIRS
(into <dir>/_stubs); everything else is in pyproject.toml."""

from __future__ import annotations

import hashlib
import os
import runpy
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import LinkError

SHIM_SOURCE = "native/cni_shim.c"
SHIM_NAME = "nodeagent-cni-shim"
SHIM_CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"]
# gRPC APIs, <dir>/*.proto generated into <dir>/_stubs: the kubelet's (device plugin,
# pod resources) and etcd's (the IPAM store)
PROTO_DIRS = [Path("deviceplugin", "proto"), Path("nodeagent", "ipam", "etcd", "proto")]


class BuildExtWithShim(build_ext):
    """build_ext that also compiles the CNI shim executable into the ``cni`` package.

    It uses the compiler setuptools configured for the extensions.  The shim is compiled and
    linked on every build (no up-to-date check), then moved into place atomically, so neither
    an old object nor an old binary can survive a rebuild; the sha256 of the source is compiled
    in, and ``cni.shim.shim_path()`` refuses a binary that does not match the source next to it.
    """

    def run(self) -> None:
        super().run()
        if sys.platform.startswith("linux"):  # the shim uses /proc/self/exe and memfd_create
            self._build_shim()
        self._generate_stubs()

    def _generate_stubs(self) -> None:
        """gRPC stubs from the .protos: generated at build time, never committed."""
        # Loaded by path: the package is not importable while it is being built.
        protostubs = runpy.run_path(os.path.join("nodeagent", "protostubs.py"))
        protostubs["generate_packaged"](PROTO_DIRS, Path(self.build_lib), self.inplace)

    def _shim_build_path(self) -> Path:
        return Path(self.build_lib, "cni", "bin", SHIM_NAME)

    def _shim_inplace_path(self) -> Path:
        package_dir = self.get_finalized_command("build_py").get_package_dir("cni")
        return Path(package_dir, "bin", SHIM_NAME)

    def _build_shim(self) -> None:
        compiler = self.compiler
        if compiler is None or isinstance(compiler, str):  # build_ext made none (no extensions)
            from setuptools._distutils.ccompiler import new_compiler
            from setuptools._distutils.sysconfig import customize_compiler

            compiler = new_compiler(compiler=compiler, force=True)
            customize_compiler(compiler)
        digest = hashlib.sha256(Path(SHIM_SOURCE).read_bytes()).hexdigest()
        objects = compiler.compile(
            [SHIM_SOURCE],
            output_dir=self.build_temp,
            macros=[("NODEAGENT_SHIM_SOURCE", f'"{digest}"')],
            extra_postargs=SHIM_CFLAGS,
        )
        linked = Path(self.build_temp, SHIM_NAME)
        linked.unlink(missing_ok=True)  # link_executable skips an output newer than its objects
        try:  # static: no dynamic loader and libc relocation at every CNI call (~0.2 ms)
            compiler.link_executable(objects, SHIM_NAME, output_dir=self.build_temp,
                                     extra_postargs=["-static"])
        except LinkError:  # no static libc here: a dynamic shim works the same, a bit slower
            compiler.link_executable(objects, SHIM_NAME, output_dir=self.build_temp)
        targets = [self._shim_build_path()]
        if self.inplace:  # `pip install -e .` and `build_ext --inplace`
            targets.append(self._shim_inplace_path())
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{SHIM_NAME}.partial")
            shutil.copyfile(linked, partial)
            os.chmod(partial, 0o755)
            os.replace(partial, target)  # atomic, and fine while the old binary is running

    def get_outputs(self) -> list[str]:
        return [*super().get_outputs(), str(self._shim_build_path())]

    def get_output_mapping(self) -> dict[str, str]:
        mapping = dict(super().get_output_mapping())
        if self.inplace:
            mapping[str(self._shim_build_path())] = str(self._shim_inplace_path())
        return mapping


setup(
    cmdclass={"build_ext": BuildExtWithShim},
    cffi_modules=["native/build_bitmap.py:ffibuilder", "native/build_vfset.py:ffibuilder"],
)
