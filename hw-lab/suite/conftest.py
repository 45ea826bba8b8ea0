"""Fixtures of the hw-lab suite: inventory PFs (through the guard), VFs, namespaces, netdevsim.

Run through hw-lab/run.py, which sets NODEAGENT_HWLAB_INVENTORY. Every device comes from the
guard; everything a test creates carries the `nahw` prefix and is removed even when it fails.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from functools import cache
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hwlab import netns as lab_netns
from hwlab import sriov
from hwlab.guard import PF, Guard, NetdevsimDevice
from hwlab.inventory import Inventory, load
from hwlab.sriov import VFOwner
from hwlab.sysfs import Sysfs

ENV = "NODEAGENT_HWLAB_INVENTORY"


@cache
def _inventory() -> Inventory:
    path = os.environ.get(ENV)
    if not path:
        raise pytest.UsageError(f"{ENV} is not set: run the lab suite through hw-lab/run.py")
    return load(path)


def pytest_configure(config: pytest.Config) -> None:
    _inventory()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    inv = _inventory()
    if "pf_addr" in metafunc.fixturenames:
        addrs = [p.pci for p in inv.pfs]
        metafunc.parametrize("pf_addr", addrs, ids=addrs)
    if "vf_owner_id" in metafunc.fixturenames:
        ids = [p.pci for p in inv.pfs] + [f"netdevsim{n.id}" for n in inv.netdevsim]
        metafunc.parametrize("vf_owner_id", ids, ids=ids)


@pytest.fixture(scope="session")
def inventory() -> Inventory:
    return _inventory()


@pytest.fixture(scope="session")
def sysfs() -> Sysfs:
    return Sysfs()


@pytest.fixture(scope="session")
def guard(inventory: Inventory, sysfs: Sysfs) -> Guard:
    return Guard(inventory, sysfs)


@pytest.fixture
def make_vfs(sysfs: Sysfs) -> Iterator[Callable[[PF, int], list[sriov.VF]]]:
    """Factory: create N VFs on a guarded PF; every PF used gets sriov_numvfs=0 afterwards."""
    used: list[PF] = []

    def make(pf: PF, count: int) -> list[sriov.VF]:
        if count > pf.spec.max_vfs:
            raise ValueError(f"{pf.pci}: inventory allows {pf.spec.max_vfs} VFs, asked {count}")
        used.append(pf)
        return sriov.create_vfs(sysfs, pf.pci, count, pf.spec.vf_driver)

    yield make
    for pf in used:
        sysfs.set_numvfs(pf.pci, 0)


@pytest.fixture
def pf(guard: Guard, pf_addr: str) -> PF:
    """Each inventory PF in turn, checked by the guard."""
    return guard.pf(pf_addr)


@pytest.fixture
def pf_pair(guard: Guard, inventory: Inventory) -> tuple[PF, PF]:
    """Two PFs cabled to each other (inventory `peer`), admin up with carrier."""
    spec = next((p for p in inventory.pfs if p.peer), None)
    if spec is None or spec.peer is None:
        pytest.skip(f"inventory {inventory.name} names no cabled peer PFs")
    pair = (guard.pf(spec.pci), guard.pf(spec.peer))
    for item in pair:
        lab_netns.up_with_carrier(item.netdev)
    return pair


@pytest.fixture
def namespaces() -> Iterator[Callable[[str], str]]:
    """Factory: a new `nahw...` network namespace per call; all removed at teardown."""
    with ExitStack() as stack:
        yield lambda tag: stack.enter_context(lab_netns.namespace(tag))


@pytest.fixture(scope="session")
def netdevsims(guard: Guard, inventory: Inventory, sysfs: Sysfs) -> Iterator[list[NetdevsimDevice]]:
    """The inventory's netdevsim devices, created for the session and deleted after it."""
    created = []
    try:
        for spec in inventory.netdevsim:
            path = sysfs.root / "bus" / "netdevsim" / "devices" / f"netdevsim{spec.id}"
            if not path.exists():
                sriov.netdevsim_create(sysfs.root, spec.id, spec.ports)
                created.append(spec.id)
        yield [guard.netdevsim(spec.id) for spec in inventory.netdevsim]
    finally:
        for dev_id in created:
            sriov.netdevsim_delete(sysfs.root, dev_id)


@pytest.fixture
def vf_owner(
    vf_owner_id: str, guard: Guard, sysfs: Sysfs, make_vfs: Callable[[PF, int], list[sriov.VF]],
    request: pytest.FixtureRequest,
) -> Iterator[VFOwner]:
    """A PF or netdevsim device to configure VFs on (parametrized over the inventory)."""
    if not vf_owner_id.startswith("netdevsim"):
        pf = guard.pf(vf_owner_id)
        yield VFOwner(
            label=pf.pci, netdev=pf.netdev, settings=pf.spec.vf_settings,
            unsupported=pf.spec.vf_unsupported,
            enable=lambda n: [vf.index for vf in make_vfs(pf, n)],
        )
        return
    devs = request.getfixturevalue("netdevsims")
    dev = next(d for d in devs if d.devlink_name == vf_owner_id)
    numvfs = dev.path / "sriov_numvfs"

    def enable(count: int) -> list[int]:
        numvfs.write_text("0")
        numvfs.write_text(str(count))
        return list(range(count))

    try:
        yield VFOwner(
            label=vf_owner_id, netdev=dev.netdev, settings=dev.spec.vf_settings,
            unsupported=frozenset(), enable=enable,
        )
    finally:
        numvfs.write_text("0")
