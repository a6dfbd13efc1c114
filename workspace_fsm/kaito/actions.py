"""What ``decide`` may ask an adapter to do.

Actions are values. An adapter applies them in order and stops at the first failure (the pass is then
retried with backoff, and the next ``decide`` asks again for whatever is still missing). Every action
is idempotent by construction: objects have deterministic names, so a repeated create meets
AlreadyExists and a repeated delete meets NotFound, and both count as success.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Union

import attrs


@attrs.frozen
class AddFinalizer:
    finalizer: str


@attrs.frozen
class RemoveFinalizer:
    finalizer: str


@attrs.frozen
class CreateNodeClaim:
    """A karpenter.sh/v1 NodeClaim for one GPU node of the Workspace (cluster-scoped)."""

    name: str
    instance_type: str
    labels: tuple[tuple[str, str], ...]
    # The pass that recorded this name (Lifecycle.claimed_by): an adapter that learns this create was never
    # sent or was refused reports it under this token, so only that pass's own record can be taken at its word.
    claim: str = ""


@attrs.frozen
class DeleteNodeClaim:
    name: str
    reason: str


@attrs.frozen
class CreateWorkload:
    """The inference workload: a Deployment (one node) or a StatefulSet (several), owned by the Workspace."""

    kind: str
    name: str
    replicas: int
    revision: str
    preset: str
    node_names: tuple[str, ...]


@attrs.frozen
class UpdateWorkload:
    kind: str
    name: str
    replicas: int
    revision: str
    preset: str
    node_names: tuple[str, ...]


@attrs.frozen
class CreateJob:
    """The tuning Job, owned by the Workspace and named after it."""

    name: str
    revision: str
    preset: str
    method: str
    node_names: tuple[str, ...]


@attrs.frozen
class DeleteJob:
    """Delete a stale tuning Job. Background propagation: the API answers at once and the garbage
    collector removes the pods; the machine waits for the Job to be gone in a state of its own."""

    name: str
    revision: str
    propagation: str = "Background"


@attrs.frozen
class RecordEvent:
    """A Kubernetes Event on the Workspace: ``type`` is Normal or Warning."""

    type: str
    reason: str
    message: str


Action = Union[AddFinalizer, RemoveFinalizer, CreateNodeClaim, DeleteNodeClaim, CreateWorkload,
               UpdateWorkload, CreateJob, DeleteJob, RecordEvent]


@attrs.frozen
class WakeUp:
    """When to look at the Workspace again if no watch event comes first.

    ``after`` None means: only on the next event. Waiting is never done inside a pass.
    """

    after: timedelta | None
    reason: str

    @classmethod
    def on_event(cls, reason: str = "waiting for the next watch event") -> WakeUp:
        return cls(None, reason)
