"""Whole lifecycles of ``decide``, step by step, against the cluster model (tests/model_cluster.py).

Each test reads as a story: what the cluster shows, the pass, what the machine asked for and what the
user sees (conditions, ``status.state``). The model applies the actions with API semantics and checks
its invariants at every change (NodeClaims never above targetNodeCount, nothing created before the
nodes are Ready with GPUs, ...). At the end, regression stories for the bugs the property tests found,
each the smallest story that showed it.
"""

from __future__ import annotations

import json
from datetime import timedelta

import attrs
import pytest

import model_cluster as mc
from model_cluster import EPOCH, Cluster, inference_ws, pure_decide, reparse, spec_revision, to_ready, tuning_ws
from workspace_fsm.kaito import actions as A
from workspace_fsm.kaito.workspace import KAITO_CONDITIONS, nodeclaim_name
from workspace_fsm.kaito.workspace import DEFAULT_CONFIG
from workspace_fsm.kaito.model import Condition, Snapshot, WorkspaceStatus, parse_workspace
from workspace_fsm.kaito.workspace import LIFECYCLE_CONDITION, RECORD, read_lifecycle

FINALIZER = DEFAULT_CONFIG.finalizer


@pytest.fixture(autouse=True, scope="module")
def _no_sleep_no_network():
    with mc.no_sleep_no_sockets():
        yield


# ---------------------------------------------------------------------------- helpers


def kinds(d, *types):
    return [a for a in d.actions if isinstance(a, types)]


def names(actions):
    return [a.name for a in actions]


def warnings(c: Cluster, key: str, reason: str | None = None):
    return [e for e in c.events_of(key, reason) if e[1] == "Warning"]


def cond(c: Cluster, key: str, type_: str) -> Condition:
    found = c.ws(key).status.condition(type_)
    assert found is not None, f"{type_} missing from {c.ws(key).status}"
    return found


# ---------------------------------------------------------------------------- inference


def test_inference_on_one_node_gets_a_deployment():
    c = Cluster()
    key = c.add(inference_ws("phi", 1))

    d = c.run_pass(key).decision
    assert d.state == "NodesProvisioning"
    assert [type(a) for a in d.mutating_actions] == [A.AddFinalizer, A.CreateNodeClaim]
    claim = d.mutating_actions[1]
    assert claim.name == nodeclaim_name(c.ws(key), 0)
    assert dict(claim.labels) == {"kaito.sh/workspace": "phi", "kaito.sh/workspacenamespace": "default"}
    assert claim.instance_type == mc.INSTANCE_TYPE
    assert c.ws(key).metadata.finalizers == (FINALIZER,)
    assert c.ws(key).status.state == "Pending" and c.ws(key).status.target_node_count == 1

    c.launch(claim.name)
    c.make_ready(claim.name, gpu=False)  # the node is Ready; the device plugin is not up yet
    d = c.run_pass(key).decision
    assert d.state == "PluginsReady"
    assert not kinds(d, A.CreateWorkload)  # no workload before the GPUs are there
    assert d.wake.after == DEFAULT_CONFIG.gpu_recheck  # Nodes are not watched: look again soon
    assert cond(c, key, "NodesReady").reason == "GPUCapacityNotReady"

    c.gpu_arrives("node-" + claim.name)
    d = c.run_pass(key).decision
    assert d.state == "WorkloadDeploying"
    (create,) = kinds(d, A.CreateWorkload)
    assert (create.kind, create.name, create.replicas, create.preset) == ("Deployment", "phi", 1, "phi-4")
    assert create.revision == spec_revision(c.ws(key))
    assert create.node_names == ("node-" + claim.name,)

    c.rollout(key)
    d = c.run_pass(key).decision
    assert d.state == "Ready" and d.mutating_actions == ()
    status = c.ws(key).status
    assert status.state == "Ready" and status.worker_nodes == ("node-" + claim.name,)
    assert cond(c, key, "InferenceReady").status == "True"
    assert cond(c, key, "WorkspaceSucceeded").status == "True"
    assert d.wake.after is None  # nothing to wait for: only the next event

    again = c.run_pass(key).decision  # quiet once there
    assert again.actions == () and not again.status_changed


def test_inference_on_three_nodes_gets_a_statefulset_only_when_all_three_have_gpus():
    c = Cluster()
    key = c.add(inference_ws("big", 3))
    d = c.run_pass(key).decision
    created = names(kinds(d, A.CreateNodeClaim))
    assert created == [nodeclaim_name(c.ws(key), i) for i in range(3)]

    for n in created[:2]:
        c.make_ready(n, gpu=True)
    c.make_ready(created[2], gpu=False)
    assert c.run_pass(key).decision.state == "PluginsReady"  # 3 Ready nodes, one without GPU capacity
    assert c.workload(key) is None

    c.gpu_arrives("node-" + created[2])
    d = c.run_pass(key).decision
    (create,) = kinds(d, A.CreateWorkload)
    assert (create.kind, create.replicas) == ("StatefulSet", 3)
    assert create.node_names == tuple(sorted("node-" + n for n in created))
    c.rollout(key)
    assert c.run_pass(key).decision.state == "Ready"
    assert len(c.claims(key)) == 3 and c.ws(key).status.target_node_count == 3


def test_summary_state_goes_pending_ready_notready_and_conditions_carry_observed_generation():
    c = Cluster()
    key = c.add(inference_ws("s", 1))
    seen = []
    for _ in range(4):
        c.run_pass(key)
        seen.append(c.ws(key).status.state)
        c.settle(key)
    assert seen[0] == "Pending" and seen[-1] == "Ready"
    assert [s for s in seen if s not in ("Pending", "Ready")] == []

    for t in ("NodeClaimReady", "NodesReady", "ResourceReady", "InferenceReady", "WorkspaceSucceeded"):
        assert cond(c, key, t).observed_generation == 1, t
    assert {x.type for x in c.ws(key).status.conditions} >= {"NodeClaimReady", "NodesReady", "ResourceReady",
                                                           "InferenceReady", "WorkspaceSucceeded",
                                                           "workspace-fsm/Lifecycle"}

    c.change_spec(key)  # generation 2: the workload is updated to the new revision
    d = c.run_pass(key).decision
    assert d.state == "WorkloadDeploying"
    (update,) = kinds(d, A.UpdateWorkload)
    assert update.revision == spec_revision(c.ws(key))
    assert c.ws(key).status.state == "NotReady"  # was Ready: never back to Pending
    for t in KAITO_CONDITIONS:
        got = c.ws(key).status.condition(t)
        assert got is None or got.observed_generation == 2, got
    c.settle(key)
    c.run_pass(key)
    assert c.ws(key).status.state == "Ready"


def test_ready_goes_back_to_nodes_provisioning_when_a_node_disappears():
    c = Cluster()
    key = c.add(inference_ws("lost", 2))
    to_ready(c, key)
    first, second = (x.name for x in c.claims(key))

    c.node_terminated(first)  # the Node goes away; Karpenter deletes its NodeClaim
    d = c.run_pass(key).decision
    assert d.state == "NodesProvisioning" and [(h.source, h.dest) for h in d.transitions] == [("Ready", "NodesProvisioning")]
    assert c.ws(key).status.state == "NotReady"
    inference = c.ws(key).status.condition("InferenceReady")
    assert inference is None or inference.status != "True"  # (today it is dropped, not set to False)
    assert cond(c, key, "WorkspaceSucceeded").status == "False"
    assert cond(c, key, "NodesReady").status == "False"
    assert not kinds(d, A.CreateNodeClaim)  # the one being deleted still counts towards targetNodeCount

    d = c.run_pass(key).decision
    assert not kinds(d, A.CreateNodeClaim)
    c.finish_claim_deletion(first)
    d = c.run_pass(key, lag=1).decision  # a cache that has not seen the deletion yet proves nothing
    assert not kinds(d, A.CreateNodeClaim)
    d = c.run_pass(key).decision
    (replacement,) = kinds(d, A.CreateNodeClaim)
    assert replacement.name == nodeclaim_name(c.ws(key), 2)  # a new name, never a reused one
    c.settle(key)
    c.run_pass(key)
    c.settle(key)
    assert c.run_pass(key).decision.state == "Ready"
    assert {x.name for x in c.claims(key)} == {second, replacement.name}


# ---------------------------------------------------------------------------- tuning


def test_tuning_runs_to_succeeded():
    c = Cluster()
    key = c.add(tuning_ws("tune"))
    c.run_pass(key)
    c.settle(key)
    d = c.run_pass(key).decision
    assert d.state == "JobRunning"
    (create,) = kinds(d, A.CreateJob)
    assert (create.name, create.revision, create.preset, create.method) == (
        "tune", spec_revision(c.ws(key)), mc.TUNING_PRESET, "qlora")
    assert c.ws(key).status.state == "Running"
    assert cond(c, key, "JobStarted").status == "True"
    assert cond(c, key, "WorkspaceSucceeded").reason == "WorkspacePending"

    assert c.run_pass(key).decision.mutating_actions == ()  # the Job is running: nothing to do
    c.finish_job(key, ok=True)
    d = c.run_pass(key).decision
    assert d.state == "Succeeded" and c.ws(key).status.state == "Succeeded"
    assert cond(c, key, "WorkspaceSucceeded").status == "True"
    assert d.wake.after is None


def test_tuning_job_failure_and_job_deadline_mark_the_workspace_failed():
    c = Cluster()
    key = c.add(tuning_ws("fails"))
    c.run_pass(key)
    for x in c.claims(key):
        c.make_ready(x.name, gpu=True)
    c.run_pass(key)
    c.finish_job(key, ok=False)
    c.run_pass(key)
    assert c.ws(key).status.state == "Failed"
    assert (cond(c, key, "WorkspaceSucceeded").status, cond(c, key, "WorkspaceSucceeded").reason) == (
        "False", "TuningJobFailed")

    slow = Cluster()
    key = slow.add(tuning_ws("slow"))
    slow.run_pass(key)
    slow.settle(key)
    slow.run_pass(key)
    assert slow.state(key) == "JobRunning"
    slow.advance(timedelta(hours=47, minutes=59))
    slow.run_pass(key)
    assert slow.state(key) == "JobRunning" and not warnings(slow, key)
    slow.advance(timedelta(minutes=1))
    slow.run_pass(key)
    assert slow.state(key) == "Failed"
    assert [e[2] for e in warnings(slow, key)] == ["TuningJobDeadlineExceeded"]
    assert cond(slow, key, "WorkspaceSucceeded").reason == "TuningJobDeadlineExceeded"
    slow.run_pass(key)
    assert len(warnings(slow, key)) == 1


def test_tuning_spec_change_mid_run_replaces_the_job_after_the_old_one_is_gone():
    c = Cluster()
    key = c.add(tuning_ws("retune"))
    c.run_pass(key)
    c.settle(key)
    c.run_pass(key)
    old = c.job(key)
    assert old is not None and not old.complete

    c.change_spec(key)
    new_rev = spec_revision(c.ws(key))
    d = c.run_pass(key).decision
    assert d.state == "JobReplacing"
    (delete,) = kinds(d, A.DeleteJob)
    assert (delete.name, delete.revision, delete.propagation) == ("retune", old.revision, "Background")
    assert not kinds(d, A.CreateJob)
    assert cond(c, key, "JobStarted").reason == "JobReplacing"

    # The old Job is still visible (Background deletion takes a while): wait, ask nothing again.
    d = c.run_pass(key).decision
    assert d.state == "JobReplacing" and d.mutating_actions == ()
    # It is gone, but the cache has not seen that yet: missing from a cache is no proof.
    c.finish_job_deletion(key)
    stale = Snapshot(nodeclaims=c.snapshot(key).nodeclaims, nodes=c.snapshot(key).nodes)
    d = pure_decide(c.ws(key), stale, c.now)
    assert d.state == "JobReplacing" and not kinds(d, A.CreateJob)
    # Its deletion is confirmed: the new Job, with the new revision.
    d = c.run_pass(key).decision
    assert d.state == "JobRunning"
    (create,) = kinds(d, A.CreateJob)
    assert create.revision == new_rev
    assert c.job(key).revision == new_rev
    c.finish_job(key, ok=True)
    assert c.run_pass(key).decision.state == "Succeeded"
    assert c.job(key).revision == new_rev


def test_tuning_spec_change_after_success_runs_again():
    c = Cluster()
    key = c.add(tuning_ws("again"))
    to_ready(c, key)
    c.change_spec(key)
    d = c.run_pass(key).decision
    assert d.state == "JobReplacing" and kinds(d, A.DeleteJob)
    assert c.ws(key).status.state == "Running"
    c.settle(key)
    d = c.run_pass(key).decision
    assert kinds(d, A.CreateJob)[0].revision == spec_revision(c.ws(key))
    c.settle(key)
    c.run_pass(key)
    assert c.ws(key).status.state == "Succeeded" and c.job(key).revision == spec_revision(c.ws(key))


# ---------------------------------------------------------------------------- NodeClaims: failures and deadlines


def test_nodes_provisioning_deadline_replaces_unready_nodeclaims_and_fires_once():
    c = Cluster()
    key = c.add(inference_ws("slow", 2))
    d = c.run_pass(key).decision
    ready, stuck = names(kinds(d, A.CreateNodeClaim))
    c.make_ready(ready, gpu=True)

    c.advance(timedelta(minutes=9, seconds=59))
    assert not warnings(c, key) and not kinds(c.run_pass(key).decision, A.DeleteNodeClaim)

    c.advance(timedelta(seconds=1))
    d = c.run_pass(key).decision
    assert [a.name for a in kinds(d, A.DeleteNodeClaim)] == [stuck]  # only the unready one
    assert [e[2] for e in warnings(c, key)] == ["NodeClaimNotReady"]
    assert cond(c, key, "NodeClaimReady").reason == "NodeClaimNotReady"
    assert not kinds(d, A.CreateNodeClaim)  # the one being deleted still counts

    # The same state entry does not fire again: not on the next pass, not after a restart.
    c.run_pass(key)
    assert pure_decide(reparse(c.ws(key)), c.snapshot(key), c.now).actions == ()
    c.restart()
    c.run_pass(key)
    assert len(warnings(c, key, "NodeClaimNotReady")) == 1

    c.finish_claim_deletion(stuck)
    d = c.run_pass(key).decision
    (replacement,) = kinds(d, A.CreateNodeClaim)
    assert replacement.name == nodeclaim_name(c.ws(key), 2)
    assert len(c.claims(key)) == 2

    # The deadline restarts from the firing: ten more minutes, then a second (and last of three) round.
    c.advance(timedelta(minutes=10))
    c.run_pass(key)
    assert len(warnings(c, key, "NodeClaimNotReady")) == 2
    assert read_lifecycle(c.ws(key).status).attempts == 2


def test_failed_launch_is_deleted_and_replaced_with_a_new_name():
    c = Cluster()
    key = c.add(inference_ws("capacity", 1))
    (first,) = names(kinds(c.run_pass(key).decision, A.CreateNodeClaim))
    c.launch(first, ok=False, reason="InsufficientCapacity")
    d = c.run_pass(key).decision
    assert [(a.name, a.reason) for a in kinds(d, A.DeleteNodeClaim)] == [(first, "InsufficientCapacity")]
    assert [e[2] for e in warnings(c, key)] == ["NodeClaimFailed"]
    assert not kinds(d, A.CreateNodeClaim)
    assert not kinds(c.run_pass(key).decision, A.DeleteNodeClaim)  # asked once
    c.finish_claim_deletion(first)
    (second,) = names(kinds(c.run_pass(key).decision, A.CreateNodeClaim))
    assert second != first
    c.settle(key)
    to_ready(c, key)


def test_failure_budget_exhausted_stops_creating_and_says_so():
    c = Cluster()
    key = c.add(inference_ws("nocap", 1))
    for _ in range(DEFAULT_CONFIG.max_nodeclaim_failures):
        d = c.run_pass(key).decision
        (name,) = names(kinds(d, A.CreateNodeClaim))
        c.launch(name, ok=False)
        c.run_pass(key)
        c.finish_claim_deletion(name)
    d = c.run_pass(key).decision
    assert not kinds(d, A.CreateNodeClaim) and c.claims(key) == []
    assert cond(c, key, "NodeClaimReady").reason == "NodeClaimProvisioningFailed"
    assert cond(c, key, "WorkspaceSucceeded").status == "False"


# ---------------------------------------------------------------------------- deletion


def test_deletion_removes_nodeclaims_then_the_finalizer():
    c = Cluster()
    key = c.add(inference_ws("bye", 2))
    to_ready(c, key)
    claims = [x.name for x in c.claims(key)]

    c.delete_workspace(key)
    d = c.run_pass(key).decision
    assert d.state == "Deleting"
    assert sorted(a.name for a in kinds(d, A.DeleteNodeClaim)) == claims
    assert not kinds(d, A.RemoveFinalizer)
    assert cond(c, key, "WorkspaceDeleting").status == "True"

    assert c.run_pass(key).decision.mutating_actions == ()  # deleting: wait, ask nothing twice
    for n in claims:
        c.finish_claim_deletion(n)
    d = c.run_pass(key, lag=2).decision  # the cache has not seen them go: no proof yet
    assert not kinds(d, A.RemoveFinalizer)
    d = c.run_pass(key).decision
    assert kinds(d, A.RemoveFinalizer) == [A.RemoveFinalizer(FINALIZER)]
    assert c.entries[key].gone and c.claims(key) == [] and c.workload(key) is None


def test_deleting_a_workspace_whose_spec_became_invalid_still_cleans_up():
    c = Cluster()
    key = c.add(inference_ws("was-valid", 1))
    to_ready(c, key)
    bad = reparse(c.ws(key)).to_dict()
    bad["inference"]["preset"]["name"] = "no-such-model-xyz"
    bad["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    ws = parse_workspace(bad)
    assert ws.problems and ws.deleting
    d = pure_decide(ws, c.snapshot(key), c.now)
    assert d.state == "Deleting"
    assert [type(a) for a in d.mutating_actions] == [A.DeleteNodeClaim]


# ---------------------------------------------------------------------------- invalid specs, persistence


@pytest.mark.parametrize("edit,reason", [
    (lambda d: d["inference"]["preset"].update(name="no-such-model-xyz"), "UnknownPreset"),
    (lambda d: d.update(tuning=tuning_ws("x").to_dict()["tuning"]), "InferenceAndTuningBothSet"),
])
def test_invalid_document_is_reported_once_and_nothing_is_created(edit, reason):
    doc = inference_ws("bad").to_dict()
    edit(doc)
    ws = parse_workspace(doc)
    assert [p.reason for p in ws.problems][:1] == [reason]
    d = pure_decide(ws, Snapshot(), EPOCH)
    assert d.mutating_actions == ()
    got = d.status.condition("WorkspaceSucceeded")
    assert (got.status, got.reason, got.observed_generation) == ("False", reason, 1)
    assert [(a.type, a.reason) for a in d.actions] == [("Warning", reason)]
    again = pure_decide(parse_workspace({**doc, "status": d.status.to_dict()}), Snapshot(), EPOCH + timedelta(hours=1))
    assert again.actions == () and not again.status_changed


def test_persisted_status_survives_the_crds_structural_pruning():
    from workspace_fsm.engine.schema import prune
    from workspace_fsm.kaito.validation import workspace_schema

    c = Cluster()
    inf, tun = c.add(inference_ws("p", 2)), c.add(tuning_ws("q"))
    for key in (inf, tun):
        to_ready(c, key)
        doc = json.loads(json.dumps(c.ws(key).to_dict()))
        assert set(doc["status"]) <= mc.STATUS_KEYS
        pruned, removed = prune(doc, workspace_schema())
        assert removed == [] and pruned["status"] == doc["status"]
        # and the machine reads back from the pruned document exactly what it wrote
        back = parse_workspace(pruned)
        assert read_lifecycle(back.status) == read_lifecycle(c.ws(key).status)
        assert pure_decide(back, c.snapshot(key), c.now) == pure_decide(c.ws(key), c.snapshot(key), c.now)


def test_last_transition_time_moves_only_when_the_status_moves():
    c = Cluster()
    key = c.add(inference_ws("ltt", 1))
    c.run_pass(key)
    t0 = cond(c, key, "WorkspaceSucceeded").last_transition_time
    c.advance(timedelta(minutes=1))
    c.settle(key)
    c.run_pass(key)  # -> WorkloadDeploying: WorkspaceSucceeded still False (other reason, other message)
    assert cond(c, key, "WorkspaceSucceeded").reason == "WorkspaceNotReady"
    assert cond(c, key, "WorkspaceSucceeded").last_transition_time == t0
    assert cond(c, key, "NodesReady").last_transition_time == c.now.replace(microsecond=0)  # False -> True
    c.advance(timedelta(minutes=1))
    c.settle(key)
    c.run_pass(key)
    assert cond(c, key, "WorkspaceSucceeded").last_transition_time == c.now.replace(microsecond=0)


# ============================================================================ regressions found by the property tests


def test_nodeclaims_created_by_a_pass_whose_write_failed_are_deleted_with_the_workspace():
    """Found when creations ran before the status write: a pass whose write got a 409 had created a
    NodeClaim its record did not hold, and a deletion seen through a lagging informer then removed the
    finalizer over it. Now such a pass creates nothing, and the NodeClaim its retry creates is deleted
    with the Workspace: the finalizer stays until that NodeClaim is gone, whatever the informer shows."""
    c = Cluster()
    key = c.add(inference_ws("leak", 1))
    p = c.begin(key)  # Pending -> NodesProvisioning: AddFinalizer before the write, CreateNodeClaim -0 after
    assert kinds(p.decision, A.CreateNodeClaim)
    c.touch(key)  # someone labels the Workspace meanwhile
    assert not c.finish(key).persisted  # the status write got a 409 ...
    assert c.claims(key) == []  # ... so its NodeClaim was never created: nothing unrecorded exists
    assert c.ws(key).metadata.finalizers == (FINALIZER,)
    c.run_pass(key)  # the retry records -0 and creates it
    (name,) = names(c.claims(key))
    c.delete_workspace(key)  # the finalizer is on: deletionTimestamp is set
    lagging = c.begin(key, lag=10**6)  # the NodeClaim informer lags behind: its cache has no -0
    assert c.claims(key, version=lagging.version) == []
    assert not kinds(lagging.decision, A.RemoveFinalizer), "finalizer removed while the recorded -0 exists"
    assert names(kinds(lagging.decision, A.DeleteNodeClaim)) == [name]  # deleted by its recorded name
    c.finish(key)
    assert c.claim(name).deleting and c.ws(key).metadata.finalizers == (FINALIZER,)
    d = c.run_pass(key).decision  # still being deleted: the finalizer stays
    assert not kinds(d, A.RemoveFinalizer) and not c.entries[key].gone
    c.finish_claim_deletion(name)
    c.advance(DEFAULT_CONFIG.create_grace)  # until then a create of the name could still land (the grace tests)
    d = c.run_pass(key).decision
    assert kinds(d, A.RemoveFinalizer)
    assert c.entries[key].gone and c.claims(key) == []  # gone, and its NodeClaim with it


def test_adopted_nodeclaim_names_are_never_reused():
    c = Cluster()
    key = c.add(inference_ws("reuse", 1))
    c.begin(key)
    c.touch(key)
    c.finish(key)  # NodeClaim -0 created; the status write conflicts: no record
    c.run_pass(key)  # the next pass finds -0 through its labels and adopts it (next_seq stays 0)
    (first,) = [x.name for x in c.claims(key)]
    c.launch(first, ok=False)
    c.run_pass(key)  # it failed to launch: deleted
    c.finish_claim_deletion(first)
    d = c.run_pass(key).decision  # raises (a) in the model: the replacement is named -0 again
    (replacement,) = kinds(d, A.CreateNodeClaim)
    assert replacement.name != first


def test_workload_whose_creation_record_was_lost_settles_in_ready():
    c = Cluster()
    key = c.add(inference_ws("flip", 1))
    c.run_pass(key)
    c.settle(key)
    c.begin(key)  # -> WorkloadDeploying: CreateWorkload
    c.restart(crash_prefix=1)  # the runner dies after creating it, before writing the status
    c.rollout(key)
    seen = []
    for _ in range(4):
        d = c.run_pass(key).decision
        seen.append((d.state, c.ws(key).status.state))
    assert seen[1:] == [("Ready", "Ready")] * 3


def test_workload_created_for_an_old_spec_is_updated_even_if_its_record_was_lost():
    c = Cluster()
    key = c.add(inference_ws("old-spec", 1))
    c.run_pass(key)
    c.settle(key)
    c.begin(key)  # -> WorkloadDeploying: CreateWorkload for revision 1
    c.change_spec(key)
    c.finish(key)  # created; the status write conflicts
    c.run_pass(key, lag=1)  # CreateWorkload for revision 2: AlreadyExists
    for _ in range(3):
        c.settle(key)
        c.run_pass(key)
    assert c.workload(key).revision == spec_revision(c.ws(key))
    assert c.state(key) == "Ready"


def test_a_pass_whose_status_write_fails_creates_nothing_and_a_new_spec_still_replaces_the_job():
    """Creations come after the status write: a pass whose write conflicts leaves no unrecorded Job behind,
    and the lifecycle then runs on; a spec change after success replaces the Job."""
    c = Cluster()
    key = c.add(tuning_ws("lost-job"))
    c.run_pass(key)
    c.settle(key)
    p = c.begin(key)
    assert kinds(p.decision, A.CreateJob)
    c.touch(key)
    assert not c.finish(key).persisted  # the status write conflicts
    assert c.job(key) is None  # and so nothing was created
    c.converge()
    assert c.state(key) == "Succeeded"
    c.change_spec(key)
    d = c.run_pass(key).decision
    assert d.state == "JobReplacing" and kinds(d, A.DeleteJob)


def test_a_stale_job_tombstone_is_not_taken_for_the_new_jobs_absence():
    c = Cluster()
    key = c.add(tuning_ws("tomb"))
    c.run_pass(key)
    c.settle(key)
    c.run_pass(key)  # Job of revision A running
    c.change_spec(key)
    c.run_pass(key)  # JobReplacing: DeleteJob A
    c.finish_job_deletion(key)
    c.run_pass(key)  # A confirmed gone: CreateJob B
    b = c.job(key)
    c.change_spec(key)
    d = c.run_pass(key, lag=1).decision  # the cache: A gone, B not seen yet
    assert not kinds(d, A.CreateJob), f"CreateJob while the Job of revision {b.revision} runs"


@pytest.mark.parametrize("message", mc.GARBAGE_RECORDS_THAT_CRASH, ids=["Infinity", "year-9999", "deep-nesting"])
def test_a_garbage_lifecycle_record_is_treated_as_absent(message):
    ws = inference_ws("garbage").with_status(WorkspaceStatus(conditions=(
        Condition(LIFECYCLE_CONDITION, "True", "Ready", message, EPOCH),)))
    d = pure_decide(ws, Snapshot(), EPOCH)
    assert d.state in ("Pending", "NodesProvisioning")


def test_a_record_saying_deleting_on_a_workspace_nobody_deletes_starts_over_and_keeps_its_finalizer():
    """Found by hypothesis: a record in state Deleting (edited by hand) made an undeleted Workspace drop its
    finalizer. The machine now starts over from Pending and never removes the finalizer unless deleting."""
    c = Cluster()
    key = c.add(inference_ws("odd"))
    c.run_pass(key)
    ws = c.ws(key)
    rec = read_lifecycle(ws.status)
    odd = attrs.evolve(rec, state="Deleting")
    conds = tuple(RECORD.to_condition(odd, EPOCH) if x.type == LIFECYCLE_CONDITION else x for x in ws.status.conditions)
    d = pure_decide(ws.with_status(attrs.evolve(ws.status, conditions=conds)), c.snapshot(key), c.now)
    assert not kinds(d, A.RemoveFinalizer)
    assert d.transitions[0].source == "Deleting" and d.transitions[0].dest == "Pending"
    assert d.state == "NodesProvisioning"
    assert not kinds(d, A.CreateNodeClaim)  # the recorded NodeClaim is still counted


# ============================================================================ a dead runner's create, still queued


GRACE = DEFAULT_CONFIG.create_grace


def _crash_with_create_queued(c: Cluster, key: str) -> str:
    """A pass records a NodeClaim and persists; the runner dies with its create sent and held up in the API
    server (a latency spike, a slow admission webhook). Returns the queued NodeClaim's name."""
    p = c.begin(key)
    (create,) = kinds(p.decision, A.CreateNodeClaim)
    c.restart(steps=1, from_write=True, queue_creates=True)
    assert [q[1].name for q in c.queued] == [create.name] and c.claims(key) == []
    return create.name


def test_a_confirmed_absent_nodeclaim_is_not_replaced_while_its_create_may_still_land():
    """The story of the one invariant the all-faults chaos run broke (3 NodeClaims for a target of 2): the
    new runner found the name absent (404) and replaced it at once; the dead runner's create then landed."""
    c = Cluster()
    key = c.add(inference_ws("queued", 1))
    name = _crash_with_create_queued(c, key)
    d = c.run_pass(key).decision
    assert not kinds(d, A.CreateNodeClaim)  # absent, but it may still land: it counts as existing
    assert d.wake.after is not None and timedelta(0) < d.wake.after <= GRACE and "in flight" in d.wake.reason
    c.advance(timedelta(seconds=30))
    assert not kinds(c.run_pass(key).decision, A.CreateNodeClaim)
    assert c.land_queued() == name  # within the API server's request timeout: one NodeClaim, not two
    assert [x.name for x in c.claims(key)] == [name]
    c.converge()
    assert c.state(key) == "Ready" and c.entries[key].max_claims == 1


def test_a_create_that_never_lands_is_replaced_once_the_grace_is_over():
    c = Cluster()
    key = c.add(inference_ws("timed-out", 1))
    name = _crash_with_create_queued(c, key)
    c.advance(GRACE - timedelta(seconds=2))  # past the request timeout: the server dropped the create
    assert c.queued == []
    assert not kinds(c.run_pass(key).decision, A.CreateNodeClaim)  # but the grace is not over yet
    c.advance(timedelta(seconds=2))
    d = c.run_pass(key).decision
    (replacement,) = kinds(d, A.CreateNodeClaim)
    assert replacement.name != name and read_lifecycle(c.ws(key).status).data.nodeclaims == (replacement.name,)
    c.converge()
    assert c.state(key) == "Ready"


def test_a_create_the_server_refused_outright_is_replaced_at_once():
    """429, admission or validation errors store nothing: the adapter says so and no grace is needed."""
    c = Cluster()
    key = c.add(inference_ws("refused", 1))
    name = _crash_with_create_queued(c, key)
    c.queued.clear()  # the create was answered 429: nothing is queued anywhere
    snap = c.snapshot(key)
    assert "NodeClaim/" + name in snap.absent
    waits = pure_decide(c.ws(key), snap, c.now)
    assert not kinds(waits, A.CreateNodeClaim)
    by = read_lifecycle(c.ws(key).status).data.claimed_by
    assert by  # the pass that recorded the name
    d = pure_decide(c.ws(key), attrs.evolve(snap, refused={"NodeClaim/" + name: by}), c.now)
    (replacement,) = kinds(d, A.CreateNodeClaim)
    assert replacement.name != name


def test_a_refusal_another_pass_reports_is_not_taken_for_the_recording_pass_s_own():
    """What one runner knows in memory speaks for its own requests only. With deterministic names, a runner
    whose status write lost a 409 decided the very names the winner recorded and sent; its "never sent"
    for them must not make the machine replace the winner's creates, which may still be on their way."""
    c = Cluster()
    key = c.add(inference_ws("other-writer", 1))
    name = _crash_with_create_queued(c, key)
    snap = c.snapshot(key)
    assert "NodeClaim/" + name in snap.absent
    for other in ("loser.1", "", read_lifecycle(c.ws(key).status).data.claimed_by + "x"):
        d = pure_decide(c.ws(key), attrs.evolve(snap, refused={"NodeClaim/" + name: other}), c.now)
        assert not kinds(d, A.CreateNodeClaim), other
        assert d.wake.after is not None and "in flight" in d.wake.reason
    assert c.land_queued() == name  # and the winner's create lands: one NodeClaim, as targeted
    c.converge()
    assert c.entries[key].max_claims == 1 and c.state(key) == "Ready"


def test_a_workspace_deleted_with_a_create_queued_keeps_its_finalizer_until_nothing_can_land():
    """Otherwise the create lands after the Workspace is gone: an orphaned GPU node nobody deletes."""
    c = Cluster()
    key = c.add(inference_ws("orphan", 1))
    name = _crash_with_create_queued(c, key)
    c.delete_workspace(key)
    d = c.run_pass(key).decision
    assert d.state == "Deleting" and not kinds(d, A.RemoveFinalizer) and not kinds(d, A.DeleteNodeClaim)
    assert d.wake.after is not None and d.wake.after <= GRACE
    c.land_queued()
    d = c.run_pass(key).decision
    assert [a.name for a in kinds(d, A.DeleteNodeClaim)] == [name]  # it showed up: deleted like any other
    c.converge()
    assert c.entries[key].gone and c.claims(key) == []


def test_a_workspace_deleted_with_a_create_lost_is_released_after_the_grace():
    c = Cluster()
    key = c.add(inference_ws("released", 1))
    _crash_with_create_queued(c, key)
    c.queued.clear()  # it never lands
    c.delete_workspace(key)
    assert not kinds(c.run_pass(key).decision, A.RemoveFinalizer)
    c.advance(GRACE)
    assert kinds(c.run_pass(key).decision, A.RemoveFinalizer)


def test_the_in_flight_marker_costs_no_status_write_of_its_own():
    """claimed_at is dropped only by a status write that happens anyway, once every recorded NodeClaim was
    seen: a settled Workspace carries none, and no pass writes just for it."""
    c = Cluster()
    key = c.add(inference_ws("marker", 2))
    c.converge()
    assert read_lifecycle(c.ws(key).status).data.claimed_at is None
    d = c.run_pass(key).decision
    assert not d.status_changed
