"""The three patch formats a Kubernetes API server takes.

- :func:`merge_patch`: JSON merge patch (RFC 7386, ``application/merge-patch+json``);
- :func:`json_patch`: JSON patch (RFC 6902, ``application/json-patch+json``);
- :func:`strategic_merge_patch`: strategic merge patch (``application/strategic-merge-patch+json``)
  for built-in kinds. Without the Go types' struct tags, list fields merge by the well-known keys
  of the core and apps kinds (``containers``/``volumes``/``env`` by ``name``, ``ports`` by
  ``containerPort`` or ``port``, ``conditions`` by ``type``, ``ownerReferences`` by ``uid``...),
  ``finalizers`` merges as a set, any other list is replaced. The ``$patch`` (``replace``/
  ``delete``), ``$retainKeys``, ``$deleteFromPrimitiveList/<field>`` and ``$setElementOrder/<field>``
  directives are understood.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["PatchError", "merge_patch", "json_patch", "strategic_merge_patch"]


class PatchError(ValueError):
    """A patch that cannot be applied to the object (the server answers 422)."""


class PatchFormatError(ValueError):
    """A patch that is not well formed (the server answers 400)."""


# --------------------------------------------------------------------------------------------
# JSON merge patch
# --------------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --------------------------------------------------------------------------------------------
# JSON patch
# --------------------------------------------------------------------------------------------


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str):
        raise PatchFormatError(f"path must be a string, not {path!r}")
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}: it must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list[Any], token: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (token.startswith("0") and token != "0"):
        raise PatchError(f"invalid array index {token!r}")
    idx = int(token)
    limit = len(container) if allow_end else len(container) - 1
    if idx > limit:
        raise PatchError(f"array index {idx} out of bounds (length {len(container)})")
    return idx


def _parent(doc: Any, parts: list[str], path: str) -> tuple[Any, str]:
    cur = doc
    for token in parts[:-1]:
        if isinstance(cur, dict):
            if token not in cur:
                raise PatchError(f"doc is missing path: {path!r}")
            cur = cur[token]
        elif isinstance(cur, list):
            cur = cur[_index(cur, token, allow_end=False)]
        else:
            raise PatchError(f"doc is missing path: {path!r}")
    return cur, parts[-1]


def _get(doc: Any, parts: list[str], path: str) -> Any:
    cur = doc
    for token in parts:
        if isinstance(cur, dict):
            if token not in cur:
                raise PatchError(f"doc is missing path: {path!r}")
            cur = cur[token]
        elif isinstance(cur, list):
            cur = cur[_index(cur, token, allow_end=False)]
        else:
            raise PatchError(f"doc is missing path: {path!r}")
    return cur


def _add(doc: Any, parts: list[str], value: Any, path: str) -> Any:
    if not parts:
        return value
    parent, last = _parent(doc, parts, path)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, allow_end=True), value)
    else:
        raise PatchError(f"doc is missing path: {path!r}")
    return doc


def _remove(doc: Any, parts: list[str], path: str) -> tuple[Any, Any]:
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent, last = _parent(doc, parts, path)
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"unable to remove nonexistent key: {last}: missing value")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, last, allow_end=False))
    raise PatchError(f"doc is missing path: {path!r}")


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 on a copy of ``doc``. Raises :class:`PatchFormatError` for a malformed patch and
    :class:`PatchError` for one that does not apply."""
    if not isinstance(operations, list):
        raise PatchFormatError("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(doc)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op:
            raise PatchFormatError(f"invalid JSON patch operation {op!r}")
        kind = op["op"]
        path = op.get("path")
        parts = _pointer(path)
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchFormatError(f"missing value for {kind} operation on {path!r}")
        if kind == "add":
            doc = _add(doc, parts, copy.deepcopy(op["value"]), path)
        elif kind == "remove":
            doc, _ = _remove(doc, parts, path)
        elif kind == "replace":
            _get(doc, parts, path)  # must exist
            if not parts:
                doc = copy.deepcopy(op["value"])
            else:
                parent, last = _parent(doc, parts, path)
                if isinstance(parent, list):
                    parent[_index(parent, last, allow_end=False)] = copy.deepcopy(op["value"])
                else:
                    parent[last] = copy.deepcopy(op["value"])
        elif kind in ("move", "copy"):
            src = _pointer(op.get("from"))
            value = copy.deepcopy(_get(doc, src, op.get("from")))
            if kind == "move":
                doc, value = _remove(doc, src, op.get("from"))
            doc = _add(doc, parts, value, path)
        elif kind == "test":
            if _get(doc, parts, path) != op["value"]:
                raise PatchError(f"testing value {path} failed: test failed")
        else:
            raise PatchFormatError(f"unexpected kind of JSON patch operation: {kind!r}")
    return doc


# --------------------------------------------------------------------------------------------
# Strategic merge patch
# --------------------------------------------------------------------------------------------

#: List fields that merge by a key, by field name (the patchMergeKey tags of the built-in types).
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "imagePullSecrets": "name",
    "resourceClaims": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "conditions": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "podIPs": "ip",
    "hostIPs": "ip",
    "taints": "key",
    "addresses": "type",
    "topologySpreadConstraints": "topologyKey",
}

#: Lists of scalars that merge as sets.
PRIMITIVE_MERGE = frozenset({"finalizers"})


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        for item in items:
            if isinstance(item, dict) and "containerPort" in item:
                return "containerPort"
        return "port"
    return MERGE_KEYS.get(field)


def strategic_merge_patch(original: Any, patch: Any) -> Any:
    """Apply a strategic merge patch to a copy of ``original``."""
    return _smp(copy.deepcopy(original), patch)


def _smp(orig: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = dict(orig) if isinstance(orig, dict) else {}
    # Deletions from primitive lists go first.
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list) and isinstance(value, list):
                result[field] = [x for x in result[field] if x not in value]
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
            continue
        cur = result.get(key)
        if isinstance(value, dict):
            if value.get("$patch") == "delete":
                result.pop(key, None)
                continue
            result[key] = _smp(cur if isinstance(cur, dict) else {}, value)
        elif isinstance(value, list):
            result[key] = _merge_list(key, cur, value)
        else:
            result[key] = copy.deepcopy(value)
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        keep = set(retain)
        result = {k: v for k, v in result.items() if k in keep}
    return result


def _merge_list(field: str, cur: Any, patch: list[Any]) -> list[Any]:
    current = list(cur) if isinstance(cur, list) else []
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [copy.deepcopy(p) for p in patch if not (isinstance(p, dict) and "$patch" in p)]
    if field in PRIMITIVE_MERGE:
        out = list(current)
        for item in patch:
            if item not in out:
                out.append(copy.deepcopy(item))
        return out
    key = _merge_key(field, patch + current)
    if key is None or not all(isinstance(p, dict) for p in patch):
        return [copy.deepcopy(p) for p in patch]
    out = list(current)
    for item in patch:
        if key not in item:
            out.append(copy.deepcopy({k: v for k, v in item.items() if k != "$patch"}))
            continue
        idx = next((i for i, c in enumerate(out) if isinstance(c, dict) and c.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        if idx is None:
            out.append(_smp({}, item))
        else:
            out[idx] = _smp(out[idx], item)
    return out
