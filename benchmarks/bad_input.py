"""Bad input at scale: seeded bad Workspaces of every category straight to decide, through
``workspace-fsm validate``, and through the API server to a running runner among valid ones.

Prints progress to stderr and one JSON object to stdout: per category how many were tried, rejected
at admission (with the HTTP codes) or by validate, given a condition, had anything created for them
(must be 0), crashed anything (must be 0), and were fixed and then proceeded; and how long the valid
Workspaces took to reach their goal with the bad ones present, against a baseline without them.

    python benchmarks/bad_input.py --seed 1 --count 500 [--valid 50] [--time-scale 300]

The test suite runs a small seeded version of the same (tests/test_reliability_bad_input.py).
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import logging
import random
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from workspace_fsm.kaito import actions as A
from workspace_fsm.kaito.workspace import WORKSPACE_SUCCEEDED, decide
from workspace_fsm.cli.embedded import EmbeddedCluster
from workspace_fsm.kaito.errors import InvalidWorkspace
from workspace_fsm.kaito.model import FINALIZER, LABEL_WORKSPACE, LABEL_WORKSPACE_NAMESPACE, Snapshot, parse_workspace
from workspace_fsm.testing.strategies import (API_UNSENDABLE, CATEGORIES, BadWorkspace, RandomChooser, at_goal,
                                              dump_yaml, invalid_condition, make_bad, make_valid)
from workspace_fsm.kaito.validation import check_document, validate_files

CREATING = (A.CreateNodeClaim, A.CreateWorkload, A.UpdateWorkload, A.CreateJob, A.AddFinalizer)
GROUP, VERSION, PLURAL = "kaito.sh", "v1beta1", "workspaces"


def log(msg: str) -> None:
    print(f"bad_input: {msg}", file=sys.stderr, flush=True)


_dump = dump_yaml


def _expected(problems, bad: BadWorkspace) -> bool:
    return bool({(p.path, p.reason) for p in problems} & set(bad.expect))


# -------------------------------------------------------------------------------- offline


def offline(bads: list[BadWorkspace], stats: dict, tmp: Path) -> None:
    from datetime import datetime, timezone

    now = datetime(2026, 1, 2, tzinfo=timezone.utc)
    slowest = 0.0
    for i, bad in enumerate(bads):
        s = stats[bad.category]
        d_stats, v_stats = s["decide"], s["validate"]
        # decide
        start = time.perf_counter()
        try:
            ws = parse_workspace(bad.doc)
            d = decide(ws, Snapshot(), now)
            cond = d.status.condition(WORKSPACE_SUCCEEDED)
            d_stats["reported"] += bool(ws.problems)
            d_stats["expected_problem"] += _expected(ws.problems, bad)
            d_stats["condition"] += bool(cond is not None and cond.status == "False" and ws.problems
                                         and cond.reason == ws.problems[0].reason)
            d_stats["created"] += any(isinstance(a, CREATING) for a in d.actions)
            fixed = parse_workspace({**bad.fixed, "status": d.status.to_dict()})
            d_stats["fix_proceeded"] += fixed.valid and any(
                isinstance(a, A.CreateNodeClaim) for a in decide(fixed, Snapshot(), now).after)
        except InvalidWorkspace as exc:
            # Not addressable at all (not an object): refused with a specific problem, nothing to report on.
            d_stats["refused_unaddressable"] += 1
            d_stats["expected_problem"] += exc.reason not in ("", "InvalidWorkspace")
            fixed = parse_workspace(bad.fixed)
            d_stats["fix_proceeded"] += any(
                isinstance(a, A.CreateNodeClaim) for a in decide(fixed, Snapshot(), now).after)
        except Exception:
            d_stats["crashed"] += 1
            d_stats.setdefault("crash_examples", []).append(traceback.format_exc(limit=3)[-600:])
        slowest = max(slowest, time.perf_counter() - start)
        # validate
        path = tmp / "w.yaml"
        path.write_text(_dump(bad.doc), encoding="utf-8")
        out, err = io.StringIO(), io.StringIO()
        try:
            rc = validate_files([path], out=out, err=err)
        except Exception:
            v_stats["crashed"] += 1
            v_stats.setdefault("crash_examples", []).append(traceback.format_exc(limit=3)[-600:])
            continue
        text = out.getvalue() + err.getvalue()
        if "Traceback" in text:
            v_stats["crashed"] += 1
        if not isinstance(bad.doc, dict):
            v_stats["skipped_not_a_workspace"] += "skipped, not a Workspace" in text
            continue
        v_stats["rejected"] += rc == 1
        if "YAML does not parse" in err.getvalue():
            v_stats["yaml_error_with_line"] += ", column " in err.getvalue()
            continue
        name = bad.doc["metadata"]["name"]
        wanted = [f": {p}: [{r}] " if p else f": [{r}] " for p, r in bad.expect]
        v_stats["named_object_and_field"] += any(
            f"Workspace default/{name[:40]}" in line and any(w in line for w in wanted)
            for line in out.getvalue().splitlines())
        if (i + 1) % 100 == 0:
            log(f"offline: {i + 1}/{len(bads)} checked")
    stats["_offline_slowest_decide_s"] = round(slowest, 4)


# -------------------------------------------------------------------------------- API server


class _Errors(logging.Handler):
    """ERROR records of the runner (``workspace_fsm.*``) and, apart, of the test API server itself."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []
        self.server: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("workspace_fsm.testing"):
            error = str(record.exc_info[1])[:200] if record.exc_info else ""
            self.server.append(f"{record.getMessage()[:200]}: {error}")
        elif record.name.startswith("workspace_fsm"):
            self.messages.append(record.getMessage()[:300])


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


def summary(times: list[float], total: int) -> dict:
    return {"count": total, "at_goal": len(times), "p50_s": pct(times, 0.5), "p95_s": pct(times, 0.95),
            "max_s": round(max(times), 2) if times else None,
            "mean_s": round(statistics.fmean(times), 2) if times else None}


class Cluster:
    def __init__(self, custom: k8s.CustomObjectsApi) -> None:
        self.custom = custom

    def listing(self, ns: str) -> dict[str, dict]:
        items = self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
        return {w["metadata"]["name"]: w for w in items}

    def follow(self, ns: str, names: dict[str, float], timeout: float, what: str) -> dict[str, float]:
        """Seconds from each name's start time to its goal, polling the API server."""
        reached: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        last = 0.0
        while len(reached) < len(names) and time.monotonic() < deadline:
            items = self.listing(ns)
            t = time.monotonic()
            for n, t0 in names.items():
                if n not in reached and at_goal(items.get(n)):
                    reached[n] = t - t0
            if t - last > 5:
                log(f"{what}: {len(reached)}/{len(names)} at their goal")
                last = t
            time.sleep(0.25)
        return reached


def through_api(bads: list[BadWorkspace], goods: list[dict], baseline: list[dict], stats: dict, args) -> dict:
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    cluster = EmbeddedCluster(time_scale=args.time_scale, seed=args.seed)
    cluster.start(Path(tempfile.mkdtemp(prefix="bad-input-")) / "kubeconfig")
    core, custom = k8s.CoreV1Api(cluster.api), k8s.CustomObjectsApi(cluster.api)
    for ns in ("baseline", "bad"):
        core.create_namespace({"metadata": {"name": ns}})
    c = Cluster(custom)
    runner = cluster.run_in_thread(workers=args.workers)
    out: dict[str, Any] = {}
    try:
        # Baseline: the valid Workspaces alone.
        starts = {}
        for g in baseline:
            custom.create_namespaced_custom_object(GROUP, VERSION, "baseline", PLURAL, g)
            starts[g["metadata"]["name"]] = time.monotonic()
        base_times = c.follow("baseline", starts, args.timeout, "baseline")
        out["valid_baseline_without_bad"] = summary(list(base_times.values()), len(baseline))

        # The same number of valid ones, interleaved with the bad ones.
        queue: list[tuple[str, Any]] = [("bad", b) for b in bads]
        step = max(1, len(queue) // max(1, len(goods)))
        for i, g in enumerate(goods):
            queue.insert(min(len(queue), i * (step + 1)), ("good", g))
        admitted: dict[str, BadWorkspace] = {}
        starts = {}
        rejected_valid = 0
        t_create = time.monotonic()
        for j, (kind, item) in enumerate(queue):
            body = item if kind == "good" else item.doc
            try:
                created = custom.create_namespaced_custom_object(GROUP, VERSION, "bad", PLURAL, body,
                                                                 field_validation="Strict")
            except ApiException as exc:
                if kind == "good":
                    rejected_valid += 1
                    continue
                a = stats[item.category]["api"]
                a["rejected_at_admission"] += 1
                a["rejection_codes"][str(exc.status)] += 1
                continue
            except Exception:  # a client that cannot even encode it
                if kind == "good":
                    rejected_valid += 1
                else:
                    stats[item.category]["api"]["unsendable"] += 1
                continue
            if kind == "good":
                starts[created["metadata"]["name"]] = time.monotonic()
            else:
                admitted[created["metadata"]["name"]] = item
            if (j + 1) % 100 == 0:
                log(f"created {j + 1}/{len(queue)}")
        log(f"created {len(queue)} in {time.monotonic() - t_create:.1f}s: {len(admitted)} bad ones admitted")
        for bad in bads:
            stats[bad.category]["api"]["sent"] += 1
        out["valid_rejected_at_admission"] = rejected_valid

        stored = c.listing("bad")
        still_bad: dict[str, BadWorkspace] = {}
        for name, bad in admitted.items():
            a = stats[bad.category]["api"]
            if check_document(stored[name]):
                a["admitted_invalid"] += 1
                still_bad[name] = bad
            else:  # the API server's pruning/defaulting made it valid: it must simply proceed
                a["admitted_made_valid_by_api_server"] += 1
                starts[name] = time.monotonic()
        good_times = c.follow("bad", {n: t for n, t in starts.items()}, args.timeout, "valid among bad")
        out["valid_with_bad_present"] = summary([t for n, t in good_times.items()], len(starts))

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(invalid_condition(stored.get(n)) for n in still_bad):
            time.sleep(0.5)
            stored = c.listing("bad")
        claims = custom.list_cluster_custom_object("karpenter.sh", "v1", "nodeclaims")["items"]
        claimed = {(x["metadata"]["labels"].get(LABEL_WORKSPACE_NAMESPACE),
                    x["metadata"]["labels"].get(LABEL_WORKSPACE)) for x in claims}
        apps, batch = k8s.AppsV1Api(cluster.api), k8s.BatchV1Api(cluster.api)
        made = ({d.metadata.name for d in apps.list_namespaced_deployment("bad").items}
                | {d.metadata.name for d in apps.list_namespaced_stateful_set("bad").items}
                | {j.metadata.name for j in batch.list_namespaced_job("bad").items})
        for name, bad in still_bad.items():
            a = stats[bad.category]["api"]
            cond = invalid_condition(stored.get(name))
            problems = check_document(stored[name])
            if cond is not None:
                a["condition"] += 1
                a["condition_reason_is_first_problem"] += cond["reason"] == problems[0].reason
                a["condition_names_expected_field"] += any(
                    f"{p}: " in cond["message"] for p, r in bad.expect
                    if p and (p, r) in {(q.path, q.reason) for q in problems}
                ) or any(not p for p, _ in bad.expect)
                a["condition_reasons"][cond["reason"]] += 1
            a["created"] += (("bad", name) in claimed or name in made
                             or FINALIZER in (stored[name]["metadata"].get("finalizers") or []))

        # Fix every admitted bad one that kept its name; each must proceed to its goal.
        fix_starts: dict[str, float] = {}
        for name, bad in still_bad.items():
            if name != bad.name:
                continue
            body = {**bad.fixed, "metadata": {**bad.fixed["metadata"],
                                              "resourceVersion": stored[name]["metadata"]["resourceVersion"]}}
            try:
                custom.replace_namespaced_custom_object(GROUP, VERSION, "bad", PLURAL, name, body)
            except ApiException as exc:
                log(f"fixing {name} failed: {exc.status}")
                continue
            stats[bad.category]["api"]["fixed"] += 1
            fix_starts[name] = time.monotonic()
        log(f"fixed {len(fix_starts)}; waiting for them")
        fixed_times = c.follow("bad", fix_starts, args.timeout, "fixed")
        for name in fixed_times:
            stats[still_bad[name].category]["api"]["fixed_proceeded"] += 1
        out["fixed_time_to_goal"] = summary(list(fixed_times.values()), len(fix_starts))
        out["runner_alive"] = runner.thread.is_alive()
        out["runner_error_logs"] = len(errors.messages)
        out["runner_error_examples"] = errors.messages[:5]
        out["api_server_internal_errors"] = len(errors.server)
        out["api_server_internal_error_examples"] = errors.server[:5]
    finally:
        runner.kill(30)
        logging.getLogger().removeHandler(errors)
        cluster.stop()
    return out


# -------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=500, help="bad Workspaces (spread evenly over the categories)")
    ap.add_argument("--valid", type=int, default=0, help="valid Workspaces among them (default: count/10, at least 5)")
    ap.add_argument("--time-scale", type=float, default=300.0)
    ap.add_argument("--workers", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for each group to reach its goal")
    ap.add_argument("--skip-api", action="store_true", help="only decide and validate")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    t0 = time.monotonic()

    rng = RandomChooser(random.Random(args.seed))
    bads = [make_bad(rng, CATEGORIES[i % len(CATEGORIES)], f"bad-{i:05d}") for i in range(args.count)]
    n_valid = args.valid or max(5, args.count // 10)
    goods = [make_valid(rng, f"good-{i:04d}") for i in range(n_valid)]
    baseline = [make_valid(rng, f"base-{i:04d}") for i in range(n_valid)]

    def category_stats() -> dict:
        return {
            "tried": 0,
            "decide": collections.Counter(),
            "validate": collections.Counter(),
            "api": collections.Counter({"rejection_codes": collections.Counter(),
                                        "condition_reasons": collections.Counter()}),
        }

    stats: dict[str, Any] = {c: category_stats() for c in CATEGORIES}
    for b in bads:
        stats[b.category]["tried"] += 1
    tmp = Path(tempfile.mkdtemp(prefix="bad-input-"))
    log(f"{len(bads)} bad Workspaces over {len(CATEGORIES)} categories, seed {args.seed}: decide and validate")
    offline(bads, stats, tmp)
    slowest = stats.pop("_offline_slowest_decide_s")
    api: dict[str, Any] = {}
    if not args.skip_api:
        sendable = [b for b in bads if b.category not in API_UNSENDABLE]
        log(f"through the API server: {len(sendable)} bad, {len(goods)} valid (+{len(baseline)} baseline)")
        api = through_api(sendable, goods, baseline, stats, args)

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    totals: collections.Counter = collections.Counter()
    for cat in CATEGORIES:
        for part in ("decide", "validate", "api"):
            for k, v in stats[cat][part].items():
                if isinstance(v, int):
                    totals[f"{part}.{k}"] += v
        totals["tried"] += stats[cat]["tried"]
    result = {
        "seed": args.seed,
        "count": args.count,
        "categories": plain(stats),
        "totals": dict(sorted(totals.items())),
        "must_be_zero": {
            "decide_created": totals["decide.created"],
            "decide_crashed": totals["decide.crashed"],
            "validate_crashed": totals["validate.crashed"],
            "api_created_for_invalid": totals["api.created"],
            "runner_error_logs": api.get("runner_error_logs", 0),
        },
        "slowest_parse_and_decide_s": slowest,
        **api,
        "wall_s": round(time.monotonic() - t0, 1),
    }
    json.dump(result, sys.stdout, indent=1, default=lambda o: dict(o) if isinstance(o, collections.Counter) else str(o))
    print()
    ok = not any(result["must_be_zero"].values()) and api.get("runner_alive", True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
