"""A small synchronous rtnetlink client: pyroute2 encodes and decodes, we do the socket I/O.

pyroute2's own socket objects run every request through an asyncio loop (about 1 ms each) and
must be used from the thread that created them. The CNI ADD path needs a handful of requests in
a few milliseconds from a pool of worker threads, so requests here are plain ``send``/``recv``
on a netlink socket: about 0.15 ms each, from any thread (one request at a time per socket).
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Sequence
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from nodeagent import netns as netns_mod
from nodeagent import vfbatch

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_DELLINKPROP = 109
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFF_UP = 0x1
RT_TABLE_UNSPEC, RT_TABLE_MAIN = 0, 254
RTPROT_BOOT, RTPROT_STATIC = 3, 4
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RTN_UNICAST = 1
IFA_F_NODAD = 0x02
RTEXT_FILTER_SKIP_STATS = 1 << 3
#: Extra sockets a client of the agent's own namespace opens for concurrent requests.
MAX_SPARES = 8


def _link_attrs(*, mtu: int | None, mac: str | None, netns_fd: int | None
                ) -> list[tuple[str, Any]]:
    """The optional link attributes RTM_NEWLINK takes both when creating and when changing."""
    attrs: list[tuple[str, Any]] = []
    if mtu:
        attrs.append(("IFLA_MTU", mtu))
    if mac:
        attrs.append(("IFLA_ADDRESS", mac))
    if netns_fd is not None:
        attrs.append(("IFLA_NET_NS_FD", netns_fd))
    return attrs


class Rtnl:
    """One rtnetlink socket in one network namespace (the caller's, or ``netns``)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._sock = self._open_socket()
        self._marshal = MarshalRtnl()
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._lock = threading.Lock()
        # Sockets for requests made while the first is busy (the agent's own namespace is
        # shared by every CNI worker): the kernel serialises what it must, not this client.
        self._spares: list[tuple[socket.socket, Any]] = []
        self._spares_made = 0
        self._spares_lock = threading.Lock()

    def _open_socket(self) -> socket.socket:
        sock = netns_mod.run(self.netns, lambda: socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, 0))
        return sock

    def close(self) -> None:
        self._sock.close()
        with self._spares_lock:
            for sock, _ in self._spares:
                sock.close()
            self._spares = []

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------------

    def request(self, msg: Any, msg_type: int, flags: int = 0) -> list[Any]:
        """Send one request; return the replies (dumps: all parts). Raises OSError(errno)."""
        if not self._lock.acquire(blocking=False):
            spare = self._spare()
            if spare is not None:
                try:
                    return self._exchange(spare[0], spare[1], msg, msg_type, flags)
                finally:
                    with self._spares_lock:
                        self._spares.append(spare)
            self._lock.acquire()
        try:
            return self._exchange(self._sock, self._marshal, msg, msg_type, flags)
        finally:
            self._lock.release()

    def _spare(self) -> tuple[socket.socket, Any] | None:
        """A free extra socket of this client's namespace (made if fewer than MAX_SPARES
        exist), or None."""
        with self._spares_lock:
            if self._spares:
                return self._spares.pop()
            if self.netns is not None or self._spares_made >= MAX_SPARES:
                return None
            self._spares_made += 1
        return self._open_socket(), MarshalRtnl()

    def _exchange(self, sock: socket.socket, marshal: Any, msg: Any, msg_type: int,
                  flags: int) -> list[Any]:
        """One request and its replies on ``sock``, which the caller holds alone."""
        with self._seq_lock:
            self._seq += 1
            seq = self._seq
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = flags | NLM_F_REQUEST | NLM_F_ACK
        msg["header"]["sequence_number"] = seq
        msg.encode()
        sock.send(msg.data)
        replies: list[Any] = []
        while True:
            for reply in marshal.parse(sock.recv(1 << 20)):
                if reply["header"]["sequence_number"] != seq:
                    continue  # a late answer to an abandoned request
                kind = reply["header"]["type"]
                if kind == NLMSG_DONE:
                    return replies
                if kind == NLMSG_ERROR:
                    code = reply["error"] or 0
                    if code:
                        code = abs(code)
                        raise OSError(code, os.strerror(code))
                    return replies
                replies.append(reply)

    def dump(self, msg: Any, msg_type: int) -> list[Any]:
        return self.request(msg, msg_type, NLM_F_DUMP)

    # -- links ------------------------------------------------------------------------------

    def links(self, ext_mask: int = 0) -> list[Any]:
        msg = ifinfmsg()
        if ext_mask:
            msg["attrs"] = [("IFLA_EXT_MASK", ext_mask)]
        return self.dump(msg, RTM_GETLINK)

    def link(self, *, index: int = 0, name: str | None = None, ext_mask: int = 0) -> Any | None:
        """One link by index or name, or None if there is no such link (without statistics:
        they are most of the reply and no caller needs them)."""
        msg = ifinfmsg()
        msg["index"] = index
        msg["attrs"] = [("IFLA_IFNAME", name)] if name else []
        msg["attrs"].append(("IFLA_EXT_MASK", ext_mask | RTEXT_FILTER_SKIP_STATS))
        try:
            (reply,) = self.request(msg, RTM_GETLINK)
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return reply

    def link_index(self, name: str) -> int | None:
        reply = self.link(name=name)
        return None if reply is None else reply["index"]

    def link_create(self, name: str, kind: str, *, data: list[tuple[str, Any]] | None = None,
                    lower: int | None = None, netns_fd: int | None = None, mtu: int | None = None,
                    mac: str | None = None) -> None:
        """RTM_NEWLINK with NLM_F_EXCL; ``netns_fd`` creates it directly in another namespace."""
        msg = ifinfmsg()
        info: list[tuple[str, Any]] = [("IFLA_INFO_KIND", kind)]
        if data:
            info.append(("IFLA_INFO_DATA", {"attrs": data}))
        attrs: list[tuple[str, Any]] = [("IFLA_IFNAME", name), ("IFLA_LINKINFO", {"attrs": info})]
        if lower is not None:
            attrs.append(("IFLA_LINK", lower))
        msg["attrs"] = attrs + _link_attrs(mtu=mtu, mac=mac, netns_fd=netns_fd)
        self.request(msg, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)

    def link_set(self, index: int, *, up: bool | None = None, name: str | None = None,
                 mtu: int | None = None, mac: str | None = None, netns_fd: int | None = None,
                 extra: list[tuple[str, Any]] | None = None) -> None:
        msg = ifinfmsg()
        msg["index"] = index
        if up is not None:
            msg["flags"] = IFF_UP if up else 0
            msg["change"] = IFF_UP
        attrs: list[tuple[str, Any]] = list(extra or [])
        if name:
            attrs.append(("IFLA_IFNAME", name))
        msg["attrs"] = attrs + _link_attrs(mtu=mtu, mac=mac, netns_fd=netns_fd)
        try:
            self.request(msg, RTM_NEWLINK)
        except OSError as exc:
            # udev gives a renamed link its predictable name as an altname, and the kernel
            # refuses a name any link holds, its own altname too (EEXIST): renaming a link
            # back to that name drops the altname first.
            if exc.errno != errno.EEXIST or not name or name not in self.altnames(index):
                raise
            self.drop_altname(index, name)
            self.link_set(index, up=up, name=name, mtu=mtu, mac=mac, netns_fd=netns_fd,
                          extra=extra)

    def altnames(self, index: int) -> list[str]:
        """The link's alternative names (``ip link property``), [] if it has none or is gone."""
        link = self.link(index=index)
        props = link.get_attr("IFLA_PROP_LIST") if link is not None else None
        return [] if props is None else list(props.get_attrs("IFLA_ALT_IFNAME"))

    def drop_altname(self, index: int, name: str) -> None:
        msg = ifinfmsg()
        msg["index"] = index
        msg["attrs"] = [("IFLA_PROP_LIST", {"attrs": [("IFLA_ALT_IFNAME", name)]})]
        self.request(msg, RTM_DELLINKPROP)

    def link_delete(self, index: int) -> bool:
        """Delete a link; False if it was already gone."""
        msg = ifinfmsg()
        msg["index"] = index
        try:
            self.request(msg, RTM_DELLINK)
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True

    def set_vfs(self, pf_index: int, updates: Sequence[vfbatch.VfUpdate]) -> list[vfbatch.VfResult]:
        """PF-side settings of the PF's VFs, through the native batch setter
        (nodeagent.vfbatch.apply: its own socket, in this client's namespace)."""
        return vfbatch.apply(pf_index, updates, netns=self.netns)

    def set_sysctl(self, key: str, value: str) -> None:
        """Write ``/proc/sys/<key>`` (``net/ipv4/conf/eth0/arp_notify``) as this client's
        namespace sees it; OSError as the kernel refuses."""
        def write() -> None:  # /proc/sys/net shows the namespace of the thread that opens it
            with open(f"/proc/sys/{key}", "w") as f:
                f.write(value)

        netns_mod.run(self.netns, write)

    # -- addresses and routes ---------------------------------------------------------------

    def addresses(self, family: int = socket.AF_UNSPEC) -> list[Any]:
        msg = ifaddrmsg()
        msg["family"] = family
        return self.dump(msg, RTM_GETADDR)

    def address_add(self, index: int, address: str, prefixlen: int, family: int,
                    nodad: bool = False) -> None:
        msg = ifaddrmsg()
        msg["family"] = family
        msg["prefixlen"] = prefixlen
        msg["index"] = index
        if nodad:
            msg["flags"] = IFA_F_NODAD
        msg["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
        if family == socket.AF_INET6:
            msg["attrs"] = [("IFA_ADDRESS", address)]
        self.request(msg, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL)

    def routes(self, family: int = socket.AF_UNSPEC) -> list[Any]:
        msg = rtmsg()
        msg["family"] = family
        return self.dump(msg, RTM_GETROUTE)

    def route_add(self, family: int, dst: str | None, dst_len: int, *, gateway: str | None = None,
                  oif: int | None = None, table: int | None = None, scope: int | None = None,
                  priority: int | None = None, mtu: int | None = None,
                  advmss: int | None = None) -> None:
        """A unicast route; ``table`` (default main), ``scope`` (default: universe with a
        gateway, link without), ``priority`` (metric), ``mtu`` and ``advmss`` as ip-route's."""
        msg = rtmsg()
        msg["family"] = family
        msg["dst_len"] = dst_len
        table = RT_TABLE_MAIN if table is None else table
        msg["table"] = table if table < 256 else RT_TABLE_UNSPEC  # larger: RTA_TABLE only
        msg["proto"] = RTPROT_BOOT
        if scope is None:
            scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
        msg["scope"] = scope
        msg["type"] = RTN_UNICAST
        attrs: list[tuple[str, Any]] = [("RTA_TABLE", table)]
        if dst_len:
            attrs.append(("RTA_DST", dst))
        if gateway:
            attrs.append(("RTA_GATEWAY", gateway))
        if oif:
            attrs.append(("RTA_OIF", oif))
        if priority is not None:
            attrs.append(("RTA_PRIORITY", priority))
        metrics = [(name, value) for name, value in (("RTAX_MTU", mtu), ("RTAX_ADVMSS", advmss))
                   if value is not None]
        if metrics:
            attrs.append(("RTA_METRICS", {"attrs": metrics}))
        msg["attrs"] = attrs
        self.request(msg, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL)

    def address_delete(self, index: int, address: str, prefixlen: int, family: int) -> bool:
        """Remove one address from a link; False if it was not there (or the link is gone)."""
        msg = ifaddrmsg()
        msg["family"] = family
        msg["prefixlen"] = prefixlen
        msg["index"] = index
        msg["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
        if family == socket.AF_INET6:
            msg["attrs"] = [("IFA_ADDRESS", address)]
        try:
            self.request(msg, RTM_DELADDR)
        except OSError as exc:
            if exc.errno in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True
