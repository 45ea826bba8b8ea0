"""What handlers share across requests: the netlink seam, the stores, and config facts common
to the link types.

Every netlink request a kind makes goes through :class:`Netlink` clients that
``Context.open_netlink`` opens (``None``: the agent's own namespace, once, as ``Context.host``;
a path: the pod's namespace). The real client is :class:`nodeagent.rtnl.Rtnl`; the unit tests
open a recording double of this interface, so the kinds' decisions run without root.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from cni.protocol import CniRequest
from nodeagent import logs
from nodeagent.cnitypes.errors import INVALID_CONFIG, CniError, config_error
from nodeagent.fields import Fields
from nodeagent.ipam.allocator import Ipam
from nodeagent.netlink import default_route_oifs
from nodeagent.policy.attachments import AttachmentHook
from nodeagent.rtnl import LinkBrief, Rtnl
from nodeagent.sysfs import Sysfs
from nodeagent.vfbatch import VfResult, VfUpdate
from nodeagent.vfstate import VfState

if TYPE_CHECKING:
    from cni.teardown import Teardown

#: The typed fields of network configurations: every failure is CNI code 7 naming the field.
FIELDS = Fields(config_error)


class Netlink(Protocol):
    """The requests the kinds make of one network namespace (nodeagent.rtnl.Rtnl's calls)."""

    netns: str | None

    def close(self) -> None: ...
    def __enter__(self) -> Netlink: ...
    def __exit__(self, *exc: object) -> None: ...
    def link(self, *, index: int = 0, name: str | None = None, ext_mask: int = 0) -> Any: ...
    def link_index(self, name: str) -> int | None: ...
    def link_create(self, name: str, kind: str, *, data: list[tuple[str, Any]] | None = None,
                    lower: int | None = None, netns_fd: int | None = None,
                    mtu: int | None = None, mac: str | None = None) -> None: ...
    def link_set(self, index: int, *, up: bool | None = None, name: str | None = None,
                 mtu: int | None = None, mac: str | None = None, netns_fd: int | None = None,
                 extra: list[tuple[str, Any]] | None = None) -> None: ...
    def link_delete(self, index: int) -> bool: ...
    def addresses(self, family: int = socket.AF_UNSPEC) -> list[Any]: ...
    def address_add(self, index: int, address: str, prefixlen: int, family: int,
                    nodad: bool = False) -> None: ...
    def routes(self, family: int = socket.AF_UNSPEC) -> list[Any]: ...
    def route_add(self, family: int, dst: str | None, dst_len: int, *,
                  gateway: str | None = None, oif: int | None = None, table: int | None = None,
                  scope: int | None = None, priority: int | None = None,
                  mtu: int | None = None, advmss: int | None = None) -> None: ...
    def set_vfs(self, pf_index: int, updates: Sequence[VfUpdate]) -> list[VfResult]: ...
    def set_sysctl(self, key: str, value: str) -> None: ...
    def rules(self, family: int = socket.AF_UNSPEC) -> list[Any]: ...
    def rule_add(self, family: int, src: str, src_len: int, *, table: int,
                 priority: int | None = None) -> None: ...
    def rule_delete(self, family: int, src: str, src_len: int, *, table: int,
                    priority: int | None = None) -> bool: ...
    def route_replace(self, family: int, dst: str | None, dst_len: int, *, table: int,
                      gateway: str | None = None, oif: int | None = None,
                      scope: int | None = None, priority: int | None = None,
                      prefsrc: str | None = None, proto: int | None = None,
                      metrics: dict[str, int] | None = None) -> None: ...
    def route_delete(self, family: int, dst: str | None, dst_len: int, *, table: int,
                     gateway: str | None = None, oif: int | None = None,
                     priority: int | None = None) -> bool: ...
    def link_brief(self, name: str) -> LinkBrief | None: ...
    def links(self, ext_mask: int = 0) -> list[Any]: ...
    def fdb_append(self, index: int, mac: str, dst: str) -> None: ...
    def fdb_delete(self, index: int, mac: str, dst: str) -> bool: ...
    def fdb_entries(self, index: int) -> list[tuple[str, str | None]]: ...
    def address_delete(self, index: int, address: str, prefixlen: int, family: int) -> bool: ...
    def retire_link(self, index: int, name: str | None) -> int: ...


@dataclass
class Context:
    """Per-process state of the CNI handlers: how to open a netlink client in a namespace, the
    host-namespace client, host master name -> ifindex (dropped when the kernel says the
    master is gone), the IPAM stores, the VF attachment records and sysfs."""

    open_netlink: Callable[[str | None], Netlink] = Rtnl
    host: Netlink = None  # type: ignore[assignment]  # opened by __post_init__ unless given
    masters: dict[str, int] = field(default_factory=dict)
    ipam: Ipam = field(default_factory=Ipam)
    vfs: VfState = field(default_factory=VfState.default)
    sysfs: Sysfs = field(default_factory=Sysfs)
    #: Told of every attachment made and removed (the network policy controller); None: off.
    attachments: AttachmentHook | None = None
    #: VXLAN overlay members in the cluster store (nodeagent.overlay.members.Membership);
    #: None: opened by the vxlan kind on first use from ``ipam.cluster``.
    overlay: Any = None
    #: Links whose DEL has replied and whose deletion is in flight (None: DEL deletes them
    #: before replying, as the in-process fallback does).
    teardown: Teardown | None = None

    def __post_init__(self) -> None:
        if self.host is None:
            self.host = self.open_netlink(None)

    def pod(self, netns: str) -> Netlink:
        """A netlink client in the pod's namespace (a path); the caller closes it."""
        return self.open_netlink(netns)

    def close(self) -> None:
        self.host.close()
        self.ipam.close()


def attachment_mac(request: CniRequest) -> str | None:
    """The MAC asked for: runtimeConfig.mac, else CNI_ARGS MAC=, else the config's ``mac``."""
    if "mac" in request.runtime_config:
        return FIELDS.mac(request.runtime_config["mac"], "runtimeConfig.mac")
    if request.args.get("MAC"):
        return FIELDS.mac(request.args["MAC"], "CNI_ARGS MAC")
    if request.config.get("mac") is not None:
        return FIELDS.mac(request.config["mac"], "mac")
    return None


def master_index(ctx: Context, rtnl: Netlink, master: str | None, request: CniRequest) -> int:
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
