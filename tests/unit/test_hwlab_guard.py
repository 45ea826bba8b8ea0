"""The hw-lab guard against a fixture sysfs and real links in test namespaces.

The "PF" is a veth end in a namespace this test creates (its peer lives in a second one); the
fixture sysfs maps an inventory PCI address to it. Nothing here touches the host's own links or
routes, and every namespace is removed even when a test fails.
"""

from __future__ import annotations

import secrets
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns

HWLAB = Path(__file__).resolve().parents[2] / "hw-lab"
sys.path.insert(0, str(HWLAB))

from hwlab.guard import Guard, GuardError  # noqa: E402
from hwlab.inventory import parse  # noqa: E402
from hwlab.sysfs import Sysfs  # noqa: E402

PCI = "0000:41:00.0"


@dataclass
class Lab:
    ns: str  # plays the host's namespace
    pf: str  # the PF's netdev (a veth end in ns)
    other: str  # an unrelated link in ns
    guard: Guard
    root: Path


def _fake_pci(root: Path, addr: str, vendor: str, device: str, driver: str, netdev: str) -> None:
    dev = root / "bus" / "pci" / "devices" / addr
    (dev / "net" / netdev).mkdir(parents=True)
    (dev / "vendor").write_text(f"0x{vendor}\n")
    (dev / "device").write_text(f"0x{device}\n")
    (dev / "sriov_totalvfs").write_text("7\n")
    drv = root / "bus" / "pci" / "drivers" / driver
    drv.mkdir(parents=True, exist_ok=True)
    (dev / "driver").symlink_to(drv)


def _inventory(**pf_changes):
    pf = {"pci": PCI, "vendor": "8086", "device": "10c9", "driver": "igb",
          "vf_device": "10ca", "vf_driver": "igbvf", "max_vfs": 2, **pf_changes}
    return parse({"name": "unit", "pfs": [pf]}, Path("unit.yaml"))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    tag = f"nahw{secrets.token_hex(3)}"
    host, far = f"{tag}h", f"{tag}f"
    created: list[str] = []
    try:
        for name in (host, far):
            netns.create(name)
            created.append(name)
        with IPRoute(netns=host) as ipr:
            for end in ("p", "o"):
                ipr.link("add", ifname=f"{tag}{end}", kind="veth",
                         peer={"ifname": f"{tag}{end}x", "net_ns_fd": far})
                ipr.link("set", index=ipr.link_lookup(ifname=f"{tag}{end}")[0], state="up")
        _fake_pci(tmp_path, PCI, "8086", "10c9", "igb", f"{tag}p")
        guard = Guard(_inventory(), Sysfs(tmp_path), netns=host)
        yield Lab(ns=host, pf=f"{tag}p", other=f"{tag}o", guard=guard, root=tmp_path)
    finally:
        for name in created:
            netns.remove(name)


def _idx(ipr: IPRoute, name: str) -> int:
    return ipr.link_lookup(ifname=name)[0]


def test_pf_without_default_route_is_handed_out(lab: Lab):
    pf = lab.guard.pf(PCI)
    assert (pf.pci, pf.netdev) == (PCI, lab.pf)
    assert lab.guard.pf_by_netdev(lab.pf) == pf


def test_devices_not_in_inventory_are_refused(lab: Lab):
    with pytest.raises(GuardError, match="not named by the inventory"):
        lab.guard.pf("0000:42:00.0")
    with pytest.raises(GuardError, match="not the netdev of an inventory PF"):
        lab.guard.pf_by_netdev(lab.other)
    with pytest.raises(GuardError, match="netdevsim7: not named"):
        lab.guard.netdevsim(7)


def test_mismatching_device_is_refused(lab: Lab):
    sysfs = Sysfs(lab.root)
    for changes, message in (
        ({"vendor": "15b3"}, "it is 8086:10c9, the inventory expects 15b3:10c9"),
        ({"device": "1592"}, "expects 8086:1592"),
        ({"driver": "ice"}, "bound to driver 'igb', the inventory expects 'ice'"),
    ):
        with pytest.raises(GuardError, match=message):
            Guard(_inventory(**changes), sysfs, netns=lab.ns).pf(PCI)
    missing = _inventory(pci="0000:43:00.0")
    with pytest.raises(GuardError, match="no such PCI device"):
        Guard(missing, sysfs, netns=lab.ns).pf("0000:43:00.0")


@pytest.mark.parametrize(("family", "dst"), [(socket.AF_INET, "0.0.0.0/0"),
                                             (socket.AF_INET6, "::/0")])
def test_pf_with_default_route_is_refused(lab: Lab, family: int, dst: str):
    with IPRoute(netns=lab.ns) as ipr:
        ipr.route("add", dst=dst, oif=_idx(ipr, lab.pf), family=family)
    with pytest.raises(GuardError, match=f"{lab.pf} carries the host's default route"):
        lab.guard.pf(PCI)


def test_default_route_via_gateway_in_another_table_is_refused(lab: Lab):
    with IPRoute(netns=lab.ns) as ipr:
        idx = _idx(ipr, lab.pf)
        ipr.addr("add", index=idx, address="198.51.100.2", prefixlen=24)
        ipr.route("add", dst="0.0.0.0/0", gateway="198.51.100.1", oif=idx, table=100)
    with pytest.raises(GuardError, match=f"carries the host's default route \\(via {lab.pf}\\)"):
        lab.guard.pf(PCI)


def test_default_route_on_a_bridge_over_the_pf_is_refused(lab: Lab):
    bridge = f"{lab.pf[:-1]}br"
    with IPRoute(netns=lab.ns) as ipr:
        ipr.link("add", ifname=bridge, kind="bridge")
        ipr.link("set", index=_idx(ipr, lab.pf), master=_idx(ipr, bridge))
        ipr.link("set", index=_idx(ipr, bridge), state="up")
        ipr.route("add", dst="0.0.0.0/0", oif=_idx(ipr, bridge))
    with pytest.raises(GuardError, match=f"via {bridge}"):
        lab.guard.pf(PCI)


def test_default_route_on_a_macvlan_of_the_pf_is_refused(lab: Lab):
    upper = f"{lab.pf[:-1]}mv"
    with IPRoute(netns=lab.ns) as ipr:
        ipr.link("add", ifname=upper, kind="macvlan", link=_idx(ipr, lab.pf),
                 macvlan_mode="bridge")
        ipr.link("set", index=_idx(ipr, upper), state="up")
        ipr.route("add", dst="::/0", oif=_idx(ipr, upper), family=socket.AF_INET6)
    with pytest.raises(GuardError, match=f"via {upper}"):
        lab.guard.pf(PCI)


def test_multipath_default_route_with_a_hop_on_the_pf_is_refused(lab: Lab):
    with IPRoute(netns=lab.ns) as ipr:
        hops = []
        for i, name in enumerate((lab.other, lab.pf)):
            idx = _idx(ipr, name)
            ipr.addr("add", index=idx, address=f"198.51.{100 + i}.2", prefixlen=24)
            hops.append({"gateway": f"198.51.{100 + i}.1", "oif": idx})
        ipr.route("add", dst="0.0.0.0/0", multipath=hops)
        assert ipr.get_default_routes(family=socket.AF_INET)[0].get_attr("RTA_MULTIPATH")
    with pytest.raises(GuardError, match=f"carries the host's default route \\(via {lab.pf}\\)"):
        lab.guard.pf(PCI)


def test_default_route_elsewhere_does_not_block_the_pf(lab: Lab):
    with IPRoute(netns=lab.ns) as ipr:
        ipr.route("add", dst="0.0.0.0/0", oif=_idx(ipr, lab.other))
        ipr.route("add", dst="::/0", oif=_idx(ipr, lab.other), family=socket.AF_INET6)
    assert lab.guard.pf(PCI).netdev == lab.pf
