"""The simulated clusters understand GPUs: a workload's pods run only where their nvidia.com/gpu requests fit the
nodes' allocatable GPUs; otherwise they stay Pending (PodScheduled=False, Unschedulable, the scheduler's message)
and the workload never gets ready. In memory (SimCluster) and behind the test API server (SimulatedControllers)."""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

import attrs
import pytest
from kubernetes import client as k8s

from workspace_fsm.adapters.kubernetes import manifests
from workspace_fsm.adapters.simulated.cluster import SimCluster
from workspace_fsm.adapters.simulated.documents import ragengine_document
from workspace_fsm.adapters.simulated.harness import run_mode
from workspace_fsm.adapters.simulated.params import GPUS_PER_INSTANCE, Scenario, SimParams, instance_gpus
from workspace_fsm.adapters.simulated.population import Controller, lifecycle_adapter, run_controllers
from workspace_fsm.adapters.simulated.scheduling import fit, hostnames, node_matches, pod_gpus
from workspace_fsm.engine.queue import WorkQueue
from workspace_fsm.engine.runner import FsmReconciler, VirtualClock, VirtualTimeRunner
from workspace_fsm.kaito.ragengine import RAGENGINE

GPU = "nvidia.com/gpu"
BIG = "Standard_NC96ads_A100_v4"  # 4 GPUs per node


def container(requests: dict[str, str] | None = None, limits: dict[str, str] | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if requests is not None:
        res["requests"] = requests
    if limits is not None:
        res["limits"] = limits
    return {"name": "c", "image": "x", "resources": res}


# --------------------------------------------------------------------------- the fit itself


def test_a_pods_gpus_are_read_from_its_spec_as_the_scheduler_reads_them() -> None:
    assert pod_gpus({"containers": [container(limits={GPU: "2"})]}) == 2  # a limit alone is the request
    assert pod_gpus({"containers": [container(requests={GPU: "1"}, limits={GPU: "1"}),
                                    container(requests={GPU: "3"}, limits={GPU: "3"})]}) == 4
    assert pod_gpus({"containers": [container(requests={"cpu": "1"})],
                     "initContainers": [container(limits={GPU: "8"})]}) == 8
    assert pod_gpus({"containers": [container()]}) == 0


def test_node_affinity_and_selectors() -> None:
    pinned = {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1", "n2"]}]}]}}}}
    assert node_matches(pinned, "n1", {}) and not node_matches(pinned, "n3", {})
    assert hostnames(pinned) == ("n1", "n2")
    labelled = {"nodeSelector": {"apps": "rag"},
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["b"]}]}]}}}}
    assert node_matches(labelled, "x", {"apps": "rag", "zone": "a"})
    assert not node_matches(labelled, "x", {"apps": "rag", "zone": "b"})
    assert not node_matches(labelled, "x", {"zone": "a"})
    assert hostnames(labelled) is None


def test_the_unschedulable_message_is_the_schedulers() -> None:
    pod = {"containers": [container(limits={GPU: "4"})]}
    f = fit(pod, 1, [("n1", {}, 2), ("n2", {}, 2)], 2)
    assert not f.ok and f.message == "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    pinned = dict(pod, nodeSelector={"kubernetes.io/hostname": "n1"})
    f = fit(pinned, 1, [("n1", {}, 1), ("n2", {}, 8), ("n3", {}, 8)], 3)
    assert f.message == ("0/3 nodes are available: 1 Insufficient nvidia.com/gpu, "
                         "2 node(s) didn't match Pod's node affinity/selector.")
    assert fit(pod, 2, [("n1", {}, 4), ("n2", {}, 4)], 2).ok
    short = fit(pod, 2, [("n1", {}, 4), ("n2", {}, 2)], 2)
    assert not short.ok and short.placed == 1 and "1 Insufficient nvidia.com/gpu" in short.message
    assert fit({"containers": [container(requests={"cpu": "1"})]}, 3, [], 0).ok  # no GPU: any node


def test_nodes_get_their_gpus_from_the_instance_type() -> None:
    assert instance_gpus(BIG) == 4 == instance_gpus(BIG.lower())
    assert instance_gpus("Standard_NC6s_v3") == 1 and instance_gpus("Standard_D4s_v3") is None
    assert SimParams().gpus(BIG) == GPUS_PER_INSTANCE[BIG]
    assert SimParams(gpus_per_instance={BIG: 2}).gpus(BIG) == 2  # a scenario may override it
    c = SimCluster(params=SimParams(), seed=1)
    from workspace_fsm.adapters.simulated.documents import inference_document

    key = c.create_workspace(inference_document("w", preset="phi-4-mini-instruct", instance_type=BIG))
    from workspace_fsm.kaito import actions as A

    c.apply(c.truth.workspaces[key], [A.CreateNodeClaim("w-0", BIG, (("kaito.sh/workspace", "w"),
                                                                       ("kaito.sh/workspacenamespace", "default")))])
    c.advance_to(2000)
    assert c.truth.nodes["aks-w-0"].gpu_capacity == 4


# --------------------------------------------------------------------------- in memory: Workspaces


def _run(sc: Scenario) -> SimCluster:
    cluster = SimCluster(sc)
    clock = VirtualClock()
    queue: WorkQueue[str] = WorkQueue(clock)
    cluster.set_event_handler(queue.add)
    rec = FsmReconciler(cluster, clock, api_latency_s=0.01, call_counter=lambda: cluster.api_call_count,
                        epoch=cluster.to_datetime(0.0), writer_id="t")
    VirtualTimeRunner(rec, queue, cluster, clock, workers=3).run(cluster.settled, 7 * 24 * 3600.0)
    return cluster


def test_a_workspace_whose_pods_ask_for_more_gpus_than_its_node_has_never_gets_ready(monkeypatch) -> None:
    real = manifests.workload

    def eight_gpus(ws, a):  # what a wrong GPU count in the workload would look like
        doc = real(ws, a)
        doc["spec"]["template"]["spec"]["containers"][0]["resources"] = {"requests": {GPU: "8"}, "limits": {GPU: "8"}}
        return doc

    monkeypatch.setattr(manifests, "workload", eight_gpus)
    sc = attrs.evolve(Scenario.default(), workspaces=3, presets=("phi-4-mini-instruct",))
    cluster = _run(sc)
    assert cluster.settled() and all(r.first_goal_at is None and r.stuck for r in cluster.records.values())
    for key, ws in cluster.truth.workspaces.items():
        assert ws.status.state != "Ready"
        inference = ws.status.condition("InferenceReady")
        assert inference is not None and inference.status == "False" and inference.reason == "Unschedulable"
        assert "Unschedulable" in inference.message
        assert cluster.truth.workloads[key].problem == "Unschedulable"
        pods = cluster.pods(key)
        assert len(pods) == 1 and pods[0]["status"]["phase"] == "Pending"
        cond = pods[0]["status"]["conditions"][0]
        assert (cond["type"], cond["status"], cond["reason"]) == ("PodScheduled", "False", "Unschedulable")
        assert cond["message"] == "0/3 nodes are available: 1 Insufficient nvidia.com/gpu, " \
                                  "2 node(s) didn't match Pod's node affinity/selector."


def test_a_workspace_whose_pods_fit_gets_ready_and_has_no_pending_pod(monkeypatch) -> None:
    real = manifests.workload

    def four_gpus(ws, a):
        doc = real(ws, a)
        doc["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {GPU: "4"}}
        return doc

    monkeypatch.setattr(manifests, "workload", four_gpus)
    cluster = _run(attrs.evolve(Scenario.default(), workspaces=2, presets=("phi-4-mini-instruct",)))
    assert all(ws.status.state == "Ready" for ws in cluster.truth.workspaces.values())
    assert all(not cluster.pods(k) for k in cluster.truth.workspaces)


def test_the_default_simulation_is_unchanged_by_the_fit_check() -> None:
    r = run_mode(Scenario.default(), "fsm")
    # The figures of the 100-Workspace default before pods had to fit (every pod asks for 1 of 4 GPUs), but for the
    # writes: 700 then, plus each inference Workspace's Service and headless Service (2 x 100), created in passes
    # that ran anyway (the reconciles and makespan did not change).
    assert (r["makespan_s"], r["reconciles"], r["api_writes"], r["reached_goal"]) == (907.236, 1151, 900, 100)


# --------------------------------------------------------------------------- in memory: a RAGEngine


def test_a_ragengine_on_nodes_with_too_few_gpus_says_its_pods_are_unschedulable() -> None:
    # KAITO's table says a Standard_NC96ads_A100_v4 has 4 GPUs, so the RAG service asks for 4; these nodes have 2.
    cluster = SimCluster(params=SimParams(gpus_per_instance={BIG: 2}), seed=1)
    adapter = lifecycle_adapter(cluster, RAGENGINE)
    key = cluster.create_resource("RAGEngine", ragengine_document("rag", compute=True, instance_type=BIG, count=2),
                                  nodes=2, lifecycle="ragengine")
    clock = VirtualClock()
    queue: WorkQueue[str] = WorkQueue(clock)
    adapter.set_event_handler(queue.add)
    rec = FsmReconciler(adapter, clock, api_latency_s=0.01, call_counter=lambda: cluster.api_call_count,
                        epoch=cluster.to_datetime(0.0), writer_id="t")
    run_controllers([Controller("ragengine", rec, queue, 2)], cluster, clock, cluster.settled, 7 * 24 * 3600.0)
    assert cluster.settled() and cluster.records["RAGEngine:" + key].stuck
    dep = cluster.object("Deployment", key)
    assert dep["status"]["readyReplicas"] == 0 and dep["status"]["unavailableReplicas"] == 1
    (pod,) = cluster.pods(key)
    assert pod["spec"]["containers"][0]["resources"]["requests"][GPU] == "4"
    assert pod["status"]["conditions"][0]["message"] == "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    conds = {c["type"]: c for c in cluster.object("RAGEngine", key)["status"]["conditions"]}
    assert conds["RAGEngineSucceeded"]["status"] == "False" and conds["ResourceReady"]["status"] == "True"


# --------------------------------------------------------------------------- behind the test API server


def wait_for(what: str, check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    from workspace_fsm.cli.embedded import EmbeddedCluster

    c = EmbeddedCluster(time_scale=600.0, params=SimParams(gpus_per_instance={BIG: 2}))
    c.kubeconfig = c.start(tmp_path_factory.mktemp("kube") / "kubeconfig")
    yield c
    c.stop()


def _nodeclaim(name: str, itype: str) -> dict[str, Any]:
    return {"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": {"name": name, "labels": {"apps": name}},
            "spec": {"nodeClassRef": dict(manifests.DEFAULT_NODE_CLASS), "requirements": [
                {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": [itype]}]}}


def _deployment(name: str, node: str, gpus: str) -> dict[str, Any]:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
                "metadata": {"labels": labels},
                "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                         "containers": [{"name": "m", "image": "x", "resources": {"limits": {GPU: gpus}}}]}}}}


def test_behind_the_api_server_nodes_advertise_their_gpus_and_pods_must_fit(embedded) -> None:
    custom, core, apps = k8s.CustomObjectsApi(embedded.api), k8s.CoreV1Api(embedded.api), k8s.AppsV1Api(embedded.api)
    custom.create_cluster_custom_object("karpenter.sh", "v1", "nodeclaims", _nodeclaim("gpu-a", BIG))

    def allocatable():
        nodes = [n for n in core.list_node().items if n.metadata.name == "aks-gpu-a"]
        return nodes and (nodes[0].status.allocatable or {}).get(GPU)

    assert wait_for("the node's GPUs", allocatable) == "2"
    node = core.read_node("aks-gpu-a")
    assert node.status.capacity[GPU] == "2"
    apps.create_namespaced_deployment("default", _deployment("too-big", "aks-gpu-a", "4"))
    apps.create_namespaced_deployment("default", _deployment("fits", "aks-gpu-a", "2"))

    def pending():
        pods = [p for p in core.list_namespaced_pod("default").items if p.metadata.name.startswith("too-big")]
        return pods and pods[0].status.conditions and pods
    (pod,) = wait_for("the unschedulable pod", pending)
    assert pod.status.phase == "Pending"
    cond = pod.status.conditions[0]
    assert (cond.type, cond.status, cond.reason) == ("PodScheduled", "False", "Unschedulable")
    n_nodes = len(core.list_node().items)
    assert cond.message == f"0/{n_nodes} nodes are available: 1 Insufficient nvidia.com/gpu" + \
        (f", {n_nodes - 1} node(s) didn't match Pod's node affinity/selector." if n_nodes > 1 else ".")
    assert pod.metadata.owner_references[0].name == "too-big"
    def ready(name: str) -> int:
        status = apps.read_namespaced_deployment(name, "default").status
        return (status.ready_replicas or 0) if status is not None else 0

    wait_for("the fitting Deployment", lambda: ready("fits") == 1)
    assert not [p for p in core.list_namespaced_pod("default").items if p.metadata.name.startswith("fits")]
    # past the longest rollout (600 simulated seconds: 1 s here), the one that does not fit is still not ready
    time.sleep(1.5)
    status = apps.read_namespaced_deployment("too-big", "default").status
    assert ready("too-big") == 0 and status.unavailable_replicas == 1
    # the spec fixed (2 GPUs): a new generation, placed; its Pending pod goes and the replica gets ready
    apps.patch_namespaced_deployment("too-big", "default", {"spec": {"template": {"spec": {"containers": [
        {"name": "m", "image": "x", "resources": {"limits": {GPU: "2"}}}]}}}})
    wait_for("the fixed Deployment", lambda: ready("too-big") == 1)
    assert not [p for p in core.list_namespaced_pod("default").items if p.metadata.name.startswith("too-big")]


def test_behind_the_api_server_a_jobs_pod_must_fit_too(embedded) -> None:
    custom, core, batch = k8s.CustomObjectsApi(embedded.api), k8s.CoreV1Api(embedded.api), k8s.BatchV1Api(embedded.api)
    if not [n for n in core.list_node().items if n.metadata.name == "aks-gpu-a"]:
        custom.create_cluster_custom_object("karpenter.sh", "v1", "nodeclaims", _nodeclaim("gpu-a", BIG))
    wait_for("the node's GPUs", lambda: [n for n in core.list_node().items if n.metadata.name == "aks-gpu-a"
                                         and (n.status.allocatable or {}).get(GPU) == "2"])

    def job(name: str, gpus: str) -> dict[str, Any]:
        pod = _deployment(name, "aks-gpu-a", gpus)["spec"]["template"]
        pod["spec"]["restartPolicy"] = "Never"
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": "default"},
                "spec": {"backoffLimit": 0, "template": pod}}

    batch.create_namespaced_job("default", job("tune-big", "4"))
    batch.create_namespaced_job("default", job("tune-ok", "2"))
    def pending() -> list[Any]:
        return [p for p in core.list_namespaced_pod("default").items
                if p.metadata.name.startswith("tune-big") and p.status.conditions]

    (pod,) = wait_for("the Job's pending pod", pending)
    assert pod.status.conditions[0].reason == "Unschedulable" and pod.metadata.owner_references[0].kind == "Job"
    done = lambda name: any(c.type == "Complete" and c.status == "True"  # noqa: E731
                            for c in (batch.read_namespaced_job(name, "default").status.conditions or ()))
    wait_for("the Job that fits to complete", lambda: done("tune-ok"), timeout=30)
    assert not done("tune-big")


def test_behind_the_api_server_a_ragengine_on_too_small_nodes_never_succeeds(embedded) -> None:
    from workspace_fsm.cli.run import run_against

    stop = threading.Event()
    args = argparse.Namespace(namespace=None, workers=2, health_port=0, api_request_timeout=embedded.request_timeout,
                              lifecycles=[RAGENGINE])
    t = threading.Thread(target=run_against, args=(embedded.api, args, stop), daemon=True)
    t.start()
    try:
        custom, core = k8s.CustomObjectsApi(embedded.api), k8s.CoreV1Api(embedded.api)
        custom.create_namespaced_custom_object("kaito.sh", "v1beta1", "default", "ragengines",
                                               ragengine_document("rag-big", compute=True, instance_type=BIG))

        def pending():
            pods = [p for p in core.list_namespaced_pod("default", label_selector="kaito.sh/ragengine=rag-big").items
                    if p.status.conditions]
            return pods
        (pod,) = wait_for("the RAG service's pending pod", pending, timeout=90)
        assert pod.status.conditions[0].reason == "Unschedulable"
        assert "Insufficient nvidia.com/gpu" in pod.status.conditions[0].message
        rag = custom.get_namespaced_custom_object("kaito.sh", "v1beta1", "default", "ragengines", "rag-big")
        conds = {c["type"]: c for c in rag["status"]["conditions"]}
        assert conds["RAGEngineSucceeded"]["status"] == "False"
        assert conds["ResourceReady"]["status"] == "True"  # its nodes are there: it is the pods that do not fit
    finally:
        stop.set()
        t.join(20)


def test_a_lifecycle_that_watches_pods_sees_the_pending_ones_and_is_woken_by_them() -> None:
    from workspace_fsm.engine import Kind, Watches

    class WithPods:
        """The RAGEngine's declaration plus Pods mapped to their RAGEngine by its label."""

        def __init__(self, lc: Any) -> None:
            self._lc = lc
            self.watches = (*lc.watches, Watches(
                Kind("v1", "Pod", "pods"),
                owner=lambda o: f"{o['metadata']['namespace']}/{o['metadata']['labels']['kaito.sh/ragengine']}"))

        def __getattr__(self, name: str) -> Any:
            return getattr(self._lc, name)

    cluster = SimCluster(params=SimParams(gpus_per_instance={BIG: 2}), seed=1)
    adapter = lifecycle_adapter(cluster, WithPods(RAGENGINE))
    assert "Pod" in adapter.waking_kinds
    woken: list[str] = []
    key = cluster.create_resource("RAGEngine", ragengine_document("rag", compute=True, instance_type=BIG),
                                  nodes=1, lifecycle="ragengine")
    clock = VirtualClock()
    queue: WorkQueue[str] = WorkQueue(clock)
    adapter.set_event_handler(lambda k: (woken.append(k), queue.add(k)))
    rec = FsmReconciler(adapter, clock, api_latency_s=0.01, call_counter=lambda: cluster.api_call_count,
                        epoch=cluster.to_datetime(0.0), writer_id="t")
    run_controllers([Controller("ragengine", rec, queue, 2)], cluster, clock, cluster.settled, 7 * 24 * 3600.0)
    (pod,) = adapter.owned("Pod", key)
    assert pod["status"]["conditions"][0]["reason"] == "Unschedulable"
    assert pod["status"]["conditions"][0]["message"] == "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    # the Deployment fixed to ask for what the node has: placed, and its Pending pod goes
    before = len(woken)
    cluster.patch_child("Deployment", key, {"spec": {"template": {"spec": {"containers": [
        {**pod["spec"]["containers"][0], "resources": {"limits": {GPU: "2"}}}]}}}})
    cluster.advance_to(cluster.now + 1)
    assert not adapter.owned("Pod", key) and len(woken) > before
    assert cluster.object("Pod", f"default/{pod['metadata']['name']}") is None
