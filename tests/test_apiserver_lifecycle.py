"""Deletion conformance of the test API server: finalizers and deletionTimestamp, preconditions,
owner-reference garbage collection (Background, Foreground, Orphan) and namespace termination."""

from __future__ import annotations

import json
import time

import pytest
from kubernetes import client, watch


G, V, NS, WS = "kaito.sh", "v1beta1", "default", "workspaces"
ApiException = client.exceptions.ApiException


def workspace(name: str, finalizers: list[str] | None = None) -> dict:
    meta: dict = {"name": name}
    if finalizers:
        meta["finalizers"] = finalizers
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": meta,
            "resource": {"instanceType": "Standard_NC24ads_A100_v4", "labelSelector": {"matchLabels": {"a": "b"}}},
            "inference": {"preset": {"name": "phi-4"}}}


def owned_configmap(name: str, owner: dict, namespace: str = NS, block: bool | None = None,
                    finalizers: list[str] | None = None, extra_refs: list[dict] | None = None) -> dict:
    ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
           "uid": owner["metadata"]["uid"], "controller": True}
    if block is not None:
        ref["blockOwnerDeletion"] = block
    meta = {"name": name, "namespace": namespace, "ownerReferences": [ref] + (extra_refs or [])}
    if finalizers:
        meta["finalizers"] = finalizers
    return {"metadata": meta, "data": {"k": "v"}}


def eventually(check, timeout: float = 3.0):
    end = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result is not False:
                return result
        except (AssertionError, ApiException):
            if time.monotonic() > end:
                raise
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def gone(fn, *args) -> bool:
    try:
        fn(*args)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def events_since(custom_or_fn, rv: str, count: int, *args) -> list[tuple[str, str]]:
    w = watch.Watch()
    out = []
    for ev in w.stream(custom_or_fn, *args, resource_version=rv, timeout_seconds=5):
        out.append((ev["type"], ev["raw_object"]["metadata"]["name"]))
        if len(out) >= count:
            w.stop()
            break
    return out


# ---------------------------------------------------------------------------- finalizers


def test_finalizers_hold_a_deleted_object_until_removed(api_server, custom):
    created = custom.create_namespaced_custom_object(G, V, NS, WS, workspace("w", ["kaito.sh/finalizer"]))
    rv = created["metadata"]["resourceVersion"]
    deleting = custom.delete_namespaced_custom_object(G, V, NS, WS, "w")
    meta = deleting["metadata"]
    assert meta["deletionTimestamp"] and meta["deletionGracePeriodSeconds"] == 0
    assert meta["generation"] == 2  # the first deletionTimestamp bumps generation
    still = custom.get_namespaced_custom_object(G, V, NS, WS, "w")
    assert still["metadata"]["deletionTimestamp"] == meta["deletionTimestamp"]
    # A second delete changes nothing.
    again = custom.delete_namespaced_custom_object(G, V, NS, WS, "w")
    assert again["metadata"]["resourceVersion"] == still["metadata"]["resourceVersion"]
    # No new finalizers on an object being deleted.
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object(G, V, NS, WS, "w", {"metadata": {
            "finalizers": ["kaito.sh/finalizer", "other.io/new"]}})
    assert err.value.status == 422
    cause = json.loads(err.value.body)["details"]["causes"][0]
    assert cause["field"] == "metadata.finalizers" and cause["reason"] == "FieldValueForbidden"
    assert "no new finalizers can be added if the object is being deleted" in cause["message"]
    # Status writes still work while deleting.
    custom.patch_namespaced_custom_object_status(G, V, NS, WS, "w", {"status": {"state": "Deleting"}})
    # Removing the last finalizer removes the object: one DELETED event, no MODIFIED for that write.
    custom.patch_namespaced_custom_object(G, V, NS, WS, "w", {"metadata": {"finalizers": None}})
    assert gone(custom.get_namespaced_custom_object, G, V, NS, WS, "w")
    assert events_since(custom.list_namespaced_custom_object, rv, 3, G, V, NS, WS) == [
        ("MODIFIED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]


def test_delete_without_finalizers_is_immediate_and_returns_the_object(api_server, custom):
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("w"))
    out = custom.delete_namespaced_custom_object(G, V, NS, WS, "w")
    assert out["metadata"]["name"] == "w"
    assert gone(custom.get_namespaced_custom_object, G, V, NS, WS, "w")
    with pytest.raises(ApiException) as err:
        custom.delete_namespaced_custom_object(G, V, NS, WS, "w")
    assert err.value.status == 404


def test_delete_preconditions(api_server, custom):
    created = custom.create_namespaced_custom_object(G, V, NS, WS, workspace("w"))
    with pytest.raises(ApiException) as err:
        custom.delete_namespaced_custom_object(G, V, NS, WS, "w", body={"preconditions": {"uid": "other"}})
    # rest.BeforeDelete (registry/rest/delete.go) checks the preconditions, naming the kind
    assert err.value.status == 409
    body = json.loads(err.value.body)
    assert body["message"] == (f'Operation cannot be fulfilled on Workspace.kaito.sh "w": the UID in the precondition '
                               f'(other) does not match the UID in record ({created["metadata"]["uid"]}). The object '
                               'might have been deleted and then recreated')
    assert body["details"] == {"name": "w", "group": "kaito.sh", "kind": "Workspace"}
    with pytest.raises(ApiException) as err:
        custom.delete_namespaced_custom_object(G, V, NS, WS, "w", body={"preconditions": {"resourceVersion": "1"}})
    assert err.value.status == 409
    assert json.loads(err.value.body)["message"].endswith(
        f'the ResourceVersion in the precondition (1) does not match the ResourceVersion in record '
        f'({created["metadata"]["resourceVersion"]}). The object might have been modified')
    custom.delete_namespaced_custom_object(G, V, NS, WS, "w", body={"preconditions": {
        "uid": created["metadata"]["uid"], "resourceVersion": created["metadata"]["resourceVersion"]}})
    assert gone(custom.get_namespaced_custom_object, G, V, NS, WS, "w")


# ---------------------------------------------------------------------------- garbage collection


@pytest.mark.parametrize("api_server", [{"gc_delay": 0.3}], indirect=True)
def test_background_deletion_collects_dependents_afterwards(api_server, custom, core):
    owner = custom.create_namespaced_custom_object(G, V, NS, WS, workspace("owner"))
    core.create_namespaced_config_map(NS, owned_configmap("dep", owner))
    rv = owner["metadata"]["resourceVersion"]
    custom.delete_namespaced_custom_object(G, V, NS, WS, "owner", propagation_policy="Background")
    assert gone(custom.get_namespaced_custom_object, G, V, NS, WS, "owner")
    assert core.read_namespaced_config_map("dep", NS)  # still there: the collector acts asynchronously
    eventually(lambda: gone(core.read_namespaced_config_map, "dep", NS))
    kinds = []
    for fn, args in ((custom.list_namespaced_custom_object, (G, V, NS, WS)),
                     (core.list_namespaced_config_map, (NS,))):
        w = watch.Watch()
        for ev in w.stream(fn, *args, resource_version=rv, timeout_seconds=5):
            if ev["type"] == "DELETED":
                kinds.append(int(ev["raw_object"]["metadata"]["resourceVersion"]))
                w.stop()
                break
    assert kinds[0] < kinds[1]  # the owner went first


def test_default_policy_is_background(api_server, custom, core):
    owner = custom.create_namespaced_custom_object(G, V, NS, WS, workspace("owner"))
    core.create_namespaced_config_map(NS, owned_configmap("dep", owner))
    custom.delete_namespaced_custom_object(G, V, NS, WS, "owner")
    eventually(lambda: gone(core.read_namespaced_config_map, "dep", NS))


@pytest.mark.parametrize("api_server", [{"gc_delay": 0.2}], indirect=True)
def test_foreground_deletion_waits_for_blocking_dependents(api_server, custom, core):
    owner = custom.create_namespaced_custom_object(G, V, NS, WS, workspace("owner"))
    core.create_namespaced_config_map(NS, owned_configmap("blocker", owner, block=True, finalizers=["x.io/hold"]))
    core.create_namespaced_config_map(NS, owned_configmap("plain", owner))
    out = custom.delete_namespaced_custom_object(G, V, NS, WS, "owner", propagation_policy="Foreground")
    assert out["metadata"]["deletionTimestamp"] and "foregroundDeletion" in out["metadata"]["finalizers"]
    eventually(lambda: gone(core.read_namespaced_config_map, "plain", NS))
    blocker = eventually(lambda: core.read_namespaced_config_map("blocker", NS).metadata.deletion_timestamp)
    assert blocker
    time.sleep(0.4)
    assert custom.get_namespaced_custom_object(G, V, NS, WS, "owner")["metadata"]["deletionTimestamp"]
    core.patch_namespaced_config_map("blocker", NS, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["x.io/hold"]}})
    eventually(lambda: gone(core.read_namespaced_config_map, "blocker", NS))
    eventually(lambda: gone(custom.get_namespaced_custom_object, G, V, NS, WS, "owner"))


def test_foreground_deletes_dependents_before_the_owner(api_server, custom, core):
    owner = custom.create_namespaced_custom_object(G, V, NS, WS, workspace("owner"))
    core.create_namespaced_config_map(NS, owned_configmap("dep", owner, block=True))
    start = custom.list_namespaced_custom_object(G, V, NS, WS)["metadata"]["resourceVersion"]
    custom.delete_namespaced_custom_object(G, V, NS, WS, "owner", propagation_policy="Foreground")
    eventually(lambda: gone(custom.get_namespaced_custom_object, G, V, NS, WS, "owner"))
    dep_rv = owner_rv = None
    for ev in watch.Watch().stream(core.list_namespaced_config_map, NS, resource_version=start, timeout_seconds=1):
        if ev["type"] == "DELETED":
            dep_rv = int(ev["object"].metadata.resource_version)
    for ev in watch.Watch().stream(custom.list_namespaced_custom_object, G, V, NS, WS, resource_version=start,
                                   timeout_seconds=1):
        if ev["type"] == "DELETED":
            owner_rv = int(ev["raw_object"]["metadata"]["resourceVersion"])
    assert dep_rv is not None and owner_rv is not None and dep_rv < owner_rv


def test_orphan_deletion_keeps_dependents_without_the_reference(api_server, custom, core):
    owner = custom.create_namespaced_custom_object(G, V, NS, WS, workspace("owner"))
    core.create_namespaced_config_map(NS, owned_configmap("dep", owner))
    custom.delete_namespaced_custom_object(G, V, NS, WS, "owner", propagation_policy="Orphan")
    eventually(lambda: gone(custom.get_namespaced_custom_object, G, V, NS, WS, "owner"))
    api_server.wait_for_gc()
    dep = core.read_namespaced_config_map("dep", NS)
    assert not dep.metadata.owner_references


def test_dangling_references_are_dropped_when_another_owner_remains(api_server, custom, core):
    a = custom.create_namespaced_custom_object(G, V, NS, WS, workspace("a"))
    b = custom.create_namespaced_custom_object(G, V, NS, WS, workspace("b"))
    other = {"apiVersion": b["apiVersion"], "kind": "Workspace", "name": "b", "uid": b["metadata"]["uid"]}
    core.create_namespaced_config_map(NS, owned_configmap("dep", a, extra_refs=[other]))
    custom.delete_namespaced_custom_object(G, V, NS, WS, "a")
    eventually(lambda: [r.name for r in core.read_namespaced_config_map("dep", NS).metadata.owner_references] == ["b"])


def test_owner_references_resolve_by_uid(api_server, custom, core):
    owner = custom.create_namespaced_custom_object(G, V, NS, WS, workspace("owner"))
    fake = dict(owner, metadata=dict(owner["metadata"], uid="00000000-0000-4000-8000-000000000000"))
    core.create_namespaced_config_map(NS, owned_configmap("dep", fake))  # same name, other uid: owner absent
    eventually(lambda: gone(core.read_namespaced_config_map, "dep", NS))


def test_cross_namespace_and_cross_scope_owner_references(api_server, custom, core, api_server_client):
    core.create_namespace({"metadata": {"name": "other"}})
    owner = custom.create_namespaced_custom_object(G, V, NS, WS, workspace("owner"))
    # A namespaced dependent only resolves namespaced owners in its own namespace: this one is absent.
    core.create_namespaced_config_map("other", owned_configmap("elsewhere", owner, namespace="other"))
    # A cluster-scoped dependent naming a namespaced owner is never acted on.
    nodeclaim = {"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": {
        "name": "nc", "ownerReferences": [{"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "name": "gone",
                                           "uid": "11111111-1111-4111-8111-111111111111"}]},
        "spec": {"nodeClassRef": {"group": "karpenter.azure.com", "kind": "AKSNodeClass", "name": "default"},
                 "requirements": []}}
    custom.create_cluster_custom_object("karpenter.sh", "v1", "nodeclaims", nodeclaim)
    # A namespaced dependent of a cluster-scoped owner (a Node) is collected when the Node goes.
    node = client.CoreV1Api(api_server_client).create_node({"metadata": {"name": "n1"}})
    core.create_namespaced_config_map(NS, {"metadata": {"name": "of-node", "ownerReferences": [
        {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": node.metadata.uid}]}})
    eventually(lambda: gone(core.read_namespaced_config_map, "elsewhere", "other"))
    core.delete_node("n1")
    eventually(lambda: gone(core.read_namespaced_config_map, "of-node", NS))
    api_server.wait_for_gc()
    assert custom.get_cluster_custom_object("karpenter.sh", "v1", "nodeclaims", "nc")


# ---------------------------------------------------------------------------- namespaces


def test_namespace_termination(api_server, custom, core):
    core.create_namespace({"metadata": {"name": "team"}})
    custom.create_namespaced_custom_object(G, V, "team", WS, workspace("held", ["kaito.sh/finalizer"]))
    core.create_namespaced_config_map("team", {"metadata": {"name": "c"}})
    ns = core.delete_namespace("team")  # the client returns a plain dict here
    assert ns["status"]["phase"] == "Terminating" and ns["metadata"]["deletionTimestamp"]
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map("team", {"metadata": {"name": "new"}})
    assert err.value.status == 403
    assert "because it is being terminated" in json.loads(err.value.body)["message"]
    eventually(lambda: gone(core.read_namespaced_config_map, "c", "team"))
    held = custom.get_namespaced_custom_object(G, V, "team", WS, "held")
    assert held["metadata"]["deletionTimestamp"]
    assert core.read_namespace("team").status.phase == "Terminating"
    custom.patch_namespaced_custom_object(G, V, "team", WS, "held", {"metadata": {"finalizers": []}})
    eventually(lambda: gone(core.read_namespace, "team"))


def test_system_namespaces_cannot_be_deleted(api_server, core):
    with pytest.raises(ApiException) as err:
        core.delete_namespace("default")
    assert err.value.status == 403


def test_delete_collection(api_server, custom):
    for name in ("a", "b", "c"):
        doc = workspace(name)
        doc["metadata"]["labels"] = {"group": "x" if name != "c" else "y"}
        custom.create_namespaced_custom_object(G, V, NS, WS, doc)
    custom.delete_collection_namespaced_custom_object(G, V, NS, WS, label_selector="group=x")
    assert [i["metadata"]["name"] for i in custom.list_namespaced_custom_object(G, V, NS, WS)["items"]] == ["c"]
