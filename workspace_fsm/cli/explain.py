"""``workspace-fsm explain KIND/NAME``: where a resource is in its lifecycle and what the machine waits for.

Everything it says comes from the persisted record and a live snapshot read as a runner reads it (caches
listed once), never from guessing: the state and since when, each edge out of it with its guard's current
value and the fact the guard read, the deadline and what happens then, the last transitions, and the
wake-up a pass would ask for now.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="say where a Workspace (or any lifecycle's resource) is and what it waits for")
    p.add_argument("target", metavar="KIND/NAME", help="e.g. workspace/phi-4, ragengine/rag, website/hello")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("--kubeconfig", metavar="PATH")
    p.add_argument("--context")
    p.add_argument("--lifecycle", action="append", metavar="NAME|MODULE:ATTR",
                   help="an author's lifecycle that serves KIND (the built-ins are known); repeatable")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.set_defaults(func=run)


def _lifecycle_for(kind: str, extra: list[str]) -> Any:
    from workspace_fsm.cli.lifecycles import BUILTIN, LifecycleNotFound, load_lifecycle

    candidates = []
    for spec in [*extra, *BUILTIN]:
        try:
            candidates.append(load_lifecycle(spec))
        except LifecycleNotFound:
            if spec in extra:
                raise
    for lc in candidates:
        r = lc.resource
        if kind.lower() in (r.kind.lower(), r.plural, lc.name, str(r)):
            return lc
    raise LookupError(f"no lifecycle serves {kind!r}: known kinds are "
                      f"{', '.join(lc.resource.kind for lc in candidates)}; give --lifecycle MODULE:ATTR for yours")


def _adapter(api: Any, lc: Any, namespace: str) -> Any:
    if lc.name == "workspace":
        from workspace_fsm.adapters.kubernetes.adapter import KubernetesAdapter
        from workspace_fsm.kaito.catalogue import Catalogue

        return KubernetesAdapter(api, namespace=namespace, catalogue=Catalogue.default())
    if lc.name == "ragengine":
        from workspace_fsm.adapters.kubernetes.ragengine import ragengine_adapter

        return ragengine_adapter(api, namespace=namespace)
    from workspace_fsm.adapters.kubernetes.generic import ResourceAdapter

    return ResourceAdapter(api, lc, namespace=namespace)


def explanation(lc: Any, obj: Any, snap: Any, now: datetime) -> dict[str, Any]:
    """What ``explain`` says, from the record and a snapshot (pure; the command and tests share it)."""
    from workspace_fsm.engine.record import Record

    rec = lc.record.read(obj)
    stored = rec
    if rec is None:
        rec = Record(state=lc.initial, data=lc.record.data(), entered_at=None)
    f = lc.facts(obj, snap, now, lc.config, rec, "explain")
    f.lifecycle = lc
    edges = []
    for e in lc.edges_from(rec.state):
        try:
            value: Any = bool(e.guard(f))
        except Exception as exc:  # a guard that cannot answer on this snapshot says so
            value = f"error: {type(exc).__name__}: {exc}"
        shows = getattr(e.guard, "shows", None)
        fact = shows(f) if callable(shows) else (e.guard.__doc__ or "").strip().splitlines()[0:1]
        edges.append({"to": e.dest, "guard": e.guard.__name__, "value": value,
                      "fact": fact if isinstance(fact, str) else " ".join(fact)})
    out: dict[str, Any] = {
        "kind": lc.resource.kind, "key": obj.key, "lifecycle": lc.name, "state": rec.state,
        "recorded": stored is not None,
        "since": rec.entered_at.isoformat() if rec.entered_at else None,
        "doc": lc.states[rec.state].doc, "edges": edges,
        "history": [{"from": h.source, "to": h.dest, "at": h.at, "why": h.why} for h in rec.history[-5:]],
    }
    spec = lc.states[rec.state]
    after = lc.deadline(rec.state)
    if spec.deadline is not None and after is not None and rec.entered_at is not None:
        d = spec.deadline
        out["deadline"] = {"at": (rec.entered_at + after).isoformat(), "after": str(after), "reason": d.reason,
                           "then": d.consequence, "fired": rec.attempts, "max_firings": d.max_firings}
    decision = lc.decide(obj, snap, now)
    w = decision.wake
    out["waiting_for"] = (f"the next watch event, or at the latest in {w.after}: {w.reason}" if w.after is not None
                          else w.reason)
    out["would_do"] = [type(a).__name__ + (f" {getattr(a, 'name', '')}" if getattr(a, "name", "") else "")
                       for a in decision.mutating_actions]
    if obj.problems:
        out["problems"] = [str(p) for p in obj.problems]
    return out


def _text(e: dict[str, Any]) -> str:
    lines = [f"{e['kind']} {e['key']} ({e['lifecycle']} lifecycle): {e['state']}"
             + (f" since {e['since']}" if e["since"] else "") + ("" if e["recorded"] else " (no record written yet)"),
             f"  {e['doc']}"]
    for p in e.get("problems", ()):
        lines.append(f"  invalid: {p}")
    if e["edges"]:
        lines.append("  edges out, in order (the first that holds is taken):")
        for edge in e["edges"]:
            lines.append(f"    -> {edge['to']}: {edge['guard']} = {edge['value']}; {edge['fact']}")
    else:
        lines.append("  no edge out: a terminal state")
    if "deadline" in e:
        d = e["deadline"]
        lines.append(f"  deadline: {d['at']} ({d['after']} after entering; {d['reason']}): then {d['then']}"
                     f" (fired {d['fired']} of {d['max_firings']})")
    lines.append(f"  waiting for: {e['waiting_for']}")
    if e["would_do"]:
        lines.append(f"  a pass now would: {', '.join(e['would_do'])}")
    if e["history"]:
        lines.append("  last transitions:")
        for h in e["history"]:
            lines.append(f"    {h['at']} {h['from']} -> {h['to']} ({h['why']})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from workspace_fsm.cli.lifecycles import LifecycleNotFound
    from workspace_fsm.cli.run import load_api_client

    kind, sep, name = args.target.partition("/")
    if not sep or not name:
        print("workspace-fsm explain: give KIND/NAME, e.g. workspace/phi-4", file=sys.stderr)
        return 2
    try:
        lc = _lifecycle_for(kind, args.lifecycle or [])
    except (LookupError, LifecycleNotFound) as exc:
        print(f"workspace-fsm explain: {exc}", file=sys.stderr)
        return 2
    try:
        api = load_api_client(args.kubeconfig, args.context)
    except Exception as exc:
        print(f"workspace-fsm explain: cannot load Kubernetes configuration: {exc}", file=sys.stderr)
        return 2
    adapter = _adapter(api, lc, args.namespace)
    adapter.start()
    try:
        if not adapter.wait_synced(30.0):
            print(f"workspace-fsm explain: could not list {lc.resource.plural} and what they own within 30 s; "
                  f"check the kubeconfig and the server", file=sys.stderr)
            return 2
        obj, snap = adapter.observe(f"{args.namespace}/{name}")
        if obj is None:
            print(f"workspace-fsm explain: {lc.resource.kind} {args.namespace}/{name} not found", file=sys.stderr)
            return 1
        e = explanation(lc, obj, snap, datetime.now(timezone.utc))
    finally:
        adapter.stop()
        for inf in adapter.informers:  # let the watch threads end before the interpreter does
            inf.join(5.0)
    print(json.dumps(e, indent=2) if args.json else _text(e))
    return 0
