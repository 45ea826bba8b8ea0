"""The agent's HTTP endpoint: /metrics (Prometheus), /healthz (liveness), /readyz (readiness).

Liveness fails only when a registered check says a vital part died (kubelet then restarts the
pod); readiness waits until every readiness check passes (inventory scanned, CNI socket up).
A check is a callable returning true when healthy; one that raises counts as failing.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import TCPServer, ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = ":9808"
Check = Callable[[], bool]
StartResponse = Callable[..., Any]


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (every address) -> (host, port)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"metrics address {address!r} is not HOST:PORT (e.g. :9808)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"metrics address {address!r}: write an IPv6 host as [ADDR]:PORT")
    return host, int(port_text)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        """As HTTPServer's, without its reverse DNS lookup of the host (slow without DNS)."""
        TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]
        self.setup_environ()


class _Server6(_Server):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        # "::" serves IPv4 too (mapped addresses), whatever net.ipv6.bindv6only says.
        with contextlib.suppress(OSError):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


def _server_class(host: str) -> type[_Server]:
    if ":" in host:
        return _Server6
    return _Server


class HttpServer:
    """Serves the registry and the health checks on ``address`` until :meth:`stop`."""

    def __init__(self, address: str = DEFAULT_ADDRESS,
                 registry: CollectorRegistry | None = None) -> None:
        self.host, self._port = parse_address(address)
        self._metrics_app = make_wsgi_app(registry) if registry is not None else None
        self._liveness: dict[str, Check] = {}
        self._readiness: dict[str, Check] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def add_liveness(self, name: str, check: Check) -> None:
        self._liveness[name] = check

    def add_readiness(self, name: str, check: Check) -> None:
        self._readiness[name] = check

    @property
    def port(self) -> int:
        """The bound port (the one the kernel chose when 0 was asked for)."""
        return self._server.server_address[1] if self._server is not None else self._port

    def start(self) -> None:
        host = self.host
        if not host:  # every address: IPv4 and IPv6 where the kernel has IPv6
            host = "::" if socket.has_ipv6 and _ipv6_works() else "0.0.0.0"
        self._server = make_server(host, self._port, self._app,
                                   server_class=_server_class(host),
                                   handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,),
                                        name="http", daemon=True)
        self._thread.start()
        log.info("serving /metrics, /healthz and /readyz on %s port %d", host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- the WSGI application ----------------------------------------------------------------

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/livez"):
            return _health(self._liveness, "alive", start_response)
        if path == "/readyz":
            return _health(self._readiness, "ready", start_response)
        if path == "/metrics" and self._metrics_app is not None:
            return self._metrics_app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]


def failing(checks: dict[str, Check]) -> list[str]:
    """Names of the checks that fail (or raise), in the order they were added."""
    bad = []
    for name, check in list(checks.items()):
        try:
            ok = check()
        except Exception as exc:
            log.warning("health check %s raised: %s", name, exc)
            ok = False
        if not ok:
            bad.append(name)
    return bad


def _health(checks: dict[str, Check], word: str, start_response: StartResponse) -> list[bytes]:
    bad = failing(checks)
    body = f"not {word}: {', '.join(bad)}\n" if bad else "ok\n"
    start_response("503 Service Unavailable" if bad else "200 OK",
                   [("Content-Type", "text/plain; charset=utf-8"),
                    ("Cache-Control", "no-store")])
    return [body.encode()]


def _ipv6_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::", 0))
    except OSError:
        return False
    return True
