"""Errors and problems reported for bad input.

A :class:`Problem` names one bad field by its path in the Workspace document
(``resource.instanceType``, ``tuning.method``, ``metadata.labels["app"]``), a
CamelCase ``reason`` that machines can match on (it becomes a condition reason),
and a message written for the person who has to fix the manifest.
"""

from __future__ import annotations

from workspace_fsm.engine.problems import Problem

__all__ = ["InvalidWorkspace", "Problem"]


class InvalidWorkspace(ValueError):
    """A document is not a valid Workspace. ``problems`` lists every bad field."""

    def __init__(self, problems: list[Problem] | tuple[Problem, ...], name: str = "") -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.name = name
        what = f"Workspace {name!r}" if name else "Workspace"
        lines = "; ".join(str(p) for p in self.problems)
        super().__init__(f"{what} is invalid ({len(self.problems)} problem(s)): {lines}")

    @property
    def reason(self) -> str:
        """The reason of the first problem: the most specific single word for a condition."""
        return self.problems[0].reason if self.problems else "InvalidWorkspace"
