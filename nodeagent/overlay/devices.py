"""The shared per-network devices a node holds for a VXLAN network, as the vxlan CNI kind
creates them and the overlay service finds them again: names, and the alias that marks them
as the agent's and says how their forwarding entries are kept."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from nodeagent.cnitypes.result import IPAddress

#: ``ifalias`` of every link the vxlan kind creates: ``nodeagent-vxlan <role> <mode> <network>``.
ALIAS_PREFIX = "nodeagent-vxlan"
#: Forwarding entries from the cluster store's members (kept current by the overlay service),
#: or the configuration's static ``remotes`` (the service leaves those alone).
STORE, STATIC = "store", "static"
#: The all-zero MAC: the FDB entry for frames without a learnt destination (broadcast,
#: unknown unicast, multicast), replicated to each of its remotes.
ZERO_MAC = "00:00:00:00:00:00"


def vxlan_name(vni: int) -> str:
    return f"vx{vni}"


def bridge_name(vni: int) -> str:
    return f"vxbr{vni}"


def alias(role: str, mode: str, network: str) -> str:
    return f"{ALIAS_PREFIX} {role} {mode} {network}"[:255]


@dataclass(frozen=True)
class VtepDevice:
    """A VXLAN device of the agent's, as the kernel reports it."""

    index: int
    name: str
    vni: int
    mode: str
    network: str
    local: IPAddress | None
    port: int


def vtep_of(msg: Any) -> VtepDevice | None:
    """The VTEP a link message describes, or None if it is not a VXLAN device of the agent."""
    alias_text = msg.get("IFLA_IFALIAS") or ""
    parts = alias_text.split(" ", 3)
    if len(parts) != 4 or parts[0] != ALIAS_PREFIX or parts[1] != "vxlan":
        return None
    if msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") != "vxlan":
        return None
    data = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    if data is None:
        return None
    local = data.get("IFLA_VXLAN_LOCAL") or data.get("IFLA_VXLAN_LOCAL6")
    return VtepDevice(index=msg["index"], name=msg.get("IFLA_IFNAME"),
                      vni=data.get("IFLA_VXLAN_ID") or 0, mode=parts[2], network=parts[3],
                      local=ipaddress.ip_address(local) if local else None,
                      port=data.get("IFLA_VXLAN_PORT") or 0)
