"""Workspaces for property tests: valid ones drawn from KAITO's CRD schema and the preset catalogue,
and bad ones, each broken in one named way and tagged with it.

Every generator is written against a small :class:`Chooser` interface, so the same code runs under
hypothesis (:class:`DrawChooser`: examples shrink and replay) and from a seeded ``random.Random``
(:class:`RandomChooser`: a reproducible batch for a live API server, where hypothesis's ``@given``
does not fit)::

    from hypothesis import given
    from workspace_fsm.testing.strategies import bad_workspaces, valid_workspaces

    @given(bad=bad_workspaces())
    def test_it(bad):
        bad.category, bad.doc, bad.expect    # "huge_count", {...}, (("resource.count", "CountTooLarge"), ...)

    batch = [make_bad(RandomChooser(random.Random(seed)), category) for category in CATEGORIES]

A :class:`BadWorkspace` carries the valid document it was made from (``fixed``), so a test can repair
it and check that it then proceeds, and the ``(path, reason)`` problems the checks must report for it
(``expect``: at least one of them).

hypothesis is a test dependency: this module is for tests and benchmarks only.
"""

from __future__ import annotations

import copy
import random
import string
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import yaml
from hypothesis import strategies as st

from workspace_fsm.kaito.catalogue import Catalogue
from workspace_fsm.kaito.workspace import WORKSPACE_SUCCEEDED
from workspace_fsm.engine.schema import format_path, json_type
from workspace_fsm.kaito.validation import (MAX_NODE_COUNT, PERFORMANCE_MODE_ANNOTATION, PERFORMANCE_MODES,
                                            workspace_schema)

__all__ = [
    "CATEGORIES",
    "API_UNSENDABLE",
    "BadWorkspace",
    "Chooser",
    "at_goal",
    "invalid_condition",
    "DrawChooser",
    "RandomChooser",
    "bad_workspaces",
    "dump_yaml",
    "make_bad",
    "make_valid",
    "schema_documents",
    "valid_workspaces",
]

T = TypeVar("T")


def at_goal(ws: dict | None) -> bool:
    """A Workspace document as the API server holds it is at its goal for its current generation."""
    if not ws:
        return False
    status = ws.get("status") or {}
    gen = ws["metadata"].get("generation")
    return status.get("state") == ("Succeeded" if "tuning" in ws else "Ready") and all(
        c.get("observedGeneration") == gen for c in status.get("conditions") or [] if c["type"] == WORKSPACE_SUCCEEDED)


def invalid_condition(ws: dict | None) -> dict | None:
    """The condition saying the Workspace's spec is invalid, if it has one."""
    for c in ((ws or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == WORKSPACE_SUCCEEDED and c["status"] == "False" and "spec is invalid" in c["message"]:
            return c
    return None

API_VERSION = "kaito.sh/v1beta1"
#: GPU VM sizes KAITO's examples use.
# Instance types KAITO knows the GPUs of (pkg/sku): a Workspace on another is valid but cannot be sized.
INSTANCE_TYPES = ("Standard_NC24ads_A100_v4", "Standard_NC80adis_H100_v5", "Standard_NV36ads_A10_v5",
                  "Standard_NC48ads_A100_v4", "Standard_NC96ads_A100_v4")
LOWER_DIGITS = string.ascii_lowercase + string.digits
LABEL_CHARS = string.ascii_letters + string.digits  # safe anywhere in a label value
MIB = 1024 * 1024

#: Every way a bad Workspace is made, in the order reports list them. The first eight are the ones
#: the reliability requirement names; the rest are further mistakes seen in real manifests.
CATEGORIES = (
    "wrong_type",
    "missing_instance_type",
    "unknown_preset",
    "inference_and_tuning",
    "negative_count",
    "huge_count",
    "invalid_label_value",
    "megabyte_string",
    "invalid_label_key",
    "unknown_field",
    "null_object",
    "non_object_section",
    "invalid_name",
    "unsupported_selector",
    "tuning_rules",
    "not_json",
)
#: Categories whose documents cannot be sent to an API server at all (not a JSON object, or values
#: JSON cannot carry); they are for ``decide`` and ``workspace-fsm validate`` only.
API_UNSENDABLE = frozenset({"not_json"})


# --------------------------------------------------------------------------------------------
# Choosers
# --------------------------------------------------------------------------------------------


class Chooser:
    """The choices a generator makes. Subclasses draw them from hypothesis or a seeded Random."""

    def choice(self, options: Sequence[T]) -> T:
        raise NotImplementedError

    def integer(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def boolean(self) -> bool:
        return self.choice((False, True))

    def text(self, alphabet: str, min_size: int, max_size: int) -> str:
        raise NotImplementedError

    def subset(self, options: Sequence[T]) -> list[T]:
        return [o for o in options if self.boolean()]


class DrawChooser(Chooser):
    """Choices drawn through hypothesis (``draw`` of an ``@st.composite`` or ``st.data()``)."""

    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any]) -> None:
        self.draw = draw

    def choice(self, options: Sequence[T]) -> T:
        return self.draw(st.sampled_from(list(options)))

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def boolean(self) -> bool:
        return self.draw(st.booleans())

    def text(self, alphabet: str, min_size: int, max_size: int) -> str:
        return self.draw(st.text(alphabet=alphabet, min_size=min_size, max_size=max_size))


class RandomChooser(Chooser):
    """Choices from a seeded ``random.Random``: the same seed gives the same Workspaces."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def choice(self, options: Sequence[T]) -> T:
        return self.rng.choice(list(options))

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def text(self, alphabet: str, min_size: int, max_size: int) -> str:
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(min_size, max_size)))


# --------------------------------------------------------------------------------------------
# The CRD schema and the catalogue
# --------------------------------------------------------------------------------------------


def _schema() -> Mapping[str, Any]:
    return workspace_schema("v1beta1")


def _sub(schema: Mapping[str, Any], *keys: str) -> Mapping[str, Any]:
    for k in keys:
        schema = schema["properties"][k]
    return schema


def _enum(schema: Mapping[str, Any]) -> list[Any] | None:
    if isinstance(schema.get("enum"), list):
        return schema["enum"]
    for part in schema.get("allOf") or ():
        if isinstance(part, Mapping) and isinstance(part.get("enum"), list):
            return part["enum"]
    return None


def typed_fields(schema: Mapping[str, Any] | None = None) -> list[tuple[tuple[Any, ...], str]]:
    """Every field of the Workspace schema that declares a type, as (path, type); array items as
    index 0. Status, metadata and the open (preserve-unknown-fields) parts are left out."""
    out: list[tuple[tuple[Any, ...], str]] = []

    def walk(node: Mapping[str, Any], path: tuple[Any, ...]) -> None:
        t = node.get("type")
        if path and isinstance(t, str):
            out.append((path, t))
        for k, sub in (node.get("properties") or {}).items():
            if not path and k in ("status", "metadata"):
                continue
            if isinstance(sub, Mapping):
                walk(sub, (*path, k))
        items = node.get("items")
        if isinstance(items, Mapping):
            walk(items, (*path, 0))

    walk(schema or _schema(), ())
    return out


def _object_fields(schema: Mapping[str, Any] | None = None) -> list[tuple[tuple[str, ...], frozenset[str]]]:
    """Objects of the schema with fixed properties (where an unknown field is pruned), as (path, names)."""
    out: list[tuple[tuple[str, ...], frozenset[str]]] = []

    def walk(node: Mapping[str, Any], path: tuple[str, ...]) -> None:
        props = node.get("properties")
        if isinstance(props, Mapping) and not node.get("x-kubernetes-preserve-unknown-fields"):
            out.append((path, frozenset(props)))
            for k, sub in props.items():
                if not path and k in ("status", "metadata"):
                    continue
                if isinstance(sub, Mapping):
                    walk(sub, (*path, k))

    walk(schema or _schema(), ())
    return out


def _presets(cat: Catalogue) -> tuple[list[str], list[str]]:
    live = [p for p in cat.presets.values() if not p.deprecated]
    return sorted(p.name for p in live), sorted(p.name for p in live if p.supports_tuning())


# --------------------------------------------------------------------------------------------
# Valid Workspaces
# --------------------------------------------------------------------------------------------


def _name(c: Chooser) -> str:
    stem = c.choice(("ws", "phi", "llama", "falcon", "mistral", "qwen", "tune", "serve"))
    return f"{stem}-{c.text(LOWER_DIGITS, 1, 10)}"


def _label_value(c: Chooser) -> str:
    return c.text(LABEL_CHARS, 1, 1) + c.text(LABEL_CHARS + "-_.", 0, 20) + c.text(LABEL_CHARS, 1, 1)


def _image(c: Chooser, what: str) -> str:
    return f"registry.example.com/{what}/{c.text(LOWER_DIGITS, 1, 12)}:{c.integer(0, 99)}.{c.integer(0, 9)}"


def _preset_section(c: Chooser, name: str, cat: Catalogue) -> dict[str, Any]:
    preset: dict[str, Any] = {"name": name}
    access = _enum(_sub(_schema(), "inference", "preset", "accessMode"))
    if access and c.boolean():
        preset["accessMode"] = c.choice(access)
    entry = cat.get(name)
    if entry is not None and entry.download_auth_required:
        preset["presetOptions"] = {"modelAccessSecret": c.choice(("hf-token", "model-access"))}
    return preset


def _inference(c: Chooser, name: str, cat: Catalogue) -> dict[str, Any]:
    names, _ = _presets(cat)
    form = c.choice(("preset", "preset", "preset", "hf-model", "template"))
    if form == "template":
        return {"template": {"spec": {"containers": [{"name": "server", "image": _image(c, "model-server"),
                                                      "ports": [{"containerPort": 5000}]}]}}}
    if form == "hf-model":  # KAITO serves a Hugging Face model id with vLLM (best effort)
        inference: dict[str, Any] = {"preset": {"name": c.choice(("microsoft/Phi-4-mini-instruct",
                                                                  "Qwen/Qwen2.5-0.5B-Instruct"))}}
    else:
        inference = {"preset": _preset_section(c, c.choice(names), cat)}
    if c.boolean():
        inference["config"] = c.choice(("inference-params", f"{name}-config"))
    if form == "preset" and c.boolean():
        inference["adapters"] = [
            {"source": {"name": f"adapter-{i}", "image": _image(c, "adapters")},
             "strength": c.choice(("0.2", "0.5", "1.0"))}
            for i in range(c.integer(1, 2))
        ]
    return inference


def _tuning(c: Chooser, cat: Catalogue) -> dict[str, Any]:
    _, tunable = _presets(cat)
    preset = c.choice(tunable)
    source = c.choice(("urls", "image", "volumeSource"))
    data_in: dict[str, Any] = {
        "urls": {"urls": [f"https://datasets.example.com/{c.text(LOWER_DIGITS, 1, 8)}.parquet"]},
        "image": {"image": _image(c, "datasets")},
        "volumeSource": {"volumeSource": {"persistentVolumeClaim": {"claimName": "training-data"}}},
    }[source]
    if c.boolean():
        data_out: dict[str, Any] = {"image": _image(c, "tuned"), "imagePushSecret": "registry-push"}
    else:
        data_out = {"volumeSource": {"persistentVolumeClaim": {"claimName": "tuning-output"}}}
    return {"preset": {"name": preset}, "method": c.choice(cat.get(preset).tuning),
            "input": data_in, "output": data_out}


def make_valid(c: Chooser, name: str | None = None, *, kind: str | None = None, auto_provisioning: bool = True,
               catalogue: Catalogue | None = None) -> dict[str, Any]:
    """A valid Workspace: ``kind`` "inference", "tuning" or None (either)."""
    cat = catalogue or Catalogue.default()
    name = name or _name(c)
    kind = kind or c.choice(("inference", "inference", "tuning"))
    metadata: dict[str, Any] = {"name": name}
    if c.boolean():
        metadata["labels"] = {c.choice(("app", "team", "example.com/tier")): _label_value(c)}
    if c.boolean():
        metadata["annotations"] = {PERFORMANCE_MODE_ANNOTATION: c.choice(PERFORMANCE_MODES)}
    if c.boolean():
        selector: dict[str, Any] = {"matchLabels": {"apps": name}}
    else:
        selector = {"matchExpressions": [{"key": "apps", "operator": "In", "values": [name]}]}
    resource: dict[str, Any] = {"labelSelector": selector}
    if auto_provisioning:
        resource["instanceType"] = c.choice(INSTANCE_TYPES)
    if kind == "inference":
        if c.boolean():
            resource["count"] = c.integer(1, 3)
    elif c.boolean():
        resource["count"] = 1
    doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "Workspace", "metadata": metadata, "resource": resource}
    if kind == "inference":
        doc["inference"] = _inference(c, name, cat)
    else:
        doc["tuning"] = _tuning(c, cat)
    return doc


# --------------------------------------------------------------------------------------------
# Documents that follow the CRD schema's structure (and nothing else)
# --------------------------------------------------------------------------------------------


def _from_schema(c: Chooser, node: Mapping[str, Any], depth: int) -> Any:
    values = _enum(node)
    if values:
        return c.choice(values)
    t = node.get("type")
    if t == "object" or (t is None and node.get("x-kubernetes-preserve-unknown-fields")):
        props = node.get("properties")
        if isinstance(props, Mapping):
            required = set(node.get("required") or ())
            out = {}
            for k, sub in props.items():
                if isinstance(sub, Mapping) and (k in required or (depth < 5 and c.boolean())):
                    out[k] = _from_schema(c, sub, depth + 1)
            return out
        extra = node.get("additionalProperties")
        if isinstance(extra, Mapping):
            return {c.text(string.ascii_lowercase, 1, 8): _from_schema(c, extra, depth + 1)
                    for _ in range(c.integer(0, 2))}
        return {c.text(string.ascii_lowercase, 1, 8): c.text(LOWER_DIGITS, 0, 8) for _ in range(c.integer(0, 2))}
    if t == "array":
        items = node.get("items")
        return [_from_schema(c, items, depth + 1) for _ in range(c.integer(0, 2))] if isinstance(items, Mapping) else []
    if t == "string":
        return c.text(string.ascii_letters + string.digits + "-./_ ", 0, 24)
    if t == "integer":
        return c.integer(int(node.get("minimum", -5)), 5)
    if t == "boolean":
        return c.boolean()
    if t == "number":
        return c.integer(-5, 5) / 2
    return c.text(LOWER_DIGITS, 0, 8)


def make_from_schema(c: Chooser, name: str | None = None) -> dict[str, Any]:
    """A Workspace whose every field has the shape KAITO's CRD schema gives it, with arbitrary values:
    the API server's schema admits it; KAITO's own rules usually do not."""
    schema = _schema()
    doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "Workspace", "metadata": {"name": name or _name(c)}}
    for k in ("resource", "inference", "tuning"):
        if c.boolean():
            doc[k] = _from_schema(c, _sub(schema, k), 1)
    return doc


# --------------------------------------------------------------------------------------------
# Bad Workspaces
# --------------------------------------------------------------------------------------------


@attrs.frozen
class BadWorkspace:
    """A Workspace broken in one named way.

    ``expect`` lists (path, reason) problems of which the checks must report at least one; ``fixed``
    is the valid document it was made from (same name); ``change`` says in words what was broken.
    """

    category: str
    doc: Any
    expect: tuple[tuple[str, str], ...]
    fixed: dict[str, Any]
    change: str

    @property
    def name(self) -> str:
        return self.fixed["metadata"]["name"]


def _get(doc: Any, path: Sequence[Any]) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def _set(doc: Any, path: Sequence[Any], value: Any) -> None:
    _get(doc, path[:-1])[path[-1]] = value


def _has(doc: Any, path: Sequence[Any]) -> bool:
    try:
        _get(doc, path)
    except (KeyError, IndexError, TypeError):
        return False
    return True


def _p(*parts: Any) -> str:
    return format_path(parts)


def _wrong_value(c: Chooser, expected: str) -> Any:
    """A value whose JSON type is not ``expected`` (never null: the API server drops a null field)."""
    pool: list[Callable[[], Any]] = [
        lambda: c.text(LOWER_DIGITS, 0, 12),
        lambda: c.integer(-(2**40), 2**40),
        lambda: c.integer(-1000, 1000) + 0.5,
        lambda: c.boolean(),
        lambda: [c.text(LOWER_DIGITS, 0, 6) for _ in range(c.integer(0, 2))],
        lambda: {c.text(string.ascii_lowercase, 1, 6): c.integer(0, 9)},
    ]
    kinds = ("string", "integer", "number", "boolean", "array", "object")
    options = [make for make, kind in zip(pool, kinds)
               if kind != expected and not (expected == "number" and kind == "integer")]
    return c.choice(options)()


def _wrong_type(c: Chooser, doc: dict[str, Any]) -> tuple[str, tuple, str]:
    fields = [(path, t) for path, t in typed_fields()
              if _has(doc, path[:-1]) and isinstance(_get(doc, path[:-1]), (dict, list))
              and not (isinstance(path[-1], int) and not _has(doc, path))]
    fields += [(("metadata", "labels"), "object"), (("metadata", "annotations"), "object")]
    path, t = c.choice(fields)
    value = _wrong_value(c, t)
    _set(doc, path, value)
    where = _p(*path)
    return f"{where} set to {json_type(value)} {value!r:.40} where the CRD says {t}", ((where, "FieldTypeInvalid"),), ""


def _bad_label_value(c: Chooser) -> str:
    form = c.choice(("too-long", "space", "slash", "edge", "unicode", "colon"))
    core = c.text(LABEL_CHARS, 1, 10)
    if form == "too-long":
        return c.text(LABEL_CHARS, 64, 300)
    if form == "edge":
        return c.choice(("-", "_", ".")) + core if c.boolean() else core + c.choice(("-", "_", "."))
    sep = {"space": " ", "slash": "/", "unicode": c.choice(("é", "ü", "中", "🙂")), "colon": ":"}[form]
    return core + sep + c.text(LABEL_CHARS, 1, 10)


def _bad_label_key(c: Chooser) -> str:
    return c.choice((
        "-" + c.text(LABEL_CHARS, 1, 10),
        c.text(LABEL_CHARS, 64, 100),
        "a/b/" + c.text(LABEL_CHARS, 1, 5),
        "Example.COM/" + c.text(LABEL_CHARS, 1, 5),
        c.text(LABEL_CHARS, 1, 5) + " " + c.text(LABEL_CHARS, 1, 5),
        "/" + c.text(LABEL_CHARS, 1, 5),
    ))


def _label_place(c: Chooser, doc: dict[str, Any]) -> tuple[Any, ...]:
    """Where a label (key, value) can go: metadata.labels, matchLabels, or a matchExpressions value."""
    selector = doc["resource"]["labelSelector"]
    places: list[tuple[Any, ...]] = [("metadata", "labels")]
    if "matchLabels" in selector:
        places.append(("resource", "labelSelector", "matchLabels"))
    else:
        places.append(("resource", "labelSelector", "matchExpressions", 0, "values", 0))
    return c.choice(places)


def _megabytes(c: Chooser, mib: float = 1.0) -> str:
    chunk = c.choice(("a", "x", "-", "é", "0123456789", "ab/c.d", c.text(LABEL_CHARS, 1, 8)))
    size = int(mib * MIB) + c.integer(0, 4096)
    return (chunk * (size // len(chunk) + 1))[:size]


def _first_preset_path(doc: dict[str, Any]) -> tuple[str, ...]:
    return ("inference", "preset", "name") if "inference" in doc else ("tuning", "preset", "name")


def _unknown_preset_name(c: Chooser, cat: Catalogue) -> str:
    names, _ = _presets(cat)
    for _ in range(20):
        real = c.choice(names)
        candidate = c.choice((
            real + "-v" + str(c.integer(2, 99)),
            real.upper(),
            real[:-1] if len(real) > 2 else real + "x",
            "gpt-" + str(c.integer(5, 99)),
            " " + real,
            c.text(string.ascii_lowercase + string.digits + "-.", 1, 40),
        ))
        if candidate.strip() and candidate not in cat and "/" not in candidate:
            return candidate
    return "no-such-model-" + c.text(LOWER_DIGITS, 1, 8)


def make_bad(c: Chooser, category: str, name: str | None = None, *, auto_provisioning: bool = True,
             catalogue: Catalogue | None = None) -> BadWorkspace:
    """A Workspace broken in the way ``category`` names (one of :data:`CATEGORIES`)."""
    cat = catalogue or Catalogue.default()
    kind = "tuning" if category == "tuning_rules" else None
    fixed = make_valid(c, name, kind=kind, auto_provisioning=auto_provisioning, catalogue=cat)
    doc = copy.deepcopy(fixed)
    expect: tuple[tuple[str, str], ...]

    if category == "wrong_type":
        change, expect, _ = _wrong_type(c, doc)

    elif category == "missing_instance_type":
        how = c.choice(("removed", "empty", "null"))
        if how == "removed":
            doc["resource"].pop("instanceType", None)
        else:
            doc["resource"]["instanceType"] = "" if how == "empty" else None
        change = f"resource.instanceType {how}"
        expect = (("resource.instanceType", "InstanceTypeRequired"),)

    elif category == "unknown_preset":
        if "inference" in doc:
            doc["inference"].pop("template", None)
            doc["inference"].pop("adapters", None)
            doc["inference"]["preset"] = {"name": ""}
        bad = _unknown_preset_name(c, cat)
        path = _first_preset_path(doc)
        _set(doc, path, bad)
        change = f"{_p(*path)} = {bad!r}"
        expect = ((_p(*path), "UnknownPreset"),)

    elif category == "inference_and_tuning":
        other = make_valid(c, doc["metadata"]["name"], kind="tuning" if "inference" in doc else "inference",
                           auto_provisioning=auto_provisioning, catalogue=cat)
        doc.setdefault("inference", other.get("inference"))
        doc.setdefault("tuning", other.get("tuning"))
        change = "both inference and tuning set"
        expect = (("", "InferenceAndTuningBothSet"),)

    elif category == "negative_count":
        count = c.choice((0, -1, c.integer(-1000, -1), -(2**31), c.integer(-(2**63), -1)))
        doc["resource"]["count"] = count
        change = f"resource.count = {count}"
        expect = (("resource.count", "CountTooSmall"),)

    elif category == "huge_count":
        count = c.choice((MAX_NODE_COUNT + 1, c.integer(MAX_NODE_COUNT + 1, 10**6), 2**31, 2**63 - 1, 2**63, 10**30))
        doc["resource"]["count"] = count
        change = f"resource.count = {count}"
        expect = (("resource.count", "CountTooLarge"),)

    elif category == "invalid_label_value":
        place = _label_place(c, doc)
        value = _bad_label_value(c)
        if place[-1] == 0:  # a matchExpressions value
            _set(doc, place, value)
            where = _p(*place)
        else:
            key = c.choice(("apps", "team")) if place[0] == "metadata" else "apps"
            _get(doc, place[:-1]).setdefault(place[-1], {})[key] = value
            where = _p(*place, key)
        change = f"{where} = {value[:40]!r}"
        expect = ((where, "LabelValueInvalid"),)

    elif category == "invalid_label_key":
        place = c.choice((("metadata", "labels"), ("resource", "labelSelector", "matchLabels")))
        key = _bad_label_key(c)
        _get(doc, place[:-1]).setdefault(place[-1], {})[key] = "x"
        where = _p(*place, key)
        change = f"label key {key[:40]!r} in {_p(*place)}"
        expect = ((where, "LabelKeyInvalid"),)

    elif category == "megabyte_string":
        targets: list[tuple[tuple[Any, ...], str, str]] = [
            (("resource", "instanceType"), "resource.instanceType", "InstanceTypeInvalid"),
            (("metadata", "name"), "metadata.name", "NameInvalid"),
            (("metadata", "labels", "app"), "metadata.labels.app", "LabelValueInvalid"),
            (("metadata", "annotations", "example.com/notes"), "metadata.annotations", "AnnotationsTooLarge"),
            (("resource", "labelSelector", "matchLabels", "apps"), "resource.labelSelector.matchLabels.apps",
             "LabelValueInvalid"),
            (_first_preset_path(doc), _p(*_first_preset_path(doc)), "UnknownPreset"),
        ]
        section = "inference" if "inference" in doc else "tuning"
        targets.append(((section, "config"), f"{section}.config", "ConfigNameInvalid"))
        if section == "tuning":
            targets.append((("tuning", "output", "image"), "tuning.output.image", "ImageReferenceInvalid"))
            targets.append((("tuning", "input", "urls"), "tuning.input.urls[0]", "InputURLInvalid"))
        twice = c.integer(0, 5) == 0  # now and then past the 1.5 MiB the API server can store
        path, where, reason = c.choice(targets)
        big = _megabytes(c, 2.0 if twice else 1.0)
        if path[0] == "metadata" and len(path) == 3:
            doc["metadata"].setdefault(path[1], {})
        if path[-1] == "urls":
            big = "https://datasets.example.com/" + big
            doc["tuning"]["input"] = {"urls": [big]}
        elif path[-1] == "image":
            doc["tuning"]["output"] = {"image": big, "imagePushSecret": "registry-push"}
        else:
            if path[-1] == "apps":
                doc["resource"]["labelSelector"] = {"matchLabels": {}}
            elif path[:2] == ("inference", "preset"):
                doc["inference"] = {"preset": {"name": ""}}
            _set(doc, path, big)
        change = f"{where}: a string of {len(big)} characters"
        expect = ((where, reason),) + ((("", "DocumentTooLarge"),) if twice else ())

    elif category == "unknown_field":
        if c.integer(0, 3) == 0:  # the classic: everything under spec, as in most other kinds
            spec = {k: doc.pop(k) for k in ("resource", "inference", "tuning") if k in doc}
            doc["spec"] = spec
            change = "resource/inference/tuning nested under spec"
            expect = (("spec", "FieldUnknown"),)
        else:
            objects = [(path, props) for path, props in _object_fields() if _has(doc, path)
                       and isinstance(_get(doc, path), dict)]
            path, props = c.choice(objects)
            base = c.choice(sorted(props))
            key = c.choice((base.lower() if base.lower() != base else base.upper(), base + "s",
                            base[:1].upper() + base[1:], "x-" + c.text(string.ascii_lowercase, 1, 8)))
            if key in props:
                key = key + "Typo"
            _get(doc, path)[key] = c.choice(("value", 1, True, {"a": "b"}))
            where = _p(*path, key)
            change = f"unknown field {where}"
            expect = ((where, "FieldUnknown"),)

    elif category == "null_object":
        section = "inference" if "inference" in doc else "tuning"
        options: list[tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = [
            (("resource",), (("resource.labelSelector", "FieldRequired"),)),
            (("resource", "labelSelector"), (("resource.labelSelector", "FieldRequired"),)),
            ((section,), (("", "InferenceOrTuningRequired"),)),
        ]
        if section == "tuning":
            options += [(("tuning", "input"), (("tuning.input", "FieldRequired"),)),
                        (("tuning", "output"), (("tuning.output", "FieldRequired"),)),
                        (("tuning", "preset"), (("tuning.preset", "TuningPresetRequired"),))]
        elif "preset" in doc["inference"]:
            doc["inference"].pop("adapters", None)
            options.append((("inference", "preset"), (("inference", "PresetOrTemplateRequired"),)))
        path, expect = c.choice(options)
        _set(doc, path, None)
        change = f"{_p(*path)}: null"

    elif category == "non_object_section":
        section = c.choice(["resource", "inference" if "inference" in doc else "tuning"])
        value = c.choice((c.text(LOWER_DIGITS, 0, 10), [doc[section]], c.integer(0, 9), True))
        doc[section] = value
        change = f"{section} is {json_type(value)}, not an object"
        expect = ((section, "FieldTypeInvalid"),)

    elif category == "invalid_name":
        name = c.choice((
            doc["metadata"]["name"].upper(),
            doc["metadata"]["name"] + "_" + c.text(LOWER_DIGITS, 1, 4),
            doc["metadata"]["name"] + "-" + c.text(LOWER_DIGITS, 63, 80),
            doc["metadata"]["name"] + ".",
            "-" + doc["metadata"]["name"],
        ))
        doc["metadata"]["name"] = name
        change = f"metadata.name = {name!r}"
        expect = (("metadata.name", "NameInvalid"),)

    elif category == "unsupported_selector":
        how = c.choice(("NotIn", "Exists", "empty", "two-values"))
        if how == "empty":
            doc["resource"]["labelSelector"] = {}
            expect = (("resource.labelSelector", "LabelSelectorEmpty"),)
        elif how == "two-values":
            doc["resource"]["labelSelector"] = {"matchExpressions": [
                {"key": "apps", "operator": "In", "values": [doc["metadata"]["name"], "other"]}]}
            expect = (("resource.labelSelector.matchExpressions[0].values", "LabelSelectorValuesInvalid"),)
        else:
            expr: dict[str, Any] = {"key": "apps", "operator": how}
            if how == "NotIn":
                expr["values"] = ["other"]
            doc["resource"]["labelSelector"] = {"matchExpressions": [expr]}
            expect = (("resource.labelSelector.matchExpressions[0].operator", "LabelSelectorOperatorNotSupported"),)
        change = f"resource.labelSelector: {how}"

    elif category == "tuning_rules":
        _, tunable = _presets(cat)
        how = c.choice(("method", "preset", "count", "no-input", "two-outputs"))
        if how == "method":
            doc["tuning"]["method"] = c.choice(("full", "dpo", "lora2", "sft"))
            expect = (("tuning.method", "TuningMethodNotSupported"),)
        elif how == "preset":
            names, _ = _presets(cat)
            doc["tuning"]["preset"] = {"name": c.choice([n for n in names if n not in tunable])}
            expect = (("tuning.preset.name", "PresetTuningNotSupported"),)
        elif how == "count":
            doc["resource"]["count"] = c.integer(2, MAX_NODE_COUNT)
            expect = (("resource.count", "TuningMultiNodeNotSupported"),)
        elif how == "no-input":
            doc["tuning"]["input"] = {}
            expect = (("tuning.input", "InputSourceRequired"),)
        else:
            doc["tuning"]["output"] = {"image": _image(c, "tuned"), "imagePushSecret": "push",
                                       "volumeSource": {"emptyDir": {}}}
            expect = (("tuning.output", "OutputDestinationsConflict"),)
        change = f"tuning: {how}"

    elif category == "not_json":
        how = c.choice(("list", "string", "number", "bytes", "nan", "huge-int", "key"))
        if how in ("list", "string", "number"):
            doc = {"list": [doc], "string": "Workspace", "number": 42}[how]
            expect = (("", "DocumentNotAnObject"),)
        elif how == "bytes":
            doc["metadata"].setdefault("annotations", {})["example.com/blob"] = b"\x00\x01"
            expect = (('metadata.annotations["example.com/blob"]', "AnnotationValueInvalid"),
                      ('metadata.annotations["example.com/blob"]', "ValueNotJSON"))
        elif how == "nan":
            doc["resource"]["count"] = c.choice((float("nan"), float("inf"), float("-inf")))
            expect = (("resource.count", "FieldTypeInvalid"), ("resource.count", "NumberNotFinite"))
        elif how == "huge-int":
            doc["resource"]["count"] = 10 ** c.integer(4400, 6000)
            expect = (("resource.count", "IntegerOutOfRange"),)
        else:
            doc["resource"]["labelSelector"] = {"matchLabels": {c.choice((1, True, None)): "x"}}
            expect = (("resource.labelSelector.matchLabels[1]", "LabelKeyInvalid"),
                      ("resource.labelSelector.matchLabels[1]", "KeyNotString"),
                      ("resource.labelSelector.matchLabels.true", "KeyNotString"),
                      ("resource.labelSelector.matchLabels.null", "KeyNotString"))
        change = f"not JSON: {how}"

    else:
        raise ValueError(f"unknown category {category!r}; one of: {', '.join(CATEGORIES)}")
    return BadWorkspace(category, doc, expect, fixed, change)


# --------------------------------------------------------------------------------------------
# YAML for workspace-fsm validate
# --------------------------------------------------------------------------------------------


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """A safe dumper (libyaml's when there is one: fast on megabyte strings) that also writes integers
    of more digits than Python turns into text by default."""


def _represent_int(dumper: yaml.SafeDumper, value: int) -> Any:
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        text = str(value)
    finally:
        sys.set_int_max_str_digits(limit)
    return dumper.represent_scalar("tag:yaml.org,2002:int", text)


_Dumper.add_representer(int, _represent_int)


def dump_yaml(doc: Any) -> str:
    """``doc`` as one YAML document, keys in their order (as a person would write the manifest)."""
    return yaml.dump_all([doc], Dumper=_Dumper, allow_unicode=True, sort_keys=False)


# --------------------------------------------------------------------------------------------
# hypothesis strategies
# --------------------------------------------------------------------------------------------


def valid_workspaces(*, kind: str | None = None, auto_provisioning: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    """Valid Workspaces (inference or tuning) from the catalogue's presets and the CRD's fields."""
    return st.composite(lambda draw: make_valid(DrawChooser(draw), kind=kind, auto_provisioning=auto_provisioning))()


def schema_documents() -> st.SearchStrategy[dict[str, Any]]:
    """Workspaces shaped exactly by KAITO's CRD schema, with arbitrary values (mostly invalid for KAITO)."""
    return st.composite(lambda draw: make_from_schema(DrawChooser(draw)))()


def bad_workspaces(categories: Sequence[str] = CATEGORIES, *, auto_provisioning: bool = True
                   ) -> st.SearchStrategy[BadWorkspace]:
    """Bad Workspaces, each a :class:`BadWorkspace` tagged with its category."""
    unknown = set(categories) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown categories {sorted(unknown)}; use some of: {', '.join(CATEGORIES)}")

    @st.composite
    def build(draw: Callable[[st.SearchStrategy[Any]], Any]) -> BadWorkspace:
        c = DrawChooser(draw)
        return make_bad(c, c.choice(categories), auto_provisioning=auto_provisioning)

    return build()
