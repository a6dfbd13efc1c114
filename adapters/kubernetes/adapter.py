"""The Kubernetes adapter: caches in, actions out, status with optimistic concurrency.

It implements :class:`workspace_fsm.engine.adapter.ClusterAdapter` over the official client:

- **observe** reads only from list+watch caches (Workspaces; NodeClaims, Nodes, Deployments,
  StatefulSets and Jobs labelled ``kaito.sh/workspace``). The one exception is a positive check that
  something the machine recorded is gone when the cache cannot say (after a restart): a GET, whose 404
  goes into ``Snapshot.absent``. In steady state a pass makes no GET.
- **apply** executes actions in order; AlreadyExists on create and NotFound on delete are success; Jobs
  are deleted with Background propagation; finalizers are patched with the object's resourceVersion.
- **persist** PUTs the status subresource with the resourceVersion the pass observed (or the one its own
  finalizer patch returned): a 409 raises :class:`Conflict` ("observe again"), never an overwrite. The
  written object is kept as an overlay until the watch delivers that resourceVersion, so the next pass
  never acts on a cache older than its own write.
"""

from __future__ import annotations

import itertools
from collections import deque
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from workspace_fsm.kaito import actions as A
from workspace_fsm.engine.adapter import AdapterError, Conflict
from workspace_fsm.kaito.model import (ANNOTATION_REVISION, LABEL_WORKSPACE, LABEL_WORKSPACE_NAMESPACE, GPU_RESOURCE, Job,
                                 Node, NodeClaim, Snapshot, Workload, Workspace, WorkspaceStatus, format_time,
                                 parse_time, parse_workspace)
from workspace_fsm.kaito.workspace import WORKSPACE, confirmations

from . import manifests
from .cache import InformerView, SharedInformers, custom_lister
from .informer import object_key

log = logging.getLogger("workspace_fsm.kubernetes")

KAITO_GROUP, KAITO_VERSION, KAITO_PLURAL = "kaito.sh", "v1beta1", "workspaces"
NODECLAIMS = ("karpenter.sh", "v1", "nodeclaims")
# Answers that mean the server turned a request away before storing anything (408 and 5xx are ambiguous).
_REFUSED_STATUSES = frozenset({400, 401, 403, 404, 405, 413, 415, 422, 429})


#: Every (API group, resource, verb) the adapter uses, and nothing more: derived from the Workspace lifecycle's
#: declaration (what it reconciles, owns and watches). deploy/rbac.yaml grants exactly these; tests/test_deploy.py
#: checks both the file and the requests an end-to-end run makes.
PERMISSIONS: dict[tuple[str, str], frozenset[str]] = WORKSPACE.permissions()


# --------------------------------------------------------------------------- dict -> snapshot types


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type"): c for c in ((obj.get("status") or {}).get("conditions") or []) if isinstance(c, dict)}


def to_nodeclaim(obj: dict[str, Any]) -> NodeClaim:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    conds = _conditions(obj)
    launched = conds.get("Launched", {})
    return NodeClaim(
        name=str(meta["name"]),
        workspace_key=f"{labels.get(LABEL_WORKSPACE_NAMESPACE, '')}/{labels.get(LABEL_WORKSPACE, '')}",
        instance_type=str(next((r.get("values", [""])[0] for r in (obj.get("spec") or {}).get("requirements") or []
                                if r.get("key") == "node.kubernetes.io/instance-type" and r.get("values")), "")),
        launched=conds.get("Launched", {}).get("status"),
        registered=conds.get("Registered", {}).get("status"),
        initialized=conds.get("Initialized", {}).get("status"),
        ready=conds.get("Ready", {}).get("status"),
        node_name=(obj.get("status") or {}).get("nodeName"),
        deleting=meta.get("deletionTimestamp") is not None,
        failure_reason=launched.get("reason") if launched.get("status") == "False" else None,
        created_at=parse_time(meta.get("creationTimestamp")),
    )


def to_node(obj: dict[str, Any]) -> Node:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    gpus = (status.get("capacity") or {}).get(GPU_RESOURCE, 0)
    return Node(name=str(meta["name"]), labels=dict(meta.get("labels") or {}),
                ready=_conditions(obj).get("Ready", {}).get("status") == "True", gpu_capacity=int(gpus or 0))


def to_workload(obj: dict[str, Any]) -> Workload:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    replicas = int((obj.get("spec") or {}).get("replicas", 1) or 0)
    fresh = status.get("observedGeneration", 0) >= meta.get("generation", 0)
    return Workload(kind=str(obj.get("kind") or ""), name=str(meta["name"]), replicas=replicas,
                    ready_replicas=int(status.get("readyReplicas") or 0) if fresh else 0,
                    updated_replicas=int(status.get("updatedReplicas") or 0) if fresh else 0,
                    revision=str((meta.get("annotations") or {}).get(ANNOTATION_REVISION, "")),
                    deleting=meta.get("deletionTimestamp") is not None)


def to_job(obj: dict[str, Any]) -> Job:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    conds = _conditions(obj)
    failed = conds.get("Failed", {})
    return Job(name=str(meta["name"]), revision=str((meta.get("annotations") or {}).get(ANNOTATION_REVISION, "")),
               active=int(status.get("active") or 0), succeeded=int(status.get("succeeded") or 0),
               failed=int(status.get("failed") or 0), complete=conds.get("Complete", {}).get("status") == "True",
               failed_permanently=failed.get("status") == "True", deleting=meta.get("deletionTimestamp") is not None,
               failure_reason=failed.get("reason") if failed.get("status") == "True" else None,
               uid=str(meta.get("uid") or ""))


def _owner_key(obj: dict[str, Any]) -> str | None:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    name, ns = labels.get(LABEL_WORKSPACE), labels.get(LABEL_WORKSPACE_NAMESPACE)
    return f"{ns}/{name}" if name and ns else None


# --------------------------------------------------------------------------- the adapter


class KubernetesAdapter:
    lifecycle = WORKSPACE  # the lifecycle it serves (the runner drives it)
    def __init__(self, api_client: k8s.ApiClient, *, namespace: str | None = None, catalogue: Any = None,
                 auto_provisioning: bool = True, component: str = "workspace-fsm", request_timeout_s: float = 30.0,
                 watch_timeout_s: int = 240, node_class: dict[str, str] | None = None,
                 informers: SharedInformers | None = None) -> None:
        self.api = api_client
        self.custom = k8s.CustomObjectsApi(api_client)
        self.core = k8s.CoreV1Api(api_client)
        self.namespace = namespace
        self.catalogue = catalogue
        self.auto_provisioning = auto_provisioning
        self.component = component
        self.timeout = request_timeout_s
        self.node_class = node_class
        self.requests: dict[str, int] = {}
        self._lock = threading.Lock()
        self._handler: Callable[[str], None] | None = None
        self._overlay: dict[str, tuple[Workspace, dict[str, Any], str]] = {}  # key -> (ws, raw, rv written)
        self._own_rv: dict[str, tuple[str, dict[str, Any]]] = {}  # key -> (rv before own patch, patched raw)
        self._parsed: dict[str, tuple[str, Workspace]] = {}  # key -> (rv, parsed) to validate once per version
        # The last resourceVersions the watch delivered per Workspace: our write's response and its watch
        # event race, and an overlay for a version the cache already has (or has passed) would hide newer ones.
        self._delivered: dict[str, deque[str]] = {}
        self._known: set[str] = set()  # "Kind/name" this process created or saw: no GET needed to know it exists
        # Workspace key -> {"NodeClaim/<name>": the pass that recorded it} for creates this process never sent
        # or the server refused outright (nothing stored). It speaks for this process's own requests only:
        # decide takes it only where the record says that very pass recorded the name. Pruned to what the
        # record still asks about on every observe, dropped with the Workspace.
        self._refused: dict[str, dict[str, str]] = {}
        self._event_seq = itertools.count(int(datetime.now(timezone.utc).timestamp() * 1000))
        # Views of the process's shared informers (one per resource for every lifecycle), or of a set of its own.
        self.cache = informers if informers is not None else SharedInformers(
            watch_timeout_s=watch_timeout_s, request_timeout_s=request_timeout_s)
        sel = LABEL_WORKSPACE
        san = api_client.sanitize_for_serialization

        def view(group: str, version: str, plural: str, selector: str | None = sel, lister: Any = None,
                 ns: str | None = None) -> InformerView:
            lister = lister or custom_lister(self.custom, group, version, plural)
            return self.cache.informer((group, version, plural), lister, name=plural, namespace=ns,
                                       label_selector=selector, user=WORKSPACE.name)

        self.workspaces = view(KAITO_GROUP, KAITO_VERSION, KAITO_PLURAL, None, ns=namespace)
        self.nodeclaims = view(*NODECLAIMS)
        self.nodeclaims.add_index("owner", _owner_key)
        self.nodes = view("", "v1", "nodes", lister=lambda ns: (_watchable(
            lambda **k: self.core.list_node(**k), "V1NodeList"), san))
        self.deployments = view("apps", "v1", "deployments")
        self.statefulsets = view("apps", "v1", "statefulsets")
        self.jobs = view("batch", "v1", "jobs")
        self.services = view("", "v1", "services", lister=lambda ns: _service_lister(self.core, ns, san))
        self.services.add_index("owner", _owner_key)
        self.informers = (self.workspaces, self.nodeclaims, self.nodes, self.deployments, self.statefulsets, self.jobs,
                          self.services)
        self.workspaces.add_handler(self._on_workspace)
        for inf, kind in ((self.nodeclaims, "NodeClaim"), (self.nodes, None), (self.deployments, "Workload"),
                          (self.statefulsets, "Workload"), (self.jobs, "Job"), (self.services, "Service")):
            inf.add_handler(lambda t, o, n, k=kind: self._on_owned(k, t, o, n))

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.cache.start()  # shared: every informer not yet started

    def wait_synced(self, timeout_s: float = 30.0) -> bool:
        return all(inf.wait_synced(timeout_s) for inf in self.informers)

    def stop(self) -> None:
        self.cache.stop()  # shared: the whole cache, which is how a runner ends

    def set_event_handler(self, handler: Callable[[str], None]) -> None:
        self._handler = handler

    def keys(self) -> list[str]:
        return [object_key(o) for o in self.workspaces.items()]

    def cache_sizes(self) -> dict[str, int]:
        """Entries in the adapter's own maps, for metrics: each is bounded by the live objects it is about."""
        with self._lock:
            return {"overlay": len(self._overlay), "parsed": len(self._parsed), "delivered": len(self._delivered),
                    "known": len(self._known), "own_rv": len(self._own_rv),
                    "refused": sum(len(v) for v in self._refused.values())}

    # ------------------------------------------------------------------ events

    def _on_workspace(self, etype: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        obj = new or old
        key = object_key(obj)
        if new is not None:
            rv = (new.get("metadata") or {}).get("resourceVersion")
            with self._lock:
                seen = self._delivered.setdefault(key, deque(maxlen=16))
                seen.append(rv)
                ov = self._overlay.get(key)
                if ov is not None and ov[2] == rv:
                    del self._overlay[key]  # the cache has caught up with our own write
        else:
            with self._lock:
                self._overlay.pop(key, None)
                self._parsed.pop(key, None)
                self._own_rv.pop(key, None)
                self._delivered.pop(key, None)
                self._refused.pop(key, None)
        if self._handler is not None:
            self._handler(key)

    def _on_owned(self, kind: str | None, etype: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if kind is not None and (new or old) is not None:
            # The cache speaks for it now (it shows it, or its tombstone): no need to remember. A DELETED event
            # clears the note too: a create's own ADDED event can beat the create's answer, which then leaves a
            # note that would hide this deletion from _absent for ever.
            self._known.discard(f"{kind}/{object_key(new or old)}")
        key = _owner_key(new or old)
        if key is not None and self._handler is not None:
            self._handler(key)

    # ------------------------------------------------------------------ observe

    def _parse(self, key: str, raw: dict[str, Any]) -> Workspace | None:
        rv = (raw.get("metadata") or {}).get("resourceVersion", "")
        hit = self._parsed.get(key)
        if hit is not None and hit[0] == rv:
            return hit[1]
        try:
            ws = parse_workspace(raw, catalogue=self.catalogue, auto_provisioning=self.auto_provisioning)
        except Exception as exc:  # garbage from the API: nothing we can address or act on
            log.error("workspace %s: object cannot be read, skipping it: %s", key, exc)
            return None
        with self._lock:
            if key in self._delivered:  # not deleted meanwhile: a deleted key must leave nothing behind
                self._parsed[key] = (rv, ws)
        return ws

    def _raw(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            ov = self._overlay.get(key)
        if ov is not None:
            return ov[1]
        return self.workspaces.get(key)

    def observe(self, key: str) -> tuple[Workspace | None, Snapshot]:
        raw = self._raw(key)
        if raw is None:
            return None, Snapshot()
        ws = self._parse(key, raw)
        if ws is None:
            return None, Snapshot()
        ns, name = key.split("/", 1)
        claims: list[NodeClaim] = []
        for obj in self.nodeclaims.by_index("owner", key):  # its own NodeClaims only: never a scan of the cache
            try:
                claims.append(to_nodeclaim(obj))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("workspace %s: NodeClaim %s cannot be read: %s", key, object_key(obj), exc)
        claims.sort(key=lambda c: c.name)
        nodes: dict[str, Node] = {}
        if ws.resource is not None and ws.resource.byo_nodes:
            # Bring-your-own nodes carry the user's labels, not ours: list them by the Workspace's selector
            # (a counted read; BYO Workspaces re-check on the machine's timer).
            for obj in self._list_byo_nodes(ws):
                try:
                    n = to_node(obj)
                except (KeyError, TypeError, ValueError):
                    continue
                if ws.resource.label_selector.matches(n.labels):
                    nodes[n.name] = n
        else:
            for c in claims:
                if c.node_name:
                    obj = self.nodes.get(c.node_name)
                    if obj is not None:
                        try:
                            nodes[c.node_name] = to_node(obj)
                        except (KeyError, TypeError, ValueError):
                            pass
        workload = None
        for inf in (self.statefulsets, self.deployments):
            obj = inf.get(key)
            if obj is not None:
                workload = to_workload(obj)
                break
        job_obj = self.jobs.get(key)
        job = to_job(job_obj) if job_obj is not None else None
        visible = {"NodeClaim/" + c.name for c in claims}
        if workload is not None:
            visible.add("Workload/" + name)
        if job is not None:
            visible.add("Job/" + name)
        services = frozenset(str((o.get("metadata") or {}).get("name", "")) for o in self.services.by_index("owner", key)
                             if (o.get("metadata") or {}).get("deletionTimestamp") is None)
        visible.update("Service/" + s for s in services)
        config_maps: dict[str, dict[str, str]] = {}
        absent = self._absent(ws, ns, visible, config_maps)
        refused: dict[str, str] = {}
        with self._lock:
            mine = self._refused.get(key)
            if mine:
                for n in [n for n in mine if n not in absent]:
                    del mine[n]  # only what the record still asks about and is confirmed absent
                refused = dict(mine)
                if not mine:
                    del self._refused[key]
        return ws, Snapshot(tuple(claims), nodes, workload, job, frozenset(absent), refused, config_maps, services)

    def _list_byo_nodes(self, ws: Workspace) -> list[dict[str, Any]]:
        sel = ws.resource.label_selector
        parts = [f"{k}={v}" for k, v in sorted((sel.match_labels or {}).items())]
        for e in sel.match_expressions or ():
            if e.operator in ("In", "NotIn"):
                parts.append(f"{e.key} {e.operator.lower()} ({','.join(e.values or ())})")
            elif e.operator == "Exists":
                parts.append(e.key)
            elif e.operator == "DoesNotExist":
                parts.append("!" + e.key)
        result = self._call("list", "Node", f"listing nodes for {ws.key}", lambda: self.core.list_node(
            label_selector=",".join(parts), _request_timeout=self.timeout))
        return [self.api.sanitize_for_serialization(n) for n in (result.items if result is not None else [])]

    def _config_map(self, ns: str, name: str) -> dict[str, str] | None:
        """The inference ConfigMap's data, or None if it does not exist. Read with a GET, not cached: decide
        asks for it only until the Workspace's targetNodeCount is kept (once per Workspace), and a cache of
        every ConfigMap in the cluster would cost far more than that."""
        t = self.timeout
        cm = self._call("get", "ConfigMap", f"reading ConfigMap {ns}/{name} (inference.config)",
                        lambda: self.core.read_namespaced_config_map(name, ns, _request_timeout=t), ok=(404,))
        if cm is None:
            return None
        return {str(k): str(v) for k, v in (cm.data or {}).items()}

    def _absent(self, ws: Workspace, ns: str, visible: set[str],
                config_maps: dict[str, dict[str, str]] | None = None) -> set[str]:
        """Positive knowledge for the names decide asks about (``decide.confirmations``) that the cache does
        not show: created by this process and not yet seen (exists), a tombstone (gone), else one GET.
        A ConfigMap asked about that exists goes into ``config_maps`` (name -> data)."""
        absent: set[str] = set()
        for name in sorted(confirmations(ws)):
            if name in visible:
                continue
            kind, _, short = name.partition("/")
            if kind == "ConfigMap":
                data = self._config_map(ns, short)
                if data is None:
                    absent.add(name)
                elif config_maps is not None:
                    config_maps[short] = data
                continue
            key = short if kind == "NodeClaim" else f"{ns}/{short}"
            if f"{kind}/{key}" in self._known:
                continue
            t = self.timeout
            if kind == "NodeClaim":
                gone = self.nodeclaims.gone(key) or not self._exists(
                    name, lambda: self.custom.get_cluster_custom_object(*NODECLAIMS, short, _request_timeout=t))
            elif kind == "Service":
                gone = self.services.gone(key) or not self._exists(
                    f"Service/{key}", lambda: self.core.read_namespaced_service(short, ns, _request_timeout=t))
            elif kind == "Job":
                gone = self.jobs.gone(key) or not self._exists(
                    f"Job/{key}", lambda: self.custom.get_namespaced_custom_object("batch", "v1", ns, "jobs", short,
                                                                                 _request_timeout=t))
            else:
                gone = (self.deployments.gone(key) or self.statefulsets.gone(key)) or not any(
                    self._exists(f"Workload/{key}", lambda p=plural: self.custom.get_namespaced_custom_object(
                        "apps", "v1", ns, p, short, _request_timeout=t)) for plural in ("deployments", "statefulsets"))
            if gone:
                absent.add(name)
        return absent

    def _exists(self, what: str, get: Callable[[], Any]) -> bool:
        """A live GET for something the cache cannot vouch for (only after a restart, once per object)."""
        self._count("get", what.split("/", 1)[0])
        try:
            get()
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise self._error(exc, f"checking {what}") from None
        self._known.add(what)
        return True

    # ------------------------------------------------------------------ apply

    def apply(self, ws: Workspace, actions: Sequence[A.Action]) -> None:
        for action in actions:
            self._apply(ws, action)

    def _count(self, verb: str, kind: str) -> None:
        name = f"{verb} {kind}"
        with self._lock:
            self.requests[name] = self.requests.get(name, 0) + 1

    def _error(self, exc: ApiException, doing: str) -> AdapterError:
        retry = None
        if exc.status == 429 and exc.headers:
            try:
                retry = float(exc.headers.get("Retry-After", "1"))
            except ValueError:
                retry = 1.0
        if exc.status == 409:
            return Conflict(f"{doing}: conflict: {exc.reason}")
        return AdapterError(f"{doing}: API answered {exc.status} {exc.reason}", retry_after=retry,
                            refused=exc.status in _REFUSED_STATUSES)

    def _call(self, verb: str, kind: str, doing: str, fn: Callable[[], Any], ok: tuple[int, ...] = ()) -> Any:
        self._count(verb, kind)
        try:
            return fn()
        except ApiException as exc:
            if exc.status in ok:
                return None
            raise self._error(exc, doing) from None
        except Exception as exc:  # connection refused, timeouts: retried with backoff by the runner
            reason = getattr(exc, "reason", exc)  # urllib3's MaxRetryError wraps the last attempt's error
            never_sent = isinstance(reason, urllib3.exceptions.ConnectTimeoutError)  # incl. NewConnectionError
            raise AdapterError(f"{doing}: {type(exc).__name__}: {exc}", refused=never_sent) from None

    def _apply(self, ws: Workspace, a: A.Action) -> None:
        t = self.timeout
        ns = ws.metadata.namespace
        if isinstance(a, A.CreateNodeClaim):
            body = manifests.nodeclaim(ws, a, self.node_class)
            try:
                self._call("create", "NodeClaim", f"creating NodeClaim {a.name} for {ws.key}",
                           lambda: self.custom.create_cluster_custom_object(*NODECLAIMS, body, _request_timeout=t),
                           ok=(409,))
            except AdapterError as exc:
                if exc.refused:  # nothing was stored and nothing can be later: the machine may replace it now
                    self._not_applied(ws, a)
                raise
            self._known.add("NodeClaim/" + a.name)
        elif isinstance(a, A.DeleteNodeClaim):
            self._known.discard("NodeClaim/" + a.name)
            self._call("delete", "NodeClaim", f"deleting NodeClaim {a.name} of {ws.key}",
                       lambda: self.custom.delete_cluster_custom_object(*NODECLAIMS, a.name, _request_timeout=t),
                       ok=(404,))
        elif isinstance(a, (A.CreateWorkload, A.UpdateWorkload)):
            body = manifests.workload(ws, a)
            plural = "statefulsets" if a.kind == "StatefulSet" else "deployments"
            if isinstance(a, A.CreateWorkload):
                self._call("create", a.kind, f"creating {a.kind} {ns}/{a.name}",
                           lambda: self.custom.create_namespaced_custom_object("apps", "v1", ns, plural, body,
                                                                               _request_timeout=t), ok=(409,))
                self._known.add(f"Workload/{ns}/{a.name}")
            else:
                patch = {"metadata": {"annotations": body["metadata"]["annotations"]}, "spec": body["spec"]}
                self._call("patch", a.kind, f"updating {a.kind} {ns}/{a.name}",
                           lambda: self.custom.patch_namespaced_custom_object("apps", "v1", ns, plural, a.name, patch,
                                                                              _request_timeout=t))
        elif isinstance(a, A.CreateService):
            body = manifests.service(ws, a)
            self._call("create", "Service", f"creating Service {ns}/{a.name} for {ws.key}",
                       lambda: self.core.create_namespaced_service(ns, body, _request_timeout=t), ok=(409,))
            if self.services.get(f"{ns}/{a.name}") is None:  # not yet in the cache: it exists all the same
                self._known.add(f"Service/{ns}/{a.name}")
        elif isinstance(a, A.CreateJob):
            body = manifests.job(ws, a)
            self._call("create", "Job", f"creating Job {ns}/{a.name}",
                       lambda: self.custom.create_namespaced_custom_object("batch", "v1", ns, "jobs", body,
                                                                           _request_timeout=t), ok=(409,))
            self._known.add(f"Job/{ns}/{a.name}")
        elif isinstance(a, A.DeleteJob):
            opts: dict[str, Any] = {"propagationPolicy": a.propagation}
            if a.uid:
                # Only the Job the pass saw: a 409 means the one there now is another (the current one, created
                # after it), which is not to be deleted; the stale one is gone.
                opts["preconditions"] = {"uid": a.uid}
            self._call("delete", "Job", f"deleting stale Job {ns}/{a.name}",
                       lambda: self.custom.delete_namespaced_custom_object("batch", "v1", ns, "jobs", a.name, body=opts,
                                                                           _request_timeout=t), ok=(404, 409))
            self._known.discard(f"Job/{ns}/{a.name}")
        elif isinstance(a, (A.AddFinalizer, A.RemoveFinalizer)):
            self._patch_finalizers(ws, a)
        elif isinstance(a, A.RecordEvent):
            self._record_event(ws, a)
        else:  # pragma: no cover - a new action type without an executor is a bug
            raise AdapterError(f"no executor for action {type(a).__name__}")

    def _not_applied(self, ws: Workspace, a: A.CreateNodeClaim) -> None:
        if not a.claim:
            return  # no pass id: nothing could tie the hint to the record that holds the name
        with self._lock:
            if ws.key in self._delivered:  # a deleted Workspace leaves nothing behind
                self._refused.setdefault(ws.key, {})["NodeClaim/" + a.name] = a.claim

    def abandoned(self, ws: Workspace, actions: Sequence[A.Action]) -> None:
        """The runner stopped its pass before sending these: none of *its* creates of them can ever be applied
        (another runner may have recorded and sent the same names: the pass id tells them apart)."""
        for a in actions:
            if isinstance(a, A.CreateNodeClaim):
                self._not_applied(ws, a)

    def _patch_finalizers(self, ws: Workspace, a: A.AddFinalizer | A.RemoveFinalizer) -> None:
        key = ws.key
        raw = self._raw(key) or ws.to_dict()
        meta = raw.get("metadata") or {}
        current = list(meta.get("finalizers") or [])
        wanted = current + [a.finalizer] if isinstance(a, A.AddFinalizer) and a.finalizer not in current else \
            [f for f in current if f != a.finalizer] if isinstance(a, A.RemoveFinalizer) else current
        if wanted == current:
            return
        rv = meta.get("resourceVersion") or ws.metadata.resource_version
        # The resourceVersion makes the merge patch conditional: finalizers are a list, replaced whole.
        patch = {"metadata": {"finalizers": wanted, "resourceVersion": rv}}
        verb = "add" if isinstance(a, A.AddFinalizer) else "remove"
        try:
            result = self._call("patch", "Workspace", f"{verb} finalizer on {key}",
                                lambda: self.custom.patch_namespaced_custom_object(
                                    KAITO_GROUP, KAITO_VERSION, ws.metadata.namespace, KAITO_PLURAL, ws.metadata.name,
                                    patch, _request_timeout=self.timeout), ok=(404,))
        except Conflict:
            self._drop_overlay(key)
            raise
        if result is None and verb == "add":
            # Deleted before it ever got our finalizer: nothing may be created for it. Observing again finds
            # it gone and the queue forgets it.
            raise Conflict(f"add finalizer on {key}: the Workspace is gone")
        if isinstance(result, dict):
            new_rv = (result.get("metadata") or {}).get("resourceVersion")
            parsed = self._parse_raw_for_overlay(key, result)
            with self._lock:
                if key in self._delivered:  # the watch's DELETED may have come before this answer
                    self._own_rv[key] = (ws.metadata.resource_version, result)
                self._set_overlay(key, parsed, result, new_rv)

    def _parse_raw_for_overlay(self, key: str, raw: dict[str, Any]) -> Workspace | None:
        try:
            return parse_workspace(raw, catalogue=self.catalogue, auto_provisioning=self.auto_provisioning)
        except Exception:
            return None

    def _record_event(self, ws: Workspace, a: A.RecordEvent) -> None:
        now = format_time(datetime.now(timezone.utc))
        body = manifests.event(ws, a, now, next(self._event_seq), self.component)
        self._count("create", "Event")
        try:
            self.core.create_namespaced_event(ws.metadata.namespace, body, _request_timeout=self.timeout)
        except Exception as exc:  # Events are best effort: a lost Event must not fail the pass
            log.debug("workspace %s: event %s not recorded: %s", ws.key, a.reason, exc)

    # ------------------------------------------------------------------ persist

    def persist(self, ws: Workspace, status: WorkspaceStatus) -> Workspace:
        key = ws.key
        raw = self._raw(key)
        if raw is None:
            raise Conflict(f"writing status of {key}: the Workspace is gone from the cache")
        rv = ws.metadata.resource_version
        with self._lock:
            own = self._own_rv.pop(key, None)
        if own is not None and own[0] == rv:
            rv = (own[1].get("metadata") or {}).get("resourceVersion", rv)
        body = {**raw, "metadata": {**(raw.get("metadata") or {}), "resourceVersion": rv}, "status": status.to_dict()}
        try:
            result = self._call("update", "Workspace/status", f"writing status of {key}",
                                lambda: self.custom.replace_namespaced_custom_object_status(
                                    KAITO_GROUP, KAITO_VERSION, ws.metadata.namespace, KAITO_PLURAL, ws.metadata.name,
                                    body, _request_timeout=self.timeout), ok=(404,))
        except Conflict:
            self._drop_overlay(key)
            raise
        if not isinstance(result, dict):
            # 404: the Workspace is gone (its finalizer was removed by someone else). Nothing after this write
            # may run for it, creations least of all: observe again, which finds it gone.
            raise Conflict(f"writing status of {key}: the Workspace is gone")
        new_rv = (result.get("metadata") or {}).get("resourceVersion", "")
        parsed = self._parse_raw_for_overlay(key, result)
        with self._lock:
            self._set_overlay(key, parsed, result, new_rv)
        return parsed if parsed is not None else ws.with_status(status)

    def _drop_overlay(self, key: str) -> None:
        """A write was refused as stale: the object moved on past our last write. The overlay can only be
        older than the truth now (e.g. a relist after 410 skipped our version, so the watch will never
        deliver it); from here the cache is the better source, and the next write's resourceVersion says."""
        with self._lock:
            self._overlay.pop(key, None)
            self._own_rv.pop(key, None)

    def _set_overlay(self, key: str, parsed: Workspace | None, raw: dict[str, Any], rv: str) -> None:
        """Keep our written version until the watch delivers it (caller holds the lock)."""
        if key not in self._delivered:
            # The watch already said DELETED (removing the last finalizer deletes the object, and that event
            # can beat our write's answer): an overlay now would resurrect a Workspace that is gone.
            self._overlay.pop(key, None)
            self._own_rv.pop(key, None)
            self._parsed.pop(key, None)
            return
        if parsed is None or rv in self._delivered.get(key, ()):
            self._overlay.pop(key, None)  # the cache already has it (or something newer)
            return
        self._overlay[key] = (parsed, raw, rv)


def _service_lister(core: k8s.CoreV1Api, ns: str | None, to_dict: Callable[[Any], Any]) -> tuple[Callable[..., Any],
                                                                                                Callable[[Any], Any]]:
    """Services, in one namespace or in all, as dicts (the core API's typed list)."""
    if ns:
        return _watchable(lambda **k: core.list_namespaced_service(ns, **k), "V1ServiceList"), to_dict
    return _watchable(lambda **k: core.list_service_for_all_namespaces(**k), "V1ServiceList"), to_dict


def _watchable(fn: Callable[..., Any], return_type: str) -> Callable[..., Any]:
    """kubernetes.watch.Watch reads the list function's docstring to know what it returns."""
    fn.__doc__ = f":return: {return_type}\n"
    return fn
