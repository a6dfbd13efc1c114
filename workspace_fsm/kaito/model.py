"""Typed model of a KAITO Workspace (kaito.sh/v1beta1) and of the cluster snapshot the machine reads.

API dicts are parsed into these attrs types once, at the adapter boundary (:func:`parse_workspace`).
Inside the core nothing is a dict of anything, except the two fields KAITO's own CRD leaves open
(``x-kubernetes-preserve-unknown-fields``: a pod ``template`` and ``volumeSource``), which are kept
verbatim so that a Workspace serialises back to the document it came from.

Times are timezone-aware UTC ``datetime`` values. Anything persisted has whole-second precision,
as ``metav1.Time`` has, so that a decision rebuilt from the persisted object is the same decision.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from workspace_fsm.engine.objects import Condition, ObjectMeta, _opt, format_time, parse_time, whole_seconds  # noqa: F401
from workspace_fsm.kaito.errors import InvalidWorkspace, Problem

API_VERSION = "kaito.sh/v1beta1"
KIND = "Workspace"

# Labels KAITO puts on the NodeClaims it creates for a Workspace (and that Karpenter copies to the Node).
LABEL_WORKSPACE = "kaito.sh/workspace"
LABEL_WORKSPACE_NAMESPACE = "kaito.sh/workspacenamespace"
LABEL_INSTANCE_TYPE = "node.kubernetes.io/instance-type"
LABEL_ACCELERATOR = "accelerator"
GPU_RESOURCE = "nvidia.com/gpu"
# KAITO's annotation holding the revision (hash of the spec) a workload or Job was built from.
ANNOTATION_REVISION = "workspace.kaito.io/revision"
FINALIZER = "workspace.kaito.io/finalizer"


# --------------------------------------------------------------------------- spec


@attrs.frozen
class LabelSelectorRequirement:
    key: str
    operator: str
    values: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "operator": self.operator}
        _opt(out, "values", None if self.values is None else list(self.values))
        return out

    def matches(self, labels: Mapping[str, str]) -> bool:
        op, vals = self.operator, self.values or ()
        if op == "In":
            return labels.get(self.key) in vals
        if op == "NotIn":
            return labels.get(self.key) not in vals
        if op == "Exists":
            return self.key in labels
        if op == "DoesNotExist":
            return self.key not in labels
        return False


@attrs.frozen
class LabelSelector:
    match_labels: Mapping[str, str] | None = None
    match_expressions: tuple[LabelSelectorRequirement, ...] | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabelSelector:
        exprs = d.get("matchExpressions")
        return cls(
            match_labels=None if d.get("matchLabels") is None else dict(d["matchLabels"]),
            match_expressions=None if exprs is None else tuple(
                LabelSelectorRequirement(e["key"], e["operator"],
                                         None if e.get("values") is None else tuple(e["values"]))
                for e in exprs),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _opt(out, "matchLabels", None if self.match_labels is None else dict(self.match_labels))
        _opt(out, "matchExpressions",
             None if self.match_expressions is None else [e.to_dict() for e in self.match_expressions])
        return out

    def matches(self, labels: Mapping[str, str]) -> bool:
        for k, v in (self.match_labels or {}).items():
            if labels.get(k) != v:
                return False
        return all(e.matches(labels) for e in self.match_expressions or ())


@attrs.frozen
class Partition:
    mode: str
    count: int | None = None
    profile: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _opt(out, "count", self.count)
        out["mode"] = self.mode
        _opt(out, "profile", self.profile)
        return out


@attrs.frozen
class ResourceSpec:
    label_selector: LabelSelector
    instance_type: str | None = None
    count: int | None = None
    partition: Partition | None = None
    preferred_nodes: tuple[str, ...] | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ResourceSpec:
        part = d.get("partition")
        return cls(
            label_selector=LabelSelector.from_dict(d.get("labelSelector") or {}),
            instance_type=d.get("instanceType"),
            count=d.get("count"),
            partition=None if part is None else Partition(part["mode"], part.get("count"), part.get("profile")),
            preferred_nodes=None if d.get("preferredNodes") is None else tuple(d["preferredNodes"]),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _opt(out, "count", self.count)
        _opt(out, "instanceType", self.instance_type)
        out["labelSelector"] = self.label_selector.to_dict()
        _opt(out, "partition", None if self.partition is None else self.partition.to_dict())
        _opt(out, "preferredNodes", None if self.preferred_nodes is None else list(self.preferred_nodes))
        return out

    @property
    def byo_nodes(self) -> bool:
        """No instanceType: nodes are brought by the user and found by labelSelector (KAITO's BYO mode)."""
        return not self.instance_type


@attrs.frozen
class PresetOptions:
    image: str | None = None
    image_pull_secrets: tuple[str, ...] | None = None
    model_access_secret: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _opt(out, "image", self.image)
        _opt(out, "imagePullSecrets", None if self.image_pull_secrets is None else list(self.image_pull_secrets))
        _opt(out, "modelAccessSecret", self.model_access_secret)
        return out


@attrs.frozen
class PresetSpec:
    name: str
    access_mode: str | None = None
    preset_options: PresetOptions | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PresetSpec:
        po = d.get("presetOptions")
        return cls(
            name=d["name"],
            access_mode=d.get("accessMode"),
            preset_options=None if po is None else PresetOptions(
                po.get("image"),
                None if po.get("imagePullSecrets") is None else tuple(po["imagePullSecrets"]),
                po.get("modelAccessSecret")),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _opt(out, "accessMode", self.access_mode)
        out["name"] = self.name
        _opt(out, "presetOptions", None if self.preset_options is None else self.preset_options.to_dict())
        return out


@attrs.frozen
class DataSource:
    name: str | None = None
    urls: tuple[str, ...] | None = None
    image: str | None = None
    image_pull_secrets: tuple[str, ...] | None = None
    volume_source: Mapping[str, Any] | None = None  # preserve-unknown-fields in the CRD: kept verbatim

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataSource:
        return cls(
            name=d.get("name"),
            urls=None if d.get("urls") is None else tuple(d["urls"]),
            image=d.get("image"),
            image_pull_secrets=None if d.get("imagePullSecrets") is None else tuple(d["imagePullSecrets"]),
            volume_source=d.get("volumeSource"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _opt(out, "image", self.image)
        _opt(out, "imagePullSecrets", None if self.image_pull_secrets is None else list(self.image_pull_secrets))
        _opt(out, "name", self.name)
        _opt(out, "urls", None if self.urls is None else list(self.urls))
        _opt(out, "volumeSource", self.volume_source)
        return out


@attrs.frozen
class DataDestination:
    image: str | None = None
    image_push_secret: str | None = None
    volume_source: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _opt(out, "image", self.image)
        _opt(out, "imagePushSecret", self.image_push_secret)
        _opt(out, "volumeSource", self.volume_source)
        return out


@attrs.frozen
class AdapterSpec:
    source: DataSource | None = None
    strength: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _opt(out, "source", None if self.source is None else self.source.to_dict())
        _opt(out, "strength", self.strength)
        return out


@attrs.frozen
class InferenceSpec:
    preset: PresetSpec | None = None
    config: str | None = None
    adapters: tuple[AdapterSpec, ...] | None = None
    template: Mapping[str, Any] | None = None  # a PodTemplateSpec, preserve-unknown-fields: verbatim

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InferenceSpec:
        ads = d.get("adapters")
        return cls(
            preset=None if d.get("preset") is None else PresetSpec.from_dict(d["preset"]),
            config=d.get("config"),
            adapters=None if ads is None else tuple(
                AdapterSpec(None if a.get("source") is None else DataSource.from_dict(a["source"]), a.get("strength"))
                for a in ads),
            template=d.get("template"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _opt(out, "adapters", None if self.adapters is None else [a.to_dict() for a in self.adapters])
        _opt(out, "config", self.config)
        _opt(out, "preset", None if self.preset is None else self.preset.to_dict())
        _opt(out, "template", self.template)
        return out

    @functools.cached_property
    def revision(self) -> str:
        """A short hash of the spec: what a workload or Job built from it is labelled with."""
        return spec_hash(self.to_dict())


@attrs.frozen
class TuningSpec:
    input: DataSource
    output: DataDestination
    preset: PresetSpec | None = None
    method: str | None = None
    config: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TuningSpec:
        o = d.get("output") or {}
        return cls(
            input=DataSource.from_dict(d.get("input") or {}),
            output=DataDestination(o.get("image"), o.get("imagePushSecret"), o.get("volumeSource")),
            preset=None if d.get("preset") is None else PresetSpec.from_dict(d["preset"]),
            method=d.get("method"),
            config=d.get("config"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _opt(out, "config", self.config)
        out["input"] = self.input.to_dict()
        _opt(out, "method", self.method)
        out["output"] = self.output.to_dict()
        _opt(out, "preset", None if self.preset is None else self.preset.to_dict())
        return out

    @functools.cached_property
    def revision(self) -> str:
        """A short hash of the spec: what a workload or Job built from it is labelled with."""
        return spec_hash(self.to_dict())


def spec_hash(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- status


@attrs.frozen
class WorkspaceStatus:
    conditions: tuple[Condition, ...] = ()
    state: str | None = None
    target_node_count: int | None = None
    worker_nodes: tuple[str, ...] | None = None
    performance: Mapping[str, Any] | None = None  # written by KAITO's benchmark, kept verbatim
    # Values derived from this (immutable) status, computed once: the parsed lifecycle record
    # (persist.read_lifecycle). It lives exactly as long as the status, so nothing outlives its Workspace.
    _memo: dict[str, Any] = attrs.field(factory=dict, init=False, eq=False, repr=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WorkspaceStatus:
        return cls(
            conditions=tuple(Condition.from_dict(c) for c in d.get("conditions") or ()),
            state=d.get("state"),
            target_node_count=d.get("targetNodeCount"),
            worker_nodes=None if d.get("workerNodes") is None else tuple(d["workerNodes"]),
            performance=d.get("performance"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.conditions:
            out["conditions"] = [c.to_dict() for c in self.conditions]
        _opt(out, "performance", self.performance)
        _opt(out, "state", self.state)
        _opt(out, "targetNodeCount", self.target_node_count)
        _opt(out, "workerNodes", None if self.worker_nodes is None else list(self.worker_nodes))
        return out

    def condition(self, type_: str) -> Condition | None:
        for c in self.conditions:
            if c.type == type_:
                return c
        return None


# --------------------------------------------------------------------------- workspace


@attrs.frozen
class Workspace:
    """A KAITO Workspace. ``problems`` is non-empty when the spec is invalid; ``resource`` and
    ``inference``/``tuning`` are then whatever could be read (possibly None) and must not be acted on."""

    metadata: ObjectMeta
    resource: ResourceSpec | None = None
    inference: InferenceSpec | None = None
    tuning: TuningSpec | None = None
    status: WorkspaceStatus = attrs.field(factory=WorkspaceStatus)
    api_version: str = API_VERSION
    kind: str = KIND
    problems: tuple[Problem, ...] = ()
    # The preset catalogue the spec was checked with (parse_workspace's): the node estimate reads the preset's
    # size from it. Not part of the object (no equality, not serialised); None means the shipped catalogue.
    catalogue: Any = attrs.field(default=None, eq=False, repr=False)

    @property
    def key(self) -> str:
        return self.metadata.key

    @property
    def is_tuning(self) -> bool:
        return self.tuning is not None

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def deleting(self) -> bool:
        return self.metadata.deletion_timestamp is not None

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], **check: Any) -> Workspace:
        """Strict: raise :class:`InvalidWorkspace` listing every bad field by path."""
        ws = parse_workspace(doc, **check)
        if ws.problems:
            raise InvalidWorkspace(ws.problems, name=ws.metadata.key if ws.metadata.name else "")
        return ws

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"apiVersion": self.api_version, "kind": self.kind,
                               "metadata": self.metadata.to_dict()}
        _opt(out, "resource", None if self.resource is None else self.resource.to_dict())
        _opt(out, "inference", None if self.inference is None else self.inference.to_dict())
        _opt(out, "tuning", None if self.tuning is None else self.tuning.to_dict())
        status = self.status.to_dict()
        if status:
            out["status"] = status
        return out

    def with_status(self, status: WorkspaceStatus) -> Workspace:
        return attrs.evolve(self, status=status)


def _text(value: Any, default: str) -> str:
    return value if isinstance(value, str) else default


def _readable_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``meta`` without the fields whose type ObjectMeta cannot read (already reported as problems)."""
    kinds = {"labels": Mapping, "annotations": Mapping, "finalizers": (list, tuple), "generation": int,
             "namespace": str, "uid": str, "resourceVersion": str}
    out = {k: v for k, v in meta.items() if k not in kinds or v is None or isinstance(v, kinds[k])}
    for k in ("creationTimestamp", "deletionTimestamp"):
        try:
            parse_time(out.get(k))
        except (TypeError, ValueError):
            out.pop(k)
    return out


def parse_workspace(doc: Any, *, catalogue: Any = None, auto_provisioning: bool = True) -> Workspace:
    """Parse an API dict into a Workspace without raising for a bad spec.

    The document is checked once here, at the boundary, with the same rules as
    ``workspace-fsm validate``; its problems travel on the Workspace so that ``decide`` can report
    them as a condition and create nothing. Raises :class:`InvalidWorkspace` only when the object
    cannot even be addressed (not a mapping, no metadata.name): there is nothing to report on then.
    """
    from workspace_fsm.kaito.validation import check_document  # the one place the rules live

    if not isinstance(doc, Mapping):
        raise InvalidWorkspace([Problem("", "NotAnObject", f"expected a Workspace object, got {type(doc).__name__}")])
    meta_doc = doc.get("metadata")
    if not isinstance(meta_doc, Mapping) or not isinstance(meta_doc.get("name"), str) or not meta_doc["name"]:
        raise InvalidWorkspace([Problem("metadata.name", "FieldRequired", "metadata.name is required")])
    problems = list(check_document(doc, catalogue, auto_provisioning=auto_provisioning))
    try:
        metadata = ObjectMeta.from_dict(meta_doc)
    except (TypeError, ValueError) as exc:
        if not problems:
            raise InvalidWorkspace([Problem("metadata", "FieldValueInvalid", f"unreadable metadata: {exc}")]) from None
        # The problems name the bad metadata field (labels that are a string, say); the rest is enough
        # to address the Workspace and report them on it.
        metadata = ObjectMeta.from_dict(_readable_metadata(meta_doc))
    status = WorkspaceStatus()
    if isinstance(doc.get("status"), Mapping):
        try:
            status = WorkspaceStatus.from_dict(doc["status"])
        except (KeyError, TypeError, ValueError, AttributeError):
            # Garbage status from the API. The spec is still good: the machine rebuilds its status
            # from what it observes (its NodeClaims carry the Workspace's labels) instead of crashing.
            status = WorkspaceStatus()
    if problems:
        return Workspace(metadata=metadata, status=status, problems=tuple(problems),
                         api_version=_text(doc.get("apiVersion"), API_VERSION), kind=_text(doc.get("kind"), KIND))
    return Workspace(
        catalogue=catalogue,
        metadata=metadata,
        resource=ResourceSpec.from_dict(doc.get("resource") or {}),
        inference=None if doc.get("inference") is None else InferenceSpec.from_dict(doc["inference"]),
        tuning=None if doc.get("tuning") is None else TuningSpec.from_dict(doc["tuning"]),
        status=status,
        api_version=doc["apiVersion"],
        kind=doc["kind"],
    )


# --------------------------------------------------------------------------- snapshot


@attrs.frozen
class NodeClaim:
    """A karpenter.sh/v1 NodeClaim as the machine sees it. Condition values: True, False, Unknown, or None (absent)."""

    name: str
    workspace_key: str
    instance_type: str = ""
    launched: str | None = None
    registered: str | None = None
    initialized: str | None = None
    ready: str | None = None
    node_name: str | None = None
    deleting: bool = False
    failure_reason: str | None = None  # e.g. InsufficientCapacity when Launched=False
    created_at: datetime | None = None

    @property
    def is_ready(self) -> bool:
        return self.ready == "True" and not self.deleting

    @property
    def failed(self) -> bool:
        return self.launched == "False" and not self.deleting


@attrs.frozen
class Node:
    name: str
    labels: Mapping[str, str] = attrs.field(factory=dict)
    ready: bool = False
    gpu_capacity: int = 0

    @property
    def needs_gpu_plugin(self) -> bool:
        return self.labels.get(LABEL_ACCELERATOR) == "nvidia"

    @property
    def gpu_ready(self) -> bool:
        return self.ready and (self.gpu_capacity > 0 or not self.needs_gpu_plugin)


@attrs.frozen
class Workload:
    """The inference workload: a StatefulSet or a Deployment."""

    kind: str
    name: str
    replicas: int
    ready_replicas: int = 0
    updated_replicas: int = 0
    revision: str = ""
    deleting: bool = False
    problem: str | None = None  # e.g. CrashLoopBackOff, ImagePullBackOff (from its pods)

    @property
    def is_ready(self) -> bool:
        return (not self.deleting and self.ready_replicas >= self.replicas
                and self.updated_replicas >= self.replicas)


@attrs.frozen
class Job:
    name: str
    revision: str = ""
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    complete: bool = False  # condition Complete=True
    failed_permanently: bool = False  # condition Failed=True (backoffLimit or deadline exceeded)
    deleting: bool = False
    failure_reason: str | None = None
    uid: str = ""  # which Job this is: a Job of the same name created later has another


@attrs.frozen
class Snapshot:
    """What the adapter observed of a Workspace's world, read from its caches (it may be stale).

    ``absent`` holds names the adapter knows positively to be gone (a deletion seen through the
    watch, or a 404): ``"NodeClaim/<name>"``, ``"Job/<name>"``. Not being in the cache is no proof of
    absence (the cache may lag), which is why a NodeClaim the machine created counts as existing
    until it is in ``absent``.

    ``config_maps`` holds the ConfigMaps asked about that exist (their ``data``); one asked about and
    known not to exist is in ``absent`` (``"ConfigMap/<name>"``).

    ``refused`` maps ``"NodeClaim/<name>"`` to the pass (``CreateNodeClaim.claim``) whose create of it this
    process never sent (the pass stopped before), or sent and the API server refused outright (429,
    admission or validation errors: nothing was stored). It is a hint, kept in memory only, and it speaks
    for this process's own requests only: the machine takes it only for names the persisted record says
    that very pass recorded (``Lifecycle.claimed_by``). With deterministic names, another runner may have
    recorded and sent the same name after this one's write lost a 409; its create may still be on its way,
    and it is no business of this process to declare it never sent. Then it waits ``Config.create_grace``.
    """

    nodeclaims: tuple[NodeClaim, ...] = ()
    nodes: Mapping[str, Node] = attrs.field(factory=dict)
    workload: Workload | None = None
    job: Job | None = None
    absent: frozenset[str] = frozenset()
    refused: Mapping[str, str] = attrs.field(factory=dict)
    # ConfigMaps the machine asked about (``"ConfigMap/<name>"`` in ``confirmations``) that exist: name -> data.
    # Only the inference ConfigMap, and only until status.targetNodeCount is kept (it gives max-model-len).
    config_maps: Mapping[str, Mapping[str, str]] = attrs.field(factory=dict)
    # The names of the Workspace's Services the cache shows (an inference Workspace has two: see ensure_services).
    services: frozenset[str] = frozenset()
