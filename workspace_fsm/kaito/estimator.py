"""How many GPU nodes a Workspace needs: KAITO's node estimator for vLLM, in Python.

KAITO (``pkg/workspace/estimator/nodesestimator`` and ``UpdateWorkspaceTargetNodeCount`` in its Workspace
controller) computes ``status.targetNodeCount`` once, when it is still 0, and keeps it:

- a tuning Workspace gets 1 node;
- an inference Workspace on the transformers runtime (annotation ``kaito.sh/runtime: transformers``) gets
  ``resource.count``;
- an inference Workspace on vLLM (the default) without a preset (a pod template) gets ``resource.count`` (or 1);
- an inference Workspace on vLLM with a preset is sized from the model and the GPUs: the weights (their
  safetensors size, 2 % larger once loaded) must fit in what vLLM may use of each GPU (84 %) after a fixed
  overhead (2.3 GiB), the KV cache of the context window (``max-model-len`` from the inference ConfigMap's
  ``inference_config.yaml``, else 2048 tokens, times the model's bytes per token, shared by the node's GPUs)
  and 5 % of the weights' share. ``minGPUs = int(weights / per-GPU room) + 1``; nodes = ceil(minGPUs / GPUs
  per node). ``resource.count`` is then not used. The GPUs come from the instance type (node
  auto-provisioning) or, with bring-your-own nodes, from the NVIDIA labels of the first Ready node the
  labelSelector matches (scaled to ``partition.count``; a MIG partition is one slice of its profile's memory).

Everything here is pure: the caller passes the ConfigMap's text and the nodes it observed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import attrs

from workspace_fsm.kaito import sku
from workspace_fsm.kaito.catalogue import EstimatorConstants, Preset

if TYPE_CHECKING:
    from workspace_fsm.kaito.model import Node

__all__ = ["GPUConfig", "NodeEstimate", "SizingProblem", "estimate_nodes", "fitting_instance_types",
           "gpu_config_from_node", "mig_gpu_config", "parse_max_model_len", "INFERENCE_CONFIG_KEY",
           "ANNOTATION_RUNTIME", "LABEL_GPU_PRODUCT", "LABEL_GPU_COUNT", "LABEL_GPU_MEMORY"]

_GIB = 1 << 30

#: The key of the inference ConfigMap KAITO reads (its ``vllm:`` section holds ``max-model-len``).
INFERENCE_CONFIG_KEY = "inference_config.yaml"
#: KAITO's annotation choosing the runtime (``vllm``, the default, or ``transformers``).
ANNOTATION_RUNTIME = "kaito.sh/runtime"
#: NVIDIA GPU feature discovery's node labels KAITO sizes bring-your-own nodes from (memory is per GPU, MiB).
LABEL_GPU_PRODUCT = "nvidia.com/gpu.product"
LABEL_GPU_COUNT = "nvidia.com/gpu.count"
LABEL_GPU_MEMORY = "nvidia.com/gpu.memory"

# A MIG profile as KAITO parses it: "<slices>g.<memory>gb".
_MIG = re.compile(r"(\d+)g\.([\d.]+)gb")


@attrs.frozen
class GPUConfig:
    """One node's GPUs as the estimator sees them: how many, their total memory, where that came from."""

    gpu_count: int
    gpu_memory_bytes: int
    source: str  # "instance type Standard_NC24ads_A100_v4", "node gpu-1 (NVIDIA-A100...)", "MIG profile 1g.10gb"
    is_mig: bool = False

    @property
    def per_gpu_bytes(self) -> int:
        return self.gpu_memory_bytes // self.gpu_count if self.gpu_count > 0 else 0


@attrs.frozen
class NodeEstimate:
    """The node count and, for a message, how it was found."""

    nodes: int
    how: str
    min_gpus: int | None = None


@attrs.frozen
class SizingProblem:
    """Why no node count can be given: a condition reason (CamelCase) and a message for the operator."""

    reason: str
    message: str
    retry: bool = False  # may resolve by itself (BYO nodes not Ready yet); else only a spec change helps


def parse_max_model_len(text: str) -> int | None:
    """``max-model-len`` from an ``inference_config.yaml`` text, read as KAITO reads it.

    KAITO scans lines (``utils.ParseExplicitMaxModelLen``): after a line starting ``vllm:``, the first line
    starting ``max-model-len:`` before the section ends (a non-comment line indented less than the section's
    entries) gives the value if it is a positive integer; anything else means "not set"."""
    in_vllm = False
    base = 0
    for line in text.split("\n"):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" \t"))
        if not in_vllm:
            if stripped.startswith("vllm:"):
                in_vllm = True
                base = indent + 2
            continue
        if stripped and not stripped.startswith("#") and indent < base:
            return None
        if stripped.startswith("max-model-len:"):
            value = stripped[len("max-model-len:"):].strip()
            if re.fullmatch(r"[+-]?\d+", value) and int(value) > 0:
                return int(value)
            return None
    return None


def mig_gpu_config(profile: str) -> GPUConfig | None:
    """One MIG slice: a single non-shardable GPU with the profile's memory (whole GiB, rounded down)."""
    m = _MIG.fullmatch(profile or "")
    if m is None or int(m.group(1)) == 0:
        return None
    try:
        mem_gib = math.floor(float(m.group(2)))
    except ValueError:
        return None
    if mem_gib <= 0:
        return None
    return GPUConfig(1, mem_gib * _GIB, f"MIG profile {profile}", is_mig=True)


def gpu_config_from_node(node: Node) -> GPUConfig | SizingProblem:
    """A bring-your-own node's GPUs from NVIDIA's labels, as KAITO reads them (memory rounded to whole GiB)."""
    labels = node.labels
    missing = [k for k in (LABEL_GPU_PRODUCT, LABEL_GPU_COUNT, LABEL_GPU_MEMORY) if k not in labels]
    if missing:
        return SizingProblem(
            "NodeGPULabelsMissing",
            f"node {node.name} has no {', '.join(missing)} label(s), so its GPUs cannot be sized; install NVIDIA "
            f"GPU feature discovery (the GPU operator) on your nodes, or label them", retry=True)
    try:
        count = int(labels[LABEL_GPU_COUNT])
        mem_mib = int(labels[LABEL_GPU_MEMORY])
    except ValueError:
        return SizingProblem(
            "NodeGPULabelsInvalid",
            f"node {node.name}: {LABEL_GPU_COUNT}={labels[LABEL_GPU_COUNT]!r} and {LABEL_GPU_MEMORY}="
            f"{labels[LABEL_GPU_MEMORY]!r} must be integers (GPUs, MiB per GPU)", retry=True)
    per_gpu_gib = int(mem_mib / 1024 + 0.5)
    return GPUConfig(count, per_gpu_gib * count * _GIB, f"node {node.name} ({labels[LABEL_GPU_PRODUCT]})")


def _gib(n: float) -> str:
    return f"{n / _GIB:.1f} GiB"


def estimate_nodes(preset: Preset, gpus: GPUConfig, *, requested: int | None, context: int | None,
                   constants: EstimatorConstants) -> NodeEstimate | SizingProblem:
    """KAITO's vLLM node estimate for ``preset`` on nodes with ``gpus``. ``context``: max-model-len, if set."""
    nodes = requested if requested and requested > 0 else 1
    max_len = context if context and context > 0 else constants.default_context_size
    if gpus.gpu_memory_bytes <= 0 or gpus.gpu_count <= 0 or not preset.gpu_memory_bytes:
        return NodeEstimate(nodes, f"{gpus.source} has no known GPU memory: resource.count ({nodes}) is used")
    weights = float(preset.gpu_memory_bytes) * constants.weight_expansion_factor
    per_gpu = float(gpus.per_gpu_bytes)
    usable = per_gpu * constants.gpu_memory_utilization
    kv_cache = float(max_len * (preset.bytes_per_token or 0)) / float(gpus.gpu_count)
    reserve = constants.base_overhead_gib * _GIB + kv_cache
    if usable <= reserve:
        return SizingProblem(
            "GPUMemoryTooSmall",
            f"{gpus.source} has {_gib(per_gpu)} per GPU, of which vLLM uses {constants.gpu_memory_utilization:.0%} "
            f"({_gib(usable)}); that does not even hold vLLM's fixed overhead ({constants.base_overhead_gib} GiB) "
            f"and the KV cache of a {max_len}-token context ({_gib(kv_cache)} per GPU), before the model's weights")
    room = (usable - reserve) / (1 + constants.overhead_weight_factor)
    min_gpus = int(weights / room) + 1
    nodes = (min_gpus + gpus.gpu_count - 1) // gpus.gpu_count
    how = (f"{preset.name}: {_gib(weights)} of weights, {_gib(room)} free for them on each GPU of {gpus.source} "
           f"(context {max_len} tokens): {min_gpus} GPU(s), {nodes} node(s) of {gpus.gpu_count} GPU(s)")
    if gpus.is_mig and nodes > 1:
        overhead = reserve + constants.overhead_weight_factor * weights
        return SizingProblem(
            "MIGProfileTooSmall",
            f"model {preset.name} needs {_gib(weights + overhead)} (weights {_gib(weights)} + overhead "
            f"{_gib(overhead)}) but {gpus.source} provides {_gib(per_gpu)} ({_gib(usable)} usable by vLLM); "
            f"a MIG slice cannot be shared across GPUs: choose a larger profile")
    if nodes > 1 and not preset.supports_distributed_inference:
        return SizingProblem(
            "ModelNotDistributable",
            f"model {preset.name} needs {min_gpus} GPU(s), {nodes} node(s) of {gpus.source}, but cannot be "
            f"served across nodes: use an instance type whose GPUs hold it on one node")
    return NodeEstimate(max(nodes, 1), how, min_gpus)


def fitting_instance_types(preset: Preset, *, cloud: str | None, context: int | None,
                           constants: EstimatorConstants, table: sku.SkuTable | None = None,
                           limit: int = 5) -> list[tuple[str, int]]:
    """(instance type, nodes) that can hold ``preset``, fewest nodes then least GPU memory first."""
    rows = []
    for it in (table or sku.table()).instance_types:
        if cloud is not None and it.cloud != cloud:
            continue
        est = estimate_nodes(preset, GPUConfig(it.gpu_count, it.gpu_memory_bytes, f"instance type {it.name}"),
                             requested=None, context=context, constants=constants)
        if isinstance(est, NodeEstimate) and it.gpu_memory_bytes > 0:
            rows.append((est.nodes, it.gpu_memory_bytes, it.name))
    rows.sort()
    return [(name, n) for n, _, name in rows[:limit]]


def first_ready(nodes: Iterable[Node], matches: object) -> Node | None:
    """The first Ready node (by name) that ``matches(labels)`` accepts."""
    test = matches if callable(matches) else (lambda labels: True)
    for n in sorted(nodes, key=lambda n: n.name):
        if n.ready and test(n.labels):
            return n
    return None


def runtime_of(annotations: Mapping[str, str]) -> str:
    """KAITO's runtime for a Workspace: transformers only when the annotation asks for it."""
    return "transformers" if annotations.get(ANNOTATION_RUNTIME) == "transformers" else "vllm"
