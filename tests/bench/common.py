"""What the benchmarks share: their output line, and running a benchmark in the SR-IOV lab."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HWLAB = REPO / "hw-lab"
#: Set by hw-lab/run.py in the lab (and in real-hardware mode): the inventory to use.
LAB_ENV = "NODEAGENT_HWLAB_INVENTORY"
EXIT_LAB_ERROR = 70


def emit(**fields: object) -> None:
    """One benchmark line: a JSON object on stdout."""
    print(json.dumps(fields), flush=True)


def run_in_lab(script: str, bench: str, args: Sequence[str] = ()) -> int:
    """Run ``script`` (with ``args``) in the lab (hw-lab/run.py --script) and pass its JSON
    lines through; when the lab cannot run, print one line saying ``bench`` was skipped and why,
    and return 0."""
    with tempfile.TemporaryDirectory(prefix="nabench") as tmp:
        output = Path(tmp) / "output.log"
        cmd = [sys.executable, str(HWLAB / "run.py"), "--script", str(Path(script).resolve()),
               "--output", str(output), *args]
        # The lab's console goes to stderr; stdout is for the JSON lines.
        proc = subprocess.run(cmd, cwd=REPO, stdout=sys.stderr, stderr=subprocess.PIPE,
                              text=True, check=False)
        sys.stderr.write(proc.stderr)
        if proc.returncode == EXIT_LAB_ERROR:
            reasons = [line.removeprefix("hw-lab: ERROR: ") for line in proc.stderr.splitlines()
                       if line.startswith("hw-lab: ERROR: ")]
            emit(bench=bench, skipped=True,
                 reason=reasons[-1] if reasons else "the SR-IOV lab could not run")
            return 0
        for line in output.read_text().splitlines() if output.exists() else []:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and "bench" in doc:
                print(line, flush=True)
        if proc.returncode != 0:
            print(f"{Path(script).stem}: the lab run failed (exit {proc.returncode})",
                  file=sys.stderr)
        return proc.returncode
