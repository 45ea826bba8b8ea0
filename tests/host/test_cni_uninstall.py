"""After `cni uninstall` the node's plugins work again: a network the shim answered with "try
again later" (agent gone) gets a real macvlan from the restored reference plugin."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from cni.install import install, uninstall
from cni.shim import shim_path
from tests.host.cni_helpers import REFERENCE_BIN, run_plugin

pytestmark = pytest.mark.skipif(not (REFERENCE_BIN / "macvlan").exists(),
                                reason="reference CNI plugins not in /usr/lib/cni")


def test_restored_macvlan_attaches_a_pod_where_the_shim_said_try_again(
        tmp_path: Path, master: str, ipr: IPRoute, test_netns: str) -> None:
    bindir = tmp_path / "bin"
    shutil.copytree(REFERENCE_BIN, bindir)
    conf = {"cniVersion": "1.0.0", "name": "macnet", "type": "macvlan", "master": master,
            "ipam": {"type": "static", "addresses": [{"address": "10.77.0.5/24"}]}}
    pod = f"/run/netns/{test_netns}"
    gone = {"NODEAGENT_SOCKET": str(tmp_path / "no-agent.sock")}

    install(bindir, shim_path(), fallback=False)
    out = run_plugin(bindir / "macvlan", "ADD", conf, netns=pod, path=bindir, env=gone)
    assert out.status != 0 and out.doc["code"] == 11  # the shim, its agent gone
    assert not ipr.link_lookup(ifname="net1")

    uninstall(bindir)
    out = run_plugin(bindir / "macvlan", "ADD", conf, netns=pod, path=bindir, env=gone)
    assert out.status == 0, out.stderr or out.stdout
    (index,) = ipr.link_lookup(ifname="net1")
    assert "10.77.0.5" in [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index)]
    out = run_plugin(bindir / "macvlan", "DEL", conf, netns=pod, path=bindir, env=gone)
    assert out.status == 0, out.stderr
    assert not ipr.link_lookup(ifname="net1")
