"""The cluster model's own checks (tests/model_cluster.py) fire: each test builds the smallest situation
that breaks one of them, with a real ``decide`` wherever possible and a hand-made action, Decision or
status where the machine itself never produces the bad step, and asserts that the model raises with that
check's label. Without these, a property run that reports nothing could mean that a check never looks.

The model's checks, and the test that shows each firing:

(a) NodeClaims above targetNodeCount ........ test_a_nodeclaim_above_the_target_count
    a deleted NodeClaim's name created again  test_a_deleted_nodeclaim_name_created_again (labelled (a)
                                              in the code; the module docstring lists it under (c))
(b) workload or Job before the nodes ........ test_a_workload_or_job_created_before_the_nodes_were_ready
(c) a Job while another revision's is going . test_a_job_created_while_another_revisions_job_is_being_deleted
(d) persisted form decides differently ...... test_a_workspace_whose_persisted_form_decides_differently
(e) a deadline's Warning committed twice .... test_a_deadline_warning_committed_twice_for_one_state_entry
(f) liveness: not converged ................. test_a_decide_that_never_provisions_does_not_converge
    liveness: not quiet once finished ....... test_a_decide_that_keeps_asking_once_finished_is_not_quiet
(g) nothing the record does not hold ........ test_a_status_write_that_drops_a_live_nodeclaim_from_the_record
lastTransitionTime .......................... test_last_transition_time_moved_without_a_status_change,
                                              test_status_changed_without_moving_last_transition_time
CRD pruning ................................. test_a_status_key_the_crd_would_prune
"""

from __future__ import annotations

from datetime import timedelta

import attrs
import pytest

import model_cluster as mc
from model_cluster import Cluster, inference_ws, spec_revision, to_ready, tuning_ws
from workspace_fsm.kaito import actions as A
from workspace_fsm.kaito.workspace import nodeclaim_name
from workspace_fsm.engine.problems import Problem
from workspace_fsm.kaito.model import WorkspaceStatus
from workspace_fsm.kaito.workspace import read_lifecycle


def apply_pass(c: Cluster, p: mc.Pass) -> None:
    """Apply a (possibly hand-made) pass along the model's protocol: ``before``, the status write, ``after``."""
    for a in p.decision.before:
        assert c.apply(p.key, a, p)
    assert c.persist(p), "the status write was refused"
    for a in p.decision.after:
        assert c.apply(p.key, a, p)


def take(c: Cluster, key: str, lag: int = 0) -> mc.Pass:
    """A pass that has decided (with the real decide) and that the test applies itself."""
    p = c.begin(key, lag)
    c.pending.pop(key)
    return p


def with_decision(p: mc.Pass, **changes) -> mc.Pass:
    return attrs.evolve(p, decision=attrs.evolve(p.decision, **changes))


def provisioning(name: str = "w", count: int = 1) -> tuple[Cluster, str]:
    """A Workspace after its first pass: recorded and created NodeClaims, none of them Ready yet."""
    c = Cluster()
    key = c.add(inference_ws(name, count))
    r = c.run_pass(key)
    assert r.persisted and c.state(key) == "NodesProvisioning"
    assert len(c.claims(key)) == count
    return c, key


def workload_for(c: Cluster, key: str) -> A.CreateWorkload:
    ws = c.ws(key)
    return A.CreateWorkload(kind="Deployment", name=ws.metadata.name, replicas=1, revision=spec_revision(ws),
                            preset=mc.INFERENCE_PRESET, node_names=())


def job_for(c: Cluster, key: str, revision: str | None = None) -> A.CreateJob:
    ws = c.ws(key)
    return A.CreateJob(name=ws.metadata.name, revision=revision or spec_revision(ws), preset=mc.TUNING_PRESET,
                       method="qlora", node_names=())


# ============================================================================ (a)


def test_a_nodeclaim_above_the_target_count():
    c, key = provisioning("over", 1)
    p = take(c, key)
    (recorded,) = [x.name for x in c.claims(key)]
    extra = A.CreateNodeClaim(name=nodeclaim_name(c.ws(key), 1), instance_type=mc.INSTANCE_TYPE,
                              labels=(("kaito.sh/workspace", "over"), ("kaito.sh/workspacenamespace", "default")))
    assert extra.name != recorded
    with pytest.raises(mc.Violation, match=r"\(a\) default/over: 2 NodeClaims exist in the truth.*targetNodeCount is 1"):
        apply_pass(c, with_decision(p, after=p.decision.after + (extra,)))


def test_a_nodeclaim_being_deleted_still_counts_against_the_target():
    """A replacement created while the one it replaces is still being deleted is one too many."""
    c, key = provisioning("replace", 1)
    (old,) = c.claims(key)
    c.node_terminated(old.name)  # Karpenter deletes it; the deletion takes time
    assert c.claim(old.name).deleting
    p = take(c, key)
    replacement = A.CreateNodeClaim(name=nodeclaim_name(c.ws(key), 1), instance_type=mc.INSTANCE_TYPE,
                                    labels=(("kaito.sh/workspace", "replace"),
                                            ("kaito.sh/workspacenamespace", "default")))
    with pytest.raises(mc.Violation, match=r"\(a\) default/replace: 2 NodeClaims.*being deleted included"):
        c.apply(key, replacement, p)


def test_a_deleted_nodeclaim_name_created_again():
    c, key = provisioning("reused", 1)
    (old,) = c.claims(key)
    c.launch(old.name, ok=False)
    c.run_pass(key)  # the failed launch is deleted
    assert c.claim(old.name).deleting
    c.finish_claim_deletion(old.name)
    p = take(c, key)
    again = A.CreateNodeClaim(name=old.name, instance_type=mc.INSTANCE_TYPE,
                              labels=(("kaito.sh/workspace", "reused"), ("kaito.sh/workspacenamespace", "default")))
    with pytest.raises(mc.Violation, match=r"\(a\) default/reused: CreateNodeClaim .* re-creates a deleted"):
        c.apply(key, again, p)


# ============================================================================ (b)


def test_a_workload_or_job_created_before_the_nodes_were_ready():
    # Nodes never Ready: the NodeClaim is still Pending.
    c, key = provisioning("early", 1)
    p = take(c, key)
    with pytest.raises(mc.Violation, match=r"\(b\) default/early: CreateWorkload Deployment early by a pass"):
        c.apply(key, workload_for(c, key), p)

    # A tuning Job, same story.
    c = Cluster()
    key = c.add(tuning_ws("early-job"))
    c.run_pass(key)
    p = take(c, key)
    with pytest.raises(mc.Violation, match=r"\(b\) default/early-job: CreateJob early-job by a pass"):
        c.apply(key, job_for(c, key), p)


def test_a_workload_created_by_a_pass_that_read_the_cluster_before_the_nodes_were_ready():
    """Ready now, but not in the snapshot the creating pass read: that pass could not have known."""
    c, key = provisioning("stale", 1)
    p = take(c, key)  # reads the truth with the NodeClaim Pending
    (claim,) = c.claims(key)
    c.make_ready(claim.name, gpu=True)
    assert c.entries[key].first_ready_version > p.version
    with pytest.raises(mc.Violation, match=r"\(b\) default/stale: .*only from version"):
        c.apply(key, workload_for(c, key), p)
    # the same create by a pass that read the Ready nodes is fine
    assert c.apply(key, workload_for(c, key), take(c, key))


def test_a_node_without_gpu_capacity_is_not_ready_for_the_workload():
    c, key = provisioning("nogpu", 1)
    (claim,) = c.claims(key)
    c.make_ready(claim.name, gpu=False)  # the Node is Ready; nvidia.com/gpu not yet advertised
    p = take(c, key)
    with pytest.raises(mc.Violation, match=r"\(b\) default/nogpu"):
        c.apply(key, workload_for(c, key), p)


# ============================================================================ (c)


def test_a_job_created_while_another_revisions_job_is_being_deleted():
    c = Cluster()
    key = c.add(tuning_ws("tune"))
    for _ in range(4):
        c.run_pass(key)
        c.settle(key)
        if c.job(key) is not None:
            break
    old = c.job(key)
    assert old is not None
    c.change_spec(key)
    new_revision = spec_revision(c.ws(key))
    assert new_revision != old.revision
    p = take(c, key)
    assert c.apply(key, A.DeleteJob(name=old.name, revision=old.revision), p)
    assert c.job(key).deleting
    with pytest.raises(mc.Violation, match=r"\(c\) default/tune: CreateJob for revision .* still being deleted"):
        c.apply(key, job_for(c, key, new_revision), p)


# ============================================================================ (d)


def test_a_workspace_whose_persisted_form_decides_differently():
    """Something held in memory that the API never stores (here: validation problems) changes the decision."""
    ws = attrs.evolve(inference_ws("memory"), problems=(Problem("resource.count", "FieldValueInvalid", "held only in memory"),))
    c = Cluster()
    key = c.add(ws)
    with pytest.raises(mc.Violation, match=r"\(d\) default/memory: decide on the Workspace rebuilt from its persisted form differs"):
        c.run_pass(key)


# ============================================================================ (e)


def test_a_deadline_warning_committed_twice_for_one_state_entry():
    """Two passes decided on the same record both fire NodesProvisioning's deadline and both commit."""
    c, key = provisioning("late", 1)
    c.advance(timedelta(hours=1))  # past the NodeClaim deadline
    first = take(c, key)
    second = take(c, key)  # decided on the same persisted Workspace: the same state entry
    fired = [a for a in first.decision.actions if isinstance(a, A.RecordEvent) and a.reason in mc.DEADLINE_REASONS]
    assert fired and first.entry_key == second.entry_key
    apply_pass(c, first)
    with pytest.raises(mc.Violation, match=r"\(e\) default/late: deadline NodeClaimNotReady fired twice"):
        apply_pass(c, second)


# ============================================================================ (f)


class StallingCluster(Cluster):
    """A model whose decide loses every NodeClaim creation: it records them and never asks for them."""

    def decide(self, key, version):
        d = super().decide(key, version)
        return attrs.evolve(d, after=tuple(a for a in d.after if not isinstance(a, A.CreateNodeClaim)))


class RestlessCluster(Cluster):
    """A model whose decide, once Ready, asks for a deletion on every pass."""

    def decide(self, key, version):
        d = super().decide(key, version)
        if d.state == "Ready":
            d = attrs.evolve(d, before=d.before + (A.DeleteNodeClaim(name="ghost", reason="Restless"),))
        return d


def test_a_decide_that_never_provisions_does_not_converge():
    c = StallingCluster()
    key = c.add(inference_ws("stuck", 1))
    with pytest.raises(mc.Violation, match=r"\(f\) not converged after 12 passes each: .*default/stuck"):
        c.converge()
    assert c.claims(key) == []


def test_converge_is_given_too_few_rounds():
    c = Cluster()
    c.add(inference_ws("slow", 1))
    with pytest.raises(mc.Violation, match=r"\(f\) not converged after 1 passes each: .*NodesProvisioning"):
        c.converge(rounds=1)
    assert c.converge() >= 1  # with rounds enough it gets there


def test_a_decide_that_keeps_asking_once_finished_is_not_quiet():
    c = RestlessCluster()
    c.add(inference_ws("restless", 1))
    with pytest.raises(mc.Violation, match=r"\(f\) default/restless: finished in Ready, but the next pass on a settled "
                                           r"cluster still moves.*DeleteNodeClaim"):
        c.converge()


# ============================================================================ (g)


def test_a_status_write_that_drops_a_live_nodeclaim_from_the_record():
    """(g) at the status write: the record forgets a NodeClaim that exists and is not being deleted."""
    c, key = provisioning("forget", 1)
    assert read_lifecycle(c.ws(key).status).data.nodeclaims
    p = take(c, key)
    blank = WorkspaceStatus()
    with pytest.raises(mc.Violation, match=r"\(g\) default/forget: NodeClaims \[.*\] exist in the truth.*holds only \[\]"):
        c.persist(with_decision(p, status=blank, status_changed=True))


# ============================================================================ lastTransitionTime, pruning


def _replace_condition(ws_status: WorkspaceStatus, type_: str, **changes) -> WorkspaceStatus:
    conds = tuple(attrs.evolve(x, **changes) if x.type == type_ else x for x in ws_status.conditions)
    assert conds != ws_status.conditions
    return attrs.evolve(ws_status, conditions=conds)


def test_last_transition_time_moved_without_a_status_change():
    c, key = provisioning("ltt", 1)
    c.advance(timedelta(minutes=1))
    p = take(c, key)
    before = p.before.condition("WorkspaceSucceeded")
    after = p.decision.status.condition("WorkspaceSucceeded")
    assert before.status == after.status
    moved = _replace_condition(p.decision.status, "WorkspaceSucceeded",
                               last_transition_time=before.last_transition_time + timedelta(seconds=30))
    with pytest.raises(mc.Violation, match=r"default/ltt: WorkspaceSucceeded kept status False but its "
                                           r"lastTransitionTime moved"):
        c.persist(with_decision(p, status=moved, status_changed=True))


def test_status_changed_without_moving_last_transition_time():
    c, key = provisioning("ltt2", 1)
    c.advance(timedelta(minutes=1))
    p = take(c, key)
    before = p.before.condition("WorkspaceSucceeded")
    flipped = _replace_condition(p.decision.status, "WorkspaceSucceeded", status="True",
                                 last_transition_time=before.last_transition_time)
    with pytest.raises(mc.Violation, match=r"default/ltt2: WorkspaceSucceeded went False -> True but "
                                           r"lastTransitionTime is .*not the pass's time"):
        c.persist(with_decision(p, status=flipped, status_changed=True))


class _StatusWithExtraKey(WorkspaceStatus):
    """A status that serialises a field KAITO's CRD does not declare."""

    def to_dict(self):
        return {**super().to_dict(), "workspaceFsm": {"state": "Ready"}}


def test_a_status_key_the_crd_would_prune():
    c, key = provisioning("prune", 1)
    p = take(c, key)
    s = p.decision.status
    extra = _StatusWithExtraKey(conditions=s.conditions, state=s.state, target_node_count=s.target_node_count,
                                worker_nodes=s.worker_nodes, performance=s.performance)
    with pytest.raises(mc.Violation, match=r"default/prune: status keys \['workspaceFsm'\] would be pruned"):
        c.persist(with_decision(p, status=extra, status_changed=True))


# ============================================================================ the same situations, done right


def test_the_same_steps_done_right_raise_nothing():
    """The control for the tests above: each situation, built the way the machine builds it, passes."""
    c, key = provisioning("fine", 1)
    c.advance(timedelta(hours=1))
    apply_pass(c, take(c, key))  # one deadline firing, committed once
    c.settle(key)
    to_ready(c, key)
    assert c.converge() >= 1


# ============================================================================ the unlettered API-semantics checks


@pytest.mark.parametrize("bad, message", [
    (lambda c, key: A.CreateNodeClaim(name="x-0", instance_type=mc.INSTANCE_TYPE,
                                      labels=(("kaito.sh/workspace", "other"),
                                              ("kaito.sh/workspacenamespace", "default"))),
     r"CreateNodeClaim x-0 labelled for default/other"),
    (lambda c, key: attrs.evolve(workload_for(c, key), name="renamed"), r"workload named renamed"),
    (lambda c, key: attrs.evolve(workload_for(c, key), kind="StatefulSet", replicas=3),
     r"CreateWorkload StatefulSet x3, expected Deployment x1"),
    (lambda c, key: A.DeleteJob(name="apps", revision="r", propagation="Foreground"),
     r"DeleteJob with propagation Foreground"),
])
def test_actions_the_api_would_treat_differently_are_flagged(bad, message):
    c, key = provisioning("apps", 1)
    (claim,) = c.claims(key)
    c.make_ready(claim.name, gpu=True)  # nodes Ready, nothing created on them yet
    with pytest.raises(mc.Violation, match=r"default/apps: " + message):
        c.apply(key, bad(c, key), take(c, key))


def test_a_delete_of_the_stale_job_leaves_the_current_one_of_the_same_name():
    """The model applies DeleteJob as the adapters do, with the revision (the uid over HTTP) as its precondition:
    a runner whose cache still shows the old Job cannot delete the new one, which has the same name."""
    c = Cluster()
    key = c.add(tuning_ws("tune2"))
    for _ in range(4):
        c.run_pass(key)
        c.settle(key)
        if c.job(key) is not None:
            break
    old = c.job(key)
    p = take(c, key)
    assert c.apply(key, A.DeleteJob(name=old.name, revision="some-older-revision"), p)
    assert c.job(key) == old and not c.job(key).deleting
