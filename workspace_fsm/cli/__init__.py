"""The ``workspace-fsm`` command line: ``run``, ``cluster``, ``simulate``, ``validate``, ``diagram``, ``explain``."""

from workspace_fsm.cli.main import main

__all__ = ["main"]
