"""Decoding, defaulting and validation of the built-in kinds this project writes: ConfigMap, Secret, Lease here;
Deployment, StatefulSet, Job, Service, Pod and PersistentVolumeClaim in :mod:`.workloads`.

Learned from kubernetes/kubernetes (no code copied):

- decoding (``k8s.io/api/core/v1`` types): ``Secret.data`` and ``ConfigMap.binaryData`` are ``[]byte``,
  base64 in JSON; a value that is not valid standard base64 fails decoding, 400 ``<Kind> in version "v1"
  cannot be handled as a <Kind>: illegal base64 data at input byte N``; a non-string ``data`` value fails
  the same way. ``Secret.stringData`` is folded into ``data`` by the v1 -> internal conversion (its values
  win) and never stored.
- defaulting (``pkg/apis/core/v1/defaults.go``, ``SetDefaults_Secret``): ``type`` defaults to ``Opaque``.
- validation (``pkg/apis/core/validation``: ``ValidateConfigMap``, ``ValidateSecret``,
  ``ValidateSecretUpdate``; ``pkg/apis/coordination/validation``: ``ValidateLeaseSpec``): keys must be
  valid config keys, a key may not be in both ``data`` and ``binaryData``, the total size is at most 1 MiB,
  typed Secrets need their keys, ``type`` is immutable, and ``immutable: true`` freezes the data; a Lease's
  duration must be > 0 and its transitions >= 0.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
from typing import Any

from workspace_fsm.testing.errors import APIError
from workspace_fsm.testing.meta import cause, required
from workspace_fsm.testing.workloads import WORKLOAD_ADMISSION, json_type as _json_type

__all__ = ["admit_builtin"]

MAX_SECRET_SIZE = 1024 * 1024
_KEY_RE = re.compile(r"[-._a-zA-Z0-9]+")
_KEY_MSG = ("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or "
            "'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')")
_B64 = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def _go_quote(value: Any) -> str:
    import json

    return json.dumps(value)


def _key_problems(key: str) -> list[str]:
    out = []
    if len(key) > 253:
        out.append("must be no more than 253 characters")
    if not _KEY_RE.fullmatch(key):
        out.append(_KEY_MSG)
    if key == ".":
        out.append("must not be '.'")
    elif key == "..":
        out.append("must not be '..'")
    elif key.startswith(".."):
        out.append("must not start with '..'")
    return out


def b64_error(value: str) -> int | None:
    """Where Go's ``base64.StdEncoding`` fails on ``value`` (None when it decodes)."""
    chars = [(i, c) for i, c in enumerate(value) if c not in "\r\n"]
    n = len(chars)
    for pos, (i, c) in enumerate(chars):
        if c == "=":
            # padding: only in the last quantum, at its 3rd or 4th place, and followed only by padding
            quantum_at = pos % 4
            rest = [ch for _, ch in chars[pos:]]
            if quantum_at < 2 or n % 4 != 0 or any(ch != "=" for ch in rest) or pos + len(rest) != n \
                    or (quantum_at == 2 and len(rest) != 2):
                return i
            break
        if c not in _B64:
            return i
    if n % 4 != 0:
        return len(value) - (n % 4) if n % 4 else None
    try:
        base64.b64decode("".join(c for _, c in chars), validate=True)
    except (binascii.Error, ValueError):
        return len(value)
    return None


def _decode_error(kind: str, detail: str) -> APIError:
    return APIError.bad_request(f'{kind} in version "v1" cannot be handled as a {kind}: {detail}')


def _string_map(kind: str, obj: dict[str, Any], field: str, go_type: str) -> dict[str, str]:
    value = obj.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _decode_error(kind, f"json: cannot unmarshal {_json_type(value)} into Go struct field {kind}.{field} "
                                  f"of type map[string]{go_type}")
    for v in value.values():
        if not isinstance(v, str):
            raise _decode_error(kind, f"json: cannot unmarshal {_json_type(v)} into Go struct field {kind}.{field} "
                                      f"of type {go_type}")
    return value


def _bytes_map(kind: str, obj: dict[str, Any], field: str) -> dict[str, str]:
    value = _string_map(kind, obj, field, "[]byte")
    for v in value.values():
        at = b64_error(v)
        if at is not None:
            raise _decode_error(kind, f"illegal base64 data at input byte {at}")
    return value


def _size(b64: dict[str, str]) -> int:
    return sum(len(base64.b64decode(v.replace("\r", "").replace("\n", ""))) for v in b64.values())


def _immutable(obj: dict[str, Any], old: dict[str, Any] | None, fields: tuple[str, ...]) -> list[dict[str, str]]:
    if old is None or old.get("immutable") is not True:
        return []
    causes = []
    if obj.get("immutable") is not True:
        causes.append(cause("immutable", "FieldValueForbidden",
                            "Forbidden: field is immutable when `immutable` is set"))
    for f in fields:
        if (obj.get(f) or {}) != (old.get(f) or {}):
            causes.append(cause(f, "FieldValueForbidden", "Forbidden: field is immutable when `immutable` is set"))
    return causes


def _configmap(obj: dict[str, Any], old: dict[str, Any] | None) -> list[dict[str, str]]:
    data = _string_map("ConfigMap", obj, "data", "string")
    binary = _bytes_map("ConfigMap", obj, "binaryData")
    causes = []
    for key in data:
        causes += [cause(f"data[{key}]", "FieldValueInvalid", f"Invalid value: {_go_quote(key)}: {m}")
                   for m in _key_problems(key)]
        if key in binary:
            causes.append(cause(f"data[{key}]", "FieldValueInvalid",
                                f"Invalid value: {_go_quote(key)}: duplicate of key present in binaryData"))
    for key in binary:
        causes += [cause(f"binaryData[{key}]", "FieldValueInvalid", f"Invalid value: {_go_quote(key)}: {m}")
                   for m in _key_problems(key)]
    if sum(len(v) for v in data.values()) + _size(binary) > MAX_SECRET_SIZE:
        causes.append(cause("", "FieldValueTooLong", f"Too long: may not be more than {MAX_SECRET_SIZE} bytes"))
    return causes + _immutable(obj, old, ("data", "binaryData"))


_TYPED_KEYS = {
    "kubernetes.io/dockerconfigjson": [".dockerconfigjson"],
    "kubernetes.io/dockercfg": [".dockercfg"],
    "kubernetes.io/tls": ["tls.crt", "tls.key"],
    "kubernetes.io/ssh-auth": ["ssh-privatekey"],
}


def _secret(obj: dict[str, Any], old: dict[str, Any] | None) -> list[dict[str, str]]:
    data = dict(_bytes_map("Secret", obj, "data"))
    string_data = _string_map("Secret", obj, "stringData", "string")
    for key, value in string_data.items():  # the conversion: stringData wins, then is dropped
        data[key] = base64.b64encode(value.encode()).decode()
    obj.pop("stringData", None)
    if data or "data" in obj:
        obj["data"] = data
    stype = obj.get("type")
    if stype is None or stype == "":
        obj["type"] = stype = "Opaque"
    if not isinstance(stype, str):
        raise _decode_error("Secret", f"json: cannot unmarshal {_json_type(stype)} into Go struct field "
                                      "Secret.type of type v1.SecretType")
    causes = []
    if old is not None and old.get("type", "Opaque") != stype:  # ValidateSecretUpdate checks this first
        causes.append(cause("type", "FieldValueInvalid", f"Invalid value: {_go_quote(stype)}: field is immutable"))
    causes += _immutable(obj, old, ("data",))
    for key in data:
        causes += [cause(f"data[{key}]", "FieldValueInvalid", f"Invalid value: {_go_quote(key)}: {m}")
                   for m in _key_problems(key)]
    if _size(data) > MAX_SECRET_SIZE:
        causes.append(cause("data", "FieldValueTooLong", f"Too long: may not be more than {MAX_SECRET_SIZE} bytes"))
    for key in _TYPED_KEYS.get(stype, []):
        if key not in data:
            causes.append(required(f"data[{key}]"))
    if stype == "kubernetes.io/basic-auth" and "username" not in data and "password" not in data:
        causes.append(required("data[username]"))
    if stype == "kubernetes.io/service-account-token":
        if not ((obj.get("metadata") or {}).get("annotations") or {}).get("kubernetes.io/service-account.name"):
            causes.append(required("metadata.annotations[kubernetes.io/service-account.name]"))
    return causes


_MICRO_TIME = "2006-01-02T15:04:05.000000Z07:00"


def _lease(obj: dict[str, Any], old: dict[str, Any] | None) -> list[dict[str, str]]:
    spec = obj.get("spec")
    if spec is None:
        return []
    if not isinstance(spec, dict):
        raise _decode_error("Lease", f"json: cannot unmarshal {_json_type(spec)} into Go struct field Lease.spec of "
                                     "type v1.LeaseSpec")
    kinds = {"holderIdentity": "string", "leaseDurationSeconds": "int32", "leaseTransitions": "int32",
             "acquireTime": "time", "renewTime": "time", "strategy": "string", "preferredHolder": "string"}
    for name, kind in kinds.items():
        value = spec.get(name)
        if value is None:
            continue
        go_type = {"string": "string", "int32": "int32", "time": "v1.MicroTime"}[kind]
        bad = (kind in ("string", "time") and not isinstance(value, str)) or (
            kind == "int32" and (isinstance(value, bool) or not isinstance(value, int) or not -2**31 <= value < 2**31))
        if bad:
            raise _decode_error("Lease", f"json: cannot unmarshal {_json_type(value)} into Go struct field "
                                         f"LeaseSpec.spec.{name} of type {go_type}")
        if kind == "time":
            try:
                datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise _decode_error("Lease", f'parsing time "{value}" as "{_MICRO_TIME}": cannot parse "{value}" '
                                             'as "2006"') from None
    causes = []
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and duration <= 0:
        causes.append(cause("spec.leaseDurationSeconds", "FieldValueInvalid",
                            f"Invalid value: {duration}: must be greater than 0"))
    transitions = spec.get("leaseTransitions")
    if transitions is not None and transitions < 0:
        causes.append(cause("spec.leaseTransitions", "FieldValueInvalid",
                            f"Invalid value: {transitions}: must be greater than or equal to 0"))
    return causes


_ADMIT = {("", "configmaps"): _configmap, ("", "secrets"): _secret, ("coordination.k8s.io", "leases"): _lease}


def admit_builtin(key: tuple[str, str], obj: dict[str, Any], old: dict[str, Any] | None, *, store: Any = None,
                  subresource: str | None = None) -> list[dict[str, str]]:
    """Decode-check, default (in place) and validate a built-in object; returns validation causes (422) and
    raises 400 for what the real decoder refuses. ``store``: what a registry consults (allocated cluster IPs
    and node ports, its random source). A ``/status`` write of a workload kind keeps the stored spec, which
    is not validated again (the status strategies validate only status)."""
    fn = _ADMIT.get(key)
    if fn is not None:
        return fn(obj, old)
    workload = WORKLOAD_ADMISSION.get(key)
    if workload is None or subresource == "status":
        return []
    return workload(obj, old, store)
