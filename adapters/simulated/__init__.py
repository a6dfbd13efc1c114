"""The simulated cluster: Kubernetes + Karpenter + KAITO's GPU device plugin in memory, on a virtual clock.

``SimCluster`` implements :class:`workspace_fsm.engine.adapter.ClusterAdapter`; ``Scenario`` and ``SimParams``
describe what to simulate (``Scenario.from_yaml`` reads a scenario file).
"""

from .cluster import EPOCH, SimCluster, WorkspaceRecord
from .documents import inference_document, to_workspace, tuning_document
from .params import GPUS_PER_INSTANCE, Latencies, LatencyRange, Scenario, ScenarioError, SimParams

__all__ = ["EPOCH", "GPUS_PER_INSTANCE", "Latencies", "LatencyRange", "Scenario", "ScenarioError", "SimCluster",
           "SimParams", "WorkspaceRecord", "inference_document", "to_workspace", "tuning_document"]
