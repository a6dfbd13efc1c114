"""List pagination (``limit``/``continue``) as a real kube-apiserver serves it.

Sources: API concepts, "Retrieving large results sets in chunks"
(https://kubernetes.io/docs/reference/using-api/api-concepts/#retrieving-large-results-sets-in-chunks);
``staging/src/k8s.io/apiserver/pkg/storage/continue.go`` (the token: base64url of
``{"v":"meta.k8s.io/v1","rv":..,"start":..}``; undecodable → 400 "invalid continue token: continue key is not
valid...") and ``staging/src/k8s.io/apiserver/pkg/storage/etcd3/store.go`` (``GetList``: every page read at the
first page's revision; ``remainingItemCount`` only without selectors; a compacted revision → 410 with the
"The provided continue parameter is too old..." message and a fresh token whose ``rv`` is -1).
"""

from __future__ import annotations

import base64
import json

import pytest
from kubernetes import client

from workspace_fsm.testing.listing import INCONSISTENT_CONTINUE

NS = "default"
ApiException = client.exceptions.ApiException


def cm(name: str, labels: dict | None = None) -> dict:
    return {"metadata": {"name": name, "labels": labels or {}}, "data": {"k": name}}


def token(doc: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode().rstrip("=")


def untoken(value: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))


@pytest.fixture
def seeded(core):
    core.create_namespace({"metadata": {"name": "team"}})
    for i in range(7):
        core.create_namespaced_config_map(NS, cm(f"cm-{i}", {"parity": "even" if i % 2 == 0 else "odd"}))
    for name in ("a-1", "z-9"):
        core.create_namespaced_config_map("team", cm(name, {"parity": "odd"}))
    return core


def pages(fn, *args, **kwargs) -> list:
    out = []
    cont = kwargs.pop("_continue", None)
    while True:
        resp = fn(*args, _continue=cont, **kwargs) if cont else fn(*args, **kwargs)
        out.append(resp)
        cont = resp.metadata._continue
        if not cont:
            return out


def test_limit_and_continue_walk_a_namespace(api_server, seeded):
    got = pages(seeded.list_namespaced_config_map, NS, limit=3)
    assert [[i.metadata.name for i in p.items] for p in got] == [
        ["cm-0", "cm-1", "cm-2"], ["cm-3", "cm-4", "cm-5"], ["cm-6"]]
    assert [p.metadata.remaining_item_count for p in got] == [4, 1, None]
    assert len({p.metadata.resource_version for p in got}) == 1  # one snapshot for every page
    first = untoken(got[0].metadata._continue)
    assert first == {"v": "meta.k8s.io/v1", "rv": int(got[0].metadata.resource_version), "start": "cm-2\x00"}


def test_pages_come_from_the_first_page_snapshot(api_server, seeded):
    page1 = seeded.list_namespaced_config_map(NS, limit=3)
    seeded.create_namespaced_config_map(NS, cm("cm-5a"))  # after the snapshot: not listed
    seeded.delete_namespaced_config_map("cm-6", NS)  # after the snapshot: still listed
    seeded.patch_namespaced_config_map("cm-4", NS, {"data": {"k": "changed"}})
    rest = pages(seeded.list_namespaced_config_map, NS, limit=10, _continue=page1.metadata._continue)
    items = [i for p in rest for i in p.items]
    assert [i.metadata.name for i in items] == ["cm-3", "cm-4", "cm-5", "cm-6"]
    assert items[1].data == {"k": "cm-4"}  # as it was at the snapshot
    assert rest[0].metadata.resource_version == page1.metadata.resource_version


def test_cluster_wide_pages_in_storage_key_order(api_server, seeded):
    got = pages(seeded.list_config_map_for_all_namespaces, limit=4)
    names = [(i.metadata.namespace, i.metadata.name) for p in got for i in p.items]
    assert names == [(NS, f"cm-{i}") for i in range(7)] + [("team", "a-1"), ("team", "z-9")]
    assert [len(p.items) for p in got] == [4, 4, 1]
    assert untoken(got[0].metadata._continue)["start"] == "default/cm-3\x00"


def test_selectors_with_limit_give_no_remaining_count(api_server, seeded):
    got = pages(seeded.list_config_map_for_all_namespaces, limit=2, label_selector="parity=odd")
    names = [i.metadata.name for p in got for i in p.items]
    assert names == ["cm-1", "cm-3", "cm-5", "a-1", "z-9"]
    assert all(p.metadata.remaining_item_count is None for p in got)  # inaccurate with selectors: not given
    got = pages(seeded.list_namespaced_config_map, NS, limit=2, field_selector="metadata.name!=cm-0")
    assert [i.metadata.name for p in got for i in p.items] == [f"cm-{i}" for i in range(1, 7)]


def test_a_garbage_continue_token_is_400(api_server, seeded):
    for bad in ("garbage", "!!!", token({"v": "meta.k8s.io/v1", "rv": 0, "start": "x"})):
        with pytest.raises(ApiException) as err:
            seeded.list_namespaced_config_map(NS, limit=2, _continue=bad)
        assert err.value.status == 400
        body = json.loads(err.value.body)
        assert body["reason"] == "BadRequest"
        assert body["message"].startswith("invalid continue token: continue key is not valid")
    with pytest.raises(ApiException) as err:
        seeded.list_namespaced_config_map(NS, limit=2, _continue=token({"v": "v9", "rv": 5, "start": "x"}))
    assert json.loads(err.value.body)["message"] == ("invalid continue token: continue key is not valid: server does "
                                                     "not recognize this encoded version v9")
    with pytest.raises(ApiException) as err:
        seeded.list_namespaced_config_map(NS, limit=2, _continue=token({"v": "meta.k8s.io/v1", "rv": 5, "start": ""}))
    assert json.loads(err.value.body)["message"] == ("invalid continue token: continue key is not valid: encoded "
                                                     "start key empty (version meta.k8s.io/v1)")


def test_resource_version_with_continue_is_400(api_server, seeded):
    page = seeded.list_namespaced_config_map(NS, limit=2)
    with pytest.raises(ApiException) as err:
        seeded.list_namespaced_config_map(NS, limit=2, _continue=page.metadata._continue,
                                          resource_version=page.metadata.resource_version)
    assert err.value.status == 400
    assert json.loads(err.value.body)["message"] == "specifying resource version is not allowed when using continue"


def test_an_expired_continue_token_is_410_with_a_fresh_token(api_server, seeded):
    page = seeded.list_namespaced_config_map(NS, limit=3)
    seeded.create_namespaced_config_map(NS, cm("cm-9"))
    api_server.compact()  # the first page's revision is compacted away
    with pytest.raises(ApiException) as err:
        seeded.list_namespaced_config_map(NS, limit=3, _continue=page.metadata._continue)
    assert err.value.status == 410
    body = json.loads(err.value.body)
    assert body["reason"] == "Expired" and body["code"] == 410
    assert body["message"] == INCONSISTENT_CONTINUE
    assert body["message"].startswith("The provided continue parameter is too old to display a consistent list")
    fresh = body["metadata"]["continue"]
    assert untoken(fresh) == {"v": "meta.k8s.io/v1", "rv": -1, "start": "cm-2\x00"}
    rest = pages(seeded.list_namespaced_config_map, NS, limit=3, _continue=fresh)  # the rest, from the newest state
    assert [i.metadata.name for p in rest for i in p.items] == ["cm-3", "cm-4", "cm-5", "cm-6", "cm-9"]
    assert int(rest[0].metadata.resource_version) > int(page.metadata.resource_version)


def test_resource_version_zero_ignores_limit(api_server, seeded):
    """resourceVersion=0 is served from the watch cache, which does not paginate."""
    resp = seeded.list_namespaced_config_map(NS, limit=2, resource_version="0")
    assert len(resp.items) == 7 and resp.metadata._continue is None


def test_custom_resources_paginate(api_server, custom):
    for i in range(3):
        custom.create_cluster_custom_object("karpenter.sh", "v1", "nodeclaims", {
            "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": {"name": f"nc-{i}"},
            "spec": {"nodeClassRef": {"group": "karpenter.azure.com", "kind": "AKSNodeClass", "name": "default"},
                     "requirements": []}})
    page = custom.list_cluster_custom_object("karpenter.sh", "v1", "nodeclaims", limit=2)
    assert [i["metadata"]["name"] for i in page["items"]] == ["nc-0", "nc-1"]
    assert page["metadata"]["remainingItemCount"] == 1
    rest = custom.list_cluster_custom_object("karpenter.sh", "v1", "nodeclaims", limit=2,
                                             _continue=page["metadata"]["continue"])
    assert [i["metadata"]["name"] for i in rest["items"]] == ["nc-2"] and "continue" not in rest["metadata"]


def test_kubectl_chunk_size(api_server, seeded, api_server_kubectl):
    api_server.requests.reset()
    out = api_server_kubectl("get", "configmaps", "--chunk-size=2", "-o", "name")
    assert out.stdout.split() == [f"configmap/cm-{i}" for i in range(7)]
    assert api_server.requests[("list", "configmaps")] == 4  # 2 + 2 + 2 + 1
    out = api_server_kubectl("get", "configmaps", "-A", "--chunk-size=3")
    rows = out.stdout.splitlines()
    assert rows[0].split()[:2] == ["NAMESPACE", "NAME"] and len(rows) == 10


# ---------------------------------------------------------------------------- property

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@pytest.fixture(scope="module")
def paging_server():
    from workspace_fsm.testing import TestAPIServer

    with TestAPIServer(seed=11, gc=False) as server:
        api = client.CoreV1Api(server.api_client())
        for ns in ("a", "a-b", "b"):
            api.create_namespace({"metadata": {"name": ns}})
            for i in range(6):
                api.create_namespaced_config_map(ns, cm(f"c{i}", {"mod": str(i % 3)}))
        yield server, api


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(1, 8), namespace=st.sampled_from([None, "a", "a-b", "b"]),
       selector=st.sampled_from([None, "mod=1", "mod!=0", "mod in (0,2)"]),
       writes=st.lists(st.tuples(st.sampled_from(["a", "a-b", "b"]), st.integers(0, 9)), max_size=3))
def test_property_pages_add_up_to_the_list_of_the_first_revision(paging_server, limit, namespace, selector, writes):
    """Whatever the limit, selector and writes between pages: the pages, in order, are exactly the list at the
    first page's revision, each at most ``limit`` long, all at that revision."""
    server, api = paging_server
    kwargs = {"label_selector": selector} if selector else {}
    fn = (lambda **kw: api.list_namespaced_config_map(namespace, **kw)) if namespace else \
        (lambda **kw: api.list_config_map_for_all_namespaces(**kw))
    whole = fn(**kwargs)
    first = fn(limit=limit, **kwargs)
    got = list(first.items)
    cont = first.metadata._continue
    for ns, i in writes:  # changes after the snapshot must not show
        api.patch_namespaced_config_map(f"c{i % 6}", ns, {"data": {"k": f"w{i}"}})
    while cont:
        page = fn(limit=limit, _continue=cont, **kwargs)
        assert len(page.items) <= limit
        assert page.metadata.resource_version == first.metadata.resource_version
        got.extend(page.items)
        cont = page.metadata._continue
    assert first.metadata.resource_version == whole.metadata.resource_version  # nothing written in between
    assert [(i.metadata.namespace, i.metadata.name, i.data) for i in got] == \
        [(i.metadata.namespace, i.metadata.name, i.data) for i in whole.items]
    assert [(i.metadata.namespace, i.metadata.name, i.data) for i in got] == \
        [(i.metadata.namespace, i.metadata.name, i.data) for i in fn(resource_version=first.metadata.resource_version,
                                                                   resource_version_match="Exact", **kwargs).items]
    keys = [f"{i.metadata.namespace}/{i.metadata.name}" for i in got]
    assert keys == sorted(keys)  # storage-key order ("a-b/..." before "a/...", as etcd's bytes sort)
