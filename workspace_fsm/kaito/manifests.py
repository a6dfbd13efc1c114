"""What a Workspace deploys, built as KAITO builds it: pure functions from the typed Workspace and an action.

Everything here is a value computed from (Workspace, action, catalogue): no I/O, no clock. The Kubernetes
adapter sends these documents; the simulated clusters read their pod specs to place pods by GPUs. Each builder
says which KAITO function (kaito-project/kaito at the catalogue's commit) it follows; ``docs/workloads.md`` lists
every field and where it comes from, and what differs (and why).

What KAITO reads from the cluster and a pure builder cannot (the nodes' GPU labels in bring-your-own mode, a
local-NVMe StorageClass, the tuning ConfigMap's ``output_dir``) comes in through the action (``gpus``) or takes
KAITO's default (an emptyDir for the weights, ``/mnt/output``).

KAITO joins a command's ``--key=value`` flags in Go map order, which is random; here they are sorted, so the
same spec always gives the same document (and no needless rollout).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlparse

from workspace_fsm.kaito import actions as A
from workspace_fsm.kaito import sku
from workspace_fsm.kaito.catalogue import Catalogue, Preset
from workspace_fsm.kaito.model import (ANNOTATION_REVISION, GPU_RESOURCE, LABEL_WORKSPACE, LABEL_WORKSPACE_NAMESPACE,
                                       Workspace)

__all__ = [
    "ANNOTATION_ENABLE_LB", "ANNOTATION_RUNTIME", "DEFAULT_NODE_CLASS", "DEFAULT_REGISTRY", "INFERENCE_PORT",
    "build_command", "gpus_per_node", "headless_service", "inference_command", "nodeclaim", "nodeclaim_labels",
    "owner_reference",
    "runtime_name", "service", "service_names", "tuning_job", "workload", "workspace_labels",
]

# ------------------------------------------------------------------------------------------------ constants
# (KAITO's names for them in parentheses)

#: Where KAITO's images live (the chart's PRESET_REGISTRY_NAME).
DEFAULT_REGISTRY = "mcr.microsoft.com/aks/kaito"
#: The NodeClaims' node class on Azure (consts.NodeClassName, CLOUD_PROVIDER=azure: KaitoNodeClass in kaito.sh).
DEFAULT_NODE_CLASS = {"group": "kaito.sh", "kind": "KaitoNodeClass", "name": "default"}
AWS_NODE_CLASS = {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}

ANNOTATION_RUNTIME = "kaito.sh/runtime"  # AnnotationWorkspaceRuntime: "transformers" or "vllm" (default)
ANNOTATION_ENABLE_LB = "kaito.sh/enablelb"  # AnnotationEnableLB: "True" makes the Service a LoadBalancer
ANNOTATION_PERFORMANCE_MODE = "kaito.sh/performance-mode"  # AnnotationPerformanceMode
ANNOTATION_DISABLE_BENCHMARK = "kaito.sh/disable-benchmark"  # AnnotationDisableBenchmark
ANNOTATION_USE_LOCAL_WEIGHTS = "kaito.sh/use-local-weights"  # AnnotationUseLocalWeights
ANNOTATION_NODE_IMAGE_FAMILY = "kaito.sh/node-image-family"  # AnnotationNodeImageFamily
LABEL_INFERENCESET = "inferenceset.kaito.sh/created-by"  # WorkspaceCreatedByInferenceSetLabel
LABEL_MULTIROLE = "multiroleinference.kaito.sh/created-by"
LABEL_NODEPOOL, KAITO_NODEPOOL = "karpenter.sh/nodepool", "kaito"  # consts.LabelNodePool, KaitoNodePoolName
LABEL_POD_NAME = "statefulset.kubernetes.io/pod-name"
LABEL_POD_INDEX = "apps.kubernetes.io/pod-index"  # appsv1.PodIndexLabel

INFERENCE_PORT = 5000  # consts.PortInferenceServer
KV_EVENTS_PORT = 5557  # consts.PortKVCacheEvents
RAY_PORT = 6379  # model.PortRayCluster
RAY_DASHBOARD_PORT = 8265
PROBE_PATH = "/health"
DEFAULT_STARTUP_TIMEOUT_S = 30 * 60  # defaultStartupProbeTimeout
WEIGHTS_PATH = "/workspace/weights"  # utils.DefaultWeightsVolumePath
CONFIG_PATH = "/mnt/config"  # utils.DefaultConfigMapMountPath
DATA_PATH = "/mnt/data"  # utils.DefaultDataVolumePath
ADAPTER_PATH = "/mnt/adapter"  # utils.DefaultAdapterVolumePath
OUTPUT_PATH = "/mnt/output"  # tuning.DefaultOutputVolumePath
VLLM_CONFIG_FILE = "inference_config.yaml"  # model.ConfigfileNameVLLM
TUNING_MAIN_FILE = "/workspace/tfs/fine_tuning.py"  # model.DefaultTuningMainFile
MULTI_NODE_HEALTH = "python3 /workspace/vllm/multi-node-health-check.py"  # DefaultVLLMMultiNodeHealthCheckCommand
BENCHMARK_ENTRYPOINT = "/workspace/vllm/benchmark_entrypoint.py"
CUDA_HOME = "/opt/kaito/cuda/129"  # defaultCudaHomePath
LOCAL_WEIGHTS_PREFIX = "/opt/kaito/models"  # LocalWeightsHostPathPrefix
DEFAULT_NODE_DISK = "1024Gi"  # determineNodeOSDiskSize's default
DEFAULT_TUNING_CONFIG = {"lora": "lora-params-template", "qlora": "qlora-params-template"}
ORAS_IMAGE = "mcr.microsoft.com/oss/v2/oras-project/oras:v1.2.3"  # utils.DefaultORASToolImage
PULLER_IMAGE = "mcr.microsoft.com/aks/skopeo:1.14.4-6"  # image.NewPullerContainer
PUSHER_IMAGE = "ghcr.io/oras-project/oras:v1.2.2"  # image.NewPusherContainer
DOWNLOADER_IMAGE = "curlimages/curl"  # tuning.handleURLDataSource

# Architectures that need vLLM's hybrid KV-cache manager, or for which KAITO disables LMCache
# (PresetParam.isVLLMHybridKVCacheManagerRequired / isLMCacheDisabled): no KV-cache CPU offloading for them.
_NO_KV_OFFLOAD_ARCHS = frozenset({
    "NemotronHForCausalLM", "NemotronH_Nano_VL_V2", "NemotronHMTPModel", "NemotronHPuzzleForCausalLM",
    "Gemma4ForCausalLM", "Gemma4ForConditionalGeneration", "Gemma4UnifiedForConditionalGeneration",
    "Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration", "DeepseekV4ForCausalLM",
    "DeepseekV32ForCausalLM", "GptOssForCausalLM"})
_DEEPGEMM_ARCHS = frozenset({"DeepseekV4ForCausalLM", "DeepseekV32ForCausalLM", "GlmMoeDsaForCausalLM"})
_FLASHINFER_PRESETS = frozenset({"mistral-small-4-119b-2603"})
# Selector keys KAITO never copies from labelSelector onto nodes or pods (reservedSelectorLabelKeys).
_RESERVED_SELECTOR_KEYS = frozenset({
    "kaito.sh/workspace", "kaito.sh/ragengine", "kaito.sh/workspacenamespace", "kaito.sh/ragenginenamespace",
    "karpenter.kaito.sh/workspace-name", "karpenter.kaito.sh/workspace-namespace",
    "karpenter.kaito.sh/inferenceset", "karpenter.kaito.sh/inferenceset-namespace"})


# ------------------------------------------------------------------------------------------------ small pieces


def workspace_labels(ws: Workspace) -> dict[str, str]:
    """The labels everything the machine creates carries: its watches select them and map them back."""
    return {LABEL_WORKSPACE: ws.metadata.name, LABEL_WORKSPACE_NAMESPACE: ws.metadata.namespace}


def owner_reference(ws: Workspace) -> dict[str, Any]:
    return {"apiVersion": ws.api_version, "kind": ws.kind, "name": ws.metadata.name, "uid": ws.metadata.uid,
            "controller": True, "blockOwnerDeletion": True}


def _meta(ws: Workspace, name: str, annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "namespace": ws.metadata.namespace, "labels": workspace_labels(ws),
                           "ownerReferences": [owner_reference(ws)]}
    if annotations:
        out["annotations"] = dict(annotations)
    return out


def build_command(base: str, params: Mapping[str, str]) -> str:
    """``base --k=v --flag ...`` (utils.BuildCmdStr; an empty value is a bare flag), flags sorted by name."""
    parts = [base]
    for k in sorted(params):
        v = params[k]
        parts.append(f"--{k}" if v == "" else f"--{k}={v}")
    return " ".join(parts)


def _shell(command: str) -> list[str]:
    return ["/bin/sh", "-c", command]  # utils.ShellCmd


_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTPE]i?|[kmn]|)\s*$")
_SUFFIX = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60,
           "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def quantity_bytes(text: str | None) -> int | None:
    """A Kubernetes quantity ("7.15Gi") as a whole number, rounded up as resource.Quantity.Value() does."""
    m = _QUANTITY.match(text or "")
    if m is None or m.group(2) not in _SUFFIX:
        return None
    whole, _, frac = m.group(1).partition(".")
    scale: int = _SUFFIX[m.group(2)]
    num = int(whole + frac) * scale
    den: int = 10 ** len(frac)
    return int(-(-num // den))


def runtime_name(ws: Workspace) -> str:
    """GetWorkspaceRuntimeName: vLLM unless the Workspace asks for transformers by annotation."""
    return "transformers" if ws.metadata.annotations.get(ANNOTATION_RUNTIME) == "transformers" else "vllm"


def gpus_per_node(ws: Workspace, observed: int = 0) -> int:
    """The GPUs each pod asks for (getGPUConfig): an accelerator partition's count; else the instance type's GPU
    count (pkg/sku); else, for bring-your-own nodes, what the nodes advertise (``observed``); at least 1."""
    r = ws.resource
    if r is not None and r.partition is not None and r.partition.mode == "accelerator" and r.partition.count:
        return int(r.partition.count)
    if r is not None and r.instance_type:
        it = sku.lookup(r.instance_type)
        if it is not None and it.gpu_count > 0:
            return it.gpu_count
    return observed if observed > 0 else 1


def _instance(ws: Workspace) -> sku.InstanceType | None:
    r = ws.resource
    return sku.lookup(r.instance_type) if r is not None and r.instance_type else None


def _selector_labels(ws: Workspace) -> dict[str, str]:
    """labelSelector.matchLabels without KAITO's reserved keys (SanitizedMatchLabels)."""
    if ws.resource is None or not ws.resource.label_selector.match_labels:
        return {}
    return {k: v for k, v in ws.resource.label_selector.match_labels.items() if k not in _RESERVED_SELECTOR_KEYS}


def _node_affinity(ws: Workspace, provisioned: bool) -> dict[str, Any] | None:
    """Required node affinity: the selector's labels (GenerateInferencePodSpec), and on provisioned nodes the
    Workspace's own labels (ApplyProvisionerNodeSelector), so its pods never land on a sibling's nodes."""
    exprs = [{"key": k, "operator": "In", "values": [v]} for k, v in sorted(_selector_labels(ws).items())]
    if provisioned:
        exprs += [{"key": LABEL_WORKSPACE, "operator": "In", "values": [ws.metadata.name]},
                  {"key": LABEL_WORKSPACE_NAMESPACE, "operator": "In", "values": [ws.metadata.namespace]}]
    if not exprs:
        return None
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": exprs}]}}}


def _provisioned(ws: Workspace) -> bool:
    return ws.resource is not None and not ws.resource.byo_nodes


def _inference_tolerations() -> list[dict[str, Any]]:
    """defaultTolerations (inference), on Azure: GPU taint, the NodeClaims' sku=gpu taint, spot nodes."""
    return [{"effect": "NoSchedule", "operator": "Exists", "key": GPU_RESOURCE},
            {"effect": "NoSchedule", "value": "gpu", "key": "sku", "operator": "Equal"},
            {"effect": "NoSchedule", "key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal",
             "value": "spot"}]


def _tuning_tolerations() -> list[dict[str, Any]]:
    """tuning.defaultTolerations, on Azure (as KAITO writes them: the first has Equal with no value)."""
    return [{"effect": "NoSchedule", "operator": "Equal", "key": "gpu"},
            {"effect": "NoSchedule", "value": "gpu", "key": "sku"},
            {"effect": "NoSchedule", "key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal",
             "value": "spot"}]


def _gpu_resources(n: int) -> dict[str, Any]:
    return {"requests": {GPU_RESOURCE: str(n)}, "limits": {GPU_RESOURCE: str(n)}}


def _image(cat: Catalogue, registry: str) -> str:
    """GetBaseImageName: the base image every preset runs on (its weights are downloaded at run time)."""
    base = cat.kaito.base_image if cat.kaito is not None else None
    return f"{registry}/{base.name}:{base.tag}" if base is not None else f"{registry}/kaito-base:latest"


def _hf_repo(version: str) -> tuple[str, str]:
    """ParseHuggingFaceModelVersion: (repo id, revision) from https://huggingface.co/<org>/<model>[/commit/<rev>]."""
    u = urlparse(version or "")
    if u.hostname != "huggingface.co":
        return "", ""
    parts = [p for p in u.path.strip("/").split("/") if p]
    if len(parts) >= 4 and parts[2] == "commit":
        return f"{parts[0]}/{parts[1]}", parts[3]
    if len(parts) >= 2:
        return f"{parts[0]}/{parts[1]}", ""
    return "", ""


def _preset(ws: Workspace, cat: Catalogue) -> Preset | None:
    spec = ws.tuning if ws.tuning is not None else ws.inference
    name = spec.preset.name if spec is not None and spec.preset is not None else ""
    return cat.resolve(name) if name else None


def _local_weights_path(ws: Workspace) -> str:
    """GetLocalWeightsPath: with kaito.sh/use-local-weights "true", the node directory of the preset's weights."""
    if ws.metadata.annotations.get(ANNOTATION_USE_LOCAL_WEIGHTS) != "true":
        return ""
    if ws.inference is None or ws.inference.preset is None:
        return ""
    seg = ws.inference.preset.name.strip().lower().replace("/", "-").replace("\\", "-")
    return "" if seg in ("", ".", "..") else f"{LOCAL_WEIGHTS_PREFIX}/{seg}"


# ------------------------------------------------------------------------------------------------ commands


def inference_command(ws: Workspace, p: Preset, gpus: int, nodes: int, cat: Catalogue | None = None) -> list[str]:
    """PresetParam.GetInferenceCommand for the Workspace's runtime (``/bin/sh -c ...``)."""
    cat = cat or Catalogue.default()
    if runtime_name(ws) == "transformers":
        return _transformers_command(p)
    return _vllm_command(ws, p, gpus, nodes, cat)


def _transformers_command(p: Preset) -> list[str]:
    """buildHuggingfaceInferenceCommand: accelerate launch ... inference_api.py --served_model_name ..."""
    t = p.transformers
    if t is None:  # validation refuses this; a readable command rather than a crash if it gets here
        return _shell(f"echo 'preset {p.name} has no transformers runtime' >&2; exit 1")
    run = dict(t.model_run_params)
    if t.model_name:
        run["served_model_name"] = t.model_name
    if p.download_at_runtime:
        repo, rev = _hf_repo(p.version)
        run["pretrained_model_name_or_path"] = repo
        if rev:
            run["revision"] = rev
        run["allow_remote_files"] = ""
    return _shell(build_command(t.base_command, t.accelerate_params) + " " + build_command(t.inference_main_file, run))


def _distributed(ws: Workspace, p: Preset, nodes: int) -> bool:
    """shouldUseDistributedInference: vLLM across nodes (Ray), for presets that support it."""
    return p.supports_distributed_inference and runtime_name(ws) == "vllm" and nodes > 1


def _vllm_command(ws: Workspace, p: Preset, gpus: int, nodes: int, cat: Catalogue) -> list[str]:
    """buildVLLMInferenceCommand with the run context GenerateInferencePodSpec gives it."""
    v = p.vllm
    if v is None:
        return _shell(f"echo 'preset {p.name} has no vLLM runtime' >&2; exit 1")
    run = dict(v.model_run_params)
    labels = ws.metadata.labels
    if labels.get(LABEL_MULTIROLE) is not None and v.model_name:
        run["served-model-name"] = v.model_name
    elif labels.get(LABEL_INFERENCESET):
        run["served-model-name"] = labels[LABEL_INFERENCESET]
    elif v.model_name:
        run["served-model-name"] = v.model_name
    run["max-model-len"] = "auto"  # MaxModelLenAuto: vLLM sizes the context to the KV cache it finds
    it = _instance(ws)
    kaito = cat.kaito
    run["gpu-memory-utilization"] = (kaito.gpu_memory_utilization(it.gpu_model if it else None) if kaito is not None
                                     else "0.84")
    run.setdefault("kv-events-config", "'" + json.dumps({"enable_kv_cache_events": True}, separators=(",", ":"))
                   + "'")
    run["compilation-config.pass_config.fuse_allreduce_rms"] = "False"
    if not v.disallow_lora and ws.inference is not None and ws.inference.adapters:
        run["enable-lora"] = ""
    local = _local_weights_path(ws)
    if local:
        run["model"] = local
        run["load-format"] = "runai_streamer"
        run.pop("load_format", None)
    elif p.download_at_runtime:
        repo, rev = _hf_repo(p.version)
        run["model"] = repo
        if rev:
            run["code-revision"] = rev
        run["download-dir"] = WEIGHTS_PATH
    if ws.inference is not None and ws.inference.config:
        run["kaito-config-file"] = f"{CONFIG_PATH}/{VLLM_CONFIG_FILE}"
    mode = ws.metadata.annotations.get(ANNOTATION_PERFORMANCE_MODE, "")
    if mode and mode != "balanced":
        run["performance-mode"] = mode
    if any(a in _NO_KV_OFFLOAD_ARCHS for a in p.architectures):
        run["kaito-kv-cache-cpu-memory-utilization"] = "0"
    distributed = _distributed(ws, p, nodes)
    # configureParallelism: data parallel when the weights fit in half a GPU (one node), tensor parallel across a
    # node's GPUs, and pipeline parallel across nodes.
    size = quantity_bytes(p.model_file_size)
    total = it.gpu_memory_bytes if it is not None else 0
    if not distributed and gpus > 1 and it is not None and size is not None and size * gpus * 2 < total:
        run["data-parallel-size"] = str(gpus)
        run["tensor-parallel-size"] = "1"
        run["kaito-kv-cache-cpu-memory-utilization"] = "0"
    else:
        run["tensor-parallel-size"] = str(gpus)
        if distributed:
            run["kaito-kv-cache-cpu-memory-utilization"] = "0"
            run["pipeline-parallel-size"] = str(nodes)
            run["distributed-executor-backend"] = "ray"
    serve = build_command(v.base_command, run)
    if not distributed:
        return _shell(serve)
    # buildMultiNodeRayCommand: pod 0 starts the Ray head and serves; the others join it as workers.
    leader = build_command(v.ray_leader_base_command, {"ray_cluster_size": str(nodes), "ray_port": str(RAY_PORT)})
    worker = build_command(v.ray_worker_base_command, {"ray_address": ray_leader_host(ws), "ray_port": str(RAY_PORT)})
    return _shell(f'if [ "${{POD_INDEX}}" = "0" ]; then {leader}; {serve}; else {worker}; fi')


def ray_leader_host(ws: Workspace) -> str:
    """GetRayLeaderHost: pod 0 of the StatefulSet, through the headless Service."""
    m = ws.metadata
    return f"{m.name}-0.{m.name}-headless.{m.namespace}.svc.cluster.local"


def tuning_command(p: Preset | None, gpus: int) -> list[str]:
    """PresetParam.GetTuningCommand: accelerate launch with one process per GPU, then fine_tuning.py."""
    base = p.tuning_params.base_command if p is not None and p.tuning_params is not None and \
        p.tuning_params.base_command else "cd /workspace/tfs/ && python3 metrics_server.py & accelerate launch"
    return _shell(build_command(base, {"num_processes": str(gpus)}) + " " + build_command(TUNING_MAIN_FILE, {}))


# ------------------------------------------------------------------------------------------------ probes


def _http_probe(initial: int, period: int, failures: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"httpGet": {"port": INFERENCE_PORT, "path": PROBE_PATH}, "initialDelaySeconds": initial,
                           "periodSeconds": period}
    if failures is not None:
        out["failureThreshold"] = failures
    return out


def _exec_probe(command: list[str], initial: int, period: int, timeout: int, failures: int) -> dict[str, Any]:
    return {"exec": {"command": command}, "initialDelaySeconds": initial, "periodSeconds": period,
            "timeoutSeconds": timeout, "failureThreshold": failures}


def _multi_node_probe(kind: str, ws: Workspace, initial: int, period: int, timeout: int,
                      failures: int) -> dict[str, Any]:
    """getDistributedInferenceProbe: only the leader serves /health, so a script checks leader and workers."""
    args = {"leader-address": ray_leader_host(ws)}
    if kind == "liveness":
        args["ray-port"] = str(RAY_PORT)
    else:
        args["vllm-port"] = str(INFERENCE_PORT)
    probe = _exec_probe(_shell(build_command(f"{MULTI_NODE_HEALTH} {kind}", args)), initial, period, timeout,
                        failures)
    if kind == "liveness":
        probe["terminationGracePeriodSeconds"] = 1
    return probe


def _probes(ws: Workspace, p: Preset, distributed: bool) -> dict[str, Any]:
    """Startup, liveness and readiness probes of the inference container (setInferenceContainers,
    SetDistributedInferenceProbe, SetBenchmarkConfig: the startup probe runs the benchmark for vLLM presets)."""
    timeout_s = p.readiness_timeout_seconds or DEFAULT_STARTUP_TIMEOUT_S
    failures = math.ceil(timeout_s / 10)
    if distributed:
        probes = {"startupProbe": _multi_node_probe("readiness", ws, 0, 10, 1, failures),
                  "livenessProbe": _multi_node_probe("liveness", ws, 60, 10, 5, 1),
                  "readinessProbe": _multi_node_probe("readiness", ws, 0, 10, 1, 1)}
    else:
        probes = {"startupProbe": _http_probe(0, 10, failures), "livenessProbe": _http_probe(0, 10, 3),
                  "readinessProbe": _http_probe(30, 10)}
    benchmark = ws.metadata.annotations.get(ANNOTATION_DISABLE_BENCHMARK) != "true" and runtime_name(ws) == "vllm"
    if benchmark:
        cmd = _shell(f'if [ "$POD_INDEX" = "0" ]; then python3 {BENCHMARK_ENTRYPOINT}; else true; fi') \
            if distributed else ["python3", BENCHMARK_ENTRYPOINT]
        probes["startupProbe"] = {"exec": {"command": cmd}, "periodSeconds": 10, "timeoutSeconds": 600,
                                  "failureThreshold": failures}
    return probes


# ------------------------------------------------------------------------------------------------ inference


def _adapters(ws: Workspace, spec: dict[str, Any], main: dict[str, Any]) -> None:
    """SetAdapterPuller: image adapters are pulled into an emptyDir by init containers; volume adapters mounted."""
    ads = ws.inference.adapters if ws.inference is not None else None
    if not ads:
        return
    images = [a for a in ads if not (a.source is not None and a.source.volume_source is not None)]
    volumes = [a for a in ads if a.source is not None and a.source.volume_source is not None]
    if images:
        mount = {"name": "adapter-volume", "mountPath": ADAPTER_PATH}
        spec.setdefault("volumes", []).append({"name": "adapter-volume", "emptyDir": {}})
        main.setdefault("volumeMounts", []).append(mount)
        for a in images:
            src = a.source
            name = (src.name if src is not None else None) or ""
            puller = _puller(name, (src.image if src is not None else None) or "", f"{ADAPTER_PATH}/{name}")
            puller["volumeMounts"] = [dict(mount)]
            secrets = src.image_pull_secrets if src is not None else None
            if secrets:
                vol, vm = _pull_secret_volume(f"{name}-inference-adapter", secrets)
                spec.setdefault("volumes", []).append(vol)
                puller["volumeMounts"].append(vm)
            spec.setdefault("initContainers", []).append(puller)
            if a.strength is not None:
                main.setdefault("env", []).append({"name": name, "value": a.strength})
    for a in volumes:
        src = a.source
        if src is None or src.volume_source is None:
            continue
        name = src.name or ""
        vol_name = f"adapter-volume-{name}"
        spec.setdefault("volumes", []).append({"name": vol_name, **dict(src.volume_source)})
        main.setdefault("volumeMounts", []).append({"name": vol_name, "mountPath": f"{ADAPTER_PATH}/{name}"})
        if a.strength is not None:
            main.setdefault("env", []).append({"name": name, "value": a.strength})


def _image_pull_secrets(ws: Workspace) -> list[dict[str, str]]:
    """GetInferenceImageInfo: the adapters' image pull secrets."""
    out: list[dict[str, str]] = []
    for a in (ws.inference.adapters if ws.inference is not None else None) or ():
        for s in (a.source.image_pull_secrets if a.source is not None else None) or ():
            out.append({"name": s})
    return out


def inference_pod_spec(ws: Workspace, p: Preset, gpus: int, nodes: int, cat: Catalogue | None = None,
                       registry: str = DEFAULT_REGISTRY) -> dict[str, Any]:
    """The preset inference pod (GeneratePresetInference's pod modifiers, in KAITO's order)."""
    cat = cat or Catalogue.default()
    runtime = runtime_name(ws)
    local = _local_weights_path(ws)
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    config = ws.inference.config if ws.inference is not None else None
    if config:
        volumes.append({"name": "config-volume", "configMap": {"name": config}})
        mounts.append({"name": "config-volume", "mountPath": CONFIG_PATH})
    if not local:
        mounts.append({"name": "model-weights-volume", "mountPath": WEIGHTS_PATH})
    else:
        volumes.append({"name": "model-weights-hostpath", "hostPath": {"path": local, "type": "Directory"}})
        mounts.append({"name": "model-weights-hostpath", "mountPath": local, "readOnly": True})
    cuda = any(a in _DEEPGEMM_ARCHS for a in p.architectures) or p.name in _FLASHINFER_PRESETS
    if cuda:
        volumes.append({"name": "cuda-toolkit-hostpath", "hostPath": {"path": CUDA_HOME, "type": "DirectoryOrCreate"}})
        mounts.append({"name": "cuda-toolkit-hostpath", "mountPath": CUDA_HOME, "readOnly": True})
    volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    env: list[dict[str, Any]] = []
    if runtime == "vllm":
        env.append({"name": "VLLM_USE_FLASHINFER_SAMPLER", "value": "0"})
        env.append({"name": "VLLM_USE_DEEP_GEMM",
                    "value": "1" if any(a in _DEEPGEMM_ARCHS for a in p.architectures) else "0"})
    if cuda:
        env.append({"name": "CUDA_HOME", "value": CUDA_HOME})
    if local:
        env.append({"name": "KAITO_PROCESSOR", "value": local})
    ports: list[dict[str, Any]] = [{"name": "http", "containerPort": INFERENCE_PORT}]
    if runtime == "vllm":
        ports.append({"name": "kv-events", "containerPort": KV_EVENTS_PORT})
    distributed = _distributed(ws, p, nodes)
    main: dict[str, Any] = {"name": ws.metadata.name, "image": _image(cat, registry),
                            "command": inference_command(ws, p, gpus, nodes, cat), "resources": _gpu_resources(gpus),
                            "ports": ports, **_probes(ws, p, distributed), "volumeMounts": mounts}
    if env:
        main["env"] = env
    # initContainers always present (if empty): an update is a merge patch, which would keep a list it is not given.
    spec: dict[str, Any] = {"containers": [main], "imagePullSecrets": _image_pull_secrets(ws), "initContainers": [],
                            "tolerations": _inference_tolerations(), "volumes": volumes}
    if cuda:
        spec["initContainers"] = [{"name": "cuda-toolkit-provisioner", "image": _image(cat, registry),
                                   "command": ["/bin/sh", "-c", 'flock "$1" /workspace/cuda-provision.sh "$1"', "sh",
                                               CUDA_HOME],
                                   "volumeMounts": [{"name": "cuda-toolkit-hostpath", "mountPath": CUDA_HOME}]}]
    affinity = _node_affinity(ws, _provisioned(ws))
    if affinity is not None:
        spec["affinity"] = affinity
    secret = ws.inference.preset.preset_options.model_access_secret \
        if ws.inference is not None and ws.inference.preset is not None and ws.inference.preset.preset_options \
        else None
    if secret:  # SetHFToken
        main.setdefault("env", []).append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": secret, "key": "HF_TOKEN", "optional": True}}})
    if not local and not p.download_at_runtime and p.image is not None:  # SetModelDownloadInfo: weights in an image
        spec.setdefault("initContainers", []).append({
            "name": "model-weights-downloader", "image": ORAS_IMAGE,
            "command": ["oras", "pull", f"{registry}/{p.image.name}:{p.image.tag}", "-o", WEIGHTS_PATH],
            "volumeMounts": [{"name": "model-weights-volume", "mountPath": WEIGHTS_PATH}]})
    _adapters(ws, spec, main)
    if distributed:  # SetDistributedInferenceProbe's POD_INDEX (the probes are set above)
        main.setdefault("env", []).append({"name": "POD_INDEX", "valueFrom": {"fieldRef": {
            "fieldPath": f"metadata.labels['{LABEL_POD_INDEX}']"}}})
    if not local:  # SetDefaultModelWeightsVolume (KAITO uses a local-NVMe PVC instead when the cluster has one)
        spec["volumes"].append({"name": "model-weights-volume", "emptyDir": {}})
    return spec


def _template_pod(ws: Workspace) -> dict[str, Any]:
    """GenerateManifestWithPodTemplate: the user's pod template as written, with KAITO's label, its node affinity
    replaced by the selector's (and the Workspace's nodes, ApplyProvisionerNodeSelector), tolerations appended."""
    tpl = json.loads(json.dumps(dict(ws.inference.template or {}))) if ws.inference is not None else {}
    meta = tpl.setdefault("metadata", {}) or {}
    tpl["metadata"] = meta
    meta["labels"] = {**(meta.get("labels") or {}), LABEL_WORKSPACE: ws.metadata.name}
    spec = tpl.setdefault("spec", {}) or {}
    tpl["spec"] = spec
    affinity = _node_affinity(ws, _provisioned(ws))
    if affinity is not None:
        spec["affinity"] = affinity
    else:
        spec.pop("affinity", None)
    spec["tolerations"] = list(spec.get("tolerations") or []) + _inference_tolerations()
    return tpl


def _selector(ws: Workspace) -> dict[str, str]:
    """The workload's selector and its pods' labels (GenerateStatefulSetManifest), InferenceSet and
    MultiRoleInference labels included."""
    out = {LABEL_WORKSPACE: ws.metadata.name}
    for key in (LABEL_INFERENCESET, LABEL_MULTIROLE, "kaito.sh/inference-role"):
        if key in ws.metadata.labels:
            out[key] = ws.metadata.labels[key]
    return out


def workload(ws: Workspace, a: A.CreateWorkload | A.UpdateWorkload, catalogue: Catalogue | None = None,
             registry: str = DEFAULT_REGISTRY) -> dict[str, Any]:
    """The inference workload: the preset's pods (GeneratePresetInference), or the user's ``inference.template``
    as written (CreateTemplateInference). A StatefulSet when the action says so (several nodes), else a
    Deployment; both carry the spec's revision, so a spec change rolls the pods."""
    cat = catalogue or Catalogue.default()
    template = ws.inference is not None and ws.inference.template is not None
    selector = _selector(ws)
    if template:
        pod = _template_pod(ws)
        for k, v in selector.items():
            pod["metadata"]["labels"].setdefault(k, v)
    else:
        p = _preset(ws, cat) or Preset(name=a.preset or "unknown")
        gpus = gpus_per_node(ws, getattr(a, "gpus", 0))
        pod = {"metadata": {"labels": dict(selector)},
               "spec": inference_pod_spec(ws, p, gpus, a.replicas, cat, registry)}
    pod["metadata"]["annotations"] = {**(pod["metadata"].get("annotations") or {}), ANNOTATION_REVISION: a.revision}
    spec: dict[str, Any] = {"replicas": a.replicas, "selector": {"matchLabels": dict(selector)}, "template": pod}
    if a.kind == "StatefulSet":
        spec["serviceName"] = f"{ws.metadata.name}-headless"
        spec["podManagementPolicy"] = "Parallel"
        spec["persistentVolumeClaimRetentionPolicy"] = {"whenScaled": "Retain", "whenDeleted": "Delete"}
    return {"apiVersion": "apps/v1", "kind": a.kind, "metadata": _meta(ws, a.name, {ANNOTATION_REVISION: a.revision}),
            "spec": spec}


# ------------------------------------------------------------------------------------------------ services


def service_names(ws: Workspace) -> tuple[str, str]:
    """The Service and the headless Service KAITO creates for every inference Workspace (ensureService)."""
    return ws.metadata.name, f"{ws.metadata.name}-headless"


def service(ws: Workspace, stateful: bool) -> dict[str, Any]:
    """GenerateServiceManifest: port 80 to the model's 5000, Ray's ports, and vLLM's KV-cache events on a
    ClusterIP Service; a LoadBalancer when the Workspace is annotated kaito.sh/enablelb: "True". It selects pod 0
    of a StatefulSet (the Ray leader); a single-node Deployment's pod has no ordinal name, so only by label."""
    lb = ws.metadata.annotations.get(ANNOTATION_ENABLE_LB) == "True"
    kind = "LoadBalancer" if lb else "ClusterIP"
    ports = [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": INFERENCE_PORT},
             {"name": "ray", "protocol": "TCP", "port": RAY_PORT, "targetPort": RAY_PORT},
             {"name": "dashboard", "protocol": "TCP", "port": RAY_DASHBOARD_PORT, "targetPort": RAY_DASHBOARD_PORT}]
    if kind == "ClusterIP" and runtime_name(ws) == "vllm":
        ports.append({"name": "kv-events", "protocol": "TCP", "port": KV_EVENTS_PORT, "targetPort": KV_EVENTS_PORT})
    selector = {LABEL_WORKSPACE: ws.metadata.name}
    if stateful:
        selector[LABEL_POD_NAME] = f"{ws.metadata.name}-0"
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(ws, service_names(ws)[0]),
            "spec": {"type": kind, "ports": ports, "selector": selector, "publishNotReadyAddresses": True}}


def headless_service(ws: Workspace) -> dict[str, Any]:
    """GenerateHeadlessServiceManifest: how a multi-node StatefulSet's workers find pod 0 (the Ray leader)."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(ws, service_names(ws)[1]),
            "spec": {"selector": {LABEL_WORKSPACE: ws.metadata.name}, "clusterIP": "None", "ports": [],
                     "publishNotReadyAddresses": True}}


# ------------------------------------------------------------------------------------------------ tuning


def _puller(name: str, image: str, out_dir: str) -> dict[str, Any]:
    """An init container that copies an image's /data into ``out_dir`` (image.NewPullerContainer's contract)."""
    script = ('set -eu; tmp=$(mktemp -d); skopeo copy --retry-times 3 "docker://$1" "dir:$tmp/img"; '
              'mkdir -p "$2"; for layer in $(ls "$tmp/img" | grep -v -e manifest.json -e version); do '
              'tar -xf "$tmp/img/$layer" -C "$tmp" 2>/dev/null || true; done; cp -r "$tmp/data/." "$2/"')
    return {"name": f"puller-{name}" if name else "puller", "image": PULLER_IMAGE,
            "command": ["/bin/sh", "-c"], "args": [script, "puller", image, out_dir]}


def _pusher(in_dir: str, image: str, annotations: Mapping[str, Any]) -> dict[str, Any]:
    """A sidecar that waits for tuning to finish, then pushes ``in_dir`` as an image (image.NewPusherContainer)."""
    script = ('set -eu; while [ ! -f "$1/fine_tuning_completed.txt" ]; do sleep 10; done; cd "$1"; '
              'printf "%s" "$3" > /tmp/annotations.json; '
              'oras push --annotation-file /tmp/annotations.json "$2" $(ls | grep -v fine_tuning_completed.txt)')
    return {"name": "pusher", "image": PUSHER_IMAGE, "command": ["/bin/sh", "-c"],
            "args": [script, "pusher", in_dir, image, json.dumps(dict(annotations), separators=(",", ":"))]}


def _pull_secret_volume(suffix: str, secrets: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """ConfigImagePullSecretVolume: the registry secrets as docker config files."""
    name = f"docker-config-{suffix}"
    vol = {"name": name, "projected": {"sources": [
        {"secret": {"name": s, "items": [{"key": ".dockerconfigjson", "path": f"{s}.json"}]}} for s in secrets]}}
    return vol, {"name": name, "mountPath": f"/root/.docker/config.d/{suffix}"}


_DOWNLOADER = ('set -eu; mkdir -p "$DATA_VOLUME_PATH"; i=0; for url in $DATA_URLS; do i=$((i+1)); '
               'file=$(basename "${url%%\\?*}"); [ -n "$file" ] || file="data-$i"; '
               'curl -sSfL --retry 5 -o "$DATA_VOLUME_PATH/$file" "$url"; done')


def tuning_job(ws: Workspace, a: A.CreateJob, catalogue: Catalogue | None = None,
               registry: str = DEFAULT_REGISTRY) -> dict[str, Any]:
    """The tuning Job (CreatePresetTuning): GPUs of the instance type, the method's ConfigMap, the input pulled,
    downloaded or mounted at /mnt/data, the results at /mnt/output pushed as an image or written to a volume."""
    cat = catalogue or Catalogue.default()
    t = ws.tuning
    p = _preset(ws, cat)
    gpus = gpus_per_node(ws, getattr(a, "gpus", 0))
    name = ws.metadata.name
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory"}},
                                     {"name": "model-weights-volume", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"},
                                    {"name": "model-weights-volume", "mountPath": WEIGHTS_PATH}]
    init: list[dict[str, Any]] = []
    if p is not None and not p.download_at_runtime and p.image is not None:  # GenerateModelPullerContainer
        init.append({"name": "model-weights-downloader", "image": ORAS_IMAGE,
                     "command": ["oras", "pull", f"{registry}/{p.image.name}:{p.image.tag}", "-o", WEIGHTS_PATH],
                     "volumeMounts": [{"name": "model-weights-volume", "mountPath": WEIGHTS_PATH}]})
    env = []
    preset_name = (t.preset.name if t is not None and t.preset is not None else "").lower()
    if preset_name.startswith("phi-3"):
        env.append({"name": "DEFAULT_TARGET_MODULES",
                    "value": "k_proj,q_proj,v_proj,o_proj,gate_proj,down_proj,up_proj"})
    env.append({"name": "PYTORCH_CUDA_ALLOC_CONF", "value": "expandable_segments:True"})
    main: dict[str, Any] = {"name": name, "image": _image(cat, registry), "command": tuning_command(p, gpus),
                            "resources": _gpu_resources(gpus), "ports": [{"containerPort": INFERENCE_PORT}],
                            "env": env, "volumeMounts": mounts}
    spec: dict[str, Any] = {"tolerations": _tuning_tolerations(), "initContainers": init, "containers": [main],
                            "volumes": volumes, "restartPolicy": "Never"}
    affinity = _node_affinity(ws, False)  # the tuning pod is placed by the selector's labels only
    if affinity is not None:
        spec["affinity"] = affinity
    # SetTrainingResultVolume: the ConfigMap named, else the method's default template; results at /mnt/output.
    method = (a.method or (t.method if t is not None else None) or "qlora").lower()
    config = (t.config if t is not None else None) or DEFAULT_TUNING_CONFIG.get(method, DEFAULT_TUNING_CONFIG["qlora"])
    output = t.output if t is not None else None
    results: dict[str, Any] = {"name": "results-volume", **(dict(output.volume_source) if output is not None and
                                                             output.volume_source else {"emptyDir": {}})}
    results_mount = {"name": "results-volume", "mountPath": OUTPUT_PATH}
    mounts += [{"name": "config-volume", "mountPath": CONFIG_PATH}, results_mount]
    volumes += [{"name": "config-volume", "configMap": {"name": config}}, results]
    # SetTrainingInput: an image, URLs, or a volume, at /mnt/data in every container.
    src = t.input if t is not None else None
    data_mounts: list[dict[str, Any]] = []
    data_mount = {"name": "data-volume", "mountPath": DATA_PATH}
    if src is not None and src.image:
        vol, vm = _pull_secret_volume(f"{src.name or ''}-tuning-input", src.image_pull_secrets or ())
        puller = _puller("", src.image, DATA_PATH)
        puller["volumeMounts"] = [vm, dict(data_mount)]
        init.append(puller)
        volumes += [vol, {"name": "data-volume", "emptyDir": {}}]
        data_mounts = [vm, data_mount]
    elif src is not None and src.urls:
        init.append({"name": "data-downloader", "image": DOWNLOADER_IMAGE, "command": ["sh", "-c", _DOWNLOADER],
                     "env": [{"name": "DATA_URLS", "value": " ".join(src.urls)},
                             {"name": "DATA_VOLUME_PATH", "value": DATA_PATH}],
                     "volumeMounts": [dict(data_mount)]})
        volumes.append({"name": "data-volume", "emptyDir": {}})
        data_mounts = [data_mount]
    elif src is not None and src.volume_source:
        volumes.append({"name": "data-volume", **dict(src.volume_source)})
        data_mounts = [data_mount]
    for c in spec["containers"]:  # the pusher below comes after, and does not get the input
        c.setdefault("volumeMounts", []).extend(dict(m) for m in data_mounts)
    # SetTrainingOutputImagePush: push the results as an image with the push secret (not with an output volume).
    if output is not None and output.image and not output.volume_source:
        secret = output.image_push_secret or ""
        spec["imagePullSecrets"] = [{"name": secret}]
        volumes.append({"name": "docker-config", "projected": {"sources": [{"secret": {
            "name": secret, "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}}]}})
        notes = {"$manifest": {"sh.kaito.model.name": t.preset.name}} if t is not None and t.preset else {}
        pusher = _pusher(OUTPUT_PATH, output.image, notes)
        pusher["volumeMounts"] = [{"name": "docker-config", "mountPath": "/root/.docker"}, dict(results_mount)]
        spec["containers"] += [pusher, {"name": "pause", "image": "registry.k8s.io/pause:latest",
                                        "imagePullPolicy": "Always"}]
    if len(spec["containers"]) > 1:  # SetJobPodSpec
        spec["shareProcessNamespace"] = True
    labels = {LABEL_WORKSPACE: name}
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": _meta(ws, a.name, {ANNOTATION_REVISION: a.revision}),
            "spec": {"template": {"metadata": {"labels": labels, "annotations": {ANNOTATION_REVISION: a.revision}},
                                  "spec": spec}}}


# ------------------------------------------------------------------------------------------------ NodeClaims


def node_disk(ws: Workspace, catalogue: Catalogue | None = None) -> str:
    """determineNodeOSDiskSize: the inference preset's disk requirement, else 1024Gi (tuning included)."""
    cat = catalogue or Catalogue.default()
    if ws.inference is not None and ws.inference.preset is not None and ws.inference.preset.name:
        p = cat.resolve(ws.inference.preset.name)
        if p is not None and p.disk_storage_requirement:
            return p.disk_storage_requirement
    return DEFAULT_NODE_DISK


def nodeclaim_labels(ws: Workspace, a: A.CreateNodeClaim) -> dict[str, str]:
    """The NodeClaim's labels, which Karpenter copies to its Node: KAITO's nodepool, the Workspace's, the selector's."""
    return {LABEL_NODEPOOL: KAITO_NODEPOOL, **dict(a.labels), **_selector_labels(ws)}


def nodeclaim(ws: Workspace, a: A.CreateNodeClaim, node_class: Mapping[str, str] | None = None,
              catalogue: Catalogue | None = None, cloud: str = "azure") -> dict[str, Any]:
    """GenerateNodeClaimManifestWithOptions: KAITO's fake nodepool label (Karpenter leaves the node alone), the
    Workspace's labels and its selector's, do-not-disrupt, the node image family, the sku=gpu taint, the instance
    type, and the preset's disk. Cluster-scoped, so not owned: the machine deletes it itself."""
    labels = nodeclaim_labels(ws, a)
    family = ws.metadata.annotations.get(ANNOTATION_NODE_IMAGE_FAMILY, "").lower()
    annotations = {"karpenter.sh/do-not-disrupt": "true",
                   ANNOTATION_NODE_IMAGE_FAMILY: family if family in ("ubuntu", "azurelinux") else "ubuntu",
                   "kaito.sh/workspace-uid": ws.metadata.uid}
    requirements: list[dict[str, Any]] = [
        {"key": LABEL_NODEPOOL, "operator": "In", "values": [KAITO_NODEPOOL]},
        {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": [a.instance_type]},
        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
    ]
    if cloud == "azure":
        requirements.append({"key": "karpenter.azure.com/sku-name", "operator": "In", "values": [a.instance_type]})
    elif cloud == "aws":
        requirements.append({"key": "karpenter.k8s.aws/instance-gpu-count", "operator": "Gt", "values": ["0"]})
    ref = dict(node_class) if node_class else dict(AWS_NODE_CLASS if cloud == "aws" else DEFAULT_NODE_CLASS)
    return {
        "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
        "metadata": {"name": a.name, "labels": labels, "annotations": annotations},
        "spec": {"nodeClassRef": ref,
                 "taints": [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}],
                 "requirements": requirements,
                 "resources": {"requests": {"storage": node_disk(ws, catalogue)}}},
    }
