"""Reliability runs at full size: crash-restart and API faults, with the figures for docs/reliability.md.

    .venv/bin/python benchmarks/reliability.py                    # every row (about 13 minutes)
    .venv/bin/python benchmarks/reliability.py --rows crash       # one row
    .venv/bin/python benchmarks/reliability.py --rows multi       # 3 runners at once, with kills (about 80 s)
    .venv/bin/python benchmarks/reliability.py --quick            # every row, small (about 2 minutes)

Each row is one seeded run of workspace_fsm.testing.chaos (the runner as a separate process against the
test API server and the simulated cluster). Progress goes to stderr; the JSON report (one object per row,
with the time-to-goal degradation of each fault kind against the fault-free baseline of the same seed)
to stdout, or a Markdown table with --markdown. The exit status is 1 if any row broke an invariant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

from workspace_fsm.testing.chaos import ChaosConfig, ChaosRun, FaultRates

FAULT_ROWS: dict[str, FaultRates] = {
    "409 conflicts (10% of writes)": FaultRates(conflict=0.10),
    "500 errors (10% of requests)": FaultRates(error=0.10),
    "429 + Retry-After 1 s (10% of requests)": FaultRates(throttle=0.10, retry_after=1),
    "dropped watches (50% of watches)": FaultRates(drop_watch=0.5),
    "forced 410 on re-watch (watches cut at 50%, history compacted before 50% of watches)":
        FaultRates(drop_watch=0.5, compaction=0.5),
    "latency spikes of 2 s (10% of requests)": FaultRates(latency=0.10, latency_s=2.0),
    "cache lag 20 s (every watch event)": FaultRates(lag_s=20.0),
}
# Several runners at once race on every new Workspace; NodeClaim creates slowed as admission webhooks slow
# them on a real cluster keep open the window between one runner's status write and its creates landing.
MULTI_FAULTS = FaultRates(slow_create=1.0, slow_create_s=0.5)
MULTI_RUNNERS = 3
MULTI_WORKERS = 20  # per runner: one that lost a write race looks again at once, not behind slow creates
ALL_FAULTS = FaultRates(conflict=0.05, error=0.05, throttle=0.05, retry_after=1, drop_watch=0.2, compaction=0.05,
                        latency=0.05, latency_s=1.0, lag_s=5.0)


def rows(args: argparse.Namespace) -> list[tuple[str, str, ChaosConfig]]:
    q = args.quick
    n_crash = 40 if q else args.workspaces
    crash = ChaosConfig(seed=args.seed, inference=int(n_crash * 0.7), tuning=n_crash - int(n_crash * 0.7),
                        spec_changes=n_crash // 5, deletions=n_crash // 8, request_kills=9 if q else 60,
                        timer_kills=3 if q else 20, action_window_s=10.0 if q else 40.0, job_failure_rate=0.1,
                        settle_timeout_s=600.0)
    n_fault = 30 if q else 100
    base = ChaosConfig(seed=args.seed + 1, inference=int(n_fault * 0.7), tuning=n_fault - int(n_fault * 0.7),
                       spec_changes=0, deletions=0, request_kills=0, timer_kills=0, settle_timeout_s=600.0)
    out: list[tuple[str, str, ChaosConfig]] = [
        ("crash", "SIGKILL: between calls, in flight, in status writes, create held, at random", crash)]
    out.append(("faults", "baseline: no faults, no kills", base))
    for label, f in FAULT_ROWS.items():
        if q and f.lag_s:
            f = replace(f, lag_s=5.0)
            label = "cache lag 5 s (every watch event)"
        out.append(("faults", label, replace(base, faults=f)))
        if f.latency:  # a slow call holds its worker: more workers absorb the same spikes
            out.append(("faults", label.replace(")", "), 20 workers"), replace(base, faults=f, workers=20)))
        if f.error:  # a 500 on a create is ambiguous: the NodeClaim is replaced after Config.create_grace
            out.append(("faults", label.replace(")", "), runner told a 60 s API request timeout"),
                        replace(base, faults=f, api_request_timeout_s=60.0)))
    out.append(("all", "every fault kind at once, plus SIGKILLs, spec changes and deletions",
                replace(crash, seed=args.seed + 2, faults=ALL_FAULTS)))
    out.append(("multi", f"{MULTI_RUNNERS} runners at once, with kills (NodeClaim creates take "
                         f"{MULTI_FAULTS.slow_create_s:g} s, {MULTI_WORKERS} workers each)",
                replace(crash, seed=args.seed + 3, runners=MULTI_RUNNERS, workers=MULTI_WORKERS, faults=MULTI_FAULTS)))
    chosen = [r for r in out if r[0] in args.rows and (not args.match or args.match in r[1]
                                                       or (r[0] == "faults" and not r[2].faults.any()))]
    return chosen


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="crash,faults,all,multi", help="comma-separated: crash, faults, all, multi")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workspaces", type=int, default=300,
                   help="Workspaces in the crash, all-faults and several-runners rows")
    p.add_argument("--quick", action="store_true", help="small runs (the size CI uses, about 2 minutes)")
    p.add_argument("--match", default="", help="only rows whose label contains this (fault rows keep their baseline)")
    p.add_argument("--markdown", action="store_true", help="print the Markdown table instead of JSON")
    p.add_argument("--from-json", metavar="FILE", help="only render the Markdown table of a saved JSON report")
    args = p.parse_args()
    args.rows = set(args.rows.split(","))
    if args.from_json:
        with open(args.from_json) as f:
            print(markdown(json.load(f), args))
        return 0
    results = []
    baseline = None
    started = time.monotonic()
    for group, label, cfg in rows(args):
        print(f"== {label}", file=sys.stderr, flush=True)
        report = ChaosRun(cfg, progress=lambda m: print(f"   {m}", file=sys.stderr, flush=True)).run()
        d = report.to_dict()
        d["row"], d["group"] = label, group
        if group == "faults" and not cfg.faults.any():
            baseline = d
        elif group == "faults" and baseline is not None and baseline["time_to_goal_s"] and d["time_to_goal_s"]:
            d["degradation"] = {k: round(d["time_to_goal_s"][k] / baseline["time_to_goal_s"][k], 2)
                                for k in ("p50", "p90", "max")}
            d["degradation"]["makespan"] = round(d["makespan_s"] / baseline["makespan_s"], 2)
        per_runner = f" {report.kills_per_runner} by runner" if len(report.kills_per_runner) > 1 else ""
        print(f"   {'ok' if report.ok else 'INVARIANT BROKEN'}: {report.workspaces} Workspaces, "
              f"kills {sum(report.kills.values())}{per_runner}, faults {sum(report.faults_injected.values())}, "
              f"time to goal p50 {d['time_to_goal_s'].get('p50')} s, violations {report.violation_count}, "
              f"wall {report.wall_s} s", file=sys.stderr, flush=True)
        results.append(d)
    print(f"all rows done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    if args.markdown:
        print(markdown(results, args))
    else:
        print(json.dumps(results, indent=1))
    return 0 if all(r["ok"] for r in results) else 1


def markdown(results: list[dict], args: argparse.Namespace) -> str:
    head = ("| what was tried | Workspaces | SIGKILLs (between calls / in flight / in status write / create held / "
            "random) "
            "| faults injected | outcomes | over target / duplicated / lost / orphaned | time to goal p50 / p90 (s) "
            "| vs baseline p50 / p90 | held | reproduce |")
    lines = [head, "|" + " --- |" * 10]
    for r in results:
        k = r["kills"]
        kills = "/".join(str(k.get(m, 0)) for m in ("between-calls", "in-flight", "in-status-write",
                                                     "create-held", "at a random moment")) if k else "0"
        by_runner = r.get("kills_per_runner") or []
        if len(by_runner) > 1:
            kills += f" (by runner: {'/'.join(str(n) for n in by_runner)})"
        faults = ", ".join(f"{n}: {v}" for n, v in r["faults_injected"].items()) or "none"
        outcomes = ", ".join(f"{v} {n}" for n, v in sorted(r["outcomes"].items()))
        ttg = r["time_to_goal_s"]
        deg = r.get("degradation")
        vs = f"{deg['p50']}x / {deg['p90']}x" if deg else "-"
        lines.append(
            f"| {r['row']} | {r['workspaces']} ({r['spec_changes']} changed, {r['deletions']} deleted) | {kills} "
            f"| {faults} | {outcomes} | {r['nodeclaims_over_target_max']} / {r['duplicates']} / {r['lost']} / "
            f"{r['orphans']} | {ttg.get('p50', '-')} / {ttg.get('p90', '-')} "
            f"| {vs} | {'yes' if r['ok'] else 'NO'} | `{reproduce(r, args)}` |")
    return "\n".join(lines)


def reproduce(r: dict, args: argparse.Namespace) -> str:
    cmd = f"benchmarks/reliability.py --rows {r['group']} --seed {args.seed}"
    if args.quick:
        cmd += " --quick"
    elif r["group"] != "faults" and args.workspaces != 300:
        cmd += f" --workspaces {args.workspaces}"
    if r["group"] == "faults":
        cmd += f" --match '{r['row'].split(' (')[0].split(':')[0]}'"
    return cmd


if __name__ == "__main__":
    sys.exit(main())
