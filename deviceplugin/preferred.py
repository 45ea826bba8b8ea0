"""GetPreferredAllocation's choice: must-include devices, then their NUMA node, then PFs.

``pack`` fills the fewest PFs (PFs already in use first, then those with most free VFs);
``spread`` takes one VF per PF in turn.
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
        if policy == "pack":
            return (tier, -used[device.pf], -free[device.pf], device.pf, device_id)
        return (tier, used[device.pf], -free[device.pf], device.pf, device_id)

    while len(chosen) < size and remaining:
        best = min(remaining, key=rank)
        remaining.remove(best)
        chosen.append(best)
        used[devices[best].pf] += 1
        free[devices[best].pf] -= 1
    return chosen
