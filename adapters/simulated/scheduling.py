"""The scheduler's GPU fit, for both simulated clusters: a pod runs only on a node whose allocatable
``nvidia.com/gpu`` covers what the pod asks for.

The pod's GPU request is read from its spec, as the scheduler reads it: per container the request, or the limit
when no request is given (for extended resources the two must be equal); the pod asks for the sum over its
containers, or the largest init container's if that is more. A pod that asks for no GPU is taken to fit (the
general-purpose nodes it would run on are not simulated). A pod that asks for GPUs fits a node that matches its
``nodeSelector`` and required node affinity (``kubernetes.io/hostname`` is the node's name when the node carries
no such label) and whose allocatable GPUs are enough. Each pod is checked against a node's whole allocatable
count: GPUs held by other pods on the same node are not subtracted (each KAITO workload has nodes of its own).

When a workload's pods do not all fit, they stay Pending with ``PodScheduled=False``, reason ``Unschedulable``,
and the scheduler's message, e.g. ``0/2 nodes are available: 2 Insufficient nvidia.com/gpu.``
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

__all__ = ["GPU_RESOURCE", "HOSTNAME", "Fit", "fit", "node_matches", "pod_gpus", "quantity", "unschedulable_message"]

GPU_RESOURCE = "nvidia.com/gpu"
HOSTNAME = "kubernetes.io/hostname"
UNSCHEDULABLE = "Unschedulable"


def quantity(value: Any) -> int:
    """A whole-number resource quantity ("2", 2); anything unreadable counts as 0."""
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return 0


def _container_gpus(c: Mapping[str, Any]) -> int:
    res = c.get("resources") or {}
    requests, limits = res.get("requests") or {}, res.get("limits") or {}
    value = requests.get(GPU_RESOURCE, limits.get(GPU_RESOURCE))
    return quantity(value) if value is not None else 0


def pod_gpus(pod_spec: Mapping[str, Any]) -> int:
    """The GPUs a pod with this spec asks the scheduler for."""
    main = 0
    for c in pod_spec.get("containers") or ():
        main += _container_gpus(c)
    for c in pod_spec.get("initContainers") or ():
        main = max(main, _container_gpus(c))
    return main


def _expression_matches(expr: Mapping[str, Any], name: str, labels: Mapping[str, str]) -> bool:
    key, op = expr.get("key", ""), expr.get("operator", "In")
    value = labels.get(key, name if key == HOSTNAME else None)
    values = expr.get("values") or ()
    if op == "In":
        return value is not None and value in values
    if op == "NotIn":
        return value is None or value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    return False  # Gt, Lt: not used by any workload this project creates


def node_matches(pod_spec: Mapping[str, Any], name: str, labels: Mapping[str, str]) -> bool:
    """The node satisfies the pod's nodeSelector and required node affinity."""
    for k, v in (pod_spec.get("nodeSelector") or {}).items():
        if labels.get(k, name if k == HOSTNAME else None) != v:
            return False
    required = (((pod_spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms") or ()
    if not terms:
        return True
    return any(all(_expression_matches(e, name, labels) for e in t.get("matchExpressions") or ()) for t in terms)


def hostnames(pod_spec: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The node names the pod's affinity pins it to (``kubernetes.io/hostname In [...]`` in every term), or None:
    lets a cluster look those nodes up instead of scanning every node."""
    required = (((pod_spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    names: list[str] = []
    for t in required.get("nodeSelectorTerms") or ():
        pinned = [e for e in t.get("matchExpressions") or () if e.get("key") == HOSTNAME and e.get("operator") == "In"]
        if not pinned:
            return None
        names.extend(v for v in pinned[0].get("values") or () if v not in names)
    return tuple(names) if names else None


def unschedulable_message(total: int, insufficient: int, mismatched: int) -> str:
    """What the scheduler says of a pod no node can take (its reasons sorted, as it sorts them)."""
    reasons = []
    if insufficient:
        reasons.append(f"{insufficient} Insufficient {GPU_RESOURCE}")
    if mismatched:
        reasons.append(f"{mismatched} node(s) didn't match Pod's node affinity/selector")
    return f"0/{total} nodes are available: {', '.join(reasons)}." if reasons else f"0/{total} nodes are available."


@attrs.frozen
class Fit:
    """Whether a workload's pods fit: ``placed`` of ``replicas`` found a node; ``message`` says why not."""

    replicas: int
    placed: int
    gpus: int  # what each pod asks for
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.placed >= self.replicas


def fit(pod_spec: Mapping[str, Any], replicas: int, candidates: Iterable[tuple[str, Mapping[str, str], int]],
        total_nodes: int, gpus: int | None = None) -> Fit:
    """Place ``replicas`` pods of ``pod_spec``, one per node (KAITO spreads a workload's pods over its nodes),
    on the ``candidates`` (name, labels, allocatable GPUs) that match its affinity. ``total_nodes``: every node
    of the cluster, for the scheduler's "0/N" (nodes not among the candidates did not match). ``gpus``: the pod's
    request when the caller has read it already."""
    if gpus is None:
        gpus = pod_gpus(pod_spec)
    if gpus == 0:
        return Fit(replicas, replicas, 0)
    matching = fitting = 0
    for name, labels, allocatable in candidates:
        if not node_matches(pod_spec, name, labels):
            continue
        matching += 1
        if allocatable >= gpus:
            fitting += 1
    placed = min(replicas, fitting)
    if placed >= replicas:
        return Fit(replicas, placed, gpus)
    total = max(total_nodes, matching)
    return Fit(replicas, placed, gpus, unschedulable_message(total, matching - fitting, total - matching))


def pending_pod(workload: Mapping[str, Any], index: int, pod_spec: Mapping[str, Any], message: str,
                since: str) -> dict[str, Any]:
    """A Pending pod of ``workload`` that the scheduler could not place (owned by the workload)."""
    meta = workload.get("metadata") or {}
    labels = dict((((workload.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {})
    name = f"{meta.get('name', 'pod')}-{index}"
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": meta.get("namespace", "default"), "labels": labels,
                     "ownerReferences": [{"apiVersion": workload.get("apiVersion", "apps/v1"),
                                          "kind": workload.get("kind", "Deployment"), "name": meta.get("name", ""),
                                          "uid": meta.get("uid", ""), "controller": True,
                                          "blockOwnerDeletion": True}]},
        "spec": dict(pod_spec),
        "status": {"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": UNSCHEDULABLE, "message": message,
            "lastProbeTime": None, "lastTransitionTime": since}]},
    }
