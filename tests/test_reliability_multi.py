"""Several runners at once against one API server (issue 10): a rollout runs two, an operator starts a
second by mistake. Each runner is a separate process under its own supervisor; the invariants are the
single-runner ones (workspace_fsm.testing.chaos), checked on every change the API server stores, above all
"no Workspace ever has more NodeClaims than its target": one more is a GPU VM nobody asked for.

The runners race on every new Workspace: they see it arrive together and decide on the same version, one
status write wins and the others get 409. What went wrong before the fix happened in the next moments,
between the winner's status write (which records the NodeClaims' names) and its creates landing. Two
things make that window as wide in CI as on a real cluster: NodeClaim creates take 0.5 s (admission
webhooks make them the slowest call there), and each runner has 20 workers, so that a runner that lost a
race looks again at once instead of behind its own queue of slow creates. With both, the code before the
fix (3c27626) failed both tests in every run tried (2 runners: 3 of 3, NodeClaims up to 3 over target;
3 runners with kills: 5 of 5, up to 2 over); without them, only now and then.
"""

from __future__ import annotations

import pytest

from workspace_fsm.testing.chaos import ChaosConfig, ChaosRun, FaultRates

SLOW_CREATES = FaultRates(slow_create=1.0, slow_create_s=0.5)


def check(report, runners: int) -> None:
    summary = {k: v for k, v in report.to_dict().items() if k not in ("config", "violations")}
    assert report.violation_count == 0, f"invariants violated: {report.violations[:10]}\n{summary}"
    assert report.nodeclaims_over_target_max == 0, summary
    assert report.settled, f"not every Workspace reached its goal: {report.stuck}\n{summary}"
    assert report.unexpected_exits == 0 and report.runner_tracebacks == 0, summary
    assert report.lost == 0 and report.duplicates == 0 and report.orphans == 0, summary
    assert report.ok, summary
    assert len(report.kills_per_runner) == runners and len(report.runner_starts_per_runner) == runners
    # Each runner started once, and once more after each of its deaths.
    assert report.runner_starts_per_runner == [k + 1 for k in report.kills_per_runner], summary
    assert report.status_writes_checked > 0


@pytest.mark.slow
def test_three_runners_at_once_with_kills(tmp_path):
    """3 runners, 20 Workspaces with 1-3 NodeClaims each, 10 SIGKILLs spread over the runners (at API calls of
    every kind and at random moments), spec changes and deletions."""
    report = ChaosRun(ChaosConfig(seed=20261201, runners=3, inference=20, tuning=0, spec_changes=3, deletions=2,
                                  request_kills=8, timer_kills=2, workers=20, faults=SLOW_CREATES,
                                  workdir=str(tmp_path))).run()
    check(report, 3)
    # 10 are planned; one aimed at a status write or a NodeClaim create lapses if all is done before it.
    assert sum(report.kills.values()) >= 6, report.kills
    assert sum(1 for k in report.kills_per_runner if k) >= 2, f"kills not spread: {report.kills_per_runner}"
    assert report.outcomes.get("deleted", 0) == report.deletions


@pytest.mark.slow
def test_two_runners_overlapping_as_in_a_rollout(tmp_path):
    """2 runners and no kills: the overlap of a rolling update, both working on the same 20 Workspaces."""
    report = ChaosRun(ChaosConfig(seed=3, runners=2, inference=20, tuning=0, spec_changes=0, deletions=0,
                                  request_kills=0, timer_kills=0, workers=20, faults=SLOW_CREATES,
                                  workdir=str(tmp_path))).run()
    check(report, 2)
    assert report.kills_per_runner == [0, 0] and report.runner_starts == 2
    assert report.outcomes == {"Ready": 20}
