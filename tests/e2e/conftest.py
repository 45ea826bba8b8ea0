"""Fixtures of the end-to-end run: a temp node root, a macvlan master of the test's own, the
agent's image, containerd with the local pause image, the agent pod from the rendered chart."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import ipam_etcd
from tests.e2e import agent as agent_mod
from tests.e2e import image as image_mod
from tests.e2e import pause
from tests.e2e.containerd import PAUSE_IMAGE, Containerd
from tests.e2e.cri import CriClient
from tests.ipam_etcd import EtcdServer

REFERENCE = Path("/usr/lib/cni")
#: The reference plugins the runtime and the networks use next to the shim.
REFERENCE_PLUGINS = ("loopback", "static", "tuning")


def _missing() -> str:
    if os.geteuid() != 0:
        return "root (network namespaces, containerd)"
    for tool in ("containerd", "ctr", "runc", "nsenter", "unshare", "gcc", "ip"):
        if shutil.which(tool) is None:
            return f"the {tool} command"
    for plugin in REFERENCE_PLUGINS:
        if not (REFERENCE / plugin).exists():
            return f"the reference CNI plugin {REFERENCE / plugin}"
    return ""


@pytest.fixture(scope="session")
def node_root() -> Iterator[Path]:
    if why := _missing():
        pytest.skip(f"end-to-end run needs {why}")
    # Not under /tmp: the agent's pod has an emptyDir there, and the CNI bin dir (under this
    # root) is mounted in the agent at its host path.
    root = Path(tempfile.mkdtemp(prefix="nodeagent-e2e-", dir="/var/tmp"))
    yield root
    created = root / "venv-mountpoints.json"
    if created.exists():  # mount points the venv fallback had to create on the host
        for path in reversed(json.loads(created.read_text())):
            with contextlib.suppress(OSError):
                os.rmdir(path)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def master() -> Iterator[str]:
    """A veth of the test's own (unique name, removed after): the macvlan master."""
    name = f"e2e{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"],
                   check=True)
    for link in (name, name + "p"):
        subprocess.run(["ip", "link", "set", link, "up"], check=True)
    yield name
    subprocess.run(["ip", "link", "del", name], check=False)


def pytest_report_header() -> str:
    name, why = image_mod.plan()
    return f"e2e agent: {'the venv' if name == 'venv' else 'image ' + name} ({why})"


@pytest.fixture(scope="session")
def image(node_root: Path) -> str:
    """The agent's image built from these sources (``venv``: the documented fallback)."""
    return image_mod.ensure()


@pytest.fixture(scope="session")
def etcd(node_root: Path) -> Iterator[EtcdServer]:
    """The IPAM cluster store: Debian's etcd on loopback."""
    if not ipam_etcd.available():
        pytest.skip(f"end-to-end run needs etcd ({ipam_etcd.ETCD})")
    (node_root / "etcd").mkdir()
    server = EtcdServer(node_root / "etcd")
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def rendered(node_root: Path, image: str, etcd: EtcdServer) -> agent_mod.Rendered:
    return agent_mod.render(node_root, "localhost/nodeagent:venv" if image == "venv" else image,
                            metrics_port=image_mod.free_port(), etcd_url=etcd.url)


@pytest.fixture(scope="session")
def runtime(node_root: Path) -> Iterator[tuple[Containerd, CriClient]]:
    bin_dir = node_root / "opt/cni/bin"
    conf_dir = node_root / "etc/cni/net.d"
    bin_dir.mkdir(parents=True, exist_ok=True)
    conf_dir.mkdir(parents=True, exist_ok=True)
    for plugin in REFERENCE_PLUGINS:  # copies: the agent container sees bin_dir, not /usr/lib
        shutil.copy2(REFERENCE / plugin, bin_dir / plugin)
    archive = pause.image_archive(pause.build_binary(node_root / "pause"), PAUSE_IMAGE,
                                  node_root / "pause.tar")
    containerd = Containerd(node_root / "containerd", bin_dir, conf_dir, max_networks=1)
    try:
        client = containerd.start()
    except BaseException:
        containerd.stop()
        raise
    try:
        containerd.import_image(archive)
        yield containerd, client
    finally:
        for sandbox in client.sandbox_ids():
            try:
                client.stop_pod(sandbox)
                client.remove_pod(sandbox)
            except Exception:
                pass
        client.close()
        containerd.stop()
