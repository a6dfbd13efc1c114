"""One runner, several lifecycles: the informers are shared (one list and one watch per resource for the whole
process), each lifecycle still sees only its own objects, and /metrics serves every lifecycle's figures."""

from __future__ import annotations

import argparse
import socket
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from prometheus_client.parser import text_string_to_metric_families

from workspace_fsm.adapters.kubernetes.cache import InformerView, SharedInformers, custom_lister, label_matcher
from workspace_fsm.adapters.kubernetes.client import api_client
from workspace_fsm.cli.embedded import EmbeddedCluster
from workspace_fsm.cli.run import run_against

RUNNER = "the-runner"  # the user the runner authenticates as: its requests are told apart from the simulated cluster's


def wait_for(what: str, check: Any, timeout: float = 90.0, describe: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (f": {describe()}" if describe else ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def workspace(name: str) -> dict[str, Any]:
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name},
            "resource": {"count": 1, "instanceType": "Standard_NC24ads_A100_v4",
                         "labelSelector": {"matchLabels": {"apps": name}}},
            "inference": {"preset": {"name": "phi-4-mini-instruct"}}}


def ragengine(kaito_dir: Path, name: str) -> dict[str, Any]:
    doc = yaml.safe_load((kaito_dir / "examples" / "rag" / "kaito_ragengine_phi_3.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["inferenceService"]["url"] = "http://workspace-phi-3.default.svc.cluster.local/v1/chat/completions"
    return doc


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or () if c["type"] == type_), None)


def at_goal(obj: dict[str, Any], type_: str) -> bool:
    c = condition(obj, type_)
    return c is not None and c["status"] == "True" and c.get("observedGeneration") == obj["metadata"]["generation"]


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = metrics_text(port)
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory, kaito_dir):
    """The embedded cluster (it serves Workspaces and RAGEngines) and ``workspace-fsm run`` driving both, as a user
    of its own; one Workspace and one RAGEngine taken to their goals."""
    tmp = tmp_path_factory.mktemp("shared")
    cluster = EmbeddedCluster(time_scale=300.0)
    cluster.start(tmp / "admin")
    server = cluster.server
    server.add_token("runner-token", RUNNER, ["system:masters"])
    api = api_client(str(server.write_kubeconfig(tmp / "runner", token="runner-token")))
    port = free_port()
    stop = threading.Event()
    args = argparse.Namespace(namespace=None, workers=3, health_port=port, api_request_timeout=cluster.request_timeout,
                              lifecycles=None)  # none named: every built-in whose CRD the cluster serves
    thread = threading.Thread(target=run_against, args=(api, args, stop), daemon=True)
    thread.start()
    custom = k8s.CustomObjectsApi(cluster.api)
    custom.create_namespaced_custom_object("kaito.sh", "v1beta1", "default", "workspaces", workspace("ws-a"))
    doc = ragengine(kaito_dir, "rag-a")
    custom.create_namespaced_custom_object("kaito.sh", doc["apiVersion"].split("/")[1], "default", "ragengines", doc)
    def get(plural: str, name: str) -> dict[str, Any]:
        return dict(custom.get_namespaced_custom_object("kaito.sh", "v1beta1", "default", plural, name))

    def conditions(plural: str, name: str) -> Any:
        return [(c["type"], c["status"], c.get("reason"), c.get("message"))
                for c in (get(plural, name).get("status") or {}).get("conditions") or ()]

    wait_for("the Workspace at its goal", lambda: at_goal(get("workspaces", "ws-a"), "WorkspaceSucceeded"),
             describe=lambda: conditions("workspaces", "ws-a"))
    wait_for("the RAGEngine at its goal", lambda: at_goal(get("ragengines", "rag-a"), "RAGEngineSucceeded"),
             describe=lambda: conditions("ragengines", "rag-a"))
    yield cluster, port
    stop.set()
    thread.join(20)
    cluster.stop()


def runner_requests(cluster: EmbeddedCluster, verb: str) -> Counter[str]:
    return Counter({res: n for (user, v, res), n in list(cluster.server.requests_by_user.items())
                    if user == RUNNER and v == verb})


def test_both_lifecycles_share_one_list_and_one_watch_per_resource(run):
    cluster, _ = run
    lists, watches = runner_requests(cluster, "list"), runner_requests(cluster, "watch")
    print(f"\nrunner's lists by resource: {dict(sorted(lists.items()))}\nwatches: {dict(sorted(watches.items()))}")
    # Both lifecycles own NodeClaims, Deployments and Services and watch Nodes: one informer each for the runner.
    for shared in ("nodeclaims", "nodes", "deployments", "services"):
        assert lists[shared] == 1 and watches[shared] == 1, (shared, lists, watches)
    # Every resource is watched once; each is listed once, but RAGEngines, which the runner also lists once (with
    # limit=1) at start to learn whether the cluster serves them.
    assert set(watches) == set(lists) and all(n == 1 for n in watches.values()), watches
    assert {r: n for r, n in lists.items() if n != 1} == {"ragengines": 2}, lists
    assert {"workspaces", "ragengines", "statefulsets", "jobs", "services"} <= set(watches)


def test_each_lifecycle_still_sees_only_its_own_children(run):
    cluster, _ = run
    custom = k8s.CustomObjectsApi(cluster.api)
    claims = custom.list_cluster_custom_object("karpenter.sh", "v1", "nodeclaims")["items"]
    owners = Counter(next(k for k in ("kaito.sh/workspace", "kaito.sh/ragengine") if k in c["metadata"]["labels"])
                     for c in claims)
    assert owners == {"kaito.sh/workspace": 1, "kaito.sh/ragengine": 1}  # one each, nobody took the other's


PER_LIFECYCLE = ("workspace_fsm_queue_depth", "workspace_fsm_reconcile_passes_total", "workspace_fsm_transitions_total",
                 "workspace_fsm_resources_watched", "workspace_fsm_resources", "workspace_fsm_adapter_cache_entries",
                 "workspace_fsm_api_requests_total", "workspace_fsm_worker_threads", "workspace_fsm_workers_configured")


def test_metrics_serve_every_lifecycle_with_its_label_and_each_shared_informer_once(run):
    cluster, port = run
    text = metrics_text(port)
    m = scrape(port)
    for family in PER_LIFECYCLE:
        assert {dict(labels).get("lifecycle") for labels in m[family]} == {"workspace", "ragengine"}, family
        assert text.count(f"# HELP {family} ") == 1, family  # one family, both lifecycles' samples in it

    def v(name: str, **labels: str) -> float:
        return m[name][tuple(sorted(labels.items()))]

    for lc in ("workspace", "ragengine"):
        assert v("workspace_fsm_resources_watched", lifecycle=lc) == 1
        assert v("workspace_fsm_resources", lifecycle=lc, state="Ready") == 1
        assert v("workspace_fsm_reconcile_passes_total", lifecycle=lc) >= 3
        assert v("workspace_fsm_transitions_total", lifecycle=lc) >= 3
        assert v("workspace_fsm_api_requests_total", lifecycle=lc, verb="create", kind="NodeClaim") >= 1
        assert v("workspace_fsm_workers_configured", lifecycle=lc) == 3
        assert v("workspace_fsm_worker_threads", lifecycle=lc) == 3
    # The first release's names still serve the Workspace lifecycle's figures.
    assert v("workspace_fsm_workspaces_watched") == 1 and v("workspace_fsm_workspaces", state="Ready") == 1
    # The informers are the process's: one series each, holding both lifecycles' NodeClaims.
    assert [labels for labels in m["workspace_fsm_informer_objects"] if dict(labels)["informer"] == "nodeclaims"] == [
        (("informer", "nodeclaims"),)]
    assert v("workspace_fsm_informer_objects", informer="nodeclaims") == 2
    assert v("workspace_fsm_informer_objects", informer="ragengines") == 1


# --------------------------------------------------------------------------- the cache without a server


class FakeList:
    """A list function that is never called (the informers are not started)."""

    def __init__(self, namespace: str | None) -> None:
        self.namespace = namespace

    def __call__(self, **kw: Any) -> Any:
        raise AssertionError("not started")


def lister(namespace: str | None) -> tuple[Any, Any]:
    return FakeList(namespace), lambda o: o


def obj(name: str, labels: dict[str, str], namespace: str | None = "default") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels, "resourceVersion": "1"}
    if namespace:
        meta["namespace"] = namespace
    return {"metadata": meta}


def fill(view: InformerView, *objs: dict[str, Any]) -> None:
    """Put objects in the shared informer as its watch would (without a server), telling its handlers."""
    inf = view.informer
    with inf._lock:
        for o in objs:
            key = f"{o['metadata'].get('namespace')}/{o['metadata']['name']}" if o["metadata"].get("namespace") \
                else o["metadata"]["name"]
            prev = inf._store.get(key)
            inf._store[key] = o
            inf._index_put(key, o)
            inf._notify("ADDED" if prev is None else "MODIFIED", prev, o)


def test_equal_requests_share_and_different_selectors_widen_to_every_object_filtered_per_view():
    cache = SharedInformers()
    res = ("karpenter.sh", "v1", "nodeclaims")
    ws = cache.informer(res, lister, name="nodeclaims", label_selector="kaito.sh/workspace", user="workspace")
    ws2 = cache.informer(res, lister, name="nodeclaims", label_selector="kaito.sh/workspace", user="other")
    assert ws.informer is ws2.informer and ws.informer.label_selector == "kaito.sh/workspace"
    assert cache.widened() == []  # it lists exactly what both select
    rag = cache.informer(res, lister, name="nodeclaims", label_selector="kaito.sh/ragengine", user="ragengine")
    assert rag.informer is ws.informer and len(cache.informers) == 1
    assert ws.informer.label_selector is None  # no label selector says "one key or the other": every object
    assert cache.describe() == ["nodeclaims (all namespaces, every object) for workspace, other, ragengine"]
    assert cache.widened() == [
        "nodeclaims: one cache each for workspace (kaito.sh/workspace) and other (kaito.sh/workspace) and ragengine "
        "(kaito.sh/ragengine), holding every object of its kind; to cache less, run these lifecycles in separate "
        "processes (workspace-fsm run --lifecycle NAME)"]
    seen: dict[str, list[tuple[str, Any, Any]]] = {"ws": [], "rag": []}
    ws.add_handler(lambda t, o, n: seen["ws"].append((t, o and o["metadata"]["name"], n and n["metadata"]["name"])))
    rag.add_handler(lambda t, o, n: seen["rag"].append((t, o and o["metadata"]["name"], n and n["metadata"]["name"])))
    # Both lifecycles index by "owner": each view's index is its own.
    ws.add_index("owner", lambda o: o["metadata"]["labels"].get("kaito.sh/workspace"))
    rag.add_index("owner", lambda o: o["metadata"]["labels"].get("kaito.sh/ragengine"))
    with pytest.raises(ValueError, match="already exists"):
        ws.add_index("owner", lambda o: None)
    a, b, c = (obj("a", {"kaito.sh/workspace": "w"}, None), obj("b", {"kaito.sh/ragengine": "r"}, None),
               obj("c", {"karpenter.sh/nodepool": "default"}, None))
    fill(ws, a, b, c)
    assert [o["metadata"]["name"] for o in ws.items()] == ["a"]
    assert [o["metadata"]["name"] for o in rag.items()] == ["b"]
    assert ws.get("b") is None and rag.get("b") is b and ws.get("c") is None and rag.get("c") is None
    assert ws.by_index("owner", "w") == [a] and rag.by_index("owner", "r") == [b] and rag.by_index("owner", "w") == []
    assert seen == {"ws": [("ADDED", None, "a")], "rag": [("ADDED", None, "b")]}
    # An object relabelled from one owner to the other leaves one view (DELETED) and enters the other (ADDED).
    moved = obj("a", {"kaito.sh/ragengine": "r2"}, None)
    fill(ws, moved)
    assert seen["ws"][-1] == ("DELETED", "a", None) and seen["rag"][-1] == ("ADDED", None, "a")
    assert ws.by_index("owner", "w") == [] and rag.by_index("owner", "r2") == [moved]


def test_namespaces_widen_to_all_and_a_started_informer_is_never_widened():
    cache = SharedInformers()
    res = ("apps", "v1", "deployments")
    in_a = cache.informer(res, lister, name="deployments", namespace="a", label_selector="x", user="one")
    assert in_a.informer._list_fn.namespace == "a"
    everywhere = cache.informer(res, lister, name="deployments", label_selector="x", user="other")
    assert everywhere.informer is in_a.informer and in_a.informer._list_fn.namespace is None
    assert cache.widened() == ["deployments: one cache each for one (x in namespace a) and other (x), holding what x "
                               "selects in every namespace; to cache less, run these lifecycles in separate "
                               "processes (workspace-fsm run --lifecycle NAME)"]
    fill(in_a, obj("d1", {"x": "1"}, "a"), obj("d2", {"x": "1"}, "b"), obj("d3", {"x": "2"}, "c"))
    assert [o["metadata"]["name"] for o in in_a.items()] == ["d1"]
    assert in_a.get("b/d2") is None and everywhere.get("b/d2") is not None
    assert [o["metadata"]["name"] for o in everywhere.items()] == ["d1", "d2", "d3"]
    # Started (without a server: its thread fails and retries quietly, its list is never replaced).
    cache._started = True
    for entries in cache._entries.values():
        for e in entries:
            e.started = True
    covered = cache.informer(res, lister, name="deployments", namespace="b", label_selector="x")
    assert covered.informer is in_a.informer  # served by the one that covers it
    other = cache.informer(res, lister, name="deployments", label_selector="y")  # would need widening: its own
    other.informer.stop()
    assert other.informer is not in_a.informer and other.informer.label_selector == "y"
    assert len(cache.informers) == 2


@pytest.mark.parametrize(("selector", "labels", "expected"), [
    ("k", {"k": ""}, True), ("k", {}, False), ("!k", {}, True), ("!k", {"k": "1"}, False),
    ("k=v", {"k": "v"}, True), ("k==v", {"k": "w"}, False), ("k!=v", {}, True), ("k!=v", {"k": "v"}, False),
    ("k in (a, b),j", {"k": "b", "j": "1"}, True), ("k in (a,b),j", {"k": "b"}, False),
    ("k notin (a,b)", {"k": "c"}, True), ("k notin (a,b)", {"k": "a"}, False),
])
def test_label_matcher_agrees_with_the_api_servers_selectors(selector, labels, expected):
    from workspace_fsm.testing.selectors import parse_label_selector

    match = label_matcher(selector)
    assert match is not None
    assert match(labels) is expected is parse_label_selector(selector).matches(labels)


def test_a_selector_the_cache_cannot_evaluate_is_shared_only_when_equal():
    assert label_matcher("size>3") is None
    cache = SharedInformers()
    res = ("", "v1", "nodes")
    odd = cache.informer(res, lister, name="nodes", label_selector="size>3")
    same = cache.informer(res, lister, name="nodes", label_selector="size>3")
    plain = cache.informer(res, lister, name="nodes", label_selector="k")
    assert same.informer is odd.informer and plain.informer is not odd.informer
    assert odd.informer.label_selector == "size>3" and plain.informer.label_selector == "k"


def test_custom_lister_lists_in_a_namespace_or_everywhere():
    calls: list[tuple[Any, ...]] = []

    class Custom:
        def list_namespaced_custom_object(self, *a: Any, **k: Any) -> Any:
            calls.append(("ns", *a))

        def list_cluster_custom_object(self, *a: Any, **k: Any) -> Any:
            calls.append(("all", *a))

    for ns in ("a", None):
        fn, to_dict = custom_lister(Custom(), "g", "v1", "things")(ns)
        fn(limit=1)
        assert "return: object" in (fn.__doc__ or "") and to_dict({"x": 1}) == {"x": 1}
    assert calls == [("ns", "g", "v1", "a", "things"), ("all", "g", "v1", "things")]
