"""rotation: the oracle, the native kernels against it, and the geometry (G11, G12)."""

import math

import numpy as np
import pytest
from nasty import ANGLE_TOL, DIMS, DTYPES, assert_angles, extreme_rows_f64, nasty_rows, partners

import geonorm_core as gn
from geonorm_core import slow

# ------------------------------------------------------------- the oracle


def test_oracle_hand_computed():
    x = np.array([[1.0, 0], [1, 1], [1, 0], [1, 0], [0, 0], [1e-300, 0], [3, 4]])
    y = np.array([[0.0, 1], [2, 2], [-1, 0], [1, 1], [1, 1], [0, 5e300], [-4, 3]])
    np.testing.assert_allclose(slow.rotation(x, y)[[0, 1, 2, 3, 5, 6]], [90, 0, 180, 45, 90, 90], rtol=0, atol=1e-13)
    assert np.isnan(slow.rotation(x, y)[4])
    t = 1e-9  # tiny angles are resolved, not rounded to 0 as arccos would
    assert slow.rotation(np.array([1.0, 0]), np.array([math.cos(t), math.sin(t)])) == pytest.approx(
        math.degrees(t), rel=1e-7)


# ------------------------------------------------------ native vs oracle


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_oracle(simd, dtype, d):
    rng = np.random.default_rng(d)
    x = nasty_rows(d, DTYPES[dtype])
    for name, y in partners(x, rng).items():
        got = gn.rotation(x, y)
        assert np.asarray(got).dtype == np.float64 and np.asarray(got).shape == x.shape[:-1]
        assert_angles(got, slow.rotation(x, y), dtype, f" [{simd} {dtype} d={d} vs {name}]")
        # symmetric in its arguments
        assert_angles(gn.rotation(y, x), slow.rotation(x, y), dtype, f" [{simd} {dtype} d={d} {name} swapped]")


@pytest.mark.parametrize("d", (1, 3, 17, 64))
def test_float64_extreme_range(simd, d):
    x = extreme_rows_f64(d)
    y = extreme_rows_f64(d, seed=1)[::-1].copy()
    assert_angles(gn.rotation(x, y), slow.rotation(x, y), "float64", f" [{simd} d={d}]")
    assert_angles(gn.rotation(x, 3.0 * x), np.zeros(len(x)), "float64", f" [{simd} d={d} vs 3x]")


@pytest.mark.parametrize("dtype", ("float32", "float64"))
def test_tiny_rotations_are_resolved(simd, dtype):
    """Kahan's 2 atan2(|a-b|, |a+b|): an arccos of the cosine loses everything below ~1e-4 degrees
    (fp64) and the contract asks for 1e-12 degrees on fp64 inputs."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((20, 64))
    y = x + np.logspace(-10, -3, 20)[:, None] * rng.standard_normal((20, 64))
    x, y = x.astype(dtype), y.astype(dtype)
    ref = slow.rotation(x, y)
    assert_angles(gn.rotation(x, y), ref, dtype, f" [{simd}]")
    if dtype == "float64":
        assert ref.min() < 1e-7  # the case really has rotations far below arccos's resolution


def test_identical_and_opposite_rows(simd):
    x = nasty_rows(33, np.float32)
    nonzero = slow.decompose(x).norm > 0
    same = np.asarray(gn.rotation(x, x))
    np.testing.assert_allclose(same[nonzero], 0, atol=ANGLE_TOL["float32"])
    np.testing.assert_allclose(np.asarray(gn.rotation(x, -x))[nonzero], 180, atol=ANGLE_TOL["float32"])
    assert np.isnan(same[~nonzero]).all()


@pytest.mark.parametrize("ydtype", ("float16", "float32", "bfloat16", "float64"))
@pytest.mark.parametrize("xdtype", ("float16", "float32", "bfloat16", "float64"))
def test_mixed_input_dtypes(xdtype, ydtype):
    """x and y of different float dtypes: the right angle, or a refusal that names y."""
    x = nasty_rows(17, DTYPES[xdtype])
    y = partners(x, np.random.default_rng(0))["layer_norm"].astype(DTYPES[ydtype])
    try:
        got = gn.rotation(x, y)
    except (TypeError, ValueError) as e:
        assert "y" in str(e) and ydtype in str(e)
        return
    coarse = "float64" if xdtype == ydtype == "float64" else "float32"
    assert_angles(got, slow.rotation(x, y), coarse, f" [{xdtype} x, {ydtype} y]")


# ------------------------------------------------------------ geometry


def test_standardization_rotates_by_ninety_minus_theta(simd):
    """G11: the angle between x and Px is |90 - theta|, theta = angle(x, 1)."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((30, 129)) + np.linspace(-2, 2, 30)[:, None]
    theta = np.asarray(gn.decompose(x).angle)
    np.testing.assert_allclose(np.asarray(gn.rotation(x, gn.remove_uniform(x))), np.abs(90 - theta), atol=1e-10)
    np.testing.assert_allclose(np.asarray(gn.rotation(x, gn.layer_norm(x, eps=0.0))), np.abs(90 - theta), atol=1e-10)


def test_rms_norm_without_gain_does_not_rotate(simd):
    """G12: cos(x, g*x) = sum g x^2 / (|x| |g x|); g = 1 gives 0 degrees."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((30, 64))
    np.testing.assert_allclose(np.asarray(gn.rotation(x, gn.rms_norm(x))), 0, atol=1e-10)
    g = rng.uniform(0.2, 3, 64)
    cos = (g * x * x).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(g * x, axis=1))
    np.testing.assert_allclose(np.asarray(gn.rotation(x, gn.rms_norm(x, g, eps=0.0))),
                               np.degrees(np.arccos(cos)), atol=1e-8)


def test_undefined_rows(simd):
    x = np.ones((5, 17), np.float32)
    y = np.ones((5, 17), np.float32)
    x[0] = 0
    y[1] = 0
    x[2, 16] = np.nan
    y[3, 0] = np.inf
    got = np.asarray(gn.rotation(x, y))
    assert np.isnan(got[:4]).all()
    assert got[4] == pytest.approx(0, abs=1e-4)
