"""List+watch caches over the official ``kubernetes`` client.

An :class:`Informer` lists one resource (optionally by label selector), then watches it from the list's
resourceVersion, applying every event to an in-memory store in order: the store is always a consistent
prefix of the API server's history. On ``410 Gone`` (history compacted) it lists again; on any other
error it waits with backoff and resumes from the last resourceVersion it saw. Deletions leave a
tombstone (bounded), which is how the machine learns positively that something is gone.

Every request carries a timeout: no call can hang a thread. The watch thread is the only place that
waits, and it waits for the API server, never inside a reconcile pass.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("workspace_fsm.kubernetes.informer")

Handler = Callable[[str, dict[str, Any] | None, dict[str, Any] | None], None]  # (event type, old, new)


def object_key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


class Informer:
    """One resource's cache. ``list_fn(**kw)`` and ``watch_fn`` are client calls returning plain dicts."""

    TOMBSTONES = 10_000

    def __init__(self, name: str, list_fn: Callable[..., Any], *, label_selector: str | None = None,
                 to_dict: Callable[[Any], dict[str, Any]] = lambda o: o, watch_timeout_s: int = 240,
                 request_timeout_s: float = 30.0) -> None:
        self.name = name
        self._list_fn = list_fn
        self._selector = label_selector
        self._to_dict = to_dict
        self._watch_timeout = watch_timeout_s
        self._request_timeout = request_timeout_s
        self._lock = threading.RLock()
        self._store: dict[str, dict[str, Any]] = {}
        self._tombstones: OrderedDict[str, None] = OrderedDict()
        self._handlers: list[Handler] = []
        self._rv: str | None = None
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: watch.Watch | None = None
        self.relists = 0
        self.errors = 0

    # ------------------------------------------------------------------ reading

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._store.get(key)

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._store.values())

    def gone(self, key: str) -> bool:
        """Positive knowledge: the cache saw this object deleted (and not re-created since)."""
        with self._lock:
            return key in self._tombstones

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout_s: float) -> bool:
        return self._synced.wait(timeout_s)

    def add_handler(self, handler: Handler) -> None:
        self._handlers.append(handler)

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _kw(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"_request_timeout": self._request_timeout}
        if self._selector:
            kw["label_selector"] = self._selector
        return kw

    def _list(self) -> None:
        result = self._to_dict(self._list_fn(**self._kw()))
        items = result.get("items") or []
        rv = (result.get("metadata") or {}).get("resourceVersion")
        with self._lock:
            old = self._store
            self._store = {}
            for raw in items:
                self._store[object_key(raw)] = raw
            self._rv = rv
            new = self._store
        self.relists += 1
        # What changed while we were not watching: deletions and additions/updates.
        for key, obj in old.items():
            if key not in new:
                self._remember_deleted(key)
                self._notify("DELETED", obj, None)
        for key, obj in new.items():
            prev = old.get(key)
            if prev is None or (prev.get("metadata") or {}).get("resourceVersion") != (obj.get("metadata") or {}).get("resourceVersion"):
                self._forget_deleted(key)
                self._notify("ADDED" if prev is None else "MODIFIED", prev, obj)
        self._synced.set()

    def _run(self) -> None:
        backoff = 0.5
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list:
                    self._list()
                    need_list = False
                self._watch_once()
                backoff = 0.5
            except ApiException as exc:
                if exc.status == 410:
                    log.info("informer %s: watch history expired (410 Gone); listing again", self.name)
                    need_list = True
                    continue
                self.errors += 1
                wait = max(backoff, _retry_after(exc))  # a 429's Retry-After is honoured
                log.warning("informer %s: API error %s (%s); retrying in %.1fs", self.name, exc.status,
                            exc.reason, wait)
                self._stop.wait(wait)
                backoff = min(30.0, backoff * 2)
            except Exception as exc:  # network errors: resume from the last resourceVersion
                if self._stop.is_set():
                    break
                self.errors += 1
                log.warning("informer %s: watch failed (%s); retrying in %.1fs", self.name, exc, backoff)
                self._stop.wait(backoff * (1 + random.random() / 2))
                backoff = min(30.0, backoff * 2)

    def _watch_once(self) -> None:
        self._watch = w = watch.Watch()
        kw = self._kw()
        kw["_request_timeout"] = self._watch_timeout + 30
        for event in w.stream(self._list_fn, resource_version=self._rv, timeout_seconds=self._watch_timeout,
                              allow_watch_bookmarks=True, **kw):
            if self._stop.is_set():
                w.stop()
                break
            etype = event.get("type")
            raw = event.get("raw_object") if isinstance(event.get("raw_object"), dict) else self._to_dict(event.get("object"))
            if etype == "ERROR":
                code = (raw or {}).get("code")
                if code == 410:
                    raise ApiException(status=410, reason="Gone")
                raise ApiException(status=code or 500, reason=(raw or {}).get("message", "watch error"))
            rv = (raw.get("metadata") or {}).get("resourceVersion")
            if etype == "BOOKMARK":
                self._rv = rv or self._rv
                continue
            key = object_key(raw)
            with self._lock:
                prev = self._store.get(key)
                if etype == "DELETED":
                    self._store.pop(key, None)
                else:
                    self._store[key] = raw
                self._rv = rv or self._rv
            if etype == "DELETED":
                self._remember_deleted(key)
                self._notify(etype, prev or raw, None)
            else:
                self._forget_deleted(key)
                self._notify(etype, prev, raw)

    def _remember_deleted(self, key: str) -> None:
        with self._lock:
            self._tombstones[key] = None
            self._tombstones.move_to_end(key)
            while len(self._tombstones) > self.TOMBSTONES:
                self._tombstones.popitem(last=False)

    def _forget_deleted(self, key: str) -> None:
        with self._lock:
            self._tombstones.pop(key, None)

    def _notify(self, etype: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        for h in self._handlers:
            try:
                h(etype, old, new)
            except Exception:  # a handler bug must not stop the cache
                log.exception("informer %s: event handler failed", self.name)


def _retry_after(exc: ApiException) -> float:
    """The seconds a 429 (or 503) asked to wait, 0 when it did not say."""
    try:
        return max(0.0, float((exc.headers or {}).get("Retry-After", 0)))
    except (TypeError, ValueError):
        return 0.0
