"""The ``/scale`` subresource as a real kube-apiserver serves it.

Sources: API reference, Scale (autoscaling/v1)
(https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/...; ``k8s.io/api/autoscaling/v1``);
``pkg/registry/apps/deployment/storage/storage.go`` and the StatefulSet/ReplicaSet registries (``scaleFrom...``:
the object's name/namespace/uid/resourceVersion/creationTimestamp, ``spec.replicas``, ``status.replicas`` and the
selector string); ``pkg/apis/autoscaling/validation`` (replicas >= 0); CRD scale subresource,
``apiextensions-apiserver/pkg/registry/customresource/etcd.go`` and
https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#scale-subresource
"""

from __future__ import annotations

import json

import pytest
from kubernetes import client

NS = "default"
ApiException = client.exceptions.ApiException

WIDGETS = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {"group": "example.com", "scope": "Namespaced",
             "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "subresources": {"status": {}, "scale": {
                               "specReplicasPath": ".spec.size", "statusReplicasPath": ".status.ready",
                               "labelSelectorPath": ".status.selector"}},
                           "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                               "spec": {"type": "object", "properties": {"size": {"type": "integer", "maximum": 10}}},
                               "status": {"type": "object", "properties": {
                                   "ready": {"type": "integer"}, "selector": {"type": "string"}}}}}}}]},
}


def deployment(name: str, replicas: int | None = 2) -> dict:
    spec: dict = {"selector": {"matchLabels": {"app": name, "tier": "web"}},
                  "template": {"metadata": {"labels": {"app": name, "tier": "web"}},
                               "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": spec}


def test_deployment_scale_get_update_patch(api_server, apps):
    made = apps.create_namespaced_deployment(NS, deployment("web"))
    apps.patch_namespaced_deployment_status("web", NS, {"status": {"replicas": 1}})
    scale = apps.read_namespaced_deployment_scale("web", NS)
    assert scale.kind == "Scale" and scale.api_version == "autoscaling/v1"
    assert scale.metadata.name == "web" and scale.metadata.uid == made.metadata.uid
    assert scale.spec.replicas == 2
    assert scale.status.replicas == 1 and scale.status.selector == "app=web,tier=web"

    scale.spec.replicas = 4
    out = apps.replace_namespaced_deployment_scale("web", NS, scale)
    assert out.spec.replicas == 4
    dep = apps.read_namespaced_deployment("web", NS)
    assert dep.spec.replicas == 4 and dep.metadata.generation == 2 and dep.status.replicas == 1
    assert out.metadata.resource_version == dep.metadata.resource_version

    # a stale resourceVersion in the Scale is a conflict on the deployment
    scale.spec.replicas = 6
    with pytest.raises(ApiException) as err:
        apps.replace_namespaced_deployment_scale("web", NS, scale)
    assert err.value.status == 409
    assert json.loads(err.value.body)["message"].startswith('Operation cannot be fulfilled on deployments.apps "web"')

    assert apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 0}}).spec.replicas == 0
    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": -1}})
    assert err.value.status == 422
    assert json.loads(err.value.body)["message"] == ('Scale.autoscaling "web" is invalid: spec.replicas: Invalid '
                                                     'value: -1: must be greater than or equal to 0')
    assert apps.read_namespaced_deployment("web", NS).spec.replicas == 0


def test_statefulset_scale_and_defaulted_replicas(api_server, apps):
    sts = deployment("db", replicas=None)
    sts["kind"] = "StatefulSet"
    sts["spec"]["serviceName"] = "db"
    apps.create_namespaced_stateful_set(NS, sts)
    assert apps.read_namespaced_stateful_set_scale("db", NS).spec.replicas == 1  # replicas defaults to 1
    apps.patch_namespaced_stateful_set_scale("db", NS, {"spec": {"replicas": 3}})
    assert apps.read_namespaced_stateful_set("db", NS).spec.replicas == 3
    with pytest.raises(ApiException) as err:
        apps.read_namespaced_stateful_set_scale("nope", NS)
    assert err.value.status == 404


def test_scale_of_a_custom_resource(api_server, custom):
    api_server.register_crd(WIDGETS)
    custom.create_namespaced_custom_object("example.com", "v1", NS, "widgets", {
        "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 2}})
    custom.patch_namespaced_custom_object_status("example.com", "v1", NS, "widgets", "w",
                                                 {"status": {"ready": 1, "selector": "app=w"}})
    scale = custom.get_namespaced_custom_object_scale("example.com", "v1", NS, "widgets", "w")
    assert scale["spec"] == {"replicas": 2} and scale["status"] == {"replicas": 1, "selector": "app=w"}
    out = custom.patch_namespaced_custom_object_scale("example.com", "v1", NS, "widgets", "w",
                                                      {"spec": {"replicas": 5}})
    assert out["spec"]["replicas"] == 5
    assert custom.get_namespaced_custom_object("example.com", "v1", NS, "widgets", "w")["spec"]["size"] == 5
    with pytest.raises(ApiException) as err:  # the CR's schema still applies (maximum 10)
        custom.patch_namespaced_custom_object_scale("example.com", "v1", NS, "widgets", "w", {"spec": {"replicas": 11}})
    assert err.value.status == 422
    with pytest.raises(ApiException) as err:  # a CRD without a scale subresource has no /scale
        custom.get_namespaced_custom_object_scale("kaito.sh", "v1beta1", NS, "workspaces", "w")
    assert err.value.status == 404


def test_scale_in_discovery(api_server, api_server_client):
    resources = client.AppsV1Api(api_server_client).get_api_resources().resources
    scale = next(r for r in resources if r.name == "deployments/scale")
    assert (scale.group, scale.version, scale.kind) == ("autoscaling", "v1", "Scale")
    assert sorted(scale.verbs) == ["get", "patch", "update"]


def test_kubectl_scale(api_server, apps, api_server_kubectl):
    apps.create_namespaced_deployment(NS, deployment("web"))
    out = api_server_kubectl("scale", "deployment", "web", "--replicas=3")
    assert out.stdout.strip() == "deployment.apps/web scaled"
    assert apps.read_namespaced_deployment("web", NS).spec.replicas == 3
    out = api_server_kubectl("scale", "deployment", "web", "--replicas=1", "--current-replicas=2", check=False)
    assert out.returncode != 0  # the precondition on the current replicas fails
    assert apps.read_namespaced_deployment("web", NS).spec.replicas == 3
    api_server.register_crd(WIDGETS)
    api_server_kubectl("apply", "-f", "-", stdin="apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n"
                                                 "spec: {size: 1}\n")
    out = api_server_kubectl("scale", "widget", "w", "--replicas=4")
    assert out.stdout.strip() == "widget.example.com/w scaled"
