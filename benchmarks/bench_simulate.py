"""Simulator benchmarks: the default scenario (all three designs) and 10,000 Workspaces with 5 workers (fsm).

Prints one JSON object. Each case runs in a fresh process so that its peak memory (max RSS) is its own.

    python benchmarks/bench_simulate.py [--large 10000] [--skip-large]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import attrs


def _case(workspaces: int, mode: str, scenario: str | None) -> dict:
    from workspace_fsm.adapters.simulated.harness import run_mode
    from workspace_fsm.adapters.simulated.params import Scenario

    sc = Scenario.from_yaml(scenario) if scenario else Scenario.default()
    sc = attrs.evolve(sc, workspaces=workspaces)
    r = run_mode(sc, mode)
    r.pop("_goals", None)
    r["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return r


def _run_case(workspaces: int, mode: str, scenario: str | None) -> dict:
    cmd = [sys.executable, __file__, "--case", str(workspaces), mode] + ([scenario] if scenario else [])
    print(f"bench_simulate: {workspaces} Workspaces, mode {mode}{', ' + scenario if scenario else ''} ...",
          file=sys.stderr, flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--large", type=int, default=10_000, help="Workspaces in the large case (fsm only)")
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--case", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        n, mode, *scenario = args.case
        print(json.dumps(_case(int(n), mode, scenario[0] if scenario else None)))
        return 0
    default = {m: _run_case(100, m, None) for m in ("fsm", "blocking", "poller")}
    f, b, p = default["fsm"], default["blocking"], default["poller"]
    report = {
        "default": {
            "results": default,
            "fsm_makespan_over_critical_path": f["makespan_over_critical_path"],
            "fsm_slowdown_p99": f["slowdown_p99"],
            "blocking_over_fsm_makespan": round(b["makespan_s"] / f["makespan_s"], 3),
            "blocking_model_bound": round((100 / 5) * f["chain_mean_s"] / f["chain_max_s"], 3),
            "fsm_over_poller_reconciles": round(f["reconciles"] / p["reconciles"], 3),
        },
    }
    stale = _run_case(100, "fsm", "examples/scenarios/stale-cache.yaml")
    report["stale_cache_30s_3_nodes"] = {k: stale[k] for k in ("nodeclaims_over_target_max", "nodeclaims_created",
                                                                "makespan_over_critical_path", "reached_goal")}
    if not args.skip_large:
        large = _run_case(args.large, "fsm", None)
        report["large"] = {"workspaces": args.large, "workers": 5, **{k: large[k] for k in (
            "makespan_s", "critical_path_s", "makespan_over_critical_path", "slowdown_p99", "reached_goal",
            "reconciles_per_workspace", "api_reads", "api_writes", "nodeclaims_over_target_max", "wall_s",
            "peak_rss_mib")}}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
