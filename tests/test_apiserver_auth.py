"""TLS, bearer-token authentication and RBAC authorization (opt-in: ``TestAPIServer(tls=True, auth=True)``).

Sources: https://kubernetes.io/docs/reference/access-authn-authz/authentication/ (401 for a request whose
credentials no authenticator accepts), https://kubernetes.io/docs/reference/access-authn-authz/rbac/ (Roles,
ClusterRoles, bindings, ``resourceNames``, ``resource/subresource``), ``staging/src/k8s.io/apiserver/pkg/endpoints/
handlers/responsewriters/errors.go`` (``forbiddenMessage``: 'User "u" cannot <verb> resource "<r>" in API group
"<g>" in the namespace "<ns>"' / 'at the cluster scope'), and the authorization.k8s.io/v1 review APIs.
"""

from __future__ import annotations

import json
import ssl
import urllib.request

import pytest
from kubernetes import client

NS = "default"
ApiException = client.exceptions.ApiException


@pytest.fixture
def api_server_options():
    return {"tls": True, "auth": True}


def as_token(server, token: str):
    cfg = server.client_configuration()
    cfg.api_key = {"authorization": token}
    return client.ApiClient(cfg)


def grant(api_server_client, rules: list[dict], *, cluster: bool = False, sa: str = "runner") -> None:
    rbac = client.RbacAuthorizationV1Api(api_server_client)
    subject = [{"kind": "ServiceAccount", "name": sa, "namespace": NS}]
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole" if cluster else "Role", "name": "r"}
    if cluster:
        rbac.create_cluster_role({"metadata": {"name": "r"}, "rules": rules})
        rbac.create_cluster_role_binding({"metadata": {"name": "rb"}, "roleRef": ref, "subjects": subject})
    else:
        rbac.create_namespaced_role(NS, {"metadata": {"name": "r"}, "rules": rules})
        rbac.create_namespaced_role_binding(NS, {"metadata": {"name": "rb"}, "roleRef": ref, "subjects": subject})


def test_tls_with_the_ca_in_the_kubeconfig(api_server, api_server_client, kubeconfig):
    assert api_server.url.startswith("https://")
    ctx = ssl.create_default_context(cafile=api_server.ca_file)
    req = urllib.request.Request(api_server.url + "/version")
    with urllib.request.urlopen(req, context=ctx) as resp:  # verified against the minted CA
        assert json.loads(resp.read())["gitVersion"] == "v1.32.0"
    with pytest.raises(urllib.error.URLError):  # and only against it
        urllib.request.urlopen(req, context=ssl.create_default_context())
    from kubernetes import config

    cfg = client.Configuration()
    config.load_kube_config(str(kubeconfig), client_configuration=cfg)
    assert client.CoreV1Api(client.ApiClient(cfg)).read_namespace("default").metadata.name == "default"


def test_an_unknown_token_is_401_and_no_token_is_anonymous(api_server):
    ctx = ssl.create_default_context(cafile=api_server.ca_file)
    req = urllib.request.Request(api_server.url + "/api/v1/namespaces", headers={"Authorization": "Bearer nope"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, context=ctx)
    assert err.value.code == 401
    assert json.loads(err.value.read()) == {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                            "status": "Failure", "message": "Unauthorized",
                                            "reason": "Unauthorized", "code": 401}
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(api_server.url + "/api/v1/namespaces"), context=ctx)
    assert err.value.code == 403
    assert json.loads(err.value.read())["message"] == ('namespaces is forbidden: User "system:anonymous" cannot list '
                                                       'resource "namespaces" in API group "" at the cluster scope')


def test_rbac_role_binding_and_403_bodies(api_server, api_server_client):
    core = client.CoreV1Api(api_server_client)
    core.create_namespaced_config_map(NS, {"metadata": {"name": "a"}})
    runner = client.CoreV1Api(as_token(api_server, api_server.service_account_token(NS, "runner")))
    with pytest.raises(ApiException) as err:
        runner.list_namespaced_config_map(NS)
    assert err.value.status == 403
    assert json.loads(err.value.body) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Forbidden", "code": 403,
        "message": 'configmaps is forbidden: User "system:serviceaccount:default:runner" cannot list resource '
                   '"configmaps" in API group "" in the namespace "default"',
        "details": {"kind": "configmaps"}}
    grant(api_server_client, [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]},
                              {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["s1"]}])
    assert [c.metadata.name for c in runner.list_namespaced_config_map(NS).items] == ["a"]
    with pytest.raises(ApiException) as err:
        runner.delete_namespaced_config_map("a", NS)
    assert json.loads(err.value.body)["message"] == (
        'configmaps "a" is forbidden: User "system:serviceaccount:default:runner" cannot delete resource '
        '"configmaps" in API group "" in the namespace "default"')
    with pytest.raises(ApiException) as err:  # resourceNames: only s1
        runner.read_namespaced_secret("s2", NS)
    assert err.value.status == 403
    with pytest.raises(ApiException) as err:  # a Role does not reach another namespace
        runner.list_namespaced_config_map("kube-system")
    assert err.value.status == 403
    with pytest.raises(ApiException) as err:
        runner.list_node()
    assert json.loads(err.value.body)["message"].endswith('cannot list resource "nodes" in API group "" at the '
                                                          'cluster scope')


def test_cluster_role_and_subresources(api_server, api_server_client, custom):
    custom.create_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces", {
        "apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": "ws"},
        "resource": {"instanceType": "Standard_NC24ads_A100_v4", "labelSelector": {"matchLabels": {"a": "b"}}},
        "inference": {"preset": {"name": "phi-4"}}})
    grant(api_server_client, [{"apiGroups": ["kaito.sh"], "resources": ["workspaces"], "verbs": ["get", "watch"]}],
          cluster=True)
    runner = client.CustomObjectsApi(as_token(api_server, api_server.service_account_token(NS, "runner")))
    assert runner.get_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces", "ws")["metadata"]["name"]
    with pytest.raises(ApiException) as err:  # workspaces/status is a resource of its own to RBAC
        runner.patch_namespaced_custom_object_status("kaito.sh", "v1beta1", NS, "workspaces", "ws",
                                                     {"status": {"state": "Ready"}})
    body = json.loads(err.value.body)
    assert body["message"] == ('workspaces.kaito.sh "ws" is forbidden: User "system:serviceaccount:default:runner" '
                               'cannot patch resource "workspaces/status" in API group "kaito.sh" in the namespace '
                               '"default"')
    assert body["details"] == {"name": "ws", "group": "kaito.sh", "kind": "workspaces"}


def test_access_reviews(api_server, api_server_client):
    grant(api_server_client, [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}])
    runner = client.AuthorizationV1Api(as_token(api_server, api_server.service_account_token(NS, "runner")))
    review = runner.create_self_subject_access_review({"spec": {"resourceAttributes": {
        "namespace": NS, "verb": "list", "resource": "configmaps"}}})
    assert review.status.allowed is True
    review = runner.create_self_subject_access_review({"spec": {"resourceAttributes": {
        "namespace": NS, "verb": "delete", "resource": "configmaps"}}})
    assert review.status.allowed is False
    admin = client.AuthorizationV1Api(api_server_client)
    sar = admin.create_subject_access_review({"spec": {"user": "system:serviceaccount:default:runner",
                                                       "groups": ["system:serviceaccounts"],
                                                       "resourceAttributes": {"namespace": NS, "verb": "list",
                                                                              "resource": "configmaps"}}})
    assert sar.status.allowed is True and "RoleBinding" in sar.status.reason
    with pytest.raises(ApiException) as err:  # SubjectAccessReview itself needs RBAC
        runner.create_subject_access_review({"spec": {"user": "x", "resourceAttributes": {"verb": "get",
                                                                                         "resource": "pods"}}})
    assert err.value.status == 403


def test_kubectl_with_a_service_account_token(api_server, api_server_client, tmp_path):
    import shutil
    import subprocess

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    grant(api_server_client, [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}])
    kc = api_server.write_kubeconfig(tmp_path / "kc", token=api_server.service_account_token(NS, "runner"))

    def run(*args):
        return subprocess.run([kubectl, "--kubeconfig", str(kc), "--cache-dir", str(tmp_path / "c"), *args],
                              capture_output=True, text=True, timeout=60)
    assert run("get", "configmaps").returncode == 0
    out = run("get", "secrets")
    assert out.returncode != 0
    assert ('Error from server (Forbidden): secrets is forbidden: User "system:serviceaccount:default:runner" cannot '
            'list resource "secrets" in API group "" in the namespace "default"') in out.stderr
    bad = api_server.write_kubeconfig(tmp_path / "bad", token="nope")
    out = subprocess.run([kubectl, "--kubeconfig", str(bad), "--cache-dir", str(tmp_path / "c2"), "get", "cm"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "the server has asked for the client to provide credentials" in out.stderr
