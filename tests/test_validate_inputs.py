"""``workspace-fsm validate`` on what a new user feeds it: documents that are not objects, ``kubectl get -o yaml``
output (a ``kind: List``), standard input, broken YAML; and what ``--help`` promises about exit codes."""

from __future__ import annotations

import copy
import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workspace_fsm.cli.main import main
from workspace_fsm.kaito.validation import STDIN_NAME, validate_files

WORKSPACE = {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": "phi", "namespace": "ml"},
             "resource": {"instanceType": "Standard_NC24ads_A100_v4", "labelSelector": {"matchLabels": {"a": "b"}}},
             "inference": {"preset": {"name": "phi-4"}}}


def run(paths, stdin=None, **kw) -> tuple[int, list[str], list[str]]:
    out, err = io.StringIO(), io.StringIO()
    rc = validate_files([str(p) for p in paths], out=out, err=err, stdin=stdin, **kw)
    return rc, out.getvalue().splitlines(), err.getvalue().splitlines()


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def as_kubectl_prints(doc: dict, uid: str) -> dict:
    """A Workspace as ``kubectl get workspaces -o yaml`` prints it: server-set metadata and a status."""
    item = copy.deepcopy(doc)
    item["metadata"].update({
        "uid": uid, "resourceVersion": "4711", "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z",
        "finalizers": ["workspace.kaito.io/finalizer"],
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update",
                           "apiVersion": "kaito.sh/v1beta1", "time": "2026-01-01T00:00:00Z",
                           "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}]})
    item["status"] = {"state": "Ready", "targetNodeCount": 1, "workerNodes": ["aks-gpu-1"],
                      "conditions": [{"type": "InferenceReady", "status": "True", "reason": "InferenceReady",
                                      "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    return item


def test_a_list_or_a_scalar_where_an_object_should_be_is_an_error(tmp_path):
    path = write(tmp_path, "odd.yaml", yaml.safe_dump(WORKSPACE) + "---\n- a\n- list\n---\njust words\n---\n42\n")
    rc, out, err = run([path])
    assert rc == 1 and err == []
    assert out[0].startswith(f"{path}: document 2: [NotAnObject] not a Kubernetes object: a list of 2 item(s), ")
    assert "give each its own document (---) or put them under items: of a kind: List" in out[0]
    assert out[1].startswith(f'{path}: document 3: [NotAnObject] not a Kubernetes object: the string "just words"')
    assert out[2].startswith(f"{path}: document 4: [NotAnObject] not a Kubernetes object: the integer 42")
    assert out[-1] == "1 Workspace checked, 0 invalid, 0 problems, 3 documents not an object"
    # On its own, a non-object is still an error (not a note about a file without Workspaces).
    rc, out, _ = run([write(tmp_path, "list.yaml", "- apiVersion: v1\n  kind: ConfigMap\n")])
    assert rc == 1 and "document 1: [NotAnObject]" in out[0]


def test_kubectl_get_output_has_each_item_checked_by_index_and_name(tmp_path):
    bad = copy.deepcopy(WORKSPACE)
    bad["metadata"]["name"] = "no-size"
    del bad["resource"]["instanceType"]
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "params", "namespace": "ml"}}
    listing = {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
               "items": [as_kubectl_prints(WORKSPACE, "u1"), as_kubectl_prints(bad, "u2"), config_map, "stray"]}
    path = write(tmp_path, "get.yaml", yaml.safe_dump(listing))
    rc, out, err = run([path])
    assert rc == 1 and err == []
    assert out == [
        f"{path}: document 1: items[1]: Workspace ml/no-size: resource.instanceType: [InstanceTypeRequired] "
        + out[0].split("[InstanceTypeRequired] ", 1)[1],
        f"{path}: document 1: items[2] (ConfigMap params): skipped, not a Workspace or a RAGEngine",
        f'{path}: document 1: items[3]: [NotAnObject] not a Kubernetes object: the string "stray", where an item '
        f"of a List must be a mapping with apiVersion, kind and metadata",
        "2 Workspaces checked, 1 invalid, 1 problem, 1 document not an object",
    ]
    # What kubectl prints for healthy Workspaces (status, managedFields and all) is valid.
    listing["items"] = [as_kubectl_prints(WORKSPACE, "u1")]
    rc, out, _ = run([write(tmp_path, "get-ok.yaml", yaml.safe_dump(listing))])
    assert rc == 0 and out == ["1 Workspace checked, 0 invalid, 0 problems"]
    # An empty listing has nothing to check; items that are not a list are an error.
    rc, out, _ = run([write(tmp_path, "empty.yaml", "apiVersion: v1\nkind: List\nitems: []\n")])
    assert rc == 0 and out[0].endswith("note: no Workspace or RAGEngine in this file")
    rc, out, _ = run([write(tmp_path, "bad-items.yaml", "apiVersion: v1\nkind: List\nitems: {a: 1}\n")])
    assert rc == 1 and out == [f"{tmp_path / 'bad-items.yaml'}: document 1 (List): items: [NotAnObject] expected a "
                               "list of objects, got an object with 1 field(s)",
                               "0 Workspaces checked, 0 invalid, 0 problems, 1 document not an object"]


def test_an_api_list_kind_is_a_list_too(tmp_path):
    listing = {"apiVersion": "kaito.sh/v1beta1", "kind": "WorkspaceList", "metadata": {},
               "items": [{**copy.deepcopy(WORKSPACE), "inference": {"preset": {"name": "no-such-model"}}}]}
    rc, out, _ = run([write(tmp_path, "api.yaml", yaml.safe_dump(listing))])
    assert rc == 1 and out[0].startswith(f"{tmp_path / 'api.yaml'}: document 1: items[0]: Workspace ml/phi: "
                                         "inference.preset.name: [UnknownPreset]")


def test_dash_reads_standard_input():
    rc, out, err = run(["-"], stdin=io.BytesIO(yaml.safe_dump(WORKSPACE).encode()))
    assert (rc, out, err) == (0, ["1 Workspace checked, 0 invalid, 0 problems"], [])
    bad = {**WORKSPACE, "resource": {"labelSelector": {"matchLabels": {"a": "b"}}}}
    rc, out, _ = run(["-"], stdin=io.StringIO(yaml.safe_dump(bad)))
    assert rc == 1 and out[0].startswith(f"{STDIN_NAME}: document 1: Workspace ml/phi: resource.instanceType: ")


def test_dash_reads_standard_input_from_the_command_line():
    proc = subprocess.run([sys.executable, "-m", "workspace_fsm.cli", "validate", "-"], capture_output=True,
                          text=True, input="- not\n- an object\n", timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.startswith(f"{STDIN_NAME}: document 1: [NotAnObject] not a Kubernetes object: a list")


@pytest.mark.parametrize(("text", "expected"), [
    # An unclosed quote: PyYAML gives up at the end of the file; the quote that began it is on line 3.
    ("kind: Workspace\nmetadata:\n  name: \"oops\n", "line 4, column 1: YAML does not parse: found unexpected end of "
     "stream, while scanning a quoted scalar that began at line 3, column 9"),
    # An unclosed bracket: noticed on the next line, opened on the first.
    ("a: [1, 2\nb: 3\n", "line 2, column 2: YAML does not parse: expected ',' or ']', but got ':', while parsing a "
     "flow sequence that began at line 1, column 4"),
    # A duplicate key: where the second one is, and the mapping both belong to.
    ("metadata:\n  name: a\n  labels: {}\n  name: b\n", "line 4, column 3: YAML does not parse: found duplicate key "
     "\"name\", while constructing a mapping that began at line 2, column 3"),
])
def test_a_yaml_error_says_where_the_construct_began(tmp_path, text, expected):
    path = write(tmp_path, "broken.yaml", text)
    rc, out, err = run([path])
    assert rc == 1 and err == [f"{path}: {expected}"]
    assert out[-1].endswith("1 file not parsed")


def test_help_says_which_exit_code_each_outcome_gets(capsys):
    with pytest.raises(SystemExit) as done:
        main(["validate", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    section = text[text.index("exit status:"):]
    assert "0  every Workspace and RAGEngine is valid" in section
    assert "1  an object is invalid, a document is not an object" in section
    assert "or a file's YAML does not parse" in section and "2  a file cannot be read" in section
    assert "- reads standard input" in text
