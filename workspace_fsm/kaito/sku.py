"""GPU instance types KAITO knows, per cloud: GPU count, total GPU memory, GPU model.

The table (``data/instance_types.json``) is generated from KAITO's ``pkg/sku`` by
``scripts/generate_kaito_catalogue.py`` and records the KAITO commit it was read from. KAITO
matches instance-type names case-insensitively (Azure VM sizes are), and so does :func:`lookup`.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["InstanceType", "SkuTable", "lookup", "table"]

_GIB = 1 << 30


@attrs.frozen
class InstanceType:
    """One instance type. ``gpu_memory_gib`` is the node's total GPU memory (all its GPUs)."""

    name: str
    cloud: str
    gpu_count: int
    gpu_memory_gib: float
    gpu_model: str
    gpu_memory_bytes: int = 0
    nvme_disk_enabled: bool = False
    cuda_compute_capability: float = 0.0

    @property
    def gpu_memory_per_gpu_bytes(self) -> int:
        """Memory of one GPU, as KAITO's estimator computes it (total // count)."""
        return self.gpu_memory_bytes // self.gpu_count if self.gpu_count > 0 else 0


@attrs.frozen
class SkuTable:
    """The instance types of every cloud KAITO supports, and where the table came from."""

    instance_types: tuple[InstanceType, ...]
    clouds: tuple[str, ...]
    kaito_commit: str = ""
    _by_name: Mapping[str, tuple[InstanceType, ...]] = attrs.field(
        init=False, eq=False, hash=False, repr=False
    )

    def __attrs_post_init__(self) -> None:
        index: dict[str, list[InstanceType]] = {}
        for it in self.instance_types:
            index.setdefault(it.name.lower(), []).append(it)
        object.__setattr__(self, "_by_name", {k: tuple(v) for k, v in index.items()})

    def lookup(self, name: str, cloud: str | None = None) -> InstanceType | None:
        """The instance type called ``name`` (any case), on ``cloud`` if given, else on the
        first cloud that has it; None when KAITO does not know it."""
        if not isinstance(name, str):
            return None
        hits = self._by_name.get(name.lower(), ())
        for it in hits:
            if cloud is None or it.cloud == cloud:
                return it
        return None

    def names(self, cloud: str | None = None) -> tuple[str, ...]:
        return tuple(it.name for it in self.instance_types if cloud is None or it.cloud == cloud)

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> SkuTable:
        rows = []
        for row in data["instance_types"]:
            rows.append(InstanceType(
                name=row["name"], cloud=row["cloud"], gpu_count=int(row["gpu_count"]),
                gpu_memory_gib=int(row["gpu_memory_bytes"]) / _GIB, gpu_model=row["gpu_model"],
                gpu_memory_bytes=int(row["gpu_memory_bytes"]),
                nvme_disk_enabled=bool(row.get("nvme_disk_enabled", False)),
                cuda_compute_capability=float(row.get("cuda_compute_capability", 0.0)),
            ))
        return cls(tuple(rows), tuple(data.get("clouds", ())), str(data.get("kaito", {}).get("commit", "")))


@functools.cache
def table() -> SkuTable:
    """The shipped table (loaded once)."""
    resource = importlib.resources.files("workspace_fsm.kaito") / "data" / "instance_types.json"
    return SkuTable.from_data(json.loads(resource.read_text(encoding="utf-8")))


def lookup(name: str, cloud: str | None = None) -> InstanceType | None:
    """Look ``name`` up in the shipped table (see :meth:`SkuTable.lookup`)."""
    return table().lookup(name, cloud)
