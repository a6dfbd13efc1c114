"""One informer per resource for every lifecycle a process drives, as controller-runtime's manager shares its cache.

Without it each lifecycle's adapter lists and watches what it owns on its own: a runner driving the Workspace and the
RAGEngine holds two NodeClaim caches, two Node caches and two Deployment caches, each a list and a watch of its own.
:class:`SharedInformers` hands every adapter a view (:class:`InformerView`) onto one shared :class:`Informer` per
resource; each lifecycle adds its own indexes and event handlers to its view.

**Which requests share.** One informer serves every request for the same resource (API group, version, plural)
whatever namespace and label selector each asks for. Before the informers start, a request the informer does not cover
widens it: to every namespace when the namespaces differ, to no label selector when the selectors differ (two
selectors cannot in general be joined into one: ``kaito.sh/workspace`` or ``kaito.sh/ragengine`` is not a label
selector). Each view then filters by its own namespace and selector, so what a lifecycle sees through its view (``get``,
``items``, indexes, events) is what an informer of its own would have shown it. The price is memory: a widened cache
holds every object of the kind (every Deployment in the cluster, where the lifecycles ask for theirs only), as
controller-runtime's manager does by default. A runner that must not cache that much runs one lifecycle per process
(``workspace-fsm run --lifecycle NAME``). A request made after the informers started is served by an informer that
already covers it, or by one of its own (started at once): a running watch is never widened.

A view whose selector this module cannot evaluate itself (anything but ``k``, ``!k``, ``k=v``, ``k==v``, ``k!=v``,
``k in (..)``, ``k notin (..)``) shares only with requests of exactly its namespace and selector.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .informer import Handler, IndexFunc, Informer, Reachability

__all__ = ["InformerView", "Lister", "SharedInformers", "custom_lister", "label_matcher"]

#: ``lister(namespace)`` -> ``(list_fn, to_dict)``: the client call listing (and watching) the resource in one
#: namespace, or in all when ``namespace`` is None, and how its answer becomes a dict.
Lister = Callable[[str | None], tuple[Callable[..., Any], Callable[[Any], Any]]]
Resource = tuple[str, str, str]  # (API group, version, plural)
Labels = Mapping[str, str]


def custom_lister(custom: Any, group: str, version: str, plural: str) -> Lister:
    """A lister through ``CustomObjectsApi`` (plain dicts), namespaced when given a namespace."""

    def lister(namespace: str | None) -> tuple[Callable[..., Any], Callable[[Any], Any]]:
        if namespace:
            def fn(**k: Any) -> Any:
                return custom.list_namespaced_custom_object(group, version, namespace, plural, **k)
        else:
            def fn(**k: Any) -> Any:
                return custom.list_cluster_custom_object(group, version, plural, **k)
        fn.__doc__ = ":return: object\n"  # the client's Watch reads the return type from the docstring
        return fn, _identity

    return lister


def _identity(o: Any) -> Any:
    return o


_REQUIREMENT = re.compile(
    r"^\s*(!?)\s*([^\s=!(),<>]+)\s*(?:(==|=|!=)\s*([^\s=!(),<>]*)|\s+(in|notin)\s*\(([^()<>]*)\))?\s*$")


def label_matcher(selector: str) -> Callable[[Labels], bool] | None:
    """A predicate for a label selector of the equality and set forms, or None for any other form."""
    reqs: list[Callable[[Labels], bool]] = []
    for part in re.split(r",(?![^()]*\))", selector):
        m = _REQUIREMENT.match(part)
        if m is None:
            return None
        neg, key, op, value, set_op, values = m.groups()
        if neg and (op or set_op):
            return None
        if op in ("=", "=="):
            reqs.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif op == "!=":
            reqs.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif set_op:
            vs = frozenset(v.strip() for v in values.split(",") if v.strip())
            if set_op == "in":
                reqs.append(lambda labels, k=key, s=vs: labels.get(k) in s)
            else:
                reqs.append(lambda labels, k=key, s=vs: labels.get(k) not in s)
        elif neg:
            reqs.append(lambda labels, k=key: k not in labels)
        else:
            reqs.append(lambda labels, k=key: k in labels)
    return lambda labels: all(r(labels) for r in reqs)


class _Entry:
    """One shared informer and what it lists: a namespace (None: all) and a selector (None: every object)."""

    def __init__(self, informer: Informer, lister: Lister, namespace: str | None, selector: str | None,
                 fixed: bool) -> None:
        self.informer = informer
        self.lister = lister
        self.namespace = namespace
        self.selector = selector
        self.fixed = fixed  # a view that cannot filter for itself reads it: never widened
        self.users: list[tuple[str, str | None, str | None]] = []  # (who, namespace, selector) it serves
        self.started = False

    def covers(self, namespace: str | None, selector: str | None) -> bool:
        return self.namespace in (None, namespace) and self.selector in (None, selector)


class SharedInformers:
    """The informers of one process, shared by every lifecycle's adapter (see the module's notes)."""

    def __init__(self, *, watch_timeout_s: int = 240, request_timeout_s: float = 30.0) -> None:
        self.watch_timeout_s = watch_timeout_s
        self.request_timeout_s = request_timeout_s
        self._lock = threading.Lock()
        self._entries: dict[Resource, list[_Entry]] = {}
        self._started = False
        self._reachability: Reachability | None = None
        self._ids = itertools.count(1)

    def informer(self, resource: Resource, lister: Lister, *, name: str, namespace: str | None = None,
                 label_selector: str | None = None, user: str = "") -> InformerView:
        """A view of ``resource`` in ``namespace`` (None: all) restricted to ``label_selector``, for ``user`` (a
        lifecycle's name, for :meth:`describe`)."""
        selector = label_selector or None
        match = label_matcher(selector) if selector is not None else None
        fixed = selector is not None and match is None
        with self._lock:
            entries = self._entries.setdefault(resource, [])
            entry = next((e for e in entries if (e.covers(namespace, selector) if not fixed else
                                                 (e.namespace, e.selector) == (namespace, selector))), None)
            if entry is None and not fixed:
                entry = next((e for e in entries if not e.started and not e.fixed), None)
                if entry is not None:  # widen it before it starts
                    entry.namespace = entry.namespace if entry.namespace == namespace else None
                    entry.selector = entry.selector if entry.selector == selector else None
                    fn, to_dict = entry.lister(entry.namespace)
                    entry.informer.reconfigure(fn, label_selector=entry.selector, to_dict=to_dict)
            start = False
            if entry is None:
                fn, to_dict = lister(namespace)
                inf = Informer(name, fn, label_selector=selector, to_dict=to_dict,
                               watch_timeout_s=self.watch_timeout_s, request_timeout_s=self.request_timeout_s)
                if self._reachability is not None:
                    inf.reachability = self._reachability
                entry = _Entry(inf, lister, namespace, selector, fixed)
                entries.append(entry)
                start = self._started  # asked for after the start: it runs at once, on its own
            elif fixed:
                entry.fixed = True
            entry.users.append((user, namespace, selector))
            if start:
                entry.started = True
        if start:
            entry.informer.start()
        return InformerView(self, entry, namespace, selector, match, next(self._ids))

    # ------------------------------------------------------------------ the shared informers

    @property
    def informers(self) -> list[Informer]:
        """Every shared informer, once each (what /metrics reports, and what /readyz waits for)."""
        with self._lock:
            return [e.informer for entries in self._entries.values() for e in entries]

    @property
    def synced(self) -> bool:
        return all(inf.synced for inf in self.informers)

    def set_reachability(self, reachability: Reachability) -> None:
        """Tell ``reachability`` about every informer's connection (one outage, one line)."""
        with self._lock:
            self._reachability = reachability
            for entries in self._entries.values():
                for e in entries:
                    e.informer.reachability = reachability

    def start(self) -> None:
        """Start every informer not yet started (safe to call more than once: every adapter's ``start`` does)."""
        with self._lock:
            self._started = True
            todo = [e for entries in self._entries.values() for e in entries if not e.started]
            for e in todo:
                e.started = True
        for e in todo:
            e.informer.start()

    def wait_synced(self, timeout_s: float) -> bool:
        return all(inf.wait_synced(timeout_s) for inf in self.informers)

    def stop(self) -> None:
        for inf in self.informers:
            inf.stop()

    def join(self, timeout_s: float) -> None:
        for inf in self.informers:
            inf.join(timeout_s)

    def describe(self) -> list[str]:
        """One line per shared informer: what it lists and for whom, e.g. ``nodeclaims (all namespaces, every
        object) for workspace [kaito.sh/workspace], ragengine [kaito.sh/ragengine]``."""
        with self._lock:
            out = []
            for entries in self._entries.values():
                for e in entries:
                    where = f"namespace {e.namespace}" if e.namespace else "all namespaces"
                    what = f"selector {e.selector}" if e.selector else "every object"
                    users = ", ".join(dict.fromkeys(u for u, _, _ in e.users))
                    out.append(f"{e.informer.name} ({where}, {what}) for {users}")
            return out

    def widened(self) -> list[str]:
        """What an operator should know about memory: the informers that list more than some of their readers
        select (the readers' selectors or namespaces differ), one line per group of readers, with how to avoid it."""
        groups: dict[tuple[str, str], list[str]] = {}
        with self._lock:
            for entries in self._entries.values():
                for e in entries:
                    users = list(dict.fromkeys(e.users))
                    if all((ns, sel) == (e.namespace, e.selector) for _, ns, sel in users):
                        continue
                    who = " and ".join(f"{u} ({sel or 'every object'}{f' in namespace {ns}' if ns else ''})"
                                       for u, ns, sel in users)
                    holds = "every object of its kind" if e.selector is None else f"what {e.selector} selects"
                    if e.namespace is None and any(ns for _, ns, _ in users):
                        holds += " in every namespace"
                    groups.setdefault((who, holds), []).append(e.informer.name)
        return [f"{', '.join(names)}: one cache each for {who}, holding {holds}; to cache less, run these "
                f"lifecycles in separate processes (workspace-fsm run --lifecycle NAME)"
                for (who, holds), names in groups.items()]


class InformerView:
    """A lifecycle's view of a shared informer: only the objects its own namespace and label selector select.

    It has the reading and indexing API of :class:`Informer` (``get``, ``items``, ``gone``, ``add_index``,
    ``by_index``, ``index_keys``, ``add_handler``, ``synced``); ``start``, ``stop`` and ``join`` act on the whole
    :class:`SharedInformers`. Its indexes and handlers are its own: two lifecycles may both add an index named
    ``owner``. An event is passed on as this view sees it: an object that stops matching the view's selector is
    ``DELETED`` for it, one that starts matching ``ADDED``.
    """

    def __init__(self, cache: SharedInformers, entry: _Entry, namespace: str | None, selector: str | None,
                 match: Callable[[Labels], bool] | None, view_id: int) -> None:
        self._cache = cache
        self._entry = entry
        self._namespace = namespace
        self._selector = selector
        self._match = match
        self._prefix = f"view{view_id}:"
        self.name = entry.informer.name

    @property
    def informer(self) -> Informer:
        """The shared informer behind this view."""
        return self._entry.informer

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Whether ``obj`` is one this view selects (always, when the shared informer lists exactly its objects)."""
        e = self._entry
        meta = obj.get("metadata") or {}
        if self._namespace is not None and e.namespace is None and meta.get("namespace") != self._namespace:
            return False
        if self._selector is not None and e.selector != self._selector:
            return self._match is not None and self._match(meta.get("labels") or {})
        return True

    # ------------------------------------------------------------------ reading

    def get(self, key: str) -> dict[str, Any] | None:
        obj = self._entry.informer.get(key)
        return obj if obj is not None and self.matches(obj) else None

    def items(self) -> list[dict[str, Any]]:
        return [o for o in self._entry.informer.items() if self.matches(o)]

    def gone(self, key: str) -> bool:
        return self._entry.informer.gone(key)

    @property
    def synced(self) -> bool:
        return self._entry.informer.synced

    def wait_synced(self, timeout_s: float) -> bool:
        return self._entry.informer.wait_synced(timeout_s)

    @property
    def relists(self) -> int:
        return self._entry.informer.relists

    @property
    def errors(self) -> int:
        return self._entry.informer.errors

    # ------------------------------------------------------------------ indexes and handlers

    def add_index(self, name: str, fn: IndexFunc) -> None:
        def selected(obj: dict[str, Any]) -> str | None | Iterable[str]:
            return fn(obj) if self.matches(obj) else None

        try:
            self._entry.informer.add_index(self._prefix + name, selected)
        except ValueError:
            raise ValueError(f"informer {self.name}: an index named {name!r} already exists") from None

    def by_index(self, name: str, value: str) -> list[dict[str, Any]]:
        return self._entry.informer.by_index(self._prefix + name, value)

    def index_keys(self, name: str, value: str) -> list[str]:
        return self._entry.informer.index_keys(self._prefix + name, value)

    def index_values(self, name: str) -> list[str]:
        return self._entry.informer.index_values(self._prefix + name)

    def add_handler(self, handler: Handler) -> None:
        def selected(etype: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
            was = old if old is not None and self.matches(old) else None
            now = new if new is not None and self.matches(new) else None
            if now is None:
                if was is not None:
                    handler("DELETED", was, None)  # gone, or no longer selected
            elif was is None:
                handler("ADDED" if old is not None else etype, None, now)  # new, or selected from now on
            else:
                handler(etype, was, now)

        self._entry.informer.add_handler(selected)

    # ------------------------------------------------------------------ running (the whole cache)

    def start(self) -> None:
        self._cache.start()

    def stop(self) -> None:
        self._cache.stop()

    def join(self, timeout_s: float) -> None:
        self._cache.join(timeout_s)
