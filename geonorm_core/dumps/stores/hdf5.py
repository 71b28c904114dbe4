"""HDF5 stores: every float dataset of 2 or 3 dimensions of an ``.h5``/``.hdf5`` file is a site.

A dataset stored contiguously and uncompressed is memory-mapped a block at a time from its byte
offset in the file (:class:`~.shards.FileShard`, as geonorm's own dumps); a chunked or compressed
one is read through h5py a block of rows at a time, so HDF5 decompresses only the chunks a block
touches.  A 3-D dataset ``(sequences, positions, d)`` is rows of ``d``.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..formats import _READABLE
from ..shards import DumpError, FileShard, Shard
from .columns import Column, ConcatShard, natural_key, need, release_freed_blocks

__all__ = ["Hdf5Shard", "hdf5_columns"]

#: HDF5's chunk cache while a dataset is read (its default is 1 MiB, less than one chunk of most
#: activation datasets): the chunk a block ends in is then decoded once, not once per block.
_CHUNK_CACHE = 64 << 20
_CHUNK_SLOTS = 10007


class Hdf5Shard(Shard):
    """Rows of a chunked (or compressed) HDF5 dataset, read through h5py; the file is opened lazily
    in the process that reads (so the shard pickles small, for Dask) and closed by :meth:`release`."""

    def __init__(self, path: Path, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.name, self.shape = Path(path), name, tuple(int(s) for s in shape)
        self.d = self.shape[-1]
        self.per = math.prod(self.shape[1:-1])  # rows per index of the first axis
        self.rows, self.dtype = self.shape[0] * self.per, np.dtype(dtype).newbyteorder("=")
        self._file: Any = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}

    def read(self, start: int, stop: int) -> np.ndarray:
        self._check_range(start, stop)
        if start == stop:
            return np.empty((0, self.d), self.dtype)
        h5py = need("h5py", "HDF5 files")
        a, b = start // self.per, -(-stop // self.per)
        try:
            if self._file is None:
                release_freed_blocks()
                self._file = h5py.File(self.path, "r", rdcc_nbytes=_CHUNK_CACHE, rdcc_nslots=_CHUNK_SLOTS)
            block = self._file[self.name][a:b]
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            self.release()
            raise DumpError(self.path, f"dataset {self.name!r}, rows [{start}, {stop}) cannot be read: "
                                       f"{exc}") from None
        rows = block.reshape(-1, self.d)[start - a * self.per:stop - a * self.per]
        return rows.astype(self.dtype, copy=False)

    def prefetch(self, start: int, stop: int) -> None:
        """Ask the OS to read the chunks rows ``[start, stop)`` lie in (they are read one by one, and
        synchronously, by HDF5: without this a cold chunked dataset waits on every chunk)."""
        if start >= stop:
            return
        try:
            if self._file is None:
                self._file = need("h5py", "HDF5 files").File(self.path, "r", rdcc_nbytes=_CHUNK_CACHE,
                                                              rdcc_nslots=_CHUNK_SLOTS)
            ds = self._file[self.name]
            if ds.chunks is None:
                return
            step = ds.chunks[0]
            fd = os.open(self.path, os.O_RDONLY)
            try:
                for c in range(start // self.per // step, (stop - 1) // self.per // step + 1):
                    info = ds.id.get_chunk_info_by_coord((c * step,) + (0,) * (len(self.shape) - 1))
                    if info.byte_offset is not None:
                        os.posix_fadvise(fd, info.byte_offset, info.size, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)
        except Exception:  # noqa: BLE001 -- a hint only: the read that follows reports any problem
            return

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None


def hdf5_columns(path: Path) -> tuple[list[Column], dict]:
    """The datasets of an HDF5 file, by path in file order; float 2-D/3-D ones as shards."""
    h5py = need("h5py", "HDF5 files")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DumpError(path, f"is not a readable HDF5 file (truncated or corrupt?): {exc}") from None
    columns: list[Column] = []
    size = os.path.getsize(path)
    try:
        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                columns.append(_column(path, name, obj, size))

        f.visititems(visit)
    except (OSError, RuntimeError, KeyError) as exc:
        raise DumpError(path, f"cannot be walked (truncated or corrupt?): {exc}") from None
    finally:
        f.close()
    return sorted(columns, key=lambda c: natural_key(c.name)), {"files": 1, "store": "hdf5"}


def _column(path: Path, name: str, ds: Any, size: int) -> Column:
    dtype, shape = ds.dtype, tuple(ds.shape)
    if dtype.kind != "f" or dtype.newbyteorder("=") not in _READABLE:
        return Column(name, None, f"holds {dtype}, not float16/32/64")
    if len(shape) not in (2, 3):
        return Column(name, None, f"is {len(shape)}-D {shape}; geonorm reads 2-D (rows, d) and 3-D "
                                  f"(sequences, positions, d)")
    if shape[-1] < 1:
        return Column(name, None, f"has shape {shape}: d must be >= 1")
    rows, d = math.prod(shape[:-1]), shape[-1]
    offset = ds.id.get_offset() if ds.chunks is None and ds.compression is None else None
    if offset is not None and dtype.isnative:
        end = offset + rows * d * dtype.itemsize
        if end > size:
            raise DumpError(path, f"truncated: dataset {name!r} ends at byte {end}, the file has {size}")
        shard: Shard = FileShard(path, offset, rows, d, dtype)
    elif ds.chunks is None and ds.compression is None and ds.size and offset is None:
        # contiguous but never written: HDF5 would return its fill value for every row
        return Column(name, None, "was never written (no data in the file)")
    else:
        shard = Hdf5Shard(path, name, shape, dtype)
    return Column(name, ConcatShard(path, [shard]))
