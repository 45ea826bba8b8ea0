"""Imports point down the layers only (docs/architecture.md).

0-1 library  ``nodeagent`` (all but the composition): model, sysfs, netlink, IPAM, provisioning, ...
2 adapters   ``cni`` and ``deviceplugin``: each may import the library, never the other
3 composition ``nodeagent.daemon``, ``nodeagent.cli``, ``nodeagent.__main__``: anything

Every import counts, including the ones inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSITION = {"nodeagent.daemon", "nodeagent.cli", "nodeagent.__main__"}
ADAPTERS = ("cni", "deviceplugin")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def top(name: str) -> str:
    return name.split(".")[0]


def sources(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "_stubs" not in p.parts)


def test_the_check_sees_function_level_and_relative_imports() -> None:
    probe = ROOT / "nodeagent" / "_layers_probe.py"
    probe.write_text("def f():\n    from cni import dispatch\n    from .ipam import store\n")
    try:
        names = imported(probe)
    finally:
        probe.unlink()
    assert {"cni", "cni.dispatch", "nodeagent.ipam", "nodeagent.ipam.store"} <= names


LIBRARY = [p for p in sources("nodeagent") if module_name(p) not in COMPOSITION]


@pytest.mark.parametrize("path", LIBRARY, ids=module_name)
def test_library_imports_no_adapter_and_no_composition(path: Path) -> None:
    name = module_name(path)
    upward = sorted(n for n in imported(path)
                    if top(n) in ADAPTERS or any(n == c or n.startswith(c + ".")
                                                 for c in COMPOSITION))
    assert not upward, f"{name} imports {upward}: move the shared piece down into nodeagent"


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_adapters_import_neither_each_other_nor_the_composition(adapter: str) -> None:
    other = next(a for a in ADAPTERS if a != adapter)
    offending = {}
    for path in sources(adapter):
        bad = sorted(n for n in imported(path)
                     if top(n) == other or any(n == c or n.startswith(c + ".")
                                               for c in COMPOSITION))
        if bad:
            offending[module_name(path)] = bad
    assert not offending
