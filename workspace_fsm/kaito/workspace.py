"""KAITO's Workspace (kaito.sh/v1beta1) as a lifecycle on the engine's public API.

Read the table at the bottom (:data:`WORKSPACE`): every state with what it ensures, its deadline, its timers
and what it shows in KAITO's conditions, then the guarded edges in order. Everything above it is the pieces
the rows name: the pass's facts, the guards, the steps that ask for actions, the status projections. The
NodeClaim part is the shared building block :mod:`workspace_fsm.kaito.nodeclaims`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import attrs

from workspace_fsm.engine import (Config as EngineConfig, ConditionStore, Deadline, Edge, GoTo, Kind, Lifecycle,
                                  Owns, RecordFormat, Run, State, WakeUp, Watches, by_labels,
                                  by_owner_reference, guard)
from workspace_fsm.engine.hooks import ActionEvent, Counters, Hooks
from workspace_fsm.engine.interpret import Decision, decide as _interpret
from workspace_fsm.engine.record import HistoryEntry, Record
from workspace_fsm.kaito import actions as A
from workspace_fsm.kaito import estimator as est
from workspace_fsm.kaito import nodeclaims as nc
from workspace_fsm.kaito import sku
from workspace_fsm.kaito.catalogue import Catalogue, EstimatorConstants
from workspace_fsm.kaito.estimator import SizingProblem
from workspace_fsm.kaito.model import (FINALIZER, LABEL_WORKSPACE, LABEL_WORKSPACE_NAMESPACE, Snapshot, Workspace,
                                       WorkspaceStatus, parse_workspace)
from workspace_fsm.kaito.nodeclaims import ABOVE_TARGET, NodeClaimBook, NodeFacts

__all__ = ["ABOVE_TARGET", "Config", "DEFAULT_CONFIG", "Decision", "KAITO_CONDITIONS", "LIFECYCLE_CONDITION",
           "WORKSPACE", "WORKSPACE_SUCCEEDED", "WorkspaceBook", "WorkspaceFacts", "confirmations", "decide",
           "nodeclaim_name", "read_lifecycle", "size_workspace", "Sizing", "target_node_count"]

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
LIFECYCLE_CONDITION = "workspace-fsm/Lifecycle"

# ----------------------------------------------------------------------------- configuration


@attrs.frozen
class Config(EngineConfig):
    """Knobs of the Workspace machine. Defaults follow KAITO's behaviour; durations are simulated or real time."""

    auto_provisioning: bool = True  # KAITO's node auto-provisioning; False = bring-your-own nodes
    max_nodeclaim_failures: int = 6  # failed launches + deadline replacements before giving up
    gpu_recheck: timedelta = timedelta(seconds=5)  # Nodes are not watched: GPU capacity is re-checked on a timer
    finalizer: str = FINALIZER
    # A state entered on another runner's snapshot may be read by a runner whose caches of NodeClaims, Nodes
    # and workloads still lag its Workspace cache: to it, Ready nodes look not Ready yet. A loss seen only
    # as missing readiness therefore moves the machine back only once the state has been held this long.
    # Deletions, spec changes and confirmed absence are acted on at once.
    loss_settle: timedelta = timedelta(seconds=10)

    def deadline(self, state: str) -> timedelta | None:
        return WORKSPACE.deadline(state, self)


DEFAULT_CONFIG = Config()

# ----------------------------------------------------------------------------- record


@attrs.frozen
class WorkspaceBook(NodeClaimBook):
    """The Workspace's bookkeeping: its NodeClaims (see NodeClaimBook), the revision it deployed and whether it
    created the inference Workspace's Services."""

    revision: str | None = None  # spec revision of the workload or Job it created
    services: bool = False  # its Service and headless Service were created (their absence is then confirmed)

    def to_json(self) -> dict[str, Any]:
        body = super().to_json()
        if self.revision is not None:
            body["rev"] = self.revision
        if self.services:
            body["svc"] = 1
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> WorkspaceBook:
        return cls(**cls.fields_from_json(body), revision=None if body.get("rev") is None else str(body["rev"]),
                   services=bool(body.get("svc")))


# Version 1 since the first release: the engine's members plus these, in one JSON object (a runner of any
# release reads any other's, which a rolling update needs).
RECORD = RecordFormat(data=WorkspaceBook, version=1, store=ConditionStore(LIFECYCLE_CONDITION))


def read_lifecycle(status: WorkspaceStatus) -> Record[WorkspaceBook] | None:
    """The persisted record on a Workspace status, or None (none yet, or unreadable: start from Pending)."""
    return RECORD.read(_StatusOnly(status))


class _StatusOnly:
    __slots__ = ("status",)

    def __init__(self, status: WorkspaceStatus) -> None:
        self.status = status


# ----------------------------------------------------------------------------- facts


@attrs.frozen
class Sizing:
    """How many GPU nodes a Workspace needs, as KAITO computes status.targetNodeCount (see
    :mod:`workspace_fsm.kaito.estimator`). ``target`` is 0 while it cannot be computed: ``problem`` says why
    (an instance type that cannot hold the model, ...), or ``waiting_for`` names what must be observed first."""

    target: int
    how: str = ""
    problem: SizingProblem | None = None
    waiting_for: str | None = None
    config_missing: str | None = None  # the named inference ConfigMap does not exist: 2048 tokens assumed


def size_workspace(ws: Workspace, snap: Snapshot | None = None) -> Sizing:
    """status.targetNodeCount as KAITO computes it, from the spec, the preset catalogue, the inference
    ConfigMap (``snap.config_maps``) and, with bring-your-own nodes, the Ready nodes' NVIDIA labels.

    Computed once: a kept status.targetNodeCount is returned as it is, whatever the spec or catalogue say now."""
    kept = ws.status.target_node_count
    if kept:
        return Sizing(kept, "kept in status.targetNodeCount")
    r = ws.resource
    if r is None:
        return Sizing(0)
    inf = ws.inference
    if ws.tuning is not None or inf is None:
        return Sizing(1, "tuning runs on one node")
    requested = r.count if r.count and r.count > 0 else 1
    if est.runtime_of(ws.metadata.annotations) != "vllm":
        return Sizing(requested, "transformers runtime: resource.count")
    if inf.preset is None:
        return Sizing(requested, "no preset: resource.count")
    cat = ws.catalogue if ws.catalogue is not None else Catalogue.default()
    preset = cat.resolve(inf.preset.name)
    if preset is None or not preset.gpu_memory_bytes:
        return Sizing(requested, f"no size known for model {inf.preset.name}: resource.count")
    kaito = cat.kaito if cat.kaito is not None else Catalogue.default().kaito
    constants = kaito.estimator if kaito is not None else EstimatorConstants()
    snap = snap if snap is not None else Snapshot()
    context = None
    missing = None
    if inf.config:
        data = snap.config_maps.get(inf.config)
        if data is not None:
            text = data.get(est.INFERENCE_CONFIG_KEY)
            context = est.parse_max_model_len(text) if isinstance(text, str) else None
        elif "ConfigMap/" + inf.config in snap.absent:
            missing = inf.config
        else:
            return Sizing(0, waiting_for="ConfigMap/" + inf.config)
        limit = preset.model_token_limit
        if context is not None and limit and context > limit:
            # KAITO's webhook refuses this Workspace (validateInferenceConfig): the model cannot use that context.
            return Sizing(0, problem=SizingProblem(
                "MaxModelLenTooLarge",
                f"max-model-len {context} in ConfigMap {inf.config} exceeds the {limit} tokens model {preset.name} "
                f"supports; set it to at most {limit}"))
    instance = None
    if r.byo_nodes:
        if r.partition is not None and r.partition.mode.lower() == "mig":
            gpus: est.GPUConfig | SizingProblem | None = est.mig_gpu_config(r.partition.profile or "")
            if gpus is None:
                gpus = SizingProblem("MIGProfileInvalid", f"MIG profile {r.partition.profile!r} cannot be read")
        else:
            node = est.first_ready(snap.nodes.values(), r.label_selector.matches)
            if node is None:
                gpus = SizingProblem("NoReadyNodes", "no Ready node matches resource.labelSelector, so the GPUs to "
                                     "size the Workspace for are unknown; add or label GPU nodes", retry=True)
            else:
                gpus = est.gpu_config_from_node(node)
                if isinstance(gpus, est.GPUConfig) and r.partition is not None and r.partition.count:
                    if r.partition.count > gpus.gpu_count:
                        gpus = SizingProblem("PartitionCountTooLarge",
                                             f"resource.partition.count ({r.partition.count}) exceeds the "
                                             f"{gpus.gpu_count} GPU(s) of {gpus.source}")
                    else:
                        gpus = est.GPUConfig(r.partition.count, gpus.per_gpu_bytes * r.partition.count,
                                             f"{r.partition.count} GPU(s) of {gpus.source}")
    else:
        instance = sku.lookup(r.instance_type or "")
        if instance is None:
            # Azure (and Arc) VM sizes are named Standard_*: suggest from that cloud, else from the others.
            azure = (r.instance_type or "").lower().startswith("standard_")
            fits = [f for cloud in (("azure", "arc") if azure else ("aws",))
                    for f in est.fitting_instance_types(preset, cloud=cloud, context=context, constants=constants)]
            gpus = SizingProblem(
                "InstanceTypeUnknown",
                f"instance type {r.instance_type} is not one KAITO knows the GPUs of, so model {preset.name} cannot "
                f"be sized for it" + _fits_text(fits))
        else:
            gpus = est.GPUConfig(instance.gpu_count, instance.gpu_memory_bytes, f"instance type {instance.name}")
    if isinstance(gpus, SizingProblem):
        return Sizing(0, problem=gpus, config_missing=missing)
    assert gpus is not None
    found = est.estimate_nodes(preset, gpus, requested=r.count, context=context, constants=constants)
    if isinstance(found, SizingProblem):
        if instance is not None:
            fits = est.fitting_instance_types(preset, cloud=instance.cloud, context=context, constants=constants)
            found = attrs.evolve(found, message=found.message + _fits_text(fits))
        if found.reason == "GPUMemoryTooSmall" and context is not None:
            found = attrs.evolve(found, message=f"{found.message}; or lower max-model-len ({context}) in ConfigMap "
                                                f"{inf.config}")
        return Sizing(0, problem=found, config_missing=missing)
    return Sizing(found.nodes, found.how, config_missing=missing)


def _fits_text(fits: list[tuple[str, int]]) -> str:
    if not fits:
        return "; no instance type KAITO knows can hold it"
    return "; instance types that can hold it: " + ", ".join(f"{n} ({k} node{'s' if k != 1 else ''})" for n, k in fits)


def target_node_count(ws: Workspace, snap: Snapshot | None = None) -> int:
    """How many GPU nodes the Workspace needs: computed once (:func:`size_workspace`), then kept in
    status.targetNodeCount. 0 while it cannot be computed."""
    return size_workspace(ws, snap).target


def nodeclaim_name(ws: Workspace, seq: int) -> str:
    """Deterministic: a stale cache then yields AlreadyExists, never a duplicate NodeClaim."""
    return nc.nodeclaim_name(ws.metadata, seq)


def workload_kind(target: int) -> str:
    return "Deployment" if target <= 1 else "StatefulSet"


class WorkspaceFacts(NodeFacts):
    """What the guards read, derived once per pass from (workspace, snapshot, record, now)."""

    __slots__ = ("ws", "revision", "sizing")

    def __init__(self, ws: Workspace, snap: Snapshot, now: datetime, config: Config, rec: Record[WorkspaceBook],
                 pass_id: str = "") -> None:
        # The base initialiser's work, inline: this runs once per pass.
        self.obj, self.snap, self.now, self.config, self.rec, self.pass_id = ws, snap, now, config, rec, pass_id
        self.lifecycle = None
        self.ws = ws
        spec = ws.tuning if ws.tuning is not None else ws.inference
        self.revision = spec.revision if spec is not None else ""
        r = ws.resource
        m = ws.metadata
        # Sized once: a kept status.targetNodeCount is used as it is (the estimate never runs again).
        kept = ws.status.target_node_count
        self.sizing: Sizing | None = None if kept else size_workspace(ws, snap)
        target = kept if kept else self.sizing.target  # type: ignore[union-attr]
        if r is None:
            self.observe_nodes(target, False, False, None, "", (), ws.status.worker_nodes)
        else:
            self.observe_nodes(target, True, r.byo_nodes, r.label_selector, r.instance_type or "",
                               ((LABEL_WORKSPACE, m.name), (LABEL_WORKSPACE_NAMESPACE, m.namespace)),
                               ws.status.worker_nodes)

    @property
    def is_tuning(self) -> bool:
        return self.ws.tuning is not None


# ----------------------------------------------------------------------------- guards
# Each guard is named for what it checks; the name is what the diagram, the history and explain show.


def _problems_shown(f: WorkspaceFacts) -> str:
    if not f.ws.valid:
        return "; ".join(str(p) for p in f.ws.problems)
    s = f.sizing
    if s is None:
        return f"the spec is valid; targetNodeCount {f.target} (kept)"
    if s.problem is not None:
        return f"the spec is valid; not sized: [{s.problem.reason}] {s.problem.message}"
    if s.waiting_for is not None:
        return f"the spec is valid; sizing waits to read {s.waiting_for}"
    return f"the spec is valid; targetNodeCount {s.target} ({s.how})"


def _sized(f: WorkspaceFacts) -> bool:
    s = f.sizing
    return s is None or (s.problem is None and s.waiting_for is None and s.target > 0)


@guard(shows=_problems_shown)
def spec_accepted(f: WorkspaceFacts) -> bool:
    """The spec passed validation and targetNodeCount is known (computed as KAITO does, or kept): the
    machine may create things for it."""
    return f.ws.valid and _sized(f)


nodes_ready = nc.nodes_ready
nodes_lost = nc.nodes_lost
loss_settled = nc.loss_settled


@guard(shows=nc._gpus_shown)
def gpus_ready_inference(f: WorkspaceFacts) -> bool:
    """Every node advertises nvidia.com/gpu capacity (the device plugin is up); inference Workspace."""
    return f.gpus_ready and not f.is_tuning


@guard(shows=nc._gpus_shown)
def gpus_ready_tuning(f: WorkspaceFacts) -> bool:
    """Every node advertises nvidia.com/gpu capacity (the device plugin is up); tuning Workspace."""
    return f.gpus_ready and f.is_tuning


def _workload_shown(f: WorkspaceFacts) -> str:
    w = f.snap.workload
    if w is None:
        return f"no workload {f.ws.metadata.name} in the cache"
    return (f"{w.kind} {w.name}: {w.ready_replicas}/{w.replicas} ready, {w.updated_replicas} updated, revision "
            f"{w.revision or '-'} (spec: {f.revision})" + (f", {w.problem}" if w.problem else ""))


@guard(shows=_workload_shown)
def workload_ready(f: WorkspaceFacts) -> bool:
    """The workload has the current revision and all its replicas are ready."""
    w = f.snap.workload
    return w is not None and w.revision == f.revision and w.is_ready


@guard(shows=_workload_shown)
def workload_unready_or_stale(f: WorkspaceFacts) -> bool:
    """The workload was built from an older spec, or its replicas are unready past Config.loss_settle in Ready.

    A lagging cache's echo of the rollout is not a loss: readiness counts once Ready has been held that long."""
    w = f.snap.workload
    if w is not None and w.revision != f.revision:
        return True
    return not workload_ready(f) and loss_settled(f)


def _job_shown(f: WorkspaceFacts) -> str:
    j = f.snap.job
    if j is None:
        gone = ("Job/" + f.ws.metadata.name) in f.snap.absent
        return f"no Job {f.ws.metadata.name} ({'confirmed absent' if gone else 'not in the cache'}); " \
               f"recorded revision {f.rec.data.revision or '-'}, spec {f.revision}"
    state = "complete" if j.complete else "failed" if j.failed_permanently else f"{j.active} active"
    return f"Job {j.name}: {state}, revision {j.revision or '-'} (spec: {f.revision})" + (" (deleting)" if j.deleting else "")


@guard(shows=_job_shown)
def job_stale(f: WorkspaceFacts) -> bool:
    """The tuning spec changed: the Job that exists (or was last created and is not yet visible) has an older revision."""
    j = f.snap.job
    if j is not None and not j.deleting:
        return j.revision != f.revision
    if ("Job/" + f.ws.metadata.name) in f.snap.absent:
        return False  # no Job exists: nothing stale to replace (the next one is created with the current revision)
    rev = f.rec.data.revision
    return rev is not None and rev != f.revision


@guard(shows=_job_shown)
def spec_changed_job_gone(f: WorkspaceFacts) -> bool:
    """A finished tuning Workspace got a new spec and no Job is left (its absence confirmed): run the new one."""
    j = f.snap.job
    return j is None and ("Job/" + f.ws.metadata.name) in f.snap.absent and f.rec.data.revision != f.revision


@guard(shows=_job_shown)
def job_succeeded(f: WorkspaceFacts) -> bool:
    """The Job of the current revision completed."""
    j = f.snap.job
    return j is not None and j.revision == f.revision and j.complete


@guard(shows=_job_shown)
def job_failed(f: WorkspaceFacts) -> bool:
    """The Job of the current revision failed for good (backoffLimit or activeDeadline reached)."""
    j = f.snap.job
    return j is not None and j.revision == f.revision and j.failed_permanently


@guard(shows=_job_shown)
def old_job_gone(f: WorkspaceFacts) -> bool:
    """No stale Job is left: it is gone (its absence confirmed, not merely missing from a lagging cache),
    or the Job there already has the current revision."""
    j = f.snap.job
    if j is not None:
        return not j.deleting and j.revision == f.revision
    return ("Job/" + f.ws.metadata.name) in f.snap.absent


# ----------------------------------------------------------------------------- steps (ensure)


def ensure_workload(f: WorkspaceFacts, book: WorkspaceBook, out: list[Any]) -> WorkspaceBook:
    """The inference workload exists with the current revision (created, or updated in place)."""
    ws = f.ws
    w = f.snap.workload
    kind = workload_kind(f.target)
    preset = ws.inference.preset.name if ws.inference and ws.inference.preset else ""
    if w is None:
        gone = ("Workload/" + ws.metadata.name) in f.snap.absent
        if not f.gpus_ready:
            # Another runner took the Workspace this far; this one's caches do not show the nodes Ready with
            # GPUs yet (or they were lost since): nothing is created on its word alone. Its watch catches up.
            return book
        if book.revision is None or gone:
            # Recorded first (this pass's status write), created after it: a creation is never unrecorded.
            out.append(A.CreateWorkload(kind, ws.metadata.name, f.target, f.revision, preset, f.ready_nodes,
                                        _observed_gpus(f) if f.byo else 0))
            return attrs.evolve(book, revision=f.revision)
        return book  # created already (possibly for an older spec) and not yet visible: act once it is
    if w.revision == f.revision:
        return book if book.revision == f.revision else attrs.evolve(book, revision=f.revision)
    if w.deleting:
        return book
    # Level-based: whatever the record says, a visible workload of another revision is brought up to date.
    out.append(A.UpdateWorkload(w.kind, w.name, f.target, f.revision, preset, f.ready_nodes,
                                _observed_gpus(f) if f.byo else 0))
    return book if book.revision == f.revision else attrs.evolve(book, revision=f.revision)


def _observed_gpus(f: WorkspaceFacts) -> int:
    """GPUs per node as the ready nodes advertise them (bring-your-own nodes: the spec does not say); 0 when none."""
    caps = [f.snap.nodes[n].gpu_capacity for n in f.ready_nodes if n in f.snap.nodes]
    return min(caps) if caps else 0


def ensure_services(f: WorkspaceFacts, book: WorkspaceBook, out: list[Any]) -> WorkspaceBook:
    """The inference Workspace's Service (the model's port) and headless Service exist, as KAITO's ensureService
    makes them: created when absent, never re-created while they are there (a Service keeps its cluster IP)."""
    seen = f.snap.services
    name = f.ws.metadata.name
    headless = name + "-headless"
    if name in seen and headless in seen:  # the steady state: two lookups
        return book if book.services else attrs.evolve(book, services=True)
    absent = f.snap.absent
    for svc, is_headless in ((name, False), (headless, True)):
        if svc in seen or (book.services and ("Service/" + svc) not in absent):
            continue  # there, or created already and not yet in the cache
        out.append(A.CreateService(svc, headless=is_headless, stateful=workload_kind(f.target) == "StatefulSet"))
    return book if book.services else attrs.evolve(book, services=True)


def ensure_job(f: WorkspaceFacts, book: WorkspaceBook, out: list[Any]) -> WorkspaceBook:
    """The tuning Job of the current revision exists (never before this pass sees the nodes ready with GPUs)."""
    ws = f.ws
    j = f.snap.job
    name = ws.metadata.name
    if j is None:
        gone = ("Job/" + name) in f.snap.absent
        if not f.gpus_ready:
            return book
        if book.revision is None or gone or book.revision != f.revision:
            t = ws.tuning
            out.append(A.CreateJob(name, f.revision, t.preset.name if t and t.preset else "",
                                   (t.method if t else None) or "qlora", f.ready_nodes))
            return attrs.evolve(book, revision=f.revision,
                                deleted=tuple(d for d in book.deleted if not d.startswith("Job/")))
        return book
    if j.revision == f.revision and book.revision != f.revision:
        return attrs.evolve(book, revision=f.revision)  # adopt what exists (its creation's record was lost)
    return book


def delete_stale_job(f: WorkspaceFacts, book: WorkspaceBook, out: list[Any]) -> WorkspaceBook:
    """The stale Job is deleted with Background propagation, once per revision."""
    name = f.ws.metadata.name
    j = f.snap.job
    if j is None or j.deleting:
        return book
    # The mark names the revision deleted, so a newer stale Job that appears later is deleted too.
    mark = f"Job/{name}@{j.revision}"
    if mark in book.deleted:
        return book
    out.append(A.DeleteJob(name, j.revision, "Background", j.uid))
    return attrs.evolve(book, deleted=tuple(sorted({d for d in book.deleted if not d.startswith("Job/")} | {mark})))


def adopt_job_revision(f: WorkspaceFacts, book: WorkspaceBook, out: list[Any]) -> WorkspaceBook:
    """A finished Job of the current revision is what the record deployed (its creation's record may be lost)."""
    j = f.snap.job
    if j is not None and j.revision == f.revision and book.revision != f.revision:
        return attrs.evolve(book, revision=f.revision)
    return book


# ----------------------------------------------------------------------------- status projections
# (type, status, reason, message) for KAITO's conditions; messages change only with the state.

Conds = list[tuple[str, str, str, str]]


def _provisioning(f: WorkspaceFacts) -> Conds:
    n = f.target
    out: Conds = []
    book = f.rec.data
    if f.byo:
        out.append((NODECLAIM_READY, "True", "NodeClaimNotRequired", "bring-your-own nodes: no NodeClaims are created"))
        nodes = (NODES_READY, "False", "NodesNotReady", f"waiting for {n} Ready node(s) matching the Workspace's labelSelector")
    elif book.claim_failures >= f.config.max_nodeclaim_failures:
        out.append((NODECLAIM_READY, "False", "NodeClaimProvisioningFailed",
                    f"{book.claim_failures} NodeClaim(s) failed or were replaced; no more are created. "
                    f"Check instance type {f.instance_type} availability, then delete and re-create the Workspace"))
        nodes = (NODES_READY, "False", "NodeClaimProvisioningFailed", "nodes cannot be provisioned")
    else:
        fired = f.deadline_fired
        out.append((NODECLAIM_READY, "False", "NodeClaimNotReady" if fired else "NodeClaimsNotReady",
                    f"waiting for {n} NodeClaim(s) to be Ready" + (" (deadline passed; unready ones replaced)" if fired else "")))
        nodes = (NODES_READY, "False", "NodesNotReady", f"waiting for {n} node(s) to be Ready")
    out.append(nodes)
    out.append((RESOURCE_READY, "False", nodes[2], nodes[3]))
    return out


def _claims_ready(f: WorkspaceFacts) -> tuple[str, str, str, str]:
    return (NODECLAIM_READY, "True", "NodeClaimNotRequired" if f.byo else "NodeClaimsReady",
            "bring-your-own nodes" if f.byo else f"{f.target} NodeClaim(s) are Ready")


def _plugins_pending(f: WorkspaceFacts) -> Conds:
    reason = "GPUDevicePluginNotReady" if f.deadline_fired else "GPUCapacityNotReady"
    msg = f"nodes are Ready; waiting for nvidia.com/gpu capacity on {f.target} node(s)"
    return [_claims_ready(f), (NODES_READY, "False", reason, msg), (RESOURCE_READY, "False", reason, msg)]


def _resources_ready(f: WorkspaceFacts) -> Conds:
    return [_claims_ready(f), (NODES_READY, "True", "NodesReady", f"{f.target} node(s) are Ready with GPU capacity"),
            (RESOURCE_READY, "True", "ResourcesReady", "nodes and GPU device plugins are ready")]


def _not_done(f: WorkspaceFacts) -> Conds:
    """Inference or tuning, before the workload or Job: not succeeded yet."""
    if f.is_tuning:
        return [(WORKSPACE_SUCCEEDED, "False", "WorkspacePending", "tuning has not completed yet")]
    out: Conds = []
    if f.ws.status.condition(INFERENCE_READY) is not None:  # it was serving: say it no longer is
        out.append((INFERENCE_READY, "False", "ResourcesNotReady", "nodes or GPU device plugins are not ready"))
    out.append((WORKSPACE_SUCCEEDED, "False", "WorkspacePending", "resources are not ready yet"))
    return out


def show_pending(f: WorkspaceFacts) -> Conds:
    s = f.sizing
    if s is None or s.problem is None:
        return []
    msg = f"{_sizing_message(f, s.problem)}; nothing is created until this is fixed"
    return [(RESOURCE_READY, "False", s.problem.reason, msg), (WORKSPACE_SUCCEEDED, "False", s.problem.reason, msg)]


def _sizing_message(f: WorkspaceFacts, problem: SizingProblem) -> str:
    return f"targetNodeCount cannot be computed: {problem.message}"


def report_sizing(f: WorkspaceFacts, book: WorkspaceBook, out: list[Any]) -> WorkspaceBook:
    """Warning Events about sizing, once: a Workspace that cannot be sized (when its condition first says so),
    and an inference ConfigMap named but not found (on the pass that sizes it, with 2048 tokens of context)."""
    s = f.sizing
    if s is None:
        return book
    key = f.ws.key
    if s.problem is not None:
        shown = f.ws.status.condition(WORKSPACE_SUCCEEDED)
        msg = _sizing_message(f, s.problem)
        if shown is None or shown.reason != s.problem.reason or not shown.message.startswith(msg):
            out.append(A.RecordEvent("Warning", s.problem.reason, f"Workspace {key}: {msg}"))
    elif s.config_missing is not None and s.target > 0:
        out.append(A.RecordEvent(
            "Warning", "InferenceConfigNotFound",
            f"Workspace {key}: inference.config names ConfigMap {s.config_missing}, which does not exist in namespace "
            f"{f.ws.metadata.namespace}; targetNodeCount {s.target} was computed for KAITO's default context of "
            f"2048 tokens. Create the ConfigMap (key {est.INFERENCE_CONFIG_KEY}) and recreate the Workspace if "
            f"its max-model-len needs more"))
    return book


def sizing_retry(f: WorkspaceFacts) -> WakeUp | None:
    """Sizing that may resolve by itself (bring-your-own nodes not Ready yet, unlabelled, a ConfigMap not yet
    read) is looked at again on the GPU re-check timer: Nodes are not watched."""
    s = f.sizing
    if s is None or not (s.waiting_for is not None or (s.problem is not None and s.problem.retry)):
        return None
    return WakeUp(f.config.gpu_recheck, "size the Workspace again: " +
                  (f"read {s.waiting_for}" if s.waiting_for else s.problem.reason))  # type: ignore[union-attr]


def show_provisioning(f: WorkspaceFacts) -> Conds:
    return _provisioning(f) + _not_done(f)


def show_plugins(f: WorkspaceFacts) -> Conds:
    return _plugins_pending(f) + _not_done(f)


def show_deploying(f: WorkspaceFacts) -> Conds:
    w = f.snap.workload
    problem = w.problem if w is not None and w.problem else None
    reason = problem or ("WorkloadNotReady" if f.deadline_fired else "WorkloadDeploying")
    msg = f"inference workload {f.ws.metadata.name} is not ready" + (f": {problem}" if problem else "")
    return _resources_ready(f) + [(INFERENCE_READY, "False", reason, msg), (WORKSPACE_SUCCEEDED, "False", "WorkspaceNotReady", msg)]


def show_ready(f: WorkspaceFacts) -> Conds:
    return _resources_ready(f) + [(INFERENCE_READY, "True", "InferenceReady", "inference workload is ready"),
                                  (WORKSPACE_SUCCEEDED, "True", "WorkspaceSucceeded", "workspace is ready")]


def show_job_running(f: WorkspaceFacts) -> Conds:
    return _resources_ready(f) + [(JOB_STARTED, "True", "JobStarted", f"tuning Job {f.ws.metadata.name} created"),
                                  (WORKSPACE_SUCCEEDED, "False", "WorkspacePending", "tuning has not completed yet")]


def show_job_replacing(f: WorkspaceFacts) -> Conds:
    return _resources_ready(f) + [(JOB_STARTED, "False", "JobReplacing",
                                   "tuning spec changed: the old Job is being deleted before the new one is created"),
                                  (WORKSPACE_SUCCEEDED, "False", "WorkspacePending", "tuning has not completed yet")]


def show_succeeded(f: WorkspaceFacts) -> Conds:
    return _resources_ready(f) + [(JOB_STARTED, "True", "JobStarted", f"tuning Job {f.ws.metadata.name} created"),
                                  (WORKSPACE_SUCCEEDED, "True", "WorkspaceSucceeded", "tuning Job completed")]


def show_failed(f: WorkspaceFacts) -> Conds:
    h = f.rec.history
    reason = "TuningJobDeadlineExceeded" if any(e.why.startswith("deadline:") for e in h[-1:]) else "TuningJobFailed"
    j = f.snap.job
    detail = f" ({j.failure_reason})" if j is not None and j.failure_reason else ""
    return _resources_ready(f) + [(JOB_STARTED, "True", "JobStarted", f"tuning Job {f.ws.metadata.name} created"),
                                  (WORKSPACE_SUCCEEDED, "False", reason, f"tuning Job failed{detail}; change the spec to run it again")]


def show_deleting(f: WorkspaceFacts) -> Conds:
    return [(WORKSPACE_DELETING, "True", "WorkspaceDeleting",
             "deleting the Workspace's NodeClaims before removing the finalizer")]


def summary_waiting(f: WorkspaceFacts) -> str:
    """status.state before anything serves: Pending, or NotReady once it has been Ready (inference)."""
    if f.is_tuning:
        return "Pending"
    return "NotReady" if f.ws.status.state in ("Ready", "NotReady") else "Pending"


def summary_kept(f: WorkspaceFacts) -> str:
    return f.ws.status.state or "Pending"


def workers_kept(f: WorkspaceFacts) -> Mapping[str, Any]:
    """status.workerNodes: the recorded ones that still serve (a lost node is not a worker)."""
    prev = f.ws.status.worker_nodes
    if not prev:
        return {}
    still = set(f.ready_nodes)
    kept = tuple(n for n in prev if n in still)
    return {"workerNodes": kept if len(kept) != len(prev) else prev}


workers_now = nc.workers_now


def workers_now_or_kept(f: WorkspaceFacts) -> Mapping[str, Any]:
    return workers_now(f) or workers_kept(f)


def project(ws: Workspace, f: WorkspaceFacts | None, state: str | None, conditions: tuple, summary: str | None,
            fields: Mapping[str, Any] | None) -> WorkspaceStatus:
    """KAITO's status: conditions (the record's among them), state, targetNodeCount, workerNodes, performance."""
    prev = ws.status
    if f is None:  # invalid spec: only the conditions change
        return WorkspaceStatus(conditions=conditions, state=prev.state or "Pending",
                               target_node_count=prev.target_node_count, worker_nodes=prev.worker_nodes,
                               performance=prev.performance)
    workers = fields["workerNodes"] if fields and "workerNodes" in fields else prev.worker_nodes
    return WorkspaceStatus(conditions=conditions, state=summary, target_node_count=f.target or prev.target_node_count,
                           worker_nodes=workers, performance=prev.performance)


def confirmations(ws: Workspace) -> frozenset[str]:
    """The objects whose absence the machine must know positively to decide for this Workspace.

    Adapters look these up when their cache does not show them: a tombstone (deletion seen by the watch)
    or a 404 from a GET puts the name in ``Snapshot.absent``. Everything else is read from caches.
    ``"NodeClaim/<name>"`` for every NodeClaim the record holds, ``"Job/<workspace>"`` and
    ``"Workload/<workspace>"`` once one was recorded, ``"Service/<workspace>"`` and ``"Service/<workspace>-headless"``
    once the Services were; ``"ConfigMap/<inference.config>"`` until
    status.targetNodeCount is kept (an existing one is put in ``Snapshot.config_maps`` instead).
    """
    rec = RECORD.read(ws)
    sizing = _config_map_asked(ws)
    if rec is None:
        return frozenset(sizing)
    out = nc.nodes_confirmations(rec.data) | sizing
    if rec.data.revision is not None:
        out.add(("Job/" if ws.is_tuning else "Workload/") + ws.metadata.name)
    if rec.data.services and not ws.is_tuning:
        out |= {"Service/" + ws.metadata.name, "Service/" + ws.metadata.name + "-headless"}
    return frozenset(out)


def _config_map_asked(ws: Workspace) -> set[str]:
    """``ConfigMap/<inference.config>`` while targetNodeCount is not yet kept and the estimate reads it."""
    inf = ws.inference
    if ws.status.target_node_count or inf is None or not inf.config or inf.preset is None or ws.tuning is not None:
        return set()
    if est.runtime_of(ws.metadata.annotations) != "vllm":
        return set()
    return {"ConfigMap/" + inf.config}


def loss_held(f: WorkspaceFacts) -> WakeUp | None:
    """Nodes look lost too soon after entering the state: looked at again once Config.loss_settle has passed."""
    return _loss_held(f, workload=False)


def loss_held_or_replicas(f: WorkspaceFacts) -> WakeUp | None:
    """As loss_held, replicas that look unready in Ready included."""
    return _loss_held(f, workload=True)


def _loss_held(f: WorkspaceFacts, workload: bool) -> WakeUp | None:
    left = nc.loss_settle_left(f)
    if left is None:
        return None
    if (not f.nodes_ready and not nodes_lost(f)) or (workload and not workload_ready(f)):
        return WakeUp(left,
                      f"{f.rec.state}: nodes or replicas look lost; confirmed after {f.config.loss_settle} in the state")
    return None


# ----------------------------------------------------------------------------- the table

_M = timedelta(minutes=1)
_NODES = (nc.ensure_nodeclaims, nc.forget_gone)  # states that keep the nodes: provision, replace, trim, forget

STATE_TABLE: tuple[State, ...] = (
    State("Pending", "Validated, finalizer added and targetNodeCount computed; nothing created yet. An invalid "
          "spec, or one that cannot be sized (an instance type too small for the model), waits here.",
          ensure=(report_sizing,), wake=(sizing_retry,), conditions=show_pending, summary=summary_waiting),
    State("NodesProvisioning", "NodeClaims created (targetNodeCount of them); waiting for them and their Nodes to be Ready.",
          ensure=(report_sizing, *_NODES), deadline=Deadline(10 * _M, "NodeClaimNotReady", Run(nc.replace_unready_nodeclaims), max_firings=3),
          wake=(nc.recheck_byo_nodes,), conditions=show_provisioning, summary=summary_waiting, fields=workers_kept),
    State("PluginsReady", "Nodes are Ready; waiting for the GPU device plugin to advertise nvidia.com/gpu on each.",
          ensure=_NODES, deadline=Deadline(5 * _M, "GPUDevicePluginNotReady"),
          wake=(nc.recheck_gpu_capacity, loss_held), conditions=show_plugins, summary=summary_waiting,
          fields=workers_now_or_kept),
    State("WorkloadDeploying", "Inference workload created or updated; waiting for its replicas to be ready.",
          ensure=(nc.ensure_nodeclaims, ensure_workload, ensure_services), deadline=Deadline(30 * _M, "WorkloadNotReady"),
          wake=(loss_held,), conditions=show_deploying, summary=summary_waiting, fields=workers_now),
    State("Ready", "Inference is being served; left again if nodes or replicas are lost or the spec changes.",
          ensure=(*_NODES, ensure_services), wake=(loss_held_or_replicas,), conditions=show_ready, summary="Ready",
          fields=workers_now),
    State("JobRunning", "Tuning Job of the current revision created; waiting for it to finish.",
          ensure=(nc.ensure_nodeclaims, ensure_job),
          deadline=Deadline(48 * 60 * _M, "TuningJobDeadlineExceeded", GoTo("Failed")),
          conditions=show_job_running, summary="Running", fields=workers_now),
    State("JobReplacing", "Tuning spec changed: old Job deleted with Background propagation; waiting until it is gone.",
          ensure=(nc.trim_above_target, delete_stale_job), deadline=Deadline(10 * _M, "StaleJobNotDeleted"),
          conditions=show_job_replacing, summary="Running", fields=workers_now),
    State("Succeeded", "Tuning finished; a new spec starts a new run.", terminal=True,
          ensure=(nc.trim_above_target, adopt_job_revision, nc.forget_gone), conditions=show_succeeded,
          summary="Succeeded"),
    State("Failed", "Tuning failed; a new spec starts a new run.", terminal=True,
          ensure=(nc.trim_above_target, adopt_job_revision, nc.forget_gone), conditions=show_failed, summary="Failed"),
    State("Deleting", "deletionTimestamp set: deleting the Workspace's NodeClaims, then removing the finalizer.",
          ensure=(nc.delete_nodeclaims,), deadline=Deadline(10 * _M, "NodeClaimsNotDeleted"),
          conditions=show_deleting, summary=summary_kept),
)

# Order matters: from one state, the first edge whose guard holds is taken (deletion comes first of all:
# the lifecycle's ``deleting`` state adds those edges).
TRANSITIONS: tuple[Edge, ...] = (
    Edge("Pending", "NodesProvisioning", spec_accepted),
    Edge("NodesProvisioning", "PluginsReady", nodes_ready),
    Edge("PluginsReady", "NodesProvisioning", nodes_lost),
    Edge("PluginsReady", "WorkloadDeploying", gpus_ready_inference),
    Edge("PluginsReady", "JobRunning", gpus_ready_tuning),
    Edge("WorkloadDeploying", "NodesProvisioning", nodes_lost),
    Edge("WorkloadDeploying", "Ready", workload_ready),
    Edge("Ready", "NodesProvisioning", nodes_lost),
    Edge("Ready", "WorkloadDeploying", workload_unready_or_stale),
    Edge("JobRunning", "JobReplacing", job_stale),
    Edge("JobRunning", "Succeeded", job_succeeded),
    Edge("JobRunning", "Failed", job_failed),
    Edge("JobReplacing", "JobRunning", old_job_gone),
    Edge(("Succeeded", "Failed"), "JobReplacing", job_stale),
    Edge(("Succeeded", "Failed"), "JobRunning", spec_changed_job_gone),
)


HOOKS = Hooks()
ABOVE_TARGET_DELETED = HOOKS.counter(
    "nodeclaims_above_target_deleted",
    "NodeClaims deleted because a Workspace had more live ones than its targetNodeCount (committed passes only). "
    "Any increase deserves a look: see the Workspace's NodeClaimAboveTarget Warning Events.")


@HOOKS.on_action
def count_above_target(event: ActionEvent, counters: Counters) -> None:
    a = event.action
    if isinstance(a, A.DeleteNodeClaim) and a.reason == ABOVE_TARGET:
        counters.inc(ABOVE_TARGET_DELETED)


WORKSPACE_KIND = Kind("kaito.sh/v1beta1", "Workspace", "workspaces")
NODECLAIM_KIND = Kind("karpenter.sh/v1", "NodeClaim", "nodeclaims", namespaced=False)

WORKSPACE: Lifecycle[WorkspaceFacts] = Lifecycle(
    "workspace",
    doc="KAITO's Workspace: GPU nodes, their device plugins, then an inference workload or a tuning Job.",
    resource=WORKSPACE_KIND,
    states=STATE_TABLE, edges=TRANSITIONS, initial="Pending", deleting="Deleting", finalizer=FINALIZER,
    record=RECORD, facts=WorkspaceFacts, conditions=KAITO_CONDITIONS, invalid=WORKSPACE_SUCCEEDED, project=project,
    wake=(nc.in_flight_wake,), on_write=nc.drop_claim_marker,
    owns=(
        Owns(NODECLAIM_KIND, by_labels(LABEL_WORKSPACE, LABEL_WORKSPACE_NAMESPACE), label_selector=LABEL_WORKSPACE),
        # get: a recorded workload ("Workload/<name>") missing from the cache is confirmed absent by a GET of
        # either kind (tests/test_least_privilege.py).
        Owns(Kind("apps/v1", "Deployment", "deployments"), by_owner_reference("Workspace"),
             verbs=frozenset({"list", "watch", "get", "create", "patch"}), label_selector=LABEL_WORKSPACE),
        Owns(Kind("apps/v1", "StatefulSet", "statefulsets"), by_owner_reference("Workspace"),
             verbs=frozenset({"list", "watch", "get", "create", "patch"}), label_selector=LABEL_WORKSPACE),
        Owns(Kind("batch/v1", "Job", "jobs"), by_owner_reference("Workspace"), label_selector=LABEL_WORKSPACE),
        # An inference Workspace's Service and headless Service (never updated: a Service keeps its address);
        # get: recorded ones missing from the cache are confirmed absent by a GET.
        Owns(Kind("v1", "Service", "services"), by_owner_reference("Workspace"),
             verbs=frozenset({"list", "watch", "get", "create"}), label_selector=LABEL_WORKSPACE),
    ),
    watches=(Watches(Kind("v1", "Node", "nodes", namespaced=False), label_selector=LABEL_WORKSPACE),
             # The inference ConfigMap (its max-model-len sizes the Workspace): read by name, once, not cached.
             Watches(Kind("v1", "ConfigMap", "configmaps"), verbs=frozenset({"get"}))),
    parse=parse_workspace, confirm=lambda ws, rec: confirmations(ws),
    config=DEFAULT_CONFIG, hooks=HOOKS,
)

# The table's names as this module has always offered them.
STATES: dict[str, State] = WORKSPACE.states
EDGES: tuple[Edge, ...] = WORKSPACE.edges
MACHINE = WORKSPACE.machine
TRIGGER = "advance"
step = WORKSPACE.step
step_via_trigger = WORKSPACE.step_via_trigger
edge_guard_name = WORKSPACE.why


def mermaid() -> str:
    """The live table as a Mermaid state diagram (generated by transitions' own diagram support)."""
    return WORKSPACE.mermaid("Workspace lifecycle")


def decide(ws: Workspace, snapshot: Snapshot, now: datetime, config: Config = DEFAULT_CONFIG, *,
           pass_id: str = "") -> Decision:
    """One pass of the Workspace machine (the engine's interpreter over :data:`WORKSPACE`). Pure."""
    return _interpret(WORKSPACE, ws, snapshot, now, config, pass_id=pass_id)


__all__ += ["HistoryEntry", "STATES", "STATE_TABLE", "EDGES", "MACHINE", "TRIGGER", "step", "step_via_trigger",
            "edge_guard_name", "mermaid", "workload_kind"]
