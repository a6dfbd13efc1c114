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
- with ``runners=N``, runs N runner processes at once against the one API server (a rollout's overlap, or
  a second runner started by mistake), each under its own supervisor with its own log directory; each kill
  picks one of them (drawn from the seed), and a kill at an API call waits for that runner's next call.
  The Workspaces are then created once every runner watches, so that they all see each one arrive;
- optionally serves the runner (only the runner: faults match its User-Agent) 409s, 500s, 429s with
  Retry-After, dropped watches, forced 410s, latency spikes and a watch cache that lags by seconds.

The invariants are checked on every change the API server stores (a listener on its store, so no
transient state escapes between two samples) and on every status write the runner makes:

- no Workspace ever has more NodeClaims than its target. A NodeClaim counts from the change that stores it
  (ADDED) to the one that removes it (DELETED): one being deleted (``deletionTimestamp`` set, Karpenter's
  finalizer still on it) still counts, as KAITO counts it and as its VM still runs;
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

from workspace_fsm.kaito.model import ANNOTATION_REVISION
from workspace_fsm.kaito.model import LABEL_WORKSPACE as LABEL_WS
from workspace_fsm.kaito.model import LABEL_WORKSPACE_NAMESPACE as LABEL_NS
from workspace_fsm.kaito.workspace import LIFECYCLE_CONDITION as LIFECYCLE

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
STORED_AFTER_KEPT = 8  # per Workspace: the objects stored by its last writes, by the version each was based on


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
    # The runner's creates of these kinds delayed by slow_create_s, as admission webhooks (Karpenter's on
    # NodeClaims) delay them on a real cluster; reads and status writes are not. With several runners, this
    # widens the window in which a NodeClaim one runner has recorded is not yet stored when another looks.
    slow_create: float = 0.0
    slow_create_s: float = 0.3
    slow_create_resources: tuple[str, ...] = ("nodeclaims",)  # also: deployments, statefulsets, jobs

    def any(self) -> bool:
        return any(v for k, v in asdict(self).items() if k not in ("retry_after", "latency_s", "slow_create_s",
                                                                  "slow_create_resources"))


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
    # Runner processes at once, each under its own Supervisor. With more than one, the Workspaces are
    # created once every runner watches (with one, before it starts, as always) and kills are spread
    # over the runners.
    runners: int = 1
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
        slow = (self.faults.latency_s if self.faults.latency else 0.0) \
            + (self.faults.slow_create_s if self.faults.slow_create else 0.0)
        return slow + 8.0  # the server enforces it too


@dataclass
class ChaosReport:
    config: dict[str, Any]
    workspaces: int = 0
    spec_changes: int = 0
    deletions: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    kills_per_runner: list[int] = field(default_factory=list)  # every kind of kill, by runner
    runner_starts: int = 0
    runner_starts_per_runner: list[int] = field(default_factory=list)
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


#: KAITO sizes a vLLM preset from its GPUs, not from resource.count: on INSTANCE (one A100 80 GiB GPU) these
#: presets need 1, 2 and 3 nodes (its node estimator; tests/test_estimator.py works them out).
PRESET_FOR_NODES = {1: "phi-4-mini-instruct", 2: "qwen2.5-coder-32b-instruct", 3: "gpt-oss-120b"}


def inference_doc(name: str, count: int) -> dict[str, Any]:
    """An inference Workspace whose targetNodeCount is ``count`` (1 to 3)."""
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name},
            "resource": {"count": count, "instanceType": INSTANCE, "labelSelector": {"matchLabels": {"apps": name}}},
            "inference": {"preset": {"name": PRESET_FOR_NODES[count]}}}


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
    """Checks every change the API server stores. Called by the store, under its lock: kept cheap.

    NodeClaims over target: a Workspace's NodeClaims are the ones carrying its labels, counted from the
    change that stores one (ADDED) to the change that removes it (DELETED). A NodeClaim being deleted
    (``deletionTimestamp`` set, Karpenter's finalizer still on it) counts: its VM still runs, and KAITO counts
    deleting NodeClaims as existing too. The count is compared with the target on every NodeClaim change,
    so a NodeClaim too many is caught however briefly it exists, whichever runner (or how many runners)
    made it.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ws: dict[str, _Ws] = {}
        self.claims: dict[str, str] = {}  # NodeClaim name -> Workspace key
        self.claims_of: dict[str, set[str]] = {}
        self.workloads_of: dict[str, set[str]] = {}  # Workspace key -> "deployments/<name>", "statefulsets/<name>"
        self.claim_ready: dict[str, bool] = {}
        self.claim_node: dict[str, str] = {}
        self.node_gpu: dict[str, bool] = {}
        self.jobs_of: dict[str, set[str]] = {}
        self.job_failed: dict[str, str] = {}  # Workspace key -> why its current Job failed for good
        self.creations: Counter = Counter()  # (kind, owner, name, revision) -> ADDED count
        self.last_ws: dict[str, dict[str, Any]] = {}
        # Workspace key -> {resourceVersion -> the object stored by the write based on it}, the last few:
        # a status write is compared with what *it* stored, even when another runner wrote right after.
        self.stored_after: dict[str, dict[str, dict[str, Any]]] = {}
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
            self.stored_after.pop(key, None)
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
                    self.violate(f"{key}: the record's generation went back from {before.get('gen')} "
                                 f"to {after.get('gen')}")
            # KAITO's conditions too: an observedGeneration going back is a stale writer's status.
            was = _conditions(prev)
            for ctype, cond in _conditions(obj).items():
                old_cond = was.get(ctype)
                if old_cond is None:
                    continue
                a, b = old_cond.get("observedGeneration"), cond.get("observedGeneration")
                if isinstance(a, int) and isinstance(b, int) and b < a:
                    self.lost += 1
                    self.violate(f"{key}: condition {ctype}'s observedGeneration went back from {a} to {b}")
        self.last_ws[key] = obj
        if prev is not None:
            base = (prev.get("metadata") or {}).get("resourceVersion")
            if base:
                after = self.stored_after.setdefault(key, {})
                after[str(base)] = obj
                if len(after) > STORED_AFTER_KEPT:
                    del after[next(iter(after))]
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
        if plural != "jobs":  # kept per owner for the orphan count, as Jobs are below
            mine = self.workloads_of.setdefault(key, set())
            if ev.type == "DELETED":
                mine.discard(f"{plural}/{name}")
            else:
                mine.add(f"{plural}/{name}")
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
            body = json.loads(req.body)
            written = body.get("status") or {}
            base = str((body.get("metadata") or {}).get("resourceVersion") or "")
        except (ValueError, AttributeError):
            return
        key = f"{req.namespace}/{req.name}"
        with self.lock:
            self.status_writes += 1
            stored = self.stored_after.get(key, {}).get(base) if base else None
            if stored is None:
                stored = self.last_ws.get(key)
            if stored is None:
                return
            miss = _missing(written, stored.get("status") or {})
            if miss is not None:
                self.lost += 1
                self.violate(f"{key}: status field {miss} written by the runner was not stored as written")


# --------------------------------------------------------------------------- the runner process


def _client_pid(thread: threading.Thread, server_port: int, pids: dict[int, Any]) -> int | None:
    """The process among ``pids`` at the client end of the connection ``thread`` serves (Linux), else None.

    ``socketserver.ThreadingMixIn`` starts each connection's thread with ``(socket, client_address)`` as
    its arguments; the client's port and the server's identify the client's socket in ``/proc/net/tcp``."""
    client = next((a for a in getattr(thread, "_args", ()) if isinstance(a, tuple) and len(a) >= 2), None)
    if client is None or not pids:
        return None
    port = int(client[1])
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if int(cols[1].rsplit(":", 1)[1], 16) == port and int(cols[2].rsplit(":", 1)[1], 16) == server_port:
                        inode = cols[9]
                        break
        except (OSError, IndexError, ValueError):
            continue
        if inode is not None:
            break
    if inode is None or inode == "0":
        return None
    want = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == want:
                    return pid
            except OSError:
                continue
    return None


class Supervisor(threading.Thread):
    """Starts the runner, and starts it again whenever it dies (as a Deployment's ReplicaSet would).

    Its logs are ``workdir/runner-NNN.log``, one per start. Several supervisors, each with a workdir of its
    own, run several runners at once against one API server."""

    def __init__(self, kubeconfig: Path, workdir: Path, workers: int, api_request_timeout_s: float = 60.0, *,
                 name: str = "runner-supervisor") -> None:
        super().__init__(name=name, daemon=True)
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

    def pid(self) -> int | None:
        """The runner process now running (None between a death and the next start)."""
        with self.lock:
            p = self.proc
        return p.pid if p is not None and p.poll() is None and p.pid not in self.killed else None

    def terminate(self) -> None:
        """Stop restarting, and send SIGTERM (``stop`` then waits): several runners stop in parallel."""
        with self.lock:
            if self.stopping.is_set():
                return
            self.stopping.set()
            p = self.proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        self.terminate()
        with self.lock:
            p = self.proc
        if p is not None and p.poll() is None:
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
        if config.runners < 1:
            raise ValueError(f"runners must be at least 1, not {config.runners}")
        self.cfg = config
        self.rng = random.Random(config.seed)
        self.inv = Invariants()
        self.progress = progress or (lambda msg: None)
        self.kills: Counter = Counter()
        self.kills_per_runner = [0] * config.runners
        self.requests = 0
        self._kill_points: list[tuple[int, str, int]] = []  # (runner requests so far, mode, runner)
        self._pending_kill: dict[int, str] = {}  # runner -> a kill at its next call (between calls, in flight)
        self._armed_status: set[int] = set()  # runners to kill inside their next stored status write
        self._armed_create: set[int] = set()  # runners to kill as they send their next NodeClaim create
        self._throttled: dict[tuple[int, str], float] = {}  # (runner, Workspace key) -> not before (monotonic)
        self._watching: list[set[str]] = [set() for _ in range(config.runners)]
        self.early_retries = 0
        self._req_lock = threading.Lock()
        self.rules: dict[str, list[Any]] = {}
        self.sups: list[Supervisor] = []
        self._server_port = 0

    @property
    def sup(self) -> Supervisor:
        """The first (with ``runners=1``, the only) runner's supervisor."""
        return self.sups[0]

    # ------------------------------------------------------------------ request hooks

    def _ws_of(self, req: Any) -> str | None:
        if req.verb not in NAMED_VERBS or not req.name:
            return None
        if req.resource in ("workspaces", "jobs", "deployments", "statefulsets"):
            return f"{req.namespace}/{req.name}"
        if req.resource == "nodeclaims":
            return self.inv.claims.get(req.name)
        return None

    def _runner_of(self, req: Any) -> int | None:
        """Which runner sent the request (called in the request's thread); None: a process no longer alive.

        With one runner, always that one. With several, all send the same User-Agent, so the connection
        tells: the server serves each connection in a thread of its own, whose client port leads to the
        socket's inode (``/proc/net/tcp``) and that to the runner process holding it (``/proc/PID/fd``).
        A connection keeps its runner, so the answer is kept on the thread."""
        if len(self.sups) <= 1:
            return 0
        thread = threading.current_thread()
        known = getattr(thread, "_chaos_runner", None)
        if known is not None:
            return known
        pids = {}
        for i, sup in enumerate(self.sups):
            pid = sup.pid()
            if pid is not None:
                pids[pid] = i
        pid = _client_pid(thread, self._server_port, pids)
        if pid is None:
            return None
        thread._chaos_runner = pids[pid]  # type: ignore[attr-defined]
        return pids[pid]

    def _before(self, req: Any) -> str | None:
        """Every request of the runner but watches: count it, check Retry-After, maybe kill it here."""
        me = self._runner_of(req)
        if req.verb == "watch":
            if me is not None:
                self._watching[me].add(req.resource)
            return None
        key = self._ws_of(req)
        kill = None
        with self._req_lock:
            self.requests += 1
            if key is not None and me is not None:
                until = self._throttled.get((me, key))
                if until is not None:
                    if time.monotonic() < until:
                        self.early_retries += 1
                        with self.inv.lock:
                            self.inv.violate(f"{key}: {req.verb} {req.resource_path} {req.name} came "
                                             f"{until - time.monotonic():.2f}s before the Retry-After it was given"
                                             + (f" (runner {me})" if len(self.sups) > 1 else ""))
                    else:
                        del self._throttled[(me, key)]
            while self._kill_points and self._kill_points[0][0] <= self.requests:
                _, mode, runner = self._kill_points.pop(0)
                if mode == "in-status-write":
                    self._armed_status.add(runner)
                elif mode == "create-held":
                    self._armed_create.add(runner)
                elif runner not in self._pending_kill:
                    self._pending_kill[runner] = mode
            if me is not None:
                if me in self._pending_kill:
                    kill = self._pending_kill.pop(me)
                elif me in self._armed_create and req.verb == "create" and req.resource == "nodeclaims":
                    self._armed_create.discard(me)
                    kill = "create-held"
        if kill is not None and self.sups[me].kill():
            self.kills[kill] += 1
            self.kills_per_runner[me] += 1
            if kill == "create-held":
                # Applied just inside the server's request timeout (which it enforces): as late as a real
                # server may apply a dead client's request, and after the next runner has observed.
                time.sleep(max(0.0, self.cfg.request_timeout() - 1.0))
            return "abort" if kill == "between-calls" else None
        return None

    def _after_status(self, req: Any) -> str | None:
        self.inv.on_status_write(req)
        me = self._runner_of(req)
        if me is None:
            return None
        with self._req_lock:
            armed = me in self._armed_status
            self._armed_status.discard(me)
        if armed and req.status_code == 200 and self.sups[me].kill():
            self.kills["in-status-write"] += 1
            self.kills_per_runner[me] += 1
            return "abort"
        if armed:
            with self._req_lock:
                self._armed_status.add(me)  # not a stored write: wait for the next one
        return None

    def _throttle_fired(self, req: Any) -> None:
        key = self._ws_of(req)
        me = self._runner_of(req)
        if key is not None and me is not None:
            with self._req_lock:
                self._throttled[(me, key)] = time.monotonic() + self.cfg.faults.retry_after

    def _runner_started(self, runner: int = 0) -> None:
        with self._req_lock:
            for k in [k for k in self._throttled if k[0] == runner]:
                del self._throttled[k]  # a new process was never told to wait

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
        if f.slow_create:
            self.rules["slow create"] = [faults.latency(f.slow_create_s, verbs=["create"],
                                                        resources=list(f.slow_create_resources),
                                                        rate=f.slow_create, seed=seed + 8, user_agent=ua)]
        if f.lag_s:
            self.rules["watch lag"] = [faults.watch_lag(f.lag_s, user_agent=ua)]

    def _plan_kills(self, est_requests: int) -> None:
        """Kill points among the runners' requests from now on; with several runners, each picks one."""
        n, offset = self.cfg.runners, self.requests
        points = sorted(offset + self.rng.randint(8, max(9, est_requests)) for _ in range(self.cfg.request_kills))
        planned = [(p, KILL_MODES[i % len(KILL_MODES)]) for i, p in enumerate(points)]
        self.rng.shuffle(planned)
        planned.sort(key=lambda kp: kp[0])
        # Drawn after the points, and only with several runners: one runner's plan stays as it always was.
        self._kill_points = [(p, mode, self.rng.randrange(n) if n > 1 else 0) for p, mode in planned]

    def _plan_actions(self, names: list[str]) -> list[tuple[float, str, str]]:
        window = self.cfg.action_window_s
        pool = list(names)
        self.rng.shuffle(pool)
        deleted = pool[:self.cfg.deletions]
        changed = pool[self.cfg.deletions:self.cfg.deletions + self.cfg.spec_changes]
        plan = [(self.rng.uniform(0.3, window), "delete", n) for n in deleted]
        plan += [(self.rng.uniform(0.3, window), "change", n) for n in changed]
        kills = [self.rng.uniform(0.5, window) for _ in range(self.cfg.timer_kills)]
        n = self.cfg.runners
        plan += [(at, "kill", str(self.rng.randrange(n)) if n > 1 else "") for at in kills]  # the runner killed
        return sorted(plan)

    # ------------------------------------------------------------------ the run

    def run(self) -> ChaosReport:
        from kubernetes import client as k8s

        from workspace_fsm.adapters.kubernetes.client import api_client
        from workspace_fsm.adapters.simulated.params import SimParams
        from workspace_fsm.cli.embedded import EmbeddedCluster

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
        self._server_port = server.port
        for i in range(cfg.runners):
            # One runner: its logs in workdir, as always. Several: a directory each.
            own = workdir if cfg.runners == 1 else workdir / f"runner-{i}"
            own.mkdir(parents=True, exist_ok=True)
            sup = Supervisor(kubeconfig, own, cfg.workers, cfg.request_timeout(),
                             name="runner-supervisor" if cfg.runners == 1 else f"runner-supervisor-{i}")
            sup.on_start.append(lambda i=i: self._runner_started(i))
            self.sups.append(sup)
        server.faults.intercept(self._before, user_agent=RUNNER_AGENT)
        server.faults.intercept(self._after_status, when="after", verbs=["update"], resources=["workspaces/status"],
                                user_agent=RUNNER_AGENT)
        self._install_faults(server)
        try:
            if cfg.runners > 1:
                # Several runners already run when the Workspaces arrive, so that each sees each one come.
                for sup in self.sups:
                    sup.start()
                self._wait_watching(60.0)
            names = self._create(user)
            report.workspaces = len(names)
            # Runners at once share the work: passes but one that lose a write race are cheap, so the requests
            # do not grow with the runners; kill points are spread over about as many as one runner makes.
            self._plan_kills(est_requests=10 * len(names))
            actions = self._plan_actions(names)
            if cfg.runners == 1:
                self.sup.start()
            self._act(user, actions, report)
            report.settled = self._settle(report)
            if cfg.runners > 1 and report.settled:
                # Every stored change counts until the end: a create another runner sent (or a dead one's,
                # held in the server) may land up to one request timeout after all reached their goal.
                time.sleep(cfg.request_timeout())
        finally:
            for sup in self.sups:
                sup.terminate()
            for sup in self.sups:
                if sup.is_alive() or sup.proc is not None:
                    sup.stop()
            for n, rules in self.rules.items():
                report.faults_injected[n] = sum(r.hits for r in rules)
            cluster.stop()
        self._finish(report, started)
        return report

    def _wait_watching(self, timeout: float) -> None:
        """Until every runner has listed and watches Workspaces and NodeClaims (its watch requests came)."""
        deadline = time.monotonic() + timeout
        want = {"workspaces", "nodeclaims"}
        while time.monotonic() < deadline:
            if all(want <= seen for seen in self._watching):
                self.progress(f"{self.cfg.runners} runners watch")
                return
            time.sleep(0.05)
        self.progress(f"not every runner watched after {timeout:.0f} s: {[sorted(w) for w in self._watching]}")

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
                runner = int(name or 0)
                if self.sups[runner].kill():
                    self.kills["at a random moment"] += 1
                    self.kills_per_runner[runner] += 1
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
            if not pending and self.cfg.runners > 1:
                # Several runners go quiet together once all is done: a kill point left could wait forever.
                with self._req_lock:
                    self._kill_points = []
                    self._pending_kill.clear()
                continue
            if not self._kill_points or self.requests > 40 * report.workspaces * self.cfg.runners:
                self._kill_points = []  # the run went on long enough: no kill left to aim
            if time.monotonic() - last_note > 5:
                last_note = time.monotonic()
                self.progress(f"waiting for {len(pending)} Workspaces; "
                              f"{sum(s.starts for s in self.sups)} runner starts, "
                              f"{sum(self.kills.values())} kills, {self.requests} runner requests")
            time.sleep(0.2)
        report.stuck = self._pending()[:MAX_LISTED]
        return False

    def _finish(self, report: ChaosReport, started: float) -> None:
        inv = self.inv
        report.kills = dict(self.kills)
        report.kills_per_runner = list(self.kills_per_runner)
        report.runner_starts_per_runner = [s.starts for s in self.sups]
        report.runner_starts = sum(report.runner_starts_per_runner)
        unexpected = [u if len(self.sups) == 1 else f"runner {i}: {u}" for i, s in enumerate(self.sups)
                      for u in s.unexpected]
        report.unexpected_exits = len(unexpected)
        report.runner_requests = self.requests
        report.early_retries = self.early_retries
        tracebacks = 0
        for p in Path(report.logs).rglob("runner-*.log"):  # with several runners, in a directory each
            text = p.read_text(errors="replace")
            tracebacks += text.count("Traceback (most recent call last)")
        report.runner_tracebacks = tracebacks
        with inv.lock:
            report.status_writes_checked = inv.status_writes
            report.events_checked = inv.events
            report.nodeclaims_over_target_max = inv.over_target_max
            report.duplicates = inv.duplicates
            report.lost = inv.lost
            report.violations = list(inv.violations) + [f"runner: {u}" for u in unexpected]
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
            # Workloads and Jobs too: the garbage collector removes them with their Workspace.
            report.orphans = sum(len(names) for owned in (inv.claims_of, inv.workloads_of, inv.jobs_of)
                                 for key, names in owned.items()
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
            # The record's history must name the deadline that fired: the last entry into Failed.
            rec = _record(self.inv.last_ws.get(key) or {}) or {}
            into = [h for h in rec.get("history") or () if isinstance(h, list) and len(h) >= 4 and h[1] == "Failed"]
            if not into or not str(into[-1][3]).startswith("deadline:"):
                return ("Failed with TuningJobDeadlineExceeded, but the record's history names no deadline "
                        f"({into[-1][3] if into else 'no entry into Failed'})")
            return None
        return f"Failed with an unspecific or unexpected reason {reason!r}"


def _config_dict(cfg: ChaosConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d.pop("workdir", None)
    d["faults"] = {k: v for k, v in d["faults"].items() if v}
    return d
