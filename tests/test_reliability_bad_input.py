"""Bad input, seeded and small enough for every CI run (benchmarks/bad_input.py is the larger run).

Workspaces drawn from KAITO's CRD schema and the preset catalogue, broken in each of the ways of
``workspace_fsm.testing.strategies.CATEGORIES`` (wrong types, missing instanceType, unknown preset,
inference and tuning together, negative and huge counts, bad label values, megabyte strings, ...), go

1. straight to ``parse_workspace`` + ``decide``: no exception, a condition whose reason and message
   name the problem, nothing created; and the fixed spec proceeds;
2. through ``workspace-fsm validate`` (in-process for the hypothesis bulk, as a subprocess for a few):
   exit 1 with one line per problem naming the object and the field, 0 when valid, never a traceback;
3. through the API server to a running runner, among valid Workspaces: the API server rejects some at
   admission (recorded); every admitted one gets a specific condition and nothing is created for it; the
   valid ones are not held up; the runner stays alive; and a repaired Workspace goes on to Ready.
"""

from __future__ import annotations

import copy
import io
import logging
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from workspace_fsm.kaito import actions as A
from workspace_fsm.engine import schema as k8s_schema
from workspace_fsm.kaito.workspace import WORKSPACE_SUCCEEDED, decide
from workspace_fsm.cli.embedded import EmbeddedCluster
from workspace_fsm.kaito.errors import InvalidWorkspace
from workspace_fsm.kaito.model import FINALIZER, LABEL_WORKSPACE, LABEL_WORKSPACE_NAMESPACE, Snapshot, parse_workspace
from workspace_fsm.testing.strategies import (API_UNSENDABLE, CATEGORIES, BadWorkspace, RandomChooser, at_goal,
                                              bad_workspaces, dump_yaml, invalid_condition, make_bad, make_valid,
                                              schema_documents, valid_workspaces)
from workspace_fsm.kaito.validation import check_document, validate_files, workspace_schema

SEED = 20261124
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
PROPS = settings(max_examples=200, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CREATING = (A.CreateNodeClaim, A.CreateWorkload, A.UpdateWorkload, A.CreateJob, A.AddFinalizer)
#: Reasons that say only "invalid", not what: a condition must never carry one of these.
VAGUE = {"", "Invalid", "InvalidWorkspace", "FieldValueInvalid", "Error", "Unknown"}
MIB = 1024 * 1024


_dump = dump_yaml


def no_config_maps(ws) -> Snapshot:
    """An empty cluster as an adapter reports it: a named inference ConfigMap (read before the Workspace is sized,
    its max-model-len counts) is known not to exist, so KAITO's default context applies."""
    from workspace_fsm.kaito.workspace import confirmations

    return Snapshot(absent=frozenset(n for n in confirmations(ws) if n.startswith("ConfigMap/")))


def _expected_in(problems, bad: BadWorkspace) -> set[tuple[str, str]]:
    return {(p.path, p.reason) for p in problems} & set(bad.expect)


# ============================================================================ the generators themselves


@PROPS
@given(doc=valid_workspaces())
def test_valid_workspaces_are_valid_and_decide_starts_them(doc):
    """The base every bad Workspace is made from is valid: otherwise the bad ones prove nothing."""
    assert check_document(doc) == []
    ws = parse_workspace(doc)
    d = decide(ws, no_config_maps(ws), NOW)
    assert any(isinstance(a, A.CreateNodeClaim) for a in d.after), d
    assert d.state == "NodesProvisioning"


@PROPS
@given(doc=schema_documents())
def test_schema_documents_follow_the_crd_schema_and_decide_never_raises(doc):
    """Documents shaped by the CRD's structural schema: the schema admits them (as the API server would);
    KAITO's rules mostly do not, and decide then reports the first problem and creates nothing."""
    crd = workspace_schema()
    pruned, removed = k8s_schema.prune(doc, crd)
    assert removed == []
    assert k8s_schema.validate(k8s_schema.apply_defaults(pruned, crd), crd) == []
    ws = parse_workspace(doc)
    d = decide(ws, Snapshot(), NOW)
    if ws.problems:
        cond = d.status.condition(WORKSPACE_SUCCEEDED)
        assert cond.status == "False" and cond.reason == ws.problems[0].reason
        assert not any(isinstance(a, CREATING) for a in d.actions)


# ============================================================================ 1. straight to decide


@pytest.mark.parametrize("category", CATEGORIES)
@PROPS
@given(data=st.data())
def test_decide_reports_a_bad_workspace_creates_nothing_and_the_fix_proceeds(category, data):
    bad = data.draw(bad_workspaces([category]), label="bad")
    doc = bad.doc
    if not isinstance(doc, dict):
        # Nothing to address (no object, no name): parse_workspace refuses it with a specific problem.
        with pytest.raises(InvalidWorkspace) as err:
            parse_workspace(doc)
        assert err.value.reason == "NotAnObject" and "expected a Workspace object" in str(err.value)
        return
    ws = parse_workspace(doc)
    assert ws.problems, f"{bad.change}: not reported as a problem"
    assert _expected_in(ws.problems, bad), f"{bad.change}: expected one of {bad.expect}, got {ws.problems}"

    d = decide(ws, Snapshot(), NOW)
    cond = d.status.condition(WORKSPACE_SUCCEEDED)
    assert cond is not None and cond.status == "False"
    assert cond.reason == ws.problems[0].reason and cond.reason not in VAGUE
    assert "Fix the manifest" in cond.message
    named = [str(p) for p in ws.problems if (p.path, p.reason) in set(bad.expect)]
    assert any(text in cond.message for text in named), (named, cond.message[:500])
    assert len(cond.message) < 40_000  # a megabyte string is described, never copied into the status
    assert not any(isinstance(a, CREATING) for a in d.actions), d.actions
    assert d.before == ()  # and nothing is deleted either
    assert [e.reason for e in d.after if isinstance(e, A.RecordEvent)] == [cond.reason]

    # A Workspace that was already provisioning and then broken: nothing new is created for it either.
    good = parse_workspace({**bad.fixed, "metadata": {**bad.fixed["metadata"], "generation": 1}})
    first = decide(good, no_config_maps(good), NOW)
    assert any(isinstance(a, A.CreateNodeClaim) for a in first.after)
    broken_doc = copy.deepcopy(doc)
    broken_doc["metadata"] = {**doc["metadata"], "generation": 2}
    broken = parse_workspace({**broken_doc, "status": first.status.to_dict()})
    second = decide(broken, Snapshot(), NOW)
    assert not any(isinstance(a, CREATING) for a in second.actions), second.actions
    assert second.status.condition(WORKSPACE_SUCCEEDED).reason == broken.problems[0].reason

    # Fixing the spec lets it proceed: the invalid status left behind does not hold it back.
    fixed = parse_workspace({**bad.fixed, "metadata": {**bad.fixed["metadata"], "generation": 3},
                             "status": d.status.to_dict()})
    third = decide(fixed, no_config_maps(fixed), NOW)
    assert fixed.valid and any(isinstance(a, A.CreateNodeClaim) for a in third.after), third
    assert "spec is invalid" not in third.status.condition(WORKSPACE_SUCCEEDED).message


# ============================================================================ 2. workspace-fsm validate


_DIR = tempfile.TemporaryDirectory(prefix="bad-input-")


def _validate(doc) -> tuple[int, str, str, Path]:
    path = Path(_DIR.name) / "workspace.yaml"
    path.write_text(_dump(doc), encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    rc = validate_files([path], out=out, err=err)
    return rc, out.getvalue(), err.getvalue(), path


@PROPS
@given(bad=bad_workspaces())
def test_validate_names_the_object_and_the_field_of_every_bad_workspace(bad):
    rc, out, err, path = _validate(bad.doc)
    assert "Traceback" not in out + err
    if not isinstance(bad.doc, dict):
        # Not a Kubernetes object at all (a list or a scalar): an error naming the document, exit 1.
        assert rc == 1 and f"{path}: document 1: [NotAnObject] not a Kubernetes object: " in out
        return
    if any(reason == "IntegerOutOfRange" for _, reason in bad.expect) and err:
        # YAML itself cannot hold an integer of thousands of digits: said with the line and column.
        assert rc == 1 and "YAML does not parse" in err and "too many digits" in err and ", column " in err
        return
    assert rc == 1, out + err
    name = bad.doc["metadata"]["name"]
    lines = [line for line in out.splitlines() if line.startswith(f"{path}: document 1: Workspace default/{name[:40]}")]
    assert lines, out
    wanted = [f": {path_}: [{reason}] " if path_ else f": [{reason}] " for path_, reason in bad.expect]
    assert any(w in line for w in wanted for line in lines), f"{bad.change}: expected one of {wanted} in\n{out}"
    assert all(len(line) < 2_000 for line in lines)  # a megabyte value is described, not printed
    assert out.splitlines()[-1].startswith("1 Workspace checked, 1 invalid, ")


@pytest.mark.parametrize("category", CATEGORIES)
def test_validate_on_seeded_examples_of_every_category(category):
    """The hypothesis run above draws categories at random; this makes sure each one is seen in CI."""
    rng = RandomChooser(random.Random(f"{SEED}-{category}"))
    for i in range(6):
        test_validate_names_the_object_and_the_field_of_every_bad_workspace.hypothesis.inner_test(
            make_bad(rng, category, f"{category.replace('_', '-')}-{i}"))


@PROPS
@given(doc=valid_workspaces())
def test_validate_accepts_every_valid_workspace(doc):
    rc, out, err, _ = _validate(doc)
    assert (rc, err) == (0, "") and out.splitlines() == ["1 Workspace checked, 0 invalid, 0 problems"]


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("workspace-fsm")
    return [str(script)] if script.exists() else [sys.executable, "-m", "workspace_fsm.cli"]


def test_the_validate_command_as_a_process(tmp_path):
    """A handful through the real command: exit codes, one line per problem, no traceback."""
    rng = RandomChooser(random.Random(SEED))
    bads = [make_bad(rng, category, f"cli-{i}") for i, category in enumerate(
        ("wrong_type", "missing_instance_type", "unknown_preset", "inference_and_tuning", "negative_count",
         "huge_count", "invalid_label_value", "megabyte_string", "unknown_field", "null_object"))]
    (tmp_path / "bad.yaml").write_text("".join("---\n" + _dump(b.doc) for b in bads), encoding="utf-8")
    (tmp_path / "good.yaml").write_text("".join("---\n" + _dump(b.fixed) for b in bads), encoding="utf-8")
    (tmp_path / "digits.yaml").write_text(_dump(bads[0].fixed).replace("kind: Workspace", "kind: Workspace\nx: " + "9" * 5000))

    def run(name: str) -> subprocess.CompletedProcess:
        p = subprocess.run([*_cli(), "validate", str(tmp_path / name)], capture_output=True, text=True, timeout=60)
        assert "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr
        return p

    good = run("good.yaml")
    assert good.returncode == 0 and good.stdout.strip() == f"{len(bads)} Workspaces checked, 0 invalid, 0 problems"
    bad = run("bad.yaml")
    assert bad.returncode == 1
    for i, b in enumerate(bads, start=1):
        mine = [line for line in bad.stdout.splitlines() if f": document {i}: Workspace default/{b.doc['metadata']['name'][:40]}" in line]
        wanted = [f": {p}: [{r}] " if p else f": [{r}] " for p, r in b.expect]
        assert any(w in line for w in wanted for line in mine), f"{b.change}: {wanted} not in {mine}"
    assert f"{len(bads)} Workspaces checked, {len(bads)} invalid" in bad.stdout
    digits = run("digits.yaml")
    assert digits.returncode == 1 and "line 3, column 4: YAML does not parse" in digits.stderr
    assert "too many digits" in digits.stderr


# ============================================================================ regressions found by these tests


def _base() -> dict:
    return make_valid(RandomChooser(random.Random(1)), "regression", kind="inference")


@pytest.mark.parametrize("where", [("resource", "count"), ("resource", "instanceType"), ("metadata", "labels", "a"),
                                   ("apiVersion",), ("resource", "labelSelector", "matchLabels", "a")])
def test_an_integer_of_thousands_of_digits_is_a_problem_not_a_crash(where):
    """Python will not print an int of more than 4300 digits: check_document used to raise ValueError."""
    doc = _base()
    target = doc
    for k in where[:-1]:
        target = target.setdefault(k, {})
    target[where[-1]] = -(10**5000)
    problems = check_document(doc)
    assert [(p.path, p.reason) for p in problems] == [(k8s_schema.format_path(where), "IntegerOutOfRange")]
    assert "about 5001 digits" in problems[0].message
    assert not any(isinstance(a, CREATING) for a in decide(parse_workspace(doc), Snapshot(), NOW).actions)


def test_describe_value_of_a_huge_integer():
    assert k8s_schema.describe_value(10**5000) == "a number of about 5001 digits"
    assert k8s_schema.describe_value(10**70) == "a 71-digit number"
    assert k8s_schema.describe_value(12345) == "12345"


def test_a_yaml_integer_of_thousands_of_digits_is_a_parse_error_with_its_line(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(_dump(_base()) + "extra: " + "1" * 5000 + "\n")
    out, err = io.StringIO(), io.StringIO()
    assert validate_files([path], out=out, err=err) == 1
    assert f"{path}: line " in err.getvalue() and "has too many digits" in err.getvalue()


@pytest.mark.parametrize("template, path, reason", [
    ({1: "a", "b": "c"}, "inference.template[1]", "KeyNotString"),
    ({"spec": {"x": b"\x00"}}, "inference.template.spec.x", "ValueNotJSON"),
    ({"spec": {"x": float("nan")}}, "inference.template.spec.x", "NumberNotFinite"),
    ({"spec": {"x": {"a", "b"}}}, "inference.template.spec.x", "ValueNotJSON"),
    ({"spec": {"replicas": 2**64}}, "inference.template.spec.replicas", "IntegerOutOfRange"),
])
def test_values_json_cannot_carry_are_problems_not_a_crash_in_decide(template, path, reason):
    """A pod template is kept verbatim and hashed into the revision: a set, bytes or mixed key types made
    ``decide`` raise TypeError there, after validation had called the Workspace valid."""
    doc = _base()
    doc["inference"] = {"template": template}
    ws = parse_workspace(doc)
    assert (path, reason) in {(p.path, p.reason) for p in ws.problems}
    d = decide(ws, Snapshot(), NOW)
    assert d.status.condition(WORKSPACE_SUCCEEDED).reason == reason
    assert not any(isinstance(a, CREATING) for a in d.actions)


class _CountingPattern:
    """A compiled pattern that records the length of every string it is asked to match."""

    def __init__(self, pattern, lengths: list[int]) -> None:
        self._pattern, self._lengths = pattern, lengths

    def __getattr__(self, name: str):
        found = getattr(self._pattern, name)
        if name not in ("match", "fullmatch", "search", "findall", "finditer", "sub", "subn", "split"):
            return found

        def call(string, *args, **kwargs):
            self._lengths.append(len(string))
            return found(string, *args, **kwargs)
        return call


def _checked_with_counts(doc: dict, monkeypatch) -> tuple[int, list[int], list, object]:
    """check_document and decide on ``doc``, counting the Python work (trace events: calls and lines)
    and the length of every string a regular expression of the package was asked to match."""
    import re

    from workspace_fsm.engine import schema
    from workspace_fsm.engine import interpret, record
    from workspace_fsm.kaito import catalogue, model, nodeclaims, validation, workspace

    lengths: list[int] = []
    with monkeypatch.context() as m:
        for module in (validation, schema, model, workspace, nodeclaims, interpret, record, catalogue):
            for name, value in list(vars(module).items()):
                if isinstance(value, re.Pattern):
                    m.setattr(module, name, _CountingPattern(value, lengths))
        events = 0

        def trace(frame, event, arg):
            nonlocal events
            events += 1
            return trace

        outer = sys.gettrace()  # a coverage tracer, say: put back afterwards
        sys.settrace(trace)
        try:
            problems = check_document(doc)
            d = decide(parse_workspace(doc), Snapshot(), NOW)
        finally:
            sys.settrace(outer)
    return events, lengths, problems, d


@pytest.mark.parametrize("field", ["instanceType", "preset", "label", "annotation", "image", "url", "name", "template"])
def test_megabyte_strings_are_checked_quickly(field, monkeypatch):
    """Quickly, counted rather than timed: the Python work does not grow with the string (the same for 2
    and 4 MiB), and no regular expression is ever handed the string (each sees a few dozen characters)."""

    def document(size: int) -> dict:
        doc = make_valid(RandomChooser(random.Random(2)), "big", kind="tuning")
        big = "a" * size
        target = {"instanceType": lambda: doc["resource"].__setitem__("instanceType", big),
                  "preset": lambda: doc["tuning"]["preset"].__setitem__("name", big),
                  "label": lambda: doc["metadata"].__setitem__("labels", {"a": big}),
                  "annotation": lambda: doc["metadata"].__setitem__("annotations", {"a": big}),
                  "image": lambda: doc["tuning"].__setitem__("output", {"image": big, "imagePushSecret": "s"}),
                  "url": lambda: doc["tuning"].__setitem__("input", {"urls": ["https://" + big]}),
                  "name": lambda: doc["metadata"].__setitem__("name", big),
                  "template": lambda: doc.__setitem__("inference", {"template": {"x": big}})}
        target[field]()
        return doc

    _checked_with_counts(document(64), monkeypatch)  # warm up: schemas and the catalogue load once
    work_2, lengths_2, problems, d = _checked_with_counts(document(2 * MIB), monkeypatch)
    work_4, lengths_4, _, _ = _checked_with_counts(document(4 * MIB), monkeypatch)
    assert abs(work_4 - work_2) <= work_2 // 100, (work_2, work_4)  # about 13,000 trace events either way
    assert work_2 < 100_000  # a pass over the string's 2 million characters in Python would be far more
    assert lengths_2 and max(lengths_2 + lengths_4) <= 1024, max(lengths_2 + lengths_4)
    assert "DocumentTooLarge" in {p.reason for p in problems}
    assert all(len(p.message) < 1000 for p in problems)
    assert not any(isinstance(a, CREATING) for a in d.actions)


# ============================================================================ 3. through the API server


class _Errors(logging.Handler):
    """Records log records with a traceback: an exception the runner caught is still a bug here."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("workspace_fsm"):
            self.records.append(record)


def wait_for(what: str, check, timeout: float, describe=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: {describe()}")


def create_batch(custom, ns: str, bads: list[BadWorkspace], goods: list[dict]) -> tuple[dict, dict]:
    """Create valid and bad Workspaces interleaved, as kubectl would (strict field validation).
    Returns (admitted bad by name, rejected bad by name -> (HTTP status, message))."""
    admitted: dict[str, BadWorkspace] = {}
    rejected: dict[str, tuple[int, str]] = {}
    queue: list[tuple[str, object]] = [("bad", b) for b in bads]
    for i, g in enumerate(goods):
        queue.insert(i * (len(queue) // max(1, len(goods))) + i, ("good", g))
    for kind, item in queue:
        body = item if kind == "good" else item.doc
        try:
            created = custom.create_namespaced_custom_object("kaito.sh", "v1beta1", ns, "workspaces", body,
                                                             field_validation="Strict")
        except ApiException as exc:
            assert kind == "bad", f"a valid Workspace was rejected: {exc.status} {exc.body}"
            rejected[item.name] = (exc.status, str(exc.body)[:300])
            continue
        if kind == "bad":
            admitted[created["metadata"]["name"]] = item
    return admitted, rejected


def _by_name(lister) -> set[str]:
    return {o["metadata"]["name"] for o in lister()["items"]}


def test_bad_workspaces_through_the_api_server_do_not_stall_the_good_ones_and_a_fix_proceeds(tmp_path):
    rng = RandomChooser(random.Random(SEED))
    categories = [c for c in CATEGORIES if c not in API_UNSENDABLE]
    bads = [make_bad(rng, category, f"bad-{i}") for i, category in enumerate(categories * 2)]
    goods = [make_valid(rng, f"good-{i}") for i in range(4)]
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    cluster = EmbeddedCluster(time_scale=300.0, seed=SEED)
    cluster.start(tmp_path / "kubeconfig")
    custom = k8s.CustomObjectsApi(cluster.api)
    ns = "default"
    runner = cluster.run_in_thread(namespace=ns)
    try:
        admitted, rejected = create_batch(custom, ns, bads, goods)
        for name, (code, message) in rejected.items():
            assert code in (400, 422) and message, (name, code, message)
        # What the API server stored (pruned, defaulted) is what the runner sees: some bad input is
        # repaired by that (a null field dropped), and such a Workspace must then simply proceed.
        stored = {n: custom.get_namespaced_custom_object("kaito.sh", "v1beta1", ns, "workspaces", n) for n in admitted}
        still_bad = {n: b for n, b in admitted.items() if check_document(stored[n])}
        became_valid = sorted(set(admitted) - set(still_bad))
        assert len(still_bad) >= len(categories), (len(still_bad), sorted(rejected))

        def listing() -> dict[str, dict]:
            items = custom.list_namespaced_custom_object("kaito.sh", "v1beta1", ns, "workspaces")["items"]
            return {w["metadata"]["name"]: w for w in items}

        started = time.monotonic()
        expected_ready = [g["metadata"]["name"] for g in goods] + became_valid
        wait_for("every valid Workspace at its goal while the bad ones are there",
                 lambda: all(at_goal(listing().get(n)) for n in expected_ready), timeout=45,
                 describe=lambda: str({n: (listing().get(n) or {}).get("status", {}).get("state") for n in expected_ready}))
        ready_after = time.monotonic() - started
        wait_for("a condition on every admitted bad Workspace",
                 lambda: all(invalid_condition(listing().get(n)) for n in still_bad), timeout=20,
                 describe=lambda: str([n for n in still_bad if not invalid_condition(listing().get(n))]))
        assert runner.thread.is_alive()

        now = listing()
        for name, bad in still_bad.items():
            problems = check_document(now[name])
            cond = invalid_condition(now[name])
            assert cond["reason"] == problems[0].reason and cond["reason"] not in VAGUE, (bad.change, cond)
            assert _expected_in(problems, bad), f"{bad.change}: stored as {problems}"
            named = [str(p) for p in problems if (p.path, p.reason) in set(bad.expect)]
            assert any(text in cond["message"] for text in named), (bad.change, named, cond["message"][:500])
            assert FINALIZER not in (now[name]["metadata"].get("finalizers") or [])
        apps, batch = k8s.AppsV1Api(cluster.api), k8s.BatchV1Api(cluster.api)
        claims = k8s.CustomObjectsApi(cluster.api).list_cluster_custom_object("karpenter.sh", "v1", "nodeclaims")["items"]
        claimed_for = {(c["metadata"]["labels"].get(LABEL_WORKSPACE_NAMESPACE), c["metadata"]["labels"].get(LABEL_WORKSPACE))
                       for c in claims}
        made = (_by_name(lambda: apps.list_namespaced_deployment(ns).to_dict())
                | _by_name(lambda: apps.list_namespaced_stateful_set(ns).to_dict())
                | _by_name(lambda: batch.list_namespaced_job(ns).to_dict()))
        for name in still_bad:
            assert (ns, name) not in claimed_for, f"a NodeClaim exists for the invalid {name}"
            assert name not in made, f"a workload or Job exists for the invalid {name}"

        # Fix three of them (different categories): each goes on to its goal.
        to_fix, seen = [], set()
        for name, bad in still_bad.items():
            if bad.category not in seen and name == bad.name and len(to_fix) < 3:
                to_fix.append(name)
                seen.add(bad.category)
        assert len(to_fix) == 3
        for name in to_fix:
            current = custom.get_namespaced_custom_object("kaito.sh", "v1beta1", ns, "workspaces", name)
            body = {**still_bad[name].fixed, "metadata": {**still_bad[name].fixed["metadata"],
                                                          "resourceVersion": current["metadata"]["resourceVersion"]}}
            custom.replace_namespaced_custom_object("kaito.sh", "v1beta1", ns, "workspaces", name, body)
        wait_for("the fixed Workspaces at their goal", lambda: all(at_goal(listing().get(n)) for n in to_fix),
                 timeout=30, describe=lambda: str({n: (listing()[n].get("status") or {}).get("state") for n in to_fix}))
        for name in to_fix:
            ws = listing()[name]
            if "inference" in ws:
                n_claims = sum(1 for c in k8s.CustomObjectsApi(cluster.api).list_cluster_custom_object(
                    "karpenter.sh", "v1", "nodeclaims")["items"] if c["metadata"]["labels"].get(LABEL_WORKSPACE) == name)
                assert n_claims == ws["status"]["targetNodeCount"]
        assert runner.thread.is_alive()
        assert not errors.records, [r.getMessage()[:300] for r in errors.records]
        print(f"\nadmission: {len(rejected)} rejected, {len(still_bad)} admitted and invalid, "
              f"{len(became_valid)} made valid by pruning/defaulting; valid ones at goal after {ready_after:.1f}s")
    finally:
        logging.getLogger().removeHandler(errors)
        runner.kill()
        cluster.stop()
