"""The typed Workspace: KAITO's examples parse and serialise back unchanged; bad documents list every problem;
the persisted lifecycle record survives the API server's structural pruning with KAITO's own CRD."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import attrs
import pytest
import yaml

from workspace_fsm.kaito.workspace import decide
from workspace_fsm.kaito.errors import InvalidWorkspace
from workspace_fsm.kaito.model import Node, NodeClaim, Snapshot, Workspace, parse_workspace
from workspace_fsm.engine.record import Record
from workspace_fsm.kaito.workspace import LIFECYCLE_CONDITION, RECORD, HistoryEntry, WorkspaceBook, read_lifecycle
from workspace_fsm.engine.schema import crd_schema, prune

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def example_workspaces(kaito_dir):
    for path in sorted((kaito_dir / "examples").glob("*/*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Workspace":
                yield path.name, doc


def test_every_kaito_example_parses_and_round_trips(kaito_dir):
    seen = 0
    for name, doc in example_workspaces(kaito_dir):
        byo = "accelerator" in name
        ws = Workspace.from_dict(doc, auto_provisioning=not byo)
        assert ws.to_dict() == doc, name
        assert ws.valid and (ws.inference is None) != (ws.tuning is None), name
        seen += 1
    assert seen == 34


def test_invalid_document_raises_one_error_listing_every_bad_field():
    doc = {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": "bad"},
           "resource": {"count": "three", "labelSelector": {"matchLabels": {"app": "x"}}},
           "inference": {"preset": {"name": "no-such-model"}},
           "tuning": {"method": "qlora", "input": {"urls": ["https://example.com/d"]}, "output": {"image": "r/i:1"}}}
    with pytest.raises(InvalidWorkspace) as info:
        Workspace.from_dict(doc)
    paths = {p.path for p in info.value.problems}
    reasons = {p.reason for p in info.value.problems}
    assert "resource.count" in paths
    assert "resource.instanceType" in paths
    assert {"InferenceAndTuningBothSet", "FieldTypeInvalid", "InstanceTypeRequired"} <= reasons
    assert len(info.value.problems) >= 3
    assert "resource.count" in str(info.value)


def test_parse_keeps_an_invalid_spec_for_decide_but_refuses_an_unaddressable_object():
    ws = parse_workspace({"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": "w"},
                          "resource": {"instanceType": "Standard_NC24ads_A100_v4",
                                       "labelSelector": {"matchLabels": {"a": "b"}}},
                          "inference": {"preset": {"name": "gpt-5"}}})
    assert not ws.valid and ws.problems[0].reason == "UnknownPreset"
    d = decide(ws, Snapshot(), T0)
    assert d.mutating_actions == ()
    cond = d.status.condition("WorkspaceSucceeded")
    assert cond.status == "False" and cond.reason == "UnknownPreset" and "gpt-5" in cond.message
    for garbage in (None, [], "x", {"metadata": {}}, {"metadata": {"name": ""}}):
        with pytest.raises(InvalidWorkspace):
            parse_workspace(garbage)


def test_lifecycle_record_survives_structural_pruning_with_kaitos_crd(kaito_dir):
    schema = crd_schema(yaml.safe_load((kaito_dir / "crds" / "kaito.sh_workspaces.yaml").read_text()), "v1beta1")
    doc = next(d for n, d in example_workspaces(kaito_dir) if n == "kaito_workspace_llama-3.3_70b_instruct.yaml")
    doc = {**doc, "metadata": {**doc["metadata"], "uid": "u-1", "generation": 1}}
    ws = Workspace.from_dict(doc)
    # The example names its inference ConfigMap (same file): the node estimate reads its max-model-len.
    path = kaito_dir / "examples" / "inference" / "kaito_workspace_llama-3.3_70b_instruct.yaml"
    (cm,) = [c for c in yaml.safe_load_all(path.read_text()) if c and c.get("kind") == "ConfigMap"]
    config_maps = {cm["metadata"]["name"]: cm["data"]}
    d = decide(ws, Snapshot(config_maps=config_maps), T0)
    names = [a.name for a in d.actions if type(a).__name__ == "CreateNodeClaim"]
    assert names, d.status.conditions
    claims = tuple(NodeClaim(n, ws.key, ready="True", node_name="n-" + n) for n in names)
    nodes = {"n-" + n: Node("n-" + n, {"accelerator": "nvidia"}, True, 8) for n in names}
    ws = ws.with_status(d.status)
    d = decide(ws, Snapshot(claims, nodes, config_maps=config_maps), T0 + timedelta(minutes=5))
    written = {**ws.to_dict(), "status": d.status.to_dict()}
    pruned, removed = prune(written, schema)
    assert removed == []
    back = parse_workspace(pruned)
    assert back.status == d.status
    rec = read_lifecycle(back.status)
    assert rec.state == d.state == "WorkloadDeploying" and set(rec.data.nodeclaims) == set(names)
    # A status field outside KAITO's schema would be silently dropped: that is why none is used.
    _, removed = prune({**written, "status": {**written["status"], "fsm": {"state": "x"}}}, schema)
    assert removed == ["status.fsm"]


def test_lifecycle_record_fits_the_condition_message_limit():
    book = WorkspaceBook(nodeclaims=tuple(f"w{'x' * 40}-abcdef-{i}" for i in range(100)),
                         deleted=tuple(f"NodeClaim/w{'x' * 40}-abcdef-{i}" for i in range(100)), next_seq=500)
    rec = Record(state="NodesProvisioning", data=book, entered_at=T0,
                    history=tuple(HistoryEntry("NodesProvisioning", "PluginsReady", "2026-03-01T00:00:00Z", "nodes_ready")
                                  for _ in range(16)))
    cond = RECORD.to_condition(rec, T0)
    assert cond.type == LIFECYCLE_CONDITION and len(cond.message) <= 32768
    assert RECORD.decode(cond.message, since=T0) == attrs.evolve(rec, since=T0)


def test_validate_command(kaito_dir, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "workspace_fsm.cli", "validate", *a],  # noqa: E731
                                    capture_output=True, text=True)
    p = run(str(kaito_dir / "examples" / "inference" / "kaito_workspace_phi_4.yaml"),
            str(kaito_dir / "examples" / "fine-tuning" / "kaito_workspace_tuning_phi_3.yaml"))
    assert p.returncode == 0, p.stdout + p.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: kaito.sh/v1beta1\nkind: Workspace\nmetadata: {name: w}\nresource:\n"
                   "  labelSelector: {matchLabels: {a: b}}\ninference:\n  preset: {name: phi-5}\n"
                   "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    p = run(str(bad))
    assert p.returncode == 1
    assert "resource.instanceType" in p.stdout and "UnknownPreset" in p.stdout and "default/w" in p.stdout
    assert "ConfigMap" in p.stdout and "Traceback" not in p.stdout + p.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [Workspace\n")
    p = run(str(broken))
    assert p.returncode == 1 and "line" in p.stdout + p.stderr and "Traceback" not in p.stdout + p.stderr
    extra = tmp_path / "catalogue.yaml"
    extra.write_text("presets:\n  - name: phi-5\n    type: text-generation\n    runtime: tfs\n")
    good = tmp_path / "good.yaml"
    good.write_text(bad.read_text().replace("labelSelector", "instanceType: Standard_NC24ads_A100_v4\n  labelSelector"))
    assert run(str(good)).returncode == 1
    p = run("--catalogue", str(extra), str(good))
    assert p.returncode == 0, p.stdout + p.stderr
