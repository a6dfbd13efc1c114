"""The virtual-time runner: workers are slots, yields hold them, wake-ups are honoured in virtual time."""

from __future__ import annotations

from workspace_fsm.kaito.workspace import WORKSPACE

import pytest

from workspace_fsm.engine.queue import WorkQueue
from workspace_fsm.engine.runner import Outcome, VirtualClock, VirtualTimeRunner


class NoWorld:
    def advance_to(self, t: float) -> None:
        pass

    def next_event_time(self) -> float | None:
        return None


class Holding:
    """Each pass holds its worker for ``hold`` seconds, then asks to be woken ``again`` seconds later, ``times`` times."""

    def __init__(self, clock, hold: float, again: float | None = None, times: int = 1) -> None:
        self.clock, self.hold, self.again, self.times = clock, hold, again, times
        self.log: list[tuple[str, float, float]] = []
        self.count: dict[str, int] = {}

    def reconcile(self, key):
        start = self.clock()
        yield self.hold
        self.log.append((key, start, self.clock()))
        n = self.count[key] = self.count.get(key, 0) + 1
        return Outcome(requeue_after=self.again if n < self.times else None)


def make(workers, **kw):
    clock = VirtualClock()
    q = WorkQueue(clock)
    rec = Holding(clock, **kw)
    return clock, q, rec, VirtualTimeRunner(rec, q, NoWorld(), clock, workers=workers)


def test_held_workers_make_keys_wait_in_line():
    clock, q, rec, runner = make(2, hold=10.0)
    for k in "abcd":
        q.add(k)
    stats = runner.run(until=lambda: len(rec.log) == 4, horizon_s=1000)
    assert [round(s, 6) for _, s, _ in rec.log] == [0, 0, 10, 10]
    assert stats.end_s == 20.0
    assert abs(stats.busy_share - 1.0) < 1e-9


def test_wake_ups_are_honoured_in_virtual_time():
    clock, q, rec, runner = make(5, hold=0.0, again=30.0, times=3)
    q.add("a")
    runner.run(until=lambda: rec.count.get("a") == 3, horizon_s=1000)
    assert [round(s, 6) for _, s, _ in rec.log] == [0.0, 30.0, 60.0]


def test_a_key_is_never_run_by_two_workers_at_once():
    clock, q, rec, runner = make(3, hold=5.0)
    q.add("a")
    # An event for "a" while it is being processed runs it once more, afterwards.
    orig = rec.reconcile

    def reconcile(key):
        q.add("a")
        return (yield from orig(key))

    rec.reconcile = reconcile
    runner.run(until=lambda: len(rec.log) >= 3, horizon_s=12)
    starts = [s for _, s, _ in rec.log]
    ends = [e for _, _, e in rec.log]
    assert all(starts[i + 1] >= ends[i] for i in range(len(starts) - 1))


def test_errors_back_off_and_retry_after_is_honoured():
    """Through the virtual-time runner: failed passes are retried 5 ms, 10 ms, 20 ms, 40 ms later (client-go's
    per-item backoff), a success resets that, and a 429's Retry-After holds the key for exactly that long
    even though events for it keep arriving."""

    class Throttled(Exception):
        retry_after = 7.0

    clock = VirtualClock()
    q = WorkQueue(clock)
    script = [Outcome(error=RuntimeError("500"))] * 4 + [Outcome(requeue_after=1.0), Outcome(error=RuntimeError("500")),
                                                         Outcome(error=Throttled()), Outcome()]
    starts: list[float] = []

    class Scripted:
        def reconcile(self, key):
            starts.append(clock())
            yield 0.0
            return script[len(starts) - 1]

    class EventsForTheKey:
        """Watch events for the key at 2.0 and 4.0 (virtual seconds): during the Retry-After hold."""

        def __init__(self) -> None:
            self.pending = [2.0, 4.0]

        def advance_to(self, t: float) -> None:
            while self.pending and self.pending[0] <= t:
                self.pending.pop(0)
                q.add("k")

        def next_event_time(self) -> float | None:
            return self.pending[0] if self.pending else None

    q.add("k")
    runner = VirtualTimeRunner(Scripted(), q, EventsForTheKey(), clock, workers=1)
    runner.run(until=lambda: len(starts) == len(script), horizon_s=100)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # (the runner moves its clock by at least 1 ns a step: hence approx)
    assert gaps[:4] == pytest.approx([0.005, 0.01, 0.02, 0.04], abs=1e-6)  # four failures: the delay doubles
    assert gaps[4] == pytest.approx(1.0, abs=1e-6)  # the success's requeue_after
    assert gaps[5] == pytest.approx(0.005, abs=1e-6)  # the success reset the backoff: 5 ms again
    assert starts[6] < 2.0  # the throttled pass ran before the events ...
    assert gaps[6] == pytest.approx(7.0, abs=1e-6)  # ... and the next not sooner than Retry-After, despite them
    assert len(starts) == len(script)  # the events were served by the run at the hold's end, not by extra runs


class SlowWriteAdapter:
    """Observes one fresh Workspace; its status write takes ``write_s`` seconds of the clock."""
    lifecycle = WORKSPACE  # the lifecycle it serves (the runner drives it)

    def __init__(self, clock: VirtualClock, write_s: float) -> None:
        from model_cluster import inference_ws

        self.clock, self.write_s = clock, write_s
        self.ws = inference_ws("slow", 1)
        self.applied: list = []

    def observe(self, key):
        from workspace_fsm.kaito.model import Snapshot

        return self.ws, Snapshot()

    def apply(self, ws, actions):
        self.applied.extend(actions)

    def persist(self, ws, status):
        self.clock.t += self.write_s
        return ws


def _run_pass(reconciler, key):
    gen = reconciler.reconcile(key)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def test_a_pass_that_reaches_its_creations_too_late_does_not_send_them():
    """A create is sent within Config.create_send_window of the pass's decision, or not at all: the machine's
    grace for a NodeClaim it finds absent (Config.create_grace) counts on it."""
    from workspace_fsm.kaito import actions as A
    from workspace_fsm.kaito.workspace import DEFAULT_CONFIG
    from workspace_fsm.engine.runner import FsmReconciler, StaleCreate

    window = DEFAULT_CONFIG.create_send_window.total_seconds()
    for write_s, sent in ((1.0, True), (window + 1, False)):
        clock = VirtualClock()
        adapter = SlowWriteAdapter(clock, write_s)
        outcome = _run_pass(FsmReconciler(adapter, clock), "default/slow")
        creates = [a for a in adapter.applied if isinstance(a, A.CreateNodeClaim)]
        assert bool(creates) == sent
        if not sent:
            assert outcome.observe_again and isinstance(outcome.error, StaleCreate)
            assert "default/slow" in str(outcome.error)


class FailingAdapter(SlowWriteAdapter):
    """Fails the status write, or the first NodeClaim create; records what the runner says it abandoned."""

    def __init__(self, clock: VirtualClock, fail: str) -> None:
        super().__init__(clock, 0.0)
        from model_cluster import inference_ws

        self.ws = inference_ws("three", 3)
        self.fail = fail
        self.abandoned_names: list[str] = []

    def apply(self, ws, actions):
        from workspace_fsm.kaito import actions as A
        from workspace_fsm.engine.adapter import AdapterError

        for a in actions:
            if self.fail == "create" and isinstance(a, A.CreateNodeClaim):
                self.fail = ""
                raise AdapterError(f"creating NodeClaim {a.name}: API answered 500")
        super().apply(ws, actions)

    def persist(self, ws, status):
        from workspace_fsm.engine.adapter import AdapterError

        if self.fail == "persist":
            raise AdapterError("writing status: API answered 500 (it may have been stored)")
        return super().persist(ws, status)

    def abandoned(self, ws, actions):
        from workspace_fsm.kaito import actions as A

        self.abandoned_names.extend(a.name for a in actions if isinstance(a, A.CreateNodeClaim))


def test_the_runner_tells_the_adapter_which_creates_it_never_sent():
    """A create never sent can never land: the adapter reports it (Snapshot.refused) and the machine need not
    wait out the grace. The create that failed was sent, so it is not in the list."""
    from workspace_fsm.kaito import actions as A
    from workspace_fsm.engine.runner import FsmReconciler

    clock = VirtualClock()
    adapter = FailingAdapter(clock, "create")
    outcome = _run_pass(FsmReconciler(adapter, clock), "default/three")
    assert outcome.error is not None
    assert [n[-2:] for n in adapter.abandoned_names] == ["-1", "-2"]  # -0 was sent (and failed)
    assert not [a for a in adapter.applied if isinstance(a, A.CreateNodeClaim)]

    adapter = FailingAdapter(clock, "persist")  # an ambiguous status write: none of the creates was sent
    _run_pass(FsmReconciler(adapter, clock), "default/three")
    assert sorted(n[-1] for n in adapter.abandoned_names) == ["0", "1", "2"]
