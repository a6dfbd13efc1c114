"""Several runners at once against one cluster, measured from the outside: how many NodeClaims exist.

    .venv/bin/python benchmarks/multi_runner.py --runners 2 --workspaces 30
    .venv/bin/python benchmarks/multi_runner.py --runners 3 --workspaces 30 --kill-every 3 --seed 1

It does what a tester with only the binaries and a Kubernetes client does, and nothing else:

1. starts ``workspace-fsm cluster --kubeconfig-out PATH --time-scale 60`` as a process (the test API server
   with KAITO's and Karpenter's CRDs and the simulated GPU nodes);
2. starts N ``workspace-fsm run --kubeconfig PATH --api-request-timeout 5 --health-port 0`` processes (a
   rollout runs two at once; an operator may start a second by mistake), and waits until each logs that it
   watches, plus ``--warmup`` seconds, so that the Workspaces reach runners that already run;
3. with ``--kill-every K``, SIGKILLs one runner (drawn from the seed) every K seconds and starts it again at
   once, as a Deployment would, until every Workspace has succeeded;
4. applies W KAITO Workspaces (instanceType Standard_NC24ads_A100_v4, a preset KAITO sizes to a target drawn
   from 1..3) through the official Kubernetes client;
5. lists the NodeClaims every 0.3 s and groups them by the ``kaito.sh/workspace`` label. A NodeClaim counts
   while it is listed, being deleted or not: its VM exists until the object is gone;
6. waits until every Workspace has ``WorkspaceSucceeded=True`` at its current generation (or ``--timeout``),
   then samples for ``--settle`` seconds more and takes the at-end count.

It prints one JSON object: runners, kills, workspaces, the sum of the targets, the peak NodeClaims total,
every Workspace's maximum over its target (only those that went over), the count at the end, whether all
succeeded, and the seconds it took. Exit status 0 if no Workspace ever went over its target and all
succeeded, 1 otherwise. Every process it started is stopped, and its temporary directory removed, on any
exit (``--keep`` keeps the directory with the cluster's and the runners' logs, and says where).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

LABEL_WORKSPACE = "kaito.sh/workspace"  # workspace_fsm.kaito.model.LABEL_WORKSPACE, as KAITO labels its NodeClaims
LABEL_WORKSPACE_NAMESPACE = "kaito.sh/workspacenamespace"
NAMESPACE = "default"
PRESET = "phi-4"
INSTANCE_TYPE = "Standard_NC24ads_A100_v4"
#: KAITO sizes a vLLM preset from its GPUs, not from resource.count: on INSTANCE_TYPE (one A100 80 GiB) these
#: presets need 1, 2 and 3 nodes (its node estimator; tests/test_estimator.py works them out).
PRESET_FOR_NODES = {1: PRESET, 2: "qwen2.5-coder-32b-instruct", 3: "gpt-oss-120b"}
SAMPLE_EVERY_S = 0.3


def binary() -> list[str]:
    """The ``workspace-fsm`` command installed beside this Python (the venv's), else the module."""
    exe = Path(sys.executable).parent / "workspace-fsm"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("workspace-fsm")
    return [found] if found else [sys.executable, "-m", "workspace_fsm.cli"]


def workspace(name: str, count: int) -> dict[str, Any]:
    """A KAITO inference Workspace needing ``count`` nodes (1 to 3), shaped like
    ../shared/kaito/examples/inference/kaito_workspace_phi_4.yaml."""
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name, "namespace": NAMESPACE},
            "resource": {"count": count, "instanceType": INSTANCE_TYPE,
                         "labelSelector": {"matchLabels": {"apps": name}}},
            "inference": {"preset": {"name": PRESET_FOR_NODES[count]}}}


def _die_with_parent() -> None:
    """In the child, before exec (Linux): SIGKILL when this script dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Processes:
    """Every process this script starts, so that all of them are stopped on any exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.lock = threading.Lock()
        self.live: list[subprocess.Popen] = []

    def start(self, cmd: list[str], log_name: str) -> subprocess.Popen:
        with open(self.workdir / log_name, "w") as out:
            p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        with self.lock:
            self.live.append(p)
        return p

    def kill(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()
        with self.lock:
            if p in self.live:
                self.live.remove(p)

    def stop_all(self) -> None:
        with self.lock:
            procs = list(self.live)
            self.live.clear()
        for p in procs:  # runners first (started last), then the cluster
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class Runners:
    """N ``workspace-fsm run`` processes; ``kill_one`` SIGKILLs one and starts it again at once."""

    def __init__(self, procs: Processes, kubeconfig: Path, n: int, *, log_level: str) -> None:
        self.procs = procs
        self.cmd = binary() + ["run", "--kubeconfig", str(kubeconfig), "--api-request-timeout", "5",
                               "--health-port", "0", "--log-level", log_level]
        self.current: list[subprocess.Popen | None] = [None] * n
        self.starts = [0] * n
        self.kills = [0] * n
        self.unexpected: list[str] = []

    def start(self, i: int) -> None:
        self.current[i] = self.procs.start(self.cmd, f"runner-{i}-{self.starts[i]:03d}.log")
        self.starts[i] += 1

    def kill_one(self, i: int) -> None:
        p = self.current[i]
        if p is not None:
            self.procs.kill(p)
            self.kills[i] += 1
        self.start(i)

    def wait_watching(self, timeout: float) -> None:
        """Until every runner has logged that it watches (at info level and below; else return at once)."""
        if self.cmd[-1] not in ("info", "debug"):
            return
        deadline = time.monotonic() + timeout
        for i in range(len(self.current)):
            log = self.procs.workdir / f"runner-{i}-000.log"
            while time.monotonic() < deadline and "watching Workspaces" not in log.read_text(errors="replace"):
                time.sleep(0.1)

    def check_alive(self) -> None:
        for i, p in enumerate(self.current):
            if p is not None and p.poll() is not None:
                self.unexpected.append(f"runner {i} exited by itself with code {p.returncode}")
                self.start(i)


class Sampler(threading.Thread):
    """Lists NodeClaims every 0.3 s; keeps the peak total and each Workspace's peak."""

    def __init__(self, custom: Any) -> None:
        super().__init__(name="nodeclaim-sampler", daemon=True)
        self.custom = custom
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.samples = 0
        self.errors = 0
        self.peak_total = 0
        self.peak_of: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self.last_total = 0

    def sample(self) -> None:
        items = self.custom.list_cluster_custom_object("karpenter.sh", "v1", "nodeclaims")["items"]
        counts: dict[str, int] = {}
        for nc in items:
            labels = (nc.get("metadata") or {}).get("labels") or {}
            if LABEL_WORKSPACE in labels:
                key = f"{labels.get(LABEL_WORKSPACE_NAMESPACE, NAMESPACE)}/{labels[LABEL_WORKSPACE]}"
                counts[key] = counts.get(key, 0) + 1
        with self.lock:
            self.samples += 1
            self.last, self.last_total = counts, sum(counts.values())
            self.peak_total = max(self.peak_total, self.last_total)
            for key, n in counts.items():
                self.peak_of[key] = max(self.peak_of.get(key, 0), n)

    def run(self) -> None:
        while not self.stopping.is_set():
            t0 = time.monotonic()
            try:
                self.sample()
            except Exception:  # a failed list is a missed sample, reported as such
                with self.lock:
                    self.errors += 1
            self.stopping.wait(max(0.0, SAMPLE_EVERY_S - (time.monotonic() - t0)))


def succeeded(ws: dict[str, Any]) -> bool:
    gen = (ws.get("metadata") or {}).get("generation")
    for c in (ws.get("status") or {}).get("conditions") or []:
        if c.get("type") == "WorkspaceSucceeded":
            return c.get("status") == "True" and c.get("observedGeneration") == gen
    return False


def wait_ready(procs: Processes, cluster: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cluster.poll() is not None:
            raise RuntimeError(f"workspace-fsm cluster exited with code {cluster.returncode}: {log.read_text()}")
        if "embedded cluster ready" in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise RuntimeError(f"workspace-fsm cluster not ready after {timeout:.0f} s")


def measure(args: argparse.Namespace, workdir: Path, procs: Processes) -> dict[str, Any]:
    from kubernetes import client, config

    rng = random.Random(args.seed)
    kubeconfig = workdir / "kubeconfig"
    cluster = procs.start(binary() + ["cluster", "--kubeconfig-out", str(kubeconfig), "--time-scale",
                                      f"{args.time_scale:g}", "--seed", str(args.seed)], "cluster.log")
    wait_ready(procs, cluster, workdir / "cluster.log", 60)
    api = config.new_client_from_config(config_file=str(kubeconfig))
    custom = client.CustomObjectsApi(api)
    sampler = Sampler(custom)
    sampler.start()

    runners = Runners(procs, kubeconfig, args.runners, log_level=args.log_level)
    for i in range(args.runners):
        runners.start(i)
    runners.wait_watching(30.0)
    time.sleep(args.warmup)  # their caches sync: the Workspaces arrive as watch events, as on a live cluster
    started = time.monotonic()
    targets: dict[str, int] = {}
    for i in range(args.workspaces):
        name = f"ws-{i:03d}"
        count = rng.randint(1, 3)
        targets[f"{NAMESPACE}/{name}"] = count
        custom.create_namespaced_custom_object("kaito.sh", "v1beta1", NAMESPACE, "workspaces", workspace(name, count))

    deadline = started + args.timeout
    next_kill = started + args.kill_every if args.kill_every else None
    done = False
    while time.monotonic() < deadline:
        runners.check_alive()
        now = time.monotonic()
        if next_kill is not None and now >= next_kill:
            runners.kill_one(rng.randrange(args.runners))
            next_kill = now + args.kill_every
        items = custom.list_namespaced_custom_object("kaito.sh", "v1beta1", NAMESPACE, "workspaces")["items"]
        if len(items) == len(targets) and all(succeeded(w) for w in items):
            done = True
            break
        time.sleep(0.2)
    seconds = time.monotonic() - started
    time.sleep(args.settle)  # extra NodeClaims a runner deletes late, or creates late, show here
    sampler.stopping.set()
    sampler.join(5)
    sampler.sample()
    items = custom.list_namespaced_custom_object("kaito.sh", "v1beta1", NAMESPACE, "workspaces")["items"]
    if args.keep:  # the objects as they ended, beside the logs
        claims = custom.list_cluster_custom_object("karpenter.sh", "v1", "nodeclaims")["items"]
        (workdir / "final-objects.json").write_text(json.dumps({"workspaces": items, "nodeclaims": claims}, indent=1))
    all_succeeded = len(items) == len(targets) and all(succeeded(w) for w in items)
    stuck = sorted(f"{NAMESPACE}/{w['metadata']['name']}" for w in items if not succeeded(w))
    over = {k: sampler.peak_of[k] - t for k, t in sorted(targets.items()) if sampler.peak_of.get(k, 0) > t}
    at_end_over = {k: sampler.last[k] - t for k, t in sorted(targets.items()) if sampler.last.get(k, 0) > t}
    api.close()
    return {
        "runners": args.runners,
        "kill_every_s": args.kill_every,
        "kills": sum(runners.kills),
        "kills_per_runner": runners.kills,
        "seed": args.seed,
        "workspaces": args.workspaces,
        "targets_sum": sum(targets.values()),
        "peak_nodeclaims": sampler.peak_total,
        "workspaces_over_target": len(over),
        "max_over_target": max(over.values(), default=0),
        "over_target": over,
        "at_end_nodeclaims": sampler.last_total,
        "at_end_over_target": at_end_over,
        "all_succeeded": all_succeeded,
        "not_succeeded": stuck,
        "succeeded_within_timeout": done,
        "seconds": round(seconds, 1),
        "samples": sampler.samples,
        "sample_errors": sampler.errors,
        "runner_exits_unexpected": runners.unexpected,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runners", type=int, default=2, help="runner processes at once (default 2)")
    p.add_argument("--workspaces", type=int, default=30, help="Workspaces applied (default 30)")
    p.add_argument("--kill-every", type=float, default=0.0, metavar="K",
                   help="SIGKILL one runner (drawn from the seed) every K seconds and restart it (default 0: never)")
    p.add_argument("--seed", type=int, default=1, help="draws the counts, the killed runners and the cluster's seed")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for every Workspace to succeed (default 300)")
    p.add_argument("--settle", type=float, default=3.0, help="seconds sampled after all succeeded (default 3)")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds between the runners watching and the first Workspace applied (default 2)")
    p.add_argument("--time-scale", type=float, default=60.0, help="the cluster's speed-up (default 60)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="the runners' log level (default info: transitions are logged)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory with every process's log")
    args = p.parse_args()
    if args.runners < 1 or args.workspaces < 1:
        p.error("--runners and --workspaces must be at least 1")

    workdir = Path(tempfile.mkdtemp(prefix="workspace-fsm-multi-runner-"))
    procs = Processes(workdir)

    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        result = measure(args, workdir, procs)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # let the clean-up finish
        procs.stop_all()
        if args.keep:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=1))
    return 0 if result["all_succeeded"] and not result["over_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
