"""Built-in kinds validated, defaulted and printed as a real kube-apiserver does.

Sources (kubernetes/kubernetes): ``k8s.io/api/core/v1`` (``Secret.data``/``ConfigMap.binaryData`` are ``[]byte``:
base64 in JSON, a bad value fails decoding with 400 ``... cannot be handled as a Secret: illegal base64 data at
input byte N``; ``stringData`` is write-only and merged into ``data``), ``pkg/apis/core/v1/defaults.go``
(``SetDefaults_Secret``: type ``Opaque``), ``pkg/apis/core/validation/validation.go`` (``ValidateConfigMap``,
``ValidateSecret``, ``ValidateSecretUpdate``), ``pkg/apis/coordination/validation`` (``ValidateLeaseSpec``), and
``pkg/printers/internalversion/printers.go`` (the columns of ``kubectl get``).
"""

from __future__ import annotations

import base64
import json
import time

import pytest
import yaml
from kubernetes import client

NS = "default"
ApiException = client.exceptions.ApiException


def status(err: pytest.ExceptionInfo) -> dict:
    return json.loads(err.value.body)


def post(server, path: str, doc: dict) -> tuple[int, dict]:
    """A raw POST (the typed client refuses to send ill-typed fields)."""

    conn = server.connection(timeout=5)
    conn.request("POST", path, body=json.dumps(doc), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read())
    conn.close()
    return out


def test_secret_data_must_be_base64(api_server, core):
    with pytest.raises(ApiException) as err:
        core.create_namespaced_secret(NS, {"metadata": {"name": "s"}, "data": {"token": "not base64!"}})
    assert err.value.status == 400
    assert status(err) == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": 'Secret in version "v1" cannot be handled as a Secret: illegal base64 data at '
                                      'input byte 3', "reason": "BadRequest", "code": 400}
    with pytest.raises(ApiException) as err:  # unpadded
        core.create_namespaced_secret(NS, {"metadata": {"name": "s"}, "data": {"token": "aGVsbG8"}})
    assert status(err)["message"].endswith("illegal base64 data at input byte 4")


def test_kaitos_example_secret_is_refused(api_server, kaito_dir, api_server_kubectl, tmp_path):
    docs = yaml.safe_load_all((kaito_dir / "examples/inference/kaito_multiroleinference_deepseek-v3.yaml").read_text())
    secret = next(d for d in docs if d and d.get("kind") == "Secret")
    path = tmp_path / "secret.yaml"
    path.write_text(yaml.safe_dump(secret))
    out = api_server_kubectl("apply", "-f", str(path), check=False)
    assert out.returncode != 0
    assert 'Secret in version "v1" cannot be handled as a Secret: illegal base64 data at input byte 0' in out.stderr


def test_secret_string_data_is_folded_and_type_defaulted(api_server, core):
    made = core.create_namespaced_secret(NS, {"metadata": {"name": "s"}, "data": {"a": base64.b64encode(b"1").decode(),
                                                                                 "b": base64.b64encode(b"old").decode()},
                                              "stringData": {"b": "new", "c": "3"}})
    assert made.type == "Opaque"
    assert made.string_data is None
    assert {k: base64.b64decode(v).decode() for k, v in made.data.items()} == {"a": "1", "b": "new", "c": "3"}
    raw = api_server.get_object("v1", "secrets", "s", NS)
    assert "stringData" not in raw and raw["type"] == "Opaque"
    patched = core.patch_namespaced_secret("s", NS, {"stringData": {"d": "4"}})
    assert base64.b64decode(patched.data["d"]) == b"4" and len(patched.data) == 4
    with pytest.raises(ApiException) as err:  # type is immutable
        core.patch_namespaced_secret("s", NS, {"type": "example.com/other"})
    assert err.value.status == 422
    assert status(err)["message"] == 'Secret "s" is invalid: type: Invalid value: "example.com/other": field is immutable'


def test_typed_secrets_and_secret_keys(api_server, core):
    with pytest.raises(ApiException) as err:
        core.create_namespaced_secret(NS, {"metadata": {"name": "tls"}, "type": "kubernetes.io/tls",
                                           "stringData": {"tls.crt": "x"}})
    assert status(err)["message"] == 'Secret "tls" is invalid: data[tls.key]: Required value'
    with pytest.raises(ApiException) as err:
        core.create_namespaced_secret(NS, {"metadata": {"name": "k"}, "stringData": {"bad key": "x"}})
    assert status(err)["details"]["causes"][0]["field"] == "data[bad key]"


def test_configmap_keys_and_overlap(api_server, core):
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "c"}, "data": {"a b": "1"}})
    assert err.value.status == 422
    assert status(err)["message"] == (
        'ConfigMap "c" is invalid: data[a b]: Invalid value: "a b": a valid config key must consist of alphanumeric '
        "characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is "
        "'[-._a-zA-Z0-9]+')")
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "c"}, "data": {"k": "1"},
                                               "binaryData": {"k": base64.b64encode(b"1").decode()}})
    assert status(err)["message"] == ('ConfigMap "c" is invalid: data[k]: Invalid value: "k": duplicate of key present '
                                      'in binaryData')
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "c"}, "binaryData": {"k": "%%%"}})
    assert err.value.status == 400
    code, body = post(api_server, f"/api/v1/namespaces/{NS}/configmaps", {"metadata": {"name": "c"}, "data": {"n": 1}})
    assert code == 400 and body["message"] == ('ConfigMap in version "v1" cannot be handled as a ConfigMap: json: cannot '
                                               'unmarshal number into Go struct field ConfigMap.data of type string')
    core.create_namespaced_config_map(NS, {"metadata": {"name": "frozen"}, "data": {"k": "1"}, "immutable": True})
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_config_map("frozen", NS, {"data": {"k": "2"}})
    assert status(err)["message"] == ('ConfigMap "frozen" is invalid: data: Forbidden: field is immutable when '
                                      '`immutable` is set')


def test_lease_spec_types(api_server, api_server_client):
    coord = client.CoordinationV1Api(api_server_client)
    path = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
    code, body = post(api_server, path, {"metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": "15"}})
    assert code == 400
    assert body["message"] == ('Lease in version "v1" cannot be handled as a Lease: json: cannot unmarshal '
                               'string into Go struct field LeaseSpec.spec.leaseDurationSeconds of type int32')
    code, body = post(api_server, path, {"metadata": {"name": "l"}, "spec": {"renewTime": "yesterday"}})
    assert code == 400 and "parsing time" in body["message"]
    with pytest.raises(ApiException) as err:
        coord.create_namespaced_lease(NS, {"metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": 0}})
    assert status(err)["message"] == ('Lease.coordination.k8s.io "l" is invalid: spec.leaseDurationSeconds: Invalid '
                                      'value: 0: must be greater than 0')
    made = coord.create_namespaced_lease(NS, {"metadata": {"name": "l"}, "spec": {
        "holderIdentity": "runner-1", "leaseDurationSeconds": 15, "renewTime": "2025-01-01T00:00:00.000000Z"}})
    assert made.spec.holder_identity == "runner-1"


# ---------------------------------------------------------------------------- tables


def test_builtin_table_columns(api_server, core, apps, api_server_client, api_server_kubectl):
    core.create_node({"metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/gpu": ""}},
                      "spec": {"unschedulable": True},
                      "status": {"conditions": [{"type": "Ready", "status": "True"}],
                                 "nodeInfo": {"kubeletVersion": "v1.32.0", "osImage": "Ubuntu", "kernelVersion": "6",
                                              "containerRuntimeVersion": "containerd://2", "machineID": "",
                                              "systemUUID": "", "bootID": "", "kubeProxyVersion": "",
                                              "operatingSystem": "linux", "architecture": "amd64"},
                                 "addresses": [{"type": "InternalIP", "address": "10.0.0.4"}]}})
    nodes = api_server_kubectl("get", "nodes").stdout.splitlines()
    assert nodes[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert nodes[1].split()[:3] == ["n1", "Ready,SchedulingDisabled", "gpu"] and nodes[1].split()[-1] == "v1.32.0"
    wide = api_server_kubectl("get", "nodes", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE",
                               "KERNEL-VERSION", "CONTAINER-RUNTIME"]
    assert "10.0.0.4" in wide[1] and "<none>" in wide[1]

    apps.create_namespaced_deployment(NS, {"metadata": {"name": "web"}, "spec": {
        "replicas": 3, "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}})
    apps.patch_namespaced_deployment_status("web", NS, {"status": {"readyReplicas": 2, "updatedReplicas": 3,
                                                                   "availableReplicas": 2}})
    rows = api_server_kubectl("get", "deployments").stdout.splitlines()
    assert rows[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert rows[1].split()[:4] == ["web", "2/3", "3", "2"]
    wide = api_server_kubectl("get", "deployments", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-3:] == ["CONTAINERS", "IMAGES", "SELECTOR"] and wide[1].split()[-3:] == ["c", "nginx",
                                                                                                      "app=web"]

    apps.create_namespaced_stateful_set(NS, {"metadata": {"name": "db"}, "spec": {
        "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
        "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "pg"}]}}}})
    rows = api_server_kubectl("get", "statefulsets").stdout.splitlines()
    assert rows[0].split() == ["NAME", "READY", "AGE"] and rows[1].split()[:2] == ["db", "0/1"]

    batch = client.BatchV1Api(api_server_client)
    batch.create_namespaced_job(NS, {"metadata": {"name": "tune"}, "spec": {"completions": 2, "template": {
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "t"}]}}}})
    batch.patch_namespaced_job_status("tune", NS, {"status": {"succeeded": 1, "startTime": "2025-01-01T00:00:00Z"}})
    rows = api_server_kubectl("get", "jobs").stdout.splitlines()
    assert rows[0].split() == ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]
    assert rows[1].split()[:3] == ["tune", "Running", "1/2"]

    core.create_namespaced_event(NS, {"metadata": {"name": "web.1"}, "type": "Warning", "reason": "BackOff",
                                      "message": "Back-off restarting", "count": 1,
                                      "involvedObject": {"kind": "Pod", "name": "web-0", "namespace": NS},
                                      "lastTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    rows = api_server_kubectl("get", "events").stdout.splitlines()
    assert rows[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert rows[1].split()[1:5] == ["Warning", "BackOff", "pod/web-0", "Back-off"]

    core.create_namespaced_config_map(NS, {"metadata": {"name": "cm"}, "data": {"a": "1", "b": "2"}})
    rows = api_server_kubectl("get", "configmaps").stdout.splitlines()
    assert rows[0].split() == ["NAME", "DATA", "AGE"] and rows[1].split()[:2] == ["cm", "2"]
    core.create_namespaced_secret(NS, {"metadata": {"name": "s"}, "stringData": {"a": "1"}})
    rows = api_server_kubectl("get", "secrets").stdout.splitlines()
    assert rows[0].split() == ["NAME", "TYPE", "DATA", "AGE"] and rows[1].split()[:3] == ["s", "Opaque", "1"]
    client.CoordinationV1Api(api_server_client).create_namespaced_lease(NS, {"metadata": {"name": "leader"},
                                                                             "spec": {"holderIdentity": "runner-1"}})
    rows = api_server_kubectl("get", "leases").stdout.splitlines()
    assert rows[0].split() == ["NAME", "HOLDER", "AGE"] and rows[1].split()[:2] == ["leader", "runner-1"]
