"""A resource as a lifecycle sees it, for lifecycles that need no typed model of their own.

:class:`Resource` keeps the document's ``spec`` as a read-only mapping and parses only what the engine needs
(metadata, status conditions). A lifecycle with a typed model (KAITO's Workspace) passes its own ``parse``;
whatever it returns needs ``metadata`` (:class:`~workspace_fsm.engine.objects.ObjectMeta`), ``status``
(with ``conditions`` and ``condition(type)``), ``problems``, ``key``, ``to_dict`` and ``with_status``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

from workspace_fsm.engine.objects import Condition, ObjectMeta
from workspace_fsm.engine.problems import Problem

__all__ = ["Resource", "Status"]


def _frozen(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def _thawed(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thawed(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thawed(v) for v in value]
    return value


@attrs.frozen
class Status:
    """``status.conditions`` typed, every other status field kept verbatim in ``fields``."""

    conditions: tuple[Condition, ...] = ()
    fields: Mapping[str, Any] = attrs.field(factory=dict)
    _memo: dict[str, Any] = attrs.field(factory=dict, init=False, eq=False, repr=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Status:
        d = d or {}
        conds = tuple(Condition.from_dict(c) for c in d.get("conditions") or () if isinstance(c, Mapping))
        return cls(conds, _frozen({k: v for k, v in d.items() if k != "conditions"}))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _thawed(self.fields)
        if self.conditions:
            out["conditions"] = [c.to_dict() for c in self.conditions]
        return out

    def condition(self, type_: str) -> Condition | None:
        for c in self.conditions:
            if c.type == type_:
                return c
        return None

    def get(self, field: str, default: Any = None) -> Any:
        return self.fields.get(field, default)

    @classmethod
    def projected(cls, previous: Status, conditions: Iterable[Condition], summary: str | None,
                  summary_field: str = "state", extra: Mapping[str, Any] | None = None) -> Status:
        fields = previous.fields
        changes = dict(extra or {})
        if summary is not None:
            changes[summary_field] = summary
        if any(fields.get(k) != v for k, v in changes.items()):
            fields = _frozen({**_thawed(fields), **changes})
        return cls(tuple(conditions), fields)


@attrs.frozen
class Resource:
    """A Kubernetes object: typed metadata and status, the spec as a read-only mapping."""

    api_version: str
    kind: str
    metadata: ObjectMeta
    spec: Mapping[str, Any] = attrs.field(factory=dict)
    status: Status = attrs.field(factory=Status)
    problems: tuple[Problem, ...] = ()
    other: Mapping[str, Any] = attrs.field(factory=dict)  # other top-level fields (data, ...), verbatim

    @property
    def key(self) -> str:
        return self.metadata.key if self.metadata.namespace else self.metadata.name

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def deleting(self) -> bool:
        return self.metadata.deletion_timestamp is not None

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *,
                  validate: Callable[[Mapping[str, Any]], Iterable[Problem]] | None = None) -> Resource:
        """Parse ``doc``; ``validate(doc)`` lists what is wrong with it (the machine then acts on nothing)."""
        if not isinstance(doc, Mapping) or not isinstance(doc.get("metadata"), Mapping):
            raise ValueError("not a Kubernetes object: no metadata")
        meta = ObjectMeta.from_dict(doc["metadata"])
        if not meta.name:
            raise ValueError("not a Kubernetes object: metadata.name is empty")
        spec = doc.get("spec")
        problems: tuple[Problem, ...] = ()
        if spec is not None and not isinstance(spec, Mapping):
            problems = (Problem("spec", "InvalidSpec", f"spec must be an object, not {type(spec).__name__}"),)
            spec = {}
        if validate is not None and not problems:
            problems = tuple(validate(doc))
        status = doc.get("status")
        try:
            parsed_status = Status.from_dict(status if isinstance(status, Mapping) else None)
        except (KeyError, TypeError, ValueError):
            parsed_status = Status()  # a status nobody can read is rebuilt by the machine
        other = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata", "spec", "status")}
        return cls(str(doc.get("apiVersion", "")), str(doc.get("kind", "")), meta, _frozen(spec or {}),
                   parsed_status, problems, _frozen(other))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"apiVersion": self.api_version, "kind": self.kind, "metadata": self.metadata.to_dict()}
        out.update(_thawed(self.other))
        if self.spec:
            out["spec"] = _thawed(self.spec)
        status = self.status.to_dict()
        if status:
            out["status"] = status
        return out

    def with_status(self, status: Status) -> Resource:
        return attrs.evolve(self, status=status)
