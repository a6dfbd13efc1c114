"""Soak: minutes of steady Workspace churn against the runner as a separate process; nothing may grow.

It starts the embedded cluster in this process (test API server + simulated Karpenter, device plugin and
workload controllers, time-scaled) and ``workspace-fsm run`` as a child process, so the runner's memory,
threads and file descriptors are measured alone. A seeded driver creates ``--live`` Workspaces at once
(inference with 1-3 nodes, and tuning), then keeps about that many alive, creating new ones, changing specs
(tuning config, inference config) and deleting the oldest, at ``--rate`` operations per second.

Every few seconds it scrapes the runner's ``/metrics`` (RSS, open fds, threads, queue depth, cache sizes),
counts the runner's sockets in ``/proc/<pid>/fd`` and lists what is live in the API server. After the
warm-up it fits least-squares slopes and checks:

- RSS, queue depth, threads and fds stay flat (slope per minute under a stated threshold; runs whose
  steady window is under a minute, such as ``--minutes 0.5``, report slopes without judging them);
- no cache holds more than the live objects it is about (plus a stated allowance for watch lag);
- when the churn stops, every remaining Workspace reaches its goal, deleted ones leave no NodeClaims,
  and the runner's threads and sockets return to their baseline;
- the runner stops cleanly on SIGTERM.

Progress goes to stderr (one line per sample), the JSON report to stdout; the exit status is 1 if a check
failed (2 if the soak could not run at all).

    python benchmarks/soak.py [--minutes 3] [--seed 1] [--live 24] [--rate 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

NS = "default"
INSTANCE = "Standard_NC24ads_A100_v4"
INFERENCE_PRESET = "phi-4-mini-instruct"
#: KAITO sizes a vLLM preset from its GPUs, not from resource.count: on INSTANCE (one A100 80 GiB GPU) these
#: presets need 1, 2 and 3 nodes (its node estimator; tests/test_estimator.py works them out).
PRESET_FOR_NODES = {1: INFERENCE_PRESET, 2: "qwen2.5-coder-32b-instruct", 3: "gpt-oss-120b"}
TUNING_PRESET = "phi-3-mini-128k-instruct"
LABEL_WORKSPACE = "kaito.sh/workspace"  # workspace_fsm.kaito.model.LABEL_WORKSPACE
INFORMERS = ("workspaces", "nodeclaims", "nodes", "deployments", "statefulsets", "jobs")
MIB = 1024 * 1024


# --------------------------------------------------------------------------- thresholds (stated in the report)

THRESHOLDS: dict[str, float] = {
    # Flat means: what is left of the slope over the steady window is noise, not a leak.
    # 1 MiB/min is 1.4 GiB a day. A few minutes in, the allocator is still settling: this is the least
    # a short run can tell apart from noise, and a leak of a few KiB per status write exceeds it.
    "rss_slope_mib_per_min": 1.0,
    "min_steady_window_s": 60.0,  # shorter runs (smoke) report slopes without judging them
    "queue_depth_slope_per_min": 2.0,  # keys/min; the depth follows the live Workspaces, which hover at --live
    "threads_slope_per_min": 0.5,
    "fds_slope_per_min": 0.5,
    # Caches vs the API server: the caches trail the API server by the watch's delay, and the two are read
    # a few milliseconds apart; objects in deletion are live objects (they are listed).
    "cache_allowance": 3,  # objects per cache beyond the most live in the API around the scrape
    # After the churn: back to the baseline taken before it started.
    "threads_over_baseline": 0,
    # The client's pool keeps the connections of calls made concurrently open for reuse (keep-alive), so
    # after the churn there may be up to one idle connection per worker more than before it, plus one: a
    # re-watch or relist can overlap the workers' calls (the first 3-minute run ended at workers + 1, flat).
    # Growth is what a leak looks like, and the slope and the cap below judge it.
    "sockets_over_baseline_per_worker": 1,
    "sockets_over_baseline_extra": 1,
    # At any moment: a watch per informer, a connection per worker, the probe listener and the scrape.
    "sockets_over_informers_plus_workers": 2,
}


# --------------------------------------------------------------------------- pure helpers (tested)


def slope_per_min(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, in value per minute; 0 for fewer than 2 distinct times."""
    if len({t for t, _ in points}) < 2:
        return 0.0
    xs = [t / 60.0 for t, _ in points]
    ys = [float(v) for _, v in points]
    return statistics.linear_regression(xs, ys).slope


def check(name: str, value: float, threshold: float, ok: bool, detail: str = "") -> dict[str, Any]:
    """One line of the verdict: ``ok`` is True/False (None: reported, not judged)."""
    out: dict[str, Any] = {"check": name, "value": round(value, 3) if isinstance(value, float) else value,
                           "threshold": threshold, "ok": bool(ok)}
    if detail:
        out["detail"] = detail
    return out


def cache_excess(samples: Iterable[dict[str, Any]], allowance: int) -> list[tuple[str, float, int, int]]:
    """Every moment a cache held more than the live objects it is about (plus ``allowance``), as
    (cache, sample time, entries, live objects).

    A sample carries ``informer_objects`` (the runner's caches), ``adapter_caches``, ``sim_tracked`` (the
    simulated controllers' bookkeeping) and ``live`` (the most objects of each kind listed in the API server
    just before and just after the scrape)."""
    out = []
    for s in samples:
        live = s["live"]
        bounds: list[tuple[str, int, int]] = []
        for inf in INFORMERS:
            bounds.append((f"informer {inf}", s["informer_objects"].get(inf, 0), live.get(inf, 0)))
        ws = live.get("workspaces", 0)
        caches = s.get("adapter_caches") or {}
        for name in ("overlay", "parsed", "delivered", "own_rv"):
            bounds.append((f"adapter {name}", caches.get(name, 0), ws))
        owned = sum(live.get(k, 0) for k in ("nodeclaims", "deployments", "statefulsets", "jobs"))
        bounds.append(("adapter known", caches.get("known", 0), owned))
        bounds.append(("queue depth", s["queue"]["ready"] + s["queue"]["waiting"] + s["queue"]["processing"], ws))
        for res, n in (s.get("sim_tracked") or {}).items():
            bounds.append((f"simulated controllers {res}", n, live.get(f"all_{res}", live.get(res, 0))))
        for what, have, bound in bounds:
            if have > bound + allowance:
                out.append((what, s["t"], have, bound))
    return out


def summarize_excess(excess: list[tuple[str, float, int, int]]) -> str:
    """One phrase per cache that exceeded its bound: in how many samples, from when, and the worst."""
    by: dict[str, list[tuple[str, float, int, int]]] = {}
    for e in excess:
        by.setdefault(e[0], []).append(e)
    parts = []
    for what, rows in by.items():
        worst = max(rows, key=lambda r: r[2] - r[3])
        parts.append(f"{what}: over in {len(rows)} samples from t={rows[0][1]:.0f}s, worst {worst[2]} entries "
                     f"for {worst[3]} live at t={worst[1]:.0f}s")
    return "; ".join(parts)


def evaluate(samples: list[dict[str, Any]], baseline: dict[str, Any], final: dict[str, Any],
             thresholds: dict[str, float] = THRESHOLDS) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Slopes over the steady samples and the pass/fail checks. Returns (slopes, checks)."""
    steady = [s for s in samples if s["phase"] == "steady"]
    series = {
        "rss_mib": [(s["t"], s["rss"] / MIB) for s in steady],
        "queue_depth": [(s["t"], s["queue"]["ready"] + s["queue"]["waiting"] + s["queue"]["processing"])
                        for s in steady],
        "threads": [(s["t"], s["threads"]) for s in steady],
        "fds": [(s["t"], s["fds"]) for s in steady],
        "sockets": [(s["t"], s["sockets"]) for s in steady],
        "live_workspaces": [(s["t"], s["live"]["workspaces"]) for s in steady],
        # Informational (a bounded history, not checked for flatness).
        "tombstones": [(s["t"], sum((s.get("tombstones") or {}).values())) for s in steady],
    }
    slopes = {f"{k}_per_min": round(slope_per_min(v), 4) for k, v in series.items()}
    t = thresholds
    window = steady[-1]["t"] - steady[0]["t"] if steady else 0.0
    checks = [check("enough steady samples to fit a slope", len(steady), 5, len(steady) >= 5)]
    for key, limit in (("rss_mib_per_min", "rss_slope_mib_per_min"),
                       ("queue_depth_per_min", "queue_depth_slope_per_min"),
                       ("threads_per_min", "threads_slope_per_min"), ("fds_per_min", "fds_slope_per_min")):
        c = check(f"{key.removesuffix('_per_min')} slope per minute (absolute)", slopes[key], t[limit],
                  abs(slopes[key]) <= t[limit])
        if window < t["min_steady_window_s"]:  # a smoke run: the slope is reported, not judged
            c.update(ok=None, detail=f"not judged: the steady window is {window:.0f}s, under "
                                     f"{t['min_steady_window_s']:.0f}s")
        checks.append(c)
    excess = cache_excess(samples + [final], int(t["cache_allowance"]))
    checks.append(check("caches never exceed the live objects (+allowance)", len(excess), 0, not excess,
                        summarize_excess(excess)))
    over = final["threads"] - baseline["threads"]
    checks.append(check("threads after the churn minus baseline", over, t["threads_over_baseline"],
                        over <= t["threads_over_baseline"],
                        f"baseline {baseline['threads']}, final {final['threads']}, "
                        f"max {max(s['threads'] for s in samples)}"))
    workers = final.get("workers_configured") or 0
    over, allowed = final["sockets"] - baseline["sockets"], t["sockets_over_baseline_per_worker"] * workers \
        + t["sockets_over_baseline_extra"]
    checks.append(check("sockets after the churn minus baseline", over, allowed, over <= allowed,
                        f"baseline {baseline['sockets']}, final {final['sockets']}, "
                        f"max {max(s['sockets'] for s in samples)}"))
    cap = len(INFORMERS) + workers + t["sockets_over_informers_plus_workers"]
    most = max(s["sockets"] for s in [baseline, *samples, final])
    checks.append(check("most sockets at any sample (cap: informers + workers + 2)", most, cap, most <= cap))
    workers = final.get("worker_threads")
    checks.append(check("worker threads alive at the end", workers, final.get("workers_configured"),
                        workers == final.get("workers_configured")))
    return slopes, checks


# --------------------------------------------------------------------------- Workspace documents


def inference(name: str, count: int) -> dict[str, Any]:
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name},
            "resource": {"count": count, "instanceType": INSTANCE, "labelSelector": {"matchLabels": {"apps": name}}},
            "inference": {"preset": {"name": PRESET_FOR_NODES[count]}}}


def tuning(name: str) -> dict[str, Any]:
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name},
            "resource": {"instanceType": INSTANCE, "labelSelector": {"matchLabels": {"apps": name}}},
            "tuning": {"preset": {"name": TUNING_PRESET}, "method": "qlora",
                       "input": {"urls": ["https://example.com/data.parquet"]},
                       "output": {"image": "registry.example.com/out:1", "imagePushSecret": "push"}}}


def at_goal(ws: dict[str, Any]) -> bool:
    """Inference Ready / tuning Succeeded, for the Workspace's current generation."""
    meta, status = ws["metadata"], ws.get("status") or {}
    if meta.get("deletionTimestamp"):
        return False
    want = "Succeeded" if "tuning" in ws else "Ready"
    conds = [c for c in status.get("conditions") or [] if c.get("type") == "WorkspaceSucceeded"]
    return (status.get("state") == want and bool(conds)
            and all(c.get("observedGeneration") == meta.get("generation") for c in conds))


# --------------------------------------------------------------------------- the churn


class Churn(threading.Thread):
    """Seeded create/update/delete of Workspaces at a steady rate, keeping about ``live`` of them."""

    def __init__(self, api, rng: random.Random, live: int, rate: float) -> None:
        super().__init__(name="soak-churn", daemon=True)
        from kubernetes import client as k8s

        self.custom = k8s.CustomObjectsApi(api)
        self.rng = rng
        self.target = live
        self.period = 1.0 / rate
        self.stop = threading.Event()
        self.alive: dict[str, str] = {}  # name -> "inference" | "tuning", in creation order
        self.deleted: list[str] = []
        self.created = self.updated = 0
        self.errors: list[str] = []
        self._seq = 0
        self._rev = 0

    def _create(self) -> None:
        name = f"soak-{self._seq:05d}"
        self._seq += 1
        if self.rng.random() < 0.7:
            doc, kind = inference(name, self.rng.randint(1, 3)), "inference"
        else:
            doc, kind = tuning(name), "tuning"
        self.custom.create_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces", doc)
        self.alive[name] = kind
        self.created += 1

    def _update(self) -> None:
        name = self.rng.choice(list(self.alive))
        self._rev += 1
        if self.alive[name] == "tuning":
            patch: dict[str, Any] = {"tuning": {"config": f"soak-config-{self._rev}"}}
        else:
            # KAITO keeps resource.count (immutable) and targetNodeCount: a new inference config rolls it out.
            patch = {"inference": {"config": f"soak-inference-{self._rev}"}}
        self.custom.patch_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces", name, patch)
        self.updated += 1

    def _delete(self) -> None:
        name = next(iter(self.alive))  # the oldest
        self.custom.delete_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces", name)
        del self.alive[name]
        self.deleted.append(name)

    def fill(self) -> None:
        """Create the live set at once, so that the steady churn starts from it rather than ramping up."""
        while len(self.alive) < self.target:
            self._create()

    def step(self) -> None:
        n, slack = len(self.alive), max(2, self.target // 8)
        if n < self.target - slack or not self.alive:
            op = self._create
        elif n > self.target + slack:
            op = self._delete
        else:
            op = self.rng.choices((self._create, self._update, self._delete), weights=(3, 4, 3))[0]
        op()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            try:
                self.step()
            except Exception as exc:  # the API server is ours: any error is worth reporting, not fatal
                self.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            next_at += self.period
            self.stop.wait(max(0.0, next_at - time.monotonic()))


# --------------------------------------------------------------------------- observing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    values: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            values.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value

    def mine(name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """The Workspace lifecycle's samples (the runner may drive others: their samples carry their name)."""
        return {k: v for k, v in values.get(name, {}).items() if dict(k).get("lifecycle", "workspace") == "workspace"}

    def one(name: str) -> float:
        return next(iter(mine(name).values()), 0.0)

    def by(name: str, label: str) -> dict[str, int]:
        return {dict(k)[label]: int(v) for k, v in mine(name).items()}

    queue = by("workspace_fsm_queue_depth", "state")
    return {
        "rss": int(one("process_resident_memory_bytes")), "fds": int(one("process_open_fds")),
        "threads": int(one("workspace_fsm_threads")), "worker_threads": int(one("workspace_fsm_worker_threads")),
        "workers_configured": int(one("workspace_fsm_workers_configured")),
        "queue": {k: queue.get(k, 0) for k in ("ready", "waiting", "processing")},
        "passes": int(one("workspace_fsm_reconcile_passes_total")),
        "watched": int(one("workspace_fsm_workspaces_watched")),
        "informer_objects": by("workspace_fsm_informer_objects", "informer"),
        "tombstones": by("workspace_fsm_informer_tombstones", "informer"),
        "relists": by("workspace_fsm_informer_relists_total", "informer"),
        "watch_errors": by("workspace_fsm_informer_watch_errors_total", "informer"),
        "adapter_caches": by("workspace_fsm_adapter_cache_entries", "cache"),
        "states": {k: v for k, v in by("workspace_fsm_workspaces", "state").items() if v},
    }


def sockets_of(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:  # closed meanwhile
            pass
    return n


class Lister:
    """What is live in the API server, as the runner's informers select it (and all of it, for the
    simulated controllers, which watch without a selector)."""

    def __init__(self, api) -> None:
        from kubernetes import client as k8s

        self.custom = k8s.CustomObjectsApi(api)
        self.core = k8s.CoreV1Api(api)

    def objects(self) -> dict[str, list[dict[str, Any]]]:
        c, sel = self.custom, LABEL_WORKSPACE
        return {
            "workspaces": c.list_cluster_custom_object("kaito.sh", "v1beta1", "workspaces")["items"],
            "all_nodeclaims": c.list_cluster_custom_object("karpenter.sh", "v1", "nodeclaims")["items"],
            "nodes": [n for n in self.core.api_client.sanitize_for_serialization(
                self.core.list_node(label_selector=sel))["items"]],
            "all_deployments": c.list_cluster_custom_object("apps", "v1", "deployments")["items"],
            "all_statefulsets": c.list_cluster_custom_object("apps", "v1", "statefulsets")["items"],
            "all_jobs": c.list_cluster_custom_object("batch", "v1", "jobs")["items"],
        }

    @staticmethod
    def counts(objs: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
        out = {k: len(v) for k, v in objs.items()}
        for res in ("nodeclaims", "deployments", "statefulsets", "jobs"):
            out[res] = sum(1 for o in objs[f"all_{res}"] if LABEL_WORKSPACE in (o["metadata"].get("labels") or {}))
        out["workspaces_deleting"] = sum(1 for w in objs["workspaces"] if w["metadata"].get("deletionTimestamp"))
        return out


def observe(port: int, pid: int, lister: Lister, cluster, t: float, phase: str,
            goal_seen: set[str]) -> dict[str, Any]:
    before = lister.objects()
    s = scrape(port)
    s["sockets"] = sockets_of(pid)
    after = lister.objects()
    a, b = Lister.counts(before), Lister.counts(after)
    s["live"] = {k: max(a[k], b[k]) for k in a}
    s["live_now"] = b
    s["sim_tracked"] = cluster.controllers.tracked()
    s["t"], s["phase"] = round(t, 2), phase
    for ws in after["workspaces"]:
        if at_goal(ws):
            goal_seen.add(ws["metadata"]["name"])
    s["_objects"] = after  # dropped before the report
    return s


def progress(s: dict[str, Any], churn: Churn) -> None:
    q = s["queue"]
    print(f"[soak] t={s['t']:6.1f}s {s['phase']:<7} live={s['live_now']['workspaces']:3d} "
          f"(deleting {s['live_now']['workspaces_deleting']}) created={churn.created} updated={churn.updated} "
          f"deleted={len(churn.deleted)} | runner rss={s['rss'] / MIB:6.1f}MiB fds={s['fds']} sockets={s['sockets']} "
          f"threads={s['threads']} queue={q['ready']}/{q['waiting']}/{q['processing']} (ready/waiting/processing) "
          f"passes={s['passes']} nodeclaims={s['informer_objects'].get('nodeclaims', 0)}/{s['live_now']['nodeclaims']} "
          f"(cache/API)", file=sys.stderr, flush=True)


def settled(objs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Why the cluster is not settled yet (empty: every Workspace at goal, nothing left of deleted ones)."""
    why = []
    live = {w["metadata"]["name"] for w in objs["workspaces"]}
    for w in objs["workspaces"]:
        if not at_goal(w):
            why.append(f"{w['metadata']['name']} not at goal (state {(w.get('status') or {}).get('state')})")
    for c in objs["all_nodeclaims"]:
        owner = (c["metadata"].get("labels") or {}).get(LABEL_WORKSPACE)
        if owner not in live:
            why.append(f"NodeClaim {c['metadata']['name']} of deleted Workspace {owner}")
    return why


def nodeclaims_per_workspace(objs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Remaining Workspaces whose NodeClaims do not match status.targetNodeCount."""
    per: dict[str, int] = {}
    for c in objs["all_nodeclaims"]:
        owner = (c["metadata"].get("labels") or {}).get(LABEL_WORKSPACE)
        per[owner] = per.get(owner, 0) + 1
    return [f"{w['metadata']['name']}: {per.get(w['metadata']['name'], 0)} NodeClaims, target "
            f"{(w.get('status') or {}).get('targetNodeCount')}" for w in objs["workspaces"]
            if per.get(w["metadata"]["name"], 0) != (w.get("status") or {}).get("targetNodeCount")]


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=3.0, help="churn duration (default 3)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--live", type=int, default=24, help="Workspaces kept alive (default 24)")
    ap.add_argument("--rate", type=float, default=2.0, help="create/update/delete operations per second (default 2)")
    ap.add_argument("--workers", type=int, default=5, help="the runner's --workers (default 5)")
    ap.add_argument("--time-scale", type=float, default=300.0, help="simulated cluster speed-up (default 300)")
    ap.add_argument("--sample-every", type=float, default=None,
                    help="seconds between samples (default 5; less for runs under a minute)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds of churn before slopes are fitted (default a quarter of the run)")
    ap.add_argument("--drain-timeout", type=float, default=120.0,
                    help="seconds for every Workspace to reach its goal after the churn (default 120)")
    args = ap.parse_args(argv)
    duration = args.minutes * 60.0
    every = args.sample_every or max(1.0, min(5.0, duration / 12))
    warmup = duration / 4 if args.warmup is None else args.warmup

    from workspace_fsm.adapters.kubernetes.client import api_client
    from workspace_fsm.cli.embedded import EmbeddedCluster

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="workspace-fsm-soak-"))
    cluster = EmbeddedCluster(time_scale=args.time_scale, seed=args.seed)
    kubeconfig = cluster.start(tmp / "kubeconfig")
    lister = Lister(api_client(str(kubeconfig), user_agent="soak-observer"))
    port = free_port()
    log_path = tmp / "runner.log"
    cmd = [sys.executable, "-m", "workspace_fsm.cli", "run", "--kubeconfig", str(kubeconfig), "--health-port",
           str(port), "--workers", str(args.workers), "--log-level", "warning"]
    log_file = open(log_path, "w")
    runner = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    print(f"[soak] embedded cluster at {cluster.server.url}; runner pid {runner.pid}, metrics on :{port}, "
          f"log {log_path}", file=sys.stderr, flush=True)
    churn = Churn(cluster.api, random.Random(args.seed), args.live, args.rate)
    samples: list[dict[str, Any]] = []
    goal_seen: set[str] = set()
    report: dict[str, Any] = {"config": {"minutes": args.minutes, "seed": args.seed, "live": args.live,
                                         "rate_ops_per_s": args.rate, "workers": args.workers,
                                         "time_scale": args.time_scale, "sample_every_s": every,
                                         "warmup_s": warmup, "drain_timeout_s": args.drain_timeout},
                              "thresholds": THRESHOLDS}
    try:
        deadline = time.monotonic() + 30
        while True:
            if runner.poll() is not None:
                raise RuntimeError(f"the runner exited with {runner.returncode}: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the runner was not ready within 30 s")
            time.sleep(0.2)
        time.sleep(1.0)  # let the startup's transient threads end
        baseline = observe(port, runner.pid, lister, cluster, 0.0, "before", goal_seen)
        progress(baseline, churn)

        churn.fill()
        t0 = time.monotonic()
        churn.start()
        next_sample = t0 + every
        while (now := time.monotonic()) < t0 + duration:
            time.sleep(max(0.0, next_sample - now))
            next_sample += every
            t = time.monotonic() - t0
            if runner.poll() is not None:
                raise RuntimeError(f"the runner exited with {runner.returncode} during the churn")
            s = observe(port, runner.pid, lister, cluster, t, "warmup" if t < warmup else "steady", goal_seen)
            samples.append(s)
            progress(s, churn)
        churn.stop.set()
        churn.join(10)
        churn_s = time.monotonic() - t0

        # Drain: everything left reaches its goal, nothing is left of what was deleted.
        drain_deadline = time.monotonic() + args.drain_timeout
        why: list[str] = ["not looked yet"]
        while time.monotonic() < drain_deadline:
            s = observe(port, runner.pid, lister, cluster, time.monotonic() - t0, "drain", goal_seen)
            samples.append(s)
            progress(s, churn)
            why = settled(s["_objects"])
            if not why:
                break
            time.sleep(min(every, 2.0))
        drain_s = time.monotonic() - t0 - churn_s
        time.sleep(2.0)  # passes of the last events finish; idle keep-alive connections are what remains
        final = observe(port, runner.pid, lister, cluster, time.monotonic() - t0, "final", goal_seen)
        progress(final, churn)
        objs = final["_objects"]

        slopes, checks = evaluate(samples, baseline, final)
        remaining = [w["metadata"]["name"] for w in objs["workspaces"]]
        not_at_goal = [n for n in remaining if not at_goal(next(w for w in objs["workspaces"]
                                                                 if w["metadata"]["name"] == n))]
        checks.append(check("remaining Workspaces at their goal after the churn", len(remaining) - len(not_at_goal),
                            len(remaining), not why and not not_at_goal, "; ".join(why[:5])))
        orphans = [c["metadata"]["name"] for c in objs["all_nodeclaims"]
                   if (c["metadata"].get("labels") or {}).get(LABEL_WORKSPACE) not in set(remaining)]
        checks.append(check("NodeClaims left by deleted Workspaces", len(orphans), 0, not orphans,
                            ", ".join(orphans[:5])))
        gone = set(churn.deleted) & set(remaining)
        checks.append(check("deleted Workspaces still in the API server", len(gone), 0, not gone,
                            ", ".join(sorted(gone)[:5])))
        mismatch = nodeclaims_per_workspace(objs)
        checks.append(check("remaining Workspaces with NodeClaims != targetNodeCount", len(mismatch), 0, not mismatch,
                            "; ".join(mismatch[:5])))
        checks.append(check("queue empty of ready and processing keys at the end",
                            final["queue"]["ready"] + final["queue"]["processing"], 0,
                            final["queue"]["ready"] + final["queue"]["processing"] == 0))
        checks.append(check("driver errors (API calls of the churn that failed)", len(churn.errors), 0,
                            not churn.errors, "; ".join(churn.errors[:3])))

        runner.send_signal(signal.SIGTERM)
        t_stop = time.monotonic()
        try:
            code = runner.wait(30)
        except subprocess.TimeoutExpired:
            code = None
        stop_s = time.monotonic() - t_stop
        checks.append(check("runner exit status after SIGTERM", code if code is not None else -1, 0, code == 0,
                            f"stopped in {stop_s:.1f}s"))
        log_file.flush()
        log_lines = log_path.read_text(errors="replace").splitlines()
        warnings = [ln for ln in log_lines if " WARNING " in ln or " ERROR " in ln or "Traceback" in ln]

        steady = [s for s in samples if s["phase"] == "steady"]

        def span(key: str) -> dict[str, Any]:
            vals = [s[key] for s in samples]
            return {"baseline": baseline[key], "min": min(vals), "max": max(vals), "final": final[key]}

        report.update({
            "ok": all(c["ok"] is not False for c in checks),
            "runtime_s": round(time.monotonic() - started, 1),
            "churn_s": round(churn_s, 1), "drain_s": round(drain_s, 1),
            "workspaces": {"created": churn.created, "updated": churn.updated, "deleted": len(churn.deleted),
                           "remaining": len(remaining),
                           "reached_goal": len(goal_seen),
                           "reached_goal_of_created": f"{len(goal_seen & set(_names(churn)))}/{churn.created}"},
            "slopes": slopes,
            "maxima": {
                "rss_mib": round(max(s["rss"] for s in samples) / MIB, 1),
                "queue_depth": max(sum(s["queue"].values()) for s in samples),
                "queue_ready": max(s["queue"]["ready"] for s in samples),
                "live_workspaces": max(s["live_now"]["workspaces"] for s in samples),
                "informer_objects": {k: max(s["informer_objects"].get(k, 0) for s in samples) for k in INFORMERS},
                "adapter_caches": {k: max(s["adapter_caches"].get(k, 0) for s in samples)
                                   for k in baseline["adapter_caches"]},
                "tombstones": {k: max(s["tombstones"].get(k, 0) for s in samples) for k in INFORMERS},
                "sim_tracked": {k: max((s["sim_tracked"].get(k, 0) for s in samples), default=0)
                                for k in ("nodeclaims", "deployments", "statefulsets", "jobs")},
            },
            "runner": {"rss_mib": {k: round(v / MIB, 1) for k, v in span("rss").items()},
                       "threads": span("threads"), "fds": span("fds"), "sockets": span("sockets"),
                       "passes": final["passes"], "passes_per_s_steady": _rate(steady, "passes"),
                       "relists": final["relists"], "watch_errors": final["watch_errors"],
                       "log_warnings": len(warnings), "log_warning_examples": warnings[:5]},
            "bounded_histories": _history_bounds(slopes),
            "checks": checks,
            "samples": [_compact(s) for s in [baseline, *samples, final]],
        })
        print(json.dumps(report, indent=1), flush=True)
        failed = [c["check"] for c in checks if c["ok"] is False]
        print(f"[soak] {'PASS' if not failed else 'FAIL: ' + '; '.join(failed)} "
              f"({report['runtime_s']:.0f}s)", file=sys.stderr, flush=True)
        return 0 if not failed else 1
    except Exception as exc:
        report.update({"ok": False, "error": f"{type(exc).__name__}: {exc}",
                       "samples": [_compact(s) for s in samples]})
        print(json.dumps(report, indent=1), flush=True)
        print(f"[soak] could not complete: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        churn.stop.set()
        if runner.poll() is None:
            runner.send_signal(signal.SIGTERM)
            try:
                runner.wait(20)
            except subprocess.TimeoutExpired:
                runner.kill()
                runner.wait(5)
        log_file.close()
        cluster.stop()


def _history_bounds(slopes: dict[str, float]) -> dict[str, Any]:
    """The caches that remember the past rather than the live objects: their caps and how fast they fill."""
    from workspace_fsm.adapters.kubernetes.informer import Informer

    out: dict[str, Any] = {"tombstones_cap_per_informer": Informer.TOMBSTONES,
                           "tombstones_growth_per_min": slopes.get("tombstones_per_min")}
    return out


def _names(churn: Churn) -> list[str]:
    return [f"soak-{i:05d}" for i in range(churn.created)]


def _rate(samples: list[dict[str, Any]], key: str) -> float:
    if len(samples) < 2 or samples[-1]["t"] == samples[0]["t"]:
        return 0.0
    return round((samples[-1][key] - samples[0][key]) / (samples[-1]["t"] - samples[0]["t"]), 2)


def _compact(s: dict[str, Any]) -> dict[str, Any]:
    """One sample for the report: the numbers, not the listed objects."""
    return {"t": s["t"], "phase": s["phase"], "rss_mib": round(s["rss"] / MIB, 2), "fds": s["fds"],
            "sockets": s["sockets"], "threads": s["threads"], "queue": s["queue"], "passes": s["passes"],
            "watched": s["watched"], "live": {k: v for k, v in s["live_now"].items() if not k.startswith("all_")},
            "informer_objects": s["informer_objects"], "adapter_caches": s["adapter_caches"],
            "tombstones": s["tombstones"], "sim_tracked": s["sim_tracked"],
            "states": s["states"]}


if __name__ == "__main__":
    sys.exit(main())
