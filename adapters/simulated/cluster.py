"""An in-memory cluster that behaves like Kubernetes + Karpenter + KAITO's GPU device plugin, on a virtual clock.

How it is driven
----------------
The runner owns the clock. It calls :meth:`SimCluster.advance_to` with the next time it wants to act at
(never going back); the cluster applies every scheduled change up to then, in time order, and lets its
informer cache catch up to ``now - cache_lag_s``, calling the event handler for each change the cache
applies. :meth:`SimCluster.next_event_time` says when the cluster next has something to do (a
scheduled change, or a change waiting to reach the cache); it carries no information about *what*
changes, so a controller learns nothing from it that a real one could not.

Three layers
------------
- **Truth**: what the API server stores. Writes (:meth:`apply`, :meth:`persist`) change it at once, at
  ``now``; Karpenter, the device plugin, the kubelet and the Job controller change it at sampled times
  (a heap of scheduled changes); so do the scenario's users (arrivals, spec changes, deletions).
- **Change log**: every truth change, in order, with its time.
- **Informer cache**: a prefix of the change log (every change whose time is <= now - cache_lag_s),
  applied in order, so it is always a consistent, monotone view of the past. It keeps tombstones of
  deleted objects (``Snapshot.absent``). :meth:`observe` reads only the cache (free), plus the
  Nodes the snapshot needs, which are GETs (Nodes are not watched, as in KAITO on large clusters).

Randomness
----------
The scenario (arrival times, kinds, presets, node counts, which Workspaces change or are deleted) is
drawn from one ``random.Random(seed)``. Each object's latencies and failures are drawn, when the
object is created, from a stream belonging to its Workspace and kind, seeded from the same seed:
the n-th NodeClaim a Workspace creates gets the same latencies whatever controller runs and however
its work interleaves with other Workspaces', so controllers are compared on equal footing.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import attrs

from workspace_fsm.kaito import actions as A
from workspace_fsm.engine.adapter import AdapterError, Conflict
from workspace_fsm.kaito.catalogue import Catalogue
from workspace_fsm.kaito.model import (LABEL_ACCELERATOR, LABEL_INSTANCE_TYPE, LABEL_WORKSPACE,
                                 LABEL_WORKSPACE_NAMESPACE, Job, LabelSelector, Node, NodeClaim, Snapshot,
                                 Workload, Workspace, WorkspaceStatus, format_time, whole_seconds)
from workspace_fsm.kaito.workspace import WORKSPACE, confirmations, target_node_count

from workspace_fsm.adapters.kubernetes import manifests
from workspace_fsm.kaito import manifests as kaito_manifests

from .documents import inference_document, to_workspace, tuning_document
from .params import Scenario, ScenarioError, SimParams
from .scheduling import UNSCHEDULABLE, Fit, fit, hostnames, pending_pod, pod_gpus

__all__ = ["SimCluster", "WorkspaceRecord", "EPOCH", "INSUFFICIENT_CAPACITY"]

#: Virtual time 0 as a datetime (what ``decide`` gets as ``now`` is ``EPOCH + t``).
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)
INSUFFICIENT_CAPACITY = "InsufficientCapacity"
WORKLOAD_PROBLEMS = ("CrashLoopBackOff", "ImagePullBackOff")

_WS, _CLAIM, _NODE, _WORKLOAD, _JOB = "Workspace", "NodeClaim", "Node", "Workload", "Job"
# An inference Workspace's Services ("Service/<name>" in Snapshot.absent), kept apart from the Services other
# lifecycles (the RAGEngine's) keep as documents.
_SVC = "WorkspaceService"
_CLUSTER_SCOPED = (_CLAIM, _NODE)
_ROLLED_OUT = ("Deployment", "StatefulSet")  # documents whose pods the simulated kubelet makes ready
_MASK64 = (1 << 64) - 1


def _resource_version(seq: int) -> str:
    """An opaque resourceVersion: unique per change, but not a counter anyone could do arithmetic on.

    A multiply by an odd constant and an xor-shift are both bijections on 64-bit words, so distinct
    changes never share a version.
    """
    x = (seq * 0x9E3779B97F4A7C15 + 0x2545F4914F6CDD1D) & _MASK64
    x ^= x >> 29
    x = (x * 0xBF58476D1CE4E5B9) & _MASK64
    return str(x)


def _absent_name(kind: str, key: str) -> str:
    """``Snapshot.absent`` spelling: ``NodeClaim/<name>``, ``Job/<name>`` (namespace dropped)."""
    return f"{'Service' if kind == _SVC else kind}/{key.rsplit('/', 1)[-1]}"


def _brief(obj: Any) -> str:
    """A short, process-independent digest of an object for the trace."""
    if obj is None:
        return "-"
    if isinstance(obj, NodeClaim):
        return f"L={obj.launched} R={obj.registered} I={obj.initialized} Y={obj.ready} del={int(obj.deleting)}"
    if isinstance(obj, Node):
        return f"ready={int(obj.ready)} gpu={obj.gpu_capacity}"
    if isinstance(obj, Workload):
        return (f"{obj.ready_replicas}/{obj.updated_replicas}/{obj.replicas} rev={obj.revision} "
                f"problem={obj.problem} del={int(obj.deleting)}")
    if isinstance(obj, Job):
        return f"rev={obj.revision} ok={int(obj.complete)} failed={int(obj.failed_permanently)} del={int(obj.deleting)}"
    if isinstance(obj, Workspace):
        m = obj.metadata
        return (f"rv={m.resource_version} gen={m.generation} state={obj.status.state} "
                f"fin={len(m.finalizers)} del={int(obj.deleting)}")
    return type(obj).__name__


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, ``null`` removes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(target) if isinstance(target, Mapping) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge_patch(out.get(k), v)
    return out


# --------------------------------------------------------------------------- per-Workspace record


@attrs.define
class WorkspaceRecord:
    """What the benchmark reports per resource (a Workspace, or another lifecycle's resource such as a
    RAGEngine: ``kind`` and ``lifecycle`` say which). Times are virtual seconds."""

    key: str
    tuning: bool
    nodes: int  # GPU nodes it needs (0: none of its own, e.g. a RAGEngine without compute)
    preset: str = ""
    kind: str = "Workspace"
    lifecycle: str = "workspace"
    created_at: float | None = None
    generation: int = 1
    #: generation -> (time, state) the first time status.state reached the goal for that generation
    #: (inference: Ready; tuning: Succeeded or Failed), with the status computed for that generation.
    goals: dict[int, tuple[float, str]] = attrs.field(factory=dict)
    spec_change_at: float | None = None  # scheduled by the scenario
    spec_changed_at: float | None = None  # when it happened
    delete_at: float | None = None  # scheduled by the scenario
    delete_requested_at: float | None = None
    removed_at: float | None = None
    #: NodeClaim name -> seconds from its creation to GPU capacity on its node (None: it never gets there).
    claim_paths: dict[str, float | None] = attrs.field(factory=dict)
    #: Rollout times of each workload version created or updated (None: never becomes ready).
    workload_paths: list[float | None] = attrs.field(factory=list)
    #: Run times of each tuning Job created (None: its pod never fits a node).
    job_paths: list[float | None] = attrs.field(factory=list)
    #: max over time of (NodeClaims that exist, deleting ones included) - targetNodeCount.
    over_target_max: int = 0
    #: The machine states it entered (committed transitions, in order; filled in by a mixed run's hooks).
    states: dict[str, None] = attrs.field(factory=dict)

    @property
    def first_goal_at(self) -> float | None:
        return min((t for t, _ in self.goals.values()), default=None)

    @property
    def goal_at(self) -> float | None:
        """When the goal was reached for the Workspace's current generation."""
        g = self.goals.get(self.generation)
        return None if g is None else g[0]

    @property
    def goal_state(self) -> str | None:
        g = self.goals.get(self.generation)
        return None if g is None else g[1]

    @property
    def time_to_first_goal(self) -> float | None:
        first = self.first_goal_at
        return None if first is None or self.created_at is None else first - self.created_at

    @property
    def chain(self) -> float | None:
        """The floor on time-to-first-goal set by this Workspace's own objects: the slowest NodeClaim that
        became Ready (creation -> Ready -> GPU capacity) plus the first workload rollout or Job run.
        None until those have been sampled (or when the workload never becomes ready)."""
        paths = [p for p in self.claim_paths.values() if p is not None]
        if not paths and self.nodes:
            return None
        tail = self.job_paths[0] if self.tuning and self.job_paths else (
            self.workload_paths[0] if not self.tuning and self.workload_paths else None)
        return None if tail is None else max(paths, default=0.0) + tail

    @property
    def stuck(self) -> bool:
        """Its latest workload version will never become ready, or its latest tuning Job never runs (a failure
        that does not recover, pods that fit no node)."""
        if self.tuning:
            return bool(self.job_paths) and self.job_paths[-1] is None
        return bool(self.workload_paths) and self.workload_paths[-1] is None

    @property
    def settled(self) -> bool:
        """Nothing more is expected of it: removed if its deletion was scheduled, else at its goal for
        its final generation (or stuck for good)."""
        if self.delete_at is not None:
            return self.removed_at is not None
        if self.spec_change_at is not None and self.spec_changed_at is None:
            return False
        return self.goal_at is not None or self.removed_at is not None or self.stuck


@attrs.define
class _Obj:
    """Bookkeeping the API object does not carry: incarnation (to void stale scheduled changes), owner."""

    inc: int
    owner: str
    owner_uid: str = ""
    labels: Mapping[str, str] = attrs.field(factory=dict)
    delete_latency: float = 0.0
    delete_latency_foreground: float = 0.0
    gpus: int = 0
    node_name: str = ""


class _Truth:
    """Read-only views of the API server's objects. Free: for tests and metrics, never for a controller."""

    def __init__(self, c: SimCluster) -> None:
        self.workspaces: Mapping[str, Workspace] = MappingProxyType(c._ws)
        self.nodeclaims: Mapping[str, NodeClaim] = MappingProxyType(c._claims)
        self.nodes: Mapping[str, Node] = MappingProxyType(c._nodes)
        self.workloads: Mapping[str, Workload] = MappingProxyType(c._workloads)
        self.jobs: Mapping[str, Job] = MappingProxyType(c._jobs)


# --------------------------------------------------------------------------- the cluster


class SimCluster:
    """The simulated cluster; implements :class:`workspace_fsm.engine.adapter.ClusterAdapter`.

    ``SimCluster(scenario)`` schedules the scenario's Workspaces; ``SimCluster(params=..., seed=...)``
    starts empty (create Workspaces with :meth:`create_workspace`).
    """
    lifecycle = WORKSPACE  # the lifecycle it serves (the runner drives it)

    def __init__(self, scenario: Scenario | None = None, *, params: SimParams | None = None,
                 seed: int | None = None, epoch: datetime = EPOCH, keep_trace: bool = True) -> None:
        self.scenario = scenario
        self.params: SimParams = params or (scenario.params if scenario is not None else SimParams())
        self.seed: int = seed if seed is not None else (scenario.seed if scenario is not None else 1)
        self.epoch = epoch
        self.now: float = 0.0
        self.keep_trace = keep_trace
        #: (time, kind, key, digest) of every truth change, in order: two runs with one seed give the same.
        self.trace: list[tuple[float, str, str, str]] = []
        #: (time, workspace key, type, reason, message) of every Event recorded through apply().
        self.events: list[tuple[float, str, str, str, str]] = []
        self.records: dict[str, WorkspaceRecord] = {}

        # accounting
        self.reads = 0
        self.writes = 0
        self.api_call_count = 0  #: reads + writes: what the runner charges api_latency_s for
        self.api_calls: dict[str, int] = {}  #: "verb Kind" -> count (Events included, as "create Event")
        self.nodeclaims_created = 0
        self.nodeclaims_over_target_max = 0

        # truth
        self._ws: dict[str, Workspace] = {}
        self._ws_seq: dict[str, int] = {}
        self._claims: dict[str, NodeClaim] = {}
        self._nodes: dict[str, Node] = {}
        self._workloads: dict[str, Workload] = {}
        self._jobs: dict[str, Job] = {}
        self._meta: dict[tuple[str, str], _Obj] = {}
        self._claims_of: dict[str, dict[str, None]] = {}  # owner -> claim names (ordered set)
        self._inc = 0
        self._seq = 0  # change counter; resourceVersions are derived from it

        # scheduled changes and the change log
        self._heap: list[tuple[float, int, str, tuple]] = []
        self._heap_seq = 0
        self._log: deque[tuple[float, int, str, str, Any, str | None]] = deque()

        # informer cache
        self._cache: dict[str, dict[str, Any]] = {k: {} for k in (_WS, _CLAIM, _NODE, _WORKLOAD, _JOB, _SVC)}
        self._services: dict[str, tuple[str, str]] = {}  # "ns/name" -> (owner Workspace key, its uid)
        self._cache_claims_of: dict[str, dict[str, None]] = {}
        self._cache_seq = 0
        self._tombs: dict[tuple[str, str], str | None] = {}
        #: (kind, key) this adapter created and its cache has not shown yet (like a controller's expectations).
        self._own_known: set[tuple[str, str]] = set()
        self._tombs_of: dict[str, dict[str, None]] = {}
        self._handler: Callable[[str], None] | None = None

        # Other lifecycles' resources and the children they create (see "other lifecycles" below): kept as
        # the API server keeps them, as dicts. None of this is touched by a Workspace-only population.
        self._objs: dict[str, dict[str, dict[str, Any]]] = {}  # kind -> key -> document
        self._children_of: dict[str, dict[tuple[str, str], None]] = {}  # owner token -> its (kind, key)
        self._cache_owned: dict[tuple[str, str], dict[str, None]] = {}  # (kind, owner token) -> cached keys
        self._generic_kinds: set[str] = set()
        #: resource kind -> the adapter serving it (routes its events, see :meth:`register`)
        self._routes: dict[str, Any] = {}
        self._obj_overlay: dict[str, tuple[dict[str, Any] | None, int]] = {}
        self._obj_own_patches: dict[str, dict[str, str]] = {}
        #: workload key -> (fit, pod spec, since, workload document): pods the scheduler could not place
        self._pending: dict[tuple[str, str], tuple[Fit, dict[str, Any], str, dict[str, Any]]] = {}
        self._pod_keys: dict[tuple[str, str], list[str]] = {}  # workload -> its Pending Pod objects (when watched)
        #: lifecycle name -> "verb Kind" -> count: the calls of the adapters serving other lifecycles
        self.api_calls_by: dict[str, dict[str, int]] = {}

        # write-through overlay: key -> (the version this adapter wrote (None: it removed it), its change seq)
        self._overlay: dict[str, tuple[Workspace | None, int]] = {}
        # resourceVersions produced by this adapter's own metadata patches: key -> {before: after}
        self._own_patches: dict[str, dict[str, str]] = {}

        self._streams: dict[tuple[str, str], random.Random] = {}
        self._err_rng = self._rng("", "api-errors")
        self.truth = _Truth(self)
        if scenario is not None:
            self._schedule_scenario(scenario)

    # ------------------------------------------------------------------ clock

    @property
    def api_latency_s(self) -> float:
        return self.params.api_latency_s

    @property
    def cache_lag_s(self) -> float:
        return self.params.cache_lag_s

    @property
    def now_dt(self) -> datetime:
        return self.to_datetime(self.now)

    def to_datetime(self, t: float) -> datetime:
        return self.epoch + timedelta(seconds=t)

    def to_seconds(self, dt: datetime) -> float:
        return (dt - self.epoch).total_seconds()

    def next_event_time(self) -> float | None:
        """When the cluster next changes by itself or its cache next catches up; None when idle."""
        t = self._heap[0][0] if self._heap else math.inf
        if self._log:
            t = min(t, self._log[0][0] + self.params.cache_lag_s)
        return None if t == math.inf else max(t, self.now)

    def advance_to(self, t: float) -> None:
        """Apply every scheduled change with time <= t (in time order; ties in scheduling order) and let
        the cache apply every change with time <= t - cache_lag_s, calling the event handler. Then now = t."""
        if t < self.now - 1e-9:
            raise ValueError(f"the virtual clock cannot go back: now is {self.now}, asked for {t}")
        lag = self.params.cache_lag_s

        def due() -> tuple[float, float]:
            return (self._heap[0][0] if self._heap else math.inf,
                    self._log[0][0] + lag if self._log else math.inf)

        nt, nd = due()
        while min(nt, nd) <= t:  # drains what is due: bounded by the events scheduled up to t
            if nd <= nt:  # a change that happened earlier reaches the cache first
                self.now = max(self.now, nd)
                self._deliver(self._log.popleft())
            else:
                when, _, op, args = heapq.heappop(self._heap)
                self.now = max(self.now, when)
                getattr(self, "_ev_" + op)(*args)
            nt, nd = due()
        self.now = max(self.now, t)

    def sync(self) -> None:
        """advance_to(now): deliver what is due now (e.g. this instant's writes when cache_lag_s is 0)."""
        self.advance_to(self.now)

    def _at(self, when: float, op: str, *args: Any) -> None:
        self._heap_seq += 1
        heapq.heappush(self._heap, (when, self._heap_seq, op, args))

    def _rng(self, owner: str, kind: str) -> random.Random:
        r = self._streams.get((owner, kind))
        if r is None:
            digest = hashlib.sha256(f"{self.seed}/{owner}/{kind}".encode()).digest()
            r = self._streams[(owner, kind)] = random.Random(int.from_bytes(digest[:8], "big"))
        return r

    # ------------------------------------------------------------------ truth changes and the log

    def _change(self, kind: str, key: str, obj: Any, owner: str | None) -> int:
        self._seq += 1
        self._log.append((self.now, self._seq, kind, key, obj, owner))
        if self.keep_trace:
            self.trace.append((round(self.now, 9), kind, key, _brief(obj)))
        if owner is not None and kind in (_CLAIM, _WS):
            self._check_over_target(owner)
        return self._seq

    def _put_ws(self, ws: Workspace) -> tuple[Workspace, int]:
        """Store a new version of a Workspace with a fresh resourceVersion."""
        seq = self._seq + 1
        ws = attrs.evolve(ws, metadata=attrs.evolve(ws.metadata, resource_version=_resource_version(seq)))
        self._ws[ws.key] = ws
        self._ws_seq[ws.key] = seq
        assert self._change(_WS, ws.key, ws, ws.key) == seq
        return ws, seq

    def _remove_ws(self, key: str) -> int:
        ws = self._ws.pop(key)
        self._ws_seq.pop(key, None)
        seq = self._change(_WS, key, None, key)
        rec = self.records.get(key)
        if rec is not None:
            rec.removed_at = self.now
        # ownerReference garbage collection of the workload and the Job.
        delay = self.params.latencies.owner_gc.sample(self._rng(key, "gc"))
        self._at(self.now + delay, "gc", key, ws.metadata.uid)
        return seq

    def _check_over_target(self, owner: str) -> None:
        n = len(self._claims_of.get(owner, ()))
        if not n:
            return
        ws = self._ws.get(owner)
        rec = self.records.get(owner)
        target = ws.status.target_node_count if ws is not None else None
        if not target:
            if rec is not None:
                target = rec.nodes
            elif ws is not None and ws.resource is not None:
                target = max(1, ws.resource.count or 1)
            else:
                target = 1
        over = n - target
        if rec is not None and over > rec.over_target_max:
            rec.over_target_max = over
        if over > self.nodeclaims_over_target_max:
            self.nodeclaims_over_target_max = over

    # ------------------------------------------------------------------ the informer cache

    def _deliver(self, entry: tuple[float, int, str, str, Any, str | None]) -> None:
        _, seq, kind, key, obj, owner = entry
        if kind in self._generic_kinds:
            self._deliver_object(seq, kind, key, obj, owner)
            return
        store = self._cache[kind]
        if obj is None:
            store.pop(key, None)
            if kind == _CLAIM and owner is not None:
                self._cache_claims_of.get(owner, {}).pop(key, None)
            if kind == _WS:
                self._tombs_of.pop(key, None)  # a Workspace gone takes its tombstones along
            else:
                self._tombs[(kind, key)] = owner
                if owner is not None:
                    self._tombs_of.setdefault(owner, {})[_absent_name(kind, key)] = None
        else:
            store[key] = obj
            self._own_known.discard((kind, key))  # the cache shows it now
            if kind == _CLAIM and owner is not None:
                self._cache_claims_of.setdefault(owner, {})[key] = None
            if (kind, key) in self._tombs:  # re-created: no longer absent
                old_owner = self._tombs.pop((kind, key))
                if old_owner is not None:
                    self._tombs_of.get(old_owner, {}).pop(_absent_name(kind, key), None)
        self._cache_seq = seq
        if owner is not None and self._routes and ":" in owner:
            self._route(kind, owner)  # another lifecycle's NodeClaim or Node
        elif self._handler is not None and owner is not None and (kind != _NODE or self.params.nodes_from_cache):
            # Nodes wake their Workspace only when they are cached (a label-selected watch of the
            # Workspace's own nodes); otherwise they are not watched and a timer re-checks them.
            self._handler(owner)

    # ------------------------------------------------------------------ ClusterAdapter

    def set_event_handler(self, handler: Callable[[str], None]) -> None:
        """``handler(workspace_key)`` is called whenever the cache applies a change to the Workspace, or to
        one of its NodeClaims (by label), its workload or its Job. Called from inside :meth:`advance_to`."""
        self._handler = handler

    def observe(self, key: str, *, also_absent: Iterable[str] = ()) -> tuple[Workspace | None, Snapshot]:
        """The Workspace (from the cache, or the version this adapter last wrote while the cache has not
        caught up with it; None when gone) and a snapshot of its objects from the cache.

        ``absent`` holds the tombstones of the Workspace's own objects, of the NodeClaims named in its
        lifecycle record, and of any ``also_absent`` names (``"Kind/name"``) the caller asks about.
        Nodes the snapshot needs (those of Ready NodeClaims, or the labelSelector's for bring-your-own
        nodes) are read with GETs that count as API reads, unless ``params.nodes_from_cache``.
        """
        ws = self._observed_ws(key)
        ns = key.split("/", 1)[0]
        claims = tuple(self._cache[_CLAIM][n] for n in sorted(self._cache_claims_of.get(key, ())))
        nodes: dict[str, Node] = {}
        if ws is not None and ws.resource is not None and ws.resource.byo_nodes:
            if self.params.nodes_from_cache:
                nodes = {n.name: n for n in self._cache[_NODE].values() if ws.resource.label_selector.matches(n.labels)}
            else:
                nodes = {n.name: n for n in self.list_nodes(ws.resource.label_selector)}
        else:
            for c in claims:
                if c.node_name and c.ready == "True" and not c.deleting:
                    node = self._cache[_NODE].get(c.node_name) if self.params.nodes_from_cache \
                        else self.get_node(c.node_name)
                    if node is not None:
                        nodes[node.name] = node
        absent: set[str] = set()
        wanted = set(also_absent)
        if ws is not None:
            wanted |= confirmations(ws)
        config_maps: dict[str, dict[str, str]] = {}
        for name in sorted(wanted):
            kind, _, short = name.partition("/")
            kind = _SVC if kind == "Service" else kind
            full = short if kind in _CLUSTER_SCOPED else f"{ns}/{short}"
            if kind == "ConfigMap":
                # The inference ConfigMap, asked about only until targetNodeCount is kept: one counted GET
                # (ConfigMaps are not cached, as the Kubernetes adapter does not cache them).
                self._read("get", kind)
                doc = self._objs.get(kind, {}).get(full)
                if doc is None:
                    absent.add(name)
                else:
                    config_maps[short] = {str(k): str(v) for k, v in (doc.get("data") or {}).items()}
                continue
            if full in self._cache[kind]:
                continue  # visible: not absent
            if (kind, full) in self._own_known:
                continue  # this adapter created it; its watch event is on the way
            if (kind, full) in self._tombs:
                absent.add(name)  # the watch showed it deleted
                continue
            # Neither: ask the API server (a counted GET). Only after a lost record or a failed create.
            self._read("get", kind)
            store = {_CLAIM: self._claims, _JOB: self._jobs, _WORKLOAD: self._workloads,
                     _SVC: self._services}.get(kind, {})
            if full not in store:
                absent.add(name)
        return ws, Snapshot(nodeclaims=claims, nodes=nodes, workload=self._cache[_WORKLOAD].get(key),
                            job=self._cache[_JOB].get(key), absent=frozenset(absent), config_maps=config_maps,
                            services=self._cached_services(key))

    def _cached_services(self, key: str) -> frozenset[str]:
        """The Workspace's Services its cache shows (their names are fixed: two lookups)."""
        cache = self._cache[_SVC]
        return frozenset(n for n in (key.rsplit("/", 1)[-1], key.rsplit("/", 1)[-1] + "-headless")
                         if f"{key.split('/', 1)[0]}/{n}" in cache)

    def _observed_ws(self, key: str) -> Workspace | None:
        ov = self._overlay.get(key)
        if ov is not None:
            if self._cache_seq < ov[1]:
                return ov[0]
            del self._overlay[key]
        return self._cache[_WS].get(key)

    def apply(self, ws: Workspace, actions: Sequence[A.Action]) -> None:
        """Execute actions in order, each one API write at ``now`` (Events are not charged: client-go's
        recorder sends them asynchronously). AlreadyExists and NotFound count as success. Raises
        :class:`AdapterError` on an injected API failure, leaving the remaining actions undone."""
        for action in actions:
            self._APPLY[type(action)](self, ws, action)

    def persist(self, ws: Workspace, status: WorkspaceStatus) -> Workspace:
        """Write the status subresource with ``ws.metadata.resource_version`` as precondition.

        Raises :class:`Conflict` when the stored object is newer (someone else wrote it; its watch event
        will follow). This adapter's own finalizer patches in between do not count as someone else: like
        a client that keeps the object each patch returns, it writes on top of them. Writing the status
        of a Workspace that no longer exists is a no-op (there is nothing left to record).
        """
        key = ws.key
        self._write("update", "Workspace/status")
        own = self._own_patches.pop(key, {})
        cur = self._ws.get(key)
        if cur is None:
            return ws.with_status(status)
        rv, seen = ws.metadata.resource_version, 0
        while rv != cur.metadata.resource_version and rv in own and seen < 64:
            rv, seen = own[rv], seen + 1
        if rv != cur.metadata.resource_version:
            raise Conflict(f"Operation cannot be fulfilled on workspaces.kaito.sh {key!r}: the object has been "
                           f"modified; please apply your changes to the latest version and try again")
        if status == cur.status:  # an update that changes nothing does not make a new version
            return cur
        new, seq = self._put_ws(cur.with_status(status))
        self._overlay[key] = (new, seq)
        self._note_goal(new)
        return new

    # ------------------------------------------------------------------ API accounting

    def _count(self, verb: str, kind: str, by: str | None = None) -> None:
        name = f"{verb} {kind}"
        self.api_calls[name] = self.api_calls.get(name, 0) + 1
        if by is not None:
            mine = self.api_calls_by.setdefault(by, {})
            mine[name] = mine.get(name, 0) + 1

    def _read(self, verb: str, kind: str, by: str | None = None) -> None:
        self.reads += 1
        self.api_call_count += 1
        self._count(verb, kind, by)

    def _write(self, verb: str, kind: str, by: str | None = None) -> None:
        self.writes += 1
        self.api_call_count += 1
        self._count(verb, kind, by)
        rate = self.params.api_error_rate
        if rate and self._err_rng.random() < rate:
            raise AdapterError(f"simulated API error: {verb} {kind} failed (500 Internal Server Error)")

    # ------------------------------------------------------------------ actions

    def _add_finalizer(self, ws: Workspace, a: A.AddFinalizer) -> None:
        self._write("patch", "Workspace")
        cur = self._ws.get(ws.key)
        if cur is None or a.finalizer in cur.metadata.finalizers:
            return
        if cur.deleting:
            raise AdapterError(f"Workspace {ws.key!r} is forbidden: no new finalizers can be added if the object "
                               f"is being deleted")
        self._own_patch(cur, attrs.evolve(cur, metadata=attrs.evolve(
            cur.metadata, finalizers=cur.metadata.finalizers + (a.finalizer,))))

    def _remove_finalizer(self, ws: Workspace, a: A.RemoveFinalizer) -> None:
        self._write("patch", "Workspace")
        cur = self._ws.get(ws.key)
        if cur is None or a.finalizer not in cur.metadata.finalizers:
            return
        left = tuple(f for f in cur.metadata.finalizers if f != a.finalizer)
        if cur.deleting and not left:
            seq = self._remove_ws(ws.key)
            self._overlay[ws.key] = (None, seq)
            return
        self._own_patch(cur, attrs.evolve(cur, metadata=attrs.evolve(cur.metadata, finalizers=left)))

    def _own_patch(self, cur: Workspace, new: Workspace) -> None:
        new, seq = self._put_ws(new)
        self._own_patches.setdefault(new.key, {})[cur.metadata.resource_version] = new.metadata.resource_version
        self._overlay[new.key] = (new, seq)

    def _create_nodeclaim(self, ws: Workspace, a: A.CreateNodeClaim) -> None:
        self._write("create", "NodeClaim")
        self._own_known.add((_CLAIM, a.name))
        if a.name in self._claims:
            return  # AlreadyExists
        labels = kaito_manifests.nodeclaim_labels(ws, a)  # what Karpenter copies to the Node
        owner = ws.key
        if LABEL_WORKSPACE in labels and LABEL_WORKSPACE_NAMESPACE in labels:
            owner = f"{labels[LABEL_WORKSPACE_NAMESPACE]}/{labels[LABEL_WORKSPACE]}"
        self.create_nodeclaim(a.name, owner, a.instance_type, labels)

    def _delete_nodeclaim(self, ws: Workspace, a: A.DeleteNodeClaim) -> None:
        self._write("delete", "NodeClaim")
        self._own_known.discard((_CLAIM, a.name))
        c = self._claims.get(a.name)
        if c is None or c.deleting:
            return  # NotFound, or already going
        self._delete_claim(a.name)

    def _create_workload(self, ws: Workspace, a: A.CreateWorkload) -> None:
        self._write("create", a.kind)
        key = f"{ws.metadata.namespace}/{a.name}"
        self._own_known.add((_WORKLOAD, key))
        if key in self._workloads:
            return  # AlreadyExists
        self._roll_workload(key, ws, Workload(kind=a.kind, name=a.name, replicas=a.replicas, revision=a.revision), a)

    def _update_workload(self, ws: Workspace, a: A.UpdateWorkload) -> None:
        self._write("update", a.kind)
        key = f"{ws.metadata.namespace}/{a.name}"
        old = self._workloads.get(key)
        if old is None:
            return  # NotFound
        self._roll_workload(key, ws, attrs.evolve(old, replicas=a.replicas, revision=a.revision, updated_replicas=0,
                                                  ready_replicas=min(old.ready_replicas, a.replicas), problem=None), a)

    def _create_service(self, ws: Workspace, a: A.CreateService) -> None:
        self._write("create", "Service")
        key = f"{ws.metadata.namespace}/{a.name}"
        self._own_known.add((_SVC, key))
        if key in self._services:
            return  # AlreadyExists
        self._services[key] = (ws.key, ws.metadata.uid)
        self._change(_SVC, key, True, ws.key)

    def _create_job(self, ws: Workspace, a: A.CreateJob) -> None:
        self._write("create", "Job")
        key = f"{ws.metadata.namespace}/{a.name}"
        self._own_known.add((_JOB, key))
        if key in self._jobs:
            return  # AlreadyExists (an old Job still being deleted included)
        owner = ws.key
        rng = self._rng(owner, "job")
        p, lat = self.params, self.params.latencies
        r_fail, run = rng.random(), lat.job_run.sample(rng)
        bg, fg = lat.job_delete_background.sample(rng), lat.job_delete_foreground.sample(rng)
        inc = self._next_inc()
        self._meta[(_JOB, key)] = _Obj(inc, owner, ws.metadata.uid, delete_latency=bg, delete_latency_foreground=fg)
        job = Job(name=a.name, revision=a.revision, active=1)
        self._jobs[key] = job
        self._change(_JOB, key, job, owner)
        pod = manifests.job(ws, a)["spec"]["template"]["spec"]
        path: float | None = run
        if self._schedule_pods(_JOB, key, pod, 1):
            self._at(self.now + run, "job_done", key, inc, r_fail < p.job_failure_rate)
        else:
            path = None  # its pod stays Pending: the Job never runs
        rec = self.records.get(owner)
        if rec is not None:
            rec.job_paths.append(path)

    def _delete_job(self, ws: Workspace, a: A.DeleteJob) -> None:
        self._write("delete", "Job")
        key = f"{ws.metadata.namespace}/{a.name}"
        self._own_known.discard((_JOB, key))
        job = self._jobs.get(key)
        # The delete carries a precondition: a Job of another revision is not the one meant (NotFound).
        if job is None or job.deleting or (a.revision and job.revision != a.revision):
            return
        meta = self._meta[(_JOB, key)]
        job = attrs.evolve(job, deleting=True)
        self._jobs[key] = job
        self._change(_JOB, key, job, meta.owner)
        delay = meta.delete_latency_foreground if a.propagation == "Foreground" else meta.delete_latency
        self._at(self.now + delay, "job_gone", key, meta.inc)

    def _record_event(self, ws: Workspace, a: A.RecordEvent) -> None:
        self._count("create", "Event")
        self.events.append((self.now, ws.key, a.type, a.reason, a.message))

    _APPLY: dict[type, Callable[..., None]] = {
        A.AddFinalizer: _add_finalizer, A.RemoveFinalizer: _remove_finalizer,
        A.CreateNodeClaim: _create_nodeclaim, A.DeleteNodeClaim: _delete_nodeclaim,
        A.CreateWorkload: _create_workload, A.UpdateWorkload: _update_workload,
        A.CreateJob: _create_job, A.DeleteJob: _delete_job, A.RecordEvent: _record_event,
        A.CreateService: _create_service,
    }

    def _next_inc(self) -> int:
        self._inc += 1
        return self._inc

    # ------------------------------------------------------------------ Karpenter: NodeClaims and Nodes

    def create_nodeclaim(self, name: str, owner: str, instance_type: str,
                         labels: Mapping[str, str] | None = None) -> NodeClaim:
        """Create a NodeClaim in the truth and schedule its Karpenter lifecycle (no API accounting: the
        ``CreateNodeClaim`` action is the counted way). Latencies and failure are drawn now, in a fixed
        order, from the owner's NodeClaim stream."""
        p, lat = self.params, self.params.latencies
        rng = self._rng(owner, "nodeclaim")
        r_fail, r_never = rng.random(), rng.random()
        launched = lat.nodeclaim_launched.sample(rng)
        registered = max(lat.nodeclaim_registered.sample(rng), launched)
        initialized = registered + lat.nodeclaim_initialized.sample(rng)
        ready = initialized + lat.nodeclaim_ready.sample(rng)
        gpu = ready + lat.gpu_plugin.sample(rng)
        delete = lat.nodeclaim_delete.sample(rng)
        inc = self._next_inc()
        node_labels = dict(labels or {})
        node_labels[LABEL_INSTANCE_TYPE] = instance_type
        node_labels[LABEL_ACCELERATOR] = "nvidia"
        self._meta[(_CLAIM, name)] = _Obj(inc, owner, labels=node_labels, delete_latency=delete,
                                          gpus=p.gpus(instance_type), node_name="aks-" + name)
        claim = NodeClaim(name=name, workspace_key=owner, instance_type=instance_type, launched="Unknown",
                          registered="Unknown", initialized="Unknown", ready="Unknown",
                          created_at=whole_seconds(self.now_dt))
        self._claims[name] = claim
        self._claims_of.setdefault(owner, {})[name] = None
        self.nodeclaims_created += 1
        t0 = self.now
        path: float | None = None
        if r_fail < p.instance_unavailable_rate:
            self._at(t0 + launched, "claim_launch_failed", name, inc)
        elif r_never < p.never_ready_rate:
            self._at(t0 + launched, "claim_step", name, inc, "launched")
            if p.registration_ttl_s is not None:
                self._at(t0 + max(p.registration_ttl_s, launched), "claim_liveness", name, inc)
        else:
            self._at(t0 + launched, "claim_step", name, inc, "launched")
            self._at(t0 + registered, "claim_step", name, inc, "registered")
            self._at(t0 + initialized, "claim_step", name, inc, "initialized")
            self._at(t0 + ready, "claim_step", name, inc, "ready")
            self._at(t0 + gpu, "node_gpu", name, inc)
            path = gpu
        rec = self.records.get(owner)
        if rec is not None:
            rec.claim_paths[name] = path
        self._change(_CLAIM, name, claim, owner)
        return claim

    def _live_claim(self, name: str, inc: int) -> tuple[NodeClaim, _Obj] | None:
        c = self._claims.get(name)
        meta = self._meta.get((_CLAIM, name))
        if c is None or meta is None or meta.inc != inc or c.deleting:
            return None
        return c, meta

    def _ev_claim_step(self, name: str, inc: int, step: str) -> None:
        live = self._live_claim(name, inc)
        if live is None:
            return
        c, meta = live
        if step == "registered":
            node = Node(name=meta.node_name, labels=dict(meta.labels), ready=False, gpu_capacity=0)
            self._nodes[node.name] = node
            self._change(_NODE, node.name, node, meta.owner)
            c = attrs.evolve(c, registered="True", node_name=node.name)
        elif step == "ready":
            node = self._nodes.get(meta.node_name)
            if node is not None:
                node = attrs.evolve(node, ready=True)
                self._nodes[node.name] = node
                self._change(_NODE, node.name, node, meta.owner)
            c = attrs.evolve(c, ready="True")
        else:
            c = attrs.evolve(c, **{step: "True"})
        self._claims[name] = c
        self._change(_CLAIM, name, c, meta.owner)

    def _ev_claim_launch_failed(self, name: str, inc: int) -> None:
        live = self._live_claim(name, inc)
        if live is None:
            return
        c, meta = live
        c = attrs.evolve(c, launched="False", failure_reason=INSUFFICIENT_CAPACITY)
        self._claims[name] = c
        self._change(_CLAIM, name, c, meta.owner)

    def _ev_claim_liveness(self, name: str, inc: int) -> None:
        """Karpenter deletes a NodeClaim whose Node did not register within the registration TTL."""
        live = self._live_claim(name, inc)
        if live is not None and live[0].registered != "True":
            self._delete_claim(name)

    def _ev_node_gpu(self, name: str, inc: int) -> None:
        live = self._live_claim(name, inc)
        if live is None:
            return
        meta = live[1]
        node = self._nodes.get(meta.node_name)
        if node is not None:
            node = attrs.evolve(node, gpu_capacity=meta.gpus)
            self._nodes[node.name] = node
            self._change(_NODE, node.name, node, meta.owner)

    def _delete_claim(self, name: str) -> None:
        meta = self._meta[(_CLAIM, name)]
        c = attrs.evolve(self._claims[name], deleting=True)
        self._claims[name] = c
        self._change(_CLAIM, name, c, meta.owner)
        self._at(self.now + meta.delete_latency, "claim_gone", name, meta.inc)

    def _ev_claim_gone(self, name: str, inc: int) -> None:
        meta = self._meta.get((_CLAIM, name))
        if meta is None or meta.inc != inc or name not in self._claims:
            return
        if self._nodes.pop(meta.node_name, None) is not None:
            self._change(_NODE, meta.node_name, None, meta.owner)
        del self._claims[name]
        del self._meta[(_CLAIM, name)]
        self._claims_of.get(meta.owner, {}).pop(name, None)
        self._change(_CLAIM, name, None, meta.owner)

    # ------------------------------------------------------------------ workloads, Jobs, garbage collection

    def _roll_workload(self, key: str, ws: Workspace, w: Workload, a: A.CreateWorkload | A.UpdateWorkload) -> None:
        owner = ws.key
        p, lat = self.params, self.params.latencies
        rng = self._rng(owner, "workload")
        r_fail, r_recover, r_reason = rng.random(), rng.random(), rng.random()
        rollout, problem, recovery = (lat.workload_rollout.sample(rng), lat.workload_problem.sample(rng),
                                      lat.workload_recovery.sample(rng))
        inc = self._next_inc()
        self._meta[(_WORKLOAD, key)] = _Obj(inc, owner, ws.metadata.uid)
        self._workloads[key] = w
        self._change(_WORKLOAD, key, w, owner)
        path: float | None = rollout
        # Its pods, as the Kubernetes adapter would build them: they run only where their GPUs fit.
        pod = manifests.workload(ws, a)["spec"]["template"]["spec"]
        if not self._schedule_pods(_WORKLOAD, key, pod, a.replicas):
            self._at(self.now, "workload_problem", key, inc, UNSCHEDULABLE)
            path = None
        elif r_fail < p.workload_failure_rate:
            reason = WORKLOAD_PROBLEMS[0] if r_reason < 0.5 else WORKLOAD_PROBLEMS[1]
            self._at(self.now + problem, "workload_problem", key, inc, reason)
            if r_recover < p.workload_recovery_share:
                path = problem + recovery
                self._at(self.now + path, "workload_ready", key, inc)
            else:
                path = None
        else:
            self._at(self.now + rollout, "workload_ready", key, inc)
        rec = self.records.get(owner)
        if rec is not None:
            rec.workload_paths.append(path)

    def _live(self, kind: str, key: str, inc: int) -> _Obj | None:
        meta = self._meta.get((kind, key))
        return meta if meta is not None and meta.inc == inc else None

    def _ev_workload_problem(self, key: str, inc: int, reason: str) -> None:
        meta = self._live(_WORKLOAD, key, inc)
        if meta is not None and key in self._workloads:
            w = attrs.evolve(self._workloads[key], problem=reason)
            self._workloads[key] = w
            self._change(_WORKLOAD, key, w, meta.owner)

    def _ev_workload_ready(self, key: str, inc: int) -> None:
        meta = self._live(_WORKLOAD, key, inc)
        if meta is not None and key in self._workloads:
            w = self._workloads[key]
            w = attrs.evolve(w, ready_replicas=w.replicas, updated_replicas=w.replicas, problem=None)
            self._workloads[key] = w
            self._change(_WORKLOAD, key, w, meta.owner)

    def _ev_job_done(self, key: str, inc: int, failed: bool) -> None:
        meta = self._live(_JOB, key, inc)
        job = self._jobs.get(key)
        if meta is None or job is None:
            return
        if failed:
            job = attrs.evolve(job, active=0, failed=1, failed_permanently=True, failure_reason="BackoffLimitExceeded")
        else:
            job = attrs.evolve(job, active=0, succeeded=1, complete=True)
        self._jobs[key] = job
        self._change(_JOB, key, job, meta.owner)

    def _ev_job_gone(self, key: str, inc: int) -> None:
        meta = self._live(_JOB, key, inc)
        if meta is not None and self._jobs.pop(key, None) is not None:
            del self._meta[(_JOB, key)]
            self._pending.pop((_JOB, key), None)
            self._change(_JOB, key, None, meta.owner)

    def _ev_gc(self, owner: str, owner_uid: str) -> None:
        ns, name = owner.split("/", 1)
        for svc in (f"{ns}/{name}", f"{ns}/{name}-headless"):
            if self._services.get(svc) == (owner, owner_uid):
                del self._services[svc]
                self._change(_SVC, svc, None, owner)
        for kind, store in ((_WORKLOAD, self._workloads), (_JOB, self._jobs)):
            meta = self._meta.get((kind, owner))
            if meta is not None and meta.owner_uid == owner_uid and owner in store:
                del store[owner]
                del self._meta[(kind, owner)]
                self._pending.pop((kind, owner), None)
                self._change(kind, owner, None, owner)

    # ------------------------------------------------------------------ users: Workspaces

    def create_workspace(self, doc: Mapping[str, Any] | Workspace, *, at: float | None = None,
                         nodes: int | None = None) -> str:
        """Create a Workspace as a user would (``kubectl apply``; not counted as controller API calls),
        now or at virtual time ``at``. Returns its key."""
        ws = doc if isinstance(doc, Workspace) else to_workspace(doc)
        if not ws.metadata.uid:
            digest = hashlib.sha256(f"{self.seed}/uid/{ws.key}/{len(self.records)}".encode()).digest()
            ws = attrs.evolve(ws, metadata=attrs.evolve(ws.metadata, uid=str(uuid.UUID(bytes=digest[:16], version=4))))
        if ws.key not in self.records or self.records[ws.key].removed_at is not None:
            # The nodes the machine will ask for: KAITO's estimate (a vLLM preset is sized from its GPUs, not
            # from resource.count); 1 while it cannot be known before the first pass (e.g. BYO nodes).
            count = target_node_count(ws, Snapshot(absent=frozenset(confirmations(ws)))) or 1
            preset = ws.tuning if ws.tuning is not None else ws.inference
            self.records[ws.key] = WorkspaceRecord(
                key=ws.key, tuning=ws.tuning is not None, nodes=count if ws.inference is not None else nodes or count,
                preset=preset.preset.name if preset is not None and preset.preset is not None else "")
        if at is not None and at > self.now:
            self._at(at, "ws_arrive", ws)
        else:
            self._ev_ws_arrive(ws)
        return ws.key

    def _ev_ws_arrive(self, ws: Workspace) -> None:
        if ws.key in self._ws:
            return
        meta = attrs.evolve(ws.metadata, generation=max(1, ws.metadata.generation),
                            creation_timestamp=whole_seconds(self.now_dt), deletion_timestamp=None)
        self._put_ws(attrs.evolve(ws, metadata=meta))
        rec = self.records.get(ws.key)
        if rec is not None:
            rec.created_at = self.now
            rec.generation = meta.generation

    def change_tuning_spec(self, key: str, *, at: float | None = None) -> None:
        """A user edits a tuning Workspace's spec (a new ``tuning.config``): generation + 1."""
        if at is not None and at > self.now:
            self._at(at, "ws_spec_change", key)
        else:
            self._ev_ws_spec_change(key)

    def _ev_ws_spec_change(self, key: str) -> None:
        ws = self._ws.get(key)
        if ws is None or ws.deleting or ws.tuning is None:
            return
        gen = ws.metadata.generation + 1
        base = (ws.tuning.config or "tuning-params").split("-rev")[0]
        tuning = attrs.evolve(ws.tuning, config=f"{base}-rev{gen}")
        self._put_ws(attrs.evolve(ws, tuning=tuning, metadata=attrs.evolve(ws.metadata, generation=gen)))
        rec = self.records.get(key)
        if rec is not None:
            rec.generation = gen
            rec.spec_changed_at = self.now

    def delete_workspace(self, key: str, *, at: float | None = None) -> None:
        """A user deletes a Workspace: deletionTimestamp is set, and the object goes once it has no finalizers."""
        if at is not None and at > self.now:
            self._at(at, "ws_delete", key)
        else:
            self._ev_ws_delete(key)

    def _ev_ws_delete(self, key: str) -> None:
        ws = self._ws.get(key)
        if ws is None or ws.deleting:
            return
        rec = self.records.get(key)
        if rec is not None:
            rec.delete_requested_at = self.now
        if not ws.metadata.finalizers:
            self._remove_ws(key)
            return
        self._put_ws(attrs.evolve(ws, metadata=attrs.evolve(ws.metadata, deletion_timestamp=whole_seconds(self.now_dt))))

    def _note_goal(self, ws: Workspace) -> None:
        rec = self.records.get(ws.key)
        if rec is None:
            return
        goal = ("Succeeded", "Failed") if rec.tuning else ("Ready",)
        state = ws.status.state
        gen = ws.metadata.generation
        if state not in goal or gen in rec.goals:
            return
        observed = max((c.observed_generation or 0 for c in ws.status.conditions), default=0)
        if observed >= gen:
            rec.goals[gen] = (self.now, state)

    def _schedule_scenario(self, sc: Scenario) -> None:
        rng = random.Random(sc.seed)
        cat = Catalogue.default()
        tunable = sc.tuning_presets
        lo, hi = sc.nodes_per_workspace
        width = len(str(sc.workspaces - 1))
        for i in range(sc.workspaces):
            # Every draw is made for every Workspace, in this order, so that changing one share does not
            # reshuffle everything else.
            at = rng.uniform(0, sc.arrival_window_s) if sc.arrival == "spread" else 0.0
            tuning = rng.random() < sc.tuning_share
            nodes = rng.randint(lo, hi)
            inference_preset, tuning_preset = rng.choice(sc.presets), rng.choice(tunable) if tunable else ""
            uid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            r_change, change_after = rng.random(), sc.spec_change_after.sample(rng)
            r_delete, delete_after = rng.random(), sc.delete_after.sample(rng)
            name = f"ws-{i:0{max(width, 4)}d}"
            if tuning:
                doc = tuning_document(name, preset=tuning_preset, instance_type=sc.instance_type,
                                      namespace=sc.namespace, uid=uid)
                nodes = 1
            else:
                entry = cat.get(inference_preset)
                doc = inference_document(name, preset=inference_preset, instance_type=sc.instance_type, count=nodes,
                                         namespace=sc.namespace, uid=uid,
                                         auth_required=bool(entry and entry.download_auth_required))
            ws = to_workspace(doc)
            if ws.problems:
                raise ScenarioError("<scenario>", "presets" if "preset" in ws.problems[0].path else "instance_type",
                                    f"Workspace {name} would be invalid: " + "; ".join(map(str, ws.problems)))
            key = self.create_workspace(ws, at=at if at > 0 else None, nodes=nodes)
            rec = self.records[key]
            if tuning and r_change < sc.spec_change_share:
                rec.spec_change_at = at + change_after
                self._at(rec.spec_change_at, "ws_spec_change", key)
            if r_delete < sc.delete_share:
                rec.delete_at = at + delete_after
                self._at(rec.delete_at, "ws_delete", key)

    # ------------------------------------------------------------------ reads for pollers (each one counted)

    def get_workspace(self, key: str) -> Workspace | None:
        self._read("get", _WS)
        return self._ws.get(key)

    def get_nodeclaim(self, name: str) -> NodeClaim | None:
        self._read("get", _CLAIM)
        return self._claims.get(name)

    def list_nodeclaims(self, workspace_key: str) -> tuple[NodeClaim, ...]:
        """LIST NodeClaims by the Workspace's labels."""
        self._read("list", _CLAIM)
        return tuple(self._claims[n] for n in sorted(self._claims_of.get(workspace_key, ())))

    def get_node(self, name: str) -> Node | None:
        self._read("get", _NODE)
        return self._nodes.get(name)

    def list_nodes(self, selector: Mapping[str, str] | LabelSelector | None = None) -> tuple[Node, ...]:
        """LIST Nodes, optionally by label selector (matchLabels mapping or a LabelSelector)."""
        self._read("list", _NODE)
        if selector is None:
            match: Callable[[Mapping[str, str]], bool] = lambda labels: True  # noqa: E731
        elif isinstance(selector, LabelSelector):
            match = selector.matches
        else:
            match = LabelSelector(match_labels=dict(selector)).matches
        return tuple(n for _, n in sorted(self._nodes.items()) if match(n.labels))

    def get_workload(self, key: str) -> Workload | None:
        self._read("get", _WORKLOAD)
        return self._workloads.get(key)

    def get_job(self, key: str) -> Job | None:
        self._read("get", _JOB)
        return self._jobs.get(key)

    # ------------------------------------------------------------------ other lifecycles: resources as dicts

    # A lifecycle other than the Workspace's (KAITO's RAGEngine, an author's) is served by
    # :class:`~.generic.SimResourceAdapter` from its declaration alone. Its resources and the children it
    # creates are kept here as the API server keeps them, as documents: the same change log, cache lag,
    # tombstones and resourceVersions as the Workspace's objects. A child's owner is a token
    # ``"<Kind>:<namespace>/<name>"`` (Kubernetes names hold no colon), so a RAGEngine and a Workspace of the same
    # name never share NodeClaims, random streams or events. NodeClaims and Nodes stay the typed ones Karpenter's
    # simulation already drives: one Karpenter for every lifecycle.

    def register(self, adapter: Any) -> None:
        """Serve ``adapter.kind``'s resources: their events, and those of the children its lifecycle declares
        as waking it, go to ``adapter.notify``. Called by the adapter itself."""
        self._routes[adapter.kind] = adapter
        for k in adapter.kinds:
            if k not in (_CLAIM, _NODE):
                self._generic_kinds.add(k)
                self._cache.setdefault(k, {})
                self._objs.setdefault(k, {})

    def _route(self, kind: str, owner: str) -> None:
        prefix, _, key = owner.partition(":")
        adapter = self._routes.get(prefix)
        if adapter is not None and kind in adapter.waking_kinds:
            adapter.notify(key)

    def _deliver_object(self, seq: int, kind: str, key: str, obj: dict[str, Any] | None, owner: str | None) -> None:
        store = self._cache[kind]
        primary = owner is not None and owner == f"{kind}:{key}"
        if obj is None:
            store.pop(key, None)
            if primary:
                self._tombs_of.pop(owner, None)  # type: ignore[arg-type]
            else:
                self._tombs[(kind, key)] = owner
                if owner is not None:
                    self._cache_owned.get((kind, owner), {}).pop(key, None)
                    self._tombs_of.setdefault(owner, {})[_absent_name(kind, key)] = None
        else:
            store[key] = obj
            self._own_known.discard((kind, key))
            if owner is not None and not primary:
                self._cache_owned.setdefault((kind, owner), {})[key] = None
            if (kind, key) in self._tombs:
                old_owner = self._tombs.pop((kind, key))
                if old_owner is not None:
                    self._tombs_of.get(old_owner, {}).pop(_absent_name(kind, key), None)
        self._cache_seq = seq
        if owner is not None:
            self._route(kind, owner)

    def _put_object(self, kind: str, key: str, doc: dict[str, Any], owner: str | None) -> int:
        """Store a new version of a document with a fresh resourceVersion; returns its change seq."""
        seq = self._seq + 1
        doc = {**doc, "metadata": {**doc["metadata"], "resourceVersion": _resource_version(seq)}}
        self._objs[kind][key] = doc
        assert self._change(kind, key, doc, owner) == seq
        return seq

    def object(self, kind: str, key: str) -> dict[str, Any] | None:
        """The stored document (the API server's truth: free, for tests, metrics and the adapters' writes)."""
        return self._objs.get(kind, {}).get(key)

    def create_resource(self, kind: str, doc: Mapping[str, Any], *, at: float | None = None, nodes: int = 0,
                        lifecycle: str = "") -> str:
        """A user creates a resource of a registered lifecycle (``kubectl apply``; not counted as controller
        API calls), now or at virtual time ``at``. ``nodes``: the GPU nodes it needs. Returns its key."""
        meta = dict(doc.get("metadata") or {})
        key = f"{meta.get('namespace') or 'default'}/{meta['name']}"
        token = f"{kind}:{key}"
        if not meta.get("uid"):
            digest = hashlib.sha256(f"{self.seed}/uid/{token}/{len(self.records)}".encode()).digest()
            meta["uid"] = str(uuid.UUID(bytes=digest[:16], version=4))
        meta.setdefault("namespace", "default")
        doc = {**doc, "metadata": meta}
        if token not in self.records or self.records[token].removed_at is not None:
            self.records[token] = WorkspaceRecord(key=token, tuning=False, nodes=nodes, kind=kind,
                                                  lifecycle=lifecycle or kind.lower())
        if at is not None and at > self.now:
            self._at(at, "obj_arrive", kind, key, doc)
        else:
            self._ev_obj_arrive(kind, key, doc)
        return key

    def _ev_obj_arrive(self, kind: str, key: str, doc: dict[str, Any]) -> None:
        if key in self._objs[kind]:
            return
        meta = {**doc["metadata"], "generation": max(1, int(doc["metadata"].get("generation") or 1)),
                "creationTimestamp": format_time(whole_seconds(self.now_dt))}
        meta.pop("deletionTimestamp", None)
        token = f"{kind}:{key}"
        self._put_object(kind, key, {**doc, "metadata": meta}, token)
        rec = self.records.get(token)
        if rec is not None:
            rec.created_at = self.now
            rec.generation = meta["generation"]

    def delete_resource(self, kind: str, key: str, *, at: float | None = None) -> None:
        """A user deletes a resource: deletionTimestamp is set, and it goes once it has no finalizers. The run is
        not settled until it is gone."""
        rec = self.records.get(f"{kind}:{key}")
        if rec is not None and rec.delete_at is None:
            rec.delete_at = self.now if at is None else at
        if at is not None and at > self.now:
            self._at(at, "obj_delete", kind, key)
        else:
            self._ev_obj_delete(kind, key)

    def _ev_obj_delete(self, kind: str, key: str) -> None:
        doc = self._objs[kind].get(key)
        if doc is None or doc["metadata"].get("deletionTimestamp"):
            return
        token = f"{kind}:{key}"
        rec = self.records.get(token)
        if rec is not None:
            rec.delete_requested_at = self.now
        if not doc["metadata"].get("finalizers"):
            self.remove_resource(kind, key)
            return
        meta = {**doc["metadata"], "deletionTimestamp": format_time(whole_seconds(self.now_dt))}
        self._put_object(kind, key, {**doc, "metadata": meta}, token)

    def remove_resource(self, kind: str, key: str) -> int:
        """The resource is gone (its last finalizer removed); its owned children are garbage-collected."""
        token = f"{kind}:{key}"
        doc = self._objs[kind].pop(key)
        seq = self._change(kind, key, None, token)
        rec = self.records.get(token)
        if rec is not None:
            rec.removed_at = self.now
        delay = self.params.latencies.owner_gc.sample(self._rng(token, "gc"))
        self._at(self.now + delay, "obj_gc", token, doc["metadata"].get("uid", ""))
        return seq

    def _ev_obj_gc(self, token: str, uid: str) -> None:
        for kind, key in list(self._children_of.get(token, ())):
            meta = self._meta.get((kind, key))
            if meta is not None and meta.owner_uid == uid and key in self._objs.get(kind, {}):
                self._drop_child(kind, key)

    def _drop_child(self, kind: str, key: str) -> None:
        meta = self._meta.pop((kind, key))
        if self._pending.pop((kind, key), None) is not None:
            self._drop_pods(kind, key)
        del self._objs[kind][key]
        self._children_of.get(meta.owner, {}).pop((kind, key), None)
        self._change(kind, key, None, meta.owner)

    def create_child(self, kind: str, key: str, body: dict[str, Any], owner: str, owner_uid: str) -> bool:
        """Store a child a lifecycle created (the adapter counts the call). False when it already exists.
        A Deployment or StatefulSet rolls out as the workload controllers and the kubelet would."""
        if key in self._objs[kind]:
            return False
        meta = {**body.get("metadata", {}), "generation": 1,
                "creationTimestamp": format_time(whole_seconds(self.now_dt))}
        meta["uid"] = str(uuid.UUID(bytes=hashlib.sha256(f"{self.seed}/child/{kind}/{key}/{self._seq}".encode())
                                     .digest()[:16], version=4))
        self._meta[(kind, key)] = _Obj(self._next_inc(), owner, owner_uid)
        self._children_of.setdefault(owner, {})[(kind, key)] = None
        self._own_known.add((kind, key))
        self._put_object(kind, key, {**body, "metadata": meta}, owner)
        if kind in _ROLLED_OUT:
            self._roll_object(kind, key)
        return True

    def patch_child(self, kind: str, key: str, patch: Mapping[str, Any]) -> bool:
        """A JSON merge patch (RFC 7386). A change of ``spec`` makes a new generation, which rolls out anew.
        False when the object does not exist."""
        doc = self._objs[kind].get(key)
        if doc is None:
            return False
        new = _merge_patch(doc, patch)
        if new.get("spec") != doc.get("spec"):
            new["metadata"] = {**new["metadata"], "generation": int(doc["metadata"].get("generation", 1)) + 1}
        if new == doc:
            return True
        meta = self._meta.get((kind, key))
        self._put_object(kind, key, new, meta.owner if meta is not None else None)
        if kind in _ROLLED_OUT and new["metadata"]["generation"] != doc["metadata"].get("generation"):
            self._roll_object(kind, key)
        return True

    def delete_child(self, kind: str, key: str) -> None:
        """Delete a child (NotFound is no error). Children here have no finalizers: they go at once."""
        if key in self._objs.get(kind, {}):
            self._drop_child(kind, key)

    def _roll_object(self, kind: str, key: str) -> None:
        """The workload's pods start: ready after the rollout latency (or never, for a failure that does not
        recover), drawn from the owner's workload stream as the Workspace's workloads are."""
        meta = self._meta[(kind, key)]
        p, lat = self.params, self.params.latencies
        rng = self._rng(meta.owner, "workload")
        r_fail, r_recover, _ = rng.random(), rng.random(), rng.random()
        rollout, problem, recovery = (lat.workload_rollout.sample(rng), lat.workload_problem.sample(rng),
                                      lat.workload_recovery.sample(rng))
        meta.inc = self._next_inc()  # voids the readiness an older generation had scheduled
        path: float | None = rollout
        doc = self._objs[kind][key]
        spec = doc.get("spec") or {}
        replicas = int(spec.get("replicas", 1) or 0)
        if not self._schedule_pods(kind, key, ((spec.get("template") or {}).get("spec") or {}), replicas, doc):
            path = None
            self._at(self.now, "obj_unschedulable", kind, key, meta.inc)
        elif r_fail < p.workload_failure_rate:
            path = problem + recovery if r_recover < p.workload_recovery_share else None
        if path is not None:
            self._at(self.now + path, "obj_ready", kind, key, meta.inc)
        rec = self.records.get(meta.owner)
        if rec is not None:
            rec.workload_paths.append(path)

    def _ev_obj_ready(self, kind: str, key: str, inc: int) -> None:
        meta = self._live(kind, key, inc)
        doc = self._objs[kind].get(key)
        if meta is None or doc is None:
            return
        replicas = int((doc.get("spec") or {}).get("replicas", 1) or 0)
        status = {**(doc.get("status") or {}), "observedGeneration": doc["metadata"].get("generation", 1),
                  "replicas": replicas, "readyReplicas": replicas, "updatedReplicas": replicas,
                  "availableReplicas": replicas}
        self._put_object(kind, key, {**doc, "status": status}, meta.owner)

    def _ev_obj_unschedulable(self, kind: str, key: str, inc: int) -> None:
        """The scheduler could not place the workload's pods: none ready, the Deployment not Available."""
        meta = self._live(kind, key, inc)
        doc = self._objs[kind].get(key)
        pending = self._pending.get((kind, key))
        if meta is None or doc is None or pending is None:
            return
        replicas = int((doc.get("spec") or {}).get("replicas", 1) or 0)
        status = {"observedGeneration": doc["metadata"].get("generation", 1), "replicas": replicas,
                  "readyReplicas": 0, "updatedReplicas": replicas, "availableReplicas": 0,
                  "unavailableReplicas": replicas,
                  "conditions": [{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
                                  "message": "Deployment does not have minimum availability.",
                                  "lastTransitionTime": self.iso()}]}
        self._put_object(kind, key, {**doc, "status": status}, meta.owner)

    # ------------------------------------------------------------------ the scheduler: GPUs must fit

    def _node_gpus(self, node: Node) -> int:
        """A node's allocatable nvidia.com/gpu, from its instance type (what the device plugin reports)."""
        return self.params.gpus(node.labels.get(LABEL_INSTANCE_TYPE, "")) if node.needs_gpu_plugin else 0

    def _schedule_pods(self, kind: str, key: str, pod_spec: Mapping[str, Any], replicas: int,
                       workload: Mapping[str, Any] | None = None) -> bool:
        """Do the workload's pods fit their nodes' GPUs? If not, remember them as Pending (see :meth:`pods`)."""
        if self._pending.pop((kind, key), None) is not None:
            self._drop_pods(kind, key)
        gpus = pod_gpus(pod_spec)
        if gpus == 0:
            return True  # runs on the general-purpose nodes, which are not simulated
        names = hostnames(pod_spec)
        owner = self._meta[(kind, key)].owner
        if names is None and self._claims_of.get(owner):
            # Pinned by labels (a RAGEngine's compute selector): only the nodes its owner's NodeClaims brought are
            # looked at, every other node is counted as not matching (no scan of a large cluster's nodes).
            names = tuple(n for c in self._claims_of[owner] if (n := self._claims[c].node_name))
        nodes: Iterable[Node] = (self._nodes[n] for n in names if n in self._nodes) if names is not None \
            else self._nodes.values()
        f = fit(pod_spec, replicas, ((n.name, n.labels, self._node_gpus(n)) for n in nodes), len(self._nodes), gpus)
        if f.ok:
            return True
        self._pending[(kind, key)] = (f, dict(pod_spec), self.iso(), dict(workload or {}))
        if workload is not None and "Pod" in self._generic_kinds:
            # A lifecycle watches Pods: the Pending ones become objects it can see, children of the workload's owner.
            ns = key.split("/", 1)[0]
            for i in range(f.placed, f.replicas):
                pod = pending_pod(workload, i, pod_spec, f.message, self.iso())
                pod_key = f"{ns}/{pod['metadata']['name']}"
                self._meta[("Pod", pod_key)] = _Obj(self._next_inc(), owner)
                self._children_of.setdefault(owner, {})[("Pod", pod_key)] = None
                self._pod_keys.setdefault((kind, key), []).append(pod_key)
                self._put_object("Pod", pod_key, pod, owner)
        return False

    def _drop_pods(self, kind: str, key: str) -> None:
        for pod_key in self._pod_keys.pop((kind, key), ()):
            if pod_key in self._objs.get("Pod", {}):
                self._drop_child("Pod", pod_key)

    def pods(self, key: str) -> list[dict[str, Any]]:
        """The Pending pods of the workloads and Jobs named ``namespace/name`` that no node can take
        (PodScheduled=False, reason Unschedulable, the scheduler's message). Pods that run are not materialized."""
        out: list[dict[str, Any]] = []
        ns, name = key.split("/", 1)
        for (kind, k), (f, pod_spec, since, workload) in self._pending.items():
            if k != key:
                continue
            typed = self._workloads.get(key) if kind == _WORKLOAD else None
            owner = workload or {"apiVersion": "batch/v1" if kind == _JOB else "apps/v1",
                                 "kind": "Job" if kind == _JOB else (typed.kind if typed else kind),
                                 "metadata": {"name": name, "namespace": ns}}
            out.extend(pending_pod(owner, i, pod_spec, f.message, since) for i in range(f.placed, f.replicas))
        return out

    def observed_object(self, kind: str, key: str) -> dict[str, Any] | None:
        """A resource as its adapter sees it: the cache, or the version the adapter last wrote while the cache
        has not caught up with it (None when gone)."""
        token = f"{kind}:{key}"
        ov = self._obj_overlay.get(token)
        if ov is not None:
            if self._cache_seq < ov[1]:
                return ov[0]
            del self._obj_overlay[token]
        return self._cache[kind].get(key)

    def cached_children(self, kind: str, owner: str) -> list[Any]:
        """The cached children of ``kind`` of owner token ``owner`` (by the owner index, no scan): typed
        NodeClaims for ``NodeClaim``, documents otherwise."""
        if kind == _CLAIM:
            return [self._cache[_CLAIM][n] for n in self._cache_claims_of.get(owner, ())]
        cache = self._cache[kind]
        return [cache[k] for k in self._cache_owned.get((kind, owner), ())]

    def cached(self, kind: str, key: str) -> Any:
        return self._cache.get(kind, {}).get(key)

    def absent(self, kind: str, key: str, by: str) -> bool:
        """Positive knowledge that a child is gone: a tombstone, or a counted GET of what the cache cannot
        vouch for (never for what this adapter created and its watch has not shown yet)."""
        if key in self._cache.get(kind, {}) or (kind, key) in self._own_known:
            return False
        if (kind, key) in self._tombs:
            return True
        self._read("get", kind, by)
        store = self._claims if kind == _CLAIM else self._objs.get(kind, {})
        return key not in store

    def write_resource(self, kind: str, key: str, doc: dict[str, Any], *, own_patch_of: str | None = None) -> dict:
        """Store the adapter's write of a resource (a finalizer patch, a status write) and overlay it until the
        cache shows it. ``own_patch_of``: the resourceVersion a metadata patch was made on (see persist)."""
        token = f"{kind}:{key}"
        seq = self._put_object(kind, key, doc, token)
        new = self._objs[kind][key]
        if own_patch_of is not None:
            self._obj_own_patches.setdefault(token, {})[own_patch_of] = new["metadata"]["resourceVersion"]
        self._obj_overlay[token] = (new, seq)
        return new

    def remove_written(self, kind: str, key: str) -> None:
        """The adapter removed the last finalizer of a deleting resource: it is gone."""
        seq = self.remove_resource(kind, key)
        self._obj_overlay[f"{kind}:{key}"] = (None, seq)

    def own_patches(self, kind: str, key: str) -> dict[str, str]:
        return self._obj_own_patches.pop(f"{kind}:{key}", {})

    def note_goal(self, token: str, state: str, generation: int) -> None:
        """A resource of another lifecycle reached its goal state for ``generation`` (first time counts)."""
        rec = self.records.get(token)
        if rec is not None and generation not in rec.goals:
            rec.goals[generation] = (self.now, state)
            rec.generation = generation


    # ------------------------------------------------------------------ results

    def settled(self) -> bool:
        """Every Workspace created so far, and every one the scenario will create, is settled."""
        return all(r.settled for r in self.records.values()) and all(
            op not in ("ws_arrive", "ws_spec_change", "ws_delete", "obj_arrive", "obj_delete")
            for _, _, op, _ in self._heap)

    def metrics(self) -> dict[str, Any]:
        recs = list(self.records.values())
        ttg = sorted(t for r in recs if (t := r.time_to_first_goal) is not None)
        return {
            "now": self.now,
            "workspaces": len(recs),
            "goals_reached": sum(1 for r in recs if r.first_goal_at is not None),
            "time_to_first_goal_p50": ttg[len(ttg) // 2] if ttg else None,
            "time_to_first_goal_max": ttg[-1] if ttg else None,
            "reads": self.reads,
            "writes": self.writes,
            "api_call_count": self.api_call_count,
            "api_calls": dict(sorted(self.api_calls.items())),
            "events_recorded": len(self.events),
            "nodeclaims_created": self.nodeclaims_created,
            "nodeclaims_over_target_max": self.nodeclaims_over_target_max,
        }

    def iso(self, t: float | None = None) -> str:
        """An API-style timestamp for virtual time t (default now)."""
        return format_time(self.to_datetime(self.now if t is None else t))
