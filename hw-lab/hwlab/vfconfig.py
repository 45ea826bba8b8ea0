"""PF-side VF settings over rtnetlink, read back from IFLA_VFINFO_LIST; devlink eswitch mode."""

from __future__ import annotations

from typing import Any

from pyroute2 import DL, IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.devlink import DEVLINK_NAMES, devlinkcmd

RTEXT_FILTER_VF = 1
ESWITCH_MODES = {"legacy": 0, "switchdev": 1}
PORT_FLAVOUR_PCI_VF = 4


def vf_info(ipr: IPRoute, pf_index: int) -> list[dict[str, Any]]:
    """The kernel's view of every VF of a PF, one dict per VF, in VF order."""
    link = ipr.link("get", index=pf_index, ext_mask=RTEXT_FILTER_VF)[0]
    vflist = link.get_attr("IFLA_VFINFO_LIST")
    result = []
    for info in vflist.get_attrs("IFLA_VF_INFO") if vflist else []:
        vlan = info.get_attr("IFLA_VF_VLAN") or {}
        rate = info.get_attr("IFLA_VF_RATE") or {}
        link_state = info.get_attr("IFLA_VF_LINK_STATE")
        result.append({
            "vf": info.get_attr("IFLA_VF_MAC")["vf"],
            "mac": info.get_attr("IFLA_VF_MAC")["mac"],
            "vlan": vlan.get("vlan"),
            "qos": vlan.get("qos"),
            "spoofchk": (info.get_attr("IFLA_VF_SPOOFCHK") or {}).get("spoofchk"),
            "trust": (info.get_attr("IFLA_VF_TRUST") or {}).get("trust"),
            "link_state": None if link_state is None else link_state["link_state"],
            "min_tx_rate": rate.get("min_tx_rate"),
            "max_tx_rate": rate.get("max_tx_rate"),
        })
    result.sort(key=lambda d: d["vf"])
    return result


def set_vf(ipr: IPRoute, pf_index: int, vf: int, **settings: Any) -> None:
    """One RTM_SETLINK on the PF with an IFLA_VF_INFO for `vf` (pyroute2's vf= syntax)."""
    ipr.link("set", index=pf_index, vf={"vf": vf, **settings})


def _devlink_request(cmd: str, bus: str, dev: str, **attrs: Any) -> list[Any]:
    msg = devlinkcmd()
    msg["cmd"] = DEVLINK_NAMES[cmd]
    msg["version"] = 1
    msg["attrs"] = [("DEVLINK_ATTR_BUS_NAME", bus), ("DEVLINK_ATTR_DEV_NAME", dev)]
    msg["attrs"] += list(attrs.items())
    with DL() as dl:
        return list(dl.nlm_request(msg, msg_type=dl.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK))


def eswitch_mode(bus: str, dev: str) -> str:
    """The eswitch mode devlink reports for bus/dev ('legacy' or 'switchdev')."""
    reply = _devlink_request("DEVLINK_CMD_ESWITCH_GET", bus, dev)
    mode = reply[0].get_attr("DEVLINK_ATTR_ESWITCH_MODE")
    return {v: k for k, v in ESWITCH_MODES.items()}.get(mode, str(mode))


def set_eswitch_mode(bus: str, dev: str, mode: str) -> None:
    _devlink_request(
        "DEVLINK_CMD_ESWITCH_SET", bus, dev, DEVLINK_ATTR_ESWITCH_MODE=ESWITCH_MODES[mode]
    )


def vf_ports(bus: str, dev: str) -> list[dict[str, Any]]:
    """devlink ports of flavour pcivf on bus/dev, with their VF number and netdev name."""
    with DL() as dl:
        ports = dl.port_list()
    found = []
    for port in ports:
        owner = (port.get_attr("DEVLINK_ATTR_BUS_NAME"), port.get_attr("DEVLINK_ATTR_DEV_NAME"))
        if owner != (bus, dev):
            continue
        if port.get_attr("DEVLINK_ATTR_PORT_FLAVOUR") == PORT_FLAVOUR_PCI_VF:
            found.append({
                "vf": port.get_attr("DEVLINK_ATTR_PORT_PCI_VF_NUMBER"),
                "netdev": port.get_attr("DEVLINK_ATTR_PORT_NETDEV_NAME"),
            })
    return sorted(found, key=lambda p: p["vf"])
