"""ipvlan, configured as the reference plugin: ``master`` (default: the link of the default
route), ``mode`` (l2, l3, l3s; default l2), ``mtu``, ``linkInContainer``. An ipvlan shares its
master's MAC.
"""

from __future__ import annotations

from cni import stacked
from cni.protocol import CniRequest

MODES = {"l2": 0, "l3": 1, "l3s": 2}


def parse(request: CniRequest) -> stacked.StackedLink:
    return stacked.StackedLink("ipvlan", [("IFLA_IPVLAN_MODE", stacked.mode(request, MODES, "l2"))],
                               **stacked.common_fields(request))


HANDLER = stacked.StackedHandler("ipvlan", parse)
