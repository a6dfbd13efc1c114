"""The simulated cluster: Kubernetes + Karpenter + KAITO's GPU device plugin in memory, on a virtual clock.

``SimCluster`` implements :class:`workspace_fsm.engine.adapter.ClusterAdapter` for Workspaces, and
``SimResourceAdapter`` serves any other declared lifecycle on the same cluster; ``Scenario`` and ``SimParams``
describe what to simulate (``Scenario.from_yaml`` reads a scenario file).
"""

from .cluster import EPOCH, SimCluster, WorkspaceRecord
from .documents import inference_document, ragengine_document, to_workspace, tuning_document
from .generic import SimResourceAdapter
from .params import GPUS_PER_INSTANCE, Latencies, LatencyRange, Scenario, ScenarioError, SimParams, instance_gpus

__all__ = ["EPOCH", "GPUS_PER_INSTANCE", "Latencies", "LatencyRange", "Scenario", "ScenarioError", "SimCluster",
           "SimParams", "SimResourceAdapter", "WorkspaceRecord", "inference_document", "instance_gpus",
           "ragengine_document", "to_workspace", "tuning_document"]
