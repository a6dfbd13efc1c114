"""The informer's indexes (``add_index`` / ``by_index``) against the test API server: kept right through
creates, label and owner changes, deletes (also a watch's DELETED for an object that stopped matching the
selector, which carries the object's new labels), and a relist after 410 Gone; and a lookup's work does
not grow with the cache."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

import pytest
from kubernetes import client

from workspace_fsm.adapters.kubernetes.informer import Informer
from workspace_fsm.testing import TestAPIServer

NS = "default"


def wait(check, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def owners(obj: dict[str, Any]) -> list[str]:
    return [ref["uid"] for ref in (obj.get("metadata") or {}).get("ownerReferences") or []]


def team(obj: dict[str, Any]) -> str | None:
    return ((obj.get("metadata") or {}).get("labels") or {}).get("team")


def deployments_informer(api_client, **kw: Any) -> Informer:
    custom = client.CustomObjectsApi(api_client)

    def list_deployments(**k: Any) -> Any:
        return custom.list_namespaced_custom_object("apps", "v1", NS, "deployments", **k)

    list_deployments.__doc__ = ":return: object\n"  # kubernetes.watch.Watch reads it
    return Informer("deployments", list_deployments, **kw)


@pytest.fixture
def started():
    informers: list[Informer] = []

    def start(inf: Informer) -> Informer:
        inf.start()
        informers.append(inf)
        assert inf.wait_synced(10)
        return inf

    yield start
    for inf in informers:
        inf.stop()
    for inf in informers:
        inf.join(5)


def owner_cm(core, name: str) -> dict[str, str]:
    cm = core.create_namespaced_config_map(NS, {"metadata": {"name": name}})
    return {"apiVersion": "v1", "kind": "ConfigMap", "name": name, "uid": cm.metadata.uid}


def deployment(name: str, *, labels: dict[str, str] | None = None, owned_by: list[dict] | None = None) -> dict:
    meta: dict[str, Any] = {"name": name, "labels": dict(labels or {})}
    if owned_by:
        meta["ownerReferences"] = owned_by
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {"selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": "example.com/img:1"}]}}}}


def names(objs: list[dict]) -> list[str]:
    return sorted(o["metadata"]["name"] for o in objs)


def assert_index_matches_cache(inf: Informer, index: str, fn) -> None:
    """The index holds exactly what recomputing ``fn`` over the cached objects gives (no stale value, no
    stale key, no empty bucket), and ``by_index`` returns the cached objects themselves."""
    expected: dict[str, set[str]] = defaultdict(set)
    cached = {f"{NS}/{o['metadata']['name']}": o for o in inf.items()}
    for key, obj in cached.items():
        value = fn(obj)
        for v in ([value] if isinstance(value, str) else value or []):
            expected[v].add(key)
    assert set(inf.index_values(index)) == set(expected)
    for value, keys in expected.items():
        assert set(inf.index_keys(index, value)) == keys
        found = inf.by_index(index, value)
        assert len(found) == len(keys)
        assert all(o is cached[f"{NS}/{o['metadata']['name']}"] for o in found)


def test_the_index_follows_creates_label_and_owner_changes_and_deletes(api_server, api_server_client, custom, core,
                                                                      started):
    inf = deployments_informer(api_server_client)
    inf.add_index("owner", owners)
    inf.add_index("team", team)
    started(inf)
    assert inf.by_index("owner", "nobody") == [] and inf.index_values("team") == []

    a, b = owner_cm(core, "owner-a"), owner_cm(core, "owner-b")
    custom.create_namespaced_custom_object("apps", "v1", NS, "deployments",
                                           deployment("d1", labels={"team": "red"}, owned_by=[a]))
    custom.create_namespaced_custom_object("apps", "v1", NS, "deployments",
                                           deployment("d2", labels={"team": "blue"}, owned_by=[a, b]))
    custom.create_namespaced_custom_object("apps", "v1", NS, "deployments", deployment("d3"))
    wait(lambda: len(inf.items()) == 3, "three Deployments in the cache")
    assert names(inf.by_index("owner", a["uid"])) == ["d1", "d2"]
    assert names(inf.by_index("owner", b["uid"])) == ["d2"]
    assert names(inf.by_index("team", "red")) == ["d1"] and names(inf.by_index("team", "blue")) == ["d2"]
    assert set(inf.index_values("team")) == {"red", "blue"}  # d3 (None) is in no bucket
    assert_index_matches_cache(inf, "owner", owners)
    assert_index_matches_cache(inf, "team", team)

    # A label change moves the object from one value to another; the old value's bucket goes away.
    custom.patch_namespaced_custom_object("apps", "v1", NS, "deployments", "d1",
                                          {"metadata": {"labels": {"team": "blue"}}})
    wait(lambda: team(inf.get(f"{NS}/d1")) == "blue", "d1's new label in the cache")
    assert inf.by_index("team", "red") == []
    assert "red" not in inf.index_values("team")
    assert names(inf.by_index("team", "blue")) == ["d1", "d2"]
    assert any(o is inf.get(f"{NS}/d1") for o in inf.by_index("team", "blue"))  # the cached object itself

    # An owner added and one removed: the object is filed under its new owners only.
    custom.patch_namespaced_custom_object("apps", "v1", NS, "deployments", "d2",
                                          {"metadata": {"ownerReferences": [b]}})
    custom.patch_namespaced_custom_object("apps", "v1", NS, "deployments", "d3",
                                          {"metadata": {"ownerReferences": [b]}})
    wait(lambda: owners(inf.get(f"{NS}/d2")) == [b["uid"]] and owners(inf.get(f"{NS}/d3")) == [b["uid"]],
         "the new owners in the cache")
    assert names(inf.by_index("owner", a["uid"])) == ["d1"]
    assert names(inf.by_index("owner", b["uid"])) == ["d2", "d3"]

    custom.delete_namespaced_custom_object("apps", "v1", NS, "deployments", "d2")
    wait(lambda: inf.gone(f"{NS}/d2"), "d2's deletion in the cache")
    assert names(inf.by_index("owner", b["uid"])) == ["d3"]
    assert names(inf.by_index("team", "blue")) == ["d1"]
    assert_index_matches_cache(inf, "owner", owners)
    assert_index_matches_cache(inf, "team", team)

    with pytest.raises(KeyError):
        inf.by_index("no-such-index", "x")
    with pytest.raises(ValueError):
        inf.add_index("team", team)


def test_an_index_added_after_sync_covers_the_cached_objects(api_server, api_server_client, custom, core, started):
    a = owner_cm(core, "owner-a")
    for i in range(3):
        custom.create_namespaced_custom_object("apps", "v1", NS, "deployments", deployment(f"d{i}", owned_by=[a]))
    inf = started(deployments_informer(api_server_client))
    inf.add_index("owner", owners)
    assert names(inf.by_index("owner", a["uid"])) == ["d0", "d1", "d2"]
    custom.create_namespaced_custom_object("apps", "v1", NS, "deployments", deployment("d3", owned_by=[a]))
    wait(lambda: len(inf.by_index("owner", a["uid"])) == 4, "d3 indexed")


def test_a_deleted_event_for_an_object_that_left_the_selector_unfiles_what_was_cached(
        api_server, api_server_client, custom, started):
    """A label-selected watch reports an object that stops matching as DELETED, carrying its *new* labels:
    the index must drop what it filed for the cached object, not look up the event's object."""
    inf = deployments_informer(api_server_client, label_selector="watched=yes")
    inf.add_index("team", team)
    started(inf)
    custom.create_namespaced_custom_object("apps", "v1", NS, "deployments",
                                           deployment("d1", labels={"watched": "yes", "team": "red"}))
    custom.create_namespaced_custom_object("apps", "v1", NS, "deployments",
                                           deployment("d2", labels={"watched": "yes", "team": "red"}))
    wait(lambda: len(inf.by_index("team", "red")) == 2, "both indexed")
    events: list[tuple[str, dict | None]] = []
    inf.add_handler(lambda t, old, new: events.append((t, old)))
    custom.patch_namespaced_custom_object("apps", "v1", NS, "deployments", "d1",
                                          {"metadata": {"labels": {"watched": "no", "team": "green"}}})
    wait(lambda: inf.gone(f"{NS}/d1"), "d1 gone from the selected cache")
    assert [t for t, _ in events] == ["DELETED"]
    assert names(inf.by_index("team", "red")) == ["d2"]
    assert inf.by_index("team", "green") == [] and set(inf.index_values("team")) == {"red"}
    assert_index_matches_cache(inf, "team", team)


def test_a_relist_after_410_replaces_the_index(api_server, api_server_client, custom, core, started):
    """Changes made while the informer was not watching reach it only through the relist that follows
    410 Gone: objects created, relabelled, re-owned and deleted in the gap are all indexed right."""
    a, b = owner_cm(core, "owner-a"), owner_cm(core, "owner-b")
    for name, labels, refs in (("d1", {"team": "red"}, [a]), ("d2", {"team": "red"}, [a]), ("d3", {}, [b])):
        custom.create_namespaced_custom_object("apps", "v1", NS, "deployments",
                                               deployment(name, labels=labels, owned_by=refs))
    # Short watches, so that the informer soon opens a new one; the next one is held at the server.
    inf = deployments_informer(api_server_client, watch_timeout_s=1)
    inf.add_index("owner", owners)
    inf.add_index("team", team)
    started(inf)
    assert names(inf.by_index("team", "red")) == ["d1", "d2"] and inf.relists == 1
    held, gate = threading.Event(), threading.Event()

    def hold(_req) -> None:
        held.set()
        gate.wait(30)

    rule = api_server.faults.intercept(hold, verbs=["watch"], resources=["deployments"], times=1)
    assert held.wait(10), "the informer did not open a new watch"
    seen: list[str] = []
    inf.add_handler(lambda t, old, new: seen.append(t))
    try:
        custom.patch_namespaced_custom_object("apps", "v1", NS, "deployments", "d1",
                                              {"metadata": {"labels": {"team": "blue"}}})
        custom.patch_namespaced_custom_object("apps", "v1", NS, "deployments", "d3",
                                              {"metadata": {"ownerReferences": [a], "labels": {"team": "blue"}}})
        custom.delete_namespaced_custom_object("apps", "v1", NS, "deployments", "d2")
        custom.create_namespaced_custom_object("apps", "v1", NS, "deployments",
                                               deployment("d4", labels={"team": "red"}, owned_by=[b]))
        assert names(inf.by_index("team", "red")) == ["d1", "d2"]  # nothing seen yet
        api_server.compact()  # the held watch's resourceVersion is now history: 410 Gone
    finally:
        gate.set()
        rule.remove()
    wait(lambda: inf.relists >= 2 and inf.get(f"{NS}/d4") is not None, "the relist after 410")
    assert inf.relists == 2
    assert sorted(seen) == ["ADDED", "DELETED", "MODIFIED", "MODIFIED"]  # from the relist's comparison
    assert names(inf.by_index("team", "red")) == ["d4"]
    assert names(inf.by_index("team", "blue")) == ["d1", "d3"]
    assert names(inf.by_index("owner", a["uid"])) == ["d1", "d3"]
    assert names(inf.by_index("owner", b["uid"])) == ["d4"]
    assert_index_matches_cache(inf, "owner", owners)
    assert_index_matches_cache(inf, "team", team)


class _CountingStore(dict):
    """The informer's store, counting every object read out of it (by key or by iteration)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.touched = 0

    def __getitem__(self, key: str) -> Any:
        self.touched += 1
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.touched += 1
        return super().get(key, default)

    def __iter__(self):
        for key in super().__iter__():
            self.touched += 1
            yield key

    def values(self):
        return [self[k] for k in list(dict.keys(self))]

    def items(self):
        return [(k, self[k]) for k in list(dict.keys(self))]


def _lookup_work(total: int, mine: int) -> tuple[int, int, list[str]]:
    """A server whose ``total`` Deployments are ``mine`` owned by one ConfigMap and the rest by others, and
    an informer over them: (index function calls, cached objects touched, names) for one ``by_index`` of
    that owner."""
    with TestAPIServer() as server:
        store = server.store
        cm, dep = server.resource("", "configmaps"), server.resource("apps", "deployments")
        owner_refs = []
        for i in range(20):
            o = store.create(cm, "v1", NS, {"apiVersion": "v1", "kind": "ConfigMap",
                                            "metadata": {"name": f"owner-{i}"}})
            owner_refs.append({"apiVersion": "v1", "kind": "ConfigMap", "name": f"owner-{i}",
                               "uid": o["metadata"]["uid"]})
        target, others = owner_refs[0], owner_refs[1:]
        for i in range(total):  # the target's objects spread through the cache, not at its start
            refs = [target] if i % (total // mine) == 0 and i // (total // mine) < mine else [others[i % len(others)]]
            store.create(dep, "v1", NS, deployment(f"d{i:05d}", owned_by=refs))
        calls = 0

        def counted_owners(obj: dict[str, Any]) -> list[str]:
            nonlocal calls
            calls += 1
            return owners(obj)

        api = server.api_client()
        inf = deployments_informer(api)
        inf.add_index("owner", counted_owners)
        inf.start()
        try:
            assert inf.wait_synced(30)
            assert len(inf.items()) == total and calls == total  # each object indexed once, when listed
            with inf._lock:  # instrument: count the objects the lookup reads out of the cache
                inf._store = counting = _CountingStore(inf._store)
                calls = 0
                found = inf.by_index("owner", target["uid"])
                work = (calls, counting.touched, [o["metadata"]["name"] for o in found])
                inf._store = dict(counting)
        finally:
            inf.stop()  # its watch ends when the server stops
            api.close()
    inf.join(5)
    return work


def test_a_lookup_touches_only_its_matches_whatever_the_size_of_the_cache():
    mine = 7
    small, large = _lookup_work(100, mine), _lookup_work(10_000, mine)
    assert small[0] == large[0] == 0  # the index function is never called by a lookup
    assert small[1] == large[1] == mine  # exactly the matching objects are read out of the cache
    assert len(small[2]) == len(large[2]) == mine
    assert small[2] == [f"d{i * (100 // mine):05d}" for i in range(mine)]
    assert large[2] == [f"d{i * (10_000 // mine):05d}" for i in range(mine)]
