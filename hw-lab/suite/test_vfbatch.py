"""nodeagent's batch VF setter (nodeagent.vfbatch, native/vfset.c) against real drivers, read
back through discovery's decoder (nodeagent.netlink). netdevsim takes every knob, 802.1ad
included; igb knows only 802.1Q VLANs.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hwlab import netns
from hwlab.guard import PF, NetdevsimDevice
from pyroute2 import IPRoute

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from nodeagent import vfbatch  # noqa: E402
from nodeagent.model import VfConfig  # noqa: E402
from nodeagent.netlink import Netlink  # noqa: E402
from nodeagent.vfbatch import VfBatchError, VfUpdate  # noqa: E402


def ifindex(netdev: str) -> int:
    with IPRoute() as ipr:
        return netns.index(ipr, netdev)


def configs(netdev: str) -> dict[int, VfConfig]:
    with Netlink() as netlink:
        return netlink.vf_configs(ifindex(netdev))


@pytest.fixture
def nsim(netdevsims: list[NetdevsimDevice]) -> Iterator[NetdevsimDevice]:
    """The inventory's first netdevsim device with 2 VFs (none again afterwards)."""
    dev = netdevsims[0]
    numvfs = dev.path / "sriov_numvfs"
    numvfs.write_text("0")
    numvfs.write_text("2")
    try:
        yield dev
    finally:
        numvfs.write_text("0")


def test_every_setting_round_trips_on_netdevsim(nsim: NetdevsimDevice) -> None:
    index = ifindex(nsim.netdev)
    batch = [
        VfUpdate(0, mac="02:00:5e:00:53:10", vlan=100, qos=3, vlan_proto="802.1ad",
                   spoofchk=True, trust=True, min_tx_rate=10, max_tx_rate=200,
                   link_state="disable"),
        VfUpdate(1, mac="02:00:5e:00:53:11", vlan=4000, qos=0, vlan_proto="802.1Q",
                   spoofchk=False, trust=False, min_tx_rate=0, max_tx_rate=50,
                   link_state="enable"),
    ]

    results = vfbatch.apply(index, batch)

    assert all(r.ok for r in results), [str(r) for r in results]
    assert [r.applied for r in results] == [vfbatch.SETTINGS] * 2
    got = configs(nsim.netdev)
    assert got[0] == VfConfig(mac="02:00:5e:00:53:10", vlan=100, qos=3, vlan_proto="802.1ad",
                              spoofchk=True, trust=True, min_tx_rate=10, max_tx_rate=200,
                              link_state="disable")
    assert got[1] == VfConfig(mac="02:00:5e:00:53:11", vlan=4000, qos=0, vlan_proto="802.1Q",
                              spoofchk=False, trust=False, min_tx_rate=0, max_tx_rate=50,
                              link_state="enable")

    (cleared,) = vfbatch.apply(index, [VfUpdate(0, vlan=0)])

    assert cleared.ok
    after = configs(nsim.netdev)
    assert (after[0].vlan, after[0].qos, after[0].vlan_proto) == (0, 0, "802.1Q")
    assert after[0].mac == "02:00:5e:00:53:10" and after[1] == got[1], "only the VLAN changed"


def test_settings_read_back_put_a_vf_back_as_it_was(nsim: NetdevsimDevice) -> None:
    """What CNI DEL and provisioning rely on: VfUpdate.restoring of what the PF reported
    restores it, 802.1ad included."""
    index = ifindex(nsim.netdev)
    vfbatch.apply(index, [VfUpdate(1, mac="02:00:5e:00:53:21", vlan=7, qos=2,
                                     vlan_proto="802.1ad", trust=True)])
    before = configs(nsim.netdev)[1]
    vfbatch.apply(index, [VfUpdate(1, mac="02:00:5e:00:53:22", vlan=9, trust=False,
                                     link_state="disable")])

    (restored,) = vfbatch.apply(index, [VfUpdate.restoring(1, before)])

    assert restored.ok, str(restored)
    assert configs(nsim.netdev)[1] == before


def test_a_vf_the_pf_does_not_have_is_refused_before_anything_changes(
        nsim: NetdevsimDevice) -> None:
    index = ifindex(nsim.netdev)
    before = configs(nsim.netdev)

    with pytest.raises(VfBatchError, match=r"VF 5 out of range: the PF .* has 2 VFs"):
        vfbatch.apply(index, [VfUpdate(0, trust=True), VfUpdate(5, trust=True)])

    assert configs(nsim.netdev) == before
    assert vfbatch.num_vfs(index) == 2


def require_igb(pf: PF) -> None:
    if pf.spec.driver != "igb":
        pytest.skip(f"{pf.pci} runs {pf.spec.driver}; only igb is known to refuse 802.1ad")


def test_igb_refuses_8021ad_and_nothing_else_changes(pf: PF, make_vfs) -> None:
    require_igb(pf)
    make_vfs(pf, 2)
    index = ifindex(pf.netdev)
    before = configs(pf.netdev)

    results = vfbatch.apply(index, [
        VfUpdate(0, vlan=100, vlan_proto="802.1ad"),
        VfUpdate(1, mac="02:00:5e:00:53:31", vlan=200, spoofchk=False, trust=True),
    ])

    refused = results[0].failure("vlan")
    assert refused is not None and refused.errno == errno.EPROTONOSUPPORT, str(results[0])
    assert "vlan 100 qos 0 (802.1ad)" in str(results[0])
    assert results[0].applied == () and results[1].ok, [str(r) for r in results]
    after = configs(pf.netdev)
    assert after[0] == before[0], "VF 0 untouched: no VLAN, not even as 802.1Q"
    assert (after[1].mac, after[1].vlan, after[1].spoofchk, after[1].trust) == (
        "02:00:5e:00:53:31", 200, False, True)


def test_igb_applies_what_it_accepts_and_names_what_it_refused(pf: PF, make_vfs) -> None:
    """One message with all of a VF's settings stops at the refused one; the setter then
    tries each setting alone, so the answer is per setting and truthful."""
    require_igb(pf)
    make_vfs(pf, 1)
    index = ifindex(pf.netdev)

    (result,) = vfbatch.apply(index, [VfUpdate(0, mac="02:00:5e:00:53:41", vlan=30,
                                                 vlan_proto="802.1ad", trust=True,
                                                 link_state="disable")])

    assert [(f.setting, f.errno) for f in result.failed] == [
        ("vlan", errno.EPROTONOSUPPORT), ("link_state", errno.EOPNOTSUPP)]
    assert result.applied == ("mac", "trust")
    got = configs(pf.netdev)[0]
    assert (got.mac, got.vlan, got.trust) == ("02:00:5e:00:53:41", 0, True)


def test_one_batch_configures_every_vf_of_a_pf(pf: PF, make_vfs) -> None:
    count = pf.spec.max_vfs
    make_vfs(pf, count)
    index = ifindex(pf.netdev)
    batch = [VfUpdate(vf, mac=f"02:00:5e:00:54:{vf:02x}", vlan=100 + vf, qos=vf % 8,
                        spoofchk=vf % 2 == 0, trust=vf % 2 == 1) for vf in range(count)]

    results = vfbatch.apply(index, batch)

    assert all(r.ok for r in results), [str(r) for r in results]
    got = configs(pf.netdev)
    assert [(got[s.vf].mac, got[s.vf].vlan, got[s.vf].qos, got[s.vf].spoofchk,
             got[s.vf].trust) for s in batch] == [
        (s.mac, s.vlan, s.qos, s.spoofchk, s.trust) for s in batch]
