"""One Kubernetes resource kept current by list + watch: a reusable reflector.

It follows the API's rules: a consistent paginated list, then a watch from that list's
resourceVersion, resumed from the last version seen (bookmarks included) when the stream ends;
when that version is gone (an ``ERROR`` event with code 410, or HTTP 410) it lists again and
reports the difference as ordinary events; other failures back off. ``synced`` turns true after
the first complete list and stays true: the cache is then the API's view, maybe late, never
partial. With ``missing_ok`` a 404 on the list (the CRD is not installed) is an empty, synced
list, looked at again after ``watch_timeout``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from nodeagent.k8s.client import ApiError, Backoff, KubeClient, WatchStream

log = logging.getLogger(__name__)

T = TypeVar("T")
Obj = dict[str, Any]
#: (event type "ADDED"/"MODIFIED"/"DELETED", key, old value or None, new value or None)
Handler = Callable[[str, str, Any, Any], None]


_SKIP = object()


def name_key(obj: Obj) -> str:
    """``namespace/name`` (``name`` for cluster-scoped objects)."""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    return f"{ns}/{name}" if ns else name


def _rv(obj: Obj) -> str:
    meta = obj.get("metadata")
    return str(meta.get("resourceVersion") or "") if isinstance(meta, dict) else ""


class Reflector(Generic[T]):
    """Objects of ``path`` (``/api/v1/pods``...) by ``key``, each stored as ``transform(obj)``.

    ``on_event`` runs on the reflector's thread after each change is in the cache (a relist
    reports what it added, changed and removed). ``query`` adds selectors to list and watch.
    """

    def __init__(self, api: KubeClient, path: str, *, name: str = "",
                 transform: Callable[[Obj], T] | None = None,
                 key: Callable[[Obj], str] = name_key,
                 query: dict[str, str] | None = None, on_event: Handler | None = None,
                 page_size: int = 500, watch_timeout: int = 300,
                 backoff: Backoff | None = None, missing_ok: bool = False) -> None:
        self.api, self.path = api, path
        self.name = name or path.rsplit("/", 1)[-1]
        self.transform: Callable[[Obj], Any] = transform or (lambda obj: obj)
        self.key = key
        self.query = dict(query or {})
        self.on_event = on_event
        self.page_size, self.watch_timeout = page_size, watch_timeout
        self.backoff = backoff or Backoff(1.0, 60.0)
        self.missing_ok = missing_ok
        self.relists = 0
        self.version = 0  # grows with every change of the cache
        self.error = ""  # the last failure, "" once it works again
        self._items: dict[str, T] = {}
        self._rvs: dict[str, str] = {}
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._stream: WatchStream | None = None
        self._thread: threading.Thread | None = None

    # -- reading ----------------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def get(self, key: str) -> T | None:
        return self._items.get(key)  # one dict read: atomic under the GIL

    def items(self) -> dict[str, T]:
        with self._lock:
            return dict(self._items)

    def values(self) -> list[T]:
        with self._lock:
            return list(self._items.values())

    # -- one-shot ---------------------------------------------------------------------------

    def fetch(self) -> tuple[list[Obj], str]:
        """One consistent list (all pages) and its resourceVersion. Raises ApiError; an expired
        continuation (410) restarts the list, up to three times."""
        for _ in range(3):
            items: list[Obj] = []
            query: dict[str, Any] = {**self.query, "limit": self.page_size}
            try:
                while True:
                    page = self.api.request("GET", self.path, query=query)
                    items += [o for o in page.get("items") or () if isinstance(o, dict)]
                    meta = page.get("metadata") or {}
                    token = meta.get("continue")
                    if not token:
                        return items, str(meta.get("resourceVersion", ""))
                    query = {**query, "continue": token}
            except ApiError as exc:
                if exc.code == 404 and self.missing_ok:
                    return [], ""
                if exc.code != 410:
                    raise
                log.info("%s: list continuation expired; listing again", self.name)
        raise ApiError(410, "Expired", f"{self.path}: list kept expiring")

    # -- live -------------------------------------------------------------------------------

    def start(self) -> Reflector[T]:
        self._thread = threading.Thread(target=self._run, name=f"k8s-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        rv: str | None = None
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if rv is None:
                    rv = self._relist()
                    self.error = ""
                if not rv:  # nothing to watch (no CRD): look again later
                    self._stop.wait(self.watch_timeout)
                    rv = None
                    continue
                rv, events = self._watch(rv)
                if rv is None:
                    continue  # expired: relist at once
                if events or time.monotonic() - started > 1:
                    self.backoff.reset()
                    continue
                delay = self.backoff.next()  # a stream ending at once, again and again
            except ApiError as exc:
                if exc.code == 410:
                    rv = None
                    continue
                self.error = f"{self.path}: {exc}"
                delay = self.backoff.next()
                log.warning("%s: %s (retry in %.1fs)", self.name, exc, delay)
            self._stop.wait(delay)

    def _relist(self) -> str:
        objs, rv = self.fetch()
        fresh = {self.key(o): o for o in objs}
        changes: list[tuple[str, str, Any, Any]] = []
        with self._lock:
            old_items, old_rvs = self._items, self._rvs
            items = {}
            for k, o in fresh.items():
                if k in old_items and old_rvs.get(k) == _rv(o) and _rv(o):
                    items[k] = old_items[k]
                elif (value := self._transform(o)) is not _SKIP:
                    items[k] = value
            for k, value in items.items():
                if k not in old_items:
                    changes.append(("ADDED", k, None, value))
                elif value is not old_items[k]:
                    changes.append(("MODIFIED", k, old_items[k], value))
            changes += [("DELETED", k, v, None) for k, v in old_items.items() if k not in items]
            self._items, self._rvs = items, {k: _rv(o) for k, o in fresh.items()}
            self.version += 1
            self.relists += 1
        self._synced.set()
        for change in changes:
            self._notify(*change)
        return rv

    def _watch(self, rv: str) -> tuple[str | None, int]:
        """Follow one watch stream; the resourceVersion to resume from (None: relist) and the
        number of events seen."""
        query = {**self.query, "resourceVersion": rv, "allowWatchBookmarks": "true",
                 "timeoutSeconds": self.watch_timeout}
        stream = self.api.watch(self.path, query, read_timeout=self.watch_timeout + 30)
        self._stream = stream
        count = 0
        try:
            if self._stop.is_set():
                return rv, count
            for event in stream.events():
                if self._stop.is_set():
                    break
                count += 1
                etype, obj = event.get("type"), event.get("object") or {}
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        log.info("%s watch expired (%s); listing again", self.name,
                                 obj.get("message"))
                        return None, count
                    raise ApiError(int(obj.get("code") or 0), str(obj.get("reason", "")),
                                   str(obj.get("message", "watch error")))
                rv = _rv(obj) or rv
                if etype not in ("ADDED", "MODIFIED", "DELETED"):
                    continue  # BOOKMARK
                self._apply(str(etype), obj)
        finally:
            self._stream = None
            stream.close()
        return rv, count

    def _apply(self, etype: str, obj: Obj) -> None:
        key = self.key(obj)
        new = None if etype == "DELETED" else self._transform(obj)
        if new is _SKIP:
            etype, new = "DELETED", None  # unreadable now: as if it were gone
        with self._lock:
            old = self._items.get(key)
            if new is None:
                self._items.pop(key, None)
                self._rvs.pop(key, None)
            else:
                self._items[key] = new
                self._rvs[key] = _rv(obj)
            self.version += 1
        if etype == "DELETED" and old is None:
            return
        self._notify("ADDED" if old is None and new is not None else etype, key, old, new)

    def _transform(self, obj: Obj) -> Any:
        """The stored value; an object the transform cannot read is logged and left out
        (one odd object must not stop the cache)."""
        try:
            return self.transform(obj)
        except Exception as exc:
            log.warning("%s: skipped %s: %s", self.name, self.key(obj), exc)
            return _SKIP

    def _notify(self, etype: str, key: str, old: Any, new: Any) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(etype, key, old, new)
        except Exception:  # a consumer's bug must not stop the cache
            log.exception("%s: handling %s %s", self.name, etype, key)
