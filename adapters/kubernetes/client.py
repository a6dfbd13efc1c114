"""An ApiClient for the runner: kubeconfig or in-cluster, with a connection pool sized for its threads."""

from __future__ import annotations

from kubernetes import client, config

# Six informers hold a watch connection each, workers make calls: the client's default pool of 10 drops
# connections under load (and says so in a warning). Size it for both.
POOL_SIZE = 64
USER_AGENT = "workspace-fsm/0.1.0"


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
    api = client.ApiClient(cfg)
    api.user_agent = user_agent  # audit logs (and test fault rules) can tell the runner's requests apart
    return api
