"""The node policy file: parsing, validation messages, selection and MAC schemes."""

from __future__ import annotations

import json

import pytest

from nodeagent.discovery import Scanner
from nodeagent.provision.policy import (
    MAC_DERIVED,
    VFIO,
    PolicyError,
    derived_mac,
    parse,
    vf_mac,
)
from nodeagent.sysfs import Sysfs
from tests.sysfs_tree import SysfsTree

EXAMPLE = """
pfs:
  - name: fronthaul
    nicSelector: {pfNames: [ens1f0], vendor: "0x8086"}
    numVfs: 6
    mtu: 9000
    vfDefaults: {mac: derived, spoofchk: true, trust: false, vlan: 100, qos: 2}
    vfGroups:
      - {vfs: "0-1,4", driver: vfio-pci, trust: true}
  - name: midhaul
    nicSelector: {rootDevices: ["0000:81:00.0"]}
    numVfs: 2
    externallyManaged: true
"""


def test_example_policy_reads_as_written() -> None:
    policy = parse(EXAMPLE)
    front, mid = policy.pfs
    assert (front.name, front.num_vfs, front.mtu) == ("fronthaul", 6, 9000)
    assert front.selector.pf_names == ("ens1f0",) and front.selector.vendor == "8086"
    dpdk = front.vf_settings(4)
    assert (dpdk.driver, dpdk.pf_side.trust, dpdk.pf_side.spoofchk, dpdk.pf_side.vlan,
            dpdk.pf_side.qos, dpdk.mac) == (
        VFIO, True, True, 100, 2, MAC_DERIVED), "a group inherits the defaults it does not set"
    kernel = front.vf_settings(2)
    assert (kernel.driver, kernel.pf_side.trust) == ("kernel", False)
    assert mid.externally_managed and mid.selector.root_devices == ("0000:81:00.0",)


def test_json_is_accepted_too() -> None:
    doc = {"pfs": [{"nicSelector": {"pfNames": ["ens2"]}, "numVfs": 1}]}
    (pf,) = parse(json.dumps(doc)).pfs
    assert pf.name == "pfs[0]" and pf.num_vfs == 1


@pytest.mark.parametrize(("text", "message"), [
    ("pfs: [{numVfs: 2}]", "pfs[0]: nicSelector is required"),
    ("pfs: [{nicSelector: {pfNames: [a]}}]", "pfs[0]: numVfs is required"),
    ("pfs: [{nicSelector: {}, numVfs: 1}]", "selects nothing"),
    ("pfs: [{nicSelector: {pfNames: [a]}, numVfs: -1}]", "numVfs: must be an integer"),
    ("pfs: [{nicSelector: {pfNames: [a]}, numVfs: 2, numvfs: 2}]", "unknown field(s) numvfs"),
    ("pfs: [{nicSelector: {pfNames: ['a#0-3']}, numVfs: 4}]", "VF ranges go in vfGroups"),
    ("pfs: [{nicSelector: {rootDevices: ['41:00.0']}, numVfs: 4}]", "is not a PCI address"),
    ("pfs: [{nicSelector: {vendor: intel}, numVfs: 4}]", "nicSelector.vendor: must be 4 hex"),
    ("pfs: [{nicSelector: {pfNames: [a]}, numVfs: 4, vfGroups: [{vfs: '2-5'}]}]",
     "2-5 is not within the PF's VFs 0-3"),
    ("pfs: [{nicSelector: {pfNames: [a]}, numVfs: 4, vfGroups: [{vfs: '0-1'}, {vfs: 1}]}]",
     "VF(s) [1] are in an earlier group"),
    ("pfs: [{nicSelector: {pfNames: [a]}, numVfs: 4, vfDefaults: {driver: 'vfio pci'}}]",
     "vfDefaults.driver"),
    ("pfs: [{nicSelector: {pfNames: [a]}, numVfs: 4, vfDefaults: {mac: '01:00:00:00:00:00'}}]",
     "unicast base MAC"),
    ("pfs: [{nicSelector: {pfNames: [a]}, numVfs: 4, vfDefaults: {vlan: 4095}}]",
     "vlan: must be an integer from 0 to 4094"),
    ("pfs: [{nicSelector: {pfNames: [a]}, numVfs: 4, vfDefaults: {vlanProto: '802.1x'}}]",
     "vlanProto"),
    ("pfs: [{nicSelector: {pfNames: [a]}, numVfs: 4, vfDefaults: {trust: 'yes'}}]",
     "trust: must be true or false"),
    ("pfs: [{name: x, nicSelector: {pfNames: [a]}, numVfs: 1},"
     " {name: x, nicSelector: {pfNames: [b]}, numVfs: 1}]", "names must be unique"),
    ("pfs: {a: 1}", "pfs: must be a list"),
    ("pfs: [", "not valid YAML or JSON"),
])
def test_invalid_policies_name_the_field(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse(text)
    assert message in str(err.value)


def test_selector_fields_must_all_match(tree: SysfsTree) -> None:
    tree.add_pf("0000:41:00.0", "igb", netdev="ens1")
    tree.add_pf("0000:81:00.0", "ice", netdev="ens2")
    node = Scanner(Sysfs(tree.root), hostname="w1").scan()
    policy = parse("""
pfs:
  - {name: by-name, nicSelector: {pfNames: [ens1, ens9]}, numVfs: 1}
  - {name: by-id, nicSelector: {vendor: "8086", deviceID: "1592"}, numVfs: 1}
  - {name: both-wrong, nicSelector: {pfNames: [ens1], deviceID: "1592"}, numVfs: 1}
  - {name: by-address, nicSelector: {rootDevices: ["0000:81:00.0"]}, numVfs: 1}
""")
    igb, ice = node.nic("0000:41:00.0"), node.nic("0000:81:00.0")
    assert [p.name for p in policy.select(igb)] == ["by-name"]
    assert [p.name for p in policy.select(ice)] == ["by-id", "by-address"]


def test_mac_schemes() -> None:
    a = derived_mac("worker-1", "0000:41:00.0", 3)
    assert a == derived_mac("worker-1", "0000:41:00.0", 3), "stable across restarts"
    assert a.startswith("02:") and a.endswith(":03"), "locally administered, unicast, VF index"
    assert derived_mac("worker-2", "0000:41:00.0", 3) != a, "another node, another MAC"
    assert derived_mac("worker-1", "0000:81:00.0", 3) != a, "another PF, another MAC"
    assert vf_mac("02:aa:00:00:00:fe", "w", "p", 3) == "02:aa:00:00:01:01"
    assert vf_mac("keep", "w", "p", 3) is None
