"""The allocation API the CNI plugin calls: allocate, release, check, gc.

``Ipam`` keeps one store per network and datastore (and one etcd client per etcd cluster)
for the life of the agent, so a warm daemon pays the connection and pool-view setup once.
Configs with only static addresses touch no store at all, as the static plugin does.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from ipaddress import ip_interface
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodeagent.cnitypes.request import Attachment
from nodeagent.cnitypes.result import IPConfig, Result
from nodeagent.ipam.config import locate
from nodeagent.ipam.configtypes import DNS, EtcdConfig, IPAddress, IPAMConfig, IPRange, RangeSet
from nodeagent.ipam.errors import INVALID_CONFIG, TRY_AGAIN_LATER, UNKNOWN_CONTAINER, IpamError
from nodeagent.ipam.filestore import DEFAULT_STATE_DIR, FileStore
from nodeagent.ipam.pool import Pool
from nodeagent.ipam.store import Claim, Owner, Reservation, Store

if TYPE_CHECKING:
    from nodeagent.ipam.whereabouts import Objects
    from nodeagent.settings import ClusterStore

log = logging.getLogger(__name__)

_MAX_POOLS = 256


def owner(attachment: Attachment, network: str) -> Owner:
    """Who holds a reservation: the attachment, in ``network``."""
    return Owner(attachment.container_id, attachment.ifname, attachment.pod, network)


AttachmentRef = Attachment | tuple[str, str] | Mapping[str, Any]


def attachment_key(ref: AttachmentRef) -> tuple[str, str]:
    """(container ID, ifname) of an Attachment, a tuple, or a ``cni.dev/valid-attachments``
    entry (``{"containerID": ..., "ifname": ...}``)."""
    if isinstance(ref, Attachment):
        return ref.container_id, ref.ifname
    if isinstance(ref, Mapping):
        return str(ref.get("containerID", "")), str(ref.get("ifname", ""))
    return ref[0], ref[1]


class Ipam:
    """The allocation API over every store the agent serves.

    ``cluster``: the agent's cluster store (nodeagent.settings), which serves configs with
    ``datastore`` "cluster" (whereabouts configs without ``"datastore": "file"``); without it
    they are refused. ``whereabouts``: returns whereabouts' objects (a watched view in the
    agent, a one-shot list in the fallback); the holdings of a range are imported into the
    cluster store before the range is served, so nothing whereabouts holds is handed out.
    """

    def __init__(
        self,
        state_dir: Path | str = DEFAULT_STATE_DIR,
        *,
        lock_timeout: float = 10.0,
        cluster: ClusterStore | None = None,
        whereabouts: Callable[[], Objects] | None = None,
        settings_source: str = "",
    ) -> None:
        self.state_dir = Path(state_dir)
        self.lock_timeout = lock_timeout
        self.cluster = cluster
        self.whereabouts = whereabouts
        self.settings_source = settings_source
        #: (network, ip, container, ifname) of whereabouts holdings already imported here.
        self._imported: set[tuple[str, str, str, str]] = set()
        #: whereabouts objects' version last imported from, per network and ranges.
        self._wb_seen: dict[tuple[Any, ...], int] = {}
        self._lock = threading.Lock()
        self._stores: dict[tuple[Any, ...], Store] = {}
        #: The latest config of each CNI network, per store, for usage reports.
        self._configs: dict[tuple[Any, ...], IPAMConfig] = {}
        self._clients: dict[EtcdConfig, Any] = {}
        self._pools: dict[IPRange, Pool] = {}

    # -- the CNI verbs -------------------------------------------------------------------

    def allocate(self, config: IPAMConfig, attachment: Attachment) -> Result:
        """ADD: one address per range set (a fixed one where asked), plus static addresses.

        Repeating ADD for the same attachment returns the same addresses. On any error nothing
        stays reserved by this call.
        """
        claims, fixed = self._plan(config)
        ips: list[IPConfig] = []
        if claims:
            self._honour_whereabouts(config)
            reservations = self.store(config).claim(claims, owner(attachment, config.name))
            ips += [self._ip_result(config, r.ip, fixed) for r in reservations]
        return _result(config, ips + _static_ips(config))

    def release(self, config: IPAMConfig, attachment: Attachment) -> list[Reservation]:
        """DEL: free the attachment's addresses; succeeds when there is nothing to free."""
        if not config.range_sets:
            return []
        return self.store(config).release(attachment.container_id, attachment.ifname)

    def check(self, config: IPAMConfig, attachment: Attachment) -> Result:
        """CHECK: the attachment still holds an address in every range set."""
        if not config.range_sets:
            return _result(config, _static_ips(config))  # nothing stored
        held = self.store(config).find(attachment.container_id, attachment.ifname)
        claims, fixed = self._plan(config)
        ips: list[IPConfig] = []
        for claim in claims:
            mine = next((r for r in held if claim.covers(r)), None)
            if mine is None:
                raise IpamError(
                    UNKNOWN_CONTAINER,
                    f"container {attachment.container_id}/{attachment.ifname} holds no address"
                    f" in range set {claim.set_id} of network {config.network}",
                )
            if claim.ip is not None and mine.ip != claim.ip:
                raise IpamError(
                    UNKNOWN_CONTAINER,
                    f"container {attachment.container_id}/{attachment.ifname} holds {mine.ip},"
                    f" not the requested {claim.ip}",
                )
            ips.append(self._ip_result(config, mine.ip, fixed))
        return _result(config, ips + _static_ips(config))

    def gc(self, config: IPAMConfig, valid: Iterable[AttachmentRef]) -> list[Reservation]:
        """CNI GC: release every reservation of this CNI network not in ``valid``
        (``cni.dev/valid-attachments``). Records of other CNI networks sharing the store
        namespace, and sticky holds, are left alone."""
        if not config.range_sets:
            return []
        keep = {attachment_key(v) for v in valid}
        store = self.store(config)
        stale = {
            r.owner.key
            for r in store.reservations()
            if not r.held and r.owner.network in ("", config.name) and r.owner.key not in keep
        }
        return store.release_many(sorted(stale))

    # -- stores and pools ----------------------------------------------------------------

    def store(self, config: IPAMConfig) -> Store:
        if config.datastore == "etcd":
            assert config.etcd is not None
            key: tuple[Any, ...] = ("etcd", config.etcd, config.network)
        elif config.datastore == "cluster":
            key = ("etcd", self._cluster_etcd(config), config.network)
        else:
            key = ("file", config.data_dir or self.state_dir, config.network)
        self._configs[(*key, config.name)] = config
        store = self._stores.get(key)
        if store is None:
            with self._lock:
                store = self._stores.get(key)
                if store is None:
                    store = self._stores[key] = self._open(config)
        return store

    def _cluster_etcd(self, config: IPAMConfig) -> EtcdConfig:
        if self.cluster is None:
            where = f" (settings from {self.settings_source})" if self.settings_source else ""
            raise IpamError(
                INVALID_CONFIG,
                f"ipam type {config.type or 'ipam'!r} for network {config.name!r} is served by"
                f" the agent's cluster store, and this agent has none{where}: set ipam.etcd"
                " in the agent's settings (/etc/nodeagent/agent.yaml; chart values ipam.etcd),"
                " or the daemon flag --ipam-etcd-endpoints; or, for addresses unique on this"
                ' node only, put "datastore": "file" in the IPAM configuration',
            )
        return self.cluster.etcd

    def _open(self, config: IPAMConfig) -> Store:
        if config.datastore in ("etcd", "cluster"):
            from nodeagent.ipam.etcd.client import EtcdClient  # grpc: only when used
            from nodeagent.ipam.etcd.store import EtcdStore

            etcd = config.etcd if config.datastore == "etcd" else self._cluster_etcd(config)
            assert etcd is not None
            client = self._clients.get(etcd)
            if client is None:
                client = self._clients[etcd] = EtcdClient(etcd)
            extra: dict[str, Any] = {}
            if config.datastore == "cluster" and self.cluster is not None \
                    and self.cluster.cluster:
                # The cluster's key segment, once the etcd store takes one (its own change).
                if "cluster" in inspect.signature(EtcdStore).parameters:
                    extra["cluster"] = self.cluster.cluster
                else:
                    log.warning("ipam.clusterName %r is not applied: this etcd store has no"
                                " cluster key segment", self.cluster.cluster)
            return EtcdStore(client, config.network, prefix=etcd.prefix, **extra)
        return FileStore(
            config.data_dir or self.state_dir, config.network, lock_timeout=self.lock_timeout
        )

    def configs(self) -> list[IPAMConfig]:
        """The latest configuration of each CNI network served, for usage reports (metrics)."""
        with self._lock:
            return list(self._configs.values())

    def pool(self, rng: IPRange) -> Pool:
        pool = self._pools.get(rng)
        if pool is None:
            pool = Pool(rng)
            with self._lock:
                if len(self._pools) >= _MAX_POOLS:
                    self._pools.clear()
                self._pools[rng] = pool
        return pool

    def close(self) -> None:
        with self._lock:
            clients, self._clients, self._stores = list(self._clients.values()), {}, {}
            self._configs = {}
        for client in clients:
            client.close()

    # -- whereabouts' reservations ---------------------------------------------------------

    def _honour_whereabouts(self, config: IPAMConfig) -> None:
        """Import what whereabouts' objects hold in the config's ranges into the cluster store
        (once per holding per agent), so the store hands none of it out."""
        if config.datastore != "cluster" or self.whereabouts is None:
            return
        from nodeagent.ipam import whereabouts as wb

        try:
            objects = self.whereabouts()
        except wb.Unreadable as exc:  # API away, not listed yet: never guess
            raise IpamError(
                TRY_AGAIN_LATER,
                f"whereabouts' IPPools could not be read ({exc}), so no address of network"
                f" {config.name!r} is handed out yet: the agent needs list and watch on"
                " ippools and overlappingrangeipreservations (whereabouts.cni.cncf.io);"
                " ipam.whereabouts.honourIPPools: false in its settings stops reading them"
                " once the migration is done", str(exc)) from exc
        seen_key = (config.network, config.range_sets)
        if objects.version and self._wb_seen.get(seen_key) == objects.version:
            return  # nothing changed since this range was last served
        new = [h for h in objects.holdings(config)
               if (config.network, str(h.ip), *h.key) not in self._imported]
        if not new:
            self._wb_seen[seen_key] = objects.version
            return
        summary = wb.import_holdings(self, config, new)
        for h, why in summary.conflicts:
            log.warning("whereabouts holds %s (%s) but %s", h.ip, h.source, why)
        if summary.imported:
            log.info("imported %d whereabouts reservations of network %s",
                     len(summary.imported), config.network)
        self._imported.update((config.network, str(h.ip), *h.key) for h in new)
        self._wb_seen[seen_key] = objects.version

    # -- planning ------------------------------------------------------------------------

    def _plan(self, config: IPAMConfig) -> tuple[list[Claim], dict[IPAddress, IPAddress | None]]:
        """Claims, one per range set, and the gateway of each fixed address."""
        fixed: dict[IPAddress, IPAddress | None] = {}
        for req in config.requested:
            fixed[req.ip] = req.gateway
        for s in config.addresses:
            fixed[s.address.ip] = s.gateway
        claims = []
        for rset in config.range_sets:
            ip = next((f for f in fixed if rset.find(f) is not None), None)
            claims.append(self._claim(config, rset, ip))
        return claims, fixed

    def claim_for(self, config: IPAMConfig, rset: RangeSet, ip: IPAddress | None) -> Claim:
        """The claim of one address (``ip``, else the lowest free) from ``rset``."""
        return self._claim(config, rset, ip)

    def _claim(self, config: IPAMConfig, rset: RangeSet, ip: IPAddress | None) -> Claim:
        return Claim(
            rset.id,
            tuple(self.pool(r) for r in rset.ranges),
            ip=ip,
            sticky=config.sticky,
            overlapping=config.overlapping_ranges,
        )

    @staticmethod
    def _ip_result(
        config: IPAMConfig, ip: IPAddress, fixed: dict[IPAddress, IPAddress | None]
    ) -> IPConfig:
        where = locate(config, ip)
        if where is None:  # a reservation from a range the config no longer has
            raise IpamError(
                UNKNOWN_CONTAINER, f"{ip} is reserved but outside the configured ranges"
            )
        rng = where[1]
        gateway = fixed.get(ip) or rng.gateway
        return IPConfig(ip_interface(f"{ip}/{rng.subnet.prefixlen}"), gateway)


def _static_ips(config: IPAMConfig) -> list[IPConfig]:
    """Addresses given in full that no range holds: returned as they are, never stored."""
    ips = [
        IPConfig(s.address, s.gateway)
        for s in config.addresses
        if locate(config, s.address.ip) is None
    ]
    if not config.range_sets:
        ips += [
            IPConfig(ip_interface(f"{req.ip}/{req.prefixlen}"), req.gateway)
            for req in config.requested
        ]
    return ips


def _result(config: IPAMConfig, ips: list[IPConfig]) -> Result:
    """The CNI result: the addresses, plus the config's routes and DNS.

    Routes keep their CNI 1.1 attributes (``mtu``, ``advmss``, ``priority``, ``table``,
    ``scope``): 1.1 results report them and the attaching plugins apply them.
    """
    routes = list(config.routes)
    return Result(ips=ips, routes=routes, dns=_dns(config.dns))


def _dns(dns: DNS) -> dict[str, Any]:
    """The result's ``dns``: only the fields that are set."""
    doc: dict[str, Any] = {}
    if dns.nameservers:
        doc["nameservers"] = list(dns.nameservers)
    if dns.domain:
        doc["domain"] = dns.domain
    if dns.search:
        doc["search"] = list(dns.search)
    if dns.options:
        doc["options"] = list(dns.options)
    return doc


_default: Ipam | None = None
_default_lock = threading.Lock()


def default_ipam() -> Ipam:
    """The process-wide :class:`Ipam` (state under ``/var/lib/nodeagent/ipam``)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Ipam()
        return _default

