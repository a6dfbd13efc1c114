"""Conformance of the test API server (workspace_fsm.testing) through the real ``kubernetes`` client:
CRUD, Status bodies, resourceVersion and generation, the status subresource, structural schemas,
selectors, patch formats, discovery, kubeconfig and connection speed."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from kubernetes import client, config

from workspace_fsm.testing import TestAPIServer

G, V, NS, WS = "kaito.sh", "v1beta1", "default", "workspaces"
ApiException = client.exceptions.ApiException


def workspace(name: str = "ws-1", labels: dict | None = None, count: int | None = None) -> dict:
    doc = {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name, "labels": labels or {"app": "phi"}},
        "resource": {"instanceType": "Standard_NC24ads_A100_v4",
                     "labelSelector": {"matchLabels": {"apps": "phi-4"}}},
        "inference": {"preset": {"name": "phi-4"}},
    }
    if count is not None:
        doc["resource"]["count"] = count
    return doc


def status_of(exc: ApiException) -> dict:
    return json.loads(exc.body)


# ---------------------------------------------------------------------------- CRUD and Status


def test_create_returns_201_with_server_fields_and_defaults(api_server, custom):
    created = custom.create_namespaced_custom_object(G, V, NS, WS, workspace())
    meta = created["metadata"]
    assert meta["namespace"] == NS and meta["generation"] == 1
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z") and meta["resourceVersion"].isdigit()
    assert created["resource"]["count"] == 1  # the CRD's default
    assert created["inference"]["preset"]["accessMode"] == "public"
    got = custom.get_namespaced_custom_object(G, V, NS, WS, "ws-1")
    assert got == created


def test_create_answers_exactly_201(api_server):
    import urllib.request

    req = urllib.request.Request(f"{api_server.url}/apis/{G}/{V}/namespaces/{NS}/{WS}",
                                 data=json.dumps(workspace()).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with api_server.urlopen(req) as resp:
        assert resp.status == 201
        assert resp.headers["Content-Type"] == "application/json"


def test_not_found_status_body(api_server, custom, core):
    with pytest.raises(ApiException) as err:
        custom.get_namespaced_custom_object(G, V, NS, WS, "nope")
    assert err.value.status == 404
    body = status_of(err.value)
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": 'workspaces.kaito.sh "nope" not found', "reason": "NotFound",
                    "details": {"name": "nope", "group": "kaito.sh", "kind": "workspaces"}, "code": 404}
    with pytest.raises(ApiException) as err:
        core.read_namespaced_config_map("nope", NS)
    assert status_of(err.value)["message"] == 'configmaps "nope" not found'
    assert "group" not in status_of(err.value)["details"]


def test_already_exists_409(api_server, custom):
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace())
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(G, V, NS, WS, workspace())
    assert err.value.status == 409
    body = status_of(err.value)
    assert body["reason"] == "AlreadyExists"
    assert body["message"] == 'workspaces.kaito.sh "ws-1" already exists'


def test_generate_name(api_server, custom):
    doc = workspace()
    del doc["metadata"]["name"]
    doc["metadata"]["generateName"] = "ws-"
    a = custom.create_namespaced_custom_object(G, V, NS, WS, doc)
    b = custom.create_namespaced_custom_object(G, V, NS, WS, doc)
    assert a["metadata"]["name"].startswith("ws-") and len(a["metadata"]["name"]) == 8
    assert a["metadata"]["name"] != b["metadata"]["name"]


def test_missing_name_is_422(api_server, custom):
    doc = workspace()
    del doc["metadata"]["name"]
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(G, V, NS, WS, doc)
    assert err.value.status == 422
    causes = status_of(err.value)["details"]["causes"]
    assert causes == [{"reason": "FieldValueRequired", "message": "Required value: name or generateName is required",
                       "field": "metadata.name"}]


def test_unknown_namespace_is_404(api_server, custom):
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(G, V, "nowhere", WS, workspace())
    assert err.value.status == 404
    assert status_of(err.value)["message"] == 'namespaces "nowhere" not found'


def test_method_not_allowed_and_unknown_paths(api_server, api_server_client):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"{api_server.url}/apis/{G}/{V}/namespaces/{NS}/{WS}/x", data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        api_server.urlopen(req)
    assert err.value.code == 405
    assert json.loads(err.value.read())["reason"] == "MethodNotAllowed"
    with pytest.raises(urllib.error.HTTPError) as err:
        api_server.urlopen("/apis/nothing.io/v1/things")
    assert err.value.code == 404


# ---------------------------------------------------------------------------- resourceVersion and generation


def test_stale_resource_version_is_409_conflict(api_server, custom):
    first = custom.create_namespaced_custom_object(G, V, NS, WS, workspace())
    second = copy.deepcopy(first)
    second["metadata"]["labels"]["x"] = "1"
    custom.replace_namespaced_custom_object(G, V, NS, WS, "ws-1", second)
    stale = copy.deepcopy(first)
    stale["metadata"]["labels"]["x"] = "2"
    with pytest.raises(ApiException) as err:
        custom.replace_namespaced_custom_object(G, V, NS, WS, "ws-1", stale)
    assert err.value.status == 409
    body = status_of(err.value)
    assert body["reason"] == "Conflict"
    assert body["message"] == ('Operation cannot be fulfilled on workspaces.kaito.sh "ws-1": the object has been '
                               "modified; please apply your changes to the latest version and try again")
    assert body["details"] == {"name": "ws-1", "group": "kaito.sh", "kind": "workspaces"}
    # A stale resourceVersion inside a merge patch is a precondition too.
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object(G, V, NS, WS, "ws-1", {"metadata": {
            "resourceVersion": first["metadata"]["resourceVersion"], "labels": {"y": "1"}}})
    assert err.value.status == 409


def test_put_without_resource_version_is_unconditional(api_server, custom):
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace())
    doc = workspace(labels={"app": "other"})
    updated = custom.replace_namespaced_custom_object(G, V, NS, WS, "ws-1", doc)
    assert updated["metadata"]["labels"] == {"app": "other"}


def test_resource_versions_increase_but_are_not_consecutive(api_server, custom):
    rvs = [int(custom.create_namespaced_custom_object(G, V, NS, WS, workspace(f"w{i}"))["metadata"]["resourceVersion"])
           for i in range(10)]
    assert rvs == sorted(rvs) and len(set(rvs)) == 10
    assert all(b - a != 1 for a, b in zip(rvs, rvs[1:]))
    listed = custom.list_namespaced_custom_object(G, V, NS, WS)
    assert int(listed["metadata"]["resourceVersion"]) >= rvs[-1]


def test_generation_bumps_only_on_spec_changes(api_server, custom):
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace())
    labelled = custom.patch_namespaced_custom_object(G, V, NS, WS, "ws-1", {"metadata": {"labels": {"l": "1"}}})
    assert labelled["metadata"]["generation"] == 1
    status = custom.patch_namespaced_custom_object_status(G, V, NS, WS, "ws-1", {"status": {"state": "Running"}})
    assert status["metadata"]["generation"] == 1
    changed = custom.patch_namespaced_custom_object(G, V, NS, WS, "ws-1", {"resource": {"count": 3}})
    assert changed["metadata"]["generation"] == 2
    again = custom.patch_namespaced_custom_object(G, V, NS, WS, "ws-1", {"inference": {"preset": {"name": "phi-3"}}})
    assert again["metadata"]["generation"] == 3


def test_no_op_write_keeps_resource_version(api_server, custom):
    created = custom.create_namespaced_custom_object(G, V, NS, WS, workspace())
    same = custom.patch_namespaced_custom_object(G, V, NS, WS, "ws-1", {"metadata": {"labels": {"app": "phi"}}})
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


def test_generation_without_status_subresource_counts_every_non_metadata_change(api_server, core):
    cm = core.create_namespaced_config_map(NS, {"metadata": {"name": "c"}, "data": {"a": "1"}})
    assert cm.metadata.generation == 1
    cm = core.patch_namespaced_config_map("c", NS, {"metadata": {"annotations": {"x": "y"}}})
    assert cm.metadata.generation == 1
    cm = core.patch_namespaced_config_map("c", NS, {"data": {"a": "2"}})
    assert cm.metadata.generation == 2


# ---------------------------------------------------------------------------- status subresource


def test_status_split_both_ways(api_server, custom):
    doc = workspace()
    doc["status"] = {"state": "Ready"}
    created = custom.create_namespaced_custom_object(G, V, NS, WS, doc)
    assert "status" not in created  # status is not set on create with a status subresource
    # Writes to the main resource ignore status.
    doc2 = custom.get_namespaced_custom_object(G, V, NS, WS, "ws-1")
    doc2["status"] = {"state": "Hacked"}
    doc2["resource"]["count"] = 2
    main = custom.replace_namespaced_custom_object(G, V, NS, WS, "ws-1", doc2)
    assert "status" not in main and main["resource"]["count"] == 2
    # Writes to /status change only status.
    cur = custom.get_namespaced_custom_object(G, V, NS, WS, "ws-1")
    cur["status"] = {"state": "Running", "targetNodeCount": 2}
    cur["resource"]["count"] = 7
    cur["metadata"]["labels"] = {"changed": "yes"}
    st = custom.replace_namespaced_custom_object_status(G, V, NS, WS, "ws-1", cur)
    assert st["status"] == {"state": "Running", "targetNodeCount": 2}
    assert st["resource"]["count"] == 2 and st["metadata"]["labels"] == {"app": "phi"}
    # The resourceVersion precondition applies to /status as well.
    with pytest.raises(ApiException) as err:
        custom.replace_namespaced_custom_object_status(G, V, NS, WS, "ws-1", cur)
    assert err.value.status == 409


def test_builtin_status_subresource(api_server, apps):
    dep = {"metadata": {"name": "d"}, "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}},
                                               "template": {"metadata": {"labels": {"a": "b"}},
                                                            "spec": {"containers": [{"name": "c", "image": "i"}]}}},
           "status": {"readyReplicas": 5}}
    created = apps.create_namespaced_deployment(NS, dep)
    assert created.status is None or created.status.ready_replicas is None
    patched = apps.patch_namespaced_deployment_status("d", NS, {"status": {"readyReplicas": 1, "replicas": 1}})
    assert patched.status.ready_replicas == 1 and patched.metadata.generation == 1
    scaled = apps.patch_namespaced_deployment("d", NS, {"spec": {"replicas": 3}, "status": {"readyReplicas": 9}})
    assert scaled.spec.replicas == 3 and scaled.status.ready_replicas == 1 and scaled.metadata.generation == 2


def test_nodes_keep_status_on_create(api_server, core):
    node = core.create_node({"metadata": {"name": "n1", "labels": {"kaito.sh/workspace": "w"}},
                             "status": {"capacity": {"nvidia.com/gpu": "1"},
                                        "conditions": [{"type": "Ready", "status": "True"}]}})
    assert node.status.capacity == {"nvidia.com/gpu": "1"}
    assert node.metadata.namespace is None


# ---------------------------------------------------------------------------- structural schema


def test_pruning_keeps_kaito_status_fields_and_drops_fsm(api_server, custom):
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace())
    status = {
        "state": "Ready", "targetNodeCount": 1, "workerNodes": ["node-1"],
        "conditions": [{"type": "ResourceReady", "status": "True", "reason": "ok", "message": "",
                        "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": 1}],
        "fsm": {"state": "Ready", "history": []},
    }
    out = custom.patch_namespaced_custom_object_status(G, V, NS, WS, "ws-1", {"status": status})
    assert "fsm" not in out["status"]
    assert out["status"]["state"] == "Ready" and out["status"]["targetNodeCount"] == 1
    assert out["status"]["workerNodes"] == ["node-1"]
    assert out["status"]["conditions"][0]["type"] == "ResourceReady"
    assert "fsm" not in custom.get_namespaced_custom_object(G, V, NS, WS, "ws-1")["status"]


def test_unknown_top_level_fields_are_pruned(api_server, custom):
    doc = workspace()
    doc["spec"] = {"nothing": True}
    doc["metadata"]["bogus"] = 1
    out = custom.create_namespaced_custom_object(G, V, NS, WS, doc)
    assert "spec" not in out and "bogus" not in out["metadata"]


def test_invalid_object_lists_every_bad_field(api_server, custom):
    doc = workspace()
    doc["resource"]["count"] = "three"
    doc["inference"]["preset"]["accessMode"] = "sometimes"
    doc["resource"]["labelSelector"] = "app=x"
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(G, V, NS, WS, doc)
    assert err.value.status == 422
    body = status_of(err.value)
    assert body["reason"] == "Invalid" and body["details"]["kind"] == "Workspace"
    assert body["message"].startswith('Workspace.kaito.sh "ws-1" is invalid: [')
    fields = {c["field"]: c for c in body["details"]["causes"]}
    assert set(fields) >= {"resource.count", "inference.preset.accessMode", "resource.labelSelector"}
    assert fields["resource.count"]["reason"] == "FieldValueTypeInvalid"
    assert fields["inference.preset.accessMode"]["reason"] == "FieldValueNotSupported"
    assert all(c["message"] for c in body["details"]["causes"])


def test_invalid_status_write_is_422(api_server, custom):
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace())
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object_status(G, V, NS, WS, "ws-1", {"status": {
            "targetNodeCount": "two", "conditions": [{"type": "X"}]}})
    assert err.value.status == 422
    fields = {c["field"] for c in status_of(err.value)["details"]["causes"]}
    assert "status.targetNodeCount" in fields
    assert "status.conditions[0].status" in fields and "status.conditions[0].reason" in fields


def test_metadata_rules(api_server, custom, core):
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(G, V, NS, WS, workspace("Bad_Name", labels={"ok": "bad value!"}))
    assert err.value.status == 422
    fields = [c["field"] for c in status_of(err.value)["details"]["causes"]]
    assert "metadata.name" in fields and "metadata.labels" in fields
    with pytest.raises(ApiException) as err:
        core.create_namespace({"metadata": {"name": "a.b"}})  # namespaces are RFC 1123 labels
    assert err.value.status == 422


def test_served_versions_share_objects(api_server, custom):
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace())
    old = custom.get_namespaced_custom_object(G, "v1alpha1", NS, WS, "ws-1")
    assert old["apiVersion"] == "kaito.sh/v1alpha1" and old["metadata"]["name"] == "ws-1"
    items = custom.list_namespaced_custom_object(G, "v1alpha1", NS, WS)["items"]
    assert [i["apiVersion"] for i in items] == ["kaito.sh/v1alpha1"]


# ---------------------------------------------------------------------------- selectors


def test_label_and_field_selectors(api_server, custom):
    for name, labels in [("a", {"app": "x", "tier": "gpu"}), ("b", {"app": "y"}), ("c", {"app": "z", "tier": "cpu"})]:
        custom.create_namespaced_custom_object(G, V, NS, WS, workspace(name, labels=labels))

    def names(**kw):
        return [i["metadata"]["name"] for i in custom.list_namespaced_custom_object(G, V, NS, WS, **kw)["items"]]

    assert names(label_selector="app=x") == ["a"]
    assert names(label_selector="app==y") == ["b"]
    assert names(label_selector="app!=x") == ["b", "c"]
    assert names(label_selector="app in (x, z)") == ["a", "c"]
    assert names(label_selector="app notin (x,z)") == ["b"]
    assert names(label_selector="tier") == ["a", "c"]
    assert names(label_selector="!tier") == ["b"]
    assert names(label_selector="tier,app in (z)") == ["c"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="metadata.name!=b,metadata.namespace=default") == ["a", "c"]
    assert names(limit=1) == ["a"]  # pages: tests/test_apiserver_pagination.py
    all_ns = custom.list_cluster_custom_object(G, V, WS, label_selector="app=y")
    assert [i["metadata"]["name"] for i in all_ns["items"]] == ["b"]
    with pytest.raises(ApiException) as err:
        names(label_selector="app in (x")
    assert err.value.status == 400
    with pytest.raises(ApiException) as err:
        names(field_selector="spec.foo=1")
    assert err.value.status == 400


# ---------------------------------------------------------------------------- patch formats


def test_json_patch(api_server, custom):
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace())
    out = custom.patch_namespaced_custom_object(G, V, NS, WS, "ws-1", [
        {"op": "test", "path": "/resource/count", "value": 1},
        {"op": "replace", "path": "/resource/count", "value": 4},
        {"op": "add", "path": "/metadata/labels/new", "value": "v"},
        {"op": "remove", "path": "/metadata/labels/app"},
    ], _content_type="application/json-patch+json")
    assert out["resource"]["count"] == 4 and out["metadata"]["labels"] == {"new": "v"}
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object(G, V, NS, WS, "ws-1", [
            {"op": "test", "path": "/resource/count", "value": 99}], _content_type="application/json-patch+json")
    assert err.value.status == 422


def test_strategic_merge_is_415_for_custom_resources(api_server, custom):
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace())
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object(G, V, NS, WS, "ws-1", {"resource": {"count": 2}},
                                              _content_type="application/strategic-merge-patch+json")
    assert err.value.status == 415
    assert status_of(err.value)["reason"] == "UnsupportedMediaType"


def test_strategic_merge_for_builtins(api_server, apps):
    dep = {"metadata": {"name": "d", "finalizers": ["a.io/x"]},
           "spec": {"selector": {"matchLabels": {"a": "b"}},
                    "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [
                        {"name": "main", "image": "one", "env": [{"name": "A", "value": "1"}]},
                        {"name": "side", "image": "two"}]}}}}
    apps.create_namespaced_deployment(NS, dep)
    out = apps.patch_namespaced_deployment("d", NS, {
        "metadata": {"finalizers": ["b.io/y"]},
        "spec": {"template": {"spec": {"containers": [
            {"name": "main", "env": [{"name": "B", "value": "2"}]},
            {"name": "side", "$patch": "delete"}]}}}})
    containers = out.spec.template.spec.containers
    assert [c.name for c in containers] == ["main"]
    assert containers[0].image == "one" and [e.name for e in containers[0].env] == ["A", "B"]
    assert out.metadata.finalizers == ["a.io/x", "b.io/y"]
    out = apps.patch_namespaced_deployment("d", NS, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a.io/x",
                                                                                                          "b.io/y"]}})
    assert not out.metadata.finalizers


def test_server_side_apply_approximation(api_server, custom):
    # An apply patch creates a missing object and answers 201 (the client only reads PATCH bodies
    # from a 200, so it returns None here), then merges into the live object.
    _, code, _ = custom.patch_namespaced_custom_object_with_http_info(
        G, V, NS, WS, "ws-1", workspace(), field_manager="t", _content_type="application/apply-patch+yaml")
    assert code == 201
    assert custom.get_namespaced_custom_object(G, V, NS, WS, "ws-1")["resource"]["count"] == 1
    out = custom.patch_namespaced_custom_object(G, V, NS, WS, "ws-1", workspace(count=2), field_manager="t",
                                                _content_type="application/apply-patch+yaml")
    assert out["resource"]["count"] == 2
    with pytest.raises(ApiException) as err:  # apply needs a field manager: ValidatePatchOptions, 422 Invalid
        custom.patch_namespaced_custom_object(G, V, NS, WS, "ws-1", workspace(),
                                              _content_type="application/apply-patch+yaml")
    assert err.value.status == 422


# ---------------------------------------------------------------------------- CRDs through the API


def test_crd_created_through_the_api_is_served(api_server, api_server_client):
    ext = client.ApiextensionsV1Api(api_server_client)
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Cluster",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "properties": {"spec": {"type": "object", "properties": {
                         "size": {"type": "integer", "minimum": 1, "default": 3}}}}}}}]},
    }
    created = ext.create_custom_resource_definition(crd)
    assert any(c.type == "Established" and c.status == "True" for c in created.status.conditions)
    custom = client.CustomObjectsApi(api_server_client)
    w = custom.create_cluster_custom_object("example.com", "v1", "widgets", {
        "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"extra": 1}})
    assert w["spec"] == {"size": 3}
    with pytest.raises(ApiException) as err:
        custom.create_cluster_custom_object("example.com", "v1", "widgets", {
            "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w2"}, "spec": {"size": 0}})
    assert err.value.status == 422
    ext.delete_custom_resource_definition("widgets.example.com")
    with pytest.raises(ApiException) as err:
        custom.list_cluster_custom_object("example.com", "v1", "widgets")
    assert err.value.status == 404


def test_load_crds_and_register_twice(tmp_path):
    server = TestAPIServer()
    import workspace_fsm.testing

    crds = Path(workspace_fsm.testing.__file__).parent / "crds" / "karpenter.sh_nodeclaims.yaml"
    infos = server.load_crds_from_yaml(crds)
    assert [(i.group, i.plural, i.namespaced) for i in infos] == [("karpenter.sh", "nodeclaims", False)]
    assert server.register_crd(infos[0].crd).has_status("v1")  # replacing is fine


# ---------------------------------------------------------------------------- discovery, kubeconfig, speed


def test_discovery_documents(api_server):

    def get(path):
        with api_server.urlopen(path) as resp:
            return json.loads(resp.read())

    assert get("/version")["major"] == "1"
    assert get("/api")["versions"] == ["v1"]
    groups = {g["name"]: g for g in get("/apis")["groups"]}
    assert groups["kaito.sh"]["preferredVersion"]["version"] == "v1beta1"
    assert {"apps", "batch", "coordination.k8s.io", "events.k8s.io", "karpenter.sh"} <= set(groups)
    for path in ("/apis/kaito.sh/v1beta1", "/apis/kaito.sh/v1beta1/"):
        res = {r["name"]: r for r in get(path)["resources"]}
        assert res["workspaces"]["namespaced"] and res["workspaces"]["shortNames"] == ["wk", "wks"]
        assert "workspaces/status" in res
    core = {r["name"]: r for r in get("/api/v1")["resources"]}
    assert not core["nodes"]["namespaced"] and "nodes/status" in core and core["pods"]["namespaced"]
    assert "deployments/status" in {r["name"] for r in get("/apis/apps/v1")["resources"]}
    assert get("/openapi/v3")["paths"]["apis/kaito.sh/v1beta1"]["serverRelativeURL"].startswith("/openapi/v3/")


def test_kubeconfig_loads_in_the_python_client(api_server, kubeconfig):
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    assert cfg.host == api_server.url
    with client.ApiClient(cfg) as api:
        names = [n.metadata.name for n in client.CoreV1Api(api).list_namespace().items]
    assert "default" in names
    _, active = config.list_kube_config_contexts(config_file=str(kubeconfig))
    assert active["context"]["namespace"] == "default"


def test_keep_alive_and_tcp_nodelay(api_server, custom, monkeypatch):
    """Counted, not timed: the client's requests share one connection (keep-alive), and every connection
    the server accepts has TCP_NODELAY set (without it, a response written as headers + body waits for
    the client's delayed ACK: ~40 ms a request)."""
    import socket

    accepted: list[int] = []  # TCP_NODELAY of each connection the server accepted, as it was accepted
    track = api_server._track

    def tracking(conn, add):
        if add:
            accepted.append(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        track(conn, add)

    monkeypatch.setattr(api_server, "_track", tracking)
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace())
    first = len(accepted)
    assert first >= 1
    for _ in range(200):
        custom.get_namespaced_custom_object(G, V, NS, WS, "ws-1")
    for i in range(50):
        custom.patch_namespaced_custom_object(G, V, NS, WS, "ws-1", {"metadata": {"labels": {"i": str(i)}}})
    assert api_server.requests[("get", "workspaces")] == 200 and api_server.requests[("patch", "workspaces")] == 50
    assert len(accepted) - first <= 1, f"{len(accepted) - first} new connections for 250 requests: no keep-alive"
    assert all(accepted), f"connections accepted without TCP_NODELAY: {accepted}"


def test_builtin_crud_through_typed_clients(api_server, api_server_client, core):
    batch = client.BatchV1Api(api_server_client)
    coord = client.CoordinationV1Api(api_server_client)
    events = client.EventsV1Api(api_server_client)
    job = batch.create_namespaced_job(NS, {"metadata": {"name": "j"}, "spec": {"template": {"spec": {
        "restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}})
    assert job.metadata.generation == 1
    batch.patch_namespaced_job_status("j", NS, {"status": {"succeeded": 1}})
    assert batch.read_namespaced_job("j", NS).status.succeeded == 1
    lease = coord.create_namespaced_lease(NS, {"metadata": {"name": "l"}, "spec": {"holderIdentity": "me"}})
    lease.spec.holder_identity = "you"
    assert coord.replace_namespaced_lease("l", NS, lease).spec.holder_identity == "you"
    core.create_namespaced_event(NS, {"metadata": {"name": "e1"}, "involvedObject": {"kind": "Workspace", "name": "w"},
                                      "reason": "Created", "message": "m", "type": "Normal"})
    assert [e.metadata.name for e in core.list_namespaced_event(
        NS, field_selector="involvedObject.name=w").items] == ["e1"]
    events.create_namespaced_event(NS, {"metadata": {"name": "e2"}, "eventTime": "2025-01-01T00:00:00.000000Z",
                                        "reportingController": "x", "reportingInstance": "y", "action": "A",
                                        "reason": "R", "type": "Normal"})
    assert [e.metadata.name for e in events.list_namespaced_event(NS).items] == ["e2"]
    core.create_namespaced_secret(NS, {"metadata": {"name": "s"}, "stringData": {"k": "v"}})
    core.create_namespaced_service_account(NS, {"metadata": {"name": "sa"}})
    rbac = client.RbacAuthorizationV1Api(api_server_client)
    rbac.create_cluster_role({"metadata": {"name": "system:kaito:reader"}, "rules": []})
    st = client.AppsV1Api(api_server_client).create_namespaced_stateful_set(NS, {"metadata": {"name": "s"}, "spec": {
        "serviceName": "s", "selector": {"matchLabels": {"a": "b"}},
        "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    assert st.metadata.generation == 1
    status = core.delete_namespaced_secret("s", NS)  # a Success Status (pods and CRs return the object)
    assert status["status"] == "Success" and status["details"]["name"] == "s"


def test_an_apiversion_or_kind_that_is_not_a_string_is_a_bad_request(custom):
    from kubernetes.client.exceptions import ApiException

    for bad in ({"apiVersion": 1, "kind": "Workspace"}, {"apiVersion": "kaito.sh/v1beta1", "kind": ["Workspace"]}):
        body = {**bad, "metadata": {"name": "w"}, "resource": {"instanceType": "x"}}
        try:
            custom.create_namespaced_custom_object("kaito.sh", "v1beta1", "default", "workspaces", body)
        except ApiException as exc:
            assert exc.status == 400, exc.body
        else:
            raise AssertionError("accepted a non-string apiVersion or kind")
