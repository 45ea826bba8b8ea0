"""`nodeagent` commands: `inventory` output on fixture trees; the daemon's stop watchdog."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nodeagent.cli import main
from tests.sysfs_tree import SysfsTree


def test_table_nests_vfs_under_their_pf(
    tree: SysfsTree, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NODE_NAME", "worker-7")
    tree.add_pf("0000:3b:00.0", "ice", netdev="ens1f0", numvfs=2, vfio=(1,), numa_node=1)
    tree.add_netdev("veth0", None)

    assert main(["inventory", "--sysfs-root", str(tree.root)]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "node worker-7: 2 NICs, 1 SR-IOV PFs, 2 VFs"
    header = lines[2].split()
    assert header[:6] == ["NAME", "PCI", "ID", "DRIVER", "NUMA", "IOMMU"]
    pf, vf0, vf1, veth = lines[3:7]
    assert pf.split()[:5] == ["ens1f0", "0000:3b:00.0", "8086:1592", "ice", "1"]
    assert "SR-IOV 2/256 VFs" in pf
    assert vf0.split()[:6] == ["├─", "vf0", "ens1f0v0", "0000:3b:01.0", "8086:1889", "iavf"]
    assert vf1.split()[:5] == ["└─", "vf1", "0000:3b:01.1", "8086:1889", "vfio-pci"]
    assert veth.startswith("veth0")


def test_json_output_validates(tree: SysfsTree, capsys, inventory_validator) -> None:
    tree.add_pf("0000:3b:00.0", "i40e", netdev="ens1f0", numvfs=1)

    assert main(["inventory", "--json", "--sysfs-root", str(tree.root)]) == 0

    doc = json.loads(capsys.readouterr().out)
    inventory_validator.validate(doc)
    assert doc["nics"][0]["sriov"]["vfs"][0]["driver"] == "iavf"


def test_missing_netns_is_a_clear_error(tree: SysfsTree, capsys) -> None:
    assert main(["inventory", "--netns", "nat-no-such-ns", "--sysfs-root", str(tree.root)]) == 1
    assert "nat-no-such-ns" in capsys.readouterr().err


STUCK_STOP = """
import sys, threading, time
sys.path.insert(0, sys.argv[1])
from nodeagent import cli

class Stuck:
    def stop(self):  # a part that never returns (stuck in the kernel, on the network)
        threading.Event().wait()

start = time.monotonic()
try:
    cli._stop_within(Stuck(), 0.3)
finally:
    print(f"not reached {time.monotonic() - start:.2f}", flush=True)
"""

QUICK_STOP = STUCK_STOP.replace("threading.Event().wait()", "pass")


def test_sigterm_ends_the_daemon_even_when_a_part_does_not_stop() -> None:
    """The watchdog behind `daemon`'s SIGTERM: a part that never stops does not keep the old
    agent (and its socket, its device plugin sockets) from giving the node to the next."""
    repo = str(Path(__file__).resolve().parents[2])
    stuck = subprocess.run([sys.executable, "-c", STUCK_STOP, repo], capture_output=True,
                           text=True, timeout=30)
    assert stuck.returncode == 1
    assert "not reached" not in stuck.stdout, "it waited for the stuck part"
    assert "not stopped within 0.3 s" in stuck.stderr

    quick = subprocess.run([sys.executable, "-c", QUICK_STOP, repo], capture_output=True,
                           text=True, timeout=30)
    assert quick.returncode == 0 and quick.stdout.startswith("not reached"), quick.stderr
    assert "not stopped" not in quick.stderr
