"""Reliability runs: the runner as a separate process against the test API server and the simulated
cluster, killed with SIGKILL and served API faults, with the invariants checked from the API server's side.

>>> report = ChaosRun(ChaosConfig(seed=7, inference=14, tuning=6, request_kills=6)).run()
>>> report.ok, report.violations

What a run does, all of it drawn from ``seed``:

- creates Workspaces (inference with 1-3 nodes, tuning), then, while the runner works, changes some specs
  (a tuning spec change replaces the Job; an inference one rolls the workload) and deletes others;
- kills the runner process with SIGKILL at chosen API calls, in one of three ways: *between two calls*
  (the next request is never sent), *in flight* (sent, applied, unanswered) and *in a status write*
  (the status PUT is stored, the runner never hears back), plus at random moments in between; a supervisor
  starts it again each time, as a Deployment would;
- optionally serves the runner (only the runner: faults match its User-Agent) 409s, 500s, 429s with
  Retry-After, dropped watches, forced 410s, latency spikes and a watch cache that lags by seconds.

The invariants are checked on every change the API server stores (a listener on its store, so no
transient state escapes between two samples) and on every status write the runner makes:

- no Workspace ever has more NodeClaims than its target;
- no two Jobs of one Workspace exist at once, and nothing (NodeClaim, workload, Job of a revision) is
  created twice;
- no workload or Job is created before the Workspace's nodes are Ready with GPU capacity;
- every status field the runner writes is stored as written (KAITO's CRD, with pruning, is installed),
  and the machine's record is never lost or rolled back;
- a 429's Retry-After is honoured: no request for that Workspace comes sooner;
- at the end every Workspace is at its goal for its current generation (Ready; Succeeded; or Failed with a
  specific reason its Job explains), a deleted one is gone with its finalizer and left no NodeClaims, and
  nothing is orphaned.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..model import ANNOTATION_REVISION, LABEL_WORKSPACE as LABEL_WS, LABEL_WORKSPACE_NAMESPACE as LABEL_NS
from ..persist import LIFECYCLE_CONDITION as LIFECYCLE

log = logging.getLogger("workspace_fsm.chaos")

RUNNER_AGENT = "workspace-fsm/"  # the runner's User-Agent prefix (adapters/kubernetes/client.py)
USER_AGENT = "reliability-user/1"
NS = "default"
INSTANCE = "Standard_NC24ads_A100_v4"
# "create-held": the runner is killed as it sends a NodeClaim create, and the API server holds that create
# until just before its request timeout, then applies it: after the next runner has looked for the name.
KILL_MODES = ("between-calls", "in-flight", "in-status-write", "create-held")
NAMED_VERBS = frozenset({"get", "update", "patch", "delete"})
MAX_LISTED = 50  # violations listed in full; all are counted


@dataclass(frozen=True)
class FaultRates:
    """API faults served to the runner, as shares of its requests (0 = off)."""

    conflict: float = 0.0  # writes answered 409
    error: float = 0.0  # requests answered 500
    throttle: float = 0.0  # requests answered 429 with Retry-After
    retry_after: int = 1
    drop_watch: float = 0.0  # watches cut after about a second (half of them abruptly)
    compaction: float = 0.0  # watch requests that compact the history first: 410 Gone, relist
    latency: float = 0.0  # requests delayed by latency_s
    latency_s: float = 1.0
    lag_s: float = 0.0  # the runner's watches deliver every event this many seconds late

    def any(self) -> bool:
        return any(v for k, v in asdict(self).items() if k not in ("retry_after", "latency_s"))


@dataclass(frozen=True)
class ChaosConfig:
    seed: int = 1
    inference: int = 14
    tuning: int = 6
    spec_changes: int = 4
    deletions: int = 3
    request_kills: int = 6  # SIGKILLs at chosen API calls
    timer_kills: int = 2  # SIGKILLs at random moments
    faults: FaultRates = field(default_factory=FaultRates)
    job_failure_rate: float = 0.0  # share of tuning Jobs the simulated cluster fails for good
    time_scale: float = 300.0  # the simulated cluster's speed-up (a 240 s NodeClaim takes 0.8 s)
    workers: int = 5
    action_window_s: float = 8.0  # user actions and kills happen in this window after the start
    settle_timeout_s: float = 180.0
    # What the runner is told of the API server's request timeout (--api-request-timeout), as an operator
    # tells it theirs. The test API server applies a request within its injected latency plus scheduling
    # (and a held create just inside it), so the default is that latency + 8 s; the server enforces it.
    # Set 60 to run with the default of a real cluster.
    api_request_timeout_s: float | None = None
    workdir: str | None = None  # runner logs go here (default: a temporary directory)

    def request_timeout(self) -> float:
        if self.api_request_timeout_s is not None:
            return self.api_request_timeout_s
        return (self.faults.latency_s if self.faults.latency else 0.0) + 8.0  # the server enforces it too


@dataclass
class ChaosReport:
    config: dict[str, Any]
    workspaces: int = 0
    spec_changes: int = 0
    deletions: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    runner_starts: int = 0
    unexpected_exits: int = 0
    runner_tracebacks: int = 0
    faults_injected: dict[str, int] = field(default_factory=dict)
    runner_requests: int = 0
    status_writes_checked: int = 0
    events_checked: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    nodeclaims_over_target_max: int = 0
    duplicates: int = 0
    lost: int = 0
    orphans: int = 0
    early_retries: int = 0
    violations: list[str] = field(default_factory=list)
    violation_count: int = 0
    settled: bool = False
    stuck: list[str] = field(default_factory=list)
    time_to_goal_s: dict[str, float] = field(default_factory=dict)
    makespan_s: float = 0.0
    wall_s: float = 0.0
    logs: str = ""

    @property
    def ok(self) -> bool:
        return self.settled and self.violation_count == 0 and self.unexpected_exits == 0 \
            and self.runner_tracebacks == 0 and self.lost == 0 and self.duplicates == 0 and self.orphans == 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# --------------------------------------------------------------------------- documents


def inference_doc(name: str, count: int) -> dict[str, Any]:
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name},
            "resource": {"count": count, "instanceType": INSTANCE, "labelSelector": {"matchLabels": {"apps": name}}},
            "inference": {"preset": {"name": "phi-4-mini-instruct"}}}


def tuning_doc(name: str) -> dict[str, Any]:
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name},
            "resource": {"instanceType": INSTANCE, "labelSelector": {"matchLabels": {"apps": name}}},
            "tuning": {"preset": {"name": "phi-3-mini-128k-instruct"}, "method": "qlora",
                       "input": {"urls": ["https://example.com/data.parquet"]},
                       "output": {"image": "registry.example.com/out:1", "imagePushSecret": "push"}}}


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    conds = (obj.get("status") or {}).get("conditions") or []
    return {c.get("type"): c for c in conds if isinstance(c, dict)}


def _record(obj: dict[str, Any]) -> dict[str, Any] | None:
    c = _conditions(obj).get(LIFECYCLE)
    if c is None:
        return None
    try:
        rec = json.loads(c.get("message") or "")
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def _missing(written: Any, stored: Any, path: str = "status") -> str | None:
    """The first place where something written is not stored as written (None: all of it is)."""
    if isinstance(written, dict):
        if not isinstance(stored, dict):
            return path
        for k, v in written.items():
            if v is None:
                continue
            if k not in stored:
                return f"{path}.{k}"
            miss = _missing(v, stored[k], f"{path}.{k}")
            if miss:
                return miss
        return None
    if isinstance(written, list):
        if not isinstance(stored, list) or len(stored) != len(written):
            return path
        for i, (a, b) in enumerate(zip(written, stored)):
            miss = _missing(a, b, f"{path}[{i}]")
            if miss:
                return miss
        return None
    return None if written == stored else path


# --------------------------------------------------------------------------- invariants


@dataclass
class _Ws:
    key: str
    kind: str  # inference | tuning
    target: int
    created_at: float
    generation: int = 1
    goal_at: dict[int, float] = field(default_factory=dict)
    outcome: str = ""  # Ready | Succeeded | Failed:<reason>
    changed_at: float | None = None
    delete_requested: float | None = None
    gone_at: float | None = None


class Invariants:
    """Checks every change the API server stores. Called by the store, under its lock: kept cheap."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ws: dict[str, _Ws] = {}
        self.claims: dict[str, str] = {}  # NodeClaim name -> Workspace key
        self.claims_of: dict[str, set[str]] = {}
        self.claim_ready: dict[str, bool] = {}
        self.claim_node: dict[str, str] = {}
        self.node_gpu: dict[str, bool] = {}
        self.jobs_of: dict[str, set[str]] = {}
        self.job_failed: dict[str, str] = {}  # Workspace key -> why its current Job failed for good
        self.creations: Counter = Counter()  # (kind, owner, name, revision) -> ADDED count
        self.last_ws: dict[str, dict[str, Any]] = {}
        self.violations: list[str] = []
        self.count = 0
        self.over_target_max = 0
        self.duplicates = 0
        self.lost = 0
        self.events = 0
        self.status_writes = 0

    def violate(self, what: str) -> None:
        self.count += 1
        if len(self.violations) < MAX_LISTED:
            self.violations.append(what)
        log.error("invariant violated: %s", what)

    def expect(self, key: str, kind: str, target: int) -> None:
        with self.lock:
            self.ws[key] = _Ws(key, kind, target, time.monotonic())

    # ------------------------------------------------------------------ the store's listener

    def on_event(self, ev: Any) -> None:
        group, plural = ev.resource
        with self.lock:
            self.events += 1
            try:
                if plural == "workspaces":
                    self._workspace(ev)
                elif plural == "nodeclaims":
                    self._nodeclaim(ev)
                elif plural == "nodes":
                    self._node(ev)
                elif plural in ("deployments", "statefulsets", "jobs") and group in ("apps", "batch"):
                    self._workload(ev, plural)
            except Exception as exc:  # pragma: no cover - a bug in the checker must be seen, not hide others
                self.violate(f"the invariant checker failed on a {plural} event: {type(exc).__name__}: {exc}")

    def _owner(self, obj: dict[str, Any]) -> str | None:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if LABEL_WS in labels:
            return f"{labels.get(LABEL_NS, '')}/{labels[LABEL_WS]}"
        return None

    def _workspace(self, ev: Any) -> None:
        obj = ev.object
        meta = obj.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        w = self.ws.get(key)
        if w is None:
            return
        now = ev.at
        if ev.type == "DELETED":
            w.gone_at = now
            self.last_ws.pop(key, None)
            return
        prev = ev.previous
        if prev is not None:
            before, after = _record(prev), _record(obj)
            if before is not None and after is None:
                self.lost += 1
                self.violate(f"{key}: the machine's record disappeared from status (rv {meta.get('resourceVersion')})")
            elif before is not None and after is not None:
                if int(after.get("seq", 0)) < int(before.get("seq", 0)):
                    self.lost += 1
                    self.violate(f"{key}: the record's NodeClaim sequence went back from {before.get('seq')} "
                                 f"to {after.get('seq')} (a stale write)")
                if int(after.get("gen", 0)) < int(before.get("gen", 0)):
                    self.lost += 1
                    self.violate(f"{key}: the record's generation went back from {before.get('gen')} to {after.get('gen')}")
        self.last_ws[key] = obj
        gen = int(meta.get("generation") or 1)
        if gen != w.generation:
            w.generation = gen
        status = obj.get("status") or {}
        cond = _conditions(obj).get("WorkspaceSucceeded")
        if cond is None or cond.get("observedGeneration") != gen or gen in w.goal_at:
            return
        state = status.get("state")
        if w.kind == "inference" and state == "Ready" and cond.get("status") == "True":
            w.goal_at[gen], w.outcome = now, "Ready"
        elif w.kind == "tuning" and state == "Succeeded" and cond.get("status") == "True":
            w.goal_at[gen], w.outcome = now, "Succeeded"
        elif w.kind == "tuning" and state == "Failed" and cond.get("status") == "False":
            w.goal_at[gen], w.outcome = now, f"Failed:{cond.get('reason')}"

    def _nodeclaim(self, ev: Any) -> None:
        obj = ev.object
        name = (obj.get("metadata") or {}).get("name", "")
        key = self._owner(obj)
        if key is None:
            return
        if ev.type == "DELETED":
            self.claims.pop(name, None)
            self.claims_of.get(key, set()).discard(name)
            self.claim_ready.pop(name, None)
            self.claim_node.pop(name, None)
            return
        self.claims[name] = key
        mine = self.claims_of.setdefault(key, set())
        if ev.type == "ADDED":
            self.creations[("NodeClaim", key, name, "")] += 1
            if self.creations[("NodeClaim", key, name, "")] > 1:
                self.duplicates += 1
                self.violate(f"{key}: NodeClaim {name} was created a second time (a reused name)")
        mine.add(name)
        w = self.ws.get(key)
        if w is not None and len(mine) > w.target:
            self.over_target_max = max(self.over_target_max, len(mine) - w.target)
            self.violate(f"{key}: {len(mine)} NodeClaims exist, target {w.target}: {sorted(mine)}")
        self.claim_ready[name] = _conditions(obj).get("Ready", {}).get("status") == "True"
        node = (obj.get("status") or {}).get("nodeName")
        if node:
            self.claim_node[name] = node

    def _node(self, ev: Any) -> None:
        obj = ev.object
        name = (obj.get("metadata") or {}).get("name", "")
        if ev.type == "DELETED":
            self.node_gpu.pop(name, None)
            return
        cap = ((obj.get("status") or {}).get("capacity") or {}).get("nvidia.com/gpu")
        ready = _conditions(obj).get("Ready", {}).get("status") == "True"
        try:
            self.node_gpu[name] = ready and int(cap or 0) > 0
        except (TypeError, ValueError):
            self.node_gpu[name] = False

    def _workload(self, ev: Any, plural: str) -> None:
        obj = ev.object
        meta = obj.get("metadata") or {}
        key = self._owner(obj)
        if key is None:
            return
        name = meta.get("name", "")
        if plural == "jobs":
            jobs = self.jobs_of.setdefault(key, set())
            if ev.type == "DELETED":
                jobs.discard(name)
                return
            jobs.add(name)
            if len(jobs) > 1:
                self.violate(f"{key}: {len(jobs)} Jobs exist at once: {sorted(jobs)}")
            failed = _conditions(obj).get("Failed", {})
            if failed.get("status") == "True":
                self.job_failed[key] = str(failed.get("reason") or "")
            else:
                self.job_failed.pop(key, None)
        if ev.type != "ADDED":
            return
        revision = (meta.get("annotations") or {}).get(ANNOTATION_REVISION, "")
        owner = next((r.get("uid") for r in meta.get("ownerReferences") or []), key)
        ident = (plural, owner, name, revision)
        self.creations[ident] += 1
        if self.creations[ident] > 1:
            self.duplicates += 1
            self.violate(f"{key}: {plural[:-1]} {name} of revision {revision or '?'} was created a second time")
        w = self.ws.get(key)
        if w is None:
            return
        ready = [c for c in self.claims_of.get(key, ()) if self.claim_ready.get(c)
                 and self.node_gpu.get(self.claim_node.get(c, ""), False)]
        if len(ready) < w.target:
            self.violate(f"{key}: {plural[:-1]} {name} created with {len(ready)} of {w.target} nodes Ready "
                         f"with GPU capacity")

    # ------------------------------------------------------------------ the runner's status writes

    def on_status_write(self, req: Any) -> None:
        """An intercept after each status write of the runner, before it hears back."""
        if req.status_code != 200:
            return
        try:
            written = json.loads(req.body).get("status") or {}
        except (ValueError, AttributeError):
            return
        key = f"{req.namespace}/{req.name}"
        with self.lock:
            self.status_writes += 1
            stored = self.last_ws.get(key)
            if stored is None:
                return
            miss = _missing(written, stored.get("status") or {})
            if miss is not None:
                self.lost += 1
                self.violate(f"{key}: status field {miss} written by the runner was not stored as written")


# --------------------------------------------------------------------------- the runner process


class Supervisor(threading.Thread):
    """Starts the runner, and starts it again whenever it dies (as a Deployment's ReplicaSet would)."""

    def __init__(self, kubeconfig: Path, workdir: Path, workers: int, api_request_timeout_s: float = 60.0) -> None:
        super().__init__(name="runner-supervisor", daemon=True)
        self.cmd = [sys.executable, "-m", "workspace_fsm.cli", "run", "--kubeconfig", str(kubeconfig),
                    "--health-port", "0", "--log-level", "warning", "--workers", str(workers),
                    "--api-request-timeout", f"{api_request_timeout_s:g}"]
        self.workdir = workdir
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.killed: set[int] = set()
        self.starts = 0
        self.unexpected: list[str] = []
        self.stopping = threading.Event()
        self.on_start: list[Any] = []

    def run(self) -> None:
        while not self.stopping.is_set():
            log_path = self.workdir / f"runner-{self.starts:03d}.log"
            with self.lock:
                if self.stopping.is_set():
                    return
                with open(log_path, "w") as out:
                    self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT)
                self.starts += 1
            for cb in self.on_start:
                cb()
            code = self.proc.wait()
            if self.proc.pid not in self.killed and not self.stopping.is_set():
                self.unexpected.append(f"runner exited with code {code}; log: {log_path}")
                log.error("the runner exited by itself with code %s; see %s", code, log_path)

    def kill(self) -> bool:
        with self.lock:
            p = self.proc
            # A process already killed counts once, even before it is reaped (poll() may still say running).
            if p is None or p.pid in self.killed or p.poll() is not None or self.stopping.is_set():
                return False
            self.killed.add(p.pid)
            os.kill(p.pid, signal.SIGKILL)
        p.wait()
        return True

    def stop(self) -> None:
        with self.lock:
            self.stopping.set()
            p = self.proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                self.unexpected.append("the runner did not stop within 20 s of SIGTERM")
        self.join(5)


# --------------------------------------------------------------------------- the run


class ChaosRun:
    def __init__(self, config: ChaosConfig, *, progress: Any = None) -> None:
        self.cfg = config
        self.rng = random.Random(config.seed)
        self.inv = Invariants()
        self.progress = progress or (lambda msg: None)
        self.kills: Counter = Counter()
        self.requests = 0
        self._kill_points: list[tuple[int, str]] = []
        self._armed_status_kill = False
        self._armed_create_kill = False
        self._throttled: dict[str, float] = {}  # Workspace key -> not before (monotonic)
        self.early_retries = 0
        self._req_lock = threading.Lock()
        self.rules: dict[str, list[Any]] = {}

    # ------------------------------------------------------------------ request hooks

    def _ws_of(self, req: Any) -> str | None:
        if req.verb not in NAMED_VERBS or not req.name:
            return None
        if req.resource in ("workspaces", "jobs", "deployments", "statefulsets"):
            return f"{req.namespace}/{req.name}"
        if req.resource == "nodeclaims":
            return self.inv.claims.get(req.name)
        return None

    def _before(self, req: Any) -> str | None:
        """Every request of the runner but watches: count it, check Retry-After, maybe kill it here."""
        if req.verb == "watch":
            return None
        key = self._ws_of(req)
        kill = None
        with self._req_lock:
            self.requests += 1
            if key is not None:
                until = self._throttled.get(key)
                if until is not None:
                    if time.monotonic() < until:
                        self.early_retries += 1
                        with self.inv.lock:
                            self.inv.violate(f"{key}: {req.verb} {req.resource_path} {req.name} came "
                                             f"{until - time.monotonic():.2f}s before the Retry-After it was given")
                    else:
                        del self._throttled[key]
            while self._kill_points and self._kill_points[0][0] <= self.requests:
                _, mode = self._kill_points.pop(0)
                if mode == "in-status-write":
                    self._armed_status_kill = True
                elif mode == "create-held":
                    self._armed_create_kill = True
                elif kill is None:
                    kill = mode
            if kill is None and self._armed_create_kill and req.verb == "create" and req.resource == "nodeclaims":
                self._armed_create_kill = False
                kill = "create-held"
        if kill is not None and self.sup.kill():
            self.kills[kill] += 1
            if kill == "create-held":
                # Applied just inside the server's request timeout (which it enforces): as late as a real
                # server may apply a dead client's request, and after the next runner has observed.
                time.sleep(max(0.0, self.cfg.request_timeout() - 1.0))
            return "abort" if kill == "between-calls" else None
        return None

    def _after_status(self, req: Any) -> str | None:
        self.inv.on_status_write(req)
        with self._req_lock:
            armed, self._armed_status_kill = self._armed_status_kill, False
        if armed and req.status_code == 200 and self.sup.kill():
            self.kills["in-status-write"] += 1
            return "abort"
        if armed:
            with self._req_lock:
                self._armed_status_kill = True  # not a stored write: wait for the next one
        return None

    def _throttle_fired(self, req: Any) -> None:
        key = self._ws_of(req)
        if key is not None:
            with self._req_lock:
                self._throttled[key] = time.monotonic() + self.cfg.faults.retry_after

    def _runner_started(self) -> None:
        with self._req_lock:
            self._throttled.clear()  # a new process was never told to wait

    # ------------------------------------------------------------------ setup

    def _install_faults(self, server: Any) -> None:
        f, seed, ua = self.cfg.faults, self.cfg.seed, RUNNER_AGENT
        faults = server.faults
        calls = ("get", "list", "create", "update", "patch", "delete")
        if f.conflict:
            self.rules["conflict"] = [faults.conflict(rate=f.conflict, seed=seed + 1, user_agent=ua)]
        if f.error:
            self.rules["error 500"] = [faults.error(500, verbs=calls + ("watch",), rate=f.error, seed=seed + 2,
                                                    user_agent=ua)]
        if f.throttle:
            rule = faults.throttle(f.retry_after, verbs=calls, rate=f.throttle, seed=seed + 3, user_agent=ua)
            rule.on_fire = self._throttle_fired
            self.rules["429 Retry-After"] = [rule]
        if f.drop_watch:
            self.rules["dropped watch"] = [
                faults.drop_watches(after_seconds=1.0, rate=f.drop_watch / 2, seed=seed + 4, user_agent=ua),
                faults.drop_watches(after_seconds=1.5, abrupt=True, rate=f.drop_watch / 2, seed=seed + 5,
                                    user_agent=ua)]
        if f.compaction:
            self.rules["410 compaction"] = [faults.compaction(rate=f.compaction, seed=seed + 6, user_agent=ua)]
        if f.latency:
            self.rules["latency spike"] = [faults.latency(f.latency_s, verbs=calls, rate=f.latency, seed=seed + 7,
                                                          user_agent=ua)]
        if f.lag_s:
            self.rules["watch lag"] = [faults.watch_lag(f.lag_s, user_agent=ua)]

    def _plan_kills(self, est_requests: int) -> None:
        points = sorted(self.rng.randint(8, max(9, est_requests)) for _ in range(self.cfg.request_kills))
        self._kill_points = [(p, KILL_MODES[i % len(KILL_MODES)]) for i, p in enumerate(points)]
        self.rng.shuffle(self._kill_points)
        self._kill_points.sort(key=lambda kp: kp[0])

    def _plan_actions(self, names: list[str]) -> list[tuple[float, str, str]]:
        window = self.cfg.action_window_s
        pool = list(names)
        self.rng.shuffle(pool)
        deleted = pool[:self.cfg.deletions]
        changed = pool[self.cfg.deletions:self.cfg.deletions + self.cfg.spec_changes]
        plan = [(self.rng.uniform(0.3, window), "delete", n) for n in deleted]
        plan += [(self.rng.uniform(0.3, window), "change", n) for n in changed]
        plan += [(self.rng.uniform(0.5, window), "kill", "") for _ in range(self.cfg.timer_kills)]
        return sorted(plan)

    # ------------------------------------------------------------------ the run

    def run(self) -> ChaosReport:
        from kubernetes import client as k8s

        from ..adapters.kubernetes.client import api_client
        from ..adapters.simulated.params import SimParams
        from ..embedded import EmbeddedCluster

        cfg = self.cfg
        started = time.monotonic()
        workdir = Path(cfg.workdir or tempfile.mkdtemp(prefix="workspace-fsm-reliability-"))
        workdir.mkdir(parents=True, exist_ok=True)
        report = ChaosReport(config=_config_dict(cfg), logs=str(workdir))
        cluster = EmbeddedCluster(time_scale=cfg.time_scale, seed=cfg.seed,
                                  params=SimParams(job_failure_rate=cfg.job_failure_rate),
                                  request_timeout=cfg.request_timeout())
        kubeconfig = cluster.start(workdir / "kubeconfig")
        server = cluster.server
        server.store.on_change.append(self.inv.on_event)
        user = k8s.CustomObjectsApi(api_client(str(kubeconfig), user_agent=USER_AGENT))
        self.sup = Supervisor(kubeconfig, workdir, cfg.workers, cfg.request_timeout())
        self.sup.on_start.append(self._runner_started)
        server.faults.intercept(self._before, user_agent=RUNNER_AGENT)
        server.faults.intercept(self._after_status, when="after", verbs=["update"], resources=["workspaces/status"],
                                user_agent=RUNNER_AGENT)
        self._install_faults(server)
        try:
            names = self._create(user)
            report.workspaces = len(names)
            self._plan_kills(est_requests=10 * len(names))
            actions = self._plan_actions(names)
            self.sup.start()
            self._act(user, actions, report)
            report.settled = self._settle(report)
        finally:
            self.sup.stop()
            for n, rules in self.rules.items():
                report.faults_injected[n] = sum(r.hits for r in rules)
            cluster.stop()
        self._finish(report, started)
        return report

    def _create(self, user: Any) -> list[str]:
        names: list[str] = []
        docs = []
        for i in range(self.cfg.inference):
            n = f"inf-{i}"
            count = 1 + self.rng.randrange(3)
            docs.append((n, "inference", count, inference_doc(n, count)))
        for i in range(self.cfg.tuning):
            n = f"tune-{i}"
            docs.append((n, "tuning", 1, tuning_doc(n)))
        self.rng.shuffle(docs)
        for n, kind, target, doc in docs:
            self.inv.expect(f"{NS}/{n}", kind, target)
            user.create_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces", doc)
            names.append(n)
        self.progress(f"created {len(names)} Workspaces ({self.cfg.inference} inference, {self.cfg.tuning} tuning)")
        return names

    def _act(self, user: Any, actions: list[tuple[float, str, str]], report: ChaosReport) -> None:
        t0 = time.monotonic()
        for at, what, name in actions:
            delay = t0 + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            key = f"{NS}/{name}"
            if what == "kill":
                if self.sup.kill():
                    self.kills["at a random moment"] += 1
            elif what == "delete":
                with self.inv.lock:
                    self.inv.ws[key].delete_requested = time.monotonic()
                user.delete_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces", name)
                report.deletions += 1
            else:
                kind = self.inv.ws[key].kind
                patch = {"tuning": {"config": f"tuning-v{report.spec_changes + 2}"}} if kind == "tuning" else \
                    {"inference": {"config": f"inference-v{report.spec_changes + 2}"}}
                with self.inv.lock:
                    self.inv.ws[key].changed_at = time.monotonic()
                user.patch_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces", name, patch)
                report.spec_changes += 1
        self.progress(f"user actions done: {report.spec_changes} spec changes, {report.deletions} deletions; "
                      f"kills so far: {sum(self.kills.values())}")

    def _pending(self) -> list[str]:
        out = []
        with self.inv.lock:
            for key, w in self.inv.ws.items():
                if w.delete_requested is not None:
                    if w.gone_at is None:
                        out.append(f"{key}: deleted, but still present (finalizer not removed)")
                    elif self.inv.claims_of.get(key):
                        out.append(f"{key}: deleted, but NodeClaims remain: {sorted(self.inv.claims_of[key])}")
                elif w.generation not in w.goal_at:
                    last = self.inv.last_ws.get(key) or {}
                    rec = _record(last) or {}
                    out.append(f"{key}: generation {w.generation} not at its goal; state "
                               f"{(last.get('status') or {}).get('state')}, machine state {rec.get('state')}")
        return out

    def _settle(self, report: ChaosReport) -> bool:
        deadline = time.monotonic() + self.cfg.settle_timeout_s
        last_note = 0.0
        while time.monotonic() < deadline:
            pending = self._pending()
            if not pending and not self._kill_points:
                return True
            if not self._kill_points or self.requests > 40 * report.workspaces:
                self._kill_points = []  # the run went on long enough: no kill left to aim
            if time.monotonic() - last_note > 5:
                last_note = time.monotonic()
                self.progress(f"waiting for {len(pending)} Workspaces; {self.sup.starts} runner starts, "
                              f"{sum(self.kills.values())} kills, {self.requests} runner requests")
            time.sleep(0.2)
        report.stuck = self._pending()[:MAX_LISTED]
        return False

    def _finish(self, report: ChaosReport, started: float) -> None:
        inv = self.inv
        report.kills = dict(self.kills)
        report.runner_starts = self.sup.starts
        report.unexpected_exits = len(self.sup.unexpected)
        report.runner_requests = self.requests
        report.early_retries = self.early_retries
        tracebacks = 0
        for p in Path(report.logs).glob("runner-*.log"):
            text = p.read_text(errors="replace")
            tracebacks += text.count("Traceback (most recent call last)")
        report.runner_tracebacks = tracebacks
        with inv.lock:
            report.status_writes_checked = inv.status_writes
            report.events_checked = inv.events
            report.nodeclaims_over_target_max = inv.over_target_max
            report.duplicates = inv.duplicates
            report.lost = inv.lost
            report.violations = list(inv.violations) + [f"runner: {u}" for u in self.sup.unexpected]
            report.violation_count = inv.count
            outcomes: Counter = Counter()
            times = []
            goals = []
            for key, w in inv.ws.items():
                if w.delete_requested is not None:
                    outcomes["deleted" if w.gone_at is not None else "deletion pending"] += 1
                    continue
                outcomes[w.outcome.split(":")[0] if w.outcome else "not at goal"] += 1
                if w.outcome.startswith("Failed:"):
                    why = self._unexplained_failure(key, w.outcome.split(":", 1)[1])
                    if why:
                        report.violation_count += 1
                        report.violations.append(f"{key}: {why}")
                goal = w.goal_at.get(w.generation)
                if goal is not None:
                    goals.append(goal)
                    if w.changed_at is None:
                        times.append(goal - w.created_at)
            # Orphans: NodeClaims of Workspaces that are gone, or that nothing expects.
            report.orphans = sum(len(names) for key, names in inv.claims_of.items()
                                 if names and (key not in inv.ws or inv.ws[key].gone_at is not None))
            report.outcomes = dict(outcomes)
            if times:
                times.sort()
                report.time_to_goal_s = {"p50": round(statistics.median(times), 3),
                                         "p90": round(times[int(0.9 * (len(times) - 1))], 3),
                                         "max": round(times[-1], 3), "n": len(times)}
            if goals:
                first = min(w.created_at for w in inv.ws.values())
                report.makespan_s = round(max(goals) - first, 3)
        report.wall_s = round(time.monotonic() - started, 2)


    def _unexplained_failure(self, key: str, reason: str) -> str | None:
        """A Failed outcome must name a specific reason that its inputs explain (caller holds the lock)."""
        if reason == "TuningJobFailed":
            if key not in self.inv.job_failed:
                return "Failed with TuningJobFailed, but its Job has not failed"
            obj = self.inv.last_ws.get(key) or {}
            msg = _conditions(obj).get("WorkspaceSucceeded", {}).get("message", "")
            if self.inv.job_failed[key] and self.inv.job_failed[key] not in msg:
                return f"Failed, but the message {msg!r} does not give the Job's reason {self.inv.job_failed[key]}"
            return None
        if reason == "TuningJobDeadlineExceeded":
            return None  # the record's history names the deadline that fired
        return f"Failed with an unspecific or unexpected reason {reason!r}"


def _config_dict(cfg: ChaosConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d.pop("workdir", None)
    d["faults"] = {k: v for k, v in d["faults"].items() if v}
    return d
