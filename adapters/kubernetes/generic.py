"""The Kubernetes adapter for any declared lifecycle: caches in, the engine's actions out, status with
optimistic concurrency.

:class:`ResourceAdapter` serves one :class:`~workspace_fsm.engine.Lifecycle` from its declaration alone:

- **observe** reads the resource and what it owns from list+watch caches. Each kind the lifecycle
  ``Owns`` or ``Watches`` has one informer, indexed by owner (the ``owner`` function declared with it), so
  a pass reads its own children in time proportional to their number, never a scan of the cache. Given the
  process's :class:`~.cache.SharedInformers`, these are views of informers shared with the other lifecycles. The
  snapshot is the lifecycle's ``snapshot(obj, view)`` if it declares one, else an :class:`Owned` with the
  children as dicts by kind.
- **apply** executes the engine's generic actions (``Create``, ``Patch``, ``Delete``, finalizers, Events);
  a lifecycle's own action types are turned into those by its ``render(action, obj)``. AlreadyExists on
  create and NotFound on delete are success.
- **persist** PUTs the status subresource with the resourceVersion the pass observed: a 409 raises
  :class:`~workspace_fsm.engine.adapter.Conflict` ("observe again"), never an overwrite. The written
  object is kept as an overlay until the watch delivers that resourceVersion, so the next pass never acts
  on a cache older than its own write.

It knows nothing of any particular resource. KAITO's Workspace uses its own adapter (``adapter.py``) for
now, with the same protocol.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import attrs
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from workspace_fsm.engine import actions as A
from workspace_fsm.engine.adapter import AdapterError, Conflict
from workspace_fsm.engine.kinds import Kind
from workspace_fsm.engine.objects import format_time
from workspace_fsm.engine.resource import Resource

from .cache import InformerView, SharedInformers
from .informer import object_key

log = logging.getLogger("workspace_fsm.kubernetes.generic")

__all__ = ["Owned", "ResourceAdapter"]


@attrs.frozen
class Owned:
    """The default snapshot: the resource's children by kind (``"Deployment"`` -> dicts), read from caches."""

    children: Mapping[str, tuple[Mapping[str, Any], ...]] = attrs.field(factory=dict)

    def of(self, kind: str) -> tuple[Mapping[str, Any], ...]:
        return self.children.get(kind, ())

    def one(self, kind: str, name: str) -> Mapping[str, Any] | None:
        for o in self.of(kind):
            if (o.get("metadata") or {}).get("name") == name:
                return o
        return None


def _snake(kind: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower()


class _Api:
    """Reads and writes of any declared kind through the official client: CustomObjectsApi for API groups,
    CoreV1Api's typed calls for the core group."""

    def __init__(self, api: k8s.ApiClient, timeout: float) -> None:
        self.api = api
        self.custom = k8s.CustomObjectsApi(api)
        self.core = k8s.CoreV1Api(api)
        self.timeout = timeout

    def _core(self, verb: str, kind: Kind, namespace: str | None) -> Callable[..., Any]:
        scope = "namespaced_" if kind.namespaced and namespace else ""
        name = f"{verb}_{scope}{_snake(kind.kind)}"
        if verb == "list" and kind.namespaced and not namespace:
            name += "_for_all_namespaces"
        return getattr(self.core, name)

    def lister(self, kind: Kind, namespace: str | None) -> tuple[Callable[..., Any], Callable[[Any], Any]]:
        if kind.group:
            if kind.namespaced and namespace:
                fn = lambda **k: self.custom.list_namespaced_custom_object(  # noqa: E731
                    kind.group, kind.version, namespace, kind.plural, **k)
            else:
                fn = lambda **k: self.custom.list_cluster_custom_object(kind.group, kind.version, kind.plural, **k)  # noqa: E731
            fn.__doc__ = ":return: object\n"  # the client's Watch reads the return type from the docstring
            return fn, lambda o: o
        call = self._core("list", kind, namespace)
        fn = (lambda **k: call(namespace, **k)) if kind.namespaced and namespace else (lambda **k: call(**k))
        fn.__doc__ = f":return: V1{kind.kind}List\n"
        return fn, self.api.sanitize_for_serialization

    def get(self, kind: Kind, ns: str, name: str) -> Any:
        t = self.timeout
        if kind.group:
            if kind.namespaced:
                return self.custom.get_namespaced_custom_object(kind.group, kind.version, ns, kind.plural, name,
                                                                _request_timeout=t)
            return self.custom.get_cluster_custom_object(kind.group, kind.version, kind.plural, name, _request_timeout=t)
        call = self._core("read", kind, ns)
        return call(name, ns, _request_timeout=t) if kind.namespaced else call(name, _request_timeout=t)

    def create(self, kind: Kind, ns: str, body: Mapping[str, Any]) -> Any:
        t = self.timeout
        if kind.group:
            if kind.namespaced:
                return self.custom.create_namespaced_custom_object(kind.group, kind.version, ns, kind.plural, body,
                                                                   _request_timeout=t)
            return self.custom.create_cluster_custom_object(kind.group, kind.version, kind.plural, body, _request_timeout=t)
        call = self._core("create", kind, ns)
        return call(ns, body, _request_timeout=t) if kind.namespaced else call(body, _request_timeout=t)

    def patch(self, kind: Kind, ns: str, name: str, patch: Mapping[str, Any]) -> Any:
        t = self.timeout
        if kind.group:
            if kind.namespaced:
                return self.custom.patch_namespaced_custom_object(kind.group, kind.version, ns, kind.plural, name,
                                                                  patch, _request_timeout=t)
            return self.custom.patch_cluster_custom_object(kind.group, kind.version, kind.plural, name, patch,
                                                           _request_timeout=t)
        call = self._core("patch", kind, ns)
        return call(name, ns, patch, _request_timeout=t) if kind.namespaced else call(name, patch, _request_timeout=t)

    def delete(self, kind: Kind, ns: str, name: str, body: Mapping[str, Any]) -> Any:
        t = self.timeout
        if kind.group:
            if kind.namespaced:
                return self.custom.delete_namespaced_custom_object(kind.group, kind.version, ns, kind.plural, name,
                                                                   body=body, _request_timeout=t)
            return self.custom.delete_cluster_custom_object(kind.group, kind.version, kind.plural, name, body=body,
                                                            _request_timeout=t)
        call = self._core("delete", kind, ns)
        return call(name, ns, body=body, _request_timeout=t) if kind.namespaced else call(name, body=body,
                                                                                          _request_timeout=t)


class ResourceAdapter:
    """Serves ``lifecycle`` over the official client (see the module's notes)."""

    def __init__(self, api_client: k8s.ApiClient, lifecycle: Any, *, namespace: str | None = None,
                 component: str = "workspace-fsm", request_timeout_s: float = 30.0, watch_timeout_s: int = 240,
                 snapshot: Callable[..., Any] | None = None, render: Callable[..., Any] | None = None,
                 informers: SharedInformers | None = None) -> None:
        self.lifecycle = lifecycle
        # A binding may say how the snapshot is read and how the lifecycle's own actions become requests.
        self._snapshot = snapshot or lifecycle.snapshot
        self._render = render or lifecycle.render
        self._known: set[str] = set()  # "Kind/name" this process created or saw: no GET needed to know it exists
        self.api = api_client
        self.namespace = namespace
        self.component = component
        self.timeout = request_timeout_s
        self.rest = _Api(api_client, request_timeout_s)
        self.requests: dict[str, int] = {}
        self._lock = threading.Lock()
        self._handler: Callable[[str], None] | None = None
        self._overlay: dict[str, tuple[Any, dict[str, Any], str]] = {}
        self._parsed: dict[str, tuple[str, Any]] = {}
        self._delivered: dict[str, deque[str]] = {}
        self._event_seq = itertools.count(int(datetime.now(timezone.utc).timestamp() * 1000))
        # The process's shared informers (one per resource for every lifecycle), or a set of its own.
        self.cache = informers if informers is not None else SharedInformers(
            watch_timeout_s=watch_timeout_s, request_timeout_s=request_timeout_s)
        r = lifecycle.resource

        def view(k: Kind, selector: str | None = None) -> InformerView:
            return self.cache.informer((k.group, k.version, k.plural), lambda ns: self.rest.lister(k, ns), name=k.plural,
                                       namespace=namespace if k.namespaced else None, label_selector=selector,
                                       user=lifecycle.name)

        self.primary = view(r)
        self.primary.add_handler(self._on_primary)
        self.kinds: dict[str, Kind] = {r.kind: r}
        self.children: dict[str, InformerView] = {}
        self._indexed: list[str] = []
        for decl in (*lifecycle.owns, *lifecycle.watches):
            if "list" not in decl.verbs:
                continue  # read by name only (a GET): nothing to cache
            k = decl.kind
            self.kinds[k.kind] = k
            inf = view(k, decl.label_selector)
            if decl.owner is not None:
                inf.add_index("owner", decl.owner)
                self._indexed.append(k.kind)
                if getattr(decl, "wakes_owner", True):
                    inf.add_handler(lambda t, o, n, owner=decl.owner: self._on_child(owner, o, n))
            self.children[k.kind] = inf
        self.informers = (self.primary, *self.children.values())

    # ------------------------------------------------------------------ lifecycle of the adapter

    def start(self) -> None:
        """Start the informers (shared ones: every informer of the cache not yet started)."""
        self.cache.start()

    def wait_synced(self, timeout_s: float = 30.0) -> bool:
        return all(inf.wait_synced(timeout_s) for inf in self.informers)

    def stop(self) -> None:
        """Stop the informers (shared ones: the whole cache, which is how a runner ends)."""
        self.cache.stop()

    def set_event_handler(self, handler: Callable[[str], None]) -> None:
        self._handler = handler

    def keys(self) -> list[str]:
        return [object_key(o) for o in self.primary.items()]

    def cache_sizes(self) -> dict[str, int]:
        with self._lock:
            return {"overlay": len(self._overlay), "parsed": len(self._parsed), "delivered": len(self._delivered)}

    # ------------------------------------------------------------------ events

    def _on_primary(self, etype: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        key = object_key(new or old)
        with self._lock:
            if new is not None:
                rv = (new.get("metadata") or {}).get("resourceVersion")
                self._delivered.setdefault(key, deque(maxlen=16)).append(rv)
                ov = self._overlay.get(key)
                if ov is not None and ov[2] == rv:
                    del self._overlay[key]
            else:
                for m in (self._overlay, self._parsed, self._delivered):
                    m.pop(key, None)
        if self._handler is not None:
            self._handler(key)

    def _on_child(self, owner: Callable[[Any], Any], old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        for obj in (old, new):
            key = owner(obj) if obj is not None else None
            if key and self._handler is not None:
                self._handler(key)

    # ------------------------------------------------------------------ observe

    def _parse(self, key: str, raw: dict[str, Any]) -> Any:
        rv = (raw.get("metadata") or {}).get("resourceVersion", "")
        hit = self._parsed.get(key)
        if hit is not None and hit[0] == rv:
            return hit[1]
        try:
            obj = (self.lifecycle.parse or Resource.from_dict)(raw)
        except Exception as exc:  # garbage from the API: nothing we can address or act on
            log.error("%s %s: object cannot be read, skipping it: %s", self.lifecycle.resource.kind, key, exc)
            return None
        with self._lock:
            if key in self._delivered:
                self._parsed[key] = (rv, obj)
        return obj

    def observe(self, key: str) -> tuple[Any | None, Any]:
        with self._lock:
            ov = self._overlay.get(key)
        raw = ov[1] if ov is not None else self.primary.get(key)
        if raw is None:
            return None, Owned()
        obj = self._parse(key, raw)
        if obj is None:
            return None, Owned()
        if self._snapshot is not None:
            return obj, self._snapshot(obj, self)
        return obj, Owned({kind: tuple(self.children[kind].by_index("owner", key)) for kind in self._indexed})

    def confirmed_absent(self, name: str, obj: Any) -> bool:
        """Positive knowledge that ``"Kind/name"`` (a child of ``obj``) is gone: a tombstone in the cache, or a
        404 from a GET (made only for what the cache cannot vouch for, and never again once it is known)."""
        kind_name, _, short = name.partition("/")
        k = self.kinds.get(kind_name)
        if k is None:
            return False
        ns = obj.metadata.namespace
        key = f"{ns}/{short}" if k.namespaced else short
        inf = self.children.get(kind_name)
        if inf is not None and inf.get(key) is not None:
            return False
        if inf is not None and inf.gone(key):
            return True
        if name in self._known:
            return False
        self._count("get", k.kind)
        try:
            self.rest.get(k, ns, short)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise AdapterError(f"checking {name}: API answered {exc.status} {exc.reason}") from None
        self._known.add(name)
        return False

    def owned(self, kind: str, key: str) -> list[dict[str, Any]]:
        """The ``kind`` children of ``key`` in the cache (by the owner index: no scan)."""
        return self.children[kind].by_index("owner", key)

    # ------------------------------------------------------------------ apply

    def _count(self, verb: str, kind: str) -> None:
        name = f"{verb} {kind}"
        with self._lock:
            self.requests[name] = self.requests.get(name, 0) + 1

    def _call(self, verb: str, kind: str, doing: str, fn: Callable[[], Any], ok: tuple[int, ...] = ()) -> Any:
        self._count(verb, kind)
        try:
            return fn()
        except ApiException as exc:
            if exc.status in ok:
                return None
            if exc.status == 409:
                raise Conflict(f"{doing}: conflict: {exc.reason}") from None
            retry = None
            if exc.status == 429 and exc.headers:
                try:
                    retry = float(exc.headers.get("Retry-After", "1"))
                except ValueError:
                    retry = 1.0
            raise AdapterError(f"{doing}: API answered {exc.status} {exc.reason}", retry_after=retry,
                               refused=exc.status in (400, 401, 403, 404, 405, 413, 415, 422, 429)) from None
        except Exception as exc:  # connection refused, timeouts: retried with backoff by the runner
            raise AdapterError(f"{doing}: {type(exc).__name__}: {exc}") from None

    def apply(self, obj: Any, actions: Sequence[Any]) -> None:
        for action in actions:
            self._apply(obj, action)

    def _kind(self, api_version: str, kind: str) -> Kind:
        k = self.kinds.get(kind)
        if k is None or k.api_version != api_version:
            raise AdapterError(f"{kind} ({api_version}) is not declared by lifecycle {self.lifecycle.name}: "
                               f"add it to its owns= or watches=")
        return k

    def _apply(self, obj: Any, a: Any) -> None:
        m = obj.metadata
        ns = m.namespace
        if isinstance(a, A.Create):
            body = _thaw(a.manifest)
            k = self._kind(body.get("apiVersion", ""), body.get("kind", ""))
            meta = body.setdefault("metadata", {})
            if k.namespaced:
                meta.setdefault("namespace", ns)
            if a.owned:
                r = self.lifecycle.resource
                meta.setdefault("ownerReferences", []).append(
                    {"apiVersion": r.api_version, "kind": r.kind, "name": m.name, "uid": m.uid, "controller": True,
                     "blockOwnerDeletion": True})
            self._call("create", k.kind, f"creating {k.kind} {meta.get('name')} for {obj.key}",
                       lambda: self.rest.create(k, meta.get("namespace", ns), body), ok=(409,))
            self._known.add(f"{k.kind}/{meta.get('name')}")
        elif isinstance(a, A.Patch):
            k = self._kind(a.api_version, a.kind)
            self._call("patch", k.kind, f"patching {k.kind} {a.name} of {obj.key}",
                       lambda: self.rest.patch(k, ns, a.name, _thaw(a.patch)))
        elif isinstance(a, A.Delete):
            k = self._kind(a.api_version, a.kind)
            self._known.discard(f"{k.kind}/{a.name}")
            self._call("delete", k.kind, f"deleting {k.kind} {a.name} of {obj.key}",
                       lambda: self.rest.delete(k, ns, a.name, {"propagationPolicy": a.propagation}), ok=(404,))
        elif isinstance(a, (A.AddFinalizer, A.RemoveFinalizer)):
            self._patch_finalizers(obj, a)
        elif isinstance(a, A.RecordEvent):
            self._record_event(obj, a)
        elif self._render is not None:
            for generic in self._render(a, obj):
                self._apply(obj, generic)
        else:
            raise AdapterError(f"lifecycle {self.lifecycle.name} asked for {type(a).__name__}, which this adapter "
                               f"cannot execute: declare render= to turn it into Create/Patch/Delete")

    def _patch_finalizers(self, obj: Any, a: A.AddFinalizer | A.RemoveFinalizer) -> None:
        key = obj.key
        current = list(obj.metadata.finalizers)
        wanted = current + [a.finalizer] if isinstance(a, A.AddFinalizer) and a.finalizer not in current else \
            [f for f in current if f != a.finalizer] if isinstance(a, A.RemoveFinalizer) else current
        if wanted == current:
            return
        patch = {"metadata": {"finalizers": wanted, "resourceVersion": obj.metadata.resource_version}}
        r = self.lifecycle.resource
        result = self._call("patch", r.kind, f"finalizer of {key}",
                            lambda: self.rest.patch(r, obj.metadata.namespace, obj.metadata.name, patch), ok=(404,))
        if result is None and isinstance(a, A.AddFinalizer):
            raise Conflict(f"add finalizer on {key}: the {r.kind} is gone")
        if isinstance(result, dict):
            self._keep(key, result)  # the status write that follows carries the version this patch produced

    def _record_event(self, obj: Any, a: A.RecordEvent) -> None:
        now = format_time(datetime.now(timezone.utc))
        m = obj.metadata
        r = self.lifecycle.resource
        body = {"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": f"{m.name}.{next(self._event_seq):x}", "namespace": m.namespace},
                "involvedObject": {"apiVersion": r.api_version, "kind": r.kind, "name": m.name,
                                   "namespace": m.namespace, "uid": m.uid},
                "type": a.type, "reason": a.reason, "message": a.message[:1024], "count": 1,
                "firstTimestamp": now, "lastTimestamp": now, "source": {"component": self.component},
                "reportingComponent": self.component}
        self._count("create", "Event")
        try:
            self.rest.core.create_namespaced_event(m.namespace, body, _request_timeout=self.timeout)
        except Exception as exc:  # Events are best effort: a lost Event must not fail the pass
            log.debug("%s: event %s not recorded: %s", obj.key, a.reason, exc)

    # ------------------------------------------------------------------ persist

    def annotate(self, obj: Any, annotations: Sequence[tuple[str, str]]) -> None:
        """Write annotations (a record kept in one, see AnnotationStore) with the observed resourceVersion: a
        409 means another writer was first; the status write that follows carries the version this produced."""
        r, m = self.lifecycle.resource, obj.metadata
        with self._lock:
            ov = self._overlay.get(obj.key)
        rv = m.resource_version
        if ov is not None and ov[0].metadata.generation == m.generation:
            rv = (ov[1].get("metadata") or {}).get("resourceVersion", rv)
        patch = {"metadata": {"annotations": dict(annotations), "resourceVersion": rv}}
        result = self._call("patch", r.kind, f"writing the record of {obj.key}",
                            lambda: self.rest.patch(r, m.namespace, m.name, patch), ok=(404,))
        if not isinstance(result, dict):
            raise Conflict(f"writing the record of {obj.key}: the {r.kind} is gone")
        self._keep(obj.key, result)

    def _keep(self, key: str, raw: dict[str, Any]) -> None:
        rv = (raw.get("metadata") or {}).get("resourceVersion", "")
        try:
            parsed = (self.lifecycle.parse or Resource.from_dict)(raw)
        except Exception:
            parsed = None
        with self._lock:
            if key not in self._delivered or parsed is None or rv in self._delivered.get(key, ()):
                self._overlay.pop(key, None)
                return
            self._overlay[key] = (parsed, raw, rv)

    def persist(self, obj: Any, status: Any) -> Any:
        key = obj.key
        with self._lock:
            ov = self._overlay.get(key)
        raw = ov[1] if ov is not None else self.primary.get(key)
        if raw is None:
            raise Conflict(f"writing status of {key}: it is gone from the cache")
        rv = obj.metadata.resource_version
        if ov is not None and ov[0].metadata.generation == obj.metadata.generation:
            rv = (raw.get("metadata") or {}).get("resourceVersion", rv)  # our own later write (a finalizer patch)
        body = {**raw, "metadata": {**(raw.get("metadata") or {}), "resourceVersion": rv}, "status": status.to_dict()}
        r = self.lifecycle.resource
        m = obj.metadata

        def put() -> Any:
            if r.namespaced:
                return self.rest.custom.replace_namespaced_custom_object_status(r.group, r.version, m.namespace,
                                                                               r.plural, m.name, body,
                                                                               _request_timeout=self.timeout)
            return self.rest.custom.replace_cluster_custom_object_status(r.group, r.version, r.plural, m.name, body,
                                                                        _request_timeout=self.timeout)

        try:
            result = self._call("update", f"{r.kind}/status", f"writing status of {key}", put, ok=(404,))
        except Conflict:
            with self._lock:
                self._overlay.pop(key, None)
            raise
        if not isinstance(result, dict):
            raise Conflict(f"writing status of {key}: the {r.kind} is gone")
        self._keep(key, result)
        return obj.with_status(status)


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    return value
