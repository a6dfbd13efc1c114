"""KAITO Workspace validation: check_document, validate_files, and the preset catalogue."""

from __future__ import annotations

import copy
import io
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from workspace_fsm.kaito.catalogue import Catalogue, CatalogueError, Preset
from workspace_fsm.kaito.errors import InvalidWorkspace, Problem
from workspace_fsm.kaito.validation import (
    MAX_NODE_COUNT,
    check_document,
    is_workspace,
    load_yaml_documents,
    validate_files,
)

ACCELERATOR_EXAMPLE = "kaito_workspace_accelerator.yaml"


def inference_ws(**changes) -> dict:
    doc = {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": "workspace-phi-4", "namespace": "default", "labels": {"team": "ml"}},
        "resource": {
            "instanceType": "Standard_NC24ads_A100_v4",
            "labelSelector": {"matchLabels": {"apps": "phi-4"}},
        },
        "inference": {"preset": {"name": "phi-4"}},
    }
    doc.update(changes)
    return doc


def tuning_ws(**changes) -> dict:
    doc = {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": "workspace-tuning-phi-3"},
        "resource": {
            "instanceType": "Standard_NC24ads_A100_v4",
            "labelSelector": {"matchLabels": {"app": "tuning-phi-3"}},
        },
        "tuning": {
            "preset": {"name": "phi-3-mini-128k-instruct"},
            "method": "qlora",
            "input": {"urls": ["https://huggingface.co/datasets/x/y/resolve/main/train.parquet"]},
            "output": {"image": "myregistry.azurecr.io/tuned/phi-3:0.0.1", "imagePushSecret": "push-secret"},
        },
    }
    doc.update(changes)
    return doc


def found(problems: list[Problem]) -> set[tuple[str, str]]:
    return {(p.path, p.reason) for p in problems}


def example_workspaces(kaito_dir: Path) -> list[tuple[str, int, dict]]:
    docs = []
    for path in sorted((kaito_dir / "examples").glob("*/*.yaml")):
        for index, doc in enumerate(load_yaml_documents(path.read_text()), start=1):
            if is_workspace(doc):
                docs.append((path.name, index, doc))
    return docs


@pytest.fixture(scope="session")
def examples(kaito_dir) -> list[tuple[str, int, dict]]:
    docs = example_workspaces(kaito_dir)
    assert len(docs) >= 30, f"expected KAITO's ~34 example Workspaces under {kaito_dir}, found {len(docs)}"
    return docs


# --- KAITO's own examples ----------------------------------------------------------------------


def test_every_kaito_example_workspace_is_valid(examples):
    failures = {
        f"{name} document {index}": [str(p) for p in check_document(doc, auto_provisioning=True)]
        for name, index, doc in examples
        if name != ACCELERATOR_EXAMPLE
    }
    failures = {k: v for k, v in failures.items() if v}
    assert failures == {}
    names = {name for name, _, _ in examples}
    assert ACCELERATOR_EXAMPLE in names
    assert {"kaito_workspace_tuning_falcon_7b_oai.yaml", "kaito_workspace_tuning_phi_3_with_pvc_volume.yaml"} <= names


def test_accelerator_example_needs_byo_nodes(examples):
    (doc,) = [doc for name, _, doc in examples if name == ACCELERATOR_EXAMPLE]
    assert check_document(doc, auto_provisioning=False) == []
    assert found(check_document(doc, auto_provisioning=True)) == {
        ("resource.instanceType", "InstanceTypeRequired"),
        ("resource.partition", "PartitionRequiresBYONodes"),
    }


def test_kaito_examples_through_validate_files(kaito_dir):
    files = sorted((kaito_dir / "examples").glob("*/*.yaml"))
    files = [f for f in files if f.name != ACCELERATOR_EXAMPLE and f.parent.name != "rag"]  # RAG: its own test
    out, err = io.StringIO(), io.StringIO()
    assert validate_files(files, out=out, err=err) == 0, out.getvalue() + err.getvalue()
    assert err.getvalue() == ""
    summary = out.getvalue().splitlines()[-1]
    assert re.fullmatch(r"\d+ Workspaces checked, 0 invalid, 0 problems", summary)
    assert "document 1 (ConfigMap ds-inference-params): skipped, not a Workspace or a RAGEngine" in out.getvalue()
    assert "kaito_multiroleinference_phi4_4.yaml: note: no Workspace or RAGEngine in this file" in out.getvalue()


def test_default_catalogue_matches_supported_models(kaito_dir):
    models = yaml.safe_load((kaito_dir / "supported_models.yaml").read_text())["models"]
    cat = Catalogue.default()
    assert set(cat.names) == {m["name"] for m in models}
    for m in models:
        preset = cat.get(m["name"])
        assert (preset.type, preset.runtime) == (m["type"], m["runtime"])
        assert preset.deprecated == m.get("deprecated", False)
        assert preset.download_auth_required == m.get("downloadAuthRequired", False)
    assert Catalogue.from_yaml(kaito_dir / "supported_models.yaml").names == cat.names


# --- targeted invalid documents ---------------------------------------------------------------


def _set(doc: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    if value is _DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return doc


_DELETE = object()

INVALID_CASES = [
    # (id, base, changes {dotted path: value}, expected path, expected reason)
    ("count-string", inference_ws, {"resource.count": "2"}, "resource.count", "FieldTypeInvalid"),
    ("count-bool", inference_ws, {"resource.count": True}, "resource.count", "FieldTypeInvalid"),
    ("count-float", inference_ws, {"resource.count": 2.5}, "resource.count", "FieldTypeInvalid"),
    ("count-negative", inference_ws, {"resource.count": -1}, "resource.count", "CountTooSmall"),
    ("count-zero", inference_ws, {"resource.count": 0}, "resource.count", "CountTooSmall"),
    ("count-huge", inference_ws, {"resource.count": 10**6}, "resource.count", "CountTooLarge"),
    ("instance-type-number", inference_ws, {"resource.instanceType": 24}, "resource.instanceType", "FieldTypeInvalid"),
    ("instance-type-missing", inference_ws, {"resource.instanceType": _DELETE}, "resource.instanceType", "InstanceTypeRequired"),
    ("instance-type-empty", inference_ws, {"resource.instanceType": ""}, "resource.instanceType", "InstanceTypeRequired"),
    ("instance-type-bad", inference_ws, {"resource.instanceType": "Standard NC24"}, "resource.instanceType", "InstanceTypeInvalid"),
    ("preset-unknown", inference_ws, {"inference.preset.name": "phi-5"}, "inference.preset.name", "UnknownPreset"),
    ("preset-empty", inference_ws, {"inference.preset.name": ""}, "inference.preset.name", "PresetNameRequired"),
    ("preset-name-missing", inference_ws, {"inference.preset": {}}, "inference.preset.name", "FieldRequired"),
    ("preset-deprecated", inference_ws, {"inference.preset.name": "phi-2"}, "inference.preset.name", "PresetDeprecated"),
    ("preset-name-number", inference_ws, {"inference.preset.name": 4}, "inference.preset.name", "FieldTypeInvalid"),
    ("gated-model-no-secret", inference_ws, {"inference.preset.name": "llama-3.1-8b-instruct"}, "inference.preset.presetOptions.modelAccessSecret", "ModelAccessSecretRequired"),
    ("access-mode", inference_ws, {"inference.preset.accessMode": "secret"}, "inference.preset.accessMode", "FieldValueNotSupported"),
    ("both", inference_ws, {"tuning": tuning_ws()["tuning"]}, "", "InferenceAndTuningBothSet"),
    ("neither", inference_ws, {"inference": _DELETE}, "", "InferenceOrTuningRequired"),
    ("inference-null", inference_ws, {"inference": None}, "", "InferenceOrTuningRequired"),
    ("no-preset-no-template", inference_ws, {"inference": {"config": "x"}}, "inference", "PresetOrTemplateRequired"),
    ("preset-and-template", inference_ws, {"inference.template": {"spec": {}}}, "inference", "PresetAndTemplateBothSet"),
    ("template-not-object", inference_ws, {"inference": {"template": "pod"}}, "inference.template", "FieldTypeInvalid"),
    ("too-many-adapters", inference_ws, {"inference.adapters": [{"source": {"name": f"a{i}", "image": "r.io/a:1"}} for i in range(11)]}, "inference.adapters", "TooManyAdapters"),
    ("adapter-duplicate", inference_ws, {"inference.adapters": [{"source": {"name": "a", "image": "r.io/a:1"}}] * 2}, "inference.adapters[1].source.name", "AdapterNameDuplicate"),
    ("adapter-strength", inference_ws, {"inference.adapters": [{"source": {"name": "a", "image": "r.io/a:1"}, "strength": "2"}]}, "inference.adapters[0].strength", "AdapterStrengthInvalid"),
    ("adapter-urls", inference_ws, {"inference.adapters": [{"source": {"name": "a", "urls": ["https://x.io/a"]}}]}, "inference.adapters[0].source.urls", "AdapterURLsNotSupported"),
    ("config-name", inference_ws, {"inference.config": "My_Config"}, "inference.config", "ConfigNameInvalid"),
    ("bad-method", tuning_ws, {"tuning.method": "full-finetune"}, "tuning.method", "TuningMethodNotSupported"),
    ("method-missing", tuning_ws, {"tuning.method": _DELETE}, "tuning.method", "TuningMethodRequired"),
    ("method-type", tuning_ws, {"tuning.method": 1}, "tuning.method", "FieldTypeInvalid"),
    ("tuning-preset-missing", tuning_ws, {"tuning.preset": _DELETE}, "tuning.preset", "TuningPresetRequired"),
    ("tuning-preset-untunable", tuning_ws, {"tuning.preset.name": "llama-3.1-8b-instruct"}, "tuning.preset.name", "PresetTuningNotSupported"),
    ("tuning-preset-unknown", tuning_ws, {"tuning.preset.name": "phi-3-mini-128k"}, "tuning.preset.name", "UnknownPreset"),
    ("tuning-hf-id", tuning_ws, {"tuning.preset.name": "microsoft/phi-4"}, "tuning.preset.name", "UnknownPreset"),
    ("input-missing", tuning_ws, {"tuning.input": _DELETE}, "tuning.input", "FieldRequired"),
    ("input-empty", tuning_ws, {"tuning.input": {}}, "tuning.input", "InputSourceRequired"),
    ("input-two-sources", tuning_ws, {"tuning.input.image": "r.io/data:1"}, "tuning.input", "InputSourcesConflict"),
    ("input-url-scheme", tuning_ws, {"tuning.input.urls": ["ftp://example.com/data"]}, "tuning.input.urls[0]", "InputURLInvalid"),
    ("input-url-private", tuning_ws, {"tuning.input.urls": ["https://10.0.0.4/data"]}, "tuning.input.urls[0]", "InputURLInvalid"),
    ("input-url-metadata", tuning_ws, {"tuning.input.urls": ["http://169.254.169.254/latest"]}, "tuning.input.urls[0]", "InputURLInvalid"),
    ("input-url-type", tuning_ws, {"tuning.input.urls": [7]}, "tuning.input.urls[0]", "FieldTypeInvalid"),
    ("output-empty", tuning_ws, {"tuning.output": {}}, "tuning.output", "OutputDestinationRequired"),
    ("output-both", tuning_ws, {"tuning.output.volumeSource": {"emptyDir": {}}}, "tuning.output", "OutputDestinationsConflict"),
    ("output-no-push-secret", tuning_ws, {"tuning.output.imagePushSecret": _DELETE}, "tuning.output.imagePushSecret", "ImagePushSecretRequired"),
    ("output-image-bad", tuning_ws, {"tuning.output.image": "https://registry/x y"}, "tuning.output.image", "ImageReferenceInvalid"),
    ("tuning-multinode", tuning_ws, {"resource.count": 2}, "resource.count", "TuningMultiNodeNotSupported"),
    ("label-value", inference_ws, {"metadata.labels": {"team": "machine learning"}}, "metadata.labels.team", "LabelValueInvalid"),
    ("label-value-long", inference_ws, {"metadata.labels": {"team": "a" * 64}}, "metadata.labels.team", "LabelValueInvalid"),
    ("label-value-number", inference_ws, {"metadata.labels": {"tier": 1}}, "metadata.labels.tier", "LabelValueInvalid"),
    ("label-key", inference_ws, {"metadata.labels": {"-bad": "x"}}, 'metadata.labels["-bad"]', "LabelKeyInvalid"),
    ("label-key-prefix", inference_ws, {"metadata.labels": {"Kaito.SH/x": "y"}}, 'metadata.labels["Kaito.SH/x"]', "LabelKeyInvalid"),
    ("annotation-key", inference_ws, {"metadata.annotations": {"a/b/c": "x"}}, 'metadata.annotations["a/b/c"]', "AnnotationKeyInvalid"),
    ("annotation-value-bool", inference_ws, {"metadata.annotations": {"enabled": True}}, "metadata.annotations.enabled", "AnnotationValueInvalid"),
    ("performance-mode", inference_ws, {"metadata.annotations": {"kaito.sh/performance-mode": "fast"}}, 'metadata.annotations["kaito.sh/performance-mode"]', "AnnotationValueNotSupported"),
    ("selector-value", inference_ws, {"resource.labelSelector.matchLabels": {"apps": "phi 4"}}, "resource.labelSelector.matchLabels.apps", "LabelValueInvalid"),
    ("selector-empty", inference_ws, {"resource.labelSelector": {}}, "resource.labelSelector", "LabelSelectorEmpty"),
    ("selector-missing", inference_ws, {"resource.labelSelector": _DELETE}, "resource.labelSelector", "FieldRequired"),
    ("resource-missing", inference_ws, {"resource": _DELETE}, "resource.labelSelector", "FieldRequired"),
    ("selector-operator", inference_ws, {"resource.labelSelector": {"matchExpressions": [{"key": "a", "operator": "Exists"}]}}, "resource.labelSelector.matchExpressions[0].operator", "LabelSelectorOperatorNotSupported"),
    ("selector-in-values", inference_ws, {"resource.labelSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": ["x", "y"]}]}}, "resource.labelSelector.matchExpressions[0].values", "LabelSelectorValuesInvalid"),
    ("selector-operator-bogus", inference_ws, {"resource.labelSelector": {"matchExpressions": [{"key": "a", "operator": "Near", "values": ["x"]}]}}, "resource.labelSelector.matchExpressions[0].operator", "LabelSelectorOperatorInvalid"),
    ("partition-with-nap", inference_ws, {"resource.partition": {"mode": "accelerator", "count": 2}}, "resource.partition", "PartitionRequiresBYONodes"),
    ("partition-mode", inference_ws, {"resource.partition": {"mode": "time-slicing"}}, "resource.partition.mode", "FieldValueNotSupported"),
    ("name-invalid", inference_ws, {"metadata.name": "Workspace_Phi"}, "metadata.name", "NameInvalid"),
    ("name-dotted", inference_ws, {"metadata.name": "phi.4"}, "metadata.name", "NameInvalid"),
    ("name-long", inference_ws, {"metadata.name": "w" * 64}, "metadata.name", "NameInvalid"),
    ("name-missing", inference_ws, {"metadata.name": _DELETE}, "metadata.name", "NameRequired"),
    ("name-number", inference_ws, {"metadata.name": 42}, "metadata.name", "FieldTypeInvalid"),
    ("namespace", inference_ws, {"metadata.namespace": "Team A"}, "metadata.namespace", "NamespaceInvalid"),
    ("metadata-missing", inference_ws, {"metadata": _DELETE}, "metadata.name", "NameRequired"),
    ("api-version", inference_ws, {"apiVersion": "kaito.sh/v1"}, "apiVersion", "APIVersionNotSupported"),
    ("api-version-missing", inference_ws, {"apiVersion": _DELETE}, "apiVersion", "APIVersionRequired"),
    ("kind", inference_ws, {"kind": "Workspaces"}, "kind", "KindNotWorkspace"),
    ("kind-lowercase", inference_ws, {"kind": "workspace"}, "kind", "KindNotWorkspace"),
    ("unknown-field", inference_ws, {"resource.instancetype": "Standard_NC6"}, "resource.instancetype", "FieldUnknown"),
    ("spec-wrapper", inference_ws, {"spec": {"resource": {}}}, "spec", "FieldUnknown"),
    ("megabyte-name", inference_ws, {"metadata.name": "w" * 1_000_000}, "metadata.name", "NameInvalid"),
    ("megabyte-annotation", inference_ws, {"metadata.annotations": {"note": "n" * 1_000_000}}, "metadata.annotations", "AnnotationsTooLarge"),
    ("megabyte-preset", inference_ws, {"inference.preset.name": "p" * 1_000_000}, "inference.preset.name", "UnknownPreset"),
    ("megabyte-instance-type", inference_ws, {"resource.instanceType": "S" * 1_000_000}, "resource.instanceType", "InstanceTypeInvalid"),
    ("two-megabytes", inference_ws, {"inference.template": {"x": "y" * 2_000_000}, "inference.preset": _DELETE}, "", "DocumentTooLarge"),
]


@pytest.mark.parametrize(
    ("base", "changes", "path", "reason"),
    [case[1:] for case in INVALID_CASES],
    ids=[case[0] for case in INVALID_CASES],
)
def test_invalid_document_gives_reason_and_path(base, changes, path, reason):
    doc = base()
    for dotted, value in changes.items():
        _set(doc, dotted, copy.deepcopy(value) if value is not _DELETE else value)
    problems = check_document(doc)
    assert (path, reason) in found(problems), problems
    for p in problems:  # messages stay readable whatever the input
        assert p.message and len(p.message) < 1000 and len(p.path) < 300
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", p.reason)


def test_valid_bases_are_valid():
    assert check_document(inference_ws()) == []
    assert check_document(tuning_ws()) == []
    # Hugging Face model ids are accepted for inference (KAITO serves them with vLLM).
    assert check_document(inference_ws(inference={"preset": {"name": "Qwen/Qwen2.5-Coder-7B-Instruct"}})) == []
    # KAITO compares tuning methods case-insensitively.
    doc = tuning_ws()
    doc["tuning"]["method"] = "LoRA"
    assert check_document(doc) == []
    # A custom pod template instead of a preset.
    template = {"spec": {"containers": [{"name": "main", "image": "r.io/my-model:1"}]}}
    assert check_document(inference_ws(inference={"template": template})) == []


def test_count_bounds():
    for count, expected in ((1, set()), (MAX_NODE_COUNT, set()), (MAX_NODE_COUNT + 1, {("resource.count", "CountTooLarge")})):
        doc = inference_ws()
        doc["resource"]["count"] = count
        assert found(check_document(doc)) == expected


def test_unknown_preset_suggests_close_matches():
    doc = inference_ws(inference={"preset": {"name": "phi-3-mini-4k"}})
    (problem,) = [p for p in check_document(doc) if p.reason == "UnknownPreset"]
    assert "phi-3-mini-4k-instruct" in problem.message


def test_instance_type_required_says_how_to_fix():
    doc = inference_ws()
    del doc["resource"]["instanceType"]
    (problem,) = check_document(doc)
    assert problem.reason == "InstanceTypeRequired"
    assert "Standard_NC24ads_A100_v4" in problem.message and "auto-provisioning" in problem.message
    assert check_document(doc, auto_provisioning=False) == []


def test_byo_nodes_forbid_instance_type():
    assert found(check_document(inference_ws(), auto_provisioning=False)) == {
        ("resource.instanceType", "InstanceTypeNotAllowed")
    }


def test_partition_rules_with_byo_nodes():
    def with_partition(partition):
        doc = inference_ws()
        del doc["resource"]["instanceType"]
        doc["resource"]["partition"] = partition
        return found(check_document(doc, auto_provisioning=False))

    assert with_partition({"mode": "accelerator", "count": 2}) == set()
    assert with_partition({"mode": "mig", "profile": "1g.10gb"}) == set()
    assert with_partition({"mode": "accelerator"}) == {("resource.partition.count", "PartitionCountRequired")}
    assert with_partition({"mode": "accelerator", "count": 1, "profile": "1g.10gb"}) == {
        ("resource.partition.profile", "PartitionProfileNotAllowed")
    }
    assert with_partition({"mode": "mig", "count": 1, "profile": "huge"}) == {
        ("resource.partition.count", "PartitionCountNotAllowed"),
        ("resource.partition.profile", "PartitionProfileInvalid"),
    }


def test_partition_not_for_tuning():
    doc = tuning_ws()
    doc["resource"]["partition"] = {"mode": "accelerator", "count": 1}
    assert ("resource.partition", "PartitionNotSupportedForTuning") in found(check_document(doc))


def test_several_problems_are_all_listed():
    doc = inference_ws()
    doc["metadata"]["name"] = "Bad_Name"
    doc["metadata"]["labels"] = {"team": "machine learning"}
    doc["resource"] = {"count": "three", "labelSelector": {"matchLabels": {"apps": "phi 4"}}}
    doc["inference"]["preset"]["name"] = "phi-5"
    doc["tuning"] = {"method": "dpo", "input": {}, "output": {}}
    doc["colour"] = "blue"
    assert found(check_document(doc)) >= {
        ("metadata.name", "NameInvalid"),
        ("metadata.labels.team", "LabelValueInvalid"),
        ("resource.count", "FieldTypeInvalid"),
        ("resource.instanceType", "InstanceTypeRequired"),
        ("resource.labelSelector.matchLabels.apps", "LabelValueInvalid"),
        ("inference.preset.name", "UnknownPreset"),
        ("", "InferenceAndTuningBothSet"),
        ("tuning.preset", "TuningPresetRequired"),
        ("tuning.method", "TuningMethodNotSupported"),
        ("tuning.input", "InputSourceRequired"),
        ("tuning.output", "OutputDestinationRequired"),
        ("colour", "FieldUnknown"),
    }
    error = InvalidWorkspace(check_document(doc), name="Bad_Name")
    assert len(error.problems) >= 12


def test_one_problem_per_bad_field():
    doc = inference_ws()
    doc["resource"]["labelSelector"]["matchLabels"]["apps"] = 4  # schema: FieldTypeInvalid only
    assert [(p.path, p.reason) for p in check_document(doc)] == [
        ("resource.labelSelector.matchLabels.apps", "FieldTypeInvalid")
    ]


def test_kind_in_other_case_is_checked_not_skipped(tmp_path):
    doc = inference_ws(kind="workspace")
    assert is_workspace(doc)
    assert not is_workspace({"apiVersion": "kaito.sh/v1alpha1", "kind": "MultiRoleInference"})
    rc, out, _ = _run([_write(tmp_path, "lower.yaml", [doc])])
    assert rc == 1 and "[KindNotWorkspace]" in out[0]


def test_status_is_ignored_on_create():
    doc = inference_ws(status={"fsm": {"state": "Ready"}, "state": 3, "conditions": "x"})
    assert check_document(doc) == []


def test_generate_name_instead_of_name():
    doc = inference_ws()
    doc["metadata"] = {"generateName": "phi-4-"}
    assert check_document(doc) == []
    doc["metadata"] = {"generateName": "Phi_4-"}
    assert ("metadata.generateName", "NameInvalid") in found(check_document(doc))


def test_v1alpha1_uses_its_own_schema():
    doc = inference_ws(apiVersion="kaito.sh/v1alpha1")
    assert check_document(doc) == []
    doc["resource"]["partition"] = {"mode": "mig"}  # not a v1alpha1 field
    assert ("resource.partition", "FieldUnknown") in found(check_document(doc))


@pytest.mark.parametrize(
    ("doc", "reason"),
    [(None, "DocumentNotAnObject"), ([inference_ws()], "DocumentNotAnObject"), ("Workspace", "DocumentNotAnObject")],
)
def test_not_an_object(doc, reason):
    assert [p.reason for p in check_document(doc)] == [reason]


def test_absurd_nesting_is_a_problem_not_a_crash():
    deep: object = {}
    for _ in range(5000):
        deep = {"a": deep}
    doc = inference_ws(inference={"template": deep})
    assert [p.reason for p in check_document(doc)] == ["DocumentTooDeep"]


def test_yaml_alias_bomb_is_bounded():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    lines.append("apiVersion: kaito.sh/v1beta1\nkind: Workspace\nmetadata: {name: bomb}\ninference: {template: {spec: *a8}}")
    (doc,) = load_yaml_documents("\n".join(lines))
    assert "DocumentTooLarge" in {p.reason for p in check_document(doc)}


# --- catalogue ---------------------------------------------------------------------------------


def test_catalogue_default_and_lookup():
    cat = Catalogue.default()
    assert cat is Catalogue.default()  # loaded once
    assert "phi-4" in cat and "phi-5" not in cat and 3 not in cat
    assert cat.get("phi-4").runtime == "tfs"
    assert cat.get("nope") is None
    assert cat.supports_tuning("falcon-7b", "qlora") and cat.supports_tuning("falcon-7b", "LoRA")
    assert not cat.supports_tuning("falcon-7b-instruct", "qlora")
    assert not cat.supports_tuning("falcon-7b", "dpo")
    assert not cat.supports_tuning("no-such-model", "lora")
    assert list(cat.names) == sorted(cat.names)
    assert cat.get("phi-2").deprecated


def test_catalogue_from_both_shapes_and_merge(tmp_path):
    ours = tmp_path / "ours.yaml"
    ours.write_text("presets:\n  - name: my-model\n    runtime: vllm\n    tuning: [lora]\n  - name: falcon-7b\n    tuning: [qlora]\n")
    kaitos = tmp_path / "kaito.yaml"
    kaitos.write_text("models:\n  - name: other-model\n    type: text-generation\n    runtime: tfs\n    tag: 0.0.1\n  - name: phi-4\n    deprecated: true\n")
    merged = Catalogue.default().merged(Catalogue.from_yaml(ours)).merged(Catalogue.from_yaml(kaitos))
    assert merged.supports_tuning("my-model", "lora") and not merged.supports_tuning("my-model", "qlora")
    assert merged.get("my-model").runtime == "vllm"
    assert merged.get("falcon-7b").tuning == ("qlora",)  # overridden field
    assert merged.get("falcon-7b").runtime == "tfs"  # kept field
    assert merged.get("phi-4").deprecated and merged.supports_tuning("phi-4", "lora")  # models: keeps tuning
    assert "other-model" in merged and len(merged) == len(Catalogue.default()) + 2
    assert "phi-4" in Catalogue.default() and not Catalogue.default().get("phi-4").deprecated  # untouched
    doc = inference_ws(inference={"preset": {"name": "my-model"}})
    assert check_document(doc, merged) == []
    assert ("inference.preset.name", "UnknownPreset") in found(check_document(doc))
    code_made = Catalogue({"x": Preset("x", tuning=("lora",))})
    assert Catalogue.default().merged(code_made).supports_tuning("x", "lora")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("presets: [{name: a}, {name: a}]", "presets[1].name"),
        ("presets: [{type: text-generation}]", "presets[0].name"),
        ("presets: [{name: a, tuning: lora}]", "presets[0].tuning"),
        ("presets: [{name: a, tuning: [lora, 3]}]", "presets[0].tuning[1]"),
        ("models: [{name: a, deprecated: 'yes'}]", "models[0].deprecated"),
        ("models: [{name: a, runtime: 5}]", "models[0].runtime"),
        ("models: {name: a}", "models"),
        ("presets: []\nmodels: []", ""),
        ("- name: a", ""),
        ("presets: [name: a\n", ""),
    ],
)
def test_bad_catalogue_files_name_file_and_key(tmp_path, text, key):
    path = tmp_path / "bad-catalogue.yaml"
    path.write_text(text)
    with pytest.raises(CatalogueError) as info:
        Catalogue.from_yaml(path)
    assert str(path) in str(info.value)
    assert info.value.key == key
    if key:
        assert f": {key}: " in str(info.value)


def test_missing_catalogue_file(tmp_path):
    with pytest.raises(CatalogueError, match="cannot be read"):
        Catalogue.from_yaml(tmp_path / "absent.yaml")


# --- validate_files ----------------------------------------------------------------------------


def _run(paths, **kwargs) -> tuple[int, list[str], list[str]]:
    out, err = io.StringIO(), io.StringIO()
    rc = validate_files(paths, out=out, err=err, **kwargs)
    return rc, out.getvalue().splitlines(), err.getvalue().splitlines()


def _write(tmp_path: Path, name: str, docs) -> Path:
    path = tmp_path / name
    path.write_text(docs if isinstance(docs, str) else yaml.safe_dump_all(docs, sort_keys=False))
    return path


def test_validate_files_valid(tmp_path):
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "params"}, "data": {}}
    path = _write(tmp_path, "ok.yaml", [cm, inference_ws(), tuning_ws()])
    rc, out, err = _run([path])
    assert rc == 0 and err == []
    assert out == [
        f"{path}: document 1 (ConfigMap params): skipped, not a Workspace or a RAGEngine",
        "2 Workspaces checked, 0 invalid, 0 problems",
    ]


def test_validate_files_invalid_lines(tmp_path):
    bad = inference_ws()
    del bad["resource"]["instanceType"]
    bad["metadata"]["name"] = "workspace-phi-4"
    worse = tuning_ws()
    worse["tuning"]["method"] = "dpo"
    worse["metadata"]["namespace"] = "ml"
    path = _write(tmp_path, "kaito_workspace_phi_4.yaml", [bad, inference_ws(), worse])
    rc, out, err = _run([path])
    assert rc == 1 and err == []
    assert out[0].startswith(
        f"{path}: document 1: Workspace default/workspace-phi-4: resource.instanceType: [InstanceTypeRequired] "
    )
    assert out[1].startswith(
        f"{path}: document 3: Workspace ml/workspace-tuning-phi-3: tuning.method: [TuningMethodNotSupported] "
    )
    assert out[-1] == "3 Workspaces checked, 2 invalid, 2 problems"
    assert len(out) == 3


def test_validate_files_with_byo_nodes(kaito_dir):
    path = kaito_dir / "examples" / "inference" / ACCELERATOR_EXAMPLE
    assert _run([path], auto_provisioning=False)[0] == 0
    rc, out, _ = _run([path])
    assert rc == 1 and any("[PartitionRequiresBYONodes]" in line for line in out)


def test_validate_files_problem_without_path(tmp_path):
    doc = inference_ws()
    del doc["inference"]
    rc, out, _ = _run([_write(tmp_path, "neither.yaml", [doc])])
    assert rc == 1
    assert re.match(r".*neither\.yaml: document 1: Workspace default/workspace-phi-4: \[InferenceOrTuningRequired\] ", out[0])


def test_validate_files_no_workspace_is_a_note(tmp_path):
    # A document that is not an object at all (a list) is an error, not skipped (tests/test_validate_inputs.py).
    path = _write(tmp_path, "cm.yaml", "---\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: hf-token}\n")
    rc, out, err = _run([path])
    assert rc == 0 and err == []
    assert out == [
        f"{path}: document 2 (Secret hf-token): skipped, not a Workspace or a RAGEngine",
        f"{path}: note: no Workspace or RAGEngine in this file",
        "0 Workspaces checked, 0 invalid, 0 problems",
    ]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("apiVersion: kaito.sh/v1beta1\nkind: Workspace\nmetadata:\n  name: [oops\n", r"line \d+, column \d+"),
        ("a: b\n\tc: d\n", r"line 2, column 1"),
        ("kind: Workspace\nkind: Workspace\n", r"line 2, column 1: YAML does not parse: found duplicate key"),
        ("key: [unhashable]\n? [a]\n: b\n", r"line \d+, column \d+"),
    ],
)
def test_validate_files_broken_yaml(tmp_path, text, where):
    path = _write(tmp_path, "broken.yaml", text)
    rc, out, err = _run([path])
    assert rc == 1
    assert len(err) == 1 and re.match(rf"{re.escape(str(path))}: {where}", err[0]), err
    assert "Traceback" not in "\n".join(out + err)
    assert out[-1].endswith("1 file not parsed")


def test_validate_files_broken_yaml_after_good_documents(tmp_path):
    text = yaml.safe_dump(inference_ws()) + "---\nkind: Workspace\nmetadata: {name: x\n"
    rc, out, err = _run([_write(tmp_path, "half.yaml", text)])
    assert rc == 1 and len(err) == 1
    assert out[-1] == "1 Workspace checked, 0 invalid, 0 problems, 1 file not parsed"


def test_validate_files_unreadable(tmp_path):
    good = _write(tmp_path, "good.yaml", [inference_ws()])
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    rc, out, err = _run([tmp_path / "missing.yaml", tmp_path, binary, good])
    assert rc == 2
    assert len(err) == 3 and all(": cannot be read: " in line for line in err)
    assert err[0].startswith(f"{tmp_path / 'missing.yaml'}: cannot be read")
    assert out[-1] == "1 Workspace checked, 0 invalid, 0 problems, 3 files not read"


def test_yaml_keeps_timestamps_as_strings():
    (doc,) = load_yaml_documents("when: 2024-01-01T00:00:00Z\nday: 2024-01-01\n")
    assert doc == {"when": "2024-01-01T00:00:00Z", "day": "2024-01-01"}


# --- properties --------------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_like = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(
            ["apiVersion", "kind", "metadata", "name", "namespace", "labels", "annotations", "resource",
             "count", "instanceType", "labelSelector", "matchLabels", "matchExpressions", "partition",
             "inference", "preset", "template", "adapters", "tuning", "method", "input", "output",
             "urls", "image", "volumeSource", "status"]
        )
        | st.text(max_size=10),
        children,
        max_size=5,
    ),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(doc=json_like, auto=st.booleans())
def test_check_document_never_raises(doc, auto):
    problems = check_document(doc, auto_provisioning=auto)
    assert all(isinstance(p, Problem) and p.reason for p in problems)
    assert len({(p.path, p.reason) for p in problems}) == len(problems)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _mutate(doc, path, op, value):
    if not path:
        return value if op == "replace" else doc
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if op == "delete":
        del parent[last]
    elif op == "replace":
        parent[last] = value
    elif op == "insert" and isinstance(parent[last], dict):
        parent[last]["x" if not isinstance(value, str) or not value else value] = value
    elif op == "insert" and isinstance(parent[last], list):
        parent[last].append(value)
    else:
        parent[last] = value
    return doc


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_check_document_never_raises_on_mutated_examples(examples, data):
    _, _, original = data.draw(st.sampled_from(examples))
    doc = copy.deepcopy(original)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(_paths(doc))
        path = data.draw(st.sampled_from(paths))
        op = data.draw(st.sampled_from(["delete", "replace", "insert"]))
        doc = _mutate(doc, path, op, data.draw(json_like))
    problems = check_document(doc, auto_provisioning=data.draw(st.booleans()))
    assert all(isinstance(p, Problem) for p in problems)


def test_validate_judges_ragengines_as_kaitos_webhook_does(kaito_dir):
    """KAITO's RAG examples: the retrieve-only one is valid, the two with the placeholder inference URL (which
    KAITO's own webhook refuses) are not, each with its specific reason; the PVC beside one is skipped."""
    rag = sorted(str(p) for p in (kaito_dir / "examples" / "rag").glob("*.yaml"))
    out = io.StringIO()
    rc = validate_files(rag, out=out, err=io.StringIO())
    text = out.getvalue()
    assert rc == 1
    assert text.count("[InferenceURLPlaceholder]") == 2 and "ragengine-retrieve" not in text
    assert "(PersistentVolumeClaim pvc-ragengine-vector-db): skipped" in text
    assert text.splitlines()[-1] == "0 Workspaces and 3 RAGEngines checked, 2 invalid, 2 problems"
