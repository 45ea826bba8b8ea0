"""macvlan, configured as the reference plugin: ``master`` (default: the link of the default
route), ``mode`` (bridge, private, vepa, passthru), ``mtu``, ``mac``, ``linkInContainer``; the
MAC may also come from ``runtimeConfig.mac`` (Multus capability) or ``CNI_ARGS`` ``MAC=``.
"""

from __future__ import annotations

from cni import stacked
from cni.context import attachment_mac
from cni.protocol import CniRequest
from nodeagent.cnitypes.errors import config_error

MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8}


def parse(request: CniRequest) -> stacked.StackedLink:
    mode = request.config.get("mode", "bridge")
    if mode not in MODES:
        raise config_error("mode", f"{mode!r} is not one of {', '.join(MODES)}")
    return stacked.StackedLink("macvlan", [("IFLA_MACVLAN_MODE", MODES[mode])],
                               mac=attachment_mac(request), **stacked.common_fields(request))


HANDLER = stacked.Handler("macvlan", parse)
