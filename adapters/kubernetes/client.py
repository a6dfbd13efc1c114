"""An ApiClient for the runner: kubeconfig or in-cluster, with a connection pool sized for its threads."""

from __future__ import annotations

from kubernetes import client, config
from urllib3.util.retry import Retry

# Six informers hold a watch connection each, workers make calls: the client's default pool of 10 drops
# connections under load (and says so in a warning). Size it for both.
POOL_SIZE = 64
USER_AGENT = "workspace-fsm/0.1.0"


def retries() -> Retry:
    """One retry of a request whose connection broke (an idempotent one: urllib3 never resends a POST), and
    nothing else.

    urllib3's default also retries a 429/503 answer carrying Retry-After by sleeping for it, which would
    hold a worker for up to three times Retry-After. The answer goes to the adapter instead, and the work
    queue delays the Workspace by Retry-After, holding no worker.

    A connection that cannot be made (refused, unresolvable host, connect timeout, TLS failure) is not
    retried here either: urllib3 would log a warning per attempt and per thread, hundreds a minute against
    a server that is down. The informers retry it at a steady pace and say once that the server cannot be
    reached (``Reachability``); a pass that fails on it is retried by the work queue's backoff."""
    return Retry(total=1, connect=0, read=1, status=0, redirect=0, other=0, backoff_factor=0.1,
                 respect_retry_after_header=False, raise_on_status=False)


def api_client(kubeconfig: str | None = None, context: str | None = None, *,
               user_agent: str = USER_AGENT) -> client.ApiClient:
    cfg = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            config.load_kube_config(context=context, client_configuration=cfg)
    cfg.connection_pool_maxsize = POOL_SIZE
    cfg.retries = retries()
    api = client.ApiClient(cfg)
    api.user_agent = user_agent  # audit logs (and test fault rules) can tell the runner's requests apart
    return api
