"""Human-readable rendering of a node snapshot: one table, VFs nested under their PF."""

from __future__ import annotations

from tabulate import tabulate

from nodeagent.model import Netdev, Nic, Node, VirtualFunction

HEADERS = ("NAME", "PCI", "ID", "DRIVER", "NUMA", "IOMMU", "MAC", "MTU", "LINK", "SPEED",
           "DETAILS")


def _dash(value: object) -> object:
    return "-" if value is None or value == "" else value


def _link(netdev: Netdev | None) -> str:
    if netdev is None:
        return "-"
    state = netdev.operstate or "?"
    if netdev.carrier is False and state != "down":
        state += ",no-carrier"
    return state


def _speed(netdev: Netdev | None) -> str:
    if netdev is None or netdev.speed is None:
        return "-"
    return f"{netdev.speed // 1000}G" if netdev.speed >= 1000 else f"{netdev.speed}M"


def _nic_details(nic: Nic) -> str:
    parts = []
    if nic.sriov is not None:
        s = nic.sriov
        parts.append(f"SR-IOV {s.numvfs}/{s.totalvfs} VFs")
        if s.drivers_autoprobe is False:
            parts.append("autoprobe off")
        if s.eswitch_mode:
            parts.append(f"eswitch {s.eswitch_mode}")
    if nic.default_route:
        parts.append("default route")
    kinds = {n.kind for n in nic.netdevs if n.kind}
    parts.extend(sorted(kinds))
    if len(nic.netdevs) > 1:
        parts.append("netdevs " + ",".join(n.name for n in nic.netdevs))
    return ", ".join(parts)


def _vf_details(vf: VirtualFunction) -> str:
    c = vf.config
    parts = []
    if c is not None:
        if c.mac and c.mac != "00:00:00:00:00:00":
            parts.append(f"admin mac {c.mac}")
        if c.vlan:
            proto = "" if c.vlan_proto == "802.1Q" else f" {c.vlan_proto}"
            parts.append(f"vlan {c.vlan}{f' qos {c.qos}' if c.qos else ''}{proto}")
        for label, flag in (("spoofchk", c.spoofchk), ("trust", c.trust)):
            if flag is not None:
                parts.append(f"{label} {'on' if flag else 'off'}")
        if c.min_tx_rate or c.max_tx_rate:
            parts.append(f"rate {c.min_tx_rate}-{c.max_tx_rate} Mbps")
        if c.link_state:
            parts.append(f"link {c.link_state}")
    if vf.representor:
        parts.append(f"representor {vf.representor}")
    return ", ".join(parts)


def _row(name: str, nic_pci: object, netdev: Netdev | None, details: str) -> list[object]:
    pci = nic_pci
    return [
        name,
        _dash(pci.address if pci else None),
        f"{pci.vendor}:{pci.device}" if pci and pci.vendor else "-",
        _dash(pci.driver if pci else None),
        _dash(pci.numa_node if pci else None),
        _dash(pci.iommu_group if pci else None),
        _dash(netdev.mac if netdev else None),
        _dash(netdev.mtu if netdev else None),
        _link(netdev),
        _speed(netdev),
        details,
    ]


def inventory_table(node: Node) -> str:
    rows = []
    for nic in node.nics:
        primary = nic.netdevs[0] if nic.netdevs else None
        rows.append(_row(nic.name, nic.pci, primary, _nic_details(nic)))
        vfs = nic.sriov.vfs if nic.sriov else ()
        for i, vf in enumerate(vfs):
            branch = "└─" if i == len(vfs) - 1 else "├─"
            label = f" {branch} vf{vf.index}" + (f" {vf.netdev.name}" if vf.netdev else "")
            rows.append(_row(label, vf.pci, vf.netdev, _vf_details(vf)))
    pfs = node.pfs
    summary = (
        f"node {node.hostname}: {len(node.nics)} NICs, {len(pfs)} SR-IOV PFs, "
        f"{sum(len(pf.sriov.vfs) for pf in pfs if pf.sriov)} VFs"
    )
    return summary + "\n\n" + tabulate(rows, headers=HEADERS, tablefmt="plain",
                                       disable_numparse=True)
