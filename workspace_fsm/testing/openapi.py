"""OpenAPI v3 (``/openapi/v3/...``) and v2 (``/openapi/v2``) documents with the schemas of what is served.

- Custom resources: the CRD's ``openAPIV3Schema`` of each served version, under the name the real server
  uses (the group reversed: ``sh.kaito.v1beta1.Workspace``), with ``apiVersion``/``kind``/``metadata`` and the
  ``x-kubernetes-group-version-kind`` extension kubectl looks them up by.
- Built-in kinds: the schemas of the official ``kubernetes`` Python client's models (generated from the real
  server's OpenAPI, with its field descriptions), so ``kubectl explain deployment.spec`` works.

Each group/version document holds every schema its kinds refer to. A PATCH operation per kind declares the
``fieldValidation`` parameter, so kubectl leaves field validation to the server.
"""

from __future__ import annotations

import copy
import re
from functools import lru_cache
from typing import Any

__all__ = ["openapi_v3_gv", "openapi_v2"]

_OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_PREFIX = re.compile(r"^(CoreV1|EventsV1|StorageV1|DiscoveryV1|AuthenticationV1|RbacV1|AdmissionregistrationV1|"
                     r"ApiextensionsV1|V\d+(?:alpha\d+|beta\d+)?)")


def _model_class(group: str, version: str, kind: str) -> Any:
    from kubernetes.client import models

    names = [f"{version.capitalize()}{kind}"]
    if kind == "Event":
        names.insert(0, "CoreV1Event" if group == "" else "EventsV1Event")
    for name in names:
        cls = getattr(models, name, None)
        if cls is not None and hasattr(cls, "model_json_schema"):
            return cls
    return None


def _component_name(cls_name: str, group: str = "") -> str:
    if cls_name == "V1ObjectMeta":
        return _OBJECT_META
    m = _PREFIX.match(cls_name)
    prefix, rest = (m.group(1), cls_name[m.end():]) if m and cls_name[m.end():] else ("", cls_name)
    version = re.sub(r"^(Core|Events|Storage|Discovery|Authentication|Rbac|Admissionregistration|Apiextensions)",
                     "", prefix).lower() or "v1"
    return f"io.k8s.api.{group or 'core'}.{version}.{rest}"


def _clean(text: str) -> str:
    """A model's description without the generator's notes about the Python class."""
    for marker in ("\n\nAttributes:", "\nAttributes:", "NOTE: This class is auto generated"):
        if marker in text:
            text = text.split(marker, 1)[0]
    return "\n".join(line.strip() for line in text.strip().splitlines()).strip()


def _convert(node: Any, names: dict[str, str]) -> Any:
    """A pydantic JSON schema node as an OpenAPI v3 (Kubernetes-style) schema node."""
    if isinstance(node, list):
        return [_convert(n, names) for n in node]
    if not isinstance(node, dict):
        return node
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o != {"type": "null"}]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(options) == 1:
            merged = dict(options[0])
            merged.update(rest)
            return _convert(merged, names)
    if "$ref" in node:
        target = names.get(node["$ref"].rsplit("/", 1)[-1], node["$ref"].rsplit("/", 1)[-1])
        out: dict[str, Any] = {"allOf": [{"$ref": f"#/components/schemas/{target}"}]}
        if node.get("description"):
            out["description"] = node["description"]
        return out
    out = {}
    for key, value in node.items():
        if key in ("title", "default", "$defs"):
            continue
        if key == "properties":
            out[key] = {k: _convert(v, names) for k, v in value.items()}
        elif key == "description" and isinstance(value, str):
            out[key] = _clean(value)
        elif key in ("items", "additionalProperties"):
            out[key] = _convert(value, names) if isinstance(value, dict) else value
        else:
            out[key] = _convert(value, names) if isinstance(value, (dict, list)) else value
    return out


@lru_cache(maxsize=64)
def _builtin_components(group: str, version: str, kind: str) -> tuple[str, dict[str, Any]] | None:
    cls = _model_class(group, version, kind)
    if cls is None:
        return None
    try:
        doc = cls.model_json_schema(by_alias=True)
    except Exception:  # a model pydantic cannot describe: no schema
        return None
    defs = doc.get("$defs") or {}
    names = {n: _component_name(n, group) for n in defs}
    names[cls.__name__] = f"io.k8s.api.{group or 'core'}.{version}.{kind}"
    components = {names[n]: _convert(d, names) for n, d in defs.items()}
    top = _convert({k: v for k, v in doc.items() if k != "$defs"}, names)
    top["x-kubernetes-group-version-kind"] = [{"group": group, "version": version, "kind": kind}]
    components[names[cls.__name__]] = top
    return names[cls.__name__], components


def _object_meta() -> dict[str, dict[str, Any]]:
    found = _builtin_components("", "v1", "ConfigMap")
    if found is None:
        return {_OBJECT_META: {"type": "object"}}
    return {k: v for k, v in found[1].items() if not k.endswith(".ConfigMap")}


def crd_component(info: Any, version: str) -> tuple[str, dict[str, Any]]:
    group_rev = ".".join(reversed(info.group.split(".")))
    name = f"{group_rev}.{version}.{info.kind}"
    schema = copy.deepcopy(info.schemas.get(version) or {"type": "object",
                                                          "x-kubernetes-preserve-unknown-fields": True})
    props = schema.setdefault("properties", {})
    props.setdefault("apiVersion", {"type": "string", "description": "APIVersion defines the versioned schema of "
                                    "this representation of an object."})
    props.setdefault("kind", {"type": "string", "description": "Kind is a string value representing the REST "
                              "resource this object represents."})
    props["metadata"] = {"allOf": [{"$ref": f"#/components/schemas/{_OBJECT_META}"}],
                         "description": "Standard object's metadata."}
    schema["x-kubernetes-group-version-kind"] = [{"group": info.group, "version": version, "kind": info.kind}]
    return name, schema


def _schemas_for(infos: list[Any], version: str) -> tuple[dict[str, Any], dict[str, str]]:
    components: dict[str, Any] = {}
    tops: dict[str, str] = {}
    for info in infos:
        if info.custom:
            name, schema = crd_component(info, version)
            components.update(_object_meta())
            components[name] = schema
        else:
            found = _builtin_components(info.group, version, info.kind)
            if found is None:
                continue
            name, comps = found
            components.update(comps)
        tops[info.kind] = name
    return components, tops


def openapi_v3_gv(infos: list[Any], group: str, version: str) -> dict[str, Any]:
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    components, tops = _schemas_for(infos, version)
    paths: dict[str, Any] = {}
    for info in infos:
        gvk = {"group": group, "version": version, "kind": info.kind}
        params = [{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
                  {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
                  {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": True}}]
        ref = {"$ref": f"#/components/schemas/{tops[info.kind]}"} if info.kind in tops else {"type": "object"}
        patch_op = {
            "operationId": f"patch{info.kind}",
            "parameters": params,
            "requestBody": {"content": {t: {"schema": {"type": "object"}} for t in (
                "application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml")}},
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}},
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": gvk,
        }
        base = f"{prefix}/namespaces/{{namespace}}/{info.plural}" if info.namespaced else f"{prefix}/{info.plural}"
        paths[f"{base}/{{name}}"] = {"patch": patch_op}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": paths,
            "components": {"schemas": components}}


def _to_v2(node: Any) -> Any:
    if isinstance(node, list):
        return [_to_v2(n) for n in node]
    if not isinstance(node, dict):
        return node
    if "allOf" in node and len(node["allOf"]) == 1 and "$ref" in node["allOf"][0]:
        out = {"$ref": node["allOf"][0]["$ref"].replace("#/components/schemas/", "#/definitions/")}
        if node.get("description"):
            out["description"] = node["description"]
        return out
    out = {}
    for k, v in node.items():
        if k == "$ref" and isinstance(v, str):
            out[k] = v.replace("#/components/schemas/", "#/definitions/")
        elif k == "nullable":
            continue
        else:
            out[k] = _to_v2(v)
    return out


def openapi_v2(by_gv: dict[tuple[str, str], list[Any]]) -> dict[str, Any]:
    definitions: dict[str, Any] = {}
    for (_group, version), infos in sorted(by_gv.items()):
        components, _ = _schemas_for(infos, version)
        definitions.update(_to_v2(components))
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": {},
            "definitions": definitions}
