"""Workspace documents shaped like KAITO's examples, and their parsing into typed Workspaces."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workspace_fsm.kaito.model import (API_VERSION, KIND, InferenceSpec, ObjectMeta, ResourceSpec, TuningSpec, Workspace,
                                 WorkspaceStatus, parse_workspace)

__all__ = ["inference_document", "ragengine_document", "tuning_document", "to_workspace"]


def _metadata(name: str, namespace: str, uid: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "uid": uid, "generation": 1}


def _resource(name: str, instance_type: str, count: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if count is not None:
        out["count"] = count
    out["instanceType"] = instance_type
    out["labelSelector"] = {"matchLabels": {"apps": name}}
    return out


def inference_document(name: str, *, preset: str, instance_type: str, count: int = 1,
                       namespace: str = "default", uid: str = "", auth_required: bool = False) -> dict[str, Any]:
    """An inference Workspace like KAITO's ``examples/inference`` ones."""
    preset_doc: dict[str, Any] = {"name": preset}
    if auth_required:  # downloadAuthRequired presets (llama) need a Hugging Face token secret
        preset_doc["presetOptions"] = {"modelAccessSecret": "hf-token"}
    return {
        "apiVersion": API_VERSION, "kind": KIND,
        "metadata": _metadata(name, namespace, uid),
        "resource": _resource(name, instance_type, count),
        "inference": {"preset": preset_doc},
    }


def tuning_document(name: str, *, preset: str, instance_type: str, method: str = "qlora",
                    config: str = "tuning-params", namespace: str = "default", uid: str = "") -> dict[str, Any]:
    """A tuning Workspace like KAITO's ``examples/fine-tuning`` ones (one node)."""
    return {
        "apiVersion": API_VERSION, "kind": KIND,
        "metadata": _metadata(name, namespace, uid),
        "resource": _resource(name, instance_type, None),
        "tuning": {
            "preset": {"name": preset},
            "method": method,
            "config": config,
            "input": {"urls": ["https://huggingface.co/datasets/philschmid/dolly-15k-oai-style/resolve/main/"
                               "data/train-00000-of-00001-54e3756291ca09c6.parquet?download=true"]},
            "output": {"image": f"registry.example.com/tuned/{name}:0.0.1", "imagePushSecret": "registry-push"},
        },
    }


def to_workspace(doc: Mapping[str, Any]) -> Workspace:
    """Parse once with ``parse_workspace``; while the validation module does not exist yet, build the
    attrs types directly (same shape, no problems)."""
    try:
        return parse_workspace(doc)
    except ImportError:
        pass
    status = WorkspaceStatus.from_dict(doc["status"]) if isinstance(doc.get("status"), Mapping) else WorkspaceStatus()
    t = doc.get("tuning")
    return Workspace(
        metadata=ObjectMeta.from_dict(doc["metadata"]),
        resource=ResourceSpec.from_dict(doc.get("resource") or {}),
        inference=None if doc.get("inference") is None else InferenceSpec.from_dict(doc["inference"]),
        tuning=None if t is None else TuningSpec.from_dict(t),
        status=status,
        api_version=str(doc.get("apiVersion", API_VERSION)),
        kind=str(doc.get("kind", KIND)),
    )


def ragengine_document(name: str, *, compute: bool, instance_type: str = "Standard_NC6s_v3", count: int = 1,
                       namespace: str = "default", uid: str = "",
                       inference_url: str | None = None) -> dict[str, Any]:
    """A RAGEngine like KAITO's ``examples/rag`` ones: with ``compute`` (GPU nodes of its own for the local
    embedding model, as ``kaito_ragengine_phi_3.yaml``) or retrieve-only (``kaito_ragengine_cpu_retrieve_only.yaml``).

    KAITO's examples carry a placeholder inference URL (``<inference-url>``) that its own validation refuses;
    here a real-looking URL stands in (by default a Workspace Service's address in the same namespace)."""
    spec: dict[str, Any] = {"embedding": {"local": {"modelID": "BAAI/bge-small-en-v1.5"}}}
    if compute:
        spec["compute"] = {"instanceType": instance_type, "count": count,
                           "labelSelector": {"matchLabels": {"apps": name}}}
        url = inference_url or f"http://workspace-phi-3-mini.{namespace}.svc.cluster.local/v1/chat/completions"
        spec["inferenceService"] = {"url": url, "contextWindowSize": 4000}
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if uid:
        meta["uid"] = uid
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "RAGEngine", "metadata": meta, "spec": spec}
