"""A mixed population on the simulated cluster: Workspaces and RAGEngines (and any declared lifecycle), each with
its own controller, on one virtual clock."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from workspace_fsm.adapters.simulated.cluster import SimCluster
from workspace_fsm.adapters.simulated.documents import ragengine_document
from workspace_fsm.adapters.simulated.harness import run_mode
from workspace_fsm.adapters.simulated.params import Latencies, LatencyRange, Scenario, SimParams
from workspace_fsm.adapters.simulated.population import Controller, lifecycle_adapter, run_controllers
from workspace_fsm.engine.queue import WorkQueue
from workspace_fsm.engine.runner import FsmReconciler, VirtualClock, VirtualTimeRunner
from workspace_fsm.kaito.ragengine import LABEL_RAGENGINE, RAGENGINE, RAGENGINE_SUCCEEDED

ROOT = Path(__file__).resolve().parents[1]
MIXED = ROOT / "examples" / "scenarios" / "mixed-rag.yaml"


@pytest.fixture(scope="module")
def mixed_fsm():
    sc = Scenario.from_yaml(MIXED)
    made: list[SimCluster] = []
    orig = SimCluster.__init__

    def keep(self, *a, **k):
        orig(self, *a, **k)
        made.append(self)

    SimCluster.__init__ = keep  # type: ignore[method-assign]
    try:
        result = run_mode(sc, "fsm")
    finally:
        SimCluster.__init__ = orig  # type: ignore[method-assign]
    return sc, result, made[0]


def test_the_mixed_scenario_takes_both_lifecycles_to_their_goals(mixed_fsm) -> None:
    sc, r, cluster = mixed_fsm
    assert sc.workspaces == 100 and sc.ragengines == 40
    assert r["settled"] and r["resources"] == 140 and r["workspaces"] == 100
    assert r["nodeclaims_over_target_max"] == 0
    ws, rag = r["lifecycles"]["workspace"], r["lifecycles"]["ragengine"]
    assert (ws["resources"], rag["resources"]) == (100, 40)
    assert ws["reached_goal"] + rag["reached_goal"] == r["reached_goal"]
    assert rag["reached_goal"] == 40 and ws["reached_goal"] == 100
    # States entered: every RAGEngine went through Deploying to Ready; only those with compute provisioned nodes.
    with_compute = sum(1 for k, rec in cluster.records.items() if rec.kind == "RAGEngine" and rec.nodes)
    assert 0 < with_compute < 40
    assert rag["states_entered"]["Ready"] == rag["states_entered"]["Deploying"] == 40
    assert rag["states_entered"]["NodesProvisioning"] == rag["states_entered"]["PluginsReady"] == with_compute
    assert rag["states_entered"]["Deleting"] == rag["states_now"]["(removed)"] > 0
    assert ws["states_entered"]["WorkloadDeploying"] == 100
    assert rag["time_to_goal_p50_s"] <= rag["time_to_goal_p95_s"] <= rag["time_to_goal_max_s"]


def test_per_lifecycle_api_calls_add_up_to_the_clusters(mixed_fsm) -> None:
    _, r, _ = mixed_fsm
    ws, rag = r["lifecycles"]["workspace"], r["lifecycles"]["ragengine"]
    total = {k: ws["api_calls"].get(k, 0) + rag["api_calls"].get(k, 0) for k in r["api_calls"]}
    assert total == r["api_calls"]
    assert ws["api_writes"] + rag["api_writes"] == r["api_writes"]
    # Both create Services: a RAGEngine its one, each inference Workspace KAITO's Service and headless Service.
    assert "create Service" in rag["api_calls"]
    assert ws["api_calls"]["create Service"] == 2 * ws["states_entered"]["WorkloadDeploying"]
    assert all("RAGEngine" not in k for k in ws["api_calls"]) and all("Workspace" not in k for k in rag["api_calls"])
    assert rag["reconciles"] + ws["reconciles"] == r["reconciles"]
    assert rag["nodeclaims_created"] + ws["nodeclaims_created"] == r["nodeclaims_created"]


def test_ragengines_end_as_kaito_says_and_deleted_ones_leave_nothing(mixed_fsm) -> None:
    _, _, cluster = mixed_fsm
    rags = cluster._objs["RAGEngine"]
    assert rags
    for key, doc in rags.items():
        rec = cluster.records["RAGEngine:" + key]
        conds = {c["type"]: c for c in doc["status"]["conditions"]}
        assert conds[RAGENGINE_SUCCEEDED]["status"] == "True", (key, conds)
        assert conds["ServiceReady"]["status"] == "True"
        # with compute: exactly compute.count NodeClaims, labelled for it; retrieve-only: none
        claims = [c for c in cluster.truth.nodeclaims.values() if c.workspace_key == "RAGEngine:" + key]
        assert len(claims) == rec.nodes
        assert cluster.object("Deployment", key) is not None and cluster.object("Service", key) is not None
    removed = [rec.key.split(":", 1)[1] for rec in cluster.records.values()
               if rec.kind == "RAGEngine" and rec.removed_at is not None]
    assert removed
    owners = {c.workspace_key for c in cluster.truth.nodeclaims.values()}
    for key in removed:
        assert key not in rags
        assert cluster.object("Deployment", key) is None and cluster.object("Service", key) is None
        assert "RAGEngine:" + key not in owners


def test_adding_ragengines_leaves_every_workspace_draw_unchanged() -> None:
    base = attrs.evolve(Scenario.default(), workspaces=15)
    alone = SimCluster(base)
    mixed = SimCluster(attrs.evolve(base, ragengines=10))
    assert [(k, r.created_at) for k, r in alone.records.items()] == \
        [(k, r.created_at) for k, r in mixed.records.items() if r.kind == "Workspace"]
    a = run_mode(base, "fsm")
    b = run_mode(attrs.evolve(base, ragengines=10), "fsm")
    assert b["lifecycles"]["workspace"]["api_calls"] == a["api_calls"]
    assert b["lifecycles"]["workspace"]["reached_goal"] == a["reached_goal"] == 15
    assert b["lifecycles"]["workspace"]["time_to_goal_max_s"] == a["time_to_goal_max_s"]


def _one_controller(sc: Scenario, several: bool):
    cluster = SimCluster(sc)
    clock = VirtualClock()
    queue: WorkQueue[str] = WorkQueue(clock)
    cluster.set_event_handler(queue.add)
    rec = FsmReconciler(cluster, clock, api_latency_s=cluster.api_latency_s,
                        call_counter=lambda: cluster.api_call_count, epoch=cluster.to_datetime(0.0), writer_id="sim")
    if several:
        stats = run_controllers([Controller("workspace", rec, queue, 5)], cluster, clock, cluster.settled, 1e6)
    else:
        stats = VirtualTimeRunner(rec, queue, cluster, clock, workers=5).run(cluster.settled, 1e6)
    return cluster.trace, stats.passes, stats.busy_s, stats.end_s


def test_the_manager_loop_with_one_controller_takes_the_runners_steps() -> None:
    sc = attrs.evolve(Scenario.from_yaml(ROOT / "examples" / "scenarios" / "mixed-churn.yaml"), workspaces=40)
    assert _one_controller(sc, True) == _one_controller(sc, False)


def test_stale_caches_never_give_a_ragengine_an_extra_nodeclaim() -> None:
    sc = Scenario.from_data({"workspaces": 0, "ragengines": 30, "ragengine_compute_share": 1.0, "ragengine_nodes": 3,
                             "seed": 5, "params": {"cache_lag_s": 30, "instance_unavailable_rate": 0.1}})
    r = run_mode(sc, "fsm")
    rag = r["lifecycles"]["ragengine"]
    assert r["settled"] and rag["reached_goal"] == 30
    assert r["nodeclaims_over_target_max"] == 0
    assert rag["api_calls"]["delete NodeClaim"] > 0  # failed launches were replaced, never one too many


def _fixed() -> SimParams:
    lat = {k: LatencyRange(v, v) for k, v in dict(nodeclaim_launched=30, nodeclaim_registered=200,
                                                   nodeclaim_initialized=20, nodeclaim_ready=10, gpu_plugin=60,
                                                   workload_rollout=300, owner_gc=2).items()}
    return SimParams(latencies=Latencies(**lat))


def _drive(cluster: SimCluster, adapter, horizon: float = 5000.0) -> Controller:
    clock = VirtualClock(cluster.now)
    queue: WorkQueue[str] = WorkQueue(clock)
    adapter.set_event_handler(queue.add)
    rec = FsmReconciler(adapter, clock, api_latency_s=0.01, call_counter=lambda: cluster.api_call_count,
                        epoch=cluster.to_datetime(0.0), writer_id="t")
    c = Controller(adapter.name, rec, queue, 2)
    run_controllers([c], cluster, clock, cluster.settled, horizon)
    return c


def test_a_ragengine_with_compute_waits_for_its_nodes_then_deploys_on_exact_times() -> None:
    cluster = SimCluster(params=_fixed(), seed=3)
    adapter = lifecycle_adapter(cluster, RAGENGINE)
    key = cluster.create_resource("RAGEngine", ragengine_document("rag-a", compute=True, count=2), nodes=2,
                                  lifecycle="ragengine")
    _drive(cluster, adapter)
    rec = cluster.records["RAGEngine:" + key]
    # nodes Ready at 230 s, GPU capacity at 290 s, seen by the 5 s GPU re-check (Nodes do not wake it), then the
    # Deployment's 300 s rollout: the goal within a re-check (and a few API calls) of 590 s.
    assert rec.chain == pytest.approx(590.0)
    assert 590.0 <= rec.first_goal_at <= 596.0
    dep = cluster.object("Deployment", key)
    assert dep["metadata"]["ownerReferences"][0]["kind"] == "RAGEngine"
    assert dep["spec"]["template"]["metadata"]["labels"][LABEL_RAGENGINE] == "rag-a"
    assert len([c for c in cluster.truth.nodeclaims.values() if c.workspace_key == "RAGEngine:" + key]) == 2
    # deleted: its NodeClaims go first, then the finalizer, then garbage collection takes Deployment and Service
    cluster.delete_resource("RAGEngine", key)
    _drive(cluster, adapter)
    assert cluster.object("RAGEngine", key) is None
    assert not cluster.truth.nodeclaims
    assert cluster.object("Deployment", key) is not None  # until the garbage collector comes (2 s here)
    cluster.advance_to(cluster.now + 2.0)
    assert cluster.object("Deployment", key) is None and cluster.object("Service", key) is None


def test_a_retrieve_only_ragengine_creates_no_nodeclaim() -> None:
    cluster = SimCluster(params=_fixed(), seed=3)
    adapter = lifecycle_adapter(cluster, RAGENGINE)
    key = cluster.create_resource("RAGEngine", ragengine_document("rag-b", compute=False), lifecycle="ragengine")
    _drive(cluster, adapter)
    rec = cluster.records["RAGEngine:" + key]
    assert rec.first_goal_at == pytest.approx(300.0, abs=0.2)
    assert not cluster.truth.nodeclaims
    assert cluster.api_calls_by["ragengine"].get("create NodeClaim") is None


def test_an_authors_lifecycle_runs_on_the_simulated_cluster_from_its_declaration() -> None:
    spec = importlib.util.spec_from_file_location("website_example", ROOT / "examples" / "website" / "website.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cluster = SimCluster(params=_fixed(), seed=3)
    adapter = lifecycle_adapter(cluster, mod.WEBSITE)
    doc = {"apiVersion": "tutorial.example.com/v1", "kind": "Website", "metadata": {"name": "hello"},
           "spec": {"message": "hi", "replicas": 2}}
    key = cluster.create_resource("Website", doc, lifecycle="website")
    c = _drive(cluster, adapter)
    site = cluster.object("Website", key)
    assert site["status"]["phase"] == "Ready"
    assert cluster.records["Website:" + key].first_goal_at == pytest.approx(300.0, abs=0.2)
    assert cluster.object("ConfigMap", "default/hello-page")["data"] == {"index.html": "hi"}
    assert c.stats.passes < 20
    # a spec change makes a new Deployment generation, which rolls out again
    cluster.write_resource("Website", key, {**site, "spec": {"message": "hello", "replicas": 2},
                                            "metadata": {**site["metadata"], "generation": 2}})
    cluster.records["Website:" + key].generation = 2
    _drive(cluster, adapter, horizon=10000.0)
    assert cluster.object("Deployment", key)["metadata"]["generation"] == 2
    assert cluster.object("Website", key)["status"]["phase"] == "Ready"
    assert 2 in cluster.records["Website:" + key].goals


def test_simulate_cli_runs_a_mixed_population() -> None:
    p = subprocess.run([sys.executable, "-m", "workspace_fsm.cli", "simulate", "--workspaces", "6", "--ragengines",
                        "4", "--mode", "fsm", "--json"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["ragengines"] == 4 and d["workspaces"] == 6
    lc = d["results"]["fsm"]["lifecycles"]
    assert lc["ragengine"]["resources"] == 4 and lc["ragengine"]["reached_goal"] == 4
    assert lc["workspace"]["reached_goal"] == 6
    p = subprocess.run([sys.executable, "-m", "workspace_fsm.cli", "simulate", "--workspaces", "3", "--ragengines",
                        "2", "--mode", "poller"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "per lifecycle" in p.stdout and "ragengine" in p.stdout and "poller" in p.stdout


def test_a_mixed_population_under_faults_settles_deterministically_without_extra_nodeclaims() -> None:
    sc = Scenario.from_data({
        "workspaces": 30, "ragengines": 30, "ragengine_nodes": [1, 3], "ragengine_compute_share": 0.7,
        "arrival": "spread", "arrival_window_s": 600, "delete_share": 0.3, "seed": 11,
        "params": {"cache_lag_s": 10, "api_error_rate": 0.05, "instance_unavailable_rate": 0.1,
                   "never_ready_rate": 0.05, "workload_failure_rate": 0.2}})
    a, b = run_mode(sc, "fsm"), run_mode(sc, "fsm")
    for r in (a, b):
        r.pop("wall_s")
        r.pop("_goals")
    assert a == b
    assert a["settled"] and a["nodeclaims_over_target_max"] == 0
    rag = a["lifecycles"]["ragengine"]
    # some never get there (a workload failure that does not recover), but every one was deleted or is waiting
    assert rag["states_now"].get("(removed)", 0) + rag["states_now"].get("Ready", 0) + \
        rag["states_now"].get("Deploying", 0) == 30
    assert rag["api_calls"]["delete NodeClaim"] > 0 and rag["states_entered"]["Deleting"] > 0
