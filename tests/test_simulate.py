"""The 100-Workspace claim, on the simulated cluster: deterministic virtual-time results, not wall-clock timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from workspace_fsm.adapters.simulated.harness import run_mode
from workspace_fsm.adapters.simulated.params import Scenario

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "examples" / "scenarios"


@pytest.fixture(scope="module")
def default_results():
    sc = Scenario.default()
    return {m: run_mode(sc, m) for m in ("fsm", "blocking", "poller")}


def test_fsm_finishes_at_the_critical_path(default_results):
    fsm = default_results["fsm"]
    assert fsm["reached_goal"] == fsm["workspaces"] == 100
    assert fsm["makespan_s"] <= 1.01 * fsm["critical_path_s"]
    assert fsm["slowdown_p99"] <= 1.05
    assert fsm["nodeclaims_over_target_max"] == 0


def test_blocking_design_makes_workspaces_wait_in_line(default_results):
    fsm, blocking = default_results["fsm"], default_results["blocking"]
    assert blocking["reached_goal"] == 100
    assert blocking["makespan_s"] >= 10 * fsm["makespan_s"]
    # With every wait held by a worker, the model's bound is about (N / W) x mean chain / longest chain.
    bound = (100 / 5) * fsm["chain_mean_s"] / fsm["chain_max_s"]
    assert 0.8 * bound <= blocking["makespan_s"] / fsm["makespan_s"] <= 1.05 * bound
    assert blocking["workers_busy_share"] > 0.9


def test_events_not_timers(default_results):
    fsm, poller = default_results["fsm"], default_results["poller"]
    assert fsm["reconciles"] <= 0.5 * poller["reconciles"]
    assert fsm["time_to_goal_p50_s"] <= poller["time_to_goal_p50_s"]
    assert fsm["time_to_goal_p95_s"] <= poller["time_to_goal_p95_s"] + 1.0
    assert fsm["api_reads"] <= poller["api_reads"]


def test_stale_cache_never_creates_extra_nodeclaims():
    sc = Scenario.from_yaml(SCENARIOS / "stale-cache.yaml")
    assert sc.params.cache_lag_s == 30 and sc.nodes_per_workspace == (3, 3)
    r = run_mode(sc, "fsm")
    assert r["nodeclaims_over_target_max"] == 0
    assert r["nodeclaims_created"] == 300
    assert r["reached_goal"] == 100


def test_churn_scenario_settles_without_extra_nodeclaims():
    r = run_mode(Scenario.from_yaml(SCENARIOS / "mixed-churn.yaml"), "fsm")
    assert r["settled"]
    assert r["nodeclaims_over_target_max"] == 0


def test_runs_are_deterministic_from_the_seed():
    sc = attrs.evolve(Scenario.default(), workspaces=30)
    a, b = run_mode(sc, "fsm"), run_mode(sc, "fsm")
    for r in (a, b):
        r.pop("wall_s")
        r.pop("_goals")
    assert a == b
    c = run_mode(attrs.evolve(sc, seed=2), "fsm")
    assert c["makespan_s"] != a["makespan_s"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workspace_fsm.cli", "simulate", *args], capture_output=True,
                          text=True, timeout=300)


def test_simulate_json_has_the_documented_shape():
    p = _cli("--workspaces", "20", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert {"workspaces", "workers", "seed", "scenario", "results"} <= set(d)
    assert d["workspaces"] == 20 and d["workers"] == 5 and d["seed"] == 1
    assert set(d["results"]) == {"fsm", "blocking", "poller"}
    for r in d["results"].values():
        for key in ("makespan_s", "critical_path_s", "chain_mean_s", "slowdown_p50", "slowdown_p99", "reached_goal",
                    "reconciles", "api_reads", "api_writes", "nodeclaims_created", "nodeclaims_over_target_max",
                    "wall_s"):
            assert key in r, key
    assert d["ratios"]["makespan_blocking_over_fsm"] > 1


def test_simulate_table_and_plot(tmp_path):
    out = tmp_path / "sim.png"
    p = _cli("--workspaces", "10", "--mode", "all", "--plot", str(out))
    assert p.returncode == 0, p.stderr
    assert "makespan" in p.stdout and "blocking" in p.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = tmp_path / "sim.svg"
    assert _cli("--workspaces", "5", "--mode", "fsm", "--plot", str(svg)).returncode == 0
    assert b"<svg" in svg.read_bytes()[:400]


def test_a_bad_scenario_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("workspaces: 10\nparams:\n  latencies:\n    nodeclaim_ready: fast\n")
    p = _cli("--scenario", str(bad))
    assert p.returncode == 2
    assert "params.latencies.nodeclaim_ready" in p.stderr and "Traceback" not in p.stderr
    p = _cli("--scenario", str(tmp_path / "missing.yaml"))
    assert p.returncode == 2 and "missing.yaml" in p.stderr and "cannot be read" in p.stderr
    p = _cli("--workspaces", "0")
    assert p.returncode == 2 and "population is empty" in p.stderr and "Traceback" not in p.stderr
    p = _cli("--workspaces", "-1")
    assert p.returncode == 2 and "0 or more" in p.stderr
