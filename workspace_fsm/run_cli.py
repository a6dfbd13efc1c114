"""``workspace-fsm run``: the runner against a real (or the embedded test) Kubernetes API server."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("workspace_fsm.run")


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
    p.add_argument("--health-port", type=int, default=8081,
                   help="port for /healthz, /readyz and Prometheus /metrics (0: off; default 8081)")
    p.add_argument("--api-request-timeout", type=float, default=None, metavar="SECONDS",
                   help="the API server's --request-timeout (default 60; with --embedded, the embedded server's 5): "
                        "how long a create the runner sent may still be applied. A NodeClaim found missing is "
                        "replaced only after this plus 16 s, unless the server refused its create outright")
    p.add_argument("--time-scale", type=float, default=60.0,
                   help="with --embedded: how many times faster than real the simulated cluster runs (default 60)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run)


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


class _Health(BaseHTTPRequestHandler):
    ready: callable = staticmethod(lambda: False)
    alive: callable = staticmethod(lambda: True)
    metrics: callable | None = None  # () -> (content type, body) in the Prometheus text format

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path == "/metrics" and self.metrics is not None:
            try:
                ctype, body = self.metrics()
                self._reply(200, ctype, body)
            except Exception:  # a collector bug must not take the probes down with it
                log.exception("rendering /metrics failed")
                self._reply(500, "text/plain", b"metrics unavailable; see the runner's log\n")
            return
        ok = self.alive() if path.startswith("/healthz") else self.ready() if path.startswith("/readyz") else None
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


def start_health_server(port: int, ready, alive, registry=None) -> ThreadingHTTPServer | None:
    """Serve /healthz, /readyz and (given a prometheus_client registry) /metrics on ``port`` (0: off)."""
    if not port:
        return None
    attrs = {"ready": staticmethod(ready), "alive": staticmethod(alive)}
    if registry is not None:
        from .metrics import CONTENT_TYPE_LATEST, render

        attrs["metrics"] = staticmethod(lambda: (CONTENT_TYPE_LATEST, render(registry)))
    handler = type("Health", (_Health,), attrs)
    server = ThreadingHTTPServer(("0.0.0.0", port), handler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server


def load_api_client(kubeconfig: str | None, context: str | None):
    from .adapters.kubernetes.client import api_client

    return api_client(kubeconfig, context)


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    if args.embedded:
        from .embedded import run_embedded

        return run_embedded(args)
    try:
        api = load_api_client(args.kubeconfig, args.context)
    except Exception as exc:
        print(f"workspace-fsm run: cannot load Kubernetes configuration: {exc}", file=sys.stderr)
        return 2
    return run_against(api, args)


def build_runner(api, *, namespace: str | None = None, workers: int = 5, byo_nodes: bool = False,
                 api_request_timeout_s: float = 60.0):
    """The adapter, queue, reconciler and threaded runner for a cluster (nothing started yet)."""
    from .adapters.kubernetes.adapter import KubernetesAdapter
    from .catalogue import Catalogue
    from .lifecycle import Config
    from .queue import WorkQueue
    from .runner import FsmReconciler, ThreadedRunner

    adapter = KubernetesAdapter(api, namespace=namespace, catalogue=Catalogue.default(),
                                auto_provisioning=not byo_nodes)
    queue: WorkQueue[str] = WorkQueue(time.monotonic)
    adapter.set_event_handler(queue.add)
    reconciler = FsmReconciler(adapter, time.time, config=Config(auto_provisioning=not byo_nodes,
                                                  api_request_timeout=timedelta(seconds=api_request_timeout_s)),
                               epoch=datetime(1970, 1, 1, tzinfo=timezone.utc))
    runner = ThreadedRunner(reconciler, queue, workers=workers)
    return adapter, queue, reconciler, runner


def run_against(api, args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Start informers, workers and probes; run until SIGTERM/SIGINT (or ``stop``)."""
    stop = stop or threading.Event()
    adapter, queue, reconciler, runner = build_runner(api, namespace=args.namespace, workers=args.workers,
                                                      byo_nodes=args.byo_nodes,
                                                      api_request_timeout_s=getattr(args, "api_request_timeout", None) or 60.0)
    registry = None
    if args.health_port:
        from .metrics import build_registry

        registry = build_registry(adapter, queue, reconciler, workers=args.workers)
    health = start_health_server(args.health_port, ready=lambda: all(i.synced for i in adapter.informers),
                                 alive=lambda: not stop.is_set(), registry=registry)
    if health is not None:
        log.info("serving /healthz, /readyz and /metrics on port %d", health.server_address[1])
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, lambda *_: stop.set())
        except ValueError:  # not the main thread (tests): the caller's stop event is enough
            pass
    adapter.start()
    log.info("watching Workspaces%s; %d workers", f" in namespace {args.namespace}" if args.namespace else "",
             args.workers)
    if not adapter.wait_synced(60.0):
        log.warning("caches not synced after 60s; starting anyway, they will catch up")
    runner.start()
    last = 0.0
    while not stop.wait(1.0):
        now = time.monotonic()
        if now - last >= 30:
            last = now
            log.info("%d Workspaces watched, %d passes so far, queue: %d ready, %d waiting", len(adapter.keys()),
                     reconciler.passes, queue.ready_count, queue.waiting_count)
    log.info("stopping: finishing passes in flight")
    runner.stop()
    adapter.stop()
    if health is not None:
        health.shutdown()
        health.server_close()
    log.info("stopped after %d passes", reconciler.passes)
    return 0
