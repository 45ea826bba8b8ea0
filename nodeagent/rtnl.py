"""A small synchronous rtnetlink client: pyroute2 encodes and decodes, we do the socket I/O.

pyroute2's own socket objects run every request through an asyncio loop (about 1 ms each) and
must be used from the thread that created them. The CNI ADD path needs a handful of requests in
a few milliseconds from a pool of worker threads, so requests here are plain ``send``/``recv``
on a netlink socket: about 0.15 ms each, from any thread (one request at a time per socket).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import threading
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
)
from pyroute2.netlink.marshal import Marshal
from pyroute2.netlink.rtnl import RTM_VALUES
from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from nodeagent import netns as netns_mod
from nodeagent import vfbatch

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_DELLINKPROP = 109
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
FR_ACT_TO_TBL = 1
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


NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_ERRNO = struct.Struct("=i")
_NLATTR = struct.Struct("=HH")
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_EXT_MASK = 1, 3, 4, 29
NLA_TYPE_MASK = 0x3FFF
IFA_ADDRESS, IFA_LOCAL = 1, 2


class LinkBrief(NamedTuple):
    """What a caller usually wants of a link, without decoding the rest of it."""

    index: int
    name: str
    mac: str | None
    mtu: int | None


#: sysctl directories opened in a client's namespace, so set_sysctl can write the entries
#: below them from any thread (a lookup under a /proc/sys directory stays in the namespace
#: it was opened in; /proc/sys/net itself resolves per thread, hence the deeper ones).
SYSCTL_DIRS = ("net/ipv4/conf/", "net/ipv6/conf/")


def _open_in_netns(sysctls: bool) -> tuple[socket.socket, dict[str, int]]:
    """A NETLINK_ROUTE socket of the calling thread's namespace, and (``sysctls``) its
    SYSCTL_DIRS that exist."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         socket.NETLINK_ROUTE)
    dirs: dict[str, int] = {}
    for prefix in SYSCTL_DIRS if sysctls else ():
        with contextlib.suppress(OSError):
            dirs[prefix] = os.open(f"/proc/sys/{prefix}",
                                   os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return sock, dirs


def parse_attrs(data: bytes, at: int, end: int) -> dict[int, bytes]:
    """The netlink attributes in ``data[at:end]``, by type (nesting flags masked off), their
    payloads undecoded: for callers that read a few fields without pyroute2's objects."""
    attrs: dict[int, bytes] = {}
    while at + _NLATTR.size <= end:
        length, kind = _NLATTR.unpack_from(data, at)
        if length < _NLATTR.size:
            break
        attrs[kind & NLA_TYPE_MASK] = data[at + _NLATTR.size:at + length]
        at += (length + 3) & ~3
    return attrs


def parse_link_brief(data: bytes) -> LinkBrief:
    """Index, name, MAC and MTU of one RTM_NEWLINK message (header included)."""
    _family, _type, index, _flags, _change = IFINFOMSG.unpack_from(data, NLMSGHDR.size)
    attrs = parse_attrs(data, NLMSGHDR.size + IFINFOMSG.size, len(data))
    name = attrs.get(IFLA_IFNAME, b"").split(b"\0", 1)[0].decode("utf-8", "replace")
    address, mtu = attrs.get(IFLA_ADDRESS), attrs.get(IFLA_MTU, b"")
    return LinkBrief(index, name,
                     ":".join(f"{b:02x}" for b in address) if address is not None else None,
                     struct.unpack_from("=I", mtu)[0] if len(mtu) >= 4 else None)


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
        # Opened on this thread (no hand-off to a namespace thread), sysctl directories in the
        # same visit: set_sysctl then needs no visit of its own.
        self._sock, self._sysctl_dirs = netns_mod.run_on_this_thread(
            netns, lambda: _open_in_netns(netns is not None))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock.bind((0, 0))
        self._marshal = RtnlMarshal()
        self._seq = 0
        self._lock = threading.Lock()
        # Sockets for requests made while the first is busy (the agent's own namespace is
        # shared by every CNI worker): the kernel serialises what it must, not this client.
        self._spares: list[socket.socket] = []
        self._spares_made = 0
        self._spares_lock = threading.Lock()

    def close(self) -> None:
        self._sock.close()
        with self._spares_lock:
            for sock in self._spares:
                sock.close()
            self._spares = []
        for fd in self._sysctl_dirs.values():
            os.close(fd)
        self._sysctl_dirs = {}

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------------

    def request(self, msg: Any, msg_type: int, flags: int = 0) -> list[Any]:
        """Send one request; return the replies (dumps: all parts). Raises OSError(errno)."""
        spare = None
        if not self._lock.acquire(blocking=False):
            spare = self._spare()
            if spare is None:
                self._lock.acquire()
        try:
            with self._spares_lock:
                self._seq += 1
                seq = self._seq
            msg["header"]["type"] = msg_type
            msg["header"]["flags"] = flags | NLM_F_REQUEST | NLM_F_ACK
            msg["header"]["sequence_number"] = seq
            msg.encode()
            raw = self._exchange(msg.data, seq, spare)
        finally:
            if spare is None:
                self._lock.release()
            else:
                with self._spares_lock:
                    self._spares.append(spare)
        # Only answers with content are decoded: the acknowledgement alone (most requests)
        # is read in _exchange without building pyroute2 messages.
        return [reply for data in raw for reply in self._marshal.parse(data)]

    def _spare(self) -> socket.socket | None:
        """A free extra socket of the agent's own namespace (made while fewer than MAX_SPARES
        exist), or None."""
        with self._spares_lock:
            if self._spares:
                return self._spares.pop()
            if self.netns is not None or self._spares_made >= MAX_SPARES:
                return None
            self._spares_made += 1
        sock, _ = _open_in_netns(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, 0))
        return sock

    def _exchange(self, data: bytes, seq: int, sock: socket.socket | None = None) -> list[bytes]:
        """Send one encoded request (``seq``) on ``sock`` (default: the client's); the raw
        answers up to its NLMSG_DONE or acknowledgement. Raises OSError(errno) on a negative
        acknowledgement."""
        sock = sock or self._sock
        sock.send(data)
        replies: list[bytes] = []
        while True:
            chunk = sock.recv(1 << 20)
            at = 0
            while at + NLMSGHDR.size <= len(chunk):
                length, kind, _flags, reply_seq, _pid = NLMSGHDR.unpack_from(chunk, at)
                if length < NLMSGHDR.size or at + length > len(chunk):
                    raise OSError(errno.EBADMSG, "truncated netlink message")
                if reply_seq == seq:  # else a late answer to an abandoned request
                    if kind == NLMSG_DONE:
                        return replies
                    if kind == NLMSG_ERROR:
                        (code,) = _ERRNO.unpack_from(chunk, at + NLMSGHDR.size)
                        if code:
                            code = abs(code)
                            raise OSError(code, os.strerror(code))
                        return replies
                    replies.append(chunk[at:at + length])
                at += (length + 3) & ~3

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
        if self._set_sysctl_here(key, value):
            return

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

    def link_brief(self, name: str) -> LinkBrief | None:
        """Index, name, MAC and MTU of the link ``name``, or None if there is none: one
        RTM_GETLINK, its answer read without pyroute2 (a fifth of the time of :meth:`link`)."""
        payload = name.encode() + b"\0"
        attrs = (_NLATTR.pack(_NLATTR.size + len(payload), IFLA_IFNAME)
                 + payload.ljust((len(payload) + 3) & ~3, b"\0")
                 + _NLATTR.pack(_NLATTR.size + 4, IFLA_EXT_MASK)
                 + struct.pack("=I", RTEXT_FILTER_SKIP_STATS))
        body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attrs
        with self._lock:
            self._seq += 1
            seq = self._seq
            header = NLMSGHDR.pack(NLMSGHDR.size + len(body), RTM_GETLINK,
                                    NLM_F_REQUEST | NLM_F_ACK, seq, 0)
            try:
                replies = self._exchange(header + body, seq)
            except OSError as exc:
                if exc.errno in (errno.ENODEV, errno.ENOENT):
                    return None
                raise
        links = [r for r in replies if NLMSGHDR.unpack_from(r)[1] == RTM_NEWLINK]
        return parse_link_brief(links[0]) if links else None

    def _set_sysctl_here(self, key: str, value: str) -> bool:
        """Write ``key`` below a directory opened in this client's namespace; False when
        there is none for it or the entry is not found there (set_sysctl then goes to the
        namespace and gets the final answer)."""
        prefix = next((p for p in self._sysctl_dirs if key.startswith(p)), None)
        rest = key[len(prefix):] if prefix else ""
        if not rest or any(part in ("", ".", "..") for part in rest.split("/")):
            return False
        try:
            fd = os.open(rest, os.O_WRONLY | os.O_CLOEXEC, dir_fd=self._sysctl_dirs[prefix])
        except FileNotFoundError:
            return False
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
        return True

    # -- policy routing: rules, and routes copied between tables ----------------------------

    def rules(self, family: int = socket.AF_UNSPEC) -> list[Any]:
        """The routing policy rules (``ip rule``), every family unless ``family`` is given."""
        msg = fibmsg()
        msg["family"] = family
        return self.dump(msg, RTM_GETRULE)

    def rule_add(self, family: int, src: str, src_len: int, *, table: int,
                 priority: int | None = None) -> None:
        """``ip rule add from SRC/LEN lookup TABLE [priority N]``; without ``priority`` the
        kernel puts the rule just before the first existing rule after 0, as ip-rule does."""
        self.request(_rule_msg(family, src, src_len, table, priority), RTM_NEWRULE,
                     NLM_F_CREATE | NLM_F_EXCL)

    def rule_delete(self, family: int, src: str, src_len: int, *, table: int,
                    priority: int | None = None) -> bool:
        """Delete the rule matching what is given; False if there was none."""
        try:
            self.request(_rule_msg(family, src, src_len, table, priority), RTM_DELRULE)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ESRCH):
                return False
            raise
        return True

    def route_replace(self, family: int, dst: str | None, dst_len: int, *, table: int,
                      gateway: str | None = None, oif: int | None = None,
                      scope: int | None = None, priority: int | None = None,
                      prefsrc: str | None = None, proto: int | None = None,
                      metrics: dict[str, int] | None = None) -> None:
        """Create or replace a unicast route (``ip route replace``): a route as a dump
        reported it, put into ``table`` with its gateway, source hint, protocol, scope,
        metric and metrics (``RTAX_MTU``, ...)."""
        msg = rtmsg()
        msg["family"] = family
        msg["dst_len"] = dst_len
        msg["table"] = table if table < 256 else RT_TABLE_UNSPEC
        msg["proto"] = RTPROT_BOOT if proto is None else proto
        msg["scope"] = (RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK) if scope is None else scope
        msg["type"] = RTN_UNICAST
        attrs: list[tuple[str, Any]] = [("RTA_TABLE", table)]
        if dst_len:
            attrs.append(("RTA_DST", dst))
        for name, value in (("RTA_GATEWAY", gateway), ("RTA_OIF", oif),
                            ("RTA_PRIORITY", priority), ("RTA_PREFSRC", prefsrc)):
            if value is not None:
                attrs.append((name, value))
        if metrics:
            attrs.append(("RTA_METRICS", {"attrs": sorted(metrics.items())}))
        msg["attrs"] = attrs
        self.request(msg, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE)

    def route_delete(self, family: int, dst: str | None, dst_len: int, *, table: int,
                     gateway: str | None = None, oif: int | None = None,
                     priority: int | None = None) -> bool:
        """Delete the route matching what is given; False if there was none."""
        msg = rtmsg()
        msg["family"] = family
        msg["dst_len"] = dst_len
        msg["table"] = table if table < 256 else RT_TABLE_UNSPEC
        msg["scope"] = 255  # RT_SCOPE_NOWHERE: any scope, as ip-route del asks
        attrs: list[tuple[str, Any]] = [("RTA_TABLE", table)]
        if dst_len:
            attrs.append(("RTA_DST", dst))
        for name, value in (("RTA_GATEWAY", gateway), ("RTA_OIF", oif),
                            ("RTA_PRIORITY", priority)):
            if value is not None:
                attrs.append((name, value))
        msg["attrs"] = attrs
        try:
            self.request(msg, RTM_DELROUTE)
        except OSError as exc:
            if exc.errno in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                return False
            raise
        return True

    # -- forwarding database (VXLAN head-end replication) ------------------------------------

    def fdb_append(self, index: int, mac: str, dst: str) -> None:
        """``bridge fdb append <mac> dev <index> dst <dst> self permanent``: one more remote
        for ``mac`` on a VXLAN device (the all-zero MAC: where unknown and broadcast frames
        go, one copy per remote). EEXIST if that remote is already there."""
        self.request(_fdb_msg(index, mac, dst), RTM_NEWNEIGH,
                     NLM_F_CREATE | NLM_F_EXCL | NLM_F_APPEND)

    def fdb_delete(self, index: int, mac: str, dst: str) -> bool:
        """Remove one remote of ``mac``; False if it was not there."""
        try:
            self.request(_fdb_msg(index, mac, dst), RTM_DELNEIGH)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENODEV):
                return False
            raise
        return True

    def fdb_entries(self, index: int) -> list[tuple[str, str | None]]:
        """The device's own (``self``) FDB entries as (MAC, remote or None)."""
        msg = ndmsg()
        msg["family"] = AF_BRIDGE
        out = []
        for reply in self.dump(msg, RTM_GETNEIGH):
            if reply["ifindex"] == index and reply["flags"] & NTF_SELF:
                out.append((reply.get("NDA_LLADDR"), reply.get("NDA_DST")))
        return out

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

    def retire_link(self, index: int, name: str | None) -> int:
        """Rename link ``index`` to ``name`` (None: keep its name) and remove every address it
        has: one address dump, then the rename and one RTM_DELADDR per address in a single
        send (the kernel answers each on its own), all read without pyroute2 - a DEL's
        requests on a busy host. Returns the rename's errno (0: renamed; EBUSY: this kernel
        renames only links that are down; ENODEV: the link is gone); any other refusal raises
        OSError."""
        addresses = self._address_bodies(index)
        rename = None
        if name:
            payload = name.encode() + b"\0"
            rename = (RTM_NEWLINK, IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0)
                      + _NLATTR.pack(_NLATTR.size + len(payload), IFLA_IFNAME)
                      + payload.ljust((len(payload) + 3) & ~3, b"\0"))
        batch = ([rename] if rename else []) + [(RTM_DELADDR, body) for body in addresses]
        if not batch:
            return 0
        codes = self._batch(batch)
        renamed = codes.pop(0) if rename else 0
        for code in codes:  # an address already gone, or the link with it
            if code not in (0, errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                raise OSError(code, os.strerror(code))
        if renamed not in (0, errno.EBUSY, errno.ENODEV, errno.ENOENT):
            raise OSError(renamed, os.strerror(renamed))
        return errno.ENODEV if renamed == errno.ENOENT else renamed

    def _address_bodies(self, index: int) -> list[bytes]:
        """RTM_DELADDR bodies (ifaddrmsg and IFA_LOCAL/IFA_ADDRESS) for each address of link
        ``index``, from one dump."""
        body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, index)
        out = []
        for data in self._dump_raw(RTM_GETADDR, body, RTM_NEWADDR):
            family, prefixlen, _flags, _scope, at_index = _IFADDRMSG.unpack_from(
                data, NLMSGHDR.size)
            if at_index != index:
                continue
            attrs = parse_attrs(data, NLMSGHDR.size + _IFADDRMSG.size, len(data))
            keep = (IFA_LOCAL, IFA_ADDRESS) if family == socket.AF_INET else (IFA_ADDRESS,)
            out.append(_IFADDRMSG.pack(family, prefixlen, 0, 0, index) + b"".join(
                _NLATTR.pack(_NLATTR.size + len(attrs[k]), k) + attrs[k]
                for k in keep if k in attrs))
        return out

    def _batch(self, requests: list[tuple[int, bytes]]) -> list[int]:
        """Send ``requests`` (type, body) in one datagram, each acknowledged on its own; their
        errnos (0: done), in order."""
        with self._lock:
            first = self._seq + 1
            self._seq += len(requests)
            data = b"".join(NLMSGHDR.pack(NLMSGHDR.size + len(body), kind,
                                           NLM_F_REQUEST | NLM_F_ACK, first + i, 0) + body
                            for i, (kind, body) in enumerate(requests))
            codes: dict[int, int] = {}
            self._sock.send(data)
            while len(codes) < len(requests):
                chunk = self._sock.recv(1 << 16)
                at = 0
                while at + NLMSGHDR.size <= len(chunk):
                    length, kind, _flags, seq, _pid = NLMSGHDR.unpack_from(chunk, at)
                    if length < NLMSGHDR.size or at + length > len(chunk):
                        raise OSError(errno.EBADMSG, "truncated netlink message")
                    if kind == NLMSG_ERROR and first <= seq < first + len(requests):
                        codes[seq] = abs(_ERRNO.unpack_from(chunk, at + NLMSGHDR.size)[0])
                    at += (length + 3) & ~3
        return [codes[first + i] for i in range(len(requests))]

    def links_raw(self, ext_mask: int = RTEXT_FILTER_SKIP_STATS) -> list[bytes]:
        """Every link's RTM_NEWLINK message (header included), undecoded: one dump, by
        default without statistics. For callers that read a few fields (discovery):
        pyroute2's messages are a hundred objects each, in reference cycles."""
        body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _NLATTR.pack(
            _NLATTR.size + 4, IFLA_EXT_MASK) + struct.pack("=I", ext_mask)
        return self._dump_raw(RTM_GETLINK, body, RTM_NEWLINK)

    def routes_raw(self, family: int = socket.AF_UNSPEC) -> list[bytes]:
        """Every route's RTM_NEWROUTE message of ``family`` (header included), undecoded
        (see :meth:`links_raw`)."""
        body = struct.pack("=BBBBBBBBI", family, 0, 0, 0, 0, 0, 0, 0, 0)
        return self._dump_raw(RTM_GETROUTE, body, RTM_NEWROUTE)

    def _dump_raw(self, request: int, body: bytes, answer: int) -> list[bytes]:
        """The ``answer`` messages of a dump ``request`` with ``body``, undecoded."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            header = NLMSGHDR.pack(NLMSGHDR.size + len(body), request,
                                    NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP, seq, 0)
            replies = self._exchange(header + body, seq)
        return [r for r in replies if NLMSGHDR.unpack_from(r)[1] == answer]


def _rule_msg(family: int, src: str, src_len: int, table: int, priority: int | None) -> Any:
    msg = fibmsg()
    msg["family"] = family
    msg["src_len"] = src_len
    msg["table"] = table if table < 256 else RT_TABLE_UNSPEC  # larger: FRA_TABLE only
    msg["action"] = FR_ACT_TO_TBL
    attrs: list[tuple[str, Any]] = [("FRA_TABLE", table)]
    if src_len:
        attrs.append(("FRA_SRC", src))
    if priority is not None:
        attrs.append(("FRA_PRIORITY", priority))
    msg["attrs"] = attrs
    return msg


RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
AF_BRIDGE = 7
NTF_SELF = 0x02
NUD_PERMANENT = 0x80
NLM_F_APPEND = 0x800


def _fdb_msg(index: int, mac: str, dst: str) -> Any:
    msg = ndmsg()
    msg["family"] = AF_BRIDGE
    msg["ifindex"] = index
    msg["state"] = NUD_PERMANENT
    msg["flags"] = NTF_SELF
    msg["attrs"] = [("NDA_LLADDR", mac), ("NDA_DST", dst)]
    return msg


class RtnlMarshal(Marshal):
    """Decodes the rtnetlink messages the agent reads (links, addresses, routes, rules,
    neighbours) as pyroute2's MarshalRtnl does. That one also maps traffic-control messages,
    whose classes (every qdisc, class, filter and action) are a quarter of the pyroute2 code
    the agent would load (docs/observability.md, "Memory")."""

    msg_map: ClassVar[dict[int, type]] = {
        **dict.fromkeys((RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK), ifinfmsg),
        **dict.fromkeys((RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR), ifaddrmsg),
        **dict.fromkeys((RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE), rtmsg),
        **dict.fromkeys((RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE), fibmsg),
        **dict.fromkeys((RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH), ndmsg),
    }

    def fix_message(self, msg: Any) -> None:
        event = RTM_VALUES.get(msg["header"]["type"])
        if event is not None:
            msg["event"] = event
