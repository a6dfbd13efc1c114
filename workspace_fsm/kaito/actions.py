"""What KAITO's lifecycles may ask an adapter to do, besides the engine's generic actions.

Actions are values. An adapter applies them in order and stops at the first failure (the pass is then
retried with backoff, and the next ``decide`` asks again for whatever is still missing). Every action
is idempotent by construction: objects have deterministic names, so a repeated create meets
AlreadyExists and a repeated delete meets NotFound, and both count as success.
"""

from __future__ import annotations

from typing import ClassVar, Union

import attrs

from workspace_fsm.engine.actions import AddFinalizer, RecordEvent, RemoveFinalizer, WakeUp

__all__ = ["Action", "AddFinalizer", "CreateJob", "CreateNodeClaim", "CreateService", "CreateWorkload", "DeleteJob",
           "DeleteNodeClaim", "RecordEvent", "RemoveFinalizer", "UpdateWorkload", "WakeUp"]


@attrs.frozen
class CreateNodeClaim:
    """A karpenter.sh/v1 NodeClaim for one GPU node of the Workspace (cluster-scoped)."""

    name: str
    instance_type: str
    labels: tuple[tuple[str, str], ...]
    # The pass that recorded this name (Lifecycle.claimed_by): an adapter that learns this create was never
    # sent or was refused reports it under this token, so only that pass's own record can be taken at its word.
    claim: str = ""
    phase: ClassVar[str] = "create"
    # A fresh name (a replacement gets a new one): sent only within Config.create_send_window of the pass.
    send_window: ClassVar[bool] = True


@attrs.frozen
class DeleteNodeClaim:
    name: str
    reason: str
    phase: ClassVar[str] = "before"


@attrs.frozen
class CreateWorkload:
    """The inference workload: a Deployment (one node) or a StatefulSet (several), owned by the Workspace."""

    kind: str
    name: str
    replicas: int
    revision: str
    preset: str
    node_names: tuple[str, ...]
    # GPUs per pod when neither the instance type nor a partition says (bring-your-own nodes: what they advertise);
    # 0: from the spec (workspace_fsm.kaito.manifests.gpus_per_node).
    gpus: int = 0
    phase: ClassVar[str] = "create"


@attrs.frozen
class UpdateWorkload:
    kind: str
    name: str
    replicas: int
    revision: str
    preset: str
    node_names: tuple[str, ...]
    gpus: int = 0
    phase: ClassVar[str] = "create"


@attrs.frozen
class CreateService:
    """One of the inference Workspace's two Services, owned by it: ``name`` (the model's port, KAITO's
    GenerateServiceManifest) or ``name-headless`` (how a multi-node StatefulSet's pods find pod 0)."""

    name: str
    headless: bool = False
    stateful: bool = False  # the workload is a StatefulSet: the Service selects its pod 0
    phase: ClassVar[str] = "create"


@attrs.frozen
class CreateJob:
    """The tuning Job, owned by the Workspace and named after it."""

    name: str
    revision: str
    preset: str
    method: str
    node_names: tuple[str, ...]
    gpus: int = 0
    phase: ClassVar[str] = "create"


@attrs.frozen
class DeleteJob:
    """Delete a stale tuning Job. Background propagation: the API answers at once and the garbage
    collector removes the pods; the machine waits for the Job to be gone in a state of its own."""

    name: str
    revision: str
    propagation: str = "Background"
    # The Job meant (its uid, when known): sent as a precondition, so that a runner whose cache still shows
    # the stale Job never deletes the current one, which has the same name.
    uid: str = ""
    phase: ClassVar[str] = "before"


Action = Union[AddFinalizer, RemoveFinalizer, CreateNodeClaim, DeleteNodeClaim, CreateWorkload,
               UpdateWorkload, CreateService, CreateJob, DeleteJob, RecordEvent]
