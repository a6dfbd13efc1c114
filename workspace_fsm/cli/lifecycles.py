"""Which lifecycles a command drives: built-in names, or ``MODULE:ATTR`` / ``path/to/file.py:ATTR``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

BUILTIN = {"workspace": "workspace_fsm.kaito.workspace:WORKSPACE",
           "ragengine": "workspace_fsm.kaito.ragengine:RAGENGINE"}


class LifecycleNotFound(Exception):
    """What was named is not a lifecycle; the message says what to give instead."""


def load_lifecycle(spec: str) -> Any:
    """The lifecycle named by ``spec``: ``workspace``, ``ragengine``, ``package.module:ATTR`` or ``file.py:ATTR``."""
    from workspace_fsm.engine import Lifecycle

    target = BUILTIN.get(spec, spec)
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise LifecycleNotFound(f"--lifecycle {spec}: give a built-in name ({', '.join(BUILTIN)}) or MODULE:ATTR "
                                f"(e.g. examples/website/website.py:WEBSITE or mypackage.lifecycles:DATABASE)")
    try:
        if module_name.endswith(".py") or "/" in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise LifecycleNotFound(f"--lifecycle {spec}: no such file {path}")
            name = f"workspace_fsm_user_{path.stem}"
            loader = importlib.util.spec_from_file_location(name, path)
            assert loader is not None and loader.loader is not None
            module = importlib.util.module_from_spec(loader)
            sys.modules[name] = module
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except LifecycleNotFound:
        raise
    except ImportError as exc:
        raise LifecycleNotFound(f"--lifecycle {spec}: cannot import {module_name}: {exc}") from None
    except Exception as exc:  # the author's module failed while loading: say where
        raise LifecycleNotFound(f"--lifecycle {spec}: loading {module_name} failed: {type(exc).__name__}: {exc}") from None
    lc = getattr(module, attr, None)
    if not isinstance(lc, Lifecycle):
        raise LifecycleNotFound(f"--lifecycle {spec}: {module_name} has no Lifecycle named {attr}"
                                + (f" (it is a {type(lc).__name__})" if lc is not None else ""))
    return lc
