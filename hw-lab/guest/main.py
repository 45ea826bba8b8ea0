"""Guest entry: runs the lab suite (pytest, in this process) or a script (the demo, a lab
benchmark), as request.json says.

request.json: {"mode": "pytest" | "script", "argv": [...], "env": {...}, "cwd": "..."}
("demo" is taken as "script"); a script's argv[0] is its path.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path


def main(request_path: str) -> int:
    request = json.loads(Path(request_path).read_text())
    os.environ.update(request.get("env", {}))
    os.chdir(request["cwd"])
    argv = list(request["argv"])
    if request["mode"] == "pytest":
        import pytest

        return int(pytest.main(argv))
    if request["mode"] in ("script", "demo"):
        sys.argv = argv
        sys.path.insert(0, str(Path(argv[0]).resolve().parent))  # as `python SCRIPT` has it
        try:
            runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return 0
    print(f"hw-lab guest: unknown mode {request['mode']!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
