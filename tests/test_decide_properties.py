"""Property tests of the pure step ``decide`` against the in-memory cluster model (tests/model_cluster.py).

The stateful machine at the bottom plays an adversarial adapter: stale caches, late, failed, partly
applied and duplicated actions, status write conflicts, runner crashes before the status write and
right after it (status persisted, no creation applied), time jumps past deadlines, spec edits and
deletions, in any interleaving over up to three Workspaces. The model checks the safety properties at
every change of the truth and at every status write (including that nothing exists that the persisted
record does not hold); the machine checks liveness from random points and at the end.
"""

from __future__ import annotations

import json
import socket
import time
from datetime import datetime, timedelta, timezone

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

import model_cluster as mc
from model_cluster import (EPOCH, Cluster, inference_ws, pure_decide, reparse, reparse_status,
                           spec_revision, tuning_ws)
from workspace_fsm.kaito import actions as A
from workspace_fsm.kaito.workspace import WORKSPACE_SUCCEEDED, nodeclaim_name
from workspace_fsm.engine.problems import Problem
from workspace_fsm.kaito.workspace import STATES
from workspace_fsm.kaito.model import (Condition, Job, LabelSelector, Node, NodeClaim, ResourceSpec,
                                 Snapshot, Workload, Workspace, WorkspaceStatus, parse_workspace)
from workspace_fsm.kaito.workspace import LIFECYCLE_CONDITION

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ============================================================================ no sleeping, no network


@pytest.fixture(autouse=True, scope="module")
def _no_sleep_no_network():
    with mc.no_sleep_no_sockets():
        yield


def test_the_purity_guard_catches_clock_sleep_network_and_files():
    from workspace_fsm.kaito import workspace as decide_module

    with pytest.raises(AssertionError, match="sleep"):
        time.sleep(0)
    with pytest.raises(AssertionError, match="create_connection"):
        socket.create_connection(("127.0.0.1", 9))
    with mc.no_clock_no_network():
        for call in (time.time, time.monotonic, decide_module.datetime.now, lambda: open("/dev/null"),
                     lambda: socket.getaddrinfo("localhost", 80)):
            with pytest.raises(AssertionError, match="decide must be pure"):
                call()
        # the core's datetime still recognises real datetimes
        assert isinstance(EPOCH, decide_module.datetime)
    assert time.time() > 0 and datetime.now(timezone.utc) > EPOCH  # restored


# ============================================================================ the model's own checks


def test_the_model_flags_a_nodeclaim_the_persisted_record_does_not_hold():
    """(g): a creation applied without the status write that records it is a violation."""
    c = Cluster()
    key = c.add(inference_ws("unrecorded"))
    p = c.begin(key)
    (create,) = [a for a in p.decision.after if isinstance(a, A.CreateNodeClaim)]
    c.pending.pop(key)
    with pytest.raises(mc.Violation, match=r"\(g\)"):
        c.apply(key, create, p)  # as if creations ran before the status write


@pytest.mark.parametrize("crash", ["before the status write", "right after the status write"])
def test_a_crash_around_the_status_write_creates_only_what_is_recorded(crash):
    c = Cluster()
    key = c.add(inference_ws("crash"))
    p = c.begin(key)
    assert p.decision.before and any(isinstance(a, A.CreateNodeClaim) for a in p.decision.after)
    c.restart(steps=0 if crash.startswith("before") else 1, from_write=True)
    assert c.claims(key) == []  # no creation applied either way
    assert (c.record(key) is not None) == (crash.startswith("right"))  # the write happened, or not
    c.converge()
    assert c.state(key) == "Ready"


# ============================================================================ strategies

NOW = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2040, 1, 1),
                   timezones=st.just(timezone.utc))
COND = st.sampled_from(["True", "False", "Unknown", None, "", "yes"])
GARBAGE_TEXT = st.text(max_size=12)


def _workspace_shapes():
    byo = st.builds(lambda name, count: attrs.evolve(
        inference_ws(name, count), resource=ResourceSpec(LabelSelector(match_labels={"apps": name}), count=count)),
        st.sampled_from(["byo", "b-2"]), st.integers(-2, 4))
    return st.one_of(
        st.builds(inference_ws, st.sampled_from(["a", "ws-1", "x" * 60]), st.integers(-2, 4)),
        st.builds(tuning_ws, st.sampled_from(["t", "tune-me"]), st.integers(-1, 2)),
        byo,
    )


@st.composite
def snapshots(draw, ws: Workspace) -> Snapshot:
    """Arbitrary snapshots: plausible and garbage names, any condition values, negative numbers."""
    known = [nodeclaim_name(ws, i) for i in range(4)]
    names = st.one_of(st.sampled_from(known), GARBAGE_TEXT)
    node_names = st.one_of(st.sampled_from(["node-" + n for n in known] + ["n1", "n2"]), GARBAGE_TEXT)
    claims = draw(st.lists(st.builds(
        NodeClaim, name=names, workspace_key=st.sampled_from([ws.key, "other/x", ""]),
        instance_type=GARBAGE_TEXT, launched=COND, registered=COND, initialized=COND, ready=COND,
        node_name=st.one_of(st.none(), node_names), deleting=st.booleans(),
        failure_reason=st.one_of(st.none(), st.just("InsufficientCapacity"), GARBAGE_TEXT)), max_size=6))
    nodes = draw(st.lists(st.builds(
        Node, name=node_names,
        labels=st.dictionaries(st.sampled_from(["accelerator", "apps", "kaito.sh/workspace"]),
                               st.sampled_from(["nvidia", ws.metadata.name, "x"]), max_size=3),
        ready=st.booleans(), gpu_capacity=st.integers(-3, 8)), max_size=6))
    revs = st.sampled_from([spec_revision(ws), "old-revision", ""])
    workload = draw(st.one_of(st.none(), st.builds(
        Workload, kind=st.sampled_from(["Deployment", "StatefulSet", "Pod"]),
        name=st.sampled_from([ws.metadata.name, "other"]), replicas=st.integers(-3, 5),
        ready_replicas=st.integers(-3, 5), updated_replicas=st.integers(-3, 5), revision=revs,
        deleting=st.booleans(), problem=st.one_of(st.none(), st.just("CrashLoopBackOff"), GARBAGE_TEXT))))
    job = draw(st.one_of(st.none(), st.builds(
        Job, name=st.sampled_from([ws.metadata.name, "other"]), revision=revs, active=st.integers(-2, 3),
        succeeded=st.integers(-2, 3), failed=st.integers(-2, 3), complete=st.booleans(),
        failed_permanently=st.booleans(), deleting=st.booleans(),
        failure_reason=st.one_of(st.none(), GARBAGE_TEXT))))
    absent = draw(st.frozensets(st.one_of(
        st.sampled_from([f"NodeClaim/{n}" for n in known] + [f"Job/{ws.metadata.name}",
                                                             f"Workload/{ws.metadata.name}"]),
        GARBAGE_TEXT), max_size=5))
    return Snapshot(nodeclaims=tuple(claims), nodes={n.name: n for n in nodes}, workload=workload, job=job,
                    absent=absent)


def _json_values():
    return st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False),
                  st.text(max_size=8)),
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
        max_leaves=12)


@st.composite
def garbage_records(draw) -> str:
    """Lifecycle condition messages: plausible records with wrong fields, any JSON, any text."""
    states = st.one_of(st.sampled_from(sorted(STATES)), GARBAGE_TEXT)
    times = st.one_of(st.sampled_from(["2026-01-01T00:00:00Z", "2025-12-31T23:59:59+14:00", "2026-01-01",
                                       "0001-01-01T00:00:00Z", "not a time", ""]), st.integers(), st.none())
    plausible = st.fixed_dictionaries({"v": st.sampled_from([1, 1, 2, "1", True]), "state": states}, optional={
        "entered": times, "attempts": st.one_of(st.integers(-5, 5), GARBAGE_TEXT, st.none()),
        "gen": st.one_of(st.integers(-5, 5), GARBAGE_TEXT), "claims": st.one_of(st.lists(GARBAGE_TEXT, max_size=4),
                                                                                 st.integers(), GARBAGE_TEXT),
        "deleted": st.one_of(st.lists(GARBAGE_TEXT, max_size=3), st.integers()),
        "seq": st.one_of(st.integers(-10, 10**9), GARBAGE_TEXT), "failures": st.integers(-5, 50),
        "rev": st.one_of(st.none(), GARBAGE_TEXT, st.integers()),
        "history": st.one_of(st.lists(st.lists(st.one_of(GARBAGE_TEXT, st.none(), st.integers()), max_size=5),
                                      max_size=3), GARBAGE_TEXT)})
    message = draw(st.one_of(plausible.map(json.dumps), _json_values().map(json.dumps), st.text(max_size=40),
                             st.sampled_from(mc.HOSTILE_RECORDS)))
    return message


def _status_with_record(message: str, other: tuple[Condition, ...] = (), target: int | None = None,
                        state: str | None = None) -> WorkspaceStatus:
    return WorkspaceStatus(conditions=other + (Condition(LIFECYCLE_CONDITION, "True", "Ready", message, EPOCH, 1),),
                           state=state, target_node_count=target)


# ---------------------------------------------------------------------------- reachable states

OPS = ("pass", "pass", "pass", "stale_pass", "settle", "settle", "launch", "fail_launch", "ready", "gpu", "finish_delete",
       "rollout", "job_ok", "job_fail", "finish_job_delete", "node_lost", "spec", "conflict_pass",
       "stop_after_write_pass", "advance", "advance_long", "delete")


def run_ops(c: Cluster, ops: list[tuple[str, int]]) -> None:
    """Drive the model through a random but reachable history (used by the plain @given tests)."""
    for op, i in ops:
        keys = c.live_keys()
        if not keys:
            return
        key = keys[i % len(keys)]
        claims = c.claims(key)
        if op == "pass":
            c.run_pass(key)
        elif op == "settle":
            c.settle(key)
        elif op == "stale_pass":
            c.run_pass(key, lag=i % 5)
        elif op == "conflict_pass":  # the status write gets a 409: only ``before`` is applied
            c.run_pass(key, outcome="conflict")
        elif op == "stop_after_write_pass":  # the status is persisted, then the pass dies before ``after``
            c.run_pass(key, outcome="stop_after_write")
        elif op in ("launch", "fail_launch"):
            pending = [x for x in claims if x.phase == "Pending" and not x.deleting]
            if pending:
                c.launch(pending[i % len(pending)].name, ok=op == "launch")
        elif op == "ready":
            up = [x for x in claims if x.phase in ("Pending", "Launched") and not x.deleting]
            if up:
                c.make_ready(up[i % len(up)].name)
        elif op == "gpu":
            nodes = [x.node_name for x in claims if x.node_name in c.world.nodes
                     and c.world.nodes[x.node_name].gpu_capacity == 0]
            if nodes:
                c.gpu_arrives(nodes[i % len(nodes)])
        elif op == "finish_delete":
            gone = [x for x in claims if x.deleting]
            if gone:
                c.finish_claim_deletion(gone[i % len(gone)].name)
        elif op == "node_lost":
            ready = [x for x in claims if x.phase == "Ready" and not x.deleting]
            if ready:
                c.node_terminated(ready[i % len(ready)].name)
        elif op == "rollout" and c.workload(key) is not None:
            c.rollout(key)
        elif op in ("job_ok", "job_fail"):
            j = c.job(key)
            if j is not None and not j.complete and not j.failed_permanently:
                c.finish_job(key, ok=op == "job_ok")
        elif op == "finish_job_delete":
            j = c.job(key)
            if j is not None and j.deleting:
                c.finish_job_deletion(key)
        elif op == "spec":
            c.change_spec(key)
        elif op == "advance":
            c.advance(timedelta(seconds=30 * (i % 7)))
        elif op == "advance_long":
            c.advance(timedelta(minutes=(5, 11, 31, 2900)[i % 4]))
        elif op == "delete" and i % 3 == 0:
            c.delete_workspace(key)


def op_lists(max_size: int = 25):
    """A warm-up (that many happy rounds: a pass, then the cluster settles) and random operations."""
    return st.tuples(st.integers(0, 4), st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 11)),
                                                  max_size=max_size))


def new_cluster(kind: int, count: int, ops: tuple[int, list] = (0, [])) -> tuple[Cluster, str]:
    c = Cluster(full_reparse=False)
    ws = inference_ws("ws", count) if kind == 0 else tuning_ws("ws")  # KAITO tunes on one node
    key = c.add(ws)
    warm, steps = ops
    for _ in range(warm):
        c.run_pass(key)
        c.settle(key)
    run_ops(c, steps)
    return c, key


# ============================================================================ plain properties


@PROPS
@given(kind=st.integers(0, 1), count=st.integers(1, 3), ops=op_lists(), data=st.data(), now=NOW)
def test_decide_is_deterministic(kind, count, ops, data, now):
    """Same inputs, equal Decision: twice on the same objects, and on fresh equal copies."""
    c, key = new_cluster(kind, count, ops)
    ws = c.ws(key)
    snap = data.draw(st.one_of(st.just(c.snapshot(key)), snapshots(ws)))
    first = pure_decide(ws, snap, now)
    assert pure_decide(ws, snap, now) == first
    assert pure_decide(reparse(ws), attrs.evolve(snap), now) == first


@PROPS
@given(ws=_workspace_shapes(), data=st.data(), now=NOW,
       target=st.one_of(st.none(), st.integers(-3, 5)), gen=st.integers(-1, 5), deleting=st.booleans(),
       finalizers=st.sampled_from([(), ("workspace.kaito.io/finalizer",), ("other/finalizer",)]))
def test_decide_never_raises_on_arbitrary_snapshots_and_records(ws, data, now, target, gen, deleting, finalizers):
    """Garbage snapshots (names, conditions, negative numbers) and garbage persisted records: decide
    answers, and what it answers can be persisted and read back."""
    message = data.draw(st.one_of(garbage_records(), st.none()))
    meta = attrs.evolve(ws.metadata, generation=gen, finalizers=finalizers,
                        deletion_timestamp=EPOCH if deleting else None)
    status = WorkspaceStatus(target_node_count=target) if message is None else _status_with_record(message, target=target)
    ws = attrs.evolve(ws, metadata=meta, status=status)
    snap = data.draw(snapshots(ws))
    d = pure_decide(ws, snap, now)
    assert d.state in STATES
    assert d.wake.after is None or d.wake.after >= timedelta(0)
    assert set(d.status.to_dict()) <= mc.STATUS_KEYS
    json.dumps(d.status.to_dict())  # persistable
    again = pure_decide(ws.with_status(d.status), snap, now)  # and the next pass reads it back
    assert again.state in STATES
    if not ws.deleting:
        assert not any(isinstance(a, A.RemoveFinalizer) for a in d.actions)
    created = [a for a in d.actions if isinstance(a, A.CreateNodeClaim)]
    assert len({a.name for a in created}) == len(created)


@PROPS
@given(ws=_workspace_shapes(), data=st.data(), now=NOW, deleting=st.booleans(),
       problems=st.lists(st.builds(Problem, st.text(max_size=10), st.from_regex(r"[A-Z][A-Za-z]{0,20}", fullmatch=True),
                                   st.text(max_size=30)), min_size=1, max_size=3),
       strip_spec=st.booleans(), record=st.one_of(st.none(), garbage_records()))
def test_invalid_workspace_gets_its_problem_as_condition_and_no_creation(ws, data, now, deleting, problems,
                                                                         strip_spec, record):
    """A Workspace with problems: WorkspaceSucceeded=False with the first problem's reason and no
    mutating action; being deleted, it may only delete (NodeClaims, its finalizer), never create."""
    if strip_spec:
        ws = attrs.evolve(ws, resource=None, inference=None, tuning=None)
    meta = attrs.evolve(ws.metadata, finalizers=("workspace.kaito.io/finalizer",),
                        deletion_timestamp=EPOCH if deleting else None)
    status = WorkspaceStatus() if record is None else _status_with_record(record)
    ws = attrs.evolve(ws, metadata=meta, problems=tuple(problems), status=status)
    snap = data.draw(snapshots(ws))
    d = pure_decide(ws, snap, now)
    creating = (A.AddFinalizer, A.CreateNodeClaim, A.CreateWorkload, A.UpdateWorkload, A.CreateJob)
    assert not any(isinstance(a, creating) for a in d.actions)
    if not deleting:
        assert d.mutating_actions == ()
        cond = d.status.condition(WORKSPACE_SUCCEEDED)
        assert cond is not None and cond.status == "False" and cond.reason == problems[0].reason
        assert cond.observed_generation == ws.metadata.generation
        # the next pass on the persisted status changes nothing and says nothing again
        again = pure_decide(reparse_status(ws.with_status(d.status)), snap, now + timedelta(minutes=1))
        assert not again.status_changed and again.actions == ()


INVALID_EDITS = {
    "unknown preset": lambda d: d["inference"]["preset"].update(name="no-such-model-xyz"),
    "inference and tuning": lambda d: d.update(tuning=tuning_ws("x").to_dict()["tuning"]),
    "neither": lambda d: d.pop("inference"),
    "bad count": lambda d: d["resource"].update(count=-1),
    "unknown field": lambda d: d["resource"].update(gpus=4),
}


@settings(max_examples=200, deadline=None)
@given(edit=st.sampled_from(sorted(INVALID_EDITS)), count=st.integers(1, 3), data=st.data(), now=NOW)
def test_parsed_invalid_documents_are_reported_not_acted_on(edit, count, data, now):
    doc = inference_ws("bad", count).to_dict()
    INVALID_EDITS[edit](doc)
    ws = parse_workspace(doc)
    assert ws.problems, edit
    d = pure_decide(ws, data.draw(snapshots(inference_ws("bad", count))), now)
    assert d.mutating_actions == ()
    cond = d.status.condition(WORKSPACE_SUCCEEDED)
    assert (cond.status, cond.reason) == ("False", ws.problems[0].reason)
    assert [a.reason for a in d.actions] == [ws.problems[0].reason]  # one Warning event, the first time


@PROPS
@given(kind=st.integers(0, 1), count=st.integers(1, 3), ops=op_lists(40))
def test_last_transition_time_moves_only_when_status_moves(kind, count, ops):
    """Across consecutive persisted passes (the model checks every write; here also step by step)."""
    c, key = new_cluster(kind, count, (ops[0], []))
    seen: dict[str, Condition] = {}
    for op in ops[1]:
        run_ops(c, [op])
        if key not in c.live_keys():
            break
        for cond in c.ws(key).status.conditions:
            old = seen.get(cond.type)
            if old is not None and old.status == cond.status:
                assert old.last_transition_time == cond.last_transition_time, (cond.type, old, cond)
            seen[cond.type] = cond


@PROPS
@given(kind=st.integers(0, 1), count=st.integers(1, 3), ops=op_lists(), data=st.data(), now=NOW)
def test_restart_anywhere_decides_the_same_from_the_persisted_form(kind, count, ops, data, now):
    """(d) on arbitrary snapshots: the Workspace read back through to_dict/JSON/parse_workspace decides
    exactly as the in-memory one (actions, status, wake-up, transitions)."""
    c, key = new_cluster(kind, count, ops)
    ws = c.ws(key)
    snap = data.draw(st.one_of(st.just(c.snapshot(key)), snapshots(ws)))
    assert pure_decide(reparse(ws), snap, now) == pure_decide(ws, snap, now)


@PROPS
@given(kind=st.integers(0, 1), count=st.integers(1, 3), ops=op_lists(30))
def test_reachable_states_are_live(kind, count, ops):
    """(f) from a random reachable state, once the cluster settles, fresh snapshots finish the job."""
    c, key = new_cluster(kind, count, ops)
    c.converge(rounds=12)


# ============================================================================ the stateful machine

IDX = st.integers(0, 11)
LAG = st.sampled_from([0, 0, 1, 2, 3, 5, 8, 1000])
OUTCOMES = st.sampled_from(["ok", "ok", "ok", "fail", "lost", "dup", "conflict", "stop_after_write"])
CUT_SHORT = st.sampled_from(["fail", "lost", "conflict", "stop_after_write", "stop_after_write"])
DELTAS = {"tick": timedelta(seconds=1), "20s": timedelta(seconds=20), "3m": timedelta(minutes=3),
          "6m": timedelta(minutes=6), "11m": timedelta(minutes=11), "31m": timedelta(minutes=31),
          "49h": timedelta(hours=49)}
WORLD = st.sampled_from(["launch", "launch", "fail_launch", "ready", "ready_with_gpu", "ready_with_gpu", "gpu",
                         "finish_claim_delete", "node_not_ready", "node_recovers", "node_terminated", "rollout",
                         "rollout", "degrade", "job_ok", "job_ok", "job_fail", "finish_job_delete", "restart",
                         *DELTAS])
USER = st.sampled_from(["spec", "spec", "spec", "touch", "touch", "delete"])
LIVENESS_EVERY = 8  # steps between two liveness checks on a copy (each runs up to 12 passes per Workspace)


class DecideMachine(RuleBasedStateMachine):
    """An adversarial adapter and cluster around decide, over one to three Workspaces.

    Passes read a snapshot as of any version the runner's cache may be at (monotone, relisted at a
    restart), are applied at once or later (interleaved with anything else, in any order across
    Workspaces), and go along the apply protocol (``before``, the status write, ``after``) to success,
    or stop at a failed action (in ``before``: nothing persisted; in ``after``: status persisted, the
    rest not applied), a lost response after the effect, a status write conflict, or the status
    persisted and nothing of ``after`` applied; or every action is applied twice. Meanwhile the cluster
    moves (NodeClaims launch, fail with InsufficientCapacity, become Ready, Nodes get GPU capacity, go
    NotReady or away, workloads roll out or degrade, Jobs succeed or fail, deletions complete), time
    jumps (past every deadline), the runner restarts (crashing anywhere along the protocol of each
    in-flight pass: before the status write or right after it), and users edit specs, touch or delete
    Workspaces. The model raises at the first safety violation; liveness is checked on a copy every
    few steps and on the real thing at the end.
    """

    def __init__(self) -> None:
        super().__init__()
        self.c: Cluster | None = None
        self.steps_since_check = 0

    @initialize(specs=st.lists(st.tuples(st.booleans(), st.integers(1, 3), st.booleans(), st.integers(0, 4)),
                               min_size=1, max_size=3))
    def setup(self, specs):
        """One to three Workspaces (inference on 1-3 nodes, or tuning), each started fresh or already
        some happy rounds (cluster settles, a pass) down its lifecycle, so that runs reach deep states."""
        self.c = Cluster(full_reparse=True)
        for i, (tuning, count, other_ns, warm) in enumerate(specs):
            ns = "team-b" if other_ns else "default"
            ws = tuning_ws(f"ws-{i}", namespace=ns) if tuning else inference_ws(f"ws-{i}", count, namespace=ns)
            key = self.c.add(ws)
            for _ in range(warm):
                self.c.run_pass(key)
                self.c.settle(key)

    # ---------------------------------------------------------------- helpers

    def _pick(self, items, i):
        items = list(items)
        return items[i % len(items)] if items else None

    def _idle(self):
        return [k for k in self.c.live_keys() if k not in self.c.pending]

    def _claims(self, pred):
        return [x for x in sorted(self.c.world.claims.values(), key=lambda x: x.name) if pred(x)]

    def _step(self):
        self.steps_since_check += 1

    # ---------------------------------------------------------------- passes

    @precondition(lambda self: self.c is not None and self._idle())
    @rule(i=IDX, lag=LAG)
    def pass_at_once(self, i, lag):
        """decide on a (possibly stale) snapshot, apply everything, persist."""
        self._step()
        self.c.run_pass(self._pick(self._idle(), i), lag=lag)

    @precondition(lambda self: self.c is not None and self._idle())
    @rule(i=IDX, lag=LAG)
    def begin_pass(self, i, lag):
        """decide now, apply later: the cluster, the clock and the users move meanwhile."""
        self._step()
        self.c.begin(self._pick(self._idle(), i), lag=lag)

    @precondition(lambda self: self.c is not None and self.c.pending)
    @rule(i=IDX, outcome=OUTCOMES, at=st.integers(0, 6))
    def finish_pass(self, i, outcome, at):
        """apply a pending pass (any of them: reordered): ok, an action fails (before or after the
        status write), a response is lost after the effect, every action applied twice, the status
        write conflicts, or the status is persisted and the pass ends before its creations."""
        self._step()
        key = self._pick(sorted(self.c.pending), i)
        self.c.finish(key, outcome, at)

    @precondition(lambda self: self.c is not None and self._idle())
    @rule(i=IDX, lag=LAG, outcome=CUT_SHORT, at=st.integers(0, 6))
    def pass_cut_short(self, i, lag, outcome, at):
        """decide and apply at once, but the pass does not get through: an action fails or its response
        is lost (before or after the status write), the status write conflicts (only ``before``
        applied), or the status is persisted and the pass ends before any of its creations."""
        self._step()
        self.c.run_pass(self._pick(self._idle(), i), lag=lag, outcome=outcome, at=at)

    @precondition(lambda self: self.c is not None and self.c.pending)
    @rule(steps=st.integers(0, 3), from_write=st.booleans(), queue_creates=st.booleans())
    def runner_crashes(self, steps, from_write, queue_creates):
        """The runner dies with passes in flight and comes back relisted. Each pass got its first
        ``steps`` steps of: ``before``, the status write, ``after``; or, ``from_write``, that many from
        the status write (0: nothing written; 1: the status persisted and no creation applied). With
        ``queue_creates``, the NodeClaim creates it had not seen through were sent and are still queued
        in the API server: they may land later (``queued_create_lands``), after the new runner looked."""
        self._step()
        self.c.restart(steps=steps, from_write=from_write, queue_creates=queue_creates)

    @precondition(lambda self: self.c is not None and self.c.queued)
    @rule(i=IDX)
    def queued_create_lands(self, i):
        """A dead runner's create, held up in the API server, is applied now (within its request timeout)."""
        self._step()
        self.c.land_queued(i)

    # ---------------------------------------------------------------- the cluster, the clock, the runner

    @precondition(lambda self: self.c is not None)
    @rule(op=WORLD, i=IDX)
    def world_moves(self, op, i):
        self._step()
        c = self.c
        if op in DELTAS:
            c.advance(DELTAS[op])
        elif op == "restart":
            # each in-flight pass dies after its first i % 6 steps of: before, the status write, after
            c.restart(steps=i % 6)
        elif op in ("launch", "fail_launch"):
            x = self._pick(self._claims(lambda x: x.phase == "Pending" and not x.deleting), i)
            if x:
                c.launch(x.name, ok=op == "launch")
        elif op in ("ready", "ready_with_gpu"):
            x = self._pick(self._claims(lambda x: x.phase in ("Pending", "Launched") and not x.deleting), i)
            if x:
                c.make_ready(x.name, gpu=op == "ready_with_gpu")
        elif op == "gpu":
            n = self._pick([n for n, node in sorted(c.world.nodes.items()) if node.gpu_capacity == 0], i)
            if n:
                c.gpu_arrives(n)
        elif op == "finish_claim_delete":
            x = self._pick(self._claims(lambda x: x.deleting), i)
            if x:
                c.finish_claim_deletion(x.name)
        elif op == "node_not_ready":
            n = self._pick([n for n, node in sorted(c.world.nodes.items()) if node.ready], i)
            if n:
                c.node_not_ready(n)
        elif op == "node_recovers":
            n = self._pick([n for n, node in sorted(c.world.nodes.items()) if not node.ready], i)
            if n:
                c.node_recovers(n)
        elif op == "node_terminated":
            x = self._pick(self._claims(lambda x: x.phase == "Ready" and not x.deleting), i)
            if x:
                c.node_terminated(x.name)
        elif op in ("rollout", "degrade"):
            k = self._pick(sorted(c.world.workloads), i)
            if k:
                (c.rollout if op == "rollout" else c.degrade)(k)
        elif op in ("job_ok", "job_fail"):
            k = self._pick([k for k, j in sorted(c.world.jobs.items()) if not j.complete and not j.failed_permanently], i)
            if k:
                c.finish_job(k, ok=op == "job_ok")
        elif op == "finish_job_delete":
            k = self._pick([k for k, j in sorted(c.world.jobs.items()) if j.deleting], i)
            if k:
                c.finish_job_deletion(k)

    @precondition(lambda self: self.c is not None and self.c.live_keys())
    @rule(i=IDX)
    def cluster_catches_up(self, i):
        """Everything one Workspace asked for becomes ready at once (so that runs get deep)."""
        self._step()
        self.c.settle(self._pick(self.c.keys(), i))

    # ---------------------------------------------------------------- users

    @precondition(lambda self: self.c is not None and self.c.live_keys())
    @rule(op=USER, i=IDX)
    def user_acts(self, op, i):
        self._step()
        key = self._pick(self.c.live_keys(), i)
        if op == "spec":
            if self.c.ws(key).deleting:
                return
            self.c.change_spec(key)  # new revision, generation + 1
        elif op == "touch":
            self.c.touch(key)  # an in-flight status write of this Workspace will conflict
        else:
            self.c.delete_workspace(key)

    # ---------------------------------------------------------------- liveness

    @precondition(lambda self: self.c is not None and self.steps_since_check >= LIVENESS_EVERY)
    @rule()
    def liveness_from_here(self):
        """(f) from this reachable state: settle the cluster and run fresh passes, on a copy."""
        self.steps_since_check = 0
        self.c.fork().converge(rounds=12)

    def teardown(self):
        if self.c is not None:
            self.c.converge(rounds=12)


DecideMachine.TestCase.settings = settings(max_examples=600, stateful_step_count=40, deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.filter_too_much])
TestMachine = DecideMachine.TestCase
