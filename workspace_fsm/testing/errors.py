"""``metav1.Status`` failures as the Kubernetes API server words them."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["APIError", "status_body"]


class APIError(Exception):
    """A request the server answers with a failure ``Status``."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}
        self.list_continue: str | None = None  # a Status's ListMeta.continue (an expired continue token)

    def body(self) -> dict[str, Any]:
        body = status_body(self.code, self.reason, self.message, self.details)
        if self.list_continue:
            body["metadata"] = {"continue": self.list_continue}
        return body

    # ------------------------------------------------------------ constructors

    @staticmethod
    def _details(info: Any, name: str | None, kind: str | None = None) -> dict[str, Any]:
        details: dict[str, Any] = {}
        if name:
            details["name"] = name
        if info is not None and info.group:
            details["group"] = info.group
        if info is not None:
            details["kind"] = kind or info.plural
        return details

    @classmethod
    def not_found(cls, info: Any, name: str) -> APIError:
        return cls(404, "NotFound", f'{info.group_resource} "{name}" not found', cls._details(info, name))

    @classmethod
    def path_not_found(cls) -> APIError:
        return cls(404, "NotFound", "the server could not find the requested resource", {})

    @classmethod
    def already_exists(cls, info: Any, name: str) -> APIError:
        return cls(409, "AlreadyExists", f'{info.group_resource} "{name}" already exists', cls._details(info, name))

    @classmethod
    def conflict(cls, info: Any, name: str, why: str | None = None) -> APIError:
        why = why or "the object has been modified; please apply your changes to the latest version and try again"
        return cls(409, "Conflict", f'Operation cannot be fulfilled on {info.group_resource} "{name}": {why}',
                   cls._details(info, name))

    @classmethod
    def invalid(cls, info: Any, name: str, causes: list[dict[str, str]]) -> APIError:
        parts = [f"{c['field']}: {c['message']}" if c.get("field") else c["message"] for c in causes]
        joined = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
        details = cls._details(info, name, kind=info.kind)
        details["causes"] = causes
        return cls(422, "Invalid", f'{info.group_kind} "{name}" is invalid: {joined}', details)

    @classmethod
    def invalid_options(cls, kind: str, causes: list[dict[str, str]]) -> APIError:
        """422 for bad request options (``CreateOptions``, ``DeleteOptions``, ``ListOptions``...), as the
        handlers answer ``errors.NewInvalid(GroupKind{"meta.k8s.io", kind}, "", errs)``."""
        parts = [f"{c['field']}: {c['message']}" if c.get("field") else c["message"] for c in causes]
        joined = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
        return cls(422, "Invalid", f'{kind}.meta.k8s.io "" is invalid: {joined}',
                   {"group": "meta.k8s.io", "kind": kind, "causes": causes})

    @classmethod
    def bad_request(cls, message: str) -> APIError:
        return cls(400, "BadRequest", message, None)  # errors.NewBadRequest sets no details

    @classmethod
    def forbidden(cls, info: Any, name: str, why: str, causes: list[dict[str, str]] | None = None) -> APIError:
        details = cls._details(info, name)
        if causes:
            details["causes"] = causes
        return cls(403, "Forbidden", f'{info.group_resource} "{name}" is forbidden: {why}', details)

    @classmethod
    def method_not_allowed(cls) -> APIError:
        return cls(405, "MethodNotAllowed", "the server does not allow this method on the requested resource", {})

    @classmethod
    def unsupported_media_type(cls, content_type: str, accepted: list[str]) -> APIError:
        return cls(415, "UnsupportedMediaType",
                   f"the body of the request was in an unknown format - accepted media types include: "
                   f"{', '.join(accepted)}", {})

    @classmethod
    def internal(cls, message: str) -> APIError:
        return cls(500, "InternalError", f"Internal error occurred: {message}", {"causes": [{"message": message}]})

    @classmethod
    def too_many_requests(cls, retry_after: int) -> APIError:
        return cls(429, "TooManyRequests", "Too many requests, please try again later.",
                   {"retryAfterSeconds": retry_after}, headers={"Retry-After": str(retry_after)})

    @classmethod
    def expired(cls, requested: int, oldest: int) -> APIError:
        return cls(410, "Expired", f"too old resource version: {requested} ({oldest})", None)

    @classmethod
    def unprocessable(cls, message: str) -> APIError:
        return cls(422, "Invalid", "the server rejected our request due to an error in our request",
                   {"causes": [{"reason": "UnexpectedServerResponse", "message": message}]})


def status_body(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": message}
    if reason:  # StatusReasonUnknown ("") is omitted, as Go's omitempty does
        body["reason"] = reason
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
