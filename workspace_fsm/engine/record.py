"""The machine's record, persisted on the resource itself: what a restarted runner needs to continue.

A :class:`Record` holds what every lifecycle needs (the state, when it was entered, how often its
deadline fired, the generation acted on, a bounded history of transitions) and a typed slot, ``data``,
for the lifecycle's own bookkeeping (for KAITO's Workspace: the NodeClaims it created and the revision it
deployed). Nothing in it can be observed instead: whatever the cluster shows is read from the cluster.

Where it lives
--------------
A real API server prunes every status field its CRD's structural schema does not declare, silently.
The record therefore rides where the resource's schema keeps it, chosen per lifecycle
(:class:`RecordFormat` ``store``):

- :class:`ConditionStore` (the default): a condition of its own type in ``status.conditions``, an open
  list every CRD with conditions accepts. ``reason`` is the state, ``observedGeneration`` the generation
  acted on, ``lastTransitionTime`` when the record was first written, ``message`` the record as compact
  JSON. It is written in the same status write as the resource's own conditions: state and bookkeeping
  never disagree.
- :class:`AnnotationStore`: an annotation, for resources whose status has no conditions. It survives
  pruning but is written by a metadata patch of its own before the status write.

Versions
--------
The JSON carries ``v``, the lifecycle's record version. A record of an older version is brought up by the
lifecycle's ``upgrades`` (one function per step, ``{1: v1_to_v2, ...}``); a record of a newer version (a
runner rolled back) or one that cannot be read is treated as absent: the machine starts from its initial
state and finds what it created through labels and deterministic names.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

import attrs

from workspace_fsm.engine.objects import Condition, format_time, parse_time

__all__ = ["AnnotationStore", "Bookkeeping", "ConditionStore", "HistoryEntry", "NoBookkeeping", "Record",
           "RecordFormat", "MESSAGE_LIMIT"]

MESSAGE_LIMIT = 32768  # metav1.Condition's maxLength for a message
_ENGINE_KEYS = frozenset({"v", "state", "entered", "attempts", "gen", "history"})


@attrs.frozen
class HistoryEntry:
    """One transition: from ``source`` to ``dest`` at ``at`` (RFC 3339), because ``why`` (a guard's name,
    or ``deadline:<Reason>``). The time stays in its persisted text form: history is read on every pass but
    rarely looked at."""

    source: str
    dest: str
    at: str
    why: str

    @property
    def time(self) -> datetime:
        t = parse_time(self.at)
        assert t is not None
        return t

    def to_json(self) -> list[Any]:
        return [self.source, self.dest, self.at, self.why]

    @classmethod
    def from_json(cls, v: list[Any]) -> HistoryEntry:
        return cls(str(v[0]), str(v[1]), str(v[2]), str(v[3]))


class Bookkeeping(Protocol):
    """A lifecycle's own slot in the record: an attrs value that turns into JSON object members and back.

    ``to_json`` returns the members to store (omit defaults to keep the record small); ``from_json`` gets
    the whole stored object (the engine's own members included, which it should ignore)."""

    def to_json(self) -> dict[str, Any]: ...

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Bookkeeping: ...


@attrs.frozen
class NoBookkeeping:
    """The slot of a lifecycle that keeps nothing of its own."""

    def to_json(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> NoBookkeeping:
        return cls()


D = TypeVar("D")


@attrs.frozen
class Record(Generic[D]):
    """Everything the machine needs to continue after a restart, and nothing it can observe instead."""

    state: str
    data: D
    entered_at: datetime | None = None
    attempts: int = 0  # deadline firings since the state was entered
    generation: int = 0  # the resource's generation the machine last acted on
    history: tuple[HistoryEntry, ...] = ()
    since: datetime | None = None  # when the record was first written


@attrs.frozen
class ConditionStore:
    """The record as a condition of its own ``type`` in ``status.conditions`` (see the module's notes)."""

    type: str = "workspace-fsm/Lifecycle"
    kind: ClassVar[Literal["condition"]] = "condition"


@attrs.frozen
class AnnotationStore:
    """The record as the annotation ``key`` (for a resource whose status has no conditions)."""

    key: str = "workspace-fsm.io/lifecycle"
    kind: ClassVar[Literal["annotation"]] = "annotation"


@attrs.frozen
class RecordFormat:
    """How a lifecycle's record is typed, versioned and stored."""

    data: type[Bookkeeping] = NoBookkeeping
    version: int = 1
    # upgrades[n] turns a stored object of version n into one of version n + 1.
    upgrades: Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]] = attrs.field(factory=dict)
    store: ConditionStore | AnnotationStore = attrs.field(factory=ConditionStore)

    # ------------------------------------------------------------------ JSON

    def encode(self, rec: Record[Any]) -> str:
        body: dict[str, Any] = {"v": self.version, "state": rec.state}
        if rec.entered_at is not None:
            body["entered"] = format_time(rec.entered_at)
        if rec.attempts:
            body["attempts"] = rec.attempts
        body["gen"] = rec.generation
        body.update(rec.data.to_json())
        if rec.history:
            body["history"] = [h.to_json() for h in rec.history]
        return json.dumps(body, separators=(",", ":"))

    def decode(self, text: str, since: datetime | None = None) -> Record[Any]:
        """Strict: raises ValueError (or a lookup/type error) for anything it cannot take."""
        body = json.loads(text)
        if not isinstance(body, dict):
            raise ValueError(f"a lifecycle record is a JSON object, not {type(body).__name__}")
        v = body.get("v")
        if not isinstance(v, int) or v > self.version or v < 1:
            raise ValueError(f"unsupported lifecycle record version {v!r} (this runner reads 1 to {self.version})")
        while v < self.version:
            body = self.upgrades[v](body)
            v += 1
        return Record(
            state=str(body["state"]),
            data=self.data.from_json(body),
            entered_at=parse_time(body.get("entered")),
            attempts=int(body.get("attempts", 0)),
            generation=int(body.get("gen", 0)),
            history=tuple(HistoryEntry.from_json(h) for h in body.get("history", ())),
            since=since,
        )

    def parse(self, text: str, since: datetime | None) -> Record[Any] | None:
        """The record, or None when it cannot be read (edited by hand, written by a newer version)."""
        if len(text) > MESSAGE_LIMIT:
            return None
        try:
            rec = self.decode(text, since)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, ArithmeticError, RecursionError):
            return None
        # Times the machine adds deadlines to must stay far from datetime's limits; counters must be sane.
        if rec.entered_at is not None and not (1970 <= rec.entered_at.year <= 9000):
            return None
        if not 0 <= rec.attempts <= 1000:
            return None
        return rec

    # ------------------------------------------------------------------ where it is stored

    def read(self, obj: Any) -> Record[Any] | None:
        """The persisted record of ``obj``, parsed once per (immutable) status and kept on it."""
        status = obj.status
        memo = getattr(status, "_memo", None)
        if memo is not None:
            try:
                memoised: Record[Any] | None = memo["record"]
                return memoised
            except KeyError:
                pass
        if self.store.kind == "condition":
            cond = status.condition(self.store.type)
            rec = None if cond is None else self.parse(cond.message, cond.last_transition_time)
        else:
            text = obj.metadata.annotations.get(self.store.key)
            rec = None if text is None else self.parse(text, None)
        if memo is not None:
            memo["record"] = rec
        return rec

    def to_condition(self, rec: Record[Any], now: datetime) -> Condition:
        message = self.encode(rec)
        if len(message) > MESSAGE_LIMIT:  # bounded lists make this unreachable; never write what the API rejects
            message = self.encode(attrs.evolve(rec, history=rec.history[-2:]))
        assert isinstance(self.store, ConditionStore)
        return Condition(type=self.store.type, status="True", reason=rec.state, message=message,
                         last_transition_time=rec.since or now, observed_generation=rec.generation)
