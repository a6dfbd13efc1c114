"""Fault hooks (server.faults) and request counters (server.requests) of the test API server."""

from __future__ import annotations

import http.client
import json
import time

from pathlib import Path

import pytest
import urllib3
from kubernetes import client, watch

import workspace_fsm
from workspace_fsm.testing import TestAPIServer

G, V, NS, WS = "kaito.sh", "v1beta1", "default", "workspaces"
ApiException = client.exceptions.ApiException
KAITO_CRD = Path(workspace_fsm.__file__).parent / "kaito" / "data" / "kaito.sh_workspaces.yaml"


def workspace(name: str) -> dict:
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name},
            "resource": {"instanceType": "Standard_NC24ads_A100_v4", "labelSelector": {"matchLabels": {"a": "b"}}},
            "inference": {"preset": {"name": "phi-4"}}}


def watch_until_it_ends(custom, wait_s: float = 30.0, **kwargs) -> list[str]:
    """Names from one watch of the Workspaces, read in a thread. The server's own end of the watch
    (timeoutSeconds) is far beyond ``wait_s``: a watch that ends within the wait was ended by a fault."""
    import threading

    got: list[str] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for e in watch.Watch().stream(custom.list_namespaced_custom_object, G, V, NS, WS, **kwargs):
                got.append(e["raw_object"]["metadata"]["name"])
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(wait_s)
    assert not t.is_alive(), f"the watch did not end within {wait_s} s; it got {got}"
    if errors:
        raise errors[0]
    return got


def test_one_off_conflict_on_status_writes(api_server, custom):
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("w"))
    rule = api_server.faults.conflict(resources=["workspaces/status"])
    custom.patch_namespaced_custom_object(G, V, NS, WS, "w", {"metadata": {"labels": {"a": "1"}}})  # not matched
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object_status(G, V, NS, WS, "w", {"status": {"state": "x"}})
    assert err.value.status == 409
    body = json.loads(err.value.body)
    assert body["reason"] == "Conflict" and "the object has been modified" in body["message"]
    assert custom.patch_namespaced_custom_object_status(G, V, NS, WS, "w", {"status": {"state": "x"}})
    assert rule.hits == 1 and rule not in api_server.faults.rules


def test_rate_based_faults_are_reproducible_with_a_seed():
    def pattern() -> list[bool]:
        with TestAPIServer(crds=[KAITO_CRD]) as server:
            with server.api_client() as api:
                c = client.CustomObjectsApi(api)
                c.create_namespaced_custom_object(G, V, NS, WS, workspace("w"))
                rule = server.faults.conflict(rate=0.4, seed=7)
                out = []
                for i in range(30):
                    try:
                        c.patch_namespaced_custom_object(G, V, NS, WS, "w", {"metadata": {"labels": {"i": str(i)}}})
                        out.append(True)
                    except ApiException as exc:
                        assert exc.status == 409
                        out.append(False)
                assert rule.hits == out.count(False)
                return out

    first, second = pattern(), pattern()
    assert first == second and 3 < first.count(False) < 27


def test_internal_errors_filtered_by_verb_and_resource(api_server, custom, core):
    api_server.faults.error(500, verbs=["list"], resources=["workspaces"], times=2)
    core.list_node()  # other resources are not affected
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("w"))  # other verbs neither
    for _ in range(2):
        with pytest.raises(ApiException) as err:
            custom.list_namespaced_custom_object(G, V, NS, WS)
        assert err.value.status == 500
        assert json.loads(err.value.body)["reason"] == "InternalError"
    assert custom.list_namespaced_custom_object(G, V, NS, WS)["items"]
    api_server.faults.error(503, verbs=["get"], times=1)
    with pytest.raises(ApiException) as err:
        core.read_namespace("default")
    assert err.value.status == 503


def test_throttling_with_retry_after(api_server, custom):
    api_server.faults.throttle(retry_after=2, verbs=["create"])
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(G, V, NS, WS, workspace("w"))
    assert err.value.status == 429 and err.value.headers["Retry-After"] == "2"
    body = json.loads(err.value.body)
    assert body["reason"] == "TooManyRequests" and body["details"]["retryAfterSeconds"] == 2
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("w"))
    # urllib3 (under the client) retries an idempotent GET answered 429 + Retry-After by itself.
    api_server.faults.throttle(retry_after=0, verbs=["get"])
    before = api_server.requests[("get", "workspaces")]
    assert custom.get_namespaced_custom_object(G, V, NS, WS, "w")
    assert api_server.requests[("get", "workspaces")] - before == 2


def test_a_request_held_past_the_request_timeout_is_answered_504_and_never_applied(api_server, custom):
    """The bound the runner's Config.api_request_timeout rests on: applied within the timeout, or never."""
    api_server.request_timeout = 0.2
    try:
        rule = api_server.faults.latency(0.4, verbs=["create"], times=1)
        with pytest.raises(ApiException) as err:
            custom.create_namespaced_custom_object(G, V, NS, WS, workspace("late"))
        assert err.value.status == 504 and json.loads(err.value.body)["reason"] == "Timeout"
        assert rule.hits == 1
        with pytest.raises(ApiException) as missing:
            custom.get_namespaced_custom_object(G, V, NS, WS, "late")
        assert missing.value.status == 404
        api_server.faults.latency(0.05, verbs=["create"], times=1)  # within the timeout: applied
        custom.create_namespaced_custom_object(G, V, NS, WS, workspace("late"))
        assert custom.get_namespaced_custom_object(G, V, NS, WS, "late")["metadata"]["name"] == "late"
    finally:
        api_server.request_timeout = 60.0


def test_dropped_watch_ends_early(api_server, custom):
    for name in ("a", "b", "c"):
        custom.create_namespaced_custom_object(G, V, NS, WS, workspace(name))
    rule = api_server.faults.drop_watches(after_events=1)
    # Three Workspaces exist, the server would keep the watch open for 10 minutes: it ends after one.
    assert watch_until_it_ends(custom, timeout_seconds=600) == ["a"]
    assert rule.hits == 1
    # Only the next watch was dropped.
    events = list(watch.Watch().stream(custom.list_namespaced_custom_object, G, V, NS, WS, timeout_seconds=1))
    assert len(events) == 3


def test_dropped_watch_after_seconds_and_abrupt(api_server, custom):
    rule = api_server.faults.drop_watches(after_seconds=0.3)
    started = time.monotonic()
    assert watch_until_it_ends(custom, timeout_seconds=600) == []  # ended by the drop, not by the server
    assert time.monotonic() - started >= 0.25 and rule.hits == 1  # not before its time
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("a"))
    api_server.faults.drop_watches(after_events=1, abrupt=True)
    conn = api_server.connection(timeout=5)
    conn.request("GET", f"/apis/{G}/{V}/namespaces/{NS}/{WS}?watch=true&timeoutSeconds=10")
    resp = conn.getresponse()
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    conn.close()
    api_server.faults.drop_watches(after_events=0, abrupt=True)
    with pytest.raises((urllib3.exceptions.ProtocolError, urllib3.exceptions.HTTPError)):
        list(watch.Watch().stream(custom.list_namespaced_custom_object, G, V, NS, WS, timeout_seconds=10))


def test_forced_compaction(api_server, custom):
    rv = custom.list_namespaced_custom_object(G, V, NS, WS)["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("a"))
    api_server.faults.compaction()  # the next watch finds the history compacted
    with pytest.raises(ApiException) as err:
        list(watch.Watch().stream(custom.list_namespaced_custom_object, G, V, NS, WS, resource_version=rv,
                                  timeout_seconds=2))
    assert err.value.status == 410
    rv2 = custom.list_namespaced_custom_object(G, V, NS, WS)["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("b"))
    api_server.faults.compact()
    with pytest.raises(ApiException):
        list(watch.Watch().stream(custom.list_namespaced_custom_object, G, V, NS, WS, resource_version=rv2,
                                  timeout_seconds=2))


def test_added_latency(api_server, custom, core):
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("w"))
    rule = api_server.faults.latency(0.25, verbs=["get"], resources=["workspaces"])
    start = time.monotonic()
    custom.get_namespaced_custom_object(G, V, NS, WS, "w")
    assert time.monotonic() - start >= 0.25
    assert rule.hits == 1
    core.read_namespace("default")  # another resource: not delayed
    custom.list_namespaced_custom_object(G, V, NS, WS)  # another verb: not delayed
    assert rule.hits == 1
    rule.remove()
    custom.get_namespaced_custom_object(G, V, NS, WS, "w")
    assert rule.hits == 1  # removed: it fires no more
    assert api_server.requests[("get", "workspaces")] == 2


def test_faults_filter_by_name_and_clear(api_server, custom):
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("a"))
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("b"))
    api_server.faults.error(500, verbs=["get"], name="a", times=None)
    assert custom.get_namespaced_custom_object(G, V, NS, WS, "b")
    for _ in range(3):
        with pytest.raises(ApiException):
            custom.get_namespaced_custom_object(G, V, NS, WS, "a")
    api_server.faults.clear()
    assert custom.get_namespaced_custom_object(G, V, NS, WS, "a")


def test_request_counters(api_server, custom, core):
    api_server.requests.reset()
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("w"))
    custom.get_namespaced_custom_object(G, V, NS, WS, "w")
    custom.list_namespaced_custom_object(G, V, NS, WS)
    custom.patch_namespaced_custom_object_status(G, V, NS, WS, "w", {"status": {"state": "Ready"}})
    custom.patch_namespaced_custom_object(G, V, NS, WS, "w", {"metadata": {"labels": {"a": "b"}}})
    core.list_node()
    list(watch.Watch().stream(core.list_node, timeout_seconds=1))
    custom.delete_namespaced_custom_object(G, V, NS, WS, "w")
    req = api_server.requests
    assert req[("create", "workspaces")] == 1 and req[("get", "workspaces")] == 1
    assert req[("list", "workspaces")] == 1 and req[("patch", "workspaces/status")] == 1
    assert req[("patch", "workspaces")] == 1 and req[("delete", "workspaces")] == 1
    assert req[("list", "nodes")] == 1 and req[("watch", "nodes")] == 1
    assert req.by_verb()["patch"] == 2 and req.api_total() == 8
    assert req.by_resource()["workspaces"] == 5


def test_intercept_before_abort_drops_the_request_unapplied(api_server, custom):
    seen = []
    api_server.faults.intercept(lambda req: seen.append((req.verb, req.name)) or "abort", verbs=["create"], times=1)
    with pytest.raises(urllib3.exceptions.HTTPError):
        custom.create_namespaced_custom_object(G, V, NS, WS, workspace("w"), _request_timeout=5)
    assert seen == [("create", None)]
    assert api_server.get_object("kaito.sh/v1beta1", WS, "w", NS) is None  # never stored
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("w"))  # the rule fired once


def test_intercept_after_runs_once_the_write_is_stored_and_can_withhold_the_answer(api_server, custom):
    custom.create_namespaced_custom_object(G, V, NS, WS, workspace("w"))
    stored_when_called = []

    def after(req):
        obj = api_server.get_object("kaito.sh/v1beta1", WS, "w", NS)
        stored_when_called.append((obj.get("status") or {}).get("state"))
        return "abort"

    rule = api_server.faults.intercept(after, when="after", verbs=["update"], resources=["*/status"], times=1)
    body = custom.get_namespaced_custom_object(G, V, NS, WS, "w")
    body["status"] = {"state": "Written"}
    # The client never hears back. (urllib3 retries an idempotent PUT whose connection broke; the retry
    # carries the old resourceVersion and is refused with 409, since the first attempt was applied.)
    with pytest.raises((urllib3.exceptions.HTTPError, ApiException)) as err:
        custom.replace_namespaced_custom_object_status(G, V, NS, WS, "w", body, _request_timeout=5)
    assert not isinstance(err.value, ApiException) or err.value.status == 409
    assert stored_when_called == ["Written"] and rule.hits == 1
    # ...but the write happened.
    assert custom.get_namespaced_custom_object(G, V, NS, WS, "w")["status"]["state"] == "Written"
    # A callback that does not abort lets the answer through.
    api_server.faults.intercept(lambda req: None, when="after", verbs=["get"], times=1)
    assert custom.get_namespaced_custom_object(G, V, NS, WS, "w")["metadata"]["name"] == "w"
    with pytest.raises(ValueError):
        api_server.faults.intercept(lambda req: None, when="during")


def test_on_fire_sees_each_request_a_rule_fired_for(api_server, custom):
    told = []
    rule = api_server.faults.throttle(retry_after=3, verbs=["create"], times=2)
    rule.on_fire = lambda req: told.append((req.verb, req.resource_path, req.user_agent.split("/")[0]))
    for _ in range(3):
        try:
            custom.create_namespaced_custom_object(G, V, NS, WS, workspace("w"))
        except ApiException as exc:
            assert exc.status == 429
    assert told == [("create", "workspaces", "OpenAPI-Generator")] * 2


def test_watch_lag_delivers_events_late_but_in_order(api_server, custom):
    rv = custom.list_namespaced_custom_object(G, V, NS, WS)["metadata"]["resourceVersion"]
    api_server.faults.watch_lag(0.8)
    got: list[tuple[str, float]] = []
    start = time.monotonic()
    for name in ("a", "b"):
        custom.create_namespaced_custom_object(G, V, NS, WS, workspace(name))
    for e in watch.Watch().stream(custom.list_namespaced_custom_object, G, V, NS, WS, resource_version=rv,
                                  timeout_seconds=30):
        got.append((e["raw_object"]["metadata"]["name"], time.monotonic() - start))
        if len(got) == 2:
            break
    assert [n for n, _ in got] == ["a", "b"]  # both delivered (within the watch's generous 30 s), in order
    assert all(t >= 0.75 for _, t in got), got  # nothing arrives before it is 0.8 s old
