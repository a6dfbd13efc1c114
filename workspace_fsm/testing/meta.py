"""ObjectMeta rules every kind shares, and the mapping of schema problems to ``StatusCause`` entries."""

from __future__ import annotations

import json
import re
from typing import Any

from workspace_fsm.engine.problems import Problem

__all__ = ["validate_metadata", "schema_causes", "cause"]

_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1035 = r"[a-z]([-a-z0-9]*[a-z0-9])?"
_QNAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"

_SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                  "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
                  f"validation is '{_SUBDOMAIN}')")
_LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
              "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
              f"validation is '{_LABEL}')")
_DNS1035_MSG = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
                "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
                f"regex used for validation is '{_DNS1035}')")
_QNAME_MSG = ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
              "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
              f"'{_QNAME}')")
_LABEL_VALUE_MSG = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                    "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
                    f"'12345', regex used for validation is '{_LABEL_VALUE}')")

TOTAL_ANNOTATION_SIZE_LIMIT = 256 * 1024


def _q(value: Any) -> str:
    """A value as the API server prints it in a message (Go's %q for strings)."""
    if isinstance(value, str):
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"), default=str)


def cause(field: str, kind: str, body: str) -> dict[str, str]:
    return {"reason": kind, "message": body, "field": field}


def required(field: str, detail: str = "") -> dict[str, str]:
    return cause(field, "FieldValueRequired", "Required value" + (f": {detail}" if detail else ""))


def invalid(field: str, value: Any, detail: str) -> dict[str, str]:
    return cause(field, "FieldValueInvalid", f"Invalid value: {_q(value)}: {detail}")


def forbidden(field: str, detail: str) -> dict[str, str]:
    return cause(field, "FieldValueForbidden", f"Forbidden: {detail}")


def _name_problems(value: str, rule: str) -> list[str]:
    if rule == "path":
        if value in (".", ".."):
            return [f"may not be '{value}'"]
        return [f"may not contain '{c}'" for c in ("/", "%") if c in value]
    limit = 253 if rule == "subdomain" else 63
    regex, msg = {"subdomain": (_SUBDOMAIN, _SUBDOMAIN_MSG), "label": (_LABEL, _LABEL_MSG),
                  "dns1035": (_DNS1035, _DNS1035_MSG)}[rule]
    out = []
    if len(value) > limit:
        out.append(f"must be no more than {limit} characters")
    if not re.fullmatch(regex, value):
        out.append(msg)
    return out


def _qualified_name_problems(key: str) -> list[str]:
    prefix, _, name = key.rpartition("/")
    out = []
    if "/" in key and not prefix:
        out.append("prefix part must be non-empty")
    if prefix:
        if len(prefix) > 253:
            out.append("prefix part must be no more than 253 characters")
        if not re.fullmatch(_SUBDOMAIN, prefix):
            out.append("prefix part " + _SUBDOMAIN_MSG)
    if not name:
        out.append("name part must be non-empty")
    else:
        if len(name) > 63:
            out.append("name part must be no more than 63 characters")
        if not re.fullmatch(_QNAME, name):
            out.append(_QNAME_MSG)
    return out


def validate_metadata(meta: Any, name_rule: str, *, creating: bool, old_meta: dict[str, Any] | None = None
                      ) -> list[dict[str, str]]:
    """Problems with an object's metadata as ``StatusCause`` dicts (empty when it is fine)."""
    causes: list[dict[str, str]] = []
    if not isinstance(meta, dict):
        return [invalid("metadata", meta, "must be an object")]
    name = meta.get("name")
    if not name:
        if creating:
            causes.append(required("metadata.name", "name or generateName is required"))
    elif not isinstance(name, str):
        causes.append(invalid("metadata.name", name, "must be a string"))
    else:
        for msg in _name_problems(name, name_rule):
            causes.append(invalid("metadata.name", name, msg))
    labels = meta.get("labels")
    if labels is not None:
        if not isinstance(labels, dict):
            causes.append(invalid("metadata.labels", labels, "must be a map of strings"))
        else:
            for key, value in labels.items():
                for msg in _qualified_name_problems(str(key)):
                    causes.append(invalid("metadata.labels", key, msg))
                if not isinstance(value, str):
                    causes.append(invalid(f"metadata.labels[{key}]", value, "must be a string"))
                else:
                    if len(value) > 63:
                        causes.append(invalid("metadata.labels", value, "must be no more than 63 characters"))
                    if not re.fullmatch(_LABEL_VALUE, value):
                        causes.append(invalid("metadata.labels", value, _LABEL_VALUE_MSG))
    annotations = meta.get("annotations")
    if annotations is not None:
        if not isinstance(annotations, dict):
            causes.append(invalid("metadata.annotations", annotations, "must be a map of strings"))
        else:
            size = 0
            for key, value in annotations.items():
                for msg in _qualified_name_problems(str(key).lower()):
                    causes.append(invalid("metadata.annotations", key, msg))
                if not isinstance(value, str):
                    causes.append(invalid(f"metadata.annotations[{key}]", value, "must be a string"))
                else:
                    size += len(str(key)) + len(value)
            if size > TOTAL_ANNOTATION_SIZE_LIMIT:
                causes.append(cause("metadata.annotations", "FieldValueTooLong",
                                    f"Too long: may not be more than {TOTAL_ANNOTATION_SIZE_LIMIT} bytes"))
    finalizers = meta.get("finalizers")
    if finalizers is not None:
        if not isinstance(finalizers, list):
            causes.append(invalid("metadata.finalizers", finalizers, "must be a list of strings"))
        else:
            for i, fin in enumerate(finalizers):
                if not isinstance(fin, str):
                    causes.append(invalid(f"metadata.finalizers[{i}]", fin, "must be a string"))
                    continue
                for msg in _qualified_name_problems(fin):
                    causes.append(invalid(f"metadata.finalizers[{i}]", fin, msg))
            if old_meta is not None and old_meta.get("deletionTimestamp"):
                before = set(old_meta.get("finalizers") or [])
                new = [f for f in finalizers if f not in before]
                if new:
                    listed = ", ".join(json.dumps(f) for f in new)
                    causes.append(forbidden("metadata.finalizers", "no new finalizers can be added if the object "
                                            f"is being deleted, found new finalizers []string{{{listed}}}"))
    refs = meta.get("ownerReferences")
    if refs is not None:
        if not isinstance(refs, list):
            causes.append(invalid("metadata.ownerReferences", refs, "must be a list"))
        else:
            controllers = 0
            for ref in refs:
                if not isinstance(ref, dict):
                    causes.append(invalid("metadata.ownerReferences", ref, "must be an object"))
                    continue
                for key, what in (("apiVersion", "version"), ("kind", "kind"), ("name", "name"), ("uid", "uid")):
                    if not ref.get(key):
                        causes.append(invalid(f"metadata.ownerReferences.{key}", ref.get(key, ""),
                                              f"{what} must not be empty"))
                if ref.get("controller") is True:
                    controllers += 1
            if controllers > 1:
                causes.append(invalid("metadata.ownerReferences", refs,
                                      "Only one reference can have Controller set to true"))
    return causes


# --------------------------------------------------------------------------------------------
# Schema problems as causes
# --------------------------------------------------------------------------------------------

_CAUSE_TYPES = {
    "FieldTypeInvalid": ("FieldValueTypeInvalid", "Invalid value"),
    "FieldRequired": ("FieldValueRequired", "Required value"),
    "FieldValueNotSupported": ("FieldValueNotSupported", "Unsupported value"),
    "FieldTooLong": ("FieldValueTooLong", "Too long"),
    "FieldTooMany": ("FieldValueTooMany", "Too many"),
    "FieldValueDuplicate": ("FieldValueDuplicate", "Duplicate value"),
    "FieldValueForbidden": ("FieldValueForbidden", "Forbidden"),
}

_TOKEN = re.compile(r'\.?([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]')


def _value_at(doc: Any, path: str) -> tuple[bool, Any]:
    cur = doc
    pos = 0
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if not m:
            return False, None
        pos = m.end()
        if m.group(2) is not None:
            idx = int(m.group(2))
            if not isinstance(cur, list) or idx >= len(cur):
                return False, None
            cur = cur[idx]
        else:
            key = m.group(1) if m.group(1) is not None else json.loads(m.group(3))
            if not isinstance(cur, dict) or key not in cur:
                return False, None
            cur = cur[key]
    return True, cur


def schema_causes(doc: Any, problems: list[Problem]) -> list[dict[str, str]]:
    out = []
    for p in problems:
        kind, label = _CAUSE_TYPES.get(p.reason, ("FieldValueInvalid", "Invalid value"))
        if kind == "FieldValueRequired":
            body = "Required value"
        else:
            found, value = _value_at(doc, p.path)
            body = f"{label}: {_q(value)}: {p.message}" if found else f"{label}: {p.message}"
        out.append(cause(p.path or "<nil>", kind, body))
    return out
