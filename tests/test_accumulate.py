"""accumulate: exact mergeable moments, histograms, site stats, and the random baseline (G14)."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from geonorm_core.accumulate import (QUANTITIES, QUANTITY_NAMES, Histogram, Moments, Quantity, SiteStats,
                                     baseline_angle_sd, baseline_cdf, baseline_interval, compare_to_baseline)


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
def test_baseline_sd_matches_science_md(d, table):
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
    from geonorm_core.accumulate import _null_expect
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
    from geonorm_core import accumulate
    monkeypatch.setattr(accumulate, "baseline_interval", lambda d, level: (85.0, 95.0))
    h = Histogram(80, 100, 4).update([80.5, 86, 91, 96, 99])  # edges 80, 85, 90, 95, 100
    r = compare_to_baseline(h, 576)
    assert r["outside_fraction"] == 0.6 and r["outside_fraction_bounds"] == [0.6, 0.6]
    monkeypatch.setattr(accumulate, "baseline_interval", lambda d, level: (86.0, 95.0))
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
