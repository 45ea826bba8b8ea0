"""Provisioning's parts that need no SR-IOV hardware, on fixture trees and real files: the
reconciler's passes and reports, the policy reload loop, the sriov_numvfs timeout, binding's
refusals, kernel VF driver lookup and the in-use signs. What needs a kernel that creates VFs
and binds drivers is in hw-lab/suite/test_provision.py.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from nodeagent import cli
from nodeagent.discovery import Scanner
from nodeagent.provision.binding import Binder, kernel_vf_driver
from nodeagent.provision.errors import ProvisionError
from nodeagent.provision.inuse import InUse
from nodeagent.provision.numvfs import NumVfsWriter
from nodeagent.provision.policy import parse
from nodeagent.provision.reconciler import ReconcileLoop, Reconciler
from nodeagent.status import BLOCKED, FAILED, IN_SYNC, StatusBoard
from nodeagent.sysfs import Sysfs
from nodeagent.vfstate import VfAttachment, VfState
from tests.sysfs_tree import SysfsTree

PF, PF2 = "0000:41:00.0", "0000:81:00.0"


def test_dry_run_reports_and_changes_nothing(tree: SysfsTree) -> None:
    tree.add_pf(PF, "igb", netdev="ens1", numvfs=2)
    tree.add_pf(PF2, "ice", netdev="ens2")
    before = (tree.device_dir(PF) / "sriov_numvfs").read_text()
    status = StatusBoard()
    rec = Reconciler(Sysfs(tree.root), status, hostname="w1")
    result = rec.reconcile(parse("""
pfs:
  - {name: a, nicSelector: {pfNames: [ens1]}, numVfs: 2}
  - {name: b, nicSelector: {vendor: "8086", deviceID: "1592"}, numVfs: 4}
  - {name: c, nicSelector: {pfNames: [ens9]}, numVfs: 1}
"""), Scanner(Sysfs(tree.root), hostname="w1"), dry_run=True)
    states = {o.pci: (o.policy, o.decision.state) for o in result.outcomes}
    assert states == {PF: ("a", IN_SYNC), PF2: ("b", "applying")}
    assert result.unmatched == ("c",) and not result.matches
    assert (tree.device_dir(PF) / "sriov_numvfs").read_text() == before
    assert {p["pciAddress"]: p["state"] for p in status.snapshot()["pfs"]} == {
        PF: IN_SYNC, PF2: "applying"}


def test_a_pf_selected_twice_fails_and_a_dropped_entry_is_forgotten(tree: SysfsTree) -> None:
    tree.add_pf(PF, "igb", netdev="ens1")
    status = StatusBoard()
    rec = Reconciler(Sysfs(tree.root), status, hostname="w1")
    scanner = Scanner(Sysfs(tree.root), hostname="w1")
    result = rec.reconcile(parse("""
pfs:
  - {name: a, nicSelector: {pfNames: [ens1]}, numVfs: 0}
  - {name: b, nicSelector: {vendor: "8086"}, numVfs: 0}
"""), scanner)
    (outcome,) = result.outcomes
    assert outcome.decision.state == FAILED and "a and b" in outcome.decision.reason
    assert status.snapshot()["recentErrors"][-1]["object"] == PF
    rec.reconcile(parse("pfs: []"), scanner)
    assert status.snapshot()["pfs"] == [], "a PF no entry selects is no longer managed"


def test_loop_applies_at_start_rereads_a_changed_policy_and_keeps_a_good_one(
        tree: SysfsTree, tmp_path: Path) -> None:
    tree.add_pf(PF, "igb", netdev="ens1", numvfs=1)
    path = tmp_path / "policy.yaml"
    path.write_text("pfs: [{nicSelector: {pfNames: [ens1]}, numVfs: 1}]")
    status = StatusBoard()
    loop = ReconcileLoop(Reconciler(Sysfs(tree.root), status, hostname="w1"), path,
                         netlink=False)
    loop.start()
    try:
        assert loop.wait_for_pass(0, 10)
        assert status.pf(PF).state == IN_SYNC
        path.write_text("pfs: [{nicSelector: {pfNames: [ens1]}, numVfs: 9}]")
        assert loop.wait_for_pass(1, 10)
        assert status.pf(PF).state == FAILED and "exceeds sriov_totalvfs 7" in status.pf(
            PF).reason
        path.write_text("pfs: [{nicSelector: {pfNames: [ens1]}, numVfs: x}]")
        loop.trigger()
        assert loop.wait_for_pass(2, 10)
        assert "policy not applied" in status.snapshot()["recentErrors"][-1]["message"]
        assert loop.policy.pfs[0].num_vfs == 9, "the last valid policy stays in force"
    finally:
        loop.stop()


def test_blocking_numvfs_write_times_out_and_is_not_repeated(tmp_path: Path,
                                                             tree: SysfsTree) -> None:
    tree.add_pf(PF, "igb", netdev="ens1", numvfs=0)
    attr = tree.device_dir(PF) / "sriov_numvfs"
    attr.unlink()
    os.mkfifo(attr)  # a write blocks until someone reads: a driver that never returns
    writer = NumVfsWriter(_FixedNumvfs(Sysfs(tree.root), 0), timeout=0.3)
    with pytest.raises(ProvisionError, match=r"did not return within 0\.3s"):
        writer.set(PF, 4)
    assert writer.busy(PF)
    with pytest.raises(ProvisionError, match="has not returned yet"):
        writer.set(PF, 2)
    reader = os.open(attr, os.O_RDONLY | os.O_NONBLOCK)  # the "driver" finishes
    try:
        writer._stuck[PF].join(5)
        assert os.read(reader, 16) == b"4"
    finally:
        os.close(reader)
    assert not writer.busy(PF)


def test_numvfs_goes_through_zero(tree: SysfsTree) -> None:
    tree.add_pf(PF, "igb", netdev="ens1", numvfs=2)
    attr = tree.device_dir(PF) / "sriov_numvfs"
    writes: list[str] = []
    done = threading.Event()
    attr.unlink()
    os.mkfifo(attr)

    def drain() -> None:  # plays the kernel: records what is written, in order
        data = b""
        while len(data) < 2:  # each open is read to its end: a write is never dropped, even
            fd = os.open(attr, os.O_RDONLY)  # when the next one joins before a close is seen
            try:
                while chunk := os.read(fd, 16):
                    data += chunk
            finally:
                os.close(fd)
        writes.extend(data.decode())
        done.set()

    threading.Thread(target=drain, daemon=True).start()
    writer = NumVfsWriter(_FixedNumvfs(Sysfs(tree.root), 2), timeout=5)
    writer.set(PF, 3)
    assert done.wait(60) and writes == ["0", "3"]


class _FixedNumvfs(Sysfs):
    """Reads sriov_numvfs as a fixed value (a FIFO cannot be read back)."""

    def __init__(self, inner: Sysfs, value: int) -> None:
        super().__init__(inner.root)
        self._value = value

    def pci_int(self, address: str, name: str, base: int = 10) -> int | None:
        return self._value if name == "sriov_numvfs" else super().pci_int(address, name, base)


def test_binding_refusals_change_nothing(tree: SysfsTree) -> None:
    tree.add_pf(PF, "igb", netdev="ens1", numvfs=1)
    sysfs = Sysfs(tree.root)
    vf = sysfs.pci_virtfns(PF)[0]
    (tree.device_dir(vf) / "iommu_group").unlink()
    binder = Binder(sysfs, dev_root=str(tree.root / "dev"))
    with pytest.raises(ProvisionError, match="no IOMMU group: enable the IOMMU"):
        binder.bind(vf, "vfio-pci")
    with pytest.raises(ProvisionError, match="driver nodeagent-no-such-driver is not available"):
        binder.bind(vf, "nodeagent-no-such-driver")
    with pytest.raises(ProvisionError, match="is not a driver name"):
        binder.bind(vf, "../../x")
    assert sysfs.pci_driver(vf) == "igbvf"
    assert sysfs.pci_attr(vf, "driver_override") == "(null)"


def test_kernel_vf_driver_from_modules_alias(tree: SysfsTree, tmp_path: Path) -> None:
    tree.add_pf(PF, "igb", netdev="ens1", numvfs=1)
    sysfs = Sysfs(tree.root)
    vf = sysfs.pci_virtfns(PF)[0]
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "modules.alias").write_text(
        "alias pci:v*d*sv*sd*bc*sc*i* vfio_pci\n"
        "alias pci:v00008086d000010C9sv*sd*bc*sc*i* igb\n"
        "alias pci:v00008086d000010CAsv*sd*bc*sc*i* igbvf\n")
    assert kernel_vf_driver(sysfs, vf, "igb", str(modules)) == "igbvf"
    (modules / "modules.alias").write_text("")
    assert kernel_vf_driver(sysfs, vf, "ice", str(modules)) == "iavf", "PF family fallback"
    assert kernel_vf_driver(sysfs, vf, "unknown", str(modules)) is None


def test_in_use_signs(tree: SysfsTree, tmp_path: Path) -> None:
    tree.add_pf(PF, "igb", netdev="ens1", numvfs=4, vfio=(2, 3))
    sysfs = Sysfs(tree.root)
    vfs = sysfs.pci_virtfns(PF)
    tree.remove_netdev("ens1v1")  # moved into a pod by some CNI
    state = VfState(tmp_path / "cni")
    state.save(VfAttachment("c0ffee" * 4, "net1", "/run/netns/x", vfs[0], "ens1", 0, False,
                            "ens1v0", 1500, None, {}))
    proc = tmp_path / "proc"
    group = sysfs.pci_iommu_group(vfs[3])
    (proc / "4242" / "fd").mkdir(parents=True)
    (proc / "4242" / "fd" / "7").symlink_to(f"/dev/vfio/{group}")
    nic = Scanner(sysfs, hostname="w1").scan().nic(PF)
    found = InUse(sysfs, state, str(proc)).vfs(nic)
    assert set(found) == {vfs[0], vfs[1], vfs[3]}, "VF 2 is on vfio-pci but nobody has it open"
    assert found[vfs[0]] == "attached by CNI to c0ffeec0ffee/net1"
    assert "netdev is not in the host namespace" in found[vfs[1]]
    assert f"VFIO group {group} is open" in found[vfs[3]]


def test_provision_cli_exit_codes(tree: SysfsTree, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    tree.add_pf(PF, "igb", netdev="ens1", numvfs=2)
    policy = tmp_path / "p.yaml"
    base = ["provision", "--sysfs-root", str(tree.root), "--policy", str(policy)]
    policy.write_text("pfs: [{name: front, nicSelector: {pfNames: [ens1]}, numVfs: 2}]")
    assert cli.main([*base, "--once", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["matches"] and doc["pfs"][0]["state"] == IN_SYNC
    policy.write_text("pfs: [{name: front, nicSelector: {pfNames: [ens1]}, numVfs: 3}]")
    assert cli.main([*base, "--dry-run"]) == 1
    assert "would apply" in capsys.readouterr().out
    policy.write_text("pfs: [{nicSelector: {pfNames: [ens1]}}]")
    assert cli.main([*base, "--once"]) == 2
    assert "numVfs is required" in capsys.readouterr().err
    assert cli.main(base) == 2, "without --once or --dry-run: the daemon's job"


def test_status_cli_shows_the_daemons_record(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from nodeagent.status import PfStatus
    board = StatusBoard(tmp_path / "status.json")
    board.set_pf(PfStatus(PF, "ens1", BLOCKED, "numVfs 4 -> 2 waits: VFs in use", 4, 2))
    board.set_pools({"intel.com/sriov_a": {"total": 4, "allocated": 1, "unhealthy": 0}})
    board.set_allocation("abc/net1", {"pod": "ran-0", "namespace": "5g", "network": "fh",
                                      "type": "sriov", "device": "0000:41:10.0",
                                      "ips": ["10.1.0.5/24"]})
    board.error("provision", "VF 0000:41:10.2 did not bind to vfio-pci", "0000:41:10.2")
    board.flush()
    assert cli.main(["status", "--status-file", str(tmp_path / "status.json")]) == 0
    out = capsys.readouterr().out
    for text in ("blocked", "numVfs 4 -> 2 waits", "intel.com/sriov_a", "5g/ran-0",
                 "10.1.0.5/24", "did not bind to vfio-pci"):
        assert text in out
    assert cli.main(["status", "--status-file", str(tmp_path / "none.json")]) == 1
    assert "is `nodeagent daemon` running?" in capsys.readouterr().err
