"""Server-side dry run (``dryRun=All``) for every verb, as a real kube-apiserver answers it.

Sources:
- API concepts, "Dry-run": https://kubernetes.io/docs/reference/using-api/api-concepts/#dry-run — a dry-run
  request is processed like a normal one (admission, validation, defaulting) but never persisted.
- ``staging/src/k8s.io/apiserver/pkg/endpoints/handlers/delete.go``: DELETE and DELETE collection decode
  ``DeleteOptions`` from the body when one is sent, from the query string only when the body is empty.
- ``staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/validation/validation.go``: ``ValidateDryRun`` — any value
  other than ``All`` is refused, and the handlers answer ``errors.NewInvalid(<Options kind>.meta.k8s.io)`` (422).
"""

from __future__ import annotations

import copy
import json
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client

from workspace_fsm.testing import TestAPIServer

G, V, NS, WS = "kaito.sh", "v1beta1", "default", "workspaces"
ApiException = client.exceptions.ApiException


def workspace(name: str) -> dict:
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name, "labels": {"a": "1"}},
            "resource": {"instanceType": "Standard_NC24ads_A100_v4", "labelSelector": {"matchLabels": {"a": "b"}}},
            "inference": {"preset": {"name": "phi-4"}}}


def snapshot(server: TestAPIServer) -> tuple:
    """Everything a write could change: objects (stored dicts are never mutated, so a shallow copy of each
    bucket is a snapshot), the revision, the watch history, and the served resources."""
    store = server.store
    with store.lock:
        objects = {rk: dict(bucket) for rk, bucket in store.objects.items() if bucket}
        return (copy.deepcopy(objects), store.revision, tuple((e.revision, e.type) for e in store.events),
                store.floor, store.registry.generation)


def test_dry_run_create_validates_defaults_and_stores_nothing(api_server, custom, core):
    before = snapshot(api_server)
    made = custom.create_namespaced_custom_object(G, V, NS, WS, workspace("ws-dry"), dry_run="All")
    assert made["metadata"]["uid"] and made["metadata"]["creationTimestamp"]
    assert "resourceVersion" not in made["metadata"]  # never written to storage, so no revision
    assert made["resource"]["count"] == 1  # defaulting ran
    with pytest.raises(ApiException) as err:  # validation ran too
        bad = workspace("ws-bad")
        bad["resource"]["count"] = "many"
        custom.create_namespaced_custom_object(G, V, NS, WS, bad, dry_run="All")
    assert err.value.status == 422
    cm = core.create_namespaced_config_map(NS, {"metadata": {"name": "cm-dry"}, "data": {"a": "1"}}, dry_run="All")
    assert cm.metadata.name == "cm-dry"
    assert snapshot(api_server) == before
    with pytest.raises(ApiException) as err:
        core.read_namespaced_config_map("cm-dry", NS)
    assert err.value.status == 404


def test_dry_run_update_patch_and_status_change_nothing(api_server, custom):
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("ws-1"))
    stored = custom.get_namespaced_custom_object(G, V, NS, WS, "ws-1")
    before = snapshot(api_server)

    body = copy.deepcopy(stored)
    body["resource"]["count"] = 3
    put = custom.replace_namespaced_custom_object(G, V, NS, WS, "ws-1", body, dry_run="All")
    assert put["resource"]["count"] == 3 and put["metadata"]["generation"] == 2
    assert put["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]

    patched = custom.patch_namespaced_custom_object(G, V, NS, WS, "ws-1", {"resource": {"count": 4}},
                                                    dry_run="All")
    assert patched["resource"]["count"] == 4
    status = custom.patch_namespaced_custom_object_status(G, V, NS, WS, "ws-1", {"status": {"state": "Ready"}},
                                                          dry_run="All")
    assert status["status"]["state"] == "Ready"
    st_body = copy.deepcopy(stored)
    st_body["status"] = {"state": "Pending"}
    custom.replace_namespaced_custom_object_status(G, V, NS, WS, "ws-1", st_body, dry_run="All")
    assert snapshot(api_server) == before
    assert custom.get_namespaced_custom_object(G, V, NS, WS, "ws-1") == stored


def test_dry_run_delete_from_the_body_or_the_query(api_server, core):
    core.create_namespaced_config_map(NS, {"metadata": {"name": "keep", "labels": {"x": "y"}}})
    before = snapshot(api_server)
    # client-go and kubectl send dryRun in the DeleteOptions body
    out = core.delete_namespaced_config_map("keep", NS, body=client.V1DeleteOptions(dry_run=["All"]))
    assert (out["status"] if isinstance(out, dict) else out.status) == "Success"
    # with no body, the query string is read
    core.delete_namespaced_config_map("keep", NS, dry_run="All")
    core.delete_collection_namespaced_config_map(NS, label_selector="x=y",
                                                 body=client.V1DeleteOptions(dry_run=["All"]))
    core.delete_collection_namespaced_config_map(NS, label_selector="x=y", dry_run="All")
    assert snapshot(api_server) == before
    assert core.read_namespaced_config_map("keep", NS).metadata.name == "keep"


def test_a_delete_body_hides_the_query_dry_run(api_server, core):
    """delete.go reads the query only when the body is empty: a body without dryRun plus ``?dryRun=All``
    is a real delete on a real server."""
    core.create_namespaced_config_map(NS, {"metadata": {"name": "gone"}})
    core.delete_namespaced_config_map("gone", NS, dry_run="All",
                                      body=client.V1DeleteOptions(propagation_policy="Background"))
    with pytest.raises(ApiException) as err:
        core.read_namespaced_config_map("gone", NS)
    assert err.value.status == 404


def test_dry_run_delete_of_an_object_with_finalizers_and_of_a_crd(api_server, custom):
    doc = workspace("ws-fin")
    doc["metadata"]["finalizers"] = ["example.com/keep"]
    custom.create_namespaced_custom_object(G, V, NS, WS, doc)
    before = snapshot(api_server)
    out = custom.delete_namespaced_custom_object(G, V, NS, WS, "ws-fin", body={"dryRun": ["All"]})
    assert out["metadata"]["deletionTimestamp"]  # what would happen
    ext = client.ApiextensionsV1Api(custom.api_client)
    ext.delete_custom_resource_definition("workspaces.kaito.sh", body=client.V1DeleteOptions(dry_run=["All"]))
    assert snapshot(api_server) == before
    assert "deletionTimestamp" not in custom.get_namespaced_custom_object(G, V, NS, WS, "ws-fin")["metadata"]


def test_unsupported_dry_run_values_are_422_for_the_options_kind(api_server, core):
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "x"}}, dry_run="Yes")
    assert err.value.status == 422
    body = json.loads(err.value.body)
    assert body["reason"] == "Invalid"
    assert body["message"] == ('CreateOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: '
                               '[]string{"Yes"}: supported values: "All"')
    assert body["details"] == {"group": "meta.k8s.io", "kind": "CreateOptions", "causes": [
        {"reason": "FieldValueNotSupported", "message": 'Unsupported value: []string{"Yes"}: supported values: "All"',
         "field": "dryRun"}]}
    core.create_namespaced_config_map(NS, {"metadata": {"name": "x"}})
    with pytest.raises(ApiException) as err:
        core.delete_namespaced_config_map("x", NS, body=client.V1DeleteOptions(dry_run=["Some"]))
    assert err.value.status == 422
    assert json.loads(err.value.body)["message"] == (
        'DeleteOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: []string{"Some"}: supported values: '
        '"All"')
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_config_map("x", NS, {"data": {"a": "b"}}, dry_run="Nope")
    assert json.loads(err.value.body)["message"].startswith('PatchOptions.meta.k8s.io "" is invalid: dryRun:')
    with pytest.raises(ApiException) as err:
        core.delete_namespaced_config_map("x", NS, propagation_policy="Sideways")
    assert json.loads(err.value.body)["message"] == (
        'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported value: "Sideways": supported '
        'values: "Foreground", "Background", "Orphan", "nil"')
    assert core.read_namespaced_config_map("x", NS).metadata.name == "x"


def test_apply_without_field_manager_is_422(api_server):
    conn = api_server.connection(timeout=5)
    conn.request("PATCH", f"/api/v1/namespaces/{NS}/configmaps/a", body=b'{"metadata":{"name":"a"}}',
                 headers={"Content-Type": "application/apply-patch+yaml"})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    assert resp.status == 422
    assert body["message"] == ('PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required '
                               'for apply patch')


def test_kubectl_delete_and_create_with_server_dry_run(api_server, core, custom, api_server_kubectl, tmp_path):
    core.create_namespaced_config_map(NS, {"metadata": {"name": "cm-1"}, "data": {"a": "1"}})
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("ws-1"))
    before = snapshot(api_server)
    out = api_server_kubectl("delete", "configmap", "cm-1", "--dry-run=server")
    assert out.stdout.strip() == 'configmap "cm-1" deleted (server dry run)'
    out = api_server_kubectl("delete", "workspace", "ws-1", "--dry-run=server")
    assert out.stdout.strip() == 'workspace.kaito.sh "ws-1" deleted (server dry run)'
    manifest = tmp_path / "cm.yaml"
    manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm-2}\ndata: {b: '2'}\n")
    out = api_server_kubectl("create", "-f", str(manifest), "--dry-run=server")
    assert out.stdout.strip() == "configmap/cm-2 created (server dry run)"
    api_server_kubectl("label", "configmap", "cm-1", "x=y", "--dry-run=server")
    assert snapshot(api_server) == before
    assert core.read_namespaced_config_map("cm-1", NS).metadata.labels is None


# ---------------------------------------------------------------------------- property


class _Raw:
    """A keep-alive HTTP connection to the server (fast enough for hundreds of examples)."""

    def __init__(self, server: TestAPIServer) -> None:
        self.conn = server.connection(timeout=10)

    def __call__(self, method: str, path: str, query: dict | None = None, body: object = None,
                 ctype: str = "application/json") -> int:
        url = path + ("?" + urlencode(query, doseq=True) if query else "")
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.conn.request(method, url, body=data, headers={"Content-Type": ctype, "Content-Length": str(len(data))})
        resp = self.conn.getresponse()
        resp.read()
        return resp.status


@pytest.fixture(scope="module")
def shared_server():
    with TestAPIServer(crds=[_kaito_crd()], seed=3, gc=True, gc_delay=0.0) as server:
        yield server


def _kaito_crd():
    from workspace_fsm.testing.pytest_plugin import default_crd_paths

    return next(p for p in default_crd_paths() if p.name == "kaito.sh_workspaces.yaml")


NAMES = st.sampled_from(["a", "b", "c"])
KINDS = st.sampled_from(["configmaps", "workspaces", "deployments"])
PATHS = {"configmaps": f"/api/v1/namespaces/{NS}/configmaps",
         "workspaces": f"/apis/{G}/{V}/namespaces/{NS}/workspaces",
         "deployments": f"/apis/apps/v1/namespaces/{NS}/deployments"}


def _doc(kind: str, name: str, n: int, finalizer: bool) -> dict:
    meta: dict = {"name": name, "labels": {"n": str(n % 3)}}
    if finalizer:
        meta["finalizers"] = ["example.com/hold"]
    if kind == "configmaps":
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"n": str(n)}}
    if kind == "workspaces":
        doc = workspace(name)
        doc["metadata"] = meta
        doc["resource"]["count"] = n % 4 + 1
        return doc
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {"replicas": n % 3, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": f"img:{n}"}]}}}}


OPS = st.sampled_from(["create", "update", "merge", "json", "strategic", "apply", "status-put", "status-merge",
                       "delete-body", "delete-query", "deletecollection-body", "deletecollection-query",
                       "unfinalize"])
STEP = st.tuples(OPS, KINDS, NAMES, st.integers(0, 20), st.booleans(), st.booleans())


def _send(raw: _Raw, op: str, kind: str, name: str, n: int, finalizer: bool, dry: bool) -> int:
    base = PATHS[kind]
    item = f"{base}/{name}"
    q = {"dryRun": "All"} if dry else {}
    doc = _doc(kind, name, n, finalizer)
    if op == "create":
        return raw("POST", base, q, doc)
    if op == "update":
        return raw("PUT", item, q, doc)
    if op == "merge":
        return raw("PATCH", item, q, {"metadata": {"labels": {"n": str(n)}}}, "application/merge-patch+json")
    if op == "json":
        return raw("PATCH", item, q, [{"op": "add", "path": "/metadata/annotations", "value": {"n": str(n)}}],
                   "application/json-patch+json")
    if op == "strategic":
        return raw("PATCH", item, q, {"metadata": {"labels": {"s": str(n)}}}, "application/strategic-merge-patch+json")
    if op == "apply":
        return raw("PATCH", item, dict(q, fieldManager="prop"), doc, "application/apply-patch+yaml")
    if op == "status-put":
        return raw("PUT", item + "/status", q, dict(doc, status={"observedGeneration": n}))
    if op == "status-merge":
        return raw("PATCH", item + "/status", q, {"status": {"observedGeneration": n}}, "application/merge-patch+json")
    if op == "unfinalize":
        return raw("PATCH", item, q, {"metadata": {"finalizers": None}}, "application/merge-patch+json")
    body = {"kind": "DeleteOptions", "apiVersion": "v1", "dryRun": ["All"] if dry else None,
            "propagationPolicy": "Foreground" if n % 2 else "Background"}
    sel = {"labelSelector": f"n={n % 3}"}
    if op == "delete-body":
        return raw("DELETE", item, None, body)
    if op == "delete-query":
        return raw("DELETE", item, q)
    if op == "deletecollection-body":
        return raw("DELETE", base, sel, body)
    return raw("DELETE", base, dict(sel, **q))


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
          deadline=None)
@given(steps=st.lists(STEP, min_size=1, max_size=12))
def test_property_a_dry_run_request_never_changes_stored_state(shared_server, steps):
    raw = _Raw(shared_server)
    try:
        for op, kind, name, n, finalizer, dry in steps:
            shared_server.wait_for_gc()
            before = snapshot(shared_server) if dry else None
            code = _send(raw, op, kind, name, n, finalizer, dry)
            assert code < 500, (op, kind, code)
            if dry:
                assert snapshot(shared_server) == before, (op, kind, name, code)
    finally:
        raw.conn.close()
