"""decompose: the oracle itself, then the native kernels against it on every SIMD path."""

import math
from fractions import Fraction

import numpy as np
import pytest
from nasty import DIMS, DTYPES, EPS64, assert_decomposition, extreme_rows_f64, nasty_rows

import geonorm_core as gn
from geonorm_core import slow

FIELDS = ("mean", "coef", "norm", "perp_norm", "cos", "angle", "std", "rms")


# ------------------------------------------------------------- the oracle


def test_oracle_hand_computed():
    ref = slow.decompose(np.array([[1.0, 2, 3, 4], [0, 0, 0, 0], [-2, -2, -2, -2], [1, -1, 1, -1]]))
    np.testing.assert_allclose(ref.mean, [2.5, 0, -2, 0], rtol=0, atol=0)
    np.testing.assert_allclose(ref.coef, [5, 0, -4, 0], rtol=1e-15)
    np.testing.assert_allclose(ref.norm, [math.sqrt(30), 0, 4, 2], rtol=1e-15)
    np.testing.assert_allclose(ref.perp_norm, [math.sqrt(5), 0, 0, 2], rtol=1e-15)
    np.testing.assert_allclose(ref.std, [math.sqrt(5) / 2, 0, 0, 1], rtol=1e-15)
    np.testing.assert_allclose(ref.rms, [math.sqrt(30) / 2, 0, 2, 1], rtol=1e-15)
    np.testing.assert_allclose(ref.cos[[0, 2, 3]], [5 / math.sqrt(30), -1, 0], rtol=1e-15)
    np.testing.assert_allclose(
        ref.angle[[0, 2, 3]], [math.degrees(math.acos(5 / math.sqrt(30))), 180, 90], rtol=1e-14
    )
    assert np.isnan(ref.cos[1]) and np.isnan(ref.angle[1]) and ref.undefined_rows == 1


def test_oracle_scaling_reaches_the_ends_of_the_double_range():
    sub = np.finfo(np.float64).smallest_subnormal
    ref = slow.decompose(np.array([[3e300, 4e300], [3 * sub, 4 * sub], [np.nan, 1], [np.inf, 1]]))
    assert ref.norm[0] == pytest.approx(5e300, rel=1e-15)
    assert ref.norm[1] == 5 * sub and ref.mean[1] == 4 * sub  # 3.5 sub rounds to even
    assert ref.angle[0] == pytest.approx(math.degrees(math.atan2(1 / math.sqrt(2), 7 / math.sqrt(2))), rel=1e-14)
    for f in FIELDS:
        assert np.isnan(getattr(ref, f)[2:]).all(), f


def test_oracle_against_exact_rational_arithmetic():
    rng = np.random.default_rng(5)
    for row in (rng.standard_normal(9), 1e6 + rng.standard_normal(17), rng.standard_normal(33) * 1e-30):
        ref = slow.decompose(row)
        q = [Fraction(v) for v in row]
        mean = sum(q) / len(q)
        perp2 = sum((v - mean) ** 2 for v in q)
        norm2 = sum(v * v for v in q)
        assert float(ref.mean) == pytest.approx(float(mean), rel=4 * EPS64)
        assert float(ref.perp_norm) == pytest.approx(math.sqrt(perp2), rel=8 * EPS64)
        assert float(ref.norm) == pytest.approx(math.sqrt(norm2), rel=4 * EPS64)


def test_one_pass_formula_really_fails_where_the_oracle_does_not():
    """Sanity of the benchmark case: E[x^2]-mu^2 in float64 at |mean|/std = 1e6."""
    rng = np.random.default_rng(1)
    x = 1e6 + rng.standard_normal(576)
    ref = slow.decompose(x)
    one_pass = math.sqrt(max(np.mean(x * x) - np.mean(x) ** 2, 0.0) * x.size)
    assert abs(one_pass / ref.perp_norm - 1) > 1e-6
    got = gn.decompose(x)
    assert abs(float(got.perp_norm) / ref.perp_norm - 1) < 1e-12


# ------------------------------------------------------ native vs oracle


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_oracle(simd, dtype, d):
    x = nasty_rows(d, DTYPES[dtype])
    assert_decomposition(gn.decompose(x), slow.decompose(x), dtype, f" [{simd} {dtype} d={d}]")


@pytest.mark.parametrize("d", (1, 3, 16, 17, 33, 576))
def test_float64_extreme_range(simd, d):
    """Rows at 1e+-300 and double subnormals: no overflow, no underflow to 0."""
    x = extreme_rows_f64(d)
    assert_decomposition(gn.decompose(x), slow.decompose(x), "float64", f" [{simd} d={d}]")


@pytest.mark.parametrize("dtype", ("float32", "float64"))
def test_small_angles_are_relatively_accurate(simd, dtype):
    """Near 0 and 180 degrees the angle must come from atan2(perp, coef), not arccos."""
    rng = np.random.default_rng(2)
    ratios = np.array([1e2, 1e3, 1e4, 1e5, 1e6])
    x = np.concatenate([ratios, -ratios])[:, None] + rng.standard_normal((10, 64))
    x = x.astype(dtype)
    got, ref = gn.decompose(x), slow.decompose(x)
    small = np.minimum(ref.angle, 180 - ref.angle)
    got_small = np.minimum(np.asarray(got.angle), 180 - np.asarray(got.angle))
    assert small.max() < 1.0 and small.min() > 0  # the case really is small angles
    rtol = 1e-5 if dtype == "float32" else 1e-9
    np.testing.assert_allclose(got_small, small, rtol=rtol, atol=0)


def test_output_types_and_shapes():
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 8)).astype(np.float32)
    dec = gn.decompose(x)
    for f in FIELDS:
        v = np.asarray(getattr(dec, f))
        assert v.shape == (2, 3, 5), f
        assert v.dtype == np.float64, f
    np.testing.assert_allclose(np.asarray(dec.std), np.asarray(dec.perp_norm) / np.sqrt(8), rtol=4e-16)
    np.testing.assert_allclose(np.asarray(dec.rms), np.asarray(dec.norm) / np.sqrt(8), rtol=4e-16)
    one = gn.decompose(x[0, 0, 0])
    for f in FIELDS:
        assert np.asarray(getattr(one, f)).shape == (), f
    assert_decomposition(one, slow.decompose(x[0, 0, 0]), "float32")


def test_exact_special_rows(simd):
    d = 33
    ones, neg = np.ones(d), np.full(d, -2.0)
    zero_mean = np.concatenate([np.arange(1.0, 17), -np.arange(1.0, 17), [0.0]])
    x = np.stack([ones, neg, zero_mean, np.zeros(d)])
    for dtype in DTYPES.values():
        dec = gn.decompose(x.astype(dtype))
        angle, cos = np.asarray(dec.angle), np.asarray(dec.cos)
        np.testing.assert_allclose(angle[:3], [0, 180, 90], rtol=0, atol=1e-12)
        np.testing.assert_allclose(cos[:3], [1, -1, 0], rtol=0, atol=1e-15)
        assert np.asarray(dec.perp_norm)[0] == 0 and np.asarray(dec.perp_norm)[1] == 0
        assert np.asarray(dec.mean)[2] == 0 and np.asarray(dec.coef)[2] == 0
        # the zero vector: angle undefined, every other quantity exactly 0
        assert np.isnan(angle[3]) and np.isnan(cos[3])
        for f in ("mean", "coef", "norm", "perp_norm", "std", "rms"):
            assert np.asarray(getattr(dec, f))[3] == 0, f
        assert dec.undefined_rows == 1


def test_pythagoras_and_cosine_identities(simd):
    """G2, G5: ||x||^2 = d mu^2 + ||Px||^2 and coef = ||x|| cos(theta), on the kernel's own output."""
    x = np.random.default_rng(4).standard_normal((50, 97)) + np.linspace(-3, 3, 50)[:, None]
    dec = gn.decompose(x)
    norm, perp, coef = (np.asarray(getattr(dec, f)) for f in ("norm", "perp_norm", "coef"))
    np.testing.assert_allclose(norm**2, coef**2 + perp**2, rtol=1e-13)
    np.testing.assert_allclose(coef, np.sqrt(97) * np.asarray(dec.mean), rtol=1e-14)
    np.testing.assert_allclose(np.asarray(dec.cos) * norm, coef, rtol=1e-13, atol=1e-13 * norm.max())
    np.testing.assert_allclose(np.asarray(dec.angle),
                               np.degrees(np.arctan2(perp, coef)), rtol=1e-13)


def test_shift_and_scale_invariance(simd):
    """G10: std(c x + b 1) = |c| std(x); the angle maps to 180 - angle for c < 0."""
    x = np.random.default_rng(6).standard_normal((8, 64))
    base = gn.decompose(x)
    moved = gn.decompose(-2.0 * x + 1e3)
    np.testing.assert_allclose(np.asarray(moved.std), 2 * np.asarray(base.std), rtol=1e-11)
    flipped = gn.decompose(-x)
    np.testing.assert_allclose(np.asarray(flipped.angle), 180 - np.asarray(base.angle), atol=1e-12)
