"""CRD validation rules (``x-kubernetes-validations``) evaluated with ``cel-python`` (``celpy``).

What follows the real server (``apiextensions-apiserver/pkg/apiserver/schema/cel``; docs:
https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#validation-rules):

- a rule is evaluated at every value its schema node describes, with ``self`` bound to that value;
- a transition rule (one that mentions ``oldSelf``) is evaluated only on an update, and only where the old
  object has a value at the same place (correlated through object properties and the items of
  ``x-kubernetes-list-type: map`` lists by their keys), unless ``optionalOldSelf`` is set;
- a failed rule is a cause ``<path>: Invalid value: "<schema type>": <message>`` (``reason`` and
  ``fieldPath`` of the rule are honoured; ``messageExpression`` is evaluated when it gives a string);
  an evaluation error is reported the same way with the error text.

Kubernetes' CEL libraries are only partly there: ``find``/``findAll`` (regex), ``lowerAscii``,
``upperAscii``, ``trim``, ``join`` and ``indexOf`` are provided; ``quantity``, ``url``, ``ip``/``cidr``,
``format`` and the other library functions are not, and a rule using them is an evaluation error.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

__all__ = ["cel_causes", "available"]

try:  # an optional dependency: without it, rules are not enforced
    import celpy
    from celpy import celtypes
except ImportError:  # pragma: no cover - cel-python is a dependency of the project
    celpy = None  # type: ignore[assignment]
    celtypes = None  # type: ignore[assignment]


def available() -> bool:
    return celpy is not None


def _find(s: Any, pattern: Any) -> Any:
    m = re.search(str(pattern), str(s))
    return celtypes.StringType(m.group(0) if m else "")


def _find_all(s: Any, pattern: Any, limit: Any = None) -> Any:
    found = [m.group(0) for m in re.finditer(str(pattern), str(s))]
    if limit is not None and int(limit) >= 0:
        found = found[:int(limit)]
    return celtypes.ListType([celtypes.StringType(x) for x in found])


_FUNCTIONS = {
    "find": _find,
    "findAll": _find_all,
    "lowerAscii": lambda s: celtypes.StringType(str(s).lower()),
    "upperAscii": lambda s: celtypes.StringType(str(s).upper()),
    "trim": lambda s: celtypes.StringType(str(s).strip()),
    "join": lambda items, sep="": celtypes.StringType(str(sep).join(str(i) for i in items)),
    "indexOf": lambda s, sub: celtypes.IntType(str(s).find(str(sub))),
}


@lru_cache(maxsize=512)
def _program(expr: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(expr), functions=_FUNCTIONS)


_OLD_SELF = re.compile(r"\boldSelf\b")


def _evaluate(expr: str, value: Any, old: Any, has_old: bool) -> Any:
    """A rule's result; rules are pure functions of ``self`` (and ``oldSelf``), so results are memoized by
    value: the interpreter takes about a millisecond a rule, and the same values (requirement keys, refs)
    come back on every object."""
    try:
        key = json.dumps([expr, value, old if has_old else None, has_old], sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return _evaluate_now(expr, value, old, has_old)
    kind, result = _memo(key)
    if kind == "error":
        raise RuntimeError(result)
    return result


@lru_cache(maxsize=8192)
def _memo(key: str) -> tuple[str, Any]:
    expr, value, old, has_old = json.loads(key)
    try:
        result = _evaluate_now(expr, value, old, has_old)
    except Exception as exc:  # remembered as the same evaluation error
        return "error", str(exc)
    if celtypes is not None and isinstance(result, celtypes.BoolType):
        return "ok", bool(result)
    if isinstance(result, str):
        return "ok", str(result)
    return "ok", result


def _evaluate_now(expr: str, value: Any, old: Any, has_old: bool) -> Any:
    activation = {"self": celpy.json_to_cel(value)}
    if has_old:
        activation["oldSelf"] = celpy.json_to_cel(old)
    return _program(expr).evaluate(activation)


def _schema_type(schema: dict[str, Any], value: Any) -> str:
    t = schema.get("type")
    if isinstance(t, str):
        return t
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "string"


def _check(schema: dict[str, Any], value: Any, old: Any, has_old: bool, path: str,
           out: list[dict[str, str]]) -> None:
    for rule in schema.get("x-kubernetes-validations") or []:
        if not isinstance(rule, dict) or not isinstance(rule.get("rule"), str):
            continue
        expr = rule["rule"]
        transition = bool(_OLD_SELF.search(expr))
        if transition and not has_old and not rule.get("optionalOldSelf"):
            continue
        field = path
        if isinstance(rule.get("fieldPath"), str) and rule["fieldPath"]:
            field = (path + rule["fieldPath"]) if path else rule["fieldPath"].lstrip(".")
        try:
            ok = _evaluate(expr, value, old, has_old)
            error = None
        except Exception as exc:  # an evaluation error fails the rule
            ok, error = False, str(exc)
        if ok is True or (celtypes is not None and isinstance(ok, celtypes.BoolType) and bool(ok)):
            continue
        message = rule.get("message") or f"failed rule: {expr}"
        if error is not None:
            message = f"{message}: evaluation error: {error}"
        elif isinstance(rule.get("messageExpression"), str):
            try:
                text = _evaluate(rule["messageExpression"], value, old, has_old)
                if isinstance(text, str) and text.strip():
                    message = str(text)
            except Exception:
                pass
        reason = rule.get("reason") or "FieldValueInvalid"
        label = {"FieldValueInvalid": "Invalid value", "FieldValueForbidden": "Forbidden",
                 "FieldValueRequired": "Required value", "FieldValueDuplicate": "Duplicate value"}.get(reason,
                                                                                                      "Invalid value")
        body = (f"{label}: {json.dumps(_schema_type(schema, value))}: {message}" if label == "Invalid value"
                else f"{label}: {message}")
        out.append({"reason": reason, "message": body, "field": field or "<nil>"})


def _walk(schema: Any, value: Any, old: Any, has_old: bool, path: str, out: list[dict[str, str]]) -> None:
    if not isinstance(schema, dict):
        return
    if has_old and value == old:
        # Validation ratcheting (CRDValidationRatcheting, on by default since Kubernetes 1.30): a value an update
        # leaves unchanged is not validated again, its rules included. It also keeps status writes cheap.
        return
    _check(schema, value, old, has_old, path, out)
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, child in value.items():
            sub = props.get(key) if key in props else (extra if isinstance(extra, dict) else None)
            if sub is None:
                continue
            child_has_old = has_old and isinstance(old, dict) and key in old
            child_path = f"{path}.{key}" if path else key
            if key not in props:
                child_path = f"{path}[{key}]" if path else key
            _walk(sub, child, old.get(key) if child_has_old else None, child_has_old, child_path, out)
    elif isinstance(value, list):
        items = schema.get("items")
        keys = schema.get("x-kubernetes-list-map-keys") if schema.get("x-kubernetes-list-type") == "map" else None
        for i, item in enumerate(value):
            old_item, item_has_old = None, False
            if keys and has_old and isinstance(old, list) and isinstance(item, dict):
                want = {k: item.get(k) for k in keys}
                for o in old:
                    if isinstance(o, dict) and {k: o.get(k) for k in keys} == want:
                        old_item, item_has_old = o, True
                        break
            _walk(items, item, old_item, item_has_old, f"{path}[{i}]", out)


def cel_causes(schema: dict[str, Any] | None, obj: dict[str, Any], old: dict[str, Any] | None) -> list[dict[str, str]]:
    """The failed ``x-kubernetes-validations`` rules of an object (``old``: the stored object on update)."""
    if schema is None or celpy is None:
        return []
    out: list[dict[str, str]] = []
    props = schema.get("properties") or {}
    _check(schema, obj, old, old is not None, "", out)
    for key, value in obj.items():
        if key in ("apiVersion", "kind", "metadata") or key not in props:
            continue
        has_old = old is not None and key in old
        if has_old and value == old.get(key):
            continue  # unchanged: ratcheted (see _walk)
        _walk(props[key], value, old.get(key) if has_old else None, has_old, key, out)
    return out
