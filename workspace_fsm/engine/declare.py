"""Declaring a lifecycle: states, guarded edges, what must exist per state, and how status is projected.

A lifecycle reads like a table. Each :class:`State` row holds everything the machine does in that state:
its doc, the steps that ask for what must exist (``ensure``), its deadline and what happens when it
passes, the timers it wakes on, and the conditions and summary it projects onto the resource's status.
Each :class:`Edge` is a guarded transition; out of one state the first edge whose guard holds is taken.
The table is loaded into a ``transitions`` Machine (one per lifecycle, no model bound per resource) when
the :class:`Lifecycle` is built, and checked then: unknown states, unreachable states, unnamed guards and
duplicate rows are errors at import time, not at 3 a.m.

Guards, steps, timers and projections are pure functions of the pass's facts (the resource, a snapshot of
what it owns, ``now``, the configuration and the persisted record): they answer at once and never wait.
Waiting is a state plus a wake-up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

import attrs
from transitions import Machine

from workspace_fsm.engine.actions import Action, WakeUp
from workspace_fsm.engine.kinds import Kind, Owns, Watches
from workspace_fsm.engine.objects import Condition
from workspace_fsm.engine.record import ConditionStore, NoBookkeeping, Record, RecordFormat

if TYPE_CHECKING:
    from workspace_fsm.engine.interpret import Decision

__all__ = ["Config", "Deadline", "Edge", "Facts", "GoTo", "Invariant", "Lifecycle", "LifecycleError", "Report",
           "Run", "State", "guard"]

TRIGGER = "advance"
F = TypeVar("F", bound="Facts")


@attrs.frozen
class Config:
    """Knobs every lifecycle has. A lifecycle may subclass it (attrs) to add its own."""

    deadlines: Mapping[str, timedelta] = attrs.field(factory=dict)  # per-state overrides of the declared deadlines
    history_limit: int = 16  # transitions kept in the record
    # A create may still be applied by the API server until its request timeout after it was sent, even if
    # the runner that sent it died. Runners send a pass's creates within create_send_window of its ``now``
    # (or not at all), so an object recorded and then found absent is in flight for create_grace.
    api_request_timeout: timedelta = timedelta(seconds=60)
    create_send_window: timedelta = timedelta(seconds=15)
    finalizer: str = ""  # "" = the lifecycle's own

    @property
    def create_grace(self) -> timedelta:
        """Recorded-to-landed bound of a create: send window + request timeout + the record's 1 s resolution."""
        return self.create_send_window + self.api_request_timeout + timedelta(seconds=1)


class Facts:
    """What guards, steps and projections read in one pass. A lifecycle may subclass it to derive its own
    facts once per pass (counts, readiness) instead of in every guard; the engine keeps ``rec`` current."""

    __slots__ = ("obj", "snap", "now", "config", "rec", "pass_id", "lifecycle")

    def __init__(self, obj: Any, snap: Any, now: datetime, config: Any, rec: Record[Any], pass_id: str = "") -> None:
        self.obj, self.snap, self.now, self.config, self.rec, self.pass_id = obj, snap, now, config, rec, pass_id
        self.lifecycle: Lifecycle[Any] | None = None  # set by the interpreter: the lifecycle deciding

    @property
    def data(self) -> Any:
        """The lifecycle's own bookkeeping in the record."""
        return self.rec.data

    @property
    def deadline_fired(self) -> bool:
        """The current state's deadline has fired since the state was entered (conditions say so)."""
        lc = self.lifecycle
        return self.rec.attempts > 0 and lc is not None and lc.states[self.rec.state].deadline is not None


G = TypeVar("G", bound=Callable[..., bool])


@overload
def guard(fn: G, *, shows: Callable[[Any], str] | None = None) -> G: ...


@overload
def guard(fn: None = None, *, shows: Callable[[Any], str] | None = None) -> Callable[[G], G]: ...


def guard(fn: Callable[..., bool] | None = None, *, shows: Callable[[Any], str] | None = None) -> Any:
    """Mark a guard and say which fact it reads: ``shows(facts)`` is what ``workspace-fsm explain`` prints
    beside the guard's value ("1 of 2 NodeClaims Ready; ws-a-1 Launched=False"). Plain functions are guards
    too; this only adds the explanation."""

    def mark(f: Callable[..., bool]) -> Callable[..., bool]:
        f.shows = shows  # type: ignore[attr-defined]
        return f

    return mark(fn) if fn is not None else mark


# ----------------------------------------------------------------------------- deadlines


@attrs.frozen
class Report:
    """At the deadline: a Warning Event on the resource; the machine keeps waiting in the state."""


@attrs.frozen
class GoTo:
    """At the deadline: a Warning Event and a transition to ``state`` (history says ``deadline:<reason>``)."""

    state: str


@attrs.frozen
class Run:
    """At the deadline: ``fn(facts, data, out) -> data`` asks for actions (its own Events included) and
    returns the new bookkeeping; the machine stays, and with ``restart`` the state's clock starts again."""

    fn: Callable[[Any, Any, list[Action]], Any]
    restart: bool = True

    @property
    def name(self) -> str:
        return getattr(self.fn, "__name__", "run")


@attrs.frozen
class Deadline:
    """How long a state may last, measured from the persisted time it was entered, and what happens then."""

    after: timedelta
    reason: str  # CamelCase: the Event's reason and the conditions' when the deadline has passed
    then: Report | GoTo | Run = Report()
    max_firings: int = 1  # afterwards the state only waits

    @property
    def consequence(self) -> str:
        t = self.then
        return "report" if isinstance(t, Report) else f"go to {t.state}" if isinstance(t, GoTo) else t.name


# ----------------------------------------------------------------------------- rows

Step = Callable[[Any, Any, list[Action]], Any]  # (facts, data, out) -> data
# (resource, children by kind as documents) -> holds; checked by the model harness, never by the engine
Invariant = Callable[[Any, Mapping[str, Sequence[Mapping[str, Any]]]], bool]
Projection = Callable[[Any], Iterable[tuple[str, str, str, str]]]  # facts -> (type, status, reason, message)


@attrs.frozen
class State:
    """One row of the table: everything the machine does in this state."""

    name: str
    doc: str
    ensure: tuple[Step, ...] = ()  # in order: each asks for what must exist, returns the new bookkeeping
    deadline: Deadline | None = None
    terminal: bool = False
    wake: tuple[Callable[[Any], WakeUp | None], ...] = ()  # timers while in the state (facts -> wake-up or None)
    conditions: Projection | None = None  # the resource's own conditions while in the state
    summary: str | Callable[[Any], str | None] | None = None  # the summary status field (None: leave it)
    fields: Callable[[Any], Mapping[str, Any]] | None = None  # other status fields projected in the state


@attrs.frozen
class Edge:
    """A guarded transition. ``source`` may name several states. Order matters: out of one state the first
    edge whose guard holds is taken."""

    source: str | tuple[str, ...]
    dest: str
    guard: Callable[[Any], bool]

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.source,) if isinstance(self.source, str) else tuple(self.source)


class LifecycleError(ValueError):
    """A declaration that cannot work (an unknown state, an unreachable one, a nameless guard)."""


def deletion_requested(f: Facts) -> bool:
    """metadata.deletionTimestamp is set."""
    return f.obj.metadata.deletion_timestamp is not None


def default_project(summary_field: str) -> Callable[..., Any]:
    """The status of a :class:`~workspace_fsm.engine.resource.Resource`: the conditions, the summary in
    ``status.<summary_field>``, the state's fields; every other status field kept."""

    def project(obj: Any, f: Facts | None, state: str | None, conditions: tuple[Condition, ...], summary: str | None,
                fields: Mapping[str, Any] | None = None) -> Any:
        from workspace_fsm.engine.resource import Status

        return Status.projected(obj.status, conditions, summary, summary_field, fields)

    return project


class Lifecycle(Generic[F]):
    """A declared lifecycle, loaded into ``transitions`` and checked.

    Parameters (keyword-only besides ``name``):

    - ``resource``: the :class:`Kind` it reconciles; ``owns`` / ``watches``: the kinds it creates and the
      ones it only reads (permissions and caches follow from them).
    - ``states`` / ``edges``: the table. ``initial``: where a new resource starts. ``deleting``: the state
      entered from every other when the resource's deletion is requested (first edge out of each), or None.
    - ``finalizer``: kept on the resource in every state but ``deleting``; the deleting state's steps
      remove it when everything is cleaned up.
    - ``record``: how the record is typed, versioned and stored (:class:`RecordFormat`).
    - ``facts``: builds the pass's facts, ``(obj, snap, now, config, rec, pass_id) -> Facts``.
    - ``conditions``: the condition types the lifecycle owns (others on the resource are kept as they are).
    - ``invalid``: the condition type that says why an invalid spec is not acted on.
    - ``project``: builds the new status, ``(obj, facts | None, state, conditions, summary, fields) -> status``
      (facts and state are None for an invalid spec); the default keeps the summary in ``summary_field``.
    - ``wake``: timers that apply in every state (facts -> wake-up or None).
    - ``on_write``: trims bookkeeping that is worth no write of its own when the status is written anyway.
    - ``parse``: the adapters' dict -> resource; ``snapshot``, ``render``, ``confirm``: how the Kubernetes
      adapter builds the snapshot, turns actions into requests, and which absences it must confirm.
    - ``config``: the default configuration; ``hooks``: :class:`~workspace_fsm.engine.hooks.Hooks`;
      ``crds``: paths of the resource's CRD manifests (the embedded test cluster installs them).
    - ``invariants``: the author's own safety properties, ``invariant(obj, children) -> bool`` over the
      persisted resource and its children as documents by kind (``{"Deployment": (doc, ...)}``); named
      functions whose docstring says what must hold. The engine never calls them: the model harness
      (:mod:`workspace_fsm.testing.model`) checks them at every change of its model world.
    """

    def __init__(self, name: str, *, resource: Kind, states: Sequence[State], edges: Sequence[Edge],
                 initial: str | None = None, deleting: str | None = None, finalizer: str = "",
                 record: RecordFormat | None = None, facts: Callable[..., F] | None = None,
                 conditions: Iterable[str] = (), invalid: str = "", project: Callable[..., Any] | None = None,
                 wake: Sequence[Callable[[Any], WakeUp | None]] = (), on_write: Callable[[Any, Any], Any] | None = None,
                 owns: Sequence[Owns] = (), watches: Sequence[Watches] = (), parse: Callable[..., Any] | None = None,
                 snapshot: Callable[..., Any] | None = None, render: Callable[..., Any] | None = None,
                 confirm: Callable[[Any, Record[Any] | None], Iterable[str]] | None = None,
                 config: Config | None = None, doc: str = "", hooks: Any = None, summary_field: str = "state",
                 crds: Sequence[Any] = (), invariants: Sequence[Invariant] = ()) -> None:
        self.name = name
        self.doc = doc
        self.resource = resource
        self.state_table: tuple[State, ...] = tuple(states)
        self.states: dict[str, State] = {}
        for s in self.state_table:
            if s.name in self.states:
                raise LifecycleError(f"lifecycle {name}: state {s.name} is declared twice")
            self.states[s.name] = s
        self.initial = initial or self.state_table[0].name
        self.deleting = deleting
        self.finalizer = finalizer
        self.record = record or RecordFormat(data=NoBookkeeping)
        self.facts: Callable[..., Any] = facts or Facts
        self.conditions = frozenset(conditions) | ({invalid} if invalid else set())
        self.invalid = invalid
        # What this lifecycle writes in status.conditions: its own types and its record's. Every other condition
        # (another controller's, another lifecycle's record) is kept as it is.
        store = self.record.store
        self.owned_conditions = self.conditions | ({store.type} if isinstance(store, ConditionStore) else set())
        self.project = project or default_project(summary_field)
        self.wake = tuple(wake)
        self.on_write = on_write
        self.owns = tuple(owns)
        self.watches = tuple(watches)
        self.parse = parse
        self.snapshot = snapshot
        self.render = render
        self.confirm = confirm or (lambda obj, rec: ())
        self.config = config or Config()
        self.hooks = hooks
        self.crds = tuple(crds)  # CRD manifests of its resource (paths): what the embedded cluster installs
        self.invariants: tuple[Invariant, ...] = tuple(invariants)
        declared = tuple(edges)
        if deleting is not None:
            live = tuple(s.name for s in self.state_table if s.name != deleting)
            declared = (*(Edge(s, deleting, deletion_requested) for s in live), *declared)
        self.edges: tuple[Edge, ...] = declared
        self._check()
        self.machine = self._build_machine()
        event = self.machine.events[TRIGGER]
        self._event = event
        # The fast path a pass takes: the machine's own transition list per state, guards in order.
        # tests/test_engine.py checks it answers as transitions' Event.trigger does, for every lifecycle.
        # (transitions types a destination as optional and a condition as a callable or a method name: every
        # edge declared here has a destination and a callable guard.)
        self._out: dict[str, tuple[tuple[str, tuple[Callable[[Any], bool], ...]], ...]] = {
            state: tuple((t.dest, tuple(c.func for c in t.conditions)) for t in ts)  # type: ignore[misc]
            for state, ts in event.transitions.items()
        }
        # Timers per state: the state's own, then those of every state.
        self.timers: dict[str, tuple[Callable[[Any], WakeUp | None], ...]] = {
            s.name: s.wake + self.wake for s in self.state_table}
        self._why: dict[tuple[str, str], str] = {}
        for e in self.edges:
            for source in e.sources:
                self._why.setdefault((source, e.dest), e.guard.__name__)

    # ------------------------------------------------------------------ checks and machine

    def _check(self) -> None:
        n = self.name
        if self.initial not in self.states:
            raise LifecycleError(f"lifecycle {n}: initial state {self.initial} is not declared")
        if self.deleting is not None and self.deleting not in self.states:
            raise LifecycleError(f"lifecycle {n}: deleting state {self.deleting} is not declared")
        for e in self.edges:
            for s in (*e.sources, e.dest):
                if s not in self.states:
                    raise LifecycleError(f"lifecycle {n}: edge {e.sources} -> {e.dest} names undeclared state {s}")
            if getattr(e.guard, "__name__", "<lambda>") == "<lambda>":
                raise LifecycleError(f"lifecycle {n}: the guard of {e.sources} -> {e.dest} needs a name "
                                     f"(a def, not a lambda): history and explain show it")
        for inv in self.invariants:
            if getattr(inv, "__name__", "<lambda>") == "<lambda>":
                raise LifecycleError(f"lifecycle {n}: an invariant needs a name (a def, not a lambda): a "
                                     f"violation names it")
        for row in self.state_table:
            then = row.deadline.then if row.deadline is not None else None
            if isinstance(then, GoTo) and then.state not in self.states:
                raise LifecycleError(f"lifecycle {n}: the deadline of {row.name} goes to undeclared {then.state}")
        reachable = {self.initial}
        frontier = [self.initial]
        while frontier:
            s = frontier.pop()
            nexts = [e.dest for e in self.edges if s in e.sources]
            d = self.states[s].deadline
            if d is not None and isinstance(d.then, GoTo):
                nexts.append(d.then.state)
            for t in nexts:
                if t not in reachable:
                    reachable.add(t)
                    frontier.append(t)
        unreachable = [s.name for s in self.state_table if s.name not in reachable]
        if unreachable:
            raise LifecycleError(f"lifecycle {n}: no edge leads to {', '.join(unreachable)} from {self.initial}")

    def _build_machine(self, machine_cls: type[Machine] = Machine, **kwargs: Any) -> Machine:
        machine = machine_cls(model=None, states=[s.name for s in self.state_table], initial=self.initial,
                              auto_transitions=False, send_event=False, ignore_invalid_triggers=True, **kwargs)
        for e in self.edges:
            for s in e.sources:
                machine.add_transition(TRIGGER, s, e.dest, conditions=[e.guard])
        return machine

    # ------------------------------------------------------------------ reading the table

    def step(self, state: str, facts: Any) -> str | None:
        """Take the first enabled edge out of ``state``; the new state, or None if none is enabled."""
        for dest, guards in self._out.get(state, ()):
            for g in guards:
                if not g(facts):
                    break
            else:
                return dest
        return None

    def step_via_trigger(self, state: str, facts: Any) -> str | None:
        """The same step through transitions' own event dispatch (the reference :meth:`step` must match)."""
        cursor = _Cursor(state)
        if self._event.trigger(cursor, facts):
            return cursor.state
        return None

    def why(self, source: str, dest: str) -> str:
        """The name of the guard of the edge source -> dest (what the history records)."""
        return self._why.get((source, dest), "unknown")

    def edges_from(self, state: str) -> tuple[Edge, ...]:
        return tuple(e for e in self.edges if state in e.sources)

    def deadline(self, state: str, config: Config | None = None) -> timedelta | None:
        """The state's deadline, with the configuration's override if it has one."""
        deadlines = (config or self.config).deadlines
        if state in deadlines:
            return deadlines[state]
        d = self.states[state].deadline
        return d.after if d is not None else None

    def decide(self, obj: Any, snapshot: Any, now: datetime, config: Config | None = None, *,
               pass_id: str = "") -> Decision:
        """One pure pass for ``obj`` (see :func:`workspace_fsm.engine.interpret.decide`)."""
        return _interpreter()(self, obj, snapshot, now, config, pass_id=pass_id)

    def read_record(self, obj: Any) -> Record[Any] | None:
        return self.record.read(obj)

    def permissions(self) -> dict[tuple[str, str], frozenset[str]]:
        """Every (API group, resource) and verb the runner needs for this lifecycle, and nothing more."""
        from workspace_fsm.engine.kinds import permissions

        return permissions(self)

    def mermaid(self, title: str | None = None) -> str:
        """The table as a Mermaid state diagram, drawn by transitions' own diagram support."""
        from transitions.extensions.diagrams import GraphMachine

        class _Model:
            get_graph: Callable[..., Any]  # added by GraphMachine.add_model

        gm = self._build_machine(GraphMachine, graph_engine="mermaid", show_conditions=True,
                                 title=title or f"{self.resource.kind} lifecycle")
        model = _Model()
        gm.add_model(model, initial=self.initial)
        source = model.get_graph().draw(None)
        lines = [ln.replace(f": {TRIGGER} [", ": [") for ln in source.splitlines()
                 if not ln.strip().startswith(("classDef", "Class "))]
        for s in self.state_table:
            if s.terminal or s.name == self.deleting:
                lines.append(f"  {s.name} --> [*]")
        return "\n".join(lines).rstrip() + "\n"

    def __repr__(self) -> str:
        return f"<Lifecycle {self.name}: {self.resource.kind}, {len(self.states)} states, {len(self.edges)} edges>"


def _interpreter() -> Callable[..., Decision]:
    global _decide
    if _decide is None:
        from workspace_fsm.engine.interpret import decide

        _decide = decide
    return _decide


_decide: Callable[..., Decision] | None = None


class _Cursor:
    __slots__ = ("state", "__weakref__")

    def __init__(self, state: str) -> None:
        self.state = state
