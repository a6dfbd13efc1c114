"""What is wrong with a resource's spec, said so that the person who must fix it can.

A :class:`Problem` names one bad field by its path in the document (``resource.instanceType``,
``metadata.labels["app"]``), a CamelCase ``reason`` that machines can match on (it becomes a condition
reason and an Event reason), and a message written for the person who has to fix the manifest.
"""

from __future__ import annotations

import attrs

__all__ = ["Problem"]


@attrs.frozen
class Problem:
    path: str
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message
