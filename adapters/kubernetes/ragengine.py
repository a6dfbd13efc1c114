"""KAITO's RAGEngine over the generic Kubernetes adapter: how its snapshot is read from the caches and how
its NodeClaim actions become requests (its Deployment and Service are the engine's generic Create/Patch)."""

from __future__ import annotations

from typing import Any

import attrs

from workspace_fsm.engine import actions as E
from workspace_fsm.kaito import actions as A
from workspace_fsm.kaito import ragengine as R

from .adapter import to_node, to_nodeclaim, to_workload
from .manifests import DEFAULT_NODE_CLASS
from .generic import ResourceAdapter

__all__ = ["ragengine_adapter"]


def nodeclaim_manifest(rag: Any, a: A.CreateNodeClaim) -> dict[str, Any]:
    """A karpenter.sh/v1 NodeClaim for one GPU node of the RAGEngine, labelled as KAITO labels it."""
    return {
        "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
        "metadata": {"name": a.name, "labels": dict(a.labels),
                     "annotations": {"kaito.sh/ragengine-uid": rag.metadata.uid}},
        "spec": {
            "nodeClassRef": dict(DEFAULT_NODE_CLASS),
            "requirements": [
                {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": [a.instance_type]},
                {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]},
            ],
            "resources": {"requests": {"storage": "200Gi"}},
            "taints": [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}],
        },
    }


def render(a: Any, rag: Any) -> list[Any]:
    if isinstance(a, A.CreateNodeClaim):
        return [E.Create(nodeclaim_manifest(rag, a), owned=False, claim=a.claim)]
    if isinstance(a, A.DeleteNodeClaim):
        return [E.Delete("karpenter.sh/v1", "NodeClaim", a.name, reason=a.reason)]
    raise TypeError(f"no request for {type(a).__name__}")


def snapshot(rag: Any, view: ResourceAdapter) -> R.RAGSnapshot:
    key = rag.key
    claims = []
    for obj in view.owned("NodeClaim", key):
        try:
            claims.append(to_nodeclaim(obj))
        except (KeyError, TypeError, ValueError):
            continue
    claims.sort(key=lambda c: c.name)
    nodes = {}
    for c in claims:
        if c.node_name:
            obj = view.children["Node"].get(c.node_name)
            if obj is not None:
                try:
                    nodes[c.node_name] = to_node(obj)
                except (KeyError, TypeError, ValueError):
                    pass
    name = rag.metadata.name
    dep = next((d for d in view.owned("Deployment", key) if d["metadata"]["name"] == name), None)
    svc = next((s for s in view.owned("Service", key) if s["metadata"]["name"] == name), None)
    workload = None
    if dep is not None:
        workload = to_workload({**dep, "kind": "Deployment"})
        rev = ((dep.get("metadata") or {}).get("annotations") or {}).get(R.ANNOTATION_REVISION, "")
        workload = attrs.evolve(workload, revision=rev)
    service = None
    if svc is not None:
        service = R.Service(name, str((svc.get("spec") or {}).get("type") or "ClusterIP"),
                            deleting=(svc.get("metadata") or {}).get("deletionTimestamp") is not None)
    visible = {"NodeClaim/" + c.name for c in claims}
    if dep is not None:
        visible.add("Deployment/" + name)
    if svc is not None:
        visible.add("Service/" + name)
    absent = frozenset(n for n in R.confirmations(rag) if n not in visible and view.confirmed_absent(n, rag))
    return R.RAGSnapshot(tuple(claims), nodes, workload, service, absent, {})


def ragengine_adapter(api_client: Any, *, namespace: str | None = None, **kw: Any) -> ResourceAdapter:
    return ResourceAdapter(api_client, R.RAGENGINE, namespace=namespace, snapshot=snapshot, render=render, **kw)
