"""Who holds a VTEP for each VXLAN network: one key per (VNI, node) in the cluster store the
IPAM already uses (etcd), its value the node's underlay address, and when it was last renewed.

Key: ``<prefix>/[@<cluster>/]vxlan/<vni>/<node>``; value: ``{"address", "port", "network",
"at"}``. The store's gRPC subset (nodeagent.ipam.etcd.api) has no Lease or Watch service, so
liveness is a heartbeat: a member whose ``at`` is older than ``ttl`` is gone (a node that died
stops renewing), and readers remove such keys with a transaction on their revision, so a key
renewed meanwhile stays.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from nodeagent.cnitypes.result import IPAddress
from nodeagent.ipam.etcd import api
from nodeagent.ipam.etcd.client import EtcdClient
from nodeagent.ipam.etcd.store import prefix_end

log = logging.getLogger(__name__)

PREFIX = "/nodeagent/overlay/v1"
#: A member not renewed for this long (seconds) has left.
TTL = 30.0


@dataclass(frozen=True)
class Member:
    vni: int
    node: str
    address: IPAddress
    port: int
    network: str
    at: float
    revision: int = 0


class MemberError(ValueError):
    """A node name or a stored value that cannot be a member."""


class Membership:
    """This node's view of the overlay members in one etcd (``client``, shared with IPAM)."""

    def __init__(self, client: EtcdClient, node: str, *, cluster: str = "",
                 prefix: str = PREFIX, ttl: float = TTL,
                 clock: Callable[[], float] = time.time) -> None:
        if not node or "/" in node or len(node) > 253:
            raise MemberError(f"node name {node!r} cannot name a member key")
        self.client = client
        self.node = node
        self.ttl = ttl
        self._clock = clock
        segment = f"@{cluster}/" if cluster else ""
        self.root = f"{prefix}/{segment}vxlan/".encode()

    def now(self) -> float:
        return self._clock()

    def key(self, vni: int, node: str | None = None) -> bytes:
        return self.root + f"{vni}/{node or self.node}".encode()

    def publish(self, vni: int, address: IPAddress, port: int, network: str) -> None:
        """Announce (or renew) this node's VTEP for ``vni``."""
        value = {"address": str(address), "port": port, "network": network, "at": self._clock()}
        self.client.put(self.key(vni), json.dumps(value, sort_keys=True).encode())

    def withdraw(self, vni: int) -> None:
        self.client.delete(self.key(vni))

    def scan(self, vni: int | None = None) -> tuple[list[Member], list[Member]]:
        """(live, expired) members of one network, or of all."""
        start = self.root if vni is None else self.root + f"{vni}/".encode()
        live, expired = [], []
        now = self._clock()
        for kv in self.client.range_all(start, prefix_end(start)):
            try:
                member = self._decode(kv)
            except MemberError as exc:
                log.warning("ignored overlay member key %r: %s", kv.key, exc)
                continue
            (live if now - member.at <= self.ttl else expired).append(member)
        return live, expired

    def members(self, vni: int) -> list[Member]:
        return self.scan(vni)[0]

    def expire(self, members: list[Member]) -> int:
        """Delete expired members' keys unless renewed since they were read; how many went."""
        gone = 0
        for m in members:
            key = self.key(m.vni, m.node)
            resp = self.client.txn(api.txn([api.compare(key, "mod", m.revision)],
                                           [api.op_delete(key)]))
            gone += bool(resp.succeeded)
        return gone

    def _decode(self, kv: object) -> Member:
        key: bytes = kv.key  # type: ignore[attr-defined]
        parts = key[len(self.root):].decode("utf-8", "replace").split("/")
        if len(parts) != 2 or not parts[0].isdigit() or not parts[1]:
            raise MemberError("not <vni>/<node>")
        try:
            doc = json.loads(kv.value)  # type: ignore[attr-defined]
            address = ipaddress.ip_address(doc["address"])
            port, network, at = doc["port"], doc.get("network", ""), doc["at"]
        except (ValueError, KeyError, TypeError) as exc:
            raise MemberError(f"bad value: {exc}") from None
        if not isinstance(port, int) or not isinstance(at, int | float) \
                or not isinstance(network, str):
            raise MemberError("bad value types")
        return Member(int(parts[0]), parts[1], address, port, network, float(at),
                      kv.mod_revision)  # type: ignore[attr-defined]


def remotes_for(members: list[Member], node: str, vni: int, local: IPAddress | None,
                port: int) -> tuple[set[str], list[Member]]:
    """The underlay addresses this node's VTEP for ``vni`` floods to: every other node's of the
    same address family and UDP port; and the members left out for a mismatch."""
    wanted, mismatched = set(), []
    for m in members:
        if m.vni != vni or m.node == node or m.address == local:
            continue  # this node (under another name too: a fallback's NODE_NAME)
        if (local is not None and m.address.version != local.version) or m.port != port:
            mismatched.append(m)
            continue
        wanted.add(str(m.address))
    return wanted, mismatched
