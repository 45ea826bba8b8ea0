"""Source-based routing for one attachment, as the reference ``sbr`` plugin sets it up: replies
leave by the interface their request came in on.

One implementation serves the chained ``sbr`` kind (cni.kinds.sbr) and the ``sbr`` option of
this project's own kinds (macvlan, ipvlan, vlan, sriov). The meaning is the reference plugin's
(containernetworking/plugins ``plugins/meta/sbr``), defaults included:

- the addresses handled are those of the attachment's interface in the result (an address that
  names no interface counts as the interface's);
- without ``table``: each address gets the first table from 100 up that no rule and no route
  uses, a rule ``from ADDRESS/32`` (``/128``) to it, a default route through its gateway
  (``gateways`` overrides the result's, one per family) and a copy of the interface's routes
  of the main table that belong to it (source hint or gateway in its subnet, or neither); then
  the interface's routes leave the main table, or, with ``addSourceHints``, its subnet routes
  stay there with the address as source hint and only its other routes leave;
- with ``table``: only the rules, to that table; the routes stay where they are (CNI 1.1
  routes with ``table`` put them there);
- DEL removes the rules from the interface's addresses (to ``table`` when given), and here the
  routes left in the tables those rules named; CHECK verifies the rules and tables.

Everything is done inside the pod namespace through one netlink client; a failure part way
undoes what was done, in reverse order, before the error is raised.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cni import ipam
from cni.context import FIELDS, Context, Netlink
from cni.links import kernel_errors
from cni.protocol import CniRequest
from nodeagent.cnitypes.errors import INVALID_CONFIG, IO_FAILURE, CniError
from nodeagent.cnitypes.result import IPAddress, IPConfig, Result

log = logging.getLogger(__name__)

#: The reference plugin's first table; tables are picked from here up.
FIRST_TABLE = 100
#: Tables the kernel reserves (default, main, local): never picked.
RESERVED_TABLES = frozenset({0, 253, 254, 255})
RT_TABLE_MAIN = 254
RT_SCOPE_LINK = 253
RTPROT_BOOT = 3
RTN_UNICAST = 1
MAX_TABLE = 0xFFFFFFFF
#: The route metrics a copied route keeps (RTA_METRICS), as the kernel reports them.
METRICS = ("RTAX_MTU", "RTAX_ADVMSS", "RTAX_HOPLIMIT", "RTAX_WINDOW", "RTAX_RTT",
           "RTAX_INITCWND", "RTAX_INITRWND", "RTAX_QUICKACK", "RTAX_CC_ALGO")


@dataclass(frozen=True)
class SbrConf:
    """The reference plugin's fields: ``table`` (rules only, to this table), ``gateways``
    (at most one per family, instead of the result's), ``addSourceHints``."""

    table: int | None = None
    gateways: tuple[IPAddress, ...] = ()
    source_hints: bool = False

    def gateway(self, ip: IPConfig) -> IPAddress | None:
        """The default route's gateway for ``ip``: the configured one of its family first."""
        fixed = next((g for g in self.gateways if g.version == ip.address.version), None)
        return fixed or ip.gateway


def parse(obj: dict[str, Any], where: str = "") -> SbrConf:
    """The chained plugin's configuration (``where`` ""), or the object of the ``sbr`` option
    (``where`` "sbr"); code 7 naming the field."""
    gateways: list[IPAddress] = []
    path = f"{where}.gateways" if where else "gateways"
    for i, value in enumerate(FIELDS.items(obj, "gateways", where, max_items=2)):
        gw = FIELDS.ip(value, f"{path}[{i}]")
        if any(g.version == gw.version for g in gateways):
            FIELDS.fail(f"{path}[{i}]", f"is a second IPv{gw.version} gateway: one per family")
        gateways.append(gw)
    return SbrConf(table=FIELDS.integer(obj, "table", where, 1, MAX_TABLE),
                   gateways=tuple(gateways),
                   source_hints=FIELDS.boolean(obj, "addSourceHints", where, default=False))


def option(config: dict[str, Any]) -> SbrConf | None:
    """The ``sbr`` field of this project's kinds: absent, null or false: none; true: the
    reference plugin's defaults; an object: its fields."""
    value = config.get("sbr")
    if value is None or value is False:
        return None
    if value is True:
        return SbrConf()
    if not isinstance(value, dict):
        FIELDS.fail("sbr", "must be true, false or an object (table, gateways, addSourceHints)")
    return parse(FIELDS.obj(value, "sbr", allowed=("table", "gateways", "addSourceHints")),
                 "sbr")


def addresses_of(result: Result, ifname: str) -> list[IPConfig]:
    """The result's addresses on ``ifname``: those whose ``interface`` names it, or names no
    interface of the result (as the reference plugin reads them)."""
    found = []
    for ip in result.ips:
        i = ip.interface
        if i is not None and 0 <= i < len(result.interfaces) and (
                result.interfaces[i].name != ifname):
            continue
        found.append(ip)
    return found


# -- what the kernel reports ------------------------------------------------------------------


@dataclass(frozen=True)
class KernelRoute:
    """A unicast route as a dump reports it, with what a copy in another table needs."""

    family: int
    dst: str | None
    dst_len: int
    table: int
    oif: int | None
    gateway: str | None
    prefsrc: str | None
    scope: int
    proto: int
    priority: int | None
    metrics: tuple[tuple[str, int], ...]

    @classmethod
    def from_msg(cls, msg: Any) -> KernelRoute:
        nested = msg.get_attr("RTA_METRICS")
        metrics = tuple((name, value) for name in METRICS
                        if nested is not None and (value := nested.get_attr(name)) is not None)
        return cls(msg["family"], msg.get_attr("RTA_DST"), msg["dst_len"],
                   msg.get_attr("RTA_TABLE") or msg["table"], msg.get_attr("RTA_OIF"),
                   msg.get_attr("RTA_GATEWAY"), msg.get_attr("RTA_PREFSRC"), msg["scope"],
                   msg["proto"], msg.get_attr("RTA_PRIORITY"), metrics)

    def describe(self) -> str:
        via = f" via {self.gateway}" if self.gateway else ""
        return f"{self.dst or 'default'}/{self.dst_len}{via} table {self.table}"

    def belongs_to(self, ip: IPConfig) -> bool:
        """The reference's test: source hint or gateway in the address's subnet, or neither."""
        net = ip.address.network
        if self.prefsrc is None and self.gateway is None:
            return True
        return any(a is not None and ipaddress.ip_address(a) in net
                   for a in (self.prefsrc, self.gateway))

    def put(self, pod: Netlink, table: int, **override: Any) -> None:
        pod.route_replace(self.family, self.dst, self.dst_len, table=table,
                          gateway=self.gateway, oif=self.oif, scope=self.scope,
                          priority=self.priority, prefsrc=self.prefsrc, proto=self.proto,
                          metrics=dict(self.metrics) or None, **override)

    def remove(self, pod: Netlink, table: int) -> bool:
        return pod.route_delete(self.family, self.dst, self.dst_len, table=table,
                                gateway=self.gateway, oif=self.oif, priority=self.priority)


@dataclass(frozen=True)
class KernelRule:
    family: int
    src: str
    src_len: int
    table: int
    priority: int | None

    @classmethod
    def from_msg(cls, msg: Any) -> KernelRule | None:
        """A rule ``from ADDRESS`` to a table, or None for any other rule."""
        src = msg.get_attr("FRA_SRC")
        if src is None or msg["action"] != 1:  # FR_ACT_TO_TBL
            return None
        return cls(msg["family"], src, msg["src_len"],
                   msg.get_attr("FRA_TABLE") or msg["table"], msg.get_attr("FRA_PRIORITY"))

    def remove(self, pod: Netlink) -> bool:
        return pod.rule_delete(self.family, self.src, self.src_len, table=self.table,
                               priority=self.priority)


def _rules(pod: Netlink) -> list[KernelRule]:
    return [r for msg in pod.rules() if (r := KernelRule.from_msg(msg)) is not None]


def _family(ip: IPConfig) -> int:
    return socket.AF_INET if ip.address.version == 4 else socket.AF_INET6


def _host_len(ip: IPConfig) -> int:
    return ip.address.max_prefixlen


# -- ADD ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def serialised(netns: str | None) -> Iterator[None]:
    """One source-based routing change at a time in a namespace, across the agent's threads
    and fallback processes alike (table numbers are picked from what the namespace holds): a
    lock on the namespace's file, as the reference plugin takes."""
    if not netns:
        yield
        return
    fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


class _Undo:
    """What was done, to be undone in reverse order if a later step fails."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, step: Callable[[], object]) -> None:
        self._steps.append((what, step))

    def run(self) -> None:
        for what, step in reversed(self._steps):
            try:
                step()
            except OSError as exc:
                log.warning("undoing source-based routing: %s: %s", what, exc.strerror)


def apply(pod: Netlink, ifname: str, index: int, result: Result, conf: SbrConf) -> None:
    """Set up source-based routing for ``ifname`` (ifindex ``index``) from ``result``.
    Raises CniError; nothing it did is left behind then."""
    if not result.ips:
        raise CniError(INVALID_CONFIG, f"source-based routing for {ifname}: the result has no"
                       " IP address")
    ips = addresses_of(result, ifname)
    if not ips:
        raise CniError(INVALID_CONFIG, f"source-based routing for {ifname}: no address of the"
                       " result is on it", ", ".join(str(ip.address) for ip in result.ips))
    undo = _Undo()
    with serialised(pod.netns):
        try:
            if conf.table is not None:
                for ip in ips:
                    _add_rule(pod, ip, conf.table, undo)
            else:
                _own_tables(pod, index, ips, conf, undo)
        except BaseException:
            undo.run()
            raise


def _add_rule(pod: Netlink, ip: IPConfig, table: int, undo: _Undo) -> None:
    address = str(ip.address.ip)
    with kernel_errors(f"adding the rule from {address} to table {table}"):
        pod.rule_add(_family(ip), address, _host_len(ip), table=table)
    undo.push(f"rule from {address}", lambda: pod.rule_delete(
        _family(ip), address, _host_len(ip), table=table))


def _free_table(taken: set[int], start: int) -> int:
    table = start
    while table in taken or table in RESERVED_TABLES:
        table += 1
    if table > MAX_TABLE:
        raise CniError(IO_FAILURE, "source-based routing: no free routing table")
    return table


def _own_tables(pod: Netlink, index: int, ips: list[IPConfig], conf: SbrConf,
                undo: _Undo) -> None:
    taken = {rule.table for rule in _rules(pod)}
    routes = []
    for msg in pod.routes():
        route = KernelRoute.from_msg(msg)
        taken.add(route.table)
        if route.table == RT_TABLE_MAIN and route.oif == index and msg["type"] == RTN_UNICAST:
            routes.append(route)
    table = _free_table(taken, FIRST_TABLE)
    for ip in ips:
        _add_rule(pod, ip, table, undo)
        gateway = conf.gateway(ip)
        if gateway is not None:
            with kernel_errors(f"adding the default route via {gateway} to table {table}"):
                pod.route_add(_family(ip), None, 0, gateway=str(gateway), oif=index,
                              table=table)
            family = _family(ip)
            undo.push(f"default route in table {table}", lambda f=family, t=table:
                      pod.route_delete(f, None, 0, table=t, oif=index))
        for route in routes:
            if route.belongs_to(ip):
                with kernel_errors(f"copying route {route.describe()} to table {table}"):
                    route.put(pod, table)
                undo.push(f"copy of {route.describe()}", lambda r=route, t=table: r.remove(pod, t))
        taken.add(table)
        table = _free_table(taken, table + 1)
    if conf.source_hints:
        _keep_subnets_with_hints(pod, index, ips, routes, undo)
        return
    for route in routes:  # after every copy: several addresses may share a subnet
        with kernel_errors(f"moving route {route.describe()} out of the main table"):
            route.remove(pod, RT_TABLE_MAIN)
        undo.push(f"route {route.describe()}", lambda r=route: r.put(pod, RT_TABLE_MAIN))


def _keep_subnets_with_hints(pod: Netlink, index: int, ips: list[IPConfig],
                             routes: list[KernelRoute], undo: _Undo) -> None:
    """``addSourceHints``: each address's subnet route stays in the main table with the
    address as source hint, the interface's other routes leave it. As the reference plugin,
    a refusal here is logged, not fatal."""
    for ip in ips:
        net = ip.address.network
        hinted = KernelRoute(_family(ip), str(net.network_address), net.prefixlen, RT_TABLE_MAIN,
                             index, None, str(ip.address.ip), RT_SCOPE_LINK, RTPROT_BOOT, None,
                             ())
        before = next((r for r in routes if (r.dst, r.dst_len) == (hinted.dst, hinted.dst_len)
                       and r.gateway is None), None)
        try:
            hinted.put(pod, RT_TABLE_MAIN)
        except OSError as exc:
            log.warning("source hint %s on %s: %s", ip.address.ip, net, exc.strerror)
            continue
        undo.push(f"source hint on {net}", (lambda b=before: b.put(pod, RT_TABLE_MAIN))
                  if before is not None else (lambda h=hinted: h.remove(pod, RT_TABLE_MAIN)))
    for route in routes:
        if route.scope == RT_SCOPE_LINK:
            continue
        try:
            route.remove(pod, RT_TABLE_MAIN)
        except OSError as exc:
            log.warning("moving route %s out of the main table: %s", route.describe(),
                        exc.strerror)
            continue
        undo.push(f"route {route.describe()}", lambda r=route: r.put(pod, RT_TABLE_MAIN))


# -- DEL ----------------------------------------------------------------------------------------


def remove(pod: Netlink, ifname: str, conf: SbrConf, result: Result | None = None) -> None:
    """Remove the rules from the interface's addresses and the result's addresses on it (to
    ``conf.table`` when given), and, without ``table``, the routes the interface has left in
    the tables they named. Idempotent: what is already gone is fine."""
    with serialised(pod.netns):
        _remove(pod, ifname, conf, result)


def _remove(pod: Netlink, ifname: str, conf: SbrConf, result: Result | None) -> None:
    index = pod.link_index(ifname)
    sources = {str(ip.address.ip) for ip in addresses_of(result, ifname)} if result else set()
    if index is not None:
        for msg in pod.addresses():
            if msg["index"] == index:
                address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
                sources.add(str(ipaddress.ip_address(address)))
    failed: CniError | None = None  # as the reference: go on, report the last refusal

    def attempt(what: str, step: Callable[[], object]) -> None:
        nonlocal failed
        try:
            with kernel_errors(what):
                step()
        except CniError as exc:
            failed = exc

    emptied = set()
    for rule in _rules(pod):
        if str(ipaddress.ip_address(rule.src)) not in sources:
            continue
        if conf.table is not None and rule.table != conf.table:
            continue
        attempt(f"deleting the rule from {rule.src} to table {rule.table}",
                lambda r=rule: r.remove(pod))
        emptied.add(rule.table)
    if conf.table is None and index is not None:  # a given table is the configuration's
        still_used = {rule.table for rule in _rules(pod)}
        for msg in pod.routes():
            route = KernelRoute.from_msg(msg)
            if (route.table in emptied - still_used - RESERVED_TABLES and route.oif == index
                    and msg["type"] == RTN_UNICAST):
                attempt(f"deleting route {route.describe()}",
                        lambda r=route: r.remove(pod, r.table))
    if failed is not None:
        raise failed


# -- CHECK --------------------------------------------------------------------------------------


def verify(pod: Netlink, ifname: str, index: int, result: Result, conf: SbrConf) -> None:
    """CHECK: every address of ``ifname`` in ``result`` has its rule (to ``conf.table`` when
    given); without ``table``, the rule's table routes by the interface, through the
    address's gateway when it has one."""
    rules = _rules(pod)
    routes = [KernelRoute.from_msg(msg) for msg in pod.routes()]
    for ip in addresses_of(result, ifname):
        address = ip.address.ip
        mine = [r for r in rules if r.src_len == _host_len(ip)
                and ipaddress.ip_address(r.src) == address
                and (conf.table is None or r.table == conf.table)]
        if not mine:
            to = f" to table {conf.table}" if conf.table is not None else ""
            raise CniError(IO_FAILURE, f"{ifname}: no rule from {address}{to}",
                           "source-based routing is not set up for it")
        if conf.table is not None:
            continue
        tables = {r.table for r in mine}
        via_link = [r for r in routes if r.table in tables and r.oif == index]
        if not via_link:
            raise CniError(IO_FAILURE, f"{ifname}: table {min(tables)} for {address} has no"
                           f" route through {ifname}")
        gateway = conf.gateway(ip)
        if gateway is not None and not any(r.dst_len == 0 and r.gateway is not None
                                           and ipaddress.ip_address(r.gateway) == gateway
                                           for r in via_link):
            raise CniError(IO_FAILURE, f"{ifname}: table {min(tables)} for {address} has no"
                           f" default route via {gateway}")


# -- the option of this project's kinds ----------------------------------------------------------


def attach(ctx: Context, request: CniRequest, pod: Netlink, index: int, result: Result,
           conf: SbrConf | None) -> None:
    """The ``sbr`` option, once the kind's addresses and routes are in place: on failure the
    addresses are released (the caller removes the link, and with it its routes)."""
    if conf is None:
        return
    try:
        apply(pod, request.ifname, index, result, conf)
    except BaseException:
        ipam.delete(ctx, request)
        raise


def detach(ctx: Context, request: CniRequest) -> None:
    """DEL of a kind with the ``sbr`` option, before its link goes: its rules and tables. DEL
    needs no valid configuration: an unreadable option removes every rule from the link's
    addresses. A refusal is logged, never fails DEL (the link goes anyway, and a failing DEL
    blocks the pod's termination)."""
    if not request.config.get("sbr") or not request.netns or not os.path.exists(request.netns):
        return
    try:
        conf = option(request.config) or SbrConf()
    except CniError:
        conf = SbrConf()
    with ctx.pod(request.netns) as pod:
        try:
            remove(pod, request.ifname, conf, request.prev_result)
        except CniError as exc:
            log.warning("DEL %s: source-based routing left behind: %s", request.ifname, exc)
