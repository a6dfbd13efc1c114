"""OpenAPI v2 and v3 documents with the schemas of the served kinds, and ``kubectl explain`` on them.

Sources: https://kubernetes.io/docs/concepts/overview/kubernetes-api/#openapi-interface-definition (``/openapi/v2``,
``/openapi/v3`` with one document per group/version, linked with a ``hash``); CRD schemas are published under
the group reversed (``sh.kaito.v1beta1.Workspace``) with ``x-kubernetes-group-version-kind``
(``apiextensions-apiserver/pkg/controller/openapi/builder``).
"""

from __future__ import annotations

import json

import pytest


def get(server, path: str, accept: str = "application/json") -> tuple[int, dict | None]:
    conn = server.connection(timeout=10)
    conn.request("GET", path, headers={"Accept": accept})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    return resp.status, (json.loads(raw) if resp.status == 200 else None)


def test_v3_documents_carry_the_crd_and_builtin_schemas(api_server):
    code, index = get(api_server, "/openapi/v3")
    assert code == 200
    url = index["paths"]["apis/kaito.sh/v1beta1"]["serverRelativeURL"]
    assert url.startswith("/openapi/v3/apis/kaito.sh/v1beta1?hash=")
    code, doc = get(api_server, url)
    schema = doc["components"]["schemas"]["sh.kaito.v1beta1.Workspace"]
    assert schema["x-kubernetes-group-version-kind"] == [{"group": "kaito.sh", "version": "v1beta1",
                                                          "kind": "Workspace"}]
    assert "instanceType" in schema["properties"]["resource"]["properties"]
    meta_ref = schema["properties"]["metadata"]["allOf"][0]["$ref"]
    assert meta_ref.rsplit("/", 1)[-1] in doc["components"]["schemas"]  # every reference resolves in the document

    code, apps = get(api_server, "/openapi/v3/apis/apps/v1")
    schemas = apps["components"]["schemas"]
    dep = schemas["io.k8s.api.apps.v1.Deployment"]
    assert dep["x-kubernetes-group-version-kind"] == [{"group": "apps", "version": "v1", "kind": "Deployment"}]
    refs = set()

    def collect(node):
        if isinstance(node, dict):
            if "$ref" in node:
                refs.add(node["$ref"].rsplit("/", 1)[-1])
            for v in node.values():
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)
    collect(schemas)
    assert refs <= set(schemas)
    assert "Attributes:" not in json.dumps(dep)
    # the PATCH operations still tell kubectl the server validates fields
    op = next(iter(apps["paths"].values()))["patch"]
    assert any(p["name"] == "fieldValidation" for p in op["parameters"])


def test_v2_document(api_server):
    code, doc = get(api_server, "/openapi/v2")
    assert code == 200 and doc["swagger"] == "2.0"
    ws = doc["definitions"]["sh.kaito.v1beta1.Workspace"]
    assert ws["properties"]["metadata"]["$ref"].startswith("#/definitions/")
    assert "io.k8s.api.apps.v1.Deployment" in doc["definitions"]
    # protobuf is not served: client-go asks for it first and falls back
    code, _ = get(api_server, "/openapi/v2", accept="application/com.github.proto-openapi.spec.v2@v1.0+protobuf")
    assert code == 404


@pytest.mark.parametrize("what, expected", [
    ("workspace", ["KIND:       Workspace", "VERSION:    v1beta1", "inference\t<Object>"]),
    ("nodeclaim.spec", ["KIND:       NodeClaim", "FIELD: spec <Object>", "nodeClassRef\t<Object> -required-"]),
    ("deployment", ["KIND:       Deployment", "Deployment enables declarative updates for Pods and ReplicaSets.",
                    "spec\t<DeploymentSpec>"]),
    ("deployment.spec.replicas", ["FIELD: replicas <integer>", "Number of desired pods."]),
    ("configmap.data", ["FIELD: data <map[string]string>"]),
])
def test_kubectl_explain(api_server, api_server_kubectl, what, expected):
    out = api_server_kubectl("explain", what).stdout
    for line in expected:
        assert line in out, (line, out[:800])
