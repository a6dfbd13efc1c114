"""Nothing in a pass may cost more as the cluster grows: the Workspace adapter's observe reads a Workspace's
own NodeClaims through the owner index, so the objects it touches are the same at 100 and at 10,000."""

from __future__ import annotations

from workspace_fsm.adapters.kubernetes.adapter import KubernetesAdapter, to_nodeclaim
from workspace_fsm.adapters.kubernetes import adapter as adapter_module
from workspace_fsm.kaito.catalogue import Catalogue
from kubernetes import client as k8s


def _claim(owner: int, i: int) -> dict:
    return {"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
            "metadata": {"name": f"ws-{owner}-{i}", "resourceVersion": "1",
                         "labels": {"kaito.sh/workspace": f"ws-{owner}", "kaito.sh/workspacenamespace": "default"}},
            "spec": {"requirements": []}, "status": {}}


def _touched(total_workspaces: int, monkeypatch) -> int:
    a = KubernetesAdapter(k8s.ApiClient(), catalogue=Catalogue.default())
    ws = {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace",
          "metadata": {"name": "ws-0", "namespace": "default", "resourceVersion": "1", "uid": "u"},
          "resource": {"instanceType": "Standard_NC24ads_A100_v4", "labelSelector": {"matchLabels": {"a": "b"}}},
          "inference": {"preset": {"name": "phi-4-mini-instruct"}}}
    # The caches filled as a list fills them (no server needed: this observe reads only caches).
    _fill(a.workspaces, [ws])
    _fill(a.nodeclaims, [_claim(o, i) for o in range(total_workspaces) for i in range(2)])
    calls = 0
    real = to_nodeclaim

    def counting(obj):
        nonlocal calls
        calls += 1
        return real(obj)

    monkeypatch.setattr(adapter_module, "to_nodeclaim", counting)
    touched = 0
    real_items = type(a.nodeclaims).items

    def items(self):
        nonlocal touched
        out = real_items(self)
        touched += len(out)
        return out

    monkeypatch.setattr(type(a.nodeclaims), "items", items)
    behind = getattr(a.nodeclaims, "informer", None)  # the shared informer behind a view: a scan of it counts too
    if behind is not None:
        real_behind = type(behind).items

        def behind_items(self):
            nonlocal touched
            out = real_behind(self)
            touched += len(out)
            return out

        monkeypatch.setattr(type(behind), "items", behind_items)
    ws_obj, snap = a.observe("default/ws-0")
    assert ws_obj is not None and len(snap.nodeclaims) == 2
    return calls + touched


def _fill(inf, objs):
    from workspace_fsm.adapters.kubernetes.informer import object_key

    inf = getattr(inf, "informer", inf)  # a lifecycle's view of a shared informer: fill the informer behind it
    with inf._lock:
        inf._store = {object_key(o): o for o in objs}
        inf._index_rebuild()


def test_observe_touches_the_same_objects_at_100_and_10000_workspaces(monkeypatch):
    small = _touched(100, monkeypatch)
    monkeypatch.undo()
    large = _touched(10_000, monkeypatch)
    # The two NodeClaims of the Workspace observed, and nothing else; a scan of the cache (as before the
    # index) would touch 200 and 20,000.
    assert small == large == 2


def test_a_deletion_seen_after_a_create_whose_own_event_came_first_is_not_hidden():
    # The create's own ADDED event can reach the cache before the create's answer: the answer then notes the Job
    # as "known to exist" after the cache already showed it. A later DELETED event must clear that note, or the
    # adapter would take the Job as existing for ever (and the machine would never re-create it).
    from workspace_fsm.adapters.kubernetes.informer import object_key

    a = KubernetesAdapter(k8s.ApiClient(), catalogue=Catalogue.default())
    behind = getattr(a.jobs, "informer", a.jobs)
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": "ws-0", "namespace": "default", "resourceVersion": "5", "labels": {"a": "b"},
                        "ownerReferences": [{"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "name": "ws-0",
                                             "uid": "u", "controller": True}]}}
    key = object_key(job)
    behind._notify("ADDED", None, job)  # the watch first
    a._known.add(f"Job/{key}")  # then the create's answer, as applying CreateJob notes it
    behind._remember_deleted(key)
    behind._notify("DELETED", job, None)  # someone deletes it
    assert f"Job/{key}" not in a._known
    assert a.jobs.gone(key)
