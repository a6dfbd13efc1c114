"""The two designs the machine is compared with, on the same simulated cluster, queue and workers.

``BlockingReconciler`` is the reconcile as KAITO had it when the freezing was reported: inside one pass
it creates what is missing and then *waits*, polling, for each pending NodeClaim (up to 240 s), for the
GPU device plugin on each node (up to 60 s), for the workload to become ready (up to its readiness
timeout), and for a stale tuning Job deleted with Foreground propagation to disappear. The worker is
held the whole time; a wait that times out fails the pass, which is retried with backoff.

``PollerReconciler`` is KAITO's later non-blocking controller: it returns at once, but while nodes or
device plugins are not ready it requeues itself every 2 s (Nodes are not watched), and it remembers the
NodeClaims it created until the cache shows them (expectations).

Neither uses the state machine. Both count NodeClaims from the informer cache, as KAITO does; the
blocking one has no expectations, which is how a lagging cache made the old controller create extra
NodeClaims. Both write a KAITO-style ``status.state`` so the same goal detection applies to all modes.
Each wait polls through the cache once a second (``poll_s``): those reads are cache hits, not API calls.
"""

from __future__ import annotations

from collections.abc import Callable

from workspace_fsm.kaito import actions as A
from workspace_fsm.engine.adapter import AdapterError, Conflict
from workspace_fsm.kaito.model import (FINALIZER, LABEL_WORKSPACE, LABEL_WORKSPACE_NAMESPACE, Condition, Snapshot,
                                 Workspace, WorkspaceStatus, whole_seconds)
from workspace_fsm.engine.runner import Outcome, Pass

from .cluster import SimCluster

NODECLAIM_WAIT_S = 240.0  # KAITO: wait for each NodeClaim to be Ready
PLUGIN_WAIT_S = 60.0  # KAITO: wait for nvidia.com/gpu on each node
WORKLOAD_WAIT_S = 1800.0  # KAITO: the preset's readiness timeout (30 min for large models)
JOB_DELETE_WAIT_S = 300.0  # Foreground deletion of a stale tuning Job
POLLER_REQUEUE_S = 2.0  # KAITO's non-blocking controller: requeue while nodes/plugins are not ready


class _Base:
    def __init__(self, cluster: SimCluster, clock: Callable[[], float], poll_s: float = 1.0) -> None:
        self.cluster = cluster
        self.clock = clock
        self.poll_s = poll_s
        self.passes = 0
        self._serial: dict[str, int] = {}

    def _charged(self, before: int) -> float:
        return (self.cluster.api_call_count - before) * self.cluster.api_latency_s

    def _target(self, ws: Workspace) -> int:
        if ws.resource is None:
            return 1
        return 1 if ws.tuning is not None else max(1, ws.resource.count or 1)

    def _new_claim_name(self, ws: Workspace) -> str:
        # KAITO generated NodeClaim names: a second creation is a second NodeClaim, never AlreadyExists.
        n = self._serial.get(ws.key, 0)
        self._serial[ws.key] = n + 1
        return f"{ws.metadata.name}-{type(self).__name__[:1].lower()}{n}"

    def _create_claims(self, ws: Workspace, count: int) -> None:
        labels = ((LABEL_WORKSPACE, ws.metadata.name), (LABEL_WORKSPACE_NAMESPACE, ws.metadata.namespace))
        for _ in range(count):
            self.cluster.apply(ws, (A.CreateNodeClaim(self._new_claim_name(ws), ws.resource.instance_type or "", labels),))

    @staticmethod
    def _ready_nodes(snap: Snapshot) -> list[str]:
        return sorted(c.node_name for c in snap.nodeclaims
                      if c.ready == "True" and not c.deleting and c.node_name and c.node_name in snap.nodes
                      and snap.nodes[c.node_name].ready)

    def _status(self, ws: Workspace, state: str) -> WorkspaceStatus:
        now = whole_seconds(self.cluster.now_dt)
        old = ws.status.condition("WorkspaceSucceeded")
        ok = "True" if state in ("Ready", "Succeeded") else "False"
        ltt = old.last_transition_time if old is not None and old.status == ok else now
        cond = Condition("WorkspaceSucceeded", ok, "Workspace" + state, f"workspace is {state}", ltt,
                         ws.metadata.generation)
        return WorkspaceStatus(conditions=(cond,), state=state, target_node_count=self._target(ws),
                               worker_nodes=ws.status.worker_nodes, performance=ws.status.performance)

    def _write_state(self, ws: Workspace, state: str) -> None:
        status = self._status(ws, state)
        if status != ws.status:
            self.cluster.persist(ws, status)

    def _delete(self, ws: Workspace, snap: Snapshot) -> Outcome:
        live = [c for c in snap.nodeclaims if not c.deleting]
        for c in live:
            self.cluster.apply(ws, (A.DeleteNodeClaim(c.name, "WorkspaceDeleting"),))
        if not snap.nodeclaims and FINALIZER in ws.metadata.finalizers:
            self.cluster.apply(ws, (A.RemoveFinalizer(FINALIZER),))
            return Outcome()
        return Outcome(requeue_after=POLLER_REQUEUE_S if snap.nodeclaims else None)


class BlockingReconciler(_Base):
    """Waits inside the pass, holding its worker, as KAITO's controller did before it removed its waits."""

    def _wait(self, key: str, done: Callable[[Workspace, Snapshot], bool], timeout_s: float):
        """Poll the cache every poll_s until ``done`` or the timeout; yields the time held. Returns
        (ok, ws, snapshot)."""
        start = self.clock()
        ws, snap = self.cluster.observe(key)
        while (ws is not None and not ws.deleting and not done(ws, snap)
               and self.clock() - start < timeout_s):
            yield self.poll_s  # the worker is held: this is the design being measured
            ws, snap = self.cluster.observe(key)
        return ws is not None and not ws.deleting and done(ws, snap), ws, snap

    def reconcile(self, key: str) -> Pass:
        self.passes += 1
        before = self.cluster.api_call_count
        try:
            return (yield from self._reconcile(key, before))
        except Conflict as exc:
            return Outcome(observe_again=True, error=exc)
        except AdapterError as exc:
            return Outcome(error=exc)

    def _reconcile(self, key: str, before: int) -> Pass:
        ws, snap = self.cluster.observe(key)
        if ws is None:
            return Outcome(gone=True)
        if ws.deleting:
            out = self._delete(ws, snap)
            yield self._charged(before)
            return out
        if FINALIZER not in ws.metadata.finalizers:
            self.cluster.apply(ws, (A.AddFinalizer(FINALIZER),))
        target = self._target(ws)
        existing = [c for c in snap.nodeclaims if not c.failed]
        for c in snap.nodeclaims:
            if c.failed:
                self.cluster.apply(ws, (A.DeleteNodeClaim(c.name, c.failure_reason or "LaunchFailed"),))
        if len(existing) < target:
            self._create_claims(ws, target - len(existing))
        yield self._charged(before)
        # Wait for every NodeClaim to be Ready (KAITO: up to 240 s).
        ok, ws, snap = yield from self._wait(key, lambda w, s: len(self._ready_nodes(s)) >= target, NODECLAIM_WAIT_S)
        if not ok:
            return Outcome(error=AdapterError(f"{key}: NodeClaims not ready within {NODECLAIM_WAIT_S:.0f}s"))
        # Wait for the device plugin on every node (KAITO: up to 60 s).
        ok, ws, snap = yield from self._wait(
            key, lambda w, s: all(s.nodes[n].gpu_ready for n in self._ready_nodes(s)[:target]), PLUGIN_WAIT_S)
        if not ok:
            return Outcome(error=AdapterError(f"{key}: GPU device plugin not ready within {PLUGIN_WAIT_S:.0f}s"))
        nodes = tuple(self._ready_nodes(snap)[:target])
        before = self.cluster.api_call_count
        if ws.tuning is not None:
            return (yield from self._tuning(key, ws, snap, nodes, before))
        rev = ws.inference.revision
        kind = "Deployment" if target <= 1 else "StatefulSet"
        preset = ws.inference.preset.name if ws.inference.preset else ""
        if snap.workload is None:
            self.cluster.apply(ws, (A.CreateWorkload(kind, ws.metadata.name, target, rev, preset, nodes),))
        elif snap.workload.revision != rev:
            self.cluster.apply(ws, (A.UpdateWorkload(kind, ws.metadata.name, target, rev, preset, nodes),))
        yield self._charged(before)
        ok, ws, snap = yield from self._wait(
            key, lambda w, s: s.workload is not None and s.workload.revision == rev and s.workload.is_ready,
            WORKLOAD_WAIT_S)
        if not ok:
            return Outcome(error=AdapterError(f"{key}: workload not ready within {WORKLOAD_WAIT_S:.0f}s"))
        before = self.cluster.api_call_count
        self._write_state(ws, "Ready")
        yield self._charged(before)
        return Outcome()

    def _tuning(self, key: str, ws: Workspace, snap: Snapshot, nodes: tuple[str, ...], before: int) -> Pass:
        rev = ws.tuning.revision
        job = snap.job
        if job is not None and job.revision != rev:
            # Spec changed: delete the old Job in Foreground and wait until it is gone.
            self.cluster.apply(ws, (A.DeleteJob(job.name, job.revision, "Foreground"),))
            yield self._charged(before)
            ok, ws, snap = yield from self._wait(key, lambda w, s: s.job is None, JOB_DELETE_WAIT_S)
            if not ok:
                return Outcome(error=AdapterError(f"{key}: old Job not deleted within {JOB_DELETE_WAIT_S:.0f}s"))
            before = self.cluster.api_call_count
            job = None
        if job is None:
            t = ws.tuning
            self.cluster.apply(ws, (A.CreateJob(ws.metadata.name, rev, t.preset.name if t.preset else "",
                                                t.method or "qlora", nodes),))
            self._write_state(ws, "Running")
            yield self._charged(before)
            return Outcome()
        state = "Succeeded" if job.complete else "Failed" if job.failed_permanently else "Running"
        self._write_state(ws, state)
        yield self._charged(before)
        return Outcome()


class PollerReconciler(_Base):
    """Returns at once; requeues every 2 s while nodes or plugins are not ready; expectations for claims."""

    def __init__(self, cluster: SimCluster, clock: Callable[[], float], poll_s: float = 1.0) -> None:
        super().__init__(cluster, clock, poll_s)
        self._expected: dict[str, set[str]] = {}

    def reconcile(self, key: str) -> Pass:
        self.passes += 1
        before = self.cluster.api_call_count
        try:
            out = self._reconcile(key)
        except Conflict as exc:
            out = Outcome(observe_again=True, error=exc)
        except AdapterError as exc:
            out = Outcome(error=exc)
        held = self._charged(before)
        if held:
            yield held
        return out

    def _create_claims(self, ws: Workspace, count: int) -> None:
        labels = ((LABEL_WORKSPACE, ws.metadata.name), (LABEL_WORKSPACE_NAMESPACE, ws.metadata.namespace))
        exp = self._expected.setdefault(ws.key, set())
        for _ in range(count):
            name = self._new_claim_name(ws)
            self.cluster.apply(ws, (A.CreateNodeClaim(name, ws.resource.instance_type or "", labels),))
            exp.add(name)

    def _reconcile(self, key: str) -> Outcome:
        ws, snap = self.cluster.observe(key)
        if ws is None:
            self._expected.pop(key, None)
            return Outcome(gone=True)
        if ws.deleting:
            return self._delete(ws, snap)
        if FINALIZER not in ws.metadata.finalizers:
            self.cluster.apply(ws, (A.AddFinalizer(FINALIZER),))
        target = self._target(ws)
        seen = {c.name for c in snap.nodeclaims}
        exp = self._expected.setdefault(key, set())
        exp -= seen  # observed: no longer an expectation
        for c in snap.nodeclaims:
            if c.failed:
                self.cluster.apply(ws, (A.DeleteNodeClaim(c.name, c.failure_reason or "LaunchFailed"),))
        existing = len(snap.nodeclaims) + len(exp)
        if existing < target:
            self._create_claims(ws, target - existing)
        ready = self._ready_nodes(snap)
        if len(ready) < target or not all(snap.nodes[n].gpu_ready for n in ready[:target]):
            return Outcome(requeue_after=POLLER_REQUEUE_S)
        nodes = tuple(ready[:target])
        if ws.tuning is not None:
            rev = ws.tuning.revision
            job = snap.job
            if job is not None and job.revision != rev:
                if not job.deleting:
                    self.cluster.apply(ws, (A.DeleteJob(job.name, job.revision, "Background"),))
                return Outcome(requeue_after=POLLER_REQUEUE_S)
            if job is None:
                t = ws.tuning
                self.cluster.apply(ws, (A.CreateJob(ws.metadata.name, rev, t.preset.name if t.preset else "",
                                                    t.method or "qlora", nodes),))
                self._write_state(ws, "Running")
                return Outcome()
            self._write_state(ws, "Succeeded" if job.complete else "Failed" if job.failed_permanently else "Running")
            return Outcome()
        rev = ws.inference.revision
        kind = "Deployment" if target <= 1 else "StatefulSet"
        preset = ws.inference.preset.name if ws.inference.preset else ""
        w = snap.workload
        if w is None:
            self.cluster.apply(ws, (A.CreateWorkload(kind, ws.metadata.name, target, rev, preset, nodes),))
            return Outcome()
        if w.revision != rev:
            self.cluster.apply(ws, (A.UpdateWorkload(kind, ws.metadata.name, target, rev, preset, nodes),))
            return Outcome()
        if w.is_ready:
            self._write_state(ws, "Ready")
        return Outcome()
