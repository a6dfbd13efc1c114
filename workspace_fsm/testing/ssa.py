"""Server-side apply and ``metadata.managedFields`` (``FieldsV1``), after the rules of
``sigs.k8s.io/structured-merge-diff`` as the API server uses it (``k8s.io/apiserver/pkg/endpoints/handlers/
fieldmanager``); see https://kubernetes.io/docs/reference/using-api/server-side-apply/.

- Every write records which manager owns which fields. Create, update and non-apply patches are ``Update``
  operations: the manager (``fieldManager``, else the User-Agent up to its first ``/``) takes the fields it
  set or changed, which other managers lose. Writes to ``/status`` are recorded with ``subresource: status``.
- An apply (``application/apply-patch+yaml``) is an ``Apply`` operation: the applied configuration is merged
  into the live object (maps by key, associative lists by their keys, sets as sets, other lists replaced).
  A field that the apply would change and that another manager owns is a conflict: 409 with the real
  message ("Apply failed with 1 conflict: conflict with \\"mgr\\" ...") and one ``FieldManagerConflict``
  cause per field; ``force=true`` takes those fields over. Fields the manager applied before and no longer
  applies, and that no other manager owns, are removed.
- Field paths as ``FieldsV1``: ``f:<field>``, ``k:{"name":"c"}`` for an item of an associative list,
  ``v:<json>`` for an item of a set, ``.`` for an item that is owned itself.

What these rules see of a list comes from a CRD's schema (``x-kubernetes-list-type``/``-map-keys``) or, for
built-ins and metadata, from the well-known merge keys (containers by name, ports by containerPort/protocol,
conditions by type, finalizers as a set, ...).
"""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Iterable
from typing import Any

from workspace_fsm.testing.errors import APIError
from workspace_fsm.testing.patch import MERGE_KEYS, PRIMITIVE_MERGE

__all__ = ["FieldOwner", "record_update", "apply", "fields_v1", "parse_fields_v1", "manager_from_user_agent"]

Path = tuple[tuple[str, str], ...]  # (("f","spec"), ("k",'{"name":"c"}'), ("f","image"))
_IGNORED_TOP = ("apiVersion", "kind")
_IGNORED_META = ("name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                 "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink", "generateName")


def manager_from_user_agent(user_agent: str) -> str:
    """The manager of a write without ``fieldManager``: the User-Agent up to its first '/'."""
    return (user_agent.split("/", 1)[0] or "unknown")[:128]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Schema:
    """List types along paths: from a CRD's structural schema, else the built-in merge keys."""

    def __init__(self, openapi: dict[str, Any] | None) -> None:
        self.openapi = openapi

    def list_type(self, names: list[str], items: list[Any]) -> tuple[str, list[str]]:
        field = names[-1] if names else ""
        in_meta = bool(names) and names[0] == "metadata"
        if self.openapi is not None and not in_meta:
            node: Any = self.openapi
            for n in names:
                if not isinstance(node, dict):
                    node = None
                    break
                if n == "[]":
                    node = node.get("items")
                else:
                    props = node.get("properties") or {}
                    node = props.get(n) if n in props else node.get("additionalProperties")
            if isinstance(node, dict):
                kind = node.get("x-kubernetes-list-type")
                if kind == "map":
                    return "map", list(node.get("x-kubernetes-list-map-keys") or [])
                if kind == "set":
                    return "set", []
            return "atomic", []
        if field in PRIMITIVE_MERGE:
            return "set", []
        if field == "ports":
            if any(isinstance(i, dict) and "containerPort" in i for i in items):
                return "map", ["containerPort", "protocol"]
            return "map", ["port", "protocol"]
        if field in MERGE_KEYS:
            return "map", [MERGE_KEYS[field]]
        return "atomic", []


def _item_key(item: Any, keys: list[str]) -> str | None:
    if not isinstance(item, dict):
        return None
    found = {k: item[k] for k in keys if k in item}
    if not found:
        return None
    return json.dumps(found, sort_keys=True, separators=(",", ":"))


def _fieldset(value: Any, schema: Schema, names: list[str], prefix: Path, out: set[Path]) -> None:
    """The leaf paths (and owned list items) of a value."""
    if isinstance(value, dict):
        if not value:
            if prefix:
                out.add(prefix)
            return
        for k, v in value.items():
            _fieldset(v, schema, names + [k], prefix + (("f", k),), out)
        return
    if isinstance(value, list):
        kind, keys = schema.list_type(names, value)
        if kind == "map":
            for item in value:
                key = _item_key(item, keys)
                if key is None:
                    out.add(prefix)  # an item without its keys: treated as atomic
                    continue
                path = prefix + (("k", key),)
                out.add(path)
                if isinstance(item, dict):
                    for k, v in item.items():
                        _fieldset(v, schema, names + ["[]", k], path + (("f", k),), out)
            if not value:
                out.add(prefix)
            return
        if kind == "set":
            for item in value:
                out.add(prefix + (("v", json.dumps(item, separators=(",", ":"))),))
            if not value:
                out.add(prefix)
            return
    if prefix:
        out.add(prefix)


def _strip(obj: dict[str, Any], *, status: str) -> dict[str, Any]:
    """The part of an object fields are tracked in. ``status``: "drop" (main resource with a status
    subresource), "only" (the status subresource) or "keep"."""
    out = {k: v for k, v in obj.items() if k not in _IGNORED_TOP}
    meta = out.get("metadata")
    if isinstance(meta, dict):
        meta = {k: v for k, v in meta.items() if k not in _IGNORED_META}
        if meta:
            out["metadata"] = meta
        else:
            out.pop("metadata")
    if status == "drop":
        out.pop("status", None)
    elif status == "only":
        out = {"status": obj["status"]} if "status" in obj else {}
    return out


def fieldset(obj: dict[str, Any], schema: Schema, status: str = "keep") -> set[Path]:
    out: set[Path] = set()
    _fieldset(_strip(obj, status=status), schema, [], (), out)
    return out


# ------------------------------------------------------------------------------ FieldsV1


def _enc(el: tuple[str, str]) -> str:
    return f"{el[0]}:{el[1]}"


def fields_v1(paths: Iterable[Path]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    paths = set(paths)
    for p in sorted(paths):
        node = root
        for el in p:
            node = node.setdefault(_enc(el), {})
    for p in paths:  # an owned path with children carries ".": {}
        node = root
        for el in p:
            node = node[_enc(el)]
        if node and "." not in node:
            node["."] = {}
    return root


def parse_fields_v1(doc: Any, prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    if not isinstance(doc, dict):
        return out
    if not doc and prefix:
        out.add(prefix)
    for key, child in doc.items():
        if key == ".":
            out.add(prefix)
            continue
        kind, _, rest = key.partition(":")
        out |= parse_fields_v1(child, prefix + ((kind, rest),))
    return out


def path_string(path: Path) -> str:
    """A path as structured-merge-diff prints it: ``.spec.containers[name="c"].image``."""
    out = []
    for kind, value in path:
        if kind == "f":
            out.append("." + value)
        elif kind == "k":
            fields = json.loads(value)
            out.append("[" + ",".join(f"{k}={json.dumps(v)}" for k, v in fields.items()) + "]")
        elif kind == "v":
            out.append(f"[={value}]")
        else:
            out.append(f"[{value}]")
    return "".join(out)


# ------------------------------------------------------------------------------ values at paths


def _find_item(items: list[Any], key: str) -> int | None:
    want = json.loads(key)
    for i, item in enumerate(items):
        if isinstance(item, dict) and all(item.get(k) == v for k, v in want.items()):
            return i
    return None


def get_at(obj: Any, path: Path) -> tuple[bool, Any]:
    cur = obj
    for kind, value in path:
        if kind == "f":
            if not isinstance(cur, dict) or value not in cur:
                return False, None
            cur = cur[value]
        elif kind == "k":
            if not isinstance(cur, list):
                return False, None
            i = _find_item(cur, value)
            if i is None:
                return False, None
            cur = cur[i]
        elif kind == "v":
            if not isinstance(cur, list) or json.loads(value) not in cur:
                return False, None
            cur = json.loads(value)
        else:
            return False, None
    return True, cur


def _leaf(obj: Any, path: Path) -> tuple[bool, Any]:
    """The value at a path, as conflicts compare it: a list item or set member only by being there."""
    found, value = get_at(obj, path)
    if found and path and path[-1][0] in ("k", "v"):
        return True, None
    return found, value


def remove_at(obj: Any, path: Path) -> None:
    if not path:
        return
    found, parent = get_at(obj, path[:-1])
    if not found:
        return
    kind, value = path[-1]
    if kind == "f" and isinstance(parent, dict):
        parent.pop(value, None)
    elif kind == "k" and isinstance(parent, list):
        i = _find_item(parent, value)
        if i is not None:
            del parent[i]
    elif kind == "v" and isinstance(parent, list):
        v = json.loads(value)
        while v in parent:
            parent.remove(v)


def merge(live: Any, applied: Any, schema: Schema, names: list[str]) -> Any:
    """The applied configuration merged into the live value."""
    if isinstance(live, dict) and isinstance(applied, dict):
        out = dict(live)
        for k, v in applied.items():
            out[k] = merge(live.get(k), v, schema, names + [k]) if k in live else copy.deepcopy(v)
        return out
    if isinstance(live, list) and isinstance(applied, list):
        kind, keys = schema.list_type(names, applied + live)
        if kind == "map":
            out_list = [copy.deepcopy(i) for i in live]
            for item in applied:
                key = _item_key(item, keys)
                at = _find_item(out_list, key) if key is not None else None
                if at is None:
                    out_list.append(copy.deepcopy(item))
                else:
                    out_list[at] = merge(out_list[at], item, schema, names + ["[]"])
            return out_list
        if kind == "set":
            out_list = list(live)
            for item in applied:
                if item not in out_list:
                    out_list.append(item)
            return out_list
    return copy.deepcopy(applied)


# ------------------------------------------------------------------------------ managers


class FieldOwner:
    """The managedFields of one object, as (manager, operation, subresource, apiVersion) -> entry."""

    def __init__(self, entries: Any) -> None:
        self.entries: list[dict[str, Any]] = []
        for e in entries or []:
            if isinstance(e, dict) and isinstance(e.get("manager"), str):
                self.entries.append({"manager": e["manager"], "operation": e.get("operation", "Update"),
                                     "apiVersion": e.get("apiVersion", ""), "time": e.get("time") or _now(),
                                     "subresource": e.get("subresource", ""),
                                     "paths": parse_fields_v1(e.get("fieldsV1"))})

    def entry(self, manager: str, operation: str, subresource: str, api_version: str) -> dict[str, Any]:
        for e in self.entries:
            if (e["manager"], e["operation"], e["subresource"]) == (manager, operation, subresource) and (
                    operation == "Apply" or e["apiVersion"] == api_version):
                e["apiVersion"] = api_version
                return e
        e = {"manager": manager, "operation": operation, "apiVersion": api_version, "time": _now(),
             "subresource": subresource, "paths": set()}
        self.entries.append(e)
        return e

    def render(self) -> list[dict[str, Any]]:
        out = []
        for e in self.entries:
            if not e["paths"]:
                continue
            doc = {"manager": e["manager"], "operation": e["operation"], "apiVersion": e["apiVersion"],
                   "time": e["time"], "fieldsType": "FieldsV1", "fieldsV1": fields_v1(e["paths"])}
            if e["subresource"]:
                doc["subresource"] = e["subresource"]
            out.append(doc)
        return out


def _status_mode(subresource: str | None, has_status: bool) -> str:
    if subresource == "status":
        return "only"
    return "drop" if has_status else "keep"


def record_update(old: dict[str, Any] | None, new: dict[str, Any], manager: str, api_version: str,
                  schema: Schema, subresource: str | None, has_status: bool) -> None:
    """Set ``new``'s managedFields after an Update operation (create, update, non-apply patch)."""
    owner = FieldOwner((old or {}).get("metadata", {}).get("managedFields") if old is not None else None)
    mode = _status_mode(subresource, has_status)
    new_paths = fieldset(new, schema, mode)
    if old is None:
        changed = new_paths
        removed: set[Path] = set()
    else:
        old_paths = fieldset(old, schema, mode)
        changed = {p for p in new_paths if p not in old_paths or _leaf(old, p) != _leaf(new, p)}
        removed = old_paths - new_paths
    if changed or removed:
        for e in owner.entries:
            e["paths"] -= changed | removed
        # entries may also lose paths whose parents went away
        for e in owner.entries:
            e["paths"] = {p for p in e["paths"] if not any(p[:len(r)] == r for r in removed)}
        if changed:
            mine = owner.entry(manager, "Update", subresource or "", api_version)
            mine["paths"] |= changed
            mine["time"] = _now()
    new.setdefault("metadata", {})["managedFields"] = owner.render()
    if not new["metadata"]["managedFields"]:
        del new["metadata"]["managedFields"]


def _conflict_error(conflicts: list[tuple[dict[str, Any], Path]]) -> APIError:
    def who(e: dict[str, Any]) -> str:
        text = json.dumps(e["manager"])
        if e["subresource"]:
            text += f" with subresource {json.dumps(e['subresource'])}"
        if e["operation"] == "Update":
            text += f" using {e['apiVersion']} at {e['time']}"
        return text
    causes = [{"reason": "FieldManagerConflict", "message": f"conflict with {who(e)}", "field": path_string(p)}
              for e, p in conflicts]
    if len(conflicts) == 1:
        e, p = conflicts[0]
        message = f"Apply failed with 1 conflict: conflict with {who(e)}: {path_string(p)}"
    else:
        by: dict[str, list[Path]] = {}
        shown: dict[str, str] = {}
        for e, p in conflicts:
            key = json.dumps([e["manager"], e["operation"], e["subresource"], e["apiVersion"]])
            by.setdefault(key, []).append(p)
            shown[key] = who(e)
        lines = []
        for key in sorted(by, key=lambda k: json.loads(k)[0]):
            lines.append(f"conflicts with {shown[key]}:")
            lines += [f"- {path_string(p)}" for p in by[key]]
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return APIError(409, "Conflict", message, {"causes": causes})


def apply(live: dict[str, Any] | None, applied: dict[str, Any], manager: str, api_version: str, schema: Schema,
          *, force: bool, subresource: str | None, has_status: bool) -> dict[str, Any]:
    """The object after ``manager`` applies ``applied`` to ``live`` (None: it does not exist yet), with its
    managedFields; raises 409 on conflicts unless ``force``."""
    mode = _status_mode(subresource, has_status)
    base = copy.deepcopy(live) if live is not None else {}
    owner = FieldOwner(base.get("metadata", {}).get("managedFields"))
    applied_paths = fieldset(applied, schema, mode)
    sub = subresource or ""
    mine = owner.entry(manager, "Apply", sub, api_version)
    others = [e for e in owner.entries if e is not mine]
    conflicts: list[tuple[dict[str, Any], Path]] = []
    for p in sorted(applied_paths):
        had, now = _leaf(base, p)
        if not had:
            continue
        _, want = _leaf(applied, p)
        if now == want:
            continue
        for e in others:
            if p in e["paths"]:
                conflicts.append((e, p))
    if conflicts and not force:
        raise _conflict_error(conflicts)
    for e, p in conflicts:
        e["paths"].discard(p)
    merged = merge(base, {k: v for k, v in applied.items() if k != "status" or mode != "drop"}, schema, [])
    if live is not None and "metadata" in live:
        merged["metadata"] = merge(live["metadata"], applied.get("metadata") or {}, schema, ["metadata"])
    # fields this manager stopped applying, that nobody else owns, go away
    dropped = mine["paths"] - applied_paths
    owned_by_others = set().union(*(e["paths"] for e in others)) if others else set()
    kept = owned_by_others | applied_paths
    removed: list[Path] = []
    for p in sorted(dropped, key=len):  # an item before its fields: it is found by its keys
        if any(p[:len(r)] == r for r in removed):
            continue  # went with its parent
        if p in kept or any(q[:len(p)] == p for q in kept):
            continue  # someone still owns it, or something below it
        remove_at(merged, p)
        removed.append(p)
    mine["paths"] = applied_paths
    mine["time"] = _now()
    merged.setdefault("metadata", {})["managedFields"] = owner.render()
    if not merged["metadata"]["managedFields"]:
        del merged["metadata"]["managedFields"]
    return merged
