"""A Kubernetes API server for tests: real HTTP for the ``kubernetes`` client and ``kubectl``.

>>> from workspace_fsm.testing import TestAPIServer
>>> with TestAPIServer(crds=["kaito.sh_workspaces.yaml"]) as server:
...     server.write_kubeconfig(tmp_path / "kubeconfig")
...     api = kubernetes.client.CustomObjectsApi(server.api_client())

What it serves and how closely it follows a real kube-apiserver is described in
``docs``-style detail in :mod:`workspace_fsm.testing.server` and :mod:`workspace_fsm.testing.store`;
``server.faults`` injects failures (see :mod:`workspace_fsm.testing.faults`) and ``server.requests``
counts requests by verb and resource. Pytest fixtures: :mod:`workspace_fsm.testing.pytest_plugin`.

Property tests for any declared lifecycle: :mod:`workspace_fsm.testing.model` (:class:`ModelWorld`,
:class:`ModelCluster`, :func:`check_lifecycle`; docs/testing.md walks through it).
"""

from workspace_fsm.testing.errors import APIError
from workspace_fsm.testing.faults import Fault, Faults, RequestCounts, RequestInfo
from workspace_fsm.testing.model import (ChildModel, Gone, ModelCluster, ModelOwned, ModelViolation, ModelWorld,
                                         check_lifecycle, state_machine)
from workspace_fsm.testing.resources import ResourceInfo
from workspace_fsm.testing.server import TestAPIServer

__all__ = ["APIError", "ChildModel", "Fault", "Faults", "Gone", "ModelCluster", "ModelOwned", "ModelViolation",
           "ModelWorld", "RequestCounts", "RequestInfo", "ResourceInfo", "TestAPIServer", "check_lifecycle",
           "state_machine"]
