"""The fallback agent's container stand-in (tests/e2e/agent.py): in the mount namespace
``unshare --mount`` made, bind the pod's volumes at their container paths (tmpfs for an
emptyDir), drop the capabilities the container would not have, exec the command.

Argument: one JSON object {mounts, argv, env, drop, add, created}. Mount points missing on the
host are created and listed in ``created`` for the test to remove."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

PR_CAPBSET_DROP = 24
CAPS = {"NET_ADMIN": 12, "SYS_ADMIN": 21}
LAST_CAP = 40


def main() -> None:
    spec = json.loads(sys.argv[1])
    created = []
    for m in spec["mounts"]:
        target = Path(m["target"])
        if not target.exists():
            created.extend(str(p) for p in [target, *target.parents] if not p.exists())
            target.mkdir(parents=True)
    if created:  # before any mount hides the file's directory
        Path(spec["created"]).write_text(json.dumps(sorted(set(created), key=len)))
    for m in spec["mounts"]:
        target = Path(m["target"])
        if m["tmpfs_size"]:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={m['tmpfs_size']}", "tmpfs",
                            str(target)], check=True)
            continue
        subprocess.run(["mount", "--rbind", m["source"], str(target)], check=True)
        if m["readonly"]:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
    if "ALL" in spec["drop"]:
        keep = {CAPS[c] for c in spec["add"]}
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in range(LAST_CAP + 1):
            if cap not in keep:
                libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    os.execve(spec["argv"][0], spec["argv"], spec["env"])


if __name__ == "__main__":
    main()
