"""List+watch caches over the official ``kubernetes`` client.

An :class:`Informer` lists one resource (optionally by label selector), then watches it from the list's
resourceVersion, applying every event to an in-memory store in order: the store is always a consistent
prefix of the API server's history. On ``410 Gone`` (history compacted) it lists again; on any other
error it waits with backoff and resumes from the last resourceVersion it saw. Deletions leave a
tombstone (bounded), which is how the machine learns positively that something is gone.

When the API server cannot be reached at all (connection refused, host not found, connect timeout, TLS
failure), the informer retries every :data:`UNREACHABLE_RETRY_S` seconds and tells its
:class:`Reachability`, which says so once, retries quietly (debug level) and says once when the server
answers again. A runner shares one among its informers, so an outage is one line, not one per resource.

Every request carries a timeout: no call can hang a thread. The watch thread is the only place that
waits, and it waits for the API server, never inside a reconcile pass.

Indexes (as controller-runtime's field indexers): ``add_index(name, fn)`` registers a function mapping an
object to index values (a string, None, or an iterable of strings), kept up to date under the cache's lock
by every list, relist and watch event; ``by_index(name, value)`` returns the objects with that value in time
proportional to the number of matches (the objects' keys are kept per value; the cache is never scanned).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import random
import ssl
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException
from urllib3 import exceptions as urllib3_errors

log = logging.getLogger("workspace_fsm.kubernetes.informer")

#: Seconds between attempts while the API server cannot be reached (plus up to a quarter of jitter).
UNREACHABLE_RETRY_S = 2.0

Handler = Callable[[str, dict[str, Any] | None, dict[str, Any] | None], None]  # (event type, old, new)
#: An index function: the values under which an object is found (a string, None for none, or several).
IndexFunc = Callable[[dict[str, Any]], "str | None | Iterable[str]"]


def object_key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


def connection_failure(exc: BaseException) -> str | None:
    """Why a connection to the server could not be made ("connection refused", "host not found", ...), or
    None when ``exc`` is something else (an answer from the server, a watch cut short, a bug)."""
    seen: set[int] = set()
    chain: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        chain.append(e)
        reason = getattr(e, "reason", None)
        todo.extend((reason if isinstance(reason, BaseException) else None, e.__cause__, e.__context__))
        todo.extend(a for a in e.args if isinstance(a, BaseException))  # urllib3 wraps errors as arguments
    if not any(isinstance(e, (urllib3_errors.NewConnectionError, urllib3_errors.ConnectTimeoutError,
                              urllib3_errors.SSLError, urllib3_errors.ProxyError, ssl.SSLError,
                              ConnectionRefusedError)) for e in chain):
        return None
    for e in chain:
        if isinstance(e, urllib3_errors.NameResolutionError):
            return "host name not found"
        if isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
    for e in chain:
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"its TLS certificate is not trusted ({e.verify_message or e.reason})"
    for e in chain:
        if isinstance(e, ssl.SSLError):
            return f"TLS failed ({e.reason or e})"
    for e in chain:
        if isinstance(e, urllib3_errors.SSLError):
            return f"TLS failed ({e})"
        if isinstance(e, urllib3_errors.ProxyError):
            return f"the proxy failed ({e})"
    for e in chain:
        code = getattr(e, "errno", None)
        if isinstance(code, int) and code > 0:
            return os.strerror(code).lower()
    if any(isinstance(e, urllib3_errors.ConnectTimeoutError) and not isinstance(e, urllib3_errors.NewConnectionError)
           for e in chain):
        return "connection timed out"
    return "no connection"


class Reachability:
    """Whether the API server answers, as seen by the informers that report to it.

    The first informer that cannot connect makes it log one warning (``cannot reach SERVER: REASON;
    retrying every 2s (HINT)``); later failures are logged at debug level; once every informer that failed
    has connected again it logs one line saying so. One object per server, shared by a runner's informers.
    """

    def __init__(self, server: str = "the API server", *, hint: str = "", retry_s: float = UNREACHABLE_RETRY_S,
                 logger: logging.Logger | None = None) -> None:
        self.server = server
        self.hint = hint
        self.retry_s = retry_s
        self._log = logger or log
        self._lock = threading.Lock()
        self._failing: set[str] = set()
        self._reported: str | None = None  # the reason last reported, while unreachable
        self.outages = 0

    @property
    def reachable(self) -> bool:
        with self._lock:
            return self._reported is None

    def failed(self, who: str, reason: str) -> None:
        with self._lock:
            self._failing.add(who)
            first = self._reported is None
            if first:
                self._reported = reason
                self.outages += 1
        if first:
            hint = f" ({self.hint})" if self.hint else ""
            self._log.warning("cannot reach %s: %s; retrying every %gs%s", self.server, reason, self.retry_s, hint)
        else:
            self._log.debug("%s: still cannot reach %s: %s", who, self.server, reason)

    def reached(self, who: str) -> None:
        with self._lock:
            if who not in self._failing:
                return
            self._failing.discard(who)
            back = self._reported is not None and not self._failing
            if back:
                self._reported = None
        if back:
            self._log.info("%s is reachable again", self.server)


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
        self._indexers: dict[str, IndexFunc] = {}
        # index name -> value -> keys of the objects with that value (a dict as an ordered set)
        self._indices: dict[str, dict[str, dict[str, None]]] = {}
        # index name -> object key -> the values it was filed under (what to undo when it changes or goes)
        self._indexed: dict[str, dict[str, tuple[str, ...]]] = {}
        self._rv: str | None = None
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: watch.Watch | None = None
        self.relists = 0
        self.errors = 0
        #: Told when the server cannot be reached and when it can again; replace it (before ``start``) with
        #: one shared by all informers of a server to hear about an outage once.
        self.reachability = Reachability(f"the API server (informer {name})")

    @property
    def label_selector(self) -> str | None:
        return self._selector

    def reconfigure(self, list_fn: Callable[..., Any], *, label_selector: str | None,
                    to_dict: Callable[[Any], dict[str, Any]] | None = None) -> None:
        """List and watch with another call and selector (a shared cache widening to a new request). Only
        before :meth:`start`: a running watch is never changed."""
        if self._thread is not None:
            raise RuntimeError(f"informer {self.name}: already started; it cannot list anything else now")
        self._list_fn = list_fn
        self._selector = label_selector
        if to_dict is not None:
            self._to_dict = to_dict

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

    # ------------------------------------------------------------------ indexes

    def add_index(self, name: str, fn: IndexFunc) -> None:
        """Index the cache by ``fn(obj)``: a string, None (not indexed) or an iterable of strings (each a
        value; repeats count once). May be called before or after ``start``: objects already cached are
        indexed at once. The function is called with the cache's lock held, once per object stored (at each
        list, relist and ADDED/MODIFIED event), never by :meth:`by_index`; it should be quick and must not
        call back into this informer from another thread. A function that raises for an object (or returns
        something else) is logged and that object is left out of the index; it does not stop the cache.
        Raises ``ValueError`` for a name already in use, and the function's error when it fails on an
        object already cached (the index is then not added)."""
        with self._lock:
            if name in self._indexers:
                raise ValueError(f"informer {self.name}: an index named {name!r} already exists")
            index: dict[str, dict[str, None]] = {}
            filed: dict[str, tuple[str, ...]] = {}
            for key, obj in self._store.items():
                values = _index_values(fn(obj))
                if values:
                    filed[key] = values
                    for value in values:
                        index.setdefault(value, {})[key] = None
            self._indexers[name] = fn
            self._indices[name] = index
            self._indexed[name] = filed

    def by_index(self, name: str, value: str) -> list[dict[str, Any]]:
        """The cached objects whose index ``name`` has ``value`` (in the order they were filed); raises
        ``KeyError`` for an index never added."""
        with self._lock:
            try:
                keys = self._indices[name].get(value)
            except KeyError:
                raise KeyError(f"informer {self.name}: no index named {name!r}") from None
            if not keys:
                return []
            store = self._store
            return [store[k] for k in keys]

    def index_keys(self, name: str, value: str) -> list[str]:
        """The keys (``namespace/name``) of the cached objects whose index ``name`` has ``value``."""
        with self._lock:
            try:
                return list(self._indices[name].get(value) or ())
            except KeyError:
                raise KeyError(f"informer {self.name}: no index named {name!r}") from None

    def index_values(self, name: str) -> list[str]:
        """Every value index ``name`` holds at least one object under."""
        with self._lock:
            try:
                return list(self._indices[name])
            except KeyError:
                raise KeyError(f"informer {self.name}: no index named {name!r}") from None

    def _index_put(self, key: str, obj: dict[str, Any]) -> None:
        """File ``obj`` (stored under ``key``) in every index, replacing what was filed for ``key``. Lock held."""
        for name, fn in self._indexers.items():
            try:
                values = _index_values(fn(obj))
            except Exception:
                log.exception("informer %s: index %s failed for %s; left out of the index", self.name, name, key)
                values = ()
            self._index_file(name, key, values)

    def _index_drop(self, key: str) -> None:
        """Take ``key`` out of every index. Lock held."""
        for name in self._indexers:
            self._index_file(name, key, ())

    def _index_file(self, name: str, key: str, values: tuple[str, ...]) -> None:
        filed = self._indexed[name]
        index = self._indices[name]
        old = filed.get(key, ())
        if old == values:
            return
        for value in old:
            if value not in values:
                keys = index.get(value)
                if keys is not None:
                    keys.pop(key, None)
                    if not keys:
                        del index[value]
        for value in values:
            if value not in old:
                index.setdefault(value, {})[key] = None
        if values:
            filed[key] = values
        else:
            filed.pop(key, None)

    def _index_rebuild(self) -> None:
        """Index the whole store afresh (after a list replaced it). Lock held."""
        for name in self._indexers:
            self._indices[name] = {}
            self._indexed[name] = {}
        for key, obj in self._store.items():
            self._index_put(key, obj)

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
        self.reachability.reached(self.name)
        items = result.get("items") or []
        rv = (result.get("metadata") or {}).get("resourceVersion")
        with self._lock:
            old = self._store
            self._store = {}
            for raw in items:
                self._store[object_key(raw)] = raw
            if self._indexers:
                self._index_rebuild()
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
                self.reachability.reached(self.name)  # it answered, if not as hoped
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
                reason = connection_failure(exc)
                if reason is not None:  # not even connected: say so once (Reachability), retry at a steady pace
                    self.reachability.failed(self.name, reason)
                    log.debug("informer %s: cannot connect (%s)", self.name, exc)
                    self._stop.wait(self.reachability.retry_s * (1 + random.random() / 4))
                    continue
                log.warning("informer %s: watch failed (%s); retrying in %.1fs", self.name, exc, backoff)
                self._stop.wait(backoff * (1 + random.random() / 2))
                backoff = min(30.0, backoff * 2)

    def _watch_once(self) -> None:
        self._watch = w = watch.Watch()
        kw = self._kw()
        kw["_request_timeout"] = self._watch_timeout + 30

        @functools.wraps(self._list_fn)  # the client's Watch reads the function's docstring
        def connect(**k: Any) -> Any:
            response = self._list_fn(**k)
            self.reachability.reached(self.name)  # connected: the watch's headers are in
            return response

        for event in w.stream(connect, resource_version=self._rv, timeout_seconds=self._watch_timeout,
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
                    if self._indexers:
                        self._index_drop(key)  # what was filed for the cached object, whatever the event carries
                else:
                    self._store[key] = raw
                    if self._indexers:
                        self._index_put(key, raw)
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


def _index_values(result: Any) -> tuple[str, ...]:
    """An index function's result as a tuple of distinct strings (in order)."""
    if result is None:
        return ()
    if isinstance(result, str):
        return (result,)
    if isinstance(result, (bytes, dict)) or not isinstance(result, Iterable):
        raise TypeError(f"an index function must return a str, None or an iterable of str, not {type(result).__name__}")
    values = tuple(dict.fromkeys(result))
    for v in values:
        if not isinstance(v, str):
            raise TypeError(f"an index function's values must be str, not {type(v).__name__}")
    return values


def _retry_after(exc: ApiException) -> float:
    """The seconds a 429 (or 503) asked to wait, 0 when it did not say."""
    try:
        return max(0.0, float((exc.headers or {}).get("Retry-After", 0)))
    except (TypeError, ValueError):
        return 0.0
