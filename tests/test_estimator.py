"""status.targetNodeCount as KAITO computes it (workspace_fsm/kaito/estimator.py, size_workspace in workspace.py).

Every expected node count below was worked out by hand from KAITO's Go estimator at 056b8280
(pkg/workspace/estimator/nodesestimator/estimator.go) and its caller (UpdateWorkspaceTargetNodeCount in
pkg/workspace/controllers/workspace_controller.go), with the model sizes and bytes per token of KAITO's
preset catalogue (data/presets.json) and the GPU memory of pkg/sku (data/instance_types.json):

    usable  = memory per GPU x 0.84                       (vLLM's gpu-memory-utilization)
    reserve = 2.3 GiB + context x bytes per token / GPUs per node
    room    = (usable - reserve) / 1.05                   (5 % of the weights' share as overhead)
    GPUs    = int(safetensors size x 1.02 / room) + 1,    nodes = ceil(GPUs / GPUs per node)

context is max-model-len from the inference ConfigMap's inference_config.yaml, else 2048. The arithmetic of
each row is in its comment (GiB = 2^30 bytes); the code under test is not used to make the expectations.
"""

from __future__ import annotations

from datetime import datetime, timezone

import attrs
import pytest

from workspace_fsm.kaito import actions as A
from workspace_fsm.kaito.catalogue import Catalogue
from workspace_fsm.kaito.estimator import parse_max_model_len
from workspace_fsm.kaito.model import Node, Snapshot, parse_workspace
from workspace_fsm.kaito.workspace import (RESOURCE_READY, WORKSPACE_SUCCEEDED, confirmations, decide,
                                           size_workspace)

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
A100 = "Standard_NC24ads_A100_v4"  # 1 GPU, 80 GiB
A100_X2 = "Standard_NC48ads_A100_v4"  # 2 GPUs, 160 GiB
A10 = "Standard_NV36ads_A10_v5"  # 1 GPU, 24 GiB
A10_X2 = "Standard_NV72ads_A10_v5"  # 2 GPUs, 48 GiB
H100_X2 = "Standard_NC80adis_H100_v5"  # 2 GPUs, 188 GiB
L4_X4 = "g6.12xlarge"  # 4 GPUs, 96 GiB


def doc(name="ws", *, preset="phi-4", instance_type: str | None = A100, count=None, config=None, secret=None,
        annotations=None, selector=None, partition=None, template=None):
    resource = {"labelSelector": selector or {"matchLabels": {"apps": name}}}
    if instance_type:
        resource["instanceType"] = instance_type
    if count is not None:
        resource["count"] = count
    if partition is not None:
        resource["partition"] = partition
    inference = {"template": template} if template is not None else {"preset": {"name": preset}}
    if secret:
        inference["preset"]["presetOptions"] = {"modelAccessSecret": secret}
    if config:
        inference["config"] = config
    meta = {"name": name, "namespace": "default", "uid": f"uid-{name}", "generation": 1}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": meta, "resource": resource,
            "inference": inference}


def parsed(d, **kw):
    ws = parse_workspace(d, **kw)
    assert not ws.problems, ws.problems
    return ws


def config_map(text: str) -> dict[str, str]:
    return {"inference_config.yaml": text}


# preset, instance type, max-model-len (None: 2048), expected nodes -- by hand, see the module docstring.
TABLE = [
    # phi-4: 27.31 GiB x 1.02 = 27.86; A100: (67.2 - 2.3 - 2048 x 204800 B = 0.39) / 1.05 = 61.44 -> 0.45 -> 1 GPU
    ("phi-4", A100, None, 1),
    # A10: (20.16 - 2.3 - 0.39) / 1.05 = 16.64 -> 1.67 -> 2 GPUs, 1 per node -> 2 nodes
    ("phi-4", A10, None, 2),
    # two A10s per node: KV cache shared, 0.195 per GPU: room 16.82 -> 1.66 -> 2 GPUs -> 1 node
    ("phi-4", A10_X2, None, 1),
    # qwen2.5-coder-32b-instruct: 61.03 x 1.02 = 62.25; KV 2048 x 262144 B = 0.5: room 61.33 -> 1.015 -> 2 GPUs
    ("qwen2.5-coder-32b-instruct", A100, None, 2),
    # gpt-oss-120b: 121.54 x 1.02 = 123.97; KV 2048 x 73728 B = 0.14: room 61.68 -> 2.01 -> 3 GPUs -> 3 nodes
    ("gpt-oss-120b", A100, None, 3),
    # deepseek-r1-0528: 641.30 x 1.02 = 654.13; 94 GiB GPUs: (78.96 - 2.3 - 0.067) / 1.05 = 72.95 -> 8.97 -> 9 GPUs,
    # 2 per node -> 5 nodes (KAITO's own example asks resource.count 6, which KAITO does not use)
    ("deepseek-r1-0528", H100_X2, None, 5),
    # mistral-7b: 13.50 x 1.02 = 13.77; L4 x 4: KV 2048 x 131072 B / 4 = 0.0625: room 16.95 -> 0.81 -> 1 GPU
    ("mistral-7b", L4_X4, None, 1),
    # phi-3.5-mini-instruct: 7.12 x 1.02 = 7.26; context 16384 x 393216 B = 6 GiB: (20.16 - 2.3 - 6) / 1.05 = 11.30
    # -> 0.64 -> 1 GPU
    ("phi-3.5-mini-instruct", A10, 16384, 1),
    # context 32768: 12 GiB of KV cache: (20.16 - 2.3 - 12) / 1.05 = 5.58 -> 1.30 -> 2 GPUs -> 2 nodes
    ("phi-3.5-mini-instruct", A10, 32768, 2),
]


@pytest.mark.parametrize("preset, instance_type, context, nodes", TABLE)
def test_target_node_count_is_kaitos_estimate(preset, instance_type, context, nodes):
    config = None if context is None else "params"
    ws = parsed(doc(preset=preset, instance_type=instance_type, count=4, config=config))
    snap = Snapshot(config_maps={"params": config_map(f"vllm:\n  max-model-len: {context}\n")} if config else {})
    sizing = size_workspace(ws, snap)
    assert (sizing.target, sizing.problem) == (nodes, None), sizing


def test_kaitos_llama_example_with_its_config_map():
    """examples/inference/kaito_workspace_llama-3.3_70b_instruct.yaml: count 2 on 2 x A100, max-model-len 16384.
    131.42 x 1.02 = 134.05; KV 16384 x 327680 B / 2 = 2.5 GiB: (67.2 - 2.3 - 2.5) / 1.05 = 59.43 -> 2.26 -> 3 GPUs,
    2 per node -> 2 nodes, as the example asks."""
    ws = parsed(doc(preset="llama-3.3-70b-instruct", instance_type=A100_X2, count=2, config="llama-inference-params",
                    secret="hf-token"))
    text = "vllm:\n  cpu-offload-gb: 0\n  gpu-memory-utilization: 0.95\n  swap-space: 4\n  max-model-len: 16384\n"
    sizing = size_workspace(ws, Snapshot(config_maps={"llama-inference-params": config_map(text)}))
    assert sizing.target == 2 and "context 16384 tokens" in sizing.how


def test_max_model_len_is_read_as_kaito_reads_it():
    assert parse_max_model_len("vllm:\n  max-model-len: 4096\n") == 4096
    assert parse_max_model_len("vllm:\n  # a comment\n\n  gpu-memory-utilization: 0.9\n  max-model-len: 8192") == 8192
    assert parse_max_model_len("other:\n  max-model-len: 4096\n") is None  # not under vllm:
    assert parse_max_model_len("vllm:\n  a: 1\nnext:\n  max-model-len: 4096\n") is None  # after the section
    assert parse_max_model_len("vllm:\n  max-model-len: 0\n") is None  # not positive
    assert parse_max_model_len("vllm:\n  max-model-len: lots\n") is None
    assert parse_max_model_len("vllm:\n  max-model-len:\n") is None
    assert parse_max_model_len("") is None


def test_an_instance_type_that_cannot_hold_the_model_is_reported_and_nothing_is_created():
    # phi-3.5-mini-instruct with a 65536-token context: 65536 x 393216 B = 24 GiB of KV cache on one 24 GiB A10,
    # which has 20.16 GiB for vLLM: not even the overhead fits (KAITO: "GPU memory ... is too small").
    ws = parsed(doc(preset="phi-3.5-mini-instruct", instance_type=A10, config="long"))
    snap = Snapshot(config_maps={"long": config_map("vllm:\n  max-model-len: 65536\n")})
    d = decide(ws, snap, NOW)
    assert d.state == "Pending"
    assert not [a for a in d.actions if isinstance(a, (A.CreateNodeClaim, A.CreateWorkload))]
    cond = d.status.condition(RESOURCE_READY)
    assert cond is not None and cond.status == "False" and cond.reason == "GPUMemoryTooSmall"
    assert d.status.condition(WORKSPACE_SUCCEEDED).reason == "GPUMemoryTooSmall"
    # What to do: instance types that can hold it (an 80 GiB A100 holds 24 GiB of KV cache and the weights).
    assert "instance types that can hold it" in cond.message and A100 in cond.message
    assert "65536-token context" in cond.message and "Standard_NV36ads_A10_v5" in cond.message
    assert "or lower max-model-len (65536) in ConfigMap long" in cond.message
    assert not d.status.target_node_count
    warnings = [a for a in d.actions if isinstance(a, A.RecordEvent) and a.type == "Warning"]
    assert [w.reason for w in warnings] == ["GPUMemoryTooSmall"] and "default/ws" in warnings[0].message
    # The next pass reads the status it wrote: the same Warning is not repeated, still nothing is created.
    again = decide(ws.with_status(d.status), snap, NOW)
    assert again.state == "Pending" and not again.mutating_actions[1:]
    assert not [a for a in again.actions if isinstance(a, A.RecordEvent) and a.type == "Warning"]
    # A fixed spec (a larger instance type) is sized and provisioned.
    fixed = parsed(doc(preset="phi-3.5-mini-instruct", instance_type=A100, config="long"))
    d = decide(fixed.with_status(d.status), snap, NOW)
    assert d.state == "NodesProvisioning" and d.status.target_node_count == 1
    assert len([a for a in d.actions if isinstance(a, A.CreateNodeClaim)]) == 1


def test_a_context_longer_than_the_model_supports_is_refused_as_kaitos_webhook_does():
    # phi-4's model token limit is 16384 (KAITO's preset catalogue).
    ws = parsed(doc(preset="phi-4", config="long"))
    snap = Snapshot(config_maps={"long": config_map("vllm:\n  max-model-len: 32768\n")})
    d = decide(ws, snap, NOW)
    cond = d.status.condition(RESOURCE_READY)
    assert d.state == "Pending" and cond.reason == "MaxModelLenTooLarge" and "at most 16384" in cond.message
    assert not [a for a in d.actions if isinstance(a, A.CreateNodeClaim)]
    snap = Snapshot(config_maps={"long": config_map("vllm:\n  max-model-len: 16384\n")})
    assert size_workspace(ws, snap).target == 1


def test_an_instance_type_kaito_does_not_know_is_not_sized():
    ws = parsed(doc(preset="phi-4", instance_type="Standard_NC6s_v3"))
    d = decide(ws, Snapshot(), NOW)
    assert d.state == "Pending" and not [a for a in d.actions if isinstance(a, A.CreateNodeClaim)]
    cond = d.status.condition(RESOURCE_READY)
    assert cond.reason == "InstanceTypeUnknown" and "Standard_NC6s_v3" in cond.message and A100 in cond.message
    assert "g5." not in cond.message  # an Azure VM size gets Azure suggestions, not AWS instance types


def test_the_target_is_computed_once_and_kept():
    ws = parsed(doc(preset="gpt-oss-120b", instance_type=A100))
    d = decide(ws, Snapshot(), NOW)
    assert d.status.target_node_count == 3
    assert len([a for a in d.actions if isinstance(a, A.CreateNodeClaim)]) == 3
    # The spec changes to a model that fits one GPU, and the catalogue to one where gpt-oss-120b is tiny:
    # the persisted target is what counts (KAITO computes it only while it is 0).
    tiny = attrs.evolve(Catalogue.default().get("gpt-oss-120b"), gpu_memory_bytes=1 << 30)
    catalogue = Catalogue({**Catalogue.default().presets, "gpt-oss-120b": tiny}, kaito=Catalogue.default().kaito)
    for changed in (parsed(doc(preset="phi-4", instance_type=A100)),
                    parsed(doc(preset="gpt-oss-120b", instance_type=A100), catalogue=catalogue)):
        assert size_workspace(changed).target == 1  # what a fresh estimate would say
        kept = changed.with_status(d.status)
        assert size_workspace(kept).target == 3
        again = decide(kept, Snapshot(), NOW)
        assert again.status.target_node_count == 3


def test_resource_count_where_kaito_still_honours_it():
    # The transformers runtime: resource.count as it is.
    ws = parsed(doc(preset="phi-4", count=3, annotations={"kaito.sh/runtime": "transformers"}))
    assert size_workspace(ws).target == 3
    # vLLM without a preset (a pod template): resource.count, or 1.
    template = {"spec": {"containers": [{"name": "c", "image": "example.com/server:1"}]}}
    assert size_workspace(parsed(doc(template=template, count=2))).target == 2
    assert size_workspace(parsed(doc(template=template))).target == 1
    # vLLM with a preset: not used (phi-4 fits one A100).
    assert size_workspace(parsed(doc(preset="phi-4", count=3))).target == 1


def test_a_named_config_map_is_read_first_and_a_missing_one_means_kaitos_default():
    ws = parsed(doc(preset="phi-4", config="params"))
    assert "ConfigMap/params" in confirmations(ws)
    # Neither seen nor known absent: not sized yet, nothing created, looked at again soon.
    d = decide(ws, Snapshot(), NOW)
    assert d.state == "Pending" and not d.mutating_actions[1:] and d.wake.after is not None
    # Known absent: KAITO's default context (2048 tokens), and a Warning saying so.
    d = decide(ws, Snapshot(absent=frozenset({"ConfigMap/params"})), NOW)
    assert d.state == "NodesProvisioning" and d.status.target_node_count == 1
    warning = [a for a in d.actions if isinstance(a, A.RecordEvent) and a.reason == "InferenceConfigNotFound"]
    assert len(warning) == 1 and "ConfigMap params" in warning[0].message
    # Once the target is kept, the ConfigMap is not asked about again.
    assert "ConfigMap/params" not in confirmations(ws.with_status(d.status))


def gpu_node(name: str, *, ready=True, count="1", memory_mib="81920", selector_label=("apps", "ws")) -> Node:
    labels = {selector_label[0]: selector_label[1], "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
              "nvidia.com/gpu.count": count, "nvidia.com/gpu.memory": memory_mib}
    return Node(name=name, labels=labels, ready=ready, gpu_capacity=int(count))


def test_bring_your_own_nodes_are_sized_from_their_nvidia_labels():
    ws = parsed(doc(preset="gpt-oss-120b", instance_type=None), auto_provisioning=False)
    # One 80 GiB GPU per node: as on the A100 instance type, 3 nodes.
    snap = Snapshot(nodes={"a": gpu_node("a"), "b": gpu_node("b")})
    assert size_workspace(ws, snap).target == 3
    # Two GPUs per node (KV cache shared: room 61.74 -> 2.01 -> 3 GPUs) -> 2 nodes.
    assert size_workspace(ws, Snapshot(nodes={"a": gpu_node("a", count="2")})).target == 2
    # No Ready node matches: KAITO cannot size it yet; it is looked at again on a timer.
    sizing = size_workspace(ws, Snapshot(nodes={"a": gpu_node("a", ready=False)}))
    assert sizing.target == 0 and sizing.problem.reason == "NoReadyNodes" and sizing.problem.retry
    d = decide(ws, Snapshot(), NOW)
    assert d.state == "Pending" and d.wake.after is not None
    # Unlabelled GPU nodes: the labels are named.
    bare = Node(name="x", labels={"apps": "ws"}, ready=True, gpu_capacity=1)
    sizing = size_workspace(ws, Snapshot(nodes={"x": bare}))
    assert sizing.problem.reason == "NodeGPULabelsMissing" and "nvidia.com/gpu.memory" in sizing.problem.message


def test_a_mig_slice_too_small_for_the_model():
    # phi-4 (27.86 GiB loaded) on a 1g.10gb slice: (8.4 - 2.3 - 0.39) / 1.05 = 5.44 -> 6 GPUs, but a slice is one.
    d = doc(preset="phi-4", instance_type=None, partition={"mode": "mig", "profile": "1g.10gb"},
            selector={"matchLabels": {"apps": "ws"}})
    ws = parsed(d, auto_provisioning=False)
    sizing = size_workspace(ws)
    assert sizing.problem.reason == "MIGProfileTooSmall" and "1g.10gb" in sizing.problem.message
    # phi-4-mini-instruct on 3g.40gb: 7.15 x 1.02 = 7.29; (33.6 - 2.3 - 2048 x 131072 B = 0.25) / 1.05 = 29.57 -> 1.
    d["inference"]["preset"]["name"] = "phi-4-mini-instruct"
    d["resource"]["partition"]["profile"] = "3g.40gb"
    assert size_workspace(parsed(d, auto_provisioning=False)).target == 1


def test_tuning_is_one_node():
    ws = parsed({"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace",
                 "metadata": {"name": "t", "namespace": "default"},
                 "resource": {"instanceType": A100, "labelSelector": {"matchLabels": {"a": "b"}}},
                 "tuning": {"preset": {"name": "phi-3-mini-128k-instruct"}, "method": "qlora",
                            "input": {"urls": ["https://example.com/d.parquet"]},
                            "output": {"image": "registry.example.com/x:1", "imagePushSecret": "s"}}})
    assert size_workspace(ws).target == 1
