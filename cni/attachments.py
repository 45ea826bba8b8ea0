"""ADD, DEL and GC as the network policy controller sees them (``Context.attachments``).

After a kind's ADD has configured the link, the attachment is reported before the ADD
returns, so its pod's rules are in place before the pod can send a packet on it. If they
cannot be, the attachment is undone with the kind's own DEL and the ADD fails (code 11: the
runtime retries the sandbox). DEL and GC report what went away after the kind has run.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from cni.context import Context
from cni.protocol import CniRequest
from nodeagent.cnitypes.errors import TRY_AGAIN_LATER, CniError
from nodeagent.cnitypes.result import Result
from nodeagent.policy.attachments import AttachmentHook, AttachmentRecord

if TYPE_CHECKING:
    from cni.dispatch import Kind

log = logging.getLogger("nodeagent.cni")


def record_of(ctx: Context, request: CniRequest, result: Result) -> AttachmentRecord:
    kind = str(request.config.get("type", ""))
    dpdk = False
    if kind == "sriov":  # a VF on a userspace driver has no netdev to police
        vf = ctx.vfs.load(request.container_id, request.ifname)
        dpdk = bool(vf is not None and vf.dpdk)
    return AttachmentRecord(
        request.container_id, request.ifname, request.args.get("K8S_POD_NAMESPACE", ""),
        request.args.get("K8S_POD_NAME", ""), request.netns, request.network, kind,
        tuple(str(ip.address.ip) for ip in result.ips), dpdk)


def run(ctx: Context, hook: AttachmentHook, kind: Kind, request: CniRequest) -> Result | None:
    if request.command == "ADD":
        result = kind.add(ctx, request)
        if not (request.args.get("K8S_POD_NAMESPACE") and request.args.get("K8S_POD_NAME")):
            return result  # not a Kubernetes pod: no policy can name it
        if request.prev_result is not None:
            return result  # a chained plugin (sbr): the attachment is the first plugin's record
        try:
            hook.attached(record_of(ctx, request, result))
        except Exception as exc:
            log.warning("ADD undone: %s", exc)
            try:
                kind.delete(ctx, request)
            except Exception:
                log.exception("undoing the ADD of %s", request.describe())
            raise CniError(TRY_AGAIN_LATER, str(exc)) from None
        return result
    if request.command == "DEL":
        kind.delete(ctx, request)
        hook.detached(request.container_id, request.ifname)
        return None
    kind.gc(ctx, request)
    hook.collected(request.network, request.valid_attachments)
    return None
