"""Defaulting and validation of the workload kinds an operator creates: Deployment, StatefulSet, Job, Service,
Pod and PersistentVolumeClaim, with their pod templates.

Learned from kubernetes/kubernetes v1.32 (no code copied), for the cases an operator meets, not every field:

- defaulting: ``pkg/apis/apps/v1/defaults.go`` (``SetDefaults_Deployment``, ``SetDefaults_StatefulSet``),
  ``pkg/apis/batch/v1/defaults.go`` (``SetDefaults_Job``), ``pkg/apis/core/v1/defaults.go`` (``SetDefaults_PodSpec``,
  ``SetDefaults_Container``, ``SetDefaults_Probe``, ``SetDefaults_Service``, the volume sources' ``defaultMode``);
- what the registries add: ``pkg/registry/batch/job/strategy.go`` (the generated selector and the
  ``controller-uid``/``job-name`` labels, when ``manualSelector`` is not set), ``pkg/registry/core/service/storage``
  (a cluster IP allocated from the service range, node ports from 30000-32767, IP families, and an update that
  omits them keeps the allocated ones);
- validation: ``pkg/apis/apps/validation`` (``ValidateDeploymentSpec``, ``ValidateStatefulSetSpec`` and their
  updates), ``pkg/apis/batch/validation`` (``validateJobSpec``, ``validateGeneratedSelector``,
  ``ValidateJobSpecUpdate``), ``pkg/apis/core/validation`` (``ValidatePodTemplateSpec``, ``validateContainers``,
  ``ValidateService``, ``ValidatePersistentVolumeClaim``).

Values inside messages are printed as the real server prints them (Go's ``%q`` for strings, ``%#v`` for maps and
label selectors); bigger structs are abbreviated (``core.PodTemplateSpec{...}``).
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
from typing import Any

from workspace_fsm.testing.errors import APIError
from workspace_fsm.testing.meta import cause, forbidden, invalid, required, validate_metadata

__all__ = ["WORKLOAD_ADMISSION", "SERVICE_CIDR", "NODE_PORT_RANGE"]

SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/12")  # kube-apiserver --service-cluster-ip-range, as kind sets it
NODE_PORT_RANGE = (30000, 32767)  # --service-node-port-range's default

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
              "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
              "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
_PORT_RANGE_MSG = "must be between 1 and 65535, inclusive"
_PROTOCOLS = ("SCTP", "TCP", "UDP")


# ------------------------------------------------------------------------------------------------ helpers


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _sub(parent: dict[str, Any], key: str) -> Any:
    """``parent[key]``, an empty object when absent or null (what decoding a nil struct pointer gives)."""
    if parent.get(key) is None:
        parent[key] = {}
    return parent[key]


def _q(value: Any) -> str:
    return json.dumps(value)


def _go_map(value: Any) -> str:
    """Go's ``%#v`` of a ``map[string]string`` (keys sorted, as fmt prints maps)."""
    if value is None:
        return "map[string]string(nil)"
    items = ", ".join(f"{_q(k)}:{_q(v)}" for k, v in sorted(_d(value).items()))
    return "map[string]string{" + items + "}"


def _go_selector(sel: Any) -> str:
    """Go's ``%#v`` of a ``v1.LabelSelector``."""
    sel = _d(sel)
    exprs = sel.get("matchExpressions")
    if exprs is None:
        rendered = "[]v1.LabelSelectorRequirement(nil)"
    else:
        parts = []
        for e in _l(exprs):
            e = _d(e)
            values = e.get("values")
            vals = "[]string(nil)" if values is None else "[]string{" + ", ".join(_q(v) for v in _l(values)) + "}"
            parts.append(f'v1.LabelSelectorRequirement{{Key:{_q(e.get("key", ""))}, '
                         f'Operator:{_q(e.get("operator", ""))}, Values:{vals}}}')
        rendered = "[]v1.LabelSelectorRequirement{" + ", ".join(parts) + "}"
    return f"v1.LabelSelector{{MatchLabels:{_go_map(sel.get('matchLabels'))}, MatchExpressions:{rendered}}}"


def _raw_invalid(field: str, rendered: str, detail: str) -> dict[str, str]:
    """An Invalid cause whose value is already rendered (a Go struct or map)."""
    return cause(field, "FieldValueInvalid", f"Invalid value: {rendered}: {detail}")


def _not_supported(field: str, value: Any, supported: tuple[str, ...] | list[str]) -> dict[str, str]:
    listed = ", ".join(_q(s) for s in supported)
    return cause(field, "FieldValueNotSupported", f"Unsupported value: {_q(value)}: supported values: {listed}")


def _duplicate(field: str, value: Any) -> dict[str, str]:
    return cause(field, "FieldValueDuplicate", f"Duplicate value: {_q(value)}")


def _nonnegative(value: Any, field: str) -> list[dict[str, str]]:
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        return [invalid(field, value, "must be greater than or equal to 0")]
    return []


def json_type(value: Any) -> str:
    """The JSON type of a decoded value, as Go's encoding/json names it in its errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "string"


_CHECKS = {
    "int32": lambda x: isinstance(x, int) and not isinstance(x, bool) and -2**31 <= x < 2**31,
    "int64": lambda x: isinstance(x, int) and not isinstance(x, bool),
    "string": lambda x: isinstance(x, str), "bool": lambda x: isinstance(x, bool),
    "object": lambda x: isinstance(x, dict), "array": lambda x: isinstance(x, list),
    "intstr": lambda x: isinstance(x, str) or (isinstance(x, int) and not isinstance(x, bool)),
}
_CHECK_OF = {"int32": "int32", "int64": "int64", "string": "string", "bool": "bool", "intstr.IntOrString": "intstr",
             "v1.RestartPolicy": "string", "v1.CompletionMode": "string", "v1.ServiceType": "string"}

Field = tuple[str, str, str]  # JSON path (lists walked), the Go struct holding the field, the field's Go type


def _decode(kind: str, obj: dict[str, Any], fields: tuple[Field, ...]) -> None:
    """The JSON decoder's type errors (400) for ``fields``, worded as Go's encoding/json words them: ``cannot
    unmarshal <json type> into Go struct field <Struct>.<json path> of type <Go type>``."""
    for path, struct, go_type in fields:
        check = _CHECKS[_CHECK_OF.get(go_type, "array" if go_type.startswith("[]") else "object")]
        parts = path.split(".")
        values = [obj]
        for depth, part in enumerate(parts):
            nxt: list[Any] = []
            for v in values:
                if isinstance(v, dict) and part in v:
                    item = v[part]
                    last = depth == len(parts) - 1
                    nxt.extend(item if isinstance(item, list) and not last else [item])
            values = nxt
        for value in values:
            if value is not None and not check(value):
                raise APIError.bad_request(
                    f'{kind} in version "v1" cannot be handled as a {kind}: json: cannot unmarshal '
                    f"{json_type(value)} into Go struct field {struct}.{path} of type {go_type}")


def _template_fields(holder: str, prefix: str = "spec.template.spec") -> tuple[Field, ...]:
    """The pod template's fields (``holder``: the struct holding ``template``), or a Pod's with ``prefix`` spec."""
    head: tuple[Field, ...] = ()
    if prefix == "spec.template.spec":
        head = (("spec.template", holder, "v1.PodTemplateSpec"),
                ("spec.template.spec", "PodTemplateSpec", "v1.PodSpec"))
    c = f"{prefix}.containers"
    return head + (
        (c, "PodSpec", "[]v1.Container"), (f"{prefix}.initContainers", "PodSpec", "[]v1.Container"),
        (f"{c}.name", "Container", "string"), (f"{c}.image", "Container", "string"),
        (f"{c}.ports", "Container", "[]v1.ContainerPort"), (f"{c}.ports.containerPort", "ContainerPort", "int32"),
        (f"{prefix}.volumes", "PodSpec", "[]v1.Volume"),
        (f"{prefix}.terminationGracePeriodSeconds", "PodSpec", "int64"),
        (f"{prefix}.restartPolicy", "PodSpec", "v1.RestartPolicy"),
    )


# ------------------------------------------------------------------------------------------------ label selectors


def _match(sel: dict[str, Any], labels: dict[str, Any]) -> bool:
    """Whether a ``LabelSelector`` selects ``labels`` (an empty selector selects everything)."""
    for k, v in _d(sel.get("matchLabels")).items():
        if labels.get(k) != v:
            return False
    for e in _l(sel.get("matchExpressions")):
        e = _d(e)
        key, op, values = e.get("key"), e.get("operator"), _l(e.get("values"))
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _selector_causes(sel: dict[str, Any], path: str) -> list[dict[str, str]]:
    """ValidateLabelSelector: matchLabels as labels, matchExpressions' operators and values."""
    causes = []
    probe = validate_metadata({"labels": _d(sel.get("matchLabels"))}, "subdomain", creating=False)
    causes += [dict(c, field=c["field"].replace("metadata.labels", f"{path}.matchLabels", 1)) for c in probe]
    for i, e in enumerate(_l(sel.get("matchExpressions"))):
        e = _d(e)
        at = f"{path}.matchExpressions[{i}]"
        op, values = e.get("operator"), e.get("values")
        if op in ("In", "NotIn"):
            if not values:
                causes.append(required(f"{at}.values", "must be specified when `operator` is 'In' or 'NotIn'"))
        elif op in ("Exists", "DoesNotExist"):
            if values:
                causes.append(forbidden(f"{at}.values",
                                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"))
        else:
            causes.append(invalid(f"{at}.operator", op, "not a valid selector operator"))
    return causes


def _selector_valid(sel: dict[str, Any]) -> bool:
    return all(_d(e).get("operator") in ("In", "NotIn", "Exists", "DoesNotExist")
               for e in _l(sel.get("matchExpressions")))


# ------------------------------------------------------------------------------------------------ pod specs


def _image_pull_policy(image: Any) -> str:
    """SetDefaults_Container: Always for ``:latest`` or no tag (and no digest), else IfNotPresent."""
    if not isinstance(image, str) or not image:
        return "IfNotPresent"
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    tag = last.rsplit(":", 1)[1] if ":" in last else "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


def _default_probe(probe: Any) -> None:
    if not isinstance(probe, dict):
        return
    for key, value in (("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1),
                       ("failureThreshold", 3)):
        if not probe.get(key):
            probe[key] = value
    http = probe.get("httpGet")
    if isinstance(http, dict):
        http.setdefault("path", "/")
        if not http.get("scheme"):
            http["scheme"] = "HTTP"


def _default_container(c: dict[str, Any]) -> None:
    if not c.get("imagePullPolicy"):
        c["imagePullPolicy"] = _image_pull_policy(c.get("image"))
    if not c.get("terminationMessagePath"):
        c["terminationMessagePath"] = "/dev/termination-log"
    if not c.get("terminationMessagePolicy"):
        c["terminationMessagePolicy"] = "File"
    c.setdefault("resources", {})  # a struct, never omitted in JSON
    for p in _l(c.get("ports")):
        if isinstance(p, dict) and not p.get("protocol"):
            p["protocol"] = "TCP"
    for name in ("livenessProbe", "readinessProbe", "startupProbe"):
        _default_probe(c.get(name))
    for env in _l(c.get("env")):
        ref = _d(_d(_d(env).get("valueFrom")).get("fieldRef"))
        if ref and not ref.get("apiVersion"):
            ref["apiVersion"] = "v1"


_VOLUME_SOURCES = ("hostPath", "emptyDir", "gcePersistentDisk", "awsElasticBlockStore", "gitRepo", "secret", "nfs",
                   "iscsi", "glusterfs", "persistentVolumeClaim", "rbd", "flexVolume", "cinder", "cephfs", "flocker",
                   "downwardAPI", "fc", "azureFile", "configMap", "vsphereVolume", "quobyte", "azureDisk",
                   "photonPersistentDisk", "projected", "portworxVolume", "scaleIO", "storageos", "csi", "ephemeral",
                   "image")


def _default_volume(v: dict[str, Any]) -> None:
    if not any(k in v for k in _VOLUME_SOURCES):  # SetDefaults_Volume
        v["emptyDir"] = {}
    for key in ("secret", "configMap", "projected", "downwardAPI"):
        src = v.get(key)
        if isinstance(src, dict) and src.get("defaultMode") is None:
            src["defaultMode"] = 420  # 0644
    host = v.get("hostPath")
    if isinstance(host, dict) and host.get("type") is None:
        host["type"] = ""


def default_pod_spec(spec: dict[str, Any]) -> None:
    """SetDefaults_PodSpec and what it reaches: containers, probes, ports, volumes."""
    if not spec.get("dnsPolicy"):
        spec["dnsPolicy"] = "ClusterFirst"
    if not spec.get("restartPolicy"):
        spec["restartPolicy"] = "Always"
    if spec.get("securityContext") is None:
        spec["securityContext"] = {}
    if spec.get("terminationGracePeriodSeconds") is None:
        spec["terminationGracePeriodSeconds"] = 30
    if not spec.get("schedulerName"):
        spec["schedulerName"] = "default-scheduler"
    for c in _l(spec.get("containers")) + _l(spec.get("initContainers")):
        if isinstance(c, dict):
            _default_container(c)
    for v in _l(spec.get("volumes")):
        if isinstance(v, dict):
            _default_volume(v)


def _default_template(tpl: dict[str, Any]) -> None:
    meta = _sub(tpl, "metadata")
    if isinstance(meta, dict):
        meta.setdefault("creationTimestamp", None)  # a zero metav1.Time, printed as null (v1.32)
    spec = _sub(tpl, "spec")
    if isinstance(spec, dict):
        default_pod_spec(spec)


def _port_name_problems(name: str) -> list[str]:
    """IsValidPortName (IANA_SVC_NAME)."""
    out = []
    if len(name) > 15:
        out.append("must be no more than 15 characters")
    if not re.fullmatch(r"[-a-z0-9]+", name):
        out.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not re.search(r"[a-z]", name):
        out.append("must contain at least one letter (a-z)")
    if "--" in name:
        out.append("must not contain consecutive hyphens")
    if name.startswith("-") or name.endswith("-"):
        out.append("must not begin or end with a hyphen")
    return out


def _port_num(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def _container_causes(containers: list[Any], path: str, volumes: set[str], names: set[str]) -> list[dict[str, str]]:
    causes: list[dict[str, str]] = []
    for i, c in enumerate(containers):
        at = f"{path}[{i}]"
        if not isinstance(c, dict):
            causes.append(invalid(at, c, "must be an object"))
            continue
        name = c.get("name")
        if not name:
            causes.append(required(f"{at}.name"))
        elif isinstance(name, str):
            if len(name) > 63:
                causes.append(invalid(f"{at}.name", name, "must be no more than 63 characters"))
            if not _LABEL.fullmatch(name):
                causes.append(invalid(f"{at}.name", name, _LABEL_MSG))
            if name in names:
                causes.append(_duplicate(f"{at}.name", name))
            names.add(name)
        if not c.get("image"):
            causes.append(required(f"{at}.image"))
        policy = c.get("imagePullPolicy")
        if policy not in ("Always", "IfNotPresent", "Never"):
            causes.append(_not_supported(f"{at}.imagePullPolicy", policy, ("Always", "IfNotPresent", "Never")))
        if c.get("terminationMessagePolicy") not in ("File", "FallbackToLogsOnError"):
            causes.append(_not_supported(f"{at}.terminationMessagePolicy", c.get("terminationMessagePolicy"),
                                         ("File", "FallbackToLogsOnError")))
        port_names: set[str] = set()
        for j, p in enumerate(_l(c.get("ports"))):
            p = _d(p)
            pat = f"{at}.ports[{j}]"
            pname = p.get("name")
            if pname:
                causes += [invalid(f"{pat}.name", pname, m) for m in _port_name_problems(str(pname))]
                if pname in port_names:
                    causes.append(_duplicate(f"{pat}.name", pname))
                port_names.add(pname)
            port = p.get("containerPort")
            if port is None or port == 0:
                causes.append(required(f"{pat}.containerPort"))
            elif not _port_num(port):
                causes.append(invalid(f"{pat}.containerPort", port, _PORT_RANGE_MSG))
            host_port = p.get("hostPort")
            if host_port not in (None, 0) and not _port_num(host_port):
                causes.append(invalid(f"{pat}.hostPort", host_port, _PORT_RANGE_MSG))
            if p.get("protocol") not in _PROTOCOLS:
                causes.append(_not_supported(f"{pat}.protocol", p.get("protocol"), _PROTOCOLS))
        for j, m in enumerate(_l(c.get("volumeMounts"))):
            m = _d(m)
            mat = f"{at}.volumeMounts[{j}]"
            if not m.get("name"):
                causes.append(required(f"{mat}.name"))
            elif m["name"] not in volumes:
                causes.append(cause(f"{mat}.name", "FieldValueNotFound", f"Not found: {_q(m['name'])}"))
            if not m.get("mountPath"):
                causes.append(required(f"{mat}.mountPath"))
        for probe in ("livenessProbe", "startupProbe"):
            threshold = _d(c.get(probe)).get("successThreshold")
            if isinstance(threshold, int) and threshold != 1:
                causes.append(invalid(f"{at}.{probe}.successThreshold", threshold, "must be 1"))
        for j, env in enumerate(_l(c.get("env"))):
            if not _d(env).get("name"):
                causes.append(required(f"{at}.env[{j}].name"))
    return causes


def _pod_spec_causes(spec: Any, path: str) -> list[dict[str, str]]:
    """ValidatePodSpec, for what operators get wrong: containers, volumes, the policies' values."""
    if not isinstance(spec, dict):
        return [required(path)]
    causes: list[dict[str, str]] = []
    volumes: set[str] = set()
    for i, v in enumerate(_l(spec.get("volumes"))):
        v = _d(v)
        at = f"{path}.volumes[{i}]"
        name = v.get("name")
        if not name:
            causes.append(required(f"{at}.name"))
        else:
            if not isinstance(name, str) or not _LABEL.fullmatch(name) or len(name) > 63:
                causes.append(invalid(f"{at}.name", name, _LABEL_MSG))
            if name in volumes:
                causes.append(_duplicate(f"{at}.name", name))
            volumes.add(name)
        sources = [k for k in _VOLUME_SOURCES if k in v]
        if len(sources) > 1:
            causes.append(forbidden(f"{at}.{sources[1]}", "may not specify more than 1 volume type"))
    containers = _l(spec.get("containers"))
    names: set[str] = set()
    if not containers:
        causes.append(required(f"{path}.containers"))
    causes += _container_causes(containers, f"{path}.containers", volumes, names)
    causes += _container_causes(_l(spec.get("initContainers")), f"{path}.initContainers", volumes, names)
    restart = spec.get("restartPolicy")
    if restart not in ("Always", "OnFailure", "Never"):
        causes.append(_not_supported(f"{path}.restartPolicy", restart, ("Always", "OnFailure", "Never")))
    dns = spec.get("dnsPolicy")
    if dns not in ("ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"):
        causes.append(_not_supported(f"{path}.dnsPolicy", dns, ("ClusterFirstWithHostNet", "ClusterFirst",
                                                                "Default", "None")))
    causes += _nonnegative(spec.get("activeDeadlineSeconds"), f"{path}.activeDeadlineSeconds")
    return causes


def _template_causes(tpl: Any, path: str, *, pod_spec: bool = True) -> list[dict[str, str]]:
    """ValidatePodTemplateSpec: the template's labels and annotations, then its pod spec."""
    tpl = _d(tpl)
    meta = _d(tpl.get("metadata"))
    probe = validate_metadata({k: meta[k] for k in ("labels", "annotations") if k in meta}, "subdomain",
                              creating=False)
    causes = [dict(c, field=c["field"].replace("metadata", f"{path}.metadata", 1)) for c in probe]
    return causes + (_pod_spec_causes(tpl.get("spec"), f"{path}.spec") if pod_spec else [])


def _template_selector_causes(spec: dict[str, Any], path: str, kind: str) -> list[dict[str, str]]:
    """The selector (required, valid, not empty) and whether it selects the template's labels."""
    causes: list[dict[str, str]] = []
    sel = spec.get("selector")
    if sel is None:
        causes.append(required(f"{path}.selector"))
    else:
        sel = _d(sel)
        causes += _selector_causes(sel, f"{path}.selector")
        if not sel.get("matchLabels") and not sel.get("matchExpressions"):
            causes.append(_raw_invalid(f"{path}.selector", _go_selector(sel), f"empty selector is invalid for {kind}"))
    labels = _d(_d(spec.get("template")).get("metadata")).get("labels")
    # a nil selector selects nothing, so it does not match either (labels.Nothing())
    if sel is None or (_selector_valid(_d(sel)) and (_d(sel).get("matchLabels") or _d(sel).get("matchExpressions"))
                       and not _match(_d(sel), _d(labels))):
        causes.append(_raw_invalid(f"{path}.template.metadata.labels", _go_map(labels),
                                   "`selector` does not match template `labels`"))
    return causes


def _immutable(new: Any, old: Any, field: str, rendered: str | None = None) -> list[dict[str, str]]:
    if new == old:
        return []
    shown = rendered if rendered is not None else _q(new) if isinstance(new, (str, int)) else "null" \
        if new is None else json.dumps(new, separators=(",", ":"))
    return [_raw_invalid(field, shown, "field is immutable")]


def _spec(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec")
    if spec is None:
        spec = obj["spec"] = {}
    return spec


def _intstr_percent(value: Any, field: str) -> list[dict[str, str]]:
    """ValidatePositiveIntOrPercent and IsNotMoreThan100Percent."""
    if isinstance(value, str):
        m = re.fullmatch(r"([0-9]+)%", value)
        if not m:
            return [invalid(field, value, "a valid percent string must be a numeric string followed by an ending "
                                          "'%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')")]
        if int(m.group(1)) > 100:
            return [invalid(field, value, "must not be greater than 100%")]
    elif isinstance(value, int) and value < 0:
        return [invalid(field, value, "must be greater than or equal to 0")]
    return []


def _is_zero(value: Any) -> bool:
    return value in (0, "0%", None)


# ------------------------------------------------------------------------------------------------ Deployment


def _deployment(obj: dict[str, Any], old: dict[str, Any] | None, ctx: Any) -> list[dict[str, str]]:
    _decode("Deployment", obj, (("spec", "Deployment", "v1.DeploymentSpec"),
                                ("spec.replicas", "DeploymentSpec", "int32"),
                                ("spec.selector", "DeploymentSpec", "v1.LabelSelector"),
                                ("spec.revisionHistoryLimit", "DeploymentSpec", "int32"),
                                ("spec.progressDeadlineSeconds", "DeploymentSpec", "int32"),
                                ("spec.minReadySeconds", "DeploymentSpec", "int32"),
                                ("spec.strategy", "DeploymentSpec", "v1.DeploymentStrategy"),
                                ("spec.strategy.rollingUpdate", "DeploymentStrategy", "v1.RollingUpdateDeployment"),
                                ("spec.strategy.rollingUpdate.maxSurge", "RollingUpdateDeployment",
                                 "intstr.IntOrString"),
                                ("spec.strategy.rollingUpdate.maxUnavailable", "RollingUpdateDeployment",
                                 "intstr.IntOrString"),
                                *_template_fields("DeploymentSpec")))
    spec = _spec("Deployment", obj)
    if spec.get("replicas") is None:
        spec["replicas"] = 1
    strategy = _sub(spec, "strategy")
    if not strategy.get("type"):
        strategy["type"] = "RollingUpdate"
    if strategy["type"] == "RollingUpdate":
        ru = _sub(strategy, "rollingUpdate")
        if isinstance(ru, dict):
            ru.setdefault("maxUnavailable", "25%")
            ru.setdefault("maxSurge", "25%")
    if spec.get("revisionHistoryLimit") is None:
        spec["revisionHistoryLimit"] = 10
    if spec.get("progressDeadlineSeconds") is None:
        spec["progressDeadlineSeconds"] = 600
    _default_template(_sub(spec, "template"))
    obj.setdefault("status", {})

    path = "spec"
    causes = _nonnegative(spec["replicas"], f"{path}.replicas")
    causes += _template_selector_causes(spec, path, "deployment")
    causes += _template_causes(spec["template"], f"{path}.template")
    restart = _d(spec["template"].get("spec")).get("restartPolicy")
    if restart != "Always":
        causes.append(_not_supported(f"{path}.template.spec.restartPolicy", restart, ("Always",)))
    if _d(spec["template"].get("spec")).get("activeDeadlineSeconds") is not None:
        causes.append(forbidden(f"{path}.template.spec.activeDeadlineSeconds",
                                "activeDeadlineSeconds in ReplicaSet is not Supported"))
    if strategy["type"] == "Recreate":
        if strategy.get("rollingUpdate") is not None:
            causes.append(forbidden(f"{path}.strategy.rollingUpdate",
                                    "may not be specified when strategy `type` is 'Recreate'"))
    elif strategy["type"] == "RollingUpdate":
        ru = _d(strategy.get("rollingUpdate"))
        at = f"{path}.strategy.rollingUpdate"
        causes += _intstr_percent(ru.get("maxUnavailable"), f"{at}.maxUnavailable")
        causes += _intstr_percent(ru.get("maxSurge"), f"{at}.maxSurge")
        if _is_zero(ru.get("maxUnavailable")) and _is_zero(ru.get("maxSurge")):
            causes.append(invalid(f"{at}.maxUnavailable", ru.get("maxUnavailable"),
                                  "may not be 0 when `maxSurge` is 0"))
    else:
        causes.append(_not_supported(f"{path}.strategy.type", strategy["type"], ("Recreate", "RollingUpdate")))
    causes += _nonnegative(spec.get("minReadySeconds"), f"{path}.minReadySeconds")
    causes += _nonnegative(spec["revisionHistoryLimit"], f"{path}.revisionHistoryLimit")
    pds = spec["progressDeadlineSeconds"]
    causes += _nonnegative(pds, f"{path}.progressDeadlineSeconds")
    if isinstance(pds, int) and pds <= (spec.get("minReadySeconds") or 0):
        causes.append(invalid(f"{path}.progressDeadlineSeconds", pds, "must be greater than minReadySeconds"))
    if old is not None:
        old_sel = _d(old.get("spec")).get("selector")
        if spec.get("selector") != old_sel:
            causes.append(_raw_invalid(f"{path}.selector", _go_selector(spec.get("selector")), "field is immutable"))
    return causes


# ------------------------------------------------------------------------------------------------ StatefulSet


_STS_MUTABLE = ("replicas", "template", "updateStrategy", "minReadySeconds", "ordinals", "revisionHistoryLimit",
                "persistentVolumeClaimRetentionPolicy")


def _default_claim(claim: dict[str, Any]) -> None:
    """A volumeClaimTemplate is stored as a whole PersistentVolumeClaim (kind, apiVersion and a Pending status)."""
    claim.setdefault("apiVersion", "v1")
    claim.setdefault("kind", "PersistentVolumeClaim")
    meta = _sub(claim, "metadata")
    if isinstance(meta, dict):
        meta.setdefault("creationTimestamp", None)
    spec = _sub(claim, "spec")
    if isinstance(spec, dict) and not spec.get("volumeMode"):
        spec["volumeMode"] = "Filesystem"
    claim.setdefault("status", {"phase": "Pending"})


def _statefulset(obj: dict[str, Any], old: dict[str, Any] | None, ctx: Any) -> list[dict[str, str]]:
    _decode("StatefulSet", obj, (("spec", "StatefulSet", "v1.StatefulSetSpec"),
                                 ("spec.replicas", "StatefulSetSpec", "int32"),
                                 ("spec.selector", "StatefulSetSpec", "v1.LabelSelector"),
                                 ("spec.serviceName", "StatefulSetSpec", "string"),
                                 ("spec.revisionHistoryLimit", "StatefulSetSpec", "int32"),
                                 ("spec.minReadySeconds", "StatefulSetSpec", "int32"),
                                 ("spec.updateStrategy", "StatefulSetSpec", "v1.StatefulSetUpdateStrategy"),
                                 ("spec.volumeClaimTemplates", "StatefulSetSpec", "[]v1.PersistentVolumeClaim"),
                                 *_template_fields("StatefulSetSpec")))
    spec = _spec("StatefulSet", obj)
    if not spec.get("podManagementPolicy"):
        spec["podManagementPolicy"] = "OrderedReady"
    us = _sub(spec, "updateStrategy")
    if isinstance(us, dict):
        if not us.get("type"):
            us["type"] = "RollingUpdate"
            _sub(us, "rollingUpdate")
        ru = us.get("rollingUpdate")
        if us["type"] == "RollingUpdate" and isinstance(ru, dict) and ru.get("partition") is None:
            ru["partition"] = 0
    policy = _sub(spec, "persistentVolumeClaimRetentionPolicy")
    if isinstance(policy, dict):
        for key in ("whenDeleted", "whenScaled"):
            if not policy.get(key):
                policy[key] = "Retain"
    if spec.get("replicas") is None:
        spec["replicas"] = 1
    if spec.get("revisionHistoryLimit") is None:
        spec["revisionHistoryLimit"] = 10
    _default_template(_sub(spec, "template"))
    for claim in _l(spec.get("volumeClaimTemplates")):
        if isinstance(claim, dict):
            _default_claim(claim)
    obj.setdefault("status", {"replicas": 0, "availableReplicas": 0})

    path = "spec"
    causes: list[dict[str, str]] = []
    if spec["podManagementPolicy"] not in ("OrderedReady", "Parallel"):
        causes.append(invalid(f"{path}.podManagementPolicy", spec["podManagementPolicy"],
                              "must be 'OrderedReady' or 'Parallel'"))
    us = _d(spec.get("updateStrategy"))
    if us.get("type") == "OnDelete":
        if us.get("rollingUpdate") is not None:
            causes.append(_raw_invalid(f"{path}.updateStrategy.rollingUpdate", "apps.RollingUpdateStatefulSetStrategy"
                                       "{...}", "only allowed for updateStrategy 'RollingUpdate'"))
    elif us.get("type") == "RollingUpdate":
        ru = _d(us.get("rollingUpdate"))
        causes += _nonnegative(ru.get("partition"), f"{path}.updateStrategy.rollingUpdate.partition")
        if "maxUnavailable" in ru:
            causes += _intstr_percent(ru["maxUnavailable"], f"{path}.updateStrategy.rollingUpdate.maxUnavailable")
    else:
        causes.append(_raw_invalid(f"{path}.updateStrategy", "apps.StatefulSetUpdateStrategy{...}",
                                   "must be 'RollingUpdate' or 'OnDelete'"))
    for key in ("whenDeleted", "whenScaled"):
        value = _d(spec.get("persistentVolumeClaimRetentionPolicy")).get(key)
        if value not in ("Retain", "Delete"):
            causes.append(_not_supported(f"{path}.persistentVolumeClaimRetentionPolicy.{key}", value,
                                         ("Retain", "Delete")))
    causes += _nonnegative(spec["replicas"], f"{path}.replicas")
    causes += _nonnegative(spec.get("minReadySeconds"), f"{path}.minReadySeconds")
    causes += _template_selector_causes(spec, path, "statefulset")
    # ValidatePodTemplateSpecForStatefulSet checks the template's labels and annotations only (its pod spec is
    # left unvalidated: a TODO there, since mounts may name claim templates)
    causes += _template_causes(spec["template"], f"{path}.template", pod_spec=False)
    restart = _d(spec["template"].get("spec")).get("restartPolicy")
    if restart != "Always":
        causes.append(_not_supported(f"{path}.template.spec.restartPolicy", restart, ("Always",)))
    if _d(spec["template"].get("spec")).get("activeDeadlineSeconds") is not None:
        causes.append(forbidden(f"{path}.template.spec.activeDeadlineSeconds",
                                "activeDeadlineSeconds in StatefulSet is not Supported"))
    if old is not None:
        old_spec = _d(old.get("spec"))
        rest = {k: v for k, v in spec.items() if k not in _STS_MUTABLE}
        old_rest = {k: v for k, v in old_spec.items() if k not in _STS_MUTABLE}
        if rest != old_rest:
            causes.append(forbidden(path, "updates to statefulset spec for fields other than 'replicas', 'ordinals', "
                                          "'template', 'updateStrategy', 'revisionHistoryLimit', "
                                          "'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are "
                                          "forbidden"))
    return causes


# ------------------------------------------------------------------------------------------------ Job


_JOB_NAME, _JOB_UID = "batch.kubernetes.io/job-name", "batch.kubernetes.io/controller-uid"
_LEGACY_NAME, _LEGACY_UID = "job-name", "controller-uid"


def _job(obj: dict[str, Any], old: dict[str, Any] | None, ctx: Any) -> list[dict[str, str]]:
    _decode("Job", obj, (("spec", "Job", "v1.JobSpec"), ("spec.parallelism", "JobSpec", "int32"),
                         ("spec.completions", "JobSpec", "int32"), ("spec.backoffLimit", "JobSpec", "int32"),
                         ("spec.activeDeadlineSeconds", "JobSpec", "int64"),
                         ("spec.ttlSecondsAfterFinished", "JobSpec", "int32"),
                         ("spec.suspend", "JobSpec", "bool"), ("spec.manualSelector", "JobSpec", "bool"),
                         ("spec.selector", "JobSpec", "v1.LabelSelector"),
                         ("spec.completionMode", "JobSpec", "v1.CompletionMode"), *_template_fields("JobSpec")))
    spec = _spec("Job", obj)
    meta = obj["metadata"]
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
    if spec.get("parallelism") is None:
        spec["parallelism"] = 1
    if spec.get("backoffLimit") is None:
        spec["backoffLimit"] = 2**31 - 1 if spec.get("backoffLimitPerIndex") is not None else 6
    if spec.get("completionMode") is None:
        spec["completionMode"] = "NonIndexed"
    if spec.get("suspend") is None:
        spec["suspend"] = False
    if spec.get("podReplacementPolicy") is None:
        spec["podReplacementPolicy"] = "Failed" if spec.get("podFailurePolicy") is not None else "TerminatingOrFailed"
    if spec.get("manualSelector") is None:
        spec["manualSelector"] = False
    tpl = _sub(spec, "template")
    _default_template(tpl)
    if old is None and spec["manualSelector"] is not True and isinstance(tpl.get("metadata"), dict):
        # the registry's PrepareForCreate: pods of this Job, and only of this Job, by name and uid
        labels = tpl["metadata"].get("labels")
        if not isinstance(labels, dict):
            labels = tpl["metadata"]["labels"] = {}
        uid = meta.get("uid", "")
        for key in (_LEGACY_NAME, _JOB_NAME):
            labels.setdefault(key, meta.get("name", ""))
        for key in (_LEGACY_UID, _JOB_UID):
            labels.setdefault(key, uid)
        sel = spec.get("selector")
        if not isinstance(sel, dict):
            sel = spec["selector"] = {}
        if not isinstance(sel.get("matchLabels"), dict):
            sel["matchLabels"] = {}
        sel["matchLabels"].setdefault(_JOB_UID, uid)
    labels = _d(tpl.get("metadata")).get("labels")
    if isinstance(labels, dict) and labels and not meta.get("labels"):
        meta["labels"] = dict(labels)  # SetDefaults_Job, as the object is read back from storage
    obj.setdefault("status", {})

    path = "spec"
    causes: list[dict[str, str]] = []
    if spec["manualSelector"] is not True and isinstance(labels, dict):
        tpl_path = f"{path}.template.metadata"
        uid, name = meta.get("uid", ""), meta.get("name", "")
        check = [(_LEGACY_UID, uid), (_LEGACY_NAME, name)]
        old_labels = _d(_d(_d(_d(old).get("spec")).get("template")).get("metadata")).get("labels") if old else None
        prefixed = old is None or (_JOB_NAME in _d(old_labels) and _JOB_UID in _d(old_labels))
        if prefixed:
            check += [(_JOB_UID, uid), (_JOB_NAME, name)]
        for key, expected in check:
            if key not in labels:
                causes.append(required(f"{tpl_path}.labels[{key}]", expected))
            elif labels[key] != expected:
                causes.append(_raw_invalid(f"{tpl_path}.labels[{key}]", _go_map(labels), f"must be '{expected}'"))
        expected = {_LEGACY_UID: uid, _LEGACY_NAME: name, _JOB_UID: uid, _JOB_NAME: name}
        sel = spec.get("selector")
        if sel is None:
            causes.append(required(f"{path}.selector"))
        elif _selector_valid(_d(sel)) and not _match(_d(sel), expected):
            causes.append(_raw_invalid(f"{path}.selector", _go_selector(sel), "`selector` not auto-generated"))
    for key in ("parallelism", "completions", "activeDeadlineSeconds", "backoffLimit", "ttlSecondsAfterFinished"):
        causes += _nonnegative(spec.get(key), f"{path}.{key}")
    mode = spec["completionMode"]
    if mode not in ("NonIndexed", "Indexed"):
        causes.append(_not_supported(f"{path}.completionMode", mode, ("NonIndexed", "Indexed")))
    elif mode == "Indexed" and spec.get("completions") is None:
        causes.append(required(f"{path}.completions", "when completion mode is Indexed"))
    sel = spec.get("selector")
    if sel is None:
        if spec["manualSelector"] is True:
            causes.append(required(f"{path}.selector"))
    else:
        causes += _selector_causes(_d(sel), f"{path}.selector")
        if _selector_valid(_d(sel)) and not _match(_d(sel), _d(labels)):
            causes.append(_raw_invalid(f"{path}.template.metadata.labels", _go_map(labels),
                                       "`selector` does not match template `labels`"))
    causes += _template_causes(tpl, f"{path}.template")
    restart = _d(tpl.get("spec")).get("restartPolicy")
    if restart in ("Always", "", None):
        causes.append(required(f"{path}.template.spec.restartPolicy", 'valid values: "OnFailure", "Never"'))
    elif restart not in ("OnFailure", "Never"):
        causes.append(_not_supported(f"{path}.template.spec.restartPolicy", restart, ("OnFailure", "Never")))
    if old is not None:
        old_spec = _d(old.get("spec"))
        if not (mode == "Indexed" and spec.get("completions") == spec.get("parallelism")):  # elastic Indexed Jobs
            causes += _immutable(spec.get("completions"), old_spec.get("completions"), f"{path}.completions")
        if spec.get("selector") != old_spec.get("selector"):
            causes.append(_raw_invalid(f"{path}.selector", _go_selector(spec.get("selector")), "field is immutable"))
        old_tpl = _d(old_spec.get("template"))
        new_tpl = tpl
        if old_spec.get("suspend") is True and not _d(old.get("status")).get("startTime"):
            # a suspended Job that never started may change its pods' scheduling directives, labels, annotations
            new_tpl, old_tpl = _scheduling_free(tpl), _scheduling_free(old_tpl)
        if new_tpl != old_tpl:
            causes.append(_raw_invalid(f"{path}.template", "core.PodTemplateSpec{...}", "field is immutable"))
        for key in ("completionMode", "podFailurePolicy", "backoffLimitPerIndex", "managedBy", "successPolicy"):
            if spec.get(key) != old_spec.get(key):
                causes += _immutable(spec.get(key), old_spec.get(key), f"{path}.{key}")
    return causes


def _scheduling_free(tpl: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(tpl))
    out.get("metadata", {}).pop("labels", None)
    out.get("metadata", {}).pop("annotations", None)
    for key in ("nodeSelector", "tolerations", "affinity", "schedulingGates"):
        _d(out.get("spec")).pop(key, None)
    return out


# ------------------------------------------------------------------------------------------------ Service


_SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")


def _stored_services(ctx: Any) -> list[dict[str, Any]]:
    return list(ctx.objects.get(("", "services"), {}).values()) if ctx is not None else []


def _allocate_ip(rng: Any, used: set[str]) -> str:
    size = SERVICE_CIDR.num_addresses
    for _ in range(1000):
        ip = str(SERVICE_CIDR.network_address + rng.randrange(1, size - 1))
        if ip not in used:
            return ip
    raise APIError.internal("failed to allocate a serviceIP: range is full")


def _service(obj: dict[str, Any], old: dict[str, Any] | None, ctx: Any) -> list[dict[str, str]]:
    _decode("Service", obj, (("spec", "Service", "v1.ServiceSpec"), ("spec.ports", "ServiceSpec", "[]v1.ServicePort"),
                             ("spec.ports.port", "ServicePort", "int32"),
                             ("spec.ports.nodePort", "ServicePort", "int32"),
                             ("spec.ports.targetPort", "ServicePort", "intstr.IntOrString"),
                             ("spec.clusterIP", "ServiceSpec", "string"),
                             ("spec.type", "ServiceSpec", "v1.ServiceType"),
                             ("spec.selector", "ServiceSpec", "map[string]string")))
    spec = _spec("Service", obj)
    if not spec.get("sessionAffinity"):
        spec["sessionAffinity"] = "None"
    if spec["sessionAffinity"] == "None":
        spec.pop("sessionAffinityConfig", None)
    elif spec["sessionAffinity"] == "ClientIP":
        timeout = _d(_d(spec.get("sessionAffinityConfig")).get("clientIP")).get("timeoutSeconds")
        if timeout is None:
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": 10800}}
    if not spec.get("type"):
        spec["type"] = "ClusterIP"
    stype = spec["type"]
    for p in _l(spec.get("ports")):
        if isinstance(p, dict):
            if not p.get("protocol"):
                p["protocol"] = "TCP"
            if p.get("targetPort") in (None, 0, ""):
                p["targetPort"] = p.get("port")
    external = stype in ("LoadBalancer", "NodePort") or (stype == "ClusterIP" and spec.get("externalIPs"))
    if external and not spec.get("externalTrafficPolicy"):
        spec["externalTrafficPolicy"] = "Cluster"
    if spec.get("internalTrafficPolicy") is None and stype in ("ClusterIP", "NodePort", "LoadBalancer"):
        spec["internalTrafficPolicy"] = "Cluster"
    if stype == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is None:
        spec["allocateLoadBalancerNodePorts"] = True
    obj.setdefault("status", {"loadBalancer": {}})

    path = "spec"
    causes: list[dict[str, str]] = []
    old_spec = _d(_d(old).get("spec")) if old is not None else None
    needs_ip = stype != "ExternalName"
    if old_spec is not None and needs_ip and old_spec.get("type", "ClusterIP") != "ExternalName":
        # patchAllocatedValues: an update that leaves out the allocated values keeps them
        if not spec.get("clusterIP") and old_spec.get("clusterIP"):
            spec["clusterIP"] = old_spec["clusterIP"]
        if not spec.get("clusterIPs") and old_spec.get("clusterIPs"):
            spec["clusterIPs"] = list(old_spec["clusterIPs"])
        for key in ("ipFamilies", "ipFamilyPolicy"):
            if not spec.get(key) and old_spec.get(key):
                spec[key] = old_spec[key]
        if stype in ("NodePort", "LoadBalancer"):
            olds = {(_d(p).get("port"), _d(p).get("protocol")): _d(p).get("nodePort")
                    for p in _l(old_spec.get("ports"))}
            for p in _l(spec.get("ports")):
                if isinstance(p, dict) and not p.get("nodePort") and olds.get((p.get("port"), p.get("protocol"))):
                    p["nodePort"] = olds[(p.get("port"), p.get("protocol"))]

    if stype not in _SERVICE_TYPES:
        causes.append(_not_supported(f"{path}.type", stype, _SERVICE_TYPES))
    cluster_ip = spec.get("clusterIP") or ""
    ips = spec.get("clusterIPs")
    if cluster_ip and not ips:
        ips = spec["clusterIPs"] = [cluster_ip]
    elif ips and not cluster_ip:
        cluster_ip = spec["clusterIP"] = _l(ips)[0] if _l(ips) else ""
    headless = cluster_ip == "None"
    ports = _l(spec.get("ports"))
    if not ports and not headless and stype != "ExternalName":
        causes.append(required(f"{path}.ports"))
    if stype == "ExternalName":
        if not spec.get("externalName"):
            causes.append(required(f"{path}.externalName"))
        if cluster_ip:
            causes.append(forbidden(f"{path}.clusterIPs", "may not be set for ExternalName services"))
    if headless and stype in ("NodePort", "LoadBalancer"):
        causes.append(invalid(f"{path}.clusterIPs[0]", "None", f"may not be set to 'None' for {stype} services"))
    names: set[str] = set()
    seen: set[tuple[Any, Any]] = set()
    for i, p in enumerate(ports):
        p = _d(p)
        at = f"{path}.ports[{i}]"
        name = p.get("name") or ""
        if len(ports) > 1 and not name:
            causes.append(required(f"{at}.name"))
        if name:
            if not isinstance(name, str) or not _LABEL.fullmatch(name) or len(name) > 63:
                causes.append(invalid(f"{at}.name", name, _LABEL_MSG))
            elif name in names:
                causes.append(_duplicate(f"{at}.name", name))
            names.add(name)
        port = p.get("port")
        if not _port_num(port):
            causes.append(invalid(f"{at}.port", port if port is not None else 0, _PORT_RANGE_MSG))
        if p.get("protocol") not in _PROTOCOLS:
            causes.append(_not_supported(f"{at}.protocol", p.get("protocol"), _PROTOCOLS))
        target = p.get("targetPort")
        if isinstance(target, str):
            causes += [invalid(f"{at}.targetPort", target, m) for m in _port_name_problems(target)]
        elif not _port_num(target):
            causes.append(invalid(f"{at}.targetPort", target, _PORT_RANGE_MSG))
        node_port = p.get("nodePort")
        if node_port and stype == "ClusterIP":
            causes.append(forbidden(f"{at}.nodePort", "may not be used when `type` is 'ClusterIP'"))
        elif node_port and not _port_num(node_port):
            causes.append(invalid(f"{at}.nodePort", node_port, _PORT_RANGE_MSG))
        if (port, p.get("protocol")) in seen:
            causes.append(cause(at, "FieldValueDuplicate", "Duplicate value: core.ServicePort{...}"))
        seen.add((port, p.get("protocol")))
    for i, ip in enumerate(_l(spec.get("clusterIPs"))):
        if ip != "None":
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                causes.append(invalid(f"{path}.clusterIPs[{i}]", ip,
                                      "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"))
    if old_spec is not None and needs_ip and old_spec.get("type", "ClusterIP") != "ExternalName":
        new_ips, old_ips = _l(spec.get("clusterIPs")), _l(old_spec.get("clusterIPs"))
        if len(new_ips) == len(old_ips):
            for i, ip in enumerate(new_ips):
                if ip != old_ips[i]:
                    causes.append(_raw_invalid(f"{path}.clusterIPs[{i}]",
                                               "[]string{" + ", ".join(_q(x) for x in new_ips) + "}",
                                               "may not change once set"))
    if causes or not needs_ip:
        if not needs_ip:
            for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                if key in spec and not spec[key]:
                    spec.pop(key)
        return causes

    # the service REST storage: IP families, then the cluster IP and node ports (create only)
    if not spec.get("ipFamilyPolicy"):
        spec["ipFamilyPolicy"] = "RequireDualStack" if headless and not spec.get("selector") else "SingleStack"
    if not spec.get("ipFamilies"):
        spec["ipFamilies"] = ["IPv4"]
    others = [s for s in _stored_services(ctx)
              if (s["metadata"].get("namespace"), s["metadata"]["name"]) !=
              (obj["metadata"].get("namespace"), obj["metadata"].get("name"))]
    rng = ctx.rng if ctx is not None else random
    if not headless:
        used = {ip for s in others for ip in _l(_d(s.get("spec")).get("clusterIPs"))}
        if cluster_ip and cluster_ip not in _l(_d(old_spec).get("clusterIPs")):
            reason = None
            if ipaddress.ip_address(cluster_ip) not in SERVICE_CIDR or cluster_ip in (
                    str(SERVICE_CIDR.network_address), str(SERVICE_CIDR.broadcast_address)):
                reason = (f"the provided IP ({cluster_ip}) is not in the valid range. The range of valid IPs is "
                          f"{SERVICE_CIDR}")
            elif cluster_ip in used:
                reason = "provided IP is already allocated"
            if reason:
                return [_raw_invalid(f"{path}.clusterIPs", "[]string{" + _q(cluster_ip) + "}",
                                     f"failed to allocate IP {cluster_ip}: {reason}")]
        elif not cluster_ip:
            spec["clusterIP"] = _allocate_ip(rng, used)
            spec["clusterIPs"] = [spec["clusterIP"]]
    else:
        spec["clusterIPs"] = ["None"]
    if stype == "NodePort" or (stype == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is not False):
        used_ports = {_d(p).get("nodePort") for s in others for p in _l(_d(s.get("spec")).get("ports"))}
        mine = {_d(p).get("nodePort") for p in _l(_d(old_spec).get("ports"))}
        lo, hi = NODE_PORT_RANGE
        for i, p in enumerate(ports):
            if not isinstance(p, dict):
                continue
            node_port = p.get("nodePort")
            if node_port and node_port not in mine:
                if not lo <= node_port <= hi:
                    return [invalid(f"{path}.ports[{i}].nodePort", node_port,
                                    f"provided port is not in the valid range. The range of valid ports is {lo}-{hi}")]
                if node_port in used_ports:
                    return [invalid(f"{path}.ports[{i}].nodePort", node_port, "provided port is already allocated")]
            elif not node_port:
                free = [n for n in range(lo, hi + 1) if n not in used_ports]
                p["nodePort"] = node_port = rng.choice(free)
            used_ports.add(node_port)
    return causes


# ------------------------------------------------------------------------------------------------ Pod, PVC


_CLAIM_MODES = ("ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod")


def _claim_spec_causes(spec: dict[str, Any], path: str) -> list[dict[str, str]]:
    causes: list[dict[str, str]] = []
    modes = _l(spec.get("accessModes"))
    if not modes:
        causes.append(required(f"{path}.accessModes", "at least 1 access mode is required"))
    for mode in modes:
        if mode not in _CLAIM_MODES:
            causes.append(_not_supported(f"{path}.accessModes", mode, _CLAIM_MODES))
    if "storage" not in _d(_d(spec.get("resources")).get("requests")):
        causes.append(required(f"{path}.resources[storage]"))
    if spec.get("volumeMode") not in ("Block", "Filesystem"):
        causes.append(_not_supported(f"{path}.volumeMode", spec.get("volumeMode"), ("Block", "Filesystem")))
    return causes


def _pvc(obj: dict[str, Any], old: dict[str, Any] | None, ctx: Any) -> list[dict[str, str]]:
    _decode("PersistentVolumeClaim", obj, (("spec", "PersistentVolumeClaim", "v1.PersistentVolumeClaimSpec"),
                                           ("spec.accessModes", "PersistentVolumeClaimSpec",
                                            "[]v1.PersistentVolumeAccessMode")))
    spec = _spec("PersistentVolumeClaim", obj)
    if not spec.get("volumeMode"):
        spec["volumeMode"] = "Filesystem"
    if old is None:
        obj.setdefault("status", {"phase": "Pending"})
    causes = _claim_spec_causes(spec, "spec")
    if old is not None:
        old_spec = _d(old.get("spec"))
        # ValidatePersistentVolumeClaimUpdate: only the storage request (to grow) and a few fields may change
        free = ("resources", "volumeAttributesClassName")
        if {k: v for k, v in spec.items() if k not in free} != {k: v for k, v in old_spec.items() if k not in free}:
            causes.append(forbidden("spec", "spec is immutable after creation except resources.requests and "
                                            "volumeAttributesClassName for bound claims"))
    return causes


_POD_MUTABLE_MSG = ("pod updates may not change fields other than `spec.containers[*].image`,"
                    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions "
                    "to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was "
                    "previously negative)")


def _pod(obj: dict[str, Any], old: dict[str, Any] | None, ctx: Any) -> list[dict[str, str]]:
    _decode("Pod", obj, (("spec", "Pod", "v1.PodSpec"), *_template_fields("", prefix="spec")))
    spec = _spec("Pod", obj)
    default_pod_spec(spec)
    if spec.get("enableServiceLinks") is None:
        spec["enableServiceLinks"] = True  # SetDefaults_Pod
    for c in _l(spec.get("containers")) + _l(spec.get("initContainers")):
        res = _d(_d(c).get("resources"))
        limits = _d(res.get("limits"))
        if limits:  # requests default to the limits
            requests = _sub(res, "requests")
            for k, v in limits.items():
                requests.setdefault(k, v)
    causes = _pod_spec_causes(spec, "spec")
    if old is not None:
        old_spec = _d(old.get("spec"))

        def mutable_free(s: dict[str, Any]) -> dict[str, Any]:
            out = json.loads(json.dumps(s))
            for key in ("containers", "initContainers"):
                for c in _l(out.get(key)):
                    _d(c).pop("image", None)
            for key in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds", "schedulingGates"):
                out.pop(key, None)
            return out

        if mutable_free(spec) != mutable_free(old_spec):
            causes.append(forbidden("spec", _POD_MUTABLE_MSG))
    return causes


WORKLOAD_ADMISSION = {
    ("apps", "deployments"): _deployment,
    ("apps", "statefulsets"): _statefulset,
    ("batch", "jobs"): _job,
    ("", "services"): _service,
    ("", "pods"): _pod,
    ("", "persistentvolumeclaims"): _pvc,
}
