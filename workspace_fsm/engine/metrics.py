"""Prometheus metrics for ``workspace-fsm run``, served at ``/metrics`` next to ``/healthz`` and ``/readyz``.

Everything is read when Prometheus scrapes, from state the runner keeps anyway (the queue, the informer
caches, the reconciler's counters): nothing is counted on the hot path. Each runner gets its own
:class:`~prometheus_client.CollectorRegistry`, so several runners in one process (tests) never collide.

What an operator looks at first:

- ``workspace_fsm_queue_depth{state="ready"}`` growing: the workers cannot keep up (raise ``--workers``
  or look at API latency); ``state="processing"`` stuck at the worker count: passes hang.
- ``workspace_fsm_informer_synced == 0`` or ``workspace_fsm_informer_watch_errors_total`` climbing: the
  runner cannot watch the API server (RBAC, network).
- ``workspace_fsm_informer_objects`` or ``workspace_fsm_adapter_cache_entries`` far above the
  Workspaces and their NodeClaims/workloads/Jobs in the cluster: a cache leaks.
- ``workspace_fsm_workspaces{state=...}``: where the Workspaces are in their lifecycle, from the record
  each one carries (``Deleting`` that never empties: NodeClaims that are not going away).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector


__all__ = ["CONTENT_TYPE_LATEST", "RunnerCollector", "build_registry", "render", "WORKER_THREAD_PREFIX"]

PREFIX = "workspace_fsm"
WORKER_THREAD_PREFIX = "workspace-fsm-worker-"
UNRECORDED = "Unrecorded"  # a Workspace the machine has not written its record on yet


def _machine_state(obj: dict[str, Any], record_type: str) -> str:
    for cond in (obj.get("status") or {}).get("conditions") or ():
        if isinstance(cond, dict) and cond.get("type") == record_type:
            return str(cond.get("reason") or UNRECORDED)
    return UNRECORDED


class RunnerCollector(Collector):
    """Reads the runner's state at scrape time. ``adapter`` is a KubernetesAdapter (or anything with
    ``informers``, ``keys()`` and optionally ``cache_sizes()`` and ``requests``)."""

    def __init__(self, adapter: Any, queue: Any, reconciler: Any, *, workers: int | None = None) -> None:
        self.adapter = adapter
        self.queue = queue
        self.reconciler = reconciler
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        yield from self._queue()
        yield from self._reconciler()
        yield from self._informers()
        yield from self._adapter()
        yield from self._threads()

    def _queue(self) -> Iterator[Metric]:
        q = self.queue
        depth = GaugeMetricFamily(
            f"{PREFIX}_queue_depth",
            "Workspace keys in the work queue: ready (waiting for a free worker), waiting (requeued for a later "
            "time: a deadline, a poll or a backoff), processing (a worker is running a pass on it now).",
            labels=["state"])
        depth.add_metric(["ready"], q.ready_count)
        depth.add_metric(["waiting"], q.waiting_count)
        depth.add_metric(["processing"], q.processing_count)
        yield depth

    def _reconciler(self) -> Iterator[Metric]:
        r = self.reconciler
        yield CounterMetricFamily(f"{PREFIX}_reconcile_passes",
                                  "Reconcile passes started (observe, decide, apply, persist) since the runner started.",
                                  value=r.passes)
        yield CounterMetricFamily(f"{PREFIX}_transitions",
                                  "State-machine transitions committed (their status write succeeded) since the "
                                  "runner started.",
                                  value=getattr(r, "transitions", 0))
        # The lifecycle's own counters (its hooks'), declared ones from 0 on.
        lc = getattr(r, "lifecycle", None)
        counters = getattr(r, "counters", None)
        declared: dict[str, str] = {}
        for h in getattr(r, "hooks", ()):
            declared.update(h.counters)
        if counters is not None:
            for name in sorted(set(declared) | set(counters.values)):
                family = CounterMetricFamily(f"{PREFIX}_{name}", declared.get(name) or counters.help.get(name, name),
                                             labels=["lifecycle"])
                family.add_metric([lc.name if lc is not None else ""], counters.get(name))
                yield family

    def _informers(self) -> Iterator[Metric]:
        objects = GaugeMetricFamily(f"{PREFIX}_informer_objects",
                                    "Objects in each informer's cache (Workspaces, and the NodeClaims, Nodes, "
                                    "Deployments, StatefulSets and Jobs labelled with a Workspace).",
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
        workspaces = 0
        lc = getattr(self.reconciler, "lifecycle", None) or getattr(self.adapter, "lifecycle", None)
        store = getattr(getattr(lc, "record", None), "store", None)
        record_type = getattr(store, "type", "workspace-fsm/Lifecycle")
        by_state = {name: 0 for name in (lc.states if lc is not None else ())}
        by_state[UNRECORDED] = 0
        for inf in self.adapter.informers:
            items = inf.items()
            objects.add_metric([inf.name], len(items))
            stones = getattr(inf, "_tombstones", None)
            if stones is not None:
                tombstones.add_metric([inf.name], len(stones))
            synced.add_metric([inf.name], 1 if inf.synced else 0)
            relists.add_metric([inf.name], getattr(inf, "relists", 0))
            errors.add_metric([inf.name], getattr(inf, "errors", 0))
            if inf is getattr(self.adapter, "workspaces", None):
                workspaces = len(items)
                for obj in items:
                    state = _machine_state(obj, record_type)
                    by_state[state] = by_state.get(state, 0) + 1
        yield from (objects, tombstones, synced, relists, errors)
        yield GaugeMetricFamily(f"{PREFIX}_workspaces_watched", "Workspaces in the runner's cache (the ones it drives).",
                                value=workspaces)
        states = GaugeMetricFamily(f"{PREFIX}_workspaces",
                                   "Workspaces by the machine's state, as persisted in their workspace-fsm/Lifecycle "
                                   f"record ({UNRECORDED}: no record written yet).", labels=["state"])
        for state, n in by_state.items():
            states.add_metric([state], n)
        yield states

    def _adapter(self) -> Iterator[Metric]:
        sizes = getattr(self.adapter, "cache_sizes", None)
        if callable(sizes):
            caches = GaugeMetricFamily(f"{PREFIX}_adapter_cache_entries",
                                       "Entries in the adapter's own per-object maps (overlay: own writes the watch "
                                       "has not delivered yet; parsed: validated Workspaces; delivered: recent "
                                       "resourceVersions; known: objects created but not yet in a cache; own_rv: "
                                       "own finalizer patches). Each stays within the live objects.",
                                       labels=["cache"])
            for name, n in sorted(sizes().items()):
                caches.add_metric([name], n)
            yield caches
        requests = getattr(self.adapter, "requests", None)
        if isinstance(requests, dict):
            calls = CounterMetricFamily(f"{PREFIX}_api_requests",
                                        "Requests the passes sent to the API server (creates, deletes, patches, status "
                                        "updates, GETs), by verb and kind; the informers' list and watch are not counted.",
                                        labels=["verb", "kind"])
            for name, n in sorted(dict(requests).items()):
                verb, _, kind = name.partition(" ")
                calls.add_metric([verb, kind], n)
            yield calls

    def _threads(self) -> Iterator[Metric]:
        threads = threading.enumerate()
        yield GaugeMetricFamily(f"{PREFIX}_threads", "Python threads alive in the runner process.",
                                value=len(threads))
        alive = sum(1 for t in threads if t.name.startswith(WORKER_THREAD_PREFIX))
        yield GaugeMetricFamily(f"{PREFIX}_worker_threads",
                                "Worker threads alive; fewer than --workers means a worker died.", value=alive)
        if self.workers is not None:
            yield GaugeMetricFamily(f"{PREFIX}_workers_configured", "Worker threads configured (--workers, for each lifecycle driven).",
                                    value=self.workers)


def build_registry(adapter: Any, queue: Any, reconciler: Any, *, workers: int | None = None,
                   process: bool = True) -> CollectorRegistry:
    """A registry of its own for one runner: its state plus the process' RSS, CPU, open fds, GC and platform."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunnerCollector(adapter, queue, reconciler, workers=workers))
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(registry)
