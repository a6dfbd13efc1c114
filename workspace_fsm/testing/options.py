"""Request options (``CreateOptions``, ``UpdateOptions``, ``PatchOptions``, ``DeleteOptions``) as the API
server reads and validates them.

Where they come from follows the generic handlers in ``k8s.io/apiserver/pkg/endpoints/handlers``:

- create, update and patch (also of ``/status``) decode their options from the query string only;
- delete and deletecollection decode ``DeleteOptions`` from the request body when there is one, and from
  the query string only when the body is empty (``delete.go``: ``if len(body) > 0 {decode body} else
  {DecodeParameters(req.URL.Query())}``). A client that sends a body and ``?dryRun=All`` therefore
  really deletes, on a real server as here.

Bad options are answered 422 ``Invalid`` for the options kind, as ``validation.ValidateCreateOptions``,
``ValidateUpdateOptions``, ``ValidatePatchOptions`` and ``ValidateDeleteOptions``
(``k8s.io/apimachinery/pkg/apis/meta/v1/validation``) word them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from workspace_fsm.testing.errors import APIError
from workspace_fsm.testing.meta import cause

__all__ = ["WriteOptions", "write_options", "delete_options", "go_repr"]

_FIELD_VALIDATION = ("", "Ignore", "Strict", "Warn")  # sorted, as sets.String.List() prints them


def go_repr(value: Any) -> str:
    """A value as Go's ``%#v`` prints it in field errors (``[]string{"x"}``, ``"x"``)."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "[]string{" + ", ".join(json.dumps(v) for v in value) + "}"
    if isinstance(value, str):
        return json.dumps(value)
    return json.dumps(value)


def _not_supported(field: str, value: Any, allowed: tuple[str, ...]) -> dict[str, str]:
    return cause(field, "FieldValueNotSupported", f"Unsupported value: {go_repr(value)}: supported values: "
                 + ", ".join(json.dumps(a) for a in allowed))


def _dry_run_causes(dry_run: list[str] | None) -> list[dict[str, str]]:
    if dry_run and any(v != "All" for v in dry_run):
        return [_not_supported("dryRun", list(dry_run), ("All",))]
    return []


@dataclass(frozen=True)
class WriteOptions:
    dry_run: bool
    field_validation: str | None
    field_manager: str | None
    force: bool


def write_options(kind: str, query: dict[str, list[str]], *, patch_type: str | None = None) -> WriteOptions:
    """Create/Update/PatchOptions from the query string (``kind`` names the options kind in errors)."""
    dry = query.get("dryRun")
    fv = (query.get("fieldValidation") or [""])[-1]
    manager = (query.get("fieldManager") or [""])[-1]
    force_raw = query.get("force")
    causes: list[dict[str, str]] = []
    if kind == "PatchOptions":
        if patch_type != "apply":
            if force_raw is not None:
                causes.append(cause("force", "FieldValueForbidden", "Forbidden: may not be specified for "
                                                                    "non-apply patch"))
        elif not manager:
            causes.append(cause("fieldManager", "FieldValueRequired", "Required value: is required for apply patch"))
    if len(manager) > 128:
        causes.append(cause("fieldManager", "FieldValueTooLong", "Too long: may not be more than 128 bytes"))
    causes += _dry_run_causes(dry)
    if fv not in _FIELD_VALIDATION:
        causes.append(_not_supported("fieldValidation", fv, _FIELD_VALIDATION))
    if causes:
        raise APIError.invalid_options(kind, causes)
    force = bool(force_raw) and force_raw[-1].lower() in ("true", "1")
    return WriteOptions(dry_run=bool(dry), field_validation=fv or None, field_manager=manager or None, force=force)


def _query_bool(field: str, raw: str) -> bool:
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise APIError.bad_request(f'strconv.ParseBool: parsing "{raw}": invalid syntax')


def delete_options(body: bytes, query: dict[str, list[str]]) -> dict[str, Any]:
    """``DeleteOptions`` (as a dict) from the body when there is one, else from the query; validated."""
    opts: dict[str, Any] = {}
    if body.strip():
        try:
            parsed = json.loads(body)
        except ValueError as exc:
            raise APIError.bad_request(f"the body of the request could not be decoded: {exc}") from None
        if not isinstance(parsed, dict):
            raise APIError.bad_request("the body of the request could not be decoded: not a DeleteOptions object")
        kind = parsed.get("kind")
        if kind not in (None, "", "DeleteOptions"):
            raise APIError.bad_request(f"decoded object cannot be converted to DeleteOptions (kind {kind})")
        dry = parsed.get("dryRun")
        if dry is not None and not (isinstance(dry, list) and all(isinstance(v, str) for v in dry)):
            raise APIError.bad_request("json: cannot unmarshal dryRun into Go struct field DeleteOptions.dryRun "
                                       "of type []string")
        opts = {k: v for k, v in parsed.items() if k not in ("kind", "apiVersion") and v is not None}
    else:
        if query.get("dryRun") is not None:
            opts["dryRun"] = list(query["dryRun"])
        for name in ("propagationPolicy",):
            if query.get(name):
                opts[name] = query[name][-1]
        if query.get("orphanDependents"):
            opts["orphanDependents"] = _query_bool("orphanDependents", query["orphanDependents"][-1])
        if query.get("gracePeriodSeconds"):
            try:
                opts["gracePeriodSeconds"] = int(query["gracePeriodSeconds"][-1])
            except ValueError:
                raise APIError.bad_request(f'strconv.ParseInt: parsing "{query["gracePeriodSeconds"][-1]}": '
                                           "invalid syntax") from None
    causes: list[dict[str, str]] = []
    policy = opts.get("propagationPolicy")
    if opts.get("orphanDependents") is not None and policy is not None:
        causes.append(cause("propagationPolicy", "FieldValueInvalid", f"Invalid value: {go_repr(policy)}: "
                            "orphanDependents and deletionPropagation cannot be both set"))
    if policy is not None and policy not in ("Foreground", "Background", "Orphan"):
        causes.append(_not_supported("propagationPolicy", policy, ("Foreground", "Background", "Orphan", "nil")))
    causes += _dry_run_causes(opts.get("dryRun"))
    if causes:
        raise APIError.invalid_options("DeleteOptions", causes)
    return opts
