"""A small Kubernetes API client on top of the ``kubernetes`` package.

The package loads the configuration (in-cluster service account, kubeconfig), signs requests
(its ``Configuration.auth_settings``, which refreshes expiring tokens) and carries them (its
REST client over urllib3: TLS, proxies). Its ``ApiClient`` is not used: the agent sends plain
JSON and reads raw answers, and that module alone costs 7 MiB resident (pydantic, for typed
answers the agent never asks for). This module sends plain JSON requests with short timeouts and
turns every failure into one :class:`ApiError`: an HTTP status with the API's ``Status`` object,
or code 0 when no answer came at all (connection refused or reset, timeout, TLS failure).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import urllib3

# By module, not ``from kubernetes import client, config``: the package's __init__ would import
# its dynamic client, streams, informers and jsonschema, and ``kubernetes.config`` the kubeconfig
# loader with requests and oauthlib (nodeagent.lazyinit defers both; docs/observability.md).
from kubernetes.client.configuration import Configuration
from kubernetes.client.exceptions import ApiException
from kubernetes.client.rest import RESTClientObject
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import load_incluster_config

from nodeagent import __version__

log = logging.getLogger(__name__)

GROUP, VERSION = "nodeagent.io", "v1alpha1"
KIND, PLURAL = "NodeNetworkState", "nodenetworkstates"
EVENTS_NAMESPACE = "default"
CONNECT_TIMEOUT, READ_TIMEOUT = 3.0, 10.0

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
USER_AGENT = f"nodeagent/{__version__}"


class ApiError(Exception):
    """A failed API call. ``code`` is the HTTP status, 0 when the server did not answer."""

    def __init__(self, code: int, reason: str, message: str,
                 retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {code} {reason}: {message}" if code else f"{reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.retry_after = retry_after

    @property
    def unavailable(self) -> bool:
        """The API is down or overloaded: worth retrying later with backoff."""
        return self.code == 0 or self.code == 429 or self.code >= 500

    @classmethod
    def from_response(cls, status: int, data: bytes, headers: Any = None) -> ApiError:
        reason, message = "", data[:300].decode(errors="replace")
        with contextlib.suppress(ValueError, AttributeError):
            doc = json.loads(data)
            reason, message = str(doc.get("reason", "")), str(doc.get("message", message))
        retry_after = None
        if headers is not None:
            with contextlib.suppress(TypeError, ValueError):
                retry_after = float(headers.get("Retry-After"))
        return cls(status, reason, message, retry_after)


class Backoff:
    """Exponential backoff with jitter: ``initial`` doubling up to ``maximum``."""

    def __init__(self, initial: float = 1.0, maximum: float = 60.0, jitter: float = 0.2) -> None:
        self.initial, self.maximum, self.jitter = initial, maximum, jitter
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.maximum, self._next * 2)
        return delay * random.uniform(1 - self.jitter, 1 + self.jitter)

    def reset(self) -> None:
        self._next = self.initial


class KubeClient:
    """Sends JSON requests to the API server. Thread-safe (urllib3's pool is)."""

    def __init__(self, configuration: Configuration,
                 timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT)) -> None:
        self.configuration = configuration
        self.rest = RESTClientObject(configuration)
        self.timeout = timeout

    @property
    def host(self) -> str:
        return str(self.configuration.host)

    def request(self, method: str, path: str, *, query: dict[str, Any] | None = None,
                body: Any = None, content_type: str = JSON) -> dict[str, Any]:
        """One request; the decoded JSON answer. Raises :class:`ApiError`."""
        resp = self._send(method, path, query, body, content_type, self.timeout)
        try:
            data = resp.data
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(0, type(exc).__name__, str(exc)) from exc
        finally:
            resp.release_conn()
        if not 200 <= resp.status <= 299:
            raise ApiError.from_response(resp.status, data, resp.headers)
        try:
            return json.loads(data) if data else {}
        except ValueError as exc:
            raise ApiError(resp.status, "BadResponse", f"not JSON: {data[:100]!r}") from exc

    def watch(self, path: str, query: dict[str, Any], read_timeout: float) -> WatchStream:
        """Open a watch (``watch=1`` is added); read its events from the returned stream."""
        resp = self._send("GET", path, {**query, "watch": "1"}, None, JSON,
                          (self.timeout[0], read_timeout))
        if not 200 <= resp.status <= 299:
            try:
                data = resp.data
            except (urllib3.exceptions.HTTPError, OSError):
                data = b""
            resp.release_conn()
            raise ApiError.from_response(resp.status, data, resp.headers)
        return WatchStream(resp)

    def _send(self, method: str, path: str, query: dict[str, Any] | None, body: Any,
              content_type: str, timeout: tuple[float, float]) -> urllib3.HTTPResponse:
        headers = {"Accept": JSON, "User-Agent": USER_AGENT}
        if body is not None:
            headers["Content-Type"] = content_type
        url = self.host + path
        if query:
            url += "?" + urlencode(sorted(query.items()), quote_via=quote)
        try:
            for auth in self.configuration.auth_settings().values():  # the bearer token
                headers[auth["key"]] = auth["value"]
            return self.rest.request(method, url, headers=headers, body=body,
                                     _request_timeout=timeout).response
        except ApiException as exc:  # TLS failures surface as status 0
            raise ApiError(exc.status or 0, "ClientError", str(exc.reason)) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(0, type(exc).__name__, str(exc)) from exc

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.rest.close()


class WatchStream:
    """Events of one watch response, one JSON document a line. ``close()`` from another thread
    interrupts a blocked read."""

    def __init__(self, resp: urllib3.HTTPResponse) -> None:
        self._resp = resp
        self._closed = False

    def events(self) -> Iterator[dict[str, Any]]:
        """Decoded events until the server ends the stream; raises ApiError on a broken one."""
        pending = b""
        try:
            for chunk in self._resp.stream(None, decode_content=False):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            if self._closed:
                return
            raise ApiError(0, type(exc).__name__, str(exc)) from exc
        if pending.strip() and not self._closed:
            try:
                yield json.loads(pending)
            except ValueError as exc:
                raise ApiError(0, "BadResponse", "truncated watch event") from exc

    def close(self) -> None:
        self._closed = True
        conn = getattr(self._resp, "connection", None)
        sock = getattr(conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self._resp.close()


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def build_client(*, kubeconfig: str | os.PathLike[str] | None = None, host: str | None = None,
                 timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT)) -> KubeClient:
    """A client for ``host`` (plain, unauthenticated: tests), else the kubeconfig file, else the
    in-cluster service account. Raises ApiError (code 0, reason ``ConfigError``) when none
    of them is usable."""
    cfg = Configuration()
    try:
        if host is not None:
            cfg.host = host
            cfg.proxy = None
        elif kubeconfig is not None:
            # Here only: in a pod (the service account) it is never needed.
            from kubernetes.config.kube_config import load_kube_config

            load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        else:
            load_incluster_config(client_configuration=cfg)
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        where = kubeconfig or "in-cluster service account"
        raise ApiError(0, "ConfigError", f"cannot load Kubernetes config ({where}): {exc}") \
            from exc
    # Fail fast: the callers retry with their own backoff, so urllib3 must not.
    cfg.retries = False
    return KubeClient(cfg, timeout)
