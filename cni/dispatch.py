"""One CNI invocation, from environment and stdin to exit status and output.

The same function serves the daemon (requests from the shim) and the in-process fallback.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from cni import ipam
from cni.context import Context
from cni.errors import INVALID_CONFIG, IO_FAILURE, CniError
from cni.kinds import ipvlan, macvlan, sriov, vlan
from cni.protocol import SUPPORTED_VERSIONS, CniRequest, parse_request
from cni.result import Result
from cni.wire import Response

log = logging.getLogger("nodeagent.cni")

class Kind(Protocol):
    def add(self, ctx: Context, request: CniRequest) -> Result: ...
    def delete(self, ctx: Context, request: CniRequest) -> None: ...
    def check(self, ctx: Context, request: CniRequest) -> None: ...
    def gc(self, ctx: Context, request: CniRequest) -> None: ...


KINDS: dict[str, Kind] = {m.HANDLER.kind: m.HANDLER for m in (macvlan, ipvlan, vlan, sriov)}


def handle(ctx: Context, env: Mapping[str, str], stdin: bytes, plugin: str = "") -> Response:
    """Serve one invocation; ``plugin`` is the name the shim was run as (its argv[0])."""
    started = time.perf_counter()
    version = "1.1.0"
    request: CniRequest | None = None
    try:
        request = parse_request(env, stdin)
        version = request.version
        out = _run_ipam(ctx, request) if plugin in ipam.INLINE_TYPES else _run(ctx, request)
        response = Response(0, out)
    except CniError as err:
        response = Response(1, _json(err.to_dict(version)), str(err).encode())
        log.warning("%s failed (code %d): %s", _who(request, env), err.code, err)
    except Exception as exc:  # a bug or an unexpected kernel answer: still a CNI error
        log.exception("%s failed", _who(request, env))
        err = CniError(IO_FAILURE, f"internal error: {exc}")
        response = Response(1, _json(err.to_dict(version)), str(err).encode())
    else:
        log.info("%s ok in %.1f ms", _who(request, env), (time.perf_counter() - started) * 1e3)
    return response


def _run(ctx: Context, request: CniRequest) -> bytes:
    if request.command == "VERSION":
        return _json({"cniVersion": request.version, "supportedVersions": list(SUPPORTED_VERSIONS)})
    kind = KINDS.get(request.config.get("type", ""))
    if kind is None:
        raise CniError(INVALID_CONFIG, f"plugin type {request.config.get('type')!r} is not one of"
                       f" {', '.join(KINDS)}")
    verbs: dict[str, Callable[[], object]] = {
        "ADD": lambda: kind.add(ctx, request),
        "DEL": lambda: kind.delete(ctx, request),
        "CHECK": lambda: kind.check(ctx, request),
        "STATUS": lambda: ipam.status(ctx, request),
        "GC": lambda: kind.gc(ctx, request),
    }
    result = verbs[request.command]()
    if request.command == "ADD":
        return _json(result.to_dict(request.version))  # type: ignore[attr-defined]
    return b""


def _run_ipam(ctx: Context, request: CniRequest) -> bytes:
    """Invoked as an IPAM plugin (``whereabouts``, ``nodeagent-ipam``) by another plugin."""
    if request.command == "VERSION":
        return _run(ctx, request)
    if request.command == "ADD":
        return _json(ipam.add(ctx, request).to_dict(request.version))
    {"DEL": ipam.delete, "CHECK": ipam.check, "GC": ipam.gc,
     "STATUS": ipam.status}[request.command](ctx, request)
    return b""


def _json(doc: object) -> bytes:
    return json.dumps(doc).encode() + b"\n"


def _who(request: CniRequest | None, env: Mapping[str, str]) -> str:
    if request is not None:
        return request.describe()
    return f"{env.get('CNI_COMMAND', '?')} container={env.get('CNI_CONTAINERID', '?')[:12]}"
