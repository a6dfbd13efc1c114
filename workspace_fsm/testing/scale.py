"""The ``/scale`` subresource: ``autoscaling/v1`` ``Scale`` views of Deployments, StatefulSets, ReplicaSets
and custom resources whose CRD declares ``subresources.scale``.

Sources: ``pkg/registry/apps/deployment/storage/storage.go`` (``scaleFromDeployment``: name, namespace, uid,
resourceVersion and creationTimestamp of the object; ``spec.replicas``; ``status.replicas`` and the label
selector as a string), the same for StatefulSets and ReplicaSets, ``pkg/apis/autoscaling/validation``
(``spec.replicas`` must be >= 0, 422 ``Scale.autoscaling``), and
``apiextensions-apiserver/pkg/registry/customresource/etcd.go`` (``scaleFromCustomResource``: the values at
``specReplicasPath``, ``statusReplicasPath`` and ``labelSelectorPath``, 0 when absent).
"""

from __future__ import annotations

import copy
from typing import Any

from workspace_fsm.testing.errors import APIError
from workspace_fsm.testing.meta import cause

__all__ = ["BUILTIN_SCALE", "to_scale", "apply_scale", "selector_string"]

#: (specReplicasPath, statusReplicasPath, labelSelectorPath); a built-in's selector is a LabelSelector object.
BUILTIN_SCALE = {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                 "labelSelectorPath": ".spec.selector"}


def _path(jsonpath: str) -> list[str]:
    return [p for p in jsonpath.lstrip(".").split(".") if p]


def _get(obj: Any, jsonpath: str | None) -> tuple[bool, Any]:
    if not jsonpath:
        return False, None
    cur = obj
    for part in _path(jsonpath):
        if not isinstance(cur, dict) or part not in cur:
            return False, None
        cur = cur[part]
    return True, cur


def _set(obj: dict[str, Any], jsonpath: str, value: Any) -> None:
    parts = _path(jsonpath)
    cur = obj
    for part in parts[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = cur[part] = {}
        cur = nxt
    cur[parts[-1]] = value


def selector_string(selector: Any) -> str:
    """A LabelSelector as ``metav1.LabelSelectorAsSelector(...).String()`` prints it (sorted by key)."""
    if not isinstance(selector, dict):
        return ""
    reqs: list[tuple[str, str]] = []
    for key, value in (selector.get("matchLabels") or {}).items():
        reqs.append((key, f"{key}={value}"))
    for expr in selector.get("matchExpressions") or []:
        if not isinstance(expr, dict):
            continue
        key, op, values = expr.get("key", ""), expr.get("operator"), sorted(expr.get("values") or [])
        if op == "In":
            reqs.append((key, f"{key} in ({','.join(values)})"))
        elif op == "NotIn":
            reqs.append((key, f"{key} notin ({','.join(values)})"))
        elif op == "Exists":
            reqs.append((key, key))
        elif op == "DoesNotExist":
            reqs.append((key, f"!{key}"))
    return ",".join(text for _, text in sorted(reqs, key=lambda r: r[0]))


def _int(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return 0


def to_scale(scale: dict[str, Any], obj: dict[str, Any], custom: bool) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    out_meta = {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in meta}
    found, spec_replicas = _get(obj, scale.get("specReplicasPath"))
    if not found and not custom:
        spec_replicas = 1  # a built-in's replicas defaults to 1
    _, status_replicas = _get(obj, scale.get("statusReplicasPath"))
    status: dict[str, Any] = {"replicas": _int(status_replicas)}
    found, selector = _get(obj, scale.get("labelSelectorPath"))
    if found:
        text = selector_string(selector) if not custom else (selector if isinstance(selector, str) else "")
        if text:
            status["selector"] = text
    return {"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": out_meta,
            "spec": {"replicas": _int(spec_replicas)}, "status": status}


def apply_scale(scale: dict[str, Any], obj: dict[str, Any], body: Any, name: str) -> dict[str, Any]:
    """The object with the replicas of a Scale written to it (422/400 as the real server refuses a Scale)."""
    if not isinstance(body, dict):
        raise APIError.bad_request("the body of the request must be a Scale object")
    kind, api_version = body.get("kind"), body.get("apiVersion")
    if kind not in (None, "Scale") or api_version not in (None, "autoscaling/v1"):
        raise APIError.bad_request(f"the kind in the data ({kind}) does not match the expected kind (Scale)")
    meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    if meta.get("name") and meta["name"] != name:
        raise APIError.bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL "
                                   f"({name})")
    replicas = (body.get("spec") or {}).get("replicas", 0) if isinstance(body.get("spec"), dict) else 0
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise APIError.bad_request(f"Scale in version \"v1\" cannot be handled as a Scale: json: cannot unmarshal "
                                   f"{type(replicas).__name__} into Go struct field ScaleSpec.spec.replicas "
                                   f"of type int32")
    if replicas < 0:
        details = {"name": name, "group": "autoscaling", "kind": "Scale", "causes": [
            cause("spec.replicas", "FieldValueInvalid",
                  f"Invalid value: {replicas}: must be greater than or equal to 0")]}
        raise APIError(422, "Invalid", f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: '
                                       f"{replicas}: must be greater than or equal to 0", details)
    new = copy.deepcopy(obj)
    _set(new, scale["specReplicasPath"], replicas)
    rv = meta.get("resourceVersion")
    if rv:
        new["metadata"]["resourceVersion"] = rv  # a precondition, checked by the update
    else:
        new["metadata"].pop("resourceVersion", None)
    return new
