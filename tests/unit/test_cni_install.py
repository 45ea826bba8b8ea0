"""`nodeagent cni install` / `uninstall` over a copy of the reference plugins: what the shim
replaces is kept and comes back byte for byte, and nothing of ours stays behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cni.install import (
    FALLBACK_NAME,
    OWN_NAMES,
    TAKEOVER_NAMES,
    InstallError,
    install,
    install_changes,
    parse_names,
    uninstall,
)
from cni.shim import shim_path

REFERENCE = Path("/usr/lib/cni")
needs_reference = pytest.mark.skipif(
    not (REFERENCE / "macvlan").exists(),
    reason="reference CNI plugins (containernetworking-plugins) not in /usr/lib/cni")


@pytest.fixture
def bindir(tmp_path: Path) -> Path:
    """A CNI bin dir holding the reference plugins, as a node has it before the agent."""
    dest = tmp_path / "bin"
    shutil.copytree(REFERENCE, dest, symlinks=True)
    return dest


def snapshot(d: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mode) for p in d.iterdir() if p.is_file()}


def version_of(plugin: Path) -> dict:
    """Run a plugin the way a runtime does for VERSION: the reference plugins answer without a
    network namespace; the shim without an agent would answer error 11."""
    env = {"CNI_COMMAND": "VERSION", "CNI_PATH": str(plugin.parent), "PATH": os.environ["PATH"]}
    out = subprocess.run([str(plugin)], input=b'{"cniVersion": "1.0.0"}', env=env,
                         capture_output=True, timeout=30, check=True)
    return json.loads(out.stdout)


@needs_reference
def test_install_keeps_every_file_it_replaces_and_uninstall_puts_them_back(
        bindir: Path) -> None:
    before = snapshot(bindir)
    shim = shim_path().read_bytes()

    changes = install_changes(bindir, shim_path())

    replaced = {c.path.name for c in changes if c.action == "replaced"}
    assert replaced == {n for n in TAKEOVER_NAMES if n in before}  # macvlan, ipvlan, vlan
    for name in replaced:
        assert (bindir / name).read_bytes() == shim
        kept = next(c.backup for c in changes if c.path.name == name)
        assert kept is not None and kept.read_bytes() == before[name][0]
        assert f"original is kept as {kept}" in str(next(c for c in changes
                                                          if c.path.name == name))
    for name in set(before) - set(TAKEOVER_NAMES):  # bridge, host-local, static, ...
        assert (bindir / name).read_bytes() == before[name][0]

    restored = uninstall(bindir)

    assert snapshot(bindir) == before  # byte-identical, same modes, nothing extra
    assert not (bindir / ".nodeagent").exists()
    actions = {c.path.name: c.action for c in restored}
    assert {actions[n] for n in replaced} == {"restored"}
    assert {actions[n] for n in (*OWN_NAMES, "sriov", "whereabouts", FALLBACK_NAME)} == {
        "removed"}
    assert "1.0.0" in version_of(bindir / "macvlan")["supportedVersions"]  # the real one again


@needs_reference
def test_installing_twice_never_keeps_our_own_shim_as_an_original(bindir: Path,
                                                                   tmp_path: Path) -> None:
    before = snapshot(bindir)
    install(bindir, shim_path())
    # An upgrade: the next version's shim is another binary, carrying the same marker.
    newer = tmp_path / "newer-shim"
    newer.write_bytes(shim_path().read_bytes() + b"\0another build")
    changes = install_changes(bindir, newer)
    assert not [c for c in changes if c.action == "replaced"]
    assert (bindir / "macvlan").read_bytes() == newer.read_bytes()
    assert (bindir / ".nodeagent" / "originals" / "macvlan").read_bytes() == before["macvlan"][0]

    uninstall(bindir)
    assert snapshot(bindir) == before


@needs_reference
def test_a_file_written_over_the_shim_since_is_the_new_original(bindir: Path) -> None:
    install(bindir, shim_path())
    upgraded = b"#!/bin/sh\necho a packaged macvlan, upgraded after the agent's install\n"
    (bindir / "macvlan").write_bytes(upgraded)

    changes = install_changes(bindir, shim_path())  # the agent restarts: takes it over again
    assert [c.path.name for c in changes if c.action == "replaced"] == ["macvlan"]
    uninstall(bindir)
    assert (bindir / "macvlan").read_bytes() == upgraded

    install(bindir, shim_path())
    (bindir / "ipvlan").write_bytes(upgraded)  # replaced after install, agent then removed
    changes = uninstall(bindir)
    assert {c.path.name: c.action for c in changes}["ipvlan"] == "kept"
    assert (bindir / "ipvlan").read_bytes() == upgraded


@needs_reference
def test_only_the_names_taken_over_are_replaced_and_dropping_one_gives_it_back(
        bindir: Path) -> None:
    before = snapshot(bindir)
    shim = shim_path().read_bytes()
    install(bindir, shim_path(), take_over=parse_names("sriov,macvlan"), fallback=False)
    assert (bindir / "macvlan").read_bytes() == shim
    assert (bindir / "ipvlan").read_bytes() == before["ipvlan"][0]
    assert not (bindir / "whereabouts").exists()
    assert not (bindir / FALLBACK_NAME).exists()

    changes = install_changes(bindir, shim_path(), take_over=parse_names("sriov"),
                              fallback=False)
    assert {c.path.name: c.action for c in changes}["macvlan"] == "restored"
    assert (bindir / "macvlan").read_bytes() == before["macvlan"][0]

    uninstall(bindir)
    assert snapshot(bindir) == before


def test_take_over_names_are_checked() -> None:
    assert parse_names("") == ()
    assert parse_names(" whereabouts, sriov ") == ("sriov", "whereabouts")
    with pytest.raises(InstallError, match="bridge is not one of"):
        parse_names("sriov,bridge")


def test_uninstall_where_nothing_was_installed_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "macvlan").write_bytes(b"not ours")
    assert uninstall(tmp_path) == []
    assert uninstall(tmp_path / "absent") == []
    assert (tmp_path / "macvlan").read_bytes() == b"not ours"


def test_uninstall_removes_shims_of_an_install_that_kept_no_manifest(tmp_path: Path) -> None:
    shim = shim_path().read_bytes()
    for name in ("sriov", "macvlan"):  # as versions before the manifest left them
        (tmp_path / name).write_bytes(shim)
    (tmp_path / "bridge").write_bytes(b"someone else's")
    uninstall(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bridge"]


def test_a_missing_original_stops_uninstall_leaving_the_shim(tmp_path: Path) -> None:
    (tmp_path / "macvlan").write_bytes(b"original")
    install(tmp_path, shim_path())
    (tmp_path / ".nodeagent" / "originals" / "macvlan").unlink()
    with pytest.raises(InstallError, match="macvlan: its original should be in"):
        uninstall(tmp_path)
    assert (tmp_path / "macvlan").read_bytes() == shim_path().read_bytes()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nodeagent.cli", *args], capture_output=True,
                          text=True, timeout=60)


@needs_reference
def test_the_commands_say_what_they_replaced_and_restored(bindir: Path) -> None:
    before = snapshot(bindir)
    out = cli("cni", "install", "--no-fallback", "--take-over", "macvlan", "--dest", str(bindir))
    assert out.returncode == 0, out.stderr
    kept = bindir / ".nodeagent" / "originals" / "macvlan"
    assert f"{bindir / 'macvlan'}: replaced, the original is kept as {kept}" in out.stdout
    assert f"{bindir / 'nodeagent'}: installed" in out.stdout

    out = cli("cni", "uninstall", "--dest", str(bindir))
    assert out.returncode == 0, out.stderr
    assert f"{bindir / 'macvlan'}: original restored" in out.stdout
    assert snapshot(bindir) == before

    out = cli("cni", "install", "--take-over", "macvlan,bridge", "--dest", str(bindir))
    assert out.returncode == 1
    assert "--take-over: bridge is not one of" in out.stderr
    assert snapshot(bindir) == before


@needs_reference
def test_a_plugin_that_is_a_symlink_comes_back_as_the_same_symlink(tmp_path: Path) -> None:
    (tmp_path / "macvlan").symlink_to(REFERENCE / "macvlan")
    changes = install_changes(tmp_path, shim_path(), fallback=False)
    assert f"original symlink to {REFERENCE / 'macvlan'} is kept" in str(
        next(c for c in changes if c.path.name == "macvlan"))
    assert not (tmp_path / "macvlan").is_symlink()
    assert (REFERENCE / "macvlan").read_bytes() != shim_path().read_bytes()  # target untouched
    uninstall(tmp_path)
    assert os.readlink(tmp_path / "macvlan") == str(REFERENCE / "macvlan")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["macvlan"]
