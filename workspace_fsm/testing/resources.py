"""What the test API server serves: built-in resources, resources of registered CRDs, and the
discovery and OpenAPI documents describing them."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from workspace_fsm.engine.schema import CRDSchemaNotFound, crd_schema

__all__ = ["ResourceInfo", "Registry", "builtin_resources", "resource_from_crd", "version_priority_key"]

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
BASE_FIELDS = frozenset({"metadata.name", "metadata.namespace"})


@dataclass
class ResourceInfo:
    group: str
    versions: list[str]  # served, in priority order (preferred first)
    storage_version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    status_versions: frozenset[str] = frozenset()  # versions with a status subresource
    status_on_create: bool = False  # keep status given on create (Nodes)
    create_status: dict[str, Any] | None = None  # status forced on create (Namespaces, Pods)
    custom: bool = False
    crd: dict[str, Any] | None = None
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)
    columns: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    field_selectors: frozenset[str] = BASE_FIELDS
    return_deleted_object: bool = False
    name_rule: str = "subdomain"  # subdomain | label | dns1035 | path
    scale_versions: dict[str, dict[str, str]] = field(default_factory=dict)  # version -> scale paths

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def group_resource(self) -> str:
        """``workspaces.kaito.sh`` or ``pods``: how messages name the resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def group_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    def scale_for(self, version: str | None = None) -> dict[str, str] | None:
        """The ``/scale`` paths (specReplicasPath, statusReplicasPath, labelSelectorPath) or None."""
        return self.scale_versions.get(version or self.storage_version)

    def has_status(self, version: str | None = None) -> bool:
        return (version or self.storage_version) in self.status_versions

    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)


def version_priority_key(version: str) -> tuple[int, int, int, str]:
    """Kubernetes' version ordering: GA before beta before alpha, higher numbers first, then others."""
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not m:
        return (3, 0, 0, version)
    major = int(m.group(1))
    stage = {None: 0, "beta": 1, "alpha": 2}[m.group(2)]
    minor = int(m.group(3) or 0)
    return (stage, -major, -minor, "")


def _b(group: str, version: str, plural: str, kind: str, *, namespaced: bool = True, short: Iterable[str] = (),
       categories: Iterable[str] = (), status: bool = False, fields: Iterable[str] = (),
       singular: str | None = None, scale: bool = False, **kw: Any) -> ResourceInfo:
    if scale:
        from workspace_fsm.testing.scale import BUILTIN_SCALE

        kw["scale_versions"] = {version: dict(BUILTIN_SCALE)}
    return ResourceInfo(
        group=group, versions=[version], storage_version=version, plural=plural,
        singular=singular or kind.lower(), kind=kind, namespaced=namespaced, short_names=list(short),
        categories=list(categories), status_versions=frozenset({version}) if status else frozenset(),
        field_selectors=BASE_FIELDS | frozenset(fields), **kw)


_POD_FIELDS = ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
               "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName")
_EVENT_FIELDS = ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
                 "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
                 "reason", "reportingComponent", "source", "type")
_EVENTS_V1_FIELDS = ("regarding.kind", "regarding.namespace", "regarding.name", "regarding.uid",
                     "regarding.apiVersion", "regarding.resourceVersion", "regarding.fieldPath",
                     "reason", "reportingController", "type")


def builtin_resources() -> list[ResourceInfo]:
    """The built-in kinds served (with the metadata rules of every kind; some defaulted and validated, see
    :mod:`.builtins` and :mod:`.workloads`)."""
    return [
        _b("", "v1", "namespaces", "Namespace", namespaced=False, short=["ns"], status=True,
           fields=["status.phase"], create_status={"phase": "Active"}, name_rule="label"),
        _b("", "v1", "nodes", "Node", namespaced=False, short=["no"], status=True, status_on_create=True,
           fields=["spec.unschedulable"]),
        _b("", "v1", "pods", "Pod", short=["po"], categories=["all"], status=True, fields=_POD_FIELDS,
           create_status={"phase": "Pending"}, return_deleted_object=True),
        _b("", "v1", "events", "Event", short=["ev"], fields=_EVENT_FIELDS),
        _b("", "v1", "configmaps", "ConfigMap", short=["cm"]),
        _b("", "v1", "secrets", "Secret", fields=["type"]),
        _b("", "v1", "serviceaccounts", "ServiceAccount", short=["sa"]),
        _b("", "v1", "services", "Service", short=["svc"], categories=["all"], status=True,
           return_deleted_object=True, name_rule="dns1035"),
        _b("", "v1", "endpoints", "Endpoints", short=["ep"], singular="endpoints"),
        _b("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", short=["pvc"], status=True),
        _b("apps", "v1", "deployments", "Deployment", short=["deploy"], categories=["all"], status=True, scale=True),
        _b("apps", "v1", "statefulsets", "StatefulSet", short=["sts"], categories=["all"], status=True, scale=True),
        _b("apps", "v1", "daemonsets", "DaemonSet", short=["ds"], categories=["all"], status=True),
        _b("apps", "v1", "replicasets", "ReplicaSet", short=["rs"], categories=["all"], status=True,
           fields=["status.replicas"], scale=True),
        _b("apps", "v1", "controllerrevisions", "ControllerRevision"),
        _b("batch", "v1", "jobs", "Job", categories=["all"], status=True, fields=["status.successful"]),
        _b("batch", "v1", "cronjobs", "CronJob", short=["cj"], categories=["all"], status=True),
        _b("coordination.k8s.io", "v1", "leases", "Lease"),
        _b("events.k8s.io", "v1", "events", "Event", short=["ev"], fields=_EVENTS_V1_FIELDS),
        _b("rbac.authorization.k8s.io", "v1", "roles", "Role", name_rule="path"),
        _b("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", name_rule="path"),
        _b("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False, name_rule="path"),
        _b("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False,
           name_rule="path"),
        _b("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
           namespaced=False, short=["crd", "crds"], status=True),
    ]


class CRDError(ValueError):
    """A CRD document the server cannot serve; ``problems`` are (field, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))


def resource_from_crd(crd: Mapping[str, Any]) -> ResourceInfo:
    """The resource a CustomResourceDefinition (apiextensions.k8s.io/v1) defines."""
    spec = crd.get("spec") if isinstance(crd, Mapping) else None
    problems: list[tuple[str, str]] = []
    if not isinstance(spec, Mapping):
        raise CRDError([("spec", "Required value")])
    group = spec.get("group")
    names = spec.get("names") if isinstance(spec.get("names"), Mapping) else {}
    plural, kind = names.get("plural"), names.get("kind")
    if not group or not isinstance(group, str):
        problems.append(("spec.group", "Required value"))
    if not plural:
        problems.append(("spec.names.plural", "Required value"))
    if not kind:
        problems.append(("spec.names.kind", "Required value"))
    scope = spec.get("scope")
    if scope not in ("Namespaced", "Cluster"):
        problems.append(("spec.scope", f'Unsupported value: {scope!r}: supported values: "Cluster", "Namespaced"'))
    versions = [v for v in spec.get("versions") or [] if isinstance(v, Mapping)]
    if not versions:
        problems.append(("spec.versions", "Invalid value: must have exactly one version marked as storage version"))
    storage = [v for v in versions if v.get("storage") is True]
    if versions and len(storage) != 1:
        problems.append(("spec.versions", "Invalid value: must have exactly one version marked as storage version"))
    name = (crd.get("metadata") or {}).get("name")
    if plural and group and name != f"{plural}.{group}":
        problems.append(("metadata.name", f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group'))
    if problems:
        raise CRDError(problems)
    served = [str(v["name"]) for v in versions if v.get("served", True)]
    served.sort(key=version_priority_key)
    schemas: dict[str, dict[str, Any]] = {}
    columns: dict[str, list[dict[str, Any]]] = {}
    status_versions = set()
    scale_versions: dict[str, dict[str, str]] = {}
    selectable: set[str] = set()
    top_sub = spec.get("subresources") or {}
    top_cols = spec.get("additionalPrinterColumns")
    for v in versions:
        vname = str(v["name"])
        try:
            schemas[vname] = dict(crd_schema(crd, vname))
        except CRDSchemaNotFound:
            pass
        sub = v.get("subresources") or top_sub
        if isinstance(sub, Mapping) and "status" in sub:
            status_versions.add(vname)
        if isinstance(sub, Mapping) and isinstance(sub.get("scale"), Mapping):
            sc = sub["scale"]
            if isinstance(sc.get("specReplicasPath"), str) and isinstance(sc.get("statusReplicasPath"), str):
                scale_versions[vname] = {k: str(sc[k]) for k in ("specReplicasPath", "statusReplicasPath",
                                                                 "labelSelectorPath") if isinstance(sc.get(k), str)}
        cols = v.get("additionalPrinterColumns", top_cols)
        columns[vname] = [dict(c) for c in cols or [] if isinstance(c, Mapping)]
        for sf in v.get("selectableFields") or []:
            if isinstance(sf, Mapping) and isinstance(sf.get("jsonPath"), str):
                selectable.add(sf["jsonPath"].lstrip("."))
    return ResourceInfo(
        group=str(group), versions=served, storage_version=str(storage[0]["name"]), plural=str(plural),
        singular=str(names.get("singular") or str(kind).lower()), kind=str(kind), namespaced=scope == "Namespaced",
        short_names=list(names.get("shortNames") or []), categories=list(names.get("categories") or []),
        status_versions=frozenset(status_versions), custom=True, crd=dict(crd), schemas=schemas, columns=columns,
        field_selectors=BASE_FIELDS | frozenset(selectable), return_deleted_object=True,
        scale_versions=scale_versions,
    )


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16].upper()


class Registry:
    """The served resources, by (group, plural), with lookups by version and kind."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], ResourceInfo] = {}
        self.generation = 0  # bumped on every change (for OpenAPI hashes)

    def add(self, info: ResourceInfo) -> None:
        self._by_key[info.key()] = info
        self.generation += 1

    def remove(self, group: str, plural: str) -> ResourceInfo | None:
        self.generation += 1
        return self._by_key.pop((group, plural), None)

    def get(self, group: str, plural: str) -> ResourceInfo | None:
        return self._by_key.get((group, plural))

    def lookup(self, group: str, version: str, plural: str) -> ResourceInfo | None:
        info = self._by_key.get((group, plural))
        if info is None or version not in info.versions:
            return None
        return info

    def by_kind(self, api_version: str, kind: str) -> ResourceInfo | None:
        group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
        for info in self._by_key.values():
            if info.group == group and info.kind == kind:
                return info
        return None

    def all(self) -> list[ResourceInfo]:
        return list(self._by_key.values())

    def group_versions(self) -> dict[str, list[str]]:
        """group -> served versions, preferred first (core group is '')."""
        out: dict[str, set[str]] = {}
        for info in self._by_key.values():
            out.setdefault(info.group, set()).update(info.versions)
        return {g: sorted(vs, key=version_priority_key) for g, vs in out.items()}

    # ---------------------------------------------------------------- discovery documents

    def api_versions(self, server_address: str) -> dict[str, Any]:
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}

    def api_group(self, group: str) -> dict[str, Any] | None:
        versions = self.group_versions().get(group)
        if not versions or not group:
            return None
        gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}

    def api_group_list(self) -> dict[str, Any]:
        groups = [self.api_group(g) for g in sorted(self.group_versions()) if g]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [g for g in groups if g]}

    def resource_list(self, group: str, version: str) -> dict[str, Any] | None:
        infos = [i for i in self._by_key.values() if i.group == group and version in i.versions]
        if not infos:
            return None
        resources: list[dict[str, Any]] = []
        for info in sorted(infos, key=lambda i: i.plural):
            entry: dict[str, Any] = {
                "name": info.plural, "singularName": info.singular, "namespaced": info.namespaced,
                "kind": info.kind, "verbs": list(VERBS),
                "storageVersionHash": _hash(f"{info.group}/{info.storage_version}/{info.kind}")[:12],
            }
            if info.short_names:
                entry["shortNames"] = list(info.short_names)
            if info.categories:
                entry["categories"] = list(info.categories)
            resources.append(entry)
            if info.has_status(version):
                resources.append({"name": f"{info.plural}/status", "singularName": "", "namespaced": info.namespaced,
                                  "kind": info.kind, "verbs": ["get", "patch", "update"]})
            if info.scale_for(version):
                resources.append({"name": f"{info.plural}/scale", "singularName": "", "namespaced": info.namespaced,
                                  "group": "autoscaling", "version": "v1", "kind": "Scale",
                                  "verbs": ["get", "patch", "update"]})
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version, "resources": resources}

    # ---------------------------------------------------------------- OpenAPI v3

    def openapi_index(self) -> dict[str, Any]:
        paths: dict[str, Any] = {}
        for group, versions in self.group_versions().items():
            for v in versions:
                key = f"apis/{group}/{v}" if group else f"api/{v}"
                paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={self._gv_hash(group, v)}"}
        return {"paths": paths}

    def _gv_hash(self, group: str, version: str) -> str:
        return _hash(f"{self.generation}/{group}/{version}")

    def openapi_gv(self, group: str, version: str) -> dict[str, Any] | None:
        """The OpenAPI v3 document of a group/version (see :mod:`workspace_fsm.testing.openapi`)."""
        from workspace_fsm.testing.openapi import openapi_v3_gv

        infos = sorted((i for i in self._by_key.values() if i.group == group and version in i.versions),
                       key=lambda i: i.plural)
        if not infos:
            return None
        return openapi_v3_gv(infos, group, version)

    def openapi_v2(self) -> dict[str, Any]:
        from workspace_fsm.testing.openapi import openapi_v2

        by_gv: dict[tuple[str, str], list[ResourceInfo]] = {}
        for info in self._by_key.values():
            for v in info.versions:
                by_gv.setdefault((info.group, v), []).append(info)
        return openapi_v2(by_gv)
