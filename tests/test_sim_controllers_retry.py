"""The simulated controllers behind the test API server retry a step the server refused, as a real controller's
work queue does: a NodeClaim whose first writes are answered 500 still launches, registers and becomes Ready with
its Node's GPUs, in order. (Before, a failed step was dropped: under a loaded test run a NodeClaim could stay
without conditions for ever, and the lifecycle waiting on it with it.)"""

from __future__ import annotations

import time

from kubernetes import client as k8s

from workspace_fsm.cli.embedded import EmbeddedCluster

AGENT = "simulated-cluster-controllers"


def nodeclaim(name: str) -> dict:
    return {"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
            "metadata": {"name": name, "labels": {"kaito.sh/workspace": "w", "kaito.sh/workspacenamespace": "d"}},
            "spec": {"nodeClassRef": {"group": "kaito.sh", "kind": "KaitoNodeClass", "name": "default"},
                     "requirements": [{"key": "node.kubernetes.io/instance-type", "operator": "In",
                                       "values": ["Standard_NC24ads_A100_v4"]}]}}


def test_a_refused_step_is_retried_and_the_steps_keep_their_order(tmp_path):
    c = EmbeddedCluster(time_scale=600.0)
    try:
        c.start(tmp_path / "kubeconfig")
        # The controllers' first three writes to NodeClaims fail: the finalizer patch, then the first status writes.
        fault = c.server.faults.error(500, verbs=["patch"], resources=["nodeclaims", "nodeclaims/status"], times=3,
                                      user_agent=AGENT)
        custom, core = k8s.CustomObjectsApi(c.api), k8s.CoreV1Api(c.api)
        custom.create_cluster_custom_object("karpenter.sh", "v1", "nodeclaims", nodeclaim("nc-1"))
        deadline = time.monotonic() + 30
        conds: dict = {}
        while time.monotonic() < deadline:
            obj = custom.get_cluster_custom_object("karpenter.sh", "v1", "nodeclaims", "nc-1")
            conds = {x["type"]: x["status"] for x in (obj.get("status") or {}).get("conditions") or []}
            node = (obj.get("status") or {}).get("nodeName")
            if conds.get("Ready") == "True" and node:
                gpus = (core.read_node(node).status.capacity or {}).get("nvidia.com/gpu")
                if gpus:
                    break
            time.sleep(0.1)
        assert fault.hits == 3, fault
        assert conds == {"Launched": "True", "Registered": "True", "Initialized": "True", "Ready": "True"}, conds
        assert "karpenter.sh/termination" in obj["metadata"].get("finalizers", []), obj["metadata"]
        assert gpus == "1", gpus
    finally:
        c.stop()
