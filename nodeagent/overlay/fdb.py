"""The all-zero-MAC forwarding entries of a VXLAN device: head-end replication without
multicast (one copy of every flooded frame per remote VTEP)."""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Iterable
from typing import Any, Protocol

from nodeagent.overlay.devices import ZERO_MAC


class FdbNetlink(Protocol):
    """What this module asks of a netlink client (nodeagent.rtnl.Rtnl's calls)."""

    def fdb_append(self, index: int, mac: str, dst: str) -> None: ...
    def fdb_delete(self, index: int, mac: str, dst: str) -> bool: ...
    def fdb_entries(self, index: int) -> list[tuple[str, str | None]]: ...


def _norm(address: Any) -> str:
    return str(ipaddress.ip_address(address))


def flood_remotes(nl: FdbNetlink, index: int) -> set[str]:
    """The remotes of the device's all-zero-MAC entries."""
    return {_norm(dst) for mac, dst in nl.fdb_entries(index)
            if dst and (mac or "").lower() == ZERO_MAC}


def add_remotes(nl: FdbNetlink, index: int, remotes: Iterable[str]) -> list[str]:
    """Add the missing ones of ``remotes``; those added."""
    present = flood_remotes(nl, index)
    added = []
    for remote in sorted({_norm(r) for r in remotes} - present):
        try:
            nl.fdb_append(index, ZERO_MAC, remote)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
            continue
        added.append(remote)
    return added


def sync_remotes(nl: FdbNetlink, index: int, remotes: Iterable[str]) -> tuple[list[str], list[str]]:
    """Make the all-zero-MAC entries exactly ``remotes``: (added, removed)."""
    wanted = {_norm(r) for r in remotes}
    present = flood_remotes(nl, index)
    removed = [r for r in sorted(present - wanted) if nl.fdb_delete(index, ZERO_MAC, r)]
    return add_remotes(nl, index, wanted), removed
