"""workspace-fsm: a Kubernetes operator's reconcile loop as an explicit, persisted, non-blocking state machine.

Declare a lifecycle with the engine (:mod:`workspace_fsm.engine`: states, guarded edges, what must exist per
state, deadlines, status), run it with ``workspace-fsm run --lifecycle MODULE:ATTR``, test it with
:mod:`workspace_fsm.testing`. KAITO's Workspace and RAGEngine are lifecycles built on the same public API
(:mod:`workspace_fsm.kaito`). See docs/authoring.md.
"""

from workspace_fsm.engine import (AddFinalizer, AnnotationStore, Condition, ConditionStore, Config, Create, Deadline,
                                  Decision, Delete, Edge, Facts, GoTo, HistoryEntry, Kind, Lifecycle, LifecycleError,
                                  NoBookkeeping, ObjectMeta, Owns, Patch, Problem, Record, RecordEvent, RecordFormat,
                                  RemoveFinalizer, Report, Resource, Run, State, Status, WakeUp, Watches, by_labels,
                                  by_owner_reference, decide, guard)
from workspace_fsm.engine.hooks import ActionEvent, Counters, Hooks, TransitionEvent

__version__ = "0.1.0"

__all__ = ["ActionEvent", "AddFinalizer", "AnnotationStore", "Condition", "ConditionStore", "Config", "Counters",
           "Create", "Deadline", "Decision", "Delete", "Edge", "Facts", "GoTo", "HistoryEntry", "Hooks", "Kind",
           "Lifecycle", "LifecycleError", "NoBookkeeping", "ObjectMeta", "Owns", "Patch", "Problem", "Record",
           "RecordEvent", "RecordFormat", "RemoveFinalizer", "Report", "Resource", "Run", "State", "Status",
           "TransitionEvent", "WakeUp", "Watches", "__version__", "by_labels", "by_owner_reference", "decide", "guard"]
