"""The test API server through the real ``kubectl`` (v1.32): apply, get (tables, -o yaml, -w),
patch, delete, with KAITO's CRD and example Workspace."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client


KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed on this machine")

G, V, NS, WS = "kaito.sh", "v1beta1", "default", "workspaces"


@pytest.fixture
def kubectl(kubeconfig: Path, tmp_path: Path):
    def run(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [KUBECTL, "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "kube-cache"), *args]
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc
    return run


@pytest.fixture
def phi4(kaito_dir: Path) -> Path:
    return kaito_dir / "examples" / "inference" / "kaito_workspace_phi_4.yaml"


def test_apply_get_patch_delete_a_kaito_workspace(api_server, api_server_client, kubectl, phi4):
    out = kubectl("apply", "-f", str(phi4))
    assert out.stdout.strip() == "workspace.kaito.sh/workspace-phi-4 created"
    assert kubectl("apply", "-f", str(phi4)).stdout.strip() == "workspace.kaito.sh/workspace-phi-4 unchanged"

    custom = client.CustomObjectsApi(api_server_client)
    custom.patch_namespaced_custom_object_status(G, V, NS, WS, "workspace-phi-4", {"status": {
        "state": "Ready", "targetNodeCount": 1,
        "conditions": [{"type": t, "status": "True", "reason": "ok", "message": "",
                        "lastTransitionTime": "2025-01-01T00:00:00Z"}
                       for t in ("ResourceReady", "InferenceReady", "WorkspaceSucceeded")]}})
    table = kubectl("get", "workspaces").stdout.splitlines()
    assert table[0].split() == ["NAME", "INSTANCE", "RESOURCEREADY", "INFERENCEREADY", "JOBSTARTED",
                                "WORKSPACESUCCEEDED", "TARGETNODECOUNT", "STATE", "AGE"]
    row = table[1].split()
    assert row[:7] == ["workspace-phi-4", "Standard_NC24ads_A100_v4", "True", "True", "True", "1", "Ready"]
    assert row[7].endswith("s")  # Age, e.g. 0s
    assert kubectl("get", "wk").stdout.splitlines()[0].startswith("NAME")  # short name

    out = kubectl("patch", "workspace", "workspace-phi-4", "--type=merge", "-p", '{"resource":{"count":2}}')
    assert out.stdout.strip() == "workspace.kaito.sh/workspace-phi-4 patched"
    failed = kubectl("patch", "workspace", "workspace-phi-4", "-p", '{"resource":{"count":3}}', check=False)
    assert failed.returncode != 0 and "application/strategic-merge-patch+json is not supported" in failed.stderr

    doc = yaml.safe_load(kubectl("get", "workspace", "workspace-phi-4", "-o", "yaml").stdout)
    assert doc["apiVersion"] == "kaito.sh/v1beta1" and doc["kind"] == "Workspace"
    assert doc["resource"]["count"] == 2 and doc["metadata"]["generation"] == 2
    assert doc["status"]["state"] == "Ready"
    assert "kubectl.kubernetes.io/last-applied-configuration" in doc["metadata"]["annotations"]

    out = kubectl("delete", "workspace", "workspace-phi-4")
    assert out.stdout.strip() == 'workspace.kaito.sh "workspace-phi-4" deleted'
    assert "No resources found" in kubectl("get", "workspaces").stderr


def test_kubectl_apply_reconfigures_and_strict_validation(api_server, kubectl, phi4):
    kubectl("apply", "-f", str(phi4))
    doc = yaml.safe_load(phi4.read_text())
    doc["inference"]["config"] = "my-config"
    changed = yaml.safe_dump(doc)
    assert "configured" in kubectl("apply", "-f", "-", stdin=changed).stdout
    got = json.loads(kubectl("get", "workspace", "workspace-phi-4", "-o", "json").stdout)
    assert got["inference"]["config"] == "my-config" and got["metadata"]["generation"] == 2
    # kubectl asks the server for strict field validation: unknown fields are rejected.
    doc["inference"]["bogus"] = True
    failed = kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc), check=False)
    assert failed.returncode != 0 and 'unknown field "inference.bogus"' in failed.stderr
    # Schema violations come back as 422 Invalid listing the field.
    doc["inference"].pop("bogus")
    doc["resource"]["count"] = "many"
    failed = kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc), check=False)
    assert failed.returncode != 0 and "resource.count" in failed.stderr and "is invalid" in failed.stderr


def test_kubectl_get_watch(api_server, api_server_client, kubectl, kubeconfig, tmp_path):
    custom = client.CustomObjectsApi(api_server_client)
    body = {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": "w1"},
            "resource": {"instanceType": "Standard_NC24ads_A100_v4", "labelSelector": {"matchLabels": {"a": "b"}}},
            "inference": {"preset": {"name": "phi-4"}}}
    custom.create_namespaced_custom_object(G, V, NS, WS, body)
    proc = subprocess.Popen([KUBECTL, "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "kube-cache"),
                             "get", "workspaces", "-w"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while api_server.requests[("watch", "workspaces")] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        custom.patch_namespaced_custom_object_status(G, V, NS, WS, "w1", {"status": {"state": "Running"}})
        body["metadata"]["name"] = "w2"
        custom.create_namespaced_custom_object(G, V, NS, WS, body)
        time.sleep(0.5)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    lines = out.splitlines()
    assert lines[0].split()[0] == "NAME" and sum(1 for ln in lines if ln.startswith("NAME")) == 1
    assert any(ln.startswith("w1") and "Running" in ln for ln in lines), out
    assert any(ln.startswith("w2") for ln in lines), out


def test_kubectl_with_builtins(api_server, kubectl):
    manifest = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: main, image: "nginx:1", env: [{name: A, value: "1"}]}
      - {name: side, image: busybox}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-a}
"""
    kubectl("apply", "-f", "-", stdin=manifest)
    kubectl("apply", "-f", "-", stdin=manifest.replace("nginx:1", "nginx:2").replace(
        "      - {name: side, image: busybox}\n", ""))
    dep = json.loads(kubectl("get", "deployment", "web", "-o", "json").stdout)
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"]) for c in containers] == [("main", "nginx:2")]
    assert dep["metadata"]["generation"] == 2
    assert "team-a" in kubectl("get", "namespaces").stdout
    assert "deployments" in kubectl("api-resources").stdout
    kubectl("delete", "deployment", "web")
    assert kubectl("get", "deployments", "-o", "name").stdout.strip() == ""


def test_faults_can_target_one_client_by_user_agent(api_server, api_server_client, kubectl, phi4):
    """Faults meant for the controller (Python client) leave kubectl, the user, alone."""
    rule = api_server.faults.error(500, verbs="writes", times=None, user_agent="OpenAPI-Generator")
    kubectl("apply", "-f", str(phi4))  # kubectl/... is not matched
    custom = client.CustomObjectsApi(api_server_client)
    with pytest.raises(client.exceptions.ApiException) as err:
        custom.patch_namespaced_custom_object(G, V, NS, WS, "workspace-phi-4", {"metadata": {"labels": {"a": "b"}}})
    assert err.value.status == 500 and rule.hits == 1
