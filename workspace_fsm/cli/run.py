"""``workspace-fsm run``: the runner against a real (or the embedded test) Kubernetes API server."""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("workspace_fsm.run")

#: ``--health-port auto``: a free port chosen by the system, printed (the default with ``--embedded``).
AUTO = "auto"
DEFAULT_HEALTH_PORT = 8081
#: Workers start this long after the informers even if the caches have not synced yet.
SYNC_GRACE_S = 60.0


def health_port(value: str) -> int | str:
    """``--health-port``: a port number, ``auto`` (a free one) or 0 (no probes)."""
    if value.strip().lower() == AUTO:
        return AUTO
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port: give a number, auto (a free port) "
                                         "or 0 (no probes)") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: ports are 1 to 65535 (or auto, or 0 for no probes)")
    return port


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the machine against a Kubernetes cluster (kubeconfig, in-cluster, or --embedded)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig file (default: in-cluster config, then ~/.kube/config)")
    src.add_argument("--embedded", action="store_true",
                     help="start an embedded test API server with KAITO's CRDs and simulated GPU nodes, and run against it")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--namespace", help="only Workspaces in this namespace (default: all namespaces)")
    p.add_argument("--workers", type=int, default=5, help="concurrent reconcilers (default 5)")
    p.add_argument("--byo-nodes", action="store_true", help="node auto-provisioning is disabled: Workspaces bring their own nodes")
    p.add_argument("--health-port", type=health_port, default=None, metavar="PORT",
                   help="port for /healthz, /readyz and Prometheus /metrics: a number, 'auto' (a free port, "
                        "printed) or 0 (no probes); default 8081, with --embedded auto")
    p.add_argument("--catalogue", action="append", metavar="FILE",
                   help="extra preset catalogue (presets.yaml or KAITO supported_models.yaml shape), added to the "
                        "shipped one: Workspaces may name its presets; repeatable")
    p.add_argument("--api-request-timeout", type=float, default=None, metavar="SECONDS",
                   help="the API server's --request-timeout (default 60; with --embedded, the embedded server's 5): "
                        "how long a create the runner sent may still be applied. A NodeClaim found missing is "
                        "replaced only after this plus 16 s, unless the server refused its create outright")
    p.add_argument("--time-scale", type=float, default=60.0,
                   help="with --embedded: how many times faster than real the simulated cluster runs (default 60)")
    p.add_argument("--lifecycle", action="append", metavar="NAME|MODULE:ATTR",
                   help="a lifecycle to drive: workspace, ragengine, or an author's (package.module:ATTR or "
                        "path/to/file.py:ATTR); repeatable. Default: every built-in whose CRD the cluster serves")
    p.add_argument("--apply", action="append", metavar="FILE",
                   help="with --embedded: create the objects in this YAML file once the cluster is up; repeatable")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run)


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


class HealthServer(ThreadingHTTPServer):
    """The probe server: bound when made (so a busy port is known before anything starts), serving once
    :func:`serve_health` gives it its checks."""

    daemon_threads = True
    ready: callable = staticmethod(lambda: False)
    alive: callable = staticmethod(lambda: True)
    metrics: callable | None = None  # () -> (content type, body) in the Prometheus text format

    serving = False

    @property
    def port(self) -> int:
        return self.server_address[1]

    def close(self) -> None:
        """Stop serving (if it was) and release the port; safe to call more than once."""
        if self.serving:
            self.serving = False
            self.shutdown()
        self.server_close()


class _Health(BaseHTTPRequestHandler):
    server: HealthServer

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path == "/metrics" and self.server.metrics is not None:
            try:
                ctype, body = self.server.metrics()
                self._reply(200, ctype, body)
            except Exception:  # a collector bug must not take the probes down with it
                log.exception("rendering /metrics failed")
                self._reply(500, "text/plain", b"metrics unavailable; see the runner's log\n")
            return
        ok = (self.server.alive() if path.startswith("/healthz") else self.server.ready()
              if path.startswith("/readyz") else None)
        code = 404 if ok is None else 200 if ok else 503
        body = b"ok\n" if ok else b"not ready\n" if ok is False else b"not found\n"
        self._reply(code, "text/plain", body)

    def _reply(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class HealthPortError(Exception):
    """``--health-port`` cannot be bound; the message is the one line to show the operator."""


def bind_health_server(port: int | str | None, *, command: str = "run") -> HealthServer | None:
    """Bind the probe port (``auto``: a free one; 0 or None: no probes), serving nothing yet.

    Raises :class:`HealthPortError` with one line naming the option when the port cannot be had."""
    if port in (0, None):
        return None
    try:
        return HealthServer(("0.0.0.0", 0 if port == AUTO else int(port)), _Health)
    except OSError as exc:
        prefix = f"workspace-fsm {command}: --health-port {port}"
        if exc.errno == errno.EADDRINUSE:
            msg = (f"{prefix} is already in use (address in use); choose another port, "
                   f"--health-port {AUTO} (a free one) or --health-port 0 (no probes)")
        elif exc.errno == errno.EACCES:
            msg = (f"{prefix} needs privileges to bind (permission denied); choose a port above 1023, "
                   f"--health-port {AUTO} (a free one) or --health-port 0 (no probes)")
        else:
            msg = f"{prefix} cannot be bound ({exc.strerror or exc}); choose another port or --health-port 0"
        raise HealthPortError(msg) from exc


def serve_health(server: HealthServer, ready, alive, registry=None) -> HealthServer:
    """Serve /healthz, /readyz and (given a prometheus_client registry) /metrics on a bound server."""
    server.ready = staticmethod(ready)
    server.alive = staticmethod(alive)
    if registry is not None:
        from workspace_fsm.engine.metrics import CONTENT_TYPE_LATEST, render

        server.metrics = staticmethod(lambda: (CONTENT_TYPE_LATEST, render(registry)))
    server.serving = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server


def start_health_server(port: int | str, ready, alive, registry=None) -> HealthServer | None:
    """Bind and serve the probes on ``port`` (``auto``: a free one; 0: none)."""
    server = bind_health_server(port)
    return None if server is None else serve_health(server, ready, alive, registry)


def probes_line(server: HealthServer) -> str:
    return f"probes on port {server.port}: http://127.0.0.1:{server.port}/healthz, /readyz, /metrics"


def load_api_client(kubeconfig: str | None, context: str | None):
    from workspace_fsm.adapters.kubernetes.client import api_client

    return api_client(kubeconfig, context)


def run(args: argparse.Namespace) -> int:
    from workspace_fsm.kaito.catalogue import CatalogueError
    from workspace_fsm.cli.main import load_catalogue

    setup_logging(args.log_level)
    from workspace_fsm.cli.lifecycles import LifecycleNotFound, load_lifecycle

    try:
        args.lifecycles = [load_lifecycle(spec) for spec in (args.lifecycle or ())]
    except LifecycleNotFound as exc:
        print(f"workspace-fsm run: {exc}", file=sys.stderr)
        return 2
    if args.apply and not args.embedded:
        print("workspace-fsm run: --apply needs --embedded (against a real cluster, use kubectl apply)", file=sys.stderr)
        return 2
    if args.health_port is None:
        args.health_port = AUTO if args.embedded else DEFAULT_HEALTH_PORT
    try:
        catalogue = load_catalogue(args.catalogue)
    except CatalogueError as exc:
        print(f"workspace-fsm run: cannot use --catalogue {exc}", file=sys.stderr)
        return 2
    # Bound before anything starts or says it is ready: a busy port is one line and exit 2, not a traceback.
    try:
        health = bind_health_server(args.health_port)
    except HealthPortError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        if args.embedded:
            from workspace_fsm.cli.embedded import run_embedded

            return run_embedded(args, health=health, catalogue=catalogue)
        try:
            api = load_api_client(args.kubeconfig, args.context)
        except Exception as exc:
            print(f"workspace-fsm run: cannot load Kubernetes configuration: {exc}", file=sys.stderr)
            return 2
        if health is not None and args.health_port == AUTO:
            print(probes_line(health), flush=True)
        where = f"--kubeconfig {args.kubeconfig}" if args.kubeconfig else "the kubeconfig / in-cluster configuration"
        return run_against(api, args, health=health, catalogue=catalogue,
                           unreachable_hint=f"check {where} and the server")
    finally:
        if health is not None:
            health.close()


def build_runner(api, *, namespace: str | None = None, workers: int = 5, byo_nodes: bool = False,
                 api_request_timeout_s: float = 60.0, catalogue=None, informers=None):
    """The adapter, queue, reconciler and threaded runner for a cluster (nothing started yet); ``informers``: the
    process's shared informers (``SharedInformers``), else the adapter has its own."""
    from workspace_fsm.adapters.kubernetes.adapter import KubernetesAdapter
    from workspace_fsm.kaito.catalogue import Catalogue
    from workspace_fsm.kaito.workspace import Config
    from workspace_fsm.engine.queue import WorkQueue
    from workspace_fsm.engine.runner import FsmReconciler, ThreadedRunner

    adapter = KubernetesAdapter(api, namespace=namespace, catalogue=catalogue or Catalogue.default(),
                                auto_provisioning=not byo_nodes, informers=informers)
    queue: WorkQueue[str] = WorkQueue(time.monotonic)
    adapter.set_event_handler(queue.add)
    reconciler = FsmReconciler(adapter, time.time, config=Config(auto_provisioning=not byo_nodes,
                                                  api_request_timeout=timedelta(seconds=api_request_timeout_s)),
                               epoch=datetime(1970, 1, 1, tzinfo=timezone.utc))
    runner = ThreadedRunner(reconciler, queue, workers=workers)
    return adapter, queue, reconciler, runner


def run_against(api, args: argparse.Namespace, stop: threading.Event | None = None, *,
                health: HealthServer | None = None, catalogue=None, unreachable_hint: str = "") -> int:
    """Start informers, workers and probes; run until SIGTERM/SIGINT (or ``stop``).

    ``health`` is a probe server already bound (by :func:`run`, so a busy port fails first); without one,
    ``args.health_port`` is bound here (:class:`HealthPortError` if it cannot be). /readyz answers 200
    once every cache has synced. If the API server cannot be reached, one warning says so (the informers
    keep retrying quietly) and one line says when it is reachable again.

    Every lifecycle's adapter reads through one set of informers (one list and one watch per resource for the
    whole process, see ``adapters/kubernetes/cache.py``), and /metrics serves every lifecycle's figures."""
    from workspace_fsm.adapters.kubernetes.cache import SharedInformers
    from workspace_fsm.adapters.kubernetes.informer import Reachability

    stop = stop or threading.Event()
    if health is None:
        health = bind_health_server(getattr(args, "health_port", 0))
    workers = getattr(args, "workers", 5)
    namespace = getattr(args, "namespace", None)
    controllers = []  # (lifecycle, adapter, queue, reconciler, runner)
    cache = SharedInformers()  # one informer per resource, whatever the number of lifecycles that read it
    for lc in _lifecycles(api, args):
        if lc.name == "workspace":
            adapter, queue, reconciler, runner = build_runner(
                api, namespace=namespace, workers=workers, byo_nodes=getattr(args, "byo_nodes", False),
                api_request_timeout_s=getattr(args, "api_request_timeout", None) or 60.0, catalogue=catalogue,
                informers=cache)
        else:
            adapter, queue, reconciler, runner = build_lifecycle_runner(
                api, lc, namespace=namespace, workers=workers,
                api_request_timeout_s=getattr(args, "api_request_timeout", None) or 60.0, informers=cache)
        controllers.append((lc, adapter, queue, reconciler, runner))
    reachability = Reachability(getattr(api.configuration, "host", None) or "the API server", hint=unreachable_hint,
                                logger=log)
    cache.set_reachability(reachability)
    for line in cache.describe():
        log.debug("informer %s", line)
    for line in cache.widened():
        log.info("shared informers of %s", line)
    synced = lambda: cache.synced  # noqa: E731
    if health is not None:
        from workspace_fsm.engine.metrics import Served, build_registry

        served = [Served(lc.name, adapter, queue, reconciler, runner)
                  for lc, adapter, queue, reconciler, runner in controllers]
        serve_health(health, ready=synced, alive=lambda: not stop.is_set(),
                     registry=build_registry(served, informers=lambda: cache.informers))
        log.info("serving /healthz, /readyz and /metrics on port %d", health.port)
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, lambda *_: stop.set())
        except ValueError:  # not the main thread (tests): the caller's stop event is enough
            pass
    kinds = ", ".join(f"{c[0].resource.kind}s ({c[0].name})" for c in controllers)
    try:
        for c in controllers:
            c[1].start()
        log.info("watching %s%s; %d workers each", kinds, f" in namespace {namespace}" if namespace else "", workers)
        started_at = time.monotonic()
        working = ready = False
        last = started_at
        while not stop.is_set():
            now = time.monotonic()
            if not ready and synced():
                ready = True
                log.info("caches synced (%s): ready", ", ".join(f"{len(c[1].keys())} {c[0].resource.kind}s"
                                                              for c in controllers))
            if not working and (ready or now - started_at >= SYNC_GRACE_S):
                if not ready and reachability.reachable:
                    log.warning("caches not synced after %gs; starting anyway, they will catch up", SYNC_GRACE_S)
                for c in controllers:
                    c[4].start()
                working = True
            if working and now - last >= 30:
                last = now
                for lc, adapter, queue, reconciler, _ in controllers:
                    log.info("%d %ss watched, %d passes so far, queue: %d ready, %d waiting", len(adapter.keys()),
                             lc.resource.kind, reconciler.passes, queue.ready_count, queue.waiting_count)
            stop.wait(1.0 if ready else 0.1)
        log.info("stopping: finishing passes in flight")
    finally:
        for c in controllers:
            c[4].stop()
            c[1].stop()
        if health is not None:
            health.close()
    log.info("stopped after %d passes", sum(c[3].passes for c in controllers))
    return 0


def _lifecycles(api, args: argparse.Namespace) -> list:
    """The lifecycles to drive: the ones named, else every built-in whose resource the cluster serves."""
    named = getattr(args, "lifecycles", None)
    if named:
        return list(named)
    from workspace_fsm.cli.lifecycles import BUILTIN, LifecycleNotFound, load_lifecycle

    chosen = []
    for name in BUILTIN:
        try:
            lc = load_lifecycle(name)
        except LifecycleNotFound:
            continue  # not in this build
        if name == "workspace" or _served(api, lc.resource):
            chosen.append(lc)
    return chosen


def _served(api, kind) -> bool:
    from kubernetes import client as k8s

    try:
        k8s.CustomObjectsApi(api).list_cluster_custom_object(kind.group, kind.version, kind.plural, limit=1,
                                                             _request_timeout=10)
        return True
    except Exception:
        return False


def build_lifecycle_runner(api, lifecycle, *, namespace: str | None = None, workers: int = 5,
                           api_request_timeout_s: float = 60.0, informers=None):
    """The generic adapter, queue, reconciler and threaded runner for an author's lifecycle (``informers`` as for
    :func:`build_runner`)."""
    import attrs

    from workspace_fsm.adapters.kubernetes.generic import ResourceAdapter
    from workspace_fsm.engine.queue import WorkQueue
    from workspace_fsm.engine.runner import FsmReconciler, ThreadedRunner

    if lifecycle.name == "ragengine":
        from workspace_fsm.adapters.kubernetes.ragengine import ragengine_adapter

        adapter = ragengine_adapter(api, namespace=namespace, informers=informers)
    else:
        adapter = ResourceAdapter(api, lifecycle, namespace=namespace, informers=informers)
    queue: WorkQueue[str] = WorkQueue(time.monotonic)
    adapter.set_event_handler(queue.add)
    config = attrs.evolve(lifecycle.config, api_request_timeout=timedelta(seconds=api_request_timeout_s))
    reconciler = FsmReconciler(adapter, time.time, config=config, epoch=datetime(1970, 1, 1, tzinfo=timezone.utc))
    return adapter, queue, reconciler, ThreadedRunner(reconciler, queue, workers=workers)
