"""zarr stores (format 2 and 3): every float array of 2 or 3 dimensions is a site, named by its path.

Rows are read through zarr a block at a time (``array[a:b]``): zarr reads and decompresses only the
chunks the block touches.  A 3-D array ``(sequences, positions, d)`` is rows of ``d``.  A chunk that
cannot be read or decompressed is an error naming the array; a chunk that is *absent* is, by zarr's
own rules, the array's fill value (zarr writes no chunk that is all fill value).
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..formats import _READABLE
from ..shards import DumpError, Shard
from .columns import Column, ConcatShard, natural_key, need, release_freed_blocks

__all__ = ["ZarrShard", "zarr_columns"]


def _open(path: Path) -> Any:
    zarr = need("zarr", "zarr stores")
    try:
        return zarr.open(store=str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 -- zarr's complaint about bad metadata: name the store
        raise DumpError(path, f"is not a readable zarr store: {type(exc).__name__}: {exc}") from None


class ZarrShard(Shard):
    """Rows of a zarr array; opened lazily where it is read (pickles small, for Dask)."""

    def __init__(self, path: Path, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.name, self.shape = Path(path), name, tuple(int(s) for s in shape)
        self.d = self.shape[-1]
        self.per = math.prod(self.shape[1:-1])
        self.rows, self.dtype = self.shape[0] * self.per, np.dtype(dtype).newbyteorder("=")
        self._array: Any = None
        self._local = threading.local()  # the chunk the last block ended in, per thread

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_array", "_local")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _array=None, _local=threading.local())

    def _first_axis(self, a: int, b: int) -> np.ndarray:
        """Items ``[a, b)`` of the first axis.  zarr decodes whole chunks: the part of the chunk a
        block ends in that the block does not use is kept for the next block, so no chunk is
        decoded twice when blocks and chunks do not line up."""
        step = int(self._array.chunks[0])
        out = np.empty((b - a, *self.shape[1:]), self._array.dtype)
        at = a
        lo, tail = getattr(self._local, "tail", (0, None))
        if tail is not None and lo <= at < lo + len(tail):
            n = min(b, lo + len(tail)) - at
            out[:n] = tail[at - lo : at - lo + n]
            at += n
        self._local.tail = (0, None)
        while at < b:  # one chunk at a time: zarr then holds one chunk's bytes, not the block's
            end = min(self.shape[0], (at // step + 1) * step)
            got = np.asarray(self._array[at:end])
            n = min(b, end) - at
            out[at - a : at - a + n] = got[:n]
            if end > b:
                self._local.tail = (b, got[n:])
            at += n
        return out

    def read(self, start: int, stop: int) -> np.ndarray:
        self._check_range(start, stop)
        if start == stop:
            return np.empty((0, self.d), self.dtype)
        a, b = start // self.per, -(-stop // self.per)
        if self._array is None:
            release_freed_blocks()
            root = _open(self.path)
            self._array = root if not self.name else root[self.name]
        try:
            block = self._first_axis(a, b)
        except Exception as exc:  # noqa: BLE001 -- a codec's or store's complaint about a chunk
            raise DumpError(
                self.path,
                f"array {self.name or '/'!r}, rows [{start}, {stop}): a chunk cannot be "
                f"read: {type(exc).__name__}: {exc}",
            ) from None
        rows = block.reshape(-1, self.d)[start - a * self.per : stop - a * self.per]
        return rows.astype(self.dtype, copy=False)

    def release(self) -> None:
        self._array = None
        self._local = threading.local()


def zarr_columns(path: Path) -> tuple[list[Column], dict]:
    """The arrays of a zarr store (a group's arrays at any depth, by path; or the one array)."""
    root = _open(path)
    fmt = getattr(getattr(root, "metadata", None), "zarr_format", None)
    if hasattr(root, "members"):
        try:
            items = sorted(
                ((name, obj) for name, obj in root.members(max_depth=None) if not hasattr(obj, "members")),
                key=lambda item: natural_key(item[0]),
            )
        except Exception as exc:  # noqa: BLE001
            raise DumpError(path, f"cannot be walked: {type(exc).__name__}: {exc}") from None
    else:
        items = [("", root)]
    columns = []
    for name, arr in items:
        label = name or path.name
        dtype, shape = np.dtype(arr.dtype), tuple(arr.shape)
        if dtype.kind != "f" or dtype.newbyteorder("=") not in _READABLE:
            columns.append(Column(label, None, f"holds {dtype}, not float16/32/64"))
        elif len(shape) not in (2, 3):
            columns.append(
                Column(
                    label,
                    None,
                    f"is {len(shape)}-D {shape}; geonorm reads 2-D (rows, d) and 3-D "
                    f"(sequences, positions, d)",
                )
            )
        elif shape[-1] < 1:
            columns.append(Column(label, None, f"has shape {shape}: d must be >= 1"))
        else:
            columns.append(Column(label, ConcatShard(path, [ZarrShard(path, name, shape, dtype)])))
    return columns, {"files": 1, "store": f"zarr v{fmt}" if fmt else "zarr"}
