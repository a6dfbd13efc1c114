"""CRD validation rules (``x-kubernetes-validations``, CEL) enforced as a real kube-apiserver enforces them,
here for the rules of Karpenter's NodeClaim CRD.

Source: https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/
#validation-rules (``self``, transition rules with ``oldSelf`` evaluated on update only, the error
``<path>: Invalid value: "<type>": <message>``); ``apiextensions-apiserver/pkg/apiserver/schema/cel/validation.go``.
"""

from __future__ import annotations

import copy
import json

import pytest
from kubernetes import client

G, V, NC = "karpenter.sh", "v1", "nodeclaims"
ApiException = client.exceptions.ApiException


def nodeclaim(requirements: list[dict] | None = None, ref: dict | None = None) -> dict:
    return {"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": {"name": "nc"},
            "spec": {"nodeClassRef": ref or {"group": "karpenter.azure.com", "kind": "AKSNodeClass", "name": "default"},
                     "requirements": requirements if requirements is not None else [
                         {"key": "node.kubernetes.io/instance-type", "operator": "In",
                          "values": ["Standard_NC24ads_A100_v4"]}]}}


def refused(custom, doc: dict) -> dict:
    with pytest.raises(ApiException) as err:
        custom.create_cluster_custom_object(G, V, NC, doc)
    assert err.value.status == 422
    return json.loads(err.value.body)


def test_a_valid_nodeclaim_is_accepted(api_server, custom):
    made = custom.create_cluster_custom_object(G, V, NC, nodeclaim())
    assert made["metadata"]["name"] == "nc"


def test_requirement_rules(api_server, custom):
    body = refused(custom, nodeclaim([{"key": "karpenter.sh/capacity-type", "operator": "In", "values": []}]))
    assert body["message"] == ('NodeClaim.karpenter.sh "nc" is invalid: spec.requirements: Invalid value: "array": '
                               "requirements with operator 'In' must have a value defined")
    assert body["details"]["causes"] == [{"reason": "FieldValueInvalid", "field": "spec.requirements", "message":
                                          "Invalid value: \"array\": requirements with operator 'In' must have a value "
                                          "defined"}]
    body = refused(custom, nodeclaim([{"key": "karpenter.azure.com/sku-cpu", "operator": "Gt", "values": ["1", "2"]}]))
    assert "requirements operator 'Gt' or 'Lt' must have a single positive integer value" in body["message"]
    body = refused(custom, nodeclaim([{"key": "karpenter.azure.com/sku-cpu", "operator": "In", "values": ["a"],
                                       "minValues": 2}]))
    assert "requirements with 'minValues' must have at least that many values" in body["message"]


def test_label_domain_rules(api_server, custom):
    body = refused(custom, nodeclaim([{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n"]}]))
    assert 'spec.requirements[0].key: Invalid value: "string": label "kubernetes.io/hostname" is restricted' in \
        body["message"]
    body = refused(custom, nodeclaim([{"key": "example.kubernetes.io/x", "operator": "Exists"}]))
    assert 'label domain \\"kubernetes.io\\" is restricted' in json.dumps(body["message"])
    body = refused(custom, nodeclaim([{"key": "karpenter.sh/other", "operator": "Exists"}]))
    assert 'label domain "karpenter.sh" is restricted' in body["message"]
    # allowed: a well-known label, and node.kubernetes.io's domain
    custom.create_cluster_custom_object(G, V, NC, nodeclaim([{"key": "kubernetes.io/os", "operator": "In",
                                                              "values": ["linux"]}]))


def test_node_class_ref_fields_may_not_be_empty(api_server, custom):
    body = refused(custom, nodeclaim(ref={"group": "karpenter.azure.com", "kind": "", "name": "default"}))
    assert 'spec.nodeClassRef.kind: Invalid value: "string": kind may not be empty' in body["message"]


def test_spec_is_immutable_a_transition_rule(api_server, custom):
    made = custom.create_cluster_custom_object(G, V, NC, nodeclaim())
    changed = copy.deepcopy(made)
    changed["spec"]["requirements"][0]["values"] = ["Standard_NC96ads_A100_v4"]
    with pytest.raises(ApiException) as err:
        custom.replace_cluster_custom_object(G, V, NC, "nc", changed)
    assert err.value.status == 422
    assert json.loads(err.value.body)["message"] == ('NodeClaim.karpenter.sh "nc" is invalid: spec: Invalid value: '
                                                     '"object": spec is immutable')
    # metadata and status may change
    custom.patch_cluster_custom_object(G, V, NC, "nc", {"metadata": {"labels": {"a": "b"}}})
    custom.patch_cluster_custom_object_status(G, V, NC, "nc", {"status": {"providerID": "azure:///x"}})


def test_kubectl_sees_the_rule_message(api_server, api_server_kubectl):
    doc = nodeclaim([{"key": "karpenter.sh/capacity-type", "operator": "In", "values": []}])
    out = api_server_kubectl("apply", "-f", "-", stdin=json.dumps(doc), check=False)
    assert out.returncode != 0
    assert "requirements with operator 'In' must have a value defined" in out.stderr
