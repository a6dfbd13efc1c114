"""What a lifecycle reconciles, creates and reads, and the permissions that follow from it.

controller-runtime's builder is the model: ``For(primary)``, ``Owns(child)`` (a child's events map to its
owner), ``Watches(other, mapping)``. Declared once beside the lifecycle, they drive the adapter's caches
(one shared informer per kind and selector, indexed by owner) and the RBAC the runner needs
(``deploy/rbac.yaml`` is generated from them and a test keeps the two equal).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from workspace_fsm.engine.declare import Lifecycle

__all__ = ["Kind", "Owns", "Watches", "by_labels", "by_owner_reference", "permissions"]


@attrs.frozen
class Kind:
    """A Kubernetes resource kind as the API serves it."""

    api_version: str  # "kaito.sh/v1beta1", "apps/v1", "v1"
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


OwnerOf = Callable[[Mapping[str, Any]], "str | None"]


def by_owner_reference(kind: str) -> OwnerOf:
    """The child's controller ownerReference of ``kind`` names its owner (same namespace)."""

    def owner(obj: Mapping[str, Any]) -> str | None:
        meta = obj.get("metadata") or {}
        for ref in meta.get("ownerReferences") or ():
            if isinstance(ref, dict) and ref.get("kind") == kind and ref.get("controller"):
                return f"{meta.get('namespace', '')}/{ref.get('name', '')}"
        return None

    owner.__name__ = f"owner_reference_{kind.lower()}"
    return owner


def by_labels(name_label: str, namespace_label: str) -> OwnerOf:
    """The owner's name and namespace are two labels on the child (cluster-scoped children, e.g. NodeClaims)."""

    def owner(obj: Mapping[str, Any]) -> str | None:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        name, ns = labels.get(name_label), labels.get(namespace_label)
        return f"{ns}/{name}" if name and ns else None

    owner.__name__ = f"labels_{name_label}"
    return owner


@attrs.frozen
class Owns:
    """A kind the lifecycle creates: watched (children's events wake their owner), indexed by owner."""

    kind: Kind
    owner: OwnerOf
    verbs: frozenset[str] = frozenset({"list", "watch", "get", "create", "delete"})
    label_selector: str | None = None  # narrows the cache (and the watch) to the lifecycle's children
    wakes_owner: bool = True


@attrs.frozen
class Watches:
    """A kind the lifecycle reads but does not create (e.g. Nodes), optionally mapped to owners."""

    kind: Kind
    owner: OwnerOf | None = None
    verbs: frozenset[str] = frozenset({"list", "watch"})
    label_selector: str | None = None


def permissions(lc: Lifecycle[Any]) -> dict[tuple[str, str], frozenset[str]]:
    """(API group, resource) -> verbs: the primary (list, watch, patch for the finalizer, update of its
    status), what it owns and watches, and Events."""
    out: dict[tuple[str, str], set[str]] = {}

    def add(group: str, resource: str, verbs: frozenset[str] | set[str]) -> None:
        out.setdefault((group, resource), set()).update(verbs)

    r = lc.resource
    add(r.group, r.plural, {"list", "watch", "patch"})
    add(r.group, r.plural + "/status", {"update"})
    for o in lc.owns:
        add(o.kind.group, o.kind.plural, o.verbs)
    for w in lc.watches:
        add(w.kind.group, w.kind.plural, w.verbs)
    add("", "events", {"create"})
    return {k: frozenset(v) for k, v in out.items()}
