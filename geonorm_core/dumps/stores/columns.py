"""What every store reader hands :mod:`.stores`: named columns, a shard of several parts, the extra.

A reader (:mod:`.arrow`, :mod:`.hdf5`, :mod:`.zarr`) lists a store's arrays as
:class:`Column` objects: a float array of vectors becomes a :class:`ConcatShard` of the store's own
pieces (record batches, files, one HDF5 or zarr array), anything else is left out with the reason.
"""
from __future__ import annotations

import bisect
import importlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..shards import DumpError, Shard

__all__ = ["STORE_EXTRA", "Column", "ConcatShard", "natural_key", "need", "release_freed_blocks"]

STORE_EXTRA = 'pip install "geonorm[stores]"'


def natural_key(name: str) -> list:
    """Sort key that puts ``blocks.2`` before ``blocks.10``."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name)]


_MMAP_THRESHOLD = 1 << 20
_released = False


def release_freed_blocks() -> None:
    """Make glibc give freed blocks of 1 MiB and more back to the OS at once (``mallopt``).

    A decoding library (zarr, HDF5 filters) allocates a chunk-sized buffer per chunk, often from
    its own threads.  glibc raises its mmap threshold each time such a buffer is freed, so the
    next ones come from the heap and stay resident when freed: measured on a 2 GB zarr store,
    ~150 MB more peak RSS.  A fixed 1 MiB threshold keeps every large buffer in its own mapping,
    returned on free.  Process-wide, once; a no-op where the C library is not glibc.
    """
    global _released
    if _released:
        return
    _released = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, _MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def need(module: str, what: str) -> Any:
    """Import an optional library, or fail with one line that names the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"reading {what} needs the {module} package: {STORE_EXTRA}") from None


@dataclass
class Column:
    """One named array of a store: its rows as a shard, or why it is left out."""

    name: str
    shard: Shard | None
    why: str = ""
    error: DumpError | None = None  # raised when the column is read: selected, or selected by default


class ConcatShard(Shard):
    """Rows of several shards end to end (a store's record batches, files, chunks) as one shard.

    A read inside one part is that part's read (a memory map, no copy); a read across parts
    is assembled in one new block.
    """

    def __init__(self, path: str | os.PathLike, parts: Sequence[Shard]) -> None:
        self.path, self.parts = Path(path), [s for s in parts if s.rows] or list(parts[:1])
        self.d, self.dtype = int(self.parts[0].d), np.dtype(self.parts[0].dtype)
        for s in self.parts:
            if (s.d, s.dtype) != (self.d, self.dtype):
                raise DumpError(s.path, f"has rows of d={s.d} {s.dtype}, the parts before it d={self.d} "
                                        f"{self.dtype}")
        self.starts = np.cumsum([0] + [s.rows for s in self.parts]).tolist()
        self.rows = self.starts[-1]

    def _pieces(self, start: int, stop: int) -> list[tuple[Shard, int, int, int]]:
        out = []
        i = bisect.bisect_right(self.starts, start) - 1
        while start < stop and i < len(self.parts):
            lo = self.starts[i]
            hi = min(stop, self.starts[i + 1])
            if hi > start:
                out.append((self.parts[i], start - lo, hi - lo, start))
            start = max(start, hi)
            i += 1
        return out

    def spans(self, start: int, stop: int) -> list[tuple[int, int]]:
        """Rows ``[start, stop)`` cut where parts meet: each span is read without a copy."""
        return [(at, at + b - a) for _, a, b, at in self._pieces(start, stop)] or [(start, stop)]

    def read(self, start: int, stop: int) -> np.ndarray:
        self._check_range(start, stop)
        pieces = self._pieces(start, stop)
        if len(pieces) == 1:
            part, a, b, _ = pieces[0]
            return part.read(a, b)
        out = np.empty((stop - start, self.d), self.dtype)
        for part, a, b, at in pieces:
            out[at - start:at - start + b - a] = part.read(a, b)
        return out

    def prefetch(self, start: int, stop: int) -> None:
        for part, a, b, _ in self._pieces(start, stop):
            part.prefetch(a, b)

    def release(self) -> None:
        for part in self.parts:
            part.release()
