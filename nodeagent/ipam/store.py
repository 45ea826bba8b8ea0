"""The store interface both datastores implement, and the records they keep.

A store holds the reservations of one network (the config's ``network``: ``network_name``,
the CNI network name for host-local configs, or the shared unnamed network). Addresses are
unique per *scope*: the whole network (``enable_overlapping_ranges``, the default) or one
range (``scope`` = the range id), so two overlapping ranges may then hand out one address.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import ip_address

from nodeagent.ipam.configtypes import IPAddress, IPNetwork
from nodeagent.ipam.errors import ADDRESS_IN_USE, POOL_EXHAUSTED, IpamError
from nodeagent.ipam.pool import Pool


@dataclass(frozen=True)
class Owner:
    """Who holds an address: an attachment, or (``container_id`` empty) a sticky hold."""

    container_id: str
    ifname: str
    pod: str = ""  # "namespace/name", from CNI_ARGS
    network: str = ""  # the CNI network name: CNI GC only touches its own network's records

    @property
    def key(self) -> tuple[str, str]:
        return self.container_id, self.ifname

    def describe(self) -> str:
        who = f"container {self.container_id[:12]}/{self.ifname}" if self.container_id else "hold"
        return f"{who} (pod {self.pod})" if self.pod else who


@dataclass(frozen=True)
class Reservation:
    ip: IPAddress
    owner: Owner
    set_id: str = ""
    scope: str = ""
    sticky: bool = False
    since: int = 0  # unix seconds

    @property
    def held(self) -> bool:
        """A sticky hold: the pod is gone, the address waits for it."""
        return not self.owner.container_id

    def as_hold(self) -> Reservation:
        owner = Owner("", "", self.owner.pod, self.owner.network)
        return Reservation(self.ip, owner, self.set_id, self.scope, True, self.since)


@dataclass(frozen=True)
class Claim:
    """One address wanted from one range set: the fixed ``ip``, else the lowest free one."""

    set_id: str
    pools: tuple[Pool, ...]
    ip: IPAddress | None = None
    sticky: bool = False
    overlapping: bool = True

    def scope(self, pool: Pool) -> str:
        return "" if self.overlapping else pool.range.id

    def pool_of(self, ip: IPAddress) -> Pool | None:
        return next((p for p in self.pools if p.slot(ip) is not None), None)

    def covers(self, r: Reservation) -> bool:
        pool = self.pool_of(r.ip)
        return pool is not None and self.scope(pool) == r.scope


class Store(ABC):
    """Reservations of one network. Every method is safe across threads and processes."""

    network: str

    @abstractmethod
    def claim(self, claims: Sequence[Claim], owner: Owner) -> list[Reservation]:
        """Reserve one address per claim for ``owner``, all or nothing.

        An attachment that already holds an address of a claim's pools gets it back (a
        repeated ADD); a sticky claim takes back its pod's hold first. Raises IpamError:
        POOL_EXHAUSTED, ADDRESS_IN_USE, or TRY_AGAIN_LATER when the datastore is away.
        """

    @abstractmethod
    def release(self, container_id: str, ifname: str) -> list[Reservation]:
        """Free the attachment's addresses (sticky ones become holds); [] if it has none."""

    @abstractmethod
    def reservations(self) -> list[Reservation]:
        """Every reservation and hold of the network."""

    @abstractmethod
    def drop_holds(self, pod: str | None = None) -> list[Reservation]:
        """Free sticky holds (of one ``namespace/name`` pod, or all)."""

    def block_leases(self) -> list[tuple[IPNetwork, str]]:
        """Block leases (the block, the node holding it), in address order; a store that
        leases no blocks has none."""
        return []

    def release_leases(self, node: str) -> int:
        """Drop the block leases of ``node``; how many went."""
        return 0

    def release_many(self, owners: Iterable[tuple[str, str]]) -> list[Reservation]:
        """Release several ``(container_id, ifname)`` attachments (GC)."""
        return [r for cid, ifname in owners for r in self.release(cid, ifname)]

    def find(self, container_id: str, ifname: str) -> list[Reservation]:
        return [r for r in self.reservations() if r.owner.key == (container_id, ifname)]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the store must not be used afterwards."""


def in_use(ip: IPAddress, holder: Reservation) -> IpamError:
    return IpamError(
        ADDRESS_IN_USE, f"requested address {ip} is already reserved by {holder.owner.describe()}"
    )


def exhausted(claim: Claim) -> IpamError:
    ranges = ", ".join(str(p.range) for p in claim.pools)
    return IpamError(
        POOL_EXHAUSTED,
        f"no free address in range set {claim.set_id}: {ranges} are all reserved",
    )


def other_address(existing: Reservation, wanted: IPAddress) -> IpamError:
    return IpamError(
        ADDRESS_IN_USE,
        f"{existing.owner.describe()} already holds {existing.ip} in range set"
        f" {existing.set_id or 'of ' + str(wanted)}; release it before asking for {wanted}",
    )


def to_record(r: Reservation) -> dict[str, object]:
    """The JSON object both stores persist for a reservation (short keys: etcd stores many)."""
    doc: dict[str, object] = {"ip": str(r.ip), "id": r.owner.container_id, "if": r.owner.ifname}
    for key, value in (
        ("pod", r.owner.pod),
        ("net", r.owner.network),
        ("set", r.set_id),
        ("scope", r.scope),
        ("sticky", r.sticky),
        ("at", r.since),
    ):
        if value:
            doc[key] = value
    return doc


def from_record(doc: dict[str, object]) -> Reservation:
    """Inverse of :func:`to_record`; raises ValueError/KeyError/TypeError on a bad record."""
    owner = Owner(
        str(doc.get("id", "")), str(doc.get("if", "")), str(doc.get("pod", "")),
        str(doc.get("net", "")),
    )
    return Reservation(
        ip_address(str(doc["ip"])),
        owner,
        str(doc.get("set", "")),
        str(doc.get("scope", "")),
        bool(doc.get("sticky", False)),
        int(doc.get("at", 0)),  # type: ignore[call-overload]
    )
