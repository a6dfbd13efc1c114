"""A small in-memory model of the cluster truth, for the tests of the pure ``decide``.

It plays both sides of the adapter contract around ``decide``:

- the *truth*: NodeClaims (deletion takes time), the Nodes that appear for Ready claims (GPU capacity
  arrives later), the inference workload and the tuning Job (rollout, completion, Background deletion),
  and the Workspaces themselves (finalizers, deletionTimestamp, spec changes, status writes with
  conflicts). Every change of the owned objects makes a new *version*, and every version is kept, so a
  test can serve a snapshot of the truth as of any past version: a stale cache. ``absent`` is computed
  for that version: the names deleted (or answered with a 404) at or before it and not there at it.
- the *runner*: one cache whose version only moves forward (until a restart relists it), passes that
  decide on the newest persisted Workspace, then follow the apply protocol: the ``before`` actions
  (finalizer, deletions) in order, stopping at the first failure; then the status write, which fails
  (409) when somebody else wrote the Workspace meanwhile; then, only once the status is persisted, the
  ``after`` actions (creations, finalizer removal, Events) in order, stopping at the first failure.
  A pass can be cut short anywhere along that path: a failed or lost action, a status write conflict,
  a runner crash before the write or right after it (status persisted, nothing of ``after`` applied).

While it does so it checks, at every change, the safety properties the tests are about, and raises
``AssertionError`` at the first violation:

(a) never more NodeClaims in the truth (being deleted included) than the Workspace's targetNodeCount;
(b) no workload or Job created before targetNodeCount nodes were Ready with GPU capacity (as of the
    snapshot the creating pass read);
(c) no tuning Job created while one of another revision still exists and is being deleted (a create
    that meets a live Job of another revision is AlreadyExists and is counted in ``job_collisions``);
    and no NodeClaim name is ever created again after its deletion (a stale tombstone would hide it);
(d) ``decide`` on the Workspace rebuilt from its persisted form equals ``decide`` on the in-memory one;
(e) a deadline's Warning event is committed at most once per state entry (persisted record);
(g) nothing exists that the persisted record does not hold: every NodeClaim in the truth labelled for a
    Workspace is in that Workspace's persisted lifecycle record (``read_lifecycle(ws.status).data.nodeclaims``)
    or being deleted (checked at every change of the truth and at every status write);
plus: lastTransitionTime moves only when a condition's status moves, every status key survives the
CRD's structural pruning, and ``converge`` checks liveness.

Everything ``decide`` is handed goes through :func:`pure_decide`, which makes the clock, sleeping,
sockets and file opening raise while it runs.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs

from workspace_fsm.kaito import actions as A
from workspace_fsm.engine import declare as declare_module
from workspace_fsm.engine import interpret as interpret_module
from workspace_fsm.engine import record as record_module
from workspace_fsm.kaito import model as model_module
from workspace_fsm.kaito import nodeclaims as nodeclaims_module
from workspace_fsm.kaito import workspace as decide_module
from workspace_fsm.kaito.workspace import Decision, decide, target_node_count
from workspace_fsm.kaito.workspace import DEFAULT_CONFIG, STATE_TABLE, Config
from workspace_fsm.kaito.model import (LABEL_ACCELERATOR, LABEL_WORKSPACE, LABEL_WORKSPACE_NAMESPACE, DataDestination,
                                 DataSource, InferenceSpec, Job, LabelSelector, Node, NodeClaim, ObjectMeta,
                                 PresetSpec, ResourceSpec, Snapshot, TuningSpec, Workload, Workspace,
                                 WorkspaceStatus, parse_workspace)
from workspace_fsm.kaito.workspace import confirmations
from workspace_fsm.engine.record import Record
from workspace_fsm.kaito.workspace import WorkspaceBook, read_lifecycle

EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)
INSTANCE_TYPE = "Standard_NC24ads_A100_v4"
INFERENCE_PRESET = "phi-4"
TUNING_PRESET = "phi-3-mini-128k-instruct"
STATUS_KEYS = frozenset({"conditions", "state", "targetNodeCount", "workerNodes", "performance"})
DEADLINE_REASONS = frozenset(s.deadline.reason for s in STATE_TABLE if s.deadline is not None)


# ============================================================================ purity guard

_REAL_DATETIME = datetime


class _AnyDatetime(type):
    """Metaclass: the guarded class still recognises every real datetime as an instance."""

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, _REAL_DATETIME)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, _REAL_DATETIME)


def _forbidden(what: str):
    def fail(*_a: Any, **_k: Any) -> Any:
        raise AssertionError(f"decide must be pure: it called {what}")
    return fail


class _NoClockDatetime(datetime, metaclass=_AnyDatetime):
    """``datetime`` as the core modules see it while decide runs: no wall clock."""

    now = classmethod(_forbidden("datetime.now()"))
    utcnow = classmethod(_forbidden("datetime.utcnow()"))
    today = classmethod(_forbidden("datetime.today()"))


_CORE_MODULES = (decide_module, nodeclaims_module, model_module, declare_module, interpret_module, record_module)


@contextlib.contextmanager
def no_clock_no_network() -> Iterator[None]:
    """While inside: sleeping, reading a clock, opening a socket or a file raise AssertionError.

    Patches only for the duration of the block (decide is called inside; hypothesis never is).
    """
    patches: list[tuple[Any, str, Any]] = [
        (time, "sleep", _forbidden("time.sleep()")),
        (time, "time", _forbidden("time.time()")),
        (time, "time_ns", _forbidden("time.time_ns()")),
        (time, "monotonic", _forbidden("time.monotonic()")),
        (time, "monotonic_ns", _forbidden("time.monotonic_ns()")),
        (time, "perf_counter", _forbidden("time.perf_counter()")),
        (socket.socket, "connect", _forbidden("socket.connect()")),
        (socket.socket, "connect_ex", _forbidden("socket.connect_ex()")),
        (socket, "create_connection", _forbidden("socket.create_connection()")),
        (socket, "getaddrinfo", _forbidden("socket.getaddrinfo()")),
        (builtins, "open", _forbidden("open()")),
    ]
    patches += [(m, "datetime", _NoClockDatetime) for m in _CORE_MODULES if hasattr(m, "datetime")]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


@contextlib.contextmanager
def no_sleep_no_sockets() -> Iterator[None]:
    """For a whole test module: sleeping and sockets fail loudly (hypothesis and the model need neither).
    The wall clock is forbidden only while decide runs (:func:`pure_decide`), as hypothesis reads it."""
    saved = [(time, "sleep", time.sleep), (socket.socket, "connect", socket.socket.connect),
             (socket, "create_connection", socket.create_connection)]
    time.sleep = _forbidden("time.sleep()")
    socket.socket.connect = _forbidden("socket.connect()")
    socket.create_connection = _forbidden("socket.create_connection()")
    try:
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def pure_decide(ws: Workspace, snapshot: Snapshot, now: datetime, config: Config = DEFAULT_CONFIG, *,
                pass_id: str = "") -> Decision:
    """``decide`` with the clock, sleep, sockets and files forbidden while it runs."""
    with no_clock_no_network():
        return decide(ws, snapshot, now, config, pass_id=pass_id)


# ============================================================================ building Workspaces


#: A preset that KAITO's node estimator sizes to N nodes of INSTANCE_TYPE (one A100 80 GiB GPU), with its
#: default context of 2048 tokens; KAITO ignores resource.count for a vLLM preset. Worked out by hand from
#: the estimator's formula (tests/test_estimator.py shows the arithmetic and checks these three):
#: phi-4 27.9 GiB of weights for 61.4 GiB per GPU -> 1; qwen2.5-coder-32b-instruct 62.3 for 61.3 -> 2;
#: gpt-oss-120b 124.0 for 61.7 -> 3.
PRESET_FOR_NODES = {1: INFERENCE_PRESET, 2: "qwen2.5-coder-32b-instruct", 3: "gpt-oss-120b"}


def inference_ws(name: str, count: int = 1, *, namespace: str = "default", uid: str | None = None,
                 preset: str | None = None, config: str | None = None) -> Workspace:
    """An inference Workspace that needs ``count`` nodes (1 to 3; KAITO sizes it from its preset: PRESET_FOR_NODES).

    Another ``count`` (a bad one, for validation tests) is kept in the spec with the 1-node preset."""
    preset = preset if preset is not None else PRESET_FOR_NODES.get(count, INFERENCE_PRESET)
    return Workspace(
        metadata=ObjectMeta(name=name, namespace=namespace, uid=uid or f"uid-{name}", generation=1,
                            resource_version="1", creation_timestamp=EPOCH),
        resource=ResourceSpec(LabelSelector(match_labels={"apps": name}), instance_type=INSTANCE_TYPE, count=count),
        inference=InferenceSpec(preset=PresetSpec(preset), config=config),
    )


def tuning_ws(name: str, count: int = 1, *, namespace: str = "default", uid: str | None = None,
              preset: str = TUNING_PRESET, method: str = "qlora", config: str | None = None) -> Workspace:
    return Workspace(
        metadata=ObjectMeta(name=name, namespace=namespace, uid=uid or f"uid-{name}", generation=1,
                            resource_version="1", creation_timestamp=EPOCH),
        resource=ResourceSpec(LabelSelector(match_labels={"apps": name}), instance_type=INSTANCE_TYPE, count=count),
        tuning=TuningSpec(input=DataSource(urls=("https://example.com/data/train.parquet",)),
                          output=DataDestination(image="registry.example.com/adapters/out:1",
                                                 image_push_secret="push-secret"),
                          preset=PresetSpec(preset), method=method, config=config),
    )


def with_new_spec(ws: Workspace, n: int) -> Workspace:
    """The same Workspace after a user edit of its inference/tuning spec: new revision, generation + 1."""
    if ws.tuning is not None:
        spec = {"tuning": attrs.evolve(ws.tuning, config=f"tune-cfg-{n}")}
    else:
        spec = {"inference": attrs.evolve(ws.inference, config=f"infer-cfg-{n}")}
    meta = attrs.evolve(ws.metadata, generation=ws.metadata.generation + 1)
    return attrs.evolve(ws, metadata=meta, **spec)


def _json_roundtrip(doc: Any) -> Any:
    return json.loads(json.dumps(doc))


def reparse_status(ws: Workspace) -> Workspace:
    """The Workspace with its status rebuilt from the persisted (JSON) form only."""
    return ws.with_status(WorkspaceStatus.from_dict(_json_roundtrip(ws.status.to_dict())))


def reparse(ws: Workspace) -> Workspace:
    """The whole Workspace as a fresh runner reads it back from the API: to_dict, JSON, parse_workspace."""
    return parse_workspace(_json_roundtrip(ws.to_dict()))


def spec_revision(ws: Workspace) -> str:
    spec = ws.tuning if ws.tuning is not None else ws.inference
    return spec.revision if spec is not None else ""


def condition(status: WorkspaceStatus, type_: str):
    return status.condition(type_)


# ============================================================================ the truth


@attrs.frozen
class ClaimT:
    """A NodeClaim as it is in the truth."""

    name: str
    ws_key: str  # from its labels
    instance_type: str
    phase: str = "Pending"  # Pending | Launched | Ready | Failed
    failure_reason: str | None = None
    node_name: str | None = None
    deleting: bool = False
    created_at: datetime | None = None

    def view(self) -> NodeClaim:
        launched = {"Pending": None, "Launched": "True", "Ready": "True", "Failed": "False"}[self.phase]
        done = "True" if self.phase == "Ready" else None
        ready = {"Pending": "Unknown", "Launched": "Unknown", "Ready": "True", "Failed": "False"}[self.phase]
        return NodeClaim(name=self.name, workspace_key=self.ws_key, instance_type=self.instance_type,
                         launched=launched, registered=done, initialized=done, ready=ready,
                         node_name=self.node_name, deleting=self.deleting, failure_reason=self.failure_reason,
                         created_at=self.created_at)


class World:
    """One version of the owned objects. Values are immutable; a change copies the dicts."""

    __slots__ = ("claims", "nodes", "workloads", "jobs", "gone", "services")

    def __init__(self) -> None:
        self.claims: dict[str, ClaimT] = {}
        self.nodes: dict[str, Node] = {}
        self.workloads: dict[str, Workload] = {}  # by Workspace key
        self.jobs: dict[str, Job] = {}  # by Workspace key
        self.gone: dict[str, frozenset[str]] = {}  # by Workspace key: "NodeClaim/n", "Job/n", "Workload/n"
        self.services: dict[str, frozenset[str]] = {}  # by Workspace key: the names of its Services

    def copy(self) -> World:
        w = World()
        w.claims, w.nodes, w.workloads, w.jobs, w.gone = (dict(self.claims), dict(self.nodes), dict(self.workloads),
                                                          dict(self.jobs), dict(self.gone))
        w.services = dict(self.services)
        return w

    def mark_gone(self, key: str, name: str) -> None:
        self.gone[key] = self.gone.get(key, frozenset()) | {name}

    def mark_present(self, key: str, name: str) -> None:
        if name in self.gone.get(key, ()):
            self.gone[key] = self.gone[key] - {name}

    def claims_of(self, key: str) -> list[ClaimT]:
        return [c for c in self.claims.values() if c.ws_key == key]


@attrs.define
class WsEntry:
    ws: Workspace  # newest persisted version, in memory
    foreign: int = 0  # writes by others (user edits, deletion): a pass that read an older one conflicts
    gone: bool = False
    first_ready_version: int | None = None  # first truth version with targetNodeCount Ready GPU nodes
    spec_edits: int = 0
    failed_job_revisions: set[str] = attrs.field(factory=set)
    max_claims: int = 0
    max_jobs: int = 0
    job_collisions: int = 0  # CreateJob met a Job of another revision that was not being deleted
    # Every persisted version of the Workspace, oldest first: a decider's Workspace cache may serve an old one.
    persisted: list[Workspace] = attrs.field(factory=list)


@attrs.define
class Decider:
    """One runner among several over the same store (a rollout, replicas): its own caches, its own memory.

    ``ws_seen`` and ``cache_version`` only move forward (until it is killed and relists); ``refused`` is
    what it knows of its own creates (never sent, refused outright), keyed by Workspace, then
    ``"NodeClaim/<name>"`` -> the pass id that recorded the name, as the Kubernetes adapter keeps it.
    """

    name: str
    incarnation: int = 0
    cache_version: int = 0
    ws_seen: dict[str, int] = attrs.field(factory=dict)
    refused: dict[str, dict[str, str]] = attrs.field(factory=dict)
    passes: int = 0
    kills: int = 0


@attrs.define
class Step:
    """A decider's pass in progress, advanced one API request at a time."""

    decider: str
    p: Pass
    plan: list  # before actions, None (the status write), after actions
    rv: str  # the resourceVersion its status write is conditional on
    i: int = 0
    written: bool = False


@attrs.frozen
class Pass:
    """A pass that has decided and not yet applied its actions."""

    key: str
    decision: Decision
    foreign: int
    version: int
    now: datetime
    entry_key: tuple  # (uid, state, entered_at, attempts) of the record the pass started from
    before: WorkspaceStatus


@attrs.frozen
class PassResult:
    decision: Decision
    applied: int
    persisted: bool


class Violation(AssertionError):
    pass


class Cluster:
    """The truth, its history, one runner's cache, and the properties checked at every change."""

    def __init__(self, config: Config = DEFAULT_CONFIG, now: datetime = EPOCH, *, full_reparse: bool = True) -> None:
        self.config = config
        self.now = now
        self.versions: list[World] = [World()]
        self.entries: dict[str, WsEntry] = {}
        self.cache_version = 0
        self.pending: dict[str, Pass] = {}
        self.full_reparse = full_reparse
        self.events: list[tuple[str, str, str, str]] = []  # (key, type, reason, message) as applied
        self.deleted_claims: set[str] = set()
        self.committed_deadlines: dict[tuple, int] = {}
        self.passes = 0
        self.log: list[str] = []
        # Creates a dead runner sent that the API server has not applied yet: (key, action, pass, sent at).
        # Each may land until ``config.api_request_timeout`` after it was sent, never later.
        self.queued: list[tuple[str, A.CreateNodeClaim, Pass, datetime]] = []
        # Several writers (add_decider): each its own caches and memory; passes advance request by request.
        self.deciders: dict[str, Decider] = {}
        self.steps: dict[tuple[str, str], Step] = {}
        self.forge_refusals = False  # the bug this model must catch: a runner's memory taken for another's

    # ------------------------------------------------------------------ basics

    @property
    def version(self) -> int:
        return len(self.versions) - 1

    @property
    def world(self) -> World:
        return self.versions[-1]

    def add(self, ws: Workspace) -> str:
        assert ws.key not in self.entries
        self.entries[ws.key] = WsEntry(ws, persisted=[ws])
        return ws.key

    def ws(self, key: str) -> Workspace:
        return self.entries[key].ws

    def keys(self) -> list[str]:
        return sorted(self.entries)

    def live_keys(self) -> list[str]:
        return [k for k in self.keys() if not self.entries[k].gone]

    def record(self, key: str) -> Record[WorkspaceBook] | None:
        return read_lifecycle(self.ws(key).status)

    def state(self, key: str) -> str | None:
        rec = self.record(key)
        return rec.state if rec is not None else None

    def claims(self, key: str, version: int | None = None) -> list[ClaimT]:
        w = self.versions[self.version if version is None else version]
        return sorted(w.claims_of(key), key=lambda c: c.name)

    def claim(self, name: str) -> ClaimT:
        return self.world.claims[name]

    def job(self, key: str) -> Job | None:
        return self.world.jobs.get(key)

    def workload(self, key: str) -> Workload | None:
        return self.world.workloads.get(key)

    def events_of(self, key: str, reason: str | None = None) -> list[tuple[str, str, str, str]]:
        return [e for e in self.events if e[0] == key and (reason is None or e[2] == reason)]

    def advance(self, delta: timedelta) -> None:
        self.now += delta
        expired = [q for q in self.queued if self.now > q[3] + self.config.api_request_timeout]
        for key, a, _, sent in expired:
            self.log.append(f"queued create of NodeClaim {a.name} for {key} (sent {sent}) timed out in the API server")
        self.queued = [q for q in self.queued if q not in expired]

    def land_queued(self, i: int = 0) -> str | None:
        """The API server applies one create a dead runner sent (its request timeout has not passed)."""
        if not self.queued:
            return None
        key, a, p, sent = self.queued.pop(i % len(self.queued))
        self.log.append(f"queued create of NodeClaim {a.name} for {key} (sent {sent}) lands at {self.now}")
        self.apply(key, a, p)
        return a.name

    def fail(self, message: str) -> None:
        raise Violation(message + "\n  log tail:\n    " + "\n    ".join(self.log[-25:]))

    @contextlib.contextmanager
    def change(self) -> Iterator[World]:
        """Make a new truth version; the checks run on it."""
        w = self.world.copy()
        yield w
        self.versions.append(w)
        self._after_change()

    # ------------------------------------------------------------------ invariants at every change

    def _ready_gpu_nodes(self, key: str, w: World) -> int:
        n = 0
        for c in w.claims_of(key):
            if c.phase == "Ready" and not c.deleting and c.node_name:
                node = w.nodes.get(c.node_name)
                if node is not None and node.gpu_ready:
                    n += 1
        return n

    def _after_change(self) -> None:
        w = self.world
        for key, e in self.entries.items():
            target = target_node_count(e.ws)
            count = len(w.claims_of(key))
            e.max_claims = max(e.max_claims, count)
            e.max_jobs = max(e.max_jobs, 1 if key in w.jobs else 0)
            if count > target:
                self.fail(f"(a) {key}: {count} NodeClaims exist in the truth (being deleted included), "
                          f"targetNodeCount is {target}: {sorted(c.name for c in w.claims_of(key))}")
            if e.first_ready_version is None and not e.gone and target > 0 \
                    and self._ready_gpu_nodes(key, w) >= target:
                e.first_ready_version = self.version
            self._check_recorded(key, w)

    def _check_recorded(self, key: str, w: World) -> None:
        """(g) every NodeClaim labelled for ``key`` that is not being deleted is in its persisted record."""
        rec = read_lifecycle(self.entries[key].ws.status)
        held = rec.data.nodeclaims if rec is not None else ()
        stray = sorted(c.name for c in w.claims_of(key) if not c.deleting and c.name not in held)
        if stray:
            self.fail(f"(g) {key}: NodeClaims {stray} exist in the truth and are not being deleted, but the "
                      f"persisted lifecycle record ({rec.state if rec else 'none'}) holds only {list(held)}: "
                      f"nothing may exist that the record does not hold")

    # ------------------------------------------------------------------ snapshots

    def snapshot(self, key: str, version: int | None = None) -> Snapshot:
        """What a cache at ``version`` shows for the Workspace ``key``."""
        w = self.versions[self.version if version is None else version]
        claims = sorted(w.claims_of(key), key=lambda c: c.name)
        nodes = {c.node_name: w.nodes[c.node_name] for c in claims if c.node_name and c.node_name in w.nodes}
        return Snapshot(nodeclaims=tuple(c.view() for c in claims), nodes=nodes, workload=w.workloads.get(key),
                        job=w.jobs.get(key), absent=self.confirmed_absent(key, w),
                        services=w.services.get(key, frozenset()))

    def confirmed_absent(self, key: str, cached: World, ws: Workspace | None = None) -> frozenset[str]:
        """What an adapter answers for the names the machine asks about (``decide.confirmations``): nothing
        for what its cache shows; for the rest, whether the object exists now (a GET's 404; a tombstone
        can only say less)."""
        e = self.entries[key]
        live = self.world
        out = set()
        for name in confirmations(ws if ws is not None else e.ws):
            kind, _, short = name.partition("/")
            if kind == "ConfigMap":
                out.add(name)  # this model has no ConfigMaps: a named inference config is not found
                continue
            if (short in cached.claims if kind == "NodeClaim" else key in cached.jobs if kind == "Job" else
                    short in cached.services.get(key, ()) if kind == "Service" else key in cached.workloads):
                continue
            exists = (short in live.claims if kind == "NodeClaim" else key in live.jobs if kind == "Job" else
                      short in live.services.get(key, ()) if kind == "Service" else key in live.workloads)
            if not exists:
                out.add(name)
        return frozenset(out)

    def pick_version(self, key: str, lag: int) -> int:
        """The runner's cache version for a pass: ``lag`` versions behind the truth, never going back."""
        v = max(self.cache_version, self.version - max(lag, 0))
        self.cache_version = max(self.cache_version, v)
        return v

    # ------------------------------------------------------------------ a pass

    def decide(self, key: str, version: int) -> Decision:
        """decide on the newest persisted Workspace, checking (d): the persisted form decides the same."""
        return self._decide_checked(key, self.ws(key), self.snapshot(key, version), f"m.{self.passes + 1:x}")

    def _decide_checked(self, key: str, ws: Workspace, snap: Snapshot, pass_id: str) -> Decision:
        d = pure_decide(ws, snap, self.now, self.config, pass_id=pass_id)
        again = pure_decide(reparse(ws) if self.full_reparse else reparse_status(ws), snap, self.now, self.config,
                            pass_id=pass_id)
        if again != d:
            self.fail(f"(d) {key}: decide on the Workspace rebuilt from its persisted form differs:\n"
                      f"  in memory: {d}\n  reparsed:  {again}")
        return d

    def begin(self, key: str, lag: int = 0) -> Pass:
        e = self.entries[key]
        assert not e.gone and key not in self.pending
        version = self.pick_version(key, lag)
        d = self.decide(key, version)
        rec = read_lifecycle(e.ws.status)
        entry_key = (e.ws.metadata.uid, rec.state, rec.entered_at, rec.attempts) if rec else (e.ws.metadata.uid,)
        p = Pass(key, d, e.foreign, version, self.now, entry_key, e.ws.status)
        self.pending[key] = p
        self.passes += 1
        self.log.append(f"decide {key} @v{version}/{self.version} {rec.state if rec else None}->{d.state}: "
                        f"{[type(a).__name__ + ':' + getattr(a, 'name', getattr(a, 'reason', '')) for a in d.actions]}")
        return p

    def finish(self, key: str, outcome: str = "ok", at: int = 0) -> PassResult:
        """Apply a pending pass along the protocol (``before``, the status write, ``after``): ``ok``,
        ``fail`` (action ``at`` of ``actions`` fails, no effect, nothing after it is applied; ``at`` past
        the last action makes the status write fail), ``lost`` (action ``at`` takes effect but reports
        failure), ``dup`` (every action applied twice), ``conflict`` (the status write gets a 409: only
        ``before`` applied), ``stop_after_write`` (the status is persisted, then the pass ends before any
        ``after`` action: a crash or a failed first creation)."""
        p = self.pending.pop(key)
        d = p.decision
        acts = d.actions  # before + after; the status write falls between them
        n_before = len(d.before)
        if outcome == "stop_after_write":
            outcome, at = ("fail", n_before) if d.after else ("ok", 0)
        applied = 0
        ok = True
        persisted = False
        for i, a in enumerate(acts):
            if i == n_before:
                if outcome == "conflict" or (outcome == "fail" and at >= len(acts)) or not self.persist(p):
                    ok = False
                    break
                persisted = True
            if outcome == "fail" and i == at:
                ok = False
                break
            success = self.apply(key, a, p)
            if outcome == "dup":
                success = self.apply(key, a, p) and success
            applied += 1
            if not success or (outcome == "lost" and i == at):
                ok = False
                break
        if ok and not persisted and n_before == len(acts) and outcome != "conflict" \
                and not (outcome == "fail" and at >= len(acts)):
            persisted = self.persist(p)
        self.log.append(f"finish {key} {outcome}@{at}: applied {applied}/{len(acts)}, persisted={persisted}")
        return PassResult(p.decision, applied, persisted)

    def run_pass(self, key: str, lag: int = 0, outcome: str = "ok", at: int = 0) -> PassResult:
        self.begin(key, lag)
        return self.finish(key, outcome, at)

    def restart(self, crash_prefix: int = 0, *, steps: int | None = None, from_write: bool = False,
                queue_creates: bool = False) -> None:
        """The runner dies and comes back with a relisted cache.

        Each in-flight pass got its first ``crash_prefix`` actions applied (the status write, which falls
        between ``before`` and ``after``, is made when the first ``after`` action is reached); or, given
        ``steps``, its first ``steps`` steps of: ``before``, the status write, ``after``; with
        ``from_write``, ``steps`` counts from the status write instead (0: every ``before`` action
        applied, nothing written; 1: the status persisted, nothing of ``after`` applied; ...). A step
        that fails ends the pass there. With ``queue_creates``, the NodeClaim creates of a pass that got
        past its status write and was then cut off were sent and sit in the API server (``queued``),
        unless the pass had outlived ``config.create_send_window`` (a runner would not send them)."""
        for key in sorted(self.pending):
            p = self.pending.pop(key)
            d = p.decision
            n = len(d.before)
            if steps is None:
                k = crash_prefix + 1 if crash_prefix > n and d.after else min(crash_prefix, n)
            else:
                k = n + steps if from_write else steps
            plan: list[A.Action | None] = [*d.before, None, *d.after]  # None: the status write
            written = False
            for a in plan[:k]:
                if not (self.persist(p) if a is None else self.apply(key, a, p)):
                    break
                written = written or a is None
            if queue_creates and written and self.now - p.now <= self.config.create_send_window:
                for a in plan[k:]:
                    if isinstance(a, A.CreateNodeClaim):
                        self.queued.append((key, a, p, self.now))
                        self.log.append(f"create of NodeClaim {a.name} for {key} queued in the API server")
            self.log.append(f"crash {key} after {min(k, len(plan))} of {len(plan)} steps "
                            f"({n} before, the status write, {len(d.after)} after)")
        self.cache_version = self.version
        where = f"steps {steps}{' from the status write' if from_write else ''}" if steps is not None \
            else f"crash prefix {crash_prefix}"
        self.log.append(f"restart ({where})")

    # ------------------------------------------------------------------ applying actions (API semantics)

    def apply(self, key: str, a: A.Action, p: Pass) -> bool:
        e = self.entries[key]
        if isinstance(a, A.RecordEvent):
            if e.gone:
                return False
            self.events.append((key, a.type, a.reason, a.message))
            return True
        if isinstance(a, A.AddFinalizer):
            if e.gone or e.ws.deleting and a.finalizer not in e.ws.metadata.finalizers:
                return False  # NotFound, or Forbidden: no new finalizers on an object being deleted
            if a.finalizer not in e.ws.metadata.finalizers:
                self._set_meta(key, finalizers=e.ws.metadata.finalizers + (a.finalizer,))
            return True
        if isinstance(a, A.RemoveFinalizer):
            if e.gone:
                return True
            fins = tuple(f for f in e.ws.metadata.finalizers if f != a.finalizer)
            self._set_meta(key, finalizers=fins)
            if e.ws.deleting and not fins:
                self._workspace_gone(key)
            return True
        if isinstance(a, A.CreateNodeClaim):
            labels = dict(a.labels)
            owner = f"{labels.get(LABEL_WORKSPACE_NAMESPACE)}/{labels.get(LABEL_WORKSPACE)}"
            if owner != key:
                self.fail(f"{key}: CreateNodeClaim {a.name} labelled for {owner}")
            if a.name in self.world.claims:
                return True  # AlreadyExists
            if a.name in self.deleted_claims:
                self.fail(f"(a) {key}: CreateNodeClaim {a.name} re-creates a deleted NodeClaim's name: a cache "
                          f"that saw the old one go takes the new one for gone too, and creates another")
            with self.change() as w:
                w.claims[a.name] = ClaimT(a.name, owner, a.instance_type, created_at=self.now)
                w.mark_present(key, "NodeClaim/" + a.name)
            return True
        if isinstance(a, A.DeleteNodeClaim):
            c = self.world.claims.get(a.name)
            with self.change() as w:
                if c is None:
                    w.mark_gone(key, "NodeClaim/" + a.name)  # 404: the adapter knows it is gone
                elif not c.deleting:
                    w.claims[a.name] = attrs.evolve(c, deleting=True)
            return True
        if isinstance(a, A.CreateWorkload):
            if e.gone:
                return True  # its ownerReference is gone: the garbage collector removes it at once
            if a.name != e.ws.metadata.name:
                self.fail(f"{key}: workload named {a.name}")
            if key in self.world.workloads:
                return True  # AlreadyExists
            self._check_nodes_were_ready(key, p, f"CreateWorkload {a.kind} {a.name}")
            expected = "Deployment" if target_node_count(e.ws) <= 1 else "StatefulSet"
            if a.kind != expected or a.replicas != target_node_count(e.ws):
                self.fail(f"{key}: CreateWorkload {a.kind} x{a.replicas}, expected {expected} x{target_node_count(e.ws)}")
            with self.change() as w:
                w.workloads[key] = Workload(a.kind, a.name, a.replicas, 0, 0, a.revision)
                w.mark_present(key, "Workload/" + a.name)
            return True
        if isinstance(a, A.UpdateWorkload):
            wl = self.world.workloads.get(key)
            if wl is None:
                return False  # NotFound is an error for an update
            with self.change() as w:
                w.workloads[key] = attrs.evolve(wl, replicas=a.replicas, revision=a.revision, updated_replicas=0)
            return True
        if isinstance(a, A.CreateService):
            if e.gone:
                return True  # its ownerReference is gone: the garbage collector removes it at once
            if a.name not in (e.ws.metadata.name, e.ws.metadata.name + "-headless") or e.ws.tuning is not None:
                self.fail(f"{key}: CreateService {a.name}")
            if a.name in self.world.services.get(key, ()):
                return True  # AlreadyExists
            with self.change() as w:
                w.services[key] = w.services.get(key, frozenset()) | {a.name}
                w.mark_present(key, "Service/" + a.name)
            return True
        if isinstance(a, A.CreateJob):
            if e.gone:
                return True
            if a.name != e.ws.metadata.name:
                self.fail(f"{key}: Job named {a.name}")
            old = self.world.jobs.get(key)
            if old is not None:
                if old.revision != a.revision:
                    if old.deleting:
                        self.fail(f"(c) {key}: CreateJob for revision {a.revision} while the Job of revision "
                                  f"{old.revision} is still being deleted")
                    # Met a live Job of another revision: AlreadyExists, no second Job; the machine sees
                    # the stale one later and replaces it. Counted (see the report), not failed.
                    e.job_collisions += 1
                return True  # AlreadyExists
            self._check_nodes_were_ready(key, p, f"CreateJob {a.name}")
            with self.change() as w:
                w.jobs[key] = Job(a.name, a.revision, active=1)
                w.mark_present(key, "Job/" + a.name)
            return True
        if isinstance(a, A.DeleteJob):
            if a.propagation != "Background":
                self.fail(f"{key}: DeleteJob with propagation {a.propagation}")
            j = self.world.jobs.get(key)
            if j is not None and a.revision and j.revision != a.revision:
                return True  # the precondition: the Job there now is not the one meant (409, counted as done)
            with self.change() as w:
                if j is None:
                    w.mark_gone(key, "Job/" + a.name)
                elif not j.deleting:
                    w.jobs[key] = attrs.evolve(j, deleting=True)
            return True
        raise AssertionError(f"unknown action {a!r}")

    def _check_nodes_were_ready(self, key: str, p: Pass, what: str) -> None:
        first = self.entries[key].first_ready_version
        if first is None or first > p.version:
            self.fail(f"(b) {key}: {what} by a pass that read version {p.version}, but targetNodeCount nodes "
                      f"were Ready with GPU capacity only from version {first}")

    def _set_meta(self, key: str, **changes: Any) -> None:
        e = self.entries[key]
        meta = e.ws.metadata
        rv = str(int(meta.resource_version or "0") + 1)
        e.ws = attrs.evolve(e.ws, metadata=attrs.evolve(meta, resource_version=rv, **changes))
        e.persisted.append(e.ws)

    def _workspace_gone(self, key: str) -> None:
        """Finalizers gone and deletion requested: the API server removes it, the GC its owned objects."""
        e = self.entries[key]
        e.gone = True
        self.pending.pop(key, None)
        name = e.ws.metadata.name
        with self.change() as w:
            if w.workloads.pop(key, None) is not None:
                w.mark_gone(key, "Workload/" + name)
            if w.jobs.pop(key, None) is not None:
                w.mark_gone(key, "Job/" + name)
            for svc in w.services.pop(key, ()):
                w.mark_gone(key, "Service/" + svc)
        self.log.append(f"{key} is gone")

    # ------------------------------------------------------------------ persisting status

    def persist(self, p: Pass) -> bool:
        e = self.entries[p.key]
        if e.gone or e.foreign != p.foreign:
            return False  # NotFound / 409
        d = p.decision
        if d.status_changed:
            self._check_status(p.key, p.before, d.status, p.now)
            self._set_meta(p.key)
            e.ws = e.ws.with_status(d.status)
            e.persisted[-1] = e.ws
            self._check_recorded(p.key, self.world)
        for a in d.actions:
            if isinstance(a, A.RecordEvent) and a.type == "Warning" and a.reason in DEADLINE_REASONS:
                k = p.entry_key + (a.reason,)
                self.committed_deadlines[k] = self.committed_deadlines.get(k, 0) + 1
                if self.committed_deadlines[k] > 1:
                    self.fail(f"(e) {p.key}: deadline {a.reason} fired twice for the same state entry {k}")
        return True

    def _check_status(self, key: str, before: WorkspaceStatus, after: WorkspaceStatus, now: datetime) -> None:
        doc = after.to_dict()
        extra = set(doc) - STATUS_KEYS
        if extra:
            self.fail(f"{key}: status keys {sorted(extra)} would be pruned by the CRD's schema")
        old = {c.type: c for c in before.conditions}
        for c in after.conditions:
            o = old.get(c.type)
            if o is None:
                continue
            if o.status == c.status and o.last_transition_time != c.last_transition_time:
                self.fail(f"{key}: {c.type} kept status {c.status} but its lastTransitionTime moved "
                          f"{o.last_transition_time} -> {c.last_transition_time}")
            if o.status != c.status and c.last_transition_time != now.replace(microsecond=0):
                self.fail(f"{key}: {c.type} went {o.status} -> {c.status} but lastTransitionTime is "
                          f"{c.last_transition_time}, not the pass's time {now}")


    # ------------------------------------------------------------------ several writers at once

    def add_decider(self, name: str) -> Decider:
        """Another runner over the same store; passes of different deciders interleave request by request."""
        assert name not in self.deciders
        d = self.deciders[name] = Decider(name, cache_version=self.version)
        return d

    def step_of(self, decider: str, key: str) -> Step | None:
        return self.steps.get((decider, key))

    def begin_at(self, decider: str, key: str, lag: int = 0, ws_lag: int = 0) -> Step:
        """``decider`` observes ``key`` from its own caches (owned objects ``lag`` truth versions behind, the
        Workspace ``ws_lag`` persisted versions behind; neither goes back) and decides."""
        dc = self.deciders[decider]
        e = self.entries[key]
        assert not e.gone and (decider, key) not in self.steps
        version = max(dc.cache_version, self.version - max(lag, 0))
        dc.cache_version = version
        idx = max(dc.ws_seen.get(key, 0), len(e.persisted) - 1 - max(ws_lag, 0))
        dc.ws_seen[key] = idx
        ws = e.persisted[idx]
        w = self.versions[version]
        snap = self.snapshot(key, version)
        absent = self.confirmed_absent(key, w, ws)
        mine = {n: t for n, t in dc.refused.get(key, {}).items() if n in absent}
        if self.forge_refusals:
            # What a runner must not do: take its memory of its own requests as if it spoke for the record's.
            rec = read_lifecycle(ws.status)
            by = (rec.data.claimed_by if rec is not None else None) or ""
            mine = {n: by for n in mine}
        snap = attrs.evolve(snap, absent=absent, refused=mine)
        dc.passes += 1
        self.passes += 1
        pass_id = f"{decider}-{dc.incarnation}.{dc.passes:x}"
        d = self._decide_checked(key, ws, snap, pass_id)
        rec = read_lifecycle(ws.status)
        entry_key = (ws.metadata.uid, rec.state, rec.entered_at, rec.attempts) if rec else (ws.metadata.uid,)
        p = Pass(key, d, e.foreign, version, self.now, entry_key, ws.status)
        st = self.steps[(decider, key)] = Step(decider, p, [*d.before, None, *d.after], ws.metadata.resource_version)
        self.log.append(f"{decider} decides {key} @v{version}/{self.version} ws rv {st.rv}/"
                        f"{e.ws.metadata.resource_version} {rec.state if rec else None}->{d.state}: "
                        f"{[type(a).__name__ + ':' + getattr(a, 'name', getattr(a, 'reason', '')) for a in d.actions]}")
        return st

    def _remember_not_applied(self, decider: str, key: str, actions: list) -> None:
        mem = self.deciders[decider].refused.setdefault(key, {})
        for a in actions:
            if isinstance(a, A.CreateNodeClaim) and a.claim:
                mem["NodeClaim/" + a.name] = a.claim

    def step_once(self, decider: str, key: str, outcome: str = "ok") -> bool:
        """One request of ``decider``'s pass on ``key``: an action, or the status write. ``ok``; ``refused``
        (the server turned it away: nothing stored); ``lost`` (stored, but the answer never came back: the
        runner takes it for a failure). A failure ends the pass the way the runner ends it: a status write
        that lost a 409 reports nothing; an ambiguous one, or a failed action, reports the creates it did
        not send as never sent; a refused create is reported too. Returns whether the pass is over."""
        st = self.steps[(decider, key)]
        e = self.entries[key]
        if e.gone:
            del self.steps[(decider, key)]
            return True
        a = st.plan[st.i]
        rest = st.plan[st.i + 1:]
        done = False
        if a is None:
            if outcome == "refused" or e.ws.metadata.resource_version != st.rv:
                ok = False  # 409 (or refused): nothing of this pass is anybody's record
                if self.forge_refusals:
                    self._remember_not_applied(decider, key, rest)  # the old runner did: "never sent"
                if outcome != "refused":
                    self.log.append(f"{decider}: status write of {key} conflicts (rv {st.rv} vs "
                                    f"{e.ws.metadata.resource_version})")
            else:
                ok = self._commit(st.p)
                if ok and outcome == "lost":
                    self._remember_not_applied(decider, key, rest)  # may have been stored: only its own pass says
                    ok = False
                st.written = ok
            done = not ok
        elif isinstance(a, A.CreateNodeClaim) and self.now - st.p.now > self.config.create_send_window:
            # The runner's send window (runner.StaleCreate): too late to send; it stops and looks again.
            self._remember_not_applied(decider, key, [a, *rest])
            done = True
        else:
            if outcome == "refused":
                if isinstance(a, A.CreateNodeClaim):
                    self._remember_not_applied(decider, key, [a])
                self._remember_not_applied(decider, key, rest)
                done = True
            else:
                rv = e.ws.metadata.resource_version
                success = self.apply(key, a, st.p)
                if isinstance(a, A.AddFinalizer) and e.ws.metadata.resource_version != rv and st.rv == rv:
                    st.rv = e.ws.metadata.resource_version  # its own patch's answer: the write builds on it
                if outcome == "lost" or not success:
                    self._remember_not_applied(decider, key, rest)
                    done = True
        st.i += 1
        if done or st.i >= len(st.plan):
            del self.steps[(decider, key)]
            self.log.append(f"{decider}: pass on {key} ends after {st.i} of {len(st.plan)} requests "
                            f"({outcome}, written={st.written})")
            return True
        return False

    def _commit(self, p: Pass) -> bool:
        """A status write that passed its resourceVersion check (several-writer path)."""
        e = self.entries[p.key]
        saved = e.foreign
        p2 = attrs.evolve(p, foreign=e.foreign)
        ok = self.persist(p2)
        if ok:
            e.foreign = saved + 1  # a write by this runner is somebody else's for every other runner
        return ok

    def kill(self, decider: str, *, queue_creates: bool = True) -> None:
        """SIGKILL ``decider`` anywhere: its passes stop where they are; a create it was sending when it died
        (the next one after a committed status write) may sit in the API server and land until the request
        timeout. It comes back with new caches and no memory."""
        dc = self.deciders[decider]
        for (dn, key) in sorted(k for k in self.steps if k[0] == decider):
            st = self.steps.pop((dn, key))
            nxt = st.plan[st.i] if st.i < len(st.plan) else None
            if queue_creates and st.written and isinstance(nxt, A.CreateNodeClaim) \
                    and self.now - st.p.now <= self.config.create_send_window:
                self.queued.append((key, nxt, st.p, self.now))
                self.log.append(f"{decider} killed sending the create of NodeClaim {nxt.name}: queued")
            self.log.append(f"{decider} killed in its pass on {key} at request {st.i} of {len(st.plan)}")
        dc.incarnation += 1
        dc.kills += 1
        dc.refused.clear()
        dc.cache_version = self.version
        dc.ws_seen = {k: len(e.persisted) - 1 for k, e in self.entries.items()}

    def stop_deciders(self) -> None:
        """Every decider's passes end where they are (before a single runner takes over, e.g. ``converge``)."""
        for name in list(self.deciders):
            self.kill(name, queue_creates=True)

    # ------------------------------------------------------------------ users

    def change_spec(self, key: str) -> None:
        e = self.entries[key]
        e.spec_edits += 1
        e.ws = with_new_spec(e.ws, e.spec_edits)
        self._set_meta(key)
        e.foreign += 1
        self.log.append(f"{key}: spec edited -> revision {spec_revision(e.ws)}")

    def touch(self, key: str) -> None:
        """Someone else writes the Workspace (a label): an in-flight status write conflicts."""
        e = self.entries[key]
        self._set_meta(key, labels={**e.ws.metadata.labels, "touched": str(e.foreign + 1)})
        e.foreign += 1

    def delete_workspace(self, key: str) -> None:
        e = self.entries[key]
        if e.gone or e.ws.deleting:
            return
        if not e.ws.metadata.finalizers:
            self._workspace_gone(key)
            return
        self._set_meta(key, deletion_timestamp=self.now.replace(microsecond=0))
        e.foreign += 1
        self.log.append(f"{key}: deletion requested")

    # ------------------------------------------------------------------ the cluster progressing

    def launch(self, name: str, ok: bool = True, reason: str = "InsufficientCapacity") -> None:
        c = self.world.claims[name]
        assert c.phase == "Pending"
        with self.change() as w:
            w.claims[name] = attrs.evolve(c, phase="Launched" if ok else "Failed",
                                          failure_reason=None if ok else reason)

    def make_ready(self, name: str, gpu: bool = False) -> None:
        c = self.world.claims[name]
        assert c.phase in ("Pending", "Launched") and not c.deleting
        node = "node-" + name
        ns, ws_name = c.ws_key.split("/", 1)
        with self.change() as w:
            w.claims[name] = attrs.evolve(c, phase="Ready", node_name=node)
            w.nodes[node] = Node(node, {LABEL_ACCELERATOR: "nvidia", LABEL_WORKSPACE: ws_name,
                                        LABEL_WORKSPACE_NAMESPACE: ns}, ready=True, gpu_capacity=1 if gpu else 0)

    def gpu_arrives(self, node: str) -> None:
        with self.change() as w:
            w.nodes[node] = attrs.evolve(w.nodes[node], gpu_capacity=1)

    def node_not_ready(self, node: str) -> None:
        with self.change() as w:
            w.nodes[node] = attrs.evolve(w.nodes[node], ready=False)

    def node_recovers(self, node: str) -> None:
        with self.change() as w:
            w.nodes[node] = attrs.evolve(w.nodes[node], ready=True)

    def node_terminated(self, name: str) -> None:
        """The Node goes away; Karpenter deletes its NodeClaim (the deletion completes later)."""
        c = self.world.claims[name]
        with self.change() as w:
            if c.node_name:
                w.nodes.pop(c.node_name, None)
            w.claims[name] = attrs.evolve(c, deleting=True)
            wl = w.workloads.get(c.ws_key)
            if wl is not None and wl.ready_replicas > 0:
                w.workloads[c.ws_key] = attrs.evolve(wl, ready_replicas=wl.ready_replicas - 1)

    def finish_claim_deletion(self, name: str) -> None:
        c = self.world.claims[name]
        assert c.deleting
        self.deleted_claims.add(name)
        with self.change() as w:
            del w.claims[name]
            if c.node_name:
                w.nodes.pop(c.node_name, None)
            w.mark_gone(c.ws_key, "NodeClaim/" + name)

    def rollout(self, key: str) -> None:
        wl = self.world.workloads[key]
        with self.change() as w:
            w.workloads[key] = attrs.evolve(wl, ready_replicas=wl.replicas, updated_replicas=wl.replicas)

    def degrade(self, key: str) -> None:
        wl = self.world.workloads[key]
        with self.change() as w:
            w.workloads[key] = attrs.evolve(wl, ready_replicas=max(0, wl.ready_replicas - 1))

    def finish_job(self, key: str, ok: bool = True) -> None:
        j = self.world.jobs[key]
        assert not j.complete and not j.failed_permanently
        if not ok:
            self.entries[key].failed_job_revisions.add(j.revision)
        with self.change() as w:
            if ok:
                w.jobs[key] = attrs.evolve(j, active=0, succeeded=1, complete=True)
            else:
                w.jobs[key] = attrs.evolve(j, active=0, failed=1, failed_permanently=True,
                                           failure_reason="BackoffLimitExceeded")

    def finish_job_deletion(self, key: str) -> None:
        j = self.world.jobs[key]
        assert j.deleting
        with self.change() as w:
            del w.jobs[key]
            w.mark_gone(key, "Job/" + j.name)

    def settle(self, key: str | None = None) -> None:
        """The cluster stops failing and everything requested becomes ready (for ``key``, or for all)."""
        def mine(ws_key: str) -> bool:
            return key is None or ws_key == key

        for c in sorted(self.world.claims.values(), key=lambda c: c.name):
            if not mine(c.ws_key):
                continue
            if c.deleting:
                self.finish_claim_deletion(c.name)
            elif c.phase in ("Pending", "Launched"):
                self.make_ready(c.name, gpu=True)
        for c in sorted(self.world.claims.values(), key=lambda c: c.name):
            node = self.world.nodes.get(c.node_name or "")
            if mine(c.ws_key) and node is not None and (not node.ready or node.gpu_capacity <= 0):
                with self.change() as w:
                    w.nodes[node.name] = attrs.evolve(node, ready=True, gpu_capacity=max(1, node.gpu_capacity))
        for k, wl in sorted(self.world.workloads.items()):
            if mine(k) and not wl.is_ready:
                self.rollout(k)
        for k, j in sorted(self.world.jobs.items()):
            if not mine(k):
                continue
            if j.deleting:
                self.finish_job_deletion(k)
            elif not j.complete and not j.failed_permanently:
                self.finish_job(k, ok=True)

    # ------------------------------------------------------------------ liveness

    def fork(self) -> Cluster:
        """A copy of the present (history dropped: only fresh snapshots are served from it)."""
        c = Cluster(self.config, self.now, full_reparse=self.full_reparse)
        c.versions = [self.world.copy()]
        c.entries = {k: attrs.evolve(e, failed_job_revisions=set(e.failed_job_revisions), persisted=[e.ws])
                     for k, e in self.entries.items()}
        for e in c.entries.values():
            if e.first_ready_version is not None:
                e.first_ready_version = 0
        c.committed_deadlines = dict(self.committed_deadlines)
        c.deleted_claims = set(self.deleted_claims)
        c.queued = list(self.queued)
        c.log = list(self.log[-25:])
        return c

    def unfinished(self, key: str) -> str | None:
        """Why ``key`` has not reached where it must end once the cluster settles, or None."""
        e = self.entries[key]
        claims = self.claims(key)
        if e.gone or e.ws.deleting:
            if not e.gone:
                return f"deletion requested but the Workspace is still there (state {self.state(key)})"
            if claims:
                return f"gone, but its NodeClaims are left behind: {[c.name for c in claims]}"
            return None
        rec = self.record(key)
        if rec is None:
            return "no lifecycle record"
        if rec.data.claim_failures >= self.config.max_nodeclaim_failures and rec.state == "NodesProvisioning":
            return None  # by design: it gave up creating NodeClaims and says so
        if e.ws.is_tuning:
            j = self.job(key)
            if rec.state == "Succeeded" and e.ws.status.state == "Succeeded":
                if j is None or j.revision != spec_revision(e.ws) or not j.complete:
                    return f"Succeeded, but the Job left is {j}, the current revision is {spec_revision(e.ws)}"
                return None
            if rec.state == "Failed" and e.ws.status.state == "Failed":
                why = rec.history[-1].why if rec.history else ""
                if why.startswith("deadline:") or spec_revision(e.ws) in e.failed_job_revisions:
                    return None
                return f"Failed ({why}) though no Job of the current revision failed"
            return f"tuning ended in {rec.state} / status.state {e.ws.status.state}"
        if rec.state == "Ready" and e.ws.status.state == "Ready":
            return None
        return f"inference ended in {rec.state} / status.state {e.ws.status.state}"

    def _check_quiet(self) -> None:
        """Where it ended, it stays: one more settled round takes no transition, asks for nothing and
        writes nothing (no ping-pong between states across passes)."""
        self.settle()
        for key in self.live_keys():
            before = self.state(key)
            d = self.run_pass(key).decision
            if d.transitions or d.mutating_actions or d.status_changed:
                self.fail(f"(f) {key}: finished in {before}, but the next pass on a settled cluster still moves: "
                          f"transitions {[(h.source, h.dest, h.why) for h in d.transitions]}, "
                          f"actions {d.mutating_actions}, status changed: {d.status_changed}")

    def converge(self, rounds: int = 12) -> int:
        """Settle the cluster and run fresh passes until everything is where it must end; return the
        number of rounds, or fail naming what did not get there."""
        if self.steps:
            self.stop_deciders()
        self.restart()
        for r in range(1, rounds + 1):
            self.settle()
            version = self.version
            wakes = []
            moved = False
            for key in self.live_keys():
                d = self.run_pass(key, lag=0).decision
                moved = moved or bool(d.transitions or d.mutating_actions or d.status_changed)
                if d.wake.after is not None:
                    wakes.append(d.wake.after)
            while self.queued:  # a dead runner's creates land only now, after the new runner has decided
                self.land_queued()
                moved = True
            self.settle()
            if all(self.unfinished(k) is None for k in self.keys()):
                self._check_quiet()
                return r
            step = timedelta(seconds=1)
            if not moved and self.version == version and wakes:
                # A quiet round: no event will come, only time moves things now, as far as the earliest
                # wake-up asked (a runner would sleep until then).
                step = max(step, min(wakes))
            self.advance(step)
        stuck = {k: self.unfinished(k) for k in self.keys() if self.unfinished(k) is not None}
        self.fail(f"(f) not converged after {rounds} passes each: {stuck}")
        return rounds


def to_ready(c: Cluster, key: str) -> None:
    """Happy rounds until the Workspace is where it ends (Ready or Succeeded)."""
    for _ in range(6):
        c.run_pass(key)
        c.settle(key)
    c.run_pass(key)
    assert c.state(key) in ("Ready", "Succeeded"), c.state(key)


# ============================================================================ hostile lifecycle records


# Lifecycle condition messages that once made ``decide`` raise (an infinite attempt count, an entry time
# whose deadline overflows, nesting deep enough to exhaust the JSON parser's recursion). decide treats each
# as no record at all; the property tests always draw them among their garbage records.
HOSTILE_RECORDS = (
    '{"v":1,"state":"Ready","attempts":Infinity}',
    '{"v":1,"state":"NodesProvisioning","entered":"9999-12-31T23:59:59Z"}',
    "[" * 50000,
)
GARBAGE_RECORDS_THAT_CRASH = HOSTILE_RECORDS  # the name the regression stories in test_decide_unit.py use
