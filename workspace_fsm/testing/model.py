"""The model harness: property tests for any declared lifecycle.

A :class:`ModelWorld` says how a lifecycle's world behaves (what its children's controllers do over time, what
can go wrong with them, how a user edits the resource); :class:`ModelCluster` plays that world and the runners
around :func:`~workspace_fsm.engine.interpret.decide`; :func:`check_lifecycle` lets hypothesis drive it through
delays, drops, reorderings, stale caches, kills and several writers, and :func:`state_machine` gives the
hypothesis state machine itself for a test class of your own.

The cluster
-----------
Every object is a document (``dict``) by kind and key (``namespace/name``, or ``name`` when cluster-scoped).
Every change makes a new *version* and every version is kept, so a runner's cache can lag: it serves the world
as of a past version (a stale cache), and only moves forward (until a kill makes it relist).

A *pass* of a runner follows the apply protocol of the real runner: observe (from the runner's cache; after its
own status write, never older than that write), decide, apply the ``before`` actions in order, write the status
with the observed ``resourceVersion`` (a 409 when someone else wrote meanwhile: the pass stops and applies
nothing after it), then the ``after`` actions (creations first) in order. A pass can be cut anywhere: a failed
action, a create whose request timed out (it may still land, within ``Config.api_request_timeout``, or never),
a crash before or after the write. As the runner does, a create of an action class with ``send_window`` is
sent only within ``Config.create_send_window`` of the pass's ``now`` (else the pass stops there).
Lifecycle-specific actions go through the binding's ``render`` first, as under the Kubernetes adapter; the
snapshot is the binding's ``snapshot(obj, view)`` over a view that offers what the Kubernetes adapter's does
(``owned(kind, key)``, ``children[kind].get(key)``, ``confirmed_absent(name, obj)``), or by default the children
by kind (``snap.of(kind)``, ``snap.one(kind, name)``).

What it checks
--------------
At every pass and every change of the world it raises :class:`ModelViolation` (an ``AssertionError``) at the
first violation of:

- ``re-entry``: a pass never enters a state twice, nor comes back to the state it started in (unless the spec
  changed: a new generation starts over);
- ``record-before-create``: nothing is created by a pass before its record is persisted (its status write
  committed, or it had nothing to write); for the kinds in ``ModelWorld.recorded_kinds``, every such child that
  exists is named by the persisted record (the lifecycle's ``confirm(obj, rec)``) or is being deleted;
- ``cleanup``: every child created maps to its owner through the lifecycle's ``Owns`` declaration (else neither
  the garbage collector nor the lifecycle's deletion can find it), and once a resource is deleted and the world
  has settled, nothing it created is left and the resource itself is gone;
- ``rebuild``: ``decide`` on the resource rebuilt from its persisted form (``to_dict`` then the lifecycle's
  ``parse``) equals ``decide`` on the in-memory one the writer kept;
- ``purity``: ``decide`` does not sleep, read the clock (:mod:`time`, or ``datetime.now()`` in the lifecycle's
  own modules), open a file or a socket;
- ``liveness``: once faults stop, the world settles within a bounded number of rounds (and reaches
  ``ModelWorld.goal`` when one is given);
- ``invariant:<name>``: each of the author's invariants (``Lifecycle(..., invariants=...)`` and
  ``ModelWorld.invariants``), ``invariant(obj, children) -> bool``, holds at every change; each of
  ``ModelWorld.action_invariants``, ``check(obj, snapshot, action) -> bool``, holds for every action a pass
  applies, with the snapshot that pass decided on.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import json
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs

from workspace_fsm.engine import actions as A
from workspace_fsm.engine.declare import Config, Lifecycle
from workspace_fsm.engine.interpret import Decision
from workspace_fsm.engine.objects import format_time
from workspace_fsm.engine.resource import Resource

__all__ = ["ChildModel", "Gone", "ModelCluster", "ModelOwned", "ModelViolation", "ModelWorld", "check_lifecycle",
           "state_machine"]

EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)
Doc = dict[str, Any]


@attrs.frozen
class Gone:
    """A change that removes an object from the world (returned by a progress or fault function)."""

    kind: str
    key: str


# What a progress or fault function returns: None (nothing to do), the changed document, or several
# documents and Gone markers (the child itself and, e.g., the Node it brought up).


@attrs.frozen
class ChildModel:
    """How the children of one kind behave in the model world.

    ``progress``: what the kind's own controller does over time, ``fn(doc) -> changes`` (e.g. a Deployment's
    replicas become ready), in order: an object's next step is the first function that applies to it (returns
    changes); run to a fixed point when the world settles. ``faults``: what can go wrong (a replica lost, a
    launch failing), only while faults are on.
    ``slow_delete``: a delete marks the object (``deletionTimestamp``) and it goes later, as a NodeClaim does
    while its instance terminates; otherwise it goes at once.
    """

    kind: str
    progress: tuple[Callable[[Doc], Any], ...] = ()
    faults: tuple[Callable[[Doc], Any], ...] = ()
    slow_delete: bool = False


@attrs.frozen
class ModelWorld:
    """A lifecycle and how its world behaves, for :class:`ModelCluster` and :func:`check_lifecycle`.

    - ``resources``: the documents of the resources the run starts with (one or two is plenty).
    - ``children``: a :class:`ChildModel` per kind that changes by itself.
    - ``edits``: user edits of a resource, ``edit(doc, n) -> doc`` (the harness bumps ``generation``).
    - ``snapshot`` / ``render``: the lifecycle's binding, as given to the Kubernetes adapter (default: the
      lifecycle's own; else children by kind, and only the engine's generic actions).
    - ``recorded_kinds``: kinds whose every existing child the persisted record must name (``confirm``).
    - ``invariants``: more author invariants, beside the lifecycle's own.
    - ``action_invariants``: ``check(obj, snapshot, action) -> bool`` for every action a pass applies, with the
      resource and the snapshot that pass decided on (e.g. "no workload before its nodes were ready as of the
      snapshot"); the lifecycle's own action, before ``render``.
    - ``goal``: what a settled world must show, ``goal(obj, children) -> bool`` (liveness).
    - ``runners``: how many runners write at once (optimistic concurrency between them).
    - ``config``: the configuration the runners use (default: the lifecycle's).
    """

    lifecycle: Lifecycle[Any]
    resources: tuple[Mapping[str, Any], ...]
    children: tuple[ChildModel, ...] = ()
    edits: tuple[Callable[[Doc, int], Doc], ...] = ()
    snapshot: Callable[..., Any] | None = None
    render: Callable[..., Any] | None = None
    recorded_kinds: tuple[str, ...] = ()
    invariants: tuple[Callable[[Any, Mapping[str, Sequence[Mapping[str, Any]]]], bool], ...] = ()
    goal: Callable[[Any, Mapping[str, Sequence[Mapping[str, Any]]]], bool] | None = None
    action_invariants: tuple[Callable[[Any, Any, Any], bool], ...] = ()
    runners: int = 2
    config: Config | None = None
    settle_rounds: int = 40


class ModelViolation(AssertionError):
    """A property the harness checks does not hold. ``check`` names it (``re-entry``, ``record-before-create``,
    ``cleanup``, ``rebuild``, ``purity``, ``liveness``, ``invariant:<name>``)."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"[{check}] {message}")
        self.check = check


@attrs.frozen
class ModelOwned:
    """The default snapshot: the resource's children by kind, as documents."""

    children: Mapping[str, tuple[Mapping[str, Any], ...]] = attrs.field(factory=dict)

    def of(self, kind: str) -> tuple[Mapping[str, Any], ...]:
        return self.children.get(kind, ())

    def one(self, kind: str, name: str) -> Mapping[str, Any] | None:
        for o in self.of(kind):
            if (o.get("metadata") or {}).get("name") == name:
                return o
        return None


# ----------------------------------------------------------------------------- purity


def _forbidden(what: str) -> Callable[..., Any]:
    def fail(*_a: Any, **_k: Any) -> Any:
        raise ModelViolation("purity", f"decide must be pure: it called {what}")
    return fail


class _AnyDatetime(type):
    """Metaclass: the clockless class still recognises every real datetime as an instance."""

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, datetime)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, datetime)


class _ClocklessDatetime(datetime, metaclass=_AnyDatetime):
    """``datetime`` as the lifecycle's modules see it while decide runs: no wall clock."""

    now = classmethod(_forbidden("datetime.now()"))
    utcnow = classmethod(_forbidden("datetime.utcnow()"))
    today = classmethod(_forbidden("datetime.today()"))


def _lifecycle_modules(lc: Lifecycle[Any]) -> list[Any]:
    """The modules the lifecycle's functions live in (guards, steps, timers, projections, facts, parse)."""
    import sys

    fns: list[Any] = [lc.facts, lc.project, lc.parse, lc.on_write, *lc.wake, *(e.guard for e in lc.edges)]
    for st in lc.state_table:
        fns += [*st.ensure, *st.wake, st.conditions, st.summary, st.fields]
        if st.deadline is not None:
            fns.append(getattr(st.deadline.then, "fn", None))
    names = {getattr(f, "__module__", None) for f in fns if callable(f)}
    return [sys.modules[n] for n in sorted(n for n in names if n and n in sys.modules)
            if getattr(sys.modules[n], "datetime", None) is datetime]


@contextlib.contextmanager
def _pure(modules: Sequence[Any] = ()) -> Iterator[None]:
    patches: list[tuple[Any, str, Any]] = [
        (o, n, _forbidden(f"{getattr(o, '__name__', 'socket')}.{n}()"))
        for o, n in ((time, "sleep"), (time, "time"), (time, "monotonic"), (time, "perf_counter"),
                     (socket.socket, "connect"), (socket, "create_connection"), (builtins, "open"))]
    patches += [(m, "datetime", _ClocklessDatetime) for m in modules]
    saved = [(o, n, getattr(o, n)) for o, n, _ in patches]
    try:
        for o, n, v in patches:
            setattr(o, n, v)
        yield
    finally:
        for o, n, v in saved:
            setattr(o, n, v)


# ----------------------------------------------------------------------------- the cluster


def _meta(doc: Mapping[str, Any]) -> dict[str, Any]:
    return doc.setdefault("metadata", {}) if isinstance(doc, dict) else dict(doc.get("metadata") or {})


@attrs.define
class _Runner:
    name: str
    cache: dict[str, int] = attrs.field(factory=dict)  # the version each of its caches shows (resource, "*" children)
    overlay: dict[str, tuple[str, Any]] = attrs.field(factory=dict)  # key -> (resourceVersion, its own write)
    passes: int = 0
    open: Any = None  # a pass begun and not finished (observe+decide done)


@attrs.define
class _Pass:
    runner: str
    key: str
    obj: Any
    snapshot: Any
    decision: Decision
    rv: str
    now: datetime
    committed: bool = False


class _Children:
    def __init__(self, view: _View, kind: str) -> None:
        self.view, self.kind = view, kind

    def get(self, key: str) -> Doc | None:
        d = self.view.objects.get((self.kind, key))
        return copy.deepcopy(d) if d is not None else None


class _View:
    """What a binding's ``snapshot(obj, view)`` reads: the world as of the runner's cache version."""

    def __init__(self, cluster: ModelCluster, objects: Mapping[tuple[str, str], Doc]) -> None:
        self.cluster, self.objects = cluster, objects
        self.children = {k: _Children(self, k) for k in cluster.kinds}

    def owned(self, kind: str, key: str) -> list[Doc]:
        owner = self.cluster.owner_of.get(kind)
        if owner is None:
            return []
        return [copy.deepcopy(d) for (k, _), d in sorted(self.objects.items()) if k == kind and owner(d) == key]

    def confirmed_absent(self, name: str, obj: Any) -> bool:
        """A GET now: the object is not in the world (a create still in flight is not seen)."""
        kind, _, short = name.partition("/")
        k = self.cluster.declared.get(kind)
        if k is None:
            return False
        key = f"{obj.metadata.namespace}/{short}" if k.namespaced else short
        return (kind, key) not in self.cluster.objects


class ModelCluster:
    """The model world and its runners (see the module's notes). Drive it by hand (``add``, ``run_pass``,
    ``begin``/``finish``, ``progress``, ``fault``, ``advance``, ``kill``, ``edit``, ``delete``, ``settle``) or let
    :func:`check_lifecycle` drive it."""

    def __init__(self, world: ModelWorld, now: datetime = EPOCH) -> None:
        self.world = world
        lc = self.lifecycle = world.lifecycle
        self.config = world.config or lc.config
        self.now = now
        self.parse: Callable[[Mapping[str, Any]], Any] = lc.parse or Resource.from_dict
        self.snapshot_fn = world.snapshot or lc.snapshot
        self.render_fn = world.render or lc.render
        self.declared = {lc.resource.kind: lc.resource}
        self.owner_of: dict[str, Callable[[Mapping[str, Any]], str | None]] = {}
        for o in lc.owns:
            self.declared[o.kind.kind] = o.kind
            self.owner_of[o.kind.kind] = o.owner
        for w in lc.watches:
            self.declared[w.kind.kind] = w.kind
            if w.owner is not None:
                self.owner_of[w.kind.kind] = w.owner
        for c in world.children:
            self.declared.setdefault(c.kind, attrs.evolve(lc.resource, kind=c.kind))
        self.kinds = tuple(self.declared)
        self.models = {c.kind: c for c in world.children}
        self.invariants = lc.invariants + world.invariants
        self._modules = _lifecycle_modules(lc)  # their ``datetime`` loses its clock while decide runs
        self.objects: dict[tuple[str, str], Doc] = {}
        self.versions: list[dict[tuple[str, str], Doc]] = [{}]
        self.rv = 0
        self.runners = {f"runner-{i}": _Runner(f"runner-{i}") for i in range(max(1, world.runners))}
        self.inflight: list[tuple[datetime, str, Any]] = []  # (lands by, owner key, Create)
        self.created: dict[tuple[str, str], str] = {}  # child -> owner key, for everything the lifecycle created
        self.keys: list[str] = []
        self.edits = 0
        self.events: list[tuple[str, str, str]] = []  # (key, reason, message) of applied RecordEvents
        self.writes = 0
        self.conflicts = 0

    # ------------------------------------------------------------------ the world

    @property
    def version(self) -> int:
        return len(self.versions) - 1

    def _key(self, kind: str, doc: Mapping[str, Any], ns: str = "default") -> str:
        meta = doc.get("metadata") or {}
        k = self.declared.get(kind)
        if k is not None and not k.namespaced:
            return str(meta["name"])
        return f"{meta.get('namespace') or ns}/{meta['name']}"

    def _put(self, kind: str, key: str, doc: Doc | None) -> None:
        """One change of the world: a new version; then every check that reads the world."""
        if doc is None:
            self.objects.pop((kind, key), None)
        else:
            self.rv += 1
            _meta(doc)["resourceVersion"] = str(self.rv)
            self.objects[(kind, key)] = doc
        self.versions.append(dict(self.objects))
        self._check_world()

    def add(self, doc: Mapping[str, Any]) -> str:
        """A user creates a resource."""
        d = copy.deepcopy(dict(doc))
        m = _meta(d)
        m.setdefault("namespace", "default")
        m.setdefault("uid", f"uid-{m['name']}")
        m.setdefault("generation", 1)
        m.setdefault("creationTimestamp", format_time(self.now))
        d.setdefault("apiVersion", self.lifecycle.resource.api_version)
        d.setdefault("kind", self.lifecycle.resource.kind)
        key = self._key(self.lifecycle.resource.kind, d)
        self.keys.append(key)
        self._put(self.lifecycle.resource.kind, key, d)
        return key

    def resource(self, key: str) -> Any | None:
        """The persisted resource, parsed, or None once it is gone."""
        d = self.objects.get((self.lifecycle.resource.kind, key))
        return None if d is None else self.parse(copy.deepcopy(d))

    def children_of(self, key: str, objects: Mapping[tuple[str, str], Doc] | None = None) -> dict[str, tuple[Doc, ...]]:
        objects = self.objects if objects is None else objects
        out: dict[str, list[Doc]] = {}
        for (kind, _), d in sorted(objects.items()):
            owner = self.owner_of.get(kind)
            if owner is not None and owner(d) == key:
                out.setdefault(kind, []).append(d)
        return {k: tuple(v) for k, v in out.items()}

    def state(self, key: str) -> str | None:
        obj = self.resource(key)
        rec = None if obj is None else self.lifecycle.record.read(obj)
        return None if rec is None else rec.state

    def _remove(self, kind: str, key: str) -> None:
        """An object goes; the garbage collector takes what it owns (by ownerReference uid)."""
        doc = self.objects.get((kind, key))
        if doc is None:
            return
        uid = _meta(doc).get("uid")
        self._put(kind, key, None)
        for (k, ck), d in list(self.objects.items()):
            refs = (d.get("metadata") or {}).get("ownerReferences") or ()
            if uid and any(r.get("uid") == uid for r in refs):
                self._delete_child(k, ck)

    def _delete_child(self, kind: str, key: str) -> None:
        doc = self.objects.get((kind, key))
        if doc is None:
            return
        m = self.models.get(kind)
        if (m is not None and m.slow_delete) or (doc.get("metadata") or {}).get("finalizers"):
            if not _meta(doc).get("deletionTimestamp"):
                d = copy.deepcopy(doc)
                _meta(d)["deletionTimestamp"] = format_time(self.now)
                self._put(kind, key, d)
            return
        self._remove(kind, key)

    def _apply_changes(self, kind: str, changes: Any) -> bool:
        if changes is None:
            return False
        items = [changes] if isinstance(changes, (dict, Gone)) else list(changes)
        for c in items:
            if isinstance(c, Gone):
                self._remove(c.kind, c.key)
            else:
                k = str(c.get("kind") or kind)
                self._put(k, self._key(k, c), copy.deepcopy(c))
        return bool(items)

    def _step(self, kind: str, fns: Sequence[Callable[[Doc], Any]], key: str) -> bool:
        """The object's next step: the first of ``fns`` that applies to it."""
        for fn in fns:
            if (kind, key) in self.objects and self._apply_changes(kind, fn(copy.deepcopy(self.objects[(kind, key)]))):
                return True
        return False

    def _run_model(self, kind: str, i: int, fns: Sequence[Callable[[Doc], Any]]) -> bool:
        keys = [k for kk, k in sorted(self.objects) if kk == kind]
        for j in range(len(keys)):  # the i-th object, or the next one something applies to
            if self._step(kind, fns, keys[(i + j) % len(keys)]):
                return True
        return False

    def progress(self, kind: str, i: int = 0) -> bool:
        """The ``i``-th object of ``kind`` (modulo their number; or the next one that can) takes its next step:
        the first of the kind's progress functions that applies to it."""
        m = self.models.get(kind)
        return m is not None and self._run_model(kind, i, m.progress)

    def progress_every(self, kind: str) -> bool:
        """Every object of ``kind`` takes its next step (a controller catching up by one step)."""
        m = self.models.get(kind)
        if m is None:
            return False
        changed = False
        for kk, key in sorted(self.objects):
            if kk == kind:
                changed |= self._step(kind, m.progress, key)
        return changed

    def fault(self, kind: str, i: int = 0, fn: int = 0) -> bool:
        """The ``fn``-th fault of ``kind`` (modulo their number) on its ``i``-th object, or the next one it
        applies to."""
        m = self.models.get(kind)
        if m is None or not m.faults:
            return False
        return self._run_model(kind, i, (m.faults[fn % len(m.faults)],))

    def finish_deletion(self, i: int = 0) -> bool:
        """One object being deleted (``slow_delete``) goes."""
        marked = [(k, key) for (k, key), d in sorted(self.objects.items())
                  if (d.get("metadata") or {}).get("deletionTimestamp") and k != self.lifecycle.resource.kind
                  and not (d.get("metadata") or {}).get("finalizers")]
        if not marked:
            return False
        self._remove(*marked[i % len(marked)])
        return True

    def edit(self, key: str, which: int = 0) -> bool:
        """A user edits the resource's spec (generation + 1)."""
        doc = self.objects.get((self.lifecycle.resource.kind, key))
        if doc is None or not self.world.edits or (doc.get("metadata") or {}).get("deletionTimestamp"):
            return False
        self.edits += 1
        d = self.world.edits[which % len(self.world.edits)](copy.deepcopy(doc), self.edits)
        _meta(d)["generation"] = int(_meta(d).get("generation") or 0) + 1
        self._put(self.lifecycle.resource.kind, key, d)
        return True

    def delete(self, key: str) -> bool:
        """A user deletes the resource (it stays while it has finalizers)."""
        doc = self.objects.get((self.lifecycle.resource.kind, key))
        if doc is None or (doc.get("metadata") or {}).get("deletionTimestamp"):
            return False
        if (doc.get("metadata") or {}).get("finalizers"):
            d = copy.deepcopy(doc)
            _meta(d)["deletionTimestamp"] = format_time(self.now)
            self._put(self.lifecycle.resource.kind, key, d)
        else:
            self._remove(self.lifecycle.resource.kind, key)
        return True

    def advance(self, delta: timedelta, *, land_late: bool = True) -> None:
        """Time passes. A create still in flight lands (``land_late``) or is lost once its request has timed
        out, never later (the bound the engine's ``Config.create_grace`` relies on)."""
        target = self.now + delta
        for item in sorted(self.inflight, key=lambda x: x[0]):
            if item[0] <= target:
                self.inflight.remove(item)
                if land_late:
                    self.now = max(self.now, min(item[0], target))
                    self._create(item[1], item[2], landed_late=True)
        self.now = target

    def until_deadline(self, key: str, *, land_late: bool = True) -> bool:
        """Nothing happens until the deadline of the resource's current state (as its persisted record says)
        has passed: time jumps there. False when the state has no deadline pending."""
        obj = self.resource(key)
        rec = None if obj is None else self.lifecycle.record.read(obj)
        if rec is None or rec.entered_at is None or rec.state not in self.lifecycle.states:
            return False
        d = self.lifecycle.states[rec.state].deadline
        after = self.lifecycle.deadline(rec.state, self.config)
        if d is None or after is None or rec.attempts >= d.max_firings:
            return False
        due = rec.entered_at + after + timedelta(seconds=1)
        if due > self.now:
            self.advance(due - self.now, land_late=land_late)
        return True

    def land(self, i: int = 0) -> bool:
        """A create in flight lands now."""
        if not self.inflight:
            return False
        _, key, a = self.inflight.pop(i % len(self.inflight))
        self._create(key, a, landed_late=True)
        return True

    def kill(self, runner: str) -> None:
        """The runner dies and restarts: it knows only what it reads again (its cache relists the world now);
        a pass it had begun is lost."""
        r = self.runners[runner]
        r.open, r.overlay, r.cache = None, {}, {self.lifecycle.resource.kind: self.version, "*": self.version}

    # ------------------------------------------------------------------ passes

    def _observe(self, r: _Runner, key: str, lag: int, child_lag: int | None = None) -> tuple[Any, Any, str] | None:
        # Two informers' worth of caches, each lagging on its own and only moving forward: the resource's, and
        # its children's (a child's event may be seen before or after the resource's: a reordering).
        kind = self.lifecycle.resource.kind
        vp = r.cache[kind] = max(r.cache.get(kind, 0), self.version - lag)
        vc = r.cache["*"] = max(r.cache.get("*", 0), self.version - (lag if child_lag is None else child_lag))
        objects = {k: d for k, d in self.versions[vc].items() if k[0] != kind}
        objects.update({k: d for k, d in self.versions[vp].items() if k[0] == kind})
        doc = objects.get((kind, key))
        own = r.overlay.get(key)
        if own is not None:
            current = self.objects.get((kind, key))
            cached_rv = int((doc or {}).get("metadata", {}).get("resourceVersion") or 0)
            if current is None:
                r.overlay.pop(key, None)
            elif cached_rv < int(own[0]):
                # The runner never acts on a cache older than its own write (the write-through overlay).
                obj = own[1]
                return obj, self._snapshot(obj, objects), own[0]
            else:
                r.overlay.pop(key, None)
        if doc is None:
            return None
        obj = self.parse(copy.deepcopy(doc))
        return obj, self._snapshot(obj, objects), str(_meta(doc).get("resourceVersion"))

    def _snapshot(self, obj: Any, objects: Mapping[tuple[str, str], Doc]) -> Any:
        view = _View(self, objects)
        if self.snapshot_fn is not None:
            return self.snapshot_fn(obj, view)
        key = obj.key
        return ModelOwned({o.kind.kind: tuple(view.owned(o.kind.kind, key)) for o in self.lifecycle.owns})

    def _decide(self, obj: Any, snap: Any, pass_id: str) -> Decision:
        lc = self.lifecycle
        with _pure(self._modules):
            d = lc.decide(obj, snap, self.now, self.config, pass_id=pass_id)
            try:
                persisted = json.loads(json.dumps(obj.to_dict()))
            except (TypeError, ValueError) as exc:
                raise ModelViolation("rebuild", f"{lc.resource.kind} {obj.key}: the resource cannot be persisted as "
                                     f"JSON ({exc}); a status field holds something the API cannot store") from None
            rebuilt = self.parse(persisted)
            d2 = lc.decide(rebuilt, snap, self.now, self.config, pass_id=pass_id)
        if (d.state, d.status, d.actions, d.wake, d.record, d.annotations) != \
                (d2.state, d2.status, d2.actions, d2.wake, d2.record, d2.annotations):
            raise ModelViolation("rebuild", f"{lc.resource.kind} {obj.key}: decide on the resource rebuilt from its "
                                 f"persisted form differs from decide on the in-memory one (state {d.state} vs "
                                 f"{d2.state}; actions {d.actions} vs {d2.actions})")
        rec = lc.record.read(obj)
        start = rec.state if rec is not None and rec.state in lc.states else lc.initial
        entered = [t.dest for t in d.transitions]
        # Back to the state the pass started in (a deadline fired, an edge leads straight back): allowed only for
        # a new generation, where the machine starts over for the new spec. Otherwise the same snapshot undoes
        # the deadline and restarts its clock, for ever.
        same_spec = rec is None or rec.generation == obj.metadata.generation
        if len(set(entered)) != len(entered) or (start in entered and same_spec):
            path = " -> ".join([start, *entered])
            raise ModelViolation("re-entry", f"{lc.resource.kind} {obj.key}: one pass entered a state twice "
                                 f"({path}); on one snapshot that is a ping-pong between guards, never progress")
        return d

    def begin(self, runner: str, key: str, lag: int = 0, child_lag: int | None = None) -> bool:
        """The runner observes ``key`` (its cache of the resource lagging up to ``lag`` versions, that of its
        children up to ``child_lag``, by default the same) and decides."""
        r = self.runners[runner]
        seen = self._observe(r, key, lag, child_lag)
        if seen is None:
            r.open = None
            return False
        obj, snap, rv = seen
        r.passes += 1
        d = self._decide(obj, snap, f"{runner}-{r.passes}")
        r.open = _Pass(runner, key, obj, snap, d, rv, self.now)
        return True

    def finish(self, runner: str, outcome: str = "ok", at: int = 0) -> bool:
        """Apply the begun pass. ``outcome``: ``ok``; ``fail`` (the ``at``-th request, modulo their number, fails
        and the pass stops); ``timeout`` (the ``at``-th create's request, or the ``at``-th request when the pass
        creates nothing, times out and the pass stops: a create may still land later); ``crash-before-write``;
        ``crash-after-write``. True when the pass ran to its end."""
        r = self.runners[runner]
        p, r.open = r.open, None
        if p is None:
            return False
        d = p.decision
        kind = self.lifecycle.resource.kind
        before = [(a, g) for a in d.before for g in self._rendered(a, p.obj)]
        after = [(a, g) for a in d.after for g in self._rendered(a, p.obj)]
        cut = -1
        if outcome in ("fail", "timeout") and before + after:
            creates = [i for i, (_, g) in enumerate(before + after) if isinstance(g, A.Create)]
            cut = creates[at % len(creates)] if outcome == "timeout" and creates else at % len(before + after)
        n = 0
        for a, g in before:
            self._check_action(p, a)
            if n == cut:
                self._cut(outcome, p, g)
                return False
            n += 1
            if isinstance(g, (A.AddFinalizer, A.RemoveFinalizer)):
                cur = self.objects.get((kind, p.key))
                if cur is None or str(_meta(cur).get("resourceVersion")) != p.rv:
                    self.conflicts += 1
                    return False  # the finalizer patch carries the observed resourceVersion: a 409
                self._apply(p, g)
                cur = self.objects.get((kind, p.key))
                if cur is not None:
                    p.rv = str(_meta(cur)["resourceVersion"])  # its own patch: the status write carries it
            else:
                self._apply(p, g)
        if outcome == "crash-before-write":
            return False
        if d.status_changed:
            cur = self.objects.get((kind, p.key))
            if cur is None or str(_meta(cur).get("resourceVersion")) != p.rv:
                self.conflicts += 1
                return False  # 409: observe again; nothing after the write is applied
            self._write(r, p)
        p.committed = True
        if outcome == "crash-after-write":
            return False
        for a, g in after:
            if getattr(type(a), "send_window", False) and self.now - p.now > self.config.create_send_window:
                # As the runner does: a fresh-named create is sent within Config.create_send_window of the
                # pass's now or not at all (the machine counts on it landing within Config.create_grace).
                return False
            self._check_action(p, a)
            if n == cut:
                self._cut(outcome, p, g)
                return False
            n += 1
            self._apply(p, g)
        return True

    def run_pass(self, runner: str, key: str, lag: int = 0, outcome: str = "ok", at: int = 0,
                 child_lag: int | None = None) -> bool:
        """``begin`` then ``finish``."""
        return self.begin(runner, key, lag, child_lag) and self.finish(runner, outcome, at)

    def _check_action(self, p: _Pass, a: Any) -> None:
        for inv in self.world.action_invariants:
            if not inv(p.obj, p.snapshot, a):
                what = " ".join((inv.__doc__ or inv.__name__).split())
                raise ModelViolation(f"invariant:{inv.__name__}", f"{self.lifecycle.resource.kind} {p.key}: {what} "
                                     f"(pass of {p.runner} in state {p.decision.state}, action {a})")

    def _cut(self, outcome: str, p: _Pass, a: Any) -> None:
        if outcome == "timeout" and isinstance(a, A.Create):
            self._check_create(p, a)
            self.inflight.append((self.now + self.config.api_request_timeout, p.key, a))  # sent now

    def _rendered(self, a: Any, obj: Any) -> list[Any]:
        generic = (A.Create, A.Patch, A.Delete, A.AddFinalizer, A.RemoveFinalizer, A.RecordEvent)
        if isinstance(a, generic):
            return [a]
        if self.render_fn is None:
            raise TypeError(f"{type(a).__name__} is not one of the engine's actions and the world has no render")
        return list(self.render_fn(a, obj))

    def _write(self, r: _Runner, p: _Pass) -> None:
        kind = self.lifecycle.resource.kind
        cur = copy.deepcopy(self.objects[(kind, p.key)])
        d = p.decision
        m = _meta(cur)
        if d.annotations:
            m["annotations"] = {**(m.get("annotations") or {}), **dict(d.annotations)}
        written = p.obj.with_status(d.status)
        status = written.to_dict().get("status")
        if status:
            cur["status"] = status
        else:
            cur.pop("status", None)
        self.writes += 1
        self._put(kind, p.key, cur)
        rv = str(m["resourceVersion"])
        meta = attrs.evolve(written.metadata, resource_version=rv, finalizers=tuple(m.get("finalizers") or ()),
                            annotations=dict(m.get("annotations") or {}))
        r.overlay[p.key] = (rv, attrs.evolve(written, metadata=meta))

    def _apply(self, p: _Pass, a: Any) -> None:
        kind = self.lifecycle.resource.kind
        if isinstance(a, A.RecordEvent):
            self.events.append((p.key, a.reason, a.message))
        elif isinstance(a, A.Create):
            self._check_create(p, a)
            self._create(p.key, a)
        elif isinstance(a, (A.AddFinalizer, A.RemoveFinalizer)):
            cur = self.objects.get((kind, p.key))
            if cur is None:
                return
            d = copy.deepcopy(cur)
            fins = list(_meta(d).get("finalizers") or ())
            if isinstance(a, A.AddFinalizer) and a.finalizer not in fins:
                fins.append(a.finalizer)
            elif isinstance(a, A.RemoveFinalizer) and a.finalizer in fins:
                fins.remove(a.finalizer)
            else:
                return
            _meta(d)["finalizers"] = fins
            if not fins and _meta(d).get("deletionTimestamp"):
                self._remove(kind, p.key)
            else:
                self._put(kind, p.key, d)
        elif isinstance(a, A.Delete):
            key = self._child_key(a.kind, a.name, p.key)
            self._delete_child(a.kind, key)
        elif isinstance(a, A.Patch):
            key = self._child_key(a.kind, a.name, p.key)
            cur = self.objects.get((a.kind, key))
            if cur is None:
                return  # NotFound: the next pass asks again
            d = _merge(copy.deepcopy(cur), a.patch)
            if d.get("spec") != cur.get("spec"):
                _meta(d)["generation"] = int(_meta(d).get("generation") or 1) + 1
            self._put(a.kind, key, d)
        else:
            raise TypeError(f"the model cluster cannot apply {type(a).__name__}")

    def _child_key(self, kind: str, name: str, owner_key: str) -> str:
        k = self.declared.get(kind)
        return name if k is not None and not k.namespaced else f"{owner_key.partition('/')[0]}/{name}"

    def _check_create(self, p: _Pass, a: A.Create) -> None:
        lc = self.lifecycle
        if not p.committed and p.decision.status_changed:
            raise ModelViolation("record-before-create", f"{lc.resource.kind} {p.key}: {a.kind} {a.name} was created "
                                 f"before the pass's record was persisted (a pass whose write then fails would "
                                 f"leave an object nobody recorded)")
        if a.kind not in self.owner_of:
            raise ModelViolation("cleanup", f"{lc.resource.kind} {p.key}: created {a.kind} {a.name}, a kind the "
                                 f"lifecycle does not declare in owns= (nothing maps it to its owner)")

    def _create(self, owner_key: str, a: A.Create, *, landed_late: bool = False) -> None:
        lc = self.lifecycle
        kind = a.kind
        doc = copy.deepcopy(_thaw(a.manifest))
        m = _meta(doc)
        k = self.declared.get(kind)
        if k is not None and k.namespaced:
            m.setdefault("namespace", owner_key.partition("/")[0])
        key = self._key(kind, doc)
        if (kind, key) in self.objects:
            return  # AlreadyExists: success, nothing changes
        owner_doc = self.objects.get((lc.resource.kind, owner_key))
        if a.owned:
            if owner_doc is None:
                return  # the owner is gone: the garbage collector removes it at once
            om = owner_doc["metadata"]
            m["ownerReferences"] = [{"apiVersion": lc.resource.api_version, "kind": lc.resource.kind,
                                     "name": om["name"], "uid": om.get("uid", ""), "controller": True,
                                     "blockOwnerDeletion": True}]
        m.setdefault("generation", 1)
        m.setdefault("uid", f"uid-{kind.lower()}-{key.replace('/', '-')}")
        m.setdefault("creationTimestamp", format_time(self.now))
        owner = self.owner_of.get(kind)
        if owner is not None and owner(doc) != owner_key:
            raise ModelViolation("cleanup", f"{lc.resource.kind} {owner_key}: created {kind} {key}, which its Owns "
                                 f"declaration maps to {owner(doc)!r}, not to its owner: neither the garbage "
                                 f"collector nor the lifecycle's deletion would ever remove it")
        self.created[(kind, key)] = owner_key
        self._put(kind, key, doc)

    # ------------------------------------------------------------------ checks of the world

    def _check_world(self) -> None:
        lc = self.lifecycle
        for key in self.keys:
            doc = self.objects.get((lc.resource.kind, key))
            if doc is None:
                continue
            obj = self.parse(copy.deepcopy(doc))
            children = self.children_of(key)
            for inv in self.invariants:
                if not inv(obj, children):
                    what = " ".join((inv.__doc__ or inv.__name__).split())
                    raise ModelViolation(f"invariant:{inv.__name__}", f"{lc.resource.kind} {key}: {what} "
                                         f"(state {self.state(key)}; children "
                                         f"{ {k: [c['metadata']['name'] for c in v] for k, v in children.items()} })")
            if self.world.recorded_kinds:
                rec = lc.record.read(obj)
                held = set(lc.confirm(obj, rec)) if rec is not None else set()
                for kind in self.world.recorded_kinds:
                    for c in children.get(kind, ()):
                        name = f"{kind}/{c['metadata']['name']}"
                        if name not in held and not c["metadata"].get("deletionTimestamp"):
                            raise ModelViolation("record-before-create", f"{lc.resource.kind} {key}: {name} exists "
                                                 f"but the persisted record does not hold it")

    # ------------------------------------------------------------------ settling (liveness)

    def _progress_all(self) -> bool:
        changed = False
        for _ in range(20):
            step = False
            for kind, m in self.models.items():
                for fn in m.progress:
                    for k, key in sorted(self.objects):
                        if k == kind and (k, key) in self.objects:
                            step |= self._apply_changes(kind, fn(copy.deepcopy(self.objects[(k, key)])))
            while self.finish_deletion():
                step = True
            changed |= step
            if not step:
                break
        return changed

    def catch_up(self) -> bool:
        """Every progress function to a fixed point, deletions finished: the children's controllers catch up."""
        return self._progress_all()

    def settle(self) -> int:
        """Faults stop: in-flight creates land, children progress, one runner passes every resource, time moves
        to the next wake-up, until nothing changes. Returns the rounds it took; raises ``liveness`` if it never
        settles, and checks ``ModelWorld.goal`` and that deleted resources left nothing behind."""
        lc = self.lifecycle
        runner = next(iter(self.runners))
        self.kill(runner)
        while self.inflight:
            self.land()
        quiet = rounds = 0
        for rounds in range(1, self.world.settle_rounds + 1):  # noqa: B007 (returned)
            v0 = self.version
            self._progress_all()
            waits: list[timedelta] = []
            for key in list(self.keys):
                if self.begin(runner, key):
                    p = self.runners[runner].open
                    if p.decision.wake.after is not None:
                        waits.append(p.decision.wake.after)
                    self.finish(runner)
            if self.version != v0:
                quiet = 0
                continue
            quiet += 1
            if quiet >= 3 or not waits:
                break
            self.advance(max(min(waits), timedelta(seconds=1)))
        else:
            raise ModelViolation("liveness", f"{lc.name}: the world did not settle within {self.world.settle_rounds} "
                                 f"rounds once faults stopped (states: "
                                 f"{ {k: self.state(k) for k in self.keys} })")
        for key in self.keys:
            obj = self.resource(key)
            if obj is None:
                left = sorted(f"{k}/{ck}" for (k, ck), owner in self.created.items()
                              if owner == key and (k, ck) in self.objects)
                if left:
                    raise ModelViolation("cleanup", f"{lc.resource.kind} {key} is gone but what it created is left: "
                                         f"{', '.join(left)}")
            elif obj.metadata.deletion_timestamp is not None:
                raise ModelViolation("cleanup", f"{lc.resource.kind} {key}: deletion requested and the world settled, "
                                     f"but the resource is still there (state {self.state(key)}, finalizers "
                                     f"{list(obj.metadata.finalizers)})")
            elif self.world.goal is not None and not obj.problems and not self.world.goal(obj, self.children_of(key)):
                raise ModelViolation("liveness", f"{lc.resource.kind} {key}: settled in state {self.state(key)} "
                                     f"without reaching the world's goal")
        return rounds


def _thaw(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _thaw(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_thaw(x) for x in v]
    return v


def _merge(doc: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return _thaw(patch)
    out = dict(doc) if isinstance(doc, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


# ----------------------------------------------------------------------------- hypothesis


OUTCOMES = ("ok", "fail", "timeout", "timeout", "crash-before-write", "crash-after-write")
DELAYS = (1, 5, 30, 120, 700)


def state_machine(world: ModelWorld) -> type[Any]:
    """A hypothesis ``RuleBasedStateMachine`` over ``world``: passes of several runners (interleaved, with
    lagging caches, cut anywhere), children's progress and faults, creates landing late, time, kills, edits and
    deletions; at the end everything is deleted after a first settle, and the world must settle again."""
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

    runners = tuple(f"runner-{i}" for i in range(max(1, world.runners)))
    kinds = tuple(c.kind for c in world.children) or ("",)
    n_resources = len(world.resources)

    class LifecycleModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.cluster = ModelCluster(world)

        @initialize()
        def create(self) -> None:
            for doc in world.resources:
                self.cluster.add(doc)

        def _key(self, i: int) -> str:
            return self.cluster.keys[i % len(self.cluster.keys)]

        @rule(r=st.sampled_from(runners), i=st.integers(0, n_resources - 1), lag=st.integers(0, 4),
              child_lag=st.integers(0, 4), outcome=st.sampled_from(OUTCOMES), at=st.integers(0, 3))
        def a_pass(self, r: str, i: int, lag: int, child_lag: int, outcome: str, at: int) -> None:
            self.cluster.run_pass(r, self._key(i), lag, outcome, at, child_lag)

        @rule(r=st.sampled_from(runners), i=st.integers(0, n_resources - 1), lag=st.integers(0, 4),
              child_lag=st.integers(0, 4))
        def begin(self, r: str, i: int, lag: int, child_lag: int) -> None:
            self.cluster.begin(r, self._key(i), lag, child_lag)

        @precondition(lambda self: any(r.open is not None for r in self.cluster.runners.values()))
        @rule(i=st.integers(0, len(runners) - 1), outcome=st.sampled_from(OUTCOMES), at=st.integers(0, 3))
        def finish(self, i: int, outcome: str, at: int) -> None:
            open_ = [name for name, r in self.cluster.runners.items() if r.open is not None]
            self.cluster.finish(open_[i % len(open_)], outcome, at)

        @rule(i=st.integers(0, n_resources - 1))
        def clean_pass(self, i: int) -> None:
            """A pass of a runner whose caches are current and whose requests all succeed."""
            self.cluster.run_pass(runners[0], self._key(i))

        @rule()
        def catch_up(self) -> None:
            """Every child's controller catches up (progress to a fixed point, no faults)."""
            self.cluster.catch_up()

        @rule(kind=st.sampled_from(kinds), i=st.integers(0, 3))
        def progress(self, kind: str, i: int) -> None:
            self.cluster.progress(kind, i)

        @rule(kind=st.sampled_from(kinds))
        def progress_every(self, kind: str) -> None:
            self.cluster.progress_every(kind)

        @rule(kind=st.sampled_from(kinds), i=st.integers(0, 3), fn=st.integers(0, 3))
        def fault(self, kind: str, i: int, fn: int) -> None:
            self.cluster.fault(kind, i, fn)

        @rule(i=st.integers(0, 3))
        def finish_deletion(self, i: int) -> None:
            self.cluster.finish_deletion(i)

        @precondition(lambda self: bool(self.cluster.inflight))
        @rule(i=st.integers(0, 3))
        def land(self, i: int) -> None:
            self.cluster.land(i)

        @rule(seconds=st.sampled_from(DELAYS), land_late=st.booleans())
        def time_passes(self, seconds: int, land_late: bool) -> None:
            self.cluster.advance(timedelta(seconds=seconds), land_late=land_late)

        @rule(i=st.integers(0, n_resources - 1), land_late=st.booleans())
        def until_deadline(self, i: int, land_late: bool) -> None:
            self.cluster.until_deadline(self._key(i), land_late=land_late)

        @rule(r=st.sampled_from(runners))
        def kill(self, r: str) -> None:
            self.cluster.kill(r)

        @rule(i=st.integers(0, n_resources - 1), which=st.integers(0, 3))
        def edit(self, i: int, which: int) -> None:
            self.cluster.edit(self._key(i), which)

        @rule(i=st.integers(0, n_resources - 1), draw=st.integers(0, 4))
        def delete(self, i: int, draw: int) -> None:
            if draw == 0:  # rarely: most of a run is worth spending on a live resource
                self.cluster.delete(self._key(i))

        def teardown(self) -> None:
            c = self.cluster
            if not c.keys:
                return
            c.settle()
            for key in c.keys:
                c.delete(key)
            c.settle()

    LifecycleModel.__name__ = f"{world.lifecycle.name.title().replace('-', '')}Model"
    return LifecycleModel


def check_lifecycle(world: ModelWorld, *, max_examples: int = 50, steps: int = 30, shrink: bool = True,
                    derandomize: bool = True) -> None:
    """Run hypothesis over ``world`` (see :func:`state_machine`); raises the first :class:`ModelViolation`
    found (shrunk to a short sequence of steps unless ``shrink`` is False). ``derandomize``: the same examples
    on every run (what CI wants); False draws new ones each run."""
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis.stateful import run_state_machine_as_test

    phases = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target) + ((Phase.shrink,) if shrink else ())
    s = settings(max_examples=max_examples, stateful_step_count=steps, deadline=None, database=None,
                 phases=phases, suppress_health_check=list(HealthCheck), derandomize=derandomize,
                 report_multiple_bugs=False)
    run_state_machine_as_test(state_machine(world), settings=s)
