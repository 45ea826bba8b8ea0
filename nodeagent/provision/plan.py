"""From a PF's current state and its policy to what must change: pure decisions, no I/O.

A plan is ordered: the PF's link up (when it is to have VFs) and MTU, then ``sriov_numvfs``
(after which the PF is read again and planned anew: its VFs are new), then the PF-side VF
settings as one batch, then driver binds.
The admin MAC goes before the bind, because kernel VF drivers such as igbvf read it only when
they probe; a VF already on its kernel driver is rebound after its MAC changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from nodeagent.model import Nic, VfConfig, VirtualFunction
from nodeagent.provision.policy import KERNEL, VFIO, PfPolicy
from nodeagent.status import APPLYING, BLOCKED, FAILED, IN_SYNC, VERIFY_ONLY
from nodeagent.vfbatch import VfBatchError, VfUpdate


@dataclass(frozen=True)
class SetMtu:
    mtu: int

    def describe(self, nic: Nic) -> str:
        return f"MTU {nic.netdevs[0].mtu if nic.netdevs else '?'} -> {self.mtu}"


@dataclass(frozen=True)
class SetUp:
    """Bring the PF's netdev administratively up: VFs of a down PF have no link, and kernel VF
    drivers such as igbvf cannot even fetch their MAC from it."""

    def describe(self, nic: Nic) -> str:
        return f"{nic.name} up"


@dataclass(frozen=True)
class SetNumVfs:
    count: int
    #: Create the VFs with driver autoprobe off, so MACs are set before any driver binds.
    hold_probe: bool

    def describe(self, nic: Nic) -> str:
        current = nic.sriov.numvfs if nic.sriov else 0
        return f"numVfs {current} -> {self.count}"


@dataclass(frozen=True)
class SetVfs:
    """PF-side settings of the PF's VFs, sent as one batch (nodeagent.vfbatch)."""

    changes: tuple[VfUpdate, ...]

    def describe(self, nic: Nic) -> str:
        return "; ".join(f"VF {c.vf} {', '.join(c.requested())}" for c in self.changes)


@dataclass(frozen=True)
class Bind:
    index: int
    pci: str
    driver: str
    current: str | None

    def describe(self, nic: Nic) -> str:
        if self.current == self.driver:
            return f"VF {self.index} rebind to {self.driver} (new MAC)"
        return f"VF {self.index} driver {self.current or 'none'} -> {self.driver}"


Action = SetUp | SetMtu | SetNumVfs | SetVfs | Bind


@dataclass(frozen=True)
class Decision:
    state: str
    reason: str = ""
    actions: tuple[Action, ...] = ()
    #: The PF is as the policy says (in sync, or externally managed and matching).
    matches: bool = False


@dataclass(frozen=True)
class Facts:
    """What planning needs beyond the PF record."""

    hostname: str
    #: VF PCI address -> why a pod holds it
    in_use: Mapping[str, str] = field(default_factory=dict)
    #: The kernel VF driver of a VF (PCI address) -> name, None when unknown
    kernel_driver: Callable[[str], str | None] = lambda _pci: None
    #: The PF netdev is administratively up (IFF_UP); None when it has no netdev here
    pf_up: bool | None = True


def decide(nic: Nic, policy: PfPolicy, facts: Facts) -> Decision:
    sriov = nic.sriov
    if sriov is None:
        return Decision(FAILED, "not an SR-IOV PF")
    if policy.num_vfs > sriov.totalvfs:
        return Decision(FAILED, f"numVfs {policy.num_vfs} exceeds sriov_totalvfs"
                                f" {sriov.totalvfs}")
    try:
        actions = _actions(nic, policy, facts)
    except VfBatchError as exc:  # the PF reports a VF setting the batch cannot send back
        return Decision(FAILED, str(exc))
    described = "; ".join(a.describe(nic) for a in actions)
    if policy.externally_managed:
        if actions:
            return Decision(VERIFY_ONLY, f"differs from the policy: {described}")
        return Decision(VERIFY_ONLY, "matches the policy", matches=True)
    if not actions:
        return Decision(IN_SYNC, matches=True)
    if nic.default_route and not policy.allow_default_route:
        return Decision(BLOCKED, "carries the node's default route (set allowDefaultRoute to"
                                 f" manage it); would change: {described}")
    held = [vf.pci.address for vf in sriov.vfs if vf.pci.address in facts.in_use]
    if any(isinstance(a, SetNumVfs) for a in actions) and held:
        why = ", ".join(f"{a} ({facts.in_use[a]})" for a in held)
        return Decision(BLOCKED, f"numVfs {sriov.numvfs} -> {policy.num_vfs} waits: VFs in use"
                                 f" by pods: {why}")
    return Decision(APPLYING, described, tuple(actions))


def _actions(nic: Nic, policy: PfPolicy, facts: Facts) -> list[Action]:
    assert nic.sriov is not None
    actions: list[Action] = []
    if policy.num_vfs and facts.pf_up is False:
        actions.append(SetUp())
    if policy.mtu and nic.netdevs and nic.netdevs[0].mtu != policy.mtu:
        actions.append(SetMtu(policy.mtu))
    if nic.sriov.numvfs != policy.num_vfs:
        hold = any(_wants_probe_hold(policy, i) for i in range(policy.num_vfs))
        actions.append(SetNumVfs(policy.num_vfs, hold))
        return actions  # the VFs change: plan the rest on the new ones
    changes, binds = [], []
    for vf in nic.sriov.vfs:
        if vf.pci.address in facts.in_use:
            continue  # a pod's VF: its settings belong to the attachment now
        change = _vf_change(nic, vf, policy, facts)
        if change.requested():
            changes.append(change)
        bind = _bind(vf, policy, facts, mac_changed=change.mac is not None)
        if bind is not None:
            binds.append(bind)
    if changes:
        actions.append(SetVfs(tuple(changes)))
    actions.extend(binds)
    return actions


def _wants_probe_hold(policy: PfPolicy, index: int) -> bool:
    settings = policy.vf_settings(index)
    return settings.mac != "keep" or settings.driver != KERNEL


def _vf_change(nic: Nic, vf: VirtualFunction, policy: PfPolicy, facts: Facts) -> VfUpdate:
    """What the VF's PF-side settings lack of the policy's (all of it when the PF reports
    nothing for the VF)."""
    assert nic.pci is not None
    want = policy.vf_settings(vf.index).desired(facts.hostname, nic.pci.address, vf.index)
    return VfUpdate.towards(vf.index, want, vf.config or VfConfig())


def _bind(vf: VirtualFunction, policy: PfPolicy, facts: Facts, mac_changed: bool
          ) -> Bind | None:
    want = policy.vf_settings(vf.index).driver
    current = vf.pci.driver
    if want == KERNEL:
        resolved = facts.kernel_driver(vf.pci.address)
        if resolved is None:  # unknown: the driver it is on will do, unless none or vfio-pci
            if current in (None, VFIO):
                return Bind(vf.index, vf.pci.address, KERNEL, current)  # fails, naming why
            want = current
        else:
            want = resolved
    if current != want:
        return Bind(vf.index, vf.pci.address, want, current)
    if mac_changed and want != VFIO:
        return Bind(vf.index, vf.pci.address, want, current)
    return None
