"""KAITO's Workspace through the generic model harness (workspace_fsm.testing.model): an inference Workspace of
two nodes and a tuning Workspace side by side, under delays, drops, stale caches, kills and two writers.

The Workspace runs on its own Kubernetes adapter, not the generic one, so its binding for the harness is here:
the snapshot is read from documents with the adapter's own parsers (to_nodeclaim, to_node, to_workload, to_job)
and its actions become requests with the adapter's own manifests. tests/model_cluster.py stays the Workspace's
dedicated model (typed world, Workspace-only checks such as "no workload before the nodes were Ready as of the
creating pass's snapshot"); this file shows the generic kit holds the same lifecycle to the engine's checks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from test_model_ragengine import (gpus_arrive, launch_fails, launches, loses_its_replica, node_not_ready,
                                  node_recovers, registers, rolls_out, terminates)

from workspace_fsm.adapters.kubernetes import manifests
from workspace_fsm.adapters.kubernetes.adapter import to_job, to_node, to_nodeclaim, to_workload
from workspace_fsm.adapters.simulated.documents import inference_document, tuning_document
from workspace_fsm.engine import Create, Delete, Patch
from workspace_fsm.kaito import actions as KA
from workspace_fsm.kaito import workspace as W
from workspace_fsm.kaito.model import Snapshot
from workspace_fsm.testing.model import ChildModel, ModelCluster, ModelWorld, check_lifecycle, state_machine

Children = Mapping[str, Sequence[Mapping[str, Any]]]
# Two nodes: KAITO sizes qwen2.5-coder-32b-instruct (62.3 GiB loaded) to 2 nodes of one A100 80 GiB GPU
# (its node estimator, worked out in tests/test_estimator.py); resource.count does not size a vLLM preset.
INFERENCE = inference_document("ws-infer", preset="qwen2.5-coder-32b-instruct",
                               instance_type="Standard_NC24ads_A100_v4", count=2, uid="uid-ws-infer")
TUNING = tuning_document("ws-tune", preset="phi-3-mini-128k-instruct", instance_type="Standard_NC24ads_A100_v4",
                         uid="uid-ws-tune")
T0 = "2026-01-01T00:00:00Z"


# ------------------------------------------------------------------ the Workspace's binding for the harness

def snapshot(ws: Any, view: Any) -> Snapshot:
    key, name = ws.key, ws.metadata.name
    claims = sorted((to_nodeclaim(d) for d in view.owned("NodeClaim", key)), key=lambda c: c.name)
    nodes = {}
    for c in claims:
        doc = view.children["Node"].get(c.node_name) if c.node_name else None
        if doc is not None:
            nodes[c.node_name] = to_node(doc)
    workload = next((to_workload(d) for kind in ("StatefulSet", "Deployment") for d in view.owned(kind, key)
                     if d["metadata"]["name"] == name), None)
    job = next((to_job(d) for d in view.owned("Job", key) if d["metadata"]["name"] == name), None)
    visible = {"NodeClaim/" + c.name for c in claims}
    if workload is not None:
        visible.add("Workload/" + name)
    if job is not None:
        visible.add("Job/" + name)
    services = frozenset(d["metadata"]["name"] for d in view.owned("Service", key))
    visible.update("Service/" + s for s in services)
    absent = set()
    for n in W.confirmations(ws):
        if n in visible:
            continue
        if n.startswith("ConfigMap/"):
            absent.add(n)  # the model world has no ConfigMaps: a named inference config is not found
        elif n.startswith("Workload/"):
            short = n.partition("/")[2]
            if view.confirmed_absent("Deployment/" + short, ws) and view.confirmed_absent("StatefulSet/" + short, ws):
                absent.add(n)
        elif view.confirmed_absent(n, ws):
            absent.add(n)
    return Snapshot(tuple(claims), nodes, workload, job, frozenset(absent), {}, services=services)


def render(a: Any, ws: Any) -> list[Any]:
    if isinstance(a, KA.CreateNodeClaim):
        return [Create(manifests.nodeclaim(ws, a), owned=False, claim=a.claim)]
    if isinstance(a, KA.DeleteNodeClaim):
        return [Delete("karpenter.sh/v1", "NodeClaim", a.name, reason=a.reason)]
    if isinstance(a, KA.CreateWorkload):
        return [Create(manifests.workload(ws, a))]
    if isinstance(a, KA.UpdateWorkload):
        body = manifests.workload(ws, a)
        return [Patch("apps/v1", a.kind, a.name, {"metadata": {"annotations": body["metadata"]["annotations"]},
                                                   "spec": body["spec"]})]
    if isinstance(a, KA.CreateJob):
        return [Create(manifests.job(ws, a))]
    if isinstance(a, KA.CreateService):
        return [Create(manifests.service(ws, a))]
    if isinstance(a, KA.DeleteJob):
        return [Delete("batch/v1", "Job", a.name, a.propagation)]
    raise TypeError(f"no request for {type(a).__name__}")


# ------------------------------------------------------------------ the tuning Job in the model world

def _cond(type_: str, status: str, reason: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason or type_, "message": "", "lastTransitionTime": T0}


def job_completes(doc: dict[str, Any]) -> Any:
    st = doc.get("status") or {}
    if st.get("succeeded") or st.get("failed") or doc["metadata"].get("deletionTimestamp"):
        return None
    doc["status"] = {"succeeded": 1, "conditions": [_cond("Complete", "True")]}
    return doc


def job_fails(doc: dict[str, Any]) -> Any:
    st = doc.get("status") or {}
    if st.get("succeeded") or st.get("failed"):
        return None
    doc["status"] = {"failed": 1, "conditions": [_cond("Failed", "True", "BackoffLimitExceeded")]}
    return doc


def new_config(doc: dict[str, Any], n: int) -> dict[str, Any]:
    part = doc.get("tuning") or doc["inference"]
    part["config"] = f"cfg-{n}"
    return doc


# ------------------------------------------------------------------ invariants

def nodeclaims_within_target(obj: Any, children: Children) -> bool:
    """never more NodeClaims (being deleted included) than the Workspace's targetNodeCount"""
    target = obj.status.target_node_count or W.target_node_count(obj)
    return len(children.get("NodeClaim", ())) <= target


def one_workload_or_job(obj: Any, children: Children) -> bool:
    """an inference Workspace has no Job and a tuning one no workload; at most one of each, named after it"""
    kinds = ("Job",) if obj.tuning is not None else ("Deployment", "StatefulSet")
    others = ("Deployment", "StatefulSet") if obj.tuning is not None else ("Job",)
    return (sum(len(children.get(k, ())) for k in kinds) <= 1 and not any(children.get(k) for k in others)
            and all(c["metadata"]["name"] == obj.metadata.name for k in kinds for c in children.get(k, ())))


def workload_on_ready_gpu_nodes(ws: Any, snap: Snapshot, a: Any) -> bool:
    """no workload or Job is created before targetNodeCount NodeClaims were Ready with GPUs, as of the snapshot
    the creating pass read"""
    if not isinstance(a, (KA.CreateWorkload, KA.CreateJob)):
        return True
    ready = [c for c in snap.nodeclaims if c.is_ready and c.node_name in snap.nodes
             and snap.nodes[c.node_name].gpu_ready]
    return len(ready) >= (ws.status.target_node_count or W.target_node_count(ws))


def succeeded(obj: Any, children: Children) -> bool:
    """Where a settled Workspace may end: succeeded, failed, or given up on NodeClaims (after
    Config.max_nodeclaim_failures failed or replaced ones it creates no more, and says so)."""
    c = obj.status.condition("WorkspaceSucceeded")
    rec = W.WORKSPACE.record.read(obj)
    gave_up = rec is not None and rec.data.claim_failures >= W.DEFAULT_CONFIG.max_nodeclaim_failures
    return c is not None and c.status == "True" or obj.status.state == "Failed" or gave_up


WORLD = ModelWorld(
    W.WORKSPACE, resources=(INFERENCE, TUNING), snapshot=snapshot, render=render,
    children=(
        ChildModel("NodeClaim", progress=(launches, registers, terminates), faults=(launch_fails,), slow_delete=True),
        ChildModel("Node", progress=(gpus_arrive, node_recovers), faults=(node_not_ready,)),
        ChildModel("Deployment", progress=(rolls_out,), faults=(loses_its_replica,)),
        ChildModel("StatefulSet", progress=(rolls_out,), faults=(loses_its_replica,)),
        ChildModel("Job", progress=(job_completes,), faults=(job_fails,), slow_delete=True),
        ChildModel("Service"),
    ),
    edits=(new_config,), recorded_kinds=("NodeClaim",),
    invariants=(nodeclaims_within_target, one_workload_or_job), goal=succeeded,
    action_invariants=(workload_on_ready_gpu_nodes,),
)


def test_workspace_holds_under_faults_stale_caches_kills_and_two_writers():
    check_lifecycle(WORLD, max_examples=120, steps=50)


def test_a_scripted_workspace_run_succeeds_and_deletion_removes_its_nodeclaims():
    c = ModelCluster(WORLD)
    infer, tune = c.add(INFERENCE), c.add(TUNING)
    c.settle()
    assert c.state(infer) == "Ready", c.state(infer)
    assert c.state(tune) == "Succeeded", c.state(tune)
    assert len(c.children_of(infer)["NodeClaim"]) == 2 and len(c.children_of(infer)["StatefulSet"]) == 1
    # KAITO's two Services for an inference Workspace (the model's port, and pod DNS for the StatefulSet); none for
    # tuning. The Service selects pod 0, the Ray leader.
    services = {d["metadata"]["name"]: d for d in c.children_of(infer)["Service"]}
    assert sorted(services) == ["ws-infer", "ws-infer-headless"] and not c.children_of(tune).get("Service")
    assert services["ws-infer"]["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] == "ws-infer-0"
    c.delete(infer)
    c.delete(tune)
    c.settle()
    assert not [k for k, _ in c.objects if k in ("NodeClaim", "Workspace", "StatefulSet", "Job", "Service")]


def test_a_pass_held_past_the_send_window_sends_no_fresh_nodeclaim():
    # Found by the harness before it modelled the runner's rule: a pass decided at t, applied two minutes later,
    # whose NodeClaim create then timed out, landed after the machine had replaced it (three NodeClaims for two).
    # The runner never sends a fresh-named create later than Config.create_send_window after the pass's now.
    c = ModelCluster(WORLD)
    c.add(INFERENCE)
    tune = c.add(TUNING)
    assert c.begin("runner-0", tune)
    c.advance(timedelta(seconds=120), land_late=False)
    assert not c.finish("runner-0", "timeout")
    assert not c.inflight and not c.children_of(tune).get("NodeClaim")
    assert c.state(tune) == "NodesProvisioning"  # the record was written; the create is asked for again
    assert c.run_pass("runner-1", tune)
    assert len(c.children_of(tune)["NodeClaim"]) == 1
    c.settle()
    assert c.state(tune) == "Succeeded"


def test_a_workspace_whose_nodeclaims_never_become_ready_gives_up_and_says_so():
    # Found by a long randomized run: three deadline replacements of two NodeClaims reach
    # Config.max_nodeclaim_failures; the Workspace then creates no more and waits (a designed end, not a hang).
    c = ModelCluster(WORLD)
    infer = c.add(INFERENCE)
    c.run_pass("runner-0", infer)
    for _ in range(3):
        assert c.until_deadline(infer)
        c.run_pass("runner-0", infer)
        c.progress_every("NodeClaim")  # the replaced ones launch but never become Ready
        c.run_pass("runner-0", infer)
    c.settle()
    assert c.state(infer) == "NodesProvisioning" and not c.children_of(infer).get("NodeClaim")
    assert W.WORKSPACE.record.read(c.resource(infer)).data.claim_failures == 6
    messages = " ".join(cond.message for cond in c.resource(infer).status.conditions)
    assert "no more are created" in messages


def test_a_stale_pass_past_a_deadline_may_start_over_for_a_new_spec():
    # Found by a long randomized run (then a false alarm of the harness): a runner whose cache shows the record
    # of the old spec in JobRunning past its deadline, and the new spec with the old Job gone, goes
    # JobRunning -> Failed (deadline) -> JobRunning (spec_changed_job_gone). Back to the start state, but for a
    # new generation: the machine starts over for the new spec, which is no ping-pong.
    machine = state_machine(WORLD)()
    machine.create()
    machine.clean_pass(i=1)
    machine.catch_up()
    machine.clean_pass(i=1)
    machine.edit(i=1, which=0)
    machine.until_deadline(i=1, land_late=False)
    machine.clean_pass(i=1)
    machine.catch_up()
    c = machine.cluster
    assert c.begin("runner-1", c.keys[1], lag=2, child_lag=0)
    d = c.runners["runner-1"].open.decision
    assert [(t.source, t.dest) for t in d.transitions] == [("JobRunning", "Failed"), ("Failed", "JobRunning")]
    assert not c.finish("runner-1")  # and its write loses: the cache was stale
    machine.teardown()
