"""KAITO's RAGEngine through the model harness (workspace_fsm.testing.model): with compute (NodeClaims, Nodes
whose GPUs arrive late, its Deployment and Service) and retrieve-only, side by side, under delays, drops, stale
caches, kills and two writers. The binding is the one the Kubernetes adapter uses (snapshot from the caches,
NodeClaim actions rendered into requests), so the harness exercises the code that runs against a cluster."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import pytest

from workspace_fsm.adapters.kubernetes import ragengine as binding
from workspace_fsm.adapters.simulated.documents import ragengine_document
from workspace_fsm.engine import Create, Lifecycle
from workspace_fsm.kaito import actions as KA
from workspace_fsm.kaito import ragengine as R
from workspace_fsm.kaito.model import GPU_RESOURCE, LABEL_ACCELERATOR
from workspace_fsm.testing.model import ChildModel, Gone, ModelCluster, ModelViolation, ModelWorld, check_lifecycle

Children = Mapping[str, Sequence[Mapping[str, Any]]]
COMPUTE = ragengine_document("rag-gpu", compute=True, count=2, uid="uid-rag-gpu")
RETRIEVE = ragengine_document("rag-cpu", compute=False, uid="uid-rag-cpu")
T0 = "2026-01-01T00:00:00Z"


def _cond(type_: str, status: str, reason: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason or type_, "message": "", "lastTransitionTime": T0}


def _conds(doc: Mapping[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in (doc.get("status") or {}).get("conditions") or ()}


# ------------------------------------------------------------------ how Karpenter, the kubelet and the Deployment
# controller behave in the model world

def launches(doc: dict[str, Any]) -> Any:
    """Karpenter launches the instance."""
    if doc["metadata"].get("deletionTimestamp") or "Launched" in _conds(doc):
        return None
    doc["status"] = {"conditions": [_cond("Launched", "True")]}
    return doc


def registers(doc: dict[str, Any]) -> Any:
    """The node registers and is initialized: the NodeClaim is Ready and its Node exists (GPUs not yet)."""
    c = _conds(doc)
    if doc["metadata"].get("deletionTimestamp") or c.get("Launched") != "True" or "Ready" in c:
        return None
    node = doc["metadata"]["name"] + "-node"
    doc["status"] = {"nodeName": node, "conditions": [_cond("Launched", "True"), _cond("Registered", "True"),
                                                       _cond("Initialized", "True"), _cond("Ready", "True")]}
    labels = {LABEL_ACCELERATOR: "nvidia", **(doc["metadata"].get("labels") or {})}
    return [doc, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": labels},
                  "status": {"conditions": [_cond("Ready", "True")]}}]


def terminates(doc: dict[str, Any]) -> Any:
    """A NodeClaim being deleted goes, and its Node with it."""
    if not doc["metadata"].get("deletionTimestamp"):
        return None
    out: list[Any] = [Gone("NodeClaim", doc["metadata"]["name"])]
    node = (doc.get("status") or {}).get("nodeName")
    if node:
        out.append(Gone("Node", node))
    return out


def launch_fails(doc: dict[str, Any]) -> Any:
    if doc["metadata"].get("deletionTimestamp") or "Launched" in _conds(doc):
        return None
    doc["status"] = {"conditions": [_cond("Launched", "False", "InsufficientCapacity")]}
    return doc


def gpus_arrive(doc: dict[str, Any]) -> Any:
    """The device plugin advertises the node's GPUs."""
    st = doc.get("status") or {}
    if (st.get("capacity") or {}).get(GPU_RESOURCE):
        return None
    doc["status"] = {**st, "capacity": {GPU_RESOURCE: "1"}, "allocatable": {GPU_RESOURCE: "1"}}
    return doc


def node_not_ready(doc: dict[str, Any]) -> Any:
    doc["status"] = {**(doc.get("status") or {}), "conditions": [_cond("Ready", "False", "KubeletNotReady")]}
    return doc


def node_recovers(doc: dict[str, Any]) -> Any:
    if _conds(doc).get("Ready") == "True":
        return None
    doc["status"] = {**(doc.get("status") or {}), "conditions": [_cond("Ready", "True")]}
    return doc


def rolls_out(doc: dict[str, Any]) -> Any:
    gen, want = doc["metadata"].get("generation", 1), (doc.get("spec") or {}).get("replicas", 1)
    st = doc.get("status") or {}
    if st.get("observedGeneration") == gen and st.get("readyReplicas") == want and st.get("updatedReplicas") == want:
        return None
    doc["status"] = {"observedGeneration": gen, "replicas": want, "readyReplicas": want, "updatedReplicas": want}
    return doc


def loses_its_replica(doc: dict[str, Any]) -> Any:
    st = doc.get("status") or {}
    if not st.get("readyReplicas"):
        return None
    doc["status"] = {**st, "readyReplicas": 0}
    return doc


def new_context_window(doc: dict[str, Any], n: int) -> dict[str, Any]:
    spec = doc.setdefault("spec", {})
    if "inferenceService" in spec:
        spec["inferenceService"]["contextWindowSize"] = 4000 + n
    else:
        spec.setdefault("embedding", {}).setdefault("local", {})["modelID"] = f"BAAI/bge-small-en-v1.{n % 5}"
    return doc


# ------------------------------------------------------------------ invariants, as KAITO's author would declare them

def nodeclaims_within_count(obj: Any, children: Children) -> bool:
    """never more NodeClaims (being deleted included) than spec.compute.count, none without compute"""
    compute = obj.spec.compute if obj.spec is not None else None
    want = compute.count if compute is not None and compute.count is not None else 0
    return len(children.get("NodeClaim", ())) <= want


def one_deployment_and_service(obj: Any, children: Children) -> bool:
    """at most one Deployment and one Service, both named after the RAGEngine"""
    return all(len(children.get(k, ())) <= 1 and all(c["metadata"]["name"] == obj.metadata.name
                                                     for c in children.get(k, ()))
               for k in ("Deployment", "Service"))


def deployment_on_ready_gpu_nodes(rag: Any, snap: R.RAGSnapshot, a: Any) -> bool:
    """with compute, the RAG service's Deployment is created only once compute.count NodeClaims were Ready with
    GPUs, as of the snapshot the creating pass read"""
    if not (isinstance(a, Create) and a.kind == "Deployment") or rag.spec is None or rag.spec.compute is None:
        return True
    ready = [c for c in snap.nodeclaims if c.is_ready and c.node_name in snap.nodes
             and snap.nodes[c.node_name].gpu_ready]
    return len(ready) >= (rag.spec.compute.count or 1)


def rag_ready(obj: Any, children: Children) -> bool:
    """Where a settled RAGEngine may end: succeeded, or given up on NodeClaims (Config.max_nodeclaim_failures)."""
    c = obj.status.condition(R.RAGENGINE_SUCCEEDED)
    rec = R.RAGENGINE.record.read(obj)
    gave_up = rec is not None and rec.data.claim_failures >= R.DEFAULT_CONFIG.max_nodeclaim_failures
    return c is not None and c.status == "True" or gave_up


WORLD = ModelWorld(
    R.RAGENGINE, resources=(COMPUTE, RETRIEVE), snapshot=binding.snapshot, render=binding.render,
    children=(
        ChildModel("NodeClaim", progress=(launches, registers, terminates), faults=(launch_fails,), slow_delete=True),
        ChildModel("Node", progress=(gpus_arrive, node_recovers), faults=(node_not_ready,)),
        ChildModel("Deployment", progress=(rolls_out,), faults=(loses_its_replica,)),
    ),
    edits=(new_context_window,), recorded_kinds=("NodeClaim",),
    invariants=(nodeclaims_within_count, one_deployment_and_service), goal=rag_ready,
    action_invariants=(deployment_on_ready_gpu_nodes,),
)


def test_ragengine_holds_under_faults_stale_caches_kills_and_two_writers():
    check_lifecycle(WORLD, max_examples=150, steps=50)


def test_a_scripted_ragengine_run_reaches_succeeded_and_deletion_removes_its_nodeclaims():
    c = ModelCluster(WORLD)
    gpu, cpu = c.add(COMPUTE), c.add(RETRIEVE)
    c.settle()
    assert c.state(gpu) == "Ready" and c.state(cpu) == "Ready"
    kinds = sorted(k for k, _ in c.objects)
    assert kinds.count("NodeClaim") == 2 and kinds.count("Node") == 2
    assert not c.children_of(cpu).get("NodeClaim")
    c.delete(gpu)
    c.delete(cpu)
    c.settle()
    assert c.resource(gpu) is None and c.resource(cpu) is None
    assert not [k for k, _ in c.objects if k == "NodeClaim"]


def test_caught_a_nodeclaim_the_record_does_not_hold():
    # A binding that sends one NodeClaim more than the machine recorded (labelled as its own, so it is found
    # and counted, but nothing in the persisted record names it).
    def render_one_more(a: Any, obj: Any) -> list[Any]:
        out = binding.render(a, obj)
        if isinstance(a, KA.CreateNodeClaim):
            extra = copy.deepcopy(dict(out[0].manifest))
            extra["metadata"]["name"] += "-extra"
            out.append(attrs.evolve(out[0], manifest=extra))
        return out

    w = attrs.evolve(WORLD, render=render_one_more, invariants=())
    with pytest.raises(ModelViolation) as info:
        check_lifecycle(w, max_examples=50, steps=30, shrink=False)
    assert info.value.check == "record-before-create", info.value
    assert "-extra exists but the persisted record does not hold it" in str(info.value)


def ragengine(facts: Any = None) -> Lifecycle[Any]:
    """KAITO's RAGEngine declared again, with other facts (everything else as declared)."""
    lc = R.RAGENGINE
    return Lifecycle(lc.name, resource=lc.resource, states=lc.state_table, edges=R.TRANSITIONS, initial=lc.initial,
                     deleting=lc.deleting, finalizer=lc.finalizer, record=lc.record, facts=facts or lc.facts,
                     conditions=lc.conditions, invalid=lc.invalid, project=lc.project, wake=lc.wake,
                     on_write=lc.on_write, owns=lc.owns, watches=lc.watches, parse=lc.parse, confirm=lc.confirm,
                     config=lc.config)


class FactsWithoutPlugins(R.RAGEngineFacts):
    """A planted bug: GPUs are taken as ready once the nodes are (the device plugin is forgotten)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gpus_ready = self.nodes_ready


def test_caught_a_deployment_before_the_gpus_arrived():
    # In this world the device plugin is broken: Nodes register and get Ready, but never advertise GPUs. A correct
    # RAGEngine waits for ever (GPUs not ready); the planted one deploys as soon as its NodeClaims are Ready. With
    # GPUs that arrive late but do arrive, whether a run hits the window depends on hypothesis' draws (a search of
    # 100 examples once missed it, in a run where other tests had been imported first); here every run in which
    # the NodeClaims get Ready does.
    node = attrs.evolve(WORLD.children[1], progress=(node_recovers,))
    assert node.kind == "Node"
    w = attrs.evolve(WORLD, lifecycle=ragengine(FactsWithoutPlugins),
                     children=(WORLD.children[0], node, WORLD.children[2]))
    with pytest.raises(ModelViolation) as info:
        check_lifecycle(w, max_examples=100, steps=30, shrink=False)
    assert info.value.check == "invariant:deployment_on_ready_gpu_nodes", info.value


def test_the_redeclared_ragengine_holds_as_the_original():
    # The helper above changes nothing by itself: with KAITO's own facts the world holds.
    check_lifecycle(attrs.evolve(WORLD, lifecycle=ragengine()), max_examples=20, steps=30)
