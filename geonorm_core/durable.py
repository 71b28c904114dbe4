"""Files that a crash never leaves half-written: write to a temporary name, fsync, rename.

Readers of a path written here see the old file or the complete new one, never a part.  Every
file geonorm writes goes through here: dumps (their shards and manifest), the checkpoints of
long analyses, and the reports (JSON, CSV, Markdown, figures: :func:`write_bytes`,
:func:`write_text`, :func:`atomic_file`).  A failed write (``ENOSPC``, ``EIO``) leaves the old
file and raises an ``OSError`` that names the path.

:func:`folder_lock` keeps a second geonorm process from writing into the same output folder:
an advisory lock (``flock``) on a lock file that records the holder's pid; the kernel releases
it when the process exits, however it exits, so a lock left by a killed run is stale and taken
over (where ``flock`` is not supported, a lock file whose pid is no longer alive is stale).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["LOCK_NAME", "FolderLocked", "atomic_file", "atomic_write", "folder_lock", "fsync_dir", "write_bytes",
           "write_json", "write_text"]

#: The lock file :func:`folder_lock` keeps in a folder while a command writes there.
LOCK_NAME = ".geonorm.lock"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _named(exc: OSError, path: Path) -> OSError:
    """``exc`` with ``path`` as its file name (ENOSPC from a write or fsync names none)."""
    if exc.filename is None:
        return type(exc)(exc.errno, exc.strerror or str(exc), str(path))
    return exc


def atomic_write(path: Path, chunks: Iterable[Any]) -> str:
    """Write ``chunks`` (bytes-like) to ``path`` atomically; return their sha256.

    The bytes go to a temporary name in the same folder, are fsynced, then renamed over
    ``path``: readers see the old file or the complete new one, never a part.  The caller
    fsyncs the folder (once for many files).  An ``OSError`` names ``path``.
    """
    path = Path(path)
    h = hashlib.sha256()
    with atomic_file(path, fsync_folder=False) as f:
        for c in chunks:
            h.update(c)
            f.write(c)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, fsync_folder: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: a temporary name, fsynced and renamed over ``path``
    when the block ends without an error (the temporary file is removed otherwise).

    An ``OSError`` (``ENOSPC``, ``EIO``, ...) is raised naming ``path``; ``path`` itself keeps
    its old content.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if fsync_folder:
            fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _named(exc, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (the folder is fsynced too)."""
    with atomic_file(path) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically and durably."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1) -> None:
    """Write ``obj`` as strict JSON (no NaN) to ``path`` atomically and durably."""
    write_bytes(path, json.dumps(obj, indent=indent, allow_nan=False).encode())


# ---------------------------------------------------------------------------------------- the lock


class FolderLocked(OSError):
    """Another live geonorm process holds the folder's lock (``filename``: the folder)."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold the advisory lock of ``folder`` (created if needed) while the block runs.

    Parameters
    ----------
    folder : the output folder a command writes into.
    command : what holds it, for the message a second writer gets (``"geonorm analyze"``).

    Raises
    ------
    FolderLocked
        (an ``OSError``, ``EBUSY``) when another live process holds it: one line naming the folder,
        the holder and its pid.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = _acquire(path, folder, command)
    try:
        yield path
    finally:
        try:
            path.unlink(missing_ok=True)  # while still locked: a waiting process re-checks the inode
        finally:
            os.close(fd)


def _acquire(path: Path, folder: Path, command: str) -> int:
    import fcntl

    me = f"{os.getpid()} {socket.gethostname()} {command}\n".encode()
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _busy(folder, _holder(fd)) from None
            except OSError as exc:  # no flock here (some network file systems): the pid decides
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                holder = _holder(fd)
                if holder and holder[0] != os.getpid() and _alive(holder):
                    raise _busy(folder, holder) from None
            try:  # the file may have been unlinked by the holder that just released it
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, me, 0)
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise OSError(errno.EBUSY, "cannot take the lock (it keeps changing)", str(folder))


def _holder(fd: int) -> tuple[int, str, str] | None:
    try:
        pid, host, command = os.pread(fd, 4096, 0).decode().strip().split(" ", 2)
        return int(pid), host, command
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _alive(holder: tuple[int, str, str]) -> bool:
    pid, host, _ = holder
    if host != socket.gethostname():
        return True  # another machine's process: cannot tell, assume it runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _busy(folder: Path, holder: tuple[int, str, str] | None) -> FolderLocked:
    who = f"{holder[2]} (pid {holder[0]} on {holder[1]})" if holder else "another geonorm process"
    return FolderLocked(errno.EBUSY, f"in use by {who}; wait for it to finish or choose another folder",
                        str(folder))
