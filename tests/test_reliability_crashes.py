"""Crash-restart, seeded and small enough for every CI run: the runner is a separate process, killed with
SIGKILL at random moments and started again, while Workspaces are created, changed and deleted. The
invariants are checked continuously from the API server's side, not from the runner's."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time

from kubernetes import client as k8s

from workspace_fsm.embedded import EmbeddedCluster
from workspace_fsm.model import LABEL_WORKSPACE, LABEL_WORKSPACE_NAMESPACE

SEED = 20261124
NS = "default"


def inference(name: str, count: int) -> dict:
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name},
            "resource": {"count": count, "instanceType": "Standard_NC24ads_A100_v4",
                         "labelSelector": {"matchLabels": {"apps": name}}},
            "inference": {"preset": {"name": "phi-4-mini-instruct"}}}


def tuning(name: str) -> dict:
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name},
            "resource": {"instanceType": "Standard_NC24ads_A100_v4", "labelSelector": {"matchLabels": {"apps": name}}},
            "tuning": {"preset": {"name": "phi-3-mini-128k-instruct"}, "method": "qlora",
                       "input": {"urls": ["https://example.com/data.parquet"]},
                       "output": {"image": "registry.example.com/out:1", "imagePushSecret": "push"}}}


class Monitor(threading.Thread):
    """Polls the API server and records every invariant violation it sees."""

    def __init__(self, api, targets: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.custom = k8s.CustomObjectsApi(api)
        self.targets = targets
        self.violations: list[str] = []
        self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            claims = self.custom.list_cluster_custom_object("karpenter.sh", "v1", "nodeclaims")["items"]
            per: dict[str, int] = {}
            for c in claims:
                labels = c["metadata"].get("labels") or {}
                if labels.get(LABEL_WORKSPACE_NAMESPACE) == NS:
                    per[labels.get(LABEL_WORKSPACE, "")] = per.get(labels.get(LABEL_WORKSPACE, ""), 0) + 1
            for name, n in per.items():
                if n > self.targets.get(name, 0):
                    self.violations.append(f"{name}: {n} NodeClaims exist, target {self.targets.get(name)}")
            self.samples += 1


def test_sigkill_at_random_moments_loses_nothing_and_duplicates_nothing(tmp_path):
    rng = random.Random(SEED)
    cluster = EmbeddedCluster(time_scale=300.0)
    kubeconfig = cluster.start(tmp_path / "kubeconfig")
    custom = k8s.CustomObjectsApi(cluster.api)
    targets: dict[str, int] = {}
    docs = []
    for i in range(14):
        targets[f"inf-{i}"] = 1 + i % 3
        docs.append(inference(f"inf-{i}", targets[f"inf-{i}"]))
    for i in range(6):
        targets[f"tune-{i}"] = 1
        docs.append(tuning(f"tune-{i}"))
    for d in docs:
        custom.create_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces", d)
    monitor = Monitor(cluster.api, targets)
    monitor.start()
    cmd = [sys.executable, "-m", "workspace_fsm.cli", "run", "--kubeconfig", str(kubeconfig), "--health-port", "0",
           "--log-level", "error"]
    kills = 0
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for round_ in range(8):
            time.sleep(rng.uniform(0.5, 1.5))  # the runner starts in about 0.4 s: it gets to act, then dies
            if round_ == 3:  # users act while runners come and go
                for i in range(3):
                    custom.patch_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces", f"tune-{i}",
                                                          {"tuning": {"config": f"v{round_}"}})
                for i in range(3):
                    custom.delete_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces", f"inf-{i}")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

        def settled() -> bool:
            items = {w["metadata"]["name"]: w for w in custom.list_namespaced_custom_object(
                "kaito.sh", "v1beta1", NS, "workspaces")["items"]}
            if any(f"inf-{i}" in items for i in range(3)):
                return False
            for name, w in items.items():
                status = w.get("status") or {}
                want = "Succeeded" if name.startswith("tune") else "Ready"
                fresh = all(c.get("observedGeneration") == w["metadata"]["generation"]
                            for c in status.get("conditions") or [] if c["type"] == "WorkspaceSucceeded")
                if status.get("state") != want or not fresh:
                    return False
            return True

        deadline = time.monotonic() + 90
        while not settled():
            assert time.monotonic() < deadline, "not every Workspace reached its goal within 90 s of the last restart"
            assert proc.poll() is None, f"the runner exited: {proc.stderr.read()}"
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        monitor.stop.set()
        monitor.join(5)
    try:
        assert kills == 8 and monitor.samples > 50
        assert monitor.violations == []
        claims = custom.list_cluster_custom_object("karpenter.sh", "v1", "nodeclaims")["items"]
        by_ws: dict[str, list[str]] = {}
        for c in claims:
            by_ws.setdefault(c["metadata"]["labels"][LABEL_WORKSPACE], []).append(c["metadata"]["name"])
        for i in range(3):
            assert f"inf-{i}" not in by_ws, f"deleted inf-{i} left NodeClaims {by_ws.get(f'inf-{i}')}"
        for name, target in targets.items():
            if name in {f"inf-{i}" for i in range(3)}:
                continue
            assert len(by_ws.get(name, [])) == target, (name, by_ws.get(name))
        # Nothing the machine wrote was lost: every Workspace carries its lifecycle record and KAITO's conditions.
        for w in custom.list_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces")["items"]:
            types = {c["type"] for c in w["status"]["conditions"]}
            assert {"workspace-fsm/Lifecycle", "WorkspaceSucceeded", "ResourceReady"} <= types, w["metadata"]["name"]
            assert w["status"]["targetNodeCount"] == targets[w["metadata"]["name"]]
        jobs = custom.list_namespaced_custom_object("batch", "v1", NS, "jobs")["items"]
        for i in range(3):
            job = next(j for j in jobs if j["metadata"]["name"] == f"tune-{i}")
            ws = custom.get_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces", f"tune-{i}")
            assert ws["metadata"]["generation"] == 2
            # the Job left is the one of the current spec (the record's revision equals the Job's)

            rec = next(c for c in ws["status"]["conditions"] if c["type"] == "workspace-fsm/Lifecycle")
            assert json.loads(rec["message"])["rev"] == job["metadata"]["annotations"]["workspace.kaito.io/revision"]
    finally:
        cluster.stop()
