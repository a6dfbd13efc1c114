"""Reliability, CI-sized and seeded: the runner is a separate process, killed with SIGKILL at chosen API
calls (between two calls, in flight, inside a status write) and at random moments, and served API faults,
while Workspaces are created, changed and deleted. The invariants are checked by the harness on every
change the API server stores (workspace_fsm.testing.chaos); the first tests show that the checker does
catch each kind of violation, so that a clean report means something."""

from __future__ import annotations

import json

import pytest

from workspace_fsm.testing.chaos import ChaosConfig, ChaosRun, FaultRates, Invariants, _missing
from workspace_fsm.testing.faults import RequestInfo
from workspace_fsm.testing.store import Event

NC = ("karpenter.sh", "nodeclaims")


def claim(name: str, ws: str, ready: bool = False, node: str | None = None) -> dict:
    return {"metadata": {"name": name, "labels": {"kaito.sh/workspace": ws, "kaito.sh/workspacenamespace": "default"}},
            "status": {"nodeName": node, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def workspace(name: str, rec: dict | None, gen: int = 1, state: str | None = None) -> dict:
    conds = [] if rec is None else [{"type": "workspace-fsm/Lifecycle", "status": "True", "reason": "Pending",
                                     "message": json.dumps(rec)}]
    return {"metadata": {"name": name, "namespace": "default", "generation": gen, "uid": "u-" + name},
            "status": {"state": state, "conditions": conds}}


def ev(resource, etype, obj, prev=None, rev=1):
    return Event(rev, resource, etype, obj, prev)


def test_checker_catches_nodeclaims_over_target_and_reused_names():
    inv = Invariants()
    inv.expect("default/w", "inference", 2)
    inv.on_event(ev(NC, "ADDED", claim("w-1", "w")))
    inv.on_event(ev(NC, "ADDED", claim("w-2", "w")))
    assert inv.count == 0
    inv.on_event(ev(NC, "ADDED", claim("w-3", "w")))
    assert inv.count == 1 and inv.over_target_max == 1 and "3 NodeClaims exist, target 2" in inv.violations[0]
    inv.on_event(ev(NC, "DELETED", claim("w-3", "w")))
    inv.on_event(ev(NC, "ADDED", claim("w-3", "w")))  # the same name created again
    assert inv.duplicates == 1 and inv.count == 3


def test_checker_catches_a_workload_before_nodes_and_plugins_are_ready_and_two_jobs():
    inv = Invariants()
    inv.expect("default/t", "tuning", 1)
    labels = {"kaito.sh/workspace": "t", "kaito.sh/workspacenamespace": "default"}
    job = {"metadata": {"name": "t", "labels": labels, "annotations": {"workspace.kaito.io/revision": "r1"}}}
    inv.on_event(ev(NC, "ADDED", claim("t-1", "t", ready=True, node="n1")))
    inv.on_event(ev(("", "nodes"), "ADDED", {"metadata": {"name": "n1"}, "status": {
        "conditions": [{"type": "Ready", "status": "True"}], "capacity": {}}}))
    inv.on_event(ev(("batch", "jobs"), "ADDED", job))  # Node Ready, but no GPU capacity yet
    assert inv.count == 1 and "0 of 1 nodes Ready with GPU capacity" in inv.violations[0]
    inv.on_event(ev(("", "nodes"), "MODIFIED", {"metadata": {"name": "n1"}, "status": {
        "conditions": [{"type": "Ready", "status": "True"}], "capacity": {"nvidia.com/gpu": "1"}}}))
    job2 = json.loads(json.dumps(job))
    job2["metadata"]["name"] = "t-2"
    inv.on_event(ev(("batch", "jobs"), "ADDED", job2))
    assert inv.count == 2 and "2 Jobs exist at once" in inv.violations[1]


def test_checker_catches_a_lost_or_rolled_back_record_and_a_pruned_status_field():
    inv = Invariants()
    inv.expect("default/w", "inference", 1)
    ws = ("kaito.sh", "workspaces")
    a = workspace("w", {"v": 1, "state": "NodesProvisioning", "gen": 1, "seq": 2})
    inv.on_event(ev(ws, "ADDED", a))
    b = workspace("w", {"v": 1, "state": "NodesProvisioning", "gen": 1, "seq": 1})
    inv.on_event(ev(ws, "MODIFIED", b, a))
    assert inv.lost == 1 and "sequence went back" in inv.violations[0]
    c = workspace("w", None)
    inv.on_event(ev(ws, "MODIFIED", c, b))
    assert inv.lost == 2 and "record disappeared" in inv.violations[1]
    # A status write whose field the API server dropped (pruning) is caught when compared with what was stored.
    written = {"status": {"conditions": [], "workspaceFsm": {"x": 1}}}
    inv.on_status_write(RequestInfo("update", "workspaces", "status", "kaito.sh", "default", "w",
                                    body=json.dumps(written).encode(), status_code=200))
    assert inv.lost == 3 and "status field status.workspaceFsm" in inv.violations[2]
    inv.on_status_write(RequestInfo("update", "workspaces", "status", "kaito.sh", "default", "w",
                                    body=json.dumps(written).encode(), status_code=409))  # not stored: not checked
    assert inv.lost == 3
    assert _missing({"a": [1, {"b": 2}]}, {"a": [1, {"b": 2}], "extra": 0}) is None
    assert _missing({"a": [1, {"b": 2}]}, {"a": [1, {"b": 3}]}) == "status.a[1].b"


def test_checker_records_goals_per_generation():
    inv = Invariants()
    inv.expect("default/w", "inference", 1)
    ws = ("kaito.sh", "workspaces")
    obj = workspace("w", {"v": 1, "state": "Ready", "gen": 1}, gen=1, state="Ready")
    obj["status"]["conditions"].append({"type": "WorkspaceSucceeded", "status": "True", "observedGeneration": 1})
    inv.on_event(ev(ws, "MODIFIED", obj))
    assert 1 in inv.ws["default/w"].goal_at and inv.ws["default/w"].outcome == "Ready"
    stale = workspace("w", {"v": 1, "state": "Ready", "gen": 1}, gen=2, state="Ready")
    stale["status"]["conditions"].append({"type": "WorkspaceSucceeded", "status": "True", "observedGeneration": 1})
    inv.on_event(ev(ws, "MODIFIED", stale))
    assert 2 not in inv.ws["default/w"].goal_at  # Ready for an older generation is not the goal


def check(report) -> None:
    summary = {k: v for k, v in report.to_dict().items() if k not in ("config",)}
    assert report.settled, f"not every Workspace reached its goal: {report.stuck}\n{summary}"
    assert report.violation_count == 0, f"invariants violated: {report.violations}\n{summary}"
    assert report.unexpected_exits == 0 and report.runner_tracebacks == 0, summary
    assert report.lost == 0 and report.duplicates == 0 and report.orphans == 0, summary
    assert report.nodeclaims_over_target_max == 0
    assert report.outcomes.get("deleted", 0) == report.deletions
    assert report.status_writes_checked > 0


@pytest.mark.slow
def test_sigkill_between_calls_in_flight_and_inside_status_writes(tmp_path):
    report = ChaosRun(ChaosConfig(seed=20261124, inference=16, tuning=6, spec_changes=5, deletions=4,
                                  request_kills=12, timer_kills=3, workdir=str(tmp_path))).run()
    check(report)
    # Each kind of kill landed at its point: the harness counts a kill under its kind only once the runner
    # died there (between two calls: the next request never sent; in flight: sent and applied, never
    # answered; inside a status write the server stored; as it sent a NodeClaim create the server then
    # held), and each death was followed by exactly one restart.
    for mode in ("between-calls", "in-flight", "in-status-write", "create-held"):
        assert report.kills.get(mode, 0) >= 1, f"no kill {mode}: {report.kills}"
    assert report.runner_starts == sum(report.kills.values()) + 1
    assert sum(report.kills.get(m, 0) for m in ("between-calls", "in-flight", "in-status-write", "create-held")) \
        <= 12  # never more than planned: no kill counted twice


@pytest.mark.slow
def test_api_faults_and_a_lagging_cache_with_kills(tmp_path):
    faults = FaultRates(conflict=0.08, error=0.05, throttle=0.05, retry_after=1, drop_watch=0.2,
                        compaction=0.05, latency=0.05, latency_s=0.5, lag_s=1.5)
    report = ChaosRun(ChaosConfig(seed=7, inference=14, tuning=6, spec_changes=4, deletions=3, request_kills=3,
                                  timer_kills=1, faults=faults, job_failure_rate=0.3, workdir=str(tmp_path))).run()
    check(report)
    for kind in ("conflict", "error 500", "429 Retry-After", "dropped watch", "latency spike", "watch lag"):
        assert report.faults_injected.get(kind, 0) > 0, f"no {kind} injected: {report.faults_injected}"
    assert report.early_retries == 0
    # The three kills planned (one of each of the first three kinds) landed where they are named: the
    # harness counts a kill under its kind only once the process died at that point (between two calls,
    # with a request in flight, inside a stored status write), and every death was followed by a restart.
    from workspace_fsm.testing.chaos import KILL_MODES

    for mode in KILL_MODES[:3]:
        assert report.kills.get(mode, 0) >= 1, f"no kill {mode}: {report.kills}"
    assert report.runner_starts == sum(report.kills.values()) + 1
