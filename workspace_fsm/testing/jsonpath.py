"""A small JSONPath evaluator for CRD ``additionalPrinterColumns``.

Handles the forms CRDs use: ``.status.state``, escaped dots (``.metadata.labels.karpenter\\.sh/nodepool``),
``[0]``, ``[*]``, ``['key']``, and filters ``[?(@.type=="Ready")]`` (``==``/``!=`` against a string,
number or boolean literal, or ``[?(@.field)]`` for "has the field"). ``find(obj, path)`` returns the
list of matches.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["JSONPathError", "compile_path", "find"]


class JSONPathError(ValueError):
    pass


_FILTER = re.compile(r"^\?\(\s*@((?:\.[^=!<>\s)]+)+)\s*(?:(==|!=)\s*(.+?))?\s*\)$")


def _read_name(text: str, i: int) -> tuple[str, int]:
    out: list[str] = []
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if ch in ".[":
            break
        out.append(ch)
        i += 1
    return "".join(out), i


def _literal(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    try:
        return json.loads(text)
    except ValueError:
        return text


def compile_path(path: str) -> list[tuple[str, Any]]:
    """Parse a path into steps: ("key", name), ("index", n), ("all", None), ("filter", (sub, op, value))."""
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1].strip()
    if text.startswith("$"):
        text = text[1:]
    steps: list[tuple[str, Any]] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == ".":
            name, i = _read_name(text, i + 1)
            if name:
                steps.append(("key", name))
        elif ch == "[":
            depth, j = 0, i
            while j < len(text):
                if text[j] == "[":
                    depth += 1
                elif text[j] == "]":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if j >= len(text):
                raise JSONPathError(f"unclosed [ in {path!r}")
            inner = text[i + 1:j].strip()
            i = j + 1
            if inner == "*":
                steps.append(("all", None))
            elif re.fullmatch(r"-?\d+", inner):
                steps.append(("index", int(inner)))
            elif len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "'\"":
                steps.append(("key", inner[1:-1]))
            else:
                m = _FILTER.match(inner)
                if not m:
                    raise JSONPathError(f"unsupported JSONPath element [{inner}] in {path!r}")
                sub = compile_path(m.group(1))
                op = m.group(2)
                value = _literal(m.group(3)) if op else None
                steps.append(("filter", (sub, op, value)))
        else:
            name, i = _read_name(text, i)
            if not name:
                raise JSONPathError(f"cannot parse {path!r} at {i}")
            steps.append(("key", name))
    return steps


def _run(values: list[Any], steps: list[tuple[str, Any]]) -> list[Any]:
    for kind, arg in steps:
        out: list[Any] = []
        for value in values:
            if kind == "key":
                if isinstance(value, dict) and arg in value:
                    out.append(value[arg])
            elif kind == "index":
                if isinstance(value, list) and -len(value) <= arg < len(value):
                    out.append(value[arg])
            elif kind == "all":
                if isinstance(value, list):
                    out.extend(value)
                elif isinstance(value, dict):
                    out.extend(value.values())
            elif kind == "filter":
                sub, op, expected = arg
                items = value if isinstance(value, list) else [value] if isinstance(value, dict) else []
                for item in items:
                    found = _run([item], sub)
                    if op is None:
                        if found:
                            out.append(item)
                    elif op == "==":
                        if found and found[0] == expected:
                            out.append(item)
                    elif op == "!=":
                        if not found or found[0] != expected:
                            out.append(item)
        values = out
    return values


def find(obj: Any, path: str | list[tuple[str, Any]]) -> list[Any]:
    steps = compile_path(path) if isinstance(path, str) else path
    return _run([obj], steps)
