"""A mixed population: the lifecycles beside the Workspace's that a scenario creates, and their controllers.

Every lifecycle other than the Workspace's runs on :class:`~.generic.SimResourceAdapter`, built from its
declaration and its binding (how its snapshot is read and its own actions become requests: the same functions
the Kubernetes adapter uses, so the simulator exercises the binding that runs against a real cluster). Each
lifecycle has its own work queue and its own workers, as each controller of a manager has.
"""

from __future__ import annotations

import heapq
import importlib
import random
import uuid
from collections.abc import Callable
from typing import Any

import attrs

from workspace_fsm.engine.queue import WorkQueue
from workspace_fsm.engine.runner import RunStats, settle

from .cluster import SimCluster
from .documents import ragengine_document
from .generic import SimResourceAdapter
from .params import Scenario

__all__ = ["BINDINGS", "Controller", "lifecycle_adapter", "run_controllers", "schedule_ragengines"]

#: Lifecycle name -> the module holding its binding (``snapshot(obj, view)`` and ``render(action, obj)``).
BINDINGS: dict[str, str] = {"ragengine": "workspace_fsm.adapters.kubernetes.ragengine"}


def lifecycle_adapter(cluster: SimCluster, lifecycle: Any) -> SimResourceAdapter:
    """The simulated adapter for ``lifecycle``, with its binding when it has one."""
    module = BINDINGS.get(lifecycle.name)
    snapshot = render = None
    if module is not None:
        binding = importlib.import_module(module)
        snapshot, render = getattr(binding, "snapshot", None), getattr(binding, "render", None)
    return SimResourceAdapter(cluster, lifecycle, snapshot=snapshot, render=render)


def schedule_ragengines(cluster: SimCluster, sc: Scenario, adapter: SimResourceAdapter) -> list[str]:
    """Create the scenario's RAGEngines (at their arrival times) and schedule their deletions. Draws come from a
    stream of their own, so the Workspaces' draws are the same with or without RAGEngines."""
    rng = random.Random(f"{sc.seed}/ragengines")
    lo, hi = sc.ragengine_nodes
    width = max(len(str(sc.ragengines - 1)), 4)
    keys = []
    for i in range(sc.ragengines):
        at = rng.uniform(0, sc.arrival_window_s) if sc.arrival == "spread" else 0.0
        compute = rng.random() < sc.ragengine_compute_share
        nodes = rng.randint(lo, hi)
        uid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        r_delete, delete_after = rng.random(), sc.delete_after.sample(rng)
        doc = ragengine_document(f"rag-{i:0{width}d}", compute=compute, instance_type=sc.ragengine_instance_type,
                                 count=nodes, namespace=sc.namespace, uid=uid)
        key = cluster.create_resource(adapter.kind, doc, at=at if at > 0 else None, nodes=nodes if compute else 0,
                                      lifecycle=adapter.name)
        if r_delete < sc.delete_share:
            rec = cluster.records[adapter.token(key)]
            rec.delete_at = at + delete_after
            cluster.delete_resource(adapter.kind, key, at=rec.delete_at)
        keys.append(key)
    return keys


@attrs.define
class Controller:
    """One lifecycle's controller in a simulated manager: its reconciler, queue and worker slots."""

    name: str
    reconciler: Any
    queue: WorkQueue[str]
    workers: int
    stats: RunStats = attrs.field(init=False)
    running: list[tuple[float, int, str, Any]] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        self.stats = RunStats(workers=self.workers)


def run_controllers(controllers: list[Controller], world: Any, clock: Any, until: Callable[[], bool],
                    horizon_s: float, progress: Callable[[float], None] | None = None,
                    progress_every_s: float = 60.0) -> RunStats:
    """The virtual-time loop of :class:`~workspace_fsm.engine.runner.VirtualTimeRunner` for several controllers
    sharing one cluster and clock (each with its own queue and workers). With one controller it takes the same
    steps in the same order (a test checks the figures are equal). Returns the stats of all of them together."""
    seq = 0

    def resume(c: Controller, key: str, gen: Any) -> None:
        nonlocal seq
        try:
            hold = next(gen)
        except StopIteration as stop:
            settle(c.queue, key, stop.value)
            return
        hold = max(0.0, float(hold))
        c.stats.busy_s += hold
        seq += 1
        heapq.heappush(c.running, (clock.t + hold, seq, key, gen))

    next_progress = 0.0
    while clock.t <= horizon_s:
        world.advance_to(clock.t)
        for c in controllers:
            while c.running and c.running[0][0] <= clock.t:
                _, _, key, gen = heapq.heappop(c.running)
                resume(c, key, gen)
        for c in controllers:
            while len(c.running) < c.workers:
                ready = c.queue.get()
                if ready is None:
                    break
                c.stats.passes += 1
                resume(c, ready, c.reconciler.reconcile(ready))
        if progress is not None and clock.t >= next_progress:
            progress(clock.t)
            next_progress = clock.t + progress_every_s
        if not any(c.running for c in controllers) and until():
            break
        candidates = [world.next_event_time()]
        for c in controllers:
            if c.running:
                candidates.append(c.running[0][0])
            if len(c.running) < c.workers:
                candidates.append(c.queue.next_ready_at())
        due = [t for t in candidates if t is not None]
        if not due:
            break
        clock.t = max(min(due), clock.t + 1e-9)
    end = min(clock.t, horizon_s)
    total = RunStats(workers=sum(c.workers for c in controllers), end_s=end)
    for c in controllers:
        c.stats.end_s = end
        total.passes += c.stats.passes
        total.busy_s += c.stats.busy_s
    return total
