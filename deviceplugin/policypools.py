"""Pools from the node policy's ``resourceName``s, in the model ``config.json`` pools use.

Each distinct resource name in the policy is one :class:`ResourceConfig` whose selectors name
exactly its VFs: the PF's PCI address with the VF indexes (below ``numVfs``), and for VFs the
policy puts on a named driver (``vfio-pci``, ``igbvf``...) that driver, so a VF is advertised
only once it is where the policy wants it. ``driver: kernel`` adds no driver condition (the
kernel picks the driver). Which PFs an entry selects depends on the node, so the selectors are
built per snapshot; the set of names depends on the policy only.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from deviceplugin.config import PluginConfig, ResourceConfig, Selector, VfRange
from nodeagent.model import Node
from nodeagent.provision.policy import KERNEL, PfPolicy, Policy

log = logging.getLogger(__name__)


def resource_names(policy: Policy | None) -> list[str]:
    """Full resource names the policy defines, in first-mention order."""
    if policy is None:
        return []
    names: dict[str, None] = {}
    for entry in policy.pfs:
        for name, _, _ in _vf_sets(entry):
            names.setdefault(f"{policy.resource_prefix}/{name}")
    return list(names)


def _vf_sets(entry: PfPolicy) -> list[tuple[str, frozenset[int], str | None]]:
    """(resource name, VF indexes, required driver or None) for one entry's named VFs."""
    out = []
    in_groups: set[int] = set()
    for group in entry.groups:
        in_groups |= group.vfs
        vfs = frozenset(i for i in group.vfs if i < entry.num_vfs)
        if group.resource_name and vfs:
            out.append((group.resource_name, vfs, _driver(group.settings.driver)))
    rest = frozenset(range(entry.num_vfs)) - in_groups
    if entry.resource_name and rest:
        out.append((entry.resource_name, rest, _driver(entry.defaults.driver)))
    return out


def _driver(driver: str) -> str | None:
    return None if driver == KERNEL else driver


def policy_resources(policy: Policy | None, node: Node) -> tuple[ResourceConfig, ...]:
    """One resource per name; a name whose PFs are not on the node has no selectors (empty).

    A PF selected by more than one entry is left out, as provisioning leaves it alone.
    """
    if policy is None:
        return ()
    ranges: dict[str, dict[tuple[str, str | None], set[int]]] = {
        name: defaultdict(set) for name in resource_names(policy)}
    for nic in node.pfs:
        entries = policy.select(nic)
        if len(entries) != 1:
            continue
        for name, vfs, driver in _vf_sets(entries[0]):
            ranges[f"{policy.resource_prefix}/{name}"][(nic.key, driver)] |= vfs
    resources = []
    for full_name, by_pf in ranges.items():
        selectors = tuple(
            Selector(root_devices=(VfRange(pf, frozenset(vfs)),),
                     drivers=(driver,) if driver else ())
            for (pf, driver), vfs in sorted(by_pf.items(), key=lambda kv: (kv[0][0],
                                                                           kv[0][1] or "")))
        resources.append(ResourceConfig(
            resource_name=full_name.split("/", 1)[1], resource_prefix=policy.resource_prefix,
            selectors=selectors))
    return tuple(resources)


def shadowed(config: PluginConfig, policy: Policy | None) -> list[str]:
    """Policy resource names that ``config.json`` defines too (config.json wins)."""
    defined = {r.full_name for r in config.resources}
    return [name for name in resource_names(policy) if name in defined]


def merged(config: PluginConfig, policy: Policy | None, node: Node) -> PluginConfig:
    """``config.json``'s resources, then the policy's that it does not define."""
    defined = {r.full_name for r in config.resources}
    extra = tuple(r for r in policy_resources(policy, node) if r.full_name not in defined)
    return PluginConfig(config.resources + extra)
