"""The pure step: ``decide(workspace, snapshot, now, config) -> Decision``.

Nothing here blocks, sleeps, reads a clock or does I/O: time comes in as ``now``, the cluster as a
snapshot, and what must happen goes out as actions plus a wake-up. A pass:

1. reads the persisted lifecycle record from the Workspace's status;
2. fires the current state's deadline if it has passed (once: the firing is recorded);
3. follows enabled edges of the shared machine (several in one pass when the snapshot allows);
4. asks, for the state it ends in, for whatever is still missing (level-based and idempotent:
   NodeClaims up to targetNodeCount, the workload, the Job, deletions, the finalizer);
5. computes the whole status in one place (KAITO's conditions, ``state``, ``targetNodeCount``,
   ``workerNodes`` and the lifecycle record) and when to look again.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

import attrs

from workspace_fsm.kaito import actions as A
from workspace_fsm.kaito.lifecycle import DEFAULT_CONFIG, STATES, Config, Facts, edge_guard_name, nodes_lost, step, workload_ready
from workspace_fsm.kaito.model import (LABEL_WORKSPACE, LABEL_WORKSPACE_NAMESPACE, Condition,
                    Workspace, WorkspaceStatus, Snapshot, format_time, whole_seconds)
from workspace_fsm.kaito.persist import LIFECYCLE_CONDITION, HistoryEntry, Lifecycle, read_lifecycle

__all__ = ["Decision", "decide", "confirmations", "nodeclaim_name", "target_node_count"]

# KAITO's condition types.
NODECLAIM_READY = "NodeClaimReady"
NODES_READY = "NodesReady"
RESOURCE_READY = "ResourceReady"
INFERENCE_READY = "InferenceReady"
JOB_STARTED = "JobStarted"
WORKSPACE_SUCCEEDED = "WorkspaceSucceeded"
WORKSPACE_DELETING = "WorkspaceDeleting"
KAITO_CONDITIONS = (NODECLAIM_READY, NODES_READY, RESOURCE_READY, INFERENCE_READY, JOB_STARTED,
                    WORKSPACE_SUCCEEDED, WORKSPACE_DELETING)

_AFTER_NODES = frozenset({"PluginsReady", "WorkloadDeploying", "Ready", "JobRunning", "JobReplacing",
                          "Succeeded", "Failed"})
_AFTER_PLUGINS = _AFTER_NODES - {"PluginsReady"}
#: DeleteNodeClaim reason and Warning Event reason for NodeClaims above targetNodeCount.
ABOVE_TARGET = "NodeClaimAboveTarget"


# Apply protocol. ``before`` runs first (the finalizer, so nothing can exist that deletion would not clean
# up; deletions, which are safe to repeat), then the status is persisted, then ``after`` (creations,
# finalizer removal, Events). Recording what will be created *before* creating it means that a pass whose
# status write fails (409, crash) has created nothing: the record is never behind what exists.
_BEFORE = (A.AddFinalizer, A.DeleteNodeClaim, A.DeleteJob)
_AFTER_CREATES = (A.CreateNodeClaim, A.CreateWorkload, A.UpdateWorkload, A.CreateJob)


@attrs.frozen
class Decision:
    status: WorkspaceStatus
    before: tuple[A.Action, ...]
    wake: A.WakeUp
    state: str
    transitions: tuple[HistoryEntry, ...] = ()
    status_changed: bool = True
    after: tuple[A.Action, ...] = ()

    @property
    def actions(self) -> tuple[A.Action, ...]:
        """Every action in the order they are applied (the status write falls between before and after)."""
        return self.before + self.after

    @property
    def mutating_actions(self) -> tuple[A.Action, ...]:
        return tuple(a for a in self.actions if not isinstance(a, A.RecordEvent))


# ----------------------------------------------------------------------------- helpers


def target_node_count(ws: Workspace) -> int:
    """How many GPU nodes the Workspace needs: computed once, then kept in status.targetNodeCount."""
    if ws.status.target_node_count:
        return ws.status.target_node_count
    if ws.resource is None:
        return 0
    return max(1, ws.resource.count or 1)


def nodeclaim_name(ws: Workspace, seq: int) -> str:
    """Deterministic: a stale cache then yields AlreadyExists, never a duplicate NodeClaim.

    The uid is part of the hash so that a Workspace deleted and created again under the same name never
    collides with its predecessor's NodeClaims that are still being deleted.
    """
    m = ws.metadata
    digest = hashlib.sha256(f"{m.namespace}/{m.name}/{m.uid}".encode()).hexdigest()[:6]
    return f"{m.name[:40].rstrip('-.')}-{digest}-{seq}"


def workload_kind(target: int) -> str:
    return "Deployment" if target <= 1 else "StatefulSet"


def _merge_claims(rec: Lifecycle, f: Facts, cap: int | None = None,
                  skip: frozenset[str] | set[str] = frozenset(), marked: set[str] | None = None) -> tuple[str, ...]:
    """The NodeClaims the machine knows of: recorded ones not known gone, plus observed ones with its labels.

    With ``cap`` (the target), an observed NodeClaim the record does not hold is adopted only while the
    record holds fewer live ones than that, and never one being deleted or in ``skip`` (chosen to go): the
    record never adopts a NodeClaim above target. Without it (deletion), every one is adopted, so the
    finalizer stays until each is gone. ``marked``: this pass's deletion marks (default: the record's).
    """
    gone = f.gone
    keep = [n for n in rec.nodeclaims if n not in gone] if gone else rec.nodeclaims
    known = set(keep)
    extra = sorted(c.name for c in f.claims if c.name not in known)
    if extra and cap is not None:
        marked = set(rec.deleted) if marked is None else marked
        room = cap - sum(1 for n in keep if "NodeClaim/" + n not in marked)
        deleting = {c.name for c in f.claims if c.deleting}
        extra = [n for n in extra if n not in deleting and n not in skip][:max(room, 0)]
    if not extra and len(keep) == len(rec.nodeclaims):
        return rec.nodeclaims
    return tuple(keep) + tuple(extra)


def _above_target(f: Facts, deleted: set[str]) -> tuple[list[str], int]:
    """NodeClaims to delete because more are live than targetNodeCount, however they came to exist (another
    writer, a hand-made one with the Workspace's labels, an older runner). Live: not being deleted and not
    asked to go; recorded ones not yet in the cache count too, but only ones the cache shows can be chosen.
    Chosen in order: not Ready before Ready, then the newest; one that backs a worker node (a Ready claim
    whose Node serves the Workspace) goes only when no other can."""
    if len(f.claims) + len(f.unseen) <= f.target or f.target <= 0:
        return [], 0  # the common case, decided without building anything
    live = [c for c in f.claims if not c.deleting and ("NodeClaim/" + c.name) not in deleted]
    total = len(live) + sum(1 for n in f.unseen if ("NodeClaim/" + n) not in deleted)
    over = total - f.target
    if over <= 0:
        return [], total
    workers = set(f.ws.status.worker_nodes or ()) | set(f.ready_nodes)
    far_future = 1e18

    def order(c):
        created = c.created_at.timestamp() if c.created_at is not None else far_future
        backs = c.is_ready and c.node_name in workers
        return (backs, c.is_ready, -created, tuple(-ord(ch) for ch in c.name))

    return [c.name for c in sorted(live, key=order)[:over]], total


def _remove_above_target(f: Facts, deleted: set[str], out: list) -> set[str]:
    victims, live = _above_target(f, deleted)
    if victims:
        for name in victims:
            out.append(A.DeleteNodeClaim(name, ABOVE_TARGET))
            deleted.add("NodeClaim/" + name)
        out.append(A.RecordEvent("Warning", ABOVE_TARGET,
                                 f"Workspace {f.ws.key} has {live} live NodeClaims for a targetNodeCount of {f.target}; "
                                 f"deleting {', '.join(victims)} (not Ready first, then the newest). If you made one "
                                 f"by hand with the Workspace's labels, remove those labels to keep it"))
    return set(victims)


def _next_free_seq(ws: Workspace, names: tuple[str, ...]) -> int:
    """One past the highest sequence number among this Workspace's deterministic NodeClaim names."""
    base = nodeclaim_name(ws, 0)[:-1]
    top = -1
    for n in names:
        if n.startswith(base) and n[len(base):].isdigit():
            top = max(top, int(n[len(base):]))
    return top + 1


def _prune_deleted(deleted: set[str], claims: tuple[str, ...], observed: tuple = ()) -> tuple[str, ...]:
    """Deletion marks for NodeClaims are kept only while the claim is still known (recorded or in the cache)."""
    known = set(claims) | {c.name for c in observed}
    return tuple(sorted(d for d in deleted if not d.startswith("NodeClaim/") or d[len("NodeClaim/"):] in known))


def _no_create_in_flight(f: Facts, rec: Lifecycle) -> bool:
    """No create of a recorded NodeClaim can still be applied: the grace has passed, or every recorded one
    has been seen (each name is created once, by the pass that recorded it, so a seen one has landed)."""
    if rec.claimed_at is None or f.now >= rec.claimed_at + f.config.create_grace:  # rec: this pass's own claims too
        return True
    seen = {c.name for c in f.claims}
    return all(n in seen for n in rec.nodeclaims)


def _enter(rec: Lifecycle, source: str, dest: str, stamp: datetime, why: str, limit: int) -> Lifecycle:
    entry = HistoryEntry(source, dest, format_time(stamp), why)
    history = (rec.history + (entry,))[-limit:]
    return attrs.evolve(rec, state=dest, entered_at=stamp, attempts=0, history=history)


def confirmations(ws: Workspace) -> frozenset[str]:
    """The objects whose absence the machine must know positively to decide for this Workspace.

    Adapters look these up when their cache does not show them: a tombstone (deletion seen by the watch)
    or a 404 from a GET puts the name in ``Snapshot.absent``. Everything else is read from caches.
    ``"NodeClaim/<name>"`` for every NodeClaim the record holds, ``"Job/<workspace>"`` and
    ``"Workload/<workspace>"`` once one was recorded.
    """
    rec = read_lifecycle(ws.status)
    if rec is None:
        return frozenset()
    out = {"NodeClaim/" + n for n in rec.nodeclaims}
    if rec.revision is not None:
        out.add(("Job/" if ws.is_tuning else "Workload/") + ws.metadata.name)
    return frozenset(out)


# ----------------------------------------------------------------------------- ensure: per-state actions


_KEEPS_NODES = frozenset({"NodesProvisioning", "PluginsReady", "WorkloadDeploying", "Ready", "JobRunning"})


def _trim_above_target(f: Facts, rec: Lifecycle, out: list) -> Lifecycle:
    """In states that create no NodeClaims: only delete the ones above target."""
    if f.ws.resource is None or f.ws.resource.byo_nodes or not f.claims:
        return rec
    deleted = set(rec.deleted)
    if not _remove_above_target(f, deleted, out):
        return rec
    return attrs.evolve(rec, deleted=_prune_deleted(deleted, rec.nodeclaims, f.claims))


def _ensure_nodeclaims(f: Facts, rec: Lifecycle, out: list, create: bool = True) -> Lifecycle:
    ws = f.ws
    if ws.resource is None or ws.resource.byo_nodes:
        return rec
    deleted = set(rec.deleted)
    failures = rec.claim_failures
    for c in f.claims:
        if c.failed and ("NodeClaim/" + c.name) not in deleted:
            out.append(A.DeleteNodeClaim(c.name, c.failure_reason or "LaunchFailed"))
            out.append(A.RecordEvent("Warning", "NodeClaimFailed",
                                     f"NodeClaim {c.name} failed to launch ({c.failure_reason or 'no reason given'}); "
                                     f"it is deleted and will be replaced"))
            deleted.add("NodeClaim/" + c.name)
            failures += 1
    victims = _remove_above_target(f, deleted, out)
    claims = _merge_claims(rec, f, cap=f.target, skip=victims, marked=deleted)
    missing = f.target - f.existing
    seq = rec.next_seq
    if create and missing > 0 and failures < f.config.max_nodeclaim_failures:
        # Never reuse a name: a cache that saw an old NodeClaim of that name go would take the new one for gone.
        seq = max(seq, _next_free_seq(ws, claims))
        labels = ((LABEL_WORKSPACE, ws.metadata.name), (LABEL_WORKSPACE_NAMESPACE, ws.metadata.namespace))
        new = []
        taken = set(claims) | {c.name for c in f.claims}
        while len(new) < missing:
            name = nodeclaim_name(ws, seq)
            seq += 1
            if name in taken:  # a recorded name never reused, even if its record was lost
                continue
            new.append(name)
            out.append(A.CreateNodeClaim(name, ws.resource.instance_type or "", labels, f.pass_id))
        claims = claims + tuple(new)
        if new:
            rec = attrs.evolve(rec, claimed_at=whole_seconds(f.now), claimed_by=f.pass_id or None)
    if claims is rec.nodeclaims and seq == rec.next_seq and failures == rec.claim_failures \
            and len(deleted) == len(rec.deleted):
        return rec
    return attrs.evolve(rec, nodeclaims=claims, next_seq=seq, claim_failures=failures,
                        deleted=_prune_deleted(deleted, claims, f.claims))


def _ensure_workload(f: Facts, rec: Lifecycle, out: list) -> Lifecycle:
    ws = f.ws
    w = f.snap.workload
    kind = workload_kind(f.target)
    preset = ws.inference.preset.name if ws.inference and ws.inference.preset else ""
    if w is None:
        gone = ("Workload/" + ws.metadata.name) in f.snap.absent
        if not f.gpus_ready:
            # Another runner took the Workspace this far; this one's caches do not show the nodes Ready with
            # GPUs yet (or they were lost since): nothing is created on its word alone. Its watch catches up.
            return rec
        if rec.revision is None or gone:
            # Recorded first (this pass's status write), created after it: a creation is never unrecorded.
            out.append(A.CreateWorkload(kind, ws.metadata.name, f.target, f.revision, preset, f.ready_nodes))
            return attrs.evolve(rec, revision=f.revision)
        return rec  # created already (possibly for an older spec) and not yet visible: act once it is
    if w.revision == f.revision:
        return rec if rec.revision == f.revision else attrs.evolve(rec, revision=f.revision)
    if w.deleting:
        return rec
    # Level-based: whatever the record says, a visible workload of another revision is brought up to date.
    out.append(A.UpdateWorkload(w.kind, w.name, f.target, f.revision, preset, f.ready_nodes))
    return rec if rec.revision == f.revision else attrs.evolve(rec, revision=f.revision)


def _ensure_job(f: Facts, rec: Lifecycle, out: list) -> Lifecycle:
    ws = f.ws
    j = f.snap.job
    name = ws.metadata.name
    if j is None:
        gone = ("Job/" + name) in f.snap.absent
        if not f.gpus_ready:
            return rec  # as for the workload: never created before this pass sees the nodes ready with GPUs
        if rec.revision is None or gone or rec.revision != f.revision:
            t = ws.tuning
            out.append(A.CreateJob(name, f.revision, t.preset.name if t and t.preset else "",
                                   (t.method if t else None) or "qlora", f.ready_nodes))
            return attrs.evolve(rec, revision=f.revision,
                                deleted=tuple(d for d in rec.deleted if not d.startswith("Job/")))
        return rec
    if j.revision == f.revision and rec.revision != f.revision:
        return attrs.evolve(rec, revision=f.revision)  # adopt what exists (its creation's record was lost)
    return rec


def _ensure_old_job_deleted(f: Facts, rec: Lifecycle, out: list) -> Lifecycle:
    name = f.ws.metadata.name
    j = f.snap.job
    if j is None or j.deleting:
        return rec
    # The mark names the revision deleted, so a newer stale Job that appears later is deleted too.
    mark = f"Job/{name}@{j.revision}"
    if mark in rec.deleted:
        return rec
    out.append(A.DeleteJob(name, j.revision, "Background"))
    return attrs.evolve(rec, deleted=tuple(sorted({d for d in rec.deleted if not d.startswith("Job/")} | {mark})))


def _ensure_deleted(f: Facts, rec: Lifecycle, out: list) -> Lifecycle:
    deleted = set(rec.deleted)
    claims = _merge_claims(rec, f)
    observed = {c.name: c for c in f.claims}
    in_flight = set(f.in_flight)
    for name in claims:
        c = observed.get(name)
        if name in in_flight:
            continue  # its create may still land: deleted once it shows up, or forgotten once the grace is over
        if (c is None or not c.deleting) and ("NodeClaim/" + name) not in deleted:
            out.append(A.DeleteNodeClaim(name, "WorkspaceDeleting"))
            deleted.add("NodeClaim/" + name)
    # Not yet known gone: still there, or confirmed absent while a create of it may still land (an orphan).
    remaining = [n for n in claims if n not in f.gone]
    if not remaining and f.ws.deleting and f.config.finalizer in f.ws.metadata.finalizers:
        out.append(A.RemoveFinalizer(f.config.finalizer))
    if claims is rec.nodeclaims and len(deleted) == len(rec.deleted):
        return rec
    return attrs.evolve(rec, nodeclaims=claims, deleted=tuple(sorted(deleted)))


def _ensure(state: str, f: Facts, rec: Lifecycle, out: list) -> Lifecycle:
    if state == "Deleting":
        return _ensure_deleted(f, rec, out)
    if f.config.finalizer not in f.ws.metadata.finalizers:
        out.append(A.AddFinalizer(f.config.finalizer))
    if state == "Pending":
        return rec
    if state in _KEEPS_NODES:
        rec = _ensure_nodeclaims(f, rec, out)
    if state == "WorkloadDeploying":
        return _ensure_workload(f, rec, out)
    if state == "JobRunning":
        return _ensure_job(f, rec, out)
    if state not in _KEEPS_NODES:  # creating nothing new, but never more NodeClaims than the target either
        rec = _trim_above_target(f, rec, out)
    if state == "JobReplacing":
        return _ensure_old_job_deleted(f, rec, out)
    if state in ("Succeeded", "Failed") and f.snap.job is not None and f.snap.job.revision == f.revision \
            and rec.revision != f.revision:
        rec = attrs.evolve(rec, revision=f.revision)
    if rec.nodeclaims and f.gone:
        claims = _merge_claims(rec, f, cap=f.target)
        if claims is not rec.nodeclaims:
            rec = attrs.evolve(rec, nodeclaims=claims)
    return rec


# ----------------------------------------------------------------------------- deadlines


def _fire_deadline(state: str, f: Facts, rec: Lifecycle, stamp: datetime, out: list) -> tuple[str, Lifecycle]:
    spec = STATES[state]
    reason = spec.deadline_reason
    ws = f.ws
    if spec.on_deadline == "replace_unready_nodeclaims":
        deleted = set(rec.deleted)
        replaced = []
        serving = set(f.ready_nodes)
        for c in f.claims:
            # Unready: the claim is not Ready, or its Node never became Ready (it serves nothing).
            if not c.deleting and ("NodeClaim/" + c.name) not in deleted \
                    and not (c.is_ready and c.node_name in serving):
                replaced.append(c.name)
        # Not yet in the cache: replaced too; but not one whose create may still be in flight (a delete now
        # would 404 and the create could land after it): the grace settles those.
        replaced.extend(n for n in f.unseen if ("NodeClaim/" + n) not in deleted and n not in f.in_flight)
        for name in replaced:
            out.append(A.DeleteNodeClaim(name, reason))
            deleted.add("NodeClaim/" + name)
        out.append(A.RecordEvent("Warning", reason,
                                 f"Workspace {ws.key}: {len(replaced)} NodeClaim(s) not Ready {f.config.deadline(state)} "
                                 f"after provisioning started; replacing them (attempt {rec.attempts + 1} of {spec.max_firings})"))
        rec = attrs.evolve(rec, attempts=rec.attempts + 1, entered_at=stamp, deleted=tuple(sorted(deleted)),
                           claim_failures=rec.claim_failures + len(replaced))
        return state, rec
    if spec.on_deadline == "fail":
        out.append(A.RecordEvent("Warning", reason,
                                 f"Workspace {ws.key}: {state} exceeded its deadline of {f.config.deadline(state)}; marking it Failed"))
        rec = _enter(attrs.evolve(rec, attempts=rec.attempts + 1), state, "Failed", stamp,
                     "deadline:" + reason, f.config.history_limit)
        return "Failed", rec
    out.append(A.RecordEvent("Warning", reason,
                             f"Workspace {ws.key}: still in {state} {f.config.deadline(state)} after entering it ({reason}); "
                             f"check the objects it waits for"))
    return state, attrs.evolve(rec, attempts=rec.attempts + 1)


# ----------------------------------------------------------------------------- status


def _summary(state: str, is_tuning: bool, previous: str | None) -> str:
    if is_tuning:
        if state in ("Succeeded", "Failed"):
            return state
        if state in ("JobRunning", "JobReplacing"):
            return "Running"
        return previous if state == "Deleting" and previous else "Pending"
    if state == "Ready":
        return "Ready"
    if state == "Deleting":
        return previous or "Pending"
    return "NotReady" if previous in ("Ready", "NotReady") else "Pending"


def _conditions_for(state: str, f: Facts, rec: Lifecycle) -> list[tuple[str, str, str, str]]:
    """(type, status, reason, message) for KAITO's conditions; messages change only with the state."""
    spec = STATES[state]
    fired = rec.attempts > 0 and spec.deadline_reason
    out: list[tuple[str, str, str, str]] = []
    if state == "Deleting":
        out.append((WORKSPACE_DELETING, "True", "WorkspaceDeleting",
                    "deleting the Workspace's NodeClaims before removing the finalizer"))
        return out
    byo = f.ws.resource is not None and f.ws.resource.byo_nodes
    exhausted = rec.claim_failures >= f.config.max_nodeclaim_failures
    n = f.target
    if state == "Pending":
        return out
    if state == "NodesProvisioning":
        if byo:
            out.append((NODECLAIM_READY, "True", "NodeClaimNotRequired", "bring-your-own nodes: no NodeClaims are created"))
            nodes = (NODES_READY, "False", "NodesNotReady",
                     f"waiting for {n} Ready node(s) matching the Workspace's labelSelector")
        elif exhausted:
            out.append((NODECLAIM_READY, "False", "NodeClaimProvisioningFailed",
                        f"{rec.claim_failures} NodeClaim(s) failed or were replaced; no more are created. "
                        f"Check instance type {f.ws.resource.instance_type if f.ws.resource else ''} availability, then delete "
                        f"and re-create the Workspace"))
            nodes = (NODES_READY, "False", "NodeClaimProvisioningFailed", "nodes cannot be provisioned")
        else:
            out.append((NODECLAIM_READY, "False", "NodeClaimNotReady" if fired else "NodeClaimsNotReady",
                        f"waiting for {n} NodeClaim(s) to be Ready" + (" (deadline passed; unready ones replaced)" if fired else "")))
            nodes = (NODES_READY, "False", "NodesNotReady", f"waiting for {n} node(s) to be Ready")
        out.append(nodes)
        out.append((RESOURCE_READY, "False", nodes[2], nodes[3]))
    else:
        out.append((NODECLAIM_READY, "True", "NodeClaimNotRequired" if byo else "NodeClaimsReady",
                    "bring-your-own nodes" if byo else f"{n} NodeClaim(s) are Ready"))
        if state == "PluginsReady":
            reason = "GPUDevicePluginNotReady" if fired else "GPUCapacityNotReady"
            msg = f"nodes are Ready; waiting for nvidia.com/gpu capacity on {n} node(s)"
            out.append((NODES_READY, "False", reason, msg))
            out.append((RESOURCE_READY, "False", reason, msg))
        else:
            out.append((NODES_READY, "True", "NodesReady", f"{n} node(s) are Ready with GPU capacity"))
            out.append((RESOURCE_READY, "True", "ResourcesReady", "nodes and GPU device plugins are ready"))
    if f.is_tuning:
        if state in ("JobRunning", "Succeeded", "Failed"):
            out.append((JOB_STARTED, "True", "JobStarted", f"tuning Job {f.ws.metadata.name} created"))
        elif state == "JobReplacing":
            out.append((JOB_STARTED, "False", "JobReplacing",
                        "tuning spec changed: the old Job is being deleted before the new one is created"))
        if state == "Succeeded":
            out.append((WORKSPACE_SUCCEEDED, "True", "WorkspaceSucceeded", "tuning Job completed"))
        elif state == "Failed":
            reason = "TuningJobDeadlineExceeded" if any(h.why.startswith("deadline:") for h in rec.history[-1:]) else "TuningJobFailed"
            j = f.snap.job
            detail = f" ({j.failure_reason})" if j is not None and j.failure_reason else ""
            out.append((WORKSPACE_SUCCEEDED, "False", reason, f"tuning Job failed{detail}; change the spec to run it again"))
        else:
            out.append((WORKSPACE_SUCCEEDED, "False", "WorkspacePending", "tuning has not completed yet"))
        return out
    if state == "Ready":
        out.append((INFERENCE_READY, "True", "InferenceReady", "inference workload is ready"))
        out.append((WORKSPACE_SUCCEEDED, "True", "WorkspaceSucceeded", "workspace is ready"))
    elif state == "WorkloadDeploying":
        w = f.snap.workload
        problem = w.problem if w is not None and w.problem else None
        reason = problem or ("WorkloadNotReady" if fired else "WorkloadDeploying")
        msg = f"inference workload {f.ws.metadata.name} is not ready" + (f": {problem}" if problem else "")
        out.append((INFERENCE_READY, "False", reason, msg))
        out.append((WORKSPACE_SUCCEEDED, "False", "WorkspaceNotReady", msg))
    else:
        if f.ws.status.condition(INFERENCE_READY) is not None:  # it was serving: say it no longer is
            out.append((INFERENCE_READY, "False", "ResourcesNotReady", "nodes or GPU device plugins are not ready"))
        out.append((WORKSPACE_SUCCEEDED, "False", "WorkspacePending", "resources are not ready yet"))
    return out


def _merge_conditions(previous: tuple[Condition, ...], wanted: list[tuple[str, str, str, str]],
                      stamp: datetime, generation: int, keep_unmanaged: bool = True) -> tuple[Condition, ...]:
    """KAITO's conditions as wanted; ``lastTransitionTime`` moves only when a status changes.

    Conditions of other types that the machine does not manage are kept as they are.
    """
    prev = {c.type: c for c in previous}
    result: list[Condition] = []
    wanted_types = set()
    for type_, status, reason, message in wanted:
        wanted_types.add(type_)
        old = prev.get(type_)
        if old is not None and old.status == status and old.reason == reason and old.message == message \
                and old.observed_generation == generation:
            result.append(old)
            continue
        ltt = old.last_transition_time if old is not None and old.status == status else stamp
        result.append(Condition(type_, status, reason, message, ltt, generation))
    if keep_unmanaged:
        for c in previous:
            if c.type not in wanted_types and c.type not in KAITO_CONDITIONS and not c.type.startswith("workspace-fsm/"):
                result.append(c)
    return tuple(result)


def _build_status(ws: Workspace, f: Facts | None, state: str, rec: Lifecycle, stamp: datetime,
                  wanted: list[tuple[str, str, str, str]], target: int | None,
                  worker_nodes: tuple[str, ...] | None) -> WorkspaceStatus:
    previous = ws.status
    conds = _merge_conditions(previous.conditions, wanted, stamp, ws.metadata.generation)
    old_rec = previous.condition(LIFECYCLE_CONDITION)
    if old_rec is not None and rec is read_lifecycle(previous):
        rec_cond = old_rec  # unchanged record: no need to serialise it again
    else:
        rec_cond = rec.to_condition(stamp)
    summary = _summary(state, ws.is_tuning, previous.state)
    return WorkspaceStatus(conditions=conds + (rec_cond,), state=summary, target_node_count=target,
                           worker_nodes=worker_nodes, performance=previous.performance)


# ----------------------------------------------------------------------------- wake-up

_LOSS_HELD = frozenset({"PluginsReady", "WorkloadDeploying", "Ready"})


def _wake(state: str, f: Facts, rec: Lifecycle, config: Config) -> A.WakeUp:
    spec = STATES[state]
    best: A.WakeUp | None = None
    deadline = config.deadline(state)
    if deadline is not None and rec.attempts < spec.max_firings and rec.entered_at is not None:
        left = rec.entered_at + deadline - f.now
        best = A.WakeUp(max(left, timedelta(0)), f"{state} deadline ({spec.deadline_reason})")
    byo = f.ws.resource is not None and f.ws.resource.byo_nodes
    # Nodes are not watched (large clusters): their readiness and GPU capacity are re-checked on a timer.
    if state == "PluginsReady" or (state == "NodesProvisioning" and byo):
        if best is None or config.gpu_recheck < best.after:
            best = A.WakeUp(config.gpu_recheck, "re-check node GPU capacity (Nodes are not watched)")
    if state in _LOSS_HELD and rec.entered_at is not None and f.now < rec.entered_at + config.loss_settle \
            and ((not f.nodes_ready and not nodes_lost(f)) or (state == "Ready" and not workload_ready(f))):
        # A loss seen too soon after entering: looked at again once Config.loss_settle has passed.
        left = rec.entered_at + config.loss_settle - f.now
        if best is None or left < best.after:
            best = A.WakeUp(left, f"{state}: nodes or replicas look lost; confirmed after {config.loss_settle} in the state")
    if f.in_flight and f.grace_ends is not None:
        # Confirmed absent but its create may still be applied: look again once that can no longer happen.
        left = max(f.grace_ends - f.now, timedelta(0))
        if best is None or left < best.after:
            best = A.WakeUp(left, f"NodeClaim {f.in_flight[0]} not found; its create may still be in flight, "
                                  f"replaced if still absent after {f.config.create_grace}")
    return best or A.WakeUp.on_event(f"{state}: waiting for the next watch event")


# ----------------------------------------------------------------------------- decide


def _invalid(ws: Workspace, rec: Lifecycle | None, stamp: datetime, config: Config) -> Decision:
    first = ws.problems[0]
    text = "; ".join(str(p) for p in ws.problems)
    message = f"the spec is invalid and nothing new is created for it: {text}. Fix the manifest and apply it again"
    wanted = [(WORKSPACE_SUCCEEDED, "False", first.reason, message[:32000])]
    state = rec.state if rec is not None else "Pending"
    rec = rec or Lifecycle(state="Pending", entered_at=stamp, generation=0, since=stamp)
    prev = ws.status
    conds = _merge_conditions(prev.conditions, wanted, stamp, ws.metadata.generation)
    old_rec = prev.condition(LIFECYCLE_CONDITION)
    rec_cond = old_rec if old_rec is not None and rec is read_lifecycle(prev) else rec.to_condition(stamp)
    status = WorkspaceStatus(conditions=conds + (rec_cond,), state=prev.state or "Pending",
                             target_node_count=prev.target_node_count, worker_nodes=prev.worker_nodes,
                             performance=prev.performance)
    changed = status != prev
    acts: tuple[A.Action, ...] = ()
    if changed:
        acts = (A.RecordEvent("Warning", first.reason, f"Workspace {ws.key}: {message}"),)
    return Decision(status, (), A.WakeUp.on_event("invalid spec: waiting for it to be fixed"), state, (), changed, acts)


def decide(ws: Workspace, snapshot: Snapshot, now: datetime, config: Config = DEFAULT_CONFIG, *,
           pass_id: str = "") -> Decision:
    """One pass of the machine for one Workspace. Pure and deterministic.

    ``pass_id`` names this pass uniquely among every runner that writes the Workspace (a runner makes it
    from a random per-process id and a counter). The record keeps it with the NodeClaims this pass adds,
    and their ``CreateNodeClaim.claim`` carries it, so that what one runner knows of its own creates
    (never sent, refused: ``Snapshot.refused``) is never applied to another runner's.
    """
    stamp = whole_seconds(now)
    rec = read_lifecycle(ws.status)
    if ws.problems and not ws.deleting:
        return _invalid(ws, rec, stamp, config)
    if rec is None:
        rec = Lifecycle(state="Pending", entered_at=stamp, generation=ws.metadata.generation, since=stamp)
    target = target_node_count(ws)
    spec = ws.tuning if ws.tuning is not None else ws.inference
    revision = spec.revision if spec is not None else ""
    f = Facts(ws, snapshot, now, config, rec, target, revision, pass_id)
    out: list = []
    taken: list[HistoryEntry] = []
    state = rec.state if rec.state in STATES else "Pending"
    if state == "Deleting" and not ws.deleting:
        # A record that says Deleting on a Workspace nobody is deleting (edited by hand, restored from a
        # backup): start over from Pending; everything recorded is still counted, nothing is lost.
        rec = _enter(rec, state, "Pending", stamp, "not_being_deleted", config.history_limit)
        taken.append(rec.history[-1])
        state = "Pending"
        f.rec = rec

    deadline = config.deadline(state)
    if deadline is not None and rec.entered_at is not None and rec.attempts < STATES[state].max_firings \
            and now >= rec.entered_at + deadline and not (ws.deleting and state != "Deleting"):
        new_state, rec = _fire_deadline(state, f, rec, stamp, out)
        if new_state != state:
            taken.append(rec.history[-1])
        state = new_state
        f.rec = rec

    visited = {state}
    for _ in range(len(STATES)):
        nxt = step(state, f)
        if nxt is None or nxt in visited:
            # A state is entered at most once per pass: on one snapshot, coming back would be a
            # ping-pong between guards, never progress (tests assert it does not happen).
            break
        visited.add(nxt)
        why = edge_guard_name(state, nxt)
        rec = _enter(rec, state, nxt, stamp, why, config.history_limit)
        taken.append(rec.history[-1])
        out.append(A.RecordEvent("Normal", nxt, f"Workspace {ws.key}: {state} -> {nxt} ({why})"))
        state = nxt
        f.rec = rec

    if rec.generation != ws.metadata.generation:
        rec = attrs.evolve(rec, generation=ws.metadata.generation)
    rec = _ensure(state, f, rec, out)

    worker_nodes = ws.status.worker_nodes
    if state in _AFTER_NODES and f.ready_nodes and state not in ("Succeeded", "Failed"):
        worker_nodes = f.ready_nodes
    elif worker_nodes and state in ("NodesProvisioning", "PluginsReady"):
        still = set(f.ready_nodes)
        kept = tuple(n for n in worker_nodes if n in still)
        worker_nodes = kept if len(kept) != len(worker_nodes) else worker_nodes  # a lost node is not a worker
    wanted = _conditions_for(state, f, rec)
    status = _build_status(ws, f, state, rec, stamp, wanted, target or ws.status.target_node_count, worker_nodes)
    changed = status != ws.status
    if changed and rec.claimed_at is not None and _no_create_in_flight(f, rec):
        # Written anyway: drop the in-flight marker too (never worth a status write of its own).
        rec = attrs.evolve(rec, claimed_at=None, claimed_by=None)
        status = _build_status(ws, f, state, rec, stamp, wanted, target or ws.status.target_node_count, worker_nodes)
    before: list = []
    creates: list = []
    last: list = []
    events: list = []
    for a in out:
        (before if isinstance(a, _BEFORE) else creates if isinstance(a, _AFTER_CREATES)
         else events if isinstance(a, A.RecordEvent) else last).append(a)
    return Decision(status, tuple(before), _wake(state, f, rec, config), state, tuple(taken), changed,
                    tuple(creates + last + events))
