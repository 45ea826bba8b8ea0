"""802.1Q VLAN, configured as the reference plugin: ``master``, ``vlanId`` (0-4094), ``mtu``,
``linkInContainer``.
"""

from __future__ import annotations

from cni import stacked
from cni.protocol import CniRequest
from nodeagent.cnitypes.errors import config_error


def parse(request: CniRequest) -> stacked.StackedLink:
    vlan_id = request.config.get("vlanId")
    if not isinstance(vlan_id, int) or isinstance(vlan_id, bool) or not 0 <= vlan_id <= 4094:
        raise config_error("vlanId", f"{vlan_id!r} is not an integer from 0 to 4094")
    fields = stacked.common_fields(request)
    if fields["master"] is None:
        raise config_error("master", "is required for a VLAN")
    return stacked.StackedLink("vlan", [("IFLA_VLAN_ID", vlan_id)], **fields)


HANDLER = stacked.Handler("vlan", parse)
