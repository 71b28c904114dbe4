"""Mergeable per-site accumulators and the comparison with the random baseline.

The torch adapter (issue 4) measures, for every token at every norm site, a
handful of scalars: the angle of the hidden vector and of the post-norm vector
with the uniform vector **1**, both norms, the rotation between them, the
largest |hidden| entry and the LN-RMS gap (G2, G9, G11).  The paper
stored terabytes of activations to get their means and SDs; here each quantity
is reduced, block by block, into a summary of fixed size that

* is exact: mean and SD within a few ulps of the one-shot two-pass result, even
  when the mean is 1e8 times the SD (never E[x^2] - mu^2);
* merges: the summary of a concatenation is the merge of the summaries, so
  batches, processes and machines reduce independently and combine later;
* round-trips through JSON exactly.

Reading order
-------------
1. ``QUANTITIES`` -- the measured quantities and their histogram ranges.
2. :class:`Moments` -- count, mean, M2, min, max; Chan's pairwise update.
3. :class:`Histogram` -- fixed bins with underflow/overflow/NaN counters.
4. :class:`Quantity` -- Moments + Histogram for one named quantity.
5. :class:`SiteStats` -- all quantities of one norm site, plus its metadata.

The per-block work -- the two passes over a block and the histogram counts --
is native (``_native/stats.c``); the running state, merging and serialization
are here.  Only NumPy is needed; SciPy is imported inside the baseline functions.

Example
-------
>>> site = SiteStats({"name": "model.layers.3.input_layernorm", "layer": 3, "d": 576})
>>> site.update(angle_hidden=angles, norm_hidden=norms)      # float64 blocks, one value per token
>>> total = SiteStats.from_dict(json.loads(json.dumps(site.to_dict()))).merge(other_site)
>>> compare_to_baseline(total["angle_hidden"].histogram, d=576)["ks"]
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from .._native import _core

__all__ = [
    "QuantitySpec",
    "QUANTITIES",
    "QUANTITY_NAMES",
    "Moments",
    "Histogram",
    "Quantity",
    "SiteStats",
]

FORMAT_VERSION = 1  # bump when a to_dict() layout changes


# ---------------------------------------------------------------- 1. the quantities


@dataclass(frozen=True)
class QuantitySpec:
    """How one quantity is histogrammed.

    ``lo``, ``hi`` and ``bins`` are in histogram coordinates: the value itself for
    ``scale="linear"``, log10 of the value for ``scale="log10"``.  The moments
    (mean, SD, min, max) are always of the value itself.
    """

    lo: float
    hi: float
    bins: int
    scale: str  # "linear" or "log10"
    unit: str
    meaning: str


#: The quantities measured per token at every norm site, and their default ranges.
#: Angles resolve 1 degree by default; pass ``bins=1800`` for 0.1 degree.  Norms and
#: max |hidden| span 1e-3 .. 1e6 on a log scale (0.05 decade bins).
QUANTITIES: dict[str, QuantitySpec] = {
    "angle_hidden":   QuantitySpec(0.0, 180.0, 180, "linear", "degrees", "angle(hidden, 1) (G2)"),
    "angle_post":     QuantitySpec(0.0, 180.0, 180, "linear", "degrees", "angle(post, 1) (G2, G13)"),
    "norm_hidden":    QuantitySpec(-3.0, 6.0, 180, "log10", "L2 norm", "||hidden||"),
    "norm_post":      QuantitySpec(-3.0, 6.0, 180, "log10", "L2 norm", "||post||"),
    "rotation":       QuantitySpec(0.0, 180.0, 180, "linear", "degrees", "angle(hidden, post) (G11, G12)"),
    "max_abs_hidden": QuantitySpec(-3.0, 6.0, 180, "log10", "abs value", "max_i |hidden_i| (massive act.)"),
    "ln_rms_gap":     QuantitySpec(0.0, 2.0, 200, "linear", "ratio", "||LN(x) - RMS_a(x)|| / ||LN(x)|| (G9)"),
}  # fmt: skip
QUANTITY_NAMES: tuple[str, ...] = tuple(QUANTITIES)
_ANGLE_NAMES = tuple(n for n, s in QUANTITIES.items() if s.unit == "degrees")


# ---------------------------------------------------------------- 2. moments


def _two_sum(a: float, b: float) -> tuple[float, float]:
    """Knuth's error-free sum: s + e == a + b exactly, s = fl(a + b)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _float_or_none(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def _values(block: Any) -> np.ndarray:
    """``block`` as the native code reads it: contiguous 1-D float64 (itself when it already is)."""
    x = np.ascontiguousarray(block, dtype=np.float64)
    return x if x.ndim == 1 else x.ravel()


class Moments:
    """Streaming count, mean, M2, min and max of a float64 quantity, mergeable.

    State: ``count`` finite values seen, ``nan_count`` non-finite values skipped
    (NaN and +-Inf: a single Inf would make the mean and M2 meaningless), the mean,
    ``m2`` = sum of squared deviations from the mean, ``min`` and ``max``.

    A block is reduced on its own, natively (``_native/stats.c``), with the
    corrected two-pass algorithm (Bjorck; Chan, Golub & LeVeque 1983)::

        m   = fl(sum(x) / n)                     # first pass
        r   = sum(x - m)                         # second pass: the residual of m
        M2  = sum((x - m)**2) - r**2 / n         # = sum((x - mean)**2) in exact arithmetic
        mean = m + r / n                         # kept as the pair (m, r/n)

    where each sum adds leaves of 128 values (8 accumulators each) into a
    compensated total: as accurate as NumPy's pairwise summation, more so for
    long blocks.  The block is then combined with the running state by Chan,
    Golub & LeVeque's pairwise formula, which is also :meth:`merge`.  For parts A
    and B::

        n     = n_A + n_B
        delta = mean_B - mean_A
        mean  = mean_A + delta * n_B / n
        M2    = M2_A + M2_B + delta**2 * n_A * n_B / n

    The mean is carried as an unevaluated double-double sum ``mean + mean_lo``
    (|mean_lo| <= ulp(mean)/2).  Why: with a float64 mean, each ``delta`` carries
    an absolute error of ~ulp(mean); when the mean is 1e8 SDs that error is 1e-8
    SD, and the between-block term of M2 inherits a relative error of ~1e-10 over
    1000 blocks.  With the low word, delta is exact to ~1e-16 SD and merging
    1000 blocks matches the one-shot two-pass result within 1e-12.

    Empty state: ``mean``, ``var``, ``std``, ``min``, ``max`` are NaN.
    """

    __slots__ = ("count", "nan_count", "_mean", "_mean_lo", "m2", "_min", "_max")

    def __init__(self) -> None:
        self.count = 0
        self.nan_count = 0
        self._mean = 0.0
        self._mean_lo = 0.0
        self.m2 = 0.0
        self._min = math.inf
        self._max = -math.inf

    # -- reading

    @property
    def mean(self) -> float:
        """The mean of the finite values (NaN when empty); the high word of (mean, mean_lo)."""
        return self._mean if self.count else math.nan

    @property
    def var(self) -> float:
        """Population variance M2 / n (ddof=0)."""
        return self.m2 / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        """Population standard deviation sqrt(M2 / n) (ddof=0), the paper's "SD over tokens"."""
        return math.sqrt(self.var) if self.count else math.nan

    @property
    def std_sample(self) -> float:
        """Sample standard deviation sqrt(M2 / (n - 1)) (ddof=1); NaN for n < 2."""
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else math.nan

    @property
    def min(self) -> float:
        return self._min if self.count else math.nan

    @property
    def max(self) -> float:
        return self._max if self.count else math.nan

    def __repr__(self) -> str:
        return (f"Moments(count={self.count}, nan_count={self.nan_count}, mean={self.mean!r}, "
                f"std={self.std!r}, min={self.min!r}, max={self.max!r})")

    # -- writing

    def update(self, block: Any) -> Moments:
        """Add every value of ``block`` (any shape, converted to float64); return self.

        Non-finite values are skipped and counted in ``nan_count``.
        """
        self._add_block(*_core.block_moments(_values(block)))
        return self

    def _add_block(self, n: int, nan_count: int, m: float, r: float, m2: float, lo: float, hi: float) -> None:
        """Fold in one block's native statistics (stats.h's gn_block_stats): n finite values, mean m + r/n."""
        self.nan_count += nan_count
        if n:
            self._combine(n, m, r / n, m2, lo, hi)

    def merge(self, other: Moments) -> Moments:
        """Fold ``other`` into self (Chan's pairwise formula); return self."""
        if not isinstance(other, Moments):
            raise TypeError(f"other: need a Moments, got {type(other).__name__}")
        self.nan_count += other.nan_count
        if other.count:
            self._combine(other.count, other._mean, other._mean_lo, other.m2, other._min, other._max)
        return self

    def _combine(self, nb: int, mb: float, mb_lo: float, m2b: float, minb: float, maxb: float) -> None:
        na = self.count
        if na == 0:
            self._mean, self._mean_lo = _two_sum(mb, mb_lo)  # normalized: mean = fl(mean + mean_lo)
            self.count, self.m2 = nb, m2b
            self._min, self._max = minb, maxb
            return
        n = na + nb
        # delta = (mb + mb_lo) - (ma + ma_lo), keeping the rounding error of the big subtraction
        s, e = _two_sum(mb, -self._mean)
        delta = s + (e + (mb_lo - self._mean_lo))
        # mean = mean_A + delta * nb / n, in double-double
        hi, e = _two_sum(self._mean, delta * (nb / n))
        self._mean, self._mean_lo = _two_sum(hi, e + self._mean_lo)
        self.m2 = self.m2 + m2b + delta * delta * (na / n) * nb
        self.count = n
        self._min = min(self._min, minb)
        self._max = max(self._max, maxb)

    def copy(self) -> Moments:
        return Moments.from_dict(self.to_dict())

    # -- serialization

    def to_dict(self) -> dict:
        """The exact state as plain Python ints/floats (``min``/``max`` are None when empty)."""
        return {
            "count": int(self.count),
            "nan_count": int(self.nan_count),
            "mean": float(self._mean),
            "mean_lo": float(self._mean_lo),
            "m2": float(self.m2),
            "min": float(self._min) if self.count else None,
            "max": float(self._max) if self.count else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> Moments:
        m = cls()
        m.count = int(d["count"])
        m.nan_count = int(d["nan_count"])
        if m.count < 0 or m.nan_count < 0:
            raise ValueError(f"count/nan_count must be >= 0, got {m.count}/{m.nan_count}")
        m._mean = float(d["mean"])
        m._mean_lo = float(d.get("mean_lo", 0.0))
        m.m2 = float(d["m2"])
        if m.count:
            m._min, m._max = float(d["min"]), float(d["max"])
        return m


# ---------------------------------------------------------------- 3. histograms


@functools.lru_cache(maxsize=256)
def _shared_edges(lo: float, hi: float, bins: int) -> np.ndarray:
    """``np.linspace(lo, hi, bins + 1)``, read-only and shared by every histogram of that range
    (a report of 100,000 sites would otherwise hold 700,000 copies)."""
    edges = np.linspace(lo, hi, bins + 1)
    edges.flags.writeable = False
    return edges


class Histogram:
    """Counts of values in ``bins`` equal bins over [lo, hi], with outside counters.

    Bin k holds lo + k*w <= v < lo + (k+1)*w with w = (hi - lo)/bins, judged
    against the exact ``edges`` array (as ``np.histogram`` does); the last bin also
    holds v == hi.  ``underflow`` counts v < lo (including -Inf), ``overflow``
    v > hi (including +Inf), ``nan`` counts NaN.  Counts are int64, so merging is
    exact; two histograms merge only when lo, hi and bins are identical.  The
    counting is native (``_native/stats.c``).
    """

    __slots__ = ("lo", "hi", "bins", "counts", "underflow", "overflow", "nan", "_edges")

    def __init__(self, lo: float, hi: float, bins: int) -> None:
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"lo, hi: need finite lo < hi, got [{lo}, {hi}]")
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
            raise ValueError(f"bins: need a positive int, got {bins!r}")
        self.lo, self.hi, self.bins = lo, hi, int(bins)
        self.counts = np.zeros(self.bins, dtype=np.int64)
        self.underflow = 0
        self.overflow = 0
        self.nan = 0
        self._edges = _shared_edges(lo, hi, self.bins)

    @property
    def edges(self) -> np.ndarray:
        """The bins + 1 edges, ``np.linspace(lo, hi, bins + 1)`` (read-only)."""
        return self._edges

    @property
    def total(self) -> int:
        """Values counted, NaN excluded: underflow + sum(counts) + overflow."""
        return self.underflow + int(self.counts.sum()) + self.overflow

    def __repr__(self) -> str:
        return (f"Histogram(lo={self.lo}, hi={self.hi}, bins={self.bins}, total={self.total}, "
                f"underflow={self.underflow}, overflow={self.overflow}, nan={self.nan})")

    def update(self, block: Any) -> Histogram:
        """Count every value of ``block`` (any shape, converted to float64); return self.

        The rule: for lo <= v <= hi, the arithmetic index ``(v - lo) * (bins / (hi - lo))``,
        truncated and clamped to the last bin, settled against the edges, where it
        can be one off.  (The native code skips the settling where the index is
        clearly inside a bin; the result is the same.)
        """
        x = _values(block)
        self._add_outside(*_core.histogram_add(x, self.lo, self.hi, self._edges, self.counts, False))
        return self

    def _add_outside(self, underflow: int, overflow: int, nan: int) -> None:
        self.underflow += underflow
        self.overflow += overflow
        self.nan += nan

    def _check_same_bins(self, other: Histogram) -> None:
        if not isinstance(other, Histogram):
            raise TypeError(f"other: need a Histogram, got {type(other).__name__}")
        if (self.lo, self.hi, self.bins) != (other.lo, other.hi, other.bins):
            raise ValueError(
                f"cannot merge histograms with different bins: [{self.lo}, {self.hi}] x {self.bins} "
                f"vs [{other.lo}, {other.hi}] x {other.bins}")

    def merge(self, other: Histogram) -> Histogram:
        """Add ``other``'s counts to self (identical lo, hi, bins required); return self."""
        self._check_same_bins(other)
        self.counts += other.counts
        self.underflow += other.underflow
        self.overflow += other.overflow
        self.nan += other.nan
        return self

    def copy(self) -> Histogram:
        return Histogram.from_dict(self.to_dict())

    def cdf_at_edges(self) -> np.ndarray:
        """Empirical CDF at each edge: (underflow + counts below edge k) / total.

        Exact at the edges (each value is on a known side of every edge).  Raises
        ValueError when the histogram is empty.
        """
        total = self.total
        if total == 0:
            raise ValueError("the histogram is empty (no non-NaN values)")
        below = np.concatenate(([0], np.cumsum(self.counts))) + self.underflow
        return below / total

    def quantile(self, q: float | Iterable[float]) -> float | np.ndarray:
        """Quantile(s) estimated from the bins, for plots and reports.

        Within a bin the values are taken as uniformly spread (linear
        interpolation of the CDF between edges), so the error is at most one bin
        width.  Mass in underflow/overflow has no position: quantiles that fall
        there are clamped to lo/hi.  ``q = 0`` gives the left edge of the first
        non-empty bin.  NaN for an empty histogram.
        """
        qa = np.asarray(q, dtype=np.float64)
        if np.any((qa < 0) | (qa > 1)) or np.any(np.isnan(qa)):
            raise ValueError(f"q: need values in [0, 1], got {q!r}")
        total = self.total
        out = np.full(qa.shape, math.nan)
        if total:
            cum = np.cumsum(self.counts) + self.underflow  # values < edges[k+1] (last bin: <= hi)
            nonempty = np.flatnonzero(self.counts)
            for i, qi in np.ndenumerate(qa):
                t = qi * total
                if self.underflow and t <= self.underflow:
                    out[i] = self.lo
                elif t > cum[-1] or nonempty.size == 0:
                    out[i] = self.hi
                elif t == 0:
                    out[i] = self._edges[nonempty[0]]
                else:
                    k = int(np.searchsorted(cum, t, side="left"))  # cum[k-1] < t <= cum[k]
                    before = cum[k] - self.counts[k]
                    frac = (t - before) / self.counts[k]
                    out[i] = self._edges[k] + frac * (self._edges[k + 1] - self._edges[k])
        return float(out) if out.ndim == 0 else out

    def to_dict(self) -> dict:
        return {
            "lo": self.lo,
            "hi": self.hi,
            "bins": self.bins,
            "counts": self.counts.tolist(),
            "underflow": int(self.underflow),
            "overflow": int(self.overflow),
            "nan": int(self.nan),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> Histogram:
        h = cls(d["lo"], d["hi"], int(d["bins"]))
        counts = np.asarray(d["counts"], dtype=np.int64)
        if counts.shape != (h.bins,) or np.any(counts < 0):
            raise ValueError(f"counts: need {h.bins} non-negative ints, got shape {counts.shape}")
        h.counts[:] = counts
        h.underflow, h.overflow, h.nan = int(d["underflow"]), int(d["overflow"]), int(d["nan"])
        return h


# ---------------------------------------------------------------- 4. one quantity


class Quantity:
    """Moments and a histogram of one named quantity (see ``QUANTITIES``).

    The moments are of the value; the histogram is of the value for linear
    quantities and of log10(value) for log10 ones (a zero norm lands in
    underflow, a negative value in ``nan``).  ``bins``, ``lo``, ``hi`` override
    the table's defaults (``lo``/``hi`` in histogram coordinates).
    """

    __slots__ = ("name", "spec", "moments", "histogram")

    def __init__(self, name: str, *, bins: int | None = None, lo: float | None = None,
                 hi: float | None = None) -> None:
        if name not in QUANTITIES:
            raise ValueError(f"name: unknown quantity {name!r}; known: {', '.join(QUANTITY_NAMES)}")
        self.name = name
        self.spec = QUANTITIES[name]
        self.moments = Moments()
        self.histogram = Histogram(self.spec.lo if lo is None else lo,
                                   self.spec.hi if hi is None else hi,
                                   self.spec.bins if bins is None else bins)

    @property
    def scale(self) -> str:
        return self.spec.scale

    @property
    def edges(self) -> np.ndarray:
        """Bin edges in the value's own units (10**edges for log10 quantities)."""
        e = self.histogram.edges
        return 10.0 ** e if self.scale == "log10" else e.copy()

    # the numbers a report shows
    count = property(lambda self: self.moments.count)
    mean = property(lambda self: self.moments.mean)
    std = property(lambda self: self.moments.std)
    min = property(lambda self: self.moments.min)
    max = property(lambda self: self.moments.max)

    def quantile(self, q: float | Iterable[float]) -> float | np.ndarray:
        """:meth:`Histogram.quantile`, in the value's own units."""
        v = self.histogram.quantile(q)
        return 10.0 ** v if self.scale == "log10" else v

    def summary(self) -> dict:
        """count, nan_count, mean, std (ddof=0), min, max as plain Python numbers (None if empty)."""
        m = self.moments
        return {"count": m.count, "nan_count": m.nan_count, "mean": _float_or_none(m.mean),
                "std": _float_or_none(m.std), "min": _float_or_none(m.min), "max": _float_or_none(m.max)}

    def __repr__(self) -> str:
        return f"Quantity({self.name!r}, {self.moments!r})"

    def update(self, block: Any) -> Quantity:
        """Add a block of values (any shape) to the moments and the histogram; return self.

        One native call does both.  A log10 quantity's histogram counts the C
        library's log10 of each value (NumPy's ``np.log10`` may differ from it in
        the last bit, so a value within an ulp of an edge could land in the next bin).
        """
        h = self.histogram
        n, nan_count, m, r, m2, lo, hi, h_under, h_over, h_nan = _core.quantity_add(
            _values(block), h.lo, h.hi, h._edges, h.counts, self.spec.scale == "log10")
        self.moments._add_block(n, nan_count, m, r, m2, lo, hi)
        h._add_outside(h_under, h_over, h_nan)
        return self

    def merge(self, other: Quantity) -> Quantity:
        """Fold ``other`` (same name, identical bins) into self; return self."""
        if not isinstance(other, Quantity):
            raise TypeError(f"other: need a Quantity, got {type(other).__name__}")
        if other.name != self.name:
            raise ValueError(f"cannot merge quantity {other.name!r} into {self.name!r}")
        self.histogram._check_same_bins(other.histogram)  # before touching anything
        self.moments.merge(other.moments)
        self.histogram.merge(other.histogram)
        return self

    def copy(self) -> Quantity:
        return Quantity.from_dict(self.to_dict())

    def to_dict(self) -> dict:
        return {"name": self.name, "scale": self.scale, "unit": self.spec.unit,
                "moments": self.moments.to_dict(), "histogram": self.histogram.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping) -> Quantity:
        h = Histogram.from_dict(d["histogram"])
        q = cls(d["name"], bins=h.bins, lo=h.lo, hi=h.hi)
        if d.get("scale", q.scale) != q.scale:
            raise ValueError(f"{q.name}: scale {d['scale']!r} does not match {q.scale!r}")
        q.histogram = h
        q.moments = Moments.from_dict(d["moments"])
        return q


# ---------------------------------------------------------------- 5. one norm site


def _plain(v: Any) -> Any:
    """Metadata as JSON would give it back: NumPy scalars -> Python, tuples -> lists."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


class SiteStats:
    """Every quantity measured at one norm site, the token count, and the site's metadata.

    Parameters
    ----------
    meta : dict, optional
        Plain, JSON-serializable description of the site (name, layer, role,
        kind, d, ...).  Stored as JSON would return it (tuples become lists).
    bins : int or dict, optional
        An int sets the bins of the angle quantities (angle_hidden, angle_post,
        rotation; the issue's ``analyze(bins=180)``); a dict sets bins per
        quantity name.  Others keep the ``QUANTITIES`` defaults.
    names : iterable of str, optional
        The quantities to keep; default all of ``QUANTITY_NAMES``.

    ``tokens`` counts rows fed through :meth:`update`; each quantity's own
    ``count + nan_count`` counts the values it was given.
    """

    __slots__ = ("meta", "tokens", "quantities")

    def __init__(self, meta: Mapping | None = None, *, bins: int | Mapping[str, int] | None = None,
                 names: Iterable[str] = QUANTITY_NAMES) -> None:
        meta = _plain(dict(meta or {}))
        try:
            json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"meta: need plain JSON-serializable values ({exc})") from None
        names = tuple(names)
        for n in names:
            if n not in QUANTITIES:
                raise ValueError(f"names: unknown quantity {n!r}; known: {', '.join(QUANTITY_NAMES)}")
        if bins is None or isinstance(bins, Mapping):
            per_name = dict(bins or {})
            for n in per_name:
                if n not in names:
                    raise ValueError(f"bins: {n!r} is not one of this site's quantities {names}")
        else:
            per_name = {n: bins for n in names if n in _ANGLE_NAMES}
        self.meta = meta
        self.tokens = 0
        self.quantities = {n: Quantity(n, bins=per_name.get(n)) for n in names}

    def __getitem__(self, name: str) -> Quantity:
        return self.quantities[name]

    def __getattr__(self, name: str) -> Any:
        """``site.angle_hidden`` is ``site["angle_hidden"]``; ``site.layer`` is ``site.meta["layer"]``."""
        if not name.startswith("_"):
            for part in ("quantities", "meta"):
                try:
                    values = object.__getattribute__(self, part)
                except AttributeError:  # not set yet (during construction or unpickling)
                    continue
                if name in values:
                    return values[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or quantity {name!r}")

    def __repr__(self) -> str:
        return f"SiteStats(meta={self.meta!r}, tokens={self.tokens}, quantities={list(self.quantities)})"

    def update(self, **blocks: Any) -> SiteStats:
        """Feed one block of tokens: ``update(angle_hidden=a, norm_hidden=n, ...)``; return self.

        Every block holds one float value per token and all have the same number
        of values; ``tokens`` grows by that number.  Quantities not given are left
        as they are.
        """
        if not blocks:
            raise TypeError("update: need at least one quantity block, e.g. update(angle_hidden=a)")
        arrays = {}
        for name, block in blocks.items():
            if name not in self.quantities:
                raise ValueError(f"{name}: not a quantity of this site; known: {', '.join(self.quantities)}")
            arrays[name] = np.asarray(block, dtype=np.float64)
        sizes = {name: a.size for name, a in arrays.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"blocks: need one value per token in every block, got sizes {sizes}")
        for name, a in arrays.items():
            self.quantities[name].update(a)
        self.tokens += next(iter(sizes.values()))
        return self

    def merge(self, other: SiteStats) -> SiteStats:
        """Fold ``other`` (same metadata, quantities and bins) into self; return self."""
        if not isinstance(other, SiteStats):
            raise TypeError(f"other: need a SiteStats, got {type(other).__name__}")
        if other.meta != self.meta:
            raise ValueError(f"cannot merge sites with different metadata: {self.meta} vs {other.meta}")
        if set(other.quantities) != set(self.quantities):
            raise ValueError(f"cannot merge sites with different quantities: "
                             f"{sorted(self.quantities)} vs {sorted(other.quantities)}")
        for n, q in self.quantities.items():  # validate all before changing any
            q.histogram._check_same_bins(other.quantities[n].histogram)
        for n, q in self.quantities.items():
            q.merge(other.quantities[n])
        self.tokens += other.tokens
        return self

    def copy(self) -> SiteStats:
        return SiteStats.from_dict(self.to_dict())

    def to_dict(self) -> dict:
        """The exact state as plain dicts/lists/ints/floats; ``json.dumps`` round-trips it."""
        return {"format": FORMAT_VERSION, "meta": _plain(self.meta), "tokens": int(self.tokens),
                "quantities": {n: q.to_dict() for n, q in self.quantities.items()}}

    @classmethod
    def from_dict(cls, d: Mapping) -> SiteStats:
        if d.get("format", FORMAT_VERSION) != FORMAT_VERSION:
            raise ValueError(f"format: can read version {FORMAT_VERSION}, got {d.get('format')!r}")
        s = cls(d["meta"], names=())
        s.tokens = int(d["tokens"])
        s.quantities = {n: Quantity.from_dict(q) for n, q in d["quantities"].items()}
        return s
