"""KAITO's RAGEngine: its examples, validation as KAITO's webhook does it, and its lifecycle pass by pass.

The lifecycle tests call ``RAGENGINE.decide(obj, snapshot, now)`` on hand-built snapshots and carry the
status (and the finalizer) from one pass to the next, as the API server would; the cluster itself is not
simulated here: each snapshot says what the caches show.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workspace_fsm.engine import AddFinalizer, Create, Patch, RecordEvent, RemoveFinalizer
from workspace_fsm.kaito import actions as A
from workspace_fsm.kaito import ragengine as R
from workspace_fsm.kaito.model import Node, NodeClaim, Workload
from workspace_fsm.kaito.nodeclaims import nodeclaim_name
from workspace_fsm.kaito.validation import load_yaml_documents

KAITO_RAG = Path(__file__).resolve().parents[2] / "shared" / "kaito" / "examples" / "rag"
EXAMPLES = ("kaito_ragengine_cpu_retrieve_only.yaml", "kaito_ragengine_phi_3.yaml",
            "kaito_ragengine_phi_3_with_pvc.yaml")
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)
FIXED_URL = "http://workspace-phi-3-mini.default.svc.cluster.local/v1/chat/completions"


@pytest.fixture(scope="module")
def examples() -> dict[str, list]:
    missing = [n for n in EXAMPLES if not (KAITO_RAG / n).exists()]
    if missing:
        pytest.fail(f"KAITO's RAGEngine examples not found in {KAITO_RAG} (missing: {', '.join(missing)}); the tests "
                    "need the shared/kaito folder beside the project checkout", pytrace=False)
    return {n: [d for d in load_yaml_documents((KAITO_RAG / n).read_text()) if d is not None] for n in EXAMPLES}


def ragengines(docs: list) -> list:
    return [d for d in docs if R.is_ragengine(d)]


def reasons(problems) -> list[str]:
    return [p.reason for p in problems]


# ---------------------------------------------------------------------------- documents


def doc(version: str = "v1beta1", *, compute: bool = True, count: int | None = None, url: str | None = FIXED_URL,
        instance_type: str = "Standard_NC24ads_A100_v4", name: str = "rag", generation: int = 1) -> dict:
    spec: dict = {"embedding": {"local": {"modelID": "BAAI/bge-small-en-v1.5"}}}
    if compute:
        spec["compute"] = {"instanceType": instance_type, "labelSelector": {"matchLabels": {"apps": "rag-example"}}}
        if count is not None:
            spec["compute"]["count"] = count
    if url is not None:
        spec["inferenceService"] = {"url": url, "contextWindowSize": 4000}
    return {"apiVersion": f"kaito.sh/{version}", "kind": "RAGEngine",
            "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "generation": generation},
            "spec": spec}


def fixed(example: dict) -> dict:
    d = copy.deepcopy(example)
    d["spec"]["inferenceService"]["url"] = FIXED_URL
    return d


# ---------------------------------------------------------------------------- the examples


def test_the_three_examples_parse_and_round_trip(examples):
    found = {name: ragengines(docs) for name, docs in examples.items()}
    assert {n: len(v) for n, v in found.items()} == {n: 1 for n in EXAMPLES}
    # The PVC in the same file is another kind: skipped, neither parsed nor reported.
    pvc_file = examples["kaito_ragengine_phi_3_with_pvc.yaml"]
    assert [d["kind"] for d in pvc_file] == ["PersistentVolumeClaim", "RAGEngine"]
    assert not R.is_ragengine(pvc_file[0])
    for name, (d,) in found.items():
        rag = R.parse_ragengine(d)
        assert rag.kind == "RAGEngine" and rag.api_version == d["apiVersion"]
        assert rag.to_dict() == d, name
    retrieve = R.parse_ragengine(found["kaito_ragengine_cpu_retrieve_only.yaml"][0])
    assert retrieve.valid and retrieve.compute is None and retrieve.retrieve_only
    pvc = R.parse_ragengine(fixed(found["kaito_ragengine_phi_3_with_pvc.yaml"][0]))
    assert pvc.valid and pvc.api_version == "kaito.sh/v1alpha1"
    assert pvc.spec.storage.pvc == "pvc-ragengine-vector-db" and pvc.spec.storage.mount_path == "/mnt/vector-db"
    assert pvc.compute.instance_type == "Standard_NC6s_v3" and pvc.compute.node_labels == {"apps": "ragengine-example"}


def test_unknown_fields_are_kept_verbatim():
    d = doc()
    d["spec"]["futureField"] = {"a": [1, 2]}
    d["spec"]["compute"]["futureCompute"] = "x"
    d["spec"]["embedding"]["local"]["futureLocal"] = True
    d["status"] = {"conditions": [], "futureStatus": {"k": "v"}, "workerNodes": ["n1"]}
    spec = R.RAGEngineSpec.from_dict(d["spec"])
    assert spec.other == {"futureField": {"a": [1, 2]}} and spec.compute.other == {"futureCompute": "x"}
    assert spec.to_dict() == d["spec"]
    status = R.RAGEngineStatus.from_dict(d["status"])
    assert status.other == {"futureStatus": {"k": "v"}} and status.worker_nodes == ("n1",)


def test_the_placeholder_url_is_refused_with_its_own_reason(examples):
    for name in ("kaito_ragengine_phi_3.yaml", "kaito_ragengine_phi_3_with_pvc.yaml"):
        (d,) = ragengines(examples[name])
        problems = R.check_ragengine(d)
        assert [(p.path, p.reason) for p in problems] == [("spec.inferenceService.url", "InferenceURLPlaceholder")]
        message = problems[0].message
        assert "placeholder" in message and "<inference-url>" in message and "replace" in message
        assert "invalid URI for request" in message  # what KAITO's own check says
        assert not R.parse_ragengine(d).valid


def test_the_examples_with_a_real_url_are_accepted(examples):
    for name in ("kaito_ragengine_phi_3.yaml", "kaito_ragengine_phi_3_with_pvc.yaml"):
        (d,) = ragengines(examples[name])
        assert R.check_ragengine(fixed(d)) == []


def test_validate_files_reports_only_ragengines(tmp_path):
    found = R.validate_ragengine_files([KAITO_RAG / n for n in EXAMPLES])
    assert [(Path(f).name, i, ref, p.reason) for f, i, ref, p in found] == [
        ("kaito_ragengine_phi_3.yaml", 1, "default/ragengine-start", "InferenceURLPlaceholder"),
        ("kaito_ragengine_phi_3_with_pvc.yaml", 2, "default/ragengine-with-pvc", "InferenceURLPlaceholder"),
    ]


# ---------------------------------------------------------------------------- KAITO's webhook rules


def _with(d: dict, path: str, value) -> dict:
    d = copy.deepcopy(d)
    *parents, last = path.split(".")
    node = d
    for p in parents:
        node = node.setdefault(p, {})
    if value is _DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return d


_DELETE = object()

WEBHOOK_CASES = [
    # (description, document, path, reason)
    ("relative inference URL", _with(doc(), "spec.inferenceService.url", "my-llm/v1/chat/completions"),
     "spec.inferenceService.url", "InferenceURLInvalid"),
    ("inference URL with a bad port", _with(doc(), "spec.inferenceService.url", "http://llm:80a/v1"),
     "spec.inferenceService.url", "InferenceURLInvalid"),
    ("v1alpha1 empty inference URL", _with(doc("v1alpha1"), "spec.inferenceService.url", ""),
     "spec.inferenceService.url", "InferenceURLInvalid"),
    ("context window of zero", _with(doc(), "spec.inferenceService.contextWindowSize", 0),
     "spec.inferenceService.contextWindowSize", "ContextWindowSizeInvalid"),
    ("no embedding source", _with(doc(), "spec.embedding", {}), "spec.embedding", "EmbeddingSourceRequired"),
    ("two embedding sources", _with(doc(), "spec.embedding.remote", {"url": "https://api.example.com/embed"}),
     "spec.embedding", "EmbeddingSourceConflict"),
    ("local embedding without a model", _with(doc(), "spec.embedding.local", {}), "spec.embedding.local",
     "EmbeddingModelRequired"),
    ("local embedding with image and model id", _with(doc(), "spec.embedding.local.image", "reg.io/bge:1.0"),
     "spec.embedding.local", "EmbeddingModelConflict"),
    ("image without registry", _with(doc(), "spec.embedding.local", {"image": "bge:1.0"}),
     "spec.embedding.local.image", "EmbeddingImageInvalid"),
    ("image with an upper-case repository", _with(doc(), "spec.embedding.local", {"image": "reg.io/BGE:1.0"}),
     "spec.embedding.local.image", "EmbeddingImageInvalid"),
    ("remote embedding URL placeholder", _with(doc(), "spec.embedding", {"remote": {"url": "<embedding-url>/embed"}}),
     "spec.embedding.remote.url", "EmbeddingURLPlaceholder"),
    ("remote embedding URL not absolute", _with(doc(), "spec.embedding", {"remote": {"url": "api.example.com/embed"}}),
     "spec.embedding.remote.url", "EmbeddingURLInvalid"),
    ("instance type KAITO does not know", _with(doc(), "spec.compute.instanceType", "m5.large"),
     "spec.compute.instanceType", "InstanceTypeNotSupported"),
    ("v1beta1 compute without an instance type", _with(doc(), "spec.compute.instanceType", _DELETE),
     "spec.compute.instanceType", "InstanceTypeRequired"),
    ("selector operator Exists", _with(doc(), "spec.compute.labelSelector",
                                       {"matchExpressions": [{"key": "apps", "operator": "Exists"}]}),
     "spec.compute.labelSelector.matchExpressions[0].operator", "LabelSelectorOperatorNotSupported"),
    ("selector In with two values",
     _with(doc(), "spec.compute.labelSelector",
           {"matchExpressions": [{"key": "apps", "operator": "In", "values": ["a", "b"]}]}),
     "spec.compute.labelSelector.matchExpressions[0].values", "LabelSelectorValuesInvalid"),
    ("a v1alpha1 field in v1beta1", _with(doc(), "spec.storage", {"mountPath": "/mnt/db"}),
     "spec.storage.mountPath", "FieldUnknown"),
    ("a name a Service cannot have", _with(doc(), "metadata.name", "1rag"), "metadata.name", "NameInvalid"),
    ("another kind", _with(doc(), "kind", "Workspace"), "kind", "KindNotRAGEngine"),
    ("another API version", _with(doc(), "apiVersion", "kaito.sh/v2"), "apiVersion", "APIVersionNotSupported"),
    ("no embedding at all", _with(doc(), "spec.embedding", _DELETE), "spec.embedding", "FieldRequired"),
]


@pytest.mark.parametrize("what,document,path,reason", WEBHOOK_CASES, ids=[c[0] for c in WEBHOOK_CASES])
def test_webhook_rule(what, document, path, reason):
    assert R.check_ragengine(doc()) == [] and R.check_ragengine(doc("v1alpha1")) == []  # the control
    problems = R.check_ragengine(document)
    assert (path, reason) in [(p.path, p.reason) for p in problems], problems
    assert all(p.message for p in problems)


@pytest.mark.parametrize("document", [
    _with(doc(), "spec.inferenceService", {"contextWindowSize": 4096}),  # v1beta1: no url is retrieve-only
    _with(doc(), "spec.inferenceService", _DELETE),
    doc(compute=False),
    _with(doc(), "spec.embedding", {"remote": {"url": "https://api.example.com/v1/embeddings", "accessSecret": "s"}}),
    _with(doc(), "spec.embedding.local", {"image": "myregistry.azurecr.io/bge-small:0.1.0"}),
    _with(doc(), "spec.compute.instanceType", "Standard_NC6s_v3"),  # any N-series size on Azure
    _with(doc("v1alpha1"), "spec.compute.instanceType", _DELETE),  # v1alpha1 defaults it
    _with(doc(), "spec.compute.labelSelector",
          {"matchExpressions": [{"key": "apps", "operator": "In", "values": ["a"]}]}),
    _with(doc(), "spec.storage", {"persistentVolume": {"persistentVolumeClaim": "pvc"}, "vectorDB": {
        "engine": "qdrant", "url": "http://qdrant:6333"}}),
])
def test_webhook_accepts(document):
    assert R.check_ragengine(document) == []


def test_instance_types_of_other_clouds_are_not_checked_without_a_provider():
    d = _with(doc(), "spec.compute.instanceType", "g5.xlarge")
    assert reasons(R.check_ragengine(d)) == ["InstanceTypeNotSupported"]
    assert R.check_ragengine(d, cloud_provider=None) == []


def test_v1alpha1_requires_an_inference_url_and_v1beta1_does_not():
    alpha = _with(doc("v1alpha1"), "spec.inferenceService", {"contextWindowSize": 4096})
    assert [(p.path, p.reason) for p in R.check_ragengine(alpha)] == [("spec.inferenceService.url", "FieldRequired")]
    assert R.check_ragengine(_with(alpha, "apiVersion", "kaito.sh/v1beta1")) == []


def test_updates_refused_as_kaito_refuses_them():
    old = doc()
    assert R.check_update(old, old) == []
    assert reasons(R.check_update(old, doc(compute=False))) == ["ComputeImmutable"]
    assert reasons(R.check_update(doc(compute=False), old)) == ["ComputeImmutable"]
    assert [p.path for p in R.check_update(old, _with(old, "spec.compute.count", 3))] == ["spec.compute.count"]
    assert [p.path for p in R.check_update(old, _with(old, "spec.compute.instanceType", "Standard_NC48ads_A100_v4"))] \
        == ["spec.compute.instanceType"]
    changed = _with(old, "spec.compute.labelSelector", {"matchLabels": {"apps": "other"}})
    assert [p.path for p in R.check_update(old, changed)] == ["spec.compute.labelSelector"]
    assert R.check_update(old, _with(old, "spec.inferenceService.contextWindowSize", 8000)) == []


@pytest.mark.parametrize("url,error", [
    ("<inference-url>/v1/chat/completions", "invalid URI for request"),
    ("llm.default.svc/v1", "invalid URI for request"),
    ("", "empty url"),
    (":8080/v1", "missing protocol scheme"),
    ("http://llm:port/v1", 'invalid port ":port" after host'),
    ("http://ll m/v1", 'invalid character " " in host name'),
    ("http://llm/v1/%zz", 'invalid URL escape "%zz"'),
    ("http://llm/\x7f", "invalid control character in URL"),
    ("http://[::1/v1", "missing ']' in host"),
    ("http://llm.default.svc.cluster.local/v1/chat/completions", None),
    ("https://user:pw@api.example.com:8443/v1?x=1", None),
    ("/v1/chat/completions", None),
    ("urn:example:llm", None),
    ("http://[fe80::1]:80/v1", None),
])
def test_go_request_uri_parsing(url, error):
    got = R.parse_request_uri_error(url)
    assert (got is None) == (error is None) and (error is None or error in got), got


# ---------------------------------------------------------------------------- lifecycle helpers


def parse(d: dict) -> R.RAGEngine:
    rag = R.parse_ragengine(d)
    return rag


def run(rag: R.RAGEngine, snap: R.RAGSnapshot, now: datetime, pass_id: str = "p"):
    """One pass, and the RAGEngine as the API server holds it afterwards (status written, finalizers patched)."""
    d = R.RAGENGINE.decide(rag, snap, now, pass_id=pass_id)
    fins = list(rag.metadata.finalizers)
    for a in d.actions:
        if isinstance(a, AddFinalizer) and a.finalizer not in fins:
            fins.append(a.finalizer)
        elif isinstance(a, RemoveFinalizer):
            fins = [f for f in fins if f != a.finalizer]
    after = attrs.evolve(rag, metadata=attrs.evolve(rag.metadata, finalizers=tuple(fins)))
    return d, after.with_status(d.status)


def of(d, *types):
    return [a for a in d.actions if isinstance(a, types)]


def creates(d, kind: str):
    return [a for a in of(d, Create) if a.kind == kind]


def cond(rag: R.RAGEngine, type_: str):
    c = rag.status.condition(type_)
    assert c is not None, f"{type_} missing: {[x.type for x in rag.status.conditions]}"
    return c


def claim(rag: R.RAGEngine, name: str, *, ready: bool = True, deleting: bool = False) -> NodeClaim:
    return NodeClaim(name, rag.key, rag.compute.instance_type, launched="True", registered="True" if ready else None,
                     initialized="True" if ready else None, ready="True" if ready else "False",
                     node_name=f"node-{name}" if ready else None, deleting=deleting, created_at=EPOCH)


def gpu_node(name: str, gpus: int = 1, ready: bool = True) -> Node:
    # Karpenter's GPU nodes carry accelerator=nvidia: their GPUs count once the device plugin advertises them.
    return Node(name, {"accelerator": "nvidia"}, ready=ready, gpu_capacity=gpus)


def deployment(rag: R.RAGEngine, ready: bool = True, revision: str | None = None) -> Workload:
    n = 1 if ready else 0
    return Workload("Deployment", rag.metadata.name, 1, n, n, revision or rag.spec.revision)


def service(rag: R.RAGEngine) -> R.Service:
    return R.Service(rag.metadata.name)


def record(rag: R.RAGEngine):
    rec = R.RECORD.read(rag)
    assert rec is not None
    return rec


# ---------------------------------------------------------------------------- lifecycle: with compute


def test_compute_nodeclaims_then_gpus_then_deployment_and_service_then_ready():
    rag = parse(doc(count=2))
    now = EPOCH

    # Pass 1: the finalizer and two NodeClaims, recorded in this pass's status write; nothing else.
    d, rag = run(rag, R.RAGSnapshot(), now, "p1")
    assert d.state == "NodesProvisioning" and of(d, AddFinalizer) == [AddFinalizer(R.FINALIZER)]
    made = of(d, A.CreateNodeClaim)
    assert len(made) == 2 and [c.name for c in made] == list(record(rag).data.nodeclaims)
    assert made[0].instance_type == "Standard_NC24ads_A100_v4"
    assert dict(made[0].labels) == {R.LABEL_RAGENGINE: "rag", R.LABEL_RAGENGINE_NAMESPACE: "default",
                                    "apps": "rag-example"}
    assert not of(d, Create) and cond(rag, R.NODECLAIM_READY).reason == "CreateNodeClaimPending"
    assert cond(rag, R.RESOURCE_READY).status == "False"
    names = [c.name for c in made]

    # A lagging cache that shows nothing yet: the recorded ones count as existing; none is created again.
    now += timedelta(seconds=5)
    d, rag = run(rag, R.RAGSnapshot(), now, "p2")
    assert not of(d, A.CreateNodeClaim, Create)

    # One NodeClaim Ready, one still launching: still provisioning, no Deployment.
    now += timedelta(seconds=30)
    snap = R.RAGSnapshot((claim(rag, names[0]), claim(rag, names[1], ready=False)),
                         {f"node-{names[0]}": gpu_node(f"node-{names[0]}")})
    d, rag = run(rag, snap, now, "p3")
    assert d.state == "NodesProvisioning" and not of(d, A.CreateNodeClaim, Create)

    # Both Ready, but the device plugin has not advertised the GPUs yet: no Deployment.
    now += timedelta(seconds=30)
    nodes = {f"node-{n}": gpu_node(f"node-{n}", gpus=0) for n in names}
    snap = R.RAGSnapshot(tuple(claim(rag, n) for n in names), nodes)
    d, rag = run(rag, snap, now, "p4")
    assert d.state == "PluginsReady" and not of(d, Create)
    assert cond(rag, R.RESOURCE_READY).reason == "GPUCapacityNotReady"

    # GPUs advertised: the Service and the Deployment, in one pass, recorded with it.
    now += timedelta(seconds=10)
    nodes = {f"node-{n}": gpu_node(f"node-{n}") for n in names}
    snap = R.RAGSnapshot(tuple(claim(rag, n) for n in names), nodes)
    d, rag = run(rag, snap, now, "p5")
    assert d.state == "Deploying"
    (svc,), (dep,) = creates(d, "Service"), creates(d, "Deployment")
    assert svc.manifest["metadata"]["name"] == dep.manifest["metadata"]["name"] == "rag" and svc.owned and dep.owned
    assert svc.manifest["spec"]["selector"] == {R.LABEL_RAGENGINE: "rag"}
    assert svc.manifest["spec"]["ports"][0]["port"] == 80 and svc.manifest["spec"]["type"] == "ClusterIP"
    pod = dep.manifest["spec"]["template"]["spec"]
    assert dep.manifest["metadata"]["annotations"][R.ANNOTATION_REVISION] == rag.spec.revision
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}  # local embedding on an A100 size
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "apps", "operator": "In", "values": ["rag-example"]}]}]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["LLM_INFERENCE_URL"] == FIXED_URL and env["MODEL_ID"] == "BAAI/bge-small-en-v1.5"
    assert record(rag).data.revision == rag.spec.revision and record(rag).data.service
    assert cond(rag, R.RESOURCE_READY).reason == "ragengineResourceStatusSuccess"
    assert cond(rag, R.RAGENGINE_SUCCEEDED).status == "False"

    # Not ready yet: nothing new. Then ready: Ready, RAGEngineSucceeded=True at the current generation.
    now += timedelta(seconds=20)
    d, rag = run(rag, attrs.evolve(snap, deployment=deployment(rag, ready=False), service=service(rag)), now, "p6")
    assert d.state == "Deploying" and not of(d, Create, Patch, A.CreateNodeClaim)
    now += timedelta(seconds=40)
    d, rag = run(rag, attrs.evolve(snap, deployment=deployment(rag), service=service(rag)), now, "p7")
    assert d.state == "Ready" and not of(d, Create, Patch, A.CreateNodeClaim)
    ok = cond(rag, R.RAGENGINE_SUCCEEDED)
    assert (ok.status, ok.reason, ok.observed_generation) == ("True", "ragengineSucceeded", 1)
    assert cond(rag, R.SERVICE_READY).reason == "RAGEngineServiceSuccess"
    assert cond(rag, R.RAGENGINE_SERVICE_READY).status == "True"
    assert cond(rag, R.NODECLAIM_READY).reason == "installNodePluginsSuccess"
    assert rag.status.worker_nodes == tuple(sorted(nodes))
    assert cond(rag, R.LIFECYCLE_CONDITION).reason == "Ready"

    # A new spec (generation 2): the Deployment is updated in place, then Ready again at generation 2.
    d2 = doc(count=2, generation=2)
    d2["spec"]["inferenceService"]["contextWindowSize"] = 8000
    rag2 = attrs.evolve(parse(d2), metadata=attrs.evolve(rag.metadata, generation=2), status=rag.status)
    stale = attrs.evolve(snap, deployment=deployment(rag), service=service(rag))
    now += timedelta(seconds=5)
    d, rag2 = run(rag2, stale, now, "p8")
    assert d.state == "Deploying" and not creates(d, "Deployment")
    (patch,) = of(d, Patch)
    assert patch.kind == "Deployment"
    assert patch.patch["metadata"]["annotations"][R.ANNOTATION_REVISION] == rag2.spec.revision
    env = {e["name"]: e.get("value") for e in patch.patch["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LLM_CONTEXT_WINDOW"] == "8000"
    assert cond(rag2, R.RAGENGINE_SUCCEEDED).status == "False"
    now += timedelta(seconds=5)
    d, rag2 = run(rag2, attrs.evolve(stale, deployment=deployment(rag2)), now, "p9")
    ok = cond(rag2, R.RAGENGINE_SUCCEEDED)
    assert d.state == "Ready" and (ok.status, ok.observed_generation) == ("True", 2)


def test_nodeclaims_are_created_up_to_the_count_and_no_further():
    for count in (1, 3):
        rag = parse(doc(count=count))
        d, rag = run(rag, R.RAGSnapshot(), EPOCH)
        assert len(of(d, A.CreateNodeClaim)) == count
        names = record(rag).data.nodeclaims
        # All visible, none Ready: waiting, nothing more.
        snap = R.RAGSnapshot(tuple(claim(rag, n, ready=False) for n in names))
        for i in range(3):
            d, rag = run(rag, snap, EPOCH + timedelta(seconds=10 * (i + 1)))
            assert not of(d, A.CreateNodeClaim)
        assert len(record(rag).data.nodeclaims) == count


def test_a_failed_nodeclaim_is_replaced_under_a_new_name():
    rag = parse(doc())
    d, rag = run(rag, R.RAGSnapshot(), EPOCH)
    (first,) = record(rag).data.nodeclaims
    failed = attrs.evolve(claim(rag, first, ready=False), launched="False", failure_reason="InsufficientCapacity")
    d, rag = run(rag, R.RAGSnapshot((failed,)), EPOCH + timedelta(seconds=30))
    assert [a.name for a in of(d, A.DeleteNodeClaim)] == [first] and not of(d, A.CreateNodeClaim)
    gone = R.RAGSnapshot(absent=frozenset({"NodeClaim/" + first}))
    d, rag = run(rag, gone, EPOCH + timedelta(minutes=5))
    (new,) = of(d, A.CreateNodeClaim)
    assert new.name != first and record(rag).data.nodeclaims == (new.name,)


def test_no_deployment_while_the_nodes_are_lost():
    """A Ready RAGEngine whose Deployment disappears while its nodes are gone recreates nothing on them."""
    rag = parse(doc())
    d, rag = run(rag, R.RAGSnapshot(), EPOCH)
    (name,) = record(rag).data.nodeclaims
    good = R.RAGSnapshot((claim(rag, name),), {f"node-{name}": gpu_node(f"node-{name}")})
    d, rag = run(rag, good, EPOCH + timedelta(minutes=1))
    serving = attrs.evolve(good, deployment=deployment(rag), service=service(rag))
    d, rag = run(rag, serving, EPOCH + timedelta(minutes=2))
    assert d.state == "Ready"
    lost = R.RAGSnapshot((claim(rag, name, ready=False),), {}, None, service(rag),
                         absent=frozenset({"Deployment/rag"}))
    d, rag = run(rag, lost, EPOCH + timedelta(minutes=3))
    assert d.state == "NodesProvisioning" and not creates(d, "Deployment")
    assert cond(rag, R.SERVICE_READY).status == "False" and cond(rag, R.RAGENGINE_SUCCEEDED).status == "False"


# ---------------------------------------------------------------------------- lifecycle: retrieve-only


def test_retrieve_only_gets_service_and_deployment_and_never_a_nodeclaim(examples):
    (d0,) = ragengines(examples["kaito_ragengine_cpu_retrieve_only.yaml"])
    rag = parse({**d0, "metadata": {**d0["metadata"], "uid": "u-r", "generation": 1}})
    d, rag = run(rag, R.RAGSnapshot(), EPOCH, "p1")
    assert d.state == "Deploying" and not of(d, A.CreateNodeClaim)
    assert [a.kind for a in of(d, Create)] == ["Service", "Deployment"]
    pod = creates(d, "Deployment")[0].manifest["spec"]["template"]["spec"]
    assert "affinity" not in pod
    assert pod["containers"][0]["resources"] == {"requests": {"cpu": "500m", "memory": "512Mi"}}
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert "LLM_INFERENCE_URL" not in env and env["EMBEDDING_TYPE"] == "local"
    assert cond(rag, R.RESOURCE_READY).status == "True" and rag.status.condition(R.NODECLAIM_READY) is None
    now = EPOCH
    for snap in (R.RAGSnapshot(), R.RAGSnapshot(deployment=deployment(rag, ready=False)),
                 R.RAGSnapshot(deployment=deployment(rag, ready=False), service=service(rag))):
        now += timedelta(seconds=30)
        d, rag = run(rag, snap, now)
        assert d.state == "Deploying" and not of(d, A.CreateNodeClaim, Create)
    d, rag = run(rag, R.RAGSnapshot(deployment=deployment(rag), service=service(rag)), now + timedelta(seconds=5))
    assert d.state == "Ready" and not of(d, A.CreateNodeClaim, Create)
    ok = cond(rag, R.RAGENGINE_SUCCEEDED)
    assert (ok.status, ok.reason, ok.observed_generation) == ("True", "ragengineSucceeded", 1)
    # The Service deleted by hand (confirmed absent): created again, still no NodeClaim.
    d, rag = run(rag, R.RAGSnapshot(deployment=deployment(rag), absent=frozenset({"Service/ragengine-retrieve"})),
                 now + timedelta(minutes=2))
    assert [a.kind for a in of(d, Create)] == ["Service"] and not of(d, A.CreateNodeClaim)


# ---------------------------------------------------------------------------- deletion


def test_deletion_deletes_the_nodeclaims_then_removes_the_finalizer():
    rag = parse(doc(count=2))
    d, rag = run(rag, R.RAGSnapshot(), EPOCH)
    names = record(rag).data.nodeclaims
    nodes = {f"node-{n}": gpu_node(f"node-{n}") for n in names}
    snap = R.RAGSnapshot(tuple(claim(rag, n) for n in names), nodes)
    d, rag = run(rag, snap, EPOCH + timedelta(minutes=1))
    serving = attrs.evolve(snap, deployment=deployment(rag), service=service(rag))
    d, rag = run(rag, serving, EPOCH + timedelta(minutes=2))
    assert d.state == "Ready" and R.FINALIZER in rag.metadata.finalizers

    rag = attrs.evolve(rag, metadata=attrs.evolve(rag.metadata, deletion_timestamp=EPOCH + timedelta(minutes=3)))
    d, rag = run(rag, snap, EPOCH + timedelta(minutes=3))
    assert d.state == "Deleting" and sorted(a.name for a in of(d, A.DeleteNodeClaim)) == sorted(names)
    assert not of(d, RemoveFinalizer, Create, A.CreateNodeClaim)
    assert cond(rag, R.RAGENGINE_DELETING).reason == "ragengineDeleted"

    # Being deleted: asked once, nothing more; the finalizer stays.
    deleting = R.RAGSnapshot(tuple(claim(rag, n, deleting=True) for n in names))
    d, rag = run(rag, deleting, EPOCH + timedelta(minutes=4))
    assert not of(d, A.DeleteNodeClaim, RemoveFinalizer)
    # One gone, one still there: still not.
    half = R.RAGSnapshot((claim(rag, names[1], deleting=True),), absent=frozenset({"NodeClaim/" + names[0]}))
    d, rag = run(rag, half, EPOCH + timedelta(minutes=5))
    assert not of(d, RemoveFinalizer)
    # All gone: the finalizer is removed, last.
    gone = R.RAGSnapshot(absent=frozenset("NodeClaim/" + n for n in names))
    d, rag = run(rag, gone, EPOCH + timedelta(minutes=6))
    assert of(d, RemoveFinalizer) == [RemoveFinalizer(R.FINALIZER)]
    assert d.mutating_actions[-1] == RemoveFinalizer(R.FINALIZER)
    assert R.FINALIZER not in rag.metadata.finalizers


def test_deleting_a_retrieve_only_ragengine_removes_the_finalizer_at_once():
    rag = parse(doc(compute=False))
    d, rag = run(rag, R.RAGSnapshot(), EPOCH)
    rag = attrs.evolve(rag, metadata=attrs.evolve(rag.metadata, deletion_timestamp=EPOCH + timedelta(minutes=1)))
    d, rag = run(rag, R.RAGSnapshot(deployment=deployment(rag), service=service(rag)), EPOCH + timedelta(minutes=1))
    assert d.state == "Deleting" and [type(a) for a in d.mutating_actions] == [RemoveFinalizer]


# ---------------------------------------------------------------------------- an invalid spec


def test_an_invalid_spec_creates_nothing_and_says_why(examples):
    (d0,) = ragengines(examples["kaito_ragengine_phi_3.yaml"])
    rag = parse(d0)
    d, rag = run(rag, R.RAGSnapshot(), EPOCH)
    assert d.mutating_actions == () and [a.type for a in of(d, RecordEvent)] == ["Warning"]
    c = cond(rag, R.RAGENGINE_SUCCEEDED)
    assert (c.status, c.reason) == ("False", "InferenceURLPlaceholder") and "placeholder" in c.message
    # Asked again: nothing changes, nothing is said twice.
    d, rag = run(rag, R.RAGSnapshot(), EPOCH + timedelta(minutes=1))
    assert d.actions == () and not d.status_changed


# ---------------------------------------------------------------------------- the declaration


def test_declaration_kinds_permissions_and_diagram():
    lc = R.RAGENGINE
    perms = lc.permissions()
    assert perms[("kaito.sh", "ragengines")] >= {"list", "watch", "patch"}
    assert perms[("kaito.sh", "ragengines/status")] == {"update"}
    assert perms[("karpenter.sh", "nodeclaims")] >= {"create", "delete"}
    assert perms[("apps", "deployments")] >= {"create", "patch"} and perms[("", "services")] >= {"create"}
    owner = lc.owns[0].owner({"metadata": {"labels": {R.LABEL_RAGENGINE: "r", R.LABEL_RAGENGINE_NAMESPACE: "ns"}}})
    assert owner == "ns/r"
    diagram = lc.mermaid()
    for state in ("Pending", "NodesProvisioning", "PluginsReady", "Deploying", "Ready", "Deleting"):
        assert state in diagram
    rag = parse(doc())
    assert R.confirmations(rag) == frozenset()
    d, rag = run(rag, R.RAGSnapshot(), EPOCH)
    assert R.confirmations(rag) == {"NodeClaim/" + n for n in record(rag).data.nodeclaims}


def test_the_record_round_trips():
    book = R.RAGEngineBook(nodeclaims=("a-1",), next_seq=2, revision="abc", service=True)
    assert R.RAGEngineBook.from_json(book.to_json()) == book
    assert R.RAGEngineBook.from_json({}) == R.RAGEngineBook()


# ---------------------------------------------------------------------------- properties


@st.composite
def snapshots(draw, rag: R.RAGEngine, pool: list[str]):
    """What a cache may show: any of the RAGEngine's NodeClaim names in any state, their nodes Ready or not,
    with or without GPU capacity, absences confirmed for names not shown, a Deployment and Service or not."""
    shown = draw(st.lists(st.sampled_from(pool), unique=True, max_size=len(pool)))
    claims, nodes = [], {}
    for n in shown:
        kind = draw(st.sampled_from(["ready", "launching", "failed", "deleting"]))
        c = claim(rag, n, ready=kind == "ready", deleting=kind == "deleting")
        if kind == "failed":
            c = attrs.evolve(c, launched="False", failure_reason="InsufficientCapacity")
        claims.append(c)
        if c.node_name:
            nodes[c.node_name] = gpu_node(c.node_name, gpus=draw(st.integers(0, 2)), ready=draw(st.booleans()))
    hidden = [n for n in pool if n not in shown]
    absent = {"NodeClaim/" + n for n in draw(st.lists(st.sampled_from(hidden), unique=True))} if hidden else set()
    dep = draw(st.sampled_from([None, "ready", "unready", "stale"]))
    workload = None if dep is None else deployment(rag, ready=dep != "unready",
                                                   revision="old" if dep == "stale" else None)
    svc = service(rag) if draw(st.booleans()) else None
    if workload is None and draw(st.booleans()):
        absent.add("Deployment/" + rag.metadata.name)
    if svc is None and draw(st.booleans()):
        absent.add("Service/" + rag.metadata.name)
    return R.RAGSnapshot(tuple(claims), nodes, workload, svc, frozenset(absent))


@settings(max_examples=200)
@given(st.data(), st.integers(1, 3))
def test_property_never_above_target_and_no_deployment_without_gpu_nodes(data, count):
    rag = parse(doc(count=count))
    pool = [nodeclaim_name(rag.metadata, i) for i in range(2 * count + 3)]
    now = EPOCH
    for i in range(data.draw(st.integers(1, 10), label="passes")):
        snap = data.draw(snapshots(rag, pool), label=f"snapshot {i}")
        now += timedelta(seconds=data.draw(st.integers(0, 900), label="seconds"))
        rec = R.RECORD.read(rag)
        if rec is not None:  # the table's fast path answers as transitions' own dispatch, in every state
            f = R.RAGEngineFacts(rag, snap, now, R.DEFAULT_CONFIG, rec, f"p{i}")
            for state in R.RAGENGINE.states:
                assert R.RAGENGINE.step(state, f) == R.RAGENGINE.step_via_trigger(state, f)
        d, rag = run(rag, snap, now, f"p{i}")
        book = d.record.data
        live = [n for n in book.nodeclaims if "NodeClaim/" + n not in book.deleted]
        assert len(live) <= count, (book, snap)
        for a in of(d, A.CreateNodeClaim):
            assert a.name in book.nodeclaims  # recorded in the status write that comes before any create
        if creates(d, "Deployment"):
            serving = [n for n in snap.nodes.values() if n.ready and n.gpu_capacity > 0]
            assert len(serving) >= count, snap


@settings(max_examples=200)
@given(st.data())
def test_property_retrieve_only_never_asks_for_a_nodeclaim(data):
    rag = parse(doc(compute=False))
    pool = [nodeclaim_name(rag.metadata, i) for i in range(3)]
    fake = parse(doc())  # only to build NodeClaims with its instance type for the snapshot strategy
    now = EPOCH
    for i in range(data.draw(st.integers(1, 6), label="passes")):
        snap = data.draw(snapshots(fake, pool), label=f"snapshot {i}")
        dep = None if snap.deployment is None else deployment(rag, snap.deployment.is_ready)
        snap = attrs.evolve(snap, deployment=dep)
        now += timedelta(seconds=data.draw(st.integers(0, 900), label="seconds"))
        d, rag = run(rag, snap, now, f"p{i}")
        assert not of(d, A.CreateNodeClaim, A.DeleteNodeClaim)
        assert d.state in ("Deploying", "Ready")


def test_the_name_of_a_gone_adopted_nodeclaim_is_not_reused():
    rag = parse(doc())
    first = nodeclaim_name(rag.metadata, 0)
    # No record yet (lost, or written by another runner) and the cache shows a NodeClaim of ours: adopted.
    d, rag = run(rag, R.RAGSnapshot((claim(rag, first),), {}), EPOCH)
    assert record(rag).data.nodeclaims == (first,) and not of(d, A.CreateNodeClaim)
    # It goes, and its absence is confirmed: it is replaced, under a name never used before.
    d, rag = run(rag, R.RAGSnapshot(absent=frozenset({"NodeClaim/" + first})), EPOCH + timedelta(seconds=1))
    (new,) = of(d, A.CreateNodeClaim)
    assert new.name != first
