"""The embedded cluster: the test API server with KAITO's and Karpenter's CRDs, plus the simulated
Karpenter, device plugin and workload controllers acting through it. ``workspace-fsm cluster`` runs only
this; ``workspace-fsm run --embedded`` runs it and the machine in one process."""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
import tempfile
import threading
from importlib import resources
from pathlib import Path

log = logging.getLogger("workspace_fsm.cli.embedded")


def crd_paths() -> list[Path]:
    data = resources.files("workspace_fsm")
    return [Path(str(data / "kaito" / "data" / "kaito.sh_workspaces.yaml")),
            Path(str(data / "kaito" / "data" / "kaito.sh_ragengines.yaml")),
            Path(str(data / "testing" / "crds" / "karpenter.sh_nodeclaims.yaml"))]


# The embedded API server answers a request that could not be applied within this many seconds with 504
# and never applies it later; runners against it are told so (Config.api_request_timeout).
EMBEDDED_REQUEST_TIMEOUT = 5.0


class RunnerThread:
    """``workspace-fsm run`` against an embedded cluster, in a thread; ``kill`` stops it as a SIGTERM would."""

    def __init__(self, cluster: EmbeddedCluster, *, namespace: str | None = None, workers: int = 5,
                 byo_nodes: bool = False) -> None:
        from workspace_fsm.cli.run import run_against

        self.stop = threading.Event()
        args = argparse.Namespace(namespace=namespace, workers=workers, byo_nodes=byo_nodes, health_port=0,
                                  api_request_timeout=cluster.request_timeout)
        self.thread = threading.Thread(target=run_against, args=(cluster.api, args, self.stop), daemon=True,
                                       name="workspace-fsm-runner")
        self.thread.start()

    def kill(self, timeout_s: float = 20.0) -> None:
        self.stop.set()
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            raise RuntimeError(f"the runner did not stop within {timeout_s:g} s")


class EmbeddedCluster:
    def __init__(self, *, time_scale: float = 60.0, seed: int = 1, port: int = 0, params=None,
                 request_timeout: float = EMBEDDED_REQUEST_TIMEOUT, crds=(), tls: bool = True) -> None:
        from workspace_fsm.testing import TestAPIServer

        self.request_timeout = request_timeout
        extra = [Path(p) for p in crds if Path(p) not in crd_paths()]
        # HTTPS with a CA of its own and bearer-token authentication, as a real cluster: the kubeconfig written
        # carries the CA and an admin token. tls=False (`cluster --plain-http`) serves plain HTTP.
        self.server = TestAPIServer(crds=crd_paths() + extra, port=port, request_timeout=request_timeout, tls=tls)
        self.time_scale = time_scale
        self.seed = seed
        self.params = params  # adapters.simulated.params.SimParams: latencies and failure rates
        self.controllers = None
        self.api = None

    def run_in_thread(self, *, namespace: str | None = None, workers: int = 5,
                      byo_nodes: bool = False) -> RunnerThread:
        """Start ``workspace-fsm run`` against this (started) cluster in a thread, as tests and benchmarks do."""
        return RunnerThread(self, namespace=namespace, workers=workers, byo_nodes=byo_nodes)

    def start(self, kubeconfig_out: str | Path) -> Path:
        from workspace_fsm.adapters.kubernetes.client import api_client
        from workspace_fsm.adapters.simulated.http_controllers import SimulatedControllers

        self.server.start()
        path = Path(self.server.write_kubeconfig(kubeconfig_out))
        self.api = api_client(str(path))
        # The simulated cluster's own controllers use a client of their own, with their own user agent.
        self.controllers = SimulatedControllers(api_client(str(path), user_agent="simulated-cluster-controllers"),
                                                params=self.params, seed=self.seed, time_scale=self.time_scale)
        self.controllers.start()
        self.controllers.wait_synced(30.0)
        return path

    def stop(self) -> None:
        if self.controllers is not None:
            self.controllers.stop()
        self.server.stop()


def apply_file(api, path: str, namespace: str = "default") -> list[str]:
    """Create every object of a YAML file (as ``kubectl create -f``); one line per object, or why it failed."""
    import yaml
    from kubernetes import utils
    from kubernetes.client import CustomObjectsApi
    from kubernetes.client.exceptions import ApiException

    out = []
    for doc in yaml.safe_load_all(Path(path).read_text()):
        if not isinstance(doc, dict):
            continue
        kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name")
        group, _, version = str(doc.get("apiVersion", "")).rpartition("/")
        try:
            if group and "." in group and not group.endswith("k8s.io"):  # a custom resource
                CustomObjectsApi(api).create_namespaced_custom_object(group, version, namespace,
                                                                      kind.lower() + "s", doc)
            else:
                utils.create_from_dict(api, doc, namespace=namespace)
            out.append(f"created {kind} {namespace}/{name} from {path}")
        except (ApiException, utils.FailToCreateError) as exc:
            out.append(f"could not create {kind} {namespace}/{name} from {path}: {exc}")
    return out


def add_cluster_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cluster", help="start only the embedded cluster (test API server + simulated GPU nodes)")
    p.add_argument("--kubeconfig-out", required=True, metavar="PATH", help="write a kubeconfig here once it is ready")
    p.add_argument("--time-scale", type=float, default=60.0, help="simulated latencies run this many times faster (default 60)")
    p.add_argument("--port", type=int, default=0, help="API server port on 127.0.0.1 (default: a free one)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--plain-http", action="store_true",
                   help="serve plain HTTP instead of HTTPS (the kubeconfig then has no CA); tokens are still checked")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run_cluster)


def _wait_for_signal(stop: threading.Event) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


def run_cluster(args: argparse.Namespace) -> int:
    from workspace_fsm.cli.run import setup_logging

    setup_logging(args.log_level)
    cluster = EmbeddedCluster(time_scale=args.time_scale, seed=args.seed, port=args.port,
                              tls=not getattr(args, "plain_http", False))
    path = cluster.start(args.kubeconfig_out)
    print(f"embedded cluster ready at {cluster.server.url}; kubeconfig written to {path}", flush=True)
    print(f"  try: kubectl --kubeconfig {path} apply -f <a KAITO Workspace manifest>", flush=True)
    stop = threading.Event()
    try:
        _wait_for_signal(stop)
    finally:
        cluster.stop()
    print("embedded cluster stopped", flush=True)
    return 0


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def run_embedded(args: argparse.Namespace, *, health=None, catalogue=None) -> int:
    """``workspace-fsm run --embedded``: the embedded cluster and the machine in this process, until SIGINT or
    SIGTERM. The kubeconfig lives in a temporary directory that is removed on the way out."""
    from workspace_fsm.cli.run import probes_line, run_against

    # Until the runner installs its own handlers, SIGTERM unwinds like Ctrl-C so the cleanup below runs.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="workspace-fsm-"))
    cluster = None
    try:
        crds = [c for lc in getattr(args, "lifecycles", None) or () for c in lc.crds]
        cluster = EmbeddedCluster(time_scale=args.time_scale, crds=crds)
        if getattr(args, "api_request_timeout", None) is None:
            args.api_request_timeout = cluster.request_timeout
        path = cluster.start(tmp / "kubeconfig")
        print(f"embedded cluster ready; kubeconfig: {path}", flush=True)
        print(f"  kubectl --kubeconfig {path} apply -f <a KAITO Workspace manifest>", flush=True)
        print(f"  kubectl --kubeconfig {path} get workspaces -w", flush=True)
        if health is not None:
            print(f"  {probes_line(health)}", flush=True)
        print("  (the kubeconfig's directory is removed when this stops)", flush=True)
        for f in getattr(args, "apply", None) or ():
            for line in apply_file(cluster.api, f):
                print(f"  {line}", flush=True)
        return run_against(cluster.api, args, health=health, catalogue=catalogue)
    finally:
        try:
            if cluster is not None:
                cluster.stop()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            signal.signal(signal.SIGTERM, previous)
            sys.stdout.flush()
