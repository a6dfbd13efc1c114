"""A complete operator for ``Website`` (tutorial.example.com/v1, CRD in crd.yaml): a ConfigMap holds the page
``spec.message``, a Deployment of ``spec.replicas`` web servers serves it. docs/authoring.md walks through it. Run:
    workspace-fsm run --embedded --lifecycle examples/website/website.py:WEBSITE --apply examples/website/hello.yaml
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from workspace_fsm.engine import (Create, Deadline, Edge, Facts, GoTo, Kind, Lifecycle, Owns, Patch, Problem, Resource,
                                  State, by_owner_reference, guard)

WEBSITE_KIND = Kind("tutorial.example.com/v1", "Website", "websites")
CONFIGMAP = Kind("v1", "ConfigMap", "configmaps")
DEPLOYMENT = Kind("apps/v1", "Deployment", "deployments")
REVISION = "tutorial.example.com/revision"  # the spec a Deployment was built from


def revision(f: Facts) -> str:
    return hashlib.sha256(json.dumps(dict(f.obj.spec), sort_keys=True).encode()).hexdigest()[:12]


def replicas(f: Facts) -> int:
    return int(f.obj.spec.get("replicas", 1))


def deployment(f: Facts) -> Any:
    return f.snap.one("Deployment", f.obj.name)


def _shows(f: Facts) -> str:
    d = deployment(f)
    ready = (d.get("status") or {}).get("readyReplicas", 0) if d is not None else 0
    return f"Deployment {f.obj.name}: {ready}/{replicas(f)} ready" if d is not None else "no Deployment yet"


# ------------------------------------------------------------------ guards: pure, they answer at once

def spec_valid(f: Facts) -> bool:
    """The spec can be acted on (the CRD's schema and validate() below have accepted it)."""
    return not f.obj.problems


@guard(shows=_shows)
def site_ready(f: Facts) -> bool:
    """The Deployment of the current spec has all its replicas ready."""
    d = deployment(f)
    if d is None or (d["metadata"].get("annotations") or {}).get(REVISION) != revision(f):
        return False
    st = d.get("status") or {}
    fresh = st.get("observedGeneration", 0) >= d["metadata"].get("generation", 0)
    return bool(fresh and st.get("readyReplicas", 0) >= replicas(f))


def site_unready(f: Facts) -> bool:
    """Replicas were lost or the spec changed."""
    return not site_ready(f)


# ------------------------------------------------------------------ steps: ask for what must exist

def ensure_site(f: Facts, data: Any, out: list[Any]) -> Any:
    """The page's ConfigMap and the Deployment exist and match the spec."""
    name, rev, page = f.obj.name, revision(f), {"index.html": f.obj.spec["message"]}
    cm = f.snap.one("ConfigMap", name + "-page")
    if cm is None:
        out.append(Create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name + "-page"}, "data": page}))
    elif dict(cm.get("data") or {}) != page:
        out.append(Patch("v1", "ConfigMap", name + "-page", {"data": page}))
    labels = {"app": name}
    web = {"name": "web", "image": "nginx:1.27", "volumeMounts": [{"name": "page", "mountPath": "/usr/share/nginx/html"}]}
    spec = {"replicas": replicas(f), "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels, "annotations": {REVISION: rev}},
                         "spec": {"containers": [web], "volumes": [{"name": "page", "configMap": {"name": name + "-page"}}]}}}
    d = deployment(f)
    if d is None:
        out.append(Create({"apiVersion": "apps/v1", "kind": "Deployment",
                           "metadata": {"name": name, "labels": labels, "annotations": {REVISION: rev}}, "spec": spec}))
    elif (d["metadata"].get("annotations") or {}).get(REVISION) != rev:
        out.append(Patch("apps/v1", "Deployment", name, {"metadata": {"annotations": {REVISION: rev}}, "spec": spec}))
    return data


def validate(doc: Mapping[str, Any]) -> Iterator[Problem]:
    message = (doc.get("spec") or {}).get("message")
    if not isinstance(message, str) or not message.strip():
        yield Problem("spec.message", "MessageEmpty", "spec.message must be a non-empty string")


parse = functools.partial(Resource.from_dict, validate=validate)
DEPLOY_TIMED_OUT = "not ready 10 minutes after the spec was applied; fix the spec (or the cluster) and re-apply"

WEBSITE: Lifecycle[Facts] = Lifecycle(
    "website", resource=WEBSITE_KIND, summary_field="phase", conditions=("Ready",), invalid="Ready", parse=parse,
    crds=(Path(__file__).with_name("crd.yaml"),),
    owns=(Owns(CONFIGMAP, by_owner_reference("Website")), Owns(DEPLOYMENT, by_owner_reference("Website"))),
    states=(
        State("Pending", "Accepted; nothing created yet. An invalid spec waits here.", summary="Pending"),
        State("Deploying", "ConfigMap and Deployment created; waiting for the replicas.", ensure=(ensure_site,),
              deadline=Deadline(timedelta(minutes=10), "DeployTimedOut", GoTo("Failed")), summary="Deploying",
              conditions=lambda f: [("Ready", "False", "Deploying", f"waiting for {replicas(f)} replica(s)")]),
        State("Ready", "Serving the page.", ensure=(ensure_site,), summary="Ready",
              conditions=lambda f: [("Ready", "True", "Serving", f"{replicas(f)} replica(s) serve the page")]),
        State("Failed", "Not ready in time; a new spec starts again.", terminal=True, ensure=(ensure_site,),
              summary="Failed", conditions=lambda f: [("Ready", "False", "DeployTimedOut", DEPLOY_TIMED_OUT)]),
    ),
    edges=(
        Edge("Pending", "Deploying", spec_valid),
        Edge("Deploying", "Ready", site_ready),
        Edge("Ready", "Deploying", site_unready),
        Edge("Failed", "Ready", site_ready),
    ),
)
