"""/metrics: what the runner reports agrees with the cluster; the soak's pure helpers judge correctly."""

from __future__ import annotations

import argparse
import importlib.util
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client as k8s
from prometheus_client.parser import text_string_to_metric_families

from workspace_fsm.cli.embedded import EmbeddedCluster
from workspace_fsm.engine.metrics import Served, build_registry, render
from workspace_fsm.kaito.model import LABEL_WORKSPACE
from workspace_fsm.cli.run import run_against

NS = "default"
TIME_SCALE = 300.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return parse(r.read().decode())


def value(m, name: str, **labels: str) -> float:
    return m[name][tuple(sorted(labels.items()))]


def inference(name: str, count: int) -> dict:
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name},
            "resource": {"count": count, "instanceType": "Standard_NC24ads_A100_v4",
                         "labelSelector": {"matchLabels": {"apps": name}}},
            "inference": {"preset": {"name": "phi-4-mini-instruct"}}}


def tuning(name: str) -> dict:
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name},
            "resource": {"instanceType": "Standard_NC24ads_A100_v4", "labelSelector": {"matchLabels": {"apps": name}}},
            "tuning": {"preset": {"name": "phi-3-mini-128k-instruct"}, "method": "qlora",
                       "input": {"urls": ["https://example.com/data.parquet"]},
                       "output": {"image": "registry.example.com/out:1", "imagePushSecret": "push"}}}


class Cluster:
    """The embedded cluster and ``workspace-fsm run`` in a thread, with its probes and /metrics on a port."""

    def __init__(self, tmp: Path) -> None:
        self.embedded = EmbeddedCluster(time_scale=TIME_SCALE)
        self.embedded.start(tmp / "kubeconfig")
        self.custom = k8s.CustomObjectsApi(self.embedded.api)
        self.core = k8s.CoreV1Api(self.embedded.api)
        self.port = free_port()
        self.stop = threading.Event()
        args = argparse.Namespace(namespace=None, workers=5, byo_nodes=False, health_port=self.port)
        self.thread = threading.Thread(target=run_against, args=(self.embedded.api, args, self.stop), daemon=True)
        self.thread.start()
        wait_for("the runner's /readyz", lambda: self.get("/readyz") == 200)

    def get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return -1

    def workspaces(self) -> list[dict]:
        return self.custom.list_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces")["items"]

    def labelled(self) -> dict[str, int]:
        """What the runner's informers select, counted in the API server. The Workspace and the RAGEngine (the
        embedded cluster serves both) share the informers of NodeClaims, Nodes and Deployments, and select them by
        different labels: those informers hold every object of their kind."""
        sel = LABEL_WORKSPACE
        c = self.custom
        return {
            "workspaces": len(c.list_cluster_custom_object("kaito.sh", "v1beta1", "workspaces")["items"]),
            "nodeclaims": len(c.list_cluster_custom_object("karpenter.sh", "v1", "nodeclaims")["items"]),
            "nodes": len(self.core.list_node().items),
            "deployments": len(c.list_cluster_custom_object("apps", "v1", "deployments")["items"]),
            "statefulsets": len(c.list_cluster_custom_object("apps", "v1", "statefulsets", label_selector=sel)["items"]),
            "jobs": len(c.list_cluster_custom_object("batch", "v1", "jobs", label_selector=sel)["items"]),
        }

    def close(self) -> None:
        self.stop.set()
        self.thread.join(20)
        self.embedded.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("metrics"))
    yield c
    c.close()


def at_goal(w: dict) -> bool:
    status = w.get("status") or {}
    want = "Succeeded" if "tuning" in w else "Ready"
    conds = [c for c in status.get("conditions") or [] if c["type"] == "WorkspaceSucceeded"]
    return status.get("state") == want and bool(conds) and all(
        c.get("observedGeneration") == w["metadata"]["generation"] for c in conds)


def caught_up(cluster: Cluster) -> tuple[dict[str, int], dict]:
    """The API server's counts and a scrape taken while they held still and the caches showed exactly them
    (the informers trail the API server by the watch's delay)."""
    seen: list = []

    def agree() -> bool:
        live = cluster.labelled()
        m = scrape(cluster.port)
        cached = {k: value(m, "workspace_fsm_informer_objects", informer=k) for k in live}
        seen[:] = [live, cached, m]
        return cached == live and cluster.labelled() == live

    try:
        wait_for("the caches to show what the API server holds", agree)
    except AssertionError:
        raise AssertionError(f"API server {seen[0]}, caches {seen[1]}") from None
    return seen[0], seen[2]


def test_metrics_agree_with_the_cluster_through_create_and_delete(cluster):
    before = scrape(cluster.port)
    assert value(before, "workspace_fsm_workspaces_watched") == 0
    assert value(before, "workspace_fsm_informer_synced", informer="nodeclaims") == 1
    docs = [inference("m-a", 1), inference("m-b", 2), inference("m-c", 1), tuning("m-t")]
    for d in docs:
        cluster.custom.create_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces", d)

    def all_at_goal() -> bool:
        items = cluster.workspaces()
        return len(items) == len(docs) and all(at_goal(w) for w in items)

    wait_for("every Workspace at its goal", all_at_goal)
    live, m = caught_up(cluster)
    # A NodeClaim per node each Workspace targets (the estimator may need fewer than resource.count), a Job for tuning.
    assert live["nodeclaims"] == sum(w["status"]["targetNodeCount"] for w in cluster.workspaces()) >= 4
    assert live["jobs"] == 1
    assert value(m, "workspace_fsm_workspaces_watched") == len(docs)
    for informer, n in live.items():
        assert value(m, "workspace_fsm_informer_objects", informer=informer) == n, informer
    assert value(m, "workspace_fsm_workspaces", state="Ready") == 3
    assert value(m, "workspace_fsm_workspaces", state="Succeeded") == 1
    assert sum(v for k, v in m["workspace_fsm_workspaces"].items()) == len(docs)
    passes = value(m, "workspace_fsm_reconcile_passes_total", lifecycle="workspace")
    assert passes >= len(docs) * 3  # at least a pass per state on the way
    assert value(m, "workspace_fsm_transitions_total", lifecycle="workspace") >= 3 * 4 + 2  # Pending..Ready, Pending..Succeeded
    assert value(m, "workspace_fsm_queue_depth", lifecycle="workspace", state="ready") == 0
    assert value(m, "workspace_fsm_queue_depth", lifecycle="workspace", state="processing") == 0
    assert value(m, "workspace_fsm_adapter_cache_entries", lifecycle="workspace", cache="delivered") == len(docs)
    assert value(m, "workspace_fsm_adapter_cache_entries", lifecycle="workspace", cache="parsed") == len(docs)
    assert value(m, "workspace_fsm_adapter_cache_entries", lifecycle="workspace", cache="known") <= sum(live.values())
    assert value(m, "workspace_fsm_api_requests_total", lifecycle="workspace", verb="create", kind="NodeClaim") >= live["nodeclaims"]
    # 5 workers for each lifecycle driven: Workspace and RAGEngine (the embedded cluster serves both CRDs).
    for lc in ("workspace", "ragengine"):
        assert value(m, "workspace_fsm_worker_threads", lifecycle=lc) == 5
        assert value(m, "workspace_fsm_workers_configured", lifecycle=lc) == 5
    assert value(m, "workspace_fsm_resources_watched", lifecycle="workspace") == len(docs)
    assert value(m, "workspace_fsm_resources_watched", lifecycle="ragengine") == 0
    assert value(m, "workspace_fsm_resources", lifecycle="workspace", state="Ready") == 3
    assert value(m, "workspace_fsm_queue_depth", lifecycle="ragengine", state="processing") == 0
    assert abs(value(m, "workspace_fsm_threads") - threading.active_count()) <= 3
    assert value(m, "process_resident_memory_bytes") > 10 * 1024 * 1024
    assert value(m, "process_open_fds") > 0

    # Delete two: the caches shrink to what is left, the deletions leave tombstones.
    targets = {w["metadata"]["name"]: w["status"]["targetNodeCount"] for w in cluster.workspaces()}
    for name in ("m-a", "m-b"):
        cluster.custom.delete_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces", name)
    wait_for("the deleted Workspaces and their NodeClaims to go",
             lambda: len(cluster.workspaces()) == 2 and cluster.labelled()["nodeclaims"] == targets["m-c"] + targets["m-t"])
    live, m = caught_up(cluster)
    assert value(m, "workspace_fsm_workspaces_watched") == 2
    assert value(m, "workspace_fsm_informer_tombstones", informer="workspaces") == 2
    assert value(m, "workspace_fsm_informer_tombstones", informer="nodeclaims") == targets["m-a"] + targets["m-b"]
    assert value(m, "workspace_fsm_adapter_cache_entries", lifecycle="workspace", cache="delivered") == 2
    assert value(m, "workspace_fsm_reconcile_passes_total", lifecycle="workspace") > passes
    assert value(m, "workspace_fsm_workspaces", state="Ready") == 1


def test_deleted_workspaces_leave_nothing_in_the_adapter_or_the_queue(cluster):
    """Removing the last finalizer deletes the object, and the watch's DELETED can beat the patch's answer:
    the adapter must not then resurrect the Workspace in its overlay (the soak found it did)."""
    names = [f"m-del-{i}" for i in range(6)]  # the race hits some deletions, not all
    for name in names:
        cluster.custom.create_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces", inference(name, 1))
    wait_for("the Workspaces at their goal", lambda: sum(
        1 for w in cluster.workspaces() if w["metadata"]["name"] in names and at_goal(w)) == len(names))
    for name in names:
        cluster.custom.delete_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces", name)
    wait_for("the deleted Workspaces gone", lambda: not any(w["metadata"]["name"] in names for w in cluster.workspaces()))
    live, m = caught_up(cluster)
    for cache in ("parsed", "overlay", "own_rv", "delivered"):
        assert value(m, "workspace_fsm_adapter_cache_entries", lifecycle="workspace", cache=cache) <= live["workspaces"], cache
    depth = sum(value(m, "workspace_fsm_queue_depth", lifecycle="workspace", state=s) for s in ("ready", "waiting", "processing"))
    assert depth <= live["workspaces"]


def test_simulated_controllers_forget_deleted_objects(cluster):
    """Their bookkeeping of scheduled steps is bounded by the live objects: deleted ones are forgotten."""
    sim = cluster.embedded.controllers

    def live() -> dict[str, int]:
        c = cluster.custom
        return {"nodeclaims": len(c.list_cluster_custom_object("karpenter.sh", "v1", "nodeclaims")["items"]),
                "workloads": sum(len(c.list_cluster_custom_object("apps", "v1", plural)["items"])
                                 for plural in ("deployments", "statefulsets"))}

    def tracked() -> dict[str, int]:
        t = sim.tracked()
        return {"nodeclaims": t.get("nodeclaims", 0), "workloads": t.get("deployments", 0) + t.get("statefulsets", 0)}

    cluster.custom.create_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces", inference("m-gc", 2))
    wait_for("m-gc at its goal", lambda: any(
        w["metadata"]["name"] == "m-gc" and at_goal(w) for w in cluster.workspaces()))
    wait_for("the simulated controllers to track exactly the live objects", lambda: tracked() == live())
    with_gc = live()
    claims = next(w for w in cluster.workspaces() if w["metadata"]["name"] == "m-gc")["status"]["targetNodeCount"]
    cluster.custom.delete_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces", "m-gc")
    # m-gc's NodeClaims and its workload go (the workload by garbage collection, a little later).
    wait_for("m-gc's objects gone", lambda: live() == {"nodeclaims": with_gc["nodeclaims"] - claims,
                                                      "workloads": with_gc["workloads"] - 1})
    wait_for("the simulated controllers to forget them", lambda: tracked() == live())
    assert tracked() == {"nodeclaims": with_gc["nodeclaims"] - claims, "workloads": with_gc["workloads"] - 1}


def test_probes_still_answer_next_to_metrics(cluster):
    assert cluster.get("/healthz") == 200
    assert cluster.get("/readyz") == 200
    assert cluster.get("/metrics?name[]=x") == 200
    assert cluster.get("/nothing-here") == 404


# --------------------------------------------------------------------------- without a cluster


class FakeInformer:
    def __init__(self, name: str, objs: list[dict]) -> None:
        self.name, self.objs, self.synced, self.relists, self.errors = name, objs, True, 1, 0
        self._tombstones: dict[str, None] = {}

    def items(self) -> list[dict]:
        return list(self.objs)


class FakeAdapter:
    def __init__(self) -> None:
        self.workspaces = FakeInformer("workspaces", [])
        self.informers = (self.workspaces, FakeInformer("jobs", []))
        self.requests = {"create NodeClaim": 2}

    def cache_sizes(self) -> dict[str, int]:
        return {"parsed": len(self.workspaces.objs)}


class FakeQueue:
    ready_count, waiting_count, processing_count = 0, 0, 0


class FakeReconciler:
    passes, transitions = 0, 0


class FakeRunner:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._threads: list[threading.Thread] = []


def test_values_are_read_at_scrape_time_and_registries_are_separate():
    a, b = FakeAdapter(), FakeAdapter()
    qa, ra = FakeQueue(), FakeReconciler()
    reg_a = build_registry([Served("workspace", a, qa, ra, FakeRunner(3))])
    # a second runner: no name clash
    reg_b = build_registry([Served("workspace", b, FakeQueue(), FakeReconciler(), FakeRunner(7))])
    first = parse(render(reg_a).decode())
    assert value(first, "workspace_fsm_queue_depth", lifecycle="workspace", state="ready") == 0
    ws = {"metadata": {"name": "x", "namespace": "ns"},
          "status": {"conditions": [{"type": "workspace-fsm/Lifecycle", "reason": "NodesProvisioning"}]}}
    a.workspaces.objs.append(ws)
    a.workspaces.objs.append({"metadata": {"name": "y", "namespace": "ns"}})
    qa.ready_count, qa.waiting_count, ra.passes = 4, 2, 9
    m = parse(render(reg_a).decode())
    assert value(m, "workspace_fsm_queue_depth", lifecycle="workspace", state="ready") == 4
    assert value(m, "workspace_fsm_queue_depth", lifecycle="workspace", state="waiting") == 2
    assert value(m, "workspace_fsm_reconcile_passes_total", lifecycle="workspace") == 9
    assert value(m, "workspace_fsm_workspaces_watched") == 2
    assert value(m, "workspace_fsm_workspaces", state="NodesProvisioning") == 1
    assert value(m, "workspace_fsm_workspaces", state="Unrecorded") == 1
    assert value(m, "workspace_fsm_adapter_cache_entries", lifecycle="workspace", cache="parsed") == 2
    assert value(m, "workspace_fsm_informer_objects", informer="jobs") == 0
    assert value(m, "workspace_fsm_api_requests_total", lifecycle="workspace", verb="create", kind="NodeClaim") == 2
    assert value(m, "workspace_fsm_workers_configured", lifecycle="workspace") == 3
    other = parse(render(reg_b).decode())
    assert value(other, "workspace_fsm_workspaces_watched") == 0
    assert value(other, "workspace_fsm_workers_configured", lifecycle="workspace") == 7
    assert "process_resident_memory_bytes" in other


def test_two_lifecycles_are_one_family_per_metric_with_a_label_each():
    """Two lifecycles that count the same thing (a hook's counter of one name) and keep their records differently
    (a condition, an annotation): one family per name, a sample per lifecycle, states read from each one's store."""
    from types import SimpleNamespace

    from workspace_fsm.engine.hooks import Counters, Hooks
    from workspace_fsm.engine.record import AnnotationStore, ConditionStore

    served = []
    for name, store in (("workspace", ConditionStore()), ("website", AnnotationStore())):
        r = FakeReconciler()
        r.lifecycle = SimpleNamespace(name=name, states=("Pending", "Ready"), record=SimpleNamespace(store=store))
        h = Hooks()
        h.counter("things_replaced", "Things replaced")
        r.hooks, r.counters = [h], Counters()
        served.append(Served(name, FakeAdapter(), FakeQueue(), r, FakeRunner(2)))
    served[1].reconciler.counters.inc("things_replaced", amount=3)
    served[0].adapter.workspaces.objs.append(
        {"metadata": {"name": "a"}, "status": {"conditions": [{"type": "workspace-fsm/Lifecycle", "reason": "Ready"}]}})
    served[1].adapter.workspaces.objs.append(
        {"metadata": {"name": "b", "annotations": {"workspace-fsm.io/lifecycle": '{"v":1,"state":"Ready"}'}}})
    text = render(build_registry(served, process=False)).decode()
    assert text.count("# HELP workspace_fsm_things_replaced_total ") == 1
    assert text.count("# HELP workspace_fsm_queue_depth ") == 1
    m = parse(text)
    assert value(m, "workspace_fsm_things_replaced_total", lifecycle="workspace") == 0
    assert value(m, "workspace_fsm_things_replaced_total", lifecycle="website") == 3
    for lc in ("workspace", "website"):
        assert value(m, "workspace_fsm_resources", lifecycle=lc, state="Ready") == 1
        assert value(m, "workspace_fsm_resources", lifecycle=lc, state="Pending") == 0
        assert value(m, "workspace_fsm_workers_configured", lifecycle=lc) == 2
    # The same shared informer seen through two adapters is reported once.
    served[1].adapter.informers = served[0].adapter.informers
    m = parse(render(build_registry(served, process=False)).decode())
    assert set(m["workspace_fsm_informer_objects"]) == {(("informer", "workspaces"),), (("informer", "jobs"),)}


# --------------------------------------------------------------------------- the soak's judgement


def load_soak():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"
    spec = importlib.util.spec_from_file_location("soak", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def sample(soak, t: float, *, rss: float, threads: int = 14, fds: int = 14, sockets: int = 9, ws: int = 20,
           nodeclaims: int = 30, cache_nodeclaims: int | None = None, phase: str = "steady") -> dict:
    return {"t": t, "phase": phase, "rss": rss, "threads": threads, "fds": fds, "sockets": sockets,
            "worker_threads": 5, "workers_configured": 5,
            "queue": {"ready": 0, "waiting": ws // 4, "processing": 0},
            "live": {"workspaces": ws, "nodeclaims": nodeclaims, "nodes": nodeclaims, "deployments": ws // 2,
                     "statefulsets": 0, "jobs": ws // 4, "all_nodeclaims": nodeclaims},
            "informer_objects": {"workspaces": ws, "nodeclaims": nodeclaims if cache_nodeclaims is None
                                 else cache_nodeclaims},
            "adapter_caches": {"parsed": ws, "delivered": ws, "overlay": 0, "own_rv": 0, "known": 0},
            "sim_tracked": {"nodeclaims": nodeclaims}}


def test_soak_slope_is_per_minute_and_exact_on_a_line():
    soak = load_soak()
    assert soak.slope_per_min([(0, 5.0), (30, 6.0), (60, 7.0), (90, 8.0)]) == pytest.approx(2.0)
    assert soak.slope_per_min([(10, 3.0)]) == 0.0
    assert soak.slope_per_min([(10, 3.0), (10, 4.0)]) == 0.0


def test_soak_checks_pass_flat_runs_and_fail_leaks():
    soak = load_soak()
    mib = soak.MIB
    base = sample(soak, 0, rss=80 * mib, phase="before")
    flat = [sample(soak, t, rss=(80 + (0.1 if t % 10 else -0.1)) * mib) for t in range(5, 125, 5)]
    slopes, checks = soak.evaluate(flat, base, sample(soak, 130, rss=80 * mib, phase="final"))
    assert all(c["ok"] for c in checks), [c for c in checks if not c["ok"]]
    assert abs(slopes["rss_mib_per_min"]) < 0.2

    leaking = [sample(soak, t, rss=(80 + 3 * t / 60) * mib, threads=14 + t // 20) for t in range(5, 125, 5)]
    slopes, checks = soak.evaluate(leaking, base, sample(soak, 130, rss=86 * mib, threads=20, phase="final"))
    failed = {c["check"] for c in checks if not c["ok"]}
    assert slopes["rss_mib_per_min"] == pytest.approx(3.0)
    assert "rss_mib slope per minute (absolute)" in failed
    assert "threads slope per minute (absolute)" in failed
    assert "threads after the churn minus baseline" in failed
    assert "caches never exceed the live objects (+allowance)" not in failed

    grown = flat[:-1] + [sample(soak, 125, rss=80 * mib, cache_nodeclaims=30 + 4)]
    _, checks = soak.evaluate(grown, base, sample(soak, 130, rss=80 * mib, phase="final"))
    excess = next(c for c in checks if c["check"] == "caches never exceed the live objects (+allowance)")
    assert not excess["ok"]
    assert excess["detail"] == "informer nodeclaims: over in 1 samples from t=125s, worst 34 entries for 30 live at t=125s"


    short = [sample(soak, t, rss=(80 + 3 * t / 60) * mib) for t in range(5, 30, 5)] * 1
    short = short + [sample(soak, 30, rss=81.5 * mib)]
    slopes, checks = soak.evaluate(short, base, sample(soak, 35, rss=81.5 * mib, phase="final"))
    rss = next(c for c in checks if c["check"] == "rss_mib slope per minute (absolute)")
    assert rss["ok"] is None and rss["detail"].startswith("not judged: the steady window is 25s")
