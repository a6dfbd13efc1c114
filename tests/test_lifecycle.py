"""The state table, its shared machine, and the docs generated from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from workspace_fsm.kaito import workspace as lifecycle
from workspace_fsm.cli.diagram import lifecycle_markdown
from workspace_fsm.kaito.model import Job, Workload
from workspace_fsm.kaito.workspace import EDGES, MACHINE, STATE_TABLE, STATES, step, step_via_trigger

ROOT = Path(__file__).resolve().parents[1]


def test_docs_lifecycle_md_is_generated_from_the_live_table():
    on_disk = (ROOT / "docs" / "lifecycle.md").read_text()
    assert on_disk == lifecycle_markdown(), (
        "docs/lifecycle.md drifted from the Workspace lifecycle (workspace_fsm/kaito/workspace.py); regenerate it with "
        "`workspace-fsm diagram --markdown > docs/lifecycle.md`")


def test_diagram_names_every_state_and_guard():
    text = lifecycle.mermaid()
    for s in STATE_TABLE:
        assert f'state "{s.name}"' in text
    for e in EDGES:
        for source in e.sources:
            assert f"{source} --> {e.dest}: [{e.guard.__name__}]" in text


def test_diagram_command_prints_mermaid():
    out = subprocess.run([sys.executable, "-m", "workspace_fsm.cli", "diagram"], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("---") and "stateDiagram-v2" in out and "Pending --> NodesProvisioning" in out


def test_machine_holds_exactly_the_table():
    assert list(MACHINE.states) == [s.name for s in STATE_TABLE]
    edges = [(t.source, t.dest) for ts in MACHINE.events[lifecycle.TRIGGER].transitions.values() for t in ts]
    assert sorted(edges) == sorted((source, e.dest) for e in EDGES for source in e.sources)


def test_every_waiting_state_has_a_deadline_and_a_consequence():
    waiting = {"NodesProvisioning", "PluginsReady", "WorkloadDeploying", "JobRunning", "JobReplacing", "Deleting"}
    for name in waiting:
        s = STATES[name]
        assert s.deadline is not None and s.deadline.then is not None and s.deadline.reason, name


def test_every_state_is_reachable_from_pending():
    seen, todo = {"Pending"}, ["Pending"]
    while todo:
        cur = todo.pop()
        for e in EDGES:
            if cur in e.sources and e.dest not in seen:
                seen.add(e.dest)
                todo.append(e.dest)
    assert seen == set(STATES)


_revisions = st.sampled_from(["r1", "r2"])


@st.composite
def guard_inputs(draw):
    """Just the attributes the guards read, drawn freely (including combinations no cluster produces)."""
    from datetime import datetime as _dt, timezone as _tz

    deleting = draw(st.booleans())
    ws = SimpleNamespace(valid=draw(st.booleans()), deleting=deleting,
                         metadata=SimpleNamespace(name="ws", deletion_timestamp=_dt(2026, 1, 1, tzinfo=_tz.utc)
                                                  if deleting else None))
    workload = draw(st.none() | st.builds(Workload, kind=st.just("Deployment"), name=st.just("ws"),
                                           replicas=st.integers(1, 3), ready_replicas=st.integers(0, 3),
                                           updated_replicas=st.integers(0, 3), revision=_revisions,
                                           deleting=st.booleans()))
    job = draw(st.none() | st.builds(Job, name=st.just("ws"), revision=_revisions, complete=st.booleans(),
                                     failed_permanently=st.booleans(), deleting=st.booleans()))
    absent = draw(st.frozensets(st.sampled_from(["Job/ws", "Workload/ws", "NodeClaim/a"])))
    nodes_ready = draw(st.booleans())
    from datetime import datetime, timedelta, timezone

    from workspace_fsm.kaito.workspace import DEFAULT_CONFIG
    from workspace_fsm.kaito.model import NodeClaim

    epoch = datetime(2026, 1, 1, tzinfo=timezone.utc)
    claims = tuple(NodeClaim(name=f"c{i}", workspace_key="default/ws", instance_type="x", deleting=d)
                   for i, d in enumerate(draw(st.lists(st.booleans(), max_size=2))))
    from workspace_fsm.kaito.estimator import SizingProblem
    from workspace_fsm.kaito.workspace import Sizing

    # Sized: kept (None), computed, not sizable, or waiting for the inference ConfigMap.
    sizing = draw(st.sampled_from([None, Sizing(2, "estimated"),
                                   Sizing(0, problem=SizingProblem("GPUMemoryTooSmall", "m")),
                                   Sizing(0, waiting_for="ConfigMap/params")]))
    return SimpleNamespace(
        ws=ws, obj=ws, snap=SimpleNamespace(workload=workload, job=job, absent=absent), sizing=sizing, target=2,
        rec=SimpleNamespace(data=SimpleNamespace(revision=draw(st.none() | _revisions)),
                            entered_at=draw(st.none() | st.just(epoch))),
        now=epoch + timedelta(seconds=draw(st.sampled_from([0, 5, 10, 60]))), config=DEFAULT_CONFIG,
        claims=claims, gone=draw(st.sampled_from([frozenset(), frozenset({"c9"})])),
        revision=draw(_revisions),
        nodes_ready=nodes_ready, gpus_ready=nodes_ready and draw(st.booleans()), is_tuning=draw(st.booleans()))


@settings(max_examples=300, deadline=None)
@given(state=st.sampled_from([s.name for s in STATE_TABLE]), facts=guard_inputs())
def test_direct_step_agrees_with_transitions_dispatch(state, facts):
    """`step` reads the machine's transition list directly; it must pick what Event.trigger picks."""
    assert step(state, facts) == step_via_trigger(state, facts)
