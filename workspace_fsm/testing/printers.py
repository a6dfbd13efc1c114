"""Table columns of built-in kinds, as the real server's printers define them (the column names, types,
priorities and what each cell shows follow ``pkg/printers/internalversion/printers.go``; priority 1 columns
are what ``kubectl get -o wide`` adds)."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from workspace_fsm.testing.scale import selector_string

__all__ = ["PRINTERS", "Column"]

Column = tuple[str, str, str, int, Callable[[dict[str, Any]], Any]]  # name, type, description, priority, cell


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _parse(ts: Any) -> datetime.datetime | None:
    if not isinstance(ts, str) or not ts:
        return None
    try:
        return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None


def _since(ts: Any) -> str:
    from workspace_fsm.testing.table import human_duration

    when = _parse(ts)
    if when is None:
        return "<unknown>"
    return human_duration((_now() - when).total_seconds())


def _g(obj: Any, *path: str, default: Any = None) -> Any:
    cur = obj
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return default
        cur = cur[p]
    return cur


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _name(obj: dict[str, Any]) -> str:
    return _g(obj, "metadata", "name", default="")


def _age(obj: dict[str, Any]) -> str:
    return _since(_g(obj, "metadata", "creationTimestamp"))


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in _g(obj, "spec", "template", "spec", "containers", default=[]) or [] if isinstance(c, dict)]


def _container_names(obj: dict[str, Any]) -> str:
    return ",".join(str(c.get("name", "")) for c in _containers(obj))


def _images(obj: dict[str, Any]) -> str:
    return ",".join(str(c.get("image", "")) for c in _containers(obj))


def _selector(obj: dict[str, Any]) -> str:
    text = selector_string(_g(obj, "spec", "selector"))
    return text or "<none>"


def _replicas(obj: dict[str, Any]) -> int:
    value = _g(obj, "spec", "replicas")
    return 1 if value is None else _int(value)


NAME = ("Name", "string", "Name must be unique within a namespace.", 0, _name)
AGE = ("Age", "string", "CreationTimestamp is a timestamp representing the server time when this object was "
       "created.", 0, _age)


# --------------------------------------------------------------------------- nodes


def _node_status(obj: dict[str, Any]) -> str:
    conditions = {c.get("type"): c.get("status") for c in _g(obj, "status", "conditions", default=[]) or []
                  if isinstance(c, dict)}
    states = []
    if "Ready" in conditions:
        states.append("Ready" if conditions["Ready"] == "True" else "NotReady")
    if not states:
        states.append("Unknown")
    if _g(obj, "spec", "unschedulable") is True:
        states.append("SchedulingDisabled")
    return ",".join(states)


def _node_roles(obj: dict[str, Any]) -> str:
    roles = set()
    for key, value in (_g(obj, "metadata", "labels", default={}) or {}).items():
        if key.startswith("node-role.kubernetes.io/") and key[len("node-role.kubernetes.io/"):]:
            roles.add(key[len("node-role.kubernetes.io/"):])
        elif key == "kubernetes.io/role" and value:
            roles.add(value)
    return ",".join(sorted(roles)) or "<none>"


def _node_address(kind: str) -> Callable[[dict[str, Any]], str]:
    def cell(obj: dict[str, Any]) -> str:
        for a in _g(obj, "status", "addresses", default=[]) or []:
            if isinstance(a, dict) and a.get("type") == kind:
                return str(a.get("address", ""))
        return "<none>"
    return cell


def _node_info(field: str) -> Callable[[dict[str, Any]], str]:
    return lambda obj: str(_g(obj, "status", "nodeInfo", field, default="") or "<unknown>")


NODES: list[Column] = [
    NAME,
    ("Status", "string", "The status of the node", 0, _node_status),
    ("Roles", "string", "The roles of the node", 0, _node_roles),
    AGE,
    ("Version", "string", "Kubelet Version reported by the node.", 0,
     lambda o: str(_g(o, "status", "nodeInfo", "kubeletVersion", default=""))),
    ("Internal-IP", "string", "List of addresses reachable to the node. Queried from cloud provider, if available.",
     1, _node_address("InternalIP")),
    ("External-IP", "string", "List of addresses reachable to the node. Queried from cloud provider, if available.",
     1, _node_address("ExternalIP")),
    ("OS-Image", "string", "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
     1, _node_info("osImage")),
    ("Kernel-Version", "string", "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
     1, _node_info("kernelVersion")),
    ("Container-Runtime", "string", "ContainerRuntime Version reported by the node through runtime remote API (e.g. "
     "containerd://1.4.2).", 1, _node_info("containerRuntimeVersion")),
]

DEPLOYMENTS: list[Column] = [
    NAME,
    ("Ready", "string", "Number of the pod with ready state", 0,
     lambda o: f"{_int(_g(o, 'status', 'readyReplicas'))}/{_replicas(o)}"),
    ("Up-to-date", "integer", "Total number of non-terminated pods targeted by this deployment that have the desired "
     "template spec.", 0, lambda o: _int(_g(o, "status", "updatedReplicas"))),
    ("Available", "integer", "Total number of available pods (ready for at least minReadySeconds) targeted by this "
     "deployment.", 0, lambda o: _int(_g(o, "status", "availableReplicas"))),
    AGE,
    ("Containers", "string", "Names of each container in the template.", 1, _container_names),
    ("Images", "string", "Images referenced by each container in the template.", 1, _images),
    ("Selector", "string", "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the "
     "ones affected by this deployment.", 1, _selector),
]

STATEFULSETS: list[Column] = [
    NAME,
    ("Ready", "string", "Number of the pod with ready state", 0,
     lambda o: f"{_int(_g(o, 'status', 'readyReplicas'))}/{_replicas(o)}"),
    AGE,
    ("Containers", "string", "Names of each container in the template.", 1, _container_names),
    ("Images", "string", "Images referenced by each container in the template.", 1, _images),
]


# --------------------------------------------------------------------------- jobs


def _job_condition(obj: dict[str, Any], kind: str) -> bool:
    return any(isinstance(c, dict) and c.get("type") == kind and c.get("status") == "True"
               for c in _g(obj, "status", "conditions", default=[]) or [])


def _job_status(obj: dict[str, Any]) -> str:
    for kind, text in (("Complete", "Complete"), ("Failed", "Failed")):
        if _job_condition(obj, kind):
            return text
    if _g(obj, "metadata", "deletionTimestamp"):
        return "Terminating"
    for kind in ("SuccessCriteriaMet", "FailureTarget"):
        if _job_condition(obj, kind):
            return kind
    if _job_condition(obj, "Suspended"):
        return "Suspended"
    return "Running"


def _job_completions(obj: dict[str, Any]) -> str:
    succeeded = _int(_g(obj, "status", "succeeded"))
    completions = _g(obj, "spec", "completions")
    if completions is not None:
        return f"{succeeded}/{_int(completions)}"
    parallelism = _g(obj, "spec", "parallelism")
    parallelism = 1 if parallelism is None else _int(parallelism)
    if parallelism > 1:
        return f"{succeeded}/1 of {parallelism}"
    return f"{succeeded}/1"


def _job_duration(obj: dict[str, Any]) -> str:
    from workspace_fsm.testing.table import human_duration

    start = _parse(_g(obj, "status", "startTime"))
    if start is None:
        return ""
    end = _parse(_g(obj, "status", "completionTime")) or _now()
    return human_duration((end - start).total_seconds())


JOBS: list[Column] = [
    NAME,
    ("Status", "string", "Status of the job.", 0, _job_status),
    ("Completions", "string", "The completion status of the job", 0, _job_completions),
    ("Duration", "string", "Time required to complete the job.", 0, _job_duration),
    AGE,
    ("Containers", "string", "Names of each container in the template.", 1, _container_names),
    ("Images", "string", "Images referenced by each container in the template.", 1, _images),
    ("Selector", "string", "A label query over pods that should match the pod count.", 1, _selector),
]


# --------------------------------------------------------------------------- events


def _first_seen(obj: dict[str, Any]) -> str:
    ts = _g(obj, "firstTimestamp") or _g(obj, "eventTime")
    return _since(ts)


def _last_seen(obj: dict[str, Any]) -> str:
    ts = _g(obj, "series", "lastObservedTime") or _g(obj, "lastTimestamp")
    if not ts:
        return _first_seen(obj)
    return _since(ts)


def _event_source(obj: dict[str, Any]) -> str:
    component = _g(obj, "source", "component") or _g(obj, "reportingComponent") or ""
    host = _g(obj, "source", "host") or _g(obj, "reportingInstance") or ""
    return ", ".join(x for x in (component, host) if x)


EVENTS: list[Column] = [
    ("Last Seen", "string", "Time when last this event was observed.", 0, _last_seen),
    ("Type", "string", "Type of this event (Normal, Warning), new types could be added in the future.", 0,
     lambda o: str(o.get("type") or "")),
    ("Reason", "string", "A short, machine understandable string that gives the reason for the transition into the "
     "object's current status.", 0, lambda o: str(o.get("reason") or "")),
    ("Object", "string", "The object that this event is about.", 0,
     lambda o: f"{str(_g(o, 'involvedObject', 'kind', default='')).lower()}/"
               f"{_g(o, 'involvedObject', 'name', default='')}"),
    ("Subobject", "string", "The subobject (fieldPath) of the object this event is about.", 1,
     lambda o: str(_g(o, "involvedObject", "fieldPath", default="") or "")),
    ("Source", "string", "The component reporting this event.", 1, _event_source),
    ("Message", "string", "A human-readable description of the status of this operation.", 0,
     lambda o: str(o.get("message") or "").strip()),
    ("First Seen", "string", "The time at which the event was first recorded.", 1, _first_seen),
    ("Count", "integer", "The number of times this event has occurred.", 1, lambda o: _int(o.get("count"))),
    ("Name", "string", "Name must be unique within a namespace.", 1, _name),
]

CONFIGMAPS: list[Column] = [
    NAME,
    ("Data", "string", "Data contains the configuration data.", 0,
     lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {})),
    AGE,
]

SECRETS: list[Column] = [
    NAME,
    ("Type", "string", "The type of the secret", 0, lambda o: str(o.get("type") or "")),
    ("Data", "string", "The number of keys in the secret's data.", 0, lambda o: len(o.get("data") or {})),
    AGE,
]

LEASES: list[Column] = [
    NAME,
    ("Holder", "string", "HolderIdentity contains the identity of the holder of a current lease.", 0,
     lambda o: str(_g(o, "spec", "holderIdentity", default="") or "")),
    AGE,
]

# --------------------------------------------------------------------------- services, pods


def _format_labels(labels: Any) -> str:
    """labels.FormatLabels: sorted ``k=v`` pairs, ``<none>`` when empty."""
    if not isinstance(labels, dict) or not labels:
        return "<none>"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _lb_ingress(obj: dict[str, Any]) -> str:
    """loadBalancerStatusStringer (non-wide): ingress IPs or hostnames, cut to 13 characters and ``...``."""
    out = [str(i.get("ip") or i.get("hostname") or "") for i in _g(obj, "status", "loadBalancer", "ingress",
                                                                     default=[]) or [] if isinstance(i, dict)]
    text = ",".join(x for x in out if x)
    return text[:13] + "..." if len(text) > 16 else text


def _service_external_ip(obj: dict[str, Any]) -> str:
    stype = _g(obj, "spec", "type", default="")
    external = [str(x) for x in _g(obj, "spec", "externalIPs", default=[]) or []]
    if stype in ("ClusterIP", "NodePort"):
        return ",".join(external) or "<none>"
    if stype == "LoadBalancer":
        found = [x for x in _lb_ingress(obj).split(",") if x] + external
        return ",".join(found) or "<pending>"
    if stype == "ExternalName":
        return str(_g(obj, "spec", "externalName", default="") or "")
    return "<unknown>"


def _service_ports(obj: dict[str, Any]) -> str:
    """makePortString: ``port/protocol``, or ``port:nodePort/protocol``."""
    pieces = []
    for p in _g(obj, "spec", "ports", default=[]) or []:
        if not isinstance(p, dict):
            continue
        node_port = _int(p.get("nodePort"))
        port = f"{_int(p.get('port'))}:{node_port}" if node_port > 0 else f"{_int(p.get('port'))}"
        pieces.append(f"{port}/{p.get('protocol') or ''}")
    return ",".join(pieces) or "<none>"


SERVICES: list[Column] = [
    NAME,
    ("Type", "string", "type determines how the Service is exposed.", 0, lambda o: str(_g(o, "spec", "type",
                                                                                          default="") or "")),
    ("Cluster-IP", "string", "clusterIP is the IP address of the service and is usually assigned randomly.", 0,
     lambda o: str((_g(o, "spec", "clusterIPs", default=[]) or ["<none>"])[0])),
    ("External-IP", "string", "externalIPs is a list of IP addresses for which nodes in the cluster will also "
     "accept traffic for this service.", 0, _service_external_ip),
    ("Port(s)", "string", "The list of ports that are exposed by this service.", 0, _service_ports),
    AGE,
    ("Selector", "string", "Route service traffic to pods with label keys and values matching this selector.", 1,
     lambda o: _format_labels(_g(o, "spec", "selector"))),
]


def _pod_ready(obj: dict[str, Any]) -> str:
    containers = _g(obj, "spec", "containers", default=[]) or []
    ready = sum(1 for c in _g(obj, "status", "containerStatuses", default=[]) or []
                if isinstance(c, dict) and c.get("ready") is True)
    return f"{ready}/{len(containers)}"


def _pod_status(obj: dict[str, Any]) -> str:
    """printPod's reason, for what has no kubelet: the pod's reason or phase, a container's waiting or terminated
    reason, ``Terminating`` once deleted."""
    reason = str(_g(obj, "status", "reason", default="") or _g(obj, "status", "phase", default="") or "")
    for c in reversed(_g(obj, "status", "containerStatuses", default=[]) or []):
        if not isinstance(c, dict):
            continue
        waiting = _g(c, "state", "waiting", "reason")
        terminated = _g(c, "state", "terminated", "reason")
        if waiting:
            reason = str(waiting)
        elif terminated:
            reason = str(terminated)
    if _g(obj, "metadata", "deletionTimestamp"):
        reason = "Terminating"
    return reason


def _readiness_gates(obj: dict[str, Any]) -> str:
    gates = [g.get("conditionType") for g in _g(obj, "spec", "readinessGates", default=[]) or [] if isinstance(g, dict)]
    if not gates:
        return "<none>"
    true = {c.get("type") for c in _g(obj, "status", "conditions", default=[]) or []
            if isinstance(c, dict) and c.get("status") == "True"}
    return f"{sum(1 for g in gates if g in true)}/{len(gates)}"


PODS: list[Column] = [
    NAME,
    ("Ready", "string", "The aggregate readiness state of this pod for accepting traffic.", 0, _pod_ready),
    ("Status", "string", "The aggregate status of the containers in this pod.", 0, _pod_status),
    ("Restarts", "string", "The number of times the containers in this pod have been restarted and when the last "
     "container in this pod has restarted.", 0,
     lambda o: str(sum(_int(c.get("restartCount")) for c in _g(o, "status", "containerStatuses", default=[]) or []
                       if isinstance(c, dict)))),
    AGE,
    ("IP", "string", "The IP address assigned to the pod", 1,
     lambda o: str(_g(o, "status", "podIP", default="") or "<none>")),
    ("Node", "string", "The name of the node assigned to the pod", 1,
     lambda o: str(_g(o, "spec", "nodeName", default="") or "<none>")),
    ("Nominated Node", "string", "The name of the node nominated by the scheduler", 1,
     lambda o: str(_g(o, "status", "nominatedNodeName", default="") or "<none>")),
    ("Readiness Gates", "string", "The readiness gates of the pod", 1, _readiness_gates),
]

PRINTERS: dict[tuple[str, str], list[Column]] = {
    ("", "services"): SERVICES,
    ("", "pods"): PODS,
    ("", "nodes"): NODES,
    ("apps", "deployments"): DEPLOYMENTS,
    ("apps", "statefulsets"): STATEFULSETS,
    ("batch", "jobs"): JOBS,
    ("", "events"): EVENTS,
    ("", "configmaps"): CONFIGMAPS,
    ("", "secrets"): SECRETS,
    ("coordination.k8s.io", "leases"): LEASES,
}
