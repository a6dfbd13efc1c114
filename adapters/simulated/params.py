"""Parameters of the simulated cluster and of a benchmark scenario.

Every duration is in seconds of virtual time. A :class:`LatencyRange` is sampled uniformly from a
``random.Random`` when the object it concerns is created, so one seed gives one history.

Where the defaults come from
----------------------------
The NodeClaim timings are those of Karpenter provisioning GPU SKUs on Azure (AKS node auto-provisioning,
the provider KAITO uses): the VM create call returns and the claim is ``Launched`` after 20-40 s; the
VM boots, runs the node bootstrap (kubelet, containerd, the GPU driver image) and the Node registers
150-240 s after the claim was created; Karpenter marks it ``Initialized`` 10-30 s later (startup taints
removed, the node's resources reported) and ``Ready`` 5-15 s after that. The NVIDIA device plugin
DaemonSet pod then has to be scheduled, pulled and started before the node advertises
``nvidia.com/gpu``: 30-90 s after node Ready (KAITO's old code waited up to 60 s for this, and usually
needed most of it). An inference workload pulls a multi-gigabyte model image and loads the weights into
GPU memory: 120-600 s from creation to ready replicas. A tuning Job (LoRA/QLoRA on a 7B-class model over
a small dataset) runs 600-1800 s. Deleting a Job with Background propagation returns at once and the
object is gone within 1-5 s; with Foreground propagation it stays, marked for deletion, until its pods
have terminated (grace period, GPU process teardown): 20-60 s. Deleting a NodeClaim drains and
deletes the VM: 30-90 s. An API call costs 10 ms (a round trip to a busy API server), and informer
caches are assumed current (lag 0 s) unless a scenario says otherwise.

The failure rates default to 0 (a clean run); scenario files turn them on. Plausible values for
scarce GPU SKUs are ``instance_unavailable_rate: 0.05`` and ``never_ready_rate: 0.01``.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import os
import random
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import yaml

__all__ = ["LatencyRange", "Latencies", "SimParams", "Scenario", "ScenarioError", "GPUS_PER_INSTANCE"]


class ScenarioError(ValueError):
    """A scenario file (or value) is wrong. The message names the source and the key:
    ``scenario.yaml: params.latencies.nodeclaim_ready: expected [lo, hi] seconds with 0 <= lo <= hi, got "fast"``.
    """

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source = source
        self.key = key
        where = ": ".join(p for p in (source, key) if p)
        super().__init__(f"{where}: {message}" if where else message)


# --------------------------------------------------------------------------- value types


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@attrs.frozen
class LatencyRange:
    """A duration drawn uniformly from ``[lo, hi]`` seconds."""

    lo: float
    hi: float

    def __attrs_post_init__(self) -> None:
        if not (_is_number(self.lo) and _is_number(self.hi) and 0 <= self.lo <= self.hi):
            raise ValueError(f"expected 0 <= lo <= hi seconds, got [{self.lo!r}, {self.hi!r}]")

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.lo, self.hi)

    @property
    def mean(self) -> float:
        return (self.lo + self.hi) / 2


def _to_range(v: Any) -> LatencyRange:
    if isinstance(v, LatencyRange):
        return v
    if _is_number(v):
        return LatencyRange(float(v), float(v))
    lo, hi = v
    return LatencyRange(float(lo), float(hi))


def _range_field(lo: float, hi: float, doc: str) -> Any:
    return attrs.field(default=LatencyRange(lo, hi), converter=_to_range, metadata={"parse": _p_range, "doc": doc})


def _to_count_range(v: Any) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    lo, hi = v
    return (int(lo), int(hi))


# --------------------------------------------------------------------------- YAML value parsers
# Each takes (value, key) and returns the typed value or raises ScenarioError(key, ...). The source
# (file name) is added by the caller.


def _got(v: Any) -> str:
    try:
        return json.dumps(v)
    except (TypeError, ValueError):
        return repr(v)


def _fail(key: str, expected: str, v: Any) -> ScenarioError:
    return ScenarioError("", key, f"expected {expected}, got {_got(v)}")


def _p_range(v: Any, key: str) -> LatencyRange:
    what = "[lo, hi] seconds with 0 <= lo <= hi"
    if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(_is_number(x) for x in v) \
            or not 0 <= v[0] <= v[1]:
        raise _fail(key, what, v)
    return LatencyRange(float(v[0]), float(v[1]))


def _p_seconds(v: Any, key: str) -> float:
    if not _is_number(v) or v < 0:
        raise _fail(key, "a number of seconds >= 0", v)
    return float(v)


def _p_opt_seconds(v: Any, key: str) -> float | None:
    if v is None:
        return None
    if not _is_number(v) or v < 0:
        raise _fail(key, "a number of seconds >= 0, or null", v)
    return float(v)


def _p_share(v: Any, key: str) -> float:
    if not _is_number(v) or not 0 <= v <= 1:
        raise _fail(key, "a share between 0 and 1", v)
    return float(v)


def _p_positive_int(v: Any, key: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise _fail(key, "a whole number >= 1", v)
    return v


def _p_nonneg_int(v: Any, key: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise _fail(key, "a whole number >= 0", v)
    return v


def _p_int(v: Any, key: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise _fail(key, "a whole number", v)
    return v


def _p_bool(v: Any, key: str) -> bool:
    if not isinstance(v, bool):
        raise _fail(key, "true or false", v)
    return v


def _p_name(v: Any, key: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise _fail(key, "a non-empty string", v)
    return v


def _p_names(v: Any, key: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x.strip() for x in v):
        raise _fail(key, "a non-empty list of names", v)
    return tuple(v)


def _p_count_range(v: Any, key: str) -> tuple[int, int]:
    what = "a whole number >= 1, or [lo, hi] with 1 <= lo <= hi"
    if isinstance(v, int) and not isinstance(v, bool):
        if v < 1:
            raise _fail(key, what, v)
        return (v, v)
    if isinstance(v, (list, tuple)) and len(v) == 2 \
            and all(isinstance(x, int) and not isinstance(x, bool) for x in v) and 1 <= v[0] <= v[1]:
        return (v[0], v[1])
    raise _fail(key, what, v)


def _p_choice(*options: str) -> Callable[[Any, str], str]:
    def parse(v: Any, key: str) -> str:
        if v not in options:
            raise _fail(key, "one of " + ", ".join(options), v)
        return str(v)
    return parse


def _p_gpus(v: Any, key: str) -> Mapping[str, int]:
    if not isinstance(v, Mapping) or not all(
            isinstance(k, str) and isinstance(n, int) and not isinstance(n, bool) and n >= 0 for k, n in v.items()):
        raise _fail(key, "a mapping of instance type to a whole number of GPUs", v)
    return dict(v)


def _from_data(cls: type, data: Any, path: str) -> Any:
    """Build attrs class ``cls`` from a YAML mapping whose keys mirror its fields."""
    if data is None:
        return cls()
    if not isinstance(data, Mapping):
        raise _fail(path or "(top level)", "a mapping of " + ", ".join(f.name for f in attrs.fields(cls)), data)
    fields = {f.name: f for f in attrs.fields(cls)}
    values: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{path}.{k}" if path else str(k)
        f = fields.get(k) if isinstance(k, str) else None
        if f is None:
            raise ScenarioError("", key, "unknown key; expected one of " + ", ".join(fields))
        nested = f.metadata.get("nested")
        values[k] = _from_data(nested, v, key) if nested else f.metadata["parse"](v, key)
    try:
        return cls(**values)
    except ScenarioError:
        raise
    except (ValueError, TypeError) as e:  # cross-field checks
        raise ScenarioError("", path, str(e)) from None


# --------------------------------------------------------------------------- parameters


@attrs.frozen
class Latencies:
    """Sampled durations (seconds), each documented with what it is measured from."""

    nodeclaim_launched: LatencyRange = _range_field(
        20, 40, "NodeClaim created -> Launched=True (the cloud VM create call accepted)")
    nodeclaim_registered: LatencyRange = _range_field(
        150, 240, "NodeClaim created -> Registered=True (VM booted, kubelet joined; the Node appears NotReady)")
    nodeclaim_initialized: LatencyRange = _range_field(
        10, 30, "Registered -> Initialized=True (startup taints removed, resources reported)")
    nodeclaim_ready: LatencyRange = _range_field(
        5, 15, "Initialized -> Ready=True (the Node reports Ready)")
    gpu_plugin: LatencyRange = _range_field(
        30, 90, "Node Ready -> nvidia.com/gpu capacity > 0 (NVIDIA device plugin up; KAITO waited up to 60 s)")
    nodeclaim_delete: LatencyRange = _range_field(
        30, 90, "NodeClaim delete requested -> NodeClaim and its Node gone (drain and VM delete)")
    workload_rollout: LatencyRange = _range_field(
        120, 600, "workload created or updated -> all replicas ready (multi-GB image pull + model load)")
    workload_problem: LatencyRange = _range_field(
        30, 120, "failing workload created -> its pods report CrashLoopBackOff or ImagePullBackOff")
    workload_recovery: LatencyRange = _range_field(
        60, 600, "problem reported -> replicas ready, for a failing workload that recovers")
    job_run: LatencyRange = _range_field(
        600, 1800, "tuning Job created -> Complete (or Failed)")
    job_delete_background: LatencyRange = _range_field(
        1, 5, "DeleteJob(propagation=Background) -> Job object gone (pods are collected afterwards)")
    job_delete_foreground: LatencyRange = _range_field(
        20, 60, "DeleteJob(propagation=Foreground) -> Job object gone (it waits for its pods to terminate)")
    owner_gc: LatencyRange = _range_field(
        1, 5, "Workspace removed -> the garbage collector deletes the workload and Job it owns")


#: GPUs a node of each Azure SKU advertises (``nvidia.com/gpu``), for the capacity the device plugin reports.
#: Provisional: :func:`instance_gpus` prefers the instance-type table generated from KAITO's sources
#: (``workspace_fsm.kaito.sku``) when the package has it, and falls back to this one.
GPUS_PER_INSTANCE: Mapping[str, int] = {
    "Standard_NC6s_v3": 1, "Standard_NC12s_v3": 2, "Standard_NC24s_v3": 4, "Standard_NC24rs_v3": 4,
    "Standard_NC24ads_A100_v4": 1, "Standard_NC48ads_A100_v4": 2, "Standard_NC96ads_A100_v4": 4,
    "Standard_ND96asr_v4": 8, "Standard_ND96amsr_A100_v4": 8, "Standard_NC40ads_H100_v5": 1,
    "Standard_NC80adis_H100_v5": 2, "Standard_ND96isr_H100_v5": 8, "Standard_NV36ads_A10_v5": 1,
    "Standard_NV72ads_A10_v5": 2, "Standard_NC4as_T4_v3": 1, "Standard_NC64as_T4_v3": 4,
}


_PROVISIONAL = {k.lower(): v for k, v in GPUS_PER_INSTANCE.items()}


@functools.cache
def instance_gpus(instance_type: str) -> int | None:
    """GPUs per node of ``instance_type`` (None: unknown): the one place both simulated clusters learn it from.
    From ``workspace_fsm.kaito.sku.lookup`` when that module exists, else from :data:`GPUS_PER_INSTANCE`."""
    try:
        sku: Any = importlib.import_module("workspace_fsm.kaito.sku")
    except ImportError:  # a build without KAITO's instance-type table
        sku = None
    if sku is not None:
        found = sku.lookup(instance_type)
        if found is not None:
            return int(found.gpu_count)
    return _PROVISIONAL.get(instance_type.lower())


@attrs.frozen
class SimParams:
    """How the simulated cluster behaves. See the module docstring for where each default comes from."""

    latencies: Latencies = attrs.field(factory=Latencies, metadata={"nested": Latencies})
    #: Virtual seconds one API call (GET, LIST, create, update, patch, delete) costs the worker making it.
    api_latency_s: float = attrs.field(default=0.010, metadata={"parse": _p_seconds})
    #: How far the informer cache trails the API server: a change made at t is seen at t + cache_lag_s.
    cache_lag_s: float = attrs.field(default=0.0, metadata={"parse": _p_seconds})
    #: Share of NodeClaims whose launch fails: Launched=False, reason InsufficientCapacity (GPU SKU out of stock).
    instance_unavailable_rate: float = attrs.field(default=0.0, metadata={"parse": _p_share})
    #: Share of NodeClaims that launch but whose VM never registers a Node (bootstrap failure).
    never_ready_rate: float = attrs.field(default=0.0, metadata={"parse": _p_share})
    #: Karpenter's liveness check deletes a NodeClaim not Registered within this time (15 min); null: never.
    registration_ttl_s: float | None = attrs.field(default=900.0, metadata={"parse": _p_opt_seconds})
    #: Share of workload rollouts whose pods hit CrashLoopBackOff or ImagePullBackOff.
    workload_failure_rate: float = attrs.field(default=0.0, metadata={"parse": _p_share})
    #: Of those, the share that recovers by itself (after ``latencies.workload_recovery``).
    workload_recovery_share: float = attrs.field(default=0.5, metadata={"parse": _p_share})
    #: Share of tuning Jobs that fail for good (backoffLimit reached).
    job_failure_rate: float = attrs.field(default=0.0, metadata={"parse": _p_share})
    #: Share of API writes that fail with an injected error (a 500 from the API server).
    api_error_rate: float = attrs.field(default=0.0, metadata={"parse": _p_share})
    #: Where observe() reads Nodes from. False (KAITO on large clusters): Nodes are not watched, so each
    #: Node the snapshot needs is a GET (a counted read). True: from an informer cache (free, lagged),
    #: still without events.
    nodes_from_cache: bool = attrs.field(default=False, metadata={"parse": _p_bool})
    #: GPUs per node by instance type, overriding :func:`instance_gpus` (types known to neither get 1).
    gpus_per_instance: Mapping[str, int] = attrs.field(factory=dict, metadata={"parse": _p_gpus})

    def gpus(self, instance_type: str) -> int:
        """``nvidia.com/gpu`` capacity and allocatable of a node of ``instance_type``."""
        n = self.gpus_per_instance.get(instance_type)
        if n is None:
            n = instance_gpus(instance_type)
        return 1 if n is None else n


# --------------------------------------------------------------------------- scenario


def _p_presets(v: Any, key: str) -> tuple[str, ...]:
    names = _p_names(v, key)
    from workspace_fsm.kaito.catalogue import Catalogue

    cat = Catalogue.default()
    for i, name in enumerate(names):
        if name not in cat:
            hint = cat.close_matches(name)
            raise ScenarioError("", f"{key}[{i}]", f"unknown preset {name!r}"
                                + (f"; did you mean {', '.join(hint)}?" if hint else ""))
    return names


DEFAULT_PRESETS = ("phi-4-mini-instruct", "falcon-7b", "llama-3.3-70b-instruct")


@attrs.frozen
class Scenario:
    """A population of Workspaces (and RAGEngines) and what happens to them. YAML keys mirror these fields."""

    #: How many Workspaces (0 is allowed when there are RAGEngines).
    workspaces: int = attrs.field(default=100, metadata={"parse": _p_nonneg_int})
    #: ``burst``: all created at t=0; ``spread``: created uniformly over ``arrival_window_s``.
    arrival: str = attrs.field(default="burst", metadata={"parse": _p_choice("burst", "spread")})
    arrival_window_s: float = attrs.field(default=0.0, metadata={"parse": _p_seconds})
    #: Share of tuning Workspaces (the rest are inference).
    tuning_share: float = attrs.field(default=0.0, metadata={"parse": _p_share})
    #: GPU nodes per inference Workspace: fixed, or [lo, hi] drawn uniformly. Tuning Workspaces get 1
    #: (KAITO's tuning Job runs on one node).
    nodes_per_workspace: tuple[int, int] = attrs.field(default=(1, 1), converter=_to_count_range,
                                                       metadata={"parse": _p_count_range})
    #: KAITO preset names drawn uniformly; tuning Workspaces draw from the tunable ones among them.
    presets: tuple[str, ...] = attrs.field(default=DEFAULT_PRESETS, converter=tuple, metadata={"parse": _p_presets})
    #: The Azure SKU every Workspace asks for. The default (4 x A100 80 GB) fits every default preset,
    #: llama-3.3-70b-instruct included, on one node.
    instance_type: str = attrs.field(default="Standard_NC96ads_A100_v4", metadata={"parse": _p_name})
    namespace: str = attrs.field(default="default", metadata={"parse": _p_name})
    #: Share of tuning Workspaces whose tuning spec changes once (generation + 1, a new config):
    #: the running or finished Job must be replaced.
    spec_change_share: float = attrs.field(default=0.0, metadata={"parse": _p_share})
    #: When, after its creation, such a Workspace's spec changes.
    spec_change_after: LatencyRange = attrs.field(default=LatencyRange(300, 1200), converter=_to_range,
                                                  metadata={"parse": _p_range})
    #: Share of Workspaces deleted during the run.
    delete_share: float = attrs.field(default=0.0, metadata={"parse": _p_share})
    #: When, after its creation, such a Workspace is deleted.
    delete_after: LatencyRange = attrs.field(default=LatencyRange(600, 3600), converter=_to_range,
                                             metadata={"parse": _p_range})
    seed: int = attrs.field(default=1, metadata={"parse": _p_int})
    #: How many KAITO RAGEngines beside the Workspaces (a mixed population). They arrive as the Workspaces do
    #: (``arrival``, ``arrival_window_s``), are deleted with the same ``delete_share`` and ``delete_after``, and
    #: draw from random streams of their own: adding RAGEngines changes nothing of the Workspaces' draws.
    ragengines: int = attrs.field(default=0, metadata={"parse": _p_nonneg_int})
    #: Share of RAGEngines with ``spec.compute`` (GPU nodes of their own for a local embedding model, as KAITO's
    #: ``kaito_ragengine_phi_3.yaml``); the others are retrieve-only (Service and Deployment only).
    ragengine_compute_share: float = attrs.field(default=0.5, metadata={"parse": _p_share})
    #: The instance type a RAGEngine's compute asks for (KAITO's examples: Standard_NC6s_v3).
    ragengine_instance_type: str = attrs.field(default="Standard_NC6s_v3", metadata={"parse": _p_name})
    #: GPU nodes per RAGEngine with compute (``compute.count``): fixed, or [lo, hi] drawn uniformly.
    ragengine_nodes: tuple[int, int] = attrs.field(default=(1, 1), converter=_to_count_range,
                                                   metadata={"parse": _p_count_range})
    params: SimParams = attrs.field(factory=SimParams, metadata={"nested": SimParams})

    def __attrs_post_init__(self) -> None:
        if self.workspaces + self.ragengines < 1:
            raise ValueError("workspaces: the population is empty; ask for at least one Workspace or RAGEngine")
        if self.arrival == "spread" and self.arrival_window_s <= 0:
            raise ValueError("arrival: spread needs arrival_window_s > 0")
        lo, hi = self.nodes_per_workspace
        if not 1 <= lo <= hi:
            raise ValueError(f"nodes_per_workspace: expected 1 <= lo <= hi, got [{lo}, {hi}]")
        from workspace_fsm.kaito.catalogue import Catalogue

        unknown = [p for p in self.presets if p not in Catalogue.default()]
        if not self.presets or unknown:
            raise ValueError(f"presets: unknown or missing preset names {unknown}")
        if self.tuning_share > 0 and not self.tuning_presets:
            raise ValueError(f"tuning_share is {self.tuning_share} but no preset in presets "
                             f"{list(self.presets)} supports tuning (e.g. falcon-7b, phi-4-mini-instruct)")

    @property
    def tuning_presets(self) -> tuple[str, ...]:
        from workspace_fsm.kaito.catalogue import Catalogue

        cat = Catalogue.default()
        return tuple(p for p in self.presets if cat.supports_tuning(p))

    @classmethod
    def default(cls) -> Scenario:
        """100 Workspaces created at t=0, the default parameters, seed 1."""
        return cls()

    @classmethod
    def from_yaml(cls, path_or_text: str | os.PathLike[str]) -> Scenario:
        """Load a scenario from a file path or from YAML text.

        Keys mirror the attrs fields (snake_case), nested for ``params`` and ``params.latencies``.
        An unknown or ill-typed key raises :class:`ScenarioError` naming the key and what is expected.
        """
        text, source = _read(path_or_text)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            raise ScenarioError(source, "", f"{where}YAML does not parse: {getattr(e, 'problem', None) or e}") from None
        return cls.from_data(data, source=source)

    @classmethod
    def from_data(cls, data: Any, *, source: str = "<scenario>") -> Scenario:
        try:
            scenario: Scenario = _from_data(cls, data, "")
            return scenario
        except ScenarioError as e:
            raise ScenarioError(source, e.key, str(e).split(": ", 1)[1] if e.key else str(e)) from None

    def to_data(self) -> dict[str, Any]:
        """The scenario as YAML-ready data (round-trips through :meth:`from_data`)."""
        def conv(inst: Any, field: attrs.Attribute[Any], v: Any) -> Any:
            if isinstance(v, LatencyRange):
                return [v.lo, v.hi]
            if isinstance(v, tuple):
                return list(v)
            if isinstance(v, Mapping):
                return dict(v)
            return v
        return attrs.asdict(self, value_serializer=conv)


def _read(path_or_text: str | os.PathLike[str]) -> tuple[str, str]:
    if isinstance(path_or_text, os.PathLike) or (
            isinstance(path_or_text, str) and "\n" not in path_or_text
            and (path_or_text.endswith((".yaml", ".yml")) or os.path.isfile(path_or_text))):
        source = os.fspath(path_or_text)
        try:
            with open(source, encoding="utf-8") as f:
                return f.read(), os.path.basename(source)
        except (OSError, UnicodeDecodeError) as e:
            raise ScenarioError(source, "", f"cannot be read: {e}") from None
    return str(path_or_text), "<scenario>"
