"""workspace-fsm: the KAITO Workspace lifecycle as an explicit, persisted, non-blocking state machine."""

__version__ = "0.1.0"
