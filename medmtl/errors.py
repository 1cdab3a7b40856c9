"""Errors medmtl raises for a user to act on, beyond Python's own (ValueError, FileNotFoundError, ...)."""

from __future__ import annotations


class MissingDependencyError(ImportError):
    """A feature needs a package that is not installed; the message says what to install.

    The command line prints it as one line (``medmtl infer: error: ...``), like a user's other
    mistakes; an ``ImportError`` of a module medmtl always needs is a bug and keeps its traceback.
    """


__all__ = ["MissingDependencyError"]
