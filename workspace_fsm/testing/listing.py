"""Lists as the real API server serves them: ``limit``/``continue`` pagination, ``resourceVersion`` and
``resourceVersionMatch`` semantics, and the 400/410/504 answers that go with them.

Sources (kubernetes/kubernetes, ``staging/src/k8s.io``):

- ``apiserver/pkg/storage/continue.go``: a continue token is base64url (unpadded) of the JSON
  ``{"v":"meta.k8s.io/v1","rv":<revision>,"start":"<next key relative to the list prefix>"}``; a token that
  does not decode is ``400 BadRequest "invalid continue token: continue key is not valid..."``.
- ``apiserver/pkg/storage/etcd3/store.go`` (``GetList``): pages are read from one consistent snapshot, the
  revision of the first page; ``remainingItemCount`` is only set when no selector filters the list; a
  compacted snapshot answers ``410 Expired`` "The provided continue parameter is too old ..." carrying a
  fresh token (``rv: -1``: continue at the newest revision); ``resourceVersion`` with ``continue`` is 400.
- ``apimachinery/pkg/apis/meta/internalversion/validation``: ``ValidateListOptions`` (422 ``ListOptions``).
- ``apiserver/pkg/storage/cacher``: a ``resourceVersion`` newer than the cache waits (3 s), then
  ``504 Timeout "Too large resource version"``; ``resourceVersion=0`` is served from the cache, which
  ignores ``limit``.
- API concepts, "Semantics for get and list":
  https://kubernetes.io/docs/reference/using-api/api-concepts/#semantics-for-get-and-list
"""

from __future__ import annotations

import base64
import binascii
import json
import posixpath
from dataclasses import dataclass
from typing import Any

from workspace_fsm.testing.errors import APIError
from workspace_fsm.testing.meta import cause

__all__ = ["ListRequest", "parse_list_request", "encode_continue", "decode_continue", "storage_key",
           "EXPIRED_LIST", "INCONSISTENT_CONTINUE", "too_large_rv"]

EXPIRED_LIST = "The resourceVersion for the provided list is too old."
INCONSISTENT_CONTINUE = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new list "
    "without the continue parameter, or use the continue token in this response to retrieve the remainder of the "
    "results. Continuing with the provided token results in an inconsistent list - objects that were created, "
    "modified, or deleted between the time the first chunk was returned and now may show up in the list.")


def storage_key(namespace: str, name: str) -> str:
    """An object's key below its resource's storage prefix (``ns/name``, or ``name`` when cluster-scoped)."""
    return f"{namespace}/{name}" if namespace else name


def encode_continue(start: str, revision: int) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": revision, "start": start}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _invalid(detail: str) -> APIError:
    return APIError.bad_request(f"invalid continue token: continue key is not valid{detail}")


def decode_continue(token: str) -> tuple[str, int]:
    """(start key, revision) of a continue token, or 400 as the real server words it."""
    if any(c in token for c in "+/="):  # not the unpadded URL-safe alphabet
        pos = min(i for i, c in enumerate(token) if c in "+/=")
        raise _invalid(f": illegal base64 data at input byte {pos}")
    try:
        data = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise _invalid(f": illegal base64 data at input byte {len(token) - len(token) % 4}") from None
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid(f": {exc}") from None
    if not isinstance(doc, dict):
        raise _invalid(": json: cannot unmarshal into Go value of type storage.continueToken")
    if doc.get("v") != "meta.k8s.io/v1":
        raise _invalid(f": server does not recognize this encoded version {doc.get('v') or ''}".rstrip())
    rv, start = doc.get("rv"), doc.get("start")
    if not isinstance(rv, int) or isinstance(rv, bool) or rv == 0:
        raise _invalid(": incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
    if not isinstance(start, str) or not start:
        raise _invalid(": encoded start key empty (version meta.k8s.io/v1)")
    key = start if start.startswith("/") else "/" + start
    if posixpath.normpath(key) != key and not (key.endswith("\x00") and posixpath.normpath(key[:-1]) == key[:-1]):
        raise _invalid(f": {start}")
    return key[1:], rv


def too_large_rv(requested: int, current: int) -> APIError:
    """The cacher's answer when a requested resourceVersion is still in the future after its wait."""
    return APIError(504, "Timeout", f"Timeout: Too large resource version: {requested}, current: {current}",
                    {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                     "retryAfterSeconds": 1})


@dataclass(frozen=True)
class ListRequest:
    limit: int  # 0: no limit
    start: str | None  # the first key to return (from a continue token)
    revision: int | None  # the snapshot to read (None: the newest)
    exact: bool  # the snapshot must be exactly ``revision`` (Exact, or a continue token)
    not_older_than: int | None  # wait until the store has reached this revision
    from_continue: bool


def _parse_int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise APIError.bad_request(f'strconv.ParseInt: parsing "{raw}": invalid syntax') from None


def parse_rv(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise APIError.bad_request(f'resourceVersion: Invalid value: "{raw}": must be a number')
    return value


def parse_list_request(query: dict[str, str], *, watch: bool = False) -> ListRequest:
    rv = query.get("resourceVersion", "")
    match = query.get("resourceVersionMatch", "")
    token = query.get("continue", "")
    limit = _parse_int("limit", query["limit"]) if query.get("limit") else 0
    if not watch:
        causes: list[dict[str, Any]] = []
        if match:
            if not rv:
                causes.append(cause("resourceVersionMatch", "FieldValueForbidden", "Forbidden: resourceVersionMatch "
                                    "is forbidden unless resourceVersion is provided"))
            if token:
                causes.append(cause("resourceVersionMatch", "FieldValueForbidden", "Forbidden: resourceVersionMatch "
                                    "is forbidden when continue is provided"))
            if match not in ("Exact", "NotOlderThan"):
                causes.append(cause("resourceVersionMatch", "FieldValueNotSupported",
                                    f'Unsupported value: "{match}": supported values: "Exact", "NotOlderThan", ""'))
            if match == "Exact" and rv == "0":
                causes.append(cause("resourceVersionMatch", "FieldValueForbidden", 'Forbidden: resourceVersionMatch '
                                    '"exact" is forbidden for resourceVersion "0"'))
        if query.get("sendInitialEvents"):
            causes.append(cause("sendInitialEvents", "FieldValueForbidden",
                                "Forbidden: sendInitialEvents is forbidden for list"))
        if causes:
            raise APIError.invalid_options("ListOptions", causes)
    if token:
        if rv not in ("", "0"):
            raise APIError.bad_request("specifying resource version is not allowed when using continue")
        start, revision = decode_continue(token)
        return ListRequest(limit=max(limit, 0), start=start, revision=None if revision == -1 else revision,
                           exact=revision != -1, not_older_than=None, from_continue=True)
    if rv == "":
        return ListRequest(max(limit, 0), None, None, False, None, False)
    value = parse_rv(rv)
    if value == 0:  # "Any": the watch cache, which ignores limit
        return ListRequest(0, None, None, False, None, False)
    if match == "Exact" or (not match and limit > 0):
        return ListRequest(max(limit, 0), None, value, True, value, False)
    return ListRequest(max(limit, 0), None, None, False, value, False)
