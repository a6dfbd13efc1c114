"""GPU nodes through Karpenter NodeClaims: one building block for every KAITO lifecycle that needs nodes.

KAITO's Workspace and RAGEngine both get their GPU nodes this way: ``targetNodeCount`` NodeClaims with
deterministic names and the owner's labels, Ready nodes with the NVIDIA device plugin's capacity, failed
launches replaced, NodeClaims deleted before the finalizer goes. This module holds that behaviour once, as
pieces a lifecycle's rows name: the facts (:class:`NodeFacts`), guards, ``ensure`` steps, the deadline
consequence, timers, and the bookkeeping slot (:class:`NodeClaimBook`).

Never one NodeClaim too many, with any number of runners: a recorded NodeClaim counts as existing until it
is known gone (a tombstone or a 404, and no create of it can still land: ``Config.create_grace`` since it
was recorded, or this very pass's create was refused); the record is written before any create is sent;
NodeClaims above the target, however they came to exist, are deleted (not Ready first, then the newest).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import attrs

from workspace_fsm.engine import Facts, WakeUp, guard
from workspace_fsm.engine.objects import format_time, parse_time, whole_seconds
from workspace_fsm.kaito import actions as A
from workspace_fsm.kaito.model import LabelSelector, NodeClaim, Snapshot

__all__ = ["ABOVE_TARGET", "NodeClaimBook", "NodeFacts", "delete_nodeclaims", "ensure_nodeclaims", "forget_gone",
           "gpus_ready", "in_flight_wake", "loss_settled", "nodeclaim_name", "nodes_lost", "nodes_ready",
           "recheck_byo_nodes", "recheck_gpu_capacity", "replace_unready_nodeclaims", "trim_above_target",
           "nodes_confirmations", "drop_claim_marker", "workers_now", "loss_settle_left"]

#: DeleteNodeClaim reason and Warning Event reason for NodeClaims above targetNodeCount.
ABOVE_TARGET = "NodeClaimAboveTarget"


# ----------------------------------------------------------------------------- bookkeeping


@attrs.frozen
class NodeClaimBook:
    """What the record keeps of the owner's NodeClaims (a lifecycle's bookkeeping extends it)."""

    nodeclaims: tuple[str, ...] = ()  # NodeClaims it created and has not yet seen gone
    deleted: tuple[str, ...] = ()  # deletions it asked for ("NodeClaim/<name>", "Job/<name>@<revision>")
    next_seq: int = 0  # sequence for deterministic NodeClaim names
    claim_failures: int = 0  # NodeClaims that failed to launch, or were replaced at a deadline
    # When the newest NodeClaim name was recorded. Its create is sent right after that status write and
    # may still be applied by the API server until its request timeout has passed (Config.create_grace).
    claimed_at: datetime | None = None
    # Which pass recorded them (unique to one pass of one runner process, see decide's ``pass_id``). A
    # runner's in-memory knowledge that a create was never sent or was refused speaks for its own requests
    # only: it counts (Snapshot.refused) only for names this very pass recorded, never another writer's.
    claimed_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.nodeclaims:
            body["claims"] = list(self.nodeclaims)
        if self.deleted:
            body["deleted"] = list(self.deleted)
        if self.next_seq:
            body["seq"] = self.next_seq
        if self.claim_failures:
            body["failures"] = self.claim_failures
        if self.claimed_at is not None:
            body["claimed"] = format_time(self.claimed_at)
        if self.claimed_by:
            body["by"] = self.claimed_by
        return body

    @classmethod
    def fields_from_json(cls, body: Mapping[str, Any]) -> dict[str, Any]:
        fields = dict(
            nodeclaims=tuple(str(n) for n in body.get("claims", ())),
            deleted=tuple(str(n) for n in body.get("deleted", ())),
            next_seq=int(body.get("seq", 0)),
            claim_failures=int(body.get("failures", 0)),
            claimed_at=parse_time(body.get("claimed")),
            claimed_by=None if body.get("by") is None else str(body["by"]),
        )
        if not (0 <= fields["next_seq"] <= 10**9 and 0 <= fields["claim_failures"] <= 10**9):
            raise ValueError("NodeClaim counters out of range")
        return fields

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> NodeClaimBook:
        return cls(**cls.fields_from_json(body))


def nodeclaim_name(meta: Any, seq: int) -> str:
    """Deterministic: a stale cache then yields AlreadyExists, never a duplicate NodeClaim.

    The uid is part of the hash so that an owner deleted and created again under the same name never
    collides with its predecessor's NodeClaims that are still being deleted.
    """
    digest = hashlib.sha256(f"{meta.namespace}/{meta.name}/{meta.uid}".encode()).hexdigest()[:6]
    return f"{meta.name[:40].rstrip('-.')}-{digest}-{seq}"


# ----------------------------------------------------------------------------- facts


class NodeFacts(Facts):
    """The pass's facts about the owner's nodes, derived once from the snapshot and the record.

    A lifecycle's facts subclass this and call :meth:`observe_nodes` with what the owner asks for."""

    __slots__ = ("target", "claims", "unseen", "existing", "gone", "in_flight", "grace_ends", "ready_nodes",
                 "nodes_ready", "gpus_ready", "byo", "selector", "instance_type", "owner_labels", "has_compute",
                 "worker_nodes")

    def observe_nodes(self, target: int, has_compute: bool, byo: bool, selector: LabelSelector | None,
                      instance_type: str, owner_labels: tuple[tuple[str, str], ...],
                      worker_nodes: tuple[str, ...] | None) -> None:
        snap: Snapshot = self.snap
        book: NodeClaimBook = self.rec.data
        config, now = self.config, self.now
        self.target, self.has_compute, self.byo, self.selector = target, has_compute, byo, selector
        self.instance_type, self.owner_labels, self.worker_nodes = instance_type, owner_labels, worker_nodes
        self.claims: tuple[NodeClaim, ...] = snap.nodeclaims
        # Recorded NodeClaims known gone: confirmed absent, and no create of them can still be applied
        # (the grace since the newest was recorded has passed, or the server refused the create outright,
        # as this process knows of a create it sent itself: the refusal's pass is the one that recorded it).
        # A confirmed-absent one inside the grace is in flight: it counts as existing, and is neither
        # replaced nor forgotten, because a dead runner's create may still land.
        self.grace_ends = book.claimed_at + config.create_grace if book.claimed_at is not None else None
        if book.nodeclaims:
            seen = {c.name for c in self.claims}
            absent, refused = snap.absent, snap.refused
            settled = self.grace_ends is None or now >= self.grace_ends
            mine = book.claimed_by
            gone = []
            in_flight = []
            for n in book.nodeclaims:
                key = "NodeClaim/" + n
                if key in absent:
                    (gone if settled or (mine and refused.get(key) == mine) else in_flight).append(n)
            self.gone = frozenset(gone)
            self.in_flight = tuple(in_flight)
            # Created by the machine, not in the (possibly stale) cache, not known to be gone: exists.
            self.unseen = tuple(n for n in book.nodeclaims if n not in seen and n not in self.gone)
        else:
            self.gone = frozenset()
            self.in_flight = ()
            self.unseen = ()
        self.existing = len(self.claims) + len(self.unseen)
        nodes = snap.nodes
        ready: list[str] = []
        if byo:
            assert selector is not None
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
    def provisions(self) -> bool:
        """The machine creates NodeClaims for this owner (it asks for compute and brings no nodes of its own)."""
        return self.has_compute and not self.byo


# ----------------------------------------------------------------------------- guards


def _claims_shown(f: NodeFacts) -> str:
    if f.byo:
        return f"{len(f.ready_nodes)} of {f.target} Ready node(s) match the labelSelector"
    ready = sum(1 for c in f.claims if c.is_ready)
    lines = [f"{ready} of {f.target} NodeClaim(s) Ready"]
    for c in f.claims:
        if not c.is_ready:
            lines.append(f"{c.name} Launched={c.launched} Registered={c.registered} Initialized={c.initialized}"
                         + (" (deleting)" if c.deleting else ""))
    if f.unseen:
        lines.append(f"recorded, not yet seen: {', '.join(f.unseen)}")
    return "; ".join(lines)


@guard(shows=_claims_shown)
def nodes_ready(f: NodeFacts) -> bool:
    """targetNodeCount NodeClaims are Ready and their Nodes report Ready."""
    return f.nodes_ready


def loss_settled(f: NodeFacts) -> bool:
    """The state has been held for Config.loss_settle: a loss seen now is not a lagging cache's echo."""
    entered = f.rec.entered_at
    return entered is None or f.now >= entered + f.config.loss_settle


@guard(shows=_claims_shown)
def nodes_lost(f: NodeFacts) -> bool:
    """Fewer ready nodes than targetNodeCount: a NodeClaim deleted, failed or gone, or unready past loss_settle.

    Readiness alone counts only once the state has been held for Config.loss_settle, so that a cache lagging
    the runner that entered the state cannot flap it back."""
    if f.nodes_ready:
        return False
    # Positive evidence of a loss is acted on at once: a NodeClaim being deleted or failed, or one known gone.
    return loss_settled(f) or bool(f.gone) or any(c.deleting or c.failed for c in f.claims)


def _gpus_shown(f: NodeFacts) -> str:
    nodes = f.snap.nodes
    parts = [f"{n}: nvidia.com/gpu={nodes[n].gpu_capacity}" for n in f.ready_nodes if n in nodes]
    return "; ".join(parts) or "no Ready nodes yet"


@guard(shows=_gpus_shown)
def gpus_ready(f: NodeFacts) -> bool:
    """Every node advertises nvidia.com/gpu capacity (the device plugin is up)."""
    return f.gpus_ready


# ----------------------------------------------------------------------------- steps


def _merge_claims(book: NodeClaimBook, f: NodeFacts, cap: int | None = None,
                  skip: frozenset[str] | set[str] = frozenset(), marked: set[str] | None = None) -> tuple[str, ...]:
    """The NodeClaims the machine knows of: recorded ones not known gone, plus observed ones with its labels.

    With ``cap`` (the target), an observed NodeClaim the record does not hold is adopted only while the
    record holds fewer live ones than that, and never one being deleted or in ``skip`` (chosen to go): the
    record never adopts a NodeClaim above target. Without it (deletion), every one is adopted, so the
    finalizer stays until each is gone. ``marked``: this pass's deletion marks (default: the record's).
    """
    gone = f.gone
    keep = [n for n in book.nodeclaims if n not in gone] if gone else book.nodeclaims
    known = set(keep)
    extra = sorted(c.name for c in f.claims if c.name not in known)
    if extra and cap is not None:
        marked = set(book.deleted) if marked is None else marked
        room = cap - sum(1 for n in keep if "NodeClaim/" + n not in marked)
        deleting = {c.name for c in f.claims if c.deleting}
        extra = [n for n in extra if n not in deleting and n not in skip][:max(room, 0)]
    if not extra and len(keep) == len(book.nodeclaims):
        return book.nodeclaims
    return tuple(keep) + tuple(extra)


def _above_target(f: NodeFacts, deleted: set[str]) -> tuple[list[str], int]:
    """NodeClaims to delete because more are live than targetNodeCount, however they came to exist (another
    writer, a hand-made one with the owner's labels, an older runner). Live: not being deleted and not
    asked to go; recorded ones not yet in the cache count too, but only ones the cache shows can be chosen.
    Chosen in order: not Ready before Ready, then the newest; one that backs a worker node (a Ready claim
    whose Node serves the owner) goes only when no other can."""
    if len(f.claims) + len(f.unseen) <= f.target or f.target <= 0:
        return [], 0  # the common case, decided without building anything
    live = [c for c in f.claims if not c.deleting and ("NodeClaim/" + c.name) not in deleted]
    total = len(live) + sum(1 for n in f.unseen if ("NodeClaim/" + n) not in deleted)
    over = total - f.target
    if over <= 0:
        return [], total
    workers = set(f.worker_nodes or ()) | set(f.ready_nodes)
    far_future = 1e18

    def order(c: NodeClaim) -> tuple[Any, ...]:
        created = c.created_at.timestamp() if c.created_at is not None else far_future
        backs = c.is_ready and c.node_name in workers
        return (backs, c.is_ready, -created, tuple(-ord(ch) for ch in c.name))

    return [c.name for c in sorted(live, key=order)[:over]], total


def _remove_above_target(f: NodeFacts, deleted: set[str], out: list[Any]) -> set[str]:
    victims, live = _above_target(f, deleted)
    if victims:
        kind = f.obj.kind
        for name in victims:
            out.append(A.DeleteNodeClaim(name, ABOVE_TARGET))
            deleted.add("NodeClaim/" + name)
        out.append(A.RecordEvent("Warning", ABOVE_TARGET,
                                 f"{kind} {f.obj.key} has {live} live NodeClaims for a targetNodeCount of {f.target}; "
                                 f"deleting {', '.join(victims)} (not Ready first, then the newest). If you made one "
                                 f"by hand with the {kind}'s labels, remove those labels to keep it"))
    return set(victims)


def _next_free_seq(meta: Any, names: tuple[str, ...]) -> int:
    """One past the highest sequence number among this owner's deterministic NodeClaim names."""
    base = nodeclaim_name(meta, 0)[:-1]
    top = -1
    for n in names:
        if n.startswith(base) and n[len(base):].isdigit():
            top = max(top, int(n[len(base):]))
    return top + 1


def _prune_deleted(deleted: set[str], claims: tuple[str, ...], observed: tuple[NodeClaim, ...] = ()) -> tuple[str, ...]:
    """Deletion marks for NodeClaims are kept only while the claim is still known (recorded or in the cache)."""
    known = set(claims) | {c.name for c in observed}
    return tuple(sorted(d for d in deleted if not d.startswith("NodeClaim/") or d[len("NodeClaim/"):] in known))


def ensure_nodeclaims(f: NodeFacts, book: NodeClaimBook, out: list[Any]) -> NodeClaimBook:
    """targetNodeCount NodeClaims exist: failed ones deleted and replaced, ones above target deleted, the
    missing ones recorded (this pass's status write) and then created under fresh deterministic names."""
    if not f.provisions:
        return book
    if f.existing == f.target and not f.gone and not any(c.failed for c in f.claims):
        # The steady state, decided without building anything: no failure, none above target, none missing,
        # and nothing to adopt (every NodeClaim the cache shows is recorded).
        recorded = book.nodeclaims
        if all(c.name in recorded for c in f.claims):
            return book
    meta = f.obj.metadata
    deleted = set(book.deleted)
    failures = book.claim_failures
    for c in f.claims:
        if c.failed and ("NodeClaim/" + c.name) not in deleted:
            out.append(A.DeleteNodeClaim(c.name, c.failure_reason or "LaunchFailed"))
            out.append(A.RecordEvent("Warning", "NodeClaimFailed",
                                     f"NodeClaim {c.name} failed to launch ({c.failure_reason or 'no reason given'}); "
                                     f"it is deleted and will be replaced"))
            deleted.add("NodeClaim/" + c.name)
            failures += 1
    victims = _remove_above_target(f, deleted, out)
    claims = _merge_claims(book, f, cap=f.target, skip=victims, marked=deleted)
    missing = f.target - f.existing
    seq = book.next_seq
    if missing > 0 and failures < f.config.max_nodeclaim_failures:
        # Never reuse a name: a cache that saw an old NodeClaim of that name go would take the new one for gone.
        # Nor one just known gone, nor one the cache shows: an adopted NodeClaim never advanced the sequence.
        taken = set(claims) | {c.name for c in f.claims} | set(f.gone)
        seq = max(seq, _next_free_seq(meta, tuple(taken)))
        new = []
        while len(new) < missing:
            name = nodeclaim_name(meta, seq)
            seq += 1
            if name in taken:  # a recorded name never reused, even if its record was lost
                continue
            new.append(name)
            out.append(A.CreateNodeClaim(name, f.instance_type, f.owner_labels, f.pass_id))
        claims = claims + tuple(new)
        if new:
            book = attrs.evolve(book, claimed_at=whole_seconds(f.now), claimed_by=f.pass_id or None)
    if claims is book.nodeclaims and seq == book.next_seq and failures == book.claim_failures \
            and len(deleted) == len(book.deleted):
        return book
    return attrs.evolve(book, nodeclaims=claims, next_seq=seq, claim_failures=failures,
                        deleted=_prune_deleted(deleted, claims, f.claims))


def trim_above_target(f: NodeFacts, book: NodeClaimBook, out: list[Any]) -> NodeClaimBook:
    """In states that create no NodeClaims: only delete the ones above target."""
    if not f.provisions or not f.claims:
        return book
    deleted = set(book.deleted)
    if not _remove_above_target(f, deleted, out):
        return book
    return attrs.evolve(book, deleted=_prune_deleted(deleted, book.nodeclaims, f.claims))


def forget_gone(f: NodeFacts, book: NodeClaimBook, out: list[Any]) -> NodeClaimBook:
    """Recorded NodeClaims known gone leave the record."""
    if book.nodeclaims and f.gone:
        claims = _merge_claims(book, f, cap=f.target)
        if claims is not book.nodeclaims:
            return attrs.evolve(book, nodeclaims=claims)
    return book


def delete_nodeclaims(f: NodeFacts, book: NodeClaimBook, out: list[Any]) -> NodeClaimBook:
    """Deletion: every NodeClaim of the owner is deleted, then the finalizer removed once all are gone."""
    deleted = set(book.deleted)
    claims = _merge_claims(book, f)
    observed = {c.name: c for c in f.claims}
    in_flight = set(f.in_flight)
    for name in claims:
        c = observed.get(name)
        if name in in_flight:
            continue  # its create may still land: deleted once it shows up, or forgotten once the grace is over
        if (c is None or not c.deleting) and ("NodeClaim/" + name) not in deleted:
            out.append(A.DeleteNodeClaim(name, f"{f.obj.kind}Deleting"))
            deleted.add("NodeClaim/" + name)
    # Not yet known gone: still there, or confirmed absent while a create of it may still land (an orphan).
    remaining = [n for n in claims if n not in f.gone]
    finalizer = f.config.finalizer
    if not remaining and f.obj.metadata.deletion_timestamp is not None and finalizer in f.obj.metadata.finalizers:
        out.append(A.RemoveFinalizer(finalizer))
    if claims is book.nodeclaims and len(deleted) == len(book.deleted):
        return book
    return attrs.evolve(book, nodeclaims=claims, deleted=tuple(sorted(deleted)))


# ----------------------------------------------------------------------------- deadline


def replace_unready_nodeclaims(f: NodeFacts, book: NodeClaimBook, out: list[Any]) -> NodeClaimBook:
    """NodeClaims still not Ready at the deadline are deleted (and so replaced); each counts as a failure."""
    deleted = set(book.deleted)
    replaced = []
    serving = set(f.ready_nodes)
    for c in f.claims:
        # Unready: the claim is not Ready, or its Node never became Ready (it serves nothing).
        if not c.deleting and ("NodeClaim/" + c.name) not in deleted and not (c.is_ready and c.node_name in serving):
            replaced.append(c.name)
    # Not yet in the cache: replaced too; but not one whose create may still be in flight (a delete now
    # would 404 and the create could land after it): the grace settles those.
    replaced.extend(n for n in f.unseen if ("NodeClaim/" + n) not in deleted and n not in f.in_flight)
    state = f.rec.state
    declared = f.lifecycle.states[state].deadline
    reason = declared.reason if declared is not None else "NodeClaimNotReady"
    for name in replaced:
        out.append(A.DeleteNodeClaim(name, reason))
        deleted.add("NodeClaim/" + name)
    out.append(A.RecordEvent("Warning", reason,
                             f"{f.obj.kind} {f.obj.key}: {len(replaced)} NodeClaim(s) not Ready "
                             f"{f.lifecycle.deadline(state, f.config)} after provisioning started; replacing them "
                             f"(attempt {f.rec.attempts + 1} of {declared.max_firings if declared else 1})"))
    return attrs.evolve(book, deleted=tuple(sorted(deleted)), claim_failures=book.claim_failures + len(replaced))


# ----------------------------------------------------------------------------- timers and record


def workers_now(f: NodeFacts) -> Mapping[str, Any]:
    """status.workerNodes: the Ready nodes serving the owner."""
    return {"workerNodes": f.ready_nodes} if f.ready_nodes else {}


def loss_settle_left(f: NodeFacts) -> timedelta | None:
    """How long until the state has been held for Config.loss_settle (None once it has: a loss then counts)."""
    entered = f.rec.entered_at
    if entered is None or f.now >= entered + f.config.loss_settle:
        return None
    return entered + f.config.loss_settle - f.now


def recheck_gpu_capacity(f: NodeFacts) -> WakeUp | None:
    """Nodes are not watched (large clusters): their GPU capacity is re-checked on a timer."""
    return WakeUp(f.config.gpu_recheck, "re-check node GPU capacity (Nodes are not watched)")


def recheck_byo_nodes(f: NodeFacts) -> WakeUp | None:
    """Bring-your-own nodes are not watched either: their readiness is re-checked on the same timer."""
    return recheck_gpu_capacity(f) if f.byo else None


def in_flight_wake(f: NodeFacts) -> WakeUp | None:
    """Confirmed absent but its create may still be applied: look again once that can no longer happen."""
    if f.in_flight and f.grace_ends is not None:
        left = max(f.grace_ends - f.now, timedelta(0))
        return WakeUp(left, f"NodeClaim {f.in_flight[0]} not found; its create may still be in flight, "
                            f"replaced if still absent after {f.config.create_grace}")
    return None


def drop_claim_marker(f: NodeFacts, book: NodeClaimBook) -> NodeClaimBook:
    """No create of a recorded NodeClaim can still be applied: the grace has passed, or every recorded one
    has been seen (each name is created once, by the pass that recorded it, so a seen one has landed).
    The marker is then dropped, in a status write made anyway (never worth one of its own)."""
    if book.claimed_at is None:
        return book
    if f.now < book.claimed_at + f.config.create_grace:
        seen = {c.name for c in f.claims}
        if not all(n in seen for n in book.nodeclaims):
            return book
    return attrs.evolve(book, claimed_at=None, claimed_by=None)


def nodes_confirmations(book: NodeClaimBook) -> set[str]:
    """``"NodeClaim/<name>"`` for every recorded NodeClaim: their absence must be known positively."""
    return {"NodeClaim/" + n for n in book.nodeclaims}
