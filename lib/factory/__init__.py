"""factory: an orchestration kernel for ephemeral AI agents working on a git repository."""

__version__ = "0.1.0"
