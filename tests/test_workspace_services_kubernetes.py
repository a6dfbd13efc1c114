"""What an inference Workspace deploys, over HTTP: the runner against the test API server with KAITO's CRDs and the
simulated Karpenter, device plugin and workload controllers (``workspace-fsm run --embedded`` in a thread).

Each inference Workspace gets KAITO's Service (port 80 to the model's 5000) and headless Service; a multi-node one a
StatefulSet whose pod 0 the Service selects; pods ask for the instance type's GPUs; a custom ``inference.template``
runs its containers exactly as written. A Service is created once: a spec change rolls the workload and leaves the
Service alone, and a Service someone deletes is created again.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client as k8s

from workspace_fsm.cli.embedded import EmbeddedCluster
from workspace_fsm.kaito import sku

TIME_SCALE = 300.0
NS = "services"
GPU = "nvidia.com/gpu"


def workspace(name: str, preset: str, instance_type: str, **inference: Any) -> dict[str, Any]:
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name, "namespace": NS},
            "resource": {"instanceType": instance_type, "labelSelector": {"matchLabels": {"apps": name}}},
            "inference": {"preset": {"name": preset}, **inference} if preset else inference}


SINGLE = workspace("one-node", "phi-4-mini-instruct", "Standard_NC24ads_A100_v4")
# KAITO's estimator sizes qwen2.5-coder-32b-instruct (62 GiB of weights) to 2 nodes of one 80 GiB A100 each.
MULTI = workspace("two-nodes", "qwen2.5-coder-32b-instruct", "Standard_NC24ads_A100_v4")
CONTAINERS = [{"name": "server", "image": "example.com/my-server:1.2", "command": ["/serve", "--port=8000"],
               "args": ["--model", "/models/m"], "ports": [{"containerPort": 8000}],
               "resources": {"requests": {GPU: "1"}, "limits": {GPU: "1"}}, "env": [{"name": "A", "value": "b"}]}]
TEMPLATE = workspace("custom", "", "Standard_NC24ads_A100_v4", template={"spec": {"containers": CONTAINERS}})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = EmbeddedCluster(time_scale=TIME_SCALE)
    c.kubeconfig = c.start(tmp_path_factory.mktemp("kube") / "kubeconfig")
    k8s.CoreV1Api(c.api).create_namespace({"metadata": {"name": NS}})
    runner = c.run_in_thread(namespace=NS)
    custom = k8s.CustomObjectsApi(c.api)
    for doc in (SINGLE, MULTI, TEMPLATE):
        custom.create_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces", copy.deepcopy(doc))
    wait_for("the three Workspaces Ready", lambda: all(state(c, d["metadata"]["name"]) == "Ready"
                                                       for d in (SINGLE, MULTI, TEMPLATE)), 120,
             lambda: str({d["metadata"]["name"]: state(c, d["metadata"]["name"]) for d in (SINGLE, MULTI, TEMPLATE)}))
    yield c
    runner.kill()
    c.stop()


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0,
             describe: Callable[[], str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (f": {describe()}" if describe else ""))


def get(c: EmbeddedCluster, kind: str, name: str) -> dict[str, Any] | None:
    core, custom = k8s.CoreV1Api(c.api), k8s.CustomObjectsApi(c.api)
    try:
        if kind == "Service":
            return c.api.sanitize_for_serialization(core.read_namespaced_service(name, NS))
        group, plural = {"Workspace": ("kaito.sh/v1beta1", "workspaces"), "Deployment": ("apps/v1", "deployments"),
                         "StatefulSet": ("apps/v1", "statefulsets")}[kind]
        g, v = group.split("/")
        return custom.get_namespaced_custom_object(g, v, NS, plural, name)
    except k8s.exceptions.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def state(c: EmbeddedCluster, name: str) -> str | None:
    ws = get(c, "Workspace", name)
    return ((ws or {}).get("status") or {}).get("state")


def test_each_inference_workspace_has_a_service_on_the_models_port(cluster) -> None:
    for name in ("one-node", "two-nodes", "custom"):
        svc = get(cluster, "Service", name)
        assert svc is not None, f"no Service {name}"
        assert {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 5000} in svc["spec"]["ports"]
        assert svc["metadata"]["ownerReferences"][0]["kind"] == "Workspace"
        headless = get(cluster, "Service", name + "-headless")
        assert headless is not None and headless["spec"]["clusterIP"] == "None"


def test_a_multi_node_workspace_is_a_statefulset_behind_the_headless_service(cluster) -> None:
    ws = get(cluster, "Workspace", "two-nodes")
    assert ws["status"]["targetNodeCount"] == 2
    sts = get(cluster, "StatefulSet", "two-nodes")
    assert sts is not None and sts["spec"]["replicas"] == 2 and sts["spec"]["serviceName"] == "two-nodes-headless"
    assert get(cluster, "Service", "two-nodes")["spec"]["selector"] == {
        "kaito.sh/workspace": "two-nodes", "statefulset.kubernetes.io/pod-name": "two-nodes-0"}
    [main] = sts["spec"]["template"]["spec"]["containers"]
    assert "--pipeline-parallel-size=2" in main["command"][2]


def test_gpu_requests_match_the_instance_type(cluster) -> None:
    gpus = str(sku.lookup("Standard_NC24ads_A100_v4").gpu_count)
    for kind, name in (("Deployment", "one-node"), ("StatefulSet", "two-nodes")):
        [main] = get(cluster, kind, name)["spec"]["template"]["spec"]["containers"]
        assert main["resources"] == {"requests": {GPU: gpus}, "limits": {GPU: gpus}}


def test_a_custom_template_runs_its_containers_exactly_as_written(cluster) -> None:
    dep = get(cluster, "Deployment", "custom")
    assert dep is not None
    got = dep["spec"]["template"]["spec"]["containers"]
    # The API server fills in defaults (imagePullPolicy, terminationMessagePath, protocol...): what was written is
    # there unchanged, and nothing else was added to or taken from it.
    assert len(got) == 1
    for key, value in CONTAINERS[0].items():
        if key == "ports":
            assert [{k: p[k] for k in ("containerPort",)} for p in got[0]["ports"]] == value
        else:
            assert got[0][key] == value, key


def test_a_spec_change_rolls_the_workload_and_leaves_the_service_alone(cluster) -> None:
    before = get(cluster, "Service", "one-node")["metadata"]["uid"]
    rev = get(cluster, "Deployment", "one-node")["metadata"]["annotations"]["workspace.kaito.io/revision"]
    k8s.CustomObjectsApi(cluster.api).patch_namespaced_custom_object(
        "kaito.sh", "v1beta1", NS, "workspaces", "one-node",
        {"metadata": {"annotations": {"note": "x"}}, "inference": {"adapters": [{"source": {
            "name": "a1", "image": "example.com/adapter:1"}, "strength": "0.5"}]}})
    wait_for("the new revision rolled out", lambda: get(cluster, "Deployment", "one-node")["metadata"]["annotations"][
        "workspace.kaito.io/revision"] != rev and state(cluster, "one-node") == "Ready", 60)
    assert get(cluster, "Service", "one-node")["metadata"]["uid"] == before


def test_a_deleted_service_is_created_again(cluster) -> None:
    old = get(cluster, "Service", "custom-headless")["metadata"]["uid"]
    k8s.CoreV1Api(cluster.api).delete_namespaced_service("custom-headless", NS)
    wait_for("the headless Service created again", lambda: (get(cluster, "Service", "custom-headless") or {}).get(
        "metadata", {}).get("uid") not in (None, old), 60)
    assert get(cluster, "Service", "custom")["metadata"]["uid"]  # the other one was left alone
