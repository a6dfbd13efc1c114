"""Checking KAITO Workspace manifests before they reach the state machine or a cluster.

:func:`check_document` returns every problem with one Workspace document at once: the object
envelope (apiVersion, kind, metadata), the CRD's structural schema (KAITO's own
``kaito.sh_workspaces.yaml``, shipped as package data, with pruning and defaulting as an API
server does them) and the rules KAITO's admission webhook enforces on create, as far as they can
be checked without a cluster (no node lists, no ConfigMap or Secret look-ups, no SKU tables, no
feature gates other than node auto-provisioning).

:func:`validate_files` is the file front end: multi-document YAML in, one line per problem out.
"""

from __future__ import annotations

import functools
import importlib.resources
import ipaddress
import os
import re
import sys
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

import yaml

from workspace_fsm.engine import schema as k8s_schema
from workspace_fsm.kaito.catalogue import Catalogue
from workspace_fsm.engine.problems import Problem
from workspace_fsm.engine.schema import describe_value, format_path

__all__ = [
    "API_VERSIONS",
    "KIND",
    "MAX_ADAPTERS",
    "MAX_NODE_COUNT",
    "TUNING_METHODS",
    "check_document",
    "is_workspace",
    "load_yaml_documents",
    "object_ref",
    "validate_files",
    "workspace_schema",
]

API_GROUP = "kaito.sh"
#: The apiVersions accepted for a Workspace; v1beta1 is KAITO's storage version.
API_VERSIONS = ("kaito.sh/v1beta1", "kaito.sh/v1alpha1")
KIND = "Workspace"

#: Upper bound for ``resource.count``. KAITO has no hard cap (the field is even deprecated in
#: v1beta1), but its largest presets need about six 8-GPU nodes; a count in the hundreds is
#: almost certainly a typo, and with node auto-provisioning it would ask the cloud for that many
#: GPU VMs. 100 leaves room for any real multi-node deployment.
MAX_NODE_COUNT = 100
#: KAITO rejects more than 10 adapters on one Workspace.
MAX_ADAPTERS = 10
#: The parameter-efficient tuning methods KAITO implements (compared case-insensitively, as KAITO does).
TUNING_METHODS = ("lora", "qlora")

# Kubernetes limits.
MAX_NAME_LENGTH = 63  # KAITO requires a DNS-1123 label: it names Deployments and Services after it
MAX_SUBDOMAIN_LENGTH = 253
MAX_LABEL_VALUE_LENGTH = 63
MAX_ANNOTATIONS_SIZE = 256 * 1024  # total bytes of keys and values, as the API server counts
# etcd's default request limit is 1.5 MiB; an object bigger than that cannot be stored.
MAX_DOCUMENT_SIZE = 1536 * 1024
MAX_DOCUMENT_DEPTH = 64
_MAX_NODES = 200_000

# Annotations whose values KAITO's webhook checks.
PERFORMANCE_MODE_ANNOTATION = "kaito.sh/performance-mode"
PERFORMANCE_MODES = ("balanced", "interactivity", "throughput")
NODE_IMAGE_FAMILY_ANNOTATION = "kaito.sh/node-image-family"
NODE_IMAGE_FAMILIES = ("azurelinux", "ubuntu")

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_HF_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_MIG_PROFILE = re.compile(r"[1-7]g\.[0-9]+gb(\+me)?")
# A container image reference: [registry[:port]/]path[:tag][@digest]. Laxer than Docker's own
# parser in one way on purpose: upper case is accepted in the path, because KAITO's examples use
# placeholders like ACR_REPO_HERE.azurecr.io/IMAGE_NAME_HERE:0.0.1.
_PATH_COMPONENT = r"[A-Za-z0-9]+(?:(?:[._]|__|-+)[A-Za-z0-9]+)*"
_IMAGE_REFERENCE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"(?::[0-9]+)?/)?"
    rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)
_MAX_IMAGE_REFERENCE = 512
_METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.google", "instance-data.ec2.internal"})


# --------------------------------------------------------------------------------------------
# The CRD schema
# --------------------------------------------------------------------------------------------


@functools.cache
def _crd() -> Mapping[str, Any]:
    resource = importlib.resources.files("workspace_fsm.kaito") / "data" / "kaito.sh_workspaces.yaml"
    return yaml.safe_load(resource.read_text(encoding="utf-8"))


@functools.cache
def workspace_schema(version: str = "v1beta1") -> Mapping[str, Any]:
    """The ``openAPIV3Schema`` of the shipped KAITO Workspace CRD for ``version``."""
    return k8s_schema.crd_schema(_crd(), version)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


class _Problems:
    """An ordered, duplicate-free list of problems."""

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self._seen: set[tuple[str, str]] = set()

    def add(self, path: str, reason: str, message: str) -> None:
        key = (path, reason)
        if key not in self._seen:
            self._seen.add(key)
            self.items.append(Problem(path, reason, message))

    def extend(self, problems: Iterable[Problem]) -> None:
        for p in problems:
            self.add(p.path, p.reason, p.message)

    def has(self, path: str) -> bool:
        return any(p.path == path for p in self.items)


def _path(*parts: Any) -> str:
    return format_path(parts)


def _str(value: Any) -> str | None:
    """``value`` if it is a non-empty string, else None."""
    return value if isinstance(value, str) and value else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _dns1123_label_errors(value: str) -> str | None:
    if len(value) > MAX_NAME_LENGTH:
        return f"must be at most {MAX_NAME_LENGTH} characters, not {len(value)}"
    if not _DNS1123_LABEL.fullmatch(value):
        return (
            "must be a DNS-1123 label: lower-case letters, digits and '-', "
            "starting and ending with a letter or digit (e.g. 'my-workspace')"
        )
    return None


def _dns1123_subdomain_errors(value: str) -> str | None:
    if len(value) > MAX_SUBDOMAIN_LENGTH:
        return f"must be at most {MAX_SUBDOMAIN_LENGTH} characters, not {len(value)}"
    if not _DNS1123_SUBDOMAIN.fullmatch(value):
        return (
            "must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit"
        )
    return None


def _qualified_name_errors(key: str) -> str | None:
    parts = key.split("/")
    if len(parts) > 2:
        return "a qualified name has at most one '/' (an optional DNS-subdomain prefix, then the name)"
    if len(parts) == 2:
        prefix, name = parts
        if not prefix:
            return "the prefix before '/' must not be empty"
        bad = _dns1123_subdomain_errors(prefix)
        if bad:
            return f"the prefix {describe_value(prefix)} {bad}"
    else:
        name = parts[0]
    if not name:
        return "the name part must not be empty"
    if len(name) > 63:
        return f"the name part must be at most 63 characters, not {len(name)}"
    if not _QUALIFIED_NAME.fullmatch(name):
        return (
            "the name part must consist of letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def _label_value_errors(value: str) -> str | None:
    if len(value) > MAX_LABEL_VALUE_LENGTH:
        return f"must be at most {MAX_LABEL_VALUE_LENGTH} characters, not {len(value)}"
    if not _LABEL_VALUE.fullmatch(value):
        return (
            "must be empty or consist of letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def _measure(doc: Any) -> tuple[int, int, int]:
    """(depth, approximate JSON size in bytes, node count), stopping early past the limits."""
    depth = size = nodes = 0
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, level = stack.pop()
        nodes += 1
        depth = max(depth, level)
        if nodes > _MAX_NODES or depth > MAX_DOCUMENT_DEPTH or size > MAX_DOCUMENT_SIZE:
            break
        if isinstance(value, Mapping):
            size += 2
            for k, v in value.items():
                size += (len(k) if isinstance(k, str) else 8) + 4
                stack.append((v, level + 1))
        elif isinstance(value, (list, tuple)):
            size += 2
            stack.extend((v, level + 1) for v in value)
        elif isinstance(value, (str, bytes)):
            size += len(value) + 3
        else:
            size += 8
    return depth, size, nodes


def object_ref(doc: Any) -> str:
    """``namespace/name`` of a document for messages (``default`` when no namespace is given)."""
    meta = doc.get("metadata") if isinstance(doc, Mapping) else None
    meta = meta if isinstance(meta, Mapping) else {}
    namespace = _str(meta.get("namespace")) or "default"
    name = _str(meta.get("name"))
    if name is None:
        generate = _str(meta.get("generateName"))
        name = f"{generate}*" if generate else "<no name>"

    def short(s: str) -> str:
        return s if len(s) <= 80 else s[:77] + "..."

    return f"{short(namespace)}/{short(name)}"


def is_workspace(doc: Any) -> bool:
    """True for a document meant as a Workspace: kind Workspace (in any letter case, so that a
    misspelt ``kind: workspace`` is checked and reported), or no kind but a kaito.sh apiVersion."""
    if not isinstance(doc, Mapping):
        return False
    kind = doc.get("kind")
    if isinstance(kind, str) and kind:
        return kind.lower() == KIND.lower()
    api = doc.get("apiVersion")
    return isinstance(api, str) and api.startswith(f"{API_GROUP}/")


# --------------------------------------------------------------------------------------------
# check_document
# --------------------------------------------------------------------------------------------


def check_document(
    doc: Any, catalogue: Catalogue | None = None, *, auto_provisioning: bool = True
) -> list[Problem]:
    """Every problem with one Workspace document (an empty list when it is valid).

    ``auto_provisioning`` says whether the cluster's KAITO provisions GPU nodes itself (the
    default; ``resource.instanceType`` is then required) or uses nodes brought by the user
    (``disableNodeAutoProvisioning``; ``instanceType`` must then be empty, and
    ``resource.partition`` becomes possible). Never raises on malformed input.
    """
    cat = catalogue if catalogue is not None else Catalogue.default()
    out = _Problems()
    if not isinstance(doc, Mapping):
        out.add("", "DocumentNotAnObject", f"a Workspace must be an object (a mapping), not {describe_value(doc)}")
        return out.items
    depth, size, nodes = _measure(doc)
    if depth > MAX_DOCUMENT_DEPTH:
        out.add("", "DocumentTooDeep", f"the document is nested more than {MAX_DOCUMENT_DEPTH} levels deep")
        return out.items
    if nodes > _MAX_NODES:
        out.add("", "DocumentTooLarge", f"the document has more than {_MAX_NODES} values")
        return out.items
    if size > MAX_DOCUMENT_SIZE:
        out.add(
            "", "DocumentTooLarge",
            f"the document is larger than {MAX_DOCUMENT_SIZE // 1024} KiB, the most the API server can store",
        )
    not_json, unreadable = _json_value_problems(doc)
    if unreadable:
        # Integers too long to even print: every later check would trip over them. Report these alone.
        out.extend(not_json)
        return out.items

    version = _check_envelope(doc, out)
    _check_metadata(doc.get("metadata"), out)

    # The CRD schema, applied as the API server applies it: status is ignored on create
    # (status subresource), unknown fields are pruned (rejected under kubectl's default strict
    # field validation, so reported here), defaults are filled in, then the schema is checked.
    crd = workspace_schema(version)
    body = {k: v for k, v in doc.items() if k != "status"}
    pruned, removed = k8s_schema.prune(body, crd)
    for path in removed:
        out.add(path, "FieldUnknown", _unknown_field_message(path, version))
    spec = k8s_schema.apply_defaults(pruned, crd)
    out.extend(k8s_schema.validate(spec, crd))

    _check_kaito_rules(spec, cat, auto_provisioning, out)
    for p in not_json:
        if not out.has(p.path):  # e.g. a label key already reported as LabelKeyInvalid
            out.add(p.path, p.reason, p.message)
    return out.items


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
#: Python refuses to turn an integer of more than 4300 digits into text; past ~4000 digits (13000
#: bits) a number is reported on its own and nothing else is checked (every other message would show it).
_UNPRINTABLE_INT_BITS = 13_000
_MAX_JSON_PROBLEMS = 20


def _json_value_problems(doc: Mapping[str, Any]) -> tuple[list[Problem], bool]:
    """Values the API server could never hold, anywhere in the document (status aside): integers
    outside the 64-bit range, NaN or infinite numbers, map keys that are not strings, and values
    that are not JSON at all (a YAML ``!!binary`` or ``!!set``). Returns the problems (at most
    20) and whether an integer is too long to print."""
    found: list[Problem] = []
    unreadable = False
    stack: list[tuple[Any, tuple[Any, ...]]] = [({k: v for k, v in doc.items() if k != "status"}, ())]
    visited = 0
    while stack and len(found) < _MAX_JSON_PROBLEMS and visited <= _MAX_NODES:
        value, where = stack.pop()
        visited += 1
        if isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        if isinstance(value, int):
            if not (_INT64_MIN <= value <= _INT64_MAX):
                unreadable = unreadable or value.bit_length() > _UNPRINTABLE_INT_BITS
                found.append(Problem(
                    _path(*where), "IntegerOutOfRange",
                    f"{describe_value(value)} is outside the 64-bit integer range the API server stores "
                    f"({_INT64_MIN} to {_INT64_MAX})",
                ))
        elif isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                found.append(Problem(
                    _path(*where), "NumberNotFinite",
                    f"{describe_value(value)} is not a number JSON can carry (no NaN or infinity); "
                    "kubectl cannot send it",
                ))
        elif isinstance(value, Mapping):
            for k, v in value.items():
                part = k
                if not isinstance(k, str):
                    small = isinstance(k, int) and not isinstance(k, bool) and k.bit_length() <= _UNPRINTABLE_INT_BITS
                    unreadable = unreadable or (isinstance(k, int) and not small)
                    part = k if small else describe_value(k)  # shown as metadata.labels[1], as the label check does
                    found.append(Problem(_path(*where, part), "KeyNotString", _key_message(k)))
                stack.append((v, (*where, part)))
        elif isinstance(value, list):
            stack.extend((v, (*where, i)) for i, v in enumerate(value))
        else:
            found.append(Problem(
                _path(*where), "ValueNotJSON",
                f"a {type(value).__name__} value is not JSON, so the API server cannot take it "
                "(a YAML tag such as !!binary or !!set?); write it as a string, number, list or map",
            ))
    return found, unreadable


def _key_message(key: Any) -> str:
    return (
        f"the key {describe_value(key)} is not a string (in YAML, a bare number, true/false or null); "
        "Workspace fields and map keys are strings in the API: quote it"
    )


def _check_envelope(doc: Mapping[str, Any], out: _Problems) -> str:
    api = doc.get("apiVersion")
    version = "v1beta1"
    if api is None or api == "":
        out.add("apiVersion", "APIVersionRequired", f"is required; set apiVersion: {API_VERSIONS[0]}")
    elif isinstance(api, str):
        if api not in API_VERSIONS:
            out.add(
                "apiVersion", "APIVersionNotSupported",
                f"{describe_value(api)} is not a Workspace API version; use {API_VERSIONS[0]}"
                f" ({API_VERSIONS[1]} is also accepted)",
            )
        elif api.endswith("/v1alpha1"):
            version = "v1alpha1"
    kind = doc.get("kind")
    if kind is None or kind == "":
        out.add("kind", "KindRequired", f"is required; set kind: {KIND}")
    elif isinstance(kind, str) and kind != KIND:
        out.add("kind", "KindNotWorkspace", f"{describe_value(kind)} is not {KIND}")
    return version


def _check_metadata(meta: Any, out: _Problems) -> None:
    if meta is None:
        out.add("metadata.name", "NameRequired", "is required: every Workspace needs metadata.name")
        return
    if not isinstance(meta, Mapping):
        return  # the schema reports the type
    name = meta.get("name")
    if name is None or name == "":
        generate = meta.get("generateName")
        if isinstance(generate, str) and generate:
            # The API server appends 5 random characters; the result must still be a label.
            bad = _dns1123_label_errors(generate[:-1] + "x" if generate.endswith("-") else generate)
            if bad or len(generate) > MAX_NAME_LENGTH - 5:
                out.add(
                    "metadata.generateName", "NameInvalid",
                    bad or f"must be at most {MAX_NAME_LENGTH - 5} characters so the generated name fits in {MAX_NAME_LENGTH}",
                )
        else:
            out.add("metadata.name", "NameRequired", "is required: every Workspace needs metadata.name")
    elif not isinstance(name, str):
        out.add("metadata.name", "FieldTypeInvalid", f"must be a string, not {describe_value(name)}")
    else:
        bad = _dns1123_label_errors(name)
        if bad:
            why = " (KAITO names the Workspace's Deployment, Service and pods after it)"
            out.add("metadata.name", "NameInvalid", f"{describe_value(name)} {bad}{why}")

    namespace = meta.get("namespace")
    if namespace is not None:
        if not isinstance(namespace, str):
            out.add("metadata.namespace", "FieldTypeInvalid", f"must be a string, not {describe_value(namespace)}")
        elif namespace:
            bad = _dns1123_label_errors(namespace)
            if bad:
                out.add("metadata.namespace", "NamespaceInvalid", f"{describe_value(namespace)} {bad}")

    labels = meta.get("labels")
    if labels is not None:
        if not isinstance(labels, Mapping):
            out.add("metadata.labels", "FieldTypeInvalid", f"must be a map of strings, not {describe_value(labels)}")
        else:
            _check_label_map(labels, ("metadata", "labels"), out)

    annotations = meta.get("annotations")
    if annotations is not None:
        if not isinstance(annotations, Mapping):
            out.add(
                "metadata.annotations", "FieldTypeInvalid",
                f"must be a map of strings, not {describe_value(annotations)}",
            )
        else:
            _check_annotations(annotations, out)


def _check_label_map(
    labels: Mapping[Any, Any], base: tuple[Any, ...], out: _Problems, *, check_types: bool = True
) -> None:
    """Label keys and values; ``check_types`` False where the CRD schema already types the values."""
    for key, value in labels.items():
        where = _path(*base, key)
        if not isinstance(key, str):
            out.add(where, "LabelKeyInvalid", f"label keys must be strings, not {describe_value(key)}")
            continue
        bad = _qualified_name_errors(key)
        if bad:
            out.add(where, "LabelKeyInvalid", f"{describe_value(key)} is not a valid label key: {bad}")
        if not isinstance(value, str):
            if not check_types:
                continue
            out.add(
                where, "LabelValueInvalid",
                f"label values must be strings (quote it: \"{describe_value(value)}\"), not {describe_value(value)}",
            )
            continue
        bad = _label_value_errors(value)
        if bad:
            out.add(where, "LabelValueInvalid", f"{describe_value(value)} is not a valid label value: it {bad}")


def _check_annotations(annotations: Mapping[Any, Any], out: _Problems) -> None:
    total = 0
    for key, value in annotations.items():
        where = _path("metadata", "annotations", key)
        if not isinstance(key, str):
            out.add(where, "AnnotationKeyInvalid", f"annotation keys must be strings, not {describe_value(key)}")
            continue
        total += len(key.encode("utf-8", "surrogatepass"))
        bad = _qualified_name_errors(key.lower())
        if bad:
            out.add(where, "AnnotationKeyInvalid", f"{describe_value(key)} is not a valid annotation key: {bad}")
        if not isinstance(value, str):
            out.add(
                where, "AnnotationValueInvalid",
                f"annotation values must be strings (quote it), not {describe_value(value)}",
            )
            continue
        total += len(value.encode("utf-8", "surrogatepass"))
        if key == PERFORMANCE_MODE_ANNOTATION and value not in PERFORMANCE_MODES:
            out.add(
                where, "AnnotationValueNotSupported",
                f"{describe_value(value)} is not a performance mode; use one of: {', '.join(PERFORMANCE_MODES)}",
            )
        if key == NODE_IMAGE_FAMILY_ANNOTATION and value.lower() not in NODE_IMAGE_FAMILIES:
            out.add(
                where, "AnnotationValueNotSupported",
                f"{describe_value(value)} is not a supported node image family; use one of: {', '.join(NODE_IMAGE_FAMILIES)}",
            )
    if total > MAX_ANNOTATIONS_SIZE:
        out.add(
            "metadata.annotations", "AnnotationsTooLarge",
            f"annotations take {total} bytes; the API server allows at most {MAX_ANNOTATIONS_SIZE} (256 KiB) in total",
        )


def _unknown_field_message(path: str, version: str) -> str:
    if path == "spec":
        return (
            "a Workspace has no spec: resource, inference and tuning are top-level fields; "
            "move them out of spec"
        )
    if path.startswith("metadata"):
        return "is not an ObjectMeta field; the API server drops it (kubectl's strict validation rejects it)"
    return (
        f"is not a field of Workspace {API_GROUP}/{version} (a typo?); the API server drops it "
        "(kubectl's strict validation rejects it)"
    )


# --------------------------------------------------------------------------------------------
# KAITO admission rules
# --------------------------------------------------------------------------------------------


def _check_kaito_rules(spec: Mapping[str, Any], cat: Catalogue, auto: bool, out: _Problems) -> None:
    inference = spec.get("inference")
    tuning = spec.get("tuning")
    has_inference = inference is not None
    has_tuning = tuning is not None
    if has_inference and has_tuning:
        out.add(
            "", "InferenceAndTuningBothSet",
            "set either inference or tuning, not both: a Workspace either serves a model or tunes one",
        )
    elif not has_inference and not has_tuning:
        out.add(
            "", "InferenceOrTuningRequired",
            "set inference (to serve a model) or tuning (to fine-tune one); the Workspace has neither",
        )

    resource = spec.get("resource")
    if resource is None:
        resource = {}
        out.add(
            "resource.labelSelector", "FieldRequired",
            "is required: resource.labelSelector selects the GPU nodes for the Workspace",
        )
    if isinstance(resource, Mapping):
        _check_resource(resource, auto, is_tuning=has_tuning and not has_inference, out=out)

    if isinstance(inference, Mapping):
        _check_inference(inference, cat, out)
    if isinstance(tuning, Mapping):
        _check_tuning(tuning, cat, out)


def _check_resource(resource: Mapping[str, Any], auto: bool, *, is_tuning: bool, out: _Problems) -> None:
    count = resource.get("count", 1)
    if _is_int(count):
        if count < 1:
            out.add("resource.count", "CountTooSmall", f"must be at least 1 node, not {describe_value(count)}")
        elif count > MAX_NODE_COUNT:
            out.add(
                "resource.count", "CountTooLarge",
                f"{describe_value(count)} nodes is more than the {MAX_NODE_COUNT} this operator allows for one Workspace",
            )
        elif count > 1 and is_tuning:
            out.add(
                "resource.count", "TuningMultiNodeNotSupported",
                "tuning runs on a single node in KAITO; set resource.count to 1 (or leave it out)",
            )

    instance_type = resource.get("instanceType")
    if instance_type is None or instance_type == "":
        if auto:
            out.add(
                "resource.instanceType", "InstanceTypeRequired",
                "is required when KAITO provisions the GPU nodes (node auto-provisioning): set it to a "
                "GPU VM size, e.g. instanceType: Standard_NC24ads_A100_v4; on a cluster whose GPU nodes "
                "you bring yourself, check with node auto-provisioning disabled instead",
            )
    elif isinstance(instance_type, str):
        if not auto:
            out.add(
                "resource.instanceType", "InstanceTypeNotAllowed",
                "must be empty when node auto-provisioning is disabled (nodes brought by you): KAITO "
                "uses the existing nodes that resource.labelSelector matches; remove instanceType",
            )
        bad = _label_value_errors(instance_type)
        if bad:
            out.add(
                "resource.instanceType", "InstanceTypeInvalid",
                f"{describe_value(instance_type)} is not a valid instance type (it becomes a node label value): it {bad}",
            )

    selector = resource.get("labelSelector")
    if isinstance(selector, Mapping):
        _check_label_selector(selector, out)

    partition = resource.get("partition")
    if isinstance(partition, Mapping):
        _check_partition(partition, auto, is_tuning=is_tuning, out=out)


def _check_label_selector(selector: Mapping[str, Any], out: _Problems) -> None:
    base = ("resource", "labelSelector")
    labels = selector.get("matchLabels")
    expressions = selector.get("matchExpressions")
    has_labels = isinstance(labels, Mapping) and len(labels) > 0
    has_expressions = isinstance(expressions, list) and len(expressions) > 0
    if not has_labels and not has_expressions:
        if not (labels is not None and not isinstance(labels, Mapping)) and not (
            expressions is not None and not isinstance(expressions, list)
        ):
            out.add(
                _path(*base), "LabelSelectorEmpty",
                "needs matchLabels or matchExpressions: an empty selector would match every node, "
                "e.g. matchLabels: {apps: my-model}",
            )
    if isinstance(labels, Mapping):
        _check_label_map(labels, (*base, "matchLabels"), out, check_types=False)
    if isinstance(expressions, list):
        for i, expr in enumerate(expressions):
            if not isinstance(expr, Mapping):
                continue  # the schema reports the type
            where = (*base, "matchExpressions", i)
            key = expr.get("key")
            if isinstance(key, str):
                bad = _qualified_name_errors(key)
                if bad:
                    out.add(_path(*where, "key"), "LabelKeyInvalid", f"{describe_value(key)} is not a valid label key: {bad}")
            operator = expr.get("operator")
            values = expr.get("values")
            if not isinstance(operator, str):
                continue
            if operator == "In":
                if not isinstance(values, list) or len(values) != 1:
                    n = len(values) if isinstance(values, list) else 0
                    out.add(
                        _path(*where, "values"), "LabelSelectorValuesInvalid",
                        f"KAITO needs exactly one value for operator In (it turns the selector into node labels), not {n}",
                    )
                else:
                    value = values[0]
                    if isinstance(value, str):
                        bad = _label_value_errors(value)
                        if bad:
                            out.add(
                                _path(*where, "values", 0), "LabelValueInvalid",
                                f"{describe_value(value)} is not a valid label value: it {bad}",
                            )
            elif operator in ("NotIn", "Exists", "DoesNotExist"):
                out.add(
                    _path(*where, "operator"), "LabelSelectorOperatorNotSupported",
                    f"KAITO accepts only matchLabels or operator In with one value (it turns the selector "
                    f"into node labels); {operator} cannot be used",
                )
            else:
                out.add(
                    _path(*where, "operator"), "LabelSelectorOperatorInvalid",
                    f"{describe_value(operator)} is not a selector operator; use In (with one value) or matchLabels",
                )


def _check_partition(partition: Mapping[str, Any], auto: bool, *, is_tuning: bool, out: _Problems) -> None:
    if is_tuning:
        out.add("resource.partition", "PartitionNotSupportedForTuning", "GPU partitioning is not supported for tuning")
    elif auto:
        out.add(
            "resource.partition", "PartitionRequiresBYONodes",
            "GPU partitioning works only on nodes you bring (node auto-provisioning disabled, instanceType "
            "empty); remove partition or run KAITO with node auto-provisioning disabled",
        )
    mode = partition.get("mode")
    count = partition.get("count")
    profile = partition.get("profile")
    if mode == "accelerator":
        if profile not in (None, ""):
            out.add("resource.partition.profile", "PartitionProfileNotAllowed", "is not valid for accelerator mode; remove it")
        if count is None:
            out.add(
                "resource.partition.count", "PartitionCountRequired",
                "is required for accelerator mode: the number of whole GPUs for the workload",
            )
    elif mode == "mig":
        if count is not None:
            out.add("resource.partition.count", "PartitionCountNotAllowed", "is only valid for accelerator mode; remove it")
        if not isinstance(profile, str) or not _MIG_PROFILE.fullmatch(profile):
            shown = "missing" if profile in (None, "") else describe_value(profile)
            out.add(
                "resource.partition.profile", "PartitionProfileInvalid",
                f"a MIG profile such as 1g.10gb, 2g.20gb or 3g.40gb is required for mig mode ({shown})",
            )


def _check_preset_name(
    name: Any, where: tuple[Any, ...], cat: Catalogue, out: _Problems, *, for_tuning: bool
) -> Any:
    """Check a preset name; return the catalogue entry when there is one."""
    path = _path(*where)
    if not isinstance(name, str):
        return None  # missing or wrong type: the schema reports it
    if not name.strip():
        out.add(path, "PresetNameRequired", "must name a model preset, e.g. phi-4-mini-instruct")
        return None
    preset = cat.get(name)
    if preset is None:
        if not for_tuning and len(name) <= 200 and _HF_MODEL_ID.fullmatch(name):
            return None  # a Hugging Face model id: KAITO serves it with vLLM on a best-effort basis
        matches = cat.close_matches(name)
        hint = f" Did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""
        more = "" if for_tuning else " (nor a Hugging Face model id like org/model)"
        out.add(
            path, "UnknownPreset",
            f"{describe_value(name)} is not a known model preset{more}.{hint} "
            f"The catalogue has {len(cat)} presets; add more with --catalogue FILE "
            "(workspace-fsm run and validate).",
        )
        return None
    if preset.deprecated:
        out.add(path, "PresetDeprecated", f"model {name} is deprecated and no longer supported by KAITO")
    return preset


def _check_dns_name(value: Any, path: str, reason: str, what: str, out: _Problems) -> None:
    if isinstance(value, str) and value:
        bad = _dns1123_subdomain_errors(value)
        if bad:
            out.add(path, reason, f"{describe_value(value)} is not a valid {what} name: it {bad}")


def _check_inference(inference: Mapping[str, Any], cat: Catalogue, out: _Problems) -> None:
    preset = inference.get("preset")
    template = inference.get("template")
    if preset is None and template is None:
        out.add(
            "inference", "PresetOrTemplateRequired",
            "set inference.preset (a model from the catalogue) or inference.template (your own pod template)",
        )
    elif preset is not None and template is not None:
        out.add("inference", "PresetAndTemplateBothSet", "set inference.preset or inference.template, not both")
    if template is not None and not isinstance(template, Mapping):
        out.add("inference.template", "FieldTypeInvalid", f"must be a pod template (an object), not {describe_value(template)}")

    if isinstance(preset, Mapping):
        entry = _check_preset_name(preset.get("name"), ("inference", "preset", "name"), cat, out, for_tuning=False)
        options = preset.get("presetOptions")
        options = options if isinstance(options, Mapping) else {}
        secret = options.get("modelAccessSecret")
        secret_path = "inference.preset.presetOptions.modelAccessSecret"
        if entry is not None and entry.download_auth_required and not secret:
            out.add(
                secret_path, "ModelAccessSecretRequired",
                f"model {entry.name} is gated: name a Secret holding an HF_TOKEN key that may download it",
            )
        _check_dns_name(secret, secret_path, "SecretNameInvalid", "Secret", out)

    _check_dns_name(inference.get("config"), "inference.config", "ConfigNameInvalid", "ConfigMap", out)

    adapters = inference.get("adapters")
    if isinstance(adapters, list):
        _check_adapters(adapters, out)


def _check_adapters(adapters: list[Any], out: _Problems) -> None:
    if len(adapters) > MAX_ADAPTERS:
        out.add(
            "inference.adapters", "TooManyAdapters",
            f"{len(adapters)} adapters; KAITO allows at most {MAX_ADAPTERS}",
        )
    seen: set[str] = set()
    for i, adapter in enumerate(adapters):
        if not isinstance(adapter, Mapping):
            continue
        base = ("inference", "adapters", i)
        source = adapter.get("source")
        if source is None:
            out.add(_path(*base, "source"), "AdapterSourceRequired", "is required: where to get the adapter (image or volumeSource)")
        elif isinstance(source, Mapping):
            name = source.get("name")
            if name is None or name == "":
                out.add(_path(*base, "source", "name"), "AdapterNameRequired", "is required: a name for the adapter")
            elif isinstance(name, str):
                _check_dns_name(name, _path(*base, "source", "name"), "AdapterNameInvalid", "adapter", out)
                if name in seen:
                    out.add(
                        _path(*base, "source", "name"), "AdapterNameDuplicate",
                        f"{describe_value(name)} is used by another adapter; adapter names must be unique",
                    )
                seen.add(name)
            urls = source.get("urls")
            if isinstance(urls, list) and urls:
                out.add(_path(*base, "source", "urls"), "AdapterURLsNotSupported", "adapters come from an image or a volume, not URLs")
            image = source.get("image")
            if not _str(image) and source.get("volumeSource") is None:
                out.add(_path(*base, "source"), "AdapterImageOrVolumeRequired", "set image or volumeSource for the adapter")
            _check_image(image, _path(*base, "source", "image"), out)
            _check_volume(source.get("volumeSource"), _path(*base, "source", "volumeSource"), out)
        strength = adapter.get("strength")
        if isinstance(strength, str):
            try:
                number = float(strength)
            except ValueError:
                number = None
            if number is None or not (0.0 <= number <= 1.0):
                out.add(
                    _path(*base, "strength"), "AdapterStrengthInvalid",
                    f"{describe_value(strength)} must be a number between 0 and 1, written as a string (e.g. \"0.5\")",
                )


def _check_image(image: Any, path: str, out: _Problems) -> None:
    if not isinstance(image, str) or not image:
        return
    if len(image) > _MAX_IMAGE_REFERENCE or not _IMAGE_REFERENCE.fullmatch(image):
        out.add(
            path, "ImageReferenceInvalid",
            f"{describe_value(image)} is not a valid image reference ([registry/]repository[:tag][@digest])",
        )


def _check_volume(volume: Any, path: str, out: _Problems) -> None:
    if volume is not None and not isinstance(volume, Mapping):
        out.add(path, "FieldTypeInvalid", f"must be a volume source (an object), not {describe_value(volume)}")


def _url_problem(url: str) -> str | None:
    if len(url) > 8192:
        return "is too long for a URL"
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "is not a valid URL"
    if parts.scheme.lower() not in ("http", "https"):
        return "must be an http or https URL"
    if not host:
        return "has no host"
    host = host.lower()
    if host == "localhost" or host.endswith(".localhost") or host in _METADATA_HOSTS:
        return "must not point at this machine or a cloud metadata endpoint"
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if address.is_loopback or address.is_private or address.is_link_local or address.is_multicast:
        return "must not point at a loopback, private or link-local address"
    return None


def _check_tuning(tuning: Mapping[str, Any], cat: Catalogue, out: _Problems) -> None:
    preset = tuning.get("preset")
    entry = None
    if preset is None:
        out.add("tuning.preset", "TuningPresetRequired", "is required: tuning needs a model preset to start from")
    elif isinstance(preset, Mapping):
        name = preset.get("name")
        entry = _check_preset_name(name, ("tuning", "preset", "name"), cat, out, for_tuning=True)
        if entry is not None and not entry.supports_tuning():
            tunable = sorted(p.name for p in cat.presets.values() if p.supports_tuning() and not p.deprecated)
            out.add(
                "tuning.preset.name", "PresetTuningNotSupported",
                f"model {entry.name} cannot be tuned; tunable presets: {', '.join(tunable) or 'none'}",
            )

    method = tuning.get("method")
    if method is None or method == "":
        out.add("tuning.method", "TuningMethodRequired", f"is required: one of {', '.join(TUNING_METHODS)}")
    elif isinstance(method, str):
        if method.lower() not in TUNING_METHODS:
            out.add(
                "tuning.method", "TuningMethodNotSupported",
                f"{describe_value(method)} is not a tuning method KAITO supports; use one of: {', '.join(TUNING_METHODS)}",
            )
        elif entry is not None and entry.supports_tuning() and not entry.supports_tuning(method):
            out.add(
                "tuning.method", "TuningMethodNotSupported",
                f"model {entry.name} supports only: {', '.join(entry.tuning)}",
            )

    _check_dns_name(tuning.get("config"), "tuning.config", "ConfigNameInvalid", "ConfigMap", out)

    data_in = tuning.get("input")
    if isinstance(data_in, Mapping):
        urls = data_in.get("urls")
        image = data_in.get("image")
        volume = data_in.get("volumeSource")
        given = sum((isinstance(urls, list) and len(urls) > 0, bool(_str(image)), volume is not None))
        if given == 0:
            out.add("tuning.input", "InputSourceRequired", "set one of urls, image or volumeSource for the training data")
        elif given > 1:
            out.add("tuning.input", "InputSourcesConflict", "set exactly one of urls, image or volumeSource, not several")
        if isinstance(urls, list):
            for i, url in enumerate(urls):
                if isinstance(url, str):
                    bad = _url_problem(url)
                    if bad:
                        out.add(_path("tuning", "input", "urls", i), "InputURLInvalid", f"{describe_value(url)} {bad}")
        _check_image(image, "tuning.input.image", out)
        _check_volume(volume, "tuning.input.volumeSource", out)
        _check_dns_name(data_in.get("name"), "tuning.input.name", "InputNameInvalid", "data source", out)

    data_out = tuning.get("output")
    if isinstance(data_out, Mapping):
        image = data_out.get("image")
        volume = data_out.get("volumeSource")
        given = sum((bool(_str(image)), volume is not None))
        if given == 0:
            out.add("tuning.output", "OutputDestinationRequired", "set image or volumeSource for the tuning result")
        elif given > 1:
            out.add("tuning.output", "OutputDestinationsConflict", "set image or volumeSource for the result, not both")
        if _str(image) and not _str(data_out.get("imagePushSecret")):
            out.add(
                "tuning.output.imagePushSecret", "ImagePushSecretRequired",
                "is required with output.image: the Secret with the registry credentials to push the result",
            )
        _check_image(image, "tuning.output.image", out)
        _check_volume(volume, "tuning.output.volumeSource", out)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """YAML as the Kubernetes tools read it: timestamps stay strings, duplicate keys are errors."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:
                    continue  # unhashable: the base class reports it
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {describe_value(key)}", key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def _construct_yaml_int(loader: _Loader, node: Any) -> Any:
    try:
        return yaml.constructor.SafeConstructor.construct_yaml_int(loader, node)
    except ValueError:  # Python reads at most 4300 digits
        raise yaml.constructor.ConstructorError(
            None, None,
            f"the integer {describe_value(str(node.value))} has too many digits to be a number any "
            "Kubernetes field takes (quote it if it is meant as text)",
            node.start_mark,
        ) from None


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_yaml_int)
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_yaml_documents(text: str) -> Iterable[Any]:
    """The documents of a multi-document YAML text, read as Kubernetes tools read them.

    Lazy: a syntax error further on is raised (as ``yaml.YAMLError``) when reached.
    """
    return yaml.load_all(text, Loader=_Loader)


def _yaml_error_line(path: str, error: BaseException) -> str:
    """``path: line L, column C: YAML does not parse: <problem>, <context> that began at line L', column C'``.

    PyYAML knows two places: where it gave up (the problem) and where the construct it was reading began
    (the context: an unclosed quote or bracket, the mapping with a duplicate key). The second is often the
    one to fix, so both are given."""
    if isinstance(error, RecursionError):
        return f"{path}: YAML does not parse: it is nested too deeply to read"
    mark = getattr(error, "problem_mark", None)
    context = getattr(error, "context", None)
    context_mark = getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or context or str(error) or type(error).__name__
    problem = " ".join(str(problem).split())
    began = ""
    if context and context_mark is not None and problem != context and (
            mark is None or (context_mark.line, context_mark.column) != (mark.line, mark.column)):
        began = (f", {' '.join(str(context).split())} that began at line {context_mark.line + 1}, "
                 f"column {context_mark.column + 1}")
    if mark is not None:
        return f"{path}: line {mark.line + 1}, column {mark.column + 1}: YAML does not parse: {problem}{began}"
    return f"{path}: YAML does not parse: {problem}{began}"


#: The name standard input is shown under (``-`` on the command line).
STDIN_NAME = "<stdin>"


class _Tally:
    """What validate_files counts, and how it prints one object's problems."""

    def __init__(self, cat: Catalogue, auto_provisioning: bool, out: TextIO) -> None:
        self.cat, self.auto, self.out = cat, auto_provisioning, out
        self.checked = self.invalid = self.problems = self.rag_checked = self.not_objects = 0

    def document(self, where: str, doc: Any, in_list: bool = False) -> int:
        """Check one document (or one item of a List) and print its problems; the objects checked (0 or 1).

        ``where`` names it for the operator: ``file: document 2`` or ``file: document 1: items[3]``."""
        if not isinstance(doc, Mapping):
            self.not_objects += 1
            what = "an item of a List" if in_list else "a document"
            found = _found(doc)
            hint = ("; if it lists objects, give each its own document (---) or put them under items: of a kind: List"
                    if isinstance(doc, list) else "")
            print(f"{where}: [NotAnObject] not a Kubernetes object: {found}, where {what} must be a mapping with "
                  f"apiVersion, kind and metadata{hint}", file=self.out)
            return 0
        if _is_list(doc):
            return self.list_items(where, doc)
        if not is_workspace(doc):
            from workspace_fsm.kaito.ragengine import check_ragengine, is_ragengine

            if is_ragengine(doc):  # judged as KAITO's RAGEngine webhook judges it
                self.rag_checked += 1
                rag_problems = check_ragengine(doc)
                self.invalid += 1 if rag_problems else 0
                self.problems += len(rag_problems)
                for p in rag_problems:
                    at = f"{p.path}: " if p.path else ""
                    print(f"{where}: RAGEngine {object_ref(doc)}: {at}[{p.reason}] {p.message}", file=self.out)
                return 1
            print(f"{where} ({_describe_other(doc)}): skipped, not a Workspace or a RAGEngine", file=self.out)
            return 0
        self.checked += 1
        problems = check_document(doc, self.cat, auto_provisioning=self.auto)
        if problems:
            self.invalid += 1
            self.problems += len(problems)
        ref = object_ref(doc)
        for p in problems:
            at = f"{p.path}: " if p.path else ""
            print(f"{where}: Workspace {ref}: {at}[{p.reason}] {p.message}", file=self.out)
        return 1

    def list_items(self, where: str, doc: Mapping[str, Any]) -> int:
        """A ``kind: List`` (what ``kubectl get -o yaml`` prints): each of its items, named by its index."""
        items = doc.get("items")
        if items is None:
            return 0  # an empty list: kubectl prints "items: []", an API list may leave it out
        if not isinstance(items, list):
            self.not_objects += 1
            print(f"{where} ({_describe_other(doc)}): items: [NotAnObject] expected a list of objects, got "
                  f"{_found(items)}", file=self.out)
            return 0
        return sum(self.document(f"{where}: items[{i}]", item, in_list=True) for i, item in enumerate(items))


def _found(value: Any) -> str:
    """A value for a message: ``a list of 2 item(s)``, ``the string "hello"``, ``the integer 42``."""
    if isinstance(value, (list, Mapping)):
        return describe_value(value)
    return f"the {k8s_schema.json_type(value)} {describe_value(value)}"


def _is_list(doc: Mapping[str, Any]) -> bool:
    """``kind: List`` (kubectl's), or an API list such as ``kind: WorkspaceList`` with its ``items``."""
    kind = doc.get("kind")
    return isinstance(kind, str) and (kind == "List" or (kind.endswith("List") and "items" in doc))


def _read(path: str, stdin: Any) -> tuple[str | None, str | None]:
    """(text, None) or (None, why it cannot be read). ``-`` is standard input."""
    try:
        if path == "-":
            source = stdin if stdin is not None else sys.stdin.buffer
            data = source.read()
            data = data.encode("utf-8") if isinstance(data, str) else data
        else:
            with open(path, "rb") as f:
                data = f.read()
        return data.decode("utf-8-sig"), None
    except OSError as e:
        return None, f"cannot be read: {e.strerror or e}"
    except UnicodeDecodeError as e:
        return None, f"cannot be read: not UTF-8 text (byte {e.start})"


def validate_files(
    paths: Iterable[str | os.PathLike[str]],
    *,
    catalogue: Catalogue | None = None,
    auto_provisioning: bool = True,
    out: TextIO | None = None,
    err: TextIO | None = None,
    stdin: Any = None,
) -> int:
    """Check every Workspace (and RAGEngine) in the given YAML files and print one line per problem.

    ``-`` reads standard input (``stdin``, a binary or text stream, defaults to the process's). A document
    must be a Kubernetes object; a ``kind: List`` (``kubectl get -o yaml``) has each of its items checked.
    Lines go to ``out`` (problems, notes, the summary) and ``err`` (files that cannot be read or parsed).
    Returns 0 when every object is valid, 1 when one is invalid, a document is not an object or a file's
    YAML does not parse, 2 when a file cannot be read at all (2 wins over 1).
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    tally = _Tally(catalogue if catalogue is not None else Catalogue.default(), auto_provisioning, out)
    unreadable = unparseable = 0

    for raw_path in paths:
        path = os.fspath(raw_path)
        shown = STDIN_NAME if path == "-" else path
        text, why = _read(path, stdin)
        if text is None:
            print(f"{shown}: {why}", file=err)
            unreadable += 1
            continue
        objects_here = 0
        errors_before = tally.not_objects
        try:
            for index, doc in enumerate(load_yaml_documents(text), start=1):
                if doc is None:
                    continue
                objects_here += tally.document(f"{shown}: document {index}", doc)
        except (yaml.YAMLError, RecursionError) as e:
            print(_yaml_error_line(shown, e), file=err)
            unparseable += 1
            continue
        if objects_here == 0 and tally.not_objects == errors_before:
            print(f"{shown}: note: no Workspace or RAGEngine in this file", file=out)

    checked, rag_checked = tally.checked, tally.rag_checked
    summary = (
        f"{checked} Workspace{'s' if checked != 1 else ''}"
        + (f" and {rag_checked} RAGEngine{'s' if rag_checked != 1 else ''}" if rag_checked else "")
        + f" checked, {tally.invalid} invalid, "
        f"{tally.problems} problem{'s' if tally.problems != 1 else ''}"
    )
    if tally.not_objects:
        summary += f", {tally.not_objects} document{'s' if tally.not_objects != 1 else ''} not an object"
    if unparseable:
        summary += f", {unparseable} file{'s' if unparseable != 1 else ''} not parsed"
    if unreadable:
        summary += f", {unreadable} file{'s' if unreadable != 1 else ''} not read"
    print(summary, file=out)
    if unreadable:
        return 2
    return 1 if tally.invalid or unparseable or tally.not_objects else 0


def _describe_other(doc: Any) -> str:
    if not isinstance(doc, Mapping):
        return k8s_schema.json_type(doc)
    kind = _str(doc.get("kind")) or "no kind"
    meta = doc.get("metadata")
    name = _str(meta.get("name")) if isinstance(meta, Mapping) else None
    kind = kind if len(kind) <= 60 else kind[:57] + "..."
    if name:
        return f"{kind} {name if len(name) <= 80 else name[:77] + '...'}"
    return kind
