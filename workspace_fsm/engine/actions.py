"""What a pass may ask an adapter to do, and when to look again.

Actions are values. An adapter applies them in order and stops at the first failure (the pass is then
retried with backoff, and the next pass asks again for whatever is still missing). Every action is
idempotent by construction: objects have deterministic names, so a repeated create meets AlreadyExists and
a repeated delete meets NotFound, and both count as success.

Each action class says in ``phase`` when it runs relative to the pass's status write:

- ``before``: the finalizer and deletions, safe to repeat, and needed before anything is recorded;
- the status write (the record included);
- ``create``: creations, so that nothing exists that the persisted record does not already hold
  (a pass whose write fails, 409 or crash, has created nothing);
- ``after``: the rest (finalizer removal, updates); ``event``: Events, last.

Lifecycles add action types of their own (set ``phase``); the generic ones below are what the Kubernetes
adapter executes for any lifecycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any, ClassVar

import attrs

__all__ = ["Action", "AddFinalizer", "Create", "Delete", "Patch", "PHASES", "RecordEvent", "RemoveFinalizer",
           "WakeUp"]

PHASES = ("before", "create", "after", "event")


@attrs.frozen
class AddFinalizer:
    finalizer: str
    phase: ClassVar[str] = "before"


@attrs.frozen
class RemoveFinalizer:
    finalizer: str
    phase: ClassVar[str] = "after"


@attrs.frozen
class RecordEvent:
    """A Kubernetes Event on the resource: ``type`` is Normal or Warning."""

    type: str
    reason: str
    message: str
    phase: ClassVar[str] = "event"


@attrs.frozen
class Create:
    """Create ``manifest`` (apiVersion, kind, metadata.name; the namespace defaults to the owner's). With
    ``owned`` the owner's ownerReference is added (controller=true), so garbage collection removes it with
    the owner. AlreadyExists counts as success: names are deterministic."""

    manifest: Mapping[str, Any]
    owned: bool = True
    claim: str = ""  # the pass that recorded it (see Decision); lets an adapter report creates never sent
    phase: ClassVar[str] = "create"

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind", ""))

    @property
    def name(self) -> str:
        return str((self.manifest.get("metadata") or {}).get("name", ""))


@attrs.frozen
class Patch:
    """A JSON merge patch of an existing object (``kind`` as the lifecycle declared it, ``name`` in the
    owner's namespace unless the kind is cluster-scoped)."""

    api_version: str
    kind: str
    name: str
    patch: Mapping[str, Any]
    phase: ClassVar[str] = "after"


@attrs.frozen
class Delete:
    """Delete an object; NotFound counts as success. ``propagation``: Background (the API answers at once,
    the garbage collector removes dependents), Foreground or Orphan."""

    api_version: str
    kind: str
    name: str
    propagation: str = "Background"
    reason: str = ""
    phase: ClassVar[str] = "before"


Action = Any  # any attrs value with a ``phase``: the generic ones above, or a lifecycle's own


@attrs.frozen
class WakeUp:
    """When to look at the resource again if no watch event comes first.

    ``after`` None means: only on the next event. Waiting is never done inside a pass.
    """

    after: timedelta | None
    reason: str

    @classmethod
    def on_event(cls, reason: str = "waiting for the next watch event") -> WakeUp:
        return cls(None, reason)

    @classmethod
    def at(cls, after: timedelta, reason: str) -> WakeUp:
        return cls(max(after, timedelta(0)), reason)
