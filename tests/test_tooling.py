"""The habits an author expects of a library they import, checked on every run: the linter passes, the typed
part of the engine type-checks, the API reference builds without a warning, and the package says it is typed.

Each check runs the tool as a developer would (``ruff check``, ``mypy``, ``pdoc``), configured in
pyproject.toml; docs/api.md says how to build the reference by hand.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import workspace_fsm
import workspace_fsm.engine
import workspace_fsm.testing

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
API_MODULES = ("workspace_fsm", "workspace_fsm.engine", "workspace_fsm.testing")


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def python_files() -> list[str]:
    """The repository's Python files: those git tracks (a fresh clone's), else every one ruff finds."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", "*.py"], cwd=ROOT, capture_output=True, text=True,
                                timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ["."]
    files = [f for f in listed.split("\0") if f and (ROOT / f).is_file()]
    return files or ["."]


def test_ruff_finds_nothing() -> None:
    done = run("ruff", "check", "--no-cache", "--output-format", "concise", *python_files())
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_passes_on_the_typed_engine(tmp_path: Path) -> None:
    files = PYPROJECT["tool"]["mypy"]["files"]
    assert "workspace_fsm/engine/declare.py" in files and PYPROJECT["tool"]["mypy"]["strict"] is True
    done = run("mypy", "--cache-dir", str(tmp_path / "mypy"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"no issues found in {len(files)} source files" in done.stdout, done.stdout


def test_the_tutorial_type_checks_as_an_authors_code_would(tmp_path: Path) -> None:
    """The public API is typed for its users: the tutorial operator passes mypy --strict against it, as an
    author's own module would be checked (the engine's py.typed makes its annotations count)."""
    done = run("mypy", "--strict", "--cache-dir", str(tmp_path / "mypy"), "examples/website/website.py")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_api_reference_builds_without_warnings(tmp_path: Path) -> None:
    out = tmp_path / "api"
    done = run("pdoc", "--docformat", "restructuredtext", "--output-directory", str(out), *API_MODULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not done.stderr.strip(), done.stderr  # pdoc reports problems as warnings on stderr
    for module in (workspace_fsm, workspace_fsm.engine, workspace_fsm.testing):
        page = (out / (module.__name__.replace(".", "/") + ".html")).read_text(encoding="utf-8")
        missing = [name for name in module.__all__ if f'id="{name}"' not in page]
        assert not missing, f"{module.__name__}: not in the reference: {missing}"


def test_the_package_says_it_is_typed() -> None:
    assert (Path(workspace_fsm.__file__).parent / "py.typed").is_file()
    package_data = PYPROJECT["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data.get("workspace_fsm", [])


def test_the_checking_tools_are_test_dependencies() -> None:
    wanted = {"import-linter", "ruff", "mypy", "pdoc"}
    declared = {d.split(">")[0].split("=")[0].split("[")[0].strip().lower()
                for d in PYPROJECT["project"]["optional-dependencies"]["test"]}
    assert wanted <= declared, wanted - declared
