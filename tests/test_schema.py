"""Structural-schema support: validate, prune, apply_defaults, crd_schema."""

from __future__ import annotations

import copy
import importlib.resources

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from workspace_fsm.engine import schema as s
from workspace_fsm.engine.problems import Problem
from workspace_fsm.engine.schema import (
    CRDSchemaNotFound,
    apply_defaults,
    crd_schema,
    format_path,
    prune,
    validate,
)

SHIPPED_CRD = importlib.resources.files("workspace_fsm.kaito") / "data" / "kaito.sh_workspaces.yaml"


@pytest.fixture(scope="module")
def crd() -> dict:
    return yaml.safe_load(SHIPPED_CRD.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def ws_schema(crd) -> dict:
    return crd_schema(crd, "v1beta1")


def reasons(problems: list[Problem]) -> dict[str, str]:
    """path -> reason (the tests below produce one problem per path)."""
    return {p.path: p.reason for p in problems}


def workspace(**overrides) -> dict:
    doc = {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": "ws"},
        "resource": {"instanceType": "Standard_NC24ads_A100_v4", "labelSelector": {"matchLabels": {"app": "x"}}},
        "inference": {"preset": {"name": "phi-4"}},
    }
    doc.update(overrides)
    return doc


# --- crd_schema --------------------------------------------------------------------------------


def test_shipped_crd_is_kaitos_unchanged(kaito_dir):
    shipped = SHIPPED_CRD.read_bytes()
    assert shipped == (kaito_dir / "crds" / "kaito.sh_workspaces.yaml").read_bytes()


def test_crd_schema_picks_the_version(crd):
    beta = crd_schema(crd, "v1beta1")
    alpha = crd_schema(crd, "v1alpha1")
    assert beta["properties"]["resource"]["properties"]["count"]["default"] == 1
    assert "partition" in beta["properties"]["resource"]["properties"]
    assert "partition" not in alpha["properties"]["resource"]["properties"]
    assert crd_schema(crd) is beta  # default: the storage version


def test_crd_schema_unknown_version_names_the_versions(crd):
    with pytest.raises(CRDSchemaNotFound, match=r"v9.*v1alpha1.*v1beta1"):
        crd_schema(crd, "v9")
    with pytest.raises(CRDSchemaNotFound):
        crd_schema({"kind": "ConfigMap"}, "v1")


def test_crd_schema_reads_the_nodeclaim_crd(kaito_dir):
    nodeclaim = yaml.safe_load((kaito_dir / "crds" / "karpenter.sh_nodeclaims.yaml").read_text())
    schema = crd_schema(nodeclaim, "v1")
    assert schema["type"] == "object"
    assert validate({"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "spec": "nope"}, schema)


# --- validate ----------------------------------------------------------------------------------


def test_valid_workspace_has_no_problems(ws_schema):
    assert validate(workspace(), ws_schema) == []


@pytest.mark.parametrize(
    ("resource_patch", "path", "reason"),
    [
        ({"count": "3"}, "resource.count", "FieldTypeInvalid"),
        ({"count": 1.5}, "resource.count", "FieldTypeInvalid"),
        ({"count": 1.0}, "resource.count", "FieldTypeInvalid"),  # integer, not number
        ({"count": True}, "resource.count", "FieldTypeInvalid"),  # booleans are not integers
        ({"instanceType": 7}, "resource.instanceType", "FieldTypeInvalid"),
        ({"labelSelector": {"matchLabels": {"app": 1}}}, "resource.labelSelector.matchLabels.app", "FieldTypeInvalid"),
        ({"labelSelector": {"matchLabels": {"kaito.sh/x": 1}}}, 'resource.labelSelector.matchLabels["kaito.sh/x"]', "FieldTypeInvalid"),
        ({"labelSelector": {"matchExpressions": [{"key": "a"}]}}, "resource.labelSelector.matchExpressions[0].operator", "FieldRequired"),
        ({"labelSelector": ["app"]}, "resource.labelSelector", "FieldTypeInvalid"),
        ({"partition": {"mode": "slices"}}, "resource.partition.mode", "FieldValueNotSupported"),
        ({"partition": {"mode": "accelerator", "count": 0}}, "resource.partition.count", "FieldValueTooSmall"),
        ({"partition": {"count": 1}}, "resource.partition.mode", "FieldRequired"),
    ],
)
def test_validate_reports_reason_and_path(ws_schema, resource_patch, path, reason):
    doc = workspace()
    doc["resource"] = {**doc["resource"], **resource_patch}
    problems = validate(doc, ws_schema)
    assert reasons(problems).get(path) == reason, problems


def test_validate_list_items_and_required(ws_schema):
    doc = workspace(tuning={"input": {"urls": ["https://example.com/a", 5]}})
    del doc["resource"]["labelSelector"]
    found = reasons(validate(doc, ws_schema))
    assert found["tuning.input.urls[1]"] == "FieldTypeInvalid"
    assert found["tuning.output"] == "FieldRequired"
    assert found["resource.labelSelector"] == "FieldRequired"


def test_validate_status_formats_and_lengths(ws_schema):
    condition = {
        "type": "Ready",
        "status": "Maybe",
        "reason": "",
        "message": "m" * 40_000,
        "lastTransitionTime": "yesterday",
        "observedGeneration": -1,
    }
    doc = workspace(status={"conditions": [condition], "targetNodeCount": 2**31})
    found = reasons(validate(doc, ws_schema))
    base = "status.conditions[0]"
    assert found[f"{base}.status"] == "FieldValueNotSupported"
    assert found[f"{base}.message"] == "FieldTooLong"
    assert found[f"{base}.lastTransitionTime"] == "FieldFormatInvalid"
    assert found[f"{base}.observedGeneration"] == "FieldValueTooSmall"
    assert found["status.targetNodeCount"] == "FieldFormatInvalid"  # beyond int32
    # An empty reason breaks minLength and the pattern: both are listed.
    assert {p.reason for p in validate(doc, ws_schema) if p.path == f"{base}.reason"} == {
        "FieldTooShort",
        "FieldValueInvalid",
    }


def test_validate_date_time_accepts_rfc3339(ws_schema):
    for stamp in ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00.123456789+02:00"):
        condition = {"type": "Ready", "status": "True", "reason": "Ok", "message": "", "lastTransitionTime": stamp}
        assert validate(workspace(status={"conditions": [condition]}), ws_schema) == []
    condition["lastTransitionTime"] = "2024-02-30T10:00:00Z"
    assert reasons(validate(workspace(status={"conditions": [condition]}), ws_schema)) == {
        "status.conditions[0].lastTransitionTime": "FieldFormatInvalid"
    }


def test_preserve_unknown_fields_accept_anything(ws_schema):
    doc = workspace()
    doc["inference"] = {"template": {"spec": {"containers": [{"name": "x", "weird": [1, {"a": None}]}]}}}
    assert validate(doc, ws_schema) == []
    doc["tuning"] = {"input": {"volumeSource": "not even an object"}, "output": {"volumeSource": 3}}
    assert validate(doc, ws_schema) == []  # KAITO's schema leaves volumeSource untyped


GENERIC = {
    "type": "object",
    "required": ["port"],
    "properties": {
        "port": {"x-kubernetes-int-or-string": True},
        "ratio": {"type": "number", "minimum": 0, "maximum": 1, "exclusiveMaximum": True},
        "name": {"type": "string", "nullable": True, "maxLength": 5, "pattern": "^[a-z]+$"},
        "mode": {"type": "string", "enum": ["a", "b"], "nullable": True},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
        "when": {"type": "string", "format": "date-time"},
        "big": {"type": "integer", "format": "int64"},
    },
}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"port": 80}, {}),
        ({"port": "http"}, {}),
        ({"port": 1.5}, {"port": "FieldTypeInvalid"}),
        ({"port": True}, {"port": "FieldTypeInvalid"}),
        ({"port": None}, {"port": "FieldTypeInvalid"}),
        ({}, {"port": "FieldRequired"}),
        ({"port": 1, "ratio": 1}, {"ratio": "FieldValueTooLarge"}),
        ({"port": 1, "ratio": 0}, {}),
        ({"port": 1, "ratio": 0.5}, {}),
        ({"port": 1, "ratio": -0.1}, {"ratio": "FieldValueTooSmall"}),
        ({"port": 1, "ratio": False}, {"ratio": "FieldTypeInvalid"}),
        ({"port": 1, "name": None, "mode": None}, {}),  # nullable
        ({"port": 1, "name": "abcdef"}, {"name": "FieldTooLong"}),
        ({"port": 1, "name": "AB"}, {"name": "FieldValueInvalid"}),
        ({"port": 1, "mode": "c"}, {"mode": "FieldValueNotSupported"}),
        ({"port": 1, "tags": ["a", "b", "c"]}, {"tags": "FieldTooMany"}),
        ({"port": 1, "tags": ["a", 2]}, {"tags[1]": "FieldTypeInvalid"}),
        ({"port": 1, "when": "2024-01-01"}, {"when": "FieldFormatInvalid"}),
        ({"port": 1, "big": 2**63}, {"big": "FieldFormatInvalid"}),
        ({"port": 1, "big": 2**63 - 1}, {}),
    ],
)
def test_validate_generic_keywords(doc, expected):
    assert reasons(validate(doc, GENERIC)) == expected


@pytest.mark.parametrize("garbage", [None, [], [1, 2], "text", 12, 1.5, True, b"bytes", {1: 2}, {"resource": []}])
def test_validate_survives_garbage(ws_schema, garbage):
    problems = validate(garbage, ws_schema)
    assert all(isinstance(p, Problem) for p in problems)


def test_validate_keeps_messages_short_for_huge_values(ws_schema):
    huge = "x" * 1_000_000
    doc = workspace(resource={"labelSelector": {"matchLabels": {huge: huge}}, "count": huge})
    problems = validate(doc, ws_schema)
    assert reasons(problems) == {"resource.count": "FieldTypeInvalid"}
    assert all(len(p.message) < 300 and len(p.path) < 300 for p in problems)


def test_validate_deep_nesting(ws_schema):
    deep: object = "leaf"
    for _ in range(500):
        deep = {"a": [deep]}
    doc = workspace(inference={"template": deep, "preset": deep})
    problems = validate(doc, ws_schema)
    assert reasons(problems) == {"inference.preset.name": "FieldRequired"}


# --- prune -------------------------------------------------------------------------------------


def test_prune_removes_unknown_status_fields_and_keeps_known_ones(ws_schema):
    status = {
        "fsm": {"state": "Provisioning", "attempt": 2},
        "conditions": [{"type": "ResourceReady", "status": "True", "reason": "Ok", "message": "", "lastTransitionTime": "2024-01-01T00:00:00Z", "extra": 1}],
        "state": "Running",
        "targetNodeCount": 2,
        "workerNodes": ["node-a", "node-b"],
        "performance": {"metrics": {"throughput": {"description": "d", "value": "1", "config": {"k": "v"}}}},
    }
    doc = workspace(status=status)
    original = copy.deepcopy(doc)
    pruned, removed = prune(doc, ws_schema)
    assert doc == original  # input untouched
    assert sorted(removed) == ["status.conditions[0].extra", "status.fsm"]
    assert "fsm" not in pruned["status"]
    for key in ("conditions", "state", "targetNodeCount", "workerNodes", "performance"):
        assert key in pruned["status"]
    assert pruned["status"]["conditions"][0]["type"] == "ResourceReady"
    assert pruned["status"]["performance"]["metrics"]["throughput"]["config"] == {"k": "v"}


def test_prune_root_and_metadata(ws_schema):
    doc = workspace(spec={"resource": {}}, extra=1)
    doc["metadata"] = {"name": "ws", "labels": {"a": "b"}, "annotations": {"x/y": "z"}, "bogus": True}
    pruned, removed = prune(doc, ws_schema)
    assert sorted(removed) == ["extra", "metadata.bogus", "spec"]
    assert pruned["apiVersion"] == "kaito.sh/v1beta1" and pruned["kind"] == "Workspace"
    assert pruned["metadata"] == {"name": "ws", "labels": {"a": "b"}, "annotations": {"x/y": "z"}}


def test_prune_keeps_preserved_fields_and_map_values(ws_schema):
    doc = workspace()
    doc["inference"] = {
        "preset": {"name": "phi-4", "presetOptions": {"modelAccessSecret": "s", "colour": "red"}},
        "template": {"spec": {"anything": {"goes": [1]}}},
    }
    doc["resource"]["labelSelector"]["matchLabels"]["kaito.sh/extra"] = "v"
    pruned, removed = prune(doc, ws_schema)
    assert removed == ["inference.preset.presetOptions.colour"]
    assert pruned["inference"]["template"] == doc["inference"]["template"]
    assert pruned["resource"]["labelSelector"]["matchLabels"]["kaito.sh/extra"] == "v"


def test_prune_leaves_wrong_types_for_validate(ws_schema):
    doc = workspace(resource=["not", "an", "object"], status="odd")
    pruned, removed = prune(doc, ws_schema)
    assert removed == []
    assert pruned["resource"] == ["not", "an", "object"] and pruned["status"] == "odd"


def test_prune_embedded_resource():
    schema = {
        "type": "object",
        "properties": {
            "child": {"type": "object", "x-kubernetes-embedded-resource": True, "properties": {"spec": {"type": "object", "properties": {"a": {"type": "string"}}}}}
        },
    }
    doc = {"child": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "junk": 1}, "spec": {"a": "x", "b": "y"}, "zzz": 1}}
    pruned, removed = prune(doc, schema)
    assert sorted(removed) == ["child.metadata.junk", "child.spec.b", "child.zzz"]
    assert pruned == {"child": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"a": "x"}}}


# --- apply_defaults ----------------------------------------------------------------------------


def test_apply_defaults_fills_count_and_access_mode(ws_schema):
    doc = workspace()
    original = copy.deepcopy(doc)
    defaulted = apply_defaults(doc, ws_schema)
    assert doc == original
    assert defaulted["resource"]["count"] == 1
    assert defaulted["inference"]["preset"]["accessMode"] == "public"
    assert "count" not in defaulted.get("status", {})


def test_apply_defaults_keeps_given_values_and_handles_nulls(ws_schema):
    doc = workspace()
    doc["resource"]["count"] = 3
    assert apply_defaults(doc, ws_schema)["resource"]["count"] == 3
    doc["resource"]["count"] = None  # null on a defaulted field: the default
    doc["resource"]["instanceType"] = None  # null on a non-nullable field: dropped
    doc["tuning"] = None
    defaulted = apply_defaults(doc, ws_schema)
    assert defaulted["resource"]["count"] == 1
    assert "instanceType" not in defaulted["resource"]
    assert "tuning" not in defaulted
    assert apply_defaults({"port": 1, "name": None}, GENERIC) == {"port": 1, "name": None}  # nullable


def test_apply_defaults_does_not_descend_into_wrong_types(ws_schema):
    assert apply_defaults(workspace(resource="x")["resource"], ws_schema["properties"]["resource"]) == "x"
    assert apply_defaults([1, 2], ws_schema) == [1, 2]


# --- paths -------------------------------------------------------------------------------------


def test_format_path():
    assert format_path(["resource", "labelSelector", "matchLabels", "app"]) == "resource.labelSelector.matchLabels.app"
    assert format_path(["tuning", "input", "urls", 0]) == "tuning.input.urls[0]"
    assert format_path(["metadata", "labels", "kaito.sh/workspace"]) == 'metadata.labels["kaito.sh/workspace"]'
    assert format_path([]) == ""
    assert len(format_path(["k" * 10_000])) < 200


# --- properties --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(["resource", "inference", "tuning", "status", "metadata", "count", "labelSelector", "matchLabels", "preset", "name", "x"])
        | st.text(max_size=8),
        children,
        max_size=4,
    ),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None)
@given(doc=json_values)
def test_schema_functions_never_raise(ws_schema, doc):
    problems = validate(doc, ws_schema)
    assert all(isinstance(p, Problem) and p.reason[:1].isupper() for p in problems)
    pruned, removed = prune(doc, ws_schema)
    assert all(isinstance(r, str) for r in removed)
    apply_defaults(doc, ws_schema)
    # Pruning is idempotent.
    again, removed_again = prune(pruned, ws_schema)
    assert again == pruned and removed_again == []


def test_json_type_names():
    assert [s.json_type(v) for v in (None, True, 1, 1.0, "", {}, [])] == [
        "null", "boolean", "integer", "number", "string", "object", "array",
    ]
