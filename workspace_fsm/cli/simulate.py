"""``workspace-fsm simulate``: the machine against the blocking design and a poller, on one simulated cluster."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import attrs

MODE_CHOICES = ("fsm", "blocking", "poller", "all")

DESCRIPTION = """\
Simulate Workspaces created on a cluster with KAITO-like latencies (NodeClaims, GPU device plugin,
model rollout, tuning Jobs), driven by W workers on a virtual clock, under three designs: this state
machine (fsm), KAITO's old reconcile that waits inside its pass (blocking) and KAITO's later
fixed-interval poller (poller). Same cluster, same seed, same queue and workers for every mode.
Defaults: 100 Workspaces at t=0, 5 workers, seed 1, every API call 10 ms
(see adapters/simulated/params.py and docs/simulator.md for where the latencies come from).

A scenario may add KAITO RAGEngines (--ragengines, or `ragengines:` in the file; see
examples/scenarios/mixed-rag.yaml): each lifecycle then has its own controller (queue and W
workers), and the figures are also given per lifecycle. RAGEngines are always driven by the
machine: the blocking and poller designs model KAITO's Workspace controller only."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="run Workspaces on a simulated cluster: fsm vs blocking vs poller",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workspaces", type=_nonnegative_int, metavar="N",
                   help="how many Workspaces (default 100, or the scenario's; 0 with --ragengines)")
    p.add_argument("--ragengines", type=_nonnegative_int, metavar="N",
                   help="how many RAGEngines beside the Workspaces (default 0, or the scenario's)")
    p.add_argument("--workers", type=_positive_int, default=5, metavar="W", help="concurrent reconcilers (default 5, as KAITO)")
    p.add_argument("--seed", type=int, metavar="S", help="random seed (default 1, or the scenario's)")
    p.add_argument("--mode", choices=MODE_CHOICES, default="all", help="which design to run (default all)")
    p.add_argument("--scenario", metavar="FILE", help="a scenario YAML file (see examples/scenarios/)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--plot", metavar="FILE", help="write a picture (.png or .svg): goals reached over time, and the fsm timeline")
    p.set_defaults(func=run)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def load_scenario(args: argparse.Namespace):
    from workspace_fsm.adapters.simulated.params import Scenario

    scenario = Scenario.from_yaml(args.scenario) if args.scenario else Scenario.default()
    changes: dict[str, Any] = {}
    if args.workspaces is not None:
        changes["workspaces"] = args.workspaces
    if args.seed is not None:
        changes["seed"] = args.seed
    if getattr(args, "ragengines", None) is not None:
        changes["ragengines"] = args.ragengines
    return attrs.evolve(scenario, **changes) if changes else scenario


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from workspace_fsm.adapters.simulated.harness import MODES, run_mode
    from workspace_fsm.adapters.simulated.params import ScenarioError

    err = Console(stderr=True, soft_wrap=True)
    try:
        scenario = load_scenario(args)
    except (ScenarioError, ValueError) as exc:
        err.print(f"[bold red]workspace-fsm simulate:[/] bad scenario: {exc}", highlight=False)
        return 2
    except OSError as exc:
        err.print(f"[bold red]workspace-fsm simulate:[/] cannot read scenario {args.scenario}: {exc.strerror}", highlight=False)
        return 2
    if args.plot and Path(args.plot).suffix.lower() not in (".png", ".svg"):
        err.print(f"[bold red]workspace-fsm simulate:[/] --plot {args.plot}: use a .png or .svg file name", highlight=False)
        return 2
    modes = MODES if args.mode == "all" else (args.mode,)
    results: dict[str, dict[str, Any]] = {}
    with _ProgressDisplay(err, modes, scenario.workspaces + scenario.ragengines) as display:
        for mode in modes:
            results[mode] = run_mode(scenario, mode, args.workers, progress=display.update,
                                     progress_every_s=30.0, timeline=bool(args.plot) and mode == "fsm")
            display.finish(mode, results[mode])
    extras = {m: {k: r.pop(k) for k in list(r) if k.startswith("_")} for m, r in results.items()}
    ratios = _ratios(results)
    scenario_name = args.scenario or "default"
    if args.plot:
        try:
            _plot(args.plot, results, extras, scenario, args.workers)
        except OSError as exc:
            err.print(f"[bold red]workspace-fsm simulate:[/] cannot write {args.plot}: {exc.strerror}", highlight=False)
            return 2
    if args.json:
        print(json.dumps({"workspaces": scenario.workspaces, "ragengines": scenario.ragengines,
                          "workers": args.workers, "seed": scenario.seed,
                          "scenario": scenario_name, "results": results, "ratios": ratios}))
    else:
        _print_tables(results, ratios, scenario, args.workers, scenario_name)
        if args.plot:
            print(f"picture written to {args.plot}")
    bad = [m for m, r in results.items() if m == "fsm" and r["nodeclaims_over_target_max"] > 0]
    if bad:
        err.print("[bold red]fsm created more NodeClaims than a Workspace's target: this is a bug, please report it[/]")
        return 1
    return 0


def _ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    fsm = results.get("fsm")
    if not fsm:
        return out
    for other in ("blocking", "poller"):
        r = results.get(other)
        if r and fsm["makespan_s"] and r["makespan_s"]:
            out[f"makespan_{other}_over_fsm"] = round(r["makespan_s"] / fsm["makespan_s"], 3)
        if r and fsm["reconciles"]:
            out[f"reconciles_{other}_over_fsm"] = round(r["reconciles"] / fsm["reconciles"], 3)
    return out


class _ProgressDisplay:
    """Live per-mode state counts on stderr while the simulation runs (plain lines when not a terminal)."""

    def __init__(self, console, modes, total: int) -> None:
        self.console = console
        self.modes = modes
        self.total = total
        self.rows: dict[str, str] = {m: "waiting" for m in modes}
        self.live = None

    def __enter__(self):
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self._render(), console=self.console, refresh_per_second=8, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.__exit__(*exc)
        return False

    def _render(self):
        from rich.table import Table

        t = Table(title=f"simulating {self.total} resources", show_header=True, header_style="bold")
        t.add_column("mode")
        t.add_column("virtual time, goals reached, resources per state")
        for m in self.modes:
            t.add_row(m, self.rows[m])
        return t

    def update(self, p) -> None:
        states = ", ".join(f"{k} {v}" for k, v in sorted(p.counts.items(), key=lambda kv: -kv[1]))
        self.rows[p.mode] = f"t={p.t:7.0f}s  reached {p.reached}/{p.total}  {states}"
        if self.live is not None:
            self.live.update(self._render())

    def finish(self, mode: str, result: dict[str, Any]) -> None:
        line = (f"{mode}: {result['reached_goal']}/{result.get('resources', result['workspaces'])} reached their goal, makespan "
                f"{result['makespan_s']} s (simulated), {result['reconciles']} reconciles, {result['wall_s']:.1f} s wall")
        self.rows[mode] = "done: " + line.split(": ", 1)[1]
        if self.live is not None:
            self.live.update(self._render())
        else:
            self.console.print(line, highlight=False)


ROWS = (
    ("makespan (s)", "makespan_s"),
    ("critical-path bound (s)", "critical_path_s"),
    ("makespan / critical path", "makespan_over_critical_path"),
    ("chain mean (s)", "chain_mean_s"),
    ("time to goal p50 (s)", "time_to_goal_p50_s"),
    ("time to goal p95 (s)", "time_to_goal_p95_s"),
    ("time to goal max (s)", "time_to_goal_max_s"),
    ("slowdown p50", "slowdown_p50"),
    ("slowdown p99", "slowdown_p99"),
    ("reached goal", "reached_goal"),
    ("reconciles", "reconciles"),
    ("reconciles per Workspace", "reconciles_per_workspace"),
    ("API reads", "api_reads"),
    ("API writes", "api_writes"),
    ("NodeClaims created", "nodeclaims_created"),
    ("NodeClaims over target (max)", "nodeclaims_over_target_max"),
    ("workers busy share", "workers_busy_share"),
    ("wall time (s)", "wall_s"),
)


def _print_tables(results, ratios, scenario, workers: int, name: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    population = f"{scenario.workspaces} Workspaces" + (f" and {scenario.ragengines} RAGEngines" if scenario.ragengines else "")
    t = Table(title=f"{population}, {workers} workers, seed {scenario.seed}, scenario {name}")
    t.add_column("")
    for m in results:
        t.add_column(m, justify="right")
    for label, key in ROWS:
        if scenario.ragengines:  # a mixed population: the top-level figures cover every resource
            label = label.replace("per Workspace", "per resource")
        t.add_row(label, *(_fmt(results[m].get(key)) for m in results))
    console.print(t)
    for m, r in results.items():
        if r.get("lifecycles"):
            console.print(_lifecycle_table(m, r["lifecycles"]))
    for k, v in ratios.items():
        console.print(f"{k.replace('_', ' ')}: {v}", highlight=False)


LIFECYCLE_ROWS = (
    ("driven by", "controller"),
    ("resources", "resources"),
    ("reached goal", "reached_goal"),
    ("time to goal p50 (s)", "time_to_goal_p50_s"),
    ("time to goal p95 (s)", "time_to_goal_p95_s"),
    ("time to goal max (s)", "time_to_goal_max_s"),
    ("reconciles", "reconciles"),
    ("API reads", "api_reads"),
    ("API writes", "api_writes"),
    ("NodeClaims created", "nodeclaims_created"),
)


def _lifecycle_table(mode: str, lifecycles: dict[str, dict[str, Any]]):
    from rich.table import Table

    t = Table(title=f"{mode}: per lifecycle")
    t.add_column("")
    for name in lifecycles:
        t.add_column(name, justify="right")
    for label, key in LIFECYCLE_ROWS:
        t.add_row(label, *(_fmt(lc.get(key)) for lc in lifecycles.values()))
    t.add_row("states now", *(_states(lc["states_now"]) for lc in lifecycles.values()))
    t.add_row("states entered", *(_states(lc["states_entered"]) for lc in lifecycles.values()))
    t.add_row("API calls", *(_states(lc["api_calls"]) for lc in lifecycles.values()))
    return t


def _states(counts: dict[str, int] | None) -> str:
    return "-" if counts is None else "\n".join(f"{k} {v:,}" for k, v in counts.items())


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.1f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


STATE_COLOURS = {
    "Pending": "#bbbbbb", "NodesProvisioning": "#4c78a8", "PluginsReady": "#72b7b2", "WorkloadDeploying": "#f58518",
    "Ready": "#54a24b", "JobRunning": "#e45756", "JobReplacing": "#b279a2", "Succeeded": "#2ca02c",
    "Failed": "#d62728", "Deleting": "#9d755d",
}


def _plot(path: str, results, extras, scenario, workers: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    has_timeline = "fsm" in extras and extras["fsm"].get("_histories")
    fig, axes = plt.subplots(2 if has_timeline else 1, 1, figsize=(11, 9 if has_timeline else 4.5),
                             gridspec_kw={"height_ratios": [1, 1.6]} if has_timeline else None, squeeze=False)
    ax = axes[0][0]
    for mode, r in results.items():
        goals = sorted(extras.get(mode, {}).get("_goals") or [])
        if not goals:
            continue
        xs = [g / 60 for g in goals]
        ys = list(range(1, len(goals) + 1))
        style = {"fsm": dict(linewidth=2.5, zorder=3), "poller": dict(linestyle="--")}.get(mode, {})
        ax.step(xs, ys, where="post", label=f"{mode} (makespan {r['makespan_s'] / 60:.0f} min)", **style)
    crit = next((r["critical_path_s"] for r in results.values() if r.get("critical_path_s")), None)
    if crit:
        ax.axvline(crit / 60, color="grey", linestyle=":", label="critical-path bound")
    ax.set_xscale("log")
    ax.set_xlabel("simulated time (minutes, log scale)")
    if scenario.ragengines:  # a mixed population: the curve counts every resource
        ax.set_ylabel("resources at their goal")
        ax.set_title(f"{scenario.workspaces} Workspaces and {scenario.ragengines} RAGEngines, {workers} workers: "
                     f"resources at their goal over time")
    else:
        ax.set_ylabel("Workspaces at their goal")
        ax.set_title(f"{scenario.workspaces} Workspaces, {workers} workers: Workspaces at their goal over time")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    if has_timeline:
        ax2 = axes[1][0]
        hist = extras["fsm"]["_histories"]
        # One row per Workspace, ordered by when it left its last state: the staircase shows who waited for what.
        keys = sorted(hist, key=lambda k: (hist[k][-1][1], k))
        for state in STATE_COLOURS:
            rows, lefts, widths = [], [], []
            for row, key in enumerate(keys):
                for s_name, start, end in hist[key]:
                    if s_name == state and end > start:
                        rows.append(row)
                        lefts.append(start / 60)
                        widths.append((end - start) / 60)
            if rows:
                ax2.barh(rows, widths, left=lefts, height=1.0, color=STATE_COLOURS[state], linewidth=0)
        ax2.set_ylim(-0.5, len(keys) - 0.5)
        ax2.set_xlabel("simulated time (minutes)")
        ax2.set_ylabel("Workspace")
        ax2.set_yticks([])
        ax2.set_title("fsm: each Workspace's states over time (from its persisted history)")
        used = sorted({s for k in keys for s, _, _ in hist[k]}, key=list(STATE_COLOURS).index)
        ax2.legend(handles=[Patch(color=STATE_COLOURS[s], label=s) for s in used if s in STATE_COLOURS],
                   loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
