"""Error types. A :class:`UserInputError` is a mistake in what the user gave (a file, a flag):
the CLI prints its message and exits with status 2, never a stack trace.

The classes live in :mod:`earthgen_base.errors`, the bottom layer that ``vae``, ``flows``,
``controls`` and ``renderers`` import without importing ``earthgen``; these are the same classes.
"""

from __future__ import annotations

from earthgen_base.errors import EarthGenError, MissingDependencyError, UserInputError

__all__ = ["EarthGenError", "MissingDependencyError", "UserInputError"]
