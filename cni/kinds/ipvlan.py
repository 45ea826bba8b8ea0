"""ipvlan, configured as the reference plugin: ``master`` (default: the link of the default
route), ``mode`` (l2, l3, l3s), ``mtu``, ``linkInContainer``. An ipvlan shares its master's MAC.
"""

from __future__ import annotations

from cni import stacked
from cni.protocol import CniRequest
from nodeagent.cnitypes.errors import config_error

MODES = {"l2": 0, "l3": 1, "l3s": 2}


def parse(request: CniRequest) -> stacked.StackedLink:
    mode = request.config.get("mode", "l2")
    if mode not in MODES:
        raise config_error("mode", f"{mode!r} is not one of {', '.join(MODES)}")
    return stacked.StackedLink("ipvlan", [("IFLA_IPVLAN_MODE", MODES[mode])],
                               **stacked.common_fields(request))


HANDLER = stacked.Handler("ipvlan", parse)
