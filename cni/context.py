"""What handlers share across requests, and config facts common to the link types."""

from __future__ import annotations

import errno
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from cni.protocol import CniRequest
from nodeagent import logs
from nodeagent.cnitypes.errors import INVALID_CONFIG, CniError, config_error
from nodeagent.ipam.allocator import Ipam
from nodeagent.netlink import default_route_oifs
from nodeagent.rtnl import Rtnl
from nodeagent.sysfs import Sysfs
from nodeagent.vfstate import VfState

MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


@dataclass
class Context:
    """Per-process state of the CNI handlers: the host-namespace netlink socket, host master
    name -> ifindex (dropped when the kernel says the master is gone), and the IPAM stores."""

    host: Rtnl = field(default_factory=Rtnl)
    masters: dict[str, int] = field(default_factory=dict)
    ipam: Ipam = field(default_factory=Ipam)
    vfs: VfState = field(default_factory=VfState.default)
    sysfs: Sysfs = field(default_factory=Sysfs)

    def close(self) -> None:
        self.host.close()
        self.ipam.close()


def validate_mac(mac: str, where: str) -> str:
    if not isinstance(mac, str) or not MAC.match(mac):
        raise config_error(where, f"{mac!r} is not a MAC address (xx:xx:xx:xx:xx:xx)")
    first = int(mac[:2], 16)
    if first & 1:
        raise config_error(where, f"{mac} is a multicast MAC address")
    if mac == "00:00:00:00:00:00":
        raise config_error(where, "00:00:00:00:00:00 is not a usable MAC address")
    return mac.lower()


def attachment_mac(request: CniRequest) -> str | None:
    """The MAC asked for: runtimeConfig.mac, else CNI_ARGS MAC=, else the config's ``mac``."""
    if "mac" in request.runtime_config:
        return validate_mac(request.runtime_config["mac"], "runtimeConfig.mac")
    if request.args.get("MAC"):
        return validate_mac(request.args["MAC"], "CNI_ARGS MAC")
    if request.config.get("mac") is not None:
        return validate_mac(request.config["mac"], "mac")
    return None


def master_index(ctx: Context, rtnl: Rtnl, master: str | None, request: CniRequest) -> int:
    """The ifindex of the master link, or of the default route's link when none is named."""
    if master is None:  # as the reference plugins: the IPv4 default route's link
        oifs = default_route_oifs(rtnl, (socket.AF_INET,))
        if oifs:
            link = rtnl.link(index=oifs[0])
            logs.annotate(device=link.get("IFLA_IFNAME") if link is not None else "")
            return oifs[0]
        raise CniError(INVALID_CONFIG, "no master given and no default route to take it from")
    cached = rtnl is ctx.host
    index = ctx.masters.get(master) if cached else None
    if index is None:
        index = rtnl.link_index(master)
        if cached and index is not None:
            ctx.masters[master] = index
    if index is None:
        where = request.netns if rtnl is not ctx.host else "the host network namespace"
        raise CniError(INVALID_CONFIG, f"master {master!r} does not exist in {where}")
    return index


def retry_if_master_moved(ctx: Context, create: Callable[[], None]) -> None:
    """Run a link creation; if a cached master ifindex is stale (ENODEV), look it up again."""
    try:
        create()
    except OSError as exc:
        if exc.errno != errno.ENODEV or not ctx.masters:
            raise
        ctx.masters.clear()
        create()
