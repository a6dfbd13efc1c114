"""The preset catalogue: which model presets exist and what they support.

The shipped catalogue (``workspace_fsm/kaito/data/presets.yaml``) is generated from KAITO's
``supported_models.yaml``. A deployment may extend or override it with its own file, in either
of two shapes::

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
import os
import types
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import yaml

__all__ = ["Catalogue", "CatalogueError", "Preset"]


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


@attrs.frozen
class Preset:
    """One model preset.

    ``tuning`` lists the tuning methods the preset supports (empty: not tunable).
    ``given`` records which fields the catalogue file actually set; it drives field-wise merging
    and takes no part in equality. ``None`` (a preset made in code) means every field counts as set.
    """

    name: str
    type: str = "text-generation"
    runtime: str = "tfs"
    deprecated: bool = False
    download_at_runtime: bool = False
    download_auth_required: bool = False
    tuning: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    given: frozenset[str] | None = attrs.field(default=None, eq=False, repr=False)

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
        return Catalogue(combined, source=sources)

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
    resource = importlib.resources.files("workspace_fsm.kaito") / "data" / "presets.yaml"
    return Catalogue.from_text(resource.read_text(encoding="utf-8"), source="presets.yaml")


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
