"""macvlan, configured as the reference plugin: ``master`` (default: the link of the default
route), ``mode`` (bridge, private, vepa, passthru; default bridge), ``mtu``, ``mac``,
``linkInContainer``; the MAC may also come from ``runtimeConfig.mac`` (Multus capability) or
``CNI_ARGS`` ``MAC=``.
"""

from __future__ import annotations

from cni import stacked
from cni.context import attachment_mac
from cni.protocol import CniRequest

MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8}


def parse(request: CniRequest) -> stacked.StackedLink:
    return stacked.StackedLink("macvlan", [("IFLA_MACVLAN_MODE",
                                            stacked.mode(request, MODES, "bridge"))],
                               mac=attachment_mac(request), **stacked.common_fields(request))


HANDLER = stacked.StackedHandler("macvlan", parse)
