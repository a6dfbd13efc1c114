"""Kubernetes structural schemas: validation, pruning and defaulting.

Generic support for the ``openAPIV3Schema`` of a CustomResourceDefinition version, doing what a
Kubernetes API server does with a custom resource on write:

- :func:`prune` drops fields the schema does not specify (structural pruning), keeping
  ``apiVersion``/``kind``/``metadata`` at the root (and at ``x-kubernetes-embedded-resource``
  nodes), where ``metadata`` is pruned to the standard ObjectMeta fields;
- :func:`apply_defaults` fills in ``default:`` values and drops ``null`` values of fields that
  are not ``nullable`` (replacing them by the default where there is one);
- :func:`validate` checks a document against the schema and returns every problem found as a
  :class:`~workspace_fsm.engine.problems.Problem`, with a path like ``resource.labelSelector.matchLabels.app``
  or ``tuning.input.urls[0]``.

Nothing here knows about KAITO. The heavy lifting is done by ``jsonschema``'s Draft 4 validator
(OpenAPI v3.0 schemas are a dialect of draft 4: boolean ``exclusiveMinimum``, integers are not
numbers with a fraction, booleans are not integers), extended with ``nullable``,
``x-kubernetes-int-or-string`` and the int32/int64/date-time formats.
"""

from __future__ import annotations

import copy
import datetime
import json
import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import jsonschema
from jsonschema import Draft4Validator, FormatChecker, ValidationError, validators

from workspace_fsm.engine.problems import Problem

__all__ = [
    "CRDSchemaNotFound",
    "OBJECT_META_FIELDS",
    "apply_defaults",
    "crd_schema",
    "describe_value",
    "format_path",
    "prune",
    "validate",
]

#: The fields of a Kubernetes ObjectMeta as an API server accepts them on a custom resource.
OBJECT_META_FIELDS = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)

_RESOURCE_KEYS = ("apiVersion", "kind", "metadata")


class CRDSchemaNotFound(ValueError):
    """The CRD document has no ``openAPIV3Schema`` for the requested version."""


# --------------------------------------------------------------------------------------------
# Paths and value descriptions
# --------------------------------------------------------------------------------------------

_SIMPLE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_MAX_KEY_SHOWN = 80


def format_path(parts: Iterable[Any]) -> str:
    """Join path parts into ``a.b[0].c``; keys that are not plain words are bracketed and
    quoted (``metadata.labels["kaito.sh/workspace"]``), very long keys are shortened."""
    out: list[str] = []
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            out.append(f"[{part}]")
            continue
        key = str(part)
        if len(key) > _MAX_KEY_SHOWN:
            key = key[:_MAX_KEY_SHOWN] + f"...({len(key)} characters)"
        if _SIMPLE_KEY.fullmatch(key):
            out.append(f".{key}" if out else key)
        else:
            out.append(f"[{json.dumps(key)}]")
    return "".join(out)


def json_type(value: Any) -> str:
    """The JSON type name of a Python value (``string``, ``integer``, ``object``...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


_ARTICLE = {"integer": "an integer", "object": "an object", "array": "a list (array)"}


def _a(type_name: str) -> str:
    return _ARTICLE.get(type_name, f"a {type_name}")


def describe_value(value: Any, limit: int = 60) -> str:
    """A short, safe description of a value for a message (never the whole of a huge string)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and abs(value).bit_length() > 4 * limit:
        # Too long to show anyway; and Python refuses to turn an int of more than 4300 digits into
        # text, so estimate the digits from the bits instead of converting.
        return f"a number of about {int(abs(value).bit_length() * 0.30103) + 1} digits"
    if isinstance(value, (int, float)):
        text = repr(value)
        return text if len(text) <= limit else f"a {len(text)}-digit number"
    if isinstance(value, str):
        if len(value) <= limit:
            return json.dumps(value)
        return f"{json.dumps(value[:limit])[:-1]}...\" ({len(value)} characters)"
    if isinstance(value, Mapping):
        return f"an object with {len(value)} field(s)"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item(s)"
    return f"a {type(value).__name__}"


def _typed(value: Any) -> str:
    kind = json_type(value)
    if kind in ("object", "array", "null") or kind not in (
        "string", "integer", "number", "boolean"
    ):
        return describe_value(value)
    return f"{_a(kind)} ({describe_value(value)})"


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

_draft4_type = Draft4Validator.VALIDATORS["type"]
_draft4_enum = Draft4Validator.VALIDATORS["enum"]


def _kw_type(validator: Any, types: Any, instance: Any, schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    if instance is None and schema.get("nullable") is True:
        return
    if schema.get("x-kubernetes-int-or-string") is True:
        return  # checked by its own keyword
    yield from _draft4_type(validator, types, instance, schema)


def _kw_enum(validator: Any, enums: Any, instance: Any, schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    if instance is None and schema.get("nullable") is True:
        return
    if not isinstance(enums, list):
        return
    yield from _draft4_enum(validator, enums, instance, schema)


def _kw_required(validator: Any, required: Any, instance: Any, schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    if not isinstance(instance, dict) or not isinstance(required, list):
        return
    for prop in required:
        if isinstance(prop, str) and prop not in instance:
            # The path names the missing field itself, not its parent.
            yield ValidationError(f"{prop} is required", path=(prop,))


def _kw_int_or_string(validator: Any, enabled: Any, instance: Any,
                      schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    if enabled is not True:
        return
    if instance is None and schema.get("nullable") is True:
        return
    if isinstance(instance, str) or (isinstance(instance, int) and not isinstance(instance, bool)):
        return
    yield ValidationError("must be an integer or a string")


_formats = FormatChecker(formats=())

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
)


@_formats.checks("int32")
def _is_int32(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return -(2**31) <= value < 2**31
    return True


@_formats.checks("int64")
def _is_int64(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return -(2**63) <= value < 2**63
    return True


@_formats.checks("date-time")
def _is_date_time(value: Any) -> bool:
    if not isinstance(value, str):
        return True
    if len(value) > 40 or not _RFC3339.fullmatch(value):
        return False
    text = value.replace("z", "Z").replace("t", "T").replace(" ", "T")
    head, _, frac_and_zone = text.partition(".")
    if frac_and_zone:  # fromisoformat takes at most 6 fraction digits before 3.11's extension
        digits = re.match(r"\d+", frac_and_zone).group(0)  # type: ignore[union-attr]
        text = f"{head}.{digits[:6].ljust(6, '0')}{frac_and_zone[len(digits):]}"
    try:
        datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


_K8sValidator = validators.extend(  # type: ignore[no-untyped-call]
    Draft4Validator,
    validators={
        "type": _kw_type,
        "enum": _kw_enum,
        "required": _kw_required,
        "x-kubernetes-int-or-string": _kw_int_or_string,
    },
)

_VALIDATOR_CACHE: OrderedDict[int, tuple[Any, Any]] = OrderedDict()
_CACHE_SIZE = 16


def _validator_for(schema: Mapping[str, Any]) -> Any:
    key = id(schema)
    hit = _VALIDATOR_CACHE.get(key)
    if hit is not None and hit[0] is schema:
        _VALIDATOR_CACHE.move_to_end(key)
        return hit[1]
    v = _K8sValidator(schema, format_checker=_formats)
    _VALIDATOR_CACHE[key] = (schema, v)  # holding the schema keeps its id from being reused
    if len(_VALIDATOR_CACHE) > _CACHE_SIZE:
        _VALIDATOR_CACHE.popitem(last=False)
    return v


def validate(doc: Any, schema: Mapping[str, Any]) -> list[Problem]:
    """Check ``doc`` against a structural ``openAPIV3Schema``; return every problem found.

    Unknown fields are not problems here (a server prunes them, see :func:`prune`). The
    document may be anything: non-objects, wrong types and huge values give problems, not
    exceptions.
    """
    try:
        errors = list(_validator_for(schema).iter_errors(doc))
    except RecursionError:
        return [Problem("", "DocumentTooDeep", "the document is nested too deeply to check")]
    problems: list[Problem] = []
    seen: set[Problem] = set()
    for error in errors:
        for problem in _problems(error):
            if problem not in seen:
                seen.add(problem)
                problems.append(problem)
    return problems


def _type_names(types: Any) -> str:
    names = [types] if isinstance(types, str) else list(types) if isinstance(types, list) else []
    return " or ".join(_a(str(t)) for t in names) or "another type"


def _problems(error: ValidationError) -> list[Problem]:
    path = format_path(error.absolute_path)
    keyword = error.validator
    expected: Any = error.validator_value
    value: Any = error.instance
    schema = error.schema if isinstance(error.schema, Mapping) else {}

    if keyword == "type":
        return [Problem(path, "FieldTypeInvalid", f"must be {_type_names(expected)}, not {_typed(value)}")]
    if keyword == "x-kubernetes-int-or-string":
        return [Problem(path, "FieldTypeInvalid", f"must be an integer or a string, not {_typed(value)}")]
    if keyword == "required":
        return [Problem(path, "FieldRequired", "is required")]
    if keyword == "enum":
        allowed = ", ".join(describe_value(e) for e in expected[:20])
        return [
            Problem(path, "FieldValueNotSupported", f"{describe_value(value)} is not supported; use one of: {allowed}")
        ]
    if keyword == "pattern":
        return [
            Problem(path, "FieldValueInvalid",
                    f"{describe_value(value)} does not match the pattern {describe_value(expected, 120)}")
        ]
    if keyword == "format":
        return [Problem(path, "FieldFormatInvalid", f"{describe_value(value)} is not a valid {expected}")]
    if keyword == "maxLength":
        return [Problem(path, "FieldTooLong", f"must be at most {expected} character(s), not {len(value)}")]
    if keyword == "minLength":
        return [Problem(path, "FieldTooShort", f"must be at least {expected} character(s), not {len(value)}")]
    if keyword == "minimum":
        strict = schema.get("exclusiveMinimum") is True
        bound = "greater than" if strict else "greater than or equal to"
        return [Problem(path, "FieldValueTooSmall", f"must be {bound} {expected}, not {describe_value(value)}")]
    if keyword == "maximum":
        strict = schema.get("exclusiveMaximum") is True
        bound = "less than" if strict else "less than or equal to"
        return [Problem(path, "FieldValueTooLarge", f"must be {bound} {expected}, not {describe_value(value)}")]
    if keyword == "maxItems":
        return [Problem(path, "FieldTooMany", f"must have at most {expected} items, not {len(value)}")]
    if keyword == "minItems":
        return [Problem(path, "FieldTooFew", f"must have at least {expected} items, not {len(value)}")]
    if keyword == "uniqueItems":
        return [Problem(path, "FieldValueDuplicate", "must not contain duplicate items")]
    if keyword == "maxProperties":
        return [Problem(path, "FieldTooMany", f"must have at most {expected} fields, not {len(value)}")]
    if keyword == "minProperties":
        return [Problem(path, "FieldTooFew", f"must have at least {expected} fields, not {len(value)}")]
    if keyword == "multipleOf":
        return [Problem(path, "FieldValueInvalid", f"must be a multiple of {expected}, not {describe_value(value)}")]
    if keyword == "additionalProperties" and isinstance(value, Mapping):
        known = schema.get("properties") or {}
        extras = [k for k in value if k not in known]
        base = list(error.absolute_path)
        return [Problem(format_path([*base, k]), "FieldUnknown", "is not a known field") for k in extras]
    if keyword == "not":
        return [Problem(path, "FieldValueForbidden", f"{describe_value(value)} is not allowed here")]
    if keyword in ("anyOf", "oneOf"):
        if error.context:
            best = jsonschema.exceptions.best_match(error.context)
            inner = _problems(best) if best is not None else []
            if inner:
                return [Problem(path, inner[0].reason, inner[0].message)]
        what = "any" if keyword == "anyOf" else "exactly one"
        return [Problem(path, "FieldValueInvalid",
                        f"{describe_value(value)} does not match {what} of the allowed forms")]
    message = error.message
    if len(message) > 200:
        message = message[:200] + "..."
    return [Problem(path, "FieldValueInvalid", message)]


# --------------------------------------------------------------------------------------------
# Pruning
# --------------------------------------------------------------------------------------------


def _copy(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return copy.deepcopy(value)
    return value


def prune(doc: Any, schema: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """Kubernetes structural pruning: a copy of ``doc`` without the fields ``schema`` does not
    specify, and the paths of the fields removed.

    Fields under ``x-kubernetes-preserve-unknown-fields: true`` are kept (specified fields inside
    are still pruned); ``additionalProperties`` schemas apply to every key. At the root,
    ``apiVersion``, ``kind`` and ``metadata`` are always kept, ``metadata`` cut down to the
    ObjectMeta fields. Values whose type does not fit the schema are left alone for
    :func:`validate` to report.
    """
    removed: list[str] = []
    return _prune(doc, schema, [], removed, resource=True), removed


def _prune(value: Any, schema: Any, path: list[Any], removed: list[str], *, resource: bool = False) -> Any:
    if not isinstance(schema, Mapping):
        return _copy(value)
    if isinstance(value, dict):
        props = schema.get("properties")
        props = props if isinstance(props, Mapping) else {}
        extra = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
        resource = resource or schema.get("x-kubernetes-embedded-resource") is True
        out: dict[Any, Any] = {}
        for key, item in value.items():
            where = [*path, key]
            if resource and key in _RESOURCE_KEYS:
                if key == "metadata":
                    out[key] = _prune_metadata(item, where, removed)
                else:
                    out[key] = _copy(item)
            elif key in props:
                out[key] = _prune(item, props[key], where, removed)
            elif isinstance(extra, Mapping):
                out[key] = _prune(item, extra, where, removed)
            elif extra is True or preserve:
                out[key] = _copy(item)
            else:
                removed.append(format_path(where))
        return out
    if isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, Mapping):
            return [_prune(item, items, [*path, i], removed) for i, item in enumerate(value)]
        return _copy(value)
    return value


def _prune_metadata(value: Any, path: list[Any], removed: list[str]) -> Any:
    if not isinstance(value, dict):
        return _copy(value)
    out: dict[Any, Any] = {}
    for key, item in value.items():
        if key in OBJECT_META_FIELDS:
            out[key] = _copy(item)
        else:
            removed.append(format_path([*path, key]))
    return out


# --------------------------------------------------------------------------------------------
# Defaulting
# --------------------------------------------------------------------------------------------


def apply_defaults(doc: Any, schema: Mapping[str, Any]) -> Any:
    """A copy of ``doc`` with the schema's ``default:`` values filled in where a field is absent.

    As an API server does, a ``null`` given for a field that is not ``nullable`` is replaced by
    the field's default, or dropped when it has none. Values of the wrong type are left alone.
    """
    return _default(doc, schema)


def _default(value: Any, schema: Any) -> Any:
    if not isinstance(schema, Mapping):
        return _copy(value)
    if isinstance(value, dict):
        props = schema.get("properties")
        props = props if isinstance(props, Mapping) else {}
        extra = schema.get("additionalProperties")
        extra = extra if isinstance(extra, Mapping) else None
        out: dict[Any, Any] = {}
        for key, item in value.items():
            sub = props.get(key) if key in props else extra
            if not isinstance(sub, Mapping):
                out[key] = _copy(item)
                continue
            if item is None and sub.get("nullable") is not True:
                if "default" in sub:
                    out[key] = _default(copy.deepcopy(sub["default"]), sub)
                continue
            out[key] = _default(item, sub)
        for key, sub in props.items():
            if key not in value and isinstance(sub, Mapping) and "default" in sub:
                out[key] = _default(copy.deepcopy(sub["default"]), sub)
        return out
    if isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, Mapping):
            return [_default(item, items) for item in value]
        return _copy(value)
    return value


# --------------------------------------------------------------------------------------------
# CRDs
# --------------------------------------------------------------------------------------------


def crd_schema(crd_doc: Mapping[str, Any], version: str | None = None) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of ``version`` (default: the storage version) in a CRD document.

    Accepts apiextensions.k8s.io/v1 (per-version ``schema``) and the older top-level
    ``spec.validation`` form. Raises :class:`CRDSchemaNotFound` naming the versions there are.
    """
    spec = crd_doc.get("spec") if isinstance(crd_doc, Mapping) else None
    if not isinstance(spec, Mapping):
        raise CRDSchemaNotFound("not a CustomResourceDefinition: it has no spec")
    versions = [v for v in spec.get("versions") or [] if isinstance(v, Mapping)]
    names = [str(v.get("name")) for v in versions]
    if version is None:
        storage = [v for v in versions if v.get("storage") is True]
        if not storage:
            raise CRDSchemaNotFound(f"no storage version among {names}; name a version")
        chosen: Mapping[str, Any] | None = storage[0]
    else:
        chosen = next((v for v in versions if v.get("name") == version), None)
        if chosen is None and not (versions == [] and spec.get("version") == version):
            raise CRDSchemaNotFound(f"version {version!r} not found; the CRD has {names}")
    found = None
    if chosen is not None:
        found = (chosen.get("schema") or {}).get("openAPIV3Schema")
    if found is None:
        found = (spec.get("validation") or {}).get("openAPIV3Schema")
    if not isinstance(found, Mapping):
        raise CRDSchemaNotFound(f"version {version or names} has no openAPIV3Schema")
    return found  # type: ignore[return-value]
