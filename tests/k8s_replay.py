"""A local stand-in for the Kubernetes API server, for the agent's Kubernetes-facing code.

It keeps the objects the agent uses (Nodes, Pods, Events, NodeNetworkStates) and answers the way
a real API server does: ``Status`` objects for errors (bodies in ``tests/k8s_fixtures``), a
cluster-wide ``resourceVersion`` that grows on every write, optimistic concurrency (409 on a
stale ``resourceVersion``), a status subresource, paginated lists, and chunked watch streams of
newline-delimited events that end with an ``ERROR`` 410 event when their resourceVersion has
been compacted. Tests can also script answers (``inject``: 409, 410, 429, 5xx...), take the
server down (closed port or connection reset) and bring it back on the same port. Every request
is recorded; :meth:`ReplayApiServer.recorded_calls` maps them to RBAC verbs.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import queue
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

FIXTURES = Path(__file__).resolve().parent / "k8s_fixtures"
STATUS_SUBRESOURCE = {("nodeagent.io", "nodenetworkstates")}
CLUSTER_SCOPED = {"nodes", "nodenetworkstates", "namespaces"}
WHEREABOUTS = "whereabouts.cni.cncf.io"
MULTUS = "k8s.cni.cncf.io"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def status_body(key: str, *, resource: str = "", group: str = "", name: str = "",
                **extra: Any) -> dict[str, Any]:
    """A ``Status`` object as the API server sends it, from ``statuses.json``."""
    doc = copy.deepcopy(fixture("statuses.json")[key])
    qualified = f"{resource}.{group}" if group else resource
    values = {"qualified": qualified, "name": name, "group": group, "resource": resource,
              **{k: str(v) for k, v in extra.items()}}
    doc["message"] = doc["message"].format(**values)
    details = doc.get("details")
    if details is not None:
        for k, v in list(details.items()):
            if isinstance(v, str):
                details[k] = v.format(**values)
        if not details.get("group"):
            details.pop("group", None)
    return doc


def crd_validator(group: str, plural: str) -> Any:
    """A jsonschema validator for the chart's CRD ``<plural>.<group>``."""
    from tests import deploy_render

    return deploy_render.crd_validator(deploy_render.crd_named(f"{plural}.{group}"))


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class _Rule:
    method: str
    path: str
    code: int
    body: Any
    times: int
    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)


@dataclass
class _Route:
    group: str
    version: str
    namespace: str
    resource: str
    name: str
    subresource: str


def parse_path(path: str) -> _Route | None:
    """Split an API path: /api/v1/... (core) or /apis/GROUP/VERSION/..."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return None
    return _Route(group, version, namespace, rest[0], rest[1] if len(rest) > 1 else "",
                  rest[2] if len(rest) > 2 else "")


def rbac_verb(method: str, route: _Route, query: dict[str, str]) -> str:
    if method == "GET":
        if query.get("watch") in ("1", "true"):
            return "watch"
        return "get" if route.name else "list"
    if method == "DELETE":
        return "delete" if route.name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _field(obj: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)  # type: ignore[assignment]
    return obj


def _matches(obj: dict[str, Any], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if str(_field(obj, key) or "") == value:
                return False
        else:
            key, value = term.replace("==", "=").split("=", 1)
            if str(_field(obj, key) or "") != value:
                return False
    return True


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """JSON merge patch (RFC 7386); what strategic merge does for the scalar fields used."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


_CLOSE = object()


class _Watcher:
    def __init__(self, route: _Route, selector: str) -> None:
        self.route = route
        self.selector = selector
        self.events: queue.Queue[Any] = queue.Queue()

    def wants(self, route: _Route, obj: dict[str, Any]) -> bool:
        return (route.group, route.resource) == (self.route.group, self.route.resource) and (
            not self.route.namespace or self.route.namespace == route.namespace
        ) and _matches(obj, self.selector)


class ReplayApiServer:
    """Start with ``with ReplayApiServer() as api:``; ``api.url`` is the host to give clients."""

    def __init__(self, validators: dict[tuple[str, str], Any] | None = None) -> None:
        """``validators``: (group, resource) -> a jsonschema validator that writes of that
        resource must pass (422 Invalid otherwise, as the API server answers)."""
        self.validators = validators or {}
        self._lock = threading.RLock()
        self._objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self._history: list[tuple[int, _Route, str, dict[str, Any]]] = []
        self._rv = 1000
        self._compacted = 0
        self._rules: list[_Rule] = []
        self._watchers: list[_Watcher] = []
        self._calls: list[Call] = []
        self._calls_changed = threading.Condition(self._lock)
        self._conns: set[socket.socket] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self.mode = "up"  # "up", "closed" (port closed), "reset" (connections reset)
        #: Called with (method, path, query) before each request is answered.
        self.on_request: Callable[[str, str, dict[str, str]], None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> ReplayApiServer:
        handler = _handler_for(self)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self._port), handler)
        self._httpd.daemon_threads = True
        self._port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self.mode = "up"
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self._end_watches()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> ReplayApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def down(self, mode: str = "closed") -> None:
        """The API becomes unreachable: ``closed`` stops listening and drops every open
        connection; ``reset`` keeps the port open but resets each connection."""
        self.mode = mode
        if mode == "closed":
            self.stop()

    def up(self) -> None:
        if self._httpd is None:
            self.start()
        self.mode = "up"

    # -- objects ----------------------------------------------------------------------------

    def add_node(self, name: str = "worker-1", uid: str | None = None) -> dict[str, Any]:
        node = fixture("node.json")
        node["metadata"]["name"] = name
        node["metadata"]["labels"]["kubernetes.io/hostname"] = name
        if uid:
            node["metadata"]["uid"] = uid
        return self.put(_Route("", "v1", "", "nodes", name, ""), node)

    def add_pod(self, namespace: str, name: str, node: str = "worker-1",
                container_id: str | None = None) -> dict[str, Any]:
        pod = fixture("pod.json")
        pod["metadata"].update(namespace=namespace, name=name, uid=str(uuid.uuid4()))
        pod["spec"]["nodeName"] = node
        cid = container_id or uuid.uuid4().hex + uuid.uuid4().hex
        pod["status"]["containerStatuses"][0]["containerID"] = f"containerd://{cid}"
        return self.put(_Route("", "v1", namespace, "pods", name, ""), pod)

    # whereabouts' objects, in the shape whereabouts writes them (k8s_fixtures/whereabouts.json)

    def add_ippool(self, namespace: str, name: str, range_text: str,
                   allocations: dict[str, dict[str, str]]) -> dict[str, Any]:
        """An ``IPPool``: ``allocations`` keyed by the decimal offset from ``range_text``."""
        pool = fixture("whereabouts.json")["ippool"]
        pool["metadata"].update(namespace=namespace, name=name)
        pool["spec"] = {"range": range_text, "allocations": allocations}
        return self.put(_Route(WHEREABOUTS, "v1alpha1", namespace, "ippools", name, ""), pool)

    def add_overlapping_reservation(self, namespace: str, name: str,
                                    spec: dict[str, str]) -> dict[str, Any]:
        """An ``OverlappingRangeIPReservation`` named ``[<network>-]<address>``."""
        obj = fixture("whereabouts.json")["overlappingrangeipreservation"]
        obj["metadata"].update(namespace=namespace, name=name)
        obj["spec"] = spec
        return self.put(_Route(WHEREABOUTS, "v1alpha1", namespace,
                               "overlappingrangeipreservations", name, ""), obj)

    # Multus's objects, in their real shape (k8s_fixtures/multus.json)

    def add_namespace(self, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        obj = fixture("multus.json")["namespace"]
        obj["metadata"]["name"] = name
        obj["metadata"]["labels"] = {"kubernetes.io/metadata.name": name, **(labels or {})}
        return self.put(_Route("", "v1", "", "namespaces", name, ""), obj)

    def add_nad(self, namespace: str, name: str, config: dict[str, Any]) -> dict[str, Any]:
        """A NetworkAttachmentDefinition whose ``spec.config`` is ``config`` (JSON text)."""
        obj = fixture("multus.json")["network-attachment-definition"]
        obj["metadata"].update(namespace=namespace, name=name)
        obj["spec"]["config"] = json.dumps(config)
        return self.put(_Route(MULTUS, "v1", namespace, "network-attachment-definitions",
                               name, ""), obj)

    def put_policy(self, namespace: str, name: str, policy_for: str,
                   spec: dict[str, Any]) -> dict[str, Any]:
        """Create or replace a MultiNetworkPolicy (``policy-for``: its annotation)."""
        obj = fixture("multus.json")["multi-networkpolicy"]
        obj["metadata"].update(namespace=namespace, name=name)
        obj["metadata"]["annotations"] = {"k8s.v1.cni.cncf.io/policy-for": policy_for}
        obj["spec"] = spec
        return self.put(_Route(MULTUS, "v1beta1", namespace, "multi-networkpolicies", name,
                               ""), obj)

    def delete_policy(self, namespace: str, name: str) -> None:
        self.delete(_Route(MULTUS, "v1beta1", namespace, "multi-networkpolicies", name, ""))

    def put_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        """Create or replace a pod given whole (labels, annotations as the test wants)."""
        meta = pod["metadata"]
        return self.put(_Route("", "v1", meta["namespace"], "pods", meta["name"], ""), pod)

    def delete_pod(self, namespace: str, name: str) -> None:
        self.delete(_Route("", "v1", namespace, "pods", name, ""))

    def get(self, group: str, resource: str, name: str, namespace: str = "") -> Any:
        with self._lock:
            obj = self._objects.get((group, resource, namespace, name))
            return copy.deepcopy(obj)

    def objects(self, group: str, resource: str) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(o) for (g, r, _, _), o in sorted(self._objects.items())
                    if (g, r) == (group, resource)]

    def put(self, route: _Route, obj: dict[str, Any]) -> dict[str, Any]:
        """Store (create or replace) an object, bumping the resourceVersion; notify watches."""
        with self._lock:
            key = (route.group, route.resource, route.namespace, route.name)
            existed = key in self._objects
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            if not meta.get("uid"):
                meta["uid"] = str(uuid.uuid4())
            meta.setdefault("creationTimestamp", _now())
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            self._objects[key] = obj
            self._notify(route, "MODIFIED" if existed else "ADDED", obj)
            return copy.deepcopy(obj)

    def delete(self, route: _Route) -> None:
        with self._lock:
            obj = self._objects.pop((route.group, route.resource, route.namespace, route.name))
            self._rv += 1
            obj["metadata"]["resourceVersion"] = str(self._rv)
            self._notify(route, "DELETED", obj)

    def _notify(self, route: _Route, kind: str, obj: dict[str, Any]) -> None:
        self._history.append((self._rv, route, kind, copy.deepcopy(obj)))
        for w in self._watchers:
            if w.wants(route, obj):
                w.events.put({"type": kind, "object": copy.deepcopy(obj)})

    def compact(self) -> None:
        """Forget the history, as etcd compaction does: open watches end with an ERROR 410
        event, and watches or list continuations from an older resourceVersion get 410."""
        with self._lock:
            self._compacted = self._rv
            self._history.clear()
            watchers, current = list(self._watchers), self._rv
        for w in watchers:
            w.events.put({"type": "ERROR", "object": status_body(
                "410-watch", requested=w.route.name or "0", current=current)})
            w.events.put(_CLOSE)

    def _end_watches(self) -> None:
        with self._lock:
            watchers = list(self._watchers)
        for w in watchers:
            w.events.put(_CLOSE)

    def end_watches(self) -> None:
        """Close every open watch stream normally (as on the server's watch timeout)."""
        self._end_watches()

    # -- scripting and recording ------------------------------------------------------------

    def inject(self, method: str, path: str, code: int, body: Any = None, *, times: int = 1,
               headers: dict[str, str] | None = None,
               query: dict[str, str] | None = None) -> None:
        """Answer the next ``times`` ``method`` requests to ``path`` (whose query has the items
        of ``query``) with ``code`` and ``body`` (default: the API's Status object for that
        code)."""
        with self._lock:
            self._rules.append(_Rule(method, path, code, body, times, headers or {},
                                     query or {}))

    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def recorded_calls(self) -> list[tuple[str, str, str, str]]:
        """(verb, group, resource, subresource) of every request, in order."""
        out = []
        for c in self.calls():
            route = parse_path(c.path)
            if route is not None:
                out.append((rbac_verb(c.method, route, c.query), route.group, route.resource,
                            route.subresource))
        return out

    def wait_for(self, predicate: Callable[[list[Call]], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._calls_changed:
            while not predicate(list(self._calls)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._calls_changed.wait(remaining)
            return True

    def _record(self, call: Call) -> None:
        with self._calls_changed:
            self._calls.append(call)
            self._calls_changed.notify_all()

    def _scripted(self, method: str, path: str, query: dict[str, str]) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.method == method and rule.path == path and rule.times > 0 and all(
                        query.get(k) == v for k, v in rule.query.items()):
                    rule.times -= 1
                    return rule
        return None

    # -- request handling (called from handler threads) -------------------------------------

    def handle(self, method: str, route: _Route, query: dict[str, str],
               body: Any) -> tuple[int, Any] | _Watcher:
        with self._lock:
            if method == "GET" and query.get("watch") in ("1", "true"):
                return self._watch(route, query)
            if method == "GET":
                return self._read(route, query)
            if method == "POST":
                return self._create(route, body)
            if method == "PUT":
                return self._update(route, body)
            if method == "PATCH":
                return self._patch(route, body)
            if method == "DELETE" and route.name:
                if self._key(route) not in self._objects:
                    return 404, self._status("404", route)
                self.delete(route)
                return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                             "status": "Success"}
        return 405, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                     "message": "method not allowed", "reason": "MethodNotAllowed", "code": 405}

    def _key(self, route: _Route) -> tuple[str, str, str, str]:
        return (route.group, route.resource, route.namespace, route.name)

    def _status(self, key: str, route: _Route) -> dict[str, Any]:
        return status_body(key, resource=route.resource, group=route.group, name=route.name)

    def _read(self, route: _Route, query: dict[str, str]) -> tuple[int, Any]:
        if route.name:
            obj = self._objects.get(self._key(route))
            return (200, copy.deepcopy(obj)) if obj is not None else (404, self._status("404",
                                                                                         route))
        selector = query.get("fieldSelector", "")
        token = query.get("continue")
        start, list_rv = 0, self._rv
        if token:
            state = json.loads(base64.b64decode(token))
            start, list_rv = state["start"], state["rv"]
            if list_rv < self._compacted:
                return 410, status_body("410-continue")
        items = [copy.deepcopy(o) for (g, r, ns, _), o in sorted(self._objects.items())
                 if (g, r) == (route.group, route.resource)
                 and (not route.namespace or ns == route.namespace) and _matches(o, selector)]
        limit = int(query.get("limit", "0") or 0)
        meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
        if limit and start + limit < len(items):
            meta["continue"] = base64.b64encode(
                json.dumps({"rv": list_rv, "start": start + limit}).encode()).decode()
            meta["remainingItemCount"] = len(items) - start - limit
        page = items[start:start + limit] if limit else items[start:]
        kind = "".join(w.capitalize() for w in route.resource.rstrip("s").split("-"))
        return 200, {"kind": f"{kind}List", "apiVersion": route.version if not route.group
                     else f"{route.group}/{route.version}", "metadata": meta, "items": page}

    def _invalid(self, route: _Route, obj: dict[str, Any]) -> tuple[int, Any] | None:
        validator = self.validators.get((route.group, route.resource))
        errors = list(validator.iter_errors(obj)) if validator is not None else []
        if not errors:
            return None
        causes = [{"reason": "FieldValueInvalid", "message": e.message,
                   "field": ".".join(str(p) for p in e.absolute_path)} for e in errors]
        kind = obj.get("kind", route.resource)
        name = obj.get("metadata", {}).get("name", route.name)
        qualified = f"{kind}.{route.group}" if route.group else kind
        message = f"{qualified} \"{name}\" is invalid: " + ", ".join(
            f"{c['field']}: Invalid value: {c['message']}" for c in causes)
        return 422, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                     "status": "Failure", "message": message, "reason": "Invalid",
                     "details": {"name": name, "group": route.group, "kind": kind,
                                 "causes": causes}, "code": 422}

    def _create(self, route: _Route, body: Any) -> tuple[int, Any]:
        name = (body or {}).get("metadata", {}).get("name", "")
        target = _Route(route.group, route.version, route.namespace, route.resource, name, "")
        if not name:
            return 422, self._status("422", target)
        if self._key(target) in self._objects:
            return 409, self._status("409-exists", target)
        obj = copy.deepcopy(body)
        if (route.group, route.resource) in STATUS_SUBRESOURCE:
            obj.pop("status", None)  # the status subresource: create ignores status
        if route.namespace:
            obj["metadata"]["namespace"] = route.namespace
        obj["metadata"].pop("resourceVersion", None)
        obj["metadata"]["uid"] = str(uuid.uuid4())
        obj["metadata"]["creationTimestamp"] = _now()
        obj["metadata"]["generation"] = 1
        return self._invalid(target, obj) or (201, self.put(target, obj))

    def _update(self, route: _Route, body: Any) -> tuple[int, Any]:
        current = self._objects.get(self._key(route))
        if current is None:
            return 404, self._status("404", route)
        sent_rv = (body or {}).get("metadata", {}).get("resourceVersion")
        if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
            return 409, self._status("409", route)
        obj = copy.deepcopy(current)
        if route.subresource == "status":
            obj["status"] = copy.deepcopy(body.get("status"))
        else:
            status = obj.get("status")
            obj = copy.deepcopy(body)
            obj["metadata"] = {**current["metadata"], **{
                k: v for k, v in body.get("metadata", {}).items()
                if k in ("labels", "annotations", "ownerReferences")}}
            if (route.group, route.resource) in STATUS_SUBRESOURCE:
                obj["status"] = status
        return self._invalid(route, obj) or (200, self.put(route, obj))

    def _patch(self, route: _Route, body: Any) -> tuple[int, Any]:
        current = self._objects.get(self._key(route))
        if current is None:
            return 404, self._status("404", route)
        obj = copy.deepcopy(current)
        if route.subresource == "status":
            _merge(obj, {"status": body.get("status")})
        else:
            _merge(obj, {k: v for k, v in body.items() if k != "status"})
        return self._invalid(route, obj) or (200, self.put(route, obj))

    def _watch(self, route: _Route, query: dict[str, str]) -> tuple[int, Any] | _Watcher:
        rv = query.get("resourceVersion", "")
        watcher = _Watcher(_Route(route.group, route.version, route.namespace, route.resource,
                                  rv, ""), query.get("fieldSelector", ""))
        if rv and rv != "0" and int(rv) < self._compacted:
            watcher.events.put({"type": "ERROR", "object": status_body(
                "410-watch", requested=rv, current=self._rv)})
            watcher.events.put(_CLOSE)
            return watcher
        if not rv or rv == "0":
            for (g, r, ns, _), o in sorted(self._objects.items()):
                probe = _Route(g, "", ns, r, "", "")
                if watcher.wants(probe, o):
                    watcher.events.put({"type": "ADDED", "object": copy.deepcopy(o)})
        else:
            for at, r2, kind, o in self._history:
                if at > int(rv) and watcher.wants(r2, o):
                    watcher.events.put({"type": kind, "object": copy.deepcopy(o)})
        self._watchers.append(watcher)
        return watcher

    def _forget(self, watcher: _Watcher) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._watchers.remove(watcher)


def _handler_for(server: ReplayApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            with server._lock:
                server._conns.add(self.connection)

        def finish(self) -> None:
            with server._lock:
                server._conns.discard(self.connection)
            with contextlib.suppress(OSError):
                super().finish()

        def handle(self) -> None:
            if server.mode == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            with contextlib.suppress(OSError):
                super().handle()

        def _serve(self) -> None:
            if server.mode == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            split = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(split.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            server._record(Call(self.command, split.path, query, body))
            if server.on_request is not None:
                server.on_request(self.command, split.path, query)
            rule = server._scripted(self.command, split.path, query)
            route = parse_path(split.path)
            if rule is not None:
                reply = rule.body
                if reply is None:
                    key = str(rule.code)
                    reply = status_body(key, resource=route.resource if route else "",
                                        group=route.group if route else "",
                                        name=route.name if route else "")
                self._send(rule.code, reply, rule.headers)
                return
            if route is None:
                self._send(404, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                 "status": "Failure", "message": "the server could not find"
                                 " the requested resource", "reason": "NotFound", "code": 404})
                return
            result = server.handle(self.command, route, query, body)
            if isinstance(result, _Watcher):
                self._stream(result, float(query.get("timeoutSeconds", "300")))
            else:
                self._send(*result)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def _send(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, watcher: _Watcher, timeout: float) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            deadline = time.monotonic() + timeout
            try:
                while server.mode == "up":
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        event = watcher.events.get(timeout=min(remaining, 0.1))
                    except queue.Empty:
                        continue
                    if event is _CLOSE:
                        break
                    line = json.dumps(event).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                if server.mode == "up":
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                else:
                    self.close_connection = True
            except OSError:
                self.close_connection = True
            finally:
                server._forget(watcher)

    return Handler
