"""What every link-type plugin does inside the pod namespace once its link exists there."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

from cni import ipam
from cni.context import Context, Netlink
from cni.protocol import CniRequest
from nodeagent.cnitypes.errors import INVALID_CONFIG, IO_FAILURE, CniError
from nodeagent.cnitypes.result import Result

log = logging.getLogger(__name__)


@contextlib.contextmanager
def kernel_errors(what: str) -> Iterator[None]:
    """Turn a kernel refusal into a CNI error that says what was being done."""
    try:
        yield
    except OSError as exc:
        code = INVALID_CONFIG if exc.errno in (errno.EINVAL, errno.ERANGE) else IO_FAILURE
        raise CniError(code, f"{what}: {exc.strerror}", f"errno {exc.errno}") from None


def configure(pod: Netlink, ifname: str, index: int, result: Result) -> None:
    """Addresses, announcements, link up, then routes (a route needs its subnet up)."""
    for ip in result.ips:
        family = socket.AF_INET if ip.address.version == 4 else socket.AF_INET6
        with kernel_errors(f"adding address {ip.address}"):
            pod.address_add(index, str(ip.address.ip), ip.address.network.prefixlen, family,
                            nodad=family == socket.AF_INET6)
    announce_on_up(pod, ifname)
    with kernel_errors("bringing the interface up"):
        pod.link_set(index, up=True)
    for route in result.routes:
        family = socket.AF_INET if route.dst.version == 4 else socket.AF_INET6
        # A route without "gw" goes through the gateway of the same family, as the reference
        # plugins do; the result keeps it as configured.
        gw = route.gw or next((ip.gateway for ip in result.ips
                               if ip.gateway and ip.gateway.version == route.dst.version), None)
        with kernel_errors(f"adding route to {route.dst}"):
            pod.route_add(family, str(route.dst.network_address), route.dst.prefixlen,
                          gateway=str(gw) if gw else None, oif=index, mtu=route.mtu,
                          advmss=route.advmss, priority=route.priority, table=route.table,
                          scope=route.scope)


def address(ctx: Context, request: CniRequest, pod: Netlink, index: int) -> Result:
    """IPAM for the attachment, then its addresses and routes on ``index`` in the pod; the
    addresses are released again if the kernel refuses any of it."""
    result = ipam.add(ctx, request)
    try:
        configure(pod, request.ifname, index, result)
    except BaseException:
        ipam.delete(ctx, request)
        raise
    return result


def announce_on_up(pod: Netlink, ifname: str) -> None:
    """Have the kernel send a gratuitous ARP and unsolicited neighbour advertisements when
    the interface comes up (``arp_notify``, ``ndisc_notify``), so peers drop stale entries.

    Sending them ourselves needs an AF_PACKET socket, whose release waits for an RCU grace
    period (~14 ms measured here): more than a whole ADD. Best effort: a failure is logged.
    """
    for key in (f"net/ipv4/conf/{ifname}/arp_notify", f"net/ipv6/conf/{ifname}/ndisc_notify"):
        try:
            pod.set_sysctl(key, "1")
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # no IPv6 in this kernel: nothing to announce
                log.warning("cannot enable %s: %s", key, exc)


def check_addresses(pod: Netlink, index: int, result: Result, ifname: str) -> None:
    """CHECK: every address of the previous result is on the interface."""
    present = set()
    for msg in pod.addresses():
        if msg["index"] == index:
            address = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
            present.add(ipaddress.ip_interface(f"{address}/{msg['prefixlen']}"))
    for ip in result.ips:
        if ip.address not in present:
            raise CniError(IO_FAILURE, f"{ifname} lacks address {ip.address}",
                           "present: " + ", ".join(sorted(map(str, present))))


def require_prev_result(request: CniRequest) -> Result:
    prev = request.prev_result
    if prev is None:
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult in the network configuration")
    return prev


def require_link(pod: Netlink, request: CniRequest, kind: str) -> Any:
    link = pod.link(name=request.ifname)
    if link is None:
        raise CniError(IO_FAILURE, f"{request.ifname} does not exist in {request.netns}")
    actual = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    if actual != kind:
        raise CniError(IO_FAILURE, f"{request.ifname} is a {actual or 'device'}, not a {kind}")
    prev = request.prev_result
    expected = next((i.mac for i in prev.interfaces if i.name == request.ifname and i.mac), None)
    if prev and expected and link.get("IFLA_ADDRESS") != expected:
        raise CniError(IO_FAILURE, f"{request.ifname} has MAC {link.get('IFLA_ADDRESS')}, the"
                       f" previous result says {expected}")
    return link


def delete_in_netns(ctx: Context, request: CniRequest) -> None:
    """Remove the pod's interface; nothing to do when the namespace or the link is gone. With
    ``ctx.teardown`` the kernel's deletion finishes after the reply (cni/teardown.py)."""
    if not request.netns or not os.path.exists(request.netns):
        return
    if ctx.teardown is not None:  # a link of an earlier DEL may still hold the name
        ctx.teardown.settle(request.netns, request.ifname)
    pod: Netlink | None = ctx.pod(request.netns)
    try:
        assert pod is not None
        link = pod.link_brief(request.ifname)
        if link is None:
            return
        index = link.index
        with kernel_errors(f"deleting {request.ifname}"):
            if ctx.teardown is None:
                pod.link_delete(index)
            else:
                handed, pod = pod, None  # the teardown owns (and closes) the client
                ctx.teardown.retire(handed, request.netns, request.ifname, index)
    finally:
        if pod is not None:
            pod.close()
