"""Watch conformance of the test API server through ``kubernetes.watch.Watch`` and raw HTTP."""

from __future__ import annotations

import json
import threading
import time

import pytest
from kubernetes import client, watch


G, V, NS, WS = "kaito.sh", "v1beta1", "default", "workspaces"
ApiException = client.exceptions.ApiException


def workspace(name: str, labels: dict | None = None) -> dict:
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace",
            "metadata": {"name": name, "labels": labels or {"app": "phi"}},
            "resource": {"instanceType": "Standard_NC24ads_A100_v4", "labelSelector": {"matchLabels": {"a": "b"}}},
            "inference": {"preset": {"name": "phi-4"}}}


def take(func, *args, count: int, timeout: int = 5, **kwargs) -> list[tuple[str, str]]:
    """The first ``count`` events of a watch as (type, name) pairs (BOOKMARKs as (BOOKMARK, rv))."""
    w = watch.Watch()
    out = []
    for ev in w.stream(func, *args, timeout_seconds=timeout, **kwargs):
        obj = ev["raw_object"]
        if ev["type"] == "BOOKMARK":
            out.append(("BOOKMARK", obj["metadata"]["resourceVersion"]))
        else:
            out.append((ev["type"], obj["metadata"]["name"]))
        if len(out) >= count:
            w.stop()
            break
    return out


def in_background(fn, *args, **kwargs):
    result = {}

    def run():
        try:
            result["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001
            result["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join():
        t.join(10)
        if "error" in result:
            raise result["error"]
        return result.get("value")
    return join


def test_watch_from_resource_version_sends_only_later_events(api_server, custom):
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("a"))
    rv = custom.list_namespaced_custom_object(G, V, NS, WS)["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("b"))
    custom.patch_namespaced_custom_object(G, V, NS, WS, "a", {"metadata": {"labels": {"x": "1"}}})
    custom.delete_namespaced_custom_object(G, V, NS, WS, "b")
    events = take(custom.list_namespaced_custom_object, G, V, NS, WS, resource_version=rv, count=3)
    assert events == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]


def test_watch_without_resource_version_starts_with_current_objects(api_server, custom):
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("a"))
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("b"))
    join = in_background(take, custom.list_namespaced_custom_object, G, V, NS, WS, count=3)
    time.sleep(0.3)
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("c"))
    assert join() == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c")]
    assert take(custom.list_namespaced_custom_object, G, V, NS, WS, resource_version="0", count=3) == [
        ("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c")]


def test_watch_events_carry_resource_versions_of_the_writes(api_server, custom):
    rv = custom.list_namespaced_custom_object(G, V, NS, WS)["metadata"]["resourceVersion"]
    created = custom.create_namespaced_custom_object(G, V, NS, WS, workspace("a"))
    w = watch.Watch()
    ev = next(iter(w.stream(custom.list_namespaced_custom_object, G, V, NS, WS, resource_version=rv,
                            timeout_seconds=2)))
    w.stop()
    assert ev["raw_object"]["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


def test_timeout_ends_the_stream_cleanly(api_server, custom):
    start = time.monotonic()
    events = list(watch.Watch().stream(custom.list_namespaced_custom_object, G, V, NS, WS, timeout_seconds=1))
    elapsed = time.monotonic() - start
    assert events == [] and 0.9 <= elapsed < 3


def test_watch_is_chunked_json_lines_and_watch_1_works(api_server, custom):
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("a"))
    conn = api_server.connection(timeout=5)
    conn.request("GET", f"/apis/{G}/{V}/namespaces/{NS}/{WS}?watch=1&timeoutSeconds=1")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
    lines = [json.loads(line) for line in resp.read().splitlines() if line]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in lines] == [("ADDED", "a")]
    # The connection is still usable after a watch ends (keep-alive).
    conn.request("GET", "/version")
    assert conn.getresponse().status == 200
    conn.close()


@pytest.mark.parametrize("api_server", [{"bookmark_interval": 0.2}], indirect=True)
def test_bookmarks(api_server, custom):
    rv = custom.list_namespaced_custom_object(G, V, NS, WS)["metadata"]["resourceVersion"]
    events = take(custom.list_namespaced_custom_object, G, V, NS, WS, resource_version=rv,
                  allow_watch_bookmarks=True, count=2)
    assert [e[0] for e in events] == ["BOOKMARK", "BOOKMARK"]
    assert int(events[0][1]) >= int(rv)


def test_selectors_apply_to_watch_events(api_server, custom):
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("a", {"app": "x"}))
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("b", {"app": "y"}))
    rv = custom.list_namespaced_custom_object(G, V, NS, WS)["metadata"]["resourceVersion"]
    custom.patch_namespaced_custom_object(G, V, NS, WS, "a", {"metadata": {"labels": {"app": "y"}}})  # leaves
    custom.patch_namespaced_custom_object(G, V, NS, WS, "b", {"metadata": {"labels": {"app": "x"}}})  # enters
    custom.patch_namespaced_custom_object(G, V, NS, WS, "b", {"metadata": {"labels": {"more": "1"}}})
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("c", {"app": "y"}))  # never matches
    custom.delete_namespaced_custom_object(G, V, NS, WS, "b")
    events = take(custom.list_namespaced_custom_object, G, V, NS, WS, resource_version=rv, label_selector="app=x",
                  count=4)
    assert events == [("DELETED", "a"), ("ADDED", "b"), ("MODIFIED", "b"), ("DELETED", "b")]
    by_name = take(custom.list_namespaced_custom_object, G, V, NS, WS, resource_version=rv,
                   field_selector="metadata.name=a", count=1)
    assert by_name == [("MODIFIED", "a")]


def test_namespace_scoping_of_watches(api_server, custom, api_server_client):
    core = client.CoreV1Api(api_server_client)
    core.create_namespace({"metadata": {"name": "other"}})
    rv = custom.list_cluster_custom_object(G, V, WS)["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(G, V, "other", WS, workspace("o"))
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("d"))
    assert take(custom.list_namespaced_custom_object, G, V, NS, WS, resource_version=rv, count=1) == [("ADDED", "d")]
    assert take(custom.list_cluster_custom_object, G, V, WS, resource_version=rv, count=2) == [
        ("ADDED", "o"), ("ADDED", "d")]


def test_typed_watch_of_builtins(api_server, api_server_client):
    core = client.CoreV1Api(api_server_client)
    rv = core.list_node().metadata.resource_version
    core.create_node({"metadata": {"name": "n1"}})
    w = watch.Watch()
    ev = next(iter(w.stream(core.list_node, resource_version=rv, timeout_seconds=2)))
    w.stop()
    assert ev["type"] == "ADDED" and isinstance(ev["object"], client.V1Node)
    assert ev["object"].metadata.name == "n1"


def test_410_gone_after_compaction(api_server, custom):
    rv = custom.list_namespaced_custom_object(G, V, NS, WS)["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("a"))
    assert api_server.compact() >= int(rv)
    with pytest.raises(ApiException) as err:
        take(custom.list_namespaced_custom_object, G, V, NS, WS, resource_version=rv, count=1)
    assert err.value.status == 410 and "Expired" in err.value.reason
    # Raw HTTP: a 200 stream holding one ERROR event with a 410 Status, as the real server sends.
    conn = api_server.connection(timeout=5)
    conn.request("GET", f"/apis/{G}/{V}/namespaces/{NS}/{WS}?watch=true&resourceVersion={rv}")
    resp = conn.getresponse()
    assert resp.status == 200
    event = json.loads(resp.read().splitlines()[0])
    assert event["type"] == "ERROR"
    assert event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"
    assert event["object"]["kind"] == "Status"
    conn.close()
    # Listing again and watching from the new resourceVersion works.
    new_rv = custom.list_namespaced_custom_object(G, V, NS, WS)["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("b"))
    assert take(custom.list_namespaced_custom_object, G, V, NS, WS, resource_version=new_rv, count=1) == [
        ("ADDED", "b")]


@pytest.mark.parametrize("api_server", [{"history": 5}], indirect=True)
def test_bounded_history(api_server, custom):
    rv = custom.list_namespaced_custom_object(G, V, NS, WS)["metadata"]["resourceVersion"]
    for i in range(3):
        custom.create_namespaced_custom_object(G, V, NS, WS, workspace(f"w{i}"))
    assert len(take(custom.list_namespaced_custom_object, G, V, NS, WS, resource_version=rv, count=3)) == 3
    for i in range(3, 8):
        custom.create_namespaced_custom_object(G, V, NS, WS, workspace(f"w{i}"))
    with pytest.raises(ApiException) as err:
        take(custom.list_namespaced_custom_object, G, V, NS, WS, resource_version=rv, count=1)
    assert err.value.status == 410


def test_python_watch_retries_a_410_once_without_timeout(api_server, custom):
    """Without timeout_seconds the client retries a 410 once from its resourceVersion, then raises."""
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("a"))
    api_server.compact()
    before = api_server.requests[("watch", "workspaces")]
    with pytest.raises(ApiException) as err:
        for _ in watch.Watch().stream(custom.list_namespaced_custom_object, G, V, NS, WS, resource_version="1"):
            pass
    assert err.value.status == 410
    assert api_server.requests[("watch", "workspaces")] - before == 2
