"""802.1Q VLAN, configured as the reference plugin: ``master`` (required), ``vlanId``
(0-4094), ``mtu``, ``linkInContainer``.
"""

from __future__ import annotations

from cni import stacked
from cni.context import FIELDS
from cni.protocol import CniRequest


def parse(request: CniRequest) -> stacked.StackedLink:
    vlan_id = FIELDS.integer(request.config, "vlanId", "", 0, 4094)
    if vlan_id is None:  # the reference plugin reads a missing vlanId as 0: say it instead
        FIELDS.fail("vlanId", "is required (0-4094)")
    fields = stacked.common_fields(request)
    if fields["master"] is None:
        FIELDS.fail("master", "is required for a VLAN")
    return stacked.StackedLink("vlan", [("IFLA_VLAN_ID", vlan_id)], **fields)


HANDLER = stacked.StackedHandler("vlan", parse)
