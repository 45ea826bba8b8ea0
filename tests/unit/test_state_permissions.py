"""IPAM and VF state are root's alone: no other user can read them or stall a root ADD by
taking their locks (tried with a real non-root uid)."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.cnitypes.request import Attachment
from nodeagent.ipam.allocator import Ipam
from nodeagent.ipam.config import parse_config
from nodeagent.ipam.filestore import LOCK_FILE, STATE_FILE, FileStore, secure_state_dir
from nodeagent.vfstate import VfAttachment, VfState

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another uid")


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A directory any user may enter, as /var/lib is (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="naperm", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def config(network: str = "permnet"):
    return parse_config({"name": network,
                         "ipam": {"range": "10.77.0.0/24", "network_name": network}})


def as_nobody(action, *args) -> tuple[int, int]:
    """Run ``action(*args)`` in a forked child as uid/gid 65534; (exit status, errno or 0).
    With ``hold`` the child keeps what it took for ``hold`` seconds before exiting."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no Python-level cleanup, only os calls
        code = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            action(w, *args)
        except OSError as exc:
            code = exc.errno or 1
        except BaseException:
            code = 255
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _grab_lock(signal_fd: int, path: str, seconds: float) -> None:
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(signal_fd, b"L")
    time.sleep(seconds)


def _read(signal_fd: int, path: str) -> None:
    with open(path, "rb") as f:
        f.read()
    os.write(signal_fd, b"R")


def outcome(pid: int, r: int, timeout: float = 5) -> tuple[int, bytes]:
    """The child's report on the pipe (b"" if it wrote none) and its exit code."""
    deadline = time.monotonic() + timeout
    os.set_blocking(r, False)
    said = b""
    while time.monotonic() < deadline:
        try:
            chunk = os.read(r, 1)
        except BlockingIOError:
            chunk = None
        if chunk:
            said = chunk
            break
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            os.close(r)
            return os.waitstatus_to_exitcode(status), said
        time.sleep(0.01)
    os.close(r)
    return -1, said


def test_ipam_state_is_root_only_and_a_user_cannot_stall_an_add(open_root: Path) -> None:
    state = open_root / "ipam"
    ipam = Ipam(state, lock_timeout=1.0)
    ipam.allocate(config(), Attachment.from_cni("c1", "net1"))
    net = state / "permnet"
    for path, mode in ((state, 0o700), (net, 0o700), (net / LOCK_FILE, 0o600),
                       (net / STATE_FILE, 0o600)):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    for action in (_grab_lock, _read):
        target = net / (LOCK_FILE if action is _grab_lock else STATE_FILE)
        pid, r = as_nobody(action, str(target), 3.0) if action is _grab_lock \
            else as_nobody(action, str(target))
        code, said = outcome(pid, r)
        assert said == b"" and code == errno.EACCES, (action.__name__, code, said)
    ipam.allocate(config(), Attachment.from_cni("c2", "net1"))  # not stalled


def test_existing_state_is_made_root_only_at_start(open_root: Path) -> None:
    """State left by an older agent (0755 directories, 0644 files) is tightened when the agent
    starts, before any user could open it again."""
    state = open_root / "ipam"
    net = state / "oldnet"
    net.mkdir(parents=True)
    for path in (state, net):
        path.chmod(0o755)
    (net / LOCK_FILE).write_bytes(b"")
    (net / "10.77.0.9").write_text("cid\r\nnet1")  # host-local's layout
    for path in net.iterdir():
        path.chmod(0o644)
    secure_state_dir(state)
    assert stat.S_IMODE(net.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in net.iterdir())
    pid, r = as_nobody(_grab_lock, str(net / LOCK_FILE), 3.0)
    code, said = outcome(pid, r)
    assert said == b"" and code == errno.EACCES
    # and a store tightens its own directory on first use, whatever the start did
    (net).chmod(0o755)
    (net / LOCK_FILE).chmod(0o644)
    FileStore(state, "oldnet").reservations()
    assert stat.S_IMODE(net.stat().st_mode) == 0o700
    assert stat.S_IMODE((net / LOCK_FILE).stat().st_mode) == 0o600


def test_a_lock_holder_is_named_when_the_lock_times_out(open_root: Path) -> None:
    state = open_root / "ipam"
    Ipam(state).allocate(config("heldnet"), Attachment.from_cni("c1", "net1"))
    fd = os.open(state / "heldnet" / LOCK_FILE, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # root, in this process: a stuck root holder
        with pytest.raises(Exception) as err:
            FileStore(state, "heldnet", lock_timeout=0.2).reservations()
        assert f"held by pid {os.getpid()}" in str(err.value.details)  # type: ignore[attr-defined]
    finally:
        os.close(fd)


def vf_attachment() -> VfAttachment:
    return VfAttachment(container_id="c1", ifname="net1", netns="/run/netns/x",
                        pci="0000:00:01.1", pf="pf0", vf_index=1, dpdk=False,
                        original_name="vf1", original_mtu=1500, original_mac=None, pf_side={})


def test_vf_state_is_root_only(open_root: Path) -> None:
    vfs = VfState(open_root / "cni")
    vfs.save(vf_attachment())
    with vfs.lock("0000:00:01.1"):
        pass
    for path in (open_root / "cni", vfs.dir, vfs.dir / "locks"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for path in [*vfs.dir.glob("*.json"), *(vfs.dir / "locks").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    pid, r = as_nobody(_grab_lock, str(vfs.dir / "locks" / "0000:00:01.1.lock"), 3.0)
    code, said = outcome(pid, r)
    assert said == b"" and code == errno.EACCES


def test_existing_vf_state_is_made_root_only(open_root: Path) -> None:
    root = open_root / "cni"
    (root / "sriov" / "locks").mkdir(parents=True)
    for path in (root, root / "sriov", root / "sriov" / "locks"):
        path.chmod(0o755)
    record = root / "sriov" / "c1-net1.json"
    record.write_text("{}")
    record.chmod(0o644)
    VfState(root).secure()
    assert stat.S_IMODE((root / "sriov").stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "sriov" / "locks").stat().st_mode) == 0o700
    assert stat.S_IMODE(record.stat().st_mode) == 0o600


