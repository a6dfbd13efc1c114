"""The machine end to end over real HTTP: the official client, the test API server with KAITO's and
Karpenter's CRDs, the simulated Karpenter/device-plugin/workload controllers, and kubectl as the user."""

from __future__ import annotations

import subprocess
import time
from datetime import timedelta
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from workspace_fsm.cli.embedded import EmbeddedCluster
from workspace_fsm.kaito.workspace import Config
from workspace_fsm.kaito.model import LABEL_WORKSPACE, LABEL_WORKSPACE_NAMESPACE
from workspace_fsm.kaito.workspace import read_lifecycle
from workspace_fsm.kaito.model import WorkspaceStatus

TIME_SCALE = 300.0  # a 240 s NodeClaim takes 0.8 s


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = EmbeddedCluster(time_scale=TIME_SCALE)
    c.kubeconfig = c.start(tmp_path_factory.mktemp("kube") / "kubeconfig")
    yield c
    c.stop()


def kubectl(c, *args: str, stdin: str | None = None) -> str:
    p = subprocess.run(["kubectl", "--kubeconfig", str(c.kubeconfig), *args], input=stdin, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, f"kubectl {' '.join(args)} failed: {p.stderr}"
    return p.stdout


def create_namespace(c, ns: str) -> None:
    k8s.CoreV1Api(c.api).create_namespace({"metadata": {"name": ns}})


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0,
             describe: Callable[[], str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (f": {describe()}" if describe else ""))


def workspaces(c, ns: str) -> dict[str, dict]:
    items = k8s.CustomObjectsApi(c.api).list_namespaced_custom_object("kaito.sh", "v1beta1", ns, "workspaces")["items"]
    return {w["metadata"]["name"]: w for w in items}


def nodeclaims_of(c, ns: str, name: str) -> list[dict]:
    items = k8s.CustomObjectsApi(c.api).list_cluster_custom_object(
        "karpenter.sh", "v1", "nodeclaims", label_selector=f"{LABEL_WORKSPACE}={name},{LABEL_WORKSPACE_NAMESPACE}={ns}")
    return items["items"]


def goal(ws: dict) -> bool:
    status = ws.get("status") or {}
    want = ("Succeeded",) if "tuning" in ws else ("Ready",)
    gen = ws["metadata"].get("generation")
    return status.get("state") in want and all(
        cnd.get("observedGeneration") == gen for cnd in status.get("conditions") or [] if cnd["type"] == "WorkspaceSucceeded")


def example_docs(kaito_dir: Path, *, byo: bool) -> list[dict]:
    """KAITO's example Workspaces. A few files reuse a name (variants of one example): those get a suffix,
    so that every example is applied and followed to its goal."""
    docs, seen = [], set()
    for path in sorted((kaito_dir / "examples").glob("*/*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Workspace" and ("accelerator" in path.name) == byo:
                name = doc["metadata"]["name"]
                n = 2
                while name in seen:
                    name = f"{doc['metadata']['name']}-{n}"
                    n += 1
                seen.add(name)
                docs.append({**doc, "metadata": {**doc["metadata"], "name": name}})
    return docs


def test_every_kaito_example_reaches_its_goal_applied_with_kubectl(cluster, kaito_dir):
    ns = "examples"
    create_namespace(cluster, ns)
    docs = example_docs(kaito_dir, byo=False)
    assert len(docs) == 33
    runner = cluster.run_in_thread(namespace=ns)
    try:
        kubectl(cluster, "apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump_all(docs))
        wait_for("every example Workspace at its goal", lambda: (lambda w: len(w) == 33 and all(map(goal, w.values())))(
            workspaces(cluster, ns)), timeout=120, describe=lambda: str(
                {n: (w.get("status") or {}).get("state") for n, w in workspaces(cluster, ns).items() if not goal(w)}))
        listing = kubectl(cluster, "get", "workspaces", "-n", ns)
        assert "TARGETNODECOUNT" in listing.splitlines()[0].replace(" ", "").upper() or "STATE" in listing
        for name, ws in workspaces(cluster, ns).items():
            target = ws["status"]["targetNodeCount"]
            claims = nodeclaims_of(cluster, ns, name)
            assert len(claims) == target, f"{name}: {len(claims)} NodeClaims for targetNodeCount {target}"
            rec = read_lifecycle(WorkspaceStatus.from_dict(ws["status"]))
            assert rec is not None and rec.state in ("Ready", "Succeeded")
    finally:
        runner.kill()


def test_the_byo_accelerator_example_uses_existing_nodes(cluster, kaito_dir):
    ns = "byo"
    create_namespace(cluster, ns)
    (doc,) = example_docs(kaito_dir, byo=True)
    labels = doc["resource"]["labelSelector"]["matchLabels"]
    core = k8s.CoreV1Api(cluster.api)
    # GPU nodes as NVIDIA's GPU feature discovery labels them: KAITO sizes a BYO Workspace from the first Ready
    # one's labels (2 A100 80 GiB GPUs: partition.count 2 fits, and llama-3.1-8b-instruct needs one node).
    gfd = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/gpu.count": "2",
           "nvidia.com/gpu.memory": "81920"}
    for i in range(2):
        core.create_node({"metadata": {"name": f"byo-gpu-{i}", "labels": {**labels, **gfd, "accelerator": "nvidia"}}})
        core.patch_node_status(f"byo-gpu-{i}", {"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": ""}],
            "capacity": {"nvidia.com/gpu": "2"}, "allocatable": {"nvidia.com/gpu": "2"}}})
    runner = cluster.run_in_thread(namespace=ns, byo_nodes=True)
    try:
        kubectl(cluster, "apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(doc))
        name = doc["metadata"]["name"]
        wait_for("the BYO Workspace Ready", lambda: goal(workspaces(cluster, ns).get(name, {"metadata": {}})))
        assert nodeclaims_of(cluster, ns, name) == []  # nothing provisioned: the user's nodes are used
        assert workspaces(cluster, ns)[name]["status"]["targetNodeCount"] == 1
    finally:
        runner.kill()


def tuning_doc(name: str, config: str = "") -> dict:
    doc = {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name},
           "resource": {"instanceType": "Standard_NC24ads_A100_v4", "labelSelector": {"matchLabels": {"app": name}}},
           "tuning": {"preset": {"name": "phi-3-mini-128k-instruct"}, "method": "qlora",
                      "input": {"urls": ["https://example.com/data.parquet"]},
                      "output": {"image": "registry.example.com/out:1", "imagePushSecret": "push"}}}
    if config:
        doc["tuning"]["config"] = config
    return doc


def test_a_tuning_spec_change_replaces_its_job(cluster):
    ns = "tuning"
    create_namespace(cluster, ns)
    batch = k8s.CustomObjectsApi(cluster.api)
    runner = cluster.run_in_thread(namespace=ns)
    try:
        kubectl(cluster, "apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(tuning_doc("tune")))
        wait_for("the first run to succeed", lambda: goal(workspaces(cluster, ns).get("tune", {"metadata": {}})))
        first = batch.get_namespaced_custom_object("batch", "v1", ns, "jobs", "tune")
        kubectl(cluster, "patch", "workspace", "tune", "-n", ns, "--type=merge", "-p", '{"tuning":{"config":"v2"}}')
        wait_for("the second run to succeed", lambda: goal(workspaces(cluster, ns)["tune"]))
        second = batch.get_namespaced_custom_object("batch", "v1", ns, "jobs", "tune")
        assert second["metadata"]["uid"] != first["metadata"]["uid"]
        rev = "workspace.kaito.io/revision"
        assert second["metadata"]["annotations"][rev] != first["metadata"]["annotations"][rev]
        ws = workspaces(cluster, ns)["tune"]
        assert ws["metadata"]["generation"] == 2 and ws["status"]["state"] == "Succeeded"
        history = [(h.source, h.dest) for h in read_lifecycle(WorkspaceStatus.from_dict(ws["status"])).history]
        assert ("Succeeded", "JobReplacing") in history and ("JobReplacing", "JobRunning") in history
    finally:
        runner.kill()


# KAITO sizes a vLLM preset from its GPUs, not from resource.count: on Standard_NC24ads_A100_v4 (one A100 80 GiB)
# these need 1, 2 and 3 nodes (its node estimator, worked out by hand in tests/test_estimator.py).
PRESET_FOR_NODES = {1: "phi-4-mini-instruct", 2: "qwen2.5-coder-32b-instruct", 3: "gpt-oss-120b"}


def test_a_deleted_workspace_leaves_no_nodeclaims(cluster):
    ns = "deleting"
    create_namespace(cluster, ns)
    runner = cluster.run_in_thread(namespace=ns)
    doc = {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": "bye"},
           "resource": {"count": 3, "instanceType": "Standard_NC24ads_A100_v4",
                        "labelSelector": {"matchLabels": {"apps": "bye"}}},
           "inference": {"preset": {"name": PRESET_FOR_NODES[3]}}}
    try:
        kubectl(cluster, "apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(doc))
        wait_for("3 NodeClaims", lambda: len(nodeclaims_of(cluster, ns, "bye")) == 3)
        kubectl(cluster, "delete", "workspace", "bye", "-n", ns, "--wait=false")
        wait_for("the Workspace to be gone", lambda: "bye" not in workspaces(cluster, ns))
        assert nodeclaims_of(cluster, ns, "bye") == []
    finally:
        runner.kill()


def test_a_runner_killed_midway_and_restarted_continues_without_duplicates(cluster):
    ns = "restart"
    create_namespace(cluster, ns)
    docs = []
    for i in range(6):
        docs.append({"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": f"ws-{i}"},
                     "resource": {"count": 1 + i % 3, "instanceType": "Standard_NC24ads_A100_v4",
                                  "labelSelector": {"matchLabels": {"apps": f"ws-{i}"}}},
                     "inference": {"preset": {"name": PRESET_FOR_NODES[1 + i % 3]}}})
    kubectl(cluster, "apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump_all(docs))
    for kill_after in (0.3, 0.8, 1.5):
        runner = cluster.run_in_thread(namespace=ns)
        time.sleep(kill_after)
        runner.kill()
    runner = cluster.run_in_thread(namespace=ns)
    try:
        wait_for("all Ready after restarts", lambda: all(map(goal, workspaces(cluster, ns).values())), timeout=90)
        for i in range(6):
            names = sorted(n["metadata"]["name"] for n in nodeclaims_of(cluster, ns, f"ws-{i}"))
            assert len(names) == 1 + i % 3, names
            assert [n.rsplit("-", 1)[1] for n in names] == [str(k) for k in range(1 + i % 3)]
    finally:
        runner.kill()


def test_a_burst_of_conflicts_and_server_errors_delays_but_does_not_break(cluster):
    ns = "faults"
    create_namespace(cluster, ns)
    docs = [{"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": f"f-{i}"},
             "resource": {"count": 2, "instanceType": "Standard_NC24ads_A100_v4",
                          "labelSelector": {"matchLabels": {"apps": f"f-{i}"}}},
             "inference": {"preset": {"name": PRESET_FOR_NODES[2]}}} for i in range(4)]
    kubectl(cluster, "apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump_all(docs))
    faults = cluster.server.faults
    # Faults hit the runner's requests only (not kubectl's, nor the simulated Karpenter's).
    conflicts = faults.conflict(resources=["workspaces/status"], rate=0.5, seed=3, times=20, user_agent="workspace-fsm/")
    errors = faults.error(500, verbs=["create", "patch", "update"], rate=0.3, seed=4, times=20,
                          user_agent="workspace-fsm/")
    runner = cluster.run_in_thread(namespace=ns)

    def all_ready():
        w = workspaces(cluster, ns)
        return len(w) == 4 and all(map(goal, w.values()))

    try:
        # A 500 on a NodeClaim create is ambiguous (it may yet be stored), so that NodeClaim is replaced only
        # after Config.create_grace: by design each costs up to the grace. Once the burst is spent, every
        # Workspace must get there within one grace and the usual provisioning time.
        wait_for("the burst of faults to be spent, or all Ready", lambda: all_ready() or (
            conflicts.exhausted and errors.exhausted), timeout=180)
        grace = Config(api_request_timeout=timedelta(seconds=cluster.request_timeout)).create_grace.total_seconds()
        faults.clear()
        wait_for("all Ready despite faults", all_ready, timeout=grace + 60, describe=lambda: str({
            n: ((w.get("status") or {}).get("conditions"), [c["metadata"]["name"] for c in nodeclaims_of(cluster, ns, n)])
            for n, w in workspaces(cluster, ns).items() if not goal(w)}))
        assert conflicts.hits > 0 and errors.hits > 0
        for i in range(4):
            assert len(nodeclaims_of(cluster, ns, f"f-{i}")) == 2
    finally:
        faults.clear()
        runner.kill()


KIND_RESOURCE = {"NodeClaim": ("karpenter.sh", "nodeclaims"), "Workspace": ("kaito.sh", "workspaces"),
                 "Workspace/status": ("kaito.sh", "workspaces/status"), "Deployment": ("apps", "deployments"),
                 "StatefulSet": ("apps", "statefulsets"), "Job": ("batch", "jobs"), "Event": ("", "events"),
                 "Node": ("", "nodes"), "ConfigMap": ("", "configmaps"), "Service": ("", "services")}


def test_every_request_the_runner_makes_is_granted_by_deploy_rbac(cluster):
    """RBAC derived from use: a lifecycle with a multi-node Workspace, a tuning spec change and a deletion,
    and every (group, resource, verb) the adapter sent is in PERMISSIONS (which deploy/rbac.yaml equals)."""
    from workspace_fsm.adapters.kubernetes.adapter import PERMISSIONS
    from workspace_fsm.cli.run import build_runner

    ns = "rbac"
    create_namespace(cluster, ns)
    adapter, queue, reconciler, runner = build_runner(cluster.api, namespace=ns,
                                                      api_request_timeout_s=cluster.request_timeout)
    adapter.start()
    adapter.wait_synced(30)
    runner.start()
    try:
        multi = {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": "multi"},
                 "resource": {"count": 2, "instanceType": "Standard_NC24ads_A100_v4",
                              "labelSelector": {"matchLabels": {"apps": "multi"}}},
                 # A named inference ConfigMap that does not exist: read (one GET, a 404) to size the Workspace.
                 "inference": {"preset": {"name": PRESET_FOR_NODES[2]}, "config": "multi-params"}}
        kubectl(cluster, "apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump_all([multi, tuning_doc("t")]))
        wait_for("both at their goal", lambda: (lambda w: len(w) == 2 and all(map(goal, w.values())))(
            workspaces(cluster, ns)))
        kubectl(cluster, "patch", "workspace", "t", "-n", ns, "--type=merge", "-p", '{"tuning":{"config":"v2"}}')
        wait_for("the re-run", lambda: goal(workspaces(cluster, ns)["t"]))
        kubectl(cluster, "delete", "workspace", "multi", "-n", ns)
        wait_for("deletion", lambda: "multi" not in workspaces(cluster, ns))
    finally:
        runner.stop()
        adapter.stop()
    used: dict[tuple[str, str], set[str]] = {}
    for key in adapter.requests:
        verb, kind = key.split(" ", 1)
        used.setdefault(KIND_RESOURCE[kind], set()).add(verb)
    for informer_resource in (("kaito.sh", "workspaces"), ("karpenter.sh", "nodeclaims"), ("", "nodes"),
                              ("apps", "deployments"), ("apps", "statefulsets"), ("batch", "jobs")):
        used.setdefault(informer_resource, set()).update({"list", "watch"})
    for resource, verbs in used.items():
        assert verbs <= PERMISSIONS.get(resource, frozenset()), f"{resource}: {verbs - PERMISSIONS.get(resource, set())}"
    assert {"create", "delete"} <= used[("karpenter.sh", "nodeclaims")] and "delete" in used[("batch", "jobs")]
    assert used[("", "configmaps")] == {"get"}


def test_an_invalid_workspace_gets_a_specific_condition_nothing_is_created_and_a_fix_lets_it_proceed(cluster):
    """Bad input that the CRD's schema admits but KAITO's rules reject reaches the runner: it reports the
    specific reason on the Workspace, creates nothing, keeps serving the others, and proceeds once fixed."""
    ns = "badinput"
    create_namespace(cluster, ns)
    base = {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace",
            "resource": {"instanceType": "Standard_NC24ads_A100_v4", "labelSelector": {"matchLabels": {"a": "b"}}}}
    bad = {
        "unknown-preset": {**base, "metadata": {"name": "unknown-preset"}, "inference": {"preset": {"name": "gpt-99"}}},
        "no-instance-type": {**base, "metadata": {"name": "no-instance-type"},
                             "resource": {"labelSelector": {"matchLabels": {"a": "b"}}},
                             "inference": {"preset": {"name": "phi-4"}}},
        "huge-count": {**base, "metadata": {"name": "huge-count"},
                       "resource": {**base["resource"], "count": 100000}, "inference": {"preset": {"name": "phi-4"}}},
    }
    reasons = {"unknown-preset": "UnknownPreset", "no-instance-type": "InstanceTypeRequired", "huge-count": "CountTooLarge"}
    good = {**base, "metadata": {"name": "fine"}, "inference": {"preset": {"name": "phi-4"}}}
    runner = cluster.run_in_thread(namespace=ns)
    try:
        kubectl(cluster, "apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump_all([*bad.values(), good]))
        wait_for("the valid Workspace Ready", lambda: goal(workspaces(cluster, ns).get("fine", {"metadata": {}})))

        def reported(name: str) -> bool:
            conds = (workspaces(cluster, ns)[name].get("status") or {}).get("conditions") or []
            return any(c["type"] == "WorkspaceSucceeded" and c["status"] == "False" and c["reason"] == reasons[name]
                       for c in conds)

        for name in bad:
            wait_for(f"{name} reported as {reasons[name]}", lambda n=name: reported(n), timeout=20)
            assert nodeclaims_of(cluster, ns, name) == [], name
            assert "workspace.kaito.io/finalizer" not in (workspaces(cluster, ns)[name]["metadata"].get("finalizers") or [])
        kubectl(cluster, "patch", "workspace", "unknown-preset", "-n", ns, "--type=merge",
                "-p", '{"inference":{"preset":{"name":"phi-4-mini-instruct"}}}')
        wait_for("the fixed Workspace Ready", lambda: goal(workspaces(cluster, ns)["unknown-preset"]))
        assert len(nodeclaims_of(cluster, ns, "unknown-preset")) == 1
    finally:
        runner.kill()
