"""Several runners at once over one store: never a NodeClaim too many, whoever writes.

Rollouts run two runners for the old pod's termination window, operators start a second one by mistake,
and replicas will run many. The cluster model (``model_cluster.Cluster``) gains deciders: each has its own
lagging caches (owned objects and the Workspace itself) and its own memory of its requests, and their
passes interleave one API request at a time, with kills anywhere. The model checks its invariants on
every stored change; (a) is the one this file is about: never more NodeClaims in the store, being
deleted included, than the Workspace's targetNodeCount.
"""

from __future__ import annotations

from datetime import timedelta

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, precondition, rule

import model_cluster as mc
from model_cluster import Cluster, Violation, inference_ws, pure_decide
from test_decide_properties import IDX, LAG, DecideMachine
from workspace_fsm.kaito import actions as A
from workspace_fsm.kaito.workspace import ABOVE_TARGET
from workspace_fsm.kaito.model import NodeClaim, Snapshot
from workspace_fsm.kaito.workspace import RECORD, read_lifecycle


@pytest.fixture(autouse=True, scope="module")
def _no_sleep_no_network():
    with mc.no_sleep_no_sockets():
        yield


def kinds(d, cls):
    return [a for a in d.actions if isinstance(a, cls)]


def run_through(c: Cluster, decider: str, key: str) -> None:
    while c.step_of(decider, key) is not None:
        c.step_once(decider, key)


def through_status_write(c: Cluster, decider: str, key: str):
    """``decider`` decides on ``key`` and gets as far as its status write (the finalizer, the write)."""
    st_ = c.begin_at(decider, key)
    for _ in range(len(st_.p.decision.before) + 1):
        c.step_once(decider, key)
    return st_


def _race(c: Cluster, key: str) -> str:
    """Runners a and b decide on the same version; a's status write wins and it is about to send its
    creates; b's write loses the 409. Returns the first name a recorded."""
    a = c.begin_at("a", key)
    b = c.begin_at("b", key)
    names = [x.name for x in kinds(a.p.decision, A.CreateNodeClaim)]
    assert names == [x.name for x in kinds(b.p.decision, A.CreateNodeClaim)]  # deterministic names
    for _ in range(len(a.p.decision.before) + 1):  # a: finalizer, status write
        c.step_once("a", key)
    assert c.step_of("a", key).written
    while c.step_of("b", key) is not None:  # b: its write conflicts, and its pass ends
        c.step_once("b", key)
    return names[0]


def test_a_runner_that_lost_the_409_never_replaces_the_winner_s_creates():
    """The bug of issue 10, as a story: the loser's pass ends at the 409 (its names are nobody's record),
    looks again while the winner's creates are on their way, and must wait for them, not replace them."""
    c = Cluster()
    key = c.add(inference_ws("race", 2))
    c.add_decider("a")
    c.add_decider("b")
    _race(c, key)
    b = c.begin_at("b", key, lag=1000)
    assert not kinds(b.p.decision, A.CreateNodeClaim)  # the winner's names are in flight: they count
    assert b.p.decision.wake.after is not None
    run_through(c, "b", key)
    run_through(c, "a", key)  # the winner's creates land
    assert len(c.claims(key)) == 2
    c.converge()
    assert c.state(key) == "Ready" and c.entries[key].max_claims == 2


def test_the_model_catches_a_runner_that_takes_its_own_memory_for_another_s():
    """The checker is shown to work: with the old behaviour (a runner that lost the 409 reports the names
    as never sent, and that report is taken whoever recorded them), a third NodeClaim appears and (a)
    fires at that very change of the store."""
    c = Cluster()
    c.forge_refusals = True
    key = c.add(inference_ws("race", 2))
    c.add_decider("a")
    c.add_decider("b")
    _race(c, key)
    b = c.begin_at("b", key, lag=1000)
    assert len(kinds(b.p.decision, A.CreateNodeClaim)) == 2  # replacements, with new names
    run_through(c, "b", key)
    with pytest.raises(Violation, match=r"\(a\) default/race: 3 NodeClaims"):
        run_through(c, "a", key)


def test_a_refused_create_of_one_s_own_pass_is_still_replaced_at_once():
    """The hint keeps its use: a create this very runner sent and the server refused (429) is replaced in
    the next pass, with no grace."""
    c = Cluster()
    key = c.add(inference_ws("refused", 1))
    c.add_decider("a")
    through_status_write(c, "a", key)
    c.step_once("a", key, outcome="refused")  # the create: 429
    assert c.step_of("a", key) is None and c.claims(key) == []
    (first,) = read_lifecycle(c.ws(key).status).data.nodeclaims
    again = c.begin_at("a", key)
    (new,) = kinds(again.p.decision, A.CreateNodeClaim)
    assert new.name != first and new.claim.startswith("a-0.")


def test_another_runner_does_not_take_a_refusal_it_did_not_see():
    c = Cluster()
    key = c.add(inference_ws("refused", 1))
    c.add_decider("a")
    c.add_decider("b")
    through_status_write(c, "a", key)
    c.step_once("a", key, outcome="refused")
    assert not kinds(c.begin_at("b", key).p.decision, A.CreateNodeClaim)  # b knows nothing of it: it waits


# ----------------------------------------------------------------------------- defence in depth


def _claim(name: str, *, ready: bool = False, node: str | None = None, created: int = 0, deleting: bool = False):
    from datetime import datetime, timezone
    return NodeClaim(name=name, workspace_key="default/extra", instance_type="Standard_NC24ads_A100_v4",
                     launched="True", registered="True" if ready else None, initialized="True" if ready else None,
                     ready="True" if ready else None, node_name=node, deleting=deleting,
                     created_at=datetime(2026, 1, 1, 0, 0, created, tzinfo=timezone.utc))


def _settled_two(c: Cluster) -> str:
    key = c.add(inference_ws("extra", 2))
    c.converge()
    assert c.state(key) == "Ready"
    return key


def test_nodeclaims_above_target_are_deleted_not_ready_first_then_newest_never_adopted():
    c = Cluster()
    key = _settled_two(c)
    ws = c.ws(key)
    snap = c.snapshot(key)
    mine = list(snap.nodeclaims)
    extras = (_claim("hand-made-old", created=1), _claim("hand-made-new", created=9),
              _claim("hand-made-ready", ready=True, node="node-x", created=20))
    d = pure_decide(ws, attrs.evolve(snap, nodeclaims=tuple(mine) + extras), c.now, pass_id="t.1")
    deletes = kinds(d, A.DeleteNodeClaim)
    # five live for a target of two: three go; the not-Ready ones first (newest first), then the newest Ready
    # one that backs no worker node; the two serving the workload stay.
    assert [x.name for x in deletes] == ["hand-made-new", "hand-made-old", "hand-made-ready"]
    assert all(x.reason == ABOVE_TARGET for x in deletes)
    (ev,) = [e for e in kinds(d, A.RecordEvent) if e.reason == ABOVE_TARGET]
    assert ev.type == "Warning" and "5 live NodeClaims for a targetNodeCount of 2" in ev.message
    rec = read_lifecycle(d.status)
    assert set(rec.data.nodeclaims) == {x.name for x in mine}  # never adopted
    assert {"NodeClaim/" + x.name for x in deletes} <= set(rec.data.deleted)  # asked once, not every pass
    again = pure_decide(ws.with_status(d.status), attrs.evolve(snap, nodeclaims=tuple(mine) + extras), c.now)
    assert not kinds(again, A.DeleteNodeClaim)


def test_a_worker_s_nodeclaim_goes_only_when_no_other_can():
    c = Cluster()
    key = _settled_two(c)
    ws = c.ws(key)
    snap = c.snapshot(key)
    workers = set(ws.status.worker_nodes)
    mine = list(snap.nodeclaims)
    assert {x.node_name for x in mine} == workers
    # a third Ready one whose node serves nobody, older than both: it goes, not a worker's
    spare = _claim("spare", ready=True, node="node-spare", created=0)
    d = pure_decide(ws, attrs.evolve(snap, nodeclaims=tuple(mine) + (spare,)), c.now)
    assert [x.name for x in kinds(d, A.DeleteNodeClaim)] == ["spare"]


def test_above_target_recorded_ones_are_trimmed_too_and_being_deleted_ones_do_not_count():
    c = Cluster()
    key = _settled_two(c)
    ws = c.ws(key)
    snap = c.snapshot(key)
    gone_soon = _claim("already-going", deleting=True, created=30)
    d = pure_decide(ws, attrs.evolve(snap, nodeclaims=snap.nodeclaims + (gone_soon,)), c.now)
    assert not kinds(d, A.DeleteNodeClaim)  # being deleted: not live, nothing to do
    # a record that holds three for a target of two (an older runner's): the newest not-Ready one goes
    third = _claim(mc.decide_module.nodeclaim_name(ws, 7), created=40)
    rec = read_lifecycle(ws.status)
    rec3 = attrs.evolve(rec, data=attrs.evolve(rec.data, nodeclaims=rec.data.nodeclaims + (third.name,)))
    from workspace_fsm.kaito.model import WorkspaceStatus
    conds = tuple(x for x in ws.status.conditions if x.type != "workspace-fsm/Lifecycle") + (RECORD.to_condition(rec3, c.now),)
    ws3 = ws.with_status(attrs.evolve(ws.status, conditions=conds))
    assert isinstance(ws3.status, WorkspaceStatus)
    d = pure_decide(ws3, attrs.evolve(snap, nodeclaims=snap.nodeclaims + (third,)), c.now)
    assert [x.name for x in kinds(d, A.DeleteNodeClaim)] == [third.name]


def test_tuning_workspaces_in_a_terminal_state_are_trimmed_too():
    c = Cluster()
    key = c.add(mc.tuning_ws("tune", 1))
    c.converge()
    assert c.state(key) == "Succeeded"
    snap = c.snapshot(key)
    extra = attrs.evolve(_claim("stray", created=50), workspace_key=key)
    d = pure_decide(c.ws(key), attrs.evolve(snap, nodeclaims=snap.nodeclaims + (extra,)), c.now)
    assert [x.name for x in kinds(d, A.DeleteNodeClaim)] == ["stray"]


def test_byo_nodes_and_an_empty_snapshot_delete_nothing():
    c = Cluster()
    key = c.add(inference_ws("fresh", 2))
    assert not kinds(pure_decide(c.ws(key), Snapshot(), c.now), A.DeleteNodeClaim)
    # Bring-your-own nodes: the machine creates no NodeClaims, so it deletes none either, even labelled ones.
    byo = c.ws(key)
    byo = attrs.evolve(byo, resource=attrs.evolve(byo.resource, instance_type=None))
    assert byo.resource.byo_nodes
    labelled = tuple(attrs.evolve(_claim(f"byo-{i}", created=i), workspace_key=key) for i in range(3))
    assert not kinds(pure_decide(byo, Snapshot(nodeclaims=labelled), c.now), A.DeleteNodeClaim)
    # and the same three on the machine's own Workspace: one goes (the control)
    assert len(kinds(pure_decide(c.ws(key), Snapshot(nodeclaims=labelled), c.now), A.DeleteNodeClaim)) == 1


# ----------------------------------------------------------------------------- the stateful model


DECIDER_OUTCOMES = st.sampled_from(["ok"] * 8 + ["refused", "lost"])


class MultiWriterMachine(DecideMachine):
    """DecideMachine's cluster, users and liveness checks, with 2-4 runners at once instead of one.

    Each extra runner decides on its own lagging caches (owned objects and the Workspace itself, each
    monotone until it is killed), and its passes advance one API request at a time, interleaved with
    every other runner's requests, the cluster moving and users acting; a request may be refused (nothing
    stored) or lost (stored, the answer never comes); a runner is SIGKILLed anywhere and may leave its
    last create queued in the API server. The invariants are checked on every stored change."""

    def __init__(self) -> None:
        super().__init__()
        self.n_deciders = 2

    # The single runner's passes are not drawn here: every pass is one of the deciders' (plain methods
    # without the rule marker shadow DecideMachine's rules).
    def pass_at_once(self, *a):  # noqa: D401
        raise AssertionError("not a rule here")

    begin_pass = finish_pass = pass_cut_short = runner_crashes = pass_at_once

    @initialize(n=st.integers(2, 4))
    def how_many(self, n):
        self.n_deciders = n

    def _deciders(self) -> list[str]:
        if not self.c.deciders:
            for i in range(self.n_deciders):
                self.c.add_decider(f"r{i}")
        return sorted(self.c.deciders)

    def _free(self):
        return [(d, k) for d in self._deciders() for k in self.c.live_keys() if (d, k) not in self.c.steps]

    @precondition(lambda self: self.c is not None and self.c.live_keys())
    @rule(i=IDX, lag=LAG, ws_lag=st.sampled_from([0, 0, 0, 1, 2, 5]))
    def runner_decides(self, i, lag, ws_lag):
        self._step()
        free = self._free()
        if free:
            d, k = self._pick(free, i)
            self.c.begin_at(d, k, lag=lag, ws_lag=ws_lag)

    @precondition(lambda self: self.c is not None and self.c.live_keys())
    @rule(i=IDX, lag=LAG)
    def runners_race(self, i, lag):
        """One watch event wakes every runner: each free one decides on the same Workspace at once."""
        self._step()
        key = self._pick(self.c.live_keys(), i)
        for d in self._deciders():
            if (d, key) not in self.c.steps:
                self.c.begin_at(d, key, lag=lag)

    @precondition(lambda self: self.c is not None and self.c.steps)
    @rule(i=IDX, outcome=DECIDER_OUTCOMES)
    def runner_sends_one_request(self, i, outcome):
        self._step()
        d, k = self._pick(sorted(self.c.steps), i)
        self.c.step_once(d, k, outcome)

    @precondition(lambda self: self.c is not None and self.c.steps)
    @rule(i=IDX)
    def runner_finishes_a_pass(self, i):
        self._step()
        d, k = self._pick(sorted(self.c.steps), i)
        run_through(self.c, d, k)

    @precondition(lambda self: self.c is not None and self.c.live_keys())
    @rule(i=IDX, queue_creates=st.booleans())
    def runner_killed(self, i, queue_creates):
        self._step()
        self.c.kill(self._pick(self._deciders(), i), queue_creates=queue_creates)


MultiWriterMachine.TestCase.settings = settings(max_examples=1000, stateful_step_count=60, deadline=None,
                                                suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.filter_too_much])
TestMultiWriter = MultiWriterMachine.TestCase


class _ForgedRefusals(MultiWriterMachine):
    """The same machine, with runners that behave as before the fix (see Cluster.forge_refusals)."""

    def _deciders(self) -> list[str]:
        self.c.forge_refusals = True
        return super()._deciders()


def test_the_stateful_model_finds_the_several_writers_bug_unaided():
    """The search is shown to work, not only the story: with the old behaviour, the stateful machine finds
    a Workspace over its target by itself (derandomized, so this holds on every machine; generation only,
    as the first failure is all this needs). The same search with the fix finds nothing (TestMultiWriter,
    and 3,000 examples of it when this was written)."""
    from hypothesis import Phase
    from hypothesis.stateful import run_state_machine_as_test

    with pytest.raises(Violation, match=r"\((a|g)\) "):
        run_state_machine_as_test(_ForgedRefusals, settings=settings(
            max_examples=3000, stateful_step_count=60, deadline=None, derandomize=True, database=None,
            phases=[Phase.generate], suppress_health_check=list(HealthCheck)))


def test_grace_and_kills_two_runners_story():
    """A winner killed right after its status write, as it sends its first create (queued in the API
    server): the other runner waits out the grace, never adds one, and the queued create lands."""
    c = Cluster()
    key = c.add(inference_ws("killed", 1))
    c.add_decider("a")
    c.add_decider("b")
    through_status_write(c, "a", key)
    c.kill("a", queue_creates=True)
    assert len(c.queued) == 1
    c.advance(timedelta(seconds=30))
    assert not kinds(c.begin_at("b", key).p.decision, A.CreateNodeClaim)
    run_through(c, "b", key)
    c.land_queued()
    assert len(c.claims(key)) == 1
    c.converge()
    assert c.entries[key].max_claims == 1


# ----------------------------------------------------------------------------- no false flaps


def _to_plugins_ready(c: Cluster, key: str) -> None:
    """Runner a takes the Workspace to PluginsReady on a fresh snapshot."""
    for _ in range(4):
        run_through(c, "a", key) if c.step_of("a", key) else None
        c.begin_at("a", key)
        run_through(c, "a", key)
        for x in c.claims(key):
            if x.phase != "Ready":
                c.make_ready(x.name, gpu=False)
        if c.state(key) == "PluginsReady":
            return
    raise AssertionError(c.state(key))


def test_a_runner_whose_caches_lag_does_not_flap_a_state_another_runner_entered():
    """Seen with 2 runners before: PluginsReady -> NodesProvisioning -> PluginsReady within one second, because
    the second runner's NodeClaim cache still showed them not Ready. Readiness missing is a loss only once
    the state has been held for Config.loss_settle; then it is acted on."""
    c = Cluster()
    key = c.add(inference_ws("flap", 2))
    c.add_decider("b")  # its caches are at version 0: no NodeClaim Ready
    c.add_decider("a")
    _to_plugins_ready(c, key)
    stale = c.begin_at("b", key, lag=10_000)
    d = stale.p.decision
    assert d.state == "PluginsReady" and not d.transitions
    assert d.wake.after is not None and d.wake.after <= c.config.loss_settle  # looked at again by then
    run_through(c, "b", key)
    c.advance(c.config.loss_settle)
    # still not Ready to b once the state has been held that long: a real loss, acted on
    later = c.begin_at("b", key, lag=10_000).p.decision
    assert [(h.source, h.dest) for h in later.transitions] == [("PluginsReady", "NodesProvisioning")]


def test_a_nodeclaim_being_deleted_is_a_loss_at_once():
    c = Cluster()
    key = c.add(inference_ws("lost-now", 2))
    c.add_decider("a")
    _to_plugins_ready(c, key)
    c.node_terminated(c.claims(key)[0].name)
    d = c.begin_at("a", key).p.decision
    assert [(h.source, h.dest) for h in d.transitions] == [("PluginsReady", "NodesProvisioning")]
