"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests: every @given test states its own max_examples (200 or more). In CI (CI=true) the examples
# are derandomized, so a submission's run is reproducible; developers get fresh examples on every run.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))

# The test API server's fixtures (api_server, kubeconfig, api_server_client).
pytest_plugins = ["workspace_fsm.testing.pytest_plugin"]

#: KAITO's real inputs (CRDs, examples, preset list): shared/kaito beside the project checkout.
KAITO_DIR = Path(__file__).resolve().parents[2] / "shared" / "kaito"

_KAITO_REQUIRED = (
    "SOURCE.md",
    "crds/kaito.sh_workspaces.yaml",
    "crds/karpenter.sh_nodeclaims.yaml",
    "supported_models.yaml",
    "examples/inference",
    "examples/fine-tuning",
)


@pytest.fixture(scope="session")
def kaito_dir() -> Path:
    """The directory with KAITO's CRDs, examples and supported_models.yaml.

    Fails (never skips) when it is missing: these tests are how we know we still read KAITO's
    real manifests.
    """
    missing = [rel for rel in _KAITO_REQUIRED if not (KAITO_DIR / rel).exists()]
    if missing:
        pytest.fail(
            f"KAITO reference data not found at {KAITO_DIR} (missing: {', '.join(missing)}). "
            "The tests need the shared/kaito folder beside the project checkout "
            "(../shared/kaito from the project root); see shared/kaito/SOURCE.md.",
            pytrace=False,
        )
    return KAITO_DIR


# Typed clients for the test API server (tests/test_apiserver_*.py).


@pytest.fixture
def custom(api_server_client):
    from kubernetes import client

    return client.CustomObjectsApi(api_server_client)


@pytest.fixture
def core(api_server_client):
    from kubernetes import client

    return client.CoreV1Api(api_server_client)


@pytest.fixture
def apps(api_server_client):
    from kubernetes import client

    return client.AppsV1Api(api_server_client)


@pytest.fixture(autouse=True, scope="session")
def _kubectl_cache_in_a_temporary_directory(tmp_path_factory):
    """kubectl keeps discovery and HTTP caches under ~/.kube/cache: the suite's kubectl runs keep theirs in a
    temporary directory instead, so the test run leaves nothing behind in the user's home."""
    old = os.environ.get("KUBECACHEDIR")
    os.environ["KUBECACHEDIR"] = str(tmp_path_factory.mktemp("kube-cache"))
    yield
    if old is None:
        os.environ.pop("KUBECACHEDIR", None)
    else:
        os.environ["KUBECACHEDIR"] = old
