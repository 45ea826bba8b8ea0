"""Eswitch mode over devlink, on the inventory's netdevsim devices."""

from __future__ import annotations

import pytest
from hwlab import sriov
from hwlab.sysfs import wait_for
from hwlab.vfconfig import eswitch_mode, set_eswitch_mode, vf_ports


def test_netdevsim_eswitch_switchdev_and_back(netdevsims) -> None:
    if not netdevsims:
        pytest.skip("inventory names no netdevsim device")
    dev = netdevsims[0]
    numvfs = dev.path / "sriov_numvfs"
    numvfs.write_text(str(dev.spec.max_vfs))
    try:
        assert eswitch_mode("netdevsim", dev.devlink_name) == "legacy"
        assert vf_ports("netdevsim", dev.devlink_name) == []

        set_eswitch_mode("netdevsim", dev.devlink_name, "switchdev")
        assert eswitch_mode("netdevsim", dev.devlink_name) == "switchdev"
        sriov.settle()
        ports = wait_for(
            "VF representor ports", lambda: vf_ports("netdevsim", dev.devlink_name) or None
        )
        assert [p["vf"] for p in ports] == list(range(dev.spec.max_vfs))
        assert all(p["netdev"] for p in ports)

        set_eswitch_mode("netdevsim", dev.devlink_name, "legacy")
        assert eswitch_mode("netdevsim", dev.devlink_name) == "legacy"
        assert vf_ports("netdevsim", dev.devlink_name) == []
    finally:
        set_eswitch_mode("netdevsim", dev.devlink_name, "legacy")
        numvfs.write_text("0")
