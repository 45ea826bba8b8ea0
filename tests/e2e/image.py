"""The agent's image for the end-to-end run: built with ``make image`` from these sources and
tagged with a hash of them, so an unchanged tree reuses it.

``E2E_IMAGE`` overrides: an image name to use as it is, or ``venv`` for the fallback (the agent
from the project's venv, tests/e2e/agent.py). Without ``make image`` (no such target, no
podman) the fallback is taken and said so."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: What the image is built from (the Dockerfile's COPY sources, the build's inputs).
INPUTS = ("Dockerfile", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "native",
          "nodeagent", "cni", "deviceplugin", "requirements", "deploy/image")
REPOSITORY = "localhost/nodeagent"


def sources_digest() -> str:
    h = hashlib.sha256()
    for name in INPUTS:
        top = ROOT / name
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in paths:
            rel = path.relative_to(ROOT)
            if any(part in ("_stubs", "__pycache__", "bin") or part.endswith(".so")
                   for part in rel.parts):
                continue  # build products, not inputs
            h.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _has_image_target() -> bool:
    done = subprocess.run(["make", "-C", str(ROOT), "-n", "image"], capture_output=True,
                          check=False)
    return done.returncode == 0


def _exists(name: str) -> bool:
    return subprocess.run(["podman", "image", "exists", name], check=False).returncode == 0


def plan() -> tuple[str, str]:
    """The agent's image for this run and why: (name or "venv", reason)."""
    explicit = os.environ.get("E2E_IMAGE", "")
    if explicit:
        return explicit, "E2E_IMAGE"
    if shutil.which("podman") is None:
        return "venv", "fallback: no podman"
    if not _has_image_target():
        return "venv", "fallback: no `make image` in this tree"
    name = f"{REPOSITORY}:e2e-{sources_digest()}"
    return name, "reused (same sources)" if _exists(name) else "to be built with `make image`"


def ensure() -> str:
    name, _why = plan()
    if name != "venv" and not _exists(name):
        subprocess.run(["make", "-C", str(ROOT), "image", f"IMAGE={name}"],
                       env={**os.environ, "IMAGE": name}, check=True)
        _drop_older(name)
    return name


def _drop_older(current: str) -> None:
    """Untag the e2e images of earlier sources (one stays per tree state, not one per edit)."""
    listed = subprocess.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}",
                             REPOSITORY], capture_output=True, text=True, check=False).stdout
    older = [t for t in listed.split() if t.startswith(f"{REPOSITORY}:e2e-") and t != current]
    if older:
        subprocess.run(["podman", "rmi", *older], capture_output=True, check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
