"""The reliability harness's checker (workspace_fsm.testing.chaos) catches each kind of violation it claims
to: fed the API server's events (or the runner's requests) of one violation, it counts it and says what
happened. tests/test_reliability_chaos.py shows NodeClaims over target, a reused NodeClaim name, a
workload before its nodes, two Jobs at once, a lost or rolled-back NodeClaim sequence and a pruned status
field; this file shows the rest:

- the record's generation going back ............ test_a_record_generation_that_goes_back
- a second workload or Job of one revision ....... test_a_second_workload_or_job_of_one_revision
- a request sooner than a 429's Retry-After ...... test_a_request_before_the_retry_after_it_was_given
- objects left after their Workspace is gone ..... test_nodeclaims_left_after_their_workspace_is_gone
- Failed outcomes that nothing explains .......... test_failed_outcomes_that_their_job_does_not_explain

- KAITO's conditions' observedGeneration going back  test_a_condition_observed_generation_that_goes_back
- a workload or Job left after its Workspace ..... test_a_job_left_after_its_workspace_is_gone
- a deadline failure whose record names none ..... test_a_deadline_failure_whose_record_names_no_deadline

(The last three were promised by the harness's description and not checked at first; they were strict
xfails until the checker gained them.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from workspace_fsm.testing import chaos
from workspace_fsm.testing.chaos import ChaosConfig, ChaosReport, ChaosRun, FaultRates, Invariants
from workspace_fsm.testing.faults import RequestInfo
from workspace_fsm.testing.store import Event

NC = ("karpenter.sh", "nodeclaims")
WS = ("kaito.sh", "workspaces")
NODES = ("", "nodes")
JOBS = ("batch", "jobs")
DEPLOYMENTS = ("apps", "deployments")
LABELS = {"kaito.sh/workspace": "w", "kaito.sh/workspacenamespace": "default"}


def ev(resource, etype, obj, prev=None, rev=1):
    return Event(rev, resource, etype, obj, prev)


def workspace(rec: dict | None, *, gen: int = 1, state: str | None = None, conditions: list | None = None,
              name: str = "w") -> dict:
    conds = list(conditions or [])
    if rec is not None:
        conds.append({"type": "workspace-fsm/Lifecycle", "status": "True", "reason": rec.get("state", "Pending"),
                      "message": json.dumps(rec)})
    return {"metadata": {"name": name, "namespace": "default", "generation": gen, "uid": "u-" + name},
            "status": {"state": state, "conditions": conds}}


def succeeded(status: str, gen: int, reason: str = "", message: str = "") -> dict:
    return {"type": "WorkspaceSucceeded", "status": status, "observedGeneration": gen, "reason": reason,
            "message": message}


def ready_nodes(inv: Invariants, n: int = 1) -> None:
    """NodeClaims of default/w Ready on Nodes with GPU capacity, so that creating on them is allowed."""
    for i in range(n):
        inv.on_event(ev(NC, "ADDED", {"metadata": {"name": f"w-{i}", "labels": LABELS},
                                      "status": {"nodeName": f"n{i}",
                                                 "conditions": [{"type": "Ready", "status": "True"}]}}))
        inv.on_event(ev(NODES, "ADDED", {"metadata": {"name": f"n{i}"}, "status": {
            "conditions": [{"type": "Ready", "status": "True"}], "capacity": {"nvidia.com/gpu": "1"}}}))


def owned(name: str, revision: str, *, failed: str | None = None, uid: str = "u-w") -> dict:
    obj = {"metadata": {"name": name, "labels": LABELS, "annotations": {"workspace.kaito.io/revision": revision},
                        "ownerReferences": [{"kind": "Workspace", "name": "w", "uid": uid}]}}
    if failed is not None:
        obj["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": failed}]}
    return obj


class _Supervisor:
    """What ``ChaosRun._finish`` reads of the runner's supervisor: one start, nothing unexpected."""

    starts = 1
    unexpected: list[str] = []


def finish(run: ChaosRun, tmp_path: Path) -> ChaosReport:
    run.sups = [_Supervisor()]  # the run's supervisors (``sup`` is the first one's)
    if not isinstance(getattr(type(run), "sup", None), property):
        run.sup = run.sups[0]
    report = ChaosReport(config={}, logs=str(tmp_path), settled=True)
    run._finish(report, time.monotonic())
    return report


# ============================================================================ generation rollback


def test_a_record_generation_that_goes_back():
    inv = Invariants()
    inv.expect("default/w", "inference", 1)
    gen2 = workspace({"v": 1, "state": "NodesProvisioning", "gen": 2}, gen=2)
    inv.on_event(ev(WS, "ADDED", gen2))
    forward = workspace({"v": 1, "state": "WorkloadDeploying", "gen": 2}, gen=2)
    inv.on_event(ev(WS, "MODIFIED", forward, gen2))
    assert inv.count == 0 and inv.lost == 0  # same generation, state moving on: fine
    stale = workspace({"v": 1, "state": "Ready", "gen": 1}, gen=2)  # a runner wrote what it decided for gen 1
    inv.on_event(ev(WS, "MODIFIED", stale, forward))
    assert inv.lost == 1 and inv.count == 1
    assert inv.violations == ["default/w: the record's generation went back from 2 to 1"]


def test_a_condition_observed_generation_that_goes_back():
    inv = Invariants()
    inv.expect("default/w", "inference", 1)
    rec = {"v": 1, "state": "Ready", "gen": 2}
    new = workspace(rec, gen=2, state="Ready", conditions=[succeeded("True", 2)])
    inv.on_event(ev(WS, "ADDED", new))
    old = workspace(rec, gen=2, state="Ready", conditions=[succeeded("True", 1)])
    inv.on_event(ev(WS, "MODIFIED", old, new))
    assert inv.count == 1


# ============================================================================ a second workload or Job of one revision


@pytest.mark.parametrize("resource, plural", [(DEPLOYMENTS, "deployment"), (JOBS, "job")])
def test_a_second_workload_or_job_of_one_revision(resource, plural):
    inv = Invariants()
    inv.expect("default/w", "tuning" if plural == "job" else "inference", 1)
    ready_nodes(inv)
    inv.on_event(ev(resource, "ADDED", owned("w", "r1")))
    inv.on_event(ev(resource, "DELETED", owned("w", "r1")))
    inv.on_event(ev(resource, "ADDED", owned("w", "r2")))  # a new revision: a new object, as it should be
    assert inv.count == 0 and inv.duplicates == 0
    inv.on_event(ev(resource, "DELETED", owned("w", "r2")))
    inv.on_event(ev(resource, "ADDED", owned("w", "r2")))  # the same revision made again
    assert inv.duplicates == 1 and inv.count == 1
    assert inv.violations == [f"default/w: {plural} w of revision r2 was created a second time"]


def test_a_workload_of_a_recreated_workspace_is_not_a_duplicate():
    """Same name and revision, but another owner (the Workspace was deleted and created again): not a duplicate."""
    inv = Invariants()
    inv.expect("default/w", "inference", 1)
    ready_nodes(inv)
    inv.on_event(ev(DEPLOYMENTS, "ADDED", owned("w", "r1", uid="u-first")))
    inv.on_event(ev(DEPLOYMENTS, "DELETED", owned("w", "r1", uid="u-first")))
    inv.on_event(ev(DEPLOYMENTS, "ADDED", owned("w", "r1", uid="u-second")))
    assert inv.duplicates == 0 and inv.count == 0


# ============================================================================ Retry-After


class FakeTime:
    """Stands in for the ``time`` module inside the harness: a monotonic clock that moves when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def request(verb: str, name: str, resource: str = "workspaces", subresource: str | None = None) -> RequestInfo:
    return RequestInfo(verb, resource, subresource, "kaito.sh", "default", name, user_agent="workspace-fsm/1")


def test_a_request_before_the_retry_after_it_was_given(monkeypatch, tmp_path):
    clock = FakeTime()
    monkeypatch.setattr(chaos, "time", clock)
    run = ChaosRun(ChaosConfig(faults=FaultRates(throttle=0.1, retry_after=5)))
    run._throttle_fired(request("get", "w"))  # the runner was told: 429, Retry-After 5
    clock.now += 4.0
    run._before(request("update", "other"))  # another Workspace: not held
    assert run.early_retries == 0
    run._before(request("update", "w", subresource="status"))  # 1 s too soon
    assert run.early_retries == 1
    assert run.inv.violations == ["default/w: update workspaces/status w came 1.00s before the Retry-After it was given"]
    clock.now += 1.0
    run._before(request("get", "w"))  # on time
    run._before(request("get", "w"))
    assert run.early_retries == 1 and run.inv.count == 1
    report = finish(run, tmp_path)
    assert report.early_retries == 1 and report.violation_count == 1 and not report.ok
    assert "before the Retry-After" in report.violations[0]


# ============================================================================ orphans


def test_nodeclaims_left_after_their_workspace_is_gone(tmp_path):
    run = ChaosRun(ChaosConfig())
    inv = run.inv
    inv.expect("default/w", "inference", 1)
    inv.expect("default/kept", "inference", 1)
    inv.on_event(ev(WS, "ADDED", workspace(None)))
    ready_nodes(inv)
    inv.on_event(ev(NC, "ADDED", {"metadata": {"name": "kept-0", "labels": {
        "kaito.sh/workspace": "kept", "kaito.sh/workspacenamespace": "default"}}}))
    inv.ws["default/w"].delete_requested = time.monotonic()
    inv.on_event(ev(WS, "DELETED", workspace(None)))  # its finalizer removed with w-0 still there
    inv.on_event(ev(NC, "ADDED", {"metadata": {"name": "stray-0", "labels": {  # for a Workspace nobody made
        "kaito.sh/workspace": "stray", "kaito.sh/workspacenamespace": "default"}}}))
    assert run._pending() == ["default/w: deleted, but NodeClaims remain: ['w-0']",
                              "default/kept: generation 1 not at its goal; state None, machine state None"]
    report = finish(run, tmp_path)
    assert report.orphans == 2  # w-0 and stray-0; kept-0's Workspace still exists
    assert not report.ok
    assert report.outcomes["deleted"] == 1


def test_a_job_left_after_its_workspace_is_gone(tmp_path):
    run = ChaosRun(ChaosConfig())
    inv = run.inv
    inv.expect("default/w", "tuning", 1)
    ready_nodes(inv)
    inv.on_event(ev(JOBS, "ADDED", owned("w", "r1")))
    inv.on_event(ev(NC, "DELETED", {"metadata": {"name": "w-0", "labels": LABELS}}))  # its NodeClaim went
    inv.ws["default/w"].delete_requested = time.monotonic()
    inv.on_event(ev(WS, "DELETED", workspace(None)))
    assert finish(run, tmp_path).orphans == 1


# ============================================================================ unexplained Failed outcomes


def failed(inv: Invariants, reason: str, message: str = "", history: list | None = None) -> None:
    rec = {"v": 1, "state": "Failed", "gen": 1, **({"history": history} if history else {})}
    inv.on_event(ev(WS, "MODIFIED", workspace(rec, state="Failed", conditions=[succeeded("False", 1, reason, message)])))


@pytest.mark.parametrize("story, expected", [
    ("the Job never failed", "default/w: Failed with TuningJobFailed, but its Job has not failed"),
    ("the message hides the Job's reason",
     "default/w: Failed, but the message 'the tuning Job failed' does not give the Job's reason BackoffLimitExceeded"),
    ("an unspecific reason", "default/w: Failed with an unspecific or unexpected reason 'Error'"),
])
def test_failed_outcomes_that_their_job_does_not_explain(tmp_path, story, expected):
    run = ChaosRun(ChaosConfig())
    inv = run.inv
    inv.expect("default/w", "tuning", 1)
    ready_nodes(inv)
    if story != "the Job never failed":
        inv.on_event(ev(JOBS, "ADDED", owned("w", "r1", failed="BackoffLimitExceeded")))
    reason = "Error" if story == "an unspecific reason" else "TuningJobFailed"
    failed(inv, reason, "the tuning Job failed")
    assert inv.ws["default/w"].outcome == f"Failed:{reason}"
    report = finish(run, tmp_path)
    assert report.outcomes == {"Failed": 1}
    assert report.violations == [expected] and report.violation_count == 1 and not report.ok


def test_a_failure_its_job_explains_is_no_violation(tmp_path):
    run = ChaosRun(ChaosConfig())
    inv = run.inv
    inv.expect("default/w", "tuning", 1)
    ready_nodes(inv)
    inv.on_event(ev(JOBS, "ADDED", owned("w", "r1", failed="BackoffLimitExceeded")))
    failed(inv, "TuningJobFailed", "the tuning Job failed: BackoffLimitExceeded")
    report = finish(run, tmp_path)
    assert report.outcomes == {"Failed": 1} and report.violations == [] and report.ok


def test_a_deadline_failure_whose_record_names_no_deadline(tmp_path):
    run = ChaosRun(ChaosConfig())
    inv = run.inv
    inv.expect("default/w", "tuning", 1)
    ready_nodes(inv)
    failed(inv, "TuningJobDeadlineExceeded", history=[["JobRunning", "Failed", "2026-01-01T00:00:00Z", "job_failed"]])
    report = finish(run, tmp_path)
    assert report.violation_count == 1
