"""What a dump may name and what geonorm reads: regular files, inside the dump, parsed strictly.

Every file of a source is read only after it proved to be a *regular* file (a FIFO would hang
the reader, a device such as ``/dev/urandom`` read without end): :func:`regular_file` checks
with ``os.stat`` before opening, and :func:`open_regular` opens without blocking
(``O_NONBLOCK``) and checks the descriptor again, so a file swapped for a FIFO in between is
refused too.  Every path a manifest names goes through :func:`inside`: relative, normalized,
and -- symlinks resolved -- inside the dump's folder; anything else is refused by name before
any file is read, deleted or written.  :func:`strict_json` parses the JSON geonorm reads
(manifests, safetensors headers): no NaN/Infinity, a bounded nesting depth, and every failure a
:class:`~geonorm_core.dumps.shards.DumpError` naming the file.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .shards import DumpError

__all__ = ["MAX_DEPTH", "inside", "open_regular", "regular_file", "strict_json"]

#: The deepest nesting of lists and objects accepted in a manifest or a header (geonorm writes 4).
MAX_DEPTH = 32

_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


def _not_regular(path: str | os.PathLike, mode: int) -> DumpError:
    what = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
    return DumpError(path, f"is {what}, not a regular file: geonorm reads only regular files")


def regular_file(path: str | os.PathLike) -> os.stat_result:
    """``os.stat`` of ``path`` (symlinks followed), refusing anything but a regular file.

    Raises
    ------
    DumpError
        naming the path: missing, unreadable, or a FIFO, device, socket or folder.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DumpError(path, "missing (no such file)") from None
    except OSError as exc:
        raise DumpError(path, f"cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    return st


def open_regular(path: str | os.PathLike) -> io.BufferedReader:
    """Open a regular file for reading in binary mode; anything else is refused without blocking.

    The file is checked before it is opened (:func:`regular_file`) and opened with
    ``O_NONBLOCK`` (a FIFO swapped in meanwhile cannot make ``open`` wait for a writer), then its
    descriptor is checked again.
    """
    regular_file(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise DumpError(path, f"cannot be read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def inside(root: Path, rel: Any, what: str, where: str | os.PathLike) -> Path:
    """``root / rel`` for a path a manifest names, when it stays inside ``root``.

    ``rel`` must be a non-empty relative POSIX path in normal form (no ``.``, ``..``, empty
    parts, backslashes or NUL) and, with every symlink resolved, lie inside ``root`` (itself
    resolved).  ``what`` names the field for the error, ``where`` the file that named it.

    Raises
    ------
    DumpError
        naming ``where`` and the field, before anything is read, deleted or written.
    """
    if not isinstance(rel, str) or not rel:
        raise DumpError(where, f"{what}: a path must be a non-empty string, got {_short(rel)}")
    pure = PurePosixPath(rel)
    if (pure.is_absolute() or "\\" in rel or "\0" in rel or pure.as_posix() != rel
            or any(part in (".", "..") for part in rel.split("/"))):
        raise DumpError(where, f"{what}: {rel!r} is not a relative path inside the dump (absolute paths, "
                               f"'..' and unnormalized paths are refused)")
    path = root / rel
    base = root.resolve()
    try:
        path.resolve().relative_to(base)
    except ValueError:
        raise DumpError(where, f"{what}: {rel!r} resolves to {path.resolve()}, outside the dump "
                               f"{base} (through a symlink)") from None
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise DumpError(where, f"{what}: {rel!r} cannot be resolved ({exc})") from None
    return path


def strict_json(raw: bytes | str, where: str | os.PathLike, what: str) -> Any:
    """Parse JSON as geonorm writes it: finite numbers only, at most :data:`MAX_DEPTH` levels deep.

    Raises
    ------
    DumpError
        naming ``where`` for invalid UTF-8 or JSON, NaN/Infinity, or nesting too deep.
    """
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a number JSON allows")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text[:20]} is out of range")
        return value

    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        _check_depth(text, where, what)
        return json.loads(text, parse_constant=no_constant, parse_float=finite)
    except DumpError:
        raise
    except RecursionError:
        raise DumpError(where, f"{what} is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise DumpError(where, f"{what} is not valid JSON ({exc})") from None


def _check_depth(text: str, where: str | os.PathLike, what: str) -> None:
    """Refuse more than MAX_DEPTH nested brackets before parsing (the parser recurses); linear, in C."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    skeleton = _STRING.sub("", text).encode("utf-8", "replace")
    b = np.frombuffer(skeleton, np.uint8)
    steps = (np.isin(b, _OPEN).astype(np.int64) - np.isin(b, _CLOSE))
    if steps.size and int(np.cumsum(steps).max()) > MAX_DEPTH:
        raise DumpError(where, f"{what} is nested more than {MAX_DEPTH} levels deep")


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPEN = np.frombuffer(b"[{", np.uint8)
_CLOSE = np.frombuffer(b"]}", np.uint8)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
