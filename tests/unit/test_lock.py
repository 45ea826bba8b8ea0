"""The lock files cover what pyproject.toml asks for, with hashes, at one version each: what the
tests run against is what the image ships. A dependency added without `make lock` fails here."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def pins(name: str) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of a lock file."""
    out: dict[str, tuple[str, int]] = {}
    current = None
    for line in (LOCKS / name).read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line):
            current = canonicalize_name(m.group(1))
            out[current] = (m.group(2), 0)
        elif current and (m := re.match(r"^\s+--hash=sha256:[0-9a-f]{64}", line)):
            version, hashes = out[current]
            out[current] = (version, hashes + 1)
        elif line.strip() and not line.lstrip().startswith(("#", "--hash")):
            current = None
    return out


def requirements(kind: str) -> list[Requirement]:
    reqs = {"runtime": PYPROJECT["project"]["dependencies"],
            "build": PYPROJECT["build-system"]["requires"],
            "test": PYPROJECT["project"]["optional-dependencies"]["test"]}[kind]
    return [Requirement(r) for r in reqs]


@pytest.mark.parametrize(("kind", "locks"), [
    ("runtime", ["runtime.txt", "dev.txt"]),
    ("build", ["build.txt", "dev.txt"]),
    ("test", ["dev.txt"]),
])
def test_every_dependency_is_pinned_within_its_range(kind: str, locks: list[str]) -> None:
    for lock in locks:
        pinned = pins(lock)
        for req in requirements(kind):
            name = canonicalize_name(req.name)
            assert name in pinned, f"{req} is not in requirements/{lock}: run `make lock`"
            assert req.specifier.contains(pinned[name][0], prereleases=True), (
                f"{lock} pins {name}=={pinned[name][0]}, outside {req}: run `make lock`")


def test_every_pin_has_hashes_and_one_version_across_the_locks() -> None:
    seen: dict[str, str] = {}
    for lock in ("runtime.txt", "build.txt", "dev.txt"):
        for name, (version, hashes) in pins(lock).items():
            assert hashes >= 1, f"{lock}: {name} has no --hash"
            assert seen.setdefault(name, version) == version, (
                f"{name}: {version} in {lock}, {seen[name]} in another lock")


def test_image_and_venv_install_from_the_locks_with_hashes() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for lock in ("build.txt", "runtime.txt"):
        assert re.search(rf"--require-hashes[^\n]*-r requirements/{lock}", dockerfile), lock
    assert "--no-deps" in dockerfile and "--no-build-isolation" in dockerfile
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes -r requirements/dev.txt" in makefile
    assert re.search(r"pip install[^\n]*--no-deps[^\n]*-e \.", makefile)


def parents(lock: str) -> dict[str, set[str]]:
    """name -> the names it is pulled in by (pip-compile's "via" comments)."""
    out: dict[str, set[str]] = {}
    current = None
    for line in (LOCKS / lock).read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9_.-]+)==", line):
            current = canonicalize_name(m.group(1))
            out[current] = set()
        elif (current and (m := re.match(r"^\s+#\s+(?:via\s+)?([\w.-]+)\s*(\(|$)", line))
              and m.group(1) != "via"):  # a bare "# via" heads a list of several
            out[current].add(canonicalize_name(m.group(1)))
    return out


def test_the_image_leaves_out_exactly_what_only_the_asyncio_client_needs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    listed = re.search(r'^ARG AIO_ONLY="([^"]+)"', dockerfile, re.M)
    assert listed and "uninstall -y -q $AIO_ONLY" in dockerfile
    via = parents("runtime.txt")
    aio_only = {"aiohttp", "aiohttp-retry"} & set(via)  # kubernetes.aio's own dependencies
    changed = True
    while changed:
        more = {n for n, p in via.items() if p and p <= aio_only} - aio_only
        aio_only |= more
        changed = bool(more)
    assert {canonicalize_name(n) for n in listed.group(1).split()} == aio_only
    for package in ("nodeagent", "cni", "deviceplugin"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            for name in ("kubernetes.aio", *aio_only):
                module = name.replace("-", "_")
                assert not re.search(rf"^\s*(import|from)\s+{re.escape(module)}\b", text, re.M), (
                    f"{path} imports {module}, which the image leaves out")
