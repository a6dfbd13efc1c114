"""Server-side apply with managedFields, as a real kube-apiserver does it.

Sources: https://kubernetes.io/docs/reference/using-api/server-side-apply/ (field management, conflicts, force,
removal of fields a manager no longer applies, the FieldsV1 format); ``k8s.io/apiserver/pkg/endpoints/handlers/
fieldmanager/internal/conflict.go`` (``NewConflictError``: 409, "Apply failed with N conflict(s): conflict with
\\"<manager>\\"...", one ``FieldManagerConflict`` cause per field path); ``sigs.k8s.io/structured-merge-diff``
(path strings such as ``.spec.template.spec.containers[name="c"].image``).
"""

from __future__ import annotations

import json

import pytest
from kubernetes import client

G, V, NS, WS = "kaito.sh", "v1beta1", "default", "workspaces"
ApiException = client.exceptions.ApiException
APPLY = "application/apply-patch+yaml"


def cm(data: dict, labels: dict | None = None) -> dict:
    meta: dict = {"name": "cm"}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def managers(obj) -> dict:
    entries = obj["metadata"].get("managedFields") if isinstance(obj, dict) else obj.metadata.managed_fields
    out = {}
    for e in entries or []:
        e = e if isinstance(e, dict) else client.ApiClient().sanitize_for_serialization(e)
        out[(e["manager"], e["operation"])] = e["fieldsV1"]
    return out


def test_apply_records_fields_v1_and_update_managers(api_server, core):
    core.patch_namespaced_config_map("cm", NS, cm({"a": "1"}, {"app": "x"}), field_manager="alice",
                                     _content_type=APPLY)
    core.patch_namespaced_config_map("cm", NS, {"data": {"b": "2"}}, field_manager="bob")
    got = core.read_namespaced_config_map("cm", NS)
    entries = {e.manager: e for e in got.metadata.managed_fields}
    assert entries["alice"].operation == "Apply" and entries["alice"].fields_type == "FieldsV1"
    assert entries["alice"].fields_v1 == {"f:data": {"f:a": {}}, "f:metadata": {"f:labels": {"f:app": {}}}}
    assert entries["bob"].operation == "Update" and entries["bob"].api_version == "v1"
    assert entries["bob"].fields_v1 == {"f:data": {"f:b": {}}}
    # a write without fieldManager is managed by the User-Agent's first part
    core.patch_namespaced_config_map("cm", NS, {"data": {"c": "3"}})
    names = {e.manager for e in core.read_namespaced_config_map("cm", NS).metadata.managed_fields}
    assert "OpenAPI-Generator" in names


def test_conflict_force_and_shared_ownership(api_server, core):
    core.patch_namespaced_config_map("cm", NS, cm({"a": "1", "b": "2"}), field_manager="alice", _content_type=APPLY)
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_config_map("cm", NS, cm({"a": "other"}), field_manager="bob", _content_type=APPLY)
    assert err.value.status == 409
    body = json.loads(err.value.body)
    assert body["reason"] == "Conflict"
    assert body["message"] == 'Apply failed with 1 conflict: conflict with "alice": .data.a'
    assert body["details"] == {"causes": [{"reason": "FieldManagerConflict", "message": 'conflict with "alice"',
                                           "field": ".data.a"}]}
    # the same value is no conflict: both own the field
    shared = core.patch_namespaced_config_map("cm", NS, cm({"b": "2"}), field_manager="bob", _content_type=APPLY)
    assert managers(client.ApiClient().sanitize_for_serialization(shared))[("bob", "Apply")] == {"f:data": {"f:b": {}}}
    forced = core.patch_namespaced_config_map("cm", NS, cm({"a": "other", "b": "2"}), field_manager="bob",
                                              force=True, _content_type=APPLY)
    assert forced.data == {"a": "other", "b": "2"}
    owned = managers(client.ApiClient().sanitize_for_serialization(forced))
    assert owned[("alice", "Apply")] == {"f:data": {"f:b": {}}}  # alice lost .data.a
    # a conflict with an Update manager names its apiVersion and time
    core.patch_namespaced_config_map("cm", NS, {"data": {"u": "1"}}, field_manager="editor")
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_config_map("cm", NS, cm({"u": "2"}), field_manager="carol", _content_type=APPLY)
    message = json.loads(err.value.body)["message"]
    assert message.startswith('Apply failed with 1 conflict: conflict with "editor" using v1 at ')
    assert message.endswith(": .data.u")


def test_fields_no_longer_applied_are_removed_unless_someone_else_owns_them(api_server, core):
    core.patch_namespaced_config_map("cm", NS, cm({"a": "1", "b": "2", "c": "3"}, {"l": "1"}), field_manager="alice",
                                     _content_type=APPLY)
    core.patch_namespaced_config_map("cm", NS, cm({"c": "3"}), field_manager="bob", _content_type=APPLY)
    out = core.patch_namespaced_config_map("cm", NS, cm({"a": "1"}), field_manager="alice", _content_type=APPLY)
    assert out.data == {"a": "1", "c": "3"}  # b removed; c stays, bob still applies it
    assert not out.metadata.labels


def deployment(containers: list[dict], replicas: int | None = None) -> dict:
    spec: dict = {"selector": {"matchLabels": {"app": "web"}},
                  "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": containers}}}
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": spec}


def test_deployment_containers_merge_by_name(api_server, apps):
    apps.patch_namespaced_deployment("web", NS, deployment([{"name": "app", "image": "app:1"}], replicas=2),
                                     field_manager="ci", _content_type=APPLY)
    got = apps.patch_namespaced_deployment("web", NS, deployment([{"name": "sidecar", "image": "proxy:1"}]),
                                           field_manager="mesh", _content_type=APPLY)
    assert [c.name for c in got.spec.template.spec.containers] == ["app", "sidecar"]
    fields = managers(client.ApiClient().sanitize_for_serialization(got))[("mesh", "Apply")]
    item = fields["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"sidecar"}']
    assert item == {".": {}, "f:image": {}, "f:name": {}}
    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_deployment("web", NS, deployment([{"name": "app", "image": "app:2"}]),
                                         field_manager="mesh", _content_type=APPLY)
    assert json.loads(err.value.body)["message"] == (
        'Apply failed with 1 conflict: conflict with "ci": .spec.template.spec.containers[name="app"].image')
    # the HPA-style split: another manager takes replicas over with force; ci stops applying it
    apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 5}}, field_manager="hpa")
    out = apps.patch_namespaced_deployment("web", NS, deployment([{"name": "app", "image": "app:1"}]),
                                           field_manager="ci", _content_type=APPLY)
    assert out.spec.replicas == 5  # hpa owns it now, so ci dropping it does not remove it
    out = apps.patch_namespaced_deployment("web", NS, deployment([{"name": "app", "image": "app:1"}]),
                                           field_manager="mesh", _content_type=APPLY)
    assert [c.name for c in out.spec.template.spec.containers] == ["app"]  # mesh stopped applying the sidecar


def test_custom_resources_and_status_managers(api_server, custom):
    doc = {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": "ws"},
           "resource": {"instanceType": "Standard_NC24ads_A100_v4", "labelSelector": {"matchLabels": {"a": "b"}}},
           "inference": {"preset": {"name": "phi-4"}}}
    custom.patch_namespaced_custom_object(G, V, NS, WS, "ws", doc, field_manager="runner", _content_type=APPLY)
    custom.patch_namespaced_custom_object_status(G, V, NS, WS, "ws", {"status": {"state": "Ready"}},
                                                 field_manager="controller")
    got = custom.get_namespaced_custom_object(G, V, NS, WS, "ws")
    entries = {(e["manager"], e.get("subresource", "")): e for e in got["metadata"]["managedFields"]}
    assert entries[("controller", "status")]["fieldsV1"] == {"f:status": {"f:state": {}}}
    assert "f:status" not in entries[("runner", "")]["fieldsV1"]
    assert entries[("runner", "")]["fieldsV1"]["f:resource"]["f:instanceType"] == {}
    changed = dict(doc, resource=dict(doc["resource"], instanceType="Standard_NC96ads_A100_v4"))
    custom.patch_namespaced_custom_object(G, V, NS, WS, "ws", {"resource": {"count": 2}}, field_manager="human",
                                          _content_type="application/merge-patch+json")
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object(G, V, NS, WS, "ws", dict(changed, resource=dict(changed["resource"],
                                                                                             count=3)),
                                              field_manager="runner", _content_type=APPLY)
    assert err.value.status == 409 and ".resource.count" in json.loads(err.value.body)["message"]


def test_kubectl_server_side_apply(api_server, core, api_server_kubectl, tmp_path):
    path = tmp_path / "cm.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\ndata: {a: '1', b: '2'}\n")
    out = api_server_kubectl("apply", "--server-side", "-f", str(path))
    assert out.stdout.strip() == "configmap/cm serverside-applied"
    core.patch_namespaced_config_map("cm", NS, {"data": {"a": "edited"}}, field_manager="editor")
    out = api_server_kubectl("apply", "--server-side", "-f", str(path), check=False)
    assert out.returncode != 0
    assert 'Apply failed with 1 conflict: conflict with "editor" using v1' in out.stderr
    assert ".data.a" in out.stderr
    api_server_kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    assert core.read_namespaced_config_map("cm", NS).data == {"a": "1", "b": "2"}
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\ndata: {a: '1'}\n")
    api_server_kubectl("apply", "--server-side", "-f", str(path))
    assert core.read_namespaced_config_map("cm", NS).data == {"a": "1"}
    yaml_out = api_server_kubectl("get", "configmap", "cm", "-o", "yaml", "--show-managed-fields").stdout
    assert "manager: kubectl" in yaml_out and "operation: Apply" in yaml_out
