"""Which links carry a default route, and which links are stacked on a given link.

nodeagent's discovery answers the same question (nodeagent.netlink.default_route_links); the
guard keeps its own, stricter answer on purpose: it protects real hardware and must not depend
on the code under test. It looks at every routing table and refuses routes it cannot resolve.
"""

from __future__ import annotations

from socket import AF_INET, AF_INET6
from typing import Any

RTN_UNICAST = 1


class UnresolvedRouteError(RuntimeError):
    """A default route whose output device cannot be told (e.g. a nexthop object)."""


def default_route_links(ipr: Any) -> set[int]:
    """Interface indexes that carry an IPv4 or IPv6 default route, in any routing table."""
    found: set[int] = set()
    for family in (AF_INET, AF_INET6):
        for route in ipr.get_routes(family=family):
            if route["dst_len"] != 0 or route["type"] != RTN_UNICAST:
                continue
            oifs = [route.get_attr("RTA_OIF")]
            for hop in route.get_attr("RTA_MULTIPATH") or []:
                oifs.append(hop.get("oif"))
            oifs = [oif for oif in oifs if oif]
            if not oifs:
                raise UnresolvedRouteError(
                    f"default route {route.get_attr('RTA_GATEWAY')!r} (family {family}, table "
                    f"{route.get_attr('RTA_TABLE')}) names no output device; refusing to guess"
                )
            found.update(oifs)
    return found


def stacked_on(ipr: Any, index: int) -> set[int]:
    """`index` plus every link stacked on it in this namespace.

    Follows both directions the kernel stacks devices: masters (bond, bridge, team: IFLA_MASTER)
    and upper devices that name it as their lower (VLAN, macvlan, ipvlan: IFLA_LINK).
    """
    links = ipr.get_links()
    uppers: dict[int, set[int]] = {}
    for link in links:
        idx = link["index"]
        master = link.get_attr("IFLA_MASTER")
        lower = link.get_attr("IFLA_LINK")
        if master:
            uppers.setdefault(idx, set()).add(master)
        if lower and lower != idx and link.get_attr("IFLA_LINK_NETNSID") is None:
            uppers.setdefault(lower, set()).add(idx)
    seen = {index}
    todo = [index]
    while todo:
        for up in uppers.get(todo.pop(), ()):
            if up not in seen:
                seen.add(up)
                todo.append(up)
    return seen
