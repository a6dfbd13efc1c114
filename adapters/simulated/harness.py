"""Run one scenario under one design (fsm, blocking, poller) and measure it.

Each mode gets a fresh :class:`SimCluster` built from the same scenario and seed; every object's latencies
come from its own seeded stream, so the n-th NodeClaim of a Workspace takes as long under every design.
Differences in the figures are the designs' own.
"""

from __future__ import annotations

import statistics
import time
from datetime import timedelta
from collections.abc import Callable
from typing import Any

import attrs

from workspace_fsm.kaito.workspace import DEFAULT_CONFIG, Config
from workspace_fsm.engine.hooks import Hooks, TransitionEvent
from workspace_fsm.engine.queue import WorkQueue
from workspace_fsm.engine.runner import FsmReconciler, VirtualClock, VirtualTimeRunner

from .baselines import BlockingReconciler, PollerReconciler
from .cluster import SimCluster
from .params import Scenario

MODES = ("fsm", "blocking", "poller")
WATCHED_NODES_RECHECK = timedelta(seconds=60)
HORIZON_S = 7 * 24 * 3600.0  # a run that has not settled after a simulated week has a bug


@attrs.define
class Progress:
    """What a live display shows: per state, how many Workspaces are in it, at virtual time t."""

    mode: str
    t: float
    counts: dict[str, int]
    reached: int
    total: int


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    idx = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[idx]


def state_counts(cluster: SimCluster) -> dict[str, int]:
    """Machine state per Workspace (the lifecycle record's reason), or the summary state for baselines; the
    resources of other lifecycles are counted under ``Kind/state``."""
    counts: dict[str, int] = {}
    for ws in cluster.truth.workspaces.values():
        rec = ws.status.condition("workspace-fsm/Lifecycle")
        name = rec.reason if rec is not None else (ws.status.state or "New")
        counts[name] = counts.get(name, 0) + 1
    for kind, adapter in cluster._routes.items():
        store = adapter.lifecycle.record.store
        for doc in cluster._objs[kind].values():
            state = "New"
            for c in (doc.get("status") or {}).get("conditions") or ():
                if c.get("type") == getattr(store, "type", None):
                    state = c.get("reason") or state
            counts[f"{kind}/{state}"] = counts.get(f"{kind}/{state}", 0) + 1
    return counts


def run_mode(scenario: Scenario, mode: str, workers: int = 5, *, config: Config = DEFAULT_CONFIG,
             progress: Callable[[Progress], None] | None = None, progress_every_s: float = 60.0,
             timeline: bool = False) -> dict[str, Any]:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")
    wall0 = time.perf_counter()
    if mode == "fsm":
        # The machine's adapter keeps a cache of the Nodes labelled for its Workspaces (a label-selected
        # watch: only the GPU nodes it created, not every Node of a large cluster), so reading them is free
        # and their changes wake the Workspace; the GPU re-check timer is then only a safety net. The
        # baselines, like KAITO, do not watch Nodes: they read them with GETs and re-check on timers.
        scenario = attrs.evolve(scenario, params=attrs.evolve(scenario.params, nodes_from_cache=True))
        if config.gpu_recheck < WATCHED_NODES_RECHECK:
            config = attrs.evolve(config, gpu_recheck=WATCHED_NODES_RECHECK)
    cluster = SimCluster(scenario)
    clock = VirtualClock()
    queue: WorkQueue[str] = WorkQueue(clock)
    cluster.set_event_handler(queue.add)
    others = _other_controllers(cluster, scenario, clock, workers)
    hooks = _states_hook(cluster, "") if others else None
    if mode == "fsm":
        reconciler: Any = FsmReconciler(cluster, clock, config=config, api_latency_s=cluster.api_latency_s,
                                        call_counter=lambda: cluster.api_call_count, epoch=cluster.to_datetime(0.0),
                                        writer_id="sim", hooks=hooks)
    elif mode == "blocking":
        reconciler = BlockingReconciler(cluster, clock)
    else:
        reconciler = PollerReconciler(cluster, clock)
    def on_progress(t: float) -> None:
        if progress is not None:
            recs = cluster.records.values()
            progress(Progress(mode, t, state_counts(cluster), sum(1 for r in recs if r.first_goal_at is not None),
                              len(cluster.records) or scenario.workspaces))

    controllers = None
    if others:  # a mixed population: one controller per lifecycle, each with its own queue and workers
        from .population import Controller, run_controllers

        controllers = [Controller("workspace", reconciler, queue, workers), *others]
        stats = run_controllers(controllers, cluster, clock, cluster.settled, HORIZON_S,
                                progress=on_progress if progress else None, progress_every_s=progress_every_s)
    else:
        runner = VirtualTimeRunner(reconciler, queue, cluster, clock, workers=workers)
        stats = runner.run(cluster.settled, HORIZON_S, progress=on_progress if progress else None,
                           progress_every_s=progress_every_s)
    if progress is not None:
        on_progress(clock.t)
    wall = time.perf_counter() - wall0

    recs = list(cluster.records.values())
    reached = [r for r in recs if r.first_goal_at is not None]
    chains = [r.chain for r in recs if r.chain is not None]
    ends = [r.first_goal_at for r in reached]
    crit = [r.created_at + r.chain for r in recs if r.chain is not None and r.created_at is not None]
    ttg = sorted(r.time_to_first_goal for r in reached)
    slow = sorted(r.time_to_first_goal / r.chain for r in reached if r.chain)
    m = cluster.metrics()
    makespan = max(ends) if ends else None
    critical = max(crit) if crit else None
    result = {
        "makespan_s": round(makespan, 3) if makespan is not None else None,
        "critical_path_s": round(critical, 3) if critical is not None else None,
        "makespan_over_critical_path": round(makespan / critical, 4) if makespan and critical else None,
        "chain_mean_s": round(statistics.fmean(chains), 3) if chains else None,
        "chain_max_s": round(max(chains), 3) if chains else None,
        "time_to_goal_p50_s": _round(_percentile(ttg, 0.5)),
        "time_to_goal_p95_s": _round(_percentile(ttg, 0.95)),
        "time_to_goal_max_s": _round(ttg[-1] if ttg else None),
        "slowdown_p50": _round(_percentile(slow, 0.5), 4),
        "slowdown_p99": _round(_percentile(slow, 0.99), 4),
        "slowdown_max": _round(slow[-1] if slow else None, 4),
        "reached_goal": len(reached),
        "workspaces": sum(1 for r in recs if r.kind == "Workspace"),
        "reconciles": stats.passes,
        "reconciles_per_workspace": round(stats.passes / len(recs), 2) if recs else None,
        "api_reads": m["reads"],
        "api_writes": m["writes"],
        "api_calls": m["api_calls"],
        "nodeclaims_created": m["nodeclaims_created"],
        "nodeclaims_over_target_max": m["nodeclaims_over_target_max"],
        "workers_busy_share": round(stats.busy_share, 4),
        "simulated_end_s": round(stats.end_s, 3),
        "settled": cluster.settled(),
        "wall_s": round(wall, 3),
    }
    if controllers is not None:
        result["resources"] = len(recs)
        result["lifecycles"] = {c.name: lifecycle_summary(cluster, c.name, c.stats.passes,
                                                          "fsm" if c.name != "workspace" else mode)
                                for c in controllers}
    result["_goals"] = sorted(ends)  # for pictures; keys starting with "_" are not part of the JSON
    if timeline:
        result["_histories"] = histories(cluster)
    return result


def _other_controllers(cluster: SimCluster, scenario: Scenario, clock: VirtualClock, workers: int) -> list[Any]:
    """The controllers of the scenario's other lifecycles (RAGEngines), always the machine: the baselines model
    KAITO's Workspace controller only."""
    if not scenario.ragengines:
        return []
    from workspace_fsm.kaito.ragengine import RAGENGINE

    from .population import Controller, lifecycle_adapter, schedule_ragengines

    adapter = lifecycle_adapter(cluster, RAGENGINE)
    queue: WorkQueue[str] = WorkQueue(clock)
    adapter.set_event_handler(queue.add)
    schedule_ragengines(cluster, scenario, adapter)
    reconciler = FsmReconciler(adapter, clock, api_latency_s=cluster.api_latency_s,
                               call_counter=lambda: cluster.api_call_count, epoch=cluster.to_datetime(0.0),
                               writer_id="sim-" + RAGENGINE.name, hooks=_states_hook(cluster, adapter.kind + ":"))
    return [Controller(RAGENGINE.name, reconciler, queue, workers)]


def _states_hook(cluster: SimCluster, prefix: str) -> Hooks:
    """Notes in each resource's record the states its machine entered (committed transitions only)."""
    hooks = Hooks()

    @hooks.on_transition
    def entered(event: TransitionEvent, counters: Any) -> None:
        rec = cluster.records.get(prefix + event.key)
        if rec is not None:
            rec.states[event.source] = None
            rec.states[event.dest] = None

    return hooks


_READS = ("get", "list")


def lifecycle_summary(cluster: SimCluster, name: str, reconciles: int, controller: str) -> dict[str, Any]:
    """One lifecycle's figures in a mixed population: its resources, how many are in each state now and how many
    entered each state (committed transitions; the baselines keep no machine state: None), time to goal, its
    passes and API calls."""
    recs = [r for r in cluster.records.values() if r.lifecycle == name]
    reached = [r for r in recs if r.first_goal_at is not None]
    ttg = sorted(r.time_to_first_goal for r in reached)
    if name == "workspace":
        other = {}
        for calls in cluster.api_calls_by.values():
            for k, v in calls.items():
                other[k] = other.get(k, 0) + v
        calls = {k: v - other.get(k, 0) for k, v in cluster.api_calls.items() if v - other.get(k, 0)}
    else:
        calls = dict(cluster.api_calls_by.get(name, {}))
    now_in: dict[str, int] = {}
    entered: dict[str, int] = {}
    for r in recs:
        for state in r.states:
            entered[state] = entered.get(state, 0) + 1
        final = _state_now(cluster, r)
        now_in[final] = now_in.get(final, 0) + 1
    return {
        "controller": controller,
        "resources": len(recs),
        "reached_goal": len(reached),
        "time_to_goal_p50_s": _round(_percentile(ttg, 0.5)),
        "time_to_goal_p95_s": _round(_percentile(ttg, 0.95)),
        "time_to_goal_max_s": _round(ttg[-1] if ttg else None),
        "states_now": dict(sorted(now_in.items())),
        "states_entered": dict(sorted(entered.items())) if controller == "fsm" else None,
        "reconciles": reconciles,
        "api_reads": sum(v for k, v in calls.items() if k.split(" ", 1)[0] in _READS),
        "api_writes": sum(v for k, v in calls.items() if k.split(" ", 1)[0] not in _READS and k != "create Event"),
        "api_calls": dict(sorted(calls.items())),
        "nodeclaims_created": sum(len(r.claim_paths) for r in recs),
    }


def _record_of(cluster: SimCluster, r: Any) -> Any:
    if r.kind == "Workspace":
        from workspace_fsm.kaito.workspace import WORKSPACE

        ws = cluster.truth.workspaces.get(r.key)
        return None if ws is None else WORKSPACE.read_record(ws)
    adapter = cluster._routes[r.kind]
    doc = cluster.object(r.kind, r.key.split(":", 1)[1])
    return None if doc is None else adapter.lifecycle.read_record(adapter.lifecycle.parse(doc))


def _state_now(cluster: SimCluster, r: Any) -> str:
    if r.removed_at is not None:
        return "(removed)"
    rec = _record_of(cluster, r)
    if rec is not None:
        return rec.state
    ws = cluster.truth.workspaces.get(r.key) if r.kind == "Workspace" else None
    return (ws.status.state if ws is not None else None) or "New"  # a baseline keeps no record


def histories(cluster: SimCluster) -> dict[str, list[tuple[str, float, float]]]:
    """Per Workspace, (state, from, to) in virtual seconds, read back from the persisted lifecycle record."""
    from workspace_fsm.kaito.workspace import read_lifecycle

    out: dict[str, list[tuple[str, float, float]]] = {}
    end = cluster.now
    for key, ws in cluster.truth.workspaces.items():
        rec = read_lifecycle(ws.status)
        created = cluster.records[key].created_at if key in cluster.records else 0.0
        if rec is None:
            continue
        segments: list[tuple[str, float, float]] = []
        state, since = "Pending", created or 0.0
        for h in rec.history:
            at = cluster.to_seconds(h.time)
            segments.append((h.source, since, at))
            state, since = h.dest, at
        segments.append((state, since, end))
        out[key] = segments
    return out


def _round(v: float | None, nd: int = 3) -> float | None:
    return None if v is None else round(v, nd)
