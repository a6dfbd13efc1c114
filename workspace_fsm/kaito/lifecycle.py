"""The Workspace lifecycle: every state, guard and deadline, in one table.

A guard is a pure predicate on :class:`Facts` (the Workspace, its snapshot, now, the config): it reads
and answers at once. Waiting is a state plus a wake-up, never a loop. The table is loaded into one
shared ``transitions`` Machine (no Machine or model per Workspace is kept); ``docs/lifecycle.md`` and
``workspace-fsm diagram`` are generated from it so that they cannot drift.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

import attrs
from transitions import Machine

from workspace_fsm.kaito.model import Node, NodeClaim, Snapshot, Workspace
from workspace_fsm.kaito.persist import Lifecycle

# ----------------------------------------------------------------------------- configuration


@attrs.frozen
class Config:
    """Knobs of the machine. Defaults follow KAITO's behaviour; every duration is simulated or real time."""

    auto_provisioning: bool = True  # KAITO's node auto-provisioning; False = bring-your-own nodes
    deadlines: Mapping[str, timedelta] = attrs.field(factory=dict)  # per-state overrides of DEFAULT deadlines
    max_nodeclaim_failures: int = 6  # failed launches + deadline replacements before giving up
    gpu_recheck: timedelta = timedelta(seconds=5)  # Nodes are not watched: GPU capacity is re-checked on a timer
    history_limit: int = 16
    # A create may still be applied by the API server until its --request-timeout (1m by default) after it
    # was sent, even if the runner that sent it is dead. Runners send a pass's creates within
    # create_send_window of the pass's ``now`` (or not at all), so a NodeClaim the machine recorded and
    # then finds absent is replaced only once create_grace has passed since it was recorded, or when the
    # server refused its create outright (Snapshot.refused): never one too many.
    api_request_timeout: timedelta = timedelta(seconds=60)
    create_send_window: timedelta = timedelta(seconds=15)

    @property
    def create_grace(self) -> timedelta:
        """Recorded-to-landed bound of a create: send window + request timeout + the record's 1 s resolution."""
        return self.create_send_window + self.api_request_timeout + timedelta(seconds=1)
    finalizer: str = "workspace.kaito.io/finalizer"
    # A state entered on another runner's snapshot may be read by a runner whose caches of NodeClaims, Nodes
    # and workloads still lag its Workspace cache: to it, Ready nodes look not Ready yet. A loss seen only
    # as missing readiness therefore moves the machine back only once the state has been held this long
    # (a real loss is acted on this much later; a stale cache has caught up by then). Deletions, spec changes
    # and confirmed absence are acted on at once.
    loss_settle: timedelta = timedelta(seconds=10)

    def deadline(self, state: str) -> timedelta | None:
        if state in self.deadlines:
            return self.deadlines[state]
        return STATES[state].deadline


DEFAULT_CONFIG = Config()

# ----------------------------------------------------------------------------- facts


class Facts:
    """What the guards read, derived once per pass from (workspace, snapshot, record, now)."""

    __slots__ = ("ws", "snap", "now", "config", "rec", "target", "claims", "unseen", "existing", "gone",
                 "in_flight", "grace_ends", "ready_nodes", "nodes_ready", "gpus_ready", "revision", "pass_id",
                 "_gpu_pending")

    def __init__(self, ws: Workspace, snap: Snapshot, now: datetime, config: Config, rec: Lifecycle,
                 target: int, revision: str | None, pass_id: str = "") -> None:
        self.ws, self.snap, self.now, self.config, self.rec = ws, snap, now, config, rec
        self.pass_id = pass_id
        self.target = target
        self.revision = revision
        self.claims: tuple[NodeClaim, ...] = snap.nodeclaims
        # Recorded NodeClaims known gone: confirmed absent, and no create of them can still be applied
        # (the grace since the newest was recorded has passed, or the server refused the create outright,
        # as this process knows of a create it sent itself: the refusal's pass is the one that recorded it).
        # A confirmed-absent one inside the grace is in flight: it counts as existing, and is neither
        # replaced nor forgotten, because a dead runner's create may still land.
        self.grace_ends = rec.claimed_at + config.create_grace if rec.claimed_at is not None else None
        if rec.nodeclaims:
            seen = {c.name for c in self.claims}
            absent, refused = snap.absent, snap.refused
            settled = self.grace_ends is None or now >= self.grace_ends
            mine = rec.claimed_by
            gone = []
            in_flight = []
            for n in rec.nodeclaims:
                key = "NodeClaim/" + n
                if key in absent:
                    (gone if settled or (mine and refused.get(key) == mine) else in_flight).append(n)
            self.gone = frozenset(gone)
            self.in_flight = tuple(in_flight)
            # Created by the machine, not in the (possibly stale) cache, not known to be gone: exists.
            self.unseen = tuple(n for n in rec.nodeclaims if n not in seen and n not in self.gone)
        else:
            self.gone = frozenset()
            self.in_flight = ()
            self.unseen = ()
        self.existing = len(self.claims) + len(self.unseen)
        nodes = snap.nodes
        ready: list[str] = []
        if ws.resource is not None and ws.resource.byo_nodes:
            selector = ws.resource.label_selector
            ready = sorted(n.name for n in nodes.values() if n.ready and selector.matches(n.labels))
        else:
            for c in self.claims:
                if c.ready == "True" and not c.deleting and c.node_name:
                    node = nodes.get(c.node_name)
                    if node is not None and node.ready:
                        ready.append(c.node_name)
            ready.sort()
        self.ready_nodes = tuple(ready[:target]) if target else ()
        self.nodes_ready = target > 0 and len(ready) >= target
        self.gpus_ready = self.nodes_ready and all(nodes[n].gpu_ready for n in self.ready_nodes)

    @property
    def is_tuning(self) -> bool:
        return self.ws.tuning is not None

    def node(self, name: str) -> Node | None:
        return self.snap.nodes.get(name)


# ----------------------------------------------------------------------------- guards
# Each guard is named for what it checks; the name is what the diagram and the history show.


def spec_accepted(f: Facts) -> bool:
    """The spec passed validation: the machine may create things for it."""
    return f.ws.valid


def nodes_ready(f: Facts) -> bool:
    """targetNodeCount NodeClaims are Ready and their Nodes report Ready."""
    return f.nodes_ready


def loss_settled(f: Facts) -> bool:
    """The state has been held for Config.loss_settle: a loss seen now is not a lagging cache's echo."""
    entered = f.rec.entered_at
    return entered is None or f.now >= entered + f.config.loss_settle


def nodes_lost(f: Facts) -> bool:
    """Fewer ready nodes than targetNodeCount: a NodeClaim deleted, failed or gone, or unready past loss_settle.

    Readiness alone counts only once the state has been held for Config.loss_settle, so that a cache lagging
    the runner that entered the state cannot flap it back."""
    if f.nodes_ready:
        return False
    # Positive evidence of a loss is acted on at once: a NodeClaim being deleted or failed, or one known gone.
    return loss_settled(f) or bool(f.gone) or any(c.deleting or c.failed for c in f.claims)


def gpus_ready_inference(f: Facts) -> bool:
    """Every node advertises nvidia.com/gpu capacity (the device plugin is up); inference Workspace."""
    return f.gpus_ready and not f.is_tuning


def gpus_ready_tuning(f: Facts) -> bool:
    """Every node advertises nvidia.com/gpu capacity (the device plugin is up); tuning Workspace."""
    return f.gpus_ready and f.is_tuning


def workload_ready(f: Facts) -> bool:
    """The workload has the current revision and all its replicas are ready."""
    w = f.snap.workload
    return w is not None and w.revision == f.revision and w.is_ready


def workload_unready_or_stale(f: Facts) -> bool:
    """The workload was built from an older spec, or its replicas are unready past Config.loss_settle in Ready.

    A lagging cache's echo of the rollout is not a loss: readiness counts once Ready has been held that long."""
    w = f.snap.workload
    if w is not None and w.revision != f.revision:
        return True
    return not workload_ready(f) and loss_settled(f)


def job_stale(f: Facts) -> bool:
    """The tuning spec changed: the Job that exists (or was last created and is not yet visible) has an older revision."""
    j = f.snap.job
    if j is not None and not j.deleting:
        return j.revision != f.revision
    if ("Job/" + f.ws.metadata.name) in f.snap.absent:
        return False  # no Job exists: nothing stale to replace (the next one is created with the current revision)
    return f.rec.revision is not None and f.rec.revision != f.revision


def spec_changed_job_gone(f: Facts) -> bool:
    """A finished tuning Workspace got a new spec and no Job is left (its absence confirmed): run the new one."""
    j = f.snap.job
    return j is None and ("Job/" + f.ws.metadata.name) in f.snap.absent and f.rec.revision != f.revision


def job_succeeded(f: Facts) -> bool:
    """The Job of the current revision completed."""
    j = f.snap.job
    return j is not None and j.revision == f.revision and j.complete


def job_failed(f: Facts) -> bool:
    """The Job of the current revision failed for good (backoffLimit or activeDeadline reached)."""
    j = f.snap.job
    return j is not None and j.revision == f.revision and j.failed_permanently


def old_job_gone(f: Facts) -> bool:
    """No stale Job is left: it is gone (its absence confirmed, not merely missing from a lagging cache),
    or the Job there already has the current revision."""
    j = f.snap.job
    if j is not None:
        return not j.deleting and j.revision == f.revision
    return ("Job/" + f.ws.metadata.name) in f.snap.absent


def deletion_requested(f: Facts) -> bool:
    """metadata.deletionTimestamp is set."""
    return f.ws.deleting


# ----------------------------------------------------------------------------- the table


@attrs.frozen
class StateSpec:
    name: str
    doc: str
    deadline: timedelta | None = None  # measured from the persisted time the state was entered
    on_deadline: str = ""  # the consequence, applied by decide (see decide._fire_deadline)
    deadline_reason: str = ""  # condition/event reason when the deadline passes
    max_firings: int = 1  # how many times the deadline may fire before the state only waits
    terminal: bool = False


@attrs.frozen
class Edge:
    source: str
    dest: str
    guard: Callable[[Facts], bool]


_M = timedelta(minutes=1)

STATE_TABLE: tuple[StateSpec, ...] = (
    StateSpec("Pending", "Validated and finalizer added; nothing created yet. An invalid spec waits here."),
    StateSpec("NodesProvisioning", "NodeClaims created (targetNodeCount of them); waiting for them and their Nodes to be Ready.",
              deadline=10 * _M, on_deadline="replace_unready_nodeclaims", deadline_reason="NodeClaimNotReady", max_firings=3),
    StateSpec("PluginsReady", "Nodes are Ready; waiting for the GPU device plugin to advertise nvidia.com/gpu on each.",
              deadline=5 * _M, on_deadline="report", deadline_reason="GPUDevicePluginNotReady"),
    StateSpec("WorkloadDeploying", "Inference workload created or updated; waiting for its replicas to be ready.",
              deadline=30 * _M, on_deadline="report", deadline_reason="WorkloadNotReady"),
    StateSpec("Ready", "Inference is being served; left again if nodes or replicas are lost or the spec changes."),
    StateSpec("JobRunning", "Tuning Job of the current revision created; waiting for it to finish.",
              deadline=48 * 60 * _M, on_deadline="fail", deadline_reason="TuningJobDeadlineExceeded"),
    StateSpec("JobReplacing", "Tuning spec changed: old Job deleted with Background propagation; waiting until it is gone.",
              deadline=10 * _M, on_deadline="report", deadline_reason="StaleJobNotDeleted"),
    StateSpec("Succeeded", "Tuning finished; a new spec starts a new run.", terminal=True),
    StateSpec("Failed", "Tuning failed; a new spec starts a new run.", terminal=True),
    StateSpec("Deleting", "deletionTimestamp set: deleting the Workspace's NodeClaims, then removing the finalizer.",
              deadline=10 * _M, on_deadline="report", deadline_reason="NodeClaimsNotDeleted"),
)

STATES: dict[str, StateSpec] = {s.name: s for s in STATE_TABLE}
_LIVE = tuple(s.name for s in STATE_TABLE if s.name != "Deleting")

# Order matters: from one state, the first edge whose guard holds is taken.
EDGES: tuple[Edge, ...] = (
    *(Edge(s, "Deleting", deletion_requested) for s in _LIVE),
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
    Edge("Succeeded", "JobReplacing", job_stale),
    Edge("Succeeded", "JobRunning", spec_changed_job_gone),
    Edge("Failed", "JobReplacing", job_stale),
    Edge("Failed", "JobRunning", spec_changed_job_gone),
)

TRIGGER = "advance"


def _build_machine(machine_cls: type[Machine] = Machine, **kwargs: object) -> Machine:
    machine = machine_cls(model=None, states=[s.name for s in STATE_TABLE], initial="Pending",
                          auto_transitions=False, send_event=False, ignore_invalid_triggers=True, **kwargs)
    for e in EDGES:
        machine.add_transition(TRIGGER, e.source, e.dest, conditions=[e.guard])
    return machine


# One Machine for every Workspace, holding the table. A pass binds no model to it: it reads the
# machine's own transition list for the current state and evaluates the guards in order. Dispatching
# through Event.trigger would give the same answer but costs ~9 us per step (EventData, callbacks,
# debug logging), a third of a pass's budget; tests/test_lifecycle.py checks both agree.
MACHINE = _build_machine()
_EVENT = MACHINE.events[TRIGGER]
_OUT: dict[str, tuple[tuple[str, tuple[Callable[[Facts], bool], ...]], ...]] = {
    state: tuple((t.dest, tuple(c.func for c in t.conditions)) for t in transitions)
    for state, transitions in _EVENT.transitions.items()
}


def step(state: str, facts: Facts) -> str | None:
    """Take the first enabled edge out of ``state``; return the new state, or None if none is enabled."""
    for dest, guards in _OUT.get(state, ()):
        for guard in guards:
            if not guard(facts):
                break
        else:
            return dest
    return None


class _Cursor:
    __slots__ = ("state", "__weakref__")

    def __init__(self, state: str) -> None:
        self.state = state


def step_via_trigger(state: str, facts: Facts) -> str | None:
    """The same step through transitions' own event dispatch (the reference :func:`step` must match)."""
    cursor = _Cursor(state)
    if _EVENT.trigger(cursor, facts):
        return cursor.state
    return None


def edge_guard_name(source: str, dest: str) -> str:
    for e in EDGES:
        if e.source == source and e.dest == dest:
            return e.guard.__name__
    return "unknown"


def mermaid() -> str:
    """The live table as a Mermaid state diagram (generated by transitions' own diagram support)."""
    from transitions.extensions.diagrams import GraphMachine

    class _Model:
        pass

    gm = _build_machine(GraphMachine, graph_engine="mermaid", show_conditions=True, title="Workspace lifecycle")
    model = _Model()
    gm.add_model(model, initial="Pending")
    source = model.get_graph().draw(None)
    # Drop the styling of the "current state" (a diagram of the table has none) and per-state classes.
    lines = [ln.replace(f": {TRIGGER} [", ": [") for ln in source.splitlines()
             if not ln.strip().startswith(("classDef", "Class "))]
    for s in STATE_TABLE:
        if s.terminal or s.name == "Deleting":
            lines.append(f"  {s.name} --> [*]")
    return "\n".join(lines).rstrip() + "\n"
