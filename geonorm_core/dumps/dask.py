"""Scale out on Dask: the core on every block where the block lives, an ordered fold, one report.

A norm site's rows -- the shards of an activation dump (:func:`analyze_sites`,
what ``geonorm analyze-dump --scheduler ADDRESS`` runs) or any ``dask.array`` of
hidden vectors (:func:`analyze_array`) -- are cut into tasks.  A task reads its
rows where it runs, computes :func:`geonorm_core.analysis.measure.token_values` and
returns a summary of a few KB: per *update unit* the arguments of the moment
merge, and the task's histograms.  Activations never leave the worker that
read them: the graph carries each site's shard list (paths, offsets, shapes,
digests) once, and a task index per task.

Why the numbers are bitwise those of one process
------------------------------------------------
Merging float moments (Chan's formulas) is exact in exact arithmetic but not
associative in floating point: the last bits depend on the order of merges.
The single-process run -- :func:`geonorm_core.dumps.reading.analyze_dump` without
a scheduler, or a loop of ``SiteStats.update`` over a dask array's blocks --
folds its *update units* (a dump's hook calls, recorded as shard segments; a
foreign file's ``block_rows`` blocks; a dask array's chunks) into the site's
accumulators one after the other.  This module keeps that order by construction:

* a task runs ``SiteStats.update`` on each of its units with a recording
  :class:`~geonorm_core.analysis.accumulate.Moments` (:class:`_Recorder`), so the block
  sums and the two-pass arithmetic are Moments' own, and keeps the values
  ``Moments._combine`` would have folded in (count, mean, mean_lo, M2, min, max);
* a chain of fold tasks replays those records in unit order into one
  accumulator (``split_every`` task summaries per fold), exactly the calls the
  single-process loop makes; histograms and counts are integers and just add.

So a 2-worker cluster, the threaded scheduler and ``analyze_dump`` give the same
bits (and, for a geonorm dump, the live ``analyze`` report too).

Dask is an optional dependency (``pip install geonorm[dask]``), imported when a
graph is built.
"""
from __future__ import annotations

import pickle
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..analysis.accumulate import QUANTITY_NAMES, Histogram, Moments, SiteStats
from ..analysis.measure import token_values
from ..analysis.report import Report
from .shards import HIDDEN_QUANTITIES, DumpError, StreamShard
from .verify import file_sha256

__all__ = ["DEFAULT_SPLIT_EVERY", "DEFAULT_TASK_BYTES", "analyze_array", "analyze_sites", "shards_to_array"]

#: Hidden + post bytes one task reads (rows are read ``block_rows`` at a time inside it): about
#: 40,000 tasks for 10 TB.  Neither this nor ``split_every`` changes the numbers.
DEFAULT_TASK_BYTES = 256 << 20
#: Task summaries folded per fold task.
DEFAULT_SPLIT_EVERY = 16


# ---------------------------------------------------------------- record and replay


class _Recorder(Moments):
    """Moments that run :meth:`Moments.update`'s own arithmetic on one unit and keep what it would merge."""

    __slots__ = ("record",)

    def __init__(self) -> None:
        super().__init__()
        self.record: tuple | None = None

    def _combine(self, nb: int, mb: float, mb_lo: float, m2b: float, minb: float, maxb: float) -> None:
        self.record = (nb, mb, mb_lo, m2b, minb, maxb)


def _summarize(units: Iterable[Mapping[str, np.ndarray]], names: Sequence[str], bins: Any) -> dict:
    """A task's summary: per unit and quantity the merge record, then the task's histograms and tokens."""
    stats = SiteStats(None, bins=bins, names=names)
    nan, cnt, flt = [], [], []
    for values in units:
        recs = [_Recorder() for _ in names]
        for q, r in zip(names, recs):
            stats.quantities[q].moments = r
        stats.update(**values)  # SiteStats' own checks, Quantity's log10 for the histograms
        nan.append([r.nan_count for r in recs])
        cnt.append([r.record[0] if r.record else 0 for r in recs])
        flt.append([r.record[1:] if r.record else (0.0,) * 5 for r in recs])
    nq = len(names)
    return {"tokens": stats.tokens,
            "nan": np.array(nan, dtype=np.int64).reshape(-1, nq),
            "count": np.array(cnt, dtype=np.int64).reshape(-1, nq),
            "moments": np.array(flt, dtype=np.float64).reshape(-1, nq, 5),
            "hist": [stats.quantities[q].histogram.to_dict() for q in names]}


def _replay(acc: SiteStats, s: Mapping, names: Sequence[str]) -> None:
    """Fold a task summary into ``acc``: the calls ``acc.update(unit)`` makes, unit by unit."""
    moments = [acc.quantities[q].moments for q in names]
    nan, cnt, flt = s["nan"].tolist(), s["count"].tolist(), s["moments"].tolist()
    for u in range(len(cnt)):
        for j, m in enumerate(moments):
            m.nan_count += nan[u][j]
            if cnt[u][j]:
                m._combine(cnt[u][j], *flt[u][j])
    for q, h in zip(names, s["hist"]):
        acc.quantities[q].histogram.merge(Histogram.from_dict(h))
    acc.tokens += s["tokens"]


def _pack(obj: Any) -> bytes:
    """What travels between workers: pickled bytes, so Dask sizes them exactly (a few KB)."""
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _unpack(blob: bytes) -> Any:
    return pickle.loads(blob)


class _Job:
    """One site's constants, stored once in the graph (tasks refer to it by key)."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


def _fold_task(job: _Job, prev: bytes | None, summaries: list[bytes]) -> bytes:
    acc = SiteStats(None, bins=job.bins, names=job.names) if prev is None else SiteStats.from_dict(_unpack(prev))
    for s in summaries:
        _replay(acc, _unpack(s), job.names)
    return _pack(acc.to_dict())


# ---------------------------------------------------------------- dumps: units and tasks


def _blocks(rows: int, block_rows: int) -> list[tuple[int, int]]:
    return [(a, min(a + block_rows, rows)) for a in range(0, rows, block_rows)]


def _whole(shard: Any) -> bool:
    """Shards a task must take whole: hashed ones (the digest covers the file) and inflated ones."""
    return getattr(shard, "sha256", None) is not None or isinstance(shard, StreamShard)


def _plan(site: Any, block_rows: int, task_bytes: int) -> list[list[tuple[int, list[tuple[int, int]]]]]:
    """Cut a site into tasks: consecutive (shard, units) pieces of about ``task_bytes`` of rows each."""
    h0 = site.hidden[0]
    row_bytes = int(h0.d) * np.dtype(h0.dtype).itemsize * (2 if site.post is not None else 1)
    task_rows = max(1, task_bytes // max(1, row_bytes))
    tasks: list = []
    cur: list = []
    cur_rows = 0
    for k, hs in enumerate(site.hidden):
        if site.post is not None:
            ps = site.post[k]
            if (int(ps.rows), int(ps.d)) != (int(hs.rows), int(hs.d)):
                raise DumpError(ps.path, f"post rows ({ps.rows}, {ps.d}) do not pair with hidden "
                                         f"({hs.rows}, {hs.d})")
        units = hs.units(block_rows)
        if _whole(hs) or (site.post is not None and _whole(site.post[k])):
            groups = [units]
        else:
            groups, g, n = [], [], 0
            for a, b in units:
                if g and n + (b - a) > task_rows:
                    groups.append(g)
                    g, n = [], 0
                g.append((a, b))
                n += b - a
            groups.append(g)
        for g in groups:
            if not g:
                continue
            n = g[-1][1] - g[0][0]
            if cur and cur_rows + n > task_rows:
                tasks.append(cur)
                cur, cur_rows = [], 0
            cur.append((k, g))
            cur_rows += n
    if cur:
        tasks.append(cur)
    return tasks


def _verify(shard: Any) -> None:
    want = getattr(shard, "sha256", None)
    if want is not None and (got := file_sha256(shard.path)) != want:
        raise DumpError(shard.path, f"sha256 {got[:16]}... does not match the manifest's {want[:16]}...: "
                                    f"the shard is corrupt (none of its rows were counted)")


def _dump_units(job: _Job, task: list) -> Iterator[dict[str, np.ndarray]]:
    """The token values of a task's units, in order; each unit read ``block_rows`` rows at a time."""
    site = job.site
    for k, units in task:
        hs = site.hidden[k]
        ps = site.post[k] if site.post is not None else None
        _verify(hs)
        if ps is not None and str(ps.path) != str(hs.path):
            _verify(ps)
        for a, b in units:
            if b - a <= job.block_rows:
                yield _read_values(job, hs, ps, a, b)
                continue
            staged = {q: np.empty(b - a, np.float64) for q in job.names}
            for r in range(a, b, job.block_rows):
                s = min(r + job.block_rows, b)
                for q, v in _read_values(job, hs, ps, r, s).items():
                    staged[q][r - a:s - a] = v
            yield staged


def _read_values(job: _Job, hs: Any, ps: Any, a: int, b: int) -> dict[str, np.ndarray]:
    if a == b:
        return {q: np.empty(0, np.float64) for q in job.names}
    return job.site.block_values(hs, ps, a, b, num_threads=job.num_threads)  # the block's maps go with it


def _dump_task(job: _Job, i: int) -> bytes:
    return _pack(_summarize(_dump_units(job, job.tasks[i]), job.names, job.bins))


# ---------------------------------------------------------------- graphs


class _Graph:
    """A plain Dask task graph (legacy tuple tasks) under construction."""

    def __init__(self) -> None:
        self.dsk: dict = {}

    def data(self, prefix: str, value: Any) -> str:
        key = f"geonorm-{prefix}-{uuid.uuid4().hex}"
        self.dsk[key] = value
        return key

    def fold_chain(self, job_key: str, leaves: Sequence[Any], split_every: int) -> Any:
        """The key of the site's accumulators: fold task j folds leaves [j*s, (j+1)*s) into fold j-1."""
        name = f"geonorm-fold-{uuid.uuid4().hex}"
        prev = None
        for j in range(0, len(leaves), split_every):
            key = (name, j // split_every)
            self.dsk[key] = (_fold_task, job_key, prev, list(leaves[j:j + split_every]))
            prev = key
        return prev


def _check_split_every(split_every: Any) -> int:
    if isinstance(split_every, bool) or not isinstance(split_every, (int, np.integer)) or split_every < 1:
        raise ValueError(f"split_every: need a positive int, got {split_every!r}")
    return int(split_every)


def _dask_threads(num_threads: int | None) -> int:
    # Dask's workers already run one task per thread; the core adds threads only when asked.
    return 1 if num_threads is None else num_threads


@contextmanager
def _scheduler(scheduler: Any) -> Iterator[Any]:
    """What ``dask.compute(scheduler=...)`` takes, from an address, a Client, a cluster or a name."""
    local = {"threads", "threading", "sync", "synchronous", "single-threaded", "processes", "multiprocessing"}
    if scheduler is None or (isinstance(scheduler, str) and scheduler.lower() in local):
        yield scheduler
    elif isinstance(scheduler, str):
        if ":" not in scheduler:
            raise ValueError(f"scheduler: need a scheduler address (tcp://host:8786), a distributed.Client, "
                             f"or one of {sorted(local)}; got {scheduler!r}")
        from distributed import Client

        with Client(scheduler, set_as_default=False) as client:
            yield client
    elif hasattr(scheduler, "scheduler_address") and not hasattr(scheduler, "submit"):  # a Cluster
        from distributed import Client

        with Client(scheduler, set_as_default=False) as client:
            yield client
    elif hasattr(scheduler, "get") and hasattr(scheduler, "submit"):  # a distributed.Client
        yield scheduler
    else:
        raise TypeError(f"scheduler: need an address string, a distributed.Client or a scheduler name, "
                        f"got {type(scheduler).__name__}")


def _compute(dsk: dict, keys: Sequence[Any], scheduler: Any) -> list:
    import dask
    from dask.delayed import Delayed

    with _scheduler(scheduler) as sched:
        kw = {} if sched is None else {"scheduler": sched}
        return list(dask.compute(*[Delayed(k, dsk) for k in keys], **kw))


def _finish(blob: bytes | None, meta: Mapping | None, names: Sequence[str], bins: Any) -> SiteStats:
    if blob is None:
        return SiteStats(meta, bins=bins, names=names)
    d = _unpack(blob)
    d["meta"] = dict(meta or {})
    return SiteStats.from_dict(d)


# ---------------------------------------------------------------- public API


def analyze_sites(sites: Sequence[Any], *, scheduler: Any = None, block_rows: int | None = None,
                  bins: int | Mapping[str, int] = 180, num_threads: int | None = None,
                  split_every: int = DEFAULT_SPLIT_EVERY, task_bytes: int = DEFAULT_TASK_BYTES,
                  meta: Mapping | None = None) -> Report:
    """Measure the sites of an activation dump on Dask: bitwise what ``analyze_dump`` gives in one process.

    Each task reads about ``task_bytes`` of one site's rows where it runs (``Shard.read``:
    the graph holds the sites' shards -- paths, offsets, shapes -- once per site, not
    activations), ``block_rows`` rows at a time, and returns a summary of a few KB;
    a chain of fold tasks merges the summaries in row order (see the module docstring).
    A shard with a sha256 is hashed by the task that reads it, whole; a mismatch raises
    :class:`~geonorm_core.dumps.shards.DumpError` and nothing is returned.

    Parameters
    ----------
    sites : :class:`~geonorm_core.dumps.shards.ActivationSite` objects (from ``open_activations``).
        Their paths must be readable, under the same names, on every worker.
    scheduler : a ``tcp://host:8786`` address (a Client is opened and closed around the run),
        a ``distributed.Client`` or ``LocalCluster``, "threads", "synchronous", "processes",
        or None for Dask's default (the active Client if there is one).
    block_rows : rows per read and, for foreign arrays, per update unit (default: analyze_dump's,
        about 1 MiB of hidden + post rows).
    bins : histogram bins of the angle quantities.
    num_threads : core threads inside each task (default 1: Dask runs tasks in parallel);
        never changes the bits.
    split_every : task summaries per fold task; task_bytes : rows per task, in bytes read.
        Neither changes the bits.
    meta : the report's metadata (default: the sites' ``report_meta`` and ``bins``, as analyze_dump).

    Returns
    -------
    Report
        ``sites[site.name]``: the site's SiteStats with ``site.meta``.
    """
    split_every = _check_split_every(split_every)
    if isinstance(task_bytes, bool) or not isinstance(task_bytes, (int, np.integer)) or task_bytes < 1:
        raise ValueError(f"task_bytes: need a positive int, got {task_bytes!r}")
    if block_rows is not None and (isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer))
                                   or block_rows < 1):
        raise ValueError(f"block_rows: need a positive int or None, got {block_rows!r}")
    sites = list(sites)
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise ValueError("sites: two sites have the same name")
    g = _Graph()
    nt = _dask_threads(num_threads)
    keys, jobs = [], []
    for site in sites:
        SiteStats(site.meta)  # checks the metadata before any work
        br = int(block_rows) if block_rows is not None else site.default_block_rows()
        job = _Job(site=site, names=site.quantities, bins=bins, block_rows=br, num_threads=nt,
                   tasks=_plan(site, br, int(task_bytes)))
        jk = g.data("site", job)
        leaves = [g.data("task", None) for _ in job.tasks]
        for i, key in enumerate(leaves):
            g.dsk[key] = (_dump_task, jk, i)
        keys.append(g.fold_chain(jk, leaves, split_every))
        jobs.append(job)
    todo = [k for k in keys if k is not None]
    done = dict(zip(todo, _compute(g.dsk, todo, scheduler))) if todo else {}
    if meta is None:
        meta = {**getattr(sites[0], "report_meta", {}), "bins": bins} if sites else {}
    return Report(meta=dict(meta), sites={s.name: _finish(done.get(k), s.meta, j.names, bins)
                                          for s, k, j in zip(sites, keys, jobs)})


def _as_dask(x: Any, name: str) -> Any:
    import dask.array as da

    if isinstance(x, da.Array):
        return x
    if isinstance(x, np.ndarray):
        return da.from_array(x, chunks={x.ndim - 1: -1} if x.ndim else ())
    raise TypeError(f"{name}: need a dask.array (or a NumPy array), got {type(x).__name__}")


def _array_task(job: _Job, hidden: np.ndarray, post: np.ndarray | None) -> bytes:
    values = token_values(hidden, post, gain=job.gain, bias=job.bias, eps=job.eps, num_threads=job.num_threads)
    return _pack(_summarize([values], job.names, job.bins))


def analyze_array(hidden: Any, post: Any = None, *, meta: Mapping | None = None, gain: Any = None,
                  bias: Any = None, eps: float = 1e-5, bins: int | Mapping[str, int] = 180,
                  num_threads: int | None = None, split_every: int | None = None,
                  scheduler: Any = None) -> SiteStats:
    """Measure one norm site over a ``dask.array`` of hidden vectors: the core on every block, an ordered fold.

    Bitwise equal, on any scheduler, to the single-process loop over the blocks in C order
    of the leading axes::

        site = SiteStats(meta, bins=bins, names=...)        # all quantities; the hidden side without post
        for block in blocks:
            site.update(**token_values(h[block], p[block], gain=gain, bias=bias, eps=eps))

    Parameters
    ----------
    hidden : dask.array (or NumPy array), shape (..., d), any dtype the core takes
        (fp16/bf16/fp32/fp64).  The last axis is rechunked to one chunk; each chunk of
        the leading axes is one block (one update).
    post : dask.array, optional; same shape, rechunked like ``hidden``.  Without it only
        the hidden-side quantities (angle_hidden, norm_hidden, max_abs_hidden, ln_rms_gap) are kept.
    meta : the site's metadata for the SiteStats (name, layer, role, d, ...).
    gain, bias, eps : the site's parameters for the LN-RMS gap (G9); in the graph once.
    bins : histogram bins of the angle quantities (int) or per quantity (dict).
    num_threads : core threads inside each task (default 1); never changes the bits.
    split_every : block summaries per fold task (default :data:`DEFAULT_SPLIT_EVERY`).
    scheduler : as in :func:`analyze_sites`.
    """
    split_every = _check_split_every(DEFAULT_SPLIT_EVERY if split_every is None else split_every)
    hidden = _as_dask(hidden, "hidden")
    if hidden.ndim < 2:
        raise ValueError(f"hidden: need an array of shape (..., d), got shape {hidden.shape}")
    hidden = hidden.rechunk({hidden.ndim - 1: -1})
    if post is not None:
        post = _as_dask(post, "post")
        if post.shape != hidden.shape:
            raise ValueError(f"post: need the shape of hidden {hidden.shape}, got {post.shape}")
        post = post.rechunk(hidden.chunks)
    names = QUANTITY_NAMES if post is not None else HIDDEN_QUANTITIES
    SiteStats(meta, bins=bins, names=names)  # checks meta and bins before any work
    g = _Graph()
    job = _Job(names=names, bins=bins, num_threads=_dask_threads(num_threads), eps=float(eps),
               gain=None if gain is None else np.asarray(gain, dtype=np.float64),
               bias=None if bias is None else np.asarray(bias, dtype=np.float64))
    jk = g.data("site", job)
    hd = hidden.to_delayed(optimize_graph=True)
    g.dsk.update(hd.flat[0].dask)
    pd = None
    if post is not None:
        pd = post.to_delayed(optimize_graph=True)
        g.dsk.update(pd.flat[0].dask)
    leaves = []
    for idx in np.ndindex(*hd.shape):
        if any(hidden.chunks[ax][j] == 0 for ax, j in enumerate(idx)):
            continue  # an empty chunk: no update
        key = g.data("block", None)
        g.dsk[key] = (_array_task, jk, hd[idx].key, None if pd is None else pd[idx].key)
        leaves.append(key)
    final = g.fold_chain(jk, leaves, split_every)
    blob = _compute(g.dsk, [final], scheduler)[0] if final is not None else None
    return _finish(blob, meta, names, bins)


def shards_to_array(shards: Sequence[Any], block_rows: int) -> Any:
    """A ``dask.array`` (rows, d) over Shards, chunked ``block_rows`` rows per shard (the last shorter).

    Each chunk is ``shard.read(start, stop)`` run where the task runs.  With the same
    ``block_rows``, ``analyze_array`` of a foreign site's arrays gives analyze_dump's bits.
    """
    import dask
    import dask.array as da

    shards = list(shards)
    if not shards:
        raise ValueError("shards: need at least one shard")
    if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) or block_rows < 1:
        raise ValueError(f"block_rows: need a positive int, got {block_rows!r}")
    ds, dts = {int(s.d) for s in shards}, {np.dtype(s.dtype) for s in shards}
    if len(ds) > 1 or len(dts) > 1:
        raise ValueError(f"shards: need one d and one dtype, got d={sorted(ds)}, dtypes={sorted(map(str, dts))}")
    (d,), (dtype,) = ds, dts
    read = dask.delayed(_read, pure=True)
    blocks = [da.from_delayed(read(s, a, b), shape=(b - a, d), dtype=dtype)
              for s in shards for a, b in _blocks(int(s.rows), block_rows)]
    if not blocks:
        return da.zeros((0, d), dtype=dtype, chunks=(0, d))
    return da.concatenate(blocks, axis=0)


def _read(shard: Any, start: int, stop: int) -> np.ndarray:
    return shard.read(start, stop)
