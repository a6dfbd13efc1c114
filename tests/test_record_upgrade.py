"""In-place upgrade: the current runner takes over a cluster the previous runner (record version 1) left
mid-way, and finishes every Workspace without recreating anything that existed.

``tests/data/v1_store.json.gz`` holds every object listed from the embedded cluster while the previous
runner took KAITO's example Workspaces (namespace ``upgrade``) through their lifecycle, at three moments.
Each moment is loaded into a fresh embedded cluster:

- objects are created (the server gives each a new uid) and then their status is written through the
  status subresource; Workspaces first, so that ownerReferences and the ``kaito.sh/workspace-uid``
  annotation can be pointed at the new uids. Names, labels and annotations are kept: the NodeClaim names
  embed a hash of the old Workspace uid, and the runner finds them by label and by the names its record
  holds;
- every timestamp (the record's, the conditions', a Job's start) is moved forward by the time between the
  moment and the load, so that the new runner starts a second or two after the old one stopped, as in a
  rolling update, not hours later with every deadline long past;
- the simulated controllers start only after the load, so that they see the objects as the real
  controllers would after a restart of their own (they then carry on from what they find).

Then the current runner runs until every Workspace is at its goal, and the request log shows what it
created and deleted. Everything expected is derived from the data: with the data as captured, no NodeClaim
is created or deleted at any moment (every record held its targetNodeCount NodeClaims), no workload or Job
that existed is created again, and exactly one is created for each Workspace that had none (33 at the
first moment, 22 at the second, none at the third).

Without the clock moved forward the first moment is a different story, and not one of upgrading: a record
that entered NodesProvisioning hours ago is past that state's 10-minute deadline, so every NodeClaim not
yet Ready is replaced at once, each counting as a failure; a Workspace of six nodes reaches
``max_nodeclaim_failures`` in that one pass and gives up.
"""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from workspace_fsm.cli.embedded import EmbeddedCluster
from workspace_fsm.kaito.model import LABEL_WORKSPACE, LABEL_WORKSPACE_NAMESPACE, WorkspaceStatus
from workspace_fsm.kaito.workspace import LIFECYCLE_CONDITION, read_lifecycle

DATA = Path(__file__).resolve().parent / "data" / "v1_store.json.gz"
NS = "upgrade"
TIME_SCALE = 600.0  # a 240 s NodeClaim takes 0.4 s, a 600-1800 s tuning Job 1-3 s
GOAL_TIMEOUT_S = 40.0
UID_ANNOTATION = "kaito.sh/workspace-uid"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
OWNED = {"NodeClaim": ("karpenter.sh", "v1", "nodeclaims", False),
         "Deployment": ("apps", "v1", "deployments", True),
         "StatefulSet": ("apps", "v1", "statefulsets", True),
         "Job": ("batch", "v1", "jobs", True)}
PLURAL_KIND = {plural: kind for kind, (_, _, plural, _) in OWNED.items()}
SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields", "deletionTimestamp",
                 "deletionGracePeriodSeconds", "selfLink")

_DATA = json.loads(gzip.decompress(DATA.read_bytes()))
MOMENTS = _DATA["moments"]

# ----------------------------------------------------------------------------- timestamps

_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)(Z|[+-]\d\d:\d\d)$")


def _parse(s: str) -> datetime | None:
    m = _TIME.match(s)
    if not m:
        return None
    return datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(2) == "Z" else m.group(2)))


def _format_like(original: str, t: datetime) -> str:
    t = t.astimezone(timezone.utc)
    frac = _TIME.match(original).group(1)[19:]  # type: ignore[union-attr]
    base = t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{t.microsecond:06d}"[:len(frac)] if frac else "")
    return base + ("Z" if original.endswith("Z") else "+00:00")


def _walk_times(value: Any, fn: Callable[[str, datetime], Any]) -> Any:
    """``value`` with every timestamp string replaced by ``fn(string, time)``; the record (a JSON document
    in the lifecycle condition's message) included."""
    if isinstance(value, dict):
        out = {k: _walk_times(v, fn) for k, v in value.items()}
        if out.get("type") == LIFECYCLE_CONDITION and isinstance(out.get("message"), str):
            out["message"] = json.dumps(_walk_times(json.loads(out["message"]), fn), separators=(",", ":"))
        return out
    if isinstance(value, list):
        return [_walk_times(v, fn) for v in value]
    if isinstance(value, str):
        t = _parse(value)
        return value if t is None else fn(value, t)
    return value


def moment_time(objects: list[dict]) -> datetime:
    """When a moment was listed: the latest timestamp in it (near enough: the previous runner wrote often)."""
    latest: list[datetime] = []
    _walk_times(objects, lambda s, t: latest.append(t))
    return max(latest)


def shifted(obj: dict, delta: timedelta) -> dict:
    return _walk_times(obj, lambda s, t: _format_like(s, t + delta))


# ----------------------------------------------------------------------------- what the data says


def record_of(ws: dict) -> dict:
    for c in (ws.get("status") or {}).get("conditions") or []:
        if c.get("type") == LIFECYCLE_CONDITION:
            return json.loads(c["message"])
    return {}


def owner_name(obj: dict) -> str | None:
    if obj["kind"] == "NodeClaim":
        labels = obj["metadata"].get("labels") or {}
        return labels.get(LABEL_WORKSPACE) if labels.get(LABEL_WORKSPACE_NAMESPACE) == NS else None
    return next((r["name"] for r in obj["metadata"].get("ownerReferences") or [] if r.get("kind") == "Workspace"), None)


class Before:
    """Per Workspace, what the moment held."""

    def __init__(self, objects: list[dict]) -> None:
        self.workspaces = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Workspace"}
        self.target = {n: (w.get("status") or {}).get("targetNodeCount") for n, w in self.workspaces.items()}
        self.recorded = {n: list(record_of(w).get("claims", [])) for n, w in self.workspaces.items()}
        self.nodeclaims: dict[str, set[str]] = defaultdict(set)
        self.workloads: dict[str, set[str]] = defaultdict(set)
        for o in objects:
            owner = owner_name(o)
            if o["kind"] == "NodeClaim" and owner:
                self.nodeclaims[owner].add(o["metadata"]["name"])
            elif o["kind"] in WORKLOAD_KINDS and owner:
                self.workloads[owner].add(f"{o['kind']}/{o['metadata']['name']}")

    def had_its_nodeclaims(self, name: str) -> bool:
        """Its record held targetNodeCount NodeClaims, and each of them existed."""
        target, rec = self.target[name], self.recorded[name]
        return bool(target) and len(rec) >= target and set(rec) <= self.nodeclaims[name]


# ----------------------------------------------------------------------------- loading


def load(cluster: EmbeddedCluster, objects: list[dict]) -> dict[str, str]:
    """Create the moment's objects (status through the status subresource); returns old uid -> new uid."""
    api = cluster.server.api_client()
    try:
        core, custom = k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
        core.create_namespace({"metadata": {"name": NS}})
        uids: dict[str, str] = {}

        def body_of(obj: dict) -> tuple[dict, dict | None]:
            meta = {k: v for k, v in obj["metadata"].items() if k not in SERVER_FIELDS}
            if meta.get("ownerReferences"):
                meta["ownerReferences"] = [{**r, "uid": uids.get(r.get("uid"), r.get("uid"))}
                                           for r in meta["ownerReferences"]]
            ann = meta.get("annotations") or {}
            if ann.get(UID_ANNOTATION) in uids:
                meta["annotations"] = {**ann, UID_ANNOTATION: uids[ann[UID_ANNOTATION]]}
            body = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
            return {**body, "metadata": meta}, obj.get("status")

        order = {"Workspace": 0, "NodeClaim": 1, "Node": 2, "Deployment": 3, "StatefulSet": 3, "Job": 3}
        unknown = {o["kind"] for o in objects} - set(order)
        assert not unknown, f"the data holds kinds this loader does not know: {unknown}"
        for obj in sorted(objects, key=lambda o: order[o["kind"]]):
            body, status = body_of(obj)
            name, kind = body["metadata"]["name"], obj["kind"]
            if kind == "Workspace":
                made = custom.create_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces", body)
                uids[obj["metadata"]["uid"]] = made["metadata"]["uid"]
                assert made["metadata"]["generation"] == obj["metadata"]["generation"], \
                    f"{name}: the data's generation cannot be reproduced by one create"
                if status:
                    custom.patch_namespaced_custom_object_status("kaito.sh", "v1beta1", NS, "workspaces", name,
                                                                 {"status": status})
            elif kind == "Node":
                core.create_node(body)
                if status:
                    core.patch_node_status(name, {"status": status})
            else:
                group, version, plural, namespaced = OWNED[kind]
                if namespaced:
                    made = custom.create_namespaced_custom_object(group, version, NS, plural, body)
                    if status:
                        custom.patch_namespaced_custom_object_status(group, version, NS, plural, name,
                                                                     {"status": status})
                else:
                    made = custom.create_cluster_custom_object(group, version, plural, body)
                    if status:
                        custom.patch_cluster_custom_object_status(group, version, plural, name, {"status": status})
                uids[obj["metadata"]["uid"]] = made["metadata"]["uid"]
        return uids
    finally:
        api.close()


class Writes:
    """Creates and deletes of NodeClaims, workloads and Jobs answered by the server, by Workspace."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.log: list[tuple[str, str, str, str | None, int | None]] = []  # (verb, kind, name, workspace, code)
        self.owners: dict[str, str] = {}  # "Kind/name" -> Workspace, for deletes (the body names no owner)

    def __call__(self, req) -> None:
        kind = PLURAL_KIND[req.resource]
        if req.verb == "create":
            try:
                body = json.loads(req.body or b"{}")
            except ValueError:
                body = {}
            body.setdefault("kind", kind)
            name, owner = (body.get("metadata") or {}).get("name", "?"), owner_name(body)
        else:
            name = req.name or "?"
            owner = self.owners.get(f"{kind}/{name}")
        with self._lock:
            self.log.append((req.verb, kind, name, owner, req.status_code))

    def of(self, verb: str, workspace: str, kinds: tuple[str, ...]) -> list[str]:
        with self._lock:
            return [f"{k}/{n}" for v, k, n, w, _ in self.log if v == verb and w == workspace and k in kinds]


# ----------------------------------------------------------------------------- the run


def goal(ws: dict) -> bool:
    status = ws.get("status") or {}
    want = "Succeeded" if "tuning" in ws else "Ready"
    gen = ws["metadata"].get("generation")
    succeeded = [c for c in status.get("conditions") or [] if c["type"] == "WorkspaceSucceeded"]
    return status.get("state") == want and bool(succeeded) and all(
        c.get("status") == "True" and c.get("observedGeneration") == gen for c in succeeded)


def listing(custom: k8s.CustomObjectsApi, group: str, version: str, plural: str, namespaced: bool) -> list[dict]:
    if namespaced:
        return custom.list_namespaced_custom_object(group, version, NS, plural)["items"]
    return custom.list_cluster_custom_object(group, version, plural)["items"]


@pytest.mark.parametrize("moment", range(len(MOMENTS)), ids=[f"at-{m['at_s']:g}s" for m in MOMENTS])
def test_the_current_runner_takes_over_a_v1_cluster_without_recreating_anything(moment, tmp_path):
    objects = MOMENTS[moment]["objects"]
    before = Before(objects)
    assert before.workspaces and all(record_of(w).get("v") == 1 for w in before.workspaces.values())
    delta = datetime.now(timezone.utc) - moment_time(objects)
    objects = [shifted(o, delta) for o in objects]

    cluster = EmbeddedCluster(time_scale=TIME_SCALE)
    cluster.server.start()  # load first: the simulated controllers then start on what the cluster holds
    runner = None
    try:
        uids = load(cluster, objects)
        cluster.start(tmp_path / "kubeconfig")
        writes = Writes()
        for o in objects:
            if o["kind"] in OWNED and owner_name(o):
                writes.owners[f"{o['kind']}/{o['metadata']['name']}"] = owner_name(o)
        cluster.server.faults.intercept(writes, when="after", verbs=["create", "delete"],
                                        resources=list(PLURAL_KIND), user_agent="workspace-fsm/")
        custom = k8s.CustomObjectsApi(cluster.api)
        runner = cluster.run_in_thread(namespace=NS)

        def current() -> dict[str, dict]:
            return {w["metadata"]["name"]: w for w in listing(custom, "kaito.sh", "v1beta1", "workspaces", True)}

        deadline = time.monotonic() + GOAL_TIMEOUT_S
        while not (len(now := current()) == len(before.workspaces) and all(map(goal, now.values()))):
            if time.monotonic() > deadline:
                late = {n: (w.get("status") or {}).get("state") for n, w in now.items() if not goal(w)}
                pytest.fail(f"not at their goal after {GOAL_TIMEOUT_S:g}s: {late}")
            time.sleep(0.2)
        runner.kill()
        runner = None

        after = current()
        claims_now: dict[str, list[dict]] = defaultdict(list)
        for c in listing(custom, "karpenter.sh", "v1", "nodeclaims", False):
            if owner_name(c):
                claims_now[owner_name(c)].append(c)
        alive = {o["metadata"]["uid"] for kind in OWNED for o in listing(custom, *OWNED[kind])}
        problems: list[str] = []
        for name, ws in after.items():
            target = ws["status"]["targetNodeCount"]
            assert target == before.target[name] or before.target[name] is None
            rec = read_lifecycle(WorkspaceStatus.from_dict(ws["status"]))
            assert rec is not None and rec.state == ("Succeeded" if "tuning" in ws else "Ready")
            live = [c for c in claims_now[name] if not c["metadata"].get("deletionTimestamp")]
            if len(live) != target:  # never more; and at its goal, not fewer either
                problems.append(f"{name}: {len(live)} NodeClaims for targetNodeCount {target}")
            held = before.recorded[name]
            if not set(held) <= set(rec.data.nodeclaims):
                problems.append(f"{name}: the record lost NodeClaims {sorted(set(held) - set(rec.data.nodeclaims))}")
            created = writes.of("create", name, ("NodeClaim",))
            deleted = writes.of("delete", name, ("NodeClaim",))
            missing = max(0, target - len(before.nodeclaims[name]))
            if len(created) != missing:
                problems.append(f"{name}: had {len(before.nodeclaims[name])} of {target} NodeClaims, created {created}")
            if before.had_its_nodeclaims(name):
                if created:
                    problems.append(f"{name}: held its {target} NodeClaims, yet created {created}")
                if set(rec.data.nodeclaims) != set(held):
                    problems.append(f"{name}: held its NodeClaims {held}, record now {list(rec.data.nodeclaims)}")
            if deleted:
                problems.append(f"{name}: deleted {deleted}")
            if before.workloads[name]:
                made = writes.of("create", name, WORKLOAD_KINDS)
                gone = writes.of("delete", name, WORKLOAD_KINDS)
                if made or gone:
                    problems.append(f"{name}: had {sorted(before.workloads[name])}, yet created {made}, deleted {gone}")
        # Everything loaded that the runner owns is still the very object loaded (same uid: not recreated).
        for o in objects:
            if o["kind"] in OWNED and owner_name(o) and uids[o["metadata"]["uid"]] not in alive:
                problems.append(f"{o['kind']} {o['metadata']['name']} (loaded) is gone or was replaced")
        assert not problems, "\n".join(problems)
        # What was missing was made, exactly once: one workload or Job per Workspace that had none.
        for name in after:
            if not before.workloads[name]:
                made = writes.of("create", name, WORKLOAD_KINDS)
                assert len(made) == 1, f"{name}: workload creates {made}"
    finally:
        if runner is not None:
            runner.kill()
        cluster.stop()
