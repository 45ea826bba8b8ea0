"""containerd (the Debian package) with its CRI plugin as the node's runtime, all of its own:
root, state, socket, runc root, CNI bin and conf dirs; the host's containerd (if any) is not
touched. Pod network namespaces are made under /run/netns, as on a real node."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.e2e.cri import CriClient

PAUSE_IMAGE = "localhost/nodeagent-e2e/pause:1"


def config(root: Path, bin_dir: Path, conf_dir: Path, max_networks: int) -> str:
    """containerd's config.toml (version 2): CRI with runc, the native snapshotter (no
    overlay needed), the local pause image and every network in ``conf_dir`` (up to
    ``max_networks``, in file name order: eth0, eth1, ...) on each pod."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{root}/root"
state = "{root}/state"
[grpc]
  address = "{root}/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # The pause process may not get a lower OOM score than containerd has (a node in a
  # container cannot lower it).
  restrict_oom_score_adj = true
[{cri}.containerd]
  snapshotter = "native"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  Root = "{root}/runc"
[{cri}.cni]
  bin_dir = "{bin_dir}"
  conf_dir = "{conf_dir}"
  max_conf_num = {max_networks}
"""


class Containerd:
    def __init__(self, root: Path, bin_dir: Path, conf_dir: Path, max_networks: int) -> None:
        self.root = root
        self.socket = root / "containerd.sock"
        root.mkdir(parents=True, exist_ok=True)
        self.config_file = root / "config.toml"
        self.config_file.write_text(config(root, bin_dir, conf_dir, max_networks))
        self.log = root / "containerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> CriClient:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(["containerd", "--config", str(self.config_file)],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start: see {self.log}")
            time.sleep(0.1)
        client = CriClient(self.socket)
        while True:
            try:
                client.version()
                return client
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def ctr(self, *args: str) -> str:
        return subprocess.run(["ctr", "--address", str(self.socket), "-n", "k8s.io", *args],
                              check=True, capture_output=True, text=True).stdout

    def import_image(self, archive: Path) -> None:
        self.ctr("images", "import", "--snapshotter", "native", str(archive))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._kill_shims()

    def _kill_shims(self) -> None:
        """Sandboxes that could not be removed keep their shim (and pause) running after
        containerd exits: end those of this containerd (named by its socket), by pid."""
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"containerd-shim-runc-v2") and str(self.socket).encode() in argv:
                with contextlib.suppress(OSError):
                    os.killpg(int(proc.name), signal.SIGKILL)
