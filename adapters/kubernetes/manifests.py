"""Kubernetes objects built from the machine's actions.

Everything the machine creates carries the Workspace's labels (so label-selected watches see it and map
it back to its Workspace) and, when namespaced, an ownerReference to the Workspace (so the garbage
collector removes it with the Workspace). NodeClaims are cluster-scoped and cannot be owned by a
namespaced Workspace: the machine deletes them itself before it removes its finalizer.
"""

from __future__ import annotations

from typing import Any

from workspace_fsm.kaito import actions as A
from workspace_fsm.kaito.model import (ANNOTATION_REVISION, LABEL_WORKSPACE, LABEL_WORKSPACE_NAMESPACE, Workspace,
                                 format_time)

KARPENTER_GROUP, KARPENTER_VERSION = "karpenter.sh", "v1"
#: The node class KAITO's NodeClaims refer to on AKS (configurable with the runner's options).
DEFAULT_NODE_CLASS = {"group": "karpenter.azure.com", "kind": "AKSNodeClass", "name": "image-family-ubuntu"}
PRESET_IMAGE = "mcr.microsoft.com/aks/kaito/kaito-{preset}:latest"


def workspace_labels(ws: Workspace) -> dict[str, str]:
    return {LABEL_WORKSPACE: ws.metadata.name, LABEL_WORKSPACE_NAMESPACE: ws.metadata.namespace}


def owner_reference(ws: Workspace) -> dict[str, Any]:
    return {"apiVersion": ws.api_version, "kind": ws.kind, "name": ws.metadata.name, "uid": ws.metadata.uid,
            "controller": True, "blockOwnerDeletion": True}


def nodeclaim(ws: Workspace, a: A.CreateNodeClaim, node_class: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": f"{KARPENTER_GROUP}/{KARPENTER_VERSION}", "kind": "NodeClaim",
        "metadata": {"name": a.name, "labels": {**dict(a.labels), **_selector_labels(ws)},
                     "annotations": {"kaito.sh/workspace-uid": ws.metadata.uid}},
        "spec": {
            "nodeClassRef": dict(node_class or DEFAULT_NODE_CLASS),
            "requirements": [
                {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": [a.instance_type]},
                {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]},
            ],
            "resources": {"requests": {"storage": "120Gi"}},
            "taints": [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}],
        },
    }


def _selector_labels(ws: Workspace) -> dict[str, str]:
    """The Workspace's labelSelector.matchLabels go on its nodes, as KAITO does."""
    if ws.resource is None or not ws.resource.label_selector.match_labels:
        return {}
    return dict(ws.resource.label_selector.match_labels)


def _pod_template(ws: Workspace, preset: str, node_names: tuple[str, ...], revision: str) -> dict[str, Any]:
    labels = {**workspace_labels(ws)}
    return {
        "metadata": {"labels": labels, "annotations": {ANNOTATION_REVISION: revision}},
        "spec": {
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": list(node_names)}]}
            ]}}} if node_names else {},
            "tolerations": [{"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
            "containers": [{
                "name": ws.metadata.name,
                "image": PRESET_IMAGE.format(preset=preset or "base"),
                "resources": {"limits": {"nvidia.com/gpu": "1"}},
            }],
        },
    }


def workload(ws: Workspace, a: A.CreateWorkload | A.UpdateWorkload) -> dict[str, Any]:
    meta = {"name": a.name, "namespace": ws.metadata.namespace, "labels": workspace_labels(ws),
            "annotations": {ANNOTATION_REVISION: a.revision}, "ownerReferences": [owner_reference(ws)]}
    spec: dict[str, Any] = {
        "replicas": a.replicas,
        "selector": {"matchLabels": workspace_labels(ws)},
        "template": _pod_template(ws, a.preset, a.node_names, a.revision),
    }
    if a.kind == "StatefulSet":
        spec["serviceName"] = f"{a.name}-headless"
        spec["podManagementPolicy"] = "Parallel"
    return {"apiVersion": "apps/v1", "kind": a.kind, "metadata": meta, "spec": spec}


def job(ws: Workspace, a: A.CreateJob) -> dict[str, Any]:
    template = _pod_template(ws, a.preset, a.node_names, a.revision)
    template["spec"]["restartPolicy"] = "Never"
    template["spec"]["containers"][0]["args"] = ["--method", a.method]
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": a.name, "namespace": ws.metadata.namespace, "labels": workspace_labels(ws),
                     "annotations": {ANNOTATION_REVISION: a.revision}, "ownerReferences": [owner_reference(ws)]},
        "spec": {"backoffLimit": 3, "template": template},
    }


def event(ws: Workspace, a: A.RecordEvent, now_iso: str, seq: int, component: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{ws.metadata.name}.{seq:x}", "namespace": ws.metadata.namespace},
        "involvedObject": {"apiVersion": ws.api_version, "kind": ws.kind, "name": ws.metadata.name,
                           "namespace": ws.metadata.namespace, "uid": ws.metadata.uid,
                           "resourceVersion": ws.metadata.resource_version},
        "reason": a.reason, "message": a.message[:1024], "type": a.type,
        "firstTimestamp": now_iso, "lastTimestamp": now_iso, "count": 1,
        "source": {"component": component}, "reportingComponent": component,
    }


__all__ = ["nodeclaim", "workload", "job", "event", "workspace_labels", "owner_reference", "format_time"]
