"""The rows of a norm site on disk: shards of row vectors, and the site that pairs them.

A :class:`Shard` is a run of ``rows`` vectors of ``d`` components in one file, read a
block of rows at a time (memory maps of just that range for plain files, streamed
for compressed ``.npz`` members, whole for the rare array that must be copied).  An
:class:`ActivationSite` pairs a site's input ("hidden") and output ("post") shards
with the gain, bias and eps its LN-RMS gap (G9) uses.  Every reader -- geonorm dumps
(:mod:`.manifest`), foreign array files (:mod:`.formats`) and the Dask path -- hands
the analysis these two types.
"""
from __future__ import annotations

import mmap
import os
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..analysis.accumulate import QUANTITY_NAMES, SiteStats
from ..analysis.measure import quantity_names, token_values
from .verify import VerifiedFiles

__all__ = ["DEFAULT_BLOCK_BYTES", "DEFAULT_EPS", "HIDDEN_QUANTITIES", "ActivationSite", "ArrayShard",
           "DumpError", "FileShard", "Shard", "StreamShard"]

#: The quantities of a site with no post-norm vectors (measure.token_values' hidden side).
HIDDEN_QUANTITIES = quantity_names(False)

#: eps of the LN-RMS gap (G9) where the source does not say (torch's LayerNorm default).
DEFAULT_EPS = 1e-5

#: Bytes of hidden + post rows per block.  Each block costs ~100 us of Python, call overhead and
#: mapping (two maps, one kernel call, the unmaps); measured on SmolLM2-shaped fp32 rows (2 cores),
#: 256 KiB blocks ran at 0.3x the speed of 16 MiB ones, 1 MiB at 0.5x, 4 MiB at 0.8x; 8-64 MiB are
#: level.  32 MiB holds a whole shard of the dumps geonorm writes for models up to d = 2048 (fp32),
#: so a shard is one block.  Resident memory is a few blocks.
DEFAULT_BLOCK_BYTES = 32 << 20

_PAGE = mmap.ALLOCATIONGRANULARITY
_CRC_CHUNK = 8 << 20
_SEQUENTIAL = getattr(mmap, "MADV_SEQUENTIAL", None)


class DumpError(ValueError):
    """A source that cannot be analyzed as a whole; ``path`` names the file, ``problem`` says why."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple:  # picklable, so a Dask worker's error reaches the client whole
        return (type(self), (self.path, self.problem))


# ---------------------------------------------------------------------------------------- shards


class Shard:
    """One ``(rows, d)`` array of hidden (or post-norm) vectors on disk.

    Attributes
    ----------
    path : the file.
    rows, d : its shape as rows of d components (leading axes flattened).
    dtype : the element type (``ml_dtypes.bfloat16`` for BF16).
    sha256 : the digest the whole file must still be checked against (geonorm dumps), else None (no
        digest, ``verify="size"``, or a file the record says was hashed to it before).
    segments : row counts of the blocks the live analysis fed its accumulators with (geonorm
        dumps), so a replay gives bitwise the same moments; None for other sources.
    """

    path: Path
    rows: int
    d: int
    dtype: np.dtype
    sha256: str | None = None
    segments: tuple[int, ...] | None = None

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as a ``(stop - start, d)`` array, without a copy where the format allows."""
        raise NotImplementedError

    def prefetch(self, start: int, stop: int) -> None:
        """Ask the OS to start reading rows ``[start, stop)`` (a no-op where it cannot help)."""

    def release(self) -> None:
        """Drop whatever the shard keeps open between reads (called when a shard is done)."""

    @property
    def nbytes(self) -> int:
        return self.rows * self.d * self.dtype.itemsize

    def units(self, block_rows: int) -> list[tuple[int, int]]:
        """The row ranges :func:`analyze_dump` feeds to ``SiteStats.update`` one by one (the Dask
        path replays the same ones): the recorded ``segments`` (so a dump's report is the live one
        bitwise), the whole shard when it has a digest to wait for, else blocks of ``block_rows``."""
        if self.segments is not None:
            ends = np.cumsum(self.segments).tolist()
            return list(zip([0, *ends[:-1]], ends))
        if self.sha256 is not None:
            return [(0, self.rows)]
        return [(a, min(a + block_rows, self.rows)) for a in range(0, self.rows, block_rows)]

    def _check_range(self, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= self.rows:
            raise IndexError(f"{self.path}: rows [{start}, {stop}) outside [0, {self.rows})")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, rows={self.rows}, d={self.d}, "
                f"dtype={self.dtype.name})")


class FileShard(Shard):
    """C-ordered rows at a byte offset of a file (``.npy``, stored ``.npz`` members, safetensors).

    Each :meth:`read` maps just the block it returns, so resident memory is the
    blocks alive, not the file; the map is released with the array.
    """

    def __init__(self, path: str | os.PathLike, offset: int, rows: int, d: int, dtype: np.dtype, *,
                 sha256: str | None = None, segments: Sequence[int] | None = None,
                 record: VerifiedFiles | None = None, crc: tuple[int, int, int, str] | None = None) -> None:
        """``record``: where a digest check of the file is remembered (:mod:`geonorm_core.dumps.verify`);
        ``crc``: ``(start, length, crc32, what)``, a byte range whose CRC-32 must match before
        the first rows are returned (a stored ``.npz`` member)."""
        self.path, self.offset, self.rows, self.d = Path(path), int(offset), int(rows), int(d)
        self.dtype = np.dtype(dtype)
        self.sha256 = sha256
        self.record = record
        self.segments = None if segments is None else tuple(int(s) for s in segments)
        self.crc = crc

    def read(self, start: int, stop: int) -> np.ndarray:
        self._check_range(start, stop)
        n = stop - start
        if n == 0:
            return np.empty((0, self.d), self.dtype)
        row = self.d * self.dtype.itemsize
        lo = self.offset + start * row
        hi = lo + n * row
        base = lo - lo % _PAGE
        fd = _open_regular_fd(self.path)
        try:
            if self.crc is not None:
                _check_crc(fd, self.path, *self.crc)
                self.crc = None  # checked: the rows may count
            size = os.fstat(fd).st_size
            if size < hi:  # mapping past the end would crash on access (SIGBUS), not raise
                raise DumpError(self.path, f"truncated: rows [{start}, {stop}) need {hi} bytes, the file now "
                                           f"holds {size}")
            mm = mmap.mmap(fd, hi - base, offset=base, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        if _SEQUENTIAL is not None:  # the kernels read it in order: aggressive read-ahead on faults
            mm.madvise(_SEQUENTIAL)
        return np.frombuffer(mm, self.dtype, count=n * self.d, offset=lo - base).reshape(n, self.d)

    def prefetch(self, start: int, stop: int) -> None:
        row = self.d * self.dtype.itemsize
        if stop <= start:
            return
        try:
            fd = _open_regular_fd(self.path)
        except DumpError:
            return
        try:
            lo, n = self.offset + start * row, (stop - start) * row
            if not _cached(fd, lo + n - 1):  # WILLNEED walks the range even when it is all cached
                os.posix_fadvise(fd, lo, n, os.POSIX_FADV_WILLNEED)
        except (OSError, AttributeError):
            pass
        finally:
            os.close(fd)


def _open_regular_fd(path: Path) -> int:
    """A read-only descriptor of a regular file, opened without blocking (a FIFO swapped in for a
    shard cannot hang the reader); anything else is a DumpError."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise DumpError(path, f"cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DumpError(path, "is not a regular file: geonorm reads only regular files")
    return fd


def _check_crc(fd: int, path: Path, start: int, length: int, want: int, what: str) -> None:
    """Check the CRC-32 of bytes [start, start + length) of a file (what zipfile checks on inflating)."""
    crc, pos, end = 0, start, start + length
    while pos < end:
        chunk = os.pread(fd, min(_CRC_CHUNK, end - pos), pos)
        if not chunk:
            raise DumpError(path, f"{what} is truncated: {end - pos} bytes missing")
        crc = zlib.crc32(chunk, crc)
        pos += len(chunk)
    if crc != want:
        raise DumpError(path, f"{what}: bad CRC-32 ({crc:08x}, the zip says {want:08x}): the data is corrupt")


def _cached(fd: int, offset: int) -> bool:
    """Whether the page holding byte ``offset`` is in the page cache (a 1-byte read that may not wait).

    Asked of a range's last byte: files are read, and cached, front to back, so a cached last
    page almost always means a cached range; where it does not, the kernels' faults read it."""
    try:
        return os.preadv(fd, [bytearray(1)], offset, os.RWF_NOWAIT) == 1
    except (OSError, AttributeError):  # EAGAIN: not cached; no RWF_NOWAIT on this OS or file system
        return False


def load_torch(path: Path, key: str | None) -> Any:
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return obj if key is None else obj[key]


class ArrayShard(Shard):
    """Rows of an array another library opens for us: Fortran-ordered ``.npy`` (copied to C order),
    ``.pt`` files whose storages cannot be located in the file.

    The array is opened lazily in the process that reads it (so the shard pickles small, for
    Dask) and dropped by :meth:`release`; while it is open, the pages read stay resident.
    """

    def __init__(self, path: Path, rows: int, d: int, dtype: np.dtype, opener: Callable[[], Any]) -> None:
        self.path, self.rows, self.d, self.dtype = Path(path), int(rows), int(d), np.dtype(dtype)
        self._opener = opener
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    def _rows(self) -> np.ndarray:
        if self._array is None:
            from .. import _arrays

            a = _arrays.as_array(self._opener(), str(self.path))
            self._array = a.reshape(self.rows, self.d)  # a view: C order was checked at open time
        return self._array

    def read(self, start: int, stop: int) -> np.ndarray:
        self._check_range(start, stop)
        return self._rows()[start:stop]

    def release(self) -> None:
        self._array = None


class StreamShard(Shard):
    """Rows of a compressed ``.npz`` member, inflated sequentially (memory: one block).

    Reading forward is streaming; going back restarts the inflation from the member's start.
    """

    def __init__(self, path: Path, member: str, header_bytes: int, rows: int, d: int,
                 dtype: np.dtype) -> None:
        self.path, self.member, self.header_bytes = Path(path), member, int(header_bytes)
        self.rows, self.d, self.dtype = int(rows), int(d), np.dtype(dtype)
        self._zip: zipfile.ZipFile | None = None
        self._f: Any = None
        self._pos = 0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None, "_f": None, "_pos": 0}

    def read(self, start: int, stop: int) -> np.ndarray:
        self._check_range(start, stop)
        row = self.d * self.dtype.itemsize
        if self._f is None or start < self._pos:
            self.release()
            self._zip = zipfile.ZipFile(os.fdopen(_open_regular_fd(self.path), "rb"))
            self._f = self._zip.open(self.member)
            self._f.seek(self.header_bytes)
            self._pos = 0
        if start > self._pos:
            self._f.seek(self.header_bytes + start * row)
        out = np.empty((stop - start, self.d), self.dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        got = 0
        try:
            while got < len(view):
                n = self._f.readinto(view[got:])
                if not n:
                    break
                got += n
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
            raise DumpError(self.path, f"member {self.member!r} cannot be inflated: {exc}") from None
        if got < len(view):
            raise DumpError(self.path, f"member {self.member!r} is truncated: rows [{start}, {stop}) need "
                                       f"{len(view)} bytes, got {got}")
        self._pos = stop
        return out

    def release(self) -> None:
        if self._f is not None:
            self._f.close()
            self._zip.close()
        self._f = self._zip = None


# ---------------------------------------------------------------------------------------- sites


@dataclass
class ActivationSite:
    """The rows of one norm site: its input ("hidden") and, where known, its output ("post").

    Attributes
    ----------
    name : the site's name (the module name for geonorm dumps, the file or key otherwise).
    meta : the site's metadata as :class:`~geonorm_core.analysis.accumulate.SiteStats` keeps it (for geonorm
        dumps ``NormSite.to_dict()``: name, layer, role, kind, d, eps, ...).
    hidden : the input rows, shard by shard.
    post : the output rows, row-aligned with ``hidden`` shard by shard; None when unknown.
    gain, bias : the site's per-dimension LayerNorm/RMSNorm parameters (float32), None when unknown
        (the LN-RMS gap then uses unit gain, no bias).
    eps : the eps the gap (G9) uses.
    report_meta : metadata of the whole source (model, settings), the ``Report.meta`` it gives.
    """

    name: str
    meta: dict
    hidden: list[Shard]
    post: list[Shard] | None = None
    gain: np.ndarray | None = None
    bias: np.ndarray | None = None
    eps: float = DEFAULT_EPS
    report_meta: dict = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.hidden)

    @property
    def d(self) -> int:
        return self.hidden[0].d

    @property
    def quantities(self) -> tuple[str, ...]:
        """The quantities this site has: all of them with post-norm rows, the hidden side without."""
        return QUANTITY_NAMES if self.post is not None else HIDDEN_QUANTITIES

    def default_block_rows(self) -> int:
        """Rows per block when none is given: about ``DEFAULT_BLOCK_BYTES`` of hidden + post rows."""
        row = self.d * self.hidden[0].dtype.itemsize * (2 if self.post is not None else 1)
        return max(16, DEFAULT_BLOCK_BYTES // max(1, row))

    def new_stats(self, bins: int = 180) -> SiteStats:
        """Empty accumulators for this site (what :func:`analyze_dump` and the Dask path fill)."""
        return SiteStats(self.meta, bins=bins, names=self.quantities)

    def token_values(self, hidden: Any, post: Any, *, num_threads: int | None = None,
                     out: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """:func:`geonorm_core.analysis.measure.token_values` with this site's gain, bias and eps."""
        return token_values(hidden, post, gain=self.gain, bias=self.bias, eps=self.eps,
                            num_threads=num_threads, out=out)

    def block_values(self, hs: Shard, ps: Shard | None, start: int, stop: int, *,
                     num_threads: int | None = None, out: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """:meth:`token_values` of rows ``[start, stop)`` of a hidden shard (and its post shard).

        A shard stored in pieces (a store's record batches: ``hs.spans``) is computed piece by
        piece into one result, so a block that crosses pieces is never copied; the values are
        per row, so they are the same bits either way.
        """
        spans = hs.spans(start, stop) if ps is None and hasattr(hs, "spans") else [(start, stop)]
        if len(spans) == 1:
            h = hs.read(start, stop)
            p = ps.read(start, stop) if ps is not None else None
            return self.token_values(h, p, num_threads=num_threads, out=out)  # the maps go with h and p
        names = quantity_names(False)
        if out is None:
            out = np.empty((len(names), stop - start), np.float64)
        for a, b in spans:
            self.token_values(hs.read(a, b), None, num_threads=num_threads, out=out[:, a - start:b - start])
        return {q: out[i] for i, q in enumerate(names)}


