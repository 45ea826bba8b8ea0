"""GetPreferredAllocation's choice. The criteria, in order:

1. the must-include devices the kubelet names;
2. NUMA: devices on the must-include devices' node(s), else on the node that can give the
   most; another node only when that one runs out (a NUMA-aware choice is never traded for
   the criteria below);
3. distinct PFs: when a pod asks for two or more VFs, a VF on a PF the allocation does not
   use yet comes before a second VF on a PF it uses, so a pair lands on two PFs whenever the
   chosen NUMA node has two (a bond of the pair then survives one PF going down);
4. the policy, for what is left: ``pack`` fills the PFs already in use, then those with most
   free VFs (the fewest PFs); ``spread`` takes from the least used PF.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from deviceplugin.pools import PoolDevice

POLICIES = ("pack", "spread")


def preferred(
    devices: Mapping[str, PoolDevice],
    available: Iterable[str],
    must_include: Iterable[str],
    size: int,
    policy: str = "pack",
) -> list[str]:
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
    chosen = list(dict.fromkeys(must_include))
    taken = set(chosen)
    remaining = [
        d for d in dict.fromkeys(available)
        if d not in taken and d in devices and devices[d].healthy
    ]
    numas = {devices[d].numa_node for d in chosen if d in devices}
    if not numas and remaining:
        # No anchor: the NUMA node that can give the most devices.
        counts = Counter(devices[d].numa_node for d in remaining)
        numas = {max(counts, key=lambda n: (counts[n], -(n if n is not None else -1)))}
    used = Counter(devices[d].pf for d in chosen if d in devices)
    free = Counter(devices[d].pf for d in remaining)

    def rank(device_id: str) -> tuple[object, ...]:
        device = devices[device_id]
        tier = 0 if device.numa_node in numas else 1
        repeat = 1 if size >= 2 and used[device.pf] else 0
        if policy == "pack":
            return (tier, repeat, -used[device.pf], -free[device.pf], device.pf, device_id)
        return (tier, repeat, used[device.pf], -free[device.pf], device.pf, device_id)

    while len(chosen) < size and remaining:
        best = min(remaining, key=rank)
        remaining.remove(best)
        chosen.append(best)
        used[devices[best].pf] += 1
        free[devices[best].pf] -= 1
    return chosen
