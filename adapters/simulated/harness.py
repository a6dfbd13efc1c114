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
    """Machine state per Workspace (the lifecycle record's reason), or the summary state for baselines."""
    counts: dict[str, int] = {}
    for ws in cluster.truth.workspaces.values():
        rec = ws.status.condition("workspace-fsm/Lifecycle")
        name = rec.reason if rec is not None else (ws.status.state or "New")
        counts[name] = counts.get(name, 0) + 1
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
    if mode == "fsm":
        reconciler: Any = FsmReconciler(cluster, clock, config=config, api_latency_s=cluster.api_latency_s,
                                        call_counter=lambda: cluster.api_call_count, epoch=cluster.to_datetime(0.0),
                                        writer_id="sim")
    elif mode == "blocking":
        reconciler = BlockingReconciler(cluster, clock)
    else:
        reconciler = PollerReconciler(cluster, clock)
    runner = VirtualTimeRunner(reconciler, queue, cluster, clock, workers=workers)
    def on_progress(t: float) -> None:
        if progress is not None:
            recs = cluster.records.values()
            progress(Progress(mode, t, state_counts(cluster), sum(1 for r in recs if r.first_goal_at is not None),
                              len(cluster.records) or scenario.workspaces))

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
        "workspaces": len(recs),
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
    result["_goals"] = sorted(ends)  # for pictures; keys starting with "_" are not part of the JSON
    if timeline:
        result["_histories"] = histories(cluster)
    return result


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
