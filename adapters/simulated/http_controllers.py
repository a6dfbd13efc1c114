"""The simulated cluster's controllers, acting through a real Kubernetes API server.

The same latency and failure model as the in-memory simulator (:mod:`.params`), but every effect is an
API call, so the machine's Kubernetes adapter, the test API server and ``kubectl`` see a cluster that
behaves like Karpenter + the NVIDIA device plugin + the workload controllers:

- a NodeClaim provisioner: on a new NodeClaim it adds Karpenter's termination finalizer, then after
  sampled delays sets Launched, creates the Node (NotReady, with the claim's labels, the instance type
  and ``accelerator=nvidia``) and sets Registered, Initialized, Ready (Node Ready), and later gives the
  Node ``nvidia.com/gpu`` capacity; a deleted NodeClaim loses its Node and finalizer after its delay;
- a workload status updater (the scheduler and the kubelet): a Deployment or StatefulSet of a new generation
  becomes ready after its rollout delay, if its pods fit their nodes' GPUs (:mod:`.scheduling`: the pod spec's
  ``nvidia.com/gpu`` requests against the nodes' allocatable). If they do not, its pods are created Pending with
  ``PodScheduled=False``, reason ``Unschedulable`` and the scheduler's message ("0/2 nodes are available:
  2 Insufficient nvidia.com/gpu."), and the workload reports no ready replica;
- a Job runner: a Job completes (or fails) after its run time, if its pod fits a node's GPUs (else the pod stays
  Pending as above and the Job never ends).

Time is scaled: ``time_scale=60`` makes a 240 s provisioning take 4 s. Scheduling is one thread with a
heap of due times; it waits on a condition for the next due time or a new event (the shell's waiting).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from workspace_fsm.kaito.model import GPU_RESOURCE, format_time

from ..kubernetes.informer import Informer, object_key
from .params import SimParams
from .scheduling import GPU_RESOURCE as _GPU, Fit, fit, node_matches, pending_pod, pod_gpus, quantity

log = logging.getLogger("workspace_fsm.simulated.controllers")

KARPENTER_FINALIZER = "karpenter.sh/termination"
NODECLAIMS = ("karpenter.sh", "v1", "nodeclaims")


def _now() -> str:
    return format_time(datetime.now(timezone.utc))


def _cond(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": _now()}


class SimulatedControllers:
    def __init__(self, api_client: k8s.ApiClient, params: SimParams | None = None, *, seed: int = 1,
                 time_scale: float = 60.0, request_timeout_s: float = 10.0) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.params = params or SimParams()
        self.scale = time_scale
        self.rng = random.Random(seed)
        self.custom = k8s.CustomObjectsApi(api_client)
        self.core = k8s.CoreV1Api(api_client)
        self.timeout = request_timeout_s
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._stop = threading.Event()
        # (resource, object uid) -> the steps already scheduled for that object, so that informer relists do
        # not schedule them twice. Forgotten when the object is deleted: bounded by the live objects.
        self._seen: dict[tuple[str, str], set[Any]] = {}
        self._seen_lock = threading.Lock()
        san = api_client.sanitize_for_serialization
        kw = dict(watch_timeout_s=60, request_timeout_s=request_timeout_s)
        self.informers = [
            Informer("sim-nodeclaims", _watchable(lambda **k: self.custom.list_cluster_custom_object(*NODECLAIMS, **k)), **kw),
            Informer("sim-deployments", _watchable(lambda **k: self.custom.list_cluster_custom_object("apps", "v1", "deployments", **k)), **kw),
            Informer("sim-statefulsets", _watchable(lambda **k: self.custom.list_cluster_custom_object("apps", "v1", "statefulsets", **k)), **kw),
            Informer("sim-jobs", _watchable(lambda **k: self.custom.list_cluster_custom_object("batch", "v1", "jobs", **k)), **kw),
        ]
        self.informers[0].add_handler(self._on_nodeclaim)
        self.informers[1].add_handler(lambda t, o, n: self._on_workload("deployments", t, o, n))
        self.informers[2].add_handler(lambda t, o, n: self._on_workload("statefulsets", t, o, n))
        self.informers[3].add_handler(self._on_job)
        # (plural, namespace, name) -> the Pending pods created for a workload whose pods fit no node
        self._pending_pods: dict[tuple[str, str, str], list[str]] = {}
        self._thread = threading.Thread(target=self._loop, name="sim-controllers", daemon=True)
        self._san = san

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        for inf in self.informers:
            inf.start()
        self._thread.start()

    def wait_synced(self, timeout_s: float = 30.0) -> bool:
        return all(i.wait_synced(timeout_s) for i in self.informers)

    def stop(self) -> None:
        self._stop.set()
        for inf in self.informers:
            inf.stop()
        with self._cv:
            self._cv.notify_all()

    def _after(self, sim_seconds: float, fn: Callable[[], None]) -> None:
        with self._cv:
            heapq.heappush(self._heap, (time.monotonic() + sim_seconds / self.scale, next(self._seq), fn))
            self._cv.notify()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                if not self._heap:
                    self._cv.wait(0.5)
                    continue
                due, _, fn = self._heap[0]
                delay = due - time.monotonic()
                if delay > 0:
                    self._cv.wait(min(delay, 0.5))
                    continue
                heapq.heappop(self._heap)
            try:
                fn()
            except ApiException as exc:
                if exc.status != 404:  # the object went away meanwhile: nothing to do
                    log.warning("simulated controller step failed: %s %s", exc.status, exc.reason)
            except Exception:
                log.exception("simulated controller step failed")

    # A step of an object's chain that fails (a 5xx, a timeout, a refused connection: the API server is loaded,
    # not the controller wrong) is tried again after this many real seconds, doubling, as a real controller's
    # work queue retries; the steps after it wait, so they keep their order.
    RETRY_FIRST_S, RETRY_MAX_S, RETRY_ATTEMPTS = 0.2, 3.0, 40

    def _chain(self, steps: list[tuple[float, Callable[[], None]]]) -> None:
        """Run ``steps`` (simulated seconds from now, action) in order, each at its time or after the one before
        it succeeded; a failed step is retried with backoff, a 404 (the object went away) ends the chain."""
        def run(i: int, attempt: int) -> None:
            try:
                steps[i][1]()
            except ApiException as exc:
                if exc.status == 404:
                    return
                retry(i, attempt, f"{exc.status} {exc.reason}")
                return
            except Exception as exc:  # connection errors and timeouts under load
                retry(i, attempt, repr(exc))
                return
            if i + 1 < len(steps):
                self._after(max(0.0, steps[i + 1][0] - steps[i][0]), lambda: run(i + 1, 0))

        def retry(i: int, attempt: int, why: str) -> None:
            if attempt >= self.RETRY_ATTEMPTS:
                log.error("simulated controller step failed %d times, giving up: %s", attempt + 1, why)
                return
            log.warning("simulated controller step failed (%s); retrying", why)
            wait = min(self.RETRY_FIRST_S * 2 ** attempt, self.RETRY_MAX_S)
            self._after(wait * self.scale, lambda: run(i, attempt + 1))

        if steps:
            self._after(steps[0][0], lambda: run(0, 0))

    @staticmethod
    def _uid(obj: dict[str, Any]) -> str:
        return (obj.get("metadata") or {}).get("uid") or object_key(obj)

    def _once(self, resource: str, obj: dict[str, Any], what: Any) -> bool:
        """True the first time (resource, object uid, what) is seen: informer relists must not reschedule."""
        with self._seen_lock:
            done = self._seen.setdefault((resource, self._uid(obj)), set())
            if what in done:
                return False
            done.add(what)
            return True

    def _forget(self, resource: str, obj: dict[str, Any] | None) -> None:
        """The object is gone: nothing more will be scheduled for it (a re-created one has a new uid)."""
        if obj is not None:
            with self._seen_lock:
                self._seen.pop((resource, self._uid(obj)), None)

    def _rollout_once(self, plural: str, obj: dict[str, Any], generation: int) -> bool:
        """True for a generation newer than any rolled out for this workload: only the latest is remembered,
        so a workload updated many times keeps one entry."""
        with self._seen_lock:
            done = self._seen.setdefault((plural, self._uid(obj)), set())
            if done and generation <= max(done):
                return False
            done.clear()
            done.add(generation)
            return True

    def tracked(self) -> dict[str, int]:
        """Objects per resource whose scheduled steps are remembered (for leak checks: at most the live ones)."""
        with self._seen_lock:
            out: dict[str, int] = {}
            for resource, _ in self._seen:
                out[resource] = out.get(resource, 0) + 1
            return out

    # ------------------------------------------------------------------ NodeClaims and Nodes

    def _on_nodeclaim(self, etype: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if new is None:
            self._forget("nodeclaims", old)
            return
        meta = new.get("metadata") or {}
        name = meta["name"]
        if meta.get("deletionTimestamp"):
            if self._once("nodeclaims", new, "delete"):
                self._chain([(self.params.latencies.nodeclaim_delete.sample(self.rng),
                              lambda: self._finish_delete(name))])
            return
        if not self._once("nodeclaims", new, "provision"):
            return
        lat = self.params.latencies
        finalizers = list(set(meta.get("finalizers") or []) | {KARPENTER_FINALIZER})
        steps: list[tuple[float, Callable[[], None]]] = [
            (0.0, lambda: self._patch_claim(name, {"metadata": {"finalizers": finalizers}}, status=False))]
        if self.rng.random() < self.params.instance_unavailable_rate:
            steps.append((lat.nodeclaim_launched.sample(self.rng), lambda: self._set_claim(
                name, [_cond("Launched", "False", "InsufficientCapacity", "instance type unavailable in this zone")])))
            self._chain(steps)
            return
        launched = lat.nodeclaim_launched.sample(self.rng)
        registered = max(launched, lat.nodeclaim_registered.sample(self.rng))
        initialized = registered + lat.nodeclaim_initialized.sample(self.rng)
        ready = initialized + lat.nodeclaim_ready.sample(self.rng)
        gpu = ready + lat.gpu_plugin.sample(self.rng)
        never = self.rng.random() < self.params.never_ready_rate
        node = f"aks-{name}"[:63]
        itype = next((r.get("values", [""])[0] for r in (new.get("spec") or {}).get("requirements") or []
                      if r.get("key") == "node.kubernetes.io/instance-type" and r.get("values")), "")
        labels = {**(meta.get("labels") or {}), "node.kubernetes.io/instance-type": itype, "accelerator": "nvidia",
                  "kubernetes.io/hostname": node, "karpenter.sh/nodepool": "kaito"}
        steps.append((launched, lambda: self._set_claim(name, [_cond("Launched", "True", "Launched")])))
        if not never:
            gpus = self.params.gpus(itype)
            steps += [(registered, lambda: self._register(name, node, labels)),
                      (initialized, lambda: self._set_claim(name, [_cond("Initialized", "True", "Initialized")])),
                      (ready, lambda: self._ready(name, node)),
                      (gpu, lambda: self._gpu(node, gpus))]
        self._chain(steps)

    def _patch_claim(self, name: str, patch: dict[str, Any], status: bool = True) -> None:
        if status:
            self.custom.patch_cluster_custom_object_status(*NODECLAIMS, name, patch, _request_timeout=self.timeout)
        else:
            self.custom.patch_cluster_custom_object(*NODECLAIMS, name, patch, _request_timeout=self.timeout)

    def _set_claim(self, name: str, conds: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
        cur = self.custom.get_cluster_custom_object(*NODECLAIMS, name, _request_timeout=self.timeout)
        have = {c["type"]: c for c in ((cur.get("status") or {}).get("conditions") or [])}
        for c in conds:
            have[c["type"]] = c
        status = {**(cur.get("status") or {}), "conditions": list(have.values()), **(extra or {})}
        self._patch_claim(name, {"status": status})

    def _register(self, claim: str, node: str, labels: dict[str, str]) -> None:
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": labels},
                "spec": {"providerID": f"azure:///simulated/{node}"},
                "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady",
                                           "lastHeartbeatTime": _now(), "lastTransitionTime": _now(), "message": ""}]}}
        try:
            self.core.create_node(body, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status != 409:
                raise
        self.core.patch_node_status(node, {"status": body["status"]}, _request_timeout=self.timeout)
        self._set_claim(claim, [_cond("Registered", "True", "Registered")], {"nodeName": node})

    def _ready(self, claim: str, node: str) -> None:
        self.core.patch_node_status(node, {"status": {"conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
            "lastHeartbeatTime": _now(), "lastTransitionTime": _now()}]}}, _request_timeout=self.timeout)
        self._set_claim(claim, [_cond("Ready", "True", "Ready")])

    def _gpu(self, node: str, gpus: int) -> None:
        cur = self._san(self.core.read_node(node, _request_timeout=self.timeout))
        status = cur.get("status") or {}
        cap = {**(status.get("capacity") or {}), GPU_RESOURCE: str(gpus)}
        alloc = {**(status.get("allocatable") or {}), GPU_RESOURCE: str(gpus)}
        self.core.patch_node_status(node, {"status": {"capacity": cap, "allocatable": alloc}},
                                    _request_timeout=self.timeout)

    def _finish_delete(self, claim: str) -> None:
        try:
            cur = self.custom.get_cluster_custom_object(*NODECLAIMS, claim, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        node = (cur.get("status") or {}).get("nodeName")
        if node:
            try:
                self.core.delete_node(node, _request_timeout=self.timeout)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        fins = [f for f in (cur.get("metadata") or {}).get("finalizers") or [] if f != KARPENTER_FINALIZER]
        rv = (cur.get("metadata") or {}).get("resourceVersion")
        self._patch_claim(claim, {"metadata": {"finalizers": fins, "resourceVersion": rv}}, status=False)

    # ------------------------------------------------------------------ workloads and Jobs

    def _on_workload(self, plural: str, etype: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if new is None:
            self._forget(plural, old)
            if old is not None:
                m = old.get("metadata") or {}
                self._pending_pods.pop((plural, m.get("namespace", ""), m.get("name", "")), None)  # collected with it
            return
        if (new.get("metadata") or {}).get("deletionTimestamp"):
            return
        meta = new["metadata"]
        gen = meta.get("generation", 1)
        if not self._rollout_once(plural, new, gen):
            return
        ns, name = meta["namespace"], meta["name"]
        replicas = (new.get("spec") or {}).get("replicas", 1)
        lat = self.params.latencies

        def ready() -> None:
            # Roll-outs of successive generations can finish out of order: only the current one reports,
            # or an older one would set observedGeneration back for good.
            cur = self.custom.get_namespaced_custom_object("apps", "v1", ns, plural, name,
                                                           _request_timeout=self.timeout)
            if (cur.get("metadata") or {}).get("generation", 1) != gen:
                return
            status = {"observedGeneration": gen, "replicas": replicas, "readyReplicas": replicas,
                      "updatedReplicas": replicas, "availableReplicas": replicas}
            self.custom.patch_namespaced_custom_object_status("apps", "v1", ns, plural, name, {"status": status},
                                                              _request_timeout=self.timeout)

        rollout = lat.workload_rollout.sample(self.rng)
        pod_spec = ((new.get("spec") or {}).get("template") or {}).get("spec") or {}
        if pod_gpus(pod_spec) == 0 and (plural, ns, name) not in self._pending_pods:
            self._chain([(rollout, ready)])  # no GPU asked for: the general-purpose nodes take it
            return
        self._chain([(0.0, lambda: self._place(plural, new, gen, replicas, pod_spec, rollout, ready, 0))])

    # The device plugin may not have reported a node's GPUs yet: the scheduler looks again when nodes change;
    # here, every few simulated seconds for a while, before the pods are declared unschedulable.
    PLACE_RETRY_S = 5.0
    PLACE_ATTEMPTS = 36

    def _place(self, plural: str, workload: dict[str, Any], gen: int, replicas: int, pod_spec: dict[str, Any],
               rollout: float, ready: Callable[[], None], attempt: int) -> None:
        """The scheduler: place the workload's pods on nodes whose allocatable GPUs cover their requests."""
        meta = workload["metadata"]
        ns, name = meta["namespace"], meta["name"]
        cur = self.custom.get_namespaced_custom_object("apps", "v1", ns, plural, name, _request_timeout=self.timeout)
        if (cur.get("metadata") or {}).get("generation", 1) != gen:
            return  # a newer generation is being placed
        placed, waiting = self._fit(pod_spec, replicas)
        if placed.ok:
            self._delete_pending(plural, ns, name)
            self._chain([(rollout, ready)])
            return
        if waiting and attempt < self.PLACE_ATTEMPTS:
            self._chain([(self.PLACE_RETRY_S, lambda: self._place(plural, workload, gen, replicas, pod_spec, rollout,
                                                                ready, attempt + 1))])
            return
        owner = {**cur, "apiVersion": "apps/v1", "kind": "Deployment" if plural == "deployments" else "StatefulSet"}
        self._pend(plural, owner, pod_spec, placed)
        status = {"observedGeneration": gen, "replicas": replicas, "readyReplicas": 0, "updatedReplicas": replicas,
                  "availableReplicas": 0, "unavailableReplicas": replicas}
        self.custom.patch_namespaced_custom_object_status("apps", "v1", ns, plural, name, {"status": status},
                                                          _request_timeout=self.timeout)

    def _fit(self, pod_spec: dict[str, Any], replicas: int) -> tuple[Fit, bool]:
        """Fit the pods on the cluster's nodes as they are now; also whether a matching GPU node's device plugin
        has not reported yet (then the scheduler would look again when it does)."""
        nodes = self._san(self.core.list_node(_request_timeout=self.timeout)).get("items") or []
        candidates = []
        waiting = False
        for n in nodes:
            n_meta, status = n.get("metadata") or {}, n.get("status") or {}
            labels = n_meta.get("labels") or {}
            allocatable = (status.get("allocatable") or {}).get(_GPU)
            if allocatable is None and labels.get("accelerator") == "nvidia" \
                    and node_matches(pod_spec, n_meta.get("name", ""), labels):
                waiting = True
            candidates.append((n_meta.get("name", ""), labels, quantity(allocatable or 0)))
        return fit(pod_spec, replicas, candidates, len(nodes)), waiting

    def _pend(self, plural: str, owner: dict[str, Any], pod_spec: dict[str, Any], placed: Fit) -> None:
        """Create the pods no node can take, Pending with the scheduler's condition, owned by ``owner``."""
        meta = owner["metadata"]
        ns, name = meta["namespace"], meta["name"]
        log.info("%s %s/%s: %d pod(s) unschedulable: %s", plural, ns, name, placed.replicas - placed.placed,
                 placed.message)
        self._delete_pending(plural, ns, name)
        created = []
        for i in range(placed.placed, placed.replicas):
            pod = pending_pod(owner, i, pod_spec, placed.message, _now())
            try:
                self.core.create_namespaced_pod(ns, {k: v for k, v in pod.items() if k != "status"},
                                                _request_timeout=self.timeout)
            except ApiException as exc:
                if exc.status != 409:
                    raise
            self.core.patch_namespaced_pod_status(pod["metadata"]["name"], ns, {"status": pod["status"]},
                                                  _request_timeout=self.timeout)
            created.append(pod["metadata"]["name"])
        self._pending_pods[(plural, ns, name)] = created

    def _delete_pending(self, plural: str, ns: str, name: str) -> None:
        for pod in self._pending_pods.pop((plural, ns, name), ()):
            try:
                self.core.delete_namespaced_pod(pod, ns, _request_timeout=self.timeout)
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def _on_job(self, etype: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if new is None:
            self._forget("jobs", old)
            if old is not None:
                m = old.get("metadata") or {}
                self._pending_pods.pop(("jobs", m.get("namespace", ""), m.get("name", "")), None)
            return
        if (new.get("metadata") or {}).get("deletionTimestamp") or not self._once("jobs", new, "run"):
            return
        meta = new["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta.get("uid")
        fail = self.rng.random() < self.params.job_failure_rate
        self.custom.patch_namespaced_custom_object_status("batch", "v1", ns, "jobs", name,
                                                          {"status": {"active": 1, "startTime": _now()}},
                                                          _request_timeout=self.timeout)

        def finish() -> None:
            cur = self.custom.get_namespaced_custom_object("batch", "v1", ns, "jobs", name, _request_timeout=self.timeout)
            if (cur.get("metadata") or {}).get("uid") != uid:
                return  # replaced meanwhile
            cond = _cond("Failed", "True", "BackoffLimitExceeded", "Job has reached the specified backoff limit") \
                if fail else _cond("Complete", "True", "Completed")
            status = {"active": 0, "succeeded": 0 if fail else 1, "failed": 4 if fail else 0, "conditions": [cond],
                      "completionTime": _now()}
            self.custom.patch_namespaced_custom_object_status("batch", "v1", ns, "jobs", name, {"status": status},
                                                              _request_timeout=self.timeout)

        run = self.params.latencies.job_run.sample(self.rng)
        pod_spec = ((new.get("spec") or {}).get("template") or {}).get("spec") or {}
        if pod_gpus(pod_spec) == 0:
            self._chain([(run, finish)])
            return
        self._chain([(0.0, lambda: self._place_job(new, pod_spec, run, finish, 0))])

    def _place_job(self, job: dict[str, Any], pod_spec: dict[str, Any], run: float, finish: Callable[[], None],
                   attempt: int) -> None:
        """The tuning Job's pod runs only where its GPUs fit; otherwise it stays Pending and the Job never ends."""
        meta = job["metadata"]
        ns, name = meta["namespace"], meta["name"]
        cur = self.custom.get_namespaced_custom_object("batch", "v1", ns, "jobs", name, _request_timeout=self.timeout)
        if (cur.get("metadata") or {}).get("uid") != meta.get("uid"):
            return  # replaced meanwhile
        placed, waiting = self._fit(pod_spec, 1)
        if placed.ok:
            self._chain([(run, finish)])
        elif waiting and attempt < self.PLACE_ATTEMPTS:
            self._chain([(self.PLACE_RETRY_S, lambda: self._place_job(job, pod_spec, run, finish, attempt + 1))])
        else:
            self._pend("jobs", {**cur, "apiVersion": "batch/v1", "kind": "Job"}, pod_spec, placed)


def _watchable(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn.__doc__ = ":return: object\n"
    return fn
