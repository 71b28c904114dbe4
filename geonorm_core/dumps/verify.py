"""sha256 of dump shards, and the record of the files already checked against it.

Hashing a shard proves that its bytes are the ones the writer wrote (the
manifest holds each shard's sha256), but it costs about 0.5 s of CPU per GB:
when the files come from the page cache, several times the analysis itself.
So, as git's index does for a work tree, geonorm remembers each file it has
hashed to its manifest digest, together with the file's identity and change
times (device, inode, size, mtime, ctime).  A later read of the same file,
unchanged since, trusts that check instead of hashing again.

Any write to a file, or a rename over it, changes its ctime, which no user
call can set back; so a file whose identity still matches the record has not
been changed through the file system since it was hashed.  What the record
cannot see is the disk itself rotting the bytes: ``verify="rehash"`` hashes
every shard again (and refreshes the record).

A check is recorded only when the file had not changed for ``RACY_SECONDS``
before it was read (git's "racily clean" rule): a write in the same
timestamp tick as the hash would otherwise leave a stale record.

The records live in geonorm's cache folder (:func:`geonorm_core.runtime.cache_dir`),
one small JSON file per dump; a folder that cannot be written just means
hashing every time.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
import time
from pathlib import Path

from ..runtime import cache_dir

__all__ = ["RACY_SECONDS", "VerifiedFiles", "file_identity", "file_sha256", "hash_file"]

#: A file changed less than this long before it was hashed is hashed again next time.
RACY_SECONDS = 2.0

_CHUNK = 8 << 20
_VERSION = 1


def file_sha256(path: str | os.PathLike, buffer: bytearray | None = None) -> str:
    """sha256 of a file, read sequentially in large chunks into a reused buffer."""
    buf = buffer if buffer is not None else bytearray(_CHUNK)
    view = memoryview(buf)
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO swapped in cannot block
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file: geonorm hashes only regular files", str(path))
    with open(fd, "rb", buffering=0) as f:
        try:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except (OSError, AttributeError):
            pass
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def file_identity(path: str | os.PathLike) -> list[int]:
    """What the record compares: device, inode, size, mtime and ctime (ns)."""
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def hash_file(path: str | os.PathLike, buffer: bytearray | None = None) -> tuple[str, list[int] | None]:
    """The file's sha256, and its identity when the hash may be recorded: the file did not change
    while it was read, nor for ``RACY_SECONDS`` before (else None)."""
    start = time.time_ns()
    before = file_identity(path)
    digest = file_sha256(path, buffer)
    settled = max(before[3], before[4]) <= start - RACY_SECONDS * 1e9
    return digest, before if settled and file_identity(path) == before else None


class VerifiedFiles:
    """The files of one dump already hashed to their manifest digest (see the module docstring)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        resolved = str(self.root.resolve())
        self.path = cache_dir() / f"verified-{hashlib.sha256(resolved.encode()).hexdigest()[:24]}.json"
        self._resolved = resolved
        self._files: dict[str, list] = {}
        self._dirty = False
        try:
            data = json.loads(self.path.read_text())
            if data.get("version") == _VERSION and data.get("root") == resolved:
                self._files = dict(data["files"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # no record yet, or an unreadable one: start afresh

    def _key(self, path: str | os.PathLike) -> str:
        """A file's name in the record: its path inside the dump (its full path if outside)."""
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(Path(path).resolve())

    def known(self, path: str | os.PathLike, sha256: str) -> bool:
        """Whether ``path`` hashed to ``sha256`` before and has not changed since."""
        entry = self._files.get(self._key(path))
        if entry is None or entry[5] != sha256:
            return False
        try:
            return file_identity(path) == entry[:5]
        except OSError:
            return False

    def add(self, path: str | os.PathLike, identity: list[int] | None, sha256: str) -> None:
        """Record that ``path``, with ``identity`` (from :func:`hash_file`; None: do not record), hashed
        to ``sha256``."""
        if identity is not None:
            self._files[self._key(path)] = [*identity, sha256]
            self._dirty = True

    def save(self) -> None:
        """Write the record if it changed (atomically; a folder that cannot be written is skipped)."""
        if not self._dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        except OSError:
            return
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"version": _VERSION, "root": self._resolved, "files": self._files}, f)
            os.replace(tmp, self.path)
            self._dirty = False
        except OSError:
            Path(tmp).unlink(missing_ok=True)
