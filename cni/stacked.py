"""ADD, DEL and CHECK shared by link types stacked on a master link (macvlan, ipvlan, vlan).

The link is created directly inside the pod namespace (IFLA_NET_NS_FD) under its final name,
so there is no temporary name to clean up and nothing visible in the host namespace; then
IPAM, addresses and routes. Any failure after creation removes the link and releases the IPs.
"""

from __future__ import annotations

import contextvars
import errno
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cni import ipam, links, sbr
from cni.context import FIELDS, Context, Netlink, master_index, retry_if_master_moved
from cni.kinds import Handler
from cni.protocol import CniRequest
from nodeagent.cnitypes.errors import INVALID_CONFIG, IO_FAILURE, CniError
from nodeagent.cnitypes.result import Interface, Result


@dataclass(frozen=True)
class StackedLink:
    """What to create: an rtnetlink link kind with its IFLA_INFO_DATA, on ``master``."""

    kind: str
    data: list[tuple[str, Any]] = field(default_factory=list)
    master: str | None = None
    link_in_container: bool = False
    mtu: int = 0
    mac: str | None = None
    sbr: sbr.SbrConf | None = None


def common_fields(request: CniRequest) -> dict[str, Any]:
    """``master``, ``mtu`` and ``linkInContainer``, as every stacked type names them (the
    reference plugins' meaning: no master: the IPv4 default route's link; mtu 0: the
    master's), and this project's ``sbr`` option (cni.sbr)."""
    c = request.config
    return {
        "master": FIELDS.string(c, "master", "", None, max_len=15),
        "mtu": FIELDS.integer(c, "mtu", "", 0, 65535, default=0),
        "link_in_container": FIELDS.boolean(c, "linkInContainer", "", default=False),
        "sbr": sbr.option(c),
    }


def mode(request: CniRequest, modes: dict[str, int], default: str) -> int:
    """The ``mode`` field of macvlan and ipvlan: one of ``modes`` (``default`` when absent or
    empty, as the reference plugins read it)."""
    if request.config.get("mode") == "":
        return modes[default]
    return FIELDS.choice(request.config, "mode", "", modes, default=modes[default])


def add(ctx: Context, request: CniRequest, spec: StackedLink) -> Result:
    settle(ctx, request)
    netns_fd = os.open(request.netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with ctx.pod(request.netns) as pod:
            creator = pod if spec.link_in_container else ctx.host

            def create() -> None:
                creator.link_create(
                    request.ifname, spec.kind, data=spec.data,
                    lower=master_index(ctx, creator, spec.master, request),
                    netns_fd=None if spec.link_in_container else netns_fd,
                    mtu=spec.mtu, mac=spec.mac,
                )

            try:
                retry_if_master_moved(ctx, create)
            except OSError as exc:
                raise _create_error(exc, request, spec) from None
            return _configure(ctx, request, pod, spec)
    finally:
        os.close(netns_fd)


def _configure(ctx: Context, request: CniRequest, pod: Netlink, spec: StackedLink) -> Result:
    link = pod.link_brief(request.ifname)
    if link is None:  # gone already: the pod's namespace is being torn down
        raise CniError(IO_FAILURE, f"{request.ifname} vanished from {request.netns} as it was"
                       " created")
    index = link.index
    try:
        result = links.address(ctx, request, pod, index)
        sbr.attach(ctx, request, pod, index, result, spec.sbr)
    except BaseException:
        pod.link_delete(index)
        raise
    result.interfaces = [Interface(request.ifname, mac=link.mac, sandbox=request.netns,
                                   mtu=link.mtu)]
    for ip in result.ips:
        ip.interface = 0
    return result


def _create_error(exc: OSError, request: CniRequest, spec: StackedLink) -> CniError:
    if exc.errno == errno.EEXIST:
        return CniError(INVALID_CONFIG, f"an interface named {request.ifname} already exists in"
                        f" {request.netns}")
    if exc.errno in (errno.EINVAL, errno.ERANGE, errno.EADDRNOTAVAIL, errno.EBUSY):
        return CniError(INVALID_CONFIG, f"the kernel refused a {spec.kind} on"
                        f" {spec.master or 'the default-route link'}: {exc.strerror}",
                        f"mtu={spec.mtu} mac={spec.mac} data={spec.data}")
    if exc.errno == errno.EOPNOTSUPP:
        return CniError(INVALID_CONFIG, f"this kernel cannot create {spec.kind} links")
    return CniError(IO_FAILURE, f"creating {spec.kind} {request.ifname} failed: {exc.strerror}")


#: IPAM releases of DELs, run while the DEL's own thread removes the link (as many as the
#: CNI server's workers: a burst of DELs never queues here).
_RELEASES = ThreadPoolExecutor(max_workers=32, thread_name_prefix="del-ipam")


def delete(ctx: Context, request: CniRequest) -> None:
    """IPAM's release and the link's removal wait on different things (the store's fsync or
    etcd; the kernel's rtnl lock), so they overlap: the release runs on a helper thread, and
    DEL replies once both are done (the release durable, as before)."""
    conf = ipam.ipam_config(request)
    if conf is None or conf.get("type") == "static":
        sbr.detach(ctx, request)
        links.delete_in_netns(ctx, request)
        return
    release = _RELEASES.submit(contextvars.copy_context().run, ipam.delete, ctx, request)
    try:
        sbr.detach(ctx, request)
        links.delete_in_netns(ctx, request)
    finally:
        error = release.exception()  # waits: nothing of this DEL runs after its reply
    if error is not None:
        raise error


def settle(ctx: Context, request: CniRequest) -> None:
    """Finish a deletion still in flight for this namespace and name (cni/teardown.py): what
    follows must not see the link of an earlier DEL."""
    if ctx.teardown is not None and request.netns:
        ctx.teardown.settle(request.netns, request.ifname)


def check(ctx: Context, request: CniRequest, kind: str,
          routing: sbr.SbrConf | None = None) -> None:
    prev = links.require_prev_result(request)
    settle(ctx, request)
    with ctx.pod(request.netns) as pod:
        link = links.require_link(pod, request, kind)
        links.check_addresses(pod, link["index"], prev, request.ifname)
        if routing is not None:
            sbr.verify(pod, request.ifname, link["index"], prev, routing)
    ipam.check(ctx, request)


class StackedHandler(Handler[StackedLink]):
    """The ADD/DEL/CHECK/GC of one stacked link type, given how to parse its configuration."""

    def __init__(self, kind: str, parse: Callable[[CniRequest], StackedLink]) -> None:
        self.kind = kind
        self._parse = parse

    def parse(self, request: CniRequest) -> StackedLink:
        return self._parse(request)

    def add(self, ctx: Context, request: CniRequest) -> Result:
        return add(ctx, request, self.parse(request))

    def delete(self, ctx: Context, request: CniRequest) -> None:
        delete(ctx, request)

    def check(self, ctx: Context, request: CniRequest) -> None:
        check(ctx, request, self.kind, self.parse(request).sbr)

    def gc(self, ctx: Context, request: CniRequest) -> None:
        """Links die with their pod's namespace: only IPAM has anything to collect (after
        every deletion still in flight)."""
        if ctx.teardown is not None:
            ctx.teardown.settle_all()
        ipam.gc(ctx, request)
