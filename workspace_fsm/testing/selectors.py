"""Label and field selectors as the Kubernetes API server parses them.

Label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x,y)``, ``a`` (exists),
``!a`` (does not exist), ``a>3``/``a<3``, joined by commas (AND). Field selectors: ``f=v``,
``f==v``, ``f!=v`` joined by commas, where ``f`` is a dotted path the resource allows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["SelectorError", "LabelSelector", "FieldSelector", "parse_label_selector", "parse_field_selector"]


class SelectorError(ValueError):
    """A selector that does not parse (the server answers 400 BadRequest)."""


_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                  r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unable to parse requirement: unbalanced parentheses in {text!r}")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise SelectorError(f"unable to parse requirement: unbalanced parentheses in {text!r}")
    parts.append("".join(cur))
    return parts


Requirement = Callable[[Mapping[str, str]], bool]

_SET_RE = re.compile(r"^\s*(\S+?)\s+(in|notin)\s*\((.*)\)\s*$")
_OP_RE = re.compile(r"^\s*([^=!<>\s]+)\s*(==|!=|=|<|>)\s*(.*?)\s*$")


def _check_key(key: str) -> None:
    name = key.rsplit("/", 1)[-1]
    if not key or len(name) > 63 or not _KEY.match(key):
        raise SelectorError(f"unable to parse requirement: invalid label key {key!r}: name part must consist of "
                            "alphanumeric characters, '-', '_' or '.', and must start and end with an "
                            "alphanumeric character")


def _check_value(value: str) -> None:
    if len(value) > 63 or not _VALUE.match(value):
        raise SelectorError(f"unable to parse requirement: invalid label value: {value!r}: a valid label "
                            "must be an empty string or consist of alphanumeric characters, '-', '_' or '.'")


def _requirement(text: str) -> Requirement:
    m = _SET_RE.match(text)
    if m:
        key, op, inner = m.group(1), m.group(2), m.group(3)
        _check_key(key)
        values = {v.strip() for v in inner.split(",")} if inner.strip() else set()
        for v in values:
            _check_value(v)
        if op == "in":
            return lambda labels: key in labels and labels[key] in values
        return lambda labels: key not in labels or labels[key] not in values
    stripped = text.strip()
    if stripped.startswith("!"):
        key = stripped[1:].strip()
        _check_key(key)
        return lambda labels: key not in labels
    m = _OP_RE.match(text)
    if m:
        key, op, value = m.group(1), m.group(2), m.group(3)
        _check_key(key)
        if op in ("<", ">"):
            try:
                bound = int(value)
            except ValueError:
                raise SelectorError(f"unable to parse requirement: for 'Gt', 'Lt' operators, the value must be "
                                    f"an integer, not {value!r}") from None

            def compare(labels: Mapping[str, str]) -> bool:
                try:
                    have = int(labels[key])
                except (KeyError, ValueError):
                    return False
                return have > bound if op == ">" else have < bound
            return compare
        _check_value(value)
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: key in labels and labels[key] == value
    if stripped and re.fullmatch(r"[^\s=!(),<>]+", stripped):
        _check_key(stripped)
        return lambda labels: stripped in labels
    raise SelectorError(f"unable to parse requirement: found {text!r}, expected: in, notin, =, ==, !=, gt, lt")


class LabelSelector:
    """A parsed label selector; ``matches(labels)``."""

    def __init__(self, text: str = "") -> None:
        self.text = text or ""
        self._reqs: list[Requirement] = []
        if self.text.strip():
            for part in _split_top(self.text):
                if not part.strip():
                    raise SelectorError(f"unable to parse requirement: empty requirement in {self.text!r}")
                self._reqs.append(_requirement(part))

    def __bool__(self) -> bool:
        return bool(self._reqs)

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(req(labels) for req in self._reqs)


def parse_label_selector(text: str | None) -> LabelSelector:
    return LabelSelector(text or "")


def _lookup(obj: Any, path: str) -> str | None:
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    if cur is None:
        return None
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


class FieldSelector:
    """A parsed field selector over the fields a resource allows."""

    def __init__(self, text: str = "", allowed: frozenset[str] | set[str] = frozenset(),
                 defaults: Mapping[str, str] | None = None) -> None:
        self.text = text or ""
        self._terms: list[tuple[str, str, str]] = []
        self._defaults = dict(defaults or {})
        if not self.text.strip():
            return
        for part in _split_top(self.text):
            m = re.match(r"^\s*([^=!\s]+)\s*(==|!=|=)\s*(.*?)\s*$", part)
            if not m:
                raise SelectorError(f"invalid selector: {part!r}; can't understand {part!r}")
            field, op, value = m.group(1), m.group(2), m.group(3)
            if field not in allowed:
                known = ", ".join(f'"{f}"' for f in sorted(allowed))
                raise SelectorError(f'field label not supported: {field} (supported: {known})')
            self._terms.append((field, "!=" if op == "!=" else "=", value))

    def __bool__(self) -> bool:
        return bool(self._terms)

    def names(self) -> set[str] | None:
        """The metadata.name values this selector pins (None when it does not pin one)."""
        names = {v for f, op, v in self._terms if f == "metadata.name" and op == "="}
        return names or None

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for field, op, value in self._terms:
            have = _lookup(obj, field)
            if have is None:
                have = self._defaults.get(field, "")
            if (have == value) != (op == "="):
                return False
        return True


def parse_field_selector(text: str | None, allowed: frozenset[str] | set[str],
                         defaults: Mapping[str, str] | None = None) -> FieldSelector:
    return FieldSelector(text or "", allowed, defaults)
