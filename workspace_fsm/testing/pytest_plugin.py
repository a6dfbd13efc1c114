"""Pytest fixtures for the test API server.

Register in a ``conftest.py``::

    pytest_plugins = ["workspace_fsm.testing.pytest_plugin"]

Fixtures:

- ``api_server_crds``: the CRD files registered in ``api_server`` (override it to choose others).
  By default: the paths in the environment variable ``WORKSPACE_FSM_TEST_CRDS`` (separated by
  ``os.pathsep``) when set; else KAITO's Workspace CRD and Karpenter's NodeClaim CRD from
  ``../shared/kaito/crds`` beside the project checkout when found; else the copies shipped in this
  package (``workspace_fsm/kaito/data/kaito.sh_workspaces.yaml``, ``workspace_fsm/testing/crds/``).
- ``api_server_options``: keyword arguments for :class:`TestAPIServer` (override to change them).
- ``api_server``: a started server, new for every test (function scope), stopped afterwards. It serves HTTPS
  and checks bearer tokens, as a real cluster does (``kubeconfig`` and ``api_server_client`` carry its CA and
  an admin token); ``{"tls": False}`` or ``{"auth": False}`` in ``api_server_options`` turns either off.
  Indirect parametrization passes options too:
  ``@pytest.mark.parametrize("api_server", [{"history": 5}], indirect=True)``.
- ``kubeconfig``: the path of a kubeconfig for ``api_server`` (for kubectl and
  ``kubernetes.config.load_kube_config``).
- ``api_server_client``: a ``kubernetes.client.ApiClient`` for ``api_server``.
- ``api_server_kubectl``: runs ``kubectl`` against ``api_server`` (skips the test when kubectl is not
  installed): ``api_server_kubectl("get", "pods", check=False)`` returns the ``CompletedProcess``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from workspace_fsm.testing.server import TestAPIServer

ENV_CRDS = "WORKSPACE_FSM_TEST_CRDS"

_PACKAGE = Path(__file__).resolve().parent
_PACKAGED_CRDS = (
    _PACKAGE.parent / "data" / "kaito.sh_workspaces.yaml",
    _PACKAGE / "crds" / "karpenter.sh_nodeclaims.yaml",
)
_CRD_FILES = ("kaito.sh_workspaces.yaml", "karpenter.sh_nodeclaims.yaml")


def default_crd_paths() -> list[Path]:
    """The CRD files the ``api_server`` fixture registers unless told otherwise."""
    env = os.environ.get(ENV_CRDS)
    if env is not None:
        return [Path(p) for p in env.split(os.pathsep) if p.strip()]
    shared = _PACKAGE.parents[2] / "shared" / "kaito" / "crds"
    if all((shared / name).is_file() for name in _CRD_FILES):
        return [shared / name for name in _CRD_FILES]
    return [p for p in _PACKAGED_CRDS if p.is_file()]


@pytest.fixture
def api_server_crds() -> list[Path]:
    return default_crd_paths()


@pytest.fixture
def api_server_options() -> dict[str, Any]:
    return {}


@pytest.fixture
def api_server(request: pytest.FixtureRequest, api_server_crds: list[Path],
               api_server_options: dict[str, Any]) -> Iterator[TestAPIServer]:
    options = dict(api_server_options)
    options.update(getattr(request, "param", None) or {})
    crds = options.pop("crds", api_server_crds)
    server = TestAPIServer(crds=crds, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kubeconfig(api_server: TestAPIServer, tmp_path: Path) -> Path:
    return api_server.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def api_server_client(api_server: TestAPIServer) -> Iterator[Any]:
    client = api_server.api_client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def api_server_kubectl(kubeconfig: Path, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed on this machine")

    def run(*args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
            ) -> subprocess.CompletedProcess:
        cmd = [kubectl, "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "kube-cache"), *args]
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc
    return run
