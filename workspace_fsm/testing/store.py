"""The test API server's storage: objects, revisions, the watch history and garbage collection.

Everything the server promises about objects lives here, independent of HTTP: create/update/
patch/delete with the Kubernetes rules (resourceVersion preconditions, generation, the status
subresource split, finalizers and deletionTimestamp, CRD structural schemas), a bounded history of
watch events keyed by a global revision, and a garbage collector thread (ownerReferences with the
Background, Foreground and Orphan policies, namespace termination).

Stored objects are never mutated once stored: every write builds a new dict, so events and
readers can share them.
"""

from __future__ import annotations

import copy
import datetime
import json
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from workspace_fsm.engine.schema import apply_defaults, prune, validate
from workspace_fsm.testing import ssa
from workspace_fsm.testing.builtins import admit_builtin
from workspace_fsm.testing.cel import cel_causes
from workspace_fsm.testing.errors import APIError
from workspace_fsm.testing.meta import cause, schema_causes, validate_metadata
from workspace_fsm.testing.patch import PatchError, PatchFormatError, json_patch, merge_patch, strategic_merge_patch
from workspace_fsm.testing.resources import CRDError, Registry, ResourceInfo, builtin_resources, resource_from_crd

__all__ = ["Store", "Event", "now_rfc3339"]

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects

CRD_KEY = ("apiextensions.k8s.io", "customresourcedefinitions")
NS_KEY = ("", "namespaces")
PROTECTED_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})
GC_FINALIZERS = ("orphan", "foregroundDeletion")

_SERVER_META = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation",
                "selfLink")

PATCH_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
}


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Event:
    revision: int
    resource: tuple[str, str]  # (group, plural)
    type: str  # ADDED | MODIFIED | DELETED
    object: dict[str, Any]
    previous: dict[str, Any] | None
    at: float = field(default_factory=time.monotonic, compare=False)  # when it happened (watch lag faults)


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, dict) else {}


def _key_of(obj: dict[str, Any]) -> Key:
    m = _meta(obj)
    return (m.get("namespace") or "", m.get("name") or "")


def _positive_rv(value: Any) -> bool:
    """What the storage versioner reads as a set resourceVersion (a number above 0; others are ignored)."""
    try:
        return int(str(value)) > 0
    except ValueError:
        return False


def _storage_order(item: tuple[Key, Any]) -> str:
    """etcd keeps objects under ``<prefix>/<namespace>/<name>`` and lists them in byte order of that key."""
    ns, name = item[0]
    return f"{ns}/{name}" if ns else name


def _without_times(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    managed = [{k: v for k, v in e.items() if k != "time"} for e in meta.get("managedFields") or []]
    return {**obj, "metadata": {**meta, "managedFields": managed}}


def _strip(obj: dict[str, Any], *, status: bool) -> dict[str, Any]:
    out = {k: v for k, v in obj.items() if k not in ("metadata", "apiVersion", "kind")}
    if status:
        out.pop("status", None)
    return out


class Store:
    """Objects of every served resource, with a global revision and a bounded event history."""

    def __init__(self, *, history: int = 1000, seed: int | None = None, gc: bool = True,
                 gc_delay: float = 0.02, namespaces: Iterable[str] = ("default", "kube-system", "kube-public",
                                                                      "kube-node-lease")) -> None:
        self.lock = threading.RLock()
        self._ctx = threading.local()  # the field manager of the API write this thread is serving
        self.cond = threading.Condition(self.lock)
        self.registry = Registry()
        for info in builtin_resources():
            self.registry.add(info)
        self.rng = random.Random(seed)
        self.objects: dict[tuple[str, str], dict[Key, dict[str, Any]]] = {}
        self.uids: dict[str, tuple[tuple[str, str], Key]] = {}
        self.revision = self.rng.randint(1000, 9000)
        self.history = max(1, int(history))
        self.events: deque[Event] = deque()
        self.floor = self.revision  # a watch can start from any revision >= floor
        self.closed = False
        # garbage collector
        self.gc_enabled = gc
        self.gc_delay = gc_delay
        self._gc_dirty = False
        self._gc_busy = False
        self._gc_thread: threading.Thread | None = None
        self.on_change: list[Callable[[Event], None]] = []
        for ns in namespaces:
            self.create(self.registry.get(*NS_KEY), "v1", "", {"metadata": {"name": ns}})  # type: ignore[arg-type]

    # ------------------------------------------------------------------ field managers

    def set_manager(self, manager: str | None, force: bool = False) -> None:
        """The field manager (and apply's ``force``) of the writes this thread makes next; None for internal
        writes, which leave managedFields as they are."""
        self._ctx.manager = manager
        self._ctx.force = force

    def _manager(self) -> str | None:
        return getattr(self._ctx, "manager", None)

    def _ssa_schema(self, info: ResourceInfo, version: str) -> ssa.Schema:
        return ssa.Schema(info.schemas.get(version) if info.custom else None)

    # ------------------------------------------------------------------ revisions and events

    def _next_revision(self) -> int:
        # A global, increasing revision that never moves by 1: clients must not do arithmetic on it.
        self.revision += self.rng.randint(2, 9)
        return self.revision

    def _record(self, event: Event) -> None:
        self.events.append(event)
        while len(self.events) > self.history:
            self.floor = self.events.popleft().revision
        self._gc_dirty = True
        self.cond.notify_all()
        for cb in list(self.on_change):
            try:
                cb(event)
            except Exception:  # pragma: no cover - listeners must not break writes
                pass

    def compact(self) -> int:
        """Forget every event so far: a watch from any earlier resourceVersion gets 410 Gone."""
        with self.lock:
            self.events.clear()
            self.floor = self.revision
            self.cond.notify_all()
            return self.revision

    def events_since(self, revision: int) -> list[Event] | None:
        """Events after ``revision``, or None when some of them are no longer kept."""
        with self.lock:
            if revision < self.floor:
                return None
            out: list[Event] = []
            for ev in reversed(self.events):
                if ev.revision <= revision:
                    break
                out.append(ev)
            out.reverse()
            return out

    # ------------------------------------------------------------------ storage primitives

    def _bucket(self, info: ResourceInfo) -> dict[Key, dict[str, Any]]:
        return self.objects.setdefault(info.key(), {})

    def _put(self, info: ResourceInfo, obj: dict[str, Any], etype: str, prev: dict[str, Any] | None) -> dict:
        rev = self._next_revision()
        obj["metadata"]["resourceVersion"] = str(rev)
        key = _key_of(obj)
        self._bucket(info)[key] = obj
        self.uids[obj["metadata"]["uid"]] = (info.key(), key)
        self._record(Event(rev, info.key(), etype, obj, prev))
        return obj

    def _remove(self, info: ResourceInfo, final: dict[str, Any], prev: dict[str, Any]) -> dict:
        """Remove an object for good (one DELETED event)."""
        if info.key() == CRD_KEY:
            self._unregister_crd(final)  # its custom resources go first
        rev = self._next_revision()
        final["metadata"]["resourceVersion"] = str(rev)
        key = _key_of(final)
        self._bucket(info).pop(key, None)
        self.uids.pop(final["metadata"].get("uid", ""), None)
        self._record(Event(rev, info.key(), "DELETED", final, prev))
        return final

    def get_stored(self, info: ResourceInfo, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get(info.key(), {}).get((namespace if info.namespaced else "", name))

    def render(self, info: ResourceInfo, obj: dict[str, Any], version: str) -> dict[str, Any]:
        """A deep copy of a stored object as the given version shows it."""
        out = copy.deepcopy(obj)
        out["apiVersion"] = info.api_version(version)
        out["kind"] = info.kind
        return out

    def list(self, info: ResourceInfo, namespace: str | None,
             match: Callable[[dict[str, Any]], bool] | None = None) -> tuple[list[dict[str, Any]], int]:
        """Stored objects (not copies) in storage-key order, and the revision they are current at."""
        with self.lock:
            bucket = self.objects.get(info.key(), {})
            items = [o for k, o in sorted(bucket.items(), key=_storage_order)
                     if (not namespace or k[0] == namespace) and (match is None or match(o))]
            return items, self.revision

    def snapshot_at(self, info: ResourceInfo, revision: int) -> dict[Key, dict[str, Any]] | None:
        """The resource's objects as they were at ``revision`` (rolled back through the event history),
        or None when that revision is older than the history kept (compacted). Lock held."""
        if revision < self.floor:
            return None
        bucket = dict(self.objects.get(info.key(), {}))
        rkey = info.key()
        for ev in reversed(self.events):
            if ev.revision <= revision:
                break
            if ev.resource != rkey:
                continue
            key = _key_of(ev.object)
            if ev.previous is None:
                bucket.pop(key, None)
            else:
                bucket[key] = ev.previous
        return bucket

    def wait_for_revision(self, revision: int, timeout: float) -> bool:
        """Block until the store's revision reaches ``revision`` (True) or ``timeout`` passes (False)."""
        end = time.monotonic() + timeout
        with self.cond:
            while self.revision < revision:
                left = end - time.monotonic()
                if left <= 0 or self.closed:
                    return False
                self.cond.wait(timeout=min(left, 0.1))
            return True

    # ------------------------------------------------------------------ admission helpers

    def _check_type(self, info: ResourceInfo, version: str, obj: Any) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise APIError.bad_request(f"the body of the request must be a JSON object, not {type(obj).__name__}")
        api_version = obj.get("apiVersion")
        kind = obj.get("kind")
        expected = info.api_version(version)
        for field_name, value in (("apiVersion", api_version), ("kind", kind)):
            if value is not None and not isinstance(value, str):  # what the API server's decoder says
                raise APIError.bad_request(f"Object '{field_name}' is invalid: json: cannot unmarshal "
                                           f"{type(value).__name__} into Go struct field of type string")
        if info.custom:
            if not kind:
                raise APIError.bad_request(f"Object 'Kind' is missing in '{json.dumps(obj)[:200]}'")
            if not api_version:
                raise APIError.bad_request(f"Object 'apiVersion' is missing in '{json.dumps(obj)[:200]}'")
        if kind and kind != info.kind:
            raise APIError.bad_request(f"the kind in the data ({kind}) does not match the expected kind "
                                       f"({info.kind})")
        if api_version and api_version != expected:
            group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
            if group != info.group or api_version.rsplit("/", 1)[-1] not in info.versions:
                raise APIError.bad_request(f"the API version in the data ({api_version}) does not match the "
                                           f"expected API version ({expected})")
        meta = obj.get("metadata")
        if meta is None:
            obj["metadata"] = {}
        elif not isinstance(meta, dict):
            raise APIError.bad_request("metadata must be an object")
        obj["apiVersion"] = info.api_version(info.storage_version)
        obj["kind"] = info.kind
        return obj

    def _schema_admit(self, info: ResourceInfo, version: str, obj: dict[str, Any], name: str,
                      field_validation: str | None, warnings: list[str]) -> tuple[dict[str, Any], list[dict]]:
        """Prune, default and validate a custom resource; returns the object and schema causes."""
        schema = info.schemas.get(version)
        if not info.custom or schema is None:
            return obj, []
        pruned, removed = prune(obj, schema)
        if removed:
            if field_validation == "Strict":
                listed = ", ".join(f'unknown field "{p}"' for p in removed)
                raise APIError.bad_request(f'{info.kind} in version "{version}" cannot be handled as a '
                                           f"{info.kind}: strict decoding error: {listed}")
            if field_validation == "Warn":
                warnings.extend(f'unknown field "{p}"' for p in removed)
        defaulted = apply_defaults(pruned, schema)
        if not isinstance(defaulted.get("metadata"), dict):
            defaulted["metadata"] = {}
        return defaulted, schema_causes(defaulted, validate(defaulted, schema))

    def _namespace_admit(self, info: ResourceInfo, namespace: str, name: str) -> None:
        if not info.namespaced:
            return
        ns_info = self.registry.get(*NS_KEY)
        ns = self.objects.get(NS_KEY, {}).get(("", namespace))
        if ns is None:
            raise APIError.not_found(ns_info, namespace)
        if _meta(ns).get("deletionTimestamp"):
            why = f"unable to create new content in namespace {namespace} because it is being terminated"
            raise APIError.forbidden(info, name, why, [{"reason": "NamespaceTerminating", "message": why,
                                                        "field": "metadata.namespace"}])

    def _generate_name(self, info: ResourceInfo, namespace: str, prefix: str) -> str:
        alphabet = "bcdfghjklmnpqrstvwxz2456789"
        for _ in range(100):
            name = prefix + "".join(self.rng.choice(alphabet) for _ in range(5))
            if self.get_stored(info, namespace, name) is None:
                return name
        raise APIError.already_exists(info, prefix)

    # ------------------------------------------------------------------ create

    def create(self, info: ResourceInfo, version: str, namespace: str, body: Any, *, dry_run: bool = False,
               field_validation: str | None = None, warnings: list[str] | None = None,
               from_api: bool = False, managed: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Create an object. ``from_api``: a POST, which may not carry a resourceVersion (see below)."""
        warnings = warnings if warnings is not None else []
        obj = self._check_type(info, version, copy.deepcopy(body))
        meta = obj["metadata"]
        given_rv = meta.get("resourceVersion")
        if info.namespaced:
            body_ns = meta.get("namespace")
            if body_ns and body_ns != namespace:
                raise APIError.bad_request("the namespace of the provided object does not match the namespace "
                                           "sent on the request")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        with self.lock:
            name = meta.get("name") or ""
            self._namespace_admit(info, namespace, name or meta.get("generateName") or "")
            if not name and isinstance(meta.get("generateName"), str) and meta["generateName"]:
                name = meta["name"] = self._generate_name(info, namespace, meta["generateName"])
            for k in (*_SERVER_META, "resourceVersion", "managedFields"):
                meta.pop(k, None)
            if info.has_status(version) and not info.status_on_create:
                obj.pop("status", None)
            if info.create_status is not None:
                obj["status"] = copy.deepcopy(info.create_status)
            obj, causes = self._schema_admit(info, version, obj, name, field_validation, warnings)
            # the uid is chosen before validation: a Job's generated selector and labels carry it
            uid = obj["metadata"]["uid"] = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
            causes = admit_builtin(info.key(), obj, None, store=self) + causes
            if info.custom and not causes:
                causes = cel_causes(info.schemas.get(version), obj, None)
            meta = obj["metadata"]
            causes = validate_metadata(meta, info.name_rule, creating=True) + causes
            crd_info = None
            if info.key() == CRD_KEY and not causes:
                crd_info, crd_causes = self._check_crd(obj)
                causes += crd_causes
            if causes:
                raise APIError.invalid(info, name, causes)
            if from_api and not dry_run and _positive_rv(given_rv):
                # etcd3 store.Create refuses it with storage.ErrResourceVersionSetOnCreate, a plain error the
                # handler turns into a 500 with no reason (ErrorToAPIStatus); the dry-run storage skips
                # that check, and validation comes first.
                raise APIError(500, "", "resourceVersion should not be set on objects to be created", None)
            if self.get_stored(info, namespace, name) is not None:
                raise APIError.already_exists(info, name)
            meta["uid"] = uid
            meta["creationTimestamp"] = now_rfc3339()
            meta["generation"] = 1
            if managed is not None:
                if managed:
                    meta["managedFields"] = managed
            elif self._manager():
                ssa.record_update(None, obj, self._manager() or "", info.api_version(version),
                                  self._ssa_schema(info, version), None, info.has_status(version))
            if info.key() == NS_KEY:
                meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
                obj["spec"] = {"finalizers": ["kubernetes"]}
            if crd_info is not None:
                obj["status"] = self._crd_status(obj, crd_info)
            if dry_run:
                return self.render(info, obj, version)
            stored = self._put(info, obj, "ADDED", None)
            if crd_info is not None:
                self.registry.add(crd_info)
            return self.render(info, stored, version)

    # ------------------------------------------------------------------ update / patch

    def update(self, info: ResourceInfo, version: str, namespace: str, name: str, body: Any, *,
               subresource: str | None = None, dry_run: bool = False, field_validation: str | None = None,
               warnings: list[str] | None = None) -> dict[str, Any]:
        warnings = warnings if warnings is not None else []
        obj = self._check_type(info, version, copy.deepcopy(body))
        meta = obj["metadata"]
        if meta.get("name") and meta["name"] != name:
            raise APIError.bad_request(f"the name of the object ({meta['name']}) does not match the name on "
                                       f"the URL ({name})")
        if info.namespaced and meta.get("namespace") and meta["namespace"] != namespace:
            raise APIError.bad_request("the namespace of the provided object does not match the namespace "
                                       "sent on the request")
        with self.lock:
            old = self.get_stored(info, namespace, name)
            if old is None:
                raise APIError.not_found(info, name)
            if meta.get("uid") and meta["uid"] != old["metadata"]["uid"]:
                # rest.DefaultUpdatedObjectInfo turns a PUT body's uid into a storage precondition; a failed
                # one is storage.NewInvalidObjError, which InterpretUpdateError makes a 409 Conflict.
                raise APIError.conflict(info, name, f"Precondition failed: UID in precondition: {meta['uid']}, "
                                                    f"UID in object meta: {old['metadata']['uid']}")
            rv = meta.get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise APIError.conflict(info, name)
            return self._write(info, version, old, obj, subresource=subresource, dry_run=dry_run,
                               field_validation=field_validation, warnings=warnings)

    def patch(self, info: ResourceInfo, version: str, namespace: str, name: str, patch_type: str, patch: Any, *,
              subresource: str | None = None, dry_run: bool = False, field_validation: str | None = None,
              warnings: list[str] | None = None) -> tuple[dict[str, Any], bool]:
        """Apply a patch; returns (object, created) — created only for an apply patch on a new object."""
        warnings = warnings if warnings is not None else []
        if patch_type == "strategic" and info.custom:
            raise APIError.unsupported_media_type("application/strategic-merge-patch+json", [
                "application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"])
        with self.lock:
            old = self.get_stored(info, namespace, name)
            if old is None:
                if patch_type == "apply" and subresource is None:
                    if not isinstance(patch, dict):
                        raise APIError.bad_request("an apply patch must be an object")
                    body = copy.deepcopy(patch)
                    body.setdefault("metadata", {})
                    if isinstance(body["metadata"], dict):
                        if body["metadata"].get("name", name) != name:
                            raise APIError.bad_request("the name of the object does not match the name on the URL")
                        body["metadata"]["name"] = name
                    applied = ssa.apply(None, body, self._manager() or "", info.api_version(version),
                                        self._ssa_schema(info, version), force=bool(getattr(self._ctx, "force", False)),
                                        subresource=None, has_status=info.has_status(version))
                    return self.create(info, version, namespace, body, dry_run=dry_run,
                                       field_validation=field_validation, warnings=warnings,
                                       managed=applied["metadata"].get("managedFields", [])), True
                raise APIError.not_found(info, name)
            current = self.render(info, old, version)
            try:
                if patch_type == "merge":
                    if not isinstance(patch, dict):
                        raise APIError.bad_request("a merge patch must be a JSON object")
                    patched = merge_patch(current, patch)
                elif patch_type == "json":
                    patched = json_patch(current, patch)
                elif patch_type == "apply":
                    if not isinstance(patch, dict):
                        raise APIError.bad_request("an apply patch must be an object")
                    patched = ssa.apply(current, patch, self._manager() or "", info.api_version(version),
                                        self._ssa_schema(info, version),
                                        force=bool(getattr(self._ctx, "force", False)), subresource=subresource,
                                        has_status=info.has_status(version))
                elif patch_type == "strategic":
                    if not isinstance(patch, dict):
                        raise APIError.bad_request("a strategic merge patch must be a JSON object")
                    patched = merge_patch(current, patch) if info.custom else strategic_merge_patch(current, patch)
                else:  # pragma: no cover - the server maps content types first
                    raise APIError.unsupported_media_type(patch_type, list(PATCH_TYPES))
            except PatchFormatError as exc:
                raise APIError.bad_request(str(exc)) from None
            except PatchError as exc:
                raise APIError.unprocessable(str(exc)) from None
            if not isinstance(patched, dict):
                raise APIError.unprocessable("the patched document is not an object")
            obj = self._check_type(info, version, patched)
            meta = obj["metadata"]
            if meta.get("name") != name:
                raise APIError.bad_request(f"the name of the object ({meta.get('name')}) does not match the name "
                                           f"on the URL ({name})")
            old_meta = old["metadata"]
            if meta.get("uid") and meta["uid"] != old_meta["uid"]:
                # A patch has no uid precondition (its UpdatedObjectInfo has no object); the uid is caught by
                # ValidateObjectMetaUpdate as an immutable field.
                raise APIError.invalid(info, name, [cause("metadata.uid", "FieldValueInvalid",
                                                          f'Invalid value: "{meta["uid"]}": field is immutable')])
            if meta.get("resourceVersion") and meta["resourceVersion"] != old_meta["resourceVersion"]:
                raise APIError.conflict(info, name)
            managed = obj["metadata"].get("managedFields", []) if patch_type == "apply" else None
            result = self._write(info, version, old, obj, subresource=subresource, dry_run=dry_run,
                                 field_validation=field_validation, warnings=warnings, managed=managed)
            return result, False

    def _write(self, info: ResourceInfo, version: str, old: dict[str, Any], new: dict[str, Any], *,
               subresource: str | None, dry_run: bool, field_validation: str | None,
               warnings: list[str], internal: bool = False,
               managed: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The update path shared by PUT, PATCH and the garbage collector (lock held). ``managed``: the
        managedFields an apply computed."""
        old_meta = old["metadata"]
        given_managed = (new.get("metadata") or {}).get("managedFields") if subresource != "status" else None
        name = old_meta["name"]
        if subresource == "status":
            result = copy.deepcopy(old)
            if "status" in new:
                result["status"] = copy.deepcopy(new["status"])
            else:
                result.pop("status", None)
            new = result
        else:
            meta = new["metadata"]
            for k in _SERVER_META:
                if k in old_meta:
                    meta[k] = copy.deepcopy(old_meta[k])
                else:
                    meta.pop(k, None)
            meta.pop("managedFields", None)
            if "managedFields" in old_meta:
                meta["managedFields"] = copy.deepcopy(old_meta["managedFields"])
            meta["name"] = name
            if info.namespaced:
                meta["namespace"] = old_meta["namespace"]
            else:
                meta.pop("namespace", None)
            if info.has_status(version) and not internal:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            if info.key() == NS_KEY:
                new["spec"] = copy.deepcopy(old.get("spec", {}))
        new["apiVersion"] = old["apiVersion"]
        new["kind"] = info.kind
        new, causes = self._schema_admit(info, version, new, name, field_validation, warnings)
        if not internal:
            causes = admit_builtin(info.key(), new, old, store=self, subresource=subresource) + causes
            if info.custom and not causes:
                causes = cel_causes(info.schemas.get(version), new, old)
        meta = new["metadata"]
        causes = validate_metadata(meta, info.name_rule, creating=False, old_meta=old_meta) + causes
        crd_info = None
        if info.key() == CRD_KEY and not causes:
            crd_info, crd_causes = self._check_crd(new)
            causes += crd_causes
        if causes:
            raise APIError.invalid(info, name, causes)
        if subresource != "status":
            if _strip(new, status=info.has_status(version)) != _strip(old, status=info.has_status(version)):
                meta["generation"] = int(old_meta.get("generation") or 0) + 1
        if crd_info is not None:
            new["status"] = self._crd_status(new, crd_info)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if not internal:
            if managed is not None:
                meta.pop("managedFields", None)
                if managed:
                    meta["managedFields"] = managed
            elif isinstance(given_managed, list) and given_managed and given_managed != old_meta.get("managedFields"):
                meta["managedFields"] = given_managed  # a client may set managedFields outright
            elif self._manager():
                args = (self._manager() or "", info.api_version(version), self._ssa_schema(info, version),
                        subresource, info.has_status(version))
                if given_managed == [] and old_meta.get("managedFields"):  # [] resets them: ownership restarts
                    meta.pop("managedFields", None)
                    ssa.record_update(None, new, *args)
                else:
                    ssa.record_update(old, new, *args)
        if new != old and _without_times(new) == _without_times(old):
            # IgnoreManagedFieldsTimestampsTransformer: a write that would change only managedFields' times
            # (a repeated apply) keeps the old ones, so it is a no-op
            if "managedFields" in old_meta:
                meta["managedFields"] = copy.deepcopy(old_meta["managedFields"])
            else:
                meta.pop("managedFields", None)
        if new == old:
            return self.render(info, old, version)  # a no-op write: no new revision, no event
        if dry_run:
            return self.render(info, new, version)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            final = self._remove(info, new, old)
            return self.render(info, final, version)
        stored = self._put(info, new, "MODIFIED", old)
        if crd_info is not None:
            self.registry.add(crd_info)
        return self.render(info, stored, version)

    # ------------------------------------------------------------------ delete

    def delete(self, info: ResourceInfo, version: str, namespace: str, name: str,
               options: dict[str, Any] | None = None, *, dry_run: bool = False) -> tuple[dict[str, Any], bool]:
        """Delete (or start deleting) an object; returns (object, gone)."""
        options = options or {}
        with self.lock:
            old = self.get_stored(info, namespace, name)
            if old is None:
                raise APIError.not_found(info, name)
            old_meta = old["metadata"]
            pre = options.get("preconditions") or {}
            # rest.BeforeDelete checks preconditions first, naming the kind (GroupResource{group, Kind})
            by_kind = f"{info.kind}.{info.group}" if info.group else info.kind
            details = {"name": name, **({"group": info.group} if info.group else {}), "kind": info.kind}
            if pre.get("uid") and pre["uid"] != old_meta["uid"]:
                raise APIError(409, "Conflict", f'Operation cannot be fulfilled on {by_kind} "{name}": the UID in the '
                                                f'precondition ({pre["uid"]}) does not match the UID in record '
                                                f'({old_meta["uid"]}). The object might have been deleted and then '
                                                'recreated', details)
            if pre.get("resourceVersion") and pre["resourceVersion"] != old_meta["resourceVersion"]:
                raise APIError(409, "Conflict", f'Operation cannot be fulfilled on {by_kind} "{name}": the '
                                                f'ResourceVersion in the precondition ({pre["resourceVersion"]}) does '
                                                f'not match the ResourceVersion in record '
                                                f'({old_meta["resourceVersion"]}). The object might have been '
                                                'modified', details)
            policy = options.get("propagationPolicy")
            orphan = options.get("orphanDependents")
            if policy is None and orphan is not None:
                policy = "Orphan" if orphan else "Foreground"
            if policy not in (None, "Orphan", "Foreground", "Background"):
                raise APIError(422, "Invalid", f'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: '
                                               f'Unsupported value: "{policy}": supported values: "Foreground", '
                                               f'"Background", "Orphan"', {"kind": "DeleteOptions", "causes": [
                                                   cause("propagationPolicy", "FieldValueNotSupported",
                                                         f'Unsupported value: "{policy}"')]})
            if info.key() == NS_KEY:
                if name in PROTECTED_NAMESPACES:
                    raise APIError.forbidden(info, name, "this namespace may not be deleted")
                if old_meta.get("deletionTimestamp"):
                    return self.render(info, old, version), False
                new = copy.deepcopy(old)
                new["metadata"]["deletionTimestamp"] = now_rfc3339()
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                new["status"] = {"phase": "Terminating"}
                if dry_run:
                    return self.render(info, new, version), False
                return self.render(info, self._put(info, new, "MODIFIED", old), version), False
            finalizers = list(old_meta.get("finalizers") or [])
            if policy == "Orphan":
                finalizers = [f for f in finalizers if f != "foregroundDeletion"]
                if "orphan" not in finalizers:
                    finalizers.append("orphan")
            elif policy == "Foreground":
                finalizers = [f for f in finalizers if f != "orphan"]
                if "foregroundDeletion" not in finalizers:
                    finalizers.append("foregroundDeletion")
            elif policy == "Background":
                finalizers = [f for f in finalizers if f not in GC_FINALIZERS]
            if finalizers:
                new = copy.deepcopy(old)
                meta = new["metadata"]
                meta["finalizers"] = finalizers
                if not meta.get("deletionTimestamp"):
                    meta["deletionTimestamp"] = now_rfc3339()
                    meta["deletionGracePeriodSeconds"] = 0
                    if int(meta.get("generation") or 0) > 0:
                        meta["generation"] = int(meta["generation"]) + 1
                if new == old or dry_run:
                    return self.render(info, new, version), False
                return self.render(info, self._put(info, new, "MODIFIED", old), version), False
            final = copy.deepcopy(old)
            if "finalizers" in final["metadata"]:
                final["metadata"]["finalizers"] = []
                del final["metadata"]["finalizers"]
            if dry_run:
                return self.render(info, final, version), True
            return self.render(info, self._remove(info, final, old), version), True

    # ------------------------------------------------------------------ CRDs

    def _check_crd(self, crd: dict[str, Any]) -> tuple[ResourceInfo | None, list[dict[str, str]]]:
        try:
            info = resource_from_crd(crd)
        except CRDError as exc:
            return None, [cause(f, "FieldValueInvalid", m) for f, m in exc.problems]
        existing = self.registry.get(info.group, info.plural)
        if existing is not None and not existing.custom:
            return None, [cause("spec.group", "FieldValueInvalid",
                                f'Invalid value: "{info.group}": {info.group_resource} is served by a built-in API')]
        return info, []

    @staticmethod
    def _crd_status(crd: dict[str, Any], info: ResourceInfo) -> dict[str, Any]:
        now = now_rfc3339()
        names = dict(crd["spec"]["names"])
        names.setdefault("singular", info.singular)
        names.setdefault("listKind", info.list_kind)
        return {
            "acceptedNames": names,
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": now},
            ],
            "storedVersions": [info.storage_version],
        }

    def _unregister_crd(self, crd: dict[str, Any]) -> None:
        try:
            info = resource_from_crd(crd)
        except CRDError:
            return
        current = self.registry.get(info.group, info.plural)
        if current is None or not current.custom:
            return
        for key, obj in sorted(self.objects.get(current.key(), {}).items()):
            final = copy.deepcopy(obj)
            self._remove(current, final, obj)
        self.objects.pop(current.key(), None)
        self.registry.remove(info.group, info.plural)

    def register_crd(self, crd: dict[str, Any]) -> ResourceInfo:
        """Create (or replace) a CRD object and serve its resource."""
        crd_info = self.registry.get(*CRD_KEY)
        assert crd_info is not None
        name = (crd.get("metadata") or {}).get("name", "")
        with self.lock:
            if self.get_stored(crd_info, "", name) is None:
                self.create(crd_info, "v1", "", crd)
            else:
                body = copy.deepcopy(crd)
                body.setdefault("metadata", {}).pop("resourceVersion", None)
                self.update(crd_info, "v1", "", name, body)
            info = resource_from_crd(crd)
            served = self.registry.get(info.group, info.plural)
            assert served is not None
            return served

    # ------------------------------------------------------------------ garbage collection

    def start_gc(self) -> None:
        if not self.gc_enabled or self._gc_thread is not None:
            return
        self.closed = False
        self._gc_thread = threading.Thread(target=self._gc_loop, name="test-apiserver-gc", daemon=True)
        self._gc_thread.start()

    def stop_gc(self) -> None:
        with self.lock:
            self.closed = True
            self.cond.notify_all()
        if self._gc_thread is not None:
            self._gc_thread.join(timeout=5)
            self._gc_thread = None

    def _gc_loop(self) -> None:
        while True:
            with self.lock:
                while not self._gc_dirty and not self.closed:
                    self.cond.wait(timeout=1.0)
                if self.closed:
                    return
                self._gc_busy = True
            # Let a burst of writes land, as the real collector acts a little after the fact.
            time.sleep(self.gc_delay)
            with self.lock:
                self._gc_dirty = False
                try:
                    self.gc_pass()
                finally:
                    self._gc_busy = False
                    self.cond.notify_all()

    def wait_for_gc(self, timeout: float = 5.0) -> bool:
        """Block until the collector has nothing left to do (True) or ``timeout`` passes (False)."""
        end = time.monotonic() + timeout
        with self.lock:
            while self._gc_dirty or self._gc_busy:
                left = end - time.monotonic()
                if left <= 0 or self.closed or self._gc_thread is None:
                    return not (self._gc_dirty or self._gc_busy)
                self.cond.wait(timeout=min(left, 0.05))
        return True

    def _owner_state(self, dep_info: ResourceInfo, dep: dict[str, Any], ref: dict[str, Any]
                     ) -> tuple[str, dict[str, Any] | None]:
        """How one ownerReference resolves: 'solid', 'dangling', 'waiting' (owner deleting in the
        foreground, dependent blocks it) or 'unresolvable' (unknown kind, or a cluster-scoped
        dependent naming a namespaced owner: the real collector never acts on those)."""
        owner_info = self.registry.by_kind(str(ref.get("apiVersion", "")), str(ref.get("kind", "")))
        if owner_info is None:
            return "unresolvable", None
        if owner_info.namespaced and not dep_info.namespaced:
            return "unresolvable", None
        ns = _meta(dep).get("namespace", "") if owner_info.namespaced else ""
        owner = self.objects.get(owner_info.key(), {}).get((ns, str(ref.get("name", ""))))
        if owner is None or owner["metadata"].get("uid") != ref.get("uid"):
            return "dangling", None
        om = owner["metadata"]
        if om.get("deletionTimestamp") and "foregroundDeletion" in (om.get("finalizers") or []):
            return "waiting", owner
        return "solid", owner

    def _dependents(self, owner_uid: str) -> list[tuple[ResourceInfo, dict[str, Any], dict[str, Any]]]:
        out = []
        for rkey, bucket in self.objects.items():
            info = self.registry.get(*rkey)
            if info is None:
                continue
            for obj in bucket.values():
                for ref in _meta(obj).get("ownerReferences") or []:
                    if isinstance(ref, dict) and ref.get("uid") == owner_uid:
                        state, _ = self._owner_state(info, obj, ref)
                        if state != "unresolvable" and state != "dangling":
                            out.append((info, obj, ref))
                        break
        return out

    def _internal_update(self, info: ResourceInfo, old: dict[str, Any], new: dict[str, Any]) -> None:
        try:
            self._write(info, info.storage_version, old, new, subresource=None, dry_run=False,
                        field_validation=None, warnings=[], internal=True)
        except APIError:
            pass

    def _internal_delete(self, info: ResourceInfo, obj: dict[str, Any], policy: str) -> None:
        m = obj["metadata"]
        try:
            self.delete(info, info.storage_version, m.get("namespace", ""), m["name"],
                        {"propagationPolicy": policy, "preconditions": {"uid": m["uid"]}})
        except APIError:
            pass

    def gc_pass(self) -> None:
        """One sweep of the garbage collector and the namespace controller (lock held)."""
        snapshot = [(self.registry.get(*rkey), obj) for rkey, bucket in list(self.objects.items())
                    for obj in list(bucket.values())]
        for info, obj in snapshot:
            if info is None:
                continue
            m = obj["metadata"]
            current = self.get_stored(info, m.get("namespace", ""), m["name"])
            if current is not obj:
                continue  # changed during this pass; the next pass sees it
            fins = m.get("finalizers") or []
            deleting = bool(m.get("deletionTimestamp"))
            if deleting and "orphan" in fins:
                for dinfo, dep, _ in self._dependents(m["uid"]):
                    new = copy.deepcopy(dep)
                    new["metadata"]["ownerReferences"] = [r for r in dep["metadata"]["ownerReferences"]
                                                          if r.get("uid") != m["uid"]]
                    if not new["metadata"]["ownerReferences"]:
                        del new["metadata"]["ownerReferences"]
                    self._internal_update(dinfo, dep, new)
                self._drop_finalizer(info, obj, "orphan")
                continue
            if deleting and "foregroundDeletion" in fins:
                blocking = 0
                for dinfo, dep, ref in self._dependents(m["uid"]):
                    if not dep["metadata"].get("deletionTimestamp"):
                        has_own = bool(self._dependents(dep["metadata"]["uid"]))
                        self._internal_delete(dinfo, dep, "Foreground" if has_own else "Background")
                    if ref.get("blockOwnerDeletion") is True and \
                            self.get_stored(dinfo, dep["metadata"].get("namespace", ""),
                                            dep["metadata"]["name"]) is not None:
                        blocking += 1
                if blocking == 0:
                    self._drop_finalizer(info, self.get_stored(info, m.get("namespace", ""), m["name"]) or obj,
                                         "foregroundDeletion")
                continue
            if info.key() == NS_KEY and deleting:
                self._terminate_namespace(info, obj)
                continue
            refs = [r for r in m.get("ownerReferences") or [] if isinstance(r, dict)]
            if not refs or deleting:
                continue
            states = [(r, self._owner_state(info, obj, r)[0]) for r in refs]
            solid = [r for r, s in states if s in ("solid", "unresolvable")]
            dangling = [r for r, s in states if s == "dangling"]
            waiting = [r for r, s in states if s == "waiting"]
            if not solid:
                if dangling or waiting:
                    policy = "Background"
                    if waiting and self._dependents(m["uid"]):
                        policy = "Foreground"
                    if "orphan" in fins:
                        policy = "Orphan"
                    self._internal_delete(info, obj, policy)
            elif dangling or waiting:
                gone = {r.get("uid") for r in dangling + waiting}
                new = copy.deepcopy(obj)
                new["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") not in gone]
                self._internal_update(info, obj, new)

    def _drop_finalizer(self, info: ResourceInfo, obj: dict[str, Any], finalizer: str) -> None:
        new = copy.deepcopy(obj)
        new["metadata"]["finalizers"] = [f for f in obj["metadata"].get("finalizers") or [] if f != finalizer]
        if not new["metadata"]["finalizers"]:
            del new["metadata"]["finalizers"]
        self._internal_update(info, obj, new)

    def _terminate_namespace(self, ns_info: ResourceInfo, ns_obj: dict[str, Any]) -> None:
        name = ns_obj["metadata"]["name"]
        remaining = 0
        for rkey, bucket in list(self.objects.items()):
            info = self.registry.get(*rkey)
            if info is None or not info.namespaced:
                continue
            for key, obj in list(bucket.items()):
                if key[0] != name:
                    continue
                remaining += 1
                if not obj["metadata"].get("deletionTimestamp"):
                    self._internal_delete(info, obj, "Background")
        if remaining == 0 and not ns_obj["metadata"].get("finalizers"):
            final = copy.deepcopy(ns_obj)
            final["spec"] = {}
            self._remove(ns_info, final, ns_obj)


def parse_patch_type(content_type: str | None) -> str | None:
    base = (content_type or "").split(";")[0].strip().lower()
    return PATCH_TYPES.get(base)
