"""KAITO's resources as lifecycles built on the engine's public API: Workspace and RAGEngine."""
