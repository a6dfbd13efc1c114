"""The Kubernetes adapter's write-through overlay against the test API server."""

from __future__ import annotations

import time

import pytest

from workspace_fsm.engine.adapter import Conflict
from workspace_fsm.adapters.kubernetes.adapter import KubernetesAdapter
from workspace_fsm.kaito.catalogue import Catalogue
from workspace_fsm.kaito.model import WorkspaceStatus

G, V, NS, WS = "kaito.sh", "v1beta1", "default", "workspaces"


def doc(name: str) -> dict:
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name},
            "resource": {"instanceType": "Standard_NC24ads_A100_v4", "labelSelector": {"matchLabels": {"a": name}}},
            "inference": {"preset": {"name": "phi-4-mini-instruct"}}}


def wait(check, what: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def adapter(api_server, api_server_client):
    a = KubernetesAdapter(api_server_client, catalogue=Catalogue.default())
    a.start()
    try:
        assert a.wait_synced(10)
        yield a
    finally:
        a.stop()


def admitted(adapter, custom, name: str):
    """Create Workspace ``name``; return (workspace, snapshot) once the adapter's cache shows it."""
    custom.create_namespaced_custom_object(G, V, NS, WS, doc(name))
    key = f"{NS}/{name}"
    return wait(lambda: adapter.observe(key)[0] and adapter.observe(key), f"Workspace {key} in the cache")


def test_an_overlay_the_watch_will_never_deliver_is_dropped_at_the_first_refused_write(adapter, custom):
    ws, _ = admitted(adapter, custom, "w")
    written = adapter.persist(ws, WorkspaceStatus(state="Pending"))
    # Our write's version is replaced in the overlay by one the watch will never deliver (as when a relist
    # after 410 skips it), and then a user changes the spec: the cache has the newer object, the overlay
    # still hides it.
    raw = wait(lambda: (adapter.workspaces.get("default/w") or {}).get("metadata", {}).get("resourceVersion")
               == written.metadata.resource_version and adapter.workspaces.get("default/w"), "our write")
    with adapter._lock:
        adapter._overlay["default/w"] = (written, raw, "999999999")
    custom.patch_namespaced_custom_object(G, V, NS, WS, "w", {"inference": {"config": "changed"}})
    wait(lambda: (adapter.workspaces.get("default/w") or {}).get("metadata", {}).get("generation") == 2,
         "the cache to see generation 2")
    stale, _ = adapter.observe("default/w")
    assert stale.metadata.generation == 1 and stale.metadata.resource_version == written.metadata.resource_version
    with pytest.raises(Conflict):  # its resourceVersion is old: refused, never an overwrite
        adapter.persist(stale, WorkspaceStatus(state="Pending"))
    fresh, _ = adapter.observe("default/w")
    assert fresh.metadata.generation == 2  # the next pass sees the user's change
    adapter.persist(fresh, WorkspaceStatus(state="Pending"))


def test_a_workspace_deleted_under_a_pass_stops_the_pass_before_anything_is_created(adapter, custom):
    from workspace_fsm.kaito import actions as A
    from workspace_fsm.kaito.model import FINALIZER

    ws, _ = admitted(adapter, custom, "gone")
    custom.delete_namespaced_custom_object(G, V, NS, WS, "gone")  # no finalizer yet: gone at once
    with pytest.raises(Conflict, match="gone"):
        adapter.apply(ws, [A.AddFinalizer(FINALIZER)])
    with pytest.raises(Conflict, match="gone"):
        adapter.persist(ws, WorkspaceStatus(state="Pending"))
    wait(lambda: adapter.observe("default/gone")[0] is None, "the cache to drop it")
    assert adapter.cache_sizes() == {"overlay": 0, "parsed": 0, "delivered": 0, "known": 0, "own_rv": 0,
                                     "refused": 0}


@pytest.mark.parametrize("answer", [429, 500, "never sent"])
def test_a_refused_create_is_replaced_at_once_an_ambiguous_one_waits_out_the_grace(api_server, adapter, custom,
                                                                                   answer):
    """429 stores nothing, and a create the runner never sent (its pass stopped before) cannot land: the
    adapter tells the machine (Snapshot.refused) and the NodeClaim is replaced in the next pass. A 500 may
    have been stored, or be stored later, so the machine waits."""
    from datetime import datetime, timezone

    from workspace_fsm.kaito import actions as A
    from workspace_fsm.engine.adapter import AdapterError
    from workspace_fsm.kaito.workspace import decide

    ws, snap = admitted(adapter, custom, "r")
    now = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
    d = decide(ws, snap, now, pass_id="me.1")
    (create,) = [a for a in d.after if isinstance(a, A.CreateNodeClaim)]
    assert create.claim == "me.1"
    adapter.apply(ws, d.before)
    adapter.persist(ws, d.status)
    certain = answer != 500
    if answer == "never sent":
        adapter.abandoned(ws, [create])
    else:
        if answer == 429:
            api_server.faults.throttle(retry_after=1, verbs=["create"], resources=["nodeclaims"], times=1)
        else:
            api_server.faults.error(500, verbs=["create"], resources=["nodeclaims"], times=1)
        with pytest.raises(AdapterError) as failed:
            adapter.apply(ws, [create])
        assert failed.value.refused == certain
    ws, snap = wait(lambda: adapter.observe("default/r")[1].absent and adapter.observe("default/r"),
                    "the recorded NodeClaim to be confirmed absent")
    assert "NodeClaim/" + create.name in snap.absent
    assert snap.refused == ({"NodeClaim/" + create.name: "me.1"} if certain else {})
    again = [a for a in decide(ws, snap, now).after if isinstance(a, A.CreateNodeClaim)]
    if certain:
        assert len(again) == 1 and again[0].name != create.name
    else:
        assert again == []
    custom.patch_namespaced_custom_object(G, V, NS, WS, "r", {"metadata": {"finalizers": []}})
    custom.delete_namespaced_custom_object(G, V, NS, WS, "r")
    wait(lambda: adapter.cache_sizes()["refused"] == 0, "the hint to go with the Workspace")


def test_two_adapters_a_lost_409_never_makes_the_winner_s_creates_look_refused(api_server, api_server_client,
                                                                               adapter, custom):
    """Two runners decide on the same version with the same deterministic names; the winner writes and is
    about to send its creates; the loser's write gets a 409 (it reports nothing) and even a bogus report of
    its own does not count, because the record names the winner's pass. The loser looks again, its GET
    finds the names absent, and it creates nothing: the winner's creates are in flight."""
    from datetime import datetime, timezone

    from workspace_fsm.kaito import actions as A
    from workspace_fsm.kaito.workspace import decide

    other = KubernetesAdapter(api_server_client, catalogue=Catalogue.default())
    other.start()
    try:
        assert other.wait_synced(10)
        ws, snap = admitted(adapter, custom, "race")
        ws_b, snap_b = wait(lambda: other.observe("default/race")[0] and other.observe("default/race"), "b's cache")
        # The cache shows the object before its handler has run; b's memory of its own passes starts there.
        wait(lambda: other.cache_sizes()["delivered"] >= 1, "b's watch handler to see the Workspace")
        now = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
        win = decide(ws, snap, now, pass_id="a.1")
        lose = decide(ws_b, snap_b, now, pass_id="b.1")
        assert [a.name for a in win.after if isinstance(a, A.CreateNodeClaim)] == \
            [a.name for a in lose.after if isinstance(a, A.CreateNodeClaim)]
        adapter.apply(ws, win.before)
        adapter.persist(ws, win.status)
        other.apply(ws_b, lose.before)
        with pytest.raises(Conflict):
            other.persist(ws_b, lose.status)
        other.abandoned(ws_b, lose.after)  # what the old runner did after a 409: it must not matter
        ws_b, snap_b = wait(lambda: (lambda o: o[0] is not None and o[0].status.condition("workspace-fsm/Lifecycle")
                                     and o[1].absent and o)(other.observe("default/race")),
                            "b to see a's record and confirm its names absent")
        assert snap_b.refused  # b remembers its own pass's names...
        again = decide(ws_b, snap_b, now, pass_id="b.2")
        assert not [a for a in again.after if isinstance(a, A.CreateNodeClaim)]  # ...but they are a's to send
        adapter.apply(ws, [a for a in win.after if isinstance(a, A.CreateNodeClaim)])
        assert len(custom.list_cluster_custom_object("karpenter.sh", "v1", "nodeclaims")["items"]) == 1
    finally:
        other.stop()


def test_a_stale_job_delete_never_deletes_the_current_job_of_the_same_name(adapter, custom):
    """Found by the several-writers model: a runner whose Job cache still shows the tuning Job of the old spec
    deletes it by name, after another runner has replaced it with the Job of the new spec (same name). The
    delete carries the stale Job's uid as a precondition: the server refuses it (409), the current Job stays,
    and the adapter counts the stale one as gone."""
    from workspace_fsm.kaito import actions as A

    batch = ("batch", "v1", NS, "jobs")
    ws, _ = admitted(adapter, custom, "tune")
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "tune"},
           "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "t", "image": "x"}]}}}}
    old = custom.create_namespaced_custom_object(*batch, job)
    custom.delete_namespaced_custom_object(*batch, "tune", body={"propagationPolicy": "Background"})
    wait(lambda: not custom.list_namespaced_custom_object(*batch)["items"], "the old Job to be gone")
    new = custom.create_namespaced_custom_object(*batch, job)
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    adapter.apply(ws, [A.DeleteJob("tune", "old-revision", "Background", uid=old["metadata"]["uid"])])
    (left,) = custom.list_namespaced_custom_object(*batch)["items"]
    assert left["metadata"]["uid"] == new["metadata"]["uid"] and "deletionTimestamp" not in left["metadata"]
    # Without the precondition the same request would have deleted the current Job: the control.
    adapter.apply(ws, [A.DeleteJob("tune", "old-revision", "Background")])
    assert wait(lambda: not custom.list_namespaced_custom_object(*batch)["items"]
                or custom.list_namespaced_custom_object(*batch)["items"][0]["metadata"].get("deletionTimestamp"),
                "the unconditioned delete to take effect")
