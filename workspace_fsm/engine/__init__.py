"""The engine: declare a lifecycle, interpret it purely, persist its record on the resource, run it.

It imports nothing of KAITO (a test and an import-linter contract keep it so). What an operator author uses:

- declaration: :class:`Lifecycle`, :class:`State`, :class:`Edge`, :class:`Deadline` (:class:`Report`,
  :class:`GoTo`, :class:`Run`), :func:`guard`, :class:`Facts`, :class:`Config`;
- what it reconciles, creates and reads: :class:`Kind`, :class:`Owns`, :class:`Watches`, :func:`by_owner_reference`,
  :func:`by_labels`;
- the record: :class:`Record`, :class:`RecordFormat`, :class:`ConditionStore`, :class:`AnnotationStore`;
- actions: :class:`Create`, :class:`Patch`, :class:`Delete`, :class:`RecordEvent`, :class:`AddFinalizer`,
  :class:`RemoveFinalizer`, :class:`WakeUp`;
- the pure pass: :func:`decide`, :class:`Decision`; a resource without a typed model: :class:`Resource`.
"""

from workspace_fsm.engine.actions import AddFinalizer, Create, Delete, Patch, RecordEvent, RemoveFinalizer, WakeUp
from workspace_fsm.engine.declare import (Config, Deadline, Edge, Facts, GoTo, Lifecycle, LifecycleError, Report, Run,
                                          State, guard)
from workspace_fsm.engine.interpret import Decision, decide
from workspace_fsm.engine.kinds import Kind, Owns, Watches, by_labels, by_owner_reference
from workspace_fsm.engine.objects import Condition, ObjectMeta
from workspace_fsm.engine.problems import Problem
from workspace_fsm.engine.record import AnnotationStore, ConditionStore, HistoryEntry, NoBookkeeping, Record, RecordFormat
from workspace_fsm.engine.resource import Resource, Status

__all__ = ["AddFinalizer", "AnnotationStore", "Condition", "ConditionStore", "Config", "Create", "Deadline",
           "Decision", "Delete", "Edge", "Facts", "GoTo", "HistoryEntry", "Kind", "Lifecycle", "LifecycleError",
           "NoBookkeeping", "ObjectMeta", "Owns", "Patch", "Problem", "Record", "RecordEvent", "RecordFormat",
           "RemoveFinalizer", "Report", "Resource", "Run", "State", "Status", "WakeUp", "Watches", "by_labels",
           "by_owner_reference", "decide", "guard"]
