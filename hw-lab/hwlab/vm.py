"""The virtual lab machine: a distro kernel under QEMU (TCG) via virtme-ng, with two igb PFs.

Topology (see hw-lab/README.md): q35 + intel-iommu; NUMA nodes 0 and 1 (one vCPU and half the
memory each); per node a pxb-pcie expander with that numa_node, a root port and an igb (82576,
7 VFs). The two igb ports hang on one QEMU hub, i.e. they are cabled to each other and to
nothing else: no traffic leaves the VM.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

NUMA_NODES = (0, 1)
EXPANDER_BUS = {0: 64, 1: 128}  # PF of node n appears at 0000:<bus+1>:00.0 in the guest


class LabError(RuntimeError):
    """The lab cannot boot or produced no result."""


@dataclass(frozen=True)
class LabConfig:
    """What to boot and how."""

    vng: Path
    kernel: Path
    rwdir: Path
    cwd: Path
    memory_mb: int = 2048
    cpus: int = 2


def qemu_opts() -> list[str]:
    """QEMU arguments for q35 + vIOMMU and one igb PF per NUMA node behind its own pxb-pcie."""
    opts = ["-machine", "q35,kernel-irqchip=split", "-device", "intel-iommu,intremap=on"]
    for i, node in enumerate(NUMA_NODES):
        bus = EXPANDER_BUS[node]
        opts += [
            "-device", f"pxb-pcie,id=pxb{i},bus_nr={bus},numa_node={node},bus=pcie.0",
            "-device", f"pcie-root-port,id=rp{i},bus=pxb{i},chassis={i + 1},slot={i + 1}",
            "-netdev", f"hubport,id=wire{i},hubid=0",
            "-device", f"igb,bus=rp{i},netdev=wire{i},mac=52:54:00:10:0{i}:01",
        ]
    return opts


def vng_command(cfg: LabConfig, guest_argv: list[str]) -> list[str]:
    """The vng argument list that boots the lab and runs `guest_argv` in it."""
    half = cfg.memory_mb // len(NUMA_NODES)
    if half * len(NUMA_NODES) != cfg.memory_mb or cfg.cpus != len(NUMA_NODES):
        raise LabError(f"memory must split evenly over {len(NUMA_NODES)} NUMA nodes, one CPU each")
    cmd = [
        str(cfg.vng), "--run", str(cfg.kernel), "--disable-kvm",
        "--memory", f"{cfg.memory_mb}M", "--cpus", str(cfg.cpus),
    ]
    for cpu in range(cfg.cpus):
        cmd += ["--numa", f"{half}M,cpus={cpu}"]
    for item in ("intel_iommu=on", "iommu=pt"):
        cmd += ["--append", item]
    cmd += [
        "--rwdir", str(cfg.rwdir), "--cwd", str(cfg.cwd),
        f"--qemu-opts={shlex.join(qemu_opts())}",
        "--exec", shlex.join(guest_argv),
    ]
    return cmd


def qemu_has_igb(qemu: str = "qemu-system-x86_64") -> bool:
    """True when QEMU is installed and offers the igb device (QEMU >= 8.0)."""
    path = shutil.which(qemu)
    if path is None:
        return False
    out = subprocess.run(
        [path, "-device", "help"], capture_output=True, text=True, check=False, timeout=60
    )
    return any(line.startswith('name "igb"') for line in out.stdout.splitlines())


def run_streaming(cmd: list[str], log: TextIO, timeout: float, env: dict[str, str]) -> int:
    """Run cmd, copying its output (one pipe for stdout and stderr) to our stdout and `log`.

    The whole process group is killed after `timeout` seconds.
    """
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env=env, start_new_session=True, text=True, errors="replace", bufsize=1,
    )
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
        rc = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if timed_out.is_set():
        raise LabError(f"the lab did not finish within {timeout:.0f}s and was stopped")
    return rc
