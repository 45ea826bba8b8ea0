"""The reconciler's decisions: from a PF as discovery reads it and a policy to actions."""

from __future__ import annotations

from dataclasses import replace

from nodeagent.discovery import Scanner
from nodeagent.model import Nic, VfConfig
from nodeagent.provision.plan import (
    Bind,
    Facts,
    SetMtu,
    SetNumVfs,
    SetUp,
    SetVfs,
    decide,
)
from nodeagent.provision.policy import derived_mac, parse
from nodeagent.status import APPLYING, BLOCKED, FAILED, IN_SYNC, VERIFY_ONLY
from nodeagent.sysfs import Sysfs
from nodeagent.vfbatch import VfUpdate
from tests.sysfs_tree import SysfsTree

PF = "0000:41:00.0"
FACTS = Facts(hostname="w1", kernel_driver=lambda _pci: "igbvf")


def igb_pf(tree: SysfsTree, numvfs: int, vfio: tuple[int, ...] = (), **config: object) -> Nic:
    """An igb PF as discovery reads it; every VF reports ``config`` (VfConfig fields)."""
    tree.add_pf(PF, "igb", netdev="ens1", numvfs=numvfs, vfio=vfio)
    nic = Scanner(Sysfs(tree.root), hostname="w1").scan().nic(PF)
    assert nic is not None and nic.sriov is not None
    vfs = tuple(replace(vf, config=VfConfig(**config)) for vf in nic.sriov.vfs)  # type: ignore
    return replace(nic, sriov=replace(nic.sriov, vfs=vfs))


def policy(body: str):
    return parse(f"pfs: [{{nicSelector: {{pfNames: [ens1]}}, {body}}}]").pfs[0]


def test_vf_count_first_then_the_rest_on_the_new_vfs(tree: SysfsTree) -> None:
    nic = igb_pf(tree, 0)
    d = decide(nic, policy("numVfs: 4, mtu: 9000, vfDefaults: {mac: derived}"), FACTS)
    assert d.state == APPLYING
    assert d.actions == (SetMtu(9000), SetNumVfs(4, hold_probe=True)), \
        "MACs must be set before a driver binds: VFs are created with autoprobe held"
    plain = decide(nic, policy("numVfs: 4"), FACTS)
    assert plain.actions == (SetNumVfs(4, hold_probe=False),)


def test_settings_batch_then_binds_with_rebind_after_a_new_mac(tree: SysfsTree) -> None:
    nic = igb_pf(tree, 3, vfio=(2,), mac="02:00:00:00:00:00", spoofchk=True, trust=False)
    p = policy("numVfs: 3, vfDefaults: {mac: derived, trust: true, spoofchk: true},"
               " vfGroups: [{vfs: '1-2', driver: vfio-pci}]")
    d = decide(nic, p, FACTS)
    assert d.state == APPLYING
    setvfs, *binds = d.actions
    assert setvfs == SetVfs(tuple(
        VfUpdate(i, mac=derived_mac("w1", PF, i), trust=True) for i in range(3))), \
        "only what differs: spoofchk is already on"
    vf = {v.index: v.pci.address for v in nic.sriov.vfs}
    assert binds == [Bind(0, vf[0], "igbvf", "igbvf"),  # igbvf reads its MAC at probe only
                     Bind(1, vf[1], "vfio-pci", "igbvf")]  # VF 2 is on vfio-pci already


def test_a_matching_pf_needs_nothing(tree: SysfsTree) -> None:
    nic = igb_pf(tree, 2, vfio=(1,), mac=derived_mac("w1", PF, 0), vlan=7, qos=1, trust=True)
    nic = replace(nic, sriov=replace(nic.sriov, vfs=(  # type: ignore[arg-type]
        nic.sriov.vfs[0],
        replace(nic.sriov.vfs[1], config=replace(nic.sriov.vfs[1].config,
                                                  mac=derived_mac("w1", PF, 1))))))
    p = policy("numVfs: 2, vfDefaults: {mac: derived, vlan: 7, qos: 1, trust: true},"
               " vfGroups: [{vfs: 1, driver: vfio-pci}]")
    d = decide(nic, p, FACTS)
    assert (d.state, d.actions, d.matches) == (IN_SYNC, (), True)


def test_vlan_change_carries_qos_and_proto(tree: SysfsTree) -> None:
    nic = igb_pf(tree, 1, vlan=7, qos=3)
    (setvfs,) = decide(nic, policy("numVfs: 1, vfDefaults: {vlan: 8}"), FACTS).actions
    assert setvfs == SetVfs((VfUpdate(0, vlan=8, qos=3, vlan_proto="802.1Q"),))


def test_vfs_in_use_block_a_count_change_and_are_left_alone(tree: SysfsTree) -> None:
    nic = igb_pf(tree, 3, trust=False)
    held = nic.sriov.vfs[1].pci.address
    facts = replace(FACTS, in_use={held: "attached by CNI to abc/net1"})
    d = decide(nic, policy("numVfs: 2"), facts)
    assert d.state == BLOCKED and not d.actions
    assert held in d.reason and "attached by CNI to abc/net1" in d.reason
    d = decide(nic, policy("numVfs: 3, vfDefaults: {trust: true}"), facts)
    assert d.actions == (SetVfs((VfUpdate(0, trust=True), VfUpdate(2, trust=True))),)


def test_default_route_pf_is_not_touched_unless_allowed(tree: SysfsTree) -> None:
    nic = igb_pf(tree, 0)
    nic = replace(nic, netdevs=(replace(nic.netdevs[0], default_route=True),))
    d = decide(nic, policy("numVfs: 2"), FACTS)
    assert d.state == BLOCKED and "default route" in d.reason and not d.actions
    assert decide(nic, policy("numVfs: 0"), FACTS).state == IN_SYNC, "nothing to change: fine"
    d = decide(nic, policy("numVfs: 2, allowDefaultRoute: true"), FACTS)
    assert d.state == APPLYING


def test_externally_managed_only_reports(tree: SysfsTree) -> None:
    nic = igb_pf(tree, 2)
    d = decide(nic, policy("numVfs: 4, externallyManaged: true"), FACTS)
    assert (d.state, d.actions, d.matches) == (VERIFY_ONLY, (), False)
    assert "numVfs 2 -> 4" in d.reason
    d = decide(nic, policy("numVfs: 2, externallyManaged: true"), FACTS)
    assert (d.state, d.matches) == (VERIFY_ONLY, True)


def test_more_vfs_than_the_pf_has_fails(tree: SysfsTree) -> None:
    d = decide(igb_pf(tree, 0), policy("numVfs: 8"), FACTS)
    assert d.state == FAILED and "exceeds sriov_totalvfs 7" in d.reason


def test_unknown_kernel_driver_for_an_unbound_vf(tree: SysfsTree) -> None:
    nic = igb_pf(tree, 1)
    vf = nic.sriov.vfs[0]
    nic = replace(nic, sriov=replace(nic.sriov, vfs=(  # type: ignore[arg-type]
        replace(vf, pci=replace(vf.pci, driver=None), netdev=None),)))
    unknown = Facts(hostname="w1")
    (bind,) = decide(nic, policy("numVfs: 1"), unknown).actions
    assert bind == Bind(0, vf.pci.address, "kernel", None)
    assert decide(nic, policy("numVfs: 1"), FACTS).actions == (
        Bind(0, vf.pci.address, "igbvf", None),)


def test_a_down_pf_is_brought_up_before_its_vfs_are_made(tree: SysfsTree) -> None:
    nic = igb_pf(tree, 0)
    down = replace(FACTS, pf_up=False)
    assert decide(nic, policy("numVfs: 2"), down).actions == (SetUp(), SetNumVfs(2, False))
    assert decide(nic, policy("numVfs: 0"), down).state == IN_SYNC, "no VFs: left down"


def test_a_vf_setting_the_batch_cannot_send_fails_the_pf_not_the_pass(tree: SysfsTree) -> None:
    nic = igb_pf(tree, 1, vlan=5, vlan_proto="0x9100")

    d = decide(nic, policy("numVfs: 1, vfDefaults: {qos: 2}"), FACTS)

    assert d.state == FAILED and "vlan_proto '0x9100'" in d.reason and not d.actions
