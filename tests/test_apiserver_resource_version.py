"""resourceVersion semantics of get, list and watch, as a real kube-apiserver answers them.

Sources: API concepts, "Semantics for get and list" and "Streaming lists"
(https://kubernetes.io/docs/reference/using-api/api-concepts/#semantics-for-get-and-list,
https://kubernetes.io/docs/reference/using-api/api-concepts/#streaming-lists);
``staging/src/k8s.io/apiserver/pkg/storage/etcd3/store.go`` (a compacted revision: 410 "The resourceVersion for
the provided list is too old."); ``staging/src/k8s.io/apiserver/pkg/storage/cacher`` (``waitUntilFreshAndBlock``:
a resourceVersion ahead of the cache waits up to 3 s, then ``NewTooLargeResourceVersionError``: 504 Timeout
"Too large resource version", cause ``ResourceVersionTooLarge``, retry after 1 s; a watch-list stream ends its
initial events with a BOOKMARK annotated ``k8s.io/initial-events-end: "true"``);
``staging/src/k8s.io/apimachinery/pkg/apis/meta/internalversion/validation`` (``ValidateListOptions``).
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from kubernetes import client

NS = "default"
ApiException = client.exceptions.ApiException


@pytest.fixture
def api_server_options():
    return {"too_large_rv_wait": 0.4}


def cm(name: str) -> dict:
    return {"metadata": {"name": name}, "data": {"k": name}}


def test_exact_list_at_an_old_revision_and_at_a_compacted_one(api_server, core):
    core.create_namespaced_config_map(NS, cm("a"))
    then = core.list_namespaced_config_map(NS).metadata.resource_version
    core.create_namespaced_config_map(NS, cm("b"))
    core.patch_namespaced_config_map("a", NS, {"data": {"k": "changed"}})
    old = core.list_namespaced_config_map(NS, resource_version=then, resource_version_match="Exact")
    assert [(i.metadata.name, i.data["k"]) for i in old.items] == [("a", "a")]  # the state at that revision
    assert old.metadata.resource_version == then
    api_server.compact()
    with pytest.raises(ApiException) as err:
        core.list_namespaced_config_map(NS, resource_version=then, resource_version_match="Exact")
    assert err.value.status == 410
    assert json.loads(err.value.body) == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                          "message": "The resourceVersion for the provided list is too old.",
                                          "reason": "Expired", "code": 410}
    # a legacy list (no match) with a limit is Exact too; without a limit it is NotOlderThan (answered now)
    with pytest.raises(ApiException) as err:
        core.list_namespaced_config_map(NS, resource_version=then, limit=5)
    assert err.value.status == 410
    assert len(core.list_namespaced_config_map(NS, resource_version=then).items) == 2


def test_not_older_than_a_future_revision_waits_then_504(api_server, core):
    current = int(core.list_namespaced_config_map(NS).metadata.resource_version)
    future = current + 1000
    started = time.monotonic()
    with pytest.raises(ApiException) as err:
        core.list_namespaced_config_map(NS, resource_version=str(future), resource_version_match="NotOlderThan")
    assert time.monotonic() - started >= 0.4  # it waited
    assert err.value.status == 504
    body = json.loads(err.value.body)
    assert body["reason"] == "Timeout"
    assert body["message"] == f"Timeout: Too large resource version: {future}, current: {current}"
    assert body["details"] == {"causes": [{"reason": "ResourceVersionTooLarge",
                                           "message": "Too large resource version"}], "retryAfterSeconds": 1}
    conn = api_server.connection(timeout=5)  # a get with one too
    conn.request("GET", f"/api/v1/namespaces/default?resourceVersion={future}")
    resp = conn.getresponse()
    assert resp.status == 504 and json.loads(resp.read())["reason"] == "Timeout"
    conn.close()


def test_not_older_than_is_answered_once_the_store_catches_up(api_server, core):
    current = int(core.list_namespaced_config_map(NS).metadata.resource_version)
    wanted = current + 12  # revisions step by 2-9: a few writes reach it

    def writes():
        for i in range(8):
            time.sleep(0.02)
            core.create_namespaced_config_map(NS, cm(f"w-{i}"))
    t = threading.Thread(target=writes)
    t.start()
    out = core.list_namespaced_config_map(NS, resource_version=str(wanted), resource_version_match="NotOlderThan")
    t.join()
    assert int(out.metadata.resource_version) >= wanted


def test_list_options_validation(api_server, core):
    with pytest.raises(ApiException) as err:
        core.list_namespaced_config_map(NS, resource_version_match="Exact")
    assert err.value.status == 422
    assert json.loads(err.value.body)["message"] == (
        'ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden '
        'unless resourceVersion is provided')
    with pytest.raises(ApiException) as err:
        core.list_namespaced_config_map(NS, resource_version="0", resource_version_match="Exact")
    assert 'resourceVersionMatch "exact" is forbidden for resourceVersion "0"' in json.loads(err.value.body)["message"]


def _watch(server, query: str, count: int) -> list[dict]:
    conn = server.connection(timeout=5)
    conn.request("GET", f"/api/v1/namespaces/{NS}/configmaps?watch=true&{query}")
    resp = conn.getresponse()
    if resp.status != 200:
        return [{"status": resp.status, "body": json.loads(resp.read())}]
    out = []
    while len(out) < count:
        line = resp.readline()  # http.client undoes the chunking
        if not line:
            break
        if line.strip():
            out.append(json.loads(line))
    conn.close()
    return out


def test_send_initial_events_ends_with_the_initial_events_end_bookmark(api_server, core):
    for name in ("a", "b"):
        core.create_namespaced_config_map(NS, cm(name))
    rv = core.list_namespaced_config_map(NS).metadata.resource_version
    got: list[dict] = []
    t = threading.Thread(target=lambda: got.extend(_watch(
        api_server, "sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true", 4)))
    t.start()
    time.sleep(0.3)
    core.create_namespaced_config_map(NS, cm("c"))
    t.join(5)
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in got] == [
        ("ADDED", "a"), ("ADDED", "b"), ("BOOKMARK", None), ("ADDED", "c")]
    mark = got[2]["object"]
    assert mark["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert mark["metadata"]["resourceVersion"] == rv
    assert mark["kind"] == "ConfigMap" and mark["apiVersion"] == "v1"


def test_send_initial_events_false_and_validation(api_server, core):
    core.create_namespaced_config_map(NS, cm("a"))
    got: list[dict] = []
    t = threading.Thread(target=lambda: got.extend(_watch(
        api_server, "sendInitialEvents=false&resourceVersionMatch=NotOlderThan", 1)))
    t.start()
    time.sleep(0.3)
    core.create_namespaced_config_map(NS, cm("b"))
    t.join(5)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in got] == [("ADDED", "b")]  # no initial state
    bad = _watch(api_server, "sendInitialEvents=true", 1)[0]
    assert bad["status"] == 422
    assert bad["body"]["message"] == ('ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: '
                                      'sendInitialEvents requires setting resourceVersionMatch to NotOlderThan')
    bad = _watch(api_server, "resourceVersionMatch=NotOlderThan&resourceVersion=1", 1)[0]
    assert bad["status"] == 422 and "unless sendInitialEvents is provided" in bad["body"]["message"]


def test_send_initial_events_through_the_python_client(api_server, core):
    from kubernetes import watch

    core.create_namespaced_config_map(NS, cm("a"))
    w = watch.Watch()
    seen = []
    for ev in w.stream(core.list_namespaced_config_map, NS, send_initial_events=True,
                       resource_version_match="NotOlderThan", allow_watch_bookmarks=True, timeout_seconds=3):
        seen.append((ev["type"], ev["raw_object"]["metadata"].get("annotations")))
        if ev["type"] == "BOOKMARK":
            w.stop()
    assert seen == [("ADDED", None), ("BOOKMARK", {"k8s.io/initial-events-end": "true"})]
