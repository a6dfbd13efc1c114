"""The pure interpreter: ``decide(lifecycle, obj, snapshot, now, config) -> Decision``.

Nothing here blocks, sleeps, reads a clock or does I/O: time comes in as ``now``, the cluster as a
snapshot, and what must happen goes out as actions plus a wake-up. A pass:

1. reads the persisted record from the resource;
2. fires the current state's deadline if it has passed (once per firing: the firing is recorded);
3. follows enabled edges of the lifecycle's machine (several in one pass when the snapshot allows, but
   never back into a state it already entered in this pass);
4. runs the ``ensure`` steps of the state it ends in: each asks, level-based and idempotently, for what
   is still missing, and returns the bookkeeping it changed;
5. projects the whole status in one place (the state's conditions and summary, the lifecycle's fields,
   the record) and says when to look again.

A resource whose spec is invalid is acted on not at all: the machine stays where it is, says why in the
lifecycle's ``invalid`` condition and a Warning Event, and waits for the spec to be fixed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs

from workspace_fsm.engine import actions as A
from workspace_fsm.engine.declare import Config, GoTo, Lifecycle, Report, Run
from workspace_fsm.engine.objects import Condition, format_time, whole_seconds
from workspace_fsm.engine.record import HistoryEntry, Record

__all__ = ["Decision", "decide", "merge_conditions"]



@attrs.frozen
class Decision:
    """The outcome of a pass. ``before`` runs first, then the status write (if ``status_changed``), then
    ``after`` (creations, then the rest, then Events): nothing is created that the persisted record does not
    already hold."""

    status: Any
    before: tuple[Any, ...]
    wake: A.WakeUp
    state: str
    transitions: tuple[HistoryEntry, ...] = ()
    status_changed: bool = True
    after: tuple[Any, ...] = ()
    record: Record[Any] | None = None  # the record as this pass leaves it
    annotations: tuple[tuple[str, str], ...] = ()  # metadata annotations to write first (AnnotationStore)

    @property
    def actions(self) -> tuple[Any, ...]:
        """Every action in the order they are applied (the status write falls between before and after)."""
        return self.before + self.after

    @property
    def mutating_actions(self) -> tuple[Any, ...]:
        return tuple(a for a in self.actions if not isinstance(a, A.RecordEvent))


def merge_conditions(previous: Sequence[Condition], wanted: Iterable[tuple[str, str, str, str]], stamp: datetime,
                     generation: int, managed: frozenset[str]) -> tuple[Condition, ...]:
    """The wanted conditions; ``lastTransitionTime`` moves only when a status changes. Conditions of types the
    lifecycle does not manage (another controller's) are kept as they are."""
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
    for c in previous:
        if c.type not in wanted_types and c.type not in managed:
            result.append(c)
    return tuple(result)


def _enter(rec: Record[Any], source: str, dest: str, stamp: datetime, why: str, limit: int) -> Record[Any]:
    entry = HistoryEntry(source, dest, format_time(stamp), why)
    history = (rec.history + (entry,))[-limit:]
    return Record(dest, rec.data, stamp, 0, rec.generation, history, rec.since)


def _with_data(rec: Record[Any], data: Any) -> Record[Any]:
    # A pass changes the bookkeeping often: built directly, which costs a third of attrs.evolve.
    return Record(rec.state, data, rec.entered_at, rec.attempts, rec.generation, rec.history, rec.since)


def _record_condition(lc: Lifecycle[Any], obj: Any, rec: Record[Any], stamp: datetime,
                      read: Record[Any] | None) -> tuple[Condition, ...]:
    store = lc.record.store
    if store.kind != "condition":
        return ()
    if rec is read:
        old = obj.status.condition(store.type)
        if old is not None:
            return (old,)  # unchanged record: no need to serialise it again
    return (lc.record.to_condition(rec, stamp),)


def _record_annotation(lc: Lifecycle[Any], obj: Any, rec: Record[Any],
                       read: Record[Any] | None) -> tuple[tuple[str, str], ...]:
    store = lc.record.store
    if store.kind != "annotation" or rec is read:
        return ()
    text = lc.record.encode(rec)
    return () if obj.metadata.annotations.get(store.key) == text else ((store.key, text),)


def _status(lc: Lifecycle[Any], obj: Any, f: Any, state: str, rec: Record[Any], stamp: datetime,
            read: Record[Any] | None) -> Any:
    spec = lc.states[state]
    wanted = spec.conditions(f) if spec.conditions is not None else ()
    conds = merge_conditions(obj.status.conditions, wanted, stamp, obj.metadata.generation, lc.owned_conditions)
    summary = spec.summary(f) if callable(spec.summary) else spec.summary
    fields = spec.fields(f) if spec.fields is not None else None
    return lc.project(obj, f, state, conds + _record_condition(lc, obj, rec, stamp, read), summary, fields)


def _invalid(lc: Lifecycle[Any], obj: Any, rec: Record[Any] | None, stamp: datetime) -> Decision:
    read = rec
    first = obj.problems[0]
    text = "; ".join(str(p) for p in obj.problems)
    message = f"the spec is invalid and nothing new is created for it: {text}. Fix the manifest and apply it again"
    wanted = [(lc.invalid, "False", first.reason, message[:32000])] if lc.invalid else []
    state = rec.state if rec is not None else lc.initial
    rec = rec or Record(state=lc.initial, data=lc.record.data(), entered_at=stamp, generation=0, since=stamp)
    conds = merge_conditions(obj.status.conditions, wanted, stamp, obj.metadata.generation, lc.owned_conditions)
    status = lc.project(obj, None, None, conds + _record_condition(lc, obj, rec, stamp, read), None, None)
    annotations = _record_annotation(lc, obj, rec, read)
    changed = status != obj.status or bool(annotations)
    acts: tuple[Any, ...] = ()
    if changed:
        acts = (A.RecordEvent("Warning", first.reason, f"{lc.resource.kind} {obj.key}: {message}"),)
    return Decision(status, (), A.WakeUp.on_event("invalid spec: waiting for it to be fixed"), state, (), changed,
                    acts, rec, annotations)


def _fire_deadline(lc: Lifecycle[Any], state: str, f: Any, rec: Record[Any], stamp: datetime, out: list[Any],
                   config: Config) -> tuple[str, Record[Any]]:
    d = lc.states[state].deadline
    assert d is not None
    kind, key = lc.resource.kind, f.obj.key
    after = lc.deadline(state, config)
    then = d.then
    if isinstance(then, Run):
        data = then.fn(f, rec.data, out)
        changes: dict[str, Any] = {"attempts": rec.attempts + 1, "data": data}
        if then.restart:
            changes["entered_at"] = stamp
        return state, attrs.evolve(rec, **changes)
    if isinstance(then, GoTo):
        out.append(A.RecordEvent("Warning", d.reason, f"{kind} {key}: {state} exceeded its deadline of {after}; "
                                                      f"marking it {then.state}"))
        rec = _enter(attrs.evolve(rec, attempts=rec.attempts + 1), state, then.state, stamp, "deadline:" + d.reason,
                     config.history_limit)
        return then.state, rec
    assert isinstance(then, Report)
    out.append(A.RecordEvent("Warning", d.reason, f"{kind} {key}: still in {state} {after} after entering it "
                                                  f"({d.reason}); check the objects it waits for"))
    return state, attrs.evolve(rec, attempts=rec.attempts + 1)


def _wake(lc: Lifecycle[Any], state: str, f: Any, rec: Record[Any], config: Config) -> A.WakeUp:
    spec = lc.states[state]
    best: A.WakeUp | None = None
    d = spec.deadline
    after = lc.deadline(state, config)
    if d is not None and after is not None and rec.attempts < d.max_firings and rec.entered_at is not None:
        left = rec.entered_at + after - f.now
        best = A.WakeUp(max(left, timedelta(0)), f"{state} deadline ({d.reason})")
    for timer in lc.timers[state]:
        w = timer(f)
        if w is not None and w.after is not None and (best is None or w.after < best.after):  # type: ignore[operator]
            best = w
    return best or A.WakeUp.on_event(f"{state}: waiting for the next watch event")


def decide(lc: Lifecycle[Any], obj: Any, snapshot: Any, now: datetime, config: Config | None = None, *,
           pass_id: str = "") -> Decision:
    """One pass of ``lc``'s machine for ``obj``. Pure and deterministic.

    ``pass_id`` names this pass uniquely among every runner that writes the resource (a runner makes it from
    a random per-process id and a counter). Steps may record it with what the pass creates, so that what one
    runner knows of its own creates (never sent, refused) is never applied to another runner's.
    """
    config = config if config is not None else lc.config
    stamp = whole_seconds(now)
    rec = read = lc.record.read(obj)
    meta = obj.metadata
    deleting = meta.deletion_timestamp is not None
    if obj.problems and not deleting:
        return _invalid(lc, obj, rec, stamp)
    if rec is None:
        rec = Record(state=lc.initial, data=lc.record.data(), entered_at=stamp, generation=meta.generation, since=stamp)
    f = lc.facts(obj, snapshot, now, config, rec, pass_id)
    f.lifecycle = lc
    out: list[Any] = []
    taken: list[HistoryEntry] = []
    states = lc.states
    state = rec.state if rec.state in states else lc.initial
    if state == lc.deleting and not deleting:
        # A record that says deleting on a resource nobody is deleting (edited by hand, restored from a
        # backup): start over from the initial state; everything recorded is still counted, nothing is lost.
        rec = _enter(rec, state, lc.initial, stamp, "not_being_deleted", config.history_limit)
        taken.append(rec.history[-1])
        state = lc.initial
        f.rec = rec

    spec = states[state]
    if spec.deadline is not None and rec.entered_at is not None and rec.attempts < spec.deadline.max_firings \
            and not (deleting and state != lc.deleting):
        after = lc.deadline(state, config)
        if after is not None and now >= rec.entered_at + after:
            new_state, rec = _fire_deadline(lc, state, f, rec, stamp, out, config)
            if new_state != state:
                taken.append(rec.history[-1])
            state = new_state
            f.rec = rec

    visited = {state}
    kind, key = lc.resource.kind, obj.key
    for _ in range(len(states)):
        nxt = lc.step(state, f)
        if nxt is None or nxt in visited:
            # A state is entered at most once per pass: on one snapshot, coming back would be a
            # ping-pong between guards, never progress (tests assert it does not happen).
            break
        visited.add(nxt)
        why = lc.why(state, nxt)
        rec = _enter(rec, state, nxt, stamp, why, config.history_limit)
        taken.append(rec.history[-1])
        out.append(A.RecordEvent("Normal", nxt, f"{kind} {key}: {state} -> {nxt} ({why})"))
        state = nxt
        f.rec = rec

    if rec.generation != meta.generation:
        rec = Record(rec.state, rec.data, rec.entered_at, rec.attempts, meta.generation, rec.history, rec.since)
        f.rec = rec
    finalizer = config.finalizer or lc.finalizer
    if finalizer and state != lc.deleting and finalizer not in meta.finalizers:
        out.append(A.AddFinalizer(finalizer))
    data = rec.data
    for step in states[state].ensure:
        data = step(f, data, out)
    if data is not rec.data:
        rec = _with_data(rec, data)
        f.rec = rec

    status = _status(lc, obj, f, state, rec, stamp, read)
    annotations = _record_annotation(lc, obj, rec, read) if lc.record.store.kind == "annotation" else ()
    changed = status != obj.status or bool(annotations)
    if changed and lc.on_write is not None:
        # Written anyway: bookkeeping worth no write of its own is trimmed in the same write.
        trimmed = lc.on_write(f, rec.data)
        if trimmed is not rec.data:
            rec = _with_data(rec, trimmed)
            f.rec = rec
            status = _status(lc, obj, f, state, rec, stamp, read)
            annotations = _record_annotation(lc, obj, rec, read)
    before: list[Any] = []
    creates: list[Any] = []
    last: list[Any] = []
    events: list[Any] = []
    for a in out:
        phase = getattr(a, "phase", "after")
        (before if phase == "before" else creates if phase == "create" else events if phase == "event"
         else last).append(a)
    return Decision(status, tuple(before), _wake(lc, state, f, rec, config), state, tuple(taken), changed,
                    tuple(creates + last + events), rec, annotations)
