"""The worker loop: W workers pull Workspace keys from the queue and run one pass each.

A pass is a generator. It does its work (observe, decide, apply, persist) and *yields* the time the
worker is held by each API call. The two runners differ only in what a yield means:

- :class:`VirtualTimeRunner` is a deterministic discrete-event loop on a virtual clock (simulator and
  benchmarks): workers are slots, a yield of ``d`` seconds holds the slot for ``d`` of virtual time
  and the pass resumes then. A design that waits inside its pass (the blocking baseline) simply yields
  its waits, and holds the slot for them, as it would hold a thread.
- :class:`ThreadedRunner` runs passes on real threads on the real clock against a real cluster; yields
  cost nothing there because each call already took its real time.

Both use the same queue, the same reconcilers and the same adapter interface.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Hashable
from datetime import datetime, timedelta, timezone
from typing import Protocol

import attrs

from workspace_fsm.engine.actions import RecordEvent
from workspace_fsm.engine.adapter import AdapterError, ClusterAdapter, Conflict, NotSynced
from workspace_fsm.engine.declare import Config, Lifecycle
from workspace_fsm.engine.hooks import ActionEvent, Counters, Hooks, TransitionEvent
from workspace_fsm.engine.queue import WorkQueue

log = logging.getLogger("workspace_fsm.engine.runner")

EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)



def _send_window(action: object) -> bool:
    """Creations whose names are fresh (a replacement gets a new name): sent only inside Config.create_send_window."""
    return getattr(type(action), "send_window", False)


class StaleCreate(Exception):
    """A pass reached its creations too long after it decided; it stops and the key is observed again."""


@attrs.frozen
class Outcome:
    """How a pass ended, for the queue: requeue after a wait, retry after an error, or nothing."""

    requeue_after: float | None = None
    error: Exception | None = None
    observe_again: bool = False  # 409 or a cache older than our own write: look again soon
    gone: bool = False  # the Workspace no longer exists


Pass = Generator[float, None, Outcome]


class Reconciler(Protocol):
    def reconcile(self, key: str) -> Pass: ...


class FsmReconciler:
    """observe -> decide -> apply -> persist, returning at once with the machine's wake-up."""

    def __init__(self, adapter: ClusterAdapter, clock: Callable[[], float], *, lifecycle: Lifecycle | None = None,
                 config: Config | None = None, api_latency_s: float = 0.0, call_counter: Callable[[], int] | None = None,
                 epoch: datetime = EPOCH, writer_id: str | None = None, hooks: Hooks | None = None) -> None:
        self.adapter = adapter
        self.clock = clock
        # The lifecycle this reconciler drives: given, or the one its adapter serves.
        self.lifecycle: Lifecycle = lifecycle or adapter.lifecycle  # type: ignore[attr-defined]
        self.config = config if config is not None else self.lifecycle.config
        self.hooks = [h for h in (self.lifecycle.hooks, hooks) if h is not None]
        self.counters = Counters()
        self.latency = api_latency_s
        self.calls = call_counter or (lambda: 0)
        self.epoch = epoch
        self.passes = 0
        # Facts only once committed: counted when the pass's status write succeeded (or none was needed).
        self.transitions = 0
        # Unique among every runner writing the same Workspaces: a pass id is this plus a counter.
        # Random by default (a second runner, a restarted one); fixed by simulations that must replay exactly.
        self.writer_id = writer_id or os.urandom(4).hex()
        self._pass_ids = itertools.count(1)

    def now(self) -> datetime:
        return self.epoch + timedelta(seconds=self.clock())

    def _held(self, before: int) -> float:
        return (self.calls() - before) * self.latency

    def _abandon(self, ws, actions) -> None:
        """Tell the adapter these were never sent (a create that was not sent can never land)."""
        abandoned = getattr(self.adapter, "abandoned", None)
        if abandoned is not None and actions:
            abandoned(ws, actions)

    def _apply(self, key: str, ws, actions, started: datetime | None = None) -> Generator[float, None, None]:
        for i, action in enumerate(actions):
            if started is not None and _send_window(action) \
                    and self.now() - started > self.config.create_send_window:
                # Too late to send: a create may land until the API server's request timeout after it is
                # sent, and the machine counts on that ending within Config.create_grace of the record.
                self._abandon(ws, actions[i:])
                raise StaleCreate(f"{self.lifecycle.resource.kind.lower()} {key}: pass took longer than {self.config.create_send_window} "
                                  f"before its creations; not sending them, observing again")
            before = self.calls()
            try:
                self.adapter.apply(ws, (action,))
            except AdapterError:
                self._abandon(ws, actions[i + 1:])  # the failed one itself was sent: the adapter knows how
                raise
            held = self._held(before)
            if held:
                yield held
            if started is not None:  # after the committed write: a fact now
                self._report_action(key, action)
            if isinstance(action, RecordEvent) and action.type == "Warning":
                log.warning("%s %s: %s: %s", self.lifecycle.resource.kind.lower(), key, action.reason, action.message)

    def _report_action(self, key: str, action: object) -> None:
        for h in self.hooks:
            if h.action:
                h.fire(h.action, ActionEvent(self.lifecycle.name, key, action), self.counters)

    def _committed(self, key: str, decision) -> None:
        """The pass's status write succeeded: only now are its transitions facts to log, count and report,
        and the actions it applied before the write (deletions, the finalizer) facts to report."""
        self.transitions += len(decision.transitions)
        kind = self.lifecycle.resource.kind.lower()
        for t in decision.transitions:
            log.info("%s %s: %s -> %s (%s)", kind, key, t.source, t.dest, t.why)
        for h in self.hooks:
            if h.transition:
                for t in decision.transitions:
                    h.fire(h.transition, TransitionEvent(self.lifecycle.name, key, t.source, t.dest, t.why, t.at),
                           self.counters)
        for a in decision.before:
            self._report_action(key, a)

    def reconcile(self, key: str) -> Pass:
        self.passes += 1
        before = self.calls()
        try:
            ws, snapshot = self.adapter.observe(key)
        except NotSynced as exc:
            yield self._held(before)
            return Outcome(observe_again=True, error=exc)
        except AdapterError as exc:
            yield self._held(before)
            return Outcome(error=exc)
        if self._held(before):
            yield self._held(before)
        if ws is None:
            return Outcome(gone=True)
        now = self.now()
        decision = self.lifecycle.decide(ws, snapshot, now, self.config,
                                         pass_id=f"{self.writer_id}.{next(self._pass_ids):x}")
        try:
            # Before the status write: the finalizer and deletions. After it: creations and Events, so that
            # nothing is created that the persisted record does not already hold (see decide.Decision).
            try:
                yield from self._apply(key, ws, decision.before)
                if decision.status_changed:
                    before = self.calls()
                    if decision.annotations:  # a record kept in an annotation (AnnotationStore): written first
                        self.adapter.annotate(ws, decision.annotations)  # type: ignore[attr-defined]
                    self.adapter.persist(ws, decision.status)
                    held = self._held(before)
                    if held:
                        yield held
            except Conflict:
                raise  # nothing of this pass was committed: its names are no record's, nothing to report
            except AdapterError:
                # The status write may have been stored (a 500, a timeout) with names none of which was sent.
                # Reported under this pass's id: it counts only if this very write was the one stored.
                self._abandon(ws, decision.after)
                raise
            self._committed(key, decision)
            yield from self._apply(key, ws, decision.after, started=now)
        except StaleCreate as exc:
            log.warning("%s", exc)
            return Outcome(observe_again=True, error=exc)
        except Conflict as exc:
            log.debug("%s: conflict on write, observing again: %s", key, exc)
            return Outcome(observe_again=True, error=exc)
        except AdapterError as exc:
            log.warning("%s %s: pass failed, will retry with backoff: %s", self.lifecycle.resource.kind.lower(), key, exc)
            return Outcome(error=exc)
        after = decision.wake.after
        return Outcome(requeue_after=None if after is None else after.total_seconds())


def settle(queue: WorkQueue, key: Hashable, outcome: Outcome, *, observe_again_s: float = 0.05) -> None:
    """What the queue does with a finished pass (shared by both runners)."""
    if outcome.gone:
        queue.forget(key)
    elif outcome.observe_again:
        queue.add_after(key, observe_again_s)
    elif outcome.error is not None:
        retry_after = getattr(outcome.error, "retry_after", None)
        if retry_after:  # the server said when: not sooner, even if events for the key arrive meanwhile
            queue.hold(key, retry_after)
        else:
            queue.add_rate_limited(key)
    else:
        queue.forget(key)
        if outcome.requeue_after is not None:
            queue.add_after(key, outcome.requeue_after)
    queue.done(key)


class World(Protocol):
    """What the virtual-time runner needs of a simulated cluster."""

    def advance_to(self, t: float) -> None: ...

    def next_event_time(self) -> float | None: ...


class VirtualClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@attrs.define
class RunStats:
    passes: int = 0
    busy_s: float = 0.0
    end_s: float = 0.0
    workers: int = 0

    @property
    def busy_share(self) -> float:
        return self.busy_s / (self.workers * self.end_s) if self.end_s > 0 and self.workers else 0.0


class VirtualTimeRunner:
    """Deterministic discrete-event loop: the cluster, the queue and W worker slots on one virtual clock."""

    def __init__(self, reconciler: Reconciler, queue: WorkQueue, world: World, clock: VirtualClock,
                 workers: int = 5) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.reconciler = reconciler
        self.queue = queue
        self.world = world
        self.clock = clock
        self.workers = workers
        self.stats = RunStats(workers=workers)
        # (resume time, sequence, key, pass generator, started at)
        self._running: list[tuple[float, int, str, Pass, float]] = []
        self._seq = 0

    def _start(self, key: str) -> None:
        self.stats.passes += 1
        gen = self.reconciler.reconcile(key)
        self._resume(key, gen, self.clock.t)

    def _resume(self, key: str, gen: Pass, held_since: float) -> None:
        try:
            hold = next(gen)
        except StopIteration as stop:
            settle(self.queue, key, stop.value)
            return
        hold = max(0.0, float(hold))
        self.stats.busy_s += hold
        self._seq += 1
        heapq.heappush(self._running, (self.clock.t + hold, self._seq, key, gen, held_since))

    def run(self, until: Callable[[], bool], horizon_s: float, progress: Callable[[float], None] | None = None,
            progress_every_s: float = 60.0) -> RunStats:
        """Run until ``until()`` holds (and no pass is in flight) or virtual time passes ``horizon_s``."""
        clock, queue, world, running = self.clock, self.queue, self.world, self._running
        next_progress = 0.0
        while clock.t <= horizon_s:
            world.advance_to(clock.t)
            while running and running[0][0] <= clock.t:  # holds that ended: resume those passes
                _, _, key, gen, since = heapq.heappop(running)
                self._resume(key, gen, since)
            while len(running) < self.workers:  # free slots take ready keys
                key = queue.get()
                if key is None:
                    break
                self._start(key)
            if progress is not None and clock.t >= next_progress:
                progress(clock.t)
                next_progress = clock.t + progress_every_s
            if not running and until():
                break
            candidates = [world.next_event_time()]
            if running:
                candidates.append(running[0][0])
            if len(running) < self.workers:  # a delayed key matters only when a slot can take it
                candidates.append(queue.next_ready_at())
            due = [c for c in candidates if c is not None]
            if not due:
                break
            # Never stand still: anything due now was handled above.
            clock.t = max(min(due), clock.t + 1e-9)
        self.stats.end_s = min(clock.t, horizon_s)
        return self.stats


class ThreadedRunner:
    """Real threads on the real clock. The only waiting is a worker waiting for work."""

    def __init__(self, reconciler: Reconciler, queue: WorkQueue, workers: int = 5, poll_s: float = 0.5) -> None:
        self.reconciler = reconciler
        self.queue = queue
        self.workers = workers
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.passes = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"workspace-fsm-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self.queue.shutdown()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        while not self._stop.is_set():
            key = self.queue.get_blocking(self.poll_s)
            if key is None:
                continue
            with self._lock:
                self.passes += 1
            gen = self.reconciler.reconcile(key)
            try:
                while not self._stop.is_set():
                    next(gen)
                outcome = Outcome(observe_again=True)
            except StopIteration as stop:
                outcome = stop.value
            except Exception as exc:  # a bug must not kill the worker: log it, retry with backoff
                log.exception("workspace %s: pass crashed; retrying with backoff", key)
                outcome = Outcome(error=exc)
            settle(self.queue, key, outcome)
