"""One CNI invocation, from environment and stdin to exit status and output.

The same function serves the daemon (requests from the shim) and the in-process fallback.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from cni import attachments, ipam, observe
from cni.context import Context
from cni.protocol import SUPPORTED_VERSIONS, CniRequest, parse_request
from cni.wire import Response
from nodeagent import logs
from nodeagent.cnitypes.errors import INVALID_CONFIG, IO_FAILURE, CniError
from nodeagent.cnitypes.result import Result
from nodeagent.status import StatusBoard

if TYPE_CHECKING:
    from nodeagent.metrics import Metrics

log = logging.getLogger("nodeagent.cni")

class Kind(Protocol):
    def add(self, ctx: Context, request: CniRequest) -> Result: ...
    def delete(self, ctx: Context, request: CniRequest) -> None: ...
    def check(self, ctx: Context, request: CniRequest) -> None: ...
    def gc(self, ctx: Context, request: CniRequest) -> None: ...


class _Kinds(Mapping[str, Kind]):
    """The link types by name, each one's module (``cni.kinds.<name>``) imported the first
    time a request asks for it: an agent serving only macvlan never loads the bond, vxlan,
    sriov... code (docs/observability.md, "Memory")."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self._names = names
        self._loaded: dict[str, Kind] = {}

    def __getitem__(self, name: str) -> Kind:
        kind = self._loaded.get(name)
        if kind is None:
            if name not in self._names:
                raise KeyError(name)
            kind = self._loaded[name] = importlib.import_module(f"cni.kinds.{name}").HANDLER
        return kind

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


KINDS: Mapping[str, Kind] = _Kinds(("macvlan", "ipvlan", "vlan", "sriov", "sbr", "vxlan", "bond"))


def handle(ctx: Context, env: Mapping[str, str], stdin: bytes, plugin: str = "", *,
           metrics: Metrics | None = None, status: StatusBoard | None = None) -> Response:
    """Serve one invocation; ``plugin`` is the name the shim was run as (its argv[0]).

    Every line logged while serving it carries the request's pod, container, network, type
    and device; with ``metrics`` it is counted and timed, with ``status`` its attachment is
    recorded (ADD) or dropped (DEL, GC).
    """
    started = time.perf_counter()
    with logs.bind(**observe.env_fields(env), type=type_label(None, plugin)) as fields:
        version = "1.1.0"
        request: CniRequest | None = None
        result: Result | dict[str, Any] | None = None
        error: CniError | None = None
        try:
            request = parse_request(env, stdin)
            version = request.version
            fields.update(observe.request_fields(request, type_label(request, plugin)))
            result = _run_ipam(ctx, request) if plugin in ipam.INLINE_TYPES else _run(ctx, request)
            response = Response(0, _render(result, version))
        except CniError as err:
            error = err
        except Exception as exc:  # a bug or an unexpected kernel answer: still a CNI error
            log.exception("CNI %s failed", fields["verb"])
            error = CniError(IO_FAILURE, f"internal error: {exc}")
        if error is not None:
            response = Response(1, _json(error.to_dict(version)), str(error).encode())
            if request is None:
                fields.update(observe.unparsed_fields(stdin))
        observe.finished(request, fields, result, error, time.perf_counter() - started,
                         metrics=metrics, status=status)
    return response


def type_label(request: CniRequest | None, plugin: str) -> str:
    """What kind of plugin a request is for, as a bounded metric label: a link type of KINDS,
    "ipam" when serving as another plugin's IPAM, else "unknown"."""
    if plugin in ipam.INLINE_TYPES:
        return "ipam"
    kind = (request.config.get("type") if request is not None else None) or plugin
    return kind if isinstance(kind, str) and kind in KINDS else "unknown"


def _run(ctx: Context, request: CniRequest) -> Result | dict[str, Any] | None:
    if request.command == "VERSION":
        return {"cniVersion": request.version, "supportedVersions": list(SUPPORTED_VERSIONS)}
    kind = KINDS.get(request.config.get("type", ""))
    if kind is None:
        raise CniError(INVALID_CONFIG, f"plugin type {request.config.get('type')!r} is not one of"
                       f" {', '.join(KINDS)}")
    if ctx.attachments is not None and request.command in ("ADD", "DEL", "GC"):
        return attachments.run(ctx, ctx.attachments, kind, request)
    verbs: dict[str, Callable[[], Result | None]] = {
        "ADD": lambda: kind.add(ctx, request),
        "DEL": lambda: kind.delete(ctx, request),
        "CHECK": lambda: kind.check(ctx, request),
        "STATUS": lambda: ipam.status(ctx, request),
        "GC": lambda: kind.gc(ctx, request),
    }
    return verbs[request.command]()


def _run_ipam(ctx: Context, request: CniRequest) -> Result | dict[str, Any] | None:
    """Invoked as an IPAM plugin (``whereabouts``, ``nodeagent-ipam``) by another plugin."""
    if request.command == "VERSION":
        return _run(ctx, request)
    if request.command == "ADD":
        return ipam.add(ctx, request)
    {"DEL": ipam.delete, "CHECK": ipam.check, "GC": ipam.gc,
     "STATUS": ipam.status}[request.command](ctx, request)
    return None


def _render(result: Result | dict[str, Any] | None, version: str) -> bytes:
    """ADD's result in the request's version, VERSION's document, or nothing."""
    if isinstance(result, Result):
        return _json(result.to_dict(version))
    return _json(result) if result is not None else b""


def _json(doc: object) -> bytes:
    return json.dumps(doc).encode() + b"\n"
