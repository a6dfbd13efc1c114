"""Fault injection for the test API server, and request counters.

``server.faults`` adds rules; each rule matches requests by verb (``get``, ``list``, ``watch``,
``create``, ``update``, ``patch``, ``delete``, ``deletecollection``; ``"writes"`` stands for the five
writing verbs), by resource (``"workspaces"``, ``"workspaces/status"``, ``"workspaces.kaito.sh"``,
``"*/status"``), namespace and name, and fires either a fixed number of times (``times=1``: one-off)
or at random with a probability (``rate=0.2``, ``seed=...``: reproducible). A rule that fired is
counted in ``rule.hits``; ``rule.remove()`` or ``faults.clear()`` takes rules away. ``user_agent``
limits a rule to clients whose User-Agent contains it (the Python client sends
``OpenAPI-Generator/...``, kubectl ``kubectl/...``): faults for the controller, not for kubectl.

>>> server.faults.conflict(resources=["workspaces/status"])          # the next status write gets 409
>>> server.faults.error(500, verbs=["list"], rate=0.1, seed=7)        # 10% of lists fail
>>> server.faults.throttle(retry_after=1, verbs=["create"], times=3)  # 429 + Retry-After
>>> server.faults.drop_watches(after_events=2)                        # next watch ends after 2 events
>>> server.faults.latency(0.05, verbs=["patch"], times=None)          # every patch takes 50 ms more
>>> server.faults.compaction()                                        # the next watch finds history gone
>>> server.faults.watch_lag(20.0, user_agent="my-controller/")       # its watches deliver events 20 s late
>>> server.faults.intercept(kill_client, when="after", verbs=["update"], resources=["*/status"])
...     # run a callback once the write is stored but before the client hears back (``"abort"``: no answer)

``on_fire`` on any rule is called with the :class:`RequestInfo` each time the rule fires (to log or
time what a client was told, e.g. a 429's Retry-After).
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Fault", "Faults", "RequestInfo", "RequestCounts", "WRITE_VERBS"]

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
_UNSET: Any = object()


@dataclass(frozen=True)
class RequestInfo:
    """What a fault rule sees of a request."""

    verb: str
    resource: str  # plural, e.g. "workspaces"
    subresource: str | None
    group: str
    namespace: str | None
    name: str | None
    user_agent: str = ""
    body: bytes = b""  # the request's body as sent
    status_code: int | None = None  # intercepts "after": the answer about to be sent

    @property
    def resource_path(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    def names(self) -> set[str]:
        plural = self.resource
        qualified = f"{plural}.{self.group}" if self.group else plural
        if self.subresource:
            return {f"{plural}/{self.subresource}", f"{qualified}/{self.subresource}", f"*/{self.subresource}"}
        return {plural, qualified, "*"}


@dataclass(eq=False)
class Fault:
    """One fault rule. ``kind`` is conflict, error, throttle, drop_watch, latency, compaction, lag or intercept."""

    kind: str
    verbs: frozenset[str] | None = None
    resources: frozenset[str] | None = None
    namespace: str | None = None
    name: str | None = None
    times: int | None = 1  # firings left (None: unlimited)
    rate: float = 1.0
    seed: int | None = 0
    code: int = 500
    message: str = "injected fault"
    retry_after: int = 1
    seconds: float = 0.0
    after_events: int | None = None
    after_seconds: float | None = None
    abrupt: bool = False
    user_agent: str | None = None  # case-insensitive substring of the User-Agent header
    predicate: Callable[[RequestInfo], bool] | None = None
    on_fire: Callable[[RequestInfo], Any] | None = None  # called (outside the rules' lock) when the rule fires
    callback: Callable[[RequestInfo], Any] | None = None  # intercept: what to run
    when: str = "before"  # intercept: "before" the request is handled, or "after" it (before the answer)
    hits: int = 0
    _owner: Any = field(default=None, repr=False)
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def matches(self, req: RequestInfo) -> bool:
        if self.verbs is not None and req.verb not in self.verbs:
            return False
        if self.resources is not None and not (self.resources & req.names()):
            return False
        if self.namespace is not None and req.namespace != self.namespace:
            return False
        if self.name is not None and req.name != self.name:
            return False
        if self.user_agent is not None and self.user_agent.lower() not in req.user_agent.lower():
            return False
        if self.predicate is not None and not self.predicate(req):
            return False
        return True

    def _try_fire(self) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.rate < 1.0 and self._rng.random() >= self.rate:
            return False
        if self.times is not None:
            self.times -= 1
        self.hits += 1
        return True

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.times <= 0

    def remove(self) -> None:
        if self._owner is not None:
            self._owner.remove(self)


@dataclass
class FaultPlan:
    """The faults that fire for one request."""

    delay: float = 0.0
    compact: bool = False
    error: Fault | None = None
    drop_watch: Fault | None = None
    lag: float = 0.0  # watches: deliver each event this many seconds after it happened
    before: list[Fault] = field(default_factory=list)  # intercepts to run before handling
    after: list[Fault] = field(default_factory=list)  # intercepts to run after handling, before answering
    fired: list[Fault] = field(default_factory=list)  # every rule that fired (for on_fire)

    def notify(self, req: RequestInfo) -> None:
        for rule in self.fired:
            if rule.on_fire is not None:
                rule.on_fire(req)


def _verbs(verbs: Iterable[str] | str | None) -> frozenset[str] | None:
    if verbs is None:
        return None
    if isinstance(verbs, str):
        verbs = [verbs]
    out: set[str] = set()
    for v in verbs:
        if v == "writes":
            out |= WRITE_VERBS
        else:
            out.add(v.lower())
    return frozenset(out)


def _resources(resources: Iterable[str] | str | None) -> frozenset[str] | None:
    if resources is None:
        return None
    if isinstance(resources, str):
        resources = [resources]
    return frozenset(resources)


class Faults:
    """The fault rules of one server (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[Fault] = []
        self.compact_hook: Callable[[], Any] | None = None

    # ------------------------------------------------------------------ adding rules

    def add(self, fault: Fault) -> Fault:
        fault._owner = self
        with self._lock:
            self._rules.append(fault)
        return fault

    def _make(self, kind: str, verbs: Any, resources: Any, times: Any, rate: float | None, seed: int | None,
              default_verbs: Iterable[str] | None = None, **kw: Any) -> Fault:
        if times is _UNSET:
            times = None if rate is not None else 1
        return self.add(Fault(kind=kind, verbs=_verbs(verbs if verbs is not None else default_verbs),
                              resources=_resources(resources), times=times,
                              rate=1.0 if rate is None else float(rate), seed=seed, **kw))

    def conflict(self, *, verbs: Iterable[str] | str | None = None, resources: Iterable[str] | str | None = None,
                 namespace: str | None = None, name: str | None = None, times: int | None = _UNSET,
                 rate: float | None = None, seed: int | None = 0, user_agent: str | None = None) -> Fault:
        """Writes answered ``409 Conflict`` (the object has been modified...), as if another writer
        had won. Default verbs: update and patch."""
        return self._make("conflict", verbs, resources, times, rate, seed, default_verbs=("update", "patch"),
                          namespace=namespace, name=name, user_agent=user_agent)

    def error(self, code: int = 500, *, verbs: Iterable[str] | str | None = None,
              resources: Iterable[str] | str | None = None, namespace: str | None = None, name: str | None = None,
              times: int | None = _UNSET, rate: float | None = None, seed: int | None = 0,
              message: str = "injected fault", user_agent: str | None = None) -> Fault:
        """Requests answered with a server error (500 InternalError by default; 503, 504 too)."""
        return self._make("error", verbs, resources, times, rate, seed, code=code, message=message,
                          namespace=namespace, name=name, user_agent=user_agent)

    def throttle(self, retry_after: int = 1, *, verbs: Iterable[str] | str | None = None,
                 resources: Iterable[str] | str | None = None, namespace: str | None = None,
                 name: str | None = None, times: int | None = _UNSET, rate: float | None = None,
                 seed: int | None = 0, user_agent: str | None = None) -> Fault:
        """Requests answered ``429 TooManyRequests`` with a ``Retry-After`` header. (urllib3, under the
        Python client, itself retries GET/PUT/DELETE answered 429 with Retry-After up to 3 times.)"""
        return self._make("throttle", verbs, resources, times, rate, seed, retry_after=int(retry_after),
                          namespace=namespace, name=name, user_agent=user_agent)

    def drop_watches(self, *, after_events: int | None = 0, after_seconds: float | None = None,
                     abrupt: bool = False, resources: Iterable[str] | str | None = None,
                     namespace: str | None = None, times: int | None = _UNSET, rate: float | None = None,
                     seed: int | None = 0, user_agent: str | None = None) -> Fault:
        """Watches that end early: after ``after_events`` events (initial ADDED events count) or
        ``after_seconds``, whichever comes first. ``abrupt`` closes the connection without ending
        the chunked stream (a broken connection rather than a server-side close)."""
        if after_seconds is not None and after_events == 0:
            after_events = None
        return self._make("drop_watch", ("watch",), resources, times, rate, seed, after_events=after_events,
                          after_seconds=after_seconds, abrupt=abrupt, namespace=namespace, user_agent=user_agent)

    def latency(self, seconds: float, *, verbs: Iterable[str] | str | None = None,
                resources: Iterable[str] | str | None = None, namespace: str | None = None,
                times: int | None = None, rate: float | None = None, seed: int | None = 0,
                user_agent: str | None = None) -> Fault:
        """Extra time before matching requests are handled (unlimited unless ``times`` is given)."""
        return self._make("latency", verbs, resources, times, rate, seed, seconds=float(seconds),
                          namespace=namespace, user_agent=user_agent)

    def compaction(self, *, verbs: Iterable[str] | str | None = ("watch",),
                   resources: Iterable[str] | str | None = None, times: int | None = _UNSET,
                   rate: float | None = None, seed: int | None = 0, user_agent: str | None = None) -> Fault:
        """Compact the watch history when a matching request arrives (default: the next watch), so
        that a watch from an earlier resourceVersion is answered 410 Gone."""
        return self._make("compaction", verbs, resources, times, rate, seed, user_agent=user_agent)

    def watch_lag(self, seconds: float, *, resources: Iterable[str] | str | None = None,
                  namespace: str | None = None, times: int | None = None, rate: float | None = None,
                  seed: int | None = 0, user_agent: str | None = None) -> Fault:
        """A cache that lags the truth: matching watches deliver every event ``seconds`` after it was
        stored (the initial list of a watch without a resourceVersion is current). Unlimited by default."""
        return self._make("lag", ("watch",), resources, times, rate, seed, seconds=float(seconds),
                          namespace=namespace, user_agent=user_agent)

    def intercept(self, callback: Callable[[RequestInfo], Any], *, when: str = "before",
                  verbs: Iterable[str] | str | None = None, resources: Iterable[str] | str | None = None,
                  namespace: str | None = None, name: str | None = None, times: int | None = None,
                  rate: float | None = None, seed: int | None = 0, user_agent: str | None = None,
                  predicate: Callable[[RequestInfo], bool] | None = None) -> Fault:
        """Run ``callback(request)`` in the request's thread ``"before"`` it is handled or ``"after"`` it
        was (a write is stored) but before the answer is sent. A callback returning ``"abort"`` makes the
        server close the connection without answering; before handling, the request is then not applied.
        Crash tests use it to kill a client between two calls or in the middle of a write."""
        if when not in ("before", "after"):
            raise ValueError(f"intercept: when must be 'before' or 'after', not {when!r}")
        return self._make("intercept", verbs, resources, times, rate, seed, callback=callback, when=when,
                          namespace=namespace, name=name, user_agent=user_agent, predicate=predicate)

    def compact(self) -> Any:
        """Compact the watch history now."""
        if self.compact_hook is None:
            raise RuntimeError("no server attached")
        return self.compact_hook()

    # ------------------------------------------------------------------ bookkeeping

    def remove(self, fault: Fault) -> None:
        with self._lock:
            if fault in self._rules:
                self._rules.remove(fault)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    @property
    def rules(self) -> list[Fault]:
        with self._lock:
            return list(self._rules)

    def plan(self, req: RequestInfo) -> FaultPlan:
        """Decide which rules fire for a request (each rule's count and random draw are used once)."""
        plan = FaultPlan()
        with self._lock:
            for rule in self._rules:
                if rule.exhausted or not rule.matches(req):
                    continue
                fired = False
                if rule.kind == "latency":
                    if fired := rule._try_fire():
                        plan.delay += rule.seconds
                elif rule.kind == "compaction":
                    if fired := rule._try_fire():
                        plan.compact = True
                elif rule.kind == "lag":
                    if fired := rule._try_fire():
                        plan.lag = max(plan.lag, rule.seconds)
                elif rule.kind == "intercept":
                    if fired := rule._try_fire():
                        (plan.before if rule.when == "before" else plan.after).append(rule)
                elif rule.kind == "drop_watch":
                    if plan.drop_watch is None and (fired := rule._try_fire()):
                        plan.drop_watch = rule
                elif plan.error is None:
                    if rule.kind == "conflict" and req.verb not in WRITE_VERBS:
                        continue
                    if fired := rule._try_fire():
                        plan.error = rule
                if fired:
                    plan.fired.append(rule)
            self._rules = [r for r in self._rules if not r.exhausted]
        return plan


class RequestCounts(Counter):
    """Requests served, keyed by ``(verb, resource)``: ``("patch", "workspaces/status")``,
    ``("list", "nodes")``, ``("watch", "workspaces")``. Discovery and OpenAPI requests are counted
    under the verb ``"discovery"``."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def add(self, verb: str, resource: str) -> None:
        with self._lock:
            self[(verb, resource)] += 1

    def by_verb(self) -> Counter:
        out: Counter = Counter()
        for (verb, _), n in list(self.items()):
            out[verb] += n
        return out

    def by_resource(self) -> Counter:
        out: Counter = Counter()
        for (_, res), n in list(self.items()):
            out[res] += n
        return out

    def api_total(self) -> int:
        """All requests but discovery."""
        return sum(n for (verb, _), n in list(self.items()) if verb != "discovery")

    def reset(self) -> None:
        with self._lock:
            self.clear()
