"""Operator views the CLI wires up: a network's usage and reservations, and GC against a list
of live attachments."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from nodeagent.ipam.allocator import AttachmentRef, Ipam, attachment_key, default_ipam
from nodeagent.ipam.configtypes import IPAMConfig, IPNetwork, IPRange
from nodeagent.ipam.pool import PoolView
from nodeagent.ipam.store import Claim, Reservation
from nodeagent.ipam.whereabouts import ImportSummary, Objects, import_holdings


@dataclass(frozen=True)
class PoolUsage:
    range: IPRange
    size: int  # addresses in the window
    reserved: int  # never handed out: network, broadcast, gateway, exclude
    allocated: int  # held by attachments or sticky holds
    free: int


@dataclass(frozen=True)
class NetworkUsage:
    network: str
    datastore: str
    pools: tuple[PoolUsage, ...]
    reservations: tuple[Reservation, ...]  # every one in the store namespace, holds included
    #: A cluster store's block leases: (block, node), in address order; () for the file store.
    leases: tuple[tuple[IPNetwork, str], ...] = ()

    @property
    def free(self) -> int:
        return sum(p.free for p in self.pools)


def show(config: IPAMConfig, ipam: Ipam | None = None) -> NetworkUsage:
    """Usage of each range of ``config`` and every reservation of its network."""
    ipam = ipam or default_ipam()
    store = ipam.store(config)
    reservations = tuple(store.reservations()) if config.range_sets else ()
    pools = []
    for rset in config.range_sets:
        for rng in rset.ranges:
            pool = ipam.pool(rng)
            claim = Claim(rset.id, (pool,), overlapping=config.overlapping_ranges)
            view = PoolView(pool)
            view.load(pool.slot(r.ip) for r in reservations if claim.covers(r))  # type: ignore[misc]
            pools.append(PoolUsage(rng, pool.size, pool.reserved, len(view.taken), view.free))
    return NetworkUsage(config.network, config.datastore, tuple(pools), reservations,
                        tuple(store.block_leases()) if config.range_sets else ())


def release_leases_of_gone_nodes(config: IPAMConfig, nodes: Iterable[str], *,
                                 dry_run: bool = False,
                                 ipam: Ipam | None = None) -> list[tuple[IPNetwork, str]]:
    """Drop the block leases of nodes not in ``nodes`` (the cluster's Nodes): a node that
    left keeps its leases otherwise, and other nodes would never look in its blocks first.
    Leases only steer where nodes look; addresses stay reserved until their own GC."""
    ipam = ipam or default_ipam()
    store = ipam.store(config)
    if not config.range_sets:
        return []
    live = set(nodes)
    gone = [(block, node) for block, node in store.block_leases() if node not in live]
    if not dry_run:
        for node in sorted({node for _, node in gone}):
            store.release_leases(node)
    return gone


def gc_against(
    config: IPAMConfig,
    valid: Iterable[AttachmentRef],
    *,
    dry_run: bool = False,
    ipam: Ipam | None = None,
) -> list[Reservation]:
    """Release every reservation of the network whose attachment is not in ``valid`` — of
    any CNI network sharing the namespace, unlike CNI GC. Sticky holds stay. With
    ``dry_run``, only report what would go."""
    ipam = ipam or default_ipam()
    if not config.range_sets:
        return []
    keep = {attachment_key(v) for v in valid}
    store = ipam.store(config)
    stale = [r for r in store.reservations() if not r.held and r.owner.key not in keep]
    if dry_run:
        return stale
    return store.release_many(sorted({r.owner.key for r in stale}))


def drop_holds(
    config: IPAMConfig, pod: str | None = None, *, ipam: Ipam | None = None
) -> list[Reservation]:
    """Free the sticky holds of one ``namespace/name`` pod (or all of the network's)."""
    ipam = ipam or default_ipam()
    return ipam.store(config).drop_holds(pod) if config.range_sets else []


def import_whereabouts(
    config: IPAMConfig, objects: Objects, *, dry_run: bool = False, ipam: Ipam | None = None
) -> ImportSummary:
    """Reserve in ``config``'s store what whereabouts' objects hold in its ranges (for the
    same container, interface and pod); idempotent. With ``dry_run``, only report."""
    ipam = ipam or default_ipam()
    return import_holdings(ipam, config, objects.holdings(config), dry_run=dry_run)


def render(usage: NetworkUsage, now: float | None = None) -> str:
    """A plain-text table for ``nodeagent ipam show``."""
    now = time.time() if now is None else now
    lines = [f"network {usage.network} ({usage.datastore}): {usage.free} addresses free"]
    for p in usage.pools:
        lines.append(
            f"  {p.range}: {p.allocated} allocated, {p.free} free, {p.reserved} reserved"
            f" of {p.size}"
        )
    if usage.leases:
        lines.append("")
        lines.append(f"{'BLOCK':<44} NODE")
        lines.extend(f"{block!s:<44} {node}" for block, node in usage.leases)
    if usage.reservations:
        lines.append("")
        lines.append(f"{'IP':<40} {'CONTAINER':<14} {'IFNAME':<10} {'POD':<40} AGE")
        for r in usage.reservations:
            age = _age(now - r.since) if r.since else "-"
            container = r.owner.container_id[:12] or "(sticky hold)"
            lines.append(
                f"{r.ip!s:<40} {container:<14} {r.owner.ifname or '-':<10}"
                f" {r.owner.pod or '-':<40} {age}"
            )
    return "\n".join(lines)


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
