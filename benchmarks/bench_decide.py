"""Cost of one ``decide`` pass over a population of Workspaces in mixed states.

Prints one JSON object: {"passes", "us_per_pass_median", "us_per_pass_p99", ...}. Everything a pass
does is timed: reading the persisted record, evaluating the shared machine's guards, computing
actions and the whole status. Building the population (and the snapshots, which an adapter reads
from its cache) is not.

    python benchmarks/bench_decide.py [--workspaces 10000] [--rounds 3] [--seed 1]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone

import attrs

from workspace_fsm.kaito import actions as A
from workspace_fsm.kaito.workspace import decide
from workspace_fsm.kaito.model import (Job, Node, NodeClaim, ObjectMeta, PresetSpec, DataSource, DataDestination,
                                 InferenceSpec, LabelSelector, ResourceSpec, Snapshot, TuningSpec, Workload,
                                 Workspace)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
PRESETS = ("phi-4-mini-instruct", "phi-4", "llama-3.1-8b-instruct", "mistral-7b-instruct", "qwen2.5-coder-7b-instruct")
STAGES = ("new", "claims_pending", "claims_partly_ready", "plugins", "deploying", "ready", "job_running",
          "succeeded", "deleting")


def make_workspace(i: int, rng: random.Random) -> Workspace:
    tuning = rng.random() < 0.25
    nodes = rng.choice((1, 1, 1, 2, 3))
    meta = ObjectMeta(name=f"ws-{i}", namespace=f"team-{i % 50}", uid=f"uid-{i}", generation=1,
                      resource_version=str(i))
    resource = ResourceSpec(label_selector=LabelSelector(match_labels={"apps": f"ws-{i}"}),
                            instance_type="Standard_NC24ads_A100_v4", count=nodes)
    if tuning:
        return Workspace(metadata=meta, resource=resource, tuning=TuningSpec(
            input=DataSource(urls=("https://example.com/data.parquet",)),
            output=DataDestination(image="registry.example.com/out:1", image_push_secret="push"),
            preset=PresetSpec("phi-3-mini-128k-instruct"), method="qlora"))
    return Workspace(metadata=meta, resource=resource,
                     inference=InferenceSpec(preset=PresetSpec(rng.choice(PRESETS))))


def world(ws: Workspace, decided: list, stage_rank: int, rng: random.Random) -> Snapshot:
    """A snapshot consistent with what the machine has asked for so far and the stage reached."""
    created = [a for d in decided for a in d.actions if isinstance(a, A.CreateNodeClaim)]
    claims = []
    nodes = {}
    for k, c in enumerate(created):
        ready = stage_rank >= 3 or (stage_rank == 2 and k == 0)
        node = f"node-{c.name}" if ready else None
        claims.append(NodeClaim(c.name, ws.key, c.instance_type, launched="True",
                                registered="True" if ready else "Unknown",
                                initialized="True" if ready else None, ready="True" if ready else "Unknown",
                                node_name=node))
        if node:
            nodes[node] = Node(node, {"accelerator": "nvidia"}, True, 8 if stage_rank >= 4 else 0)
    workload = job = None
    for d in decided:
        for a in d.actions:
            if isinstance(a, A.CreateWorkload):
                ok = stage_rank >= 5
                ready = a.replicas if ok else 0
                workload = Workload(a.kind, a.name, a.replicas, ready, ready, a.revision)
            if isinstance(a, A.CreateJob):
                job = Job(a.name, a.revision, active=1, complete=stage_rank >= 7, succeeded=1 if stage_rank >= 7 else 0)
    services = frozenset(a.name for d in decided for a in d.actions if isinstance(a, A.CreateService))
    return Snapshot(tuple(claims), nodes, workload, job, services=services)


def build_population(n: int, seed: int) -> list[tuple[Workspace, Snapshot, datetime]]:
    rng = random.Random(seed)
    population = []
    for i in range(n):
        ws = make_workspace(i, rng)
        stage = rng.choice(STAGES)
        rank = STAGES.index(stage)
        if ws.is_tuning and stage in ("deploying", "ready"):
            rank = STAGES.index("job_running")
        if not ws.is_tuning and stage in ("job_running", "succeeded"):
            rank = STAGES.index("ready")
        now = T0
        decided: list = []
        snap = Snapshot()
        # Drive the Workspace through the machine up to its stage, as a runner would.
        for r in range(0, min(rank, 7) + 1 if stage != "new" else 0):
            snap = world(ws, decided, r, rng) if r > 0 else Snapshot()
            d = decide(ws, snap, now)
            decided.append(d)
            ws = ws.with_status(d.status)
            if any(isinstance(a, A.AddFinalizer) for a in d.actions):
                ws = attrs.evolve(ws, metadata=attrs.evolve(ws.metadata, finalizers=("workspace.kaito.io/finalizer",)))
            now += timedelta(seconds=rng.randint(5, 120))
        if stage == "deleting":
            ws = attrs.evolve(ws, metadata=attrs.evolve(ws.metadata, deletion_timestamp=now))
        snap = world(ws, decided, min(rank, 7), rng)
        population.append((ws, snap, now + timedelta(seconds=rng.randint(1, 30))))
    return population


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspaces", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3, help="passes per Workspace (each timed)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    t_build = time.perf_counter()
    population = build_population(args.workspaces, args.seed)
    build_s = time.perf_counter() - t_build
    states: dict[str, int] = {}
    samples: list[float] = []
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()  # time decide, not the collector's pauses triggered by the population above
    try:
        for _ in range(args.rounds):
            # Cold: no persisted record has been parsed before (a fresh runner, or every status changed).
            for ws, _, _ in population:
                ws.status._memo.clear()
            for ws, snap, now in population:
                t = clock()
                d = decide(ws, snap, now)
                samples.append((clock() - t) / 1000.0)
                states[d.state] = states.get(d.state, 0) + 1
    finally:
        gc.enable()
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    result = {
        "passes": len(samples),
        "workspaces": args.workspaces,
        "us_per_pass_median": round(statistics.median(samples), 2),
        "us_per_pass_p99": round(p99, 2),
        "us_per_pass_mean": round(statistics.fmean(samples), 2),
        "states": {k: v // args.rounds for k, v in sorted(states.items())},
        "population_build_s": round(build_s, 2),
        "python": sys.version.split()[0],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
