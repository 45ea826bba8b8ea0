"""PF-side VF settings over rtnetlink, read back from the PF's IFLA_VFINFO_LIST."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from hwlab import netns, sriov
from hwlab.guard import PF
from hwlab.sriov import VFOwner
from hwlab.sysfs import Sysfs, wait_for
from hwlab.vfconfig import set_vf, vf_info
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

MAC = "02:00:5e:00:53:01"
# setting -> (pyroute2 vf= arguments, {key read back: expected value}); then the reset.
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "mac": ({"mac": MAC}, {"mac": MAC}, {}),
    "vlan": ({"vlan": {"vlan": 100, "qos": 3}}, {"vlan": 100, "qos": 3}, {"vlan": 0}),
    "spoofchk": ({"spoofchk": 0}, {"spoofchk": 0}, {"spoofchk": 1}),
    "trust": ({"trust": 1}, {"trust": 1}, {"trust": 0}),
    "max_tx_rate": (
        {"rate": {"min_tx_rate": 0, "max_tx_rate": 100}}, {"max_tx_rate": 100},
        {"rate": {"min_tx_rate": 0, "max_tx_rate": 0}},
    ),
    "link_state": ({"link_state": 2}, {"link_state": 2}, {"link_state": 0}),  # 2 = disable
}


@pytest.mark.parametrize("setting", sorted(CASES))
def test_vf_setting_read_back(vf_owner: VFOwner, setting: str) -> None:
    if setting not in vf_owner.settings | vf_owner.unsupported:
        pytest.skip(f"inventory says nothing about {setting} on {vf_owner.label}")
    vf = vf_owner.enable(1)[0]
    if setting == "max_tx_rate":
        netns.up_with_carrier(vf_owner.netdev)  # igb: EINVAL while the PF link is down
    apply, expected, reset = CASES[setting]
    with IPRoute() as ipr:
        idx = netns.index(ipr, vf_owner.netdev)
        if setting in vf_owner.unsupported:
            with pytest.raises(NetlinkError) as info:
                set_vf(ipr, idx, vf, **apply)
            assert info.value.code == errno.EOPNOTSUPP
            return
        set_vf(ipr, idx, vf, **apply)
        got = vf_info(ipr, idx)[vf]
        assert {k: got[k] for k in expected} == expected
        if reset:
            set_vf(ipr, idx, vf, **reset)
            after = vf_info(ipr, idx)[vf]
            key = next(iter(expected))
            assert after[key] != expected[key]


def test_vf_netdev_takes_admin_mac_after_rebind(pf: PF, sysfs: Sysfs, make_vfs) -> None:
    """What the SR-IOV CNI does: set the MAC on the PF, then (re)bind the VF driver."""
    if "mac" not in pf.spec.vf_settings:
        pytest.skip(f"inventory does not list mac for {pf.pci}")
    vf = make_vfs(pf, 1)[0]
    with IPRoute() as ipr:
        set_vf(ipr, netns.index(ipr, pf.netdev), vf.index, mac=MAC)
    netdev = sriov.rebind(sysfs, vf.pci, pf.spec.vf_driver)
    address = Path("/sys/class/net") / netdev / "address"
    wait_for(f"{netdev} to take {MAC}", lambda: address.read_text().strip() == MAC)
