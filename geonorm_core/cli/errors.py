"""How the command line fails: one line, ``geonorm <command>: error: <what, where, what to do>``.

Exit codes: 2 for usage errors (an option, a path or a model name that is wrong), 1 for bad
data (a file that is not what it claims, a model the analysis cannot use), 130 on Ctrl-C.
``--debug`` (or ``GEONORM_DEBUG=1``) shows the traceback instead.  Only errors that are the
user's to fix become a line: geonorm's own ``ValueError``s (the library's convention for a bad
input), file-system errors and missing packages.  Anything else is a bug in geonorm or below,
and keeps its traceback.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

USAGE, DATA, INTERRUPTED = 2, 1, 130
_PACKAGE = str(Path(__file__).resolve().parent.parent)


class CommandError(Exception):
    """A failure the user can fix, with the exit code it ends in."""

    code = DATA

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class UsageError(CommandError):
    """An option, path or name that is wrong: exit 2."""

    code = USAGE


def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("GEONORM_DEBUG", "") not in ("", "0")


def _raised_by_geonorm(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by geonorm's own code (its innermost frame is in the package)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    frames = traceback.extract_tb(tb)
    return bool(frames) and str(Path(frames[-1].filename).resolve()).startswith(_PACKAGE)


def exit_code(exc: BaseException) -> int | None:
    """The exit code for a user's error, or None for a bug (which keeps its traceback)."""
    from ..models.loading import ModelNotFoundError

    if isinstance(exc, CommandError):
        return exc.code
    if isinstance(exc, ModelNotFoundError):
        return USAGE
    if isinstance(exc, (OSError, ImportError)):
        return DATA
    if isinstance(exc, ValueError) and _raised_by_geonorm(exc):
        return DATA
    return None


def print_error(command: str, message: str) -> None:
    print(f"geonorm {command}: error: {message}", file=sys.stderr)


def one_line_warnings(command: str, default):
    """A ``warnings.showwarning`` that prints geonorm's own warnings as one line,
    ``geonorm <command>: warning: ...`` (others as ``default`` does)."""
    def show(message, category, filename, lineno, file=None, line=None):
        if str(Path(filename).resolve()).startswith(_PACKAGE):
            print(f"geonorm {command}: warning: {' '.join(str(message).split())}", file=file or sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)
    return show


def describe(exc: BaseException) -> str:
    """One line for an exception: its message, with an OSError's path and reason."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__
