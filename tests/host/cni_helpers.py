"""Running CNI plugins as a runtime does, for tests and benchmarks."""

from __future__ import annotations

import json
import subprocess
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
