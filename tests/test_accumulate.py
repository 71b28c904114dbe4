"""accumulate and baseline: exact mergeable moments, histograms, site stats; the random baseline (G14)."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from geonorm_core.analysis.accumulate import QUANTITIES, QUANTITY_NAMES, Histogram, Moments, Quantity, SiteStats
from geonorm_core.analysis.baseline import baseline_angle_sd, baseline_cdf, baseline_interval, compare_to_baseline


def fsum_moments(x: np.ndarray) -> tuple[float, float]:
    """Reference (mean, M2) with correctly rounded sums: the two-pass formula in exact-ish arithmetic."""
    x = np.asarray(x, dtype=np.float64)
    m = math.fsum(x) / x.size
    dev = x - m
    return m + math.fsum(dev) / x.size, math.fsum(dev * dev) - math.fsum(dev) ** 2 / x.size


def two_pass(x: np.ndarray) -> tuple[float, float]:
    """The one-shot two-pass result in NumPy."""
    m = x.mean()
    return float(m), float(np.sum((x - m) ** 2))


def moments_of(blocks) -> Moments:
    m = Moments()
    for b in blocks:
        m.update(b)
    return m


def split(x: np.ndarray, cuts) -> list[np.ndarray]:
    return np.split(x, sorted({min(max(int(c), 0), x.size) for c in cuts}))


def assert_moments_close(a: Moments, b: Moments, rtol: float = 1e-9) -> None:
    """Equal counts/min/max; mean and M2 within rtol of the data's scale."""
    assert (a.count, a.nan_count) == (b.count, b.nan_count)
    if a.count == 0:
        assert math.isnan(a.mean) and math.isnan(b.mean)
        return
    assert (a.min, a.max) == (b.min, b.max)
    scale = max(abs(a.min), abs(a.max))
    assert abs(a.mean - b.mean) <= rtol * scale
    assert abs(a.m2 - b.m2) <= rtol * max(a.m2, b.m2) + 1e-300 + rtol * a.count * (rtol * scale) ** 2


# ------------------------------------------------------------------ moments: exactness


def test_moments_match_numpy_small():
    x = np.array([1.0, 2, 3, 4, 10])
    m = Moments().update(x)
    assert m.count == 5 and m.nan_count == 0
    assert m.mean == 4.0 and m.min == 1.0 and m.max == 10.0
    assert m.var == pytest.approx(np.var(x), rel=1e-15)
    assert m.std == pytest.approx(np.std(x), rel=1e-15)
    assert m.std_sample == pytest.approx(np.std(x, ddof=1), rel=1e-15)


def test_merging_1000_blocks_is_exact_when_mean_is_1e8_sd(rng):
    n = 200_000
    x = 1e8 + rng.standard_normal(n)  # mean = 1e8 * SD
    blocks = split(x, rng.choice(np.arange(1, n), 999, replace=False))
    assert len(blocks) == 1000
    # half the blocks go through update, and the rest into separate accumulators merged in
    m = Moments()
    for i, b in enumerate(blocks):
        m.update(b) if i % 2 else m.merge(Moments().update(b))
    ref_mean, ref_m2 = two_pass(x)
    exact_mean, exact_m2 = fsum_moments(x)
    assert m.count == n
    for mean, m2 in ((ref_mean, ref_m2), (exact_mean, exact_m2)):
        assert abs(m.mean - mean) <= 1e-12 * abs(mean)
        assert abs(m.m2 - m2) <= 1e-12 * m2
    assert abs(m.std - math.sqrt(exact_m2 / n)) <= 1e-12 * math.sqrt(exact_m2 / n)
    # the test can fail: the naive one-pass sum / sum-of-squares is far off on the same data ...
    naive_m2 = float(np.sum(x * x) - np.sum(x) ** 2 / n)
    assert abs(naive_m2 - exact_m2) > 1e-3 * exact_m2
    # ... and so is Chan's formula with a plain float64 running mean (why Moments keeps mean_lo)
    cnt, mean, m2 = 0, 0.0, 0.0
    for b in blocks:
        nb, mb = b.size, float(b.mean())
        m2b = float(np.sum((b - mb) ** 2))
        delta, cnt = mb - mean, cnt + nb
        mean += delta * nb / cnt
        m2 += m2b + delta * delta * (cnt - nb) * nb / cnt
    assert abs(m2 - exact_m2) > 1e-12 * exact_m2


def test_nonfinite_values_are_skipped_and_counted():
    m = Moments().update([1.0, np.nan, 3.0, np.inf, -np.inf])
    assert (m.count, m.nan_count, m.mean, m.min, m.max) == (2, 3, 2.0, 1.0, 3.0)
    m.update(np.full(4, np.nan))
    assert (m.count, m.nan_count, m.mean) == (2, 7, 2.0)


def test_empty_moments():
    m = Moments().update(np.array([]))
    assert m.count == 0
    assert all(math.isnan(v) for v in (m.mean, m.var, m.std, m.std_sample, m.min, m.max))
    d = m.to_dict()
    assert d["min"] is None and d["max"] is None
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert Moments.from_dict(d).to_dict() == d
    one = Moments().update([5.0])
    assert one.std == 0.0 and math.isnan(one.std_sample)
    assert Moments().merge(one).to_dict() == one.to_dict() == one.merge(Moments()).to_dict()


def test_block_shape_and_dtype_do_not_matter():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)[:, ::2]
    assert Moments().update(x).to_dict() == Moments().update(x.astype(np.float64).ravel()).to_dict()


def test_constant_data_has_zero_variance():
    m = moments_of([np.full(7, 0.1), np.full(3, 0.1)])
    assert m.m2 == 0.0 and m.std == 0.0 and m.mean == 0.1


# ------------------------------------------------------------------ moments: merge laws (hypothesis)

finite = st.floats(-1e6, 1e6, allow_nan=False)
values = st.one_of(finite, st.just(np.nan), st.just(np.inf))
arrays = hnp.arrays(np.float64, st.integers(0, 60), elements=values)
offsets = st.sampled_from([0.0, 1.0, -3e5, 1e9])


@settings(max_examples=150, deadline=None)
@given(arrays, offsets, st.lists(st.integers(0, 60), max_size=6))
def test_merge_of_any_split_equals_the_whole(x, offset, cuts):
    x = x + offset
    whole = Moments().update(x)
    parts = [Moments().update(b) for b in split(x, cuts)]
    merged = Moments()
    for p in parts:
        merged.merge(p)
    assert_moments_close(merged, whole)
    streamed = moments_of(split(x, cuts))
    assert_moments_close(streamed, whole)


@settings(max_examples=100, deadline=None)
@given(arrays, arrays, arrays)
def test_merge_is_commutative_and_associative(a, b, c):
    A, B, C = (Moments().update(v) for v in (a, b, c))
    assert_moments_close(A.copy().merge(B), B.copy().merge(A))
    left = A.copy().merge(B).merge(C)
    right = A.copy().merge(B.copy().merge(C))
    assert_moments_close(left, right)
    assert_moments_close(left, Moments().update(np.concatenate([a, b, c])))


@settings(max_examples=50, deadline=None)
@given(arrays)
def test_moments_json_round_trip_is_exact(x):
    m = Moments().update(x)
    d = m.to_dict()
    back = json.loads(json.dumps(d, allow_nan=False))
    assert back == d
    assert Moments.from_dict(back).to_dict() == d


def test_merge_type_error():
    with pytest.raises(TypeError, match="Moments"):
        Moments().merge(Histogram(0, 1, 2))


# ------------------------------------------------------------------ histograms


def test_histogram_counts_edges_and_outside():
    h = Histogram(0, 10, 5).update([-1, 0, 1.999, 2, 9.999, 10, 10.5, np.nan, np.inf, -np.inf])
    assert h.counts.dtype == np.int64
    assert h.counts.tolist() == [2, 1, 0, 0, 2]  # 10 == hi is in the last bin
    assert (h.underflow, h.overflow, h.nan, h.total) == (2, 2, 1, 9)
    np.testing.assert_array_equal(h.edges, [0, 2, 4, 6, 8, 10])
    with pytest.raises(ValueError):
        h.edges[0] = 1  # read-only


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float64, st.integers(0, 200), elements=st.floats(-50, 250, allow_nan=False)),
       st.integers(1, 400), st.sampled_from([(0.0, 180.0), (-3.0, 6.0), (0.1, 0.7)]))
def test_histogram_matches_numpy(x, bins, rng_lohi):
    lo, hi = rng_lohi
    h = Histogram(lo, hi, bins).update(x)
    ref, _ = np.histogram(x, bins=np.linspace(lo, hi, bins + 1))
    np.testing.assert_array_equal(h.counts, ref)
    assert h.underflow == np.sum(x < lo) and h.overflow == np.sum(x > hi)


def test_histogram_values_on_edges_go_right(rng):
    h = Histogram(0, 180, 1800)
    h.update(h.edges)
    assert h.counts[:-1].tolist() == [1] * 1799 and h.counts[-1] == 2


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float64, st.integers(0, 100), elements=st.one_of(st.floats(-10, 190), st.just(np.nan))),
       st.lists(st.integers(0, 100), max_size=5))
def test_histogram_merge_of_any_split_equals_the_whole(x, cuts):
    whole = Histogram(0, 180, 36).update(x)
    merged = Histogram(0, 180, 36)
    for b in reversed(split(x, cuts)):
        merged.merge(Histogram(0, 180, 36).update(b))
    assert merged.to_dict() == whole.to_dict()


@pytest.mark.parametrize("other", [(0, 180, 1800), (0, 90, 180), (1, 180, 180), (0, 180.0000001, 180)])
def test_histogram_merge_needs_identical_bins(other):
    h = Histogram(0, 180, 180).update([1.0, 2.0])
    before = h.to_dict()
    with pytest.raises(ValueError, match="different bins"):
        h.merge(Histogram(*other))
    assert h.to_dict() == before


@pytest.mark.parametrize("args", [(1, 1, 10), (2, 1, 10), (0, np.inf, 10), (0, 1, 0), (0, 1, 2.5),
                                  (0, 1, True)])
def test_histogram_rejects_bad_ranges(args):
    with pytest.raises(ValueError):
        Histogram(*args)


def test_histogram_json_round_trip():
    h = Histogram(-3, 6, 180).update([-5.0, 0.3, 2.0, np.nan, 7.0])
    d = h.to_dict()
    back = json.loads(json.dumps(d, allow_nan=False))
    assert back == d and Histogram.from_dict(back).to_dict() == d
    assert all(type(c) is int for c in back["counts"])
    with pytest.raises(ValueError, match="counts"):
        Histogram.from_dict({**d, "counts": d["counts"][:-1]})


def test_histogram_quantile(rng):
    x = rng.normal(90, 5, 50_000)
    h = Histogram(0, 180, 1800).update(x)
    qs = [0.001, 0.1, 0.5, 0.9, 0.999]
    np.testing.assert_allclose(h.quantile(qs), np.quantile(x, qs), atol=0.1)  # one bin width
    assert h.quantile(0.5) == pytest.approx(np.median(x), abs=0.1)
    h2 = Histogram(0, 10, 10).update([2.5, 2.5, 7.5, 7.5])
    assert h2.quantile(0.0) == 2.0 and h2.quantile(1.0) == 8.0 and h2.quantile(0.25) == 2.5
    assert h2.quantile(0.5) == 3.0  # the end of the first occupied bin
    h3 = Histogram(0, 1, 2).update([-1, -1, 0.25, 5])
    assert h3.quantile(0.25) == 0.0 and h3.quantile(1.0) == 1.0  # clamped to lo / hi
    assert math.isnan(Histogram(0, 1, 3).quantile(0.5))
    assert Histogram(0, 1, 3).update([7.0]).quantile([0.0, 1.0]).tolist() == [1.0, 1.0]  # all overflow
    with pytest.raises(ValueError, match="q"):
        h.quantile(1.5)


# ------------------------------------------------------------------ the native kernels against the slow twin
#
# Moments.update, Histogram.update and Quantity.update run native code
# (_native/stats.c).  The slow twin below is the NumPy code they ran before; it
# is the oracle.  Histogram counts must be identical to it; sums may round
# differently, so the moments are held to math.fsum instead.


def twin_moments(x) -> tuple:
    """(count, nan_count, m, r, m2, min, max) of one block, as the NumPy code computed them."""
    x = np.asarray(x, dtype=np.float64).ravel()
    finite = np.isfinite(x)
    nan_count = x.size - int(np.count_nonzero(finite))
    x = x[finite]
    n = x.size
    if n == 0:
        return 0, nan_count, 0.0, 0.0, 0.0, math.inf, -math.inf
    m = float(x.sum()) / n  # NumPy's pairwise summation
    dev = x - m
    r = float(dev.sum())
    m2 = max(float(np.sum(dev * dev)) - r * r / n, 0.0)
    return n, nan_count, m, r, m2, float(x.min()), float(x.max())


def twin_histogram(v, lo: float, hi: float, bins: int) -> tuple[list, int, int, int]:
    """(counts, underflow, overflow, nan) by Histogram.update's NumPy rule."""
    v = np.asarray(v, dtype=np.float64).ravel()
    edges = np.linspace(lo, hi, bins + 1)
    upper = np.append(edges[1:-1], math.inf)  # the last bin is closed
    isnan, below, above = np.isnan(v), v < lo, v > hi
    v = v[~(isnan | below | above)]
    idx = ((v - lo) * (bins / (hi - lo))).astype(np.intp)
    np.minimum(idx, bins - 1, out=idx)
    idx -= v < edges[idx]
    idx += v >= upper[idx]
    counts = np.bincount(idx, minlength=bins).tolist()
    return counts, int(np.count_nonzero(below)), int(np.count_nonzero(above)), int(np.count_nonzero(isnan))


def libm_log10(x) -> np.ndarray:
    """log10 as the C library gives it, which the native log10 histograms use (math.log10 calls it,
    but raises where C returns -inf or NaN).  NumPy's own log10 may differ from it in the last bit."""
    return np.array([math.log10(v) if v > 0 else (-math.inf if v == 0 else math.nan) for v in np.ravel(x)])


def counted(h: Histogram) -> tuple[list, int, int, int]:
    return h.counts.tolist(), h.underflow, h.overflow, h.nan


def in_blocks(x: np.ndarray, update) -> None:
    """Feed x in blocks of awkward lengths: around the native code's groups of 2 and 8, its leaves of 128
    and its chunks of 256 values."""
    start = 0
    for size in (1, 2, 3, 7, 9, 255, 256, 257, 513):
        update(x[start:start + size])
        start += size
    update(x[start:])


EDGE_CASES = (0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1e-300, 1e300, -1e300,
              1.7976931348623157e308, -1.7976931348623157e308, math.inf, -math.inf, math.nan)
HIST_RANGES = sorted({(s.lo, s.hi, s.bins) for s in QUANTITIES.values()}) + [
    (0.0, 180.0, 1800), (0.1, 0.7, 7), (0.0, 1.0, 1), (-1000.0, 1000.0, 999), (1e8, 1e8 + 1, 10),
    (-2.0**-30, 2.0**-30, 64), (1e13, 1e13 + 1, 7)]  # the last is too narrow for the fast path


def nasty_values(rng, lo: float, hi: float, bins: int) -> np.ndarray:
    """Every edge and its neighbours one and two ulps away, points around the native fast path's
    slack (1e-6 of a bin) on both sides of every edge, bin centres, lo, hi, the edge cases, and
    random values over [lo - 2 bins, hi + 2 bins]; shuffled."""
    e = np.linspace(lo, hi, bins + 1)
    w = (hi - lo) / bins
    up1, down1 = np.nextafter(e, np.inf), np.nextafter(e, -np.inf)
    parts = [e, up1, down1, np.nextafter(up1, np.inf), np.nextafter(down1, -np.inf), (e[:-1] + e[1:]) / 2,
             np.array([lo, hi, *EDGE_CASES]), rng.uniform(lo - 2 * w, hi + 2 * w, 2000)]
    parts += [e + f * w for f in (1e-9, 5e-7, 1e-6, 2e-6, 4e-6, 1e-4)]
    parts += [e - f * w for f in (1e-9, 5e-7, 1e-6, 2e-6, 4e-6, 1e-4)]
    x = np.concatenate(parts)
    return x[rng.permutation(x.size)]


@pytest.mark.parametrize("lo, hi, bins", HIST_RANGES)
def test_native_histogram_equals_the_slow_twin_on_nasty_values(rng, lo, hi, bins):
    x = nasty_values(rng, lo, hi, bins)
    h = Histogram(lo, hi, bins)
    in_blocks(x, h.update)
    assert counted(h) == twin_histogram(x, lo, hi, bins)
    assert h.total + h.nan == x.size


def log10_crossings(edges: np.ndarray) -> np.ndarray:
    """For every edge e, the smallest double x with log10(x) >= e (C's log10) and the double below it."""
    out = []
    for e in edges:
        x = 10.0 ** e
        while math.log10(x) >= e:
            x = np.nextafter(x, 0.0)
        while math.log10(x) < e:
            x = np.nextafter(x, math.inf)
        out += [x, np.nextafter(x, 0.0)]
    return np.array(out)


LOG_RANGES = sorted({(s.lo, s.hi, s.bins) for s in QUANTITIES.values() if s.scale == "log10"}) + [
    (-3.0, 6.0, 1800), (-1.0, 1.0, 3), (-306.0, 306.0, 612),
    (-320.0, 10.0, 33)]  # reaches into the subnormals: every value takes the exact log10


@pytest.mark.parametrize("lo, hi, bins", LOG_RANGES)
def test_native_log10_histogram_equals_the_slow_twin_on_nasty_values(rng, lo, hi, bins):
    e = np.linspace(lo, hi, bins + 1)
    w = (hi - lo) / bins
    x = np.concatenate([10.0 ** e, log10_crossings(e), np.array(EDGE_CASES), [-1.0, -1e-3, 1e-3, 1e6],
                        10.0 ** np.concatenate([e + f * w for f in (-1e-4, -3e-5, -1e-5, 1e-5, 3e-5, 1e-4)]),
                        10.0 ** rng.uniform(lo - 1, hi + 1, 2000), -(10.0 ** rng.uniform(lo, hi, 50))])
    x = x[rng.permutation(x.size)]
    q = Quantity("norm_hidden", lo=lo, hi=hi, bins=bins)
    in_blocks(x, q.update)
    assert counted(q.histogram) == twin_histogram(libm_log10(x), lo, hi, bins)
    assert q.moments.count + q.moments.nan_count == x.size


def test_native_log10_histogram_equals_the_numpy_code_on_plain_data(rng):
    """Away from edges, C's log10 and NumPy's (which may differ in the last bit) bin alike."""
    x = np.concatenate([rng.lognormal(3, 1, 5000), rng.lognormal(2, 4, 5000), [0.0, -1.0, np.nan, np.inf]])
    q = Quantity("max_abs_hidden").update(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        assert counted(q.histogram) == twin_histogram(np.log10(x), -3.0, 6.0, 180)


def test_log10_guess_error_is_below_its_bound(rng):
    from geonorm_core._native import _core
    bound = 6e-7  # GN_LOG10_GUESS_ERR in stats.h
    exps = np.repeat(np.arange(-1022, 1024), 8)
    mant = np.concatenate([rng.uniform(1.0, 2.0, exps.size - 6), [1.0, np.nextafter(2.0, 0), math.sqrt(2),
                                                                  np.nextafter(math.sqrt(2), 0),
                                                                  math.sqrt(0.5) * 2, 1.999]])
    x = np.ldexp(mant, exps)
    x = x[np.isfinite(x) & (x >= np.finfo(np.float64).tiny)]
    err = max(abs(_core.log10_guess(v) - math.log10(v)) for v in x)
    assert err < bound
    assert err > bound / 10  # the bound is about the real error, not far above it


def test_log10_guess_of_other_inputs_stays_out_of_any_trusted_range(rng):
    """The fast path trusts a guess only inside [lo, hi] with lo > -307, hi < 307 (stats.c, part 5):
    zero, negative, subnormal, infinite and NaN inputs must guess outside that."""
    from geonorm_core._native import _core
    u64 = np.uint64
    bits = np.concatenate([rng.integers(0, 1 << 52, 5000, dtype=u64),  # +0 and subnormals
                           rng.integers(1 << 63, 2**64 - 1, 5000, dtype=u64, endpoint=True),  # negatives
                           rng.integers(0x7FF0000000000000, 2**63 - 1, 5000, dtype=u64, endpoint=True),  # Inf, NaN
                           np.array([0, 1, (1 << 52) - 1, 1 << 63, 0x7FF0000000000000], dtype=u64)])
    g = np.array([_core.log10_guess(v) for v in bits.view(np.float64)])
    assert np.all((g < -307.6) | (g > 308.0))


def test_native_histogram_wrapper_checks_lengths():
    from geonorm_core._native import _core
    x = np.zeros(3)
    with pytest.raises(ValueError, match="bins"):
        _core.histogram_add(x, 0.0, 1.0, np.linspace(0, 1, 4), np.zeros(4, np.int64), False)
    with pytest.raises(ValueError, match="bins"):
        _core.quantity_add(x, 0.0, 1.0, np.zeros(1), np.zeros(0, np.int64), True)


def moments_tuple(x) -> tuple:
    from geonorm_core._native import _core
    return _core.block_moments(np.ascontiguousarray(x, dtype=np.float64))


def hard_blocks(rng) -> dict:
    n = 1_000_000
    mixed = rng.normal(3, 2, 5000)
    mixed[rng.choice(5000, 300, replace=False)] = rng.choice([np.nan, np.inf, -np.inf], 300)
    return {
        "mean 1e8 SD, 1e6 values": 1e8 + rng.standard_normal(n),
        "mean -1e12 SD": -1e12 * (1 + 1e-12 * rng.standard_normal(10_001)),
        "mixed NaN and Inf": mixed,
        "tiny and huge": np.concatenate([rng.normal(0, 1e-200, 100), rng.normal(0, 1e100, 100)]),
        "single": np.array([3.25]),
        "two": np.array([1e8, 1e8 + 1]),
        "constant": np.full(1001, 0.1),
        "Inf only in the tail group": np.concatenate([rng.random(133), [np.inf]]),
    }


@pytest.mark.parametrize("case", ["mean 1e8 SD, 1e6 values", "mean -1e12 SD", "mixed NaN and Inf",
                                  "tiny and huge", "single", "two", "constant", "Inf only in the tail group"])
def test_native_moments_match_fsum(rng, case):
    x = hard_blocks(rng)[case]
    finite = x[np.isfinite(x)]
    n, nan_count, m, r, m2, lo, hi = moments_tuple(x)
    assert (n, nan_count, lo, hi) == (finite.size, x.size - finite.size, finite.min(), finite.max())
    exact_mean, exact_m2 = fsum_moments(finite)
    ulp = np.spacing(max(abs(lo), abs(hi)))  # of the data: the mean may cancel to far less
    assert abs(m + r / n - exact_mean) <= 2 * ulp
    assert abs(m2 - exact_m2) <= 1e-14 * exact_m2 + 1e-300
    # and so does the whole Moments, within a few ulps of the one-shot result
    mom = Moments().update(x)
    assert (mom.count, mom.nan_count, mom.min, mom.max) == (n, nan_count, lo, hi)
    assert abs(mom.mean - exact_mean) <= 2 * ulp
    # the slow twin (NumPy's pairwise sums) is as close or further
    tn, tnan, _, _, tm2, tlo, thi = twin_moments(x)
    assert (tn, tnan, tlo, thi) == (n, nan_count, lo, hi)
    assert abs(m2 - exact_m2) <= max(abs(tm2 - exact_m2), 1e-15 * exact_m2) * 4 + 1e-300


@pytest.mark.parametrize("x", [np.array([]), np.full(5, np.nan), np.array([np.inf, -np.inf, np.nan])],
                         ids=["empty", "all NaN", "no finite value"])
def test_native_moments_of_no_finite_value(x):
    assert moments_tuple(x) == (0, x.size, 0.0, 0.0, 0.0, math.inf, -math.inf) == twin_moments(x)


def test_native_moments_of_every_short_length(rng):
    """Lengths 0..300 and their tails: NaN padding, masked and unmasked groups."""
    for size in range(301):
        x = rng.normal(5, 3, size)
        if size % 3 == 1:
            x[rng.integers(size)] = np.nan
        finite = x[np.isfinite(x)]
        n, nan_count, m, r, m2, lo, hi = moments_tuple(x)
        assert (n, nan_count) == (finite.size, x.size - finite.size)
        if n:
            exact_mean, exact_m2 = fsum_moments(finite)
            assert (lo, hi) == (finite.min(), finite.max())
            assert abs(m + r / n - exact_mean) <= 4 * np.spacing(8.0)
            assert abs(m2 - exact_m2) <= 1e-14 * exact_m2 + 1e-300


def test_native_moments_skip_non_finite_values_exactly(rng):
    """Appending NaN or Inf sends the block through the masked passes, which leave the other values'
    sums untouched: the same bits."""
    x = 1e8 + rng.standard_normal(1001)
    ref = moments_tuple(x)
    for bad in (np.nan, np.inf, -np.inf):
        got = moments_tuple(np.append(x, bad))
        assert got[1] == 1 and got[:1] + got[2:] == ref[:1] + ref[2:]


def test_native_updates_take_any_shape_and_dtype():
    x = (np.arange(48, dtype=np.float32).reshape(4, 3, 4)[:, ::2] - 10) * 7.5
    flat = x.astype(np.float64).ravel()
    for make in (lambda: Histogram(-30, 300, 33), lambda: Quantity("norm_hidden"),
                 lambda: Quantity("rotation"), Moments):
        a, b = make().update(x), make().update(flat)
        assert a.to_dict() == b.to_dict()
        assert make().update(list(flat)).to_dict() == b.to_dict()
        big_endian = flat.astype(">f8")
        assert make().update(big_endian).to_dict() == b.to_dict()


# ------------------------------------------------------------------ quantities and sites


def test_quantity_table():
    assert QUANTITY_NAMES == ("angle_hidden", "angle_post", "norm_hidden", "norm_post", "rotation",
                              "max_abs_hidden", "ln_rms_gap")
    for name in ("angle_hidden", "angle_post", "rotation"):
        assert (QUANTITIES[name].lo, QUANTITIES[name].hi, QUANTITIES[name].scale) == (0, 180, "linear")
    for name in ("norm_hidden", "norm_post", "max_abs_hidden"):
        assert QUANTITIES[name].scale == "log10"
    assert (QUANTITIES["ln_rms_gap"].lo, QUANTITIES["ln_rms_gap"].hi) == (0, 2)


def test_log_quantity_histograms_log10_but_moments_are_of_the_value():
    q = Quantity("norm_hidden").update([0.0, 1.0, 100.0, 1e7, -1.0])
    assert q.moments.count == 5 and q.mean == pytest.approx(2000020.2)
    h = q.histogram
    assert (h.underflow, h.overflow, h.nan) == (1, 1, 1)  # log10(0) = -inf, 1e7 > 1e6, log10(-1)
    assert h.counts[h.bins // 3] == 1 and h.counts[h.bins * 5 // 9] == 1  # log10 = 0 and 2
    assert q.edges[0] == pytest.approx(1e-3) and q.edges[-1] == pytest.approx(1e6)
    assert Quantity("norm_post").update(np.full(10, 50.0)).quantile(0.5) == pytest.approx(50, rel=0.07)


def test_quantity_bins_and_errors():
    assert Quantity("angle_hidden", bins=1800).histogram.bins == 1800
    with pytest.raises(ValueError, match="unknown quantity"):
        Quantity("angle")
    with pytest.raises(ValueError, match="cannot merge quantity"):
        Quantity("angle_hidden").merge(Quantity("angle_post"))
    a, b = Quantity("rotation"), Quantity("rotation", bins=90).update([1.0])
    with pytest.raises(ValueError, match="different bins"):
        a.merge(b)
    assert a.moments.count == 0  # nothing half-merged


def site_meta(**kw):
    return {"name": "model.layers.3.input_layernorm", "layer": 3, "role": "LN1", "kind": "rmsnorm",
            "d": np.int64(576), "shape": (2, 3), **kw}


def feed(site: SiteStats, rng, n: int) -> None:
    site.update(angle_hidden=rng.normal(90, 3, n), angle_post=rng.normal(89, 1, n),
                norm_hidden=rng.lognormal(3, 1, n), norm_post=np.full(n, 24.0),
                rotation=rng.uniform(0, 60, n), max_abs_hidden=rng.lognormal(2, 2, n),
                ln_rms_gap=rng.uniform(0, 0.01, n))


def test_site_update_merge_and_json_round_trip(rng):
    a, b = SiteStats(site_meta(), bins=1800), SiteStats(site_meta(), bins=1800)
    feed(a, rng, 1000)
    feed(b, rng, 333)
    b.update(angle_hidden=[np.nan, 91.0])  # quantities not given stay as they are
    assert a.meta["d"] == 576 and type(a.meta["d"]) is int and a.meta["shape"] == [2, 3]
    assert a["angle_hidden"].histogram.bins == 1800 and a["norm_hidden"].histogram.bins == 180

    d = b.to_dict()
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back == d
    c = SiteStats.from_dict(back)
    assert c.to_dict() == d and json.dumps(c.to_dict(), allow_nan=False) == text
    mom = back["quantities"]["angle_hidden"]["moments"]
    assert type(mom["count"]) is int and type(mom["mean"]) is float and type(back["tokens"]) is int

    total = a.copy().merge(c)
    assert total.tokens == 1335
    assert total["angle_hidden"].moments.count == 1334 and total["angle_hidden"].moments.nan_count == 1
    assert total["angle_post"].moments.count == 1333
    assert total.to_dict() == a.merge(b).to_dict()
    s = total["norm_post"].summary()
    assert s["mean"] == 24.0 and s["std"] == 0.0 and s["count"] == 1333
    assert SiteStats(site_meta())["rotation"].summary()["mean"] is None


def test_site_errors():
    s = SiteStats(site_meta())
    with pytest.raises(ValueError, match="sizes"):
        s.update(angle_hidden=np.zeros(3), angle_post=np.zeros(4))
    with pytest.raises(ValueError, match="not a quantity"):
        s.update(angle=np.zeros(3))
    with pytest.raises(TypeError, match="at least one"):
        s.update()
    assert s.tokens == 0 and s["angle_hidden"].moments.count == 0
    with pytest.raises(ValueError, match="metadata"):
        s.merge(SiteStats(site_meta(layer=4)))
    with pytest.raises(ValueError, match="different bins"):
        s.merge(SiteStats(site_meta(), bins=1800))
    with pytest.raises(ValueError, match="different quantities"):
        s.merge(SiteStats(site_meta(), names=["angle_hidden"]))
    with pytest.raises(TypeError, match="meta"):
        SiteStats({"gain": np.ones(3)})
    with pytest.raises(ValueError, match="unknown quantity"):
        SiteStats(names=["angle"])
    with pytest.raises(ValueError, match="bins"):
        SiteStats(bins={"angle_post": 10}, names=["angle_hidden"])
    assert SiteStats(bins={"norm_post": 90})["norm_post"].histogram.bins == 90


# ------------------------------------------------------------------ the random baseline (G14)


def null_angles(rng, d: int, n: int) -> np.ndarray:
    """Angles with 1 of n isotropic Gaussian vectors in R^d, exactly in law and cheaply.

    x . u ~ N(0, 1) and ||P x||^2 ~ chi^2_{d-1}, independent (u = 1/sqrt(d)), so
    theta = atan2(||P x||, x . u).
    """
    return np.degrees(np.arctan2(np.sqrt(rng.chisquare(d - 1, n)), rng.standard_normal(n)))


def test_null_angles_formula_matches_real_vectors(rng):
    d, n = 576, 20_000
    x = rng.standard_normal((n, d))
    theta = np.degrees(np.arccos(x.sum(1) / (np.sqrt(d) * np.linalg.norm(x, axis=1))))
    from scipy.stats import ks_2samp
    assert ks_2samp(theta, null_angles(rng, d, n)).pvalue > 1e-3
    h = Histogram(0, 180, 1800).update(theta)
    assert compare_to_baseline(h, d)["ks"] < 0.02


@pytest.mark.parametrize("d, table", [(576, 2.39), (1600, 1.43), (4096, 0.90)])
def test_baseline_sd_matches_the_table(d, table):
    sd, approx = baseline_angle_sd(d)
    assert approx == pytest.approx(180 / math.pi / math.sqrt(d), rel=1e-15)
    assert round(approx, 2) == table and round(sd, 2) == table
    assert approx < sd < approx * (1 + 1.5 / d)  # the exact variance is 1/d + O(1/d^2)


def test_baseline_sd_exact_small_d():
    assert baseline_angle_sd(2).sd == pytest.approx(180 / math.sqrt(12), rel=1e-12)  # uniform
    # d = 3: density sin(theta)/2, E[(theta - pi/2)^2] = pi^2/4 - 2
    assert baseline_angle_sd(3).sd == pytest.approx(math.degrees(math.sqrt(math.pi ** 2 / 4 - 2)), rel=1e-12)
    with pytest.raises(ValueError, match="d"):
        baseline_angle_sd(1)


@pytest.mark.parametrize("d", [2, 3, 10, 576, 4096, 16384])
def test_baseline_integrator_gives_e_cos2_1_over_d(d):
    from geonorm_core.analysis.baseline import _null_expect
    assert _null_expect(d, lambda t: math.sin(t) ** 2) == pytest.approx(1 / d, rel=1e-11)  # G14


def test_baseline_sd_against_beta_samples(rng):
    from scipy.stats import beta
    d = 576
    b = beta.rvs((d - 1) / 2, (d - 1) / 2, size=400_000, random_state=rng)
    theta = np.degrees(np.arccos(2 * b - 1))
    assert theta.std() == pytest.approx(baseline_angle_sd(d).sd, rel=5e-3)


@pytest.mark.parametrize("d", [2, 7, 576, 4096])
def test_baseline_interval_and_cdf(d):
    lo, hi = baseline_interval(d)
    assert lo + hi == pytest.approx(180, abs=1e-12)
    assert baseline_cdf(lo, d) == pytest.approx(0.0005, rel=1e-8)
    assert baseline_cdf(hi, d) == pytest.approx(0.9995, rel=1e-8)
    assert baseline_cdf(90.0, d) == pytest.approx(0.5, abs=1e-14)
    assert baseline_cdf([0.0, 180.0], d).tolist() == [0.0, 1.0]
    if d > 100:  # cos theta ~ N(0, 1/d): the 99.9% interval is about 90 +- 3.29 SD
        assert (90 - lo) / baseline_angle_sd(d).sd == pytest.approx(3.2905, rel=0.01)
    with pytest.raises(ValueError, match="level"):
        baseline_interval(d, level=1.0)


@pytest.mark.parametrize("bins", [180, 1800])
def test_isotropic_angles_pass_the_baseline(rng, bins):
    d = 576
    theta = null_angles(rng, d, 100_000)
    r = compare_to_baseline(Histogram(0, 180, bins).update(theta), d)
    assert r["n"] == 100_000 and r["ks"] < 0.01
    lo, hi = r["interval"]
    exact = np.mean((theta < lo) | (theta > hi))
    assert r["outside_fraction_bounds"][0] <= exact <= r["outside_fraction_bounds"][1]
    if bins == 1800:  # 0.1 degree bins resolve the interval's ends: the estimate is near exact
        assert abs(r["outside_fraction"] - exact) < 2e-4
        assert r["outside_fraction"] == pytest.approx(0.001, abs=4e-4)  # ~100 +- 10 tokens
    json.dumps(r, allow_nan=False)
    assert all(type(v) in (int, float, list) for v in r.values())


def test_outliers_fail_the_baseline(rng):
    d, n = 576, 100_000
    shifted = rng.normal(89, 9, n)  # the paper's LayerNorm-model spread
    r = compare_to_baseline(Histogram(0, 180, 180).update(shifted), d)
    assert r["ks"] > 0.2 and r["outside_fraction"] > 0.3
    # 1% outlier tokens: the KS distance barely moves, the outside fraction jumps 10x
    mix = np.concatenate([null_angles(rng, d, n - 1000), rng.uniform(40, 70, 1000)])
    r = compare_to_baseline(Histogram(0, 180, 1800).update(mix), d)
    assert r["ks"] < 0.02
    assert r["outside_fraction"] == pytest.approx(0.011, abs=0.002)


def test_outside_fraction_is_exact_on_edges(monkeypatch):
    from geonorm_core.analysis import baseline
    monkeypatch.setattr(baseline, "baseline_interval", lambda d, level: (85.0, 95.0))
    h = Histogram(80, 100, 4).update([80.5, 86, 91, 96, 99])  # edges 80, 85, 90, 95, 100
    r = compare_to_baseline(h, 576)
    assert r["outside_fraction"] == 0.6 and r["outside_fraction_bounds"] == [0.6, 0.6]
    monkeypatch.setattr(baseline, "baseline_interval", lambda d, level: (86.0, 95.0))
    r = compare_to_baseline(h, 576)  # 86 cuts the bin [85, 90) holding 86: 1/5 of it apportioned
    assert r["outside_fraction"] == pytest.approx(0.6 + 0.2 / 5)
    assert r["outside_fraction_bounds"] == [0.6, 0.8]


def test_compare_to_baseline_errors():
    with pytest.raises(ValueError, match="empty"):
        compare_to_baseline(Histogram(0, 180, 180).update([np.nan]), 576)
    with pytest.raises(ValueError, match="does not cover"):
        compare_to_baseline(Histogram(85, 95, 10).update([90.0]), 576)
    with pytest.raises(ValueError, match="within"):
        compare_to_baseline(Histogram(-3, 6, 10).update([1.0]), 576)
    with pytest.raises(TypeError, match="Histogram"):
        compare_to_baseline(np.zeros(180), 576)
    with pytest.raises(ValueError, match="d"):
        compare_to_baseline(Histogram(0, 180, 180).update([90.0]), 1)
