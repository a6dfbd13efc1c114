"""Hooks for operator authors: callbacks on committed transitions and on applied actions, and counters.

A hook sees facts only: a transition is reported once the status write that records it committed, an
action once it was applied and its pass's status write committed (an action applied before the write, a
deletion say, is reported after it). A pass whose write lost a 409 reports nothing: another runner's
write is the fact. Hooks run on the worker thread, after the pass's requests; an exception in one is
logged and never fails the pass.

Counters a hook increments (``counters.inc("name", "help")``) are served by ``workspace-fsm run`` at
``/metrics`` as ``workspace_fsm_<name>_total{lifecycle="..."}`` next to the runner's own metrics.

    hooks = Hooks()

    @hooks.on_transition
    def paged(event, counters):
        if event.dest == "Failed":
            counters.inc("databases_failed", "Databases whose provisioning failed for good")

    DATABASE = Lifecycle("database", ..., hooks=hooks)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import attrs

__all__ = ["ActionEvent", "Counters", "Hooks", "TransitionEvent"]

log = logging.getLogger("workspace_fsm.hooks")


@attrs.frozen
class TransitionEvent:
    lifecycle: str
    key: str  # namespace/name of the resource
    source: str
    dest: str
    why: str  # the guard's name, or deadline:<Reason>
    at: str  # RFC 3339, as the record holds it


@attrs.frozen
class ActionEvent:
    lifecycle: str
    key: str
    action: Any


class Counters:
    """Monotonic counters by name, one set per runner (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values: dict[str, float] = {}
        self.help: dict[str, str] = {}

    def inc(self, name: str, help: str = "", amount: float = 1.0) -> None:
        with self._lock:
            self.values[name] = self.values.get(name, 0.0) + amount
            if help:
                self.help.setdefault(name, help)

    def get(self, name: str) -> float:
        return self.values.get(name, 0.0)


class Hooks:
    """Callbacks a lifecycle carries (``Lifecycle(hooks=...)``) or a runner is given."""

    def __init__(self) -> None:
        self.transition: list[Callable[[TransitionEvent, Counters], None]] = []
        self.action: list[Callable[[ActionEvent, Counters], None]] = []
        self.counters: dict[str, str] = {}  # declared counters (name -> help): served from 0 on

    def counter(self, name: str, help: str) -> str:
        """Declare a counter so that /metrics serves it from the start (at 0)."""
        self.counters[name] = help
        return name

    def on_transition(self, fn: Callable[[TransitionEvent, Counters], None]) -> Callable[[TransitionEvent, Counters], None]:
        self.transition.append(fn)
        return fn

    def on_action(self, fn: Callable[[ActionEvent, Counters], None]) -> Callable[[ActionEvent, Counters], None]:
        self.action.append(fn)
        return fn

    def fire(self, callbacks: list[Callable[[Any, Counters], None]], event: Any, counters: Counters) -> None:
        for fn in callbacks:
            try:
                fn(event, counters)
            except Exception:  # an author's bug must not fail the pass
                log.exception("%s %s: hook %s failed", event.lifecycle, event.key, getattr(fn, "__name__", fn))
