"""Kubernetes object basics every lifecycle shares: times as the API writes them, ``ObjectMeta`` and
``metav1.Condition`` as attrs values.

Times are timezone-aware UTC ``datetime`` values. Anything persisted has whole-second precision, as
``metav1.Time`` has, so that a decision rebuilt from the persisted object is the same decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, overload

import attrs

__all__ = ["Condition", "ObjectMeta", "format_time", "parse_time", "whole_seconds"]


# --------------------------------------------------------------------------- time helpers


@overload
def parse_time(value: None) -> None: ...


@overload
def parse_time(value: str | datetime) -> datetime: ...


def parse_time(value: Any) -> datetime | None:
    """RFC 3339 as the API server writes it ("2026-01-02T03:04:05Z"); None for None."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    text = str(value)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def format_time(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def whole_seconds(value: datetime) -> datetime:
    return value.replace(microsecond=0)


def _opt(d: dict[str, Any], key: str, value: Any) -> None:
    """Set ``d[key]`` only when the value was present in the source (round-trip exactness)."""
    if value is not None:
        d[key] = value


@attrs.frozen
class ObjectMeta:
    name: str
    namespace: str = "default"
    uid: str = ""
    generation: int = 0
    resource_version: str = ""
    labels: Mapping[str, str] = attrs.field(factory=dict)
    annotations: Mapping[str, str] = attrs.field(factory=dict)
    finalizers: tuple[str, ...] = ()
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None
    # Everything else the API server keeps (ownerReferences, managedFields, ...), verbatim.
    other: Mapping[str, Any] = attrs.field(factory=dict)
    # Which optional keys were present, so that to_dict gives back the same document.
    present: frozenset[str] = frozenset()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ObjectMeta:
        known = {"name", "namespace", "uid", "generation", "resourceVersion", "labels", "annotations",
                 "finalizers", "creationTimestamp", "deletionTimestamp"}
        return cls(
            name=str(d.get("name", "")),
            namespace=str(d.get("namespace") or "default"),
            uid=str(d.get("uid", "")),
            generation=int(d.get("generation") or 0),
            resource_version=str(d.get("resourceVersion", "")),
            labels=dict(d.get("labels") or {}),
            annotations=dict(d.get("annotations") or {}),
            finalizers=tuple(d.get("finalizers") or ()),
            creation_timestamp=parse_time(d.get("creationTimestamp")),
            deletion_timestamp=parse_time(d.get("deletionTimestamp")),
            other={k: v for k, v in d.items() if k not in known},
            present=frozenset(k for k in known if k in d),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        p = self.present
        if "namespace" in p or self.namespace != "default":
            out["namespace"] = self.namespace
        if self.uid or "uid" in p:
            out["uid"] = self.uid
        if self.generation or "generation" in p:
            out["generation"] = self.generation
        if self.resource_version or "resourceVersion" in p:
            out["resourceVersion"] = self.resource_version
        if self.labels or "labels" in p:
            out["labels"] = dict(self.labels)
        if self.annotations or "annotations" in p:
            out["annotations"] = dict(self.annotations)
        if self.finalizers or "finalizers" in p:
            out["finalizers"] = list(self.finalizers)
        if self.creation_timestamp is not None:
            out["creationTimestamp"] = format_time(self.creation_timestamp)
        if self.deletion_timestamp is not None:
            out["deletionTimestamp"] = format_time(self.deletion_timestamp)
        out.update(self.other)
        return out


@attrs.frozen
class Condition:
    """metav1.Condition. ``last_transition_time`` changes only when ``status`` changes."""

    type: str
    status: str
    reason: str
    message: str
    last_transition_time: datetime
    observed_generation: int | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Condition:
        return cls(
            type=d["type"], status=d["status"], reason=d["reason"], message=d.get("message", ""),
            last_transition_time=parse_time(d["lastTransitionTime"]),
            observed_generation=d.get("observedGeneration"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type, "status": self.status, "reason": self.reason, "message": self.message,
            "lastTransitionTime": format_time(self.last_transition_time),
        }
        _opt(out, "observedGeneration", self.observed_generation)
        return out
