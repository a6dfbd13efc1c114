"""The preset catalogue: which model presets exist, what they need and how they are run.

The shipped catalogue (``workspace_fsm/kaito/data/presets.json``) is generated from KAITO's
sources by ``scripts/generate_kaito_catalogue.py``, which records the KAITO commit: per preset
the GPU memory the weights need, disk, the vLLM and transformers command lines, multi-node
support, tuning, image, download-at-runtime and auth, readiness timeout and the KV-cache bytes
per token the node estimator uses (see :class:`Preset`). ``Catalogue.kaito`` holds what is
shared (base image, inference port, vLLM's GPU memory utilisation, the estimator's constants).

A deployment may extend or override it with its own file, in either of two shapes::

    presets:                      # our shape (presets.yaml)
      - name: my-model
        type: text-generation
        runtime: tfs
        tuning: [lora, qlora]

    models:                       # KAITO's supported_models.yaml shape
      - name: my-model
        type: text-generation
        runtime: tfs
        tag: 0.0.1                # unknown keys are ignored

Merging is field by field: a user entry for a known preset changes only the fields it names,
so a ``models:`` file (which has no ``tuning`` key) does not take tuning support away.
"""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import json
import os
import types
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import yaml

__all__ = [
    "Catalogue",
    "CatalogueError",
    "EstimatorConstants",
    "ImageRef",
    "KaitoDefaults",
    "Preset",
    "TransformersParams",
    "TuningParams",
    "VLLMParams",
]


class CatalogueError(ValueError):
    """A catalogue file is missing, does not parse, or has a bad entry.

    The message names the file and the key (``presets.yaml: presets[3].tuning: ...``).
    """

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source = source
        self.key = key
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


# Fields a catalogue entry may set, with the YAML key and the expected Python type.
_FIELDS: dict[str, tuple[str, type]] = {
    "type": ("type", str),
    "runtime": ("runtime", str),
    "deprecated": ("deprecated", bool),
    "download_at_runtime": ("downloadAtRuntime", bool),
    "download_auth_required": ("downloadAuthRequired", bool),
    "tuning": ("tuning", tuple),
}


def _str_map(value: Mapping[str, Any] | None) -> Mapping[str, str]:
    return types.MappingProxyType({str(k): str(v) for k, v in (value or {}).items()})


def _map_field() -> Any:
    # Mappings are read-only views; they take part in equality but not in hashing.
    return attrs.field(factory=dict, converter=_str_map, hash=False)


@attrs.frozen
class ImageRef:
    """A container image as KAITO names it: ``<registry>/<name>:<tag>`` (the registry is the
    deployment's, KAITO's ``PRESET_REGISTRY_NAME``)."""

    name: str
    tag: str

    def reference(self, registry: str = "") -> str:
        return f"{registry.rstrip('/')}/{self.name}:{self.tag}" if registry else f"{self.name}:{self.tag}"


@attrs.frozen
class VLLMParams:
    """How KAITO starts vLLM for a preset: ``base_command`` followed by ``--key=value`` for each
    of ``model_run_params`` (an empty value is a bare ``--key``), to which KAITO adds per
    workload: served-model-name, max-model-len, gpu-memory-utilization, kv-events-config,
    the model source (``--model=<hf id>``, ``--code-revision``, ``--download-dir``), the config
    file, and the parallelism flags. Multi-node runs start a Ray leader/worker first."""

    base_command: str
    model_name: str
    model_run_params: Mapping[str, str] = _map_field()
    ray_leader_base_command: str = ""
    ray_worker_base_command: str = ""
    disallow_lora: bool = False


@attrs.frozen
class TransformersParams:
    """How KAITO starts the transformers runtime: ``base_command`` with ``accelerate_params``,
    then ``inference_main_file`` with ``model_run_params`` (KAITO adds served_model_name and,
    for download-at-runtime presets, pretrained_model_name_or_path / revision /
    allow_remote_files)."""

    base_command: str
    inference_main_file: str
    model_name: str
    accelerate_params: Mapping[str, str] = _map_field()
    model_run_params: Mapping[str, str] = _map_field()
    tag: str = ""


@attrs.frozen
class TuningParams:
    """KAITO's tuning parameters for a tunable preset (absent for presets tuned only for
    compatibility, see ``Preset.kaito_resolves``)."""

    disk_storage_requirement: str = ""
    total_safetensor_file_size: str = ""
    base_command: str = ""
    model_name: str = ""
    readiness_timeout_seconds: int | None = None


@attrs.frozen
class EstimatorConstants:
    """The constants of KAITO's node estimator for vLLM (pkg/workspace/estimator)."""

    gpu_memory_utilization: float = 0.84
    weight_expansion_factor: float = 1.02
    base_overhead_gib: float = 2.3
    overhead_weight_factor: float = 0.05
    default_context_size: int = 2048


@attrs.frozen
class KaitoDefaults:
    """What the shipped catalogue records beside the presets."""

    commit: str
    generator_version: int
    base_image: ImageRef
    inference_port: int = 5000
    vllm_gpu_memory_utilization: str = "0.84"
    vllm_gpu_memory_utilization_by_gpu_model: Mapping[str, str] = _map_field()
    tuning_methods: tuple[str, ...] = ("lora", "qlora")
    estimator: EstimatorConstants = EstimatorConstants()

    def gpu_memory_utilization(self, gpu_model: str | None) -> str:
        """vLLM's --gpu-memory-utilization for a GPU model (KAITO lowers it on some GPUs)."""
        if gpu_model is None:
            return self.vllm_gpu_memory_utilization
        return self.vllm_gpu_memory_utilization_by_gpu_model.get(gpu_model, self.vllm_gpu_memory_utilization)


@attrs.frozen
class Preset:
    """One model preset.

    ``tuning`` lists the tuning methods the preset supports (empty: not tunable).
    ``given`` records which fields the catalogue file actually set; it drives field-wise merging
    and takes no part in equality. ``None`` (a preset made in code) means every field counts as set.

    The rest comes from KAITO's sources (None where KAITO has no value, e.g. a user's own preset):

    - ``hf_model_id``: the Hugging Face repository KAITO serves (lower-cased, as KAITO passes it
      to ``--model``); ``version`` its URL; ``model_name`` the served model name;
    - ``kaito_resolves``: KAITO at the recorded commit can serve it (False for names it lists but
      no longer resolves, kept for compatibility);
    - ``gpu_memory_bytes`` / ``model_file_size``: the weights' size, what the GPUs must hold;
    - ``disk_storage_requirement``: the NodeClaim's storage (a Kubernetes quantity);
    - ``bytes_per_token`` (KV cache per token of context) and ``model_token_limit``;
    - ``readiness_timeout_seconds``: the startup-probe budget KAITO gives the workload;
    - ``supports_distributed_inference``: may span nodes (vLLM with Ray) and GPUs (tensor parallel);
    - ``vllm`` / ``transformers``: the command lines per runtime (None: runtime not offered);
    - ``tuning_params``: the tuning Job's parameters; ``image``: the container image.
    """

    name: str
    type: str = "text-generation"
    runtime: str = "tfs"
    deprecated: bool = False
    download_at_runtime: bool = False
    download_auth_required: bool = False
    tuning: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    given: frozenset[str] | None = attrs.field(default=None, eq=False, repr=False)
    version: str = ""
    hf_model_id: str | None = None
    model_name: str = ""
    kaito_resolves: bool = False
    image: ImageRef | None = None
    model_file_size: str | None = None
    gpu_memory_bytes: int | None = None
    disk_storage_requirement: str | None = None
    bytes_per_token: int | None = None
    model_token_limit: int | None = None
    attn_type: str | None = None
    architectures: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    quant_method: str = ""
    readiness_timeout_seconds: int | None = None
    supports_distributed_inference: bool = False
    vllm: VLLMParams | None = None
    transformers: TransformersParams | None = None
    tuning_params: TuningParams | None = None

    @property
    def runtimes(self) -> tuple[str, ...]:
        """The runtimes KAITO can serve this preset with ("vllm", "transformers")."""
        out = []
        if self.vllm is not None:
            out.append("vllm")
        if self.transformers is not None:
            out.append("transformers")
        return tuple(out)

    @property
    def served_model_name(self) -> str:
        return self.model_name or self.name

    def supports_tuning(self, method: str | None = None) -> bool:
        """True if the preset can be tuned at all (``method`` None) or with ``method``."""
        if method is None:
            return bool(self.tuning)
        return method.lower() in self.tuning

    def patched(self, other: Preset) -> Preset:
        """This preset with the fields ``other`` set explicitly taken from ``other``."""
        theirs = frozenset(_FIELDS) if other.given is None else other.given
        ours = frozenset(_FIELDS) if self.given is None else self.given
        changes = {f: getattr(other, f) for f in theirs}
        return attrs.evolve(self, **changes, given=ours | theirs)


def _freeze(presets: Mapping[str, Preset]) -> Mapping[str, Preset]:
    return types.MappingProxyType(dict(presets))


@attrs.frozen
class Catalogue:
    """An immutable set of presets, looked up by name (case-sensitive, as KAITO does)."""

    presets: Mapping[str, Preset] = attrs.field(converter=_freeze, factory=dict)
    source: str = ""
    # Hugging Face models KAITO serves by ID without a preset name of their own, keyed by the
    # lower-cased ID; and what the shipped catalogue records beside the presets.
    hf_models: Mapping[str, Preset] = attrs.field(converter=_freeze, factory=dict, hash=False)
    kaito: KaitoDefaults | None = attrs.field(default=None, hash=False)
    _lower: Mapping[str, Preset] = attrs.field(init=False, eq=False, hash=False, repr=False)

    def __attrs_post_init__(self) -> None:
        # resolve()'s case-insensitive index: Hugging Face IDs, then presets' IDs and names.
        index: dict[str, Preset] = dict(self.hf_models)
        for p in self.presets.values():
            if p.hf_model_id:
                index.setdefault(p.hf_model_id.lower(), p)
        for p in self.presets.values():
            index.setdefault(p.name.lower(), p)
        object.__setattr__(self, "_lower", types.MappingProxyType(index))

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def default(cls) -> Catalogue:
        """The catalogue shipped with the package (loaded once, then shared)."""
        return _default_catalogue()

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> Catalogue:
        """Load a catalogue file in our ``presets:`` shape or KAITO's ``models:`` shape."""
        source = os.fspath(path)
        try:
            with open(source, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise CatalogueError(source, "", f"cannot be read: {e}") from e
        return cls.from_text(text, source=source)

    @classmethod
    def from_text(cls, text: str, *, source: str = "<catalogue>") -> Catalogue:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            problem = getattr(e, "problem", None) or str(e)
            raise CatalogueError(source, "", f"{where}YAML does not parse: {problem}") from e
        return cls.from_data(data, source=source)

    @classmethod
    def from_data(cls, data: Any, *, source: str = "<catalogue>") -> Catalogue:
        if not isinstance(data, Mapping):
            raise CatalogueError(
                source, "", "expected a mapping with a 'presets' (or KAITO's 'models') list, "
                f"got {_kind(data)}"
            )
        keys = [k for k in ("presets", "models") if k in data]
        if len(keys) != 1:
            raise CatalogueError(
                source, "", "expected exactly one top-level key 'presets' or 'models', "
                f"found {sorted(map(str, data)) or 'none'}"
            )
        key = keys[0]
        entries = data[key]
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            raise CatalogueError(source, key, f"expected a list of presets, got {_kind(entries)}")
        presets: dict[str, Preset] = {}
        for i, entry in enumerate(entries):
            preset = _parse_entry(entry, source, f"{key}[{i}]")
            if preset.name in presets:
                raise CatalogueError(
                    source, f"{key}[{i}].name", f"duplicate preset name {preset.name!r}"
                )
            presets[preset.name] = preset
        return cls(presets, source=source)

    def merged(self, other: Catalogue) -> Catalogue:
        """This catalogue extended by ``other``: new names are added, and for names already
        here the fields ``other``'s file set override ours (the rest are kept)."""
        combined = dict(self.presets)
        for name, preset in other.presets.items():
            combined[name] = combined[name].patched(preset) if name in combined else preset
        sources = " + ".join(s for s in (self.source, other.source) if s)
        hf = {**self.hf_models, **other.hf_models}
        return Catalogue(combined, source=sources, hf_models=hf, kaito=self.kaito or other.kaito)

    # -- lookup -------------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.presets

    def __iter__(self) -> Iterator[str]:
        """Preset names, in catalogue order (``presets`` maps them to :class:`Preset`)."""
        return iter(self.presets)

    def __len__(self) -> int:
        return len(self.presets)

    def get(self, name: str) -> Preset | None:
        return self.presets.get(name) if isinstance(name, str) else None

    def resolve(self, name: str) -> Preset | None:
        """The preset a Workspace's ``preset.name`` means, as KAITO resolves it: the named
        preset, else (case-insensitively) a preset or a Hugging Face model ID KAITO's model
        catalogue knows. None when neither: KAITO would then fetch the model's metadata from
        Hugging Face at run time, which this library does not do."""
        if not isinstance(name, str):
            return None
        hit = self.presets.get(name)
        if hit is not None:
            return hit
        return self._lower.get(name.lower())


    @property
    def names(self) -> tuple[str, ...]:
        """All preset names, sorted."""
        return tuple(sorted(self.presets))

    def supports_tuning(self, name: str, method: str | None = None) -> bool:
        """True if preset ``name`` exists and can be tuned (with ``method``, if given)."""
        preset = self.get(name)
        return preset is not None and preset.supports_tuning(method)

    def close_matches(self, name: str, n: int = 3) -> list[str]:
        """Up to ``n`` preset names that look like ``name`` (for "did you mean" messages)."""
        if not isinstance(name, str) or not name:
            return []
        probe = name[:200].lower()
        lowered = {p.lower(): p for p in self.presets}
        hits = difflib.get_close_matches(probe, list(lowered), n=n, cutoff=0.6)
        return [lowered[h] for h in hits]


@functools.cache
def _default_catalogue() -> Catalogue:
    resource = importlib.resources.files("workspace_fsm.kaito") / "data" / "presets.json"
    return catalogue_from_generated(json.loads(resource.read_text(encoding="utf-8")), source="presets.json")


def catalogue_from_generated(data: Mapping[str, Any], *, source: str) -> Catalogue:
    """A catalogue from the generator's ``presets.json`` document."""
    try:
        presets = {p["name"]: _preset_from_generated(p) for p in data["presets"]}
        hf = {p["name"].lower(): _preset_from_generated(p) for p in data.get("hf_models", ())}
        base = data["base_image"]
        vllm = data.get("vllm", {})
        est = data.get("estimator", {})
        kaito = KaitoDefaults(
            commit=str(data["kaito"]["commit"]),
            generator_version=int(data["generator"]["version"]),
            base_image=ImageRef(base["name"], str(base["tag"])),
            inference_port=int(data.get("inference_port", 5000)),
            vllm_gpu_memory_utilization=str(vllm.get("gpu_memory_utilization", "0.84")),
            vllm_gpu_memory_utilization_by_gpu_model=vllm.get("gpu_memory_utilization_by_gpu_model", {}),
            tuning_methods=tuple(data.get("tuning_methods", ("lora", "qlora"))),
            estimator=EstimatorConstants(**est),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CatalogueError(source, "", f"is not a generated catalogue ({type(e).__name__}: {e}); "
                             "regenerate it with scripts/generate_kaito_catalogue.py") from e
    return Catalogue(presets, source=source, hf_models=hf, kaito=kaito)


def _preset_from_generated(p: Mapping[str, Any]) -> Preset:
    vllm = p.get("vllm")
    tfs = p.get("transformers")
    tune = p.get("tuning")
    image = p.get("image")
    return Preset(
        name=p["name"],
        type=p.get("type", "text-generation"),
        runtime=p.get("runtime", "tfs"),
        deprecated=bool(p.get("deprecated", False)),
        download_at_runtime=bool(p.get("download_at_runtime", False)),
        download_auth_required=bool(p.get("download_auth_required", False)),
        tuning=tuple(tune["methods"]) if tune else (),
        version=p.get("version") or "",
        hf_model_id=p.get("hf_model_id"),
        model_name=p.get("model_name") or "",
        kaito_resolves=bool(p.get("kaito_resolves", False)),
        image=ImageRef(image["name"], str(image["tag"])) if image else None,
        model_file_size=p.get("model_file_size"),
        gpu_memory_bytes=p.get("gpu_memory_bytes"),
        disk_storage_requirement=p.get("disk_storage_requirement"),
        bytes_per_token=p.get("bytes_per_token"),
        model_token_limit=p.get("model_token_limit"),
        attn_type=p.get("attn_type"),
        architectures=tuple(p.get("architectures") or ()),
        quant_method=p.get("quant_method") or "",
        readiness_timeout_seconds=p.get("readiness_timeout_seconds"),
        supports_distributed_inference=bool(p.get("supports_distributed_inference", False)),
        vllm=VLLMParams(
            base_command=vllm["base_command"], model_name=vllm["model_name"],
            model_run_params=vllm.get("model_run_params", {}),
            ray_leader_base_command=vllm.get("ray_leader_base_command", ""),
            ray_worker_base_command=vllm.get("ray_worker_base_command", ""),
            disallow_lora=bool(vllm.get("disallow_lora", False)),
        ) if vllm else None,
        transformers=TransformersParams(
            base_command=tfs["base_command"], inference_main_file=tfs["inference_main_file"],
            model_name=tfs["model_name"], accelerate_params=tfs.get("accelerate_params", {}),
            model_run_params=tfs.get("model_run_params", {}), tag=tfs.get("tag", ""),
        ) if tfs else None,
        tuning_params=TuningParams(
            disk_storage_requirement=tune.get("disk_storage_requirement", ""),
            total_safetensor_file_size=tune.get("total_safetensor_file_size", ""),
            base_command=tune.get("base_command", ""),
            model_name=tune.get("model_name", ""),
            readiness_timeout_seconds=tune.get("readiness_timeout_seconds"),
        ) if tune and not tune.get("compat") else None,
        given=None,
    )


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    return f"a {type(value).__name__}"


def _parse_entry(entry: Any, source: str, key: str) -> Preset:
    if not isinstance(entry, Mapping):
        raise CatalogueError(source, key, f"expected a mapping with at least 'name', got {_kind(entry)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CatalogueError(source, f"{key}.name", f"expected a non-empty string, got {_kind(name)}")
    if name != name.strip():
        raise CatalogueError(source, f"{key}.name", f"{name!r} has leading or trailing spaces")
    values: dict[str, Any] = {}
    for field, (yaml_key, expected) in _FIELDS.items():
        if yaml_key not in entry:
            continue
        value = entry[yaml_key]
        if field == "tuning":
            value = _parse_tuning(value, source, f"{key}.{yaml_key}")
        elif expected is bool:
            if not isinstance(value, bool):
                raise CatalogueError(
                    source, f"{key}.{yaml_key}", f"expected true or false, got {_kind(value)}"
                )
        elif not isinstance(value, str) or not value:
            raise CatalogueError(
                source, f"{key}.{yaml_key}", f"expected a non-empty string, got {_kind(value)}"
            )
        values[field] = value
    return Preset(name=name, **values, given=frozenset(values))


def _parse_tuning(value: Any, source: str, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise CatalogueError(source, key, f"expected a list of tuning methods, got {_kind(value)}")
    methods: list[str] = []
    for i, method in enumerate(value):
        if not isinstance(method, str) or not method.strip():
            raise CatalogueError(source, f"{key}[{i}]", f"expected a method name, got {_kind(method)}")
        if method.lower() not in methods:
            methods.append(method.lower())
    return tuple(methods)
