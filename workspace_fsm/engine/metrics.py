"""Prometheus metrics for ``workspace-fsm run``, served at ``/metrics`` next to ``/healthz`` and ``/readyz``.

Everything is read when Prometheus scrapes, from state the runner keeps anyway (the queues, the informer
caches, the reconcilers' counters): nothing is counted on the hot path. Each runner gets its own
:class:`~prometheus_client.CollectorRegistry`, so several runners in one process (tests) never collide.

One registry serves every lifecycle the runner drives. What belongs to a lifecycle (its queue, passes,
transitions, hooks' counters, objects by state, adapter caches, API requests, workers) carries the label
``lifecycle`` (its name: ``workspace``, ``ragengine``, ``website``); what belongs to the process (informers,
which the lifecycles share, threads, memory) does not. ``docs/metrics.md`` lists every family.

What an operator looks at first:

- ``workspace_fsm_queue_depth{state="ready"}`` growing: the workers cannot keep up (raise ``--workers``
  or look at API latency); ``state="processing"`` stuck at the worker count: passes hang.
- ``workspace_fsm_informer_synced == 0`` or ``workspace_fsm_informer_watch_errors_total`` climbing: the
  runner cannot watch the API server (RBAC, network).
- ``workspace_fsm_informer_objects`` or ``workspace_fsm_adapter_cache_entries`` far above the
  objects in the cluster: a cache leaks.
- ``workspace_fsm_resources{lifecycle=...,state=...}``: where the resources are in their lifecycle, from the
  record each one carries (``Deleting`` that never empties: children that are not going away).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector


__all__ = ["CONTENT_TYPE_LATEST", "RunnerCollector", "Served", "build_registry", "render", "WORKER_THREAD_PREFIX"]

PREFIX = "workspace_fsm"
WORKER_THREAD_PREFIX = "workspace-fsm-worker-"
UNRECORDED = "Unrecorded"  # an object the machine has not written its record on yet
#: The lifecycle whose figures are also served under the names of the first release (no ``lifecycle`` label).
LEGACY_LIFECYCLE = "workspace"


class Served(NamedTuple):
    """One lifecycle the runner drives: its name and the objects /metrics reads. ``adapter`` has ``informers``
    (its resource's own first, or as ``primary``/``workspaces``), ``keys()`` and optionally ``cache_sizes()`` and
    ``requests``; ``runner`` (optional) has ``workers`` and its worker threads."""

    lifecycle: str
    adapter: Any
    queue: Any
    reconciler: Any
    runner: Any = None


def _machine_state(obj: dict[str, Any], store: Any) -> str:
    if getattr(store, "kind", "condition") == "annotation":
        text = ((obj.get("metadata") or {}).get("annotations") or {}).get(getattr(store, "key", ""))
        try:
            state = json.loads(text).get("state") if text else None
        except (ValueError, AttributeError):
            state = None
        return str(state) if state else UNRECORDED
    record_type = getattr(store, "type", "workspace-fsm/Lifecycle")
    for cond in (obj.get("status") or {}).get("conditions") or ():
        if isinstance(cond, dict) and cond.get("type") == record_type:
            return str(cond.get("reason") or UNRECORDED)
    return UNRECORDED


class _Families:
    """Metric families by name, built once per scrape: two lifecycles' samples of one name are one family."""

    def __init__(self) -> None:
        self._by_name: dict[str, Metric] = {}

    def get(self, kind: type[Metric], name: str, doc: str, labels: Sequence[str]) -> Any:
        family = self._by_name.get(name)
        if family is None:
            family = self._by_name[name] = kind(name, doc, labels=list(labels))
        return family

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._by_name.values())


class RunnerCollector(Collector):
    """Reads the runner's state at scrape time: every lifecycle's (``served``) and the shared informers'
    (``informers()``; default: the adapters' informers, each shared one once)."""

    def __init__(self, served: Sequence[Served], *, informers: Callable[[], Iterable[Any]] | None = None) -> None:
        self.served = list(served)
        self._informers = informers

    def collect(self) -> Iterator[Metric]:
        families = _Families()
        for s in self.served:
            self._queue(families, s)
            self._reconciler(families, s)
            self._resources(families, s)
            self._adapter(families, s)
            self._workers(families, s)
        yield from families
        yield from self._legacy()
        yield from self._informer_metrics()
        threads = threading.enumerate()
        yield GaugeMetricFamily(f"{PREFIX}_threads", "Python threads alive in the runner process.",
                                value=len(threads))

    # ------------------------------------------------------------------ per lifecycle

    def _queue(self, f: _Families, s: Served) -> None:
        q = s.queue
        depth = f.get(GaugeMetricFamily, f"{PREFIX}_queue_depth",
                      "Keys in a lifecycle's work queue: ready (waiting for a free worker), waiting (requeued for a "
                      "later time: a deadline, a poll or a backoff), processing (a worker is running a pass on it now).",
                      ["lifecycle", "state"])
        depth.add_metric([s.lifecycle, "ready"], q.ready_count)
        depth.add_metric([s.lifecycle, "waiting"], q.waiting_count)
        depth.add_metric([s.lifecycle, "processing"], q.processing_count)

    def _reconciler(self, f: _Families, s: Served) -> None:
        r = s.reconciler
        f.get(CounterMetricFamily, f"{PREFIX}_reconcile_passes",
              "Reconcile passes started (observe, decide, apply, persist) since the runner started.",
              ["lifecycle"]).add_metric([s.lifecycle], r.passes)
        f.get(CounterMetricFamily, f"{PREFIX}_transitions",
              "State-machine transitions committed (their status write succeeded) since the runner started.",
              ["lifecycle"]).add_metric([s.lifecycle], getattr(r, "transitions", 0))
        # The lifecycle's own counters (its hooks'), declared ones from 0 on.
        counters = getattr(r, "counters", None)
        declared: dict[str, str] = {}
        for h in getattr(r, "hooks", ()):
            declared.update(h.counters)
        if counters is not None:
            for name in sorted(set(declared) | set(counters.values)):
                f.get(CounterMetricFamily, f"{PREFIX}_{name}", declared.get(name) or counters.help.get(name, name),
                      ["lifecycle"]).add_metric([s.lifecycle], counters.get(name))

    def _resources(self, f: _Families, s: Served) -> None:
        lc = getattr(s.reconciler, "lifecycle", None) or getattr(s.adapter, "lifecycle", None)
        store = getattr(getattr(lc, "record", None), "store", None)
        by_state = {name: 0 for name in (lc.states if lc is not None else ())}
        by_state[UNRECORDED] = 0
        items = _primary(s.adapter).items()
        for obj in items:
            state = _machine_state(obj, store)
            by_state[state] = by_state.get(state, 0) + 1
        f.get(GaugeMetricFamily, f"{PREFIX}_resources_watched",
              "Objects of the lifecycle's resource in the runner's cache (the ones it drives).",
              ["lifecycle"]).add_metric([s.lifecycle], len(items))
        states = f.get(GaugeMetricFamily, f"{PREFIX}_resources",
                       "Objects of the lifecycle's resource by the machine's state, as persisted in their record "
                       f"({UNRECORDED}: no record written yet).", ["lifecycle", "state"])
        for state, n in by_state.items():
            states.add_metric([s.lifecycle, state], n)

    def _adapter(self, f: _Families, s: Served) -> None:
        sizes = getattr(s.adapter, "cache_sizes", None)
        if callable(sizes):
            caches = f.get(GaugeMetricFamily, f"{PREFIX}_adapter_cache_entries",
                           "Entries in a lifecycle adapter's own per-object maps (overlay: own writes the watch has "
                           "not delivered yet; parsed: validated objects; delivered: recent resourceVersions; known: "
                           "objects created but not yet in a cache; own_rv: own finalizer patches). Each stays within "
                           "the live objects.", ["lifecycle", "cache"])
            for name, n in sorted(sizes().items()):
                caches.add_metric([s.lifecycle, name], n)
        requests = getattr(s.adapter, "requests", None)
        if isinstance(requests, dict):
            calls = f.get(CounterMetricFamily, f"{PREFIX}_api_requests",
                          "Requests a lifecycle's passes sent to the API server (creates, deletes, patches, status "
                          "updates, GETs), by verb and kind; the informers' list and watch are not counted.",
                          ["lifecycle", "verb", "kind"])
            for name, n in sorted(dict(requests).items()):
                verb, _, kind = name.partition(" ")
                calls.add_metric([s.lifecycle, verb, kind], n)

    def _workers(self, f: _Families, s: Served) -> None:
        runner = s.runner
        if runner is None:
            return
        alive = sum(1 for t in getattr(runner, "_threads", ()) if t.is_alive())
        f.get(GaugeMetricFamily, f"{PREFIX}_worker_threads",
              "A lifecycle's worker threads alive; fewer than --workers means a worker died.",
              ["lifecycle"]).add_metric([s.lifecycle], alive)
        f.get(GaugeMetricFamily, f"{PREFIX}_workers_configured", "Worker threads configured for a lifecycle "
              "(--workers).", ["lifecycle"]).add_metric([s.lifecycle], runner.workers)

    def _legacy(self) -> Iterator[Metric]:
        """The Workspace lifecycle's objects under the first release's names (deprecated: use
        ``workspace_fsm_resources_watched`` and ``workspace_fsm_resources`` with ``lifecycle="workspace"``)."""
        s = next((s for s in self.served if s.lifecycle == LEGACY_LIFECYCLE), None)
        if s is None:
            return
        f = _Families()
        self._resources(f, s)
        for family in f:
            legacy = family.name.replace("_resources", "_workspaces")
            kind = GaugeMetricFamily(legacy, f"Deprecated: {family.name}{{lifecycle=\"workspace\"}}. "
                                     + family.documentation, labels=[] if legacy.endswith("watched") else ["state"])
            for sample in family.samples:
                labels = dict(sample.labels)
                labels.pop("lifecycle", None)
                kind.add_metric([labels["state"]] if "state" in labels else [], sample.value)
            yield kind

    # ------------------------------------------------------------------ the process

    def _informer_metrics(self) -> Iterator[Metric]:
        objects = GaugeMetricFamily(f"{PREFIX}_informer_objects",
                                    "Objects in each informer's cache. The lifecycles share the informers: one per "
                                    "resource, holding what every lifecycle that reads it selects.",
                                    labels=["informer"])
        tombstones = GaugeMetricFamily(f"{PREFIX}_informer_tombstones",
                                       "Keys an informer remembers as deleted (bounded; lets the machine know "
                                       "positively that something is gone).", labels=["informer"])
        synced = GaugeMetricFamily(f"{PREFIX}_informer_synced",
                                   "1 once an informer has listed its resource; 0 while it has not (not ready).",
                                   labels=["informer"])
        relists = CounterMetricFamily(f"{PREFIX}_informer_relists",
                                      "Full lists an informer made (the first one, and after a watch expired).",
                                      labels=["informer"])
        errors = CounterMetricFamily(f"{PREFIX}_informer_watch_errors",
                                     "List or watch errors an informer retried (API errors and network failures).",
                                     labels=["informer"])
        names: dict[str, int] = {}
        for inf in self.informers():
            n = names[inf.name] = names.get(inf.name, 0) + 1
            name = inf.name if n == 1 else f"{inf.name}#{n}"  # a second informer of a resource (see cache.py)
            objects.add_metric([name], len(inf.items()))
            stones = getattr(inf, "_tombstones", None)
            if stones is not None:
                tombstones.add_metric([name], len(stones))
            synced.add_metric([name], 1 if inf.synced else 0)
            relists.add_metric([name], getattr(inf, "relists", 0))
            errors.add_metric([name], getattr(inf, "errors", 0))
        yield from (objects, tombstones, synced, relists, errors)

    def informers(self) -> list[Any]:
        """The informers to report, each once (a view is reported as the shared informer behind it)."""
        if self._informers is not None:
            return list(self._informers())
        seen: dict[int, Any] = {}
        for s in self.served:
            for inf in getattr(s.adapter, "informers", ()):
                shared = getattr(inf, "informer", inf)
                seen.setdefault(id(shared), shared)
        return list(seen.values())


def _primary(adapter: Any) -> Any:
    """The informer (or view) of the lifecycle's own resource."""
    for name in ("primary", "workspaces"):
        inf = getattr(adapter, name, None)
        if inf is not None:
            return inf
    return adapter.informers[0]


def build_registry(served: Sequence[Served], *, informers: Callable[[], Iterable[Any]] | None = None,
                   process: bool = True) -> CollectorRegistry:
    """A registry of its own for one runner: every lifecycle's state (``served``), the shared informers (see
    :class:`RunnerCollector`), plus the process' RSS, CPU, open fds, GC and platform."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunnerCollector(served, informers=informers))
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(registry)
