"""The commands as an operator runs them: separate processes, kill -9, SIGTERM, kubectl in between."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "workspace_fsm.cli"]
EXAMPLE = "examples/inference/kaito_workspace_phi_4.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def kubectl(kubeconfig: Path, *args: str) -> str:
    p = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def workspace_state(kubeconfig: Path, name: str) -> str | None:
    out = json.loads(kubectl(kubeconfig, "get", "workspace", name, "-o", "json"))
    return (out.get("status") or {}).get("state")


def healthy(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(autouse=True)
def kubectl_cache_in_tmp(tmp_path, monkeypatch):
    """kubectl keeps a discovery cache per server (~/.kube/cache/discovery/127.0.0.1_PORT): keep it in the
    test's directory so that a run leaves nothing behind."""
    monkeypatch.setenv("KUBECACHEDIR", str(tmp_path / "kube-cache"))


@pytest.fixture
def embedded_cluster(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    proc = subprocess.Popen([*CLI, "cluster", "--kubeconfig-out", str(kubeconfig), "--time-scale", "300"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("the embedded cluster's kubeconfig", kubeconfig.exists, timeout=30)
        yield kubeconfig, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)


def test_runner_killed_with_sigkill_and_restarted_continues(embedded_cluster, kaito_dir):
    kubeconfig, cluster = embedded_cluster
    kubectl(kubeconfig, "apply", "-f", str(kaito_dir / EXAMPLE))
    port = free_port()
    cmd = [*CLI, "run", "--kubeconfig", str(kubeconfig), "--health-port", str(port), "--log-level", "warning"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for("the runner's /readyz", lambda: healthy(port, "/readyz"), timeout=30)
    time.sleep(0.4)  # mid-way: NodeClaim created, not Ready yet
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    second = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("the Workspace Ready", lambda: workspace_state(kubeconfig, "workspace-phi-4") == "Ready", timeout=60)
        claims = kubectl(kubeconfig, "get", "nodeclaims", "-l", "kaito.sh/workspace=workspace-phi-4", "-o", "name")
        assert len(claims.split()) == 1, claims
        assert healthy(port, "/healthz")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0, second.stderr.read()
    cluster.send_signal(signal.SIGTERM)
    assert cluster.wait(20) == 0
    assert "embedded cluster stopped" in cluster.stdout.read()


def test_run_embedded_prints_a_kubeconfig_that_kubectl_can_use(kaito_dir):
    port = free_port()
    proc = subprocess.Popen([*CLI, "run", "--embedded", "--time-scale", "300", "--health-port", str(port),
                             "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"kubeconfig: (\S+)", line)
        assert m, line
        kubeconfig = Path(m.group(1))
        kubectl(kubeconfig, "apply", "-f", str(kaito_dir / EXAMPLE))
        wait_for("the Workspace Ready", lambda: workspace_state(kubeconfig, "workspace-phi-4") == "Ready", timeout=60)
        listing = kubectl(kubeconfig, "get", "workspaces")
        assert "workspace-phi-4" in listing and "Ready" in listing
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0, proc.stderr.read()
    assert not kubeconfig.parent.exists()  # its temporary directory is removed on a clean exit


def test_run_with_a_bad_kubeconfig_says_what_is_wrong(tmp_path):
    bad = tmp_path / "kubeconfig"
    bad.write_text("not: a kubeconfig\n")
    p = subprocess.run([*CLI, "run", "--kubeconfig", str(bad), "--health-port", "0"], capture_output=True, text=True,
                       timeout=30, env={**os.environ})
    assert p.returncode == 2
    assert "cannot load Kubernetes configuration" in p.stderr and "Traceback" not in p.stderr
