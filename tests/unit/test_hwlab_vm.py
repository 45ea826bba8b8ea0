"""The virtual lab's vng/QEMU command line: topology and quoting."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

HWLAB = Path(__file__).resolve().parents[2] / "hw-lab"
sys.path.insert(0, str(HWLAB))

from hwlab import vm  # noqa: E402


def _cfg(**kw) -> vm.LabConfig:
    base = {"vng": Path("/v/vng"), "kernel": Path("/boot/vmlinuz-6.1.0-56-amd64"),
            "rwdir": Path("/r/run 1"), "cwd": Path("/repo")}
    return vm.LabConfig(**{**base, **kw})


def _values(cmd: list[str], flag: str) -> list[str]:
    return [cmd[i + 1] for i, arg in enumerate(cmd) if arg == flag]


def test_two_igb_pfs_each_behind_an_expander_on_its_own_numa_node():
    opts = vm.qemu_opts()
    devices = _values(opts, "-device")
    assert "intel-iommu,intremap=on" in devices
    assert [d for d in devices if d.startswith("pxb-pcie")] == [
        "pxb-pcie,id=pxb0,bus_nr=64,numa_node=0,bus=pcie.0",
        "pxb-pcie,id=pxb1,bus_nr=128,numa_node=1,bus=pcie.0",
    ]
    igbs = [d for d in devices if d.startswith("igb,")]
    assert [d.split(",")[1:3] for d in igbs] == [["bus=rp0", "netdev=wire0"],
                                                 ["bus=rp1", "netdev=wire1"]]
    # both ports on one hub and nothing else: no user/tap networking leaves the VM
    assert _values(opts, "-netdev") == ["hubport,id=wire0,hubid=0", "hubport,id=wire1,hubid=0"]


def test_vng_command_splits_memory_over_the_nodes_and_quotes_the_guest_command():
    cmd = vm.vng_command(_cfg(), ["sh", "/repo/hw-lab/guest/boot.sh", "/r/run 1", "x;y"])
    assert cmd[:3] == ["/v/vng", "--run", "/boot/vmlinuz-6.1.0-56-amd64"]
    assert "--disable-kvm" in cmd
    assert _values(cmd, "--memory") == ["2048M"] and _values(cmd, "--cpus") == ["2"]
    assert _values(cmd, "--numa") == ["1024M,cpus=0", "1024M,cpus=1"]
    assert "intel_iommu=on" in _values(cmd, "--append")
    assert _values(cmd, "--rwdir") == ["/r/run 1"]
    assert shlex.split(_values(cmd, "--exec")[0]) == [
        "sh", "/repo/hw-lab/guest/boot.sh", "/r/run 1", "x;y"]
    qemu = next(a for a in cmd if a.startswith("--qemu-opts="))
    assert shlex.split(qemu.removeprefix("--qemu-opts=")) == vm.qemu_opts()


def test_memory_that_does_not_split_evenly_is_refused():
    with pytest.raises(vm.LabError, match="split evenly"):
        vm.vng_command(_cfg(memory_mb=2047), ["true"])
