"""KAITO's RAGEngine (kaito.sh v1alpha1 and v1beta1): model, validation and lifecycle on the engine's public API.

A RAGEngine runs KAITO's retrieval-augmented generation service: one Deployment (the RAG service, which
indexes documents and answers queries, optionally through an LLM inference service) and one Service in
front of it. With ``spec.compute`` the embedding model runs on GPU nodes of its own, which the machine gets
through Karpenter NodeClaims (the shared building block :mod:`workspace_fsm.kaito.nodeclaims`); without it
(retrieve-only, or remote embeddings) the service runs on any node and no NodeClaim is ever created.

The module reads top to bottom:

1. the typed model (:class:`RAGEngine`, :func:`parse_ragengine`), both API versions, unknown fields kept
   verbatim so that a RAGEngine serialises back to the document it came from;
2. validation as KAITO's admission webhook validates RAGEngines (:func:`check_ragengine`,
   :func:`check_update`), on top of the CRD's structural schema;
3. what the machine reads of the cluster (:class:`RAGSnapshot`) and the manifests it creates
   (:func:`deployment_manifest`, :func:`service_manifest`);
4. the lifecycle (:data:`RAGENGINE`): facts, guards, steps, status projections, then the table.

What KAITO does at the commit this follows (its controller waits inside reconcile: pending NodeClaims,
device plugins, a 10-minute Deployment check) becomes states and deadlines here; the condition types,
reasons, labels, finalizer and annotations are KAITO's own, so that clients written for KAITO read the
same status.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import attrs
import yaml

from workspace_fsm.engine import (Config as EngineConfig, ConditionStore, Create, Deadline, Edge, Kind, Lifecycle, Owns,
                                  Patch, RecordFormat, Report, Run, State, WakeUp, Watches, by_labels,
                                  by_owner_reference, guard)
from workspace_fsm.engine import schema as k8s_schema
from workspace_fsm.engine.objects import Condition, ObjectMeta, _opt, parse_time
from workspace_fsm.engine.problems import Problem
from workspace_fsm.engine.record import Record
from workspace_fsm.engine.schema import describe_value, format_path
from workspace_fsm.kaito import nodeclaims as nc
from workspace_fsm.kaito.model import LabelSelector, NodeClaim, Node, Partition, Workload, spec_hash
from workspace_fsm.kaito.nodeclaims import NodeClaimBook, NodeFacts
# Kubernetes name and label rules, shared with the Workspace's validation.
from workspace_fsm.kaito.validation import (_check_label_map, _dns1123_label_errors, _label_value_errors,
                                            _qualified_name_errors, load_yaml_documents, object_ref)

__all__ = [
    "API_VERSIONS", "Compute", "Config", "DEFAULT_CONFIG", "Embedding", "FINALIZER", "Guardrails", "InferenceService",
    "InvalidRAGEngine", "KAITO_CONDITIONS", "LABEL_RAGENGINE", "LABEL_RAGENGINE_NAMESPACE", "LIFECYCLE_CONDITION",
    "LocalEmbedding", "RAGENGINE", "RAGENGINE_KIND", "RAGEngine", "RAGEngineBook", "RAGEngineFacts", "RAGEngineSpec",
    "RAGEngineStatus", "RAGSnapshot", "RECORD", "RemoteEmbedding", "Service", "Storage", "VectorDB", "check_ragengine",
    "check_update", "confirmations", "deployment_manifest", "is_ragengine", "parse_ragengine", "parse_request_uri_error",
    "service_manifest", "target_node_count", "validate_ragengine_files",
]

API_GROUP = "kaito.sh"
#: The apiVersions of a RAGEngine; v1beta1 is the storage version, v1alpha1 is deprecated but served.
API_VERSIONS = ("kaito.sh/v1beta1", "kaito.sh/v1alpha1")
KIND = "RAGEngine"

# KAITO's names (api/v1beta1/labels.go, pkg/utils/consts).
LABEL_RAGENGINE = "kaito.sh/ragengine"  # on its NodeClaims (Karpenter copies it to the Node) and its pods
LABEL_RAGENGINE_NAMESPACE = "kaito.sh/ragenginenamespace"
ANNOTATION_REVISION = "ragengine.kaito.io/revision"
ANNOTATION_ENABLE_LB = "kaito.sh/enablelb"  # "True": the Service is a LoadBalancer
FINALIZER = "ragengine.finalizer.kaito.sh"
#: Labels KAITO reserves for its own NodeClaims and Nodes: ignored in a user's labelSelector.
RESERVED_SELECTOR_LABELS = frozenset({
    "kaito.sh/workspace", "kaito.sh/workspacenamespace", LABEL_RAGENGINE, LABEL_RAGENGINE_NAMESPACE,
    "karpenter.kaito.sh/workspace", "karpenter.kaito.sh/workspacenamespace", "karpenter.kaito.sh/inferenceset",
    "karpenter.kaito.sh/inferencesetnamespace",
})
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_IMAGE = "aimodelsregistrytest.azurecr.io/kaito-rag-service:0.3.2"  # KAITO's PRESET_RAG_* defaults
SERVICE_PORT = 80
CONTAINER_PORT = 5000
DEFAULT_MOUNT_PATH = "/mnt/data"
DEFAULT_GUARDRAILS_CONFIGMAP = "ragengine-guardrails-policy-template"
GUARDRAILS_MOUNT_PATH = "/etc/ragengine/guardrails"
GUARDRAILS_FILE = "guardrails.yaml"

#: KAITO's Azure GPU SKUs and their GPU count (pkg/sku). Any other Standard_N* or Standard_D* size is also
#: accepted on Azure; its pods then request no GPU, as KAITO does for sizes it has no GPU figures for.
AZURE_GPU_SKUS: Mapping[str, int] = {
    "standard_nv36ads_a10_v5": 1, "standard_nv72ads_a10_v5": 2, "standard_nc24ads_a100_v4": 1,
    "standard_nc48ads_a100_v4": 2, "standard_nc96ads_a100_v4": 4, "standard_nd96asr_a100_v4": 8,
    "standard_nd96amsr_a100_v4": 8, "standard_nc40ads_h100_v5": 1, "standard_nc80adis_h100_v5": 2,
    "standard_nd96isr_h100_v5": 8, "standard_ncc40ads_h100_v5": 1, "standard_nd96isr_h200_v5": 8,
    "standard_ng32ads_v620_v1": 1, "standard_ng32adms_v620_v1": 1,
}
AZURE_SERIES_PREFIXES = ("standard_n", "standard_d")

# KAITO's RAGEngine condition types (api/v1beta1/condition_types.go).
NODECLAIM_READY = "NodeClaimReady"
RESOURCE_READY = "ResourceReady"
SERVICE_READY = "ServiceReady"
RAGENGINE_SERVICE_READY = "RAGEngineServiceReady"
RAGENGINE_SUCCEEDED = "RAGEngineSucceeded"
RAGENGINE_DELETING = "RAGEngineDeleting"
KAITO_CONDITIONS = (NODECLAIM_READY, RESOURCE_READY, SERVICE_READY, RAGENGINE_SERVICE_READY, RAGENGINE_SUCCEEDED,
                    RAGENGINE_DELETING)
LIFECYCLE_CONDITION = "workspace-fsm/Lifecycle"


class InvalidRAGEngine(ValueError):
    """A document that cannot be addressed as a RAGEngine at all (not an object, no metadata.name)."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


# ============================================================================= model


def _split(d: Mapping[str, Any], known: frozenset[str]) -> dict[str, Any]:
    """The members of ``d`` this model does not know (a newer KAITO's fields), kept verbatim."""
    return {k: v for k, v in d.items() if k not in known}


def _out(other: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in fields.items():
        _opt(out, key, value)
    out.update(other)
    return out


@attrs.frozen
class Compute:
    """``spec.compute``: the GPU nodes the embedding model runs on."""

    label_selector: LabelSelector | None = None
    instance_type: str | None = None
    count: int | None = None
    partition: Partition | None = None
    preferred_nodes: tuple[str, ...] | None = None
    other: Mapping[str, Any] = attrs.field(factory=dict)
    KNOWN = frozenset({"labelSelector", "instanceType", "count", "partition", "preferredNodes"})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Compute:
        sel, part = d.get("labelSelector"), d.get("partition")
        return cls(None if sel is None else LabelSelector.from_dict(sel), d.get("instanceType"), d.get("count"),
                   None if part is None else Partition(part["mode"], part.get("count"), part.get("profile")),
                   None if d.get("preferredNodes") is None else tuple(d["preferredNodes"]), _split(d, cls.KNOWN))

    def to_dict(self) -> dict[str, Any]:
        return _out(self.other, count=self.count, instanceType=self.instance_type,
                    labelSelector=None if self.label_selector is None else self.label_selector.to_dict(),
                    partition=None if self.partition is None else self.partition.to_dict(),
                    preferredNodes=None if self.preferred_nodes is None else list(self.preferred_nodes))

    @property
    def node_labels(self) -> dict[str, str]:
        """The selector's matchLabels without KAITO's reserved keys: what its nodes carry."""
        labels = (self.label_selector.match_labels if self.label_selector else None) or {}
        return {k: v for k, v in sorted(labels.items()) if k not in RESERVED_SELECTOR_LABELS}


@attrs.frozen
class LocalEmbedding:
    model_id: str | None = None
    image: str | None = None
    image_pull_secret: str | None = None
    model_access_secret: str | None = None
    other: Mapping[str, Any] = attrs.field(factory=dict)
    KNOWN = frozenset({"modelID", "image", "imagePullSecret", "modelAccessSecret"})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LocalEmbedding:
        return cls(d.get("modelID"), d.get("image"), d.get("imagePullSecret"), d.get("modelAccessSecret"),
                   _split(d, cls.KNOWN))

    def to_dict(self) -> dict[str, Any]:
        return _out(self.other, image=self.image, imagePullSecret=self.image_pull_secret,
                    modelAccessSecret=self.model_access_secret, modelID=self.model_id)


@attrs.frozen
class RemoteEmbedding:
    url: str
    access_secret: str | None = None
    other: Mapping[str, Any] = attrs.field(factory=dict)
    KNOWN = frozenset({"url", "accessSecret"})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RemoteEmbedding:
        return cls(d.get("url", ""), d.get("accessSecret"), _split(d, cls.KNOWN))

    def to_dict(self) -> dict[str, Any]:
        return _out(self.other, accessSecret=self.access_secret, url=self.url)


@attrs.frozen
class Embedding:
    local: LocalEmbedding | None = None
    remote: RemoteEmbedding | None = None
    other: Mapping[str, Any] = attrs.field(factory=dict)
    KNOWN = frozenset({"local", "remote"})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Embedding:
        return cls(None if d.get("local") is None else LocalEmbedding.from_dict(d["local"]),
                   None if d.get("remote") is None else RemoteEmbedding.from_dict(d["remote"]), _split(d, cls.KNOWN))

    def to_dict(self) -> dict[str, Any]:
        return _out(self.other, local=None if self.local is None else self.local.to_dict(),
                    remote=None if self.remote is None else self.remote.to_dict())


@attrs.frozen
class InferenceService:
    """The LLM endpoint answers are generated with (absent, or without a url in v1beta1: retrieve-only)."""

    context_window_size: int
    url: str | None = None
    access_secret: str | None = None
    other: Mapping[str, Any] = attrs.field(factory=dict)
    KNOWN = frozenset({"url", "contextWindowSize", "accessSecret"})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InferenceService:
        return cls(d.get("contextWindowSize", 0), d.get("url"), d.get("accessSecret"), _split(d, cls.KNOWN))

    def to_dict(self) -> dict[str, Any]:
        return _out(self.other, accessSecret=self.access_secret, contextWindowSize=self.context_window_size,
                    url=self.url)


@attrs.frozen
class VectorDB:
    engine: str
    url: str
    access_secret: str | None = None
    other: Mapping[str, Any] = attrs.field(factory=dict)
    KNOWN = frozenset({"engine", "url", "accessSecret"})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VectorDB:
        return cls(d.get("engine", ""), d.get("url", ""), d.get("accessSecret"), _split(d, cls.KNOWN))

    def to_dict(self) -> dict[str, Any]:
        return _out(self.other, accessSecret=self.access_secret, engine=self.engine, url=self.url)


@attrs.frozen
class Storage:
    """``spec.storage`` in either layout: v1alpha1's flat ``persistentVolumeClaim``/``mountPath``, v1beta1's
    ``persistentVolume: {persistentVolumeClaim, mountPath}`` and ``vectorDB``. :attr:`pvc` and
    :attr:`mount_path` read whichever is there."""

    persistent_volume: Mapping[str, Any] | None = None  # v1beta1, kept as given
    vector_db: VectorDB | None = None  # v1beta1
    flat_pvc: str | None = None  # v1alpha1
    flat_mount_path: str | None = None  # v1alpha1
    other: Mapping[str, Any] = attrs.field(factory=dict)
    KNOWN = frozenset({"persistentVolume", "vectorDB", "persistentVolumeClaim", "mountPath"})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Storage:
        pv = d.get("persistentVolume")
        return cls(None if pv is None else dict(pv),
                   None if d.get("vectorDB") is None else VectorDB.from_dict(d["vectorDB"]),
                   d.get("persistentVolumeClaim"), d.get("mountPath"), _split(d, cls.KNOWN))

    def to_dict(self) -> dict[str, Any]:
        return _out(self.other, mountPath=self.flat_mount_path,
                    persistentVolume=None if self.persistent_volume is None else dict(self.persistent_volume),
                    persistentVolumeClaim=self.flat_pvc,
                    vectorDB=None if self.vector_db is None else self.vector_db.to_dict())

    @property
    def pvc(self) -> str:
        pv = self.persistent_volume or {}
        return str(pv.get("persistentVolumeClaim") or self.flat_pvc or "")

    @property
    def mount_path(self) -> str:
        pv = self.persistent_volume or {}
        return str(pv.get("mountPath") or self.flat_mount_path or "")

    @property
    def persistent(self) -> bool:
        """A PVC-backed vector store (v1beta1 persistentVolume, or v1alpha1's flat fields)."""
        return self.persistent_volume is not None or bool(self.flat_pvc or self.flat_mount_path)


@attrs.frozen
class Guardrails:
    enabled: bool | None = None
    config_map: str | None = None  # configMapRef.name
    other: Mapping[str, Any] = attrs.field(factory=dict)
    ref_other: Mapping[str, Any] | None = None  # configMapRef's other members (None: no configMapRef)
    KNOWN = frozenset({"enabled", "configMapRef"})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Guardrails:
        ref = d.get("configMapRef")
        return cls(d.get("enabled"), None if ref is None else ref.get("name"), _split(d, cls.KNOWN),
                   None if ref is None else _split(ref, frozenset({"name"})))

    def to_dict(self) -> dict[str, Any]:
        ref = None if self.ref_other is None else _out(self.ref_other, name=self.config_map)
        return _out(self.other, configMapRef=ref, enabled=self.enabled)


@attrs.frozen
class RAGEngineSpec:
    embedding: Embedding | None = None
    compute: Compute | None = None
    inference_service: InferenceService | None = None
    storage: Storage | None = None
    guardrails: Guardrails | None = None  # v1beta1
    index_service_name: str | None = None  # v1alpha1 (KAITO ignores it: the Service is named after the RAGEngine)
    query_service_name: str | None = None  # v1alpha1 (likewise)
    other: Mapping[str, Any] = attrs.field(factory=dict)
    KNOWN = frozenset({"embedding", "compute", "inferenceService", "storage", "guardrails", "indexServiceName",
                       "queryServiceName"})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RAGEngineSpec:
        def sub(key: str, typ: Any) -> Any:
            return None if d.get(key) is None else typ.from_dict(d[key])

        return cls(sub("embedding", Embedding), sub("compute", Compute), sub("inferenceService", InferenceService),
                   sub("storage", Storage), sub("guardrails", Guardrails), d.get("indexServiceName"),
                   d.get("queryServiceName"), _split(d, cls.KNOWN))

    def to_dict(self) -> dict[str, Any]:
        def sub(v: Any) -> Any:
            return None if v is None else v.to_dict()

        return _out(self.other, compute=sub(self.compute), embedding=sub(self.embedding),
                    guardrails=sub(self.guardrails), indexServiceName=self.index_service_name,
                    inferenceService=sub(self.inference_service), queryServiceName=self.query_service_name,
                    storage=sub(self.storage))

    @functools.cached_property
    def revision(self) -> str:
        """A short hash of the spec: what the Deployment built from it is annotated with."""
        return spec_hash(self.to_dict())


@attrs.frozen
class RAGEngineStatus:
    """``status`` as KAITO's CRD declares it: conditions and workerNodes (other fields kept verbatim)."""

    conditions: tuple[Condition, ...] = ()
    worker_nodes: tuple[str, ...] | None = None
    other: Mapping[str, Any] = attrs.field(factory=dict)
    _memo: dict[str, Any] = attrs.field(factory=dict, init=False, eq=False, repr=False)  # the parsed record

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RAGEngineStatus:
        return cls(tuple(Condition.from_dict(c) for c in d.get("conditions") or ()),
                   None if d.get("workerNodes") is None else tuple(d["workerNodes"]),
                   _split(d, frozenset({"conditions", "workerNodes"})))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.other)
        if self.conditions:
            out["conditions"] = [c.to_dict() for c in self.conditions]
        _opt(out, "workerNodes", None if self.worker_nodes is None else list(self.worker_nodes))
        return out

    def condition(self, type_: str) -> Condition | None:
        for c in self.conditions:
            if c.type == type_:
                return c
        return None


@attrs.frozen
class RAGEngine:
    """A KAITO RAGEngine. ``problems`` is non-empty when the spec is invalid; ``spec`` is then None (the
    document's spec is kept verbatim for :meth:`to_dict`) and nothing may be acted on."""

    metadata: ObjectMeta
    spec: RAGEngineSpec | None = None
    status: RAGEngineStatus = attrs.field(factory=RAGEngineStatus)
    api_version: str = API_VERSIONS[0]
    kind: str = KIND
    problems: tuple[Problem, ...] = ()
    raw_spec: Any = None  # the spec as given, for an invalid RAGEngine
    other: Mapping[str, Any] = attrs.field(factory=dict)  # other top-level members, verbatim

    @property
    def key(self) -> str:
        return self.metadata.key

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def compute(self) -> Compute | None:
        return self.spec.compute if self.spec is not None else None

    @property
    def retrieve_only(self) -> bool:
        """No LLM endpoint: documents are indexed and retrieved, answers are not generated."""
        inf = self.spec.inference_service if self.spec is not None else None
        return inf is None or not inf.url

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"apiVersion": self.api_version, "kind": self.kind, "metadata": self.metadata.to_dict()}
        out.update(self.other)
        spec = self.spec.to_dict() if self.spec is not None else self.raw_spec
        _opt(out, "spec", spec)
        status = self.status.to_dict()
        if status:
            out["status"] = status
        return out

    def with_status(self, status: RAGEngineStatus) -> RAGEngine:
        return attrs.evolve(self, status=status)


def _readable_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    kinds: dict[str, Any] = {"labels": Mapping, "annotations": Mapping, "finalizers": (list, tuple), "generation": int,
             "namespace": str, "uid": str, "resourceVersion": str}
    out = {k: v for k, v in meta.items() if k not in kinds or v is None or isinstance(v, kinds[k])}
    for k in ("creationTimestamp", "deletionTimestamp"):
        try:
            parse_time(out.get(k))
        except (TypeError, ValueError):
            out.pop(k)
    return out


def parse_ragengine(doc: Any, *, cloud_provider: str | None = "azure") -> RAGEngine:
    """Parse an API dict into a :class:`RAGEngine`, checking it as KAITO's webhook would (see
    :func:`check_ragengine`); its problems travel on it, so that the machine reports them and creates
    nothing. Raises :class:`InvalidRAGEngine` only for a document that cannot be addressed."""
    if not isinstance(doc, Mapping):
        raise InvalidRAGEngine([Problem("", "NotAnObject", f"expected a RAGEngine object, not {describe_value(doc)}")])
    meta_doc = doc.get("metadata")
    if not isinstance(meta_doc, Mapping) or not isinstance(meta_doc.get("name"), str) or not meta_doc["name"]:
        raise InvalidRAGEngine([Problem("metadata.name", "NameRequired", "metadata.name is required")])
    problems = check_ragengine(doc, cloud_provider=cloud_provider)
    try:
        metadata = ObjectMeta.from_dict(meta_doc)
    except (TypeError, ValueError):
        metadata = ObjectMeta.from_dict(_readable_metadata(meta_doc))
    status = RAGEngineStatus()
    if isinstance(doc.get("status"), Mapping):
        try:
            status = RAGEngineStatus.from_dict(doc["status"])
        except (KeyError, TypeError, ValueError, AttributeError):
            status = RAGEngineStatus()  # rebuilt by the machine from what it observes
    api = doc.get("apiVersion") if isinstance(doc.get("apiVersion"), str) else API_VERSIONS[0]
    kind = doc.get("kind") if isinstance(doc.get("kind"), str) else KIND
    other = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata", "spec", "status")}
    spec: RAGEngineSpec | None = None
    if not problems:
        try:
            spec = RAGEngineSpec.from_dict(doc.get("spec") or {})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # pragma: no cover - the schema checks first
            problems = [Problem("spec", "SpecUnreadable", f"the spec cannot be read: {exc}")]
    if problems:
        return RAGEngine(metadata, None, status, api, kind, tuple(problems), doc.get("spec"), other)
    return RAGEngine(metadata, spec, status, api, kind, (), None, other)


# ============================================================================= validation


@functools.cache
def _crd() -> Mapping[str, Any]:
    resource = importlib.resources.files("workspace_fsm.kaito") / "data" / "kaito.sh_ragengines.yaml"
    crd: Mapping[str, Any] = yaml.safe_load(resource.read_text(encoding="utf-8"))
    return crd


@functools.cache
def ragengine_schema(version: str = "v1beta1") -> Mapping[str, Any]:
    """The ``openAPIV3Schema`` of KAITO's RAGEngine CRD (shipped as package data) for ``version``."""
    return k8s_schema.crd_schema(_crd(), version)


def is_ragengine(doc: Any) -> bool:
    """A document meant as a RAGEngine (kind RAGEngine in any letter case)."""
    kind = doc.get("kind") if isinstance(doc, Mapping) else None
    return isinstance(kind, str) and kind.lower() == KIND.lower()


class _Problems:
    def __init__(self) -> None:
        self.items: list[Problem] = []
        self._seen: set[tuple[str, str]] = set()

    def add(self, path: str, reason: str, message: str) -> None:
        if (path, reason) not in self._seen:
            self._seen.add((path, reason))
            self.items.append(Problem(path, reason, message))

    def extend(self, problems: Iterable[Problem]) -> None:
        for p in problems:
            self.add(p.path, p.reason, p.message)


# --- Go's net/url.ParseRequestURI, which KAITO's webhook checks every URL with ---------------------------

_HOST_OK = frozenset("!$&'()*+,;=:[]<>\"-_.~")
_USERINFO_OK = frozenset("-._:~!$&'()*+,;=%@")
_HEX = frozenset("0123456789abcdefABCDEF")


def _bad_escape(s: str, host: bool = False) -> str | None:
    """Go's unescape: a '%' must start two hex digits; in a host only ASCII letters, digits and a few
    marks may appear."""
    i = 0
    while i < len(s):
        c = s[i]
        if c == "%":
            if i + 2 >= len(s) or s[i + 1] not in _HEX or s[i + 2] not in _HEX \
                    or (host and int(s[i + 1], 16) < 8 and s[i:i + 3] != "%25"):
                return f"invalid URL escape {json.dumps(s[i:i + 3])}"
            i += 3
            continue
        if host and ord(c) < 0x80 and not c.isalnum() and c not in _HOST_OK:
            return f"invalid character {json.dumps(c)} in host name"
        i += 1
    return None


def _port_ok(colon_port: str) -> bool:
    return colon_port == "" or (colon_port[0] == ":" and all(ch in "0123456789" for ch in colon_port[1:]))


def parse_request_uri_error(url: str) -> str | None:
    """Why Go's ``url.ParseRequestURI`` (KAITO's URL check) refuses ``url``, in Go's words; None if it takes it.

    ParseRequestURI takes an absolute URI (``http://host/path``, ``scheme:opaque``) or an absolute path
    (``/path``); anything else, a relative reference such as ``<inference-url>/v1/chat/completions``, is
    "invalid URI for request"."""
    def err(why: str) -> str:
        return f'parse "{url}": {why}'

    if url == "":
        return err("empty url")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return err("net/url: invalid control character in URL")
    if url == "*":
        return None
    scheme, rest = "", url
    for i, ch in enumerate(url):
        if ch.isascii() and ch.isalpha():
            continue
        if ch.isascii() and (ch.isdigit() or ch in "+-."):
            if i == 0:
                break
            continue
        if ch == ":":
            if i == 0:
                return err("missing protocol scheme")
            scheme, rest = url[:i], url[i + 1:]
        break
    if rest.endswith("?") and rest.count("?") == 1:
        rest = rest[:-1]
    else:
        rest = rest.split("?", 1)[0]
    if not rest.startswith("/"):
        if scheme:
            return None  # an opaque URI (mailto:someone)
        return err("invalid URI for request")
    if scheme and rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        rest = slash + path
        userinfo, at, host = authority.rpartition("@")
        if host.startswith("["):
            close = host.rfind("]")
            if close < 0:
                return err("missing ']' in host")
            if not _port_ok(host[close + 1:]):
                return err(f'invalid port "{host[close + 1:]}" after host')
        elif ":" in host:
            colon_port = host[host.rfind(":"):]
            if not _port_ok(colon_port):
                return err(f'invalid port "{colon_port}" after host')
        bad = _bad_escape(host, host=True)
        if bad:
            return err(bad)
        if at:
            if any(not (ch.isascii() and ch.isalnum()) and ch not in _USERINFO_OK for ch in userinfo if ord(ch) < 0x80):
                return err("net/url: invalid userinfo")
            bad = _bad_escape(userinfo)
            if bad:
                return err(bad)
    bad = _bad_escape(rest)
    return err(bad) if bad else None


_PLACEHOLDER = re.compile(r"<[^<>]*>")
_LOCAL_IMAGE = re.compile(r"(.+/[^:/]+):([^:/]+)")


def _check_url(url: Any, path: str, what: str, reason: str, placeholder_reason: str, out: _Problems) -> None:
    if not isinstance(url, str):
        return  # the schema reports the type
    refused = parse_request_uri_error(url)
    marker = _PLACEHOLDER.search(url)
    if marker is not None:
        webhook = f" (KAITO's webhook refuses it too: {refused})" if refused else ""
        out.add(path, placeholder_reason,
                f"{describe_value(url)} is a placeholder, not a URL: replace {marker.group(0)} with the address of "
                f"your {what}, e.g. http://workspace-phi-3-mini.default.svc.cluster.local/v1/chat/completions for "
                f"a KAITO Workspace's OpenAI-compatible endpoint{webhook}")
    elif refused:
        out.add(path, reason, f"{describe_value(url)} is not a URL KAITO accepts for the {what} ({refused}); give an "
                              f"absolute URL such as http://my-llm.default.svc.cluster.local/v1/chat/completions")


def _check_metadata(meta: Any, out: _Problems) -> None:
    if not isinstance(meta, Mapping):
        out.add("metadata.name", "NameRequired", "is required: every RAGEngine needs metadata.name")
        return
    name = meta.get("name")
    if name is None or name == "":
        out.add("metadata.name", "NameRequired", "is required: every RAGEngine needs metadata.name")
    elif not isinstance(name, str):
        out.add("metadata.name", "FieldTypeInvalid", f"must be a string, not {describe_value(name)}")
    else:
        bad = _dns1123_label_errors(name)
        if bad is None and not name[0].isalpha():
            bad = "must start with a letter"
        if bad:
            out.add("metadata.name", "NameInvalid",
                    f"{describe_value(name)} {bad} (KAITO names the RAGEngine's Deployment and Service after it, and "
                    f"a Service name is a DNS-1035 label: lower-case letters, digits and '-', starting with a letter)")
    namespace = meta.get("namespace")
    if isinstance(namespace, str) and namespace:
        bad = _dns1123_label_errors(namespace)
        if bad:
            out.add("metadata.namespace", "NamespaceInvalid", f"{describe_value(namespace)} {bad}")
    labels = meta.get("labels")
    if isinstance(labels, Mapping):
        _check_label_map(labels, ("metadata", "labels"), out)  # type: ignore[arg-type]
    elif labels is not None:
        out.add("metadata.labels", "FieldTypeInvalid", f"must be a map of strings, not {describe_value(labels)}")
    annotations = meta.get("annotations")
    if annotations is not None and not isinstance(annotations, Mapping):
        out.add("metadata.annotations", "FieldTypeInvalid", f"must be a map of strings, not {describe_value(annotations)}")


def _check_selector(selector: Any, out: _Problems) -> None:
    """KAITO turns the selector into node labels (metav1.LabelSelectorAsMap): matchLabels, or In with one value."""
    if not isinstance(selector, Mapping):
        return
    base = ("spec", "compute", "labelSelector")
    labels = selector.get("matchLabels")
    if isinstance(labels, Mapping):
        _check_label_map(labels, (*base, "matchLabels"), out, check_types=False)  # type: ignore[arg-type]
    for i, expr in enumerate(selector.get("matchExpressions") or ()):
        if not isinstance(expr, Mapping):
            continue
        where = (*base, "matchExpressions", i)
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values")
        if isinstance(key, str) and (bad := _qualified_name_errors(key)):
            out.add(format_path((*where, "key")), "LabelKeyInvalid", f"{describe_value(key)} is not a valid label key: {bad}")
        if op == "In":
            if not isinstance(values, list) or len(values) != 1:
                n = len(values) if isinstance(values, list) else 0
                out.add(format_path((*where, "values")), "LabelSelectorValuesInvalid",
                        f"KAITO needs exactly one value for operator In (it turns the selector into node labels), not {n}")
            elif isinstance(values[0], str) and (bad := _label_value_errors(values[0])):
                out.add(format_path((*where, "values", 0)), "LabelValueInvalid",
                        f"{describe_value(values[0])} is not a valid label value: it {bad}")
        elif op in ("NotIn", "Exists", "DoesNotExist"):
            out.add(format_path((*where, "operator")), "LabelSelectorOperatorNotSupported",
                    f"KAITO accepts only matchLabels or operator In with one value (it turns the selector into node "
                    f"labels); {op} cannot be used")
        elif isinstance(op, str):
            out.add(format_path((*where, "operator")), "LabelSelectorOperatorInvalid",
                    f"{describe_value(op)} is not a selector operator; use In (with one value) or matchLabels")


def _check_instance_type(compute: Mapping[str, Any], cloud_provider: str | None, out: _Problems) -> None:
    if cloud_provider is None:
        return
    value = compute.get("instanceType")
    if value is not None and not isinstance(value, str):
        return  # the schema reports the type
    instance_type = value or ""
    path = "spec.compute.instanceType"
    if cloud_provider != "azure":
        return  # this check knows Azure's sizes only
    lowered = instance_type.lower()
    if lowered in AZURE_GPU_SKUS or lowered.startswith(AZURE_SERIES_PREFIXES):
        return
    if not instance_type:
        out.add(path, "InstanceTypeRequired",
                "is required with compute: KAITO's webhook refuses a RAGEngine whose compute has no instanceType; set "
                "the GPU VM size, e.g. instanceType: Standard_NC24ads_A100_v4, or remove compute to run without "
                "dedicated nodes")
        return
    out.add(path, "InstanceTypeNotSupported",
            f"{describe_value(instance_type)} is not a GPU size KAITO supports on Azure: use one of KAITO's GPU SKUs "
            f"(e.g. Standard_NC24ads_A100_v4) or another N-series or D-series size (Standard_N..., Standard_D...)")


def _check_webhook_rules(spec: Mapping[str, Any], version: str, cloud_provider: str | None, out: _Problems) -> None:
    inf = spec.get("inferenceService")
    if isinstance(inf, Mapping):
        url = inf.get("url")
        # v1alpha1 checks the url always (it is required there); v1beta1 only when given (none: retrieve-only).
        # (A missing url is the schema's to report: v1alpha1 requires it.)
        if (version == "v1alpha1" and url is not None) or (isinstance(url, str) and url):
            _check_url(url, "spec.inferenceService.url", "LLM inference service", "InferenceURLInvalid",
                       "InferenceURLPlaceholder", out)
        size = inf.get("contextWindowSize")
        if isinstance(size, int) and not isinstance(size, bool) and size <= 0:
            out.add("spec.inferenceService.contextWindowSize", "ContextWindowSizeInvalid",
                    f"must be a positive number of tokens, not {size}: set the context window of your LLM, e.g. 4096")
    emb = spec.get("embedding")
    if not isinstance(emb, Mapping):
        return  # required by the schema, which reports it
    local, remote = emb.get("local"), emb.get("remote")
    if local is None and remote is None:
        out.add("spec.embedding", "EmbeddingSourceRequired",
                "needs local or remote: e.g. local: {modelID: BAAI/bge-small-en-v1.5}, or remote: {url: https://...}")
    elif local is not None and remote is not None:
        out.add("spec.embedding", "EmbeddingSourceConflict",
                "has both local and remote: keep one (a RAGEngine embeds with one model)")
    compute = spec.get("compute")
    if isinstance(compute, Mapping):
        _check_instance_type(compute, cloud_provider, out)
        _check_selector(compute.get("labelSelector"), out)
    if isinstance(local, Mapping):
        image, model_id = local.get("image") or "", local.get("modelID") or ""
        if not image and not model_id:
            out.add("spec.embedding.local", "EmbeddingModelRequired",
                    "needs image or modelID: e.g. modelID: BAAI/bge-small-en-v1.5 (a Hugging Face model id)")
        elif image and model_id:
            out.add("spec.embedding.local", "EmbeddingModelConflict",
                    "has both image and modelID: give the model either as an image or as a Hugging Face modelID")
        if isinstance(image, str) and image:
            m = _LOCAL_IMAGE.fullmatch(image)
            if m is None:
                out.add("spec.embedding.local.image", "EmbeddingImageInvalid",
                        f"{describe_value(image)} is not a full image reference: KAITO needs registry/repository:tag, "
                        f"e.g. myregistry.azurecr.io/bge-small:0.1.0")
            elif (repo := image.rsplit("/", 1)[-1].split(":", 1)[0]) != repo.lower():
                out.add("spec.embedding.local.image", "EmbeddingImageInvalid",
                        f"{describe_value(image)}: the repository name {describe_value(repo)} must be lower case")
    if isinstance(remote, Mapping):
        _check_url(remote.get("url", ""), "spec.embedding.remote.url", "embedding service", "EmbeddingURLInvalid",
                   "EmbeddingURLPlaceholder", out)


def check_ragengine(doc: Any, *, cloud_provider: str | None = "azure") -> list[Problem]:
    """Every problem with one RAGEngine document, as an API server with KAITO's CRD and webhook finds them.

    The envelope and metadata; the CRD's structural schema for the document's version (unknown fields are
    reported, defaults filled in, then types and required fields checked); then KAITO's admission rules on
    create: an inference URL and a remote embedding URL Go's ``url.ParseRequestURI`` takes (a placeholder
    left from KAITO's examples, ``<inference-url>``, is reported as such), a positive context window, one
    embedding source (local: an image or a model id), compute's instance type (``cloud_provider`` "azure":
    KAITO's GPU SKUs or any N- or D-series size; None: not checked) and a selector KAITO can turn into node
    labels. Not checked, because it needs the cluster: guardrails' ConfigMap. Never raises.
    """
    out = _Problems()
    if not isinstance(doc, Mapping):
        out.add("", "DocumentNotAnObject", f"a RAGEngine must be an object (a mapping), not {describe_value(doc)}")
        return out.items
    api = doc.get("apiVersion")
    version = "v1beta1"
    if not api:
        out.add("apiVersion", "APIVersionRequired", f"is required; set apiVersion: {API_VERSIONS[0]}")
    elif api not in API_VERSIONS:
        out.add("apiVersion", "APIVersionNotSupported",
                f"{describe_value(api)} is not a RAGEngine API version; use {API_VERSIONS[0]} ({API_VERSIONS[1]} is "
                f"deprecated but accepted)")
    elif api.endswith("/v1alpha1"):
        version = "v1alpha1"
    kind = doc.get("kind")
    if kind != KIND:
        out.add("kind", "KindNotRAGEngine", f"{describe_value(kind)} is not {KIND}" if kind else f"is required; set kind: {KIND}")
    _check_metadata(doc.get("metadata"), out)
    crd = ragengine_schema(version)
    try:
        body = {k: v for k, v in doc.items() if k != "status"}
        pruned, removed = k8s_schema.prune(body, crd)
        for path in removed:
            where = "an ObjectMeta field" if path.startswith("metadata") else f"a field of RAGEngine {API_GROUP}/{version}"
            out.add(path, "FieldUnknown", f"is not {where} (a typo, or a field of the other API version?); the API "
                                          f"server drops it (kubectl's strict validation rejects it)")
        full = k8s_schema.apply_defaults(pruned, crd)
        out.extend(k8s_schema.validate(full, crd))
    except RecursionError:
        out.add("", "DocumentTooDeep", "the document is nested too deeply to check")
        return out.items
    spec = full.get("spec") if isinstance(full, Mapping) else None
    if spec is None:
        out.add("spec", "SpecRequired", "is required: a RAGEngine needs at least spec.embedding")
    elif isinstance(spec, Mapping):
        _check_webhook_rules(spec, version, cloud_provider, out)
    return out.items


def check_update(old: Any, new: Any) -> list[Problem]:
    """What KAITO's webhook refuses in an update from ``old`` to ``new`` (both documents): compute added or
    removed, and, within compute, a changed count, partition, instanceType (once set) or labelSelector."""
    out = _Problems()

    def compute(doc: Any) -> Any:
        spec = doc.get("spec") if isinstance(doc, Mapping) else None
        return spec.get("compute") if isinstance(spec, Mapping) else None

    was, now = compute(old), compute(new)
    if was is None and now is not None:
        out.add("spec.compute", "ComputeImmutable", "cannot be added after creation: create a new RAGEngine with compute")
    elif was is not None and now is None:
        out.add("spec.compute", "ComputeImmutable", "cannot be removed after creation: create a new RAGEngine without it")
    elif isinstance(was, Mapping) and isinstance(now, Mapping):
        if was.get("count", 1) != now.get("count", 1):  # the CRD defaults count to 1
            out.add("spec.compute.count", "FieldImmutable", "cannot be changed after creation")
        for field in ("partition", "labelSelector"):
            if was.get(field) != now.get(field):
                out.add(f"spec.compute.{field}", "FieldImmutable", "cannot be changed after creation")
        if was.get("instanceType") and now.get("instanceType") and was["instanceType"] != now["instanceType"]:
            out.add("spec.compute.instanceType", "FieldImmutable", "cannot be changed once set")
    return out.items


def validate_ragengine_files(paths: Iterable[str], *, cloud_provider: str | None = "azure") -> list[tuple[str, int, str, Problem]]:
    """(file, document number, namespace/name, problem) for every problem of every RAGEngine in the YAML files;
    documents of other kinds (a PersistentVolumeClaim beside the RAGEngine) are skipped."""
    found: list[tuple[str, int, str, Problem]] = []
    for path in paths:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
        for index, doc in enumerate(load_yaml_documents(text), start=1):
            if doc is None or not is_ragengine(doc):
                continue
            found.extend((str(path), index, object_ref(doc), p) for p in check_ragengine(doc, cloud_provider=cloud_provider))
    return found


# ============================================================================= snapshot and manifests


@attrs.frozen
class Service:
    """The RAGEngine's Service as the machine sees it."""

    name: str
    type: str = "ClusterIP"
    deleting: bool = False


@attrs.frozen
class RAGSnapshot:
    """What the adapter observed of a RAGEngine's world, read from its caches (it may be stale).

    ``nodeclaims``, ``nodes``, ``absent`` and ``refused`` mean what they mean in
    :class:`workspace_fsm.kaito.model.Snapshot` (the NodeClaim block reads them). ``deployment`` is the
    RAGEngine's Deployment (named after it), ``service`` its Service. ``absent`` may also hold
    ``"Deployment/<name>"`` and ``"Service/<name>"``: their absence confirmed once they were recorded."""

    nodeclaims: tuple[NodeClaim, ...] = ()
    nodes: Mapping[str, Node] = attrs.field(factory=dict)
    deployment: Workload | None = None
    service: Service | None = None
    absent: frozenset[str] = frozenset()
    refused: Mapping[str, str] = attrs.field(factory=dict)


def _gpu_count(rag: RAGEngine) -> int:
    c = rag.compute
    return AZURE_GPU_SKUS.get((c.instance_type or "").lower(), 0) if c is not None else 0


def _env(rag: RAGEngine) -> list[dict[str, Any]]:
    """The RAG service's configuration: KAITO passes every setting as an environment variable."""
    spec = rag.spec
    assert spec is not None
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
    ]
    emb = spec.embedding
    if emb is not None and emb.local is not None:
        if emb.local.model_id:
            env.append({"name": "MODEL_ID", "value": emb.local.model_id})
        if emb.local.model_access_secret:
            env.append({"name": "ACCESS_SECRET", "value": emb.local.model_access_secret})
    env.append({"name": "EMBEDDING_TYPE", "value": "local" if emb is not None and emb.local is not None else "remote"})
    st = spec.storage
    vdb = st.vector_db if st is not None else None
    env.append({"name": "VECTOR_DB_TYPE", "value": (vdb.engine if vdb is not None and vdb.engine else "faiss")})
    if vdb is not None:
        env.append({"name": "VECTOR_DB_URL", "value": vdb.url})
        if vdb.access_secret:
            env.append({"name": "VECTOR_DB_ACCESS_SECRET", "valueFrom": {"secretKeyRef": {
                "name": vdb.access_secret, "key": "VECTOR_DB_ACCESS_SECRET"}}})
    persist = "storage"
    if st is not None and st.persistent:
        persist = f"{st.mount_path or DEFAULT_MOUNT_PATH}/{rag.metadata.name}"
    env.append({"name": "DEFAULT_VECTOR_DB_PERSIST_DIR", "value": persist})
    inf = spec.inference_service
    if inf is not None:
        env.append({"name": "LLM_CONTEXT_WINDOW", "value": str(inf.context_window_size)})
        if inf.url:
            env.append({"name": "LLM_INFERENCE_URL", "value": inf.url})
            if inf.access_secret:
                env.append({"name": "LLM_ACCESS_SECRET", "valueFrom": {"secretKeyRef": {
                    "name": inf.access_secret, "key": "LLM_ACCESS_SECRET"}}})
    g = spec.guardrails
    if g is not None:
        env.append({"name": "OUTPUT_GUARDRAILS_ENABLED", "value": "true" if g.enabled else "false"})
        if g.enabled:
            env.append({"name": "OUTPUT_GUARDRAILS_POLICY_PATH", "value": f"{GUARDRAILS_MOUNT_PATH}/{GUARDRAILS_FILE}"})
    return env


def _pod_spec(rag: RAGEngine, image: str) -> dict[str, Any]:
    spec = rag.spec
    assert spec is not None
    name = rag.metadata.name
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    st = spec.storage
    if st is not None:
        source = {"persistentVolumeClaim": {"claimName": st.pvc}} if st.pvc else {"emptyDir": {}}
        volumes.append({"name": "vector-db-storage", **source})
        mounts.append({"name": "vector-db-storage", "mountPath": st.mount_path or DEFAULT_MOUNT_PATH})
    g = spec.guardrails
    if g is not None and g.enabled:
        volumes.append({"name": "guardrails-policy", "configMap": {
            "name": g.config_map or DEFAULT_GUARDRAILS_CONFIGMAP, "items": [{"key": GUARDRAILS_FILE, "path": GUARDRAILS_FILE}]}})
        mounts.append({"name": "guardrails-policy", "mountPath": GUARDRAILS_MOUNT_PATH, "readOnly": True})
    gpus = _gpu_count(rag)
    if spec.embedding is not None and spec.embedding.local is not None and gpus:
        resources: dict[str, Any] = {"requests": {GPU_RESOURCE: str(gpus)}, "limits": {GPU_RESOURCE: str(gpus)}}
    else:
        resources = {"requests": {"cpu": "500m", "memory": "512Mi"}}
    probe = {"httpGet": {"path": "/health", "port": CONTAINER_PORT}, "periodSeconds": 10}
    pod: dict[str, Any] = {
        "terminationGracePeriodSeconds": 60,
        "containers": [{
            "name": name, "image": image, "command": ["/bin/sh", "-c", "python3 main.py"],
            "ports": [{"containerPort": CONTAINER_PORT}], "env": _env(rag), "resources": resources,
            "livenessProbe": {**probe, "initialDelaySeconds": 600},
            "readinessProbe": {**probe, "initialDelaySeconds": 30},
            "volumeMounts": mounts,
        }],
        "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},
                        {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
        "volumes": volumes,
    }
    labels = spec.compute.node_labels if spec.compute is not None else {}
    if labels:
        pod["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": k, "operator": "In", "values": [v]} for k, v in labels.items()]}]}}}
    return pod


def deployment_manifest(rag: RAGEngine, revision: str, image: str = DEFAULT_IMAGE) -> dict[str, Any]:
    """The RAG service's Deployment as KAITO builds it: one replica named after the RAGEngine, its pods
    labelled ``kaito.sh/ragengine``, on nodes with the compute selector's labels (any node without compute),
    GPUs requested when a local embedding model runs on a GPU size KAITO knows; annotated with the revision.
    The ownerReference is added by the adapter (:class:`~workspace_fsm.engine.Create` ``owned``)."""
    name = rag.metadata.name
    selector = {LABEL_RAGENGINE: name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": rag.metadata.namespace, "labels": dict(selector),
                     "annotations": {ANNOTATION_REVISION: revision}},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "selector": {"matchLabels": dict(selector)},
            "template": {"metadata": {"labels": dict(selector)}, "spec": _pod_spec(rag, image)},
        },
    }


def service_manifest(rag: RAGEngine) -> dict[str, Any]:
    """The Service in front of the RAG service: port 80 to the pods' 5000, ClusterIP (LoadBalancer when the
    RAGEngine is annotated ``kaito.sh/enablelb: "True"``), not-ready addresses published, as KAITO does."""
    name = rag.metadata.name
    lb = rag.metadata.annotations.get(ANNOTATION_ENABLE_LB) == "True"
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": rag.metadata.namespace, "labels": {LABEL_RAGENGINE: name}},
        "spec": {"type": "LoadBalancer" if lb else "ClusterIP",
                 "ports": [{"name": "http", "protocol": "TCP", "port": SERVICE_PORT, "targetPort": CONTAINER_PORT}],
                 "selector": {LABEL_RAGENGINE: name}, "publishNotReadyAddresses": True},
    }


# ============================================================================= lifecycle: configuration and record


@attrs.frozen
class Config(EngineConfig):
    """Knobs of the RAGEngine machine (the NodeClaim block reads the same ones as the Workspace's)."""

    max_nodeclaim_failures: int = 6
    gpu_recheck: timedelta = timedelta(seconds=5)
    loss_settle: timedelta = timedelta(seconds=10)
    finalizer: str = FINALIZER
    image: str = DEFAULT_IMAGE  # the RAG service image (KAITO: PRESET_RAG_REGISTRY_NAME/IMAGE_NAME/IMAGE_TAG)


DEFAULT_CONFIG = Config()


@attrs.frozen
class RAGEngineBook(NodeClaimBook):
    """The RAGEngine's bookkeeping: its NodeClaims (see NodeClaimBook), the revision its Deployment was
    created or updated with, and whether its Service was created."""

    revision: str | None = None
    service: bool = False

    def to_json(self) -> dict[str, Any]:
        body = super().to_json()
        if self.revision is not None:
            body["rev"] = self.revision
        if self.service:
            body["svc"] = 1
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RAGEngineBook:
        rev = body.get("rev")
        return cls(**cls.fields_from_json(body), revision=None if rev is None else str(rev), service=bool(body.get("svc")))


RECORD = RecordFormat(data=RAGEngineBook, version=1, store=ConditionStore(LIFECYCLE_CONDITION))


def target_node_count(rag: RAGEngine) -> int:
    """GPU nodes the RAGEngine needs: compute.count (default 1), none without compute."""
    c = rag.compute
    return 0 if c is None else max(1, c.count or 1)


# ============================================================================= facts and guards


class RAGEngineFacts(NodeFacts):
    """What the guards read, derived once per pass."""

    __slots__ = ("rag", "revision")

    def __init__(self, rag: RAGEngine, snap: RAGSnapshot, now: datetime, config: Config,
                 rec: Record[RAGEngineBook], pass_id: str = "") -> None:
        super().__init__(rag, snap, now, config, rec, pass_id)
        self.rag = rag
        self.revision = rag.spec.revision if rag.spec is not None else ""
        c = rag.compute
        m = rag.metadata
        # The NodeClaims carry the owner's labels and the selector's, so that the Deployment's node affinity
        # (the selector's matchLabels) finds the nodes they bring.
        labels = ((LABEL_RAGENGINE, m.name), (LABEL_RAGENGINE_NAMESPACE, m.namespace),
                  *(c.node_labels.items() if c is not None else ()))
        self.observe_nodes(target=target_node_count(rag), has_compute=c is not None, byo=False,
                           selector=c.label_selector if c is not None else None,
                           instance_type=(c.instance_type or "") if c is not None else "",
                           owner_labels=labels, worker_nodes=rag.status.worker_nodes)

    @property
    def name(self) -> str:
        return self.rag.metadata.name


def _compute_shown(f: RAGEngineFacts) -> str:
    if not f.rag.valid:
        return "; ".join(str(p) for p in f.rag.problems)
    return "the spec is valid and asks for compute" if f.rag.compute is not None else "the spec is valid, no compute"


@guard(shows=_compute_shown)
def spec_accepted_with_compute(f: RAGEngineFacts) -> bool:
    """The spec passed validation and asks for GPU nodes (spec.compute)."""
    return f.rag.valid and f.rag.compute is not None


@guard(shows=_compute_shown)
def spec_accepted_without_compute(f: RAGEngineFacts) -> bool:
    """The spec passed validation and needs no nodes of its own (no spec.compute)."""
    return f.rag.valid and f.rag.compute is None


nodes_ready = nc.nodes_ready
nodes_lost = nc.nodes_lost
gpus_ready = nc.gpus_ready


@guard(shows=nc._claims_shown)
def compute_nodes_lost(f: RAGEngineFacts) -> bool:
    """The RAGEngine has compute and fewer ready nodes than it needs (see nodes_lost)."""
    return f.provisions and nc.nodes_lost(f)


def _service_shown(f: RAGEngineFacts) -> str:
    d, s = f.snap.deployment, f.snap.service
    dep = (f"no Deployment {f.name} in the cache" if d is None else
           f"Deployment {d.name}: {d.ready_replicas}/{d.replicas} ready, {d.updated_replicas} updated, revision "
           f"{d.revision or '-'} (spec: {f.revision})" + (f", {d.problem}" if d.problem else ""))
    svc = f"no Service {f.name} in the cache" if s is None else f"Service {s.name} ({s.type})"
    return f"{dep}; {svc}"


def _deployment_ready(f: RAGEngineFacts) -> bool:
    d = f.snap.deployment
    return d is not None and d.revision == f.revision and d.is_ready


@guard(shows=_service_shown)
def rag_service_ready(f: RAGEngineFacts) -> bool:
    """The Deployment has the current revision and its replica is ready, and the Service exists."""
    s = f.snap.service
    return _deployment_ready(f) and s is not None and not s.deleting


@guard(shows=_service_shown)
def rag_service_unready_or_stale(f: RAGEngineFacts) -> bool:
    """The Deployment was built from an older spec or is gone, or its replica or the Service is missing past
    Config.loss_settle in Ready (a lagging cache's echo is not a loss)."""
    d = f.snap.deployment
    if d is not None and d.revision != f.revision:
        return True
    return not rag_service_ready(f) and nc.loss_settled(f)


# ============================================================================= steps


def ensure_service(f: RAGEngineFacts, book: RAGEngineBook, out: list[Any]) -> RAGEngineBook:
    """The Service exists: recorded (this pass's status write), then created."""
    s = f.snap.service
    if s is not None:
        return book if book.service else attrs.evolve(book, service=True)  # adopt what exists
    if book.service and ("Service/" + f.name) not in f.snap.absent:
        return book  # created already, not yet in the cache
    out.append(Create(service_manifest(f.rag), claim=f.pass_id))
    return attrs.evolve(book, service=True)


def ensure_deployment(f: RAGEngineFacts, book: RAGEngineBook, out: list[Any]) -> RAGEngineBook:
    """The Deployment exists with the current revision: created (never before this pass sees the nodes Ready
    with GPU capacity, when the RAGEngine has compute), or updated in place when the spec changed."""
    d = f.snap.deployment
    if d is None:
        if f.provisions and not f.gpus_ready:
            # Another runner took it this far; this one's caches do not show the nodes ready with GPUs
            # (or they were lost since): nothing is created on its word alone.
            return book
        if book.revision is None or ("Deployment/" + f.name) in f.snap.absent:
            out.append(Create(deployment_manifest(f.rag, f.revision, f.config.image), claim=f.pass_id))
            return attrs.evolve(book, revision=f.revision)
        return book  # created already (possibly for an older spec) and not yet visible
    if d.revision == f.revision:
        return book if book.revision == f.revision else attrs.evolve(book, revision=f.revision)
    if d.deleting:
        return book
    m = deployment_manifest(f.rag, f.revision, f.config.image)
    out.append(Patch("apps/v1", "Deployment", d.name, {"metadata": {"annotations": m["metadata"]["annotations"]},
                                                       "spec": {"template": m["spec"]["template"]}}))
    return attrs.evolve(book, revision=f.revision)


# ============================================================================= status projections

Conds = list[tuple[str, str, str, str]]


def _no_longer_serving(f: RAGEngineFacts, why: str) -> Conds:
    """Before the service is ready: RAGEngineSucceeded False, and ServiceReady False if it was True before."""
    out: Conds = []
    prev = f.rag.status.condition(SERVICE_READY)
    if prev is not None and prev.status == "True":
        out.append((SERVICE_READY, "False", "RAGEngineServiceNotReady", why))
        out.append((RAGENGINE_SERVICE_READY, "False", "RAGEngineServiceNotReady", why))
    out.append((RAGENGINE_SUCCEEDED, "False", "RAGEnginePending", why))
    return out


def _resources_ready(f: RAGEngineFacts) -> Conds:
    out: Conds = []
    if f.provisions:
        out.append((NODECLAIM_READY, "True", "installNodePluginsSuccess", "nodeClaim plugins have been installed successfully"))
    out.append((RESOURCE_READY, "True", "ragengineResourceStatusSuccess", "ragengine resource is ready"))
    return out


def show_pending(f: RAGEngineFacts) -> Conds:
    return []


def show_provisioning(f: RAGEngineFacts) -> Conds:
    n, book = f.target, f.rec.data
    if book.claim_failures >= f.config.max_nodeclaim_failures:
        msg = (f"{book.claim_failures} NodeClaim(s) failed or were replaced; no more are created. Check instance type "
               f"{f.instance_type} availability, then delete and re-create the RAGEngine")
        claims = (NODECLAIM_READY, "False", "nodeClaimFailedCreation", msg)
        resource = (RESOURCE_READY, "False", "ragengineResourceStatusFailed", msg)
    elif f.deadline_fired:
        msg = f"{n} NodeClaim(s) not Ready in time; unready ones are replaced"
        claims = (NODECLAIM_READY, "False", "checkNodeClaimStatusFailed", msg)
        resource = (RESOURCE_READY, "False", "ragengineResourceStatusFailed", msg)
    else:
        claims = (NODECLAIM_READY, "Unknown", "CreateNodeClaimPending", f"creating {n} nodeClaim(s)")
        resource = (RESOURCE_READY, "False", "NodeClaimsNotReady", f"waiting for {n} NodeClaim(s) and their node(s) to be Ready")
    return [claims, resource, *_no_longer_serving(f, "resources are not ready yet")]


def show_plugins(f: RAGEngineFacts) -> Conds:
    if f.deadline_fired:
        resource = (RESOURCE_READY, "False", "ragengineResourceStatusFailed",
                    "node plugin installation timed out: nodes are Ready but do not advertise nvidia.com/gpu; check the "
                    "NVIDIA device plugin on " + ", ".join(f.ready_nodes))
    else:
        resource = (RESOURCE_READY, "False", "GPUCapacityNotReady",
                    f"nodes are Ready; waiting for nvidia.com/gpu capacity on {f.target} node(s)")
    return [(NODECLAIM_READY, "Unknown", "NodePluginsPending", "NodeClaims are Ready; waiting for the GPU device plugin"),
            resource, *_no_longer_serving(f, "resources are not ready yet")]


def show_deploying(f: RAGEngineFacts) -> Conds:
    d = f.snap.deployment
    problem = d.problem if d is not None and d.problem else None
    what = f"RAG service Deployment {f.name} is not ready" + (f": {problem}" if problem else "")
    if f.deadline_fired:
        return _resources_ready(f) + [
            (SERVICE_READY, "False", "RAGEngineServiceStatusFailed", what + " after its deadline"),
            (RAGENGINE_SERVICE_READY, "False", "RAGEngineServiceStatusFailed", what + " after its deadline"),
            (RAGENGINE_SUCCEEDED, "False", "ragengineFailed", what)]
    return _resources_ready(f) + [(SERVICE_READY, "False", problem or "RAGEngineServiceDeploying", what),
                                  (RAGENGINE_SERVICE_READY, "False", problem or "RAGEngineServiceDeploying", what),
                                  (RAGENGINE_SUCCEEDED, "False", "RAGEngineNotReady", what)]


def show_ready(f: RAGEngineFacts) -> Conds:
    return _resources_ready(f) + [
        (SERVICE_READY, "True", "RAGEngineServiceSuccess", "Inference has been deployed successfully"),
        (RAGENGINE_SERVICE_READY, "True", "RAGEngineServiceSuccess", f"Service {f.name} and its Deployment are ready"),
        (RAGENGINE_SUCCEEDED, "True", "ragengineSucceeded", "ragengine succeeds")]


def show_deleting(f: RAGEngineFacts) -> Conds:
    return [(RAGENGINE_DELETING, "True", "ragengineDeleted", "ragengine is being deleted")]


workers_now = nc.workers_now


def project(rag: RAGEngine, f: RAGEngineFacts | None, state: str | None, conditions: tuple[Condition, ...],
            summary: str | None, fields: Mapping[str, Any] | None) -> RAGEngineStatus:
    """KAITO's RAGEngine status: the conditions (the record's among them) and workerNodes."""
    prev = rag.status
    workers = fields["workerNodes"] if fields and "workerNodes" in fields else prev.worker_nodes
    return RAGEngineStatus(conditions=conditions, worker_nodes=workers, other=prev.other)


def confirmations(rag: RAGEngine, rec: Record[RAGEngineBook] | None = None) -> frozenset[str]:
    """The objects whose absence the machine must know positively (a tombstone or a 404 puts them in
    ``RAGSnapshot.absent``): every recorded NodeClaim, and the Deployment and Service once recorded."""
    rec = rec if rec is not None else RECORD.read(rag)
    if rec is None:
        return frozenset()
    out = nc.nodes_confirmations(rec.data)
    if rec.data.revision is not None:
        out.add("Deployment/" + rag.metadata.name)
    if rec.data.service:
        out.add("Service/" + rag.metadata.name)
    return frozenset(out)


def loss_held(f: RAGEngineFacts) -> WakeUp | None:
    """Nodes or the service look lost too soon after entering the state: look again once Config.loss_settle
    has passed (then it counts)."""
    left = nc.loss_settle_left(f)
    if left is None:
        return None
    lost_nodes = f.provisions and not f.nodes_ready
    if lost_nodes or (f.rec.state == "Ready" and not rag_service_ready(f)):
        return WakeUp(left,
                      f"{f.rec.state}: nodes or the service look lost; confirmed after {f.config.loss_settle} in the state")
    return None


# ============================================================================= the table

_M = timedelta(minutes=1)
# Gone NodeClaims leave the record before the missing ones are asked for: ensure_nodeclaims may pick the
# name of one that is gone (an adopted one: its sequence was never counted), and forget_gone after it would
# then drop from the record the very name this pass creates.
_NODES = (nc.forget_gone, nc.ensure_nodeclaims)
_SERVE = (*_NODES, ensure_service, ensure_deployment)

STATE_TABLE: tuple[State, ...] = (
    State("Pending", "Validated and finalizer added; nothing created yet. An invalid spec waits here.",
          conditions=show_pending),
    State("NodesProvisioning", "compute: NodeClaims created (compute.count of them); waiting for them and their "
                               "Nodes to be Ready. Unready ones are replaced at the deadline.",
          ensure=_NODES, deadline=Deadline(10 * _M, "NodeClaimNotReady", Run(nc.replace_unready_nodeclaims), max_firings=3),
          conditions=show_provisioning, fields=workers_now),
    State("PluginsReady", "compute: nodes are Ready; waiting for the GPU device plugin to advertise nvidia.com/gpu "
                          "(KAITO gives it 60 seconds, then reports the timeout and keeps trying).",
          ensure=_NODES, deadline=Deadline(timedelta(seconds=60), "GPUDevicePluginNotReady", Report()),
          wake=(nc.recheck_gpu_capacity, loss_held), conditions=show_plugins, fields=workers_now),
    State("Deploying", "The Service and the RAG service Deployment are created (or the Deployment updated to the "
                       "current spec); waiting for its replica to be ready (KAITO's 10-minute check is the deadline).",
          ensure=_SERVE, deadline=Deadline(10 * _M, "RAGEngineServiceStatusFailed", Report()),
          wake=(loss_held,), conditions=show_deploying, fields=workers_now),
    State("Ready", "The RAG service is being served; left again if nodes, the Deployment or the Service are lost, or "
                   "the spec changes.",
          ensure=_SERVE, wake=(loss_held,), conditions=show_ready, fields=workers_now),
    State("Deleting", "deletionTimestamp set: the RAGEngine's NodeClaims deleted, then the finalizer removed "
                      "(the Deployment and Service go with it: they are owned).",
          ensure=(nc.delete_nodeclaims,), deadline=Deadline(10 * _M, "NodeClaimsNotDeleted"), conditions=show_deleting),
)

TRANSITIONS: tuple[Edge, ...] = (
    Edge("Pending", "NodesProvisioning", spec_accepted_with_compute),
    Edge("Pending", "Deploying", spec_accepted_without_compute),
    Edge("NodesProvisioning", "PluginsReady", nodes_ready),
    Edge("PluginsReady", "NodesProvisioning", nodes_lost),
    Edge("PluginsReady", "Deploying", gpus_ready),
    Edge("Deploying", "NodesProvisioning", compute_nodes_lost),
    Edge("Deploying", "Ready", rag_service_ready),
    Edge("Ready", "NodesProvisioning", compute_nodes_lost),
    Edge("Ready", "Deploying", rag_service_unready_or_stale),
)

RAGENGINE_KIND = Kind("kaito.sh/v1beta1", "RAGEngine", "ragengines")
NODECLAIM_KIND = Kind("karpenter.sh/v1", "NodeClaim", "nodeclaims", namespaced=False)
DEPLOYMENT_KIND = Kind("apps/v1", "Deployment", "deployments")
SERVICE_KIND = Kind("v1", "Service", "services")
NODE_KIND = Kind("v1", "Node", "nodes", namespaced=False)

RAGENGINE: Lifecycle[RAGEngineFacts] = Lifecycle(
    "ragengine",
    doc="KAITO's RAGEngine: with compute, GPU nodes and their device plugins first; then its Service and RAG "
        "service Deployment, then ready. Without compute (retrieve-only or remote embeddings): Service and "
        "Deployment only.",
    resource=RAGENGINE_KIND,
    states=STATE_TABLE, edges=TRANSITIONS, initial="Pending", deleting="Deleting", finalizer=FINALIZER,
    record=RECORD, facts=RAGEngineFacts, conditions=KAITO_CONDITIONS, invalid=RAGENGINE_SUCCEEDED, project=project,
    wake=(nc.in_flight_wake,), on_write=nc.drop_claim_marker,
    owns=(
        Owns(NODECLAIM_KIND, by_labels(LABEL_RAGENGINE, LABEL_RAGENGINE_NAMESPACE), label_selector=LABEL_RAGENGINE),
        # get: a recorded Deployment or Service missing from the cache is confirmed absent by a GET.
        Owns(DEPLOYMENT_KIND, by_owner_reference("RAGEngine"),
             verbs=frozenset({"list", "watch", "get", "create", "patch"}), label_selector=LABEL_RAGENGINE),
        Owns(SERVICE_KIND, by_owner_reference("RAGEngine"), verbs=frozenset({"list", "watch", "get", "create"}),
             label_selector=LABEL_RAGENGINE),
    ),
    watches=(Watches(NODE_KIND, label_selector=LABEL_RAGENGINE),),
    parse=parse_ragengine, confirm=confirmations, config=DEFAULT_CONFIG,
)
