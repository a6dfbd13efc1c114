"""A Kubernetes API server for tests: real HTTP for the ``kubernetes`` client and ``kubectl``.

>>> from workspace_fsm.testing import TestAPIServer
>>> with TestAPIServer(crds=["kaito.sh_workspaces.yaml"]) as server:
...     server.write_kubeconfig(tmp_path / "kubeconfig")
...     api = kubernetes.client.CustomObjectsApi(server.api_client())

What it serves and how closely it follows a real kube-apiserver is described in
``docs``-style detail in :mod:`workspace_fsm.testing.server` and :mod:`workspace_fsm.testing.store`;
``server.faults`` injects failures (see :mod:`workspace_fsm.testing.faults`) and ``server.requests``
counts requests by verb and resource. Pytest fixtures: :mod:`workspace_fsm.testing.pytest_plugin`.
"""

from workspace_fsm.testing.errors import APIError
from workspace_fsm.testing.faults import Fault, Faults, RequestCounts, RequestInfo
from workspace_fsm.testing.resources import ResourceInfo
from workspace_fsm.testing.server import TestAPIServer

__all__ = ["APIError", "Fault", "Faults", "RequestCounts", "RequestInfo", "ResourceInfo", "TestAPIServer"]
