"""Running CNI plugins as a runtime does, for tests and benchmarks."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REFERENCE_BIN = Path("/usr/lib/cni")


@dataclass
class Outcome:
    status: int
    stdout: str
    stderr: str

    @property
    def doc(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None


def run_plugin(binary: Path, command: str, conf: dict[str, Any] | bytes, *, netns: str = "",
               ifname: str = "net1", container_id: str = "c0ffee", args: str = "",
               path: Path = REFERENCE_BIN, env: dict[str, str] | None = None) -> Outcome:
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    full_env = {
        "CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
        "CNI_IFNAME": ifname, "CNI_PATH": str(path), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        **({"CNI_ARGS": args} if args else {}), **(env or {}),
    }
    proc = subprocess.run([str(binary)], input=stdin, env=full_env, capture_output=True,
                          timeout=60, check=False)
    return Outcome(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@contextmanager
def running_agent(root: Path, reference: tuple[str, ...] = ()) -> Iterator[dict[str, Any]]:
    """The agent's CNI server on ``root/run/agent.sock`` (VF state and IPAM under ``root``)
    and the shim installed into ``root/bin`` under every name it serves, with the reference
    plugins named in ``reference`` linked beside it."""
    from cni.context import Context
    from cni.install import install
    from cni.server import CniServer
    from cni.shim import shim_path
    from nodeagent.ipam.allocator import Ipam
    from nodeagent.vfstate import VfState

    socket_path = str(root / "run" / "agent.sock")
    server = CniServer(socket_path, context=Context(vfs=VfState(root / "state"),
                                                     ipam=Ipam(root / "ipam")))
    server.start()
    bindir = root / "bin"
    install(bindir, shim_path())
    for name in reference:
        os.symlink(REFERENCE_BIN / name, bindir / name)
    try:
        yield {"socket": socket_path, "bin": bindir, "state": root / "state"}
    finally:
        server.stop()
