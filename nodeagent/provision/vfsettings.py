"""Applies planned PF-side VF settings (MAC, VLAN, spoofchk, trust) as one batch."""

from __future__ import annotations

from nodeagent import vfbatch
from nodeagent.model import Nic
from nodeagent.provision.errors import ProvisionError
from nodeagent.provision.plan import VfChange
from nodeagent.rtnl import Rtnl


def apply(nic: Nic, changes: tuple[VfChange, ...]) -> None:
    """Every change over one netlink socket (nodeagent.vfbatch); refusals name VF and setting."""
    with Rtnl() as rtnl:
        index = rtnl.link_index(nic.name)
    if index is None:
        raise ProvisionError(f"PF netdev {nic.name} is gone")
    batch = [vfbatch.VfSettings(
        c.index, mac=c.mac, vlan=c.vlan, qos=c.qos or 0, vlan_proto=c.vlan_proto or "802.1Q",
        spoofchk=c.spoofchk, trust=c.trust) for c in changes]
    try:
        results = vfbatch.apply(index, batch)
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"setting VFs of {nic.name}: {exc}") from None
    refused = [str(r) for r in results if not r.ok]
    if refused:
        raise ProvisionError(f"the PF refused: {'; '.join(refused)}")
