"""1,000 Workspaces through the HTTP path: the official client, the test API server, the simulated
controllers (time-scaled) and the machine's Kubernetes adapter with 5 workers.

Prints one JSON object: passes per second, the runner's API requests per Workspace lifecycle split by
verb, GETs per pass while the caches are warm, and writes per Workspace against the target
(objects created + one status write per state change + the finalizer).

    python benchmarks/bench_kubernetes.py [--workspaces 1000] [--time-scale 600]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from kubernetes import client as k8s

from workspace_fsm.cli.embedded import EmbeddedCluster
from workspace_fsm.kaito.workspace import read_lifecycle
from workspace_fsm.kaito.model import WorkspaceStatus
from workspace_fsm.cli.run import build_runner


def workspace(i: int) -> dict:
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": f"bench-{i:05d}"},
            "resource": {"instanceType": "Standard_NC24ads_A100_v4",
                         "labelSelector": {"matchLabels": {"apps": f"b{i}"}}},
            "inference": {"preset": {"name": "phi-4-mini-instruct"}}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspaces", type=int, default=1000)
    ap.add_argument("--time-scale", type=float, default=600.0)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args(argv)
    n = args.workspaces

    cluster = EmbeddedCluster(time_scale=args.time_scale)
    cluster.start(Path(tempfile.mkdtemp()) / "kubeconfig")
    adapter, queue, reconciler, runner = build_runner(cluster.api, namespace="default",
                                                      api_request_timeout_s=cluster.request_timeout)
    adapter.start()
    adapter.wait_synced(30)
    runner.start()
    api = k8s.CustomObjectsApi(cluster.api)
    t0 = time.perf_counter()
    for i in range(n):
        api.create_namespaced_custom_object("kaito.sh", "v1beta1", "default", "workspaces", workspace(i))
    print(f"bench_kubernetes: {n} Workspaces created in {time.perf_counter() - t0:.1f}s; waiting for Ready",
          file=sys.stderr, flush=True)

    def ready() -> int:
        items = api.list_namespaced_custom_object("kaito.sh", "v1beta1", "default", "workspaces")["items"]
        return sum(1 for w in items if (w.get("status") or {}).get("state") == "Ready")

    done, last = 0, 0.0
    while done < n and time.perf_counter() - t0 < args.timeout:
        time.sleep(1.0)
        done = ready()
        if time.perf_counter() - last > 10:
            last = time.perf_counter()
            print(f"bench_kubernetes: {done}/{n} Ready after {time.perf_counter() - t0:.0f}s",
                  file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    lifecycle = dict(adapter.requests)
    passes = reconciler.passes

    # Steady state: nudge every Workspace (a label change is an event, a pass, and nothing to do) and count.
    before_req, before_passes = dict(adapter.requests), reconciler.passes
    for i in range(n):
        api.patch_namespaced_custom_object("kaito.sh", "v1beta1", "default", "workspaces", f"bench-{i:05d}",
                                           {"metadata": {"labels": {"nudged": "yes"}}})
    deadline = time.perf_counter() + 60
    while reconciler.passes - before_passes < n and time.perf_counter() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    steady = {k: v - before_req.get(k, 0) for k, v in adapter.requests.items() if v - before_req.get(k, 0)}
    steady_passes = reconciler.passes - before_passes
    runner.stop()
    adapter.stop()

    items = api.list_namespaced_custom_object("kaito.sh", "v1beta1", "default", "workspaces")["items"]
    transitions = sum(len(read_lifecycle(WorkspaceStatus.from_dict(w["status"])).history) for w in items
                      if w.get("status"))
    cluster.stop()

    by_verb: dict[str, int] = {}
    for k, v in lifecycle.items():
        verb = k.split(" ", 1)[0]
        by_verb[verb] = by_verb.get(verb, 0) + v
    writes = sum(v for k, v in lifecycle.items() if k.split(" ", 1)[0] in ("create", "update", "patch", "delete")
                 and not k.endswith("Event"))
    gets = sum(v for k, v in lifecycle.items() if k.startswith("get "))
    # Target per Workspace: NodeClaim + Deployment + its Service and headless Service + finalizer + one status
    # write per state change.
    target_writes = 4 + 1 + transitions / max(1, len(items))
    print(json.dumps({
        "workspaces": n, "ready": done, "wall_s": round(wall, 1), "time_scale": args.time_scale,
        "passes": passes, "passes_per_s": round(passes / wall, 1),
        "requests_per_workspace_by_verb": {k: round(v / n, 3) for k, v in sorted(by_verb.items())},
        "requests_per_workspace": {k: round(v / n, 3) for k, v in sorted(lifecycle.items())},
        "gets_per_pass_lifecycle": round(gets / max(1, passes), 4),
        "steady_state_passes": steady_passes,
        "steady_state_requests": steady,
        "gets_per_pass_steady_state": round(
            sum(v for k, v in steady.items() if k.startswith("get ")) / max(1, steady_passes), 4),
        "writes_per_workspace": round(writes / n, 3),
        "writes_per_workspace_target": round(target_writes, 3),
        "status_writes_per_state_change": round(lifecycle.get("update Workspace/status", 0) / max(1, transitions), 3),
    }))
    return 0 if done == n else 1


if __name__ == "__main__":
    sys.exit(main())
