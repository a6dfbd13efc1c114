"""deploy/ stays true to the code: RBAC grants exactly what the adapter uses; the CRD is KAITO's."""

from __future__ import annotations

from pathlib import Path

import yaml

from workspace_fsm.kaito.ragengine import RAGENGINE
from workspace_fsm.kaito.workspace import WORKSPACE

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def granted() -> dict[tuple[str, str], frozenset[str]]:
    docs = list(yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                out.setdefault((g, r), set()).update(rule["verbs"])
    return {k: frozenset(v) for k, v in out.items()}


def declared() -> dict[tuple[str, str], frozenset[str]]:
    """What the built-in lifecycles' declarations need, together (one runner drives both)."""
    out: dict[tuple[str, str], frozenset[str]] = {}
    for lc in (WORKSPACE, RAGENGINE):
        for key, verbs in lc.permissions().items():
            out[key] = out.get(key, frozenset()) | verbs
    return out


def test_rbac_grants_exactly_what_the_built_in_lifecycles_declare():
    assert granted() == declared()
    assert all("*" not in verbs for verbs in declared().values())


def test_rbac_binds_the_runners_service_account():
    docs = list(yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text()))
    binding = next(d for d in docs if d["kind"] == "ClusterRoleBinding")
    deployment = next(d for d in yaml.safe_load_all((DEPLOY / "deployment.yaml").read_text()) if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    probes = pod["containers"][0]
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_deployed_crd_is_the_one_the_package_validates_with():
    shipped = Path(__file__).resolve().parents[1] / "workspace_fsm" / "kaito" / "data" / "kaito.sh_workspaces.yaml"
    assert (DEPLOY / "crd-workspaces.yaml").read_bytes() == shipped.read_bytes()
