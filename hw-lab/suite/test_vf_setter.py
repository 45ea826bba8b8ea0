"""nodeagent's PF-side VF setter (nodeagent.rtnl.Rtnl.vf_set) against real drivers, read back
through discovery's decoder. netdevsim supports every knob, link state included.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hwlab.guard import NetdevsimDevice

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from nodeagent.netlink import Netlink  # noqa: E402
from nodeagent.rtnl import Rtnl  # noqa: E402


def test_every_setting_round_trips_on_netdevsim(netdevsims: list[NetdevsimDevice]) -> None:
    dev = netdevsims[0]
    numvfs = dev.path / "sriov_numvfs"
    numvfs.write_text("0")
    numvfs.write_text("2")
    try:
        with Rtnl() as rtnl, Netlink() as netlink:
            index = rtnl.link_index(dev.netdev)
            rtnl.vf_set(index, 1, "mac", "02:00:5e:00:53:77")
            rtnl.vf_set(index, 1, "vlan", (100, 3))
            rtnl.vf_set(index, 1, "spoofchk", True)
            rtnl.vf_set(index, 1, "trust", True)
            rtnl.vf_set(index, 1, "rate", (10, 200))
            rtnl.vf_set(index, 1, "link_state", 2)
            vf = netlink.vf_configs(index)[1]
            assert (vf.mac, vf.vlan, vf.qos, vf.vlan_proto) == ("02:00:5e:00:53:77", 100, 3,
                                                                 "802.1Q")
            assert (vf.spoofchk, vf.trust, vf.min_tx_rate, vf.max_tx_rate, vf.link_state) == (
                True, True, 10, 200, "disable")
            rtnl.vf_set(index, 1, "vlan", (0, 0))
            assert netlink.vf_configs(index)[1].vlan == 0
            assert netlink.vf_configs(index)[0].vlan == 0, "VF 0 untouched"
    finally:
        numvfs.write_text("0")
