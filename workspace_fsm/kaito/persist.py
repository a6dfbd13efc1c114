"""The machine's bookkeeping, persisted on the Workspace itself.

Where it lives, and why there
-----------------------------
KAITO's published CRD gives ``status`` exactly five fields (conditions, state, targetNodeCount,
workerNodes, performance) and a structural schema, so a real API server silently drops any other
status field on write (kopf learned this the hard way). Annotations survive pruning but live on the
main resource: writing them is a second, separate write that is not atomic with the status and bumps
the object again. So the record rides in the one status field that is an open list: a condition of
our own type, ``workspace-fsm/Lifecycle``, which the CRD's condition schema accepts as it stands:

- ``type``: ``workspace-fsm/Lifecycle`` (a prefixed type, as metav1.Condition allows);
- ``status``: ``True``; ``reason``: the machine's state (CamelCase, as the schema's pattern requires);
- ``observedGeneration``: the generation the machine last acted on;
- ``lastTransitionTime``: when the record was first written (it never changes status);
- ``message``: the record as compact JSON (well under the schema's 32 KiB limit: bounded lists).

It is written in the same status write as KAITO's own conditions, so state and bookkeeping can never
disagree, and ``kubectl get workspace -o yaml`` shows it to whoever is on call.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import attrs

from workspace_fsm.kaito.model import Condition, WorkspaceStatus, format_time, parse_time

LIFECYCLE_CONDITION = "workspace-fsm/Lifecycle"
RECORD_VERSION = 1
MESSAGE_LIMIT = 32768  # the CRD's maxLength for a condition message


@attrs.frozen
class HistoryEntry:
    """One transition: from ``source`` to ``dest`` at ``at`` (RFC 3339), because ``why`` (a guard or a deadline).

    The time stays in its persisted text form: history is read back on every pass but rarely looked at.
    """

    source: str
    dest: str
    at: str
    why: str

    @property
    def time(self) -> datetime:
        return parse_time(self.at)

    def to_json(self) -> list[Any]:
        return [self.source, self.dest, self.at, self.why]

    @classmethod
    def from_json(cls, v: list[Any]) -> HistoryEntry:
        return cls(str(v[0]), str(v[1]), str(v[2]), str(v[3]))


@attrs.frozen
class Lifecycle:
    """Everything the machine needs to continue after a restart, and nothing it can observe instead."""

    state: str = "Pending"
    entered_at: datetime | None = None
    attempts: int = 0  # deadline firings since the state was entered
    generation: int = 0  # the Workspace generation the machine last acted on
    nodeclaims: tuple[str, ...] = ()  # NodeClaims it created and has not yet seen gone
    deleted: tuple[str, ...] = ()  # of those, the ones it asked the API to delete
    next_seq: int = 0  # sequence for deterministic NodeClaim names
    claim_failures: int = 0  # NodeClaims that failed to launch, or were replaced at a deadline
    revision: str | None = None  # spec revision of the workload or Job it created
    history: tuple[HistoryEntry, ...] = ()
    since: datetime | None = None  # first written: the condition's lastTransitionTime
    # When the newest NodeClaim name was recorded. Its create is sent right after that status write and
    # may still be applied by the API server until its request timeout has passed (Config.create_grace).
    claimed_at: datetime | None = None
    # Which pass recorded them (a token unique to one pass of one runner process, see decide's ``pass_id``).
    # A runner's in-memory knowledge that a create was never sent or was refused speaks for its own requests
    # only: it counts (Snapshot.refused) only for names this very pass recorded, never another writer's.
    claimed_by: str | None = None

    def to_json(self) -> str:
        body: dict[str, Any] = {"v": RECORD_VERSION, "state": self.state}
        if self.entered_at is not None:
            body["entered"] = format_time(self.entered_at)
        if self.attempts:
            body["attempts"] = self.attempts
        body["gen"] = self.generation
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
        if self.revision is not None:
            body["rev"] = self.revision
        if self.history:
            body["history"] = [h.to_json() for h in self.history]
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, since: datetime | None = None) -> Lifecycle:
        body = json.loads(text)
        if not isinstance(body, dict) or body.get("v") != RECORD_VERSION:
            raise ValueError(f"unsupported lifecycle record version {body.get('v') if isinstance(body, dict) else body!r}")
        return cls(
            state=str(body["state"]),
            entered_at=parse_time(body.get("entered")),
            attempts=int(body.get("attempts", 0)),
            generation=int(body.get("gen", 0)),
            nodeclaims=tuple(str(n) for n in body.get("claims", ())),
            deleted=tuple(str(n) for n in body.get("deleted", ())),
            next_seq=int(body.get("seq", 0)),
            claim_failures=int(body.get("failures", 0)),
            revision=None if body.get("rev") is None else str(body["rev"]),
            history=tuple(HistoryEntry.from_json(h) for h in body.get("history", ())),
            since=since,
            claimed_at=parse_time(body.get("claimed")),
            claimed_by=None if body.get("by") is None else str(body["by"]),
        )

    def to_condition(self, now: datetime) -> Condition:
        message = self.to_json()
        if len(message) > MESSAGE_LIMIT:  # cannot happen with the bounded lists; never write a record the API rejects
            message = attrs.evolve(self, history=self.history[-2:]).to_json()
        return Condition(
            type=LIFECYCLE_CONDITION, status="True", reason=self.state, message=message,
            last_transition_time=self.since or now, observed_generation=self.generation,
        )


def read_lifecycle(status: WorkspaceStatus) -> Lifecycle | None:
    """The persisted record, or None when there is none (a new Workspace) or it cannot be read.

    An unreadable record (edited by hand, written by a future version) is treated as absent: the
    machine starts over from Pending, which is safe because everything it creates has a deterministic
    name and is found again through its labels.
    """
    memo = status._memo
    try:
        return memo["lifecycle"]
    except KeyError:
        pass
    cond = status.condition(LIFECYCLE_CONDITION)
    # A status is immutable and a Workspace is looked at many times per version: parse its record once,
    # and keep it on the status itself, so the parsed records are bounded by the statuses still held.
    rec = None if cond is None else _parse_record(cond.message, cond.last_transition_time)
    memo["lifecycle"] = rec
    return rec


def _parse_record(message: str, since: datetime) -> Lifecycle | None:
    if len(message) > MESSAGE_LIMIT:
        return None
    try:
        rec = Lifecycle.from_json(message, since=since)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, ArithmeticError, RecursionError):
        return None
    # Times the machine will add deadlines to must stay far from datetime's limits; counters must be sane.
    if rec.entered_at is not None and not (1970 <= rec.entered_at.year <= 9000):
        return None
    if not (0 <= rec.attempts <= 1000 and 0 <= rec.next_seq <= 10**9 and 0 <= rec.claim_failures <= 10**9):
        return None
    return rec
