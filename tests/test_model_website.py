"""The model harness (workspace_fsm.testing.model) on the tutorial's Website lifecycle, and the harness shown to
catch planted bugs: a create before the record, a state re-entered in one pass, a child its deletion would not
clean up, an author invariant broken.

The tutorial declares no invariants of its own (examples/website is the tutorial's, kept short); the ones below
are declared on a copy of its lifecycle, as an author would declare them with ``Lifecycle(..., invariants=...)``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest

from workspace_fsm.engine import (AnnotationStore, Create, Edge, Lifecycle, LifecycleError, RecordFormat, State,
                                  guard)
from workspace_fsm.testing.model import ChildModel, ModelCluster, ModelViolation, ModelWorld, check_lifecycle

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "website"))
import website as W  # noqa: E402

Children = Mapping[str, Sequence[Mapping[str, Any]]]
HELLO = {"apiVersion": "tutorial.example.com/v1", "kind": "Website",
         "metadata": {"name": "hello", "namespace": "default"}, "spec": {"message": "Hello", "replicas": 2}}


# ------------------------------------------------------------------ how the world behaves

def rolls_out(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The Deployment controller: the replicas of the current generation become ready."""
    gen, want = doc["metadata"].get("generation", 1), doc["spec"].get("replicas", 1)
    st = doc.get("status") or {}
    if st.get("observedGeneration") == gen and st.get("readyReplicas") == want:
        return None
    doc["status"] = {"observedGeneration": gen, "readyReplicas": want, "replicas": want}
    return doc


def loses_a_replica(doc: dict[str, Any]) -> dict[str, Any] | None:
    st = doc.get("status") or {}
    if not st.get("readyReplicas"):
        return None
    doc["status"] = {**st, "readyReplicas": st["readyReplicas"] - 1}
    return doc


def new_message(doc: dict[str, Any], n: int) -> dict[str, Any]:
    doc["spec"]["message"] = f"Hello #{n}"
    return doc


def new_replicas(doc: dict[str, Any], n: int) -> dict[str, Any]:
    doc["spec"]["replicas"] = 1 + n % 3
    return doc


# ------------------------------------------------------------------ the author's invariants

def page_before_deployment(obj: Any, children: Children) -> bool:
    """a Website's Deployment exists only if its page ConfigMap does"""
    return not children.get("Deployment") or any(c["metadata"]["name"] == obj.name + "-page"
                                                 for c in children.get("ConfigMap", ()))


def phase_is_declared(obj: Any, children: Children) -> bool:
    """status.phase is one of the declared summaries"""
    return obj.status.get("phase") in (None, "Pending", "Deploying", "Ready", "Failed")


def at_most_one_deployment(obj: Any, children: Children) -> bool:
    """a Website has at most one Deployment, named after it"""
    deps = children.get("Deployment", ())
    return len(deps) <= 1 and all(d["metadata"]["name"] == obj.name for d in deps)


INVARIANTS = (page_before_deployment, phase_is_declared, at_most_one_deployment)


def website(*, states: Sequence[State] | None = None, edges: Sequence[Edge] | None = None,
            invariants: Sequence[Any] = INVARIANTS) -> Lifecycle[Any]:
    """The tutorial's lifecycle declared again with its own functions (and invariants); a test swaps a part."""
    lc = W.WEBSITE
    return Lifecycle("website", resource=lc.resource, summary_field="phase", conditions=("Ready",), invalid="Ready",
                     parse=W.parse, owns=lc.owns, states=states or lc.state_table, edges=edges or W.WEBSITE.edges,
                     invariants=invariants)


def world(lc: Lifecycle[Any], **kw: Any) -> ModelWorld:
    return ModelWorld(lc, resources=(HELLO,), edits=(new_message, new_replicas),
                      children=(ChildModel("Deployment", progress=(rolls_out,), faults=(loses_a_replica,)),),
                      goal=lambda obj, children: obj.status.get("phase") == "Ready", **kw)


# ------------------------------------------------------------------ the tutorial holds

def test_the_tutorial_holds_under_faults_stale_caches_kills_and_two_writers():
    check_lifecycle(world(website()), max_examples=300, steps=50)


def test_a_scripted_run_reaches_ready_and_deletion_leaves_nothing():
    c = ModelCluster(world(website()))
    key = c.add(HELLO)
    assert c.run_pass("runner-0", key)
    assert c.state(key) == "Deploying"
    assert {k for k, _ in c.objects} == {"Website", "ConfigMap", "Deployment"}
    c.settle()
    assert c.state(key) == "Ready"
    assert c.resource(key).status.get("phase") == "Ready"
    # A second writer that read before the first one's write loses with a 409 and applies nothing after it.
    c.edit(key)
    assert c.begin("runner-1", key)
    assert c.run_pass("runner-0", key)
    writes = c.writes
    assert not c.finish("runner-1")
    assert c.conflicts == 1 and c.writes == writes
    c.delete(key)
    c.settle()
    assert c.objects == {}


def test_an_invariant_must_be_named():
    with pytest.raises(LifecycleError, match="invariant needs a name"):
        website(invariants=(lambda obj, children: True,))


# ------------------------------------------------------------------ planted bugs are caught

@attrs.frozen
class CreateNow:
    """A lifecycle's own action that creates in the ``before`` phase: before the record is written."""

    manifest: Mapping[str, Any]
    phase = "before"


def ensure_site_early(f: Any, data: Any, out: list[Any]) -> Any:
    inner: list[Any] = []
    W.ensure_site(f, data, inner)
    out.extend(CreateNow(a.manifest) if isinstance(a, Create) else a for a in inner)
    return data


def ensure_site_unowned(f: Any, data: Any, out: list[Any]) -> Any:
    inner: list[Any] = []
    W.ensure_site(f, data, inner)
    out.extend(attrs.evolve(a, owned=False) if isinstance(a, Create) and a.kind == "ConfigMap" else a for a in inner)
    return data


def ensure_site_deployment_first(f: Any, data: Any, out: list[Any]) -> Any:
    inner: list[Any] = []
    W.ensure_site(f, data, inner)
    out.extend(sorted(inner, key=lambda a: getattr(a, "kind", "") != "Deployment"))
    return data


def with_ensure(step: Any) -> tuple[State, ...]:
    return tuple(attrs.evolve(s, ensure=(step,)) if s.ensure else s for s in W.WEBSITE.state_table)


def render_create_now(a: Any, obj: Any) -> list[Any]:
    return [Create(a.manifest)]


def caught(w: ModelWorld) -> ModelViolation:
    with pytest.raises(ModelViolation) as info:
        check_lifecycle(w, max_examples=200, steps=40, shrink=False)
    return info.value


def test_caught_a_create_before_the_record_is_persisted():
    v = caught(world(website(states=with_ensure(ensure_site_early)), render=render_create_now))
    assert v.check == "record-before-create", v


def test_caught_a_state_re_entered_in_one_pass():
    # Failed -> Deploying on a valid spec: the deadline sends Deploying to Failed and the same pass comes back,
    # restarting the deadline's clock for ever.
    edges = (*W.WEBSITE.edges, Edge("Failed", "Deploying", W.spec_valid))
    v = caught(world(website(edges=edges)))
    assert v.check == "re-entry", v
    assert "Deploying -> Failed -> Deploying" in str(v)


def test_caught_a_child_its_deletion_would_not_clean_up():
    v = caught(world(website(states=with_ensure(ensure_site_unowned))))
    assert v.check == "cleanup", v
    assert "ConfigMap" in str(v)


def test_caught_an_author_invariant_broken():
    v = caught(world(website(states=with_ensure(ensure_site_deployment_first))))
    assert v.check == "invariant:page_before_deployment", v


def test_caught_a_lifecycle_that_never_settles():
    # Ready is left whenever the site is ready: Deploying <-> Ready for ever, one step per pass.
    def site_ready_flaps(f: Any) -> bool:
        return W.site_ready(f)

    edges = tuple(Edge("Ready", "Deploying", site_ready_flaps) if e.sources == ("Ready",) else e
                  for e in W.WEBSITE.edges)
    v = caught(world(website(edges=edges)))
    assert v.check == "liveness", v


def test_a_deadline_that_fires_goes_to_failed_and_recovers():
    c = ModelCluster(world(website()))
    key = c.add(HELLO)
    c.run_pass("runner-0", key)
    c.advance(timedelta(minutes=11))
    c.run_pass("runner-0", key)
    assert c.state(key) == "Failed"
    assert any(r == "DeployTimedOut" for _, r, _ in c.events)
    c.settle()
    assert c.state(key) == "Ready"


def test_caught_a_guard_that_reads_the_clock():
    @guard
    def site_ready_by_the_clock(f: Any) -> bool:
        return W.site_ready(f) and time.time() > 0

    edges = tuple(Edge(e.source, e.dest, site_ready_by_the_clock) if e.guard is W.site_ready else e
                  for e in W.WEBSITE.edges)
    v = caught(world(website(edges=edges)))
    assert v.check == "purity", v
    assert "time.time()" in str(v)


def test_caught_a_status_that_does_not_survive_persistence():
    def last_pass(f: Any) -> dict[str, Any]:
        return {"lastPass": f.now}  # a datetime: the in-memory status holds what no API server stores

    states = tuple(attrs.evolve(s, fields=last_pass) if s.name == "Ready" else s for s in W.WEBSITE.state_table)
    v = caught(world(website(states=states)))
    assert v.check == "rebuild", v


def test_caught_a_step_that_reads_the_wall_clock():
    def ensure_site_stamped(f: Any, data: Any, out: list[Any]) -> Any:
        datetime.now(timezone.utc)  # a step must use f.now
        return W.ensure_site(f, data, out)

    v = caught(world(website(states=with_ensure(ensure_site_stamped))))
    assert v.check == "purity", v
    assert "datetime.now()" in str(v)


def test_the_tutorial_with_its_record_in_an_annotation_holds_too():
    lc = W.WEBSITE
    annotated = Lifecycle("website", resource=lc.resource, summary_field="phase", conditions=("Ready",),
                          invalid="Ready", parse=W.parse, owns=lc.owns, states=lc.state_table, edges=lc.edges,
                          record=RecordFormat(store=AnnotationStore()), invariants=INVARIANTS)
    check_lifecycle(world(annotated), max_examples=60, steps=40)
    c = ModelCluster(world(annotated))
    key = c.add(HELLO)
    c.settle()
    assert c.state(key) == "Ready"
    doc = c.objects[("Website", key)]
    assert "workspace-fsm.io/lifecycle" in doc["metadata"]["annotations"]
    assert not any(cond["type"] == "workspace-fsm/Lifecycle" for cond in doc["status"]["conditions"])
