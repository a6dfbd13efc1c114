"""The tutorial lifecycle (examples/website) end to end against the embedded test API server, through the
same command-line runner an author uses (`workspace-fsm run --lifecycle MODULE:ATTR`), and the declaration
checks an author meets first."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from kubernetes import client as k8s

from workspace_fsm.cli.embedded import EmbeddedCluster
from workspace_fsm.cli.lifecycles import LifecycleNotFound, load_lifecycle
from workspace_fsm.cli.run import run_against
from workspace_fsm.engine import Edge, Lifecycle, LifecycleError, Kind, State

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = f"{ROOT}/examples/website/website.py:WEBSITE"
G, V, P = "tutorial.example.com", "v1", "websites"


def wait_for(what, check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    lc = load_lifecycle(TUTORIAL)
    c = EmbeddedCluster(time_scale=300.0, crds=lc.crds)
    c.kubeconfig = c.start(tmp_path_factory.mktemp("kube") / "kubeconfig")
    stop = threading.Event()
    args = argparse.Namespace(namespace=None, workers=2, health_port=0, api_request_timeout=c.request_timeout,
                              lifecycles=[lc])
    t = threading.Thread(target=run_against, args=(c.api, args, stop), daemon=True)
    t.start()
    yield c
    stop.set()
    t.join(20)
    c.stop()


def website(c, name):
    return k8s.CustomObjectsApi(c.api).get_namespaced_custom_object(G, V, "default", P, name)


def phase(c, name):
    return (website(c, name).get("status") or {}).get("phase")


def test_the_tutorial_serves_scales_refuses_bad_input_and_is_cleaned_up(site):
    custom, apps = k8s.CustomObjectsApi(site.api), k8s.AppsV1Api(site.api)
    custom.create_namespaced_custom_object(G, V, "default", P, {
        "apiVersion": f"{G}/{V}", "kind": "Website", "metadata": {"name": "hello"},
        "spec": {"message": "hi", "replicas": 2}})
    wait_for("Ready", lambda: phase(site, "hello") == "Ready")
    ready = next(c for c in website(site, "hello")["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] == 1
    assert apps.read_namespaced_deployment("hello", "default").spec.replicas == 2
    # A spec change rolls out and comes back to Ready at the new generation.
    custom.patch_namespaced_custom_object(G, V, "default", P, "hello", {"spec": {"replicas": 3, "message": "hey"}})
    wait_for("3 replicas Ready", lambda: apps.read_namespaced_deployment("hello", "default").spec.replicas == 3
             and phase(site, "hello") == "Ready" and all(
                 c["observedGeneration"] == 2 for c in website(site, "hello")["status"]["conditions"]))
    cm = k8s.CoreV1Api(site.api).read_namespaced_config_map("hello-page", "default")
    assert cm.data == {"index.html": "hey"}
    # An empty message passes the CRD's schema but not the lifecycle's validation: a specific reason, nothing created.
    custom.create_namespaced_custom_object(G, V, "default", P, {
        "apiVersion": f"{G}/{V}", "kind": "Website", "metadata": {"name": "blank"}, "spec": {"message": "  "}})
    cond = wait_for("the invalid condition", lambda: next(
        (c for c in (website(site, "blank").get("status") or {}).get("conditions") or () if c["type"] == "Ready"), None))
    assert cond["status"] == "False" and cond["reason"] == "MessageEmpty" and "spec.message" in cond["message"]
    assert not [d for d in apps.list_namespaced_deployment("default").items if d.metadata.name == "blank"]
    # Deleting the Website deletes what it owns (ownerReferences, garbage collection).
    custom.delete_namespaced_custom_object(G, V, "default", P, "hello")
    wait_for("the Deployment to go", lambda: not [d for d in apps.list_namespaced_deployment("default").items
                                                  if d.metadata.name == "hello"])


def test_run_names_a_lifecycle_that_is_not_one_and_exits_2(tmp_path):
    for spec, says in (("nosuch", "built-in name"), (f"{tmp_path}/missing.py:X", "no such file"),
                       (f"{ROOT}/examples/website/website.py:WEBSITE_KIND", "no Lifecycle named WEBSITE_KIND")):
        with pytest.raises(LifecycleNotFound, match=says):
            load_lifecycle(spec)
    p = subprocess.run([sys.executable, "-m", "workspace_fsm.cli", "run", "--embedded", "--lifecycle", "nosuch:X"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "cannot import nosuch" in p.stderr and "Traceback" not in p.stderr


def _guard(f):
    return True


def test_a_declaration_that_cannot_work_is_refused_when_it_is_built():
    kind = Kind("example.com/v1", "Thing", "things")
    with pytest.raises(LifecycleError, match="no edge leads to Orphan"):
        Lifecycle("t", resource=kind, states=(State("A", "a"), State("B", "b"), State("Orphan", "o")),
                  edges=(Edge("A", "B", _guard),))
    with pytest.raises(LifecycleError, match="undeclared state C"):
        Lifecycle("t", resource=kind, states=(State("A", "a"), State("B", "b")), edges=(Edge("A", "C", _guard),))
    with pytest.raises(LifecycleError, match="needs a name"):
        Lifecycle("t", resource=kind, states=(State("A", "a"), State("B", "b")), edges=(Edge("A", "B", lambda f: True),))
    ok = Lifecycle("t", resource=kind, states=(State("A", "a"), State("B", "b")), edges=(Edge("A", "B", _guard),))
    assert ok.deadline("A") is None and ok.why("A", "B") == "_guard"
    assert ok.permissions()[("example.com", "things/status")] == frozenset({"update"})
    assert timedelta(0) < ok.config.create_grace


def test_the_tutorial_is_short_and_draws():
    lines = sum(len(p.read_text().splitlines()) for p in (ROOT / "examples" / "website").glob("*.*")
                if p.suffix in (".py", ".yaml") and p.name != "hello.yaml")
    assert lines <= 200  # the lifecycle and its CRD; a kopf operator for the same needs about as many
    out = subprocess.run([sys.executable, "-m", "workspace_fsm.cli", "diagram", "--lifecycle", TUTORIAL],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Deploying --> Ready: [site_ready]" in out.stdout


def test_explain_says_the_state_each_guard_and_what_the_machine_waits_for(site):
    custom = k8s.CustomObjectsApi(site.api)
    custom.create_namespaced_custom_object(G, V, "default", P, {
        "apiVersion": f"{G}/{V}", "kind": "Website", "metadata": {"name": "explained"},
        "spec": {"message": "hi", "replicas": 1}})
    wait_for("Ready", lambda: phase(site, "explained") == "Ready")
    cmd = [sys.executable, "-m", "workspace_fsm.cli", "explain", "website/explained", "--kubeconfig",
           str(site.kubeconfig), "--lifecycle", TUTORIAL]
    p = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    import json

    e = json.loads(p.stdout)
    assert e["state"] == "Ready" and e["recorded"]
    assert [(x["to"], x["guard"], x["value"]) for x in e["edges"]] == [("Deploying", "site_unready", False)]
    assert [(h["from"], h["to"], h["why"]) for h in e["history"]] == [("Pending", "Deploying", "spec_valid"),
                                                                      ("Deploying", "Ready", "site_ready")]
    text = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    assert "Website default/explained (website lifecycle): Ready since" in text and "site_unready = False" in text
    missing = subprocess.run([*cmd[:4], "website/nope", *cmd[5:]], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_a_lifecycle_may_keep_its_record_in_an_annotation(site):
    """AnnotationStore: the record rides in an annotation (for a resource whose status has no conditions),
    written before the status with the observed resourceVersion, and read back on the next pass."""
    from datetime import datetime, timezone

    from workspace_fsm.adapters.kubernetes.generic import Owned, ResourceAdapter
    from workspace_fsm.engine import AnnotationStore, RecordFormat
    from workspace_fsm.engine.runner import FsmReconciler

    tutorial = load_lifecycle(TUTORIAL)

    def always(f):
        return True

    noted = Lifecycle("noted", resource=tutorial.resource, parse=tutorial.parse, summary_field="phase",
                      record=RecordFormat(store=AnnotationStore("tutorial.example.com/record")),
                      states=(State("Pending", "new"), State("Seen", "seen once", summary="Seen")),
                      edges=(Edge("Pending", "Seen", always),))
    k8s.CoreV1Api(site.api).create_namespace({"metadata": {"name": "other"}})  # the site's runner watches all
    custom = k8s.CustomObjectsApi(site.api)
    adapter = ResourceAdapter(site.api, noted, namespace="other")
    adapter.start()
    try:
        assert adapter.wait_synced(10)
        custom.create_namespaced_custom_object(G, V, "other", P, {
            "apiVersion": f"{G}/{V}", "kind": "Website", "metadata": {"name": "noted"}, "spec": {"message": "m"}})
        wait_for("the cache", lambda: adapter.observe("other/noted")[0] is not None)
        r = FsmReconciler(adapter, time.time, epoch=datetime(1970, 1, 1, tzinfo=timezone.utc))

        def pass_then_record():
            # The site's own runner writes this Website too (its lifecycle watches every namespace): a pass
            # that meets its write gets a 409 and is simply run again, as the queue would.
            for _ in r.reconcile("other/noted"):
                pass
            return (custom.get_namespaced_custom_object(G, V, "other", P, "noted")["metadata"].get("annotations")
                    or {}).get("tutorial.example.com/record")

        text = wait_for("the record", pass_then_record)
        assert '"state":"Seen"' in text
        again = adapter.observe("other/noted")[0]
        rec = noted.record.read(again)
        assert rec is not None and rec.state == "Seen" and [h.why for h in rec.history] == ["always"]
        # Another lifecycle's record on the same object (the website's, a condition) is kept by this one's pass.
        foreign = {"type": "workspace-fsm/Lifecycle", "status": "True", "reason": "Ready", "message": "{}",
                   "lastTransitionTime": "2026-01-01T00:00:00Z"}
        doc = {**custom.get_namespaced_custom_object(G, V, "other", P, "noted"), "status": {"conditions": [foreign]}}
        d = noted.decide(noted.parse(doc), Owned(), datetime(2026, 1, 2, tzinfo=timezone.utc))
        assert [c.type for c in d.status.conditions] == ["workspace-fsm/Lifecycle"]
    finally:
        adapter.stop()


def test_the_guide_quotes_the_tutorial_as_it_is():
    """docs/authoring.md walks through examples/website/website.py: every line its code blocks quote (up to the
    hooks, which the tutorial does not use) is a line of the file, so the two cannot drift apart."""
    guide = (ROOT / "docs" / "authoring.md").read_text().split("## 9.")[0]
    source = {line.strip() for line in (ROOT / "examples" / "website" / "website.py").read_text().splitlines()}
    blocks = re.findall(r"```python\n(.*?)```", guide, re.S)
    quoted = [line.strip() for block in blocks for line in block.splitlines()
              if line.strip() and "..." not in line and not line.strip().startswith("#")]
    assert len(blocks) >= 4 and len(quoted) >= 25, (len(blocks), len(quoted))
    assert [line for line in quoted if line not in source] == []
