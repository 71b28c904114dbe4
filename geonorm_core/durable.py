"""Files that a crash never leaves half-written: write to a temporary name, fsync, rename.

Readers of a path written here see the old file or the complete new one, never a part.  Dumps
(their shards and manifest) and the checkpoints of long analyses are written this way.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

__all__ = ["atomic_write", "fsync_dir", "write_json"]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, chunks: Iterable[Any]) -> str:
    """Write ``chunks`` (bytes-like) to ``path`` atomically; return their sha256.

    The bytes go to a temporary name in the same folder, are fsynced, then renamed over
    ``path``: readers see the old file or the complete new one, never a part.  The caller
    fsyncs the folder (once for many files).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            for c in chunks:
                h.update(c)
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return h.hexdigest()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically and durably (the folder is fsynced too)."""
    path = Path(path)
    atomic_write(path, [json.dumps(obj, indent=1, allow_nan=False).encode()])
    fsync_dir(path.parent)
