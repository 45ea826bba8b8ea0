"""macvlan: a MAC-addressed sub-interface of a master link, created inside the pod namespace.

Configuration as the reference plugin: ``master`` (default: the link of the default route),
``mode`` (bridge, private, vepa, passthru), ``mtu``, ``mac``, ``linkInContainer``; the MAC may
also come from ``runtimeConfig.mac`` (Multus capability) or ``CNI_ARGS`` ``MAC=``.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from cni import ipam, links
from cni.context import Context, attachment_mac, master_index, retry_if_master_moved
from cni.errors import INVALID_CONFIG, IO_FAILURE, CniError, config_error
from cni.protocol import CniRequest
from cni.result import Interface, Result
from nodeagent.rtnl import Rtnl

MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8}


@dataclass(frozen=True)
class MacvlanConf:
    master: str | None
    mode: str
    mtu: int
    mac: str | None
    link_in_container: bool


def parse(request: CniRequest) -> MacvlanConf:
    c = request.config
    master = c.get("master")
    if master is not None and (not isinstance(master, str) or not master):
        raise config_error("master", "must be a non-empty string")
    mode = c.get("mode", "bridge")
    if mode not in MODES:
        raise config_error("mode", f"{mode!r} is not one of {', '.join(MODES)}")
    mtu = c.get("mtu", 0)
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not 0 <= mtu <= 65535:
        raise config_error("mtu", f"{mtu!r} is not an integer from 0 to 65535")
    link_in_container = c.get("linkInContainer", False)
    if not isinstance(link_in_container, bool):
        raise config_error("linkInContainer", "must be true or false")
    return MacvlanConf(master, mode, mtu, attachment_mac(request), link_in_container)


def add(ctx: Context, request: CniRequest) -> Result:
    conf = parse(request)
    netns_fd = os.open(request.netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with Rtnl(request.netns) as pod:
            creator = pod if conf.link_in_container else ctx.host

            def create() -> None:
                creator.link_create(
                    request.ifname, "macvlan",
                    data=[("IFLA_MACVLAN_MODE", MODES[conf.mode])],
                    lower=master_index(ctx, creator, conf.master, request),
                    netns_fd=None if conf.link_in_container else netns_fd,
                    mtu=conf.mtu, mac=conf.mac,
                )

            try:
                retry_if_master_moved(ctx, create)
            except OSError as exc:
                raise _create_error(exc, request, conf) from None
            return _finish_add(ctx, request, pod)
    finally:
        os.close(netns_fd)


def _finish_add(ctx: Context, request: CniRequest, pod: Rtnl) -> Result:
    """Addresses, routes, announcements; on any failure undo the link and the IPs."""
    link = pod.link(name=request.ifname)
    index, mac = link["index"], link.get("IFLA_ADDRESS")
    allocated = False
    try:
        result = ipam.add(request)
        allocated = True
        links.configure(pod, request.netns, request.ifname, index, result)
    except BaseException:
        pod.link_delete(index)
        if allocated:
            ipam.delete(request)
        raise
    result.interfaces = [Interface(request.ifname, mac=mac, sandbox=request.netns,
                                   mtu=link.get("IFLA_MTU"))]
    for ip in result.ips:
        ip.interface = 0
    return result


def _create_error(exc: OSError, request: CniRequest, conf: MacvlanConf) -> CniError:
    if exc.errno == errno.EEXIST:
        return CniError(INVALID_CONFIG, f"an interface named {request.ifname} already exists in"
                        f" {request.netns}")
    if exc.errno == errno.EADDRNOTAVAIL or exc.errno == errno.EINVAL:
        return CniError(INVALID_CONFIG, f"the kernel refused a macvlan on {conf.master} in mode"
                        f" {conf.mode}: {exc.strerror}", f"mac={conf.mac} mtu={conf.mtu}")
    return CniError(IO_FAILURE, f"creating macvlan {request.ifname} failed: {exc.strerror}")


def delete(ctx: Context, request: CniRequest) -> None:
    ipam.delete(request)
    links.delete_in_netns(request)


def check(ctx: Context, request: CniRequest) -> None:
    parse(request)
    prev = links.require_prev_result(request)
    with Rtnl(request.netns) as pod:
        link = links.require_link(pod, request, "macvlan")
        links.check_addresses(pod, link["index"], prev, request.ifname)
    ipam.check(request)
