"""``nodeagent cni install`` / ``uninstall``: the shim in a CNI bin dir under the plugin names it
serves, and the files it replaced put back.

Every file the shim replaces is kept first (``.nodeagent/originals/NAME`` in the same dir, on the
same filesystem, written durably before the shim goes in) and recorded in
``.nodeagent/manifest.json``: the name, whether there was an original, and the digest of the shim
installed. ``uninstall`` puts each original back and removes shims that replaced nothing, so no
shim stays behind answering "try again later" for an agent that is gone. A file found in place of
the shim we installed (say a package upgrade wrote a new ``macvlan``) is the new original: install
keeps it instead, uninstall leaves it alone. Our own shim, of this or any older version, is never
kept as an original.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nodeagent.fileio import replace_file

#: Names only this project uses: always installed.
OWN_NAMES = ("nodeagent", "nodeagent-ipam", "vxlan")  # vxlan: no other plugin has the name
#: Names of other plugins the shim can take over (sriov-cni, the reference link plugins,
#: whereabouts): every network of that type on the node is then served by the agent.
TAKEOVER_NAMES = ("sriov", "macvlan", "ipvlan", "vlan", "whereabouts", "sbr", "bond")
PLUGIN_NAMES = OWN_NAMES + TAKEOVER_NAMES
FALLBACK_NAME = "nodeagent-cni-fallback"
STATE_DIR = ".nodeagent"
MANIFEST = "manifest.json"
ORIGINALS = "originals"

#: Bytes every build of the shim carries (native/cni_shim.c), and the fallback script's command.
SHIM_MARKER = b"NODEAGENT_SHIM_SOURCE="
FALLBACK_MARKER = b" -m cni.fallback"


class InstallError(Exception):
    """The bin dir cannot be changed as asked (the message says which file and why)."""


@dataclass(frozen=True)
class Change:
    """One file ``install`` or ``uninstall`` changed, and how (for the admin to read)."""

    path: Path
    action: str  # installed, replaced, restored, removed, kept
    backup: Path | None = None
    link: str | None = None

    def __str__(self) -> str:
        if self.action == "replaced" and self.link is not None:
            return f"{self.path}: replaced, the original symlink to {self.link} is kept"
        if self.action == "replaced":
            return f"{self.path}: replaced, the original is kept as {self.backup}"
        if self.action == "restored":
            return f"{self.path}: original restored"
        if self.action == "kept":
            return f"{self.path}: not ours any more (changed since install), left as it is"
        return f"{self.path}: {self.action}"


def parse_names(text: str) -> tuple[str, ...]:
    """A comma-separated list of TAKEOVER_NAMES (empty: none), in a fixed order."""
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = sorted(names - set(TAKEOVER_NAMES))
    if unknown:
        raise InstallError(f"--take-over: {', '.join(unknown)} is not one of"
                           f" {', '.join(TAKEOVER_NAMES)}")
    return tuple(n for n in TAKEOVER_NAMES if n in names)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _ours(data: bytes, installed: str | None) -> bool:
    """The shim or fallback script of any version, or exactly what the manifest says we wrote."""
    return (SHIM_MARKER in data or (data.startswith(b"#!") and FALLBACK_MARKER in data)
            or (installed is not None and _digest(data) == installed))


class _Manifest:
    def __init__(self, dest: Path) -> None:
        self.dir = dest / STATE_DIR
        self.path = self.dir / MANIFEST
        self.entries: dict[str, dict[str, object]] = {}
        data = _read(self.path)
        if data is not None:
            try:
                doc = json.loads(data)
                entries = doc["entries"]
                if not isinstance(entries, dict):
                    raise TypeError("entries is not an object")
            except (ValueError, KeyError, TypeError) as exc:
                raise InstallError(f"{self.path}: unreadable ({exc}); the originals it lists"
                                   f" are in {self.dir / ORIGINALS}") from exc
            self.entries = {str(k): dict(v) for k, v in entries.items() if isinstance(v, dict)}

    def original(self, name: str) -> Path:
        return self.dir / ORIGINALS / name

    def save(self) -> None:
        if not self.entries:
            self.path.unlink(missing_ok=True)
            shutil.rmtree(self.dir / ORIGINALS, ignore_errors=True)
            if self.dir.exists() and not any(self.dir.iterdir()):
                self.dir.rmdir()
            return
        self.dir.mkdir(mode=0o755, exist_ok=True)
        doc = {"version": 1, "entries": dict(sorted(self.entries.items()))}
        replace_file(self.path, json.dumps(doc, indent=2).encode() + b"\n", mode=0o644)


def _keep_original(manifest: _Manifest, name: str, data: bytes, mode: int) -> Path:
    backup = manifest.original(name)
    backup.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    replace_file(backup, data, mode=mode, durable=True)  # the only copy: on disk before we go on
    return backup


def _put(manifest: _Manifest, dest: Path, name: str, content: bytes) -> Change:
    """``content`` at ``dest/name``, what was there kept first unless it is ours."""
    path = dest / name
    entry = manifest.entries.get(name, {})
    installed = entry.get("installed") if isinstance(entry.get("installed"), str) else None
    current = _read(path)
    backup = link = None
    if current is not None and not _ours(current, installed):
        # A file of someone else's: the first install's original, or one written over our shim
        # since (a package upgrade), which supersedes the copy kept before. A symlink (to a
        # packaged plugin elsewhere) is kept as the link itself.
        if path.is_symlink():
            link = os.readlink(path)
            manifest.original(name).unlink(missing_ok=True)
            entry = {"original": True, "link": link}
        else:
            backup = _keep_original(manifest, name, current, path.stat().st_mode & 0o7777)
            entry = {"original": True}
    elif name not in manifest.entries:
        entry = {"original": False}  # nothing there, or a shim of an install without manifest
    manifest.entries[name] = {**entry, "installed": _digest(content)}
    manifest.save()  # recorded before the file is replaced: a crash leaves it restorable
    replace_file(path, content, mode=0o755, durable=False)  # never half-written
    if backup is not None or link is not None:
        return Change(path, "replaced", backup, link)
    return Change(path, "installed")


def _take_back(manifest: _Manifest, dest: Path, name: str) -> Change | None:
    """The original of ``name`` back in place (or the shim gone when it replaced nothing)."""
    path = dest / name
    entry = manifest.entries.get(name, {})
    installed = entry.get("installed") if isinstance(entry.get("installed"), str) else None
    backup = manifest.original(name)
    current = _read(path)
    change: Change | None = None
    if current is not None and not _ours(current, installed):
        change = Change(path, "kept")
    elif entry.get("original") and isinstance(entry.get("link"), str):
        tmp = path.with_name(f".{name}.{os.getpid()}.link")
        tmp.unlink(missing_ok=True)
        os.symlink(str(entry["link"]), tmp)
        os.replace(tmp, path)
        change = Change(path, "restored")
    elif entry.get("original"):
        data = _read(backup)
        if data is None:
            raise InstallError(f"{path}: its original should be in {backup}, which is missing;"
                               " the shim is left in place")
        replace_file(path, data, mode=backup.stat().st_mode & 0o7777, durable=True)
        change = Change(path, "restored")
    elif current is not None:
        path.unlink()
        change = Change(path, "removed")
    manifest.entries.pop(name, None)
    backup.unlink(missing_ok=True)
    manifest.save()
    return change


def install_changes(dest: Path, shim: Path, python: str = sys.executable,
                    fallback: bool = True,
                    take_over: Iterable[str] = TAKEOVER_NAMES) -> list[Change]:
    """The shim under OWN_NAMES and ``take_over``, and the fallback script (``fallback``) that
    runs the handlers with ``python`` when the agent is down. Names taken over by an earlier
    install and not asked for now get their originals back, as does a stale fallback script."""
    want = OWN_NAMES + tuple(n for n in TAKEOVER_NAMES if n in set(take_over))
    dest.mkdir(parents=True, exist_ok=True)
    manifest = _Manifest(dest)
    binary = shim.read_bytes()
    changes = [_put(manifest, dest, name, binary) for name in want]
    for name in sorted(set(manifest.entries) - set(want) - {FALLBACK_NAME}):
        if (change := _take_back(manifest, dest, name)) is not None:
            changes.append(change)
    if fallback:
        script = f"#!/bin/sh\nexec {shlex.quote(python)} -m cni.fallback\n".encode()
        changes.append(_put(manifest, dest, FALLBACK_NAME, script))
    elif (change := _take_back(manifest, dest, FALLBACK_NAME)) is not None:
        changes.append(change)
    elif (old := _read(dest / FALLBACK_NAME)) is not None and _ours(old, None):
        (dest / FALLBACK_NAME).unlink()
        changes.append(Change(dest / FALLBACK_NAME, "removed"))
    return changes


def uninstall(dest: Path) -> list[Change]:
    """Every original put back, every shim that replaced nothing removed, the manifest and the
    kept copies gone. Shims of an install that kept no manifest (older versions) are removed.
    Running it again, or where nothing was installed, changes nothing."""
    if not dest.is_dir():
        return []
    manifest = _Manifest(dest)
    changes = [c for name in sorted(manifest.entries)
               if (c := _take_back(manifest, dest, name)) is not None]
    for name in (*PLUGIN_NAMES, FALLBACK_NAME):
        path = dest / name
        data = _read(path)
        if data is not None and _ours(data, None):
            path.unlink()
            changes.append(Change(path, "removed"))
    manifest.save()
    return changes


def install(dest: Path, shim: Path, python: str = sys.executable, fallback: bool = True,
            take_over: Iterable[str] = TAKEOVER_NAMES) -> list[Path]:
    """As :func:`install_changes`; the files that now hold the shim or the fallback script."""
    return [c.path for c in install_changes(dest, shim, python, fallback, take_over)
            if c.action in ("installed", "replaced")]
