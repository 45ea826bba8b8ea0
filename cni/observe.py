"""What a CNI request tells the rest of the agent: log fields, metrics, allocation records.

The dispatcher binds :func:`env_fields` and :func:`request_fields` as log context for the
whole request (so a line logged deep in a handler names its pod, container, network and
device) and calls :func:`finished` once per request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cni.protocol import COMMANDS, CniRequest
from cni.wire import MAX_STDIN
from nodeagent.cnitypes.errors import CniError
from nodeagent.cnitypes.request import parse_cni_args
from nodeagent.cnitypes.result import Result
from nodeagent.documents import DocumentError, parse_json
from nodeagent.status import StatusBoard

if TYPE_CHECKING:
    from nodeagent.metrics import Metrics

log = logging.getLogger("nodeagent.cni")


def env_fields(env: Mapping[str, str]) -> dict[str, Any]:
    """Fields known before the request is validated (for the log line of a refused one).
    Never raises: it runs before, and outside, the request's error handling."""
    fields: dict[str, Any] = {"verb": _label(env.get("CNI_COMMAND")),
                              "containerID": _label(env.get("CNI_CONTAINERID")),
                              "ifname": _label(env.get("CNI_IFNAME"))}
    try:
        args = parse_cni_args(env.get("CNI_ARGS", ""))
    except (CniError, TypeError, AttributeError):
        args = {}
    fields["pod"] = pod_name(args)
    return fields


def unparsed_fields(stdin: bytes) -> dict[str, Any]:
    """The network's name from a configuration the request was refused over, if it has one.
    Never raises, whatever the bytes (they were refused once already)."""
    try:
        config = parse_json(stdin, max_bytes=MAX_STDIN)
    except DocumentError:
        return {}
    name = config.get("name") if isinstance(config, dict) else None
    return {"network": _label(name)} if isinstance(name, str) and name else {}


def _label(value: Any, limit: int = 256) -> str:
    """A value from the request as a bounded log field."""
    return value[:limit] if isinstance(value, str) else ""


def pod_name(args: Mapping[str, str]) -> str:
    """``namespace/name`` from CNI_ARGS, as much of it as the runtime gave."""
    return "/".join(filter(None, (args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME"))))


def request_fields(request: CniRequest, kind: str) -> dict[str, Any]:
    """``kind``: the request's type label."""
    return {"network": request.network, "type": kind, "device": device(request)}


def device(request: CniRequest) -> str:
    """The VF's PCI address (sriov), the master link (macvlan, ipvlan, vlan) or the slaves
    (bond, ``net1+net2``). A stacked link
    without a master learns its device (the default route's link) as the handler picks it
    (cni.context.master_index): no second route lookup here."""
    c = request.config
    device_id = request.runtime_config.get("deviceID") or c.get("deviceID")
    if isinstance(device_id, str) and device_id:
        return device_id
    master = c.get("master")
    if c.get("type") == "bond" and isinstance(c.get("links"), list):  # its slaves
        return "+".join(str(link.get("name"))[:15] for link in c["links"][:8]
                        if isinstance(link, dict))
    return master if isinstance(master, str) else ""


def finished(request: CniRequest | None, fields: Mapping[str, Any], result: Any,
             error: CniError | None, seconds: float, *,
             metrics: Metrics | None = None, status: StatusBoard | None = None) -> None:
    """Log the request's line, count it, and keep the allocation records current."""
    verb = str(fields.get("verb") or "")
    ms = round(seconds * 1e3, 3)
    if error is None:
        log.info("CNI %s ok in %.1f ms", verb, ms, extra={"result": "ok", "durationMs": ms})
    else:
        log.warning("CNI %s failed (code %d): %s", verb, error.code, error,
                    extra={"result": str(error.code), "code": error.code, "durationMs": ms})
    if metrics is not None:
        metrics.cni_request(verb if verb in COMMANDS else "invalid",
                            str(fields.get("type") or "unknown"),
                            "ok" if error is None else str(error.code), seconds)
    if status is not None and request is not None and error is None:
        _record(status, request, fields, result)


def _record(status: StatusBoard, request: CniRequest, fields: Mapping[str, Any],
            result: Any) -> None:
    key = f"{request.container_id}/{request.ifname}"
    if request.command == "ADD" and request.prev_result is not None:
        return  # a chained plugin (sbr): the attachment is the first plugin's record
    if request.command == "ADD" and isinstance(result, Result):
        mac = next((i.mac for i in result.interfaces if i.sandbox and i.mac), None)
        kind = str(request.config.get("type", ""))
        status.set_allocation(key, {
            "pod": request.args.get("K8S_POD_NAME", ""),
            "namespace": request.args.get("K8S_POD_NAMESPACE", ""),
            "network": request.network, "type": kind, "kind": kind,
            "device": fields.get("device", ""),
            "ips": [str(ip.address) for ip in result.ips], "mac": mac,
        })
    elif request.command == "DEL":
        status.set_allocation(key, None)
    elif request.command == "GC":
        keep = {f"{cid}/{ifname}" for cid, ifname in request.valid_attachments}
        for other, allocation in status.snapshot()["allocations"].items():
            if allocation.get("network") == request.network and other not in keep:
                status.set_allocation(other, None)
