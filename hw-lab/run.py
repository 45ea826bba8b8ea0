#!/usr/bin/env python3
"""Run the hw-lab suite (or the demo, or a script) in the virtual SR-IOV lab or on real PFs.

    .venv/bin/python hw-lab/run.py [-k EXPR] [--junit PATH] [pytest args...]  # virtual lab
    .venv/bin/python hw-lab/run.py --inventory hw-lab/inventories/NAME.yaml    # this host's PFs
    .venv/bin/python hw-lab/run.py --demo                                      # demo, in the lab
    .venv/bin/python hw-lab/run.py --script PATH [--output FILE] [script args...]

A script runs under the venv's Python with NODEAGENT_HWLAB_INVENTORY set (the lab's inventory,
or --inventory's); its output (stdout and stderr) is also copied to --output (default
results/<script name>.log) and its exit status is ours.

Exits with pytest's status; 70 when the lab could not boot or gave no result (with the reason).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HWLAB = Path(__file__).resolve().parent
REPO = HWLAB.parent
sys.path.insert(0, str(HWLAB))

from hwlab import pysnap, vm  # noqa: E402
from hwlab.guard import Guard, GuardError  # noqa: E402
from hwlab.inventory import InventoryError, load  # noqa: E402

EXIT_LAB_ERROR = 70
BUILD = HWLAB / ".build"
RESULTS = HWLAB / "results"
VIRTUAL_INVENTORY = HWLAB / "inventories" / "virtual.yaml"


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inventory", type=Path, help="real-hardware mode: run on this host's PFs")
    parser.add_argument("--junit", type=Path, default=RESULTS / "junit.xml")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression")
    parser.add_argument("--demo", action="store_true", help="run demo.py instead of the suite")
    parser.add_argument("--script", type=Path,
                        help="run this Python script instead of the suite (extra arguments go"
                             " to it)")
    parser.add_argument("--output", type=Path, help="copy the demo's or script's output here")
    parser.add_argument("--kernel", help="guest kernel version (default: newest one prepared)")
    parser.add_argument("--timeout", type=float, default=900.0, help="kill the VM after this")
    parser.add_argument("--keep", action="store_true", help="keep the run directory under .build/")
    return parser.parse_known_args(argv)


def _version_key(version: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", version)]


def pick_kernel(wanted: str | None) -> tuple[Path, Path]:
    """(vmlinuz, netdevsim.ko) for the requested or newest kernel that setup.sh prepared."""
    available = [p.name.removeprefix("vmlinuz-") for p in Path("/boot").glob("vmlinuz-*")]
    ready = [
        v for v in available
        if (BUILD / f"netdevsim-{v}" / "netdevsim.ko").is_file() and wanted in (None, v)
    ]
    if not ready:
        raise vm.LabError(
            f"no guest kernel {wanted or ''} with a built netdevsim (kernels in /boot: "
            f"{available or 'none'}); run `sudo hw-lab/setup.sh`"
        )
    version = max(ready, key=_version_key)
    return Path("/boot") / f"vmlinuz-{version}", BUILD / f"netdevsim-{version}" / "netdevsim.ko"


def preflight() -> Path:
    """The vng executable, after checking QEMU can emulate igb."""
    vng = Path(sys.executable).parent / "vng"
    if not vng.exists():
        found = shutil.which("vng")
        if found is None:
            raise vm.LabError("virtme-ng (vng) is not in the project venv; run hw-lab/setup.sh")
        vng = Path(found)
    if not vm.qemu_has_igb():
        raise vm.LabError(
            "qemu-system-x86_64 with the igb device (QEMU >= 8.0) is missing; run hw-lab/setup.sh"
        )
    return vng


def pytest_argv(args: argparse.Namespace, extra: list[str], junit: Path) -> list[str]:
    argv = [str(HWLAB / "suite"), f"--rootdir={REPO}", f"--junitxml={junit}"]
    if args.keyword:
        argv += ["-k", args.keyword]
    return argv + extra


def script_argv(args: argparse.Namespace, extra: list[str]) -> list[str] | None:
    """The script to run and its arguments (--demo: demo.py), or None for the suite."""
    if args.demo:
        return [str(HWLAB / "demo.py"), *extra]
    if args.script is not None:
        return [str(args.script.resolve()), *extra]
    return None


def output_log(args: argparse.Namespace) -> Path:
    if args.output is not None:
        return args.output
    if args.demo:
        return RESULTS / "demo.log"
    if args.script is not None:
        return RESULTS / f"{args.script.stem}.log"
    return RESULTS / "pytest.log"


def write_request(rundir: Path, args: argparse.Namespace, extra: list[str]) -> None:
    """request.json for guest/main.py: what to run in the guest, and with which environment."""
    script = script_argv(args, extra)
    if script is not None:
        mode, argv = "script", script
    else:
        mode = "pytest"
        argv = pytest_argv(args, ["-p", "no:cacheprovider", *extra], rundir / "junit.xml")
    env = {
        "NODEAGENT_HWLAB_INVENTORY": str(VIRTUAL_INVENTORY),
        "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
    }
    request = {"mode": mode, "argv": argv, "cwd": str(REPO), "env": env}
    (rundir / "request.json").write_text(json.dumps(request, indent=1))


def run_virtual(args: argparse.Namespace, extra: list[str]) -> int:
    vng = preflight()
    kernel, netdevsim_ko = pick_kernel(args.kernel)
    BUILD.mkdir(parents=True, exist_ok=True)
    # One lab VM at a time on this machine: two TCG guests on a small host time each other out.
    with open(BUILD / "lab.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("hw-lab: waiting for another lab run on this machine to finish", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        return _run_locked(vng, kernel, netdevsim_ko, args, extra)


def _run_locked(vng: Path, kernel: Path, netdevsim_ko: Path, args: argparse.Namespace,
                extra: list[str]) -> int:
    rundir = BUILD / f"run-{os.getpid()}"
    shutil.rmtree(rundir, ignore_errors=True)
    rundir.mkdir(parents=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        started = time.monotonic()
        pysnap.build(rundir / "pysnap.tar")
        write_request(rundir, args, extra)
        cfg = vm.LabConfig(vng=vng, kernel=kernel, rwdir=rundir, cwd=REPO)
        boot = HWLAB / "guest" / "boot.sh"
        cmd = vm.vng_command(cfg, ["sh", str(boot), str(rundir), str(netdevsim_ko), sys.executable])
        env = dict(os.environ, PATH=f"{vng.parent}:{os.environ.get('PATH', '')}")
        print(f"hw-lab: booting {kernel.name} under QEMU/TCG (vng), run dir {rundir}", flush=True)
        with open(RESULTS / "console.log", "w") as console:
            rc = vm.run_streaming(cmd, console, args.timeout, env)
        elapsed = time.monotonic() - started
        print(f"hw-lab: lab finished in {elapsed:.1f}s (vng exit {rc})", flush=True)
        return collect(rundir, args, rc)
    finally:
        if not args.keep:
            shutil.rmtree(rundir, ignore_errors=True)


def collect(rundir: Path, args: argparse.Namespace, vng_rc: int) -> int:
    """Copy results out of the run directory and turn the guest's status into ours."""
    status_file = rundir / "status"
    if not status_file.exists():
        raise vm.LabError(
            f"the lab VM ended (vng exit {vng_rc}) without a result; see {RESULTS / 'console.log'}"
        )
    status = int(status_file.read_text().strip() or EXIT_LAB_ERROR)
    if (rundir / "output.log").exists():
        log = output_log(args)
        log.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(rundir / "output.log", log)
    if script_argv(args, []) is None:
        junit = rundir / "junit.xml"
        if not junit.exists():
            raise vm.LabError(f"pytest exited {status} without writing a JUnit file")
        args.junit.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(junit, args.junit)
        print(f"hw-lab: JUnit report at {args.junit}")
    return status


def run_hardware(args: argparse.Namespace, extra: list[str]) -> int:
    inventory = load(args.inventory)  # validate before touching anything
    try:
        Guard(inventory).pfs()  # every PF present, as described, and off the default route
    except GuardError as exc:
        raise vm.LabError(str(exc)) from exc
    env = dict(os.environ, NODEAGENT_HWLAB_INVENTORY=str(inventory.path.resolve()))
    script = script_argv(args, extra)
    if script is not None:
        cmd = [sys.executable, *script]
        if args.output is not None:  # no console to copy from: tee the script's output
            return _run_teed(cmd, env, args.output)
    else:
        args.junit.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pytest", *pytest_argv(args, extra, args.junit.resolve())]
    print(f"hw-lab: real-hardware mode, inventory {inventory.name} ({inventory.path})", flush=True)
    return subprocess.run(cmd, env=env, cwd=REPO, check=False).returncode


def _run_teed(cmd: list[str], env: dict[str, str], output: Path) -> int:
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
        return proc.wait()


def main(argv: list[str]) -> int:
    args, extra = parse_args(argv)
    if args.demo and args.script is not None:
        print("hw-lab: ERROR: --demo and --script exclude each other", file=sys.stderr)
        return 2
    if args.script is not None and not args.script.is_file():
        print(f"hw-lab: ERROR: no script {args.script}", file=sys.stderr)
        return 2
    try:
        if args.inventory is not None:
            return run_hardware(args, extra)
        return run_virtual(args, extra)
    except (vm.LabError, InventoryError) as exc:
        print(f"hw-lab: ERROR: {exc}", file=sys.stderr)
        return EXIT_LAB_ERROR


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
