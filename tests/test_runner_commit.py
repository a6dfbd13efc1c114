"""A transition, a log line or a metric is a fact only once its status write committed."""

from __future__ import annotations

from workspace_fsm.kaito.workspace import WORKSPACE

import logging

from model_cluster import inference_ws
from test_runner import _run_pass
from workspace_fsm.kaito import actions as A
from workspace_fsm.engine.adapter import AdapterError, Conflict
from workspace_fsm.kaito.model import Snapshot
from workspace_fsm.engine.runner import FsmReconciler, VirtualClock


class WriteAdapter:
    """Observes a fresh Workspace; its status write answers ``answer`` (None: success)."""
    lifecycle = WORKSPACE  # the lifecycle it serves (the runner drives it)

    def __init__(self, answer: Exception | None) -> None:
        self.ws = inference_ws("w", 2)
        self.answer = answer
        self.applied: list = []
        self.abandoned_names: list[str] = []

    def observe(self, key):
        return self.ws, Snapshot()

    def apply(self, ws, actions):
        self.applied.extend(actions)

    def persist(self, ws, status):
        if self.answer is not None:
            raise self.answer
        return ws

    def abandoned(self, ws, actions):
        self.abandoned_names.extend(a.name for a in actions if isinstance(a, A.CreateNodeClaim))


def _run(reconciler, key="default/w"):
    return _run_pass(reconciler, key)


def test_a_pass_that_loses_the_409_logs_counts_and_reports_nothing(caplog):
    adapter = WriteAdapter(Conflict("writing status: conflict"))
    r = FsmReconciler(adapter, VirtualClock())
    with caplog.at_level(logging.INFO, logger="workspace_fsm.engine.runner"):
        outcome = _run(r)
    assert outcome.observe_again
    assert r.transitions == 0
    assert not [m for m in caplog.messages if "->" in m]
    assert not [a for a in adapter.applied if isinstance(a, (A.CreateNodeClaim, A.RecordEvent))]
    # its names are no record's: another runner recorded and is sending the very same ones
    assert adapter.abandoned_names == []


def test_an_ambiguous_write_reports_its_unsent_creates_under_its_own_pass_id():
    adapter = WriteAdapter(AdapterError("writing status: API answered 500"))
    r = FsmReconciler(adapter, VirtualClock(), writer_id="w1")
    _run(r)
    assert r.transitions == 0
    assert len(adapter.abandoned_names) == 2


def test_a_committed_pass_logs_and_counts_its_transitions_and_tags_its_creates(caplog):
    adapter = WriteAdapter(None)
    r = FsmReconciler(adapter, VirtualClock(), writer_id="w1")
    with caplog.at_level(logging.INFO, logger="workspace_fsm.engine.runner"):
        _run(r)
    assert r.transitions == 1
    assert [m for m in caplog.messages if "Pending -> NodesProvisioning" in m]
    creates = [a for a in adapter.applied if isinstance(a, A.CreateNodeClaim)]
    assert len(creates) == 2 and {a.claim for a in creates} == {"w1.1"}
    _run(r)
    assert {a.claim for a in adapter.applied if isinstance(a, A.CreateNodeClaim)} >= {"w1.1"}
    r2 = FsmReconciler(adapter, VirtualClock())
    assert r2.writer_id != r.writer_id and len(r2.writer_id) == 8  # random per process


def _recording_hooks():
    from workspace_fsm.engine.hooks import Hooks

    hooks, seen = Hooks(), []
    hooks.on_transition(lambda e, counters: seen.append(("transition", e.lifecycle, e.key, e.source, e.dest, e.why)))
    hooks.on_action(lambda e, counters: (seen.append(("action", type(e.action).__name__)), counters.inc("acts")))
    return hooks, seen


def test_hooks_see_committed_transitions_and_applied_actions_only():
    hooks, seen = _recording_hooks()
    lost = FsmReconciler(WriteAdapter(Conflict("writing status: conflict")), VirtualClock(), hooks=hooks)
    _run(lost)
    assert seen == [] and lost.counters.get("acts") == 0  # the write lost: nothing happened, nothing reported
    ok = FsmReconciler(WriteAdapter(None), VirtualClock(), hooks=hooks)
    _run(ok)
    assert ("transition", "workspace", "default/w", "Pending", "NodesProvisioning", "spec_accepted") in seen
    acts = [s[1] for s in seen if s[0] == "action"]
    # The finalizer (applied before the write) is reported only once the write committed, then the creates.
    assert acts[:3] == ["AddFinalizer", "CreateNodeClaim", "CreateNodeClaim"]
    assert ok.counters.get("acts") == len(acts)


def test_a_failing_hook_never_fails_the_pass(caplog):
    from workspace_fsm.engine.hooks import Hooks

    hooks = Hooks()

    @hooks.on_transition
    def broken(event, counters):
        raise RuntimeError("an author's bug")

    adapter = WriteAdapter(None)
    r = FsmReconciler(adapter, VirtualClock(), hooks=hooks)
    with caplog.at_level(logging.ERROR, logger="workspace_fsm.hooks"):
        outcome = _run(r)
    assert outcome.error is None and r.transitions == 1
    assert any("hook broken failed" in m for m in caplog.messages)
    assert [a for a in adapter.applied if isinstance(a, A.CreateNodeClaim)]
