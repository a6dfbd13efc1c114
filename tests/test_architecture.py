"""The engine knows nothing of KAITO: it imports no module of the KAITO lifecycles, the command line, the
adapters or the test kit.

Two checks, so that neither a missing tool nor a blind spot of one lets an import through:

- the import-linter contract in pyproject.toml, run with ``lint-imports`` (it cannot see
  ``workspace_fsm.adapters``, which is installed from the top-level ``adapters/`` folder);
- a walk over every engine module's syntax tree, imports inside functions and ``TYPE_CHECKING`` blocks
  included, that names the module and line of each offending import.
"""

from __future__ import annotations

import ast
import subprocess
import sysconfig
import tomllib
from collections.abc import Iterator
from pathlib import Path

import workspace_fsm.engine

ROOT = Path(__file__).resolve().parent.parent
ENGINE = Path(workspace_fsm.engine.__file__).resolve().parent
FORBIDDEN = ("workspace_fsm.kaito", "workspace_fsm.cli", "workspace_fsm.adapters", "workspace_fsm.testing")

# Engine modules that still import a forbidden module, each with what it may still import. This list must
# shrink to nothing, never grow: a new offender fails the test, and so does an entry no longer needed
# (delete it, and its twin in pyproject.toml's [tool.importlinter] ignore_imports). Empty: the runner,
# the metrics and the adapter protocol no longer import KAITO.
KNOWN_OFFENDERS: dict[str, frozenset[str]] = {}


def _forbidden(target: str) -> bool:
    return any(target == f or target.startswith(f + ".") for f in FORBIDDEN)


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` in ``module``."""
    if level == 0:
        return name or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def imports_of(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """Every module ``source`` imports, as (line, absolute name), wherever the import statement stands.

    ``from a import b`` yields ``a`` and ``a.b`` (``b`` may be a module); ``importlib.import_module("x")``
    and ``__import__("x")`` with a literal name count too."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            yield node.lineno, base
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = node.func
            called = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def engine_modules() -> Iterator[tuple[str, Path, bool]]:
    for path in sorted(ENGINE.rglob("*.py")):
        rel = path.relative_to(ENGINE).with_suffix("")
        parts = ["workspace_fsm", "engine", *rel.parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        yield ".".join(parts), path, is_package


def offending_imports() -> list[tuple[str, Path, int, str]]:
    """(module, file, line, forbidden module imported), one per module named on a line: ``from
    workspace_fsm.kaito.model import A, B`` is one import of ``workspace_fsm.kaito.model``."""
    found = []
    for module, path, is_package in engine_modules():
        by_line: dict[int, set[str]] = {}
        for line, target in imports_of(path.read_text(encoding="utf-8"), module, is_package):
            if _forbidden(target):
                by_line.setdefault(line, set()).add(target)
        for line, targets in sorted(by_line.items()):
            for t in sorted(targets):
                if not any(t.startswith(other + ".") for other in targets):
                    found.append((module, path, line, t))
    return found


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def test_the_engine_imports_nothing_of_kaito_the_cli_the_adapters_or_the_test_kit() -> None:
    new = [(m, p, line, t) for m, p, line, t in offending_imports()
           if not any(t == a or t.startswith(a + ".") for a in KNOWN_OFFENDERS.get(m, ()))]
    assert not new, "the engine must not import KAITO, the command line, the adapters or the test kit:\n" + "\n".join(
        f"  {_shown(p)}:{line}: {m} imports {t}" for m, p, line, t in new)


def test_the_allow_list_only_shrinks() -> None:
    found = offending_imports()
    stale = [(m, a) for m, allowed in KNOWN_OFFENDERS.items() for a in sorted(allowed)
             if not any(fm == m and (t == a or t.startswith(a + ".")) for fm, _, _, t in found)]
    assert not stale, "no longer imported, remove from KNOWN_OFFENDERS (and ignore_imports in pyproject.toml): " + \
        ", ".join(f"{m} -> {a}" for m, a in stale)


def test_the_import_linter_contract_allows_what_this_test_allows() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if "workspace_fsm.engine" in c.get("source_modules", ())]
    assert contract["type"] == "forbidden"
    assert set(contract["forbidden_modules"]) == set(FORBIDDEN) - {"workspace_fsm.adapters"}
    ignored = {tuple(part.strip() for part in line.split("->")) for line in contract.get("ignore_imports", ())}
    allowed = {(m, a) for m, targets in KNOWN_OFFENDERS.items() for a in targets if a != "workspace_fsm.adapters"}
    assert ignored == allowed


def test_lint_imports_keeps_the_engine_contract() -> None:
    exe = Path(sysconfig.get_path("scripts")) / "lint-imports"
    assert exe.exists(), f"{exe} is missing: install the test extras (pip install -e '.[test]')"
    done = subprocess.run([str(exe), "--config", "pyproject.toml", "--no-cache"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout, done.stdout


# ----------------------------------------------------------------------------- the check itself


def test_the_walk_finds_imports_wherever_they_stand() -> None:
    source = '''
import workspace_fsm.kaito.model
from workspace_fsm import kaito
from ..cli import main
from . import objects
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from workspace_fsm.testing.server import TestAPIServer

def late():
    from workspace_fsm.adapters.kubernetes import adapter
    import importlib
    return importlib.import_module("workspace_fsm.kaito.workspace")
'''
    found = sorted((line, t) for line, t in imports_of(source, "workspace_fsm.engine.probe") if _forbidden(t))
    assert found == [
        (2, "workspace_fsm.kaito.model"),
        (3, "workspace_fsm.kaito"),
        (4, "workspace_fsm.cli"),
        (4, "workspace_fsm.cli.main"),
        (8, "workspace_fsm.testing.server"),
        (8, "workspace_fsm.testing.server.TestAPIServer"),
        (11, "workspace_fsm.adapters.kubernetes"),
        (11, "workspace_fsm.adapters.kubernetes.adapter"),
        (13, "workspace_fsm.kaito.workspace"),
    ]
    assert not [t for _, t in imports_of("from . import objects\nfrom .record import Record\n",
                                         "workspace_fsm.engine", is_package=True) if _forbidden(t)]
    assert _resolve("workspace_fsm.engine.runner", False, 2, "kaito") == "workspace_fsm.kaito"
    assert _resolve("workspace_fsm.engine", True, 1, "runner") == "workspace_fsm.engine.runner"


def test_the_walk_covers_every_engine_module() -> None:
    names = {m for m, _, _ in engine_modules()}
    assert {"workspace_fsm.engine", "workspace_fsm.engine.runner", "workspace_fsm.engine.metrics",
            "workspace_fsm.engine.adapter", "workspace_fsm.engine.declare"} <= names
