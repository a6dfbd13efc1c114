"""Least privilege, proved against the test API server with authentication and RBAC on.

The runner (``run_against``: the code of ``workspace-fsm run`` once its kubeconfig is loaded) authenticates
with a ServiceAccount token bound by a ClusterRoleBinding to a ClusterRole holding exactly the rules of
``deploy/rbac.yaml``. It takes every KAITO example (the Workspaces of ``examples/inference`` and
``examples/fine-tuning``, the RAGEngines of ``examples/rag``) through its whole lifecycle, creation to goal to
deletion, and the server answers none of its requests 403. Then each verb of each resource of each rule is
removed in turn (the granularity at which RBAC grants: a rule is only a bundle of (group, resource, verb)
grants, so a rule can be needed while one of its verbs is not): every removal is answered with a 403 the server
records for exactly that verb and resource, and the lifecycle that needs it does not complete.

The simulated Karpenter, device plugin and workload controllers act with the admin token (they stand for the
cluster, not for the runner).
"""

from __future__ import annotations

import argparse
import copy
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from workspace_fsm.adapters.kubernetes.client import api_client
from workspace_fsm.cli.embedded import EmbeddedCluster
from workspace_fsm.cli.run import run_against

RBAC_YAML = Path(__file__).resolve().parents[1] / "deploy" / "rbac.yaml"
SA_NAMESPACE, SA_NAME = "kaito-workspace", "workspace-fsm"
RAG_URL = "http://workspace-phi-3.{ns}.svc.cluster.local/v1/chat/completions"
TIME_SCALE = 300.0


def deploy_rules() -> list[dict]:
    docs = list(yaml.safe_load_all(RBAC_YAML.read_text()))
    (role,) = [d for d in docs if d and d.get("kind") == "ClusterRole"]
    return role["rules"]


def grants(rules: list[dict]) -> list[tuple[int, str, str, str]]:
    """(rule index, API group, resource, verb) for every grant of ``rules``."""
    return [(i, g, r, v) for i, rule in enumerate(rules) for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]]


def without(rules: list[dict], rule: int, resource: str, verb: str) -> list[dict]:
    """``rules`` less one verb of one resource of one rule (the rest of that rule kept)."""
    out = copy.deepcopy(rules)
    r = out[rule]
    del out[rule]
    rest = [res for res in r["resources"] if res != resource]
    if rest:
        out.append({**r, "resources": rest})
    verbs = [v for v in r["verbs"] if v != verb]
    if verbs:
        out.append({**r, "resources": [resource], "verbs": verbs})
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = EmbeddedCluster(time_scale=TIME_SCALE)
    c.tmp = tmp_path_factory.mktemp("least-privilege")
    c.kubeconfig = c.start(c.tmp / "kubeconfig")
    k8s.CoreV1Api(c.api).create_namespace({"metadata": {"name": SA_NAMESPACE}})
    yield c
    c.stop()


class Runner:
    """The runner as a ServiceAccount bound to ``rules`` (a ClusterRole and its ClusterRoleBinding)."""

    def __init__(self, c: EmbeddedCluster, name: str, rules: list[dict], namespace: str,
                 byo_nodes: bool = False) -> None:
        core, rbac = k8s.CoreV1Api(c.api), k8s.RbacAuthorizationV1Api(c.api)
        core.create_namespaced_service_account(SA_NAMESPACE, {"metadata": {"name": name}})
        rbac.create_cluster_role({"metadata": {"name": name}, "rules": rules})
        rbac.create_cluster_role_binding({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": SA_NAMESPACE}]})
        self.server = c.server
        self.user = f"system:serviceaccount:{SA_NAMESPACE}:{name}"
        kubeconfig = c.server.write_kubeconfig(c.tmp / f"{name}.kubeconfig",
                                               token=c.server.service_account_token(SA_NAMESPACE, name))
        self.api = api_client(str(kubeconfig))
        self.args = argparse.Namespace(namespace=namespace, workers=4, byo_nodes=byo_nodes, health_port=0,
                                       api_request_timeout=c.request_timeout, lifecycles=None)
        self.start()

    def start(self) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=run_against, args=(self.api, self.args, self.stop), daemon=True,
                                       name=f"runner-{self.user}")
        self.thread.start()

    def denials(self) -> list:
        return [d for d in self.server.denials if d.user == self.user]

    def used(self) -> set[tuple[str, str]]:
        return {(resource, verb) for (user, verb, resource), n in list(self.server.requests_by_user.items())
                if user == self.user and n}

    def halt(self) -> None:
        self.stop.set()
        self.thread.join(20)
        assert not self.thread.is_alive(), "the runner did not stop"

    def close(self) -> None:
        self.halt()
        self.api.close()


def wait_for(what: str, check: Callable[[], bool], timeout: float, describe: Callable[[], str] = lambda: "",
             stuck: Callable[[], object] | None = None, stall: float = 0.0) -> None:
    """Wait until ``check()`` holds, at most ``timeout`` seconds. With ``stuck``, give up early: ``stuck()``
    returns None while there is no reason to (nothing was denied), else a signature of the progress made; once
    it has not changed for ``stall`` seconds, the phase is stuck (a 403 stopped it) and waiting longer is
    pointless. A slow machine therefore gets the whole timeout, and a refused grant costs only the stall."""
    start = time.monotonic()
    last, since = None, start
    while (now := time.monotonic()) < start + timeout:
        if check():
            return
        if stuck is not None:
            sig = stuck()
            if sig is None or sig != last:
                last, since = sig, now
            elif now - since >= stall:
                raise AssertionError(f"stuck for {stall:.0f}s after a 403 waiting for {what} {describe()}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} {describe()}")


# ------------------------------------------------------------------------------------------ the objects

def example_objects(kaito_dir: Path, ns: str) -> tuple[list[dict], list[dict]]:
    """(KAITO's example Workspaces and RAGEngines, the other objects their files hold) for namespace ``ns``.
    Names reused across files get a suffix; the RAG examples' placeholder inference URL is replaced by a URL
    (as KAITO's webhook requires)."""
    lifecycles, others, seen = [], [], set()
    paths = sorted((kaito_dir / "examples").glob("*/*.yaml"))
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict):
                continue
            doc = copy.deepcopy(doc)
            doc.setdefault("metadata", {})["namespace"] = ns
            if doc.get("kind") not in ("Workspace", "RAGEngine"):
                if "." not in str(doc.get("apiVersion", "")).rpartition("/")[0]:  # built-ins (ConfigMaps, PVCs)
                    if doc.get("kind") == "Secret":  # KAITO's example holds a placeholder, not base64: filled in
                        doc["data"] = {k: "ZXhhbXBsZQ==" for k in doc.get("data") or {}}
                    if (doc["kind"], doc["metadata"]["name"]) not in seen:  # files repeat one Secret
                        others.append(doc)  # (other KAITO kinds, InferenceSet and the like, are not this runner's)
                        seen.add((doc["kind"], doc["metadata"]["name"]))
                continue
            if "accelerator" in path.name:  # bring-your-own nodes: its own test
                continue
            name, n = doc["metadata"]["name"], 2
            while (doc["kind"], name) in seen:
                name, n = f"{doc['metadata']['name']}-{n}", n + 1
            seen.add((doc["kind"], name))
            doc["metadata"]["name"] = name
            inference = (doc.get("spec") or {}).get("inferenceService")
            if doc["kind"] == "RAGEngine" and inference and "<" in str(inference.get("url", "")):
                inference["url"] = RAG_URL.format(ns=ns)
            lifecycles.append(doc)
    return lifecycles, others


def small_objects(ns: str) -> list[dict]:
    """One of each shape the runner handles: single-node inference with its inference ConfigMap and multi-node
    inference, a tuning job, a RAGEngine with a GPU node, and a retrieve-only RAGEngine."""
    def ws(name: str, body: dict, count: int = 1) -> dict:
        return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name, "namespace": ns},
                "resource": {"count": count, "instanceType": "Standard_NC48ads_A100_v4" if count > 1 else
                             "Standard_NC24ads_A100_v4",
                             "labelSelector": {"matchLabels": {"apps": name}}}, **body}
    return [
        # Its inference ConfigMap is read (get configmaps) to size it: max-model-len counts in KAITO's estimate.
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "single-params", "namespace": ns},
         "data": {"inference_config.yaml": "vllm:\n  max-model-len: 4096\n"}},
        ws("single", {"inference": {"preset": {"name": "phi-4-mini-instruct"}, "config": "single-params"}}),
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf-token", "namespace": ns},
         "data": {"HF_TOKEN": "ZXhhbXBsZQ=="}},
        ws("multi", {"inference": {"preset": {"name": "llama-3.3-70b-instruct",
                                              "presetOptions": {"modelAccessSecret": "hf-token"}}}}, count=2),
        ws("tune", {"tuning": {"preset": {"name": "phi-3-mini-128k-instruct"}, "method": "qlora",
                               "input": {"urls": ["https://example.com/data.parquet"]},
                               "output": {"image": "registry.example.com/out:1", "imagePushSecret": "push"}}}),
        {"apiVersion": "kaito.sh/v1beta1", "kind": "RAGEngine", "metadata": {"name": "rag", "namespace": ns},
         "spec": {"compute": {"instanceType": "Standard_NC6s_v3", "labelSelector": {"matchLabels": {"apps": "rag"}}},
                  "embedding": {"local": {"modelID": "BAAI/bge-small-en-v1.5"}},
                  "inferenceService": {"url": RAG_URL.format(ns=ns), "contextWindowSize": 4096}}},
        {"apiVersion": "kaito.sh/v1beta1", "kind": "RAGEngine", "metadata": {"name": "retrieve", "namespace": ns},
         "spec": {"embedding": {"local": {"modelID": "BAAI/bge-small-en-v1.5"}}}},
    ]


PLURAL = {"Workspace": ("v1beta1", "workspaces"), "RAGEngine": ("v1beta1", "ragengines")}


def create(c: EmbeddedCluster, docs: list[dict]) -> None:
    from workspace_fsm.cli.embedded import apply_file

    path = c.tmp / f"objects-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    ns = docs[0]["metadata"]["namespace"]
    lines = apply_file(c.api, str(path), namespace=ns)
    assert all(line.startswith("created ") for line in lines), lines


def lifecycle_objects(c: EmbeddedCluster, ns: str) -> dict[tuple[str, str], dict]:
    custom = k8s.CustomObjectsApi(c.api)
    out = {}
    for kind, (version, plural) in PLURAL.items():
        for item in custom.list_namespaced_custom_object("kaito.sh", version, ns, plural)["items"]:
            out[(kind, item["metadata"]["name"])] = item
    return out


def at_goal(obj: dict) -> bool:
    kind = obj["kind"]
    gen = obj["metadata"].get("generation")
    conds = {x["type"]: x for x in (obj.get("status") or {}).get("conditions") or []}
    done = conds.get(f"{kind}Succeeded")
    return done is not None and done["status"] == "True" and done.get("observedGeneration") == gen


def not_at_goal(c: EmbeddedCluster, ns: str) -> str:
    return str({f"{k}/{n}": (o.get("status") or {}).get("state") or [
        (x["type"], x["status"], x.get("reason")) for x in (o.get("status") or {}).get("conditions") or []]
        for (k, n), o in lifecycle_objects(c, ns).items() if not at_goal(o)})


def delete_all(c: EmbeddedCluster, ns: str) -> None:
    custom = k8s.CustomObjectsApi(c.api)
    for (kind, name) in lifecycle_objects(c, ns):
        version, plural = PLURAL[kind]
        try:
            custom.delete_namespaced_custom_object("kaito.sh", version, ns, plural, name)
        except ApiException as exc:
            if exc.status != 404:
                raise


def nodeclaims_of(c: EmbeddedCluster, ns: str) -> list[str]:
    items = k8s.CustomObjectsApi(c.api).list_cluster_custom_object("karpenter.sh", "v1", "nodeclaims")["items"]
    return [i["metadata"]["name"] for i in items
            if ns in ((i["metadata"].get("labels") or {}).get("kaito.sh/workspacenamespace"),
                      (i["metadata"].get("labels") or {}).get("kaito.sh/ragenginenamespace"))]


def claims_with_state(c: EmbeddedCluster, ns: str) -> list[tuple[str, str]]:
    """The namespace's NodeClaims and their Ready condition, for a failure's message."""
    items = k8s.CustomObjectsApi(c.api).list_cluster_custom_object("karpenter.sh", "v1", "nodeclaims")["items"]
    def ready(i: dict) -> str:
        conds = (i.get("status") or {}).get("conditions") or []
        return next((f"Ready={x['status']}" for x in conds if x["type"] == "Ready"), "no Ready condition")

    return [(i["metadata"]["name"], ready(i))
            for i in items if ns in ((i["metadata"].get("labels") or {}).get("kaito.sh/workspacenamespace"),
                                     (i["metadata"].get("labels") or {}).get("kaito.sh/ragenginenamespace"))]


def change_spec(c: EmbeddedCluster, ns: str) -> None:
    """A spec change of every Workspace and RAGEngine that changes what it runs (its workload or Job)."""
    custom = k8s.CustomObjectsApi(c.api)
    for (kind, name), obj in lifecycle_objects(c, ns).items():
        if kind == "Workspace":
            part = "tuning" if "tuning" in obj else "inference"
            patch = {part: {"config": f"{part}-config-v2"}}
        else:
            inference = {"url": RAG_URL.format(ns=ns).replace("phi-3", "phi-4")}
            if "inferenceService" not in obj["spec"]:  # retrieve-only until now
                inference["contextWindowSize"] = 4096
            patch = {"spec": {"inferenceService": inference}}
        custom.patch_namespaced_custom_object("kaito.sh", PLURAL[kind][0], ns, PLURAL[kind][1], name, patch)


def lose_children(c: EmbeddedCluster, ns: str) -> None:
    """An outsider deletes every NodeClaim, workload, Job and Service of the namespace's lifecycles."""
    custom, apps, core, batch = (k8s.CustomObjectsApi(c.api), k8s.AppsV1Api(c.api), k8s.CoreV1Api(c.api),
                                 k8s.BatchV1Api(c.api))
    for name in nodeclaims_of(c, ns):
        custom.delete_cluster_custom_object("karpenter.sh", "v1", "nodeclaims", name)
    apps.delete_collection_namespaced_deployment(ns)
    apps.delete_collection_namespaced_stateful_set(ns)
    batch.delete_collection_namespaced_job(ns)
    for svc in core.list_namespaced_service(ns).items:
        core.delete_namespaced_service(svc.metadata.name, ns)
    wait_for("the NodeClaims, workloads and Services gone", lambda: children(c, ns) == (0, 0, 0, 0), 30,
             lambda: str(children(c, ns)))


def children(c: EmbeddedCluster, ns: str) -> tuple[int, int, int, int]:
    """(NodeClaims but those of tuning Workspaces, Deployments, StatefulSets, Services) of namespace ``ns``.
    (A finished tuning Workspace needs no node again.)"""
    apps, core = k8s.AppsV1Api(c.api), k8s.CoreV1Api(c.api)
    tuning = {name for (kind, name), o in lifecycle_objects(c, ns).items() if kind == "Workspace" and "tuning" in o}
    claims = [n for n in nodeclaims_of(c, ns) if n.rsplit("-", 2)[0] not in tuning]
    return (len(claims), len(apps.list_namespaced_deployment(ns).items),
            len(apps.list_namespaced_stateful_set(ns).items), len(core.list_namespaced_service(ns).items))


def progress(c: EmbeddedCluster, ns: str) -> object:
    """What the lifecycles of namespace ``ns`` have reached: each object's conditions, and their children."""
    objs = lifecycle_objects(c, ns)
    return (sorted((key, sorted((x["type"], x["status"], x.get("reason")) for x in
                                (o.get("status") or {}).get("conditions") or []))
                   for key, o in objs.items()), children(c, ns), sorted(nodeclaims_of(c, ns)))


def all_at_goal(c: EmbeddedCluster, ns: str, n: int, what: str, timeout: float, **give_up) -> None:
    wait_for(what, lambda: (lambda objs: len(objs) == n and all(map(at_goal, objs.values())))(
        lifecycle_objects(c, ns)), timeout, lambda: not_at_goal(c, ns), **give_up)


def full_lifecycle(c: EmbeddedCluster, runner: Runner, ns: str, docs: list[dict], timeout: float,
                   stall: float | None = None) -> None:
    """Every phase of the lifecycles of ``docs``: created, at goal; spec changed, at goal again; their
    NodeClaims, workloads, Jobs and Services deleted while the runner is down (so that the restarted runner
    must confirm their absence by GET), at goal again; deleted, gone with their NodeClaims. Raises
    AssertionError naming the phase that did not complete within ``timeout`` seconds (or, with ``stall``,
    that made no progress for that long after the server refused the runner a request)."""
    give_up: dict = {}
    if stall is not None:
        # (A refused Event stops nothing: the runner does not wait on its Events.)
        refused = lambda: any(d.resource != "events" for d in runner.denials())  # noqa: E731
        give_up = {"stuck": lambda: progress(c, ns) if refused() else None, "stall": stall}
    create(c, docs)
    n = sum(1 for d in docs if d["kind"] in PLURAL)
    all_at_goal(c, ns, n, "every Workspace and RAGEngine at its goal", timeout, **give_up)
    change_spec(c, ns)
    all_at_goal(c, ns, n, "every Workspace and RAGEngine at its goal after a spec change", timeout, **give_up)
    before = children(c, ns)
    runner.halt()
    lose_children(c, ns)
    runner.start()
    wait_for("the lost NodeClaims, workloads and Services replaced", lambda: children(c, ns) == before, timeout,
             lambda: f"{children(c, ns)} != {before} (NodeClaims, Deployments, StatefulSets, Services)", **give_up)
    all_at_goal(c, ns, n, "every Workspace and RAGEngine at its goal after losing its children", timeout, **give_up)
    delete_all(c, ns)
    wait_for("every Workspace, RAGEngine and their NodeClaims gone",
             lambda: not lifecycle_objects(c, ns) and not nodeclaims_of(c, ns), timeout,
             lambda: f"left: {sorted(lifecycle_objects(c, ns))}, NodeClaims {nodeclaims_of(c, ns)}", **give_up)


# ------------------------------------------------------------------------------------------ the tests

def test_deploy_rbac_is_enough_for_every_kaito_example_and_all_of_it_is_used(cluster, kaito_dir):
    ns = "examples"
    k8s.CoreV1Api(cluster.api).create_namespace({"metadata": {"name": ns}})
    lifecycles, others = example_objects(kaito_dir, ns)
    assert {d["kind"] for d in lifecycles} == {"Workspace", "RAGEngine"}
    assert sum(d["kind"] == "RAGEngine" for d in lifecycles) == 3
    if others:
        create(cluster, others)  # the ConfigMaps and PVCs the examples' files carry, made by their user
    rules = deploy_rules()
    runner = Runner(cluster, SA_NAME, rules, ns)
    try:
        full_lifecycle(cluster, runner, ns, lifecycles, timeout=150)
        assert runner.denials() == []
        granted = {(r, v) for _, _, r, v in grants(rules)}
        assert runner.used() <= granted, runner.used() - granted
        unused = sorted(granted - runner.used())
        assert not unused, f"granted but never used by the examples' lifecycles: {unused}"
    finally:
        runner.close()


# ------------------------------------------------------------------------------------------ one grant less

GRANTS = grants(deploy_rules())
# A phase of the small lifecycle takes 2-8 s here with every grant, alone; twelve runners at once on two busy
# cores have taken over 20 s. A phase may take PHASE_TIMEOUT; once the server has refused the runner a request,
# it gives up after STALL seconds without progress. (Giving up early cannot change a verdict: a variant that was
# refused a request needed the grant, and only Events, which stop nothing, are exempt.)
PHASE_TIMEOUT = 90.0
STALL = 6.0
BATCH = 12  # variants run at once, each in its own namespace with its own ServiceAccount


def grant_id(g: tuple[int, str, str, str]) -> str:
    return f"rule{g[0]}-{g[2]}-{g[3]}"


@pytest.fixture(scope="module")
def without_one_grant(cluster) -> dict[tuple[int, str, str, str], dict]:
    """For every grant of deploy/rbac.yaml: the small lifecycle run by a runner bound to all the others,
    and what came of it (``error``: the phase that did not complete, None if all did; ``denials``)."""
    results: dict[tuple[int, str, str, str], dict] = {}

    def one(i: int, g: tuple[int, str, str, str]) -> None:
        ns = f"less-{i}"
        k8s.CoreV1Api(cluster.api).create_namespace({"metadata": {"name": ns}})
        runner = Runner(cluster, f"less-{i}", without(deploy_rules(), g[0], g[2], g[3]), ns)
        error = None
        try:
            full_lifecycle(cluster, runner, ns, small_objects(ns), timeout=PHASE_TIMEOUT, stall=STALL)
        except AssertionError as exc:
            error = f"{exc}; NodeClaims then: {claims_with_state(cluster, ns)}"
        finally:
            runner.close()
        results[g] = {"error": error, "denials": runner.denials()}

    for start in range(0, len(GRANTS), BATCH):
        threads = [threading.Thread(target=one, args=(i, g))
                   for i, g in enumerate(GRANTS) if start <= i < start + BATCH]
        for t in threads:
            t.start()
        for t in threads:
            t.join(1200)
    return results


def test_every_grant_of_deploy_rbac_is_a_separate_verb_of_a_resource():
    assert len(GRANTS) == len({(g, r, v) for _, g, r, v in GRANTS}) >= 30  # no grant given twice


@pytest.mark.parametrize("grant", GRANTS, ids=[grant_id(g) for g in GRANTS])
def test_removing_a_grant_is_refused_and_stops_a_lifecycle(without_one_grant, grant):
    _, group, resource, verb = grant
    outcome = without_one_grant[grant]
    denied = {(d.verb, d.resource) for d in outcome["denials"]}
    assert (verb, resource) in denied, f"no 403 for {verb} {resource}: the grant is not needed ({outcome})"
    assert denied == {(verb, resource)}, denied  # only what was removed
    if (resource, verb) == ("events", "create"):  # Events report; the runner does not wait on them
        assert outcome["error"] is None, outcome["error"]
        return
    assert outcome["error"] is not None, f"the lifecycle completed without {verb} {resource}"
