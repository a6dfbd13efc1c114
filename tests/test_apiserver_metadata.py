"""Metadata rules on writes, as a real kube-apiserver enforces them.

Sources (kubernetes/kubernetes, ``staging/src/k8s.io/apiserver/pkg``):
- ``registry/rest/update.go`` (``DefaultUpdatedObjectInfo.Preconditions``): the uid in a PUT body becomes a
  storage precondition; ``storage.Preconditions.Check`` fails with "Precondition failed: UID in precondition:
  <body uid>, UID in object meta: <stored uid>", which ``storage/errors.InterpretUpdateError`` answers 409
  Conflict. A PATCH has no such precondition; ``ValidateObjectMetaUpdate`` refuses the changed uid as immutable
  (422).
- ``storage/etcd3/store.go`` (``Create``): an object carrying a resourceVersion is refused with
  ``storage.ErrResourceVersionSetOnCreate`` ("resourceVersion should not be set on objects to be created"), a
  plain error that ``endpoints/handlers/responsewriters.ErrorToAPIStatus`` answers 500 with no reason. The
  dry-run storage skips that check.
"""

from __future__ import annotations

import copy
import json

import pytest
from kubernetes import client

G, V, NS, WS = "kaito.sh", "v1beta1", "default", "workspaces"
ApiException = client.exceptions.ApiException
OTHER_UID = "6d1f0a3c-8a43-4c39-9b7e-1d0c2f9e0b11"


def workspace(name: str) -> dict:
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name},
            "resource": {"instanceType": "Standard_NC24ads_A100_v4", "labelSelector": {"matchLabels": {"a": "b"}}},
            "inference": {"preset": {"name": "phi-4"}}}


def test_put_with_another_uid_is_a_409_precondition_failure(api_server, custom, core):
    made = custom.create_namespaced_custom_object(G, V, NS, WS, workspace("ws-1"))
    body = copy.deepcopy(made)
    body["metadata"]["uid"] = OTHER_UID
    body["resource"]["count"] = 2
    with pytest.raises(ApiException) as err:
        custom.replace_namespaced_custom_object(G, V, NS, WS, "ws-1", body)
    assert err.value.status == 409
    status = json.loads(err.value.body)
    assert status["reason"] == "Conflict"
    assert status["message"] == (f'Operation cannot be fulfilled on workspaces.kaito.sh "ws-1": Precondition failed: '
                                 f'UID in precondition: {OTHER_UID}, UID in object meta: {made["metadata"]["uid"]}')
    assert status["details"] == {"name": "ws-1", "group": "kaito.sh", "kind": "workspaces"}
    assert custom.get_namespaced_custom_object(G, V, NS, WS, "ws-1")["resource"]["count"] == 1
    # without a uid the PUT keeps the stored one
    del body["metadata"]["uid"]
    assert custom.replace_namespaced_custom_object(G, V, NS, WS, "ws-1", body)["metadata"]["uid"] == \
        made["metadata"]["uid"]

    cm = core.create_namespaced_config_map(NS, {"metadata": {"name": "cm"}})
    cm.metadata.uid = OTHER_UID
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_config_map("cm", NS, cm)
    assert err.value.status == 409 and "Precondition failed: UID in precondition" in json.loads(err.value.body)[
        "message"]


def test_patch_changing_the_uid_is_422_immutable(api_server, custom):
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("ws-1"))
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object(G, V, NS, WS, "ws-1", {"metadata": {"uid": OTHER_UID}})
    assert err.value.status == 422
    status = json.loads(err.value.body)
    assert status["message"] == (f'Workspace.kaito.sh "ws-1" is invalid: metadata.uid: Invalid value: "{OTHER_UID}": '
                                 'field is immutable')
    assert status["details"]["causes"] == [{"reason": "FieldValueInvalid", "field": "metadata.uid",
                                            "message": f'Invalid value: "{OTHER_UID}": field is immutable'}]


def test_create_with_a_resource_version_is_refused(api_server, custom, core):
    doc = workspace("ws-rv")
    doc["metadata"]["resourceVersion"] = "12345"
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(G, V, NS, WS, doc)
    assert err.value.status == 500
    assert json.loads(err.value.body) == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                          "message": "resourceVersion should not be set on objects to be created",
                                          "code": 500}
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "cm", "resourceVersion": "7"}})
    assert err.value.status == 500
    assert core.list_namespaced_config_map(NS).items == []
    # validation runs before storage: an invalid object is 422 even with a resourceVersion
    doc["resource"]["count"] = "many"
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(G, V, NS, WS, doc)
    assert err.value.status == 422
    # the dry-run storage does not check it
    doc["resource"]["count"] = 1
    custom.create_namespaced_custom_object(G, V, NS, WS, doc, dry_run="All")
    # "0" is no resourceVersion to the storage versioner
    core.create_namespaced_config_map(NS, {"metadata": {"name": "cm0", "resourceVersion": "0"}})


def test_kubectl_replace_with_another_uid(api_server, core, api_server_kubectl, tmp_path):
    """kubectl create clears a manifest's resourceVersion itself (resource.Helper), so it cannot show the create
    rule; kubectl replace sends the manifest's uid, and gets the precondition failure."""
    made = core.create_namespaced_config_map(NS, {"metadata": {"name": "cm"}, "data": {"a": "1"}})
    manifest = tmp_path / "cm.yaml"
    manifest.write_text(f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm, uid: {OTHER_UID}}}\n"
                        "data: {a: '2'}\n")
    out = api_server_kubectl("replace", "-f", str(manifest), check=False)
    assert out.returncode != 0
    assert (f'Operation cannot be fulfilled on configmaps "cm": Precondition failed: UID in precondition: {OTHER_UID}, '
            f'UID in object meta: {made.metadata.uid}') in out.stderr
    assert core.read_namespaced_config_map("cm", NS).data == {"a": "1"}
