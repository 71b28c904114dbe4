"""Hidden states on disk: a source-neutral view of them, and the analysis that streams them.

The paper (SCIENCE.md §2) measured its angles with **1**, norms and rotations on
activations dumped to disk.  This module reads such dumps -- geonorm's own
(:mod:`geonorm_core.dumping`) and the arrays users already have -- as *norm sites*
of row vectors, and reduces them through the same per-token quantities as the
live analysis (:func:`geonorm_core.measure.token_values`) into the same
:class:`~geonorm_core.report.Report`.

Sources
-------
=======================  ======================================================================
geonorm dump             a folder with ``manifest.json`` (or the manifest itself): every site,
                         its "hidden" (input) and "post" (output) rows, gain, bias and eps
``.npy``                 one array, memory-mapped
``.npz``                 stored members are memory-mapped, compressed ones streamed
``.safetensors``         header parsed here, tensors memory-mapped; F64, F32, F16, BF16
``.pt`` / ``.pth``       ``torch.load(weights_only=True, mmap=True)``: a tensor or a dict of them
a folder of such files   sorted by name (numbers compared as numbers), concatenated per key
=======================  ======================================================================

An array of shape ``(..., d)`` is ``prod(...)`` rows of d components (a 3-D
``(batch, seq, d)`` is fine).  A file holding ``"hidden"`` (and optionally
``"post"``) is one site with both sides; a file with one array is one site; a
file with several other arrays is one site per key.  Foreign sources carry no
gain or bias: the LN-RMS gap (G9) is taken with unit gain, no bias and
``eps = 1e-5``, and without "post" only the hidden-side quantities
(angle_hidden, norm_hidden, max_abs_hidden, ln_rms_gap) are reported.

Verification
------------
Nothing is analyzed as if it were whole.  :func:`open_activations` checks,
before a single row is read, everything that costs no full read: each shard's
size and safetensors header against the manifest (rows, d, dtype, byte
ranges), the shapes and dtypes of foreign arrays, and that the dump finished.

``verify="sha256"`` (the default) also checks every shard file of a geonorm
dump against the manifest's sha256.  Helper threads hash each file once,
sequentially, a few shards ahead of the computation -- so the hash doubles as
the read-ahead -- while the main thread computes on the shard before.  A
shard's per-token values (56 bytes a token, against its 2 d itemsize bytes of
vectors) are staged and folded into the site's statistics only after its
digest matched: a corrupt shard raises :class:`DumpError` naming it, and
nothing of it has been counted.  sha256 costs ~0.5 s of CPU per GB, several
times the analysis when the files come from the page cache, so a file that
hashed right is recorded with its identity and change times
(:mod:`geonorm_core.digests`, as git's index does) and trusted while it stays
unchanged; ``verify="rehash"`` hashes every shard again.  ``verify="size"``
skips the digests and still catches truncation, a manifest that disagrees with
a shard, unknown dtypes and shapes -- everything but bytes changed in place.
Foreign files carry no digest: for them the three are the same.

The staged values are also replayed into the accumulators in the blocks the
live hooks fed them (the manifest records those row counts), so a dump's report
is *bitwise* the report :func:`geonorm_core.adapter.analyze` gives on the same
batches.

Memory
------
Rows are read through memory maps of one block at a time (``block_rows``,
default ~32 MiB of rows), released when the block is done, so the resident set
is a few blocks plus one shard's staged values, whatever the size of the dump
(benchmarks/dump_read.py: 55 MB peak for a 1 GB and an 8 GB dump).  ``.pt``
tensors are located in the file and read the same way; a Fortran-ordered
``.npy`` is copied to C order whole, and compressed ``.npz`` members are
inflated a block at a time.
"""
from __future__ import annotations

import concurrent.futures
import json
import math
import mmap
import os
import re
import struct
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import ml_dtypes
import numpy as np

from .accumulate import QUANTITY_NAMES, SiteStats
from .digests import VerifiedFiles, file_sha256, hash_file
from .measure import quantity_names, token_values
from .report import Report
from .runtime import get_num_threads

__all__ = [
    "DEFAULT_BLOCK_BYTES",
    "DEFAULT_EPS",
    "DUMP_FORMAT",
    "DUMP_VERSION",
    "HIDDEN_QUANTITIES",
    "MANIFEST_NAME",
    "PREFETCH_BYTES",
    "SAFETENSORS_DTYPES",
    "VERIFY_MODES",
    "ActivationSite",
    "ArrayShard",
    "DumpError",
    "FileShard",
    "Shard",
    "StreamShard",
    "analyze_dump",
    "analyze_shard",
    "file_sha256",
    "open_activations",
    "read_manifest",
    "read_safetensors_header",
]

MANIFEST_NAME = "manifest.json"
DUMP_FORMAT = "geonorm-dump"
DUMP_VERSION = 1

#: How much of a geonorm dump is checked before its rows count (see :func:`open_activations`).
VERIFY_MODES = ("sha256", "rehash", "size")

#: safetensors dtype codes geonorm reads and writes (little-endian on disk).
SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}
_READABLE = (np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))

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

#: How far ahead of the computation the OS is asked to read (posix_fadvise WILLNEED) when no
#: hashing pass reads ahead: enough to keep a disk's queue busy across a block's compute.
PREFETCH_BYTES = 64 << 20

_MAX_HEADER = 100 << 20  # the safetensors library's own limit on the JSON header
_ARRAY_SUFFIXES = (".npy", ".npz", ".safetensors", ".pt", ".pth")
_HASH_CHUNK = 8 << 20
_PAGE = mmap.ALLOCATIONGRANULARITY
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
                 record: VerifiedFiles | None = None) -> None:
        """``record``: where a digest check of the file is remembered (:mod:`geonorm_core.digests`)."""
        self.path, self.offset, self.rows, self.d = Path(path), int(offset), int(rows), int(d)
        self.dtype = np.dtype(dtype)
        self.sha256 = sha256
        self.record = record
        self.segments = None if segments is None else tuple(int(s) for s in segments)

    def read(self, start: int, stop: int) -> np.ndarray:
        self._check_range(start, stop)
        n = stop - start
        if n == 0:
            return np.empty((0, self.d), self.dtype)
        row = self.d * self.dtype.itemsize
        lo = self.offset + start * row
        hi = lo + n * row
        base = lo - lo % _PAGE
        fd = os.open(self.path, os.O_RDONLY)
        try:
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
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            lo, n = self.offset + start * row, (stop - start) * row
            if not _cached(fd, lo + n - 1):  # WILLNEED walks the range even when it is all cached
                os.posix_fadvise(fd, lo, n, os.POSIX_FADV_WILLNEED)
        except (OSError, AttributeError):
            pass
        finally:
            os.close(fd)


def _cached(fd: int, offset: int) -> bool:
    """Whether the page holding byte ``offset`` is in the page cache (a 1-byte read that may not wait).

    Asked of a range's last byte: files are read, and cached, front to back, so a cached last
    page almost always means a cached range; where it does not, the kernels' faults read it."""
    try:
        return os.preadv(fd, [bytearray(1)], offset, os.RWF_NOWAIT) == 1
    except (OSError, AttributeError):  # EAGAIN: not cached; no RWF_NOWAIT on this OS or file system
        return False


def _load_torch(path: Path, key: str | None) -> Any:
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
            from . import _arrays

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
            self._zip = zipfile.ZipFile(self.path)
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
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
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
    meta : the site's metadata as :class:`~geonorm_core.accumulate.SiteStats` keeps it (for geonorm
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
        """:func:`geonorm_core.measure.token_values` with this site's gain, bias and eps."""
        return token_values(hidden, post, gain=self.gain, bias=self.bias, eps=self.eps,
                            num_threads=num_threads, out=out)


# ---------------------------------------------------------------------------------------- opening


def open_activations(path: str | os.PathLike, *, verify: str = "sha256", partial: bool = False
                     ) -> list[ActivationSite]:
    """Open a dump or array file(s) as norm sites, checking all that needs no full read.

    Parameters
    ----------
    path : a geonorm dump folder (or its ``manifest.json``), a ``.npy``, ``.npz``, ``.safetensors``,
        ``.pt`` file, or a folder of such files (concatenated in name order).
    verify : ``"sha256"`` (default): shards carry the manifest's digests, which
        :func:`analyze_dump` checks before counting a shard, except for files hashed to the same
        digest before and unchanged since (:mod:`geonorm_core.digests`); ``"rehash"``: every shard
        is hashed; ``"size"``: headers, sizes and shapes only.  Foreign sources have no digests, so
        the three are the same for them.
    partial : accept a geonorm dump that was interrupted (only the batches written are read).

    Raises
    ------
    DumpError
        (a ValueError) naming the file and the problem: missing or truncated file, a shard whose
        header disagrees with the manifest, an unknown dtype, shapes that do not fit together.
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {', '.join(map(repr, VERIFY_MODES))}, got {verify!r}")
    p = Path(path)
    if not p.exists():
        raise DumpError(p, "no such file or folder")
    if p.is_dir() and (p / MANIFEST_NAME).is_file():
        return _open_dump(p / MANIFEST_NAME, verify, partial)
    if p.is_file() and p.name == MANIFEST_NAME:
        return _open_dump(p, verify, partial)
    if p.is_dir():
        files = sorted((f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                        and f.suffix.lower() in _ARRAY_SUFFIXES), key=_natural_key)
        if not files:
            raise DumpError(p, f"no geonorm manifest and no array files ({', '.join(_ARRAY_SUFFIXES)}) here")
        return _open_foreign(p, files)
    if p.suffix.lower() not in _ARRAY_SUFFIXES:
        raise DumpError(p, f"unknown file type {p.suffix!r}; geonorm reads {', '.join(_ARRAY_SUFFIXES)} "
                           f"files, folders of them, and geonorm dumps")
    return _open_foreign(p, [p])


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


# -- geonorm dumps


def read_manifest(path: str | os.PathLike) -> dict:
    """The JSON manifest of a geonorm dump, with its format checked."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            man = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DumpError(path, f"cannot read the manifest: {exc}") from None
    fmt = man.get("format") if isinstance(man, dict) else None
    if fmt != DUMP_FORMAT:
        raise DumpError(path, f"not a geonorm dump manifest (format {fmt!r})")
    if man.get("version") != DUMP_VERSION:
        raise DumpError(path, f"dump format version {man.get('version')!r}; this geonorm reads "
                              f"{DUMP_VERSION}")
    return man


def _open_dump(manifest: Path, verify: str, partial: bool) -> list[ActivationSite]:
    man = read_manifest(manifest)
    root = manifest.parent
    if not man.get("complete") and not partial:
        raise DumpError(manifest, f"the dump is incomplete (interrupted after {man.get('batches_done', 0)} "
                                  f"batches): finish it with `geonorm dump --resume`, or pass partial=True "
                                  f"(--partial) to analyze the batches written")
    record = VerifiedFiles(root) if verify != "size" else None
    params = _read_params(root, man.get("params"), verify, record)
    report_meta = {**man.get("report_meta", {}), "source": str(root)}
    sites = []
    for entry in man.get("sites", []):
        try:
            name, meta, shards = entry["name"], entry["meta"], entry["shards"]
        except (KeyError, TypeError):
            raise DumpError(manifest, f"malformed site entry {str(entry)[:120]}") from None
        d = int(meta["d"])
        hidden, post = [], []
        for sh in shards:
            h, p_ = _open_dump_shard(root, sh, d, verify, record)
            hidden.append(h)
            post.append(p_)
        if sum(s.rows for s in hidden) != int(entry.get("rows", -1)):
            raise DumpError(manifest, f"site {name}: manifest says {entry.get('rows')} rows, its shards list "
                                      f"{sum(s.rows for s in hidden)}")
        gain = params.get(entry.get("gain")) if entry.get("gain") else None
        bias = params.get(entry.get("bias")) if entry.get("bias") else None
        for what, v in (("gain", gain), ("bias", bias)):
            if v is not None and v.shape != (d,):
                raise DumpError(root / man["params"]["file"],
                                f"site {name}: {what} has shape {v.shape}, d={d}")
        if not hidden:
            continue  # nothing written for this site (yet)
        sites.append(ActivationSite(name=name, meta=meta, hidden=hidden, post=post, gain=gain, bias=bias,
                                    eps=float(meta.get("eps", DEFAULT_EPS)), report_meta=report_meta))
    if not sites:
        raise DumpError(manifest, "the dump holds no rows")
    return sites


def _read_params(root: Path, entry: dict | None, verify: str, record: VerifiedFiles | None
                 ) -> dict[str, np.ndarray]:
    if not entry:
        return {}
    path = root / entry["file"]
    if not path.is_file():
        raise DumpError(path, "missing (the sites' gains and biases)")
    if path.stat().st_size != entry.get("bytes"):
        raise DumpError(path, f"size {path.stat().st_size} bytes, the manifest says {entry.get('bytes')}")
    if _must_hash(path, entry.get("sha256"), verify, record):
        digest, identity = hash_file(path)
        if digest != entry.get("sha256"):
            raise DumpError(path, "sha256 does not match the manifest (the gains and biases are corrupt)")
        record.add(path, identity, digest)
    header, start = read_safetensors_header(path)
    return {key: np.fromfile(path, dtype=t["dtype"], count=_prod(t["shape"]),
                             offset=start + t["data_offsets"][0]).reshape(t["shape"]).astype(np.float32)
            for key, t in header.items()}


def _must_hash(path: Path, digest: str | None, verify: str, record: VerifiedFiles | None) -> bool:
    """Whether ``path`` has to be hashed: a digest to check, and no record that it already was."""
    return record is not None and (verify == "rehash" or not record.known(path, digest or ""))


def _open_dump_shard(root: Path, sh: dict, d: int, verify: str, record: VerifiedFiles | None
                     ) -> tuple[FileShard, FileShard]:
    try:
        path = root / sh["file"]
        rows, size, dtypes = int(sh["rows"]), int(sh["bytes"]), sh["dtype"]
    except (KeyError, TypeError, ValueError):
        raise DumpError(root / MANIFEST_NAME, f"malformed shard entry {str(sh)[:120]}") from None
    if not path.is_file():
        raise DumpError(path, "missing: the manifest lists it")
    actual = path.stat().st_size
    if actual != size:
        raise DumpError(path, f"truncated or altered: {actual} bytes, the manifest says {size}")
    header, start = read_safetensors_header(path)
    hashing = _must_hash(path, sh.get("sha256"), verify, record)
    out = []
    for key in ("hidden", "post"):
        t = header.get(key)
        if t is None:
            raise DumpError(path, f"has no {key!r} tensor (it holds {sorted(header)})")
        want = dtypes.get(key) if isinstance(dtypes, dict) else None
        if t["code"] != want:
            raise DumpError(path, f"{key} is {t['code']} but the manifest says {want}")
        if list(t["shape"]) != [rows, d]:
            raise DumpError(path, f"{key} has shape {t['shape']} but the manifest says ({rows}, {d})")
        out.append(FileShard(path, start + t["data_offsets"][0], rows, d, t["dtype"],
                             sha256=sh.get("sha256") if hashing else None, segments=sh.get("segments"),
                             record=record))
    if start + max(header[k]["data_offsets"][1] for k in header) != size:
        raise DumpError(path, "its header does not account for every byte of the file")
    segs = out[0].segments
    if segs is not None and (sum(segs) != rows or any(s <= 0 for s in segs)):
        raise DumpError(root / MANIFEST_NAME, f"{sh['file']}: segments {list(segs)[:8]}... do not add up to "
                                              f"its {rows} rows")
    return out[0], out[1]


# -- safetensors


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, dict], int]:
    """Parse a safetensors header: ({name: {dtype, code, shape, data_offsets}}, data start).

    Format: an 8-byte little-endian header length n, n bytes of JSON (padded with spaces),
    then the tensors' bytes; ``data_offsets`` are relative to the end of the header.  Checks
    that every dtype is one geonorm reads (:data:`SAFETENSORS_DTYPES`), that each byte range
    holds its shape, and that the file is long enough.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise DumpError(path, f"truncated: {size} bytes, not even a safetensors header length")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise DumpError(path, f"truncated or not safetensors: header length {n}, file size {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DumpError(path, f"safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise DumpError(path, "safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    start = 8 + n
    out = {}
    for key, t in header.items():
        try:
            code, shape, (b, e) = t["dtype"], [int(s) for s in t["shape"]], t["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise DumpError(path, f"tensor {key!r}: malformed header entry {t!r}") from None
        if code not in SAFETENSORS_DTYPES:
            raise DumpError(path, f"tensor {key!r} has dtype {code}; geonorm reads "
                                  f"{', '.join(SAFETENSORS_DTYPES)}")
        dtype = SAFETENSORS_DTYPES[code]
        if not (0 <= b <= e) or e - b != _prod(shape) * dtype.itemsize:
            raise DumpError(path, f"tensor {key!r}: byte range [{b}, {e}) does not hold shape {shape} "
                                  f"of {code}")
        if start + e > size:
            raise DumpError(path, f"truncated: tensor {key!r} ends at byte {start + e}, the file has {size}")
        out[key] = {"dtype": dtype, "code": code, "shape": shape, "data_offsets": [b, e]}
    return out, start


def _prod(shape: Iterable[int]) -> int:
    return math.prod(int(s) for s in shape)


# -- foreign arrays


@dataclass
class _Array:
    """One array of a foreign file, before it becomes a shard."""
    shape: tuple[int, ...]
    dtype: np.dtype
    make: Callable[[int, int], Shard]  # (rows, d) -> shard


def _open_foreign(root: Path, files: list[Path]) -> list[ActivationSite]:
    per_file = [(f, _arrays_of(f)) for f in files]
    keys = list(per_file[0][1])
    for f, arrays in per_file[1:]:
        if list(arrays) != keys:
            raise DumpError(f, f"holds arrays {list(arrays)}, but {per_file[0][0].name} holds {keys}: "
                               f"every file of a folder must hold the same arrays")
    # "hidden" (+ "post"): one site with both sides; else one site per array
    if "hidden" in keys and set(keys) <= {"hidden", "post"}:
        groups = [(root.stem if root.is_file() else root.name, "hidden", "post" if "post" in keys else None)]
    else:
        single = len(keys) == 1
        groups = [(root.stem if root.is_file() else root.name) if single else str(k) for k in keys]
        groups = [(name, k, None) for name, k in zip(groups, keys)]
    sites = []
    report_meta = {"model": root.name, "source": str(root), "format": "arrays", "files": len(files)}
    for name, hkey, pkey in groups:
        hidden, post, d = [], [] if pkey else None, None
        for f, arrays in per_file:
            h = arrays[hkey]
            rows, dd = _rows_d(f, hkey, h)
            if d is None:
                d = dd
            elif dd != d:
                raise DumpError(f, f"{_label(hkey)}has d={dd} (shape {h.shape}), the files before it d={d}")
            hidden.append(h.make(rows, d))
            if pkey:
                p = arrays[pkey]
                if p.shape != h.shape:
                    raise DumpError(f, f"'post' has shape {p.shape}, 'hidden' {h.shape}: rows must pair up")
                post.append(p.make(rows, d))
        meta = {"name": name, "layer": None, "role": None, "kind": "unknown", "d": d, "eps": DEFAULT_EPS,
                "has_gain": False, "has_bias": False, "source": str(root)}
        sites.append(ActivationSite(name=name, meta=meta, hidden=hidden, post=post, report_meta=report_meta))
    if not any(s.rows for s in sites):
        raise DumpError(root, "holds no rows")
    return sites


def _label(key: Any) -> str:
    return "" if key is None else f"{key!r} "


def _rows_d(f: Path, key: Any, a: _Array) -> tuple[int, int]:
    if len(a.shape) < 2:
        raise DumpError(f, f"{_label(key)}has shape {a.shape}: need rows of vectors, shape (..., d)")
    d = a.shape[-1]
    if d < 1:
        raise DumpError(f, f"{_label(key)}has shape {a.shape}: d must be >= 1")
    return _prod(a.shape[:-1]), d


def _check_dtype(f: Path, key: Any, dtype: np.dtype) -> np.dtype:
    if dtype.kind == "f" and dtype.newbyteorder("=") in _READABLE or dtype in _READABLE:
        return dtype
    hint = " (bfloat16 saved by NumPy is untyped; save it as safetensors)" if dtype.kind == "V" else ""
    raise DumpError(f, f"{_label(key)}has dtype {dtype}{hint}; geonorm reads float64, float32, float16, "
                       f"bfloat16")


def _arrays_of(f: Path) -> dict[Any, _Array]:
    suffix = f.suffix.lower()
    try:
        if suffix == ".npy":
            return {None: _npy_array(f)}
        if suffix == ".npz":
            return _npz_arrays(f)
        if suffix == ".safetensors":
            return _safetensors_arrays(f)
        return _torch_arrays(f)
    except DumpError:
        raise
    except Exception as exc:  # noqa: BLE001 -- any library's complaint about a broken file: name the file
        raise DumpError(f, f"cannot be read: {type(exc).__name__}: {exc}") from None


def _npy_header(fp: Any, f: Path, key: Any = None) -> tuple[tuple, bool, np.dtype]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        shape, fortran, dtype = np.lib.format._read_array_header(fp, version)
    if dtype.hasobject:
        raise DumpError(f, f"{_label(key)}holds Python objects, not numbers")
    return tuple(shape), bool(fortran), _check_dtype(f, key, dtype)


def _npy_array(f: Path) -> _Array:
    with open(f, "rb") as fp:
        shape, fortran, dtype = _npy_header(fp, f)
        offset = fp.tell()
    need = offset + _prod(shape) * dtype.itemsize
    size = f.stat().st_size
    if size < need:
        raise DumpError(f, f"truncated: shape {shape} of {dtype} needs {need} bytes, the file has {size}")
    if fortran and len(shape) > 1:
        return _Array(shape, dtype, lambda rows, d: ArrayShard(f, rows, d, dtype, _Opener(f, "npy-fortran")))
    return _Array(shape, dtype, lambda rows, d: FileShard(f, offset, rows, d, dtype))


def _npz_arrays(f: Path) -> dict[Any, _Array]:
    out = {}
    with zipfile.ZipFile(f) as z, open(f, "rb") as raw:
        for info in z.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[:-4]
            with z.open(info) as m:
                shape, fortran, dtype = _npy_header(m, f, key)
                hbytes = m.tell()
            nbytes = _prod(shape) * dtype.itemsize
            if info.file_size != hbytes + nbytes:
                raise DumpError(f, f"member {key!r} holds {info.file_size} bytes, its header says "
                                   f"{hbytes + nbytes}")
            if fortran and len(shape) > 1:
                raise DumpError(f, f"member {key!r} is Fortran-ordered: rows are not contiguous; "
                                   f"save np.ascontiguousarray(a)")
            if info.compress_type == zipfile.ZIP_STORED:
                raw.seek(info.header_offset)
                local = raw.read(30)
                if len(local) < 30 or local[:4] != b"PK\x03\x04":
                    raise DumpError(f, f"member {key!r}: bad local zip header")
                n_name, n_extra = struct.unpack("<HH", local[26:30])
                offset = info.header_offset + 30 + n_name + n_extra + hbytes
                if offset + nbytes > f.stat().st_size:
                    raise DumpError(f, f"truncated: member {key!r} ends past the end of the file")
                out[key] = _Array(shape, dtype,
                                  lambda rows, d, o=offset, t=dtype: FileShard(f, o, rows, d, t))
            else:
                out[key] = _Array(shape, dtype, lambda rows, d, k=info.filename, h=hbytes, t=dtype:
                                  StreamShard(f, k, h, rows, d, t))
    if not out:
        raise DumpError(f, "holds no .npy arrays")
    return out


def _safetensors_arrays(f: Path) -> dict[Any, _Array]:
    header, start = read_safetensors_header(f)
    if not header:
        raise DumpError(f, "holds no tensors")
    return {k: _Array(tuple(t["shape"]), t["dtype"],
                      lambda rows, d, o=start + t["data_offsets"][0], dt=t["dtype"]:
                      FileShard(f, o, rows, d, dt))
            for k, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])}


class _Opener:
    """A picklable way to (re)open an array in the process that reads it."""

    def __init__(self, path: Path, kind: str, key: str | None = None) -> None:
        self.path, self.kind, self.key = path, kind, key

    def __call__(self) -> Any:
        if self.kind == "npy-fortran":
            # the rows are not contiguous on disk: one copy
            return np.ascontiguousarray(np.load(self.path, mmap_mode="r"))
        return _load_torch(self.path, self.key)


def _torch_arrays(f: Path) -> dict[Any, _Array]:
    """The tensors of a ``.pt`` file, as byte ranges of the file where they can be located.

    ``torch.save`` writes a zip whose storages are uncompressed records ``<archive>/data/<n>``;
    ``torch.load(mmap=True)`` maps the file once and slices each storage out of that map, so
    the storages' addresses are in the same order as the records' file offsets.  Each tensor
    then becomes a :class:`FileShard` (block-wise maps, bounded memory, nothing torch-side to
    keep open), checked by comparing its first and last row with what torch loaded.
    """
    import torch

    dtypes = {torch.float64: np.dtype(np.float64), torch.float32: np.dtype(np.float32),
              torch.float16: np.dtype(np.float16), torch.bfloat16: np.dtype(ml_dtypes.bfloat16)}
    obj = _load_torch(f, None)
    items = {None: obj} if torch.is_tensor(obj) else obj
    if not isinstance(items, dict) or not items or not all(torch.is_tensor(v) for v in items.values()):
        raise DumpError(f, f"holds a {type(obj).__name__}; geonorm reads a tensor or a dict of tensors")
    for key, t in items.items():
        if t.dtype not in dtypes:
            raise DumpError(f, f"{_label(key)}has dtype {t.dtype}; geonorm reads float64, float32, float16, "
                               f"bfloat16")
        if not t.is_contiguous():
            raise DumpError(f, f"{_label(key)}is not contiguous; save t.contiguous()")
    offsets = _torch_offsets(f, items, dtypes)
    out = {}
    for key, t in items.items():
        dtype = dtypes[t.dtype]
        if key in offsets:
            out[key] = _Array(tuple(t.shape), dtype,
                              lambda rows, d, o=offsets[key], dt=dtype: FileShard(f, o, rows, d, dt))
        else:
            out[key] = _Array(tuple(t.shape), dtype,
                              lambda rows, d, k=key, dt=dtype:
                              ArrayShard(f, rows, d, dt, _Opener(f, "torch", k)))
    return out


def _torch_offsets(f: Path, items: dict, dtypes: dict) -> dict[Any, int]:
    """File offset of each tensor's first element (tensors that cannot be located are left out)."""
    with zipfile.ZipFile(f) as z, open(f, "rb") as raw:
        records = []
        for info in z.infolist():
            if re.search(r"/data/\d+\Z", info.filename) and info.compress_type == zipfile.ZIP_STORED:
                raw.seek(info.header_offset)
                local = raw.read(30)
                n_name, n_extra = struct.unpack("<HH", local[26:30])
                records.append((info.header_offset + 30 + n_name + n_extra, info.file_size))
    records.sort()
    ptrs = sorted({t.untyped_storage().data_ptr() for t in items.values()})
    if len(ptrs) != len(records):
        return {}
    where = dict(zip(ptrs, records))
    out = {}
    for key, t in items.items():
        if t.numel() == 0 or t.dim() < 1:
            continue
        start, size = where[t.untyped_storage().data_ptr()]
        item = t.element_size()
        offset = start + t.storage_offset() * item
        if t.storage_offset() * item + t.numel() * item > size:
            continue
        flat = t.reshape(-1)
        d = t.shape[-1]
        shard = FileShard(f, offset, t.numel() // d, d, dtypes[t.dtype])
        from ._arrays import as_array

        if all(np.array_equal(shard.read(a, a + 1).reshape(-1).view(np.uint8),
                              as_array(flat[a * d:(a + 1) * d], str(f)).view(np.uint8))
               for a in {0, shard.rows - 1}):
            out[key] = offset
    return out


# ---------------------------------------------------------------------------------------- analysis


class _ReadAhead:
    """Keeps the disk busy ahead of the computation.

    Shards with a digest are hashed, whole files in order, by ``hash_threads`` helper threads
    (which also brings them into the page cache) at most ``depth`` shards ahead, each file
    announced to the OS (posix_fadvise WILLNEED) when its hash is queued, so the disk reads it
    while the helpers hash the files before it.  For shards without a digest the OS is asked
    to read the next blocks.
    """

    def __init__(self, hash_threads: int = 1) -> None:
        self.depth = hash_threads + 2
        self._pool = concurrent.futures.ThreadPoolExecutor(hash_threads, thread_name_prefix="geonorm-sha256")
        self._local = threading.local()
        self._digests: dict[Path, concurrent.futures.Future] = {}
        self._advised: dict[int, int] = {}  # id(shard) -> rows already announced to the OS

    def __enter__(self) -> _ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        for fut in self._digests.values():
            fut.cancel()
        self._pool.shutdown(wait=True)

    def _hash(self, path: Path) -> tuple[str, list[int] | None]:
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = bytearray(_HASH_CHUNK)
        return hash_file(path, buf)

    def schedule(self, plan: Sequence[tuple[ActivationSite, int]], i: int, block_rows: int) -> None:
        """Before shard ``plan[i]``: queue the next ``depth`` shards' hashes, or prefetch the next shards."""
        for site, k in plan[i:i + self.depth + 1]:
            shard = site.hidden[k]
            if shard.sha256 is not None and shard.path not in self._digests:
                _advise_file(shard.path)
                self._digests[shard.path] = self._pool.submit(self._hash, shard.path)
        ahead = PREFETCH_BYTES
        for site, k in plan[i + 1:]:  # the next shards' first PREFETCH_BYTES, where no hash reads them
            shard = site.hidden[k]
            if ahead <= 0 or shard.sha256 is not None:
                break
            row = shard.d * shard.dtype.itemsize * (2 if site.post is not None else 1)
            rows = min(shard.rows, -(-ahead // row))
            self.prefetch(site, k, 0, rows)
            ahead -= rows * row

    def digest(self, path: Path) -> tuple[str, list[int] | None]:
        """The file's sha256 and identity (:func:`geonorm_core.digests.hash_file`)."""
        fut = self._digests.pop(path, None)
        return fut.result() if fut is not None else self._hash(path)

    def prefetch(self, site: ActivationSite, k: int, start: int, stop: int) -> None:
        # In the calling thread: WILLNEED only queues the reads, and handing each block to a
        # helper thread would cost a GIL hand-off (up to the 5 ms switch interval) per block.
        # Each row is announced once: WILLNEED walks the page cache even when the pages are
        # there, which on a warm cache cost more than the kernels when windows overlapped.
        key = id(site.hidden[k])
        start = max(start, self._advised.get(key, 0))
        if start >= stop:
            return
        self._advised[key] = stop
        site.hidden[k].prefetch(start, stop)
        if site.post is not None:
            site.post[k].prefetch(start, stop)


def _advise_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except (OSError, AttributeError):
        pass
    finally:
        os.close(fd)


def analyze_dump(path: str | os.PathLike | Sequence[ActivationSite], *, block_rows: int | None = None,
                 bins: int = 180, num_threads: int | None = None, scheduler: Any = None,
                 progress: Callable[[int], None] | None = None, verify: str = "sha256",
                 partial: bool = False) -> Report:
    """Measure the geometry of dumped activations: the report ``analyze`` gives, from disk.

    Each site's shards are streamed in blocks of ``block_rows`` rows through
    :func:`geonorm_core.measure.token_values` (angles with **1**, norms, rotation, LN-RMS gap;
    SCIENCE.md G2, G9, G11) into mergeable accumulators.  For a geonorm dump the numbers are
    bitwise those of :func:`geonorm_core.adapter.analyze` on the same batches.

    Parameters
    ----------
    path : anything :func:`open_activations` reads, or the sites it returned.
    block_rows : rows per block (default: about ``DEFAULT_BLOCK_BYTES`` of hidden + post rows).
    bins : histogram bins of the angle quantities over [0, 180] degrees.
    num_threads : threads for the core.  Default: of the :func:`geonorm_core.get_num_threads` cores,
        half hash (while shards are being hashed) and the rest compute; else all of them.
    scheduler : a Dask scheduler address or client: the blocks run on a Dask cluster instead
        (``geonorm_core.dask.analyze_sites``).
    progress : called with the number of rows done (all sites) after each block.
    verify, partial : as :func:`open_activations` (see the module docstring).

    Returns
    -------
    Report
        One :class:`SiteStats` per site; ``report.table()`` gives the paper's Tables 2-4.

    Raises
    ------
    DumpError
        For a source that cannot be analyzed as a whole; no statistics of a bad shard are kept.
    """
    if block_rows is not None and (isinstance(block_rows, bool) or not isinstance(block_rows, int)
                                   or block_rows < 1):
        raise ValueError(f"block_rows must be a positive int or None, got {block_rows!r}")
    if isinstance(path, (str, os.PathLike)):
        sites = open_activations(path, verify=verify, partial=partial)
    else:
        sites = list(path)
    meta = {**sites[0].report_meta, "bins": bins}
    if scheduler is not None:
        from .dask import analyze_sites  # the Dask path lives with Dask

        result = analyze_sites(sites, scheduler=scheduler, block_rows=block_rows, bins=bins)
        return result if isinstance(result, Report) else Report(meta=meta, sites=dict(result))
    cores = get_num_threads()
    hashing = any(s.sha256 is not None for site in sites for s in site.hidden)
    hash_threads = max(1, cores // 2) if hashing else 1
    if num_threads is None:  # the rest of the cores compute (sha256 and the kernels cost about alike)
        num_threads = max(1, cores - hash_threads) if hashing else cores
    plan = [(site, k) for site in sites for k in range(len(site.hidden))]
    stats = {site.name: site.new_stats(bins) for site in sites}
    done = 0

    def rows_done(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done)

    records = {id(r): r for site in sites for s in site.hidden if (r := getattr(s, "record", None))}
    try:
        with _ReadAhead(hash_threads) as ahead:
            for i, (site, k) in enumerate(plan):
                rows = block_rows or site.default_block_rows()
                ahead.schedule(plan, i, rows)
                _analyze_shard(site, k, stats[site.name], rows, num_threads, ahead, rows_done)
    finally:  # remember the shards that hashed right, even when a later one did not
        for r in records.values():
            r.save()
    return Report(meta=meta, sites=stats)


def analyze_shard(site: ActivationSite, k: int, stats: SiteStats | None = None, *,
                  block_rows: int | None = None, bins: int = 180,
                  num_threads: int | None = None) -> SiteStats:
    """Fold shard ``k`` of ``site`` into ``stats`` (new if None) exactly as :func:`analyze_dump` does.

    Verified against its digest when it has one (hashed here, after the compute) and replayed
    in its recorded segments: the unit of work for a scheduler that runs shards as tasks.
    """
    stats = site.new_stats(bins) if stats is None else stats
    with _ReadAhead() as ahead:
        _analyze_shard(site, k, stats, block_rows or site.default_block_rows(), num_threads, ahead, None)
    return stats


def _analyze_shard(site: ActivationSite, k: int, stats: SiteStats, block_rows: int, num_threads: int | None,
                   ahead: _ReadAhead, rows_done: Callable[[int], None] | None) -> None:
    """Fold shard k of a site into ``stats``: directly, or staged until its digest matched.

    Staging (float64 per token and quantity) is used when the shard has a digest to wait for or
    recorded segments to replay; other sources are fed block by block.
    """
    hs = site.hidden[k]
    ps = site.post[k] if site.post is not None else None
    if ps is not None and (ps.rows, ps.d) != (hs.rows, hs.d):
        raise DumpError(ps.path, f"post rows ({ps.rows}, {ps.d}) do not pair with hidden ({hs.rows}, {hs.d})")
    row_bytes = hs.d * hs.dtype.itemsize * (2 if ps is not None else 1)
    ahead_rows = max(2 * block_rows, PREFETCH_BYTES // row_bytes)
    names = quantity_names(ps is not None)
    staged = None  # the kernel writes straight into it, one row of values per quantity
    if hs.sha256 is not None or hs.segments is not None:
        staged = np.empty((len(names), hs.rows), np.float64)
    for start in range(0, hs.rows, block_rows):
        stop = min(start + block_rows, hs.rows)
        if hs.sha256 is None and stop < hs.rows:  # no hashing pass brings the next blocks in: ask the OS
            ahead.prefetch(site, k, stop, min(stop + ahead_rows, hs.rows))
        h = hs.read(start, stop)
        p = ps.read(start, stop) if ps is not None else None
        values = site.token_values(h, p, num_threads=num_threads,
                                   out=None if staged is None else staged[:, start:stop])
        del h, p  # unmap the block now
        if staged is None:
            stats.update(**values)
        if rows_done is not None:
            rows_done(stop - start)
    hs.release()
    if ps is not None:
        ps.release()
    if staged is None:
        return
    if hs.sha256 is not None:
        got, identity = ahead.digest(hs.path)
        if got != hs.sha256:
            raise DumpError(hs.path, f"sha256 {got[:16]}... does not match the manifest's "
                                     f"{hs.sha256[:16]}...: the shard is corrupt (none of its rows were "
                                     f"counted)")
        if hs.record is not None:
            hs.record.add(hs.path, identity, got)
    for a, b in hs.units(block_rows):
        stats.update(**{q: staged[i, a:b] for i, q in enumerate(names)})


# ---------------------------------------------------------------------------------------- command line


def run_analyze_dump_command(args: Any) -> int:
    """``geonorm analyze-dump PATH``: print the tables and write the report folder."""
    from .cli import progress as progress_bar

    sites = open_activations(args.path, verify=args.verify, partial=args.partial)
    total = sum(s.rows for s in sites)
    print(f"analyzing {len(sites)} site(s), {total} rows, from {args.path} ...", file=sys.stderr, flush=True)
    with progress_bar(total) as bar:
        report = analyze_dump(sites, block_rows=args.block_rows, bins=args.bins, num_threads=args.threads,
                              scheduler=args.scheduler, progress=bar, verify=args.verify,
                              partial=args.partial)
    print(report.table() if report.layers() else site_table(report))
    paths = report.save(args.out)
    print(f"wrote {len(paths)} files to {args.out}/: " + ", ".join(p.rsplit('/', 1)[-1] for p in paths))
    return 0


def site_table(report: Report) -> str:
    """Mean ± SD over rows of every quantity, one line per site: the table for sources with no layers."""
    names = list(next(iter(report.sites.values())).quantities)
    lines = [f"# geonorm report: {report.meta.get('model', 'arrays')}", "",
             "| site | rows | d | " + " | ".join(names) + " |", "|---|---:|---:|" + "---|" * len(names)]
    for name, s in report.sites.items():
        cells = [f"{s[q].mean:.4g} ± {s[q].std:.3g}" if s[q].count else "–" for q in names]
        lines.append(f"| {name} | {s.tokens} | {s.meta.get('d')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
