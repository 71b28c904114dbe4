"""Hidden states on disk, analyzed: open any source as norm sites, stream them into a Report.

The paper measured its angles with **1**, norms and rotations on
activations dumped to disk.  This module reads such dumps -- geonorm's own
(:mod:`.writing`) and the arrays users already have -- as *norm sites*
of row vectors, and reduces them through the same per-token quantities as the
live analysis (:func:`geonorm_core.analysis.measure.token_values`) into the same
:class:`~geonorm_core.analysis.report.Report`.

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
(:mod:`.verify`, as git's index does) and trusted while it stays
unchanged; ``verify="rehash"`` hashes every shard again.  ``verify="size"``
skips the digests and still catches truncation, a manifest that disagrees with
a shard, unknown dtypes and shapes -- everything but bytes changed in place.
Foreign files carry no digest: for them the three are the same.

The staged values are also replayed into the accumulators in the blocks the
live hooks fed them (the manifest records those row counts), so a dump's report
is *bitwise* the report :func:`geonorm_core.sources.adapter.analyze` gives on the same
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

import collections
import concurrent.futures
import contextlib
import os
import re
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..analysis.accumulate import SiteStats
from ..analysis.measure import quantity_names
from ..analysis.report import Report
from ..runtime import get_num_threads
from ..sources import distributed
from .formats import ARRAY_SUFFIXES, open_arrays
from .manifest import MANIFEST_NAME, VERIFY_MODES, open_dump
from .shards import ActivationSite, DumpError
from .stores import attach_model, open_store, select_sites, store_kind
from .verify import hash_file

__all__ = ["PREFETCH_BYTES", "analyze_dump", "analyze_shard", "open_activations"]

#: How far ahead of the computation the OS is asked to read (posix_fadvise WILLNEED) when no
#: hashing pass reads ahead: enough to keep a disk's queue busy across a block's compute.
PREFETCH_BYTES = 64 << 20

_HASH_CHUNK = 8 << 20


def open_activations(path: str | os.PathLike, *, verify: str = "sha256", partial: bool = False,
                     sites: Sequence[str] | None = None, model: Any = None) -> list[ActivationSite]:
    """Open a dump or array file(s) as norm sites, checking all that needs no full read.

    Parameters
    ----------
    path : a geonorm dump folder (or its ``manifest.json``), a ``.npy``, ``.npz``, ``.safetensors``,
        ``.pt`` file, or a folder of such files (concatenated in name order).
    verify : ``"sha256"`` (default): shards carry the manifest's digests, which
        :func:`analyze_dump` checks before counting a shard, except for files hashed to the same
        digest before and unchanged since (:mod:`.verify`); ``"rehash"``: every shard
        is hashed; ``"size"``: headers, sizes and shapes only.  Foreign sources have no digests, so
        the three are the same for them.
    partial : accept a geonorm dump that was interrupted (only the batches written are read).
    sites : names of the sites to read (default: all); for a store (:mod:`.stores`: a ``datasets``
        folder, ``.arrow``/``.parquet``, HDF5, zarr) its column, dataset or array names.  A name the
        source does not have raises :class:`~.stores.UnknownSiteError`.
    model : a model name/path or torch model whose norms' gain, bias and eps go with the sites whose
        hook names say which norm they feed (:func:`~.stores.attach_model`).

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
    if sites is not None or model is not None or store_kind(p) is not None:
        return _selected(p, verify, partial, sites, model)
    if p.is_dir() and os.path.lexists(p / MANIFEST_NAME):  # a manifest that is no regular file: refused there
        return open_dump(p / MANIFEST_NAME, verify, partial)
    if not p.is_dir() and p.name == MANIFEST_NAME:
        return open_dump(p, verify, partial)
    if p.is_dir():
        files = sorted((f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                        and f.suffix.lower() in ARRAY_SUFFIXES), key=_natural_key)
        if not files:
            raise DumpError(p, f"no geonorm manifest and no array files ({', '.join(ARRAY_SUFFIXES)}) here")
        return open_arrays(p, files)
    if p.suffix.lower() not in ARRAY_SUFFIXES:
        raise DumpError(p, f"unknown file type {p.suffix!r}; geonorm reads {', '.join(ARRAY_SUFFIXES)} "
                           f"files, folders of them, and geonorm dumps")
    return open_arrays(p, [p])


def _selected(p: Path, verify: str, partial: bool, sites: Sequence[str] | None, model: Any
              ) -> list[ActivationSite]:
    """A store's sites (or any source's) as ``sites`` selects, with ``model``'s norms attached."""
    if store_kind(p) is not None:
        out = open_store(p, sites)
    else:
        out = select_sites(open_activations(p, verify=verify, partial=partial), sites, p)
    return attach_model(out, model) if model is not None else out


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


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
        # the prefetch window: plan indices whose first rows were announced, and their bytes, so
        # each schedule() call only extends the window (O(1) amortized, O(shards) for a plan)
        self._window: collections.deque[tuple[int, int]] = collections.deque()
        self._window_bytes = 0
        self._front = 0  # the next plan index to announce

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
        """Before shard ``plan[i]``: queue the next ``depth`` shards' hashes, or prefetch the next shards.

        Called once per shard in plan order; the work is O(1) amortized per call (the window of
        announced shards only moves forward), so planning is linear in the number of shards."""
        for j in range(i, min(i + self.depth + 1, len(plan))):
            site, k = plan[j]
            shard = site.hidden[k]
            if shard.sha256 is not None and shard.path not in self._digests:
                _advise_file(shard.path)
                self._digests[shard.path] = self._pool.submit(self._hash, shard.path)
        # the next shards' first PREFETCH_BYTES, where no hash reads them
        while self._window and self._window[0][0] <= i:
            self._window_bytes -= self._window.popleft()[1]
        self._front = max(self._front, i + 1)
        while self._front < len(plan) and self._window_bytes < PREFETCH_BYTES:
            site, k = plan[self._front]
            shard = site.hidden[k]
            if shard.sha256 is not None:
                break
            row = shard.d * shard.dtype.itemsize * (2 if site.post is not None else 1)
            rows = min(shard.rows, -(-(PREFETCH_BYTES - self._window_bytes) // row))
            self.prefetch(site, k, 0, rows)
            if rows < shard.rows:
                break  # announced in part: the next call may announce more of it
            self._window.append((self._front, rows * row))
            self._window_bytes += rows * row
            self._front += 1

    def digest(self, path: Path) -> tuple[str, list[int] | None]:
        """The file's sha256 and identity (:func:`geonorm_core.dumps.verify.hash_file`)."""
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
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # never waits on a FIFO
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
                 partial: bool = False, sites: Sequence[str] | None = None, model: Any = None,
                 merge_ranks: bool = True) -> Report:
    """Measure the geometry of dumped activations: the report ``analyze`` gives, from disk.

    Each site's shards are streamed in blocks of ``block_rows`` rows through
    :func:`geonorm_core.analysis.measure.token_values` (angles with **1**, norms, rotation, LN-RMS gap;
    G2, G9, G11) into mergeable accumulators.  For a geonorm dump the numbers are
    bitwise those of :func:`geonorm_core.sources.adapter.analyze` on the same batches.

    Parameters
    ----------
    path : anything :func:`open_activations` reads, or the sites it returned.
    block_rows : rows per block (default: about ``DEFAULT_BLOCK_BYTES`` of hidden + post rows).
    bins : histogram bins of the angle quantities over [0, 180] degrees.
    num_threads : threads for the core.  Default: of the :func:`geonorm_core.get_num_threads` cores,
        half hash (while shards are being hashed) and the rest compute; else all of them.
    scheduler : a Dask scheduler address or client: the blocks run on a Dask cluster instead
        (``geonorm_core.dumps.dask.analyze_sites``).
    progress : called with the number of rows done (all sites) after each block.
    verify, partial : as :func:`open_activations` (see the module docstring).
    sites, model : as :func:`open_activations` (a path only).
    merge_ranks : inside an initialized ``torch.distributed`` process group of several ranks, every
        rank passes the same dump, counts the shards ``i % world == rank`` of the list of every
        site's shards, and returns the merged report (default); False: each rank reads it all.

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
        sites = open_activations(path, verify=verify, partial=partial, sites=sites, model=model)
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
    group = distributed.current(merge_ranks)
    if group is not None:
        plan = [item for i, item in enumerate(plan) if group.mine(i)]
    stats = {site.name: site.new_stats(bins) for site in sites}
    done = 0

    def rows_done(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done)

    records = {id(r): r for site in sites for s in site.hidden if (r := getattr(s, "record", None))}
    with contextlib.nullcontext() if group is None else group.failures_shared():
        try:
            with _ReadAhead(hash_threads) as ahead:
                for i, (site, k) in enumerate(plan):
                    rows = block_rows or site.default_block_rows()
                    ahead.schedule(plan, i, rows)
                    _analyze_shard(site, k, stats[site.name], rows, num_threads, ahead, rows_done)
        finally:  # remember the shards that hashed right, even when a later one did not
            for r in records.values():
                r.save()
    return distributed.merged(group, Report(meta=meta, sites=stats))


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
        values = site.block_values(hs, ps, start, stop, num_threads=num_threads,  # unmapped on return
                                   out=None if staged is None else staged[:, start:stop])
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
