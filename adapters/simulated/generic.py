"""Any declared lifecycle on the simulated cluster: the in-memory twin of the Kubernetes adapter's
:class:`~workspace_fsm.adapters.kubernetes.generic.ResourceAdapter`.

:class:`SimResourceAdapter` serves one :class:`~workspace_fsm.engine.Lifecycle` from its declaration alone, on
the same :class:`~.cluster.SimCluster` (clock, change log, cache lag, tombstones, API accounting) as the
Workspaces:

- **observe** reads the resource from the cache (or the version this adapter last wrote, until the cache shows
  it) and builds the snapshot with the lifecycle's binding, ``snapshot(obj, view)``, where the view is this
  adapter: ``owned(kind, key)`` (the owner's children from the cache, by owner index), ``children[kind].get(key)``
  and ``confirmed_absent(name, obj)``, exactly what the Kubernetes adapter offers. So one binding serves both.
  Without a binding the snapshot is an :class:`~workspace_fsm.adapters.kubernetes.generic.Owned`-like mapping of
  children by kind.
- **apply** executes the engine's generic actions (``Create``, ``Patch``, ``Delete``, finalizers, Events), each one
  counted API call; a lifecycle's own actions go through its ``render(action, obj)`` first. Children are kept as
  documents, except NodeClaims, which Karpenter's simulation provisions for every lifecycle alike (the
  lifecycle's own ``Owns(NodeClaim)`` declaration says whose they are).
- **persist** writes the status with the observed resourceVersion: :class:`Conflict` when someone else wrote
  since; this adapter's own finalizer patches in between do not count.

Which child events wake the owner follows the declaration: every ``Owns`` with ``wakes_owner``, every
``Watches`` that maps to an owner, and the resource itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from workspace_fsm.engine import actions as E
from workspace_fsm.engine.adapter import AdapterError, Conflict
from workspace_fsm.engine.kinds import Kind
from workspace_fsm.engine.objects import format_time
from workspace_fsm.engine.resource import Resource
from workspace_fsm.kaito.model import GPU_RESOURCE, NodeClaim, Node

from .cluster import SimCluster

__all__ = ["SimResourceAdapter", "SimOwned", "claim_document", "node_document"]


@attrs.frozen
class SimOwned:
    """The default snapshot: the resource's children by kind (documents), read from the cache."""

    children: Mapping[str, tuple[Mapping[str, Any], ...]] = attrs.field(factory=dict)

    def of(self, kind: str) -> tuple[Mapping[str, Any], ...]:
        return self.children.get(kind, ())

    def one(self, kind: str, name: str) -> Mapping[str, Any] | None:
        for o in self.of(kind):
            if (o.get("metadata") or {}).get("name") == name:
                return o
        return None


def _condition(type_: str, status: str | None, reason: str = "") -> dict[str, Any] | None:
    if status is None:
        return None
    return {"type": type_, "status": status, "reason": reason or (type_ if status == "True" else "Pending"),
            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}


def claim_document(c: NodeClaim, labels: Mapping[str, str]) -> dict[str, Any]:
    """A simulated NodeClaim as the API would serve it (what a lifecycle's binding parses)."""
    conds = [d for d in (
        _condition("Launched", c.launched, c.failure_reason or "" if c.launched == "False" else ""),
        _condition("Registered", c.registered), _condition("Initialized", c.initialized),
        _condition("Ready", c.ready)) if d is not None]
    meta: dict[str, Any] = {"name": c.name, "labels": dict(labels)}
    if c.created_at is not None:
        meta["creationTimestamp"] = format_time(c.created_at)
    if c.deleting:
        meta["deletionTimestamp"] = meta.get("creationTimestamp", "2026-01-01T00:00:00Z")
    status: dict[str, Any] = {"conditions": conds}
    if c.node_name:
        status["nodeName"] = c.node_name
    return {"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": meta,
            "spec": {"requirements": [{"key": "node.kubernetes.io/instance-type", "operator": "In",
                                       "values": [c.instance_type]}]},
            "status": status}


def node_document(n: Node) -> dict[str, Any]:
    """A simulated Node as the API would serve it: Ready condition and ``nvidia.com/gpu`` capacity."""
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": "True" if n.ready else "False",
                                              "reason": "KubeletReady" if n.ready else "KubeletNotReady"}]}
    if n.gpu_capacity:
        status["capacity"] = {GPU_RESOURCE: str(n.gpu_capacity)}
        status["allocatable"] = {GPU_RESOURCE: str(n.gpu_capacity)}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": n.name, "labels": dict(n.labels)},
            "status": status}


class _Children:
    """``children[kind].get(key)``: one cached child by key, as a document."""

    def __init__(self, adapter: SimResourceAdapter, kind: str) -> None:
        self.adapter, self.kind = adapter, kind

    def get(self, key: str) -> dict[str, Any] | None:
        return self.adapter._document(self.kind, self.adapter.cluster.cached(self.kind, key))


class SimResourceAdapter:
    """Serves ``lifecycle`` on ``cluster`` (see the module's notes). ``snapshot`` / ``render``: the lifecycle's
    binding, as given to the Kubernetes adapter (default: the lifecycle's own, else children by kind)."""

    def __init__(self, cluster: SimCluster, lifecycle: Any, *, snapshot: Callable[..., Any] | None = None,
                 render: Callable[..., Any] | None = None) -> None:
        self.cluster = cluster
        self.lifecycle = lifecycle
        self.name: str = lifecycle.name
        r: Kind = lifecycle.resource
        self.resource = r
        self.kind = r.kind
        self._snapshot = snapshot or lifecycle.snapshot
        self._render = render or lifecycle.render
        self.declared: dict[str, Kind] = {r.kind: r}
        self.owner_of: dict[str, Callable[[Mapping[str, Any]], str | None]] = {}
        waking = {r.kind}
        for o in lifecycle.owns:
            self.declared[o.kind.kind] = o.kind
            self.owner_of[o.kind.kind] = o.owner
            if o.wakes_owner:
                waking.add(o.kind.kind)
        for w in lifecycle.watches:
            self.declared[w.kind.kind] = w.kind
            if w.owner is not None:
                self.owner_of[w.kind.kind] = w.owner
                waking.add(w.kind.kind)
        self.kinds: tuple[str, ...] = tuple(self.declared)
        self.waking_kinds = frozenset(waking)
        self.children = {k: _Children(self, k) for k in self.kinds if k != r.kind}
        self._handler: Callable[[str], None] | None = None
        self._parsed: dict[str, tuple[str, Any]] = {}
        self._claim_labels: dict[str, Mapping[str, str]] = {}
        cluster.register(self)

    # ------------------------------------------------------------------ events

    def set_event_handler(self, handler: Callable[[str], None]) -> None:
        self._handler = handler

    def notify(self, key: str) -> None:
        if self._handler is not None:
            self._handler(key)

    def token(self, key: str) -> str:
        return f"{self.kind}:{key}"

    # ------------------------------------------------------------------ observe

    def _document(self, kind: str, obj: Any) -> dict[str, Any] | None:
        if obj is None or isinstance(obj, dict):
            return obj
        if isinstance(obj, NodeClaim):
            return claim_document(obj, self._claim_labels.get(obj.name, {}))
        if isinstance(obj, Node):
            return node_document(obj)
        raise TypeError(f"no document for {type(obj).__name__}")

    def _parse(self, key: str, raw: dict[str, Any]) -> Any:
        rv = raw["metadata"].get("resourceVersion", "")
        hit = self._parsed.get(key)
        if hit is not None and hit[0] == rv:
            return hit[1]
        obj = (self.lifecycle.parse or Resource.from_dict)(raw)
        self._parsed[key] = (rv, obj)
        return obj

    def observe(self, key: str) -> tuple[Any | None, Any]:
        raw = self.cluster.observed_object(self.kind, key)
        if raw is None:
            self._parsed.pop(key, None)
            return None, SimOwned()
        obj = self._parse(key, raw)
        if self._snapshot is not None:
            return obj, self._snapshot(obj, self)
        return obj, SimOwned({k: tuple(self.owned(k, key)) for k in self.owner_of})

    def owned(self, kind: str, key: str) -> list[dict[str, Any]]:
        """The ``kind`` children of ``key`` in the cache (by the owner index: no scan), as documents."""
        docs = (self._document(kind, o) for o in self.cluster.cached_children(kind, self.token(key)))
        return sorted((d for d in docs if d is not None), key=lambda d: d["metadata"]["name"])

    def confirmed_absent(self, name: str, obj: Any) -> bool:
        """Positive knowledge that ``"Kind/name"`` (a child of ``obj``) is gone (see SimCluster.absent)."""
        kind, _, short = name.partition("/")
        k = self.declared.get(kind)
        if k is None:
            return False
        return self.cluster.absent(kind, f"{obj.metadata.namespace}/{short}" if k.namespaced else short, self.name)

    # ------------------------------------------------------------------ apply

    def apply(self, obj: Any, actions: Sequence[Any]) -> None:
        for action in actions:
            self._apply(obj, action)

    def _kind(self, api_version: str, kind: str) -> Kind:
        k = self.declared.get(kind)
        if k is None or k.api_version != api_version:
            raise AdapterError(f"{kind} ({api_version}) is not declared by lifecycle {self.name}: "
                               f"add it to its owns= or watches=")
        return k

    def _apply(self, obj: Any, a: Any) -> None:
        c = self.cluster
        m = obj.metadata
        if isinstance(a, E.Create):
            body = _thaw(a.manifest)
            k = self._kind(body.get("apiVersion", ""), body.get("kind", ""))
            meta = body.setdefault("metadata", {})
            if k.namespaced:
                meta.setdefault("namespace", m.namespace)
            if a.owned:
                r = self.resource
                meta.setdefault("ownerReferences", []).append(
                    {"apiVersion": r.api_version, "kind": r.kind, "name": m.name, "uid": m.uid, "controller": True,
                     "blockOwnerDeletion": True})
            c._write("create", k.kind, self.name)
            key = f"{meta['namespace']}/{meta['name']}" if k.namespaced else str(meta["name"])
            owner_fn = self.owner_of.get(k.kind)
            owned_by = owner_fn(body) if owner_fn is not None else None
            token = self.token(owned_by or obj.key)
            if k.kind == "NodeClaim":
                c._own_known.add(("NodeClaim", key))
                if key not in c._claims:  # else AlreadyExists
                    labels = dict(meta.get("labels") or {})
                    self._claim_labels[key] = labels
                    c.create_nodeclaim(key, token, _instance_type(body), labels)
            else:
                c.create_child(k.kind, key, body, token, m.uid if a.owned else "")
        elif isinstance(a, E.Patch):
            k = self._kind(a.api_version, a.kind)
            c._write("patch", k.kind, self.name)
            key = f"{m.namespace}/{a.name}" if k.namespaced else a.name
            if not c.patch_child(k.kind, key, _thaw(a.patch)):
                raise AdapterError(f"patching {k.kind} {a.name} of {obj.key}: not found (404)", refused=True)
        elif isinstance(a, E.Delete):
            k = self._kind(a.api_version, a.kind)
            c._write("delete", k.kind, self.name)
            key = f"{m.namespace}/{a.name}" if k.namespaced else a.name
            c._own_known.discard((k.kind, key))
            if k.kind == "NodeClaim":
                claim = c._claims.get(key)
                if claim is not None and not claim.deleting:
                    c._delete_claim(key)
            else:
                c.delete_child(k.kind, key)
        elif isinstance(a, (E.AddFinalizer, E.RemoveFinalizer)):
            self._finalizer(obj, a)
        elif isinstance(a, E.RecordEvent):
            c._count("create", "Event", self.name)
            c.events.append((c.now, self.token(obj.key), a.type, a.reason, a.message))
        elif self._render is not None:
            for generic in self._render(a, obj):
                self._apply(obj, generic)
        else:
            raise AdapterError(f"lifecycle {self.name} asked for {type(a).__name__}, which this adapter cannot "
                               f"execute: declare render= to turn it into Create/Patch/Delete")

    def _finalizer(self, obj: Any, a: E.AddFinalizer | E.RemoveFinalizer) -> None:
        c, key = self.cluster, obj.key
        c._write("patch", self.kind, self.name)
        cur = c.object(self.kind, key)
        if cur is None:
            if isinstance(a, E.AddFinalizer):
                raise Conflict(f"add finalizer on {key}: the {self.kind} is gone")
            return
        meta = cur["metadata"]
        have = list(meta.get("finalizers") or ())
        if isinstance(a, E.AddFinalizer):
            if a.finalizer in have:
                return
            if meta.get("deletionTimestamp"):
                raise AdapterError(f"{self.kind} {key!r} is forbidden: no new finalizers can be added if the object "
                                   f"is being deleted")
            wanted = have + [a.finalizer]
        else:
            if a.finalizer not in have:
                return
            wanted = [f for f in have if f != a.finalizer]
            if meta.get("deletionTimestamp") and not wanted:
                c.remove_written(self.kind, key)
                return
        c.write_resource(self.kind, key, {**cur, "metadata": {**meta, "finalizers": wanted}},
                         own_patch_of=meta["resourceVersion"])

    # ------------------------------------------------------------------ persist

    def annotate(self, obj: Any, annotations: Iterable[tuple[str, str]]) -> None:
        """A record kept in an annotation: a metadata patch with the observed resourceVersion first."""
        c, key = self.cluster, obj.key
        c._write("patch", self.kind, self.name)
        cur = c.object(self.kind, key)
        if cur is None:
            raise Conflict(f"writing the record of {key}: the {self.kind} is gone")
        rv = self._current_rv(obj, cur, peek=True)
        if rv != cur["metadata"]["resourceVersion"]:
            raise Conflict(f"writing the record of {key}: the object has been modified")
        meta = cur["metadata"]
        c.write_resource(self.kind, key, {**cur, "metadata": {
            **meta, "annotations": {**(meta.get("annotations") or {}), **dict(annotations)}}},
            own_patch_of=meta["resourceVersion"])

    def _current_rv(self, obj: Any, cur: dict[str, Any], *, peek: bool = False) -> str:
        """The observed resourceVersion, followed through this adapter's own metadata patches since."""
        c = self.cluster
        own = c._obj_own_patches.get(self.token(obj.key), {}) if peek else c.own_patches(self.kind, obj.key)
        rv, seen = obj.metadata.resource_version, 0
        while rv != cur["metadata"]["resourceVersion"] and rv in own and seen < 64:
            rv, seen = own[rv], seen + 1
        return str(rv)

    def persist(self, obj: Any, status: Any) -> Any:
        c, key = self.cluster, obj.key
        c._write("update", f"{self.kind}/status", self.name)
        cur = c.object(self.kind, key)
        if cur is None:
            return obj.with_status(status)
        if self._current_rv(obj, cur) != cur["metadata"]["resourceVersion"]:
            raise Conflict(f"Operation cannot be fulfilled on {self.resource} {key!r}: the object has been modified; "
                           f"please apply your changes to the latest version and try again")
        body = status.to_dict()
        if body == (cur.get("status") or {}):
            return obj.with_status(status)
        new = c.write_resource(self.kind, key, {**cur, "status": body})
        written = obj.with_status(status)
        self._note_goal(key, written, int(new["metadata"].get("generation") or 1))
        return written

    def _note_goal(self, key: str, obj: Any, gen: int) -> None:
        rec = self.lifecycle.read_record(obj)
        if rec is None:
            return
        if rec.state in goal_states(self.lifecycle) and rec.generation >= gen:
            self.cluster.note_goal(self.token(key), rec.state, gen)


def goal_states(lifecycle: Any) -> frozenset[str]:
    """Where a resource of ``lifecycle`` has reached its goal: its terminal states and the states with no deadline
    that the machine only leaves on a change (for KAITO's RAGEngine: Ready). The initial and deleting states never
    count."""
    out = _GOALS.get(lifecycle)
    if out is None:
        out = _GOALS[lifecycle] = frozenset(
            s.name for s in lifecycle.state_table
            if s.name not in (lifecycle.initial, lifecycle.deleting) and (s.terminal or s.deadline is None))
    return out


_GOALS: dict[Any, frozenset[str]] = {}


def _instance_type(body: Mapping[str, Any]) -> str:
    for r in (body.get("spec") or {}).get("requirements") or ():
        if r.get("key") == "node.kubernetes.io/instance-type" and r.get("values"):
            return str(r["values"][0])
    return ""


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    return value
