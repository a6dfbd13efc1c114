"""Kubernetes objects built from the machine's actions.

The builders themselves are pure and live in :mod:`workspace_fsm.kaito.manifests` (what a Workspace deploys, as
KAITO builds it); this module keeps the adapter's names for them. Everything the machine creates carries the
Workspace's labels (so label-selected watches see it and map it back to its Workspace) and, when namespaced, an
ownerReference to the Workspace (so the garbage collector removes it with the Workspace). NodeClaims are
cluster-scoped and cannot be owned by a namespaced Workspace: the machine deletes them itself before it removes
its finalizer.
"""

from __future__ import annotations

from typing import Any

from workspace_fsm.kaito import actions as A
from workspace_fsm.kaito import manifests as K
from workspace_fsm.engine.objects import format_time
from workspace_fsm.kaito.model import Workspace

#: The node class KAITO's NodeClaims refer to on Azure (configurable with the runner's options).
DEFAULT_NODE_CLASS = K.DEFAULT_NODE_CLASS
workspace_labels = K.workspace_labels
owner_reference = K.owner_reference


def nodeclaim(ws: Workspace, a: A.CreateNodeClaim, node_class: dict[str, str] | None = None) -> dict[str, Any]:
    return K.nodeclaim(ws, a, node_class)


def workload(ws: Workspace, a: A.CreateWorkload | A.UpdateWorkload) -> dict[str, Any]:
    return K.workload(ws, a)


def job(ws: Workspace, a: A.CreateJob) -> dict[str, Any]:
    return K.tuning_job(ws, a)


def service(ws: Workspace, a: A.CreateService) -> dict[str, Any]:
    return K.headless_service(ws) if a.headless else K.service(ws, a.stateful)


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


__all__ = ["DEFAULT_NODE_CLASS", "nodeclaim", "workload", "job", "service", "event", "workspace_labels",
           "owner_reference", "format_time"]
