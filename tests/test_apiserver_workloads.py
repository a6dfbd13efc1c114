"""The workload kinds (Deployment, StatefulSet, Job, Service, Pod, PersistentVolumeClaim) defaulted and validated as
a real kube-apiserver (v1.32) does, through the official Python client and kubectl.

Sources (kubernetes/kubernetes): ``pkg/apis/apps/v1/defaults.go`` (``SetDefaults_Deployment``,
``SetDefaults_StatefulSet``), ``pkg/apis/batch/v1/defaults.go`` (``SetDefaults_Job``), ``pkg/apis/core/v1/defaults.go``
(``SetDefaults_PodSpec``, ``SetDefaults_Container``, ``SetDefaults_Probe``, ``SetDefaults_Service``,
``SetDefaults_Pod``, ``SetDefaults_PersistentVolumeClaimSpec``), ``pkg/registry/batch/job/strategy.go``
(``generateSelector``), ``pkg/registry/core/service/storage`` (cluster IP and node port allocation,
``patchAllocatedValues``), ``pkg/apis/apps/validation/validation.go`` (``ValidateDeploymentSpec``,
``ValidatePodTemplateSpecForReplicaSet``, ``ValidateStatefulSetSpec``, ``ValidateStatefulSetUpdate``),
``pkg/apis/batch/validation/validation.go`` (``validateJobSpec``, ``validateGeneratedSelector``,
``ValidateJobSpecUpdate``), ``pkg/apis/core/validation/validation.go`` (``validateContainers``, ``ValidateService``,
``ValidateServiceUpdate``, ``ValidatePodUpdate``, ``ValidatePersistentVolumeClaimSpec``), and
``staging/src/k8s.io/apimachinery/pkg/util/validation/field/errors.go`` (how values are printed in messages).
"""

from __future__ import annotations

import ipaddress
import itertools
import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client

NS = "default"
ApiException = client.exceptions.ApiException
_COUNTER = itertools.count()


def status(err: pytest.ExceptionInfo) -> dict:
    return json.loads(err.value.body)


def causes(err: pytest.ExceptionInfo) -> list[tuple[str, str, str]]:
    return [(c["field"], c["reason"], c["message"]) for c in status(err)["details"]["causes"]]


def deployment(name: str = "web", **spec_extra) -> dict:
    labels = {"app": name}
    spec = {"selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                         "spec": {"containers": [{"name": "main", "image": "nginx",
                                                  "ports": [{"containerPort": 80}]}]}}}
    spec.update(spec_extra)
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": spec}


def create(custom, group: str, plural: str, body: dict, **kw) -> dict:
    return custom.create_namespaced_custom_object(group, "v1", NS, plural, body, **kw)


# ------------------------------------------------------------------------------------------------ Deployment


def test_deployment_defaults(api_server, custom):
    # SetDefaults_Deployment; SetDefaults_PodSpec/_Container/_Probe (core/v1/defaults.go); the template's zero
    # creationTimestamp is serialized as null (metav1.Time without omitempty in v1.32).
    dep = deployment()
    dep["spec"]["template"]["spec"]["containers"].append(
        {"name": "side", "image": "registry.example.com:5000/side:1.2",
         "readinessProbe": {"httpGet": {"port": 8080}}, "env": [{"name": "POD", "valueFrom": {
             "fieldRef": {"fieldPath": "metadata.name"}}}]})
    dep["spec"]["template"]["spec"]["volumes"] = [{"name": "cfg", "configMap": {"name": "c"}}, {"name": "scratch"}]
    got = create(custom, "apps", "deployments", dep)
    spec = got["spec"]
    assert spec["replicas"] == 1 and spec["revisionHistoryLimit"] == 10 and spec["progressDeadlineSeconds"] == 600
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
    pod = spec["template"]["spec"]
    assert spec["template"]["metadata"] == {"labels": {"app": "web"}, "creationTimestamp": None}
    assert {k: pod[k] for k in ("restartPolicy", "dnsPolicy", "terminationGracePeriodSeconds", "schedulerName",
                                "securityContext")} == {
        "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "terminationGracePeriodSeconds": 30,
        "schedulerName": "default-scheduler", "securityContext": {}}
    main, side = pod["containers"]
    assert main["imagePullPolicy"] == "Always"  # no tag: latest
    assert side["imagePullPolicy"] == "IfNotPresent"  # a registry port is not a tag; 1.2 is
    assert main["terminationMessagePath"] == "/dev/termination-log" and main["terminationMessagePolicy"] == "File"
    assert main["ports"] == [{"containerPort": 80, "protocol": "TCP"}] and main["resources"] == {}
    assert side["readinessProbe"] == {"httpGet": {"port": 8080, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1,
                                      "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}
    assert side["env"][0]["valueFrom"]["fieldRef"] == {"fieldPath": "metadata.name", "apiVersion": "v1"}
    assert pod["volumes"] == [{"name": "cfg", "configMap": {"name": "c", "defaultMode": 420}},
                              {"name": "scratch", "emptyDir": {}}]
    assert got["status"] == {}
    # what was answered is what is stored, and a GET through the typed client reads it
    typed = client.AppsV1Api(api_server.api_client()).read_namespaced_deployment("web", NS)
    assert typed.spec.strategy.rolling_update.max_surge == "25%"
    assert typed.spec.template.spec.dns_policy == "ClusterFirst"


def test_deployment_without_selector_is_invalid_as_the_real_server_says(api_server, custom):
    # ValidateDeploymentSpec: a nil selector is Required, and labels.Nothing() matches no template labels.
    dep = deployment()
    del dep["spec"]["selector"]
    with pytest.raises(ApiException) as err:
        create(custom, "apps", "deployments", dep)
    assert err.value.status == 422
    assert status(err)["message"] == (
        'Deployment.apps "web" is invalid: [spec.selector: Required value, spec.template.metadata.labels: Invalid '
        'value: map[string]string{"app":"web"}: `selector` does not match template `labels`]')
    assert status(err)["details"]["kind"] == "Deployment" and status(err)["details"]["group"] == "apps"


def test_deployment_template_and_container_rules(api_server, custom):
    dep = deployment(replicas=-1, strategy={"type": "Recreate", "rollingUpdate": {"maxSurge": 1}})
    dep["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    dep["spec"]["template"]["spec"]["restartPolicy"] = "Never"
    dep["spec"]["template"]["spec"]["containers"] = [
        {"name": "Main_1", "image": "nginx:1", "imagePullPolicy": "Sometimes"}, {"name": "b", "image": ""},
        {"name": "b", "image": "x", "ports": [{"containerPort": 70000}], "volumeMounts": [{"name": "nope",
                                                                                            "mountPath": "/x"}]}]
    with pytest.raises(ApiException) as err:
        create(custom, "apps", "deployments", dep)
    got = causes(err)
    c = "spec.template.spec.containers"
    label_msg = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
                 "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
                 "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
    for expected in [
        ("spec.replicas", "FieldValueInvalid", "Invalid value: -1: must be greater than or equal to 0"),
        ("spec.template.metadata.labels", "FieldValueInvalid",
         'Invalid value: map[string]string{"app":"web"}: `selector` does not match template `labels`'),
        (f"{c}[0].name", "FieldValueInvalid", f'Invalid value: "Main_1": {label_msg}'),
        (f"{c}[0].imagePullPolicy", "FieldValueNotSupported",
         'Unsupported value: "Sometimes": supported values: "Always", "IfNotPresent", "Never"'),
        (f"{c}[1].image", "FieldValueRequired", "Required value"),
        (f"{c}[2].name", "FieldValueDuplicate", 'Duplicate value: "b"'),
        (f"{c}[2].ports[0].containerPort", "FieldValueInvalid",
         "Invalid value: 70000: must be between 1 and 65535, inclusive"),
        (f"{c}[2].volumeMounts[0].name", "FieldValueNotFound", 'Not found: "nope"'),
        ("spec.template.spec.restartPolicy", "FieldValueNotSupported",
         'Unsupported value: "Never": supported values: "Always"'),
        ("spec.strategy.rollingUpdate", "FieldValueForbidden",
         "Forbidden: may not be specified when strategy `type` is 'Recreate'"),
    ]:
        assert expected in got, (expected, got)


def test_deployment_selector_is_immutable_and_updates_are_defaulted(api_server, custom):
    # ValidateDeploymentUpdate (apps/v1): the selector may not change; the printed value is Go's %#v.
    create(custom, "apps", "deployments", deployment())
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object("apps", "v1", NS, "deployments", "web", {
            "spec": {"selector": {"matchLabels": {"app": "web", "tier": "x"}},
                     "template": {"metadata": {"labels": {"app": "web", "tier": "x"}}}}})
    assert ("spec.selector", "FieldValueInvalid",
            'Invalid value: v1.LabelSelector{MatchLabels:map[string]string{"app":"web", "tier":"x"}, '
            "MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable") in causes(err)
    # A PUT that leaves the defaulted fields out is defaulted again (decoding defaults every request body):
    # nothing changes, so neither generation nor resourceVersion moves.
    before = custom.get_namespaced_custom_object("apps", "v1", NS, "deployments", "web")
    body = deployment()
    body["metadata"]["resourceVersion"] = before["metadata"]["resourceVersion"]
    after = custom.replace_namespaced_custom_object("apps", "v1", NS, "deployments", "web", body)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["metadata"]["generation"] == 1 and after["spec"] == before["spec"]
    # a merge patch that removes a defaulted field gets the default back
    patched = custom.patch_namespaced_custom_object("apps", "v1", NS, "deployments", "web",
                                                    {"spec": {"revisionHistoryLimit": None, "replicas": 3}})
    assert patched["spec"]["revisionHistoryLimit"] == 10 and patched["metadata"]["generation"] == 2


def test_ill_typed_fields_fail_decoding_with_400(api_server, custom):
    # The JSON decoder (k8s.io/apimachinery's json serializer) refuses a string for an int32 before validation.
    with pytest.raises(ApiException) as err:
        create(custom, "apps", "deployments", deployment(replicas="two"))
    assert err.value.status == 400
    assert status(err)["message"] == ('Deployment in version "v1" cannot be handled as a Deployment: json: cannot '
                                      "unmarshal string into Go struct field DeploymentSpec.spec.replicas of type "
                                      "int32")


# ------------------------------------------------------------------------------------------------ StatefulSet


def statefulset(name: str = "db") -> dict:
    sts = deployment(name, serviceName=f"{name}-headless")
    sts["kind"] = "StatefulSet"
    sts["spec"]["volumeClaimTemplates"] = [{"metadata": {"name": "data"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]
    sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    return sts


def test_statefulset_defaults(api_server, custom):
    got = create(custom, "apps", "statefulsets", statefulset())
    spec = got["spec"]
    assert spec["podManagementPolicy"] == "OrderedReady" and spec["replicas"] == 1
    assert spec["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}
    assert spec["revisionHistoryLimit"] == 10
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    # a claim template is stored as a whole PersistentVolumeClaim
    assert spec["volumeClaimTemplates"] == [{
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "creationTimestamp": None},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                 "volumeMode": "Filesystem"}, "status": {"phase": "Pending"}}]
    assert got["status"] == {"replicas": 0, "availableReplicas": 0}
    # a volume mount may name a claim template (the pods get that volume): ValidatePodTemplateSpecForStatefulSet
    # checks the template's labels and annotations, not its pod spec (a TODO in v1.32), so even a template
    # without containers is stored
    assert spec["template"]["spec"]["containers"][0]["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    empty = statefulset("empty")
    empty["spec"]["template"]["spec"]["containers"] = []
    assert create(custom, "apps", "statefulsets", empty)["spec"]["template"]["spec"]["containers"] == []


def test_statefulset_rules_and_update_restrictions(api_server, custom):
    bad = statefulset("bad")
    bad["spec"]["podManagementPolicy"] = "Whenever"
    bad["spec"]["persistentVolumeClaimRetentionPolicy"] = {"whenDeleted": "Keep"}
    bad["spec"]["selector"] = {"matchLabels": {}}
    with pytest.raises(ApiException) as err:
        create(custom, "apps", "statefulsets", bad)
    got = causes(err)
    assert ("spec.podManagementPolicy", "FieldValueInvalid",
            "Invalid value: \"Whenever\": must be 'OrderedReady' or 'Parallel'") in got
    assert ("spec.persistentVolumeClaimRetentionPolicy.whenDeleted", "FieldValueNotSupported",
            'Unsupported value: "Keep": supported values: "Retain", "Delete"') in got
    assert ("spec.selector", "FieldValueInvalid",
            "Invalid value: v1.LabelSelector{MatchLabels:map[string]string{}, "
            "MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: empty selector is invalid for statefulset") in got

    create(custom, "apps", "statefulsets", statefulset())
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object("apps", "v1", NS, "statefulsets", "db",
                                              {"spec": {"serviceName": "elsewhere"}})
    assert causes(err) == [("spec", "FieldValueForbidden",
                            "Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', "
                            "'template', 'updateStrategy', 'revisionHistoryLimit', "
                            "'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden")]
    ok = custom.patch_namespaced_custom_object("apps", "v1", NS, "statefulsets", "db", {
        "spec": {"replicas": 3, "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"}}})
    assert ok["spec"]["replicas"] == 3
    assert ok["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Delete", "whenScaled": "Retain"}


# ------------------------------------------------------------------------------------------------ Job


def job(name: str = "pi", restart: str | None = "Never") -> dict:
    pod: dict = {"containers": [{"name": "pi", "image": "perl:5.34", "command": ["perl", "-e", "print 1"]}]}
    if restart is not None:
        pod["restartPolicy"] = restart
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": {"template": {"spec": pod}}}


def test_job_defaults_and_generated_selector(api_server, custom):
    got = create(custom, "batch", "jobs", job())
    uid, spec = got["metadata"]["uid"], got["spec"]
    assert {k: spec[k] for k in ("parallelism", "completions", "backoffLimit", "completionMode", "suspend",
                                 "manualSelector", "podReplacementPolicy")} == {
        "parallelism": 1, "completions": 1, "backoffLimit": 6, "completionMode": "NonIndexed", "suspend": False,
        "manualSelector": False, "podReplacementPolicy": "TerminatingOrFailed"}
    labels = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": "pi",
              "controller-uid": uid, "job-name": "pi"}
    assert spec["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    assert spec["template"]["metadata"]["labels"] == labels
    assert got["metadata"]["labels"] == labels  # SetDefaults_Job copies the template's labels to a label-less Job
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    # only parallelism given: completions stays unset (a work queue)
    queue = job("queue")
    queue["spec"]["parallelism"] = 3
    assert "completions" not in create(custom, "batch", "jobs", queue)["spec"]
    # the uid in the labels is the Job's own, also after a dry run of another
    dry = create(custom, "batch", "jobs", job("dry"), dry_run="All")
    assert dry["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"] == dry["metadata"]["uid"]


def test_job_restart_policy_and_manual_selector(api_server, custom):
    with pytest.raises(ApiException) as err:
        create(custom, "batch", "jobs", job(restart=None))  # defaulted to Always, which a Job may not have
    assert causes(err) == [("spec.template.spec.restartPolicy", "FieldValueRequired",
                            'Required value: valid values: "OnFailure", "Never"')]
    with pytest.raises(ApiException) as err:
        create(custom, "batch", "jobs", job(restart="Sometimes"))
    assert ("spec.template.spec.restartPolicy", "FieldValueNotSupported",
            'Unsupported value: "Sometimes": supported values: "OnFailure", "Never"') in causes(err)
    manual = job("manual")
    manual["spec"]["manualSelector"] = True
    with pytest.raises(ApiException) as err:
        create(custom, "batch", "jobs", manual)
    assert ("spec.selector", "FieldValueRequired", "Required value") in causes(err)
    manual["spec"]["selector"] = {"matchLabels": {"run": "manual"}}
    manual["spec"]["template"]["metadata"] = {"labels": {"run": "manual"}}
    got = create(custom, "batch", "jobs", manual)
    assert got["spec"]["selector"] == {"matchLabels": {"run": "manual"}}
    assert got["spec"]["template"]["metadata"]["labels"] == {"run": "manual"}  # nothing generated


def test_job_template_and_selector_are_immutable(api_server, custom):
    create(custom, "batch", "jobs", job())
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object("batch", "v1", NS, "jobs", "pi", {"spec": {"template": {"spec": {
            "containers": [{"name": "pi", "image": "perl:5.36"}]}}}})
    got = causes(err)
    assert [c[:2] for c in got] == [("spec.template", "FieldValueInvalid")]
    assert got[0][2].endswith(": field is immutable")
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object("batch", "v1", NS, "jobs", "pi", {"spec": {"completions": 4}})
    assert ("spec.completions", "FieldValueInvalid", "Invalid value: 4: field is immutable") in causes(err)
    # what may change: suspend, parallelism, labels of the Job
    ok = custom.patch_namespaced_custom_object("batch", "v1", NS, "jobs", "pi", {
        "metadata": {"labels": {"team": "a"}}, "spec": {"suspend": True, "parallelism": 2}})
    assert ok["spec"]["suspend"] is True and ok["spec"]["parallelism"] == 2


def test_a_suspended_job_that_never_ran_may_change_its_scheduling(api_server, custom):
    # validatePodTemplateUpdate with AllowMutableSchedulingDirectives (suspended, no startTime)
    body = job()
    body["spec"]["suspend"] = True
    create(custom, "batch", "jobs", body)
    ok = custom.patch_namespaced_custom_object("batch", "v1", NS, "jobs", "pi", {"spec": {"template": {"spec": {
        "nodeSelector": {"pool": "gpu"}}}}})
    assert ok["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "gpu"}


# ------------------------------------------------------------------------------------------------ Service


def service(name: str = "web", **spec) -> dict:
    body = {"selector": {"app": name}, "ports": [{"port": 80}]}
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": body}


def test_service_defaults_and_cluster_ip_allocation(api_server, core):
    a = core.create_namespaced_service(NS, service("a")).to_dict()["spec"]
    b = core.create_namespaced_service(NS, service("b", ports=[{"name": "http", "port": 80, "targetPort": "web"},
                                                                {"name": "dns", "port": 53,
                                                                 "protocol": "UDP"}])).to_dict()["spec"]
    cidr = ipaddress.ip_network("10.96.0.0/12")
    assert ipaddress.ip_address(a["cluster_ip"]) in cidr and a["cluster_ips"] == [a["cluster_ip"]]
    assert a["cluster_ip"] != b["cluster_ip"]
    assert {k: a[k] for k in ("type", "session_affinity", "internal_traffic_policy", "ip_families",
                              "ip_family_policy")} == {
        "type": "ClusterIP", "session_affinity": "None", "internal_traffic_policy": "Cluster",
        "ip_families": ["IPv4"], "ip_family_policy": "SingleStack"}
    assert a["ports"][0]["protocol"] == "TCP" and a["ports"][0]["target_port"] == 80
    assert [(p["protocol"], p["target_port"]) for p in b["ports"]] == [("TCP", "web"), ("UDP", 53)]
    assert core.read_namespaced_service("a", NS).status.load_balancer is not None  # status: {loadBalancer: {}}


def test_headless_and_node_port_services(api_server, core):
    # a headless Service needs no ports (the project's own headless Service has none)
    headless = core.create_namespaced_service(NS, service("h", clusterIP="None", ports=[])).spec
    assert headless.cluster_ip == "None" and headless.cluster_ips == ["None"]
    assert headless.ip_family_policy == "SingleStack"
    selectorless = core.create_namespaced_service(NS, {"metadata": {"name": "ext"}, "spec": {"clusterIP": "None"}})
    assert selectorless.spec.ip_family_policy == "RequireDualStack"  # headless without a selector
    np = core.create_namespaced_service(NS, service("np", type="NodePort")).spec
    assert 30000 <= np.ports[0].node_port <= 32767 and np.external_traffic_policy == "Cluster"
    lb = core.create_namespaced_service(NS, service("lb", type="LoadBalancer")).spec
    assert lb.allocate_load_balancer_node_ports is True and lb.ports[0].node_port != np.ports[0].node_port
    with pytest.raises(ApiException) as err:
        core.create_namespaced_service(NS, service("np2", type="NodePort", ports=[
            {"port": 80, "nodePort": np.ports[0].node_port}]))
    assert causes(err) == [("spec.ports[0].nodePort", "FieldValueInvalid",
                            f"Invalid value: {np.ports[0].node_port}: provided port is already allocated")]


def test_service_validation(api_server, core):
    with pytest.raises(ApiException) as err:
        core.create_namespaced_service(NS, {"metadata": {"name": "noports"}, "spec": {"selector": {"app": "x"}}})
    assert causes(err) == [("spec.ports", "FieldValueRequired", "Required value")]
    with pytest.raises(ApiException) as err:
        core.create_namespaced_service(NS, service("bad", type="Magic", ports=[
            {"port": 0}, {"name": "b", "port": 80, "protocol": "HTTP", "targetPort": "way-too-long-port-name"}]))
    got = causes(err)
    for expected in [
        ("spec.type", "FieldValueNotSupported",
         'Unsupported value: "Magic": supported values: "ClusterIP", "ExternalName", "LoadBalancer", "NodePort"'),
        ("spec.ports[0].name", "FieldValueRequired", "Required value"),
        ("spec.ports[0].port", "FieldValueInvalid", "Invalid value: 0: must be between 1 and 65535, inclusive"),
        ("spec.ports[1].protocol", "FieldValueNotSupported",
         'Unsupported value: "HTTP": supported values: "SCTP", "TCP", "UDP"'),
        ("spec.ports[1].targetPort", "FieldValueInvalid",
         'Invalid value: "way-too-long-port-name": must be no more than 15 characters'),
    ]:
        assert expected in got, (expected, got)
    with pytest.raises(ApiException) as err:
        core.create_namespaced_service(NS, service("outside", clusterIP="192.168.0.10"))
    assert causes(err) == [("spec.clusterIPs", "FieldValueInvalid",
                            'Invalid value: []string{"192.168.0.10"}: failed to allocate IP 192.168.0.10: the provided '
                            "IP (192.168.0.10) is not in the valid range. The range of valid IPs is 10.96.0.0/12")]
    core.create_namespaced_service(NS, service("fixed", clusterIP="10.96.0.10"))
    with pytest.raises(ApiException) as err:
        core.create_namespaced_service(NS, service("again", clusterIP="10.96.0.10"))
    assert causes(err) == [("spec.clusterIPs", "FieldValueInvalid", 'Invalid value: []string{"10.96.0.10"}: failed '
                                                                    "to allocate IP 10.96.0.10: provided IP is already "
                                                                    "allocated")]


def test_cluster_ip_is_kept_on_update_and_may_not_change(api_server, core):
    created = core.create_namespaced_service(NS, service())
    ip = created.spec.cluster_ip
    # a PUT that leaves the allocated IP out keeps it (patchAllocatedValues)
    body = service()
    body["metadata"]["resourceVersion"] = created.metadata.resource_version
    body["spec"]["ports"][0]["port"] = 8080
    replaced = core.replace_namespaced_service("web", NS, body)
    assert replaced.spec.cluster_ip == ip and replaced.spec.cluster_ips == [ip]
    assert replaced.spec.ports[0].target_port == 8080
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_service("web", NS, {"spec": {"clusterIP": "10.96.0.99", "clusterIPs": ["10.96.0.99"]}})
    assert causes(err) == [("spec.clusterIPs[0]", "FieldValueInvalid",
                            'Invalid value: []string{"10.96.0.99"}: may not change once set')]


# ------------------------------------------------------------------------------------------------ Pod, PVC


def test_pod_defaults_and_immutable_spec(api_server, core):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "c", "image": "busybox:1.36", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}}
    got = core.create_namespaced_pod(NS, pod)
    assert got.spec.enable_service_links is True and got.spec.restart_policy == "Always"
    assert got.spec.containers[0].resources.requests == {"cpu": "1", "memory": "1Gi"}  # requests from limits
    assert got.status.phase == "Pending"
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_pod("p", NS, {"spec": {"restartPolicy": "Never"}})
    assert [c[:2] for c in causes(err)] == [("spec", "FieldValueForbidden")]
    assert causes(err)[0][2].startswith("Forbidden: pod updates may not change fields other than")
    ok = core.patch_namespaced_pod("p", NS, {"spec": {"containers": [{"name": "c", "image": "busybox:1.37"}]}})
    assert ok.spec.containers[0].image == "busybox:1.37"


def test_persistent_volume_claim(api_server, core):
    got = core.create_namespaced_persistent_volume_claim(NS, {"metadata": {"name": "data"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    assert got.spec.volume_mode == "Filesystem" and got.status.phase == "Pending"
    with pytest.raises(ApiException) as err:
        core.create_namespaced_persistent_volume_claim(NS, {"metadata": {"name": "bad"}, "spec": {}})
    assert causes(err)[:2] == [("spec.accessModes", "FieldValueRequired",
                                "Required value: at least 1 access mode is required"),
                               ("spec.resources[storage]", "FieldValueRequired", "Required value")]


# ------------------------------------------------------------------------------------------------ dry run, apply


def test_dry_run_defaults_and_allocates_but_stores_nothing(api_server, core, custom):
    dry = core.create_namespaced_service(NS, service("dry"), dry_run="All")
    assert ipaddress.ip_address(dry.spec.cluster_ip) in ipaddress.ip_network("10.96.0.0/12")
    assert not core.list_namespaced_service(NS).items
    dep = create(custom, "apps", "deployments", deployment(), dry_run="All")
    assert dep["spec"]["progressDeadlineSeconds"] == 600
    with pytest.raises(ApiException) as err:
        bad = deployment()
        del bad["spec"]["selector"]
        create(custom, "apps", "deployments", bad, dry_run="All")
    assert err.value.status == 422


def test_server_side_apply_is_defaulted_and_idempotent(api_server, api_server_kubectl, tmp_path):
    path = tmp_path / "web.yaml"
    path.write_text(yaml.safe_dump(deployment()))
    api_server_kubectl("apply", "--server-side", "-f", str(path))
    first = json.loads(api_server_kubectl("get", "deployment", "web", "-o", "json").stdout)
    assert first["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": "25%", "maxSurge": "25%"}
    api_server_kubectl("apply", "--server-side", "-f", str(path))
    again = json.loads(api_server_kubectl("get", "deployment", "web", "-o", "json", "--show-managed-fields").stdout)
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert again["metadata"]["generation"] == 1
    # the applier owns what it sent, not the defaults (an Apply's managed fields are its configuration)
    applied = next(m for m in again["metadata"]["managedFields"] if m["operation"] == "Apply")
    assert "f:replicas" not in applied["fieldsV1"]["f:spec"] and "f:selector" in applied["fieldsV1"]["f:spec"]


# ------------------------------------------------------------------------------------------------ kubectl


MANIFEST = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: main, image: "nginx:1.27", ports: [{containerPort: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 80}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: once}
spec:
  template:
    spec:
      restartPolicy: OnFailure
      containers:
      - {name: once, image: busybox}
"""


def test_kubectl_apply_and_get_show_the_defaults(api_server, api_server_kubectl):
    out = api_server_kubectl("apply", "-f", "-", stdin=MANIFEST).stdout
    assert "deployment.apps/web created" in out and "service/web created" in out and "job.batch/once created" in out
    dep = yaml.safe_load(api_server_kubectl("get", "deployment", "web", "-o", "yaml").stdout)
    assert dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert dep["spec"]["revisionHistoryLimit"] == 10
    svc = yaml.safe_load(api_server_kubectl("get", "service", "web", "-o", "yaml").stdout)
    assert ipaddress.ip_address(svc["spec"]["clusterIP"]) in ipaddress.ip_network("10.96.0.0/12")
    job_doc = yaml.safe_load(api_server_kubectl("get", "job", "once", "-o", "yaml").stdout)
    assert job_doc["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"] == \
        job_doc["metadata"]["uid"]
    # a second client-side apply of the same manifest changes nothing: the defaults do not count as drift
    again = api_server_kubectl("apply", "-f", "-", stdin=MANIFEST).stdout
    assert "deployment.apps/web unchanged" in again and "service/web unchanged" in again
    assert "job.batch/once unchanged" in again


def test_kubectl_shows_the_invalid_answer(api_server, api_server_kubectl):
    bad = MANIFEST.split("---")[2].replace("restartPolicy: OnFailure", "restartPolicy: Always")
    out = api_server_kubectl("apply", "-f", "-", stdin=bad, check=False)
    assert out.returncode != 0
    assert ('The Job "once" is invalid: spec.template.spec.restartPolicy: Required value: valid values: '
            '"OnFailure", "Never"') in out.stderr


def test_kubectl_get_services_and_pods_prints_the_real_columns(api_server, api_server_kubectl, core):
    # pkg/printers/internalversion/printers.go: serviceColumnDefinitions with printService (makePortString,
    # getServiceExternalIP), podColumnDefinitions with printPod.
    core.create_namespaced_service(NS, service("web", ports=[{"name": "http", "port": 80},
                                                              {"name": "dns", "port": 53, "protocol": "UDP"}]))
    np = core.create_namespaced_service(NS, service("np", type="NodePort"))
    core.create_namespaced_service(NS, service("lb", type="LoadBalancer"))
    core.create_namespaced_service(NS, service("h", clusterIP="None", ports=[]))
    rows = {r.split()[0]: r.split() for r in api_server_kubectl("get", "services").stdout.splitlines()}
    assert rows["NAME"] == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    web_ip = core.read_namespaced_service("web", NS).spec.cluster_ip
    assert rows["web"][:5] == ["web", "ClusterIP", web_ip, "<none>", "80/TCP,53/UDP"]
    assert rows["np"][:5] == ["np", "NodePort", np.spec.cluster_ip, "<none>", f"80:{np.spec.ports[0].node_port}/TCP"]
    assert rows["lb"][3] == "<pending>" and rows["h"][:5] == ["h", "ClusterIP", "None", "<none>", "<none>"]
    wide = api_server_kubectl("get", "service", "web", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-1] == "SELECTOR" and wide[1].split()[-1] == "app=web"

    core.create_namespaced_pod(NS, {"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "a", "image": "busybox"}, {"name": "b", "image": "busybox"}]}})
    core.patch_namespaced_pod_status("p", NS, {"status": {"containerStatuses": [
        {"name": "a", "ready": True, "restartCount": 2, "image": "busybox", "imageID": "", "state": {"running": {}}},
        {"name": "b", "ready": False, "restartCount": 1, "image": "busybox", "imageID": "",
         "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}})
    rows = api_server_kubectl("get", "pods").stdout.splitlines()
    assert rows[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert rows[1].split()[:4] == ["p", "1/2", "CrashLoopBackOff", "3"]
    wide = api_server_kubectl("get", "pods", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-6:] == ["IP", "NODE", "NOMINATED", "NODE", "READINESS", "GATES"]


def test_decoding_errors_name_the_go_struct_and_type(api_server):
    # encoding/json's UnmarshalTypeError: "Go struct field <struct holding it>.<json path> of type <its Go type>",
    # the path without list indices; the server wraps it as "<Kind> in version "v1" cannot be handled as a <Kind>".
    def post(path: str, doc: dict) -> tuple[int, str]:
        conn = api_server.connection(timeout=5)
        conn.request("POST", path, body=json.dumps(doc), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
        conn.close()
        return resp.status, body["message"]

    dep = deployment()
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = 7
    assert post(f"/apis/apps/v1/namespaces/{NS}/deployments", dep) == (
        400, 'Deployment in version "v1" cannot be handled as a Deployment: json: cannot unmarshal number into Go '
             "struct field Container.spec.template.spec.containers.image of type string")
    svc = service()
    svc["spec"]["selector"] = ["app"]
    assert post(f"/api/v1/namespaces/{NS}/services", svc) == (
        400, 'Service in version "v1" cannot be handled as a Service: json: cannot unmarshal array into Go struct '
             "field ServiceSpec.spec.selector of type map[string]string")
    bad_job = job()
    bad_job["spec"] = "run"
    assert post(f"/apis/batch/v1/namespaces/{NS}/jobs", bad_job) == (
        400, 'Job in version "v1" cannot be handled as a Job: json: cannot unmarshal string into Go struct field '
             "Job.spec of type v1.JobSpec")


# ------------------------------------------------------------------------------------------------ any body


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                 max_size=3), max_leaves=6)
PLAUSIBLE = st.sampled_from([0, 1, 3, 8080, "a", "web", "nginx:1", "TCP", "UDP", "Never", "OnFailure", "Always",
                             "25%", "None", "10.96.0.7", "NodePort", "LoadBalancer", "Parallel", True, False, {}, []])
BASES = {"deployments": ("/apis/apps/v1", deployment), "statefulsets": ("/apis/apps/v1", statefulset),
         "jobs": ("/apis/batch/v1", job), "services": ("/api/v1", service)}


def _paths(doc, at=()):
    yield at
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k not in ("apiVersion", "kind", "metadata"):
                yield from _paths(v, (*at, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*at, i))


@st.composite
def mutated(draw, plural=None):
    plural = plural or draw(st.sampled_from(sorted(BASES)))
    doc = BASES[plural][1]()
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(st.one_of(JSON, PLAUSIBLE))
    return plural, doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(case=mutated(), data=st.data())
def test_any_body_is_stored_or_refused_never_a_server_error(api_server, case, data):
    # What the real server promises for any request body: decoding errors are 400 (a Status), validation errors 422
    # with causes, never a 500. And what it stores is valid input: writing the answer back changes nothing
    # (defaulting is idempotent, validation accepts its own output).
    plural, doc = case
    prefix = BASES[plural][0]
    doc["metadata"]["name"] = name = f"x{next(_COUNTER)}"

    def call(method: str, path: str, body: dict) -> tuple[int, dict]:
        conn = api_server.connection(timeout=10)
        conn.request(method, path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        out = resp.status, json.loads(resp.read())
        conn.close()
        return out

    code, body = call("POST", f"{prefix}/namespaces/{NS}/{plural}", doc)
    assert code in (201, 400, 422), (code, body)
    if code != 201:
        assert body["kind"] == "Status" and body["code"] == code
        if code == 422:
            assert body["details"]["causes"], body
        return
    again, written = call("PUT", f"{prefix}/namespaces/{NS}/{plural}/{name}", body)
    assert again == 200, written
    assert written["metadata"]["resourceVersion"] == body["metadata"]["resourceVersion"], (body, written)
    # any other body as an update of it: stored or refused, never a server error
    _, other = data.draw(mutated(plural))
    other["metadata"]["name"] = name
    code, answer = call("PUT", f"{prefix}/namespaces/{NS}/{plural}/{name}", other)
    assert code in (200, 400, 422), (code, answer)


def test_kaitos_example_claims_are_accepted(api_server, api_server_kubectl, kaito_dir, tmp_path):
    # KAITO's examples create PVCs beside their Workspaces and RAGEngines (ValidatePersistentVolumeClaim accepts
    # them; SetDefaults_PersistentVolumeClaimSpec sets volumeMode).
    claims = []
    for path in ("examples/rag/kaito_ragengine_phi_3_with_pvc.yaml",
                 "examples/fine-tuning/kaito_workspace_tuning_phi_3_with_pvc_volume.yaml"):
        claims += [d for d in yaml.safe_load_all((kaito_dir / path).read_text())
                   if d and d.get("kind") == "PersistentVolumeClaim"]
    assert len(claims) == 3
    out = tmp_path / "claims.yaml"
    out.write_text(yaml.safe_dump_all(claims))
    api_server_kubectl("apply", "-f", str(out))
    for claim in claims:
        got = yaml.safe_load(api_server_kubectl("get", "pvc", claim["metadata"]["name"], "-o", "yaml").stdout)
        assert got["spec"]["volumeMode"] == "Filesystem" and got["status"] == {"phase": "Pending"}
        assert got["spec"]["resources"] == claim["spec"]["resources"]
