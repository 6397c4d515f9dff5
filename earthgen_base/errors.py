"""Error types (shared by every EarthGen package; :mod:`earthgen.errors` re-exports them).

A :class:`UserInputError` is a mistake in what the user gave (a file, a flag): the CLI prints its
message and exits with status 2, never a stack trace."""

from __future__ import annotations


class EarthGenError(Exception):
    """Base class of EarthGen's own errors."""


class UserInputError(EarthGenError, ValueError):
    """Bad user input: a malformed file, an out-of-range argument, an empty selection.

    The message must say what was wrong and, where it helps, where (file, line) and how to fix it.
    """


class MissingDependencyError(EarthGenError, ImportError):
    """An optional dependency is not installed; the message names the install command."""

    def __init__(self, package: str, extra: str | None = None, purpose: str = ""):
        cmd = f'pip install "earthgen[{extra}]"' if extra else f"pip install {package}"
        what = f" (needed for {purpose})" if purpose else ""
        kind = "optional package" if extra else "package"
        super().__init__(f"The {kind} '{package}' is not installed{what}. Install it with: {cmd}")
        self.package = package
