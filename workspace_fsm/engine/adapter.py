"""The interface between the runner and a cluster: observe, apply, persist.

Every adapter (the simulated cluster, the Kubernetes one, a test double) implements
:class:`ClusterAdapter` for one lifecycle (its ``lifecycle`` attribute). The runner drives one pass per key::

    obj, snapshot = adapter.observe(key)                    # from caches; None when the resource is gone
    decision = lifecycle.decide(obj, snapshot, now, config)  # pure
    adapter.apply(obj, decision.before)                     # in order, stops at the first failure (raises)
    if decision.status_changed:
        obj = adapter.persist(obj, decision.status)         # with its resourceVersion; Conflict on 409
    adapter.apply(obj, decision.after)

Errors an adapter raises are :class:`AdapterError` subclasses, so the runner can tell "observe again
now" (:class:`Conflict`) from "retry with backoff" (anything else) without knowing the adapter.

An adapter may also have ``abandoned(ws, actions)``: the runner calls it with the actions of a decision
it stopped before sending (after a failure), so that the adapter can tell the machine those creates can
never land (``Snapshot.refused``) and it need not wait out ``Config.create_grace`` for them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol


class AdapterError(Exception):
    """An API call failed. ``retry_after`` (seconds) is set when the server asked for it (429).

    ``refused`` is True only when the request certainly changed nothing and cannot later: it never
    reached the server, or the server turned it away before storing it (429, authorization, admission,
    validation). Timeouts, 5xx and dropped connections are ambiguous: the write may yet be applied.
    """

    retry_after: float | None = None
    refused: bool = False

    def __init__(self, message: str, *, retry_after: float | None = None, refused: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.refused = refused


class Conflict(AdapterError):
    """409 on a write with a stale resourceVersion: observe again; never overwrite."""


class NotSynced(AdapterError):
    """The cache is older than this runner's own last write of the object: look again shortly."""


class ClusterAdapter(Protocol):
    lifecycle: Any  # the workspace_fsm.engine.Lifecycle it serves

    def observe(self, key: str) -> tuple[Any | None, Any]: ...

    def apply(self, obj: Any, actions: Sequence[Any]) -> None: ...

    def persist(self, obj: Any, status: Any) -> Any: ...

    def set_event_handler(self, handler: Callable[[str], None]) -> None:
        """``handler(key)`` is called for every watch event that concerns the resource ``key``."""
        ...
