"""VF provisioning on the lab's PFs with the real kernel: creation, drivers, MACs, idempotence,
convergence after a policy change, rollback of a failed bind, blocking while pods hold VFs,
and the daemon's loop putting back what someone else changed.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hwlab.guard import PF, Guard
from hwlab.inventory import Inventory
from hwlab.sysfs import Sysfs as LabSysfs
from hwlab.sysfs import wait_for
from pyroute2 import IPRoute

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from nodeagent.discovery import Scanner  # noqa: E402
from nodeagent.netlink import Netlink  # noqa: E402
from nodeagent.provision.policy import derived_mac, parse  # noqa: E402
from nodeagent.provision.reconciler import PassResult, ReconcileLoop, Reconciler  # noqa: E402
from nodeagent.status import BLOCKED, FAILED, IN_SYNC, StatusBoard  # noqa: E402
from nodeagent.sysfs import Sysfs  # noqa: E402
from nodeagent.watch import LiveInventory  # noqa: E402

HOST = "lab-node"


@pytest.fixture
def lab_pf(guard: Guard, inventory: Inventory, sysfs: LabSysfs) -> Iterator[PF]:
    """The first inventory PF, with no VFs before and after, autoprobe back on."""
    pf = guard.pf(inventory.pfs[0].pci)
    sysfs.set_numvfs(pf.pci, 0)
    yield pf
    sysfs.write(pf.pci, "sriov_drivers_autoprobe", "1")
    sysfs.set_numvfs(pf.pci, 0)


@pytest.fixture
def reconcile() -> Iterator[Callable[[str], PassResult]]:
    """Run one pass of a policy (YAML text) with the agent's reconciler against /sys."""
    rec = Reconciler(Sysfs(), StatusBoard(), hostname=HOST, vfstate=None, numvfs_timeout=60)
    with Netlink() as netlink:
        scanner = Scanner(Sysfs(), netlink, HOST)
        yield lambda text: rec.reconcile(parse(text), scanner)


def policy(pf: PF, body: str) -> str:
    return f"pfs: [{{name: lab, nicSelector: {{pfNames: [{pf.netdev}]}}, {body}}}]"


def only(result: PassResult) -> tuple[str, str]:
    (outcome,) = result.outcomes
    return outcome.decision.state, outcome.decision.reason


def vf_macs(pf: PF) -> dict[int, str]:
    with Netlink() as nl, IPRoute() as ipr:
        index = ipr.link_lookup(ifname=pf.netdev)[0]
        return {i: c.mac for i, c in nl.vf_configs(index).items()}


def netdev_of(sysfs: LabSysfs, vf: str) -> str:
    return wait_for(f"netdev of {vf}", lambda: sysfs.netdevs(vf))[0]


def test_create_bind_and_mac_then_a_second_pass_changes_nothing(
        lab_pf: PF, sysfs: LabSysfs, reconcile: Callable[[str], PassResult]) -> None:
    text = policy(lab_pf, "numVfs: 4, vfDefaults: {mac: derived, spoofchk: true},"
                          " vfGroups: [{vfs: '0-1', driver: vfio-pci}]")
    result = reconcile(text)
    assert only(result)[0] == IN_SYNC and result.matches, only(result)
    vfs = sysfs.virtfns(lab_pf.pci)
    assert len(vfs) == 4
    assert [sysfs.driver(v) for v in vfs] == ["vfio-pci", "vfio-pci", lab_pf.spec.vf_driver,
                                              lab_pf.spec.vf_driver]
    for vf in vfs[:2]:
        assert Path("/dev/vfio", sysfs.iommu_group(vf)).is_char_device()
    want = {i: derived_mac(HOST, lab_pf.pci, i) for i in range(4)}
    assert vf_macs(lab_pf) == want
    for i in (2, 3):  # igbvf read the admin MAC when it probed: set before the bind
        name = netdev_of(sysfs, vfs[i])
        assert (Path("/sys/class/net") / name / "address").read_text().strip() == want[i]

    ifindexes = {v: (Path("/sys/class/net") / netdev_of(sysfs, v) / "ifindex").read_text()
                 for v in vfs[2:]}
    again = reconcile(text)  # an agent restart: the same policy over the same node
    assert only(again) == (IN_SYNC, "") and again.outcomes[0].applied == ()
    assert [sysfs.driver(v) for v in vfs] == ["vfio-pci", "vfio-pci", lab_pf.spec.vf_driver,
                                              lab_pf.spec.vf_driver]
    assert {v: (Path("/sys/class/net") / netdev_of(sysfs, v) / "ifindex").read_text()
            for v in vfs[2:]} == ifindexes, "no VF was rebound"


def test_policy_change_converges(lab_pf: PF, sysfs: LabSysfs,
                                 reconcile: Callable[[str], PassResult]) -> None:
    assert only(reconcile(policy(lab_pf, "numVfs: 3, vfGroups: [{vfs: 0, driver: vfio-pci}]"
                                 )))[0] == IN_SYNC
    changed = policy(lab_pf, "numVfs: 2, vfDefaults: {trust: true, vlan: 42},"
                             " vfGroups: [{vfs: 1, driver: vfio-pci}]")
    result = reconcile(changed)
    assert only(result)[0] == IN_SYNC, only(result)
    vfs = sysfs.virtfns(lab_pf.pci)
    assert [sysfs.driver(v) for v in vfs] == [lab_pf.spec.vf_driver, "vfio-pci"]
    with Netlink() as nl, IPRoute() as ipr:
        configs = nl.vf_configs(ipr.link_lookup(ifname=lab_pf.netdev)[0])
    assert [(c.vlan, c.trust) for c in configs.values()] == [(42, True), (42, True)]


def test_autoprobe_off_still_gets_the_kernel_driver(
        lab_pf: PF, sysfs: LabSysfs, reconcile: Callable[[str], PassResult]) -> None:
    sysfs.write(lab_pf.pci, "sriov_drivers_autoprobe", "0")
    assert only(reconcile(policy(lab_pf, "numVfs: 2")))[0] == IN_SYNC
    assert [sysfs.driver(v) for v in sysfs.virtfns(lab_pf.pci)] == [lab_pf.spec.vf_driver] * 2
    assert sysfs.read(lab_pf.pci, "sriov_drivers_autoprobe") == "0", "the admin's choice stays"


def test_bind_to_a_missing_driver_fails_and_leaves_the_vf_as_it_was(
        lab_pf: PF, sysfs: LabSysfs, reconcile: Callable[[str], PassResult]) -> None:
    assert only(reconcile(policy(lab_pf, "numVfs: 2")))[0] == IN_SYNC
    state, reason = only(reconcile(policy(
        lab_pf, "numVfs: 2, vfGroups: [{vfs: 1, driver: nodeagent-no-such-driver}]")))
    assert state == FAILED and "nodeagent-no-such-driver is not available" in reason
    vfs = sysfs.virtfns(lab_pf.pci)
    assert [sysfs.driver(v) for v in vfs] == [lab_pf.spec.vf_driver] * 2
    assert sysfs.read(vfs[1], "driver_override") == "(null)"


def test_a_bind_the_driver_refuses_is_rolled_back(
        lab_pf: PF, sysfs: LabSysfs, reconcile: Callable[[str], PassResult]) -> None:
    """The PF's own driver is loaded, but its probe refuses a VF's device ID: the bind is
    verified, fails, and the VF goes back to its driver with its override cleared."""
    assert only(reconcile(policy(lab_pf, "numVfs: 2")))[0] == IN_SYNC
    vf = sysfs.virtfns(lab_pf.pci)[1]
    pf_driver = sysfs.driver(lab_pf.pci)
    state, reason = only(reconcile(policy(
        lab_pf, f"numVfs: 2, vfGroups: [{{vfs: 1, driver: {pf_driver}}}]")))
    assert state == FAILED and f"did not bind to {pf_driver}" in reason, reason
    assert f"VF left on {lab_pf.spec.vf_driver}" in reason
    assert sysfs.driver(vf) == lab_pf.spec.vf_driver
    assert sysfs.read(vf, "driver_override") == "(null)"
    assert netdev_of(sysfs, vf)


def test_vfs_held_by_pods_block_a_lower_count(
        lab_pf: PF, sysfs: LabSysfs, reconcile: Callable[[str], PassResult],
        namespaces: Callable[[str], str]) -> None:
    text = policy(lab_pf, "numVfs: 3, vfGroups: [{vfs: 2, driver: vfio-pci}]")
    assert only(reconcile(text))[0] == IN_SYNC
    vfs = sysfs.virtfns(lab_pf.pci)
    pod = namespaces("prov")
    with IPRoute() as ipr:  # a pod took VF 0's netdev
        ipr.link("set", index=ipr.link_lookup(ifname=netdev_of(sysfs, vfs[0]))[0], net_ns_fd=pod)
    group = sysfs.iommu_group(vfs[2])
    fd = os.open(f"/dev/vfio/{group}", os.O_RDWR)  # a DPDK app holds VF 2
    try:
        lower = policy(lab_pf, "numVfs: 1")
        state, reason = only(reconcile(lower))
        assert state == BLOCKED, reason
        assert vfs[0] in reason and "not in the host namespace" in reason
        assert vfs[2] in reason and f"VFIO group {group} is open" in reason
        assert sysfs.virtfns(lab_pf.pci) == vfs, "nothing was removed"
    finally:
        os.close(fd)


def test_daemon_loop_restores_what_someone_else_changed(
        lab_pf: PF, sysfs: LabSysfs, tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(policy(lab_pf, "numVfs: 2, vfGroups: [{vfs: 1, driver: vfio-pci}]"))
    status = StatusBoard()
    with LiveInventory(Sysfs()) as inventory:
        loop = ReconcileLoop(Reconciler(Sysfs(), status, hostname=HOST, vfstate=None), path)
        loop.start(inventory.subscribe)
        try:
            assert loop.wait_for_pass(0, 60)
            assert status.pf(lab_pf.pci).state == IN_SYNC
            vfs = sysfs.virtfns(lab_pf.pci)
            sysfs.set_numvfs(lab_pf.pci, 0)  # someone removes the VFs
            wait_for("the VFs back", lambda: sysfs.virtfns(lab_pf.pci) == vfs, timeout=60)
            wait_for("VF 1 on vfio-pci", lambda: sysfs.driver(vfs[1]) == "vfio-pci", timeout=60)
            passes = loop.passes
            sysfs.bind(vfs[1], lab_pf.spec.vf_driver)  # someone hands VF 1 to the kernel
            sysfs.write(vfs[1], "driver_override", "\n")
            assert loop.wait_for_pass(passes, 60)
            wait_for("VF 1 on vfio-pci again", lambda: sysfs.driver(vfs[1]) == "vfio-pci",
                     timeout=60)
            time.sleep(1)
            assert status.pf(lab_pf.pci).state == IN_SYNC
        finally:
            loop.stop()
