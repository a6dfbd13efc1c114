"""``meta.k8s.io/v1`` Table responses (what ``kubectl get`` prints), with a CRD's printer columns."""

from __future__ import annotations

import datetime
import json
from typing import Any

from workspace_fsm.testing.jsonpath import JSONPathError, compile_path, find
from workspace_fsm.testing.printers import PRINTERS
from workspace_fsm.testing.resources import ResourceInfo

__all__ = ["to_table", "human_duration", "partial_metadata"]

_NAME_DESC = ("Name must be unique within a namespace. Is required when creating resources, although some "
              "resources may allow a client to request the generation of an appropriate name automatically. "
              "Name is primarily intended for creation idempotence and configuration definition. Cannot be "
              "updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names")
_AGE_DESC = ("CreationTimestamp is a timestamp representing the server time when this object was created. It is "
             "not guaranteed to be set in happens-before order across separate operations. Clients may not set "
             "this value. It is represented in RFC3339 form and is in UTC.")
_AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp", "description": _AGE_DESC}


def human_duration(seconds: float) -> str:
    """Kubernetes' short human durations: 45s, 3m12s, 2h5m, 3d4h, 400d, 2y30d."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rest = (s % 3600) // 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def _age(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return "<invalid>"
    return human_duration((datetime.datetime.now(datetime.timezone.utc) - ts).total_seconds())


def _cell(column: dict[str, Any], obj: dict[str, Any], steps: Any) -> Any:
    if steps is None:
        return None
    found = find(obj, steps)
    if not found or found[0] is None:
        return None
    value = found[0]
    kind = column.get("type", "string")
    if kind == "date":
        return _age(value)
    if kind == "integer":
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return None
    if kind == "number":
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if kind == "boolean":
        return value if isinstance(value, bool) else None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def partial_metadata(obj: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata", {})}


def columns_for(info: ResourceInfo, version: str) -> list[dict[str, Any]]:
    cols = info.columns.get(version) if info.custom else None
    return list(cols) if cols else [_AGE_COLUMN]


def to_table(info: ResourceInfo, version: str, objects: list[dict[str, Any]], resource_version: str | None,
             include_object: str = "Metadata", headers: bool = True) -> dict[str, Any]:
    if not info.custom and info.key() in PRINTERS:
        return _builtin_table(PRINTERS[info.key()], objects, resource_version, include_object, headers)
    cols = columns_for(info, version)
    compiled = []
    for c in cols:
        try:
            compiled.append(compile_path(str(c.get("jsonPath", ""))))
        except JSONPathError:
            compiled.append(None)
    defs = [{"name": "Name", "type": "string", "format": "name", "description": _NAME_DESC, "priority": 0}]
    for c in cols:
        defs.append({"name": c.get("name", ""), "type": c.get("type", "string"), "format": c.get("format", ""),
                     "description": c.get("description")
                     or f"Custom resource definition column (in JSONPath format): {c.get('jsonPath', '')}",
                     "priority": int(c.get("priority", 0))})
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": [obj.get("metadata", {}).get("name", "")]
                               + [_cell(c, obj, s) for c, s in zip(cols, compiled)]}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = partial_metadata(obj)
        rows.append(row)
    table: dict[str, Any] = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {}}
    if resource_version:
        table["metadata"]["resourceVersion"] = resource_version
    table["columnDefinitions"] = defs if headers else None
    table["rows"] = rows
    return table


def _row_object(obj: dict[str, Any], include_object: str) -> dict[str, Any] | None:
    if include_object == "Object":
        return obj
    if include_object != "None":
        return partial_metadata(obj)
    return None


def _builtin_table(columns: list[Any], objects: list[dict[str, Any]], resource_version: str | None,
                   include_object: str, headers: bool) -> dict[str, Any]:
    defs = [{"name": name, "type": kind, "format": "name" if name == "Name" and priority == 0 else "",
             "description": desc, "priority": priority} for name, kind, desc, priority, _ in columns]
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": [cell(obj) for *_, cell in columns]}
        ref = _row_object(obj, include_object)
        if ref is not None:
            row["object"] = ref
        rows.append(row)
    table: dict[str, Any] = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {}}
    if resource_version:
        table["metadata"]["resourceVersion"] = resource_version
    table["columnDefinitions"] = defs if headers else None
    table["rows"] = rows
    return table
