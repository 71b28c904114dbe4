"""token_values: the per-token quantities of a norm site from the fused kernel (gn_site_values).

The kernel reads each (hidden, post) row pair once for every quantity; for 16/32-bit rows it
sums in float64 in that pass instead of calling the per-op kernels.  Each quantity is held to
its own op's contract against the float64 oracles of geonorm_core.slow.
"""

import numpy as np
import pytest
from nasty import ANGLE_TOL, DTYPES, RTOL, SUB64, _close, assert_angles, f64, nasty_rows, partners

import geonorm_core as gn
from geonorm_core import slow
from geonorm_core.measure import QUANTITY_ORDER, quantity_names, token_values

GAP_RTOL, GAP_ATOL = 1e-9, 1e-12  # ln_rms_gap's contract (tests/test_norms.py)


def layer_params(d, rng):
    w = rng.uniform(0.5, 2, d).astype(np.float32)
    b = (0.1 * rng.standard_normal(d)).astype(np.float32)
    return {"unit gain": (None, None), "gain": (w, None), "gain and bias": (w, b), "bias": (None, b)}


def assert_site_values(v, x, y, w, b, eps, dtype, where):
    ref_x = slow.decompose(x)
    norm = np.nan_to_num(ref_x.norm)
    assert_angles(v["angle_hidden"], ref_x.angle, dtype, where, "angle_hidden")
    _close("norm_hidden", v["norm_hidden"], ref_x.norm, RTOL[dtype] * norm + 4 * SUB64, where)
    _close("max_abs_hidden", v["max_abs_hidden"], ref_x.max_abs, 0.0, where)
    gap = slow.ln_rms_gap(x, w, b, eps)
    _close("ln_rms_gap", v["ln_rms_gap"], gap, GAP_RTOL * np.nan_to_num(np.abs(gap)) + GAP_ATOL, where)
    if y is None:
        assert set(v) == set(QUANTITY_ORDER[:4])
        return
    ref_y = slow.decompose(y)
    assert_angles(v["angle_post"], ref_y.angle, dtype, where, "angle_post")
    _close("norm_post", v["norm_post"], ref_y.norm, RTOL[dtype] * np.nan_to_num(ref_y.norm) + 4 * SUB64, where)
    assert_angles(v["rotation"], slow.rotation(x, y), dtype, where)


@pytest.mark.parametrize("d", (1, 3, 17, 64, 576))
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_oracles(simd, dtype, d):
    rng = np.random.default_rng(d)
    x = nasty_rows(d, DTYPES[dtype])
    for pname, (w, b) in layer_params(d, rng).items():
        for yname, y in (*partners(x, rng).items(), ("no post", None)):
            v = token_values(x, y, gain=w, bias=b, eps=1e-5, num_threads=2)
            assert all(a.dtype == np.float64 and a.shape == x.shape[:-1] for a in v.values())
            assert_site_values(v, x, y, w, b, 1e-5, dtype, f" [{simd} {dtype} d={d} {pname}, post={yname}]")


@pytest.mark.parametrize("dtype", DTYPES)
def test_gap_is_bitwise_the_op(dtype):
    """One gap: token_values and ops.ln_rms_gap share the row function, shortcut and fallback."""
    rng = np.random.default_rng(5)
    x = nasty_rows(576, DTYPES[dtype])
    for w, b in layer_params(576, rng).values():
        got = token_values(x, x, gain=w, bias=b, eps=1e-6)["ln_rms_gap"]
        assert np.array_equal(got, gn.ln_rms_gap(x, w, b, eps=1e-6), equal_nan=True)


def test_non_finite_rows_are_undefined_as_in_the_ops():
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    x[1, 5], x[2, 60], x[3, 0] = np.nan, np.inf, -np.inf
    y = x * 2
    v = token_values(x, y)
    dx, dy = gn.decompose(x), gn.decompose(y)
    want = {"angle_hidden": dx.angle, "norm_hidden": dx.norm, "max_abs_hidden": dx.max_abs,
            "ln_rms_gap": gn.ln_rms_gap(x), "angle_post": dy.angle, "norm_post": dy.norm,
            "rotation": gn.rotation(x, y)}
    for q, ref in want.items():
        assert np.isfinite(v[q][0]), q
        np.testing.assert_array_equal(v[q][1:], ref[1:], err_msg=q)  # NaN where the op gives NaN


def test_gap_shortcut_declines_where_ln_and_rms_agree():
    """Rows far from orthogonal to 1 (mean 1000 sigma) whose only gained component is where
    LN(x) and RMSNorm(x) agree: the gap is ~1e-7 and the one-pass sums would cancel to a few
    digits; the shortcut must see that and leave the row to the exact float64 function."""
    mu = 1000.0
    # t = x - mu = (s, -s, u, -u) with sigma = 1, and s / sigma = (mu + s) / rms (LN_1 = RMS_1)
    s = mu / (np.sqrt(mu * mu + 1.0) - 1.0)
    u = np.sqrt(2.0 - s * s)
    x = (mu + np.array([[s, -s, u, -u]])).astype(np.float32)
    w = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    want = slow.ln_rms_gap(x, w, eps=0.0)
    assert 0 < want[0] < 1e-4  # the case is what it claims: LN and RMS all but agree
    for got in (token_values(x, x, gain=w, eps=0.0)["ln_rms_gap"], gn.ln_rms_gap(x, w, eps=0.0)):
        np.testing.assert_allclose(got, want, rtol=GAP_RTOL, atol=GAP_ATOL * want[0])


def test_threads_and_layouts_do_not_change_the_values():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((2, 300, 576)) + 0.2).astype(np.float32)
    y = (x * rng.uniform(0.5, 1.5, 576)).astype(np.float32)
    w = rng.uniform(0.5, 1.5, 576)
    one = token_values(x, y, gain=w, num_threads=1)
    for got in (token_values(x, y, gain=w, num_threads=2),
                token_values(np.asfortranarray(x), y[:, ::-1][:, ::-1], gain=w, num_threads=2),
                {k: v.reshape(2, 300) for k, v in token_values(x.reshape(600, 576), y.reshape(600, 576),
                                                               gain=w).items()}):
        for q in QUANTITY_ORDER:
            assert np.array_equal(got[q], one[q]), q


def test_out_receives_the_values():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 64)).astype(np.float32)
    big = np.full((7, 80), -1.0)
    v = token_values(x, x[::-1], out=big[:, 10:60])
    assert all(np.shares_memory(a, big) for a in v.values())
    assert (big[:, :10] == -1).all() and (big[:, 60:] == -1).all()
    for i, q in enumerate(quantity_names(True)):
        assert np.array_equal(big[i, 10:60], token_values(x, x[::-1])[q])
    with pytest.raises(ValueError, match="out must be"):
        token_values(x, x, out=np.empty((7, 49)))
    with pytest.raises(ValueError, match="out must be"):
        token_values(x, None, out=np.empty((7, 50)))
    with pytest.raises(ValueError, match="out must be"):
        token_values(x, x, out=np.empty((50, 7)).T)


def test_post_must_pair_with_hidden():
    with pytest.raises(ValueError, match="shape of hidden"):
        token_values(np.ones((3, 8), np.float32), np.ones((3, 9), np.float32))


def test_values_are_the_ops_within_their_contracts():
    """Against the per-op kernels too (not only the oracles): the fused pass is their twin."""
    rng = np.random.default_rng(9)
    for dtype in DTYPES:
        x = (rng.standard_normal((64, 576)) * 3 + 0.5).astype(DTYPES[dtype])
        y = f64(gn.rms_norm(x, rng.uniform(0.5, 2, 576))).astype(DTYPES[dtype])
        v = token_values(x, y)
        dx, dy = gn.decompose(x), gn.decompose(y)
        np.testing.assert_allclose(v["angle_hidden"], dx.angle, atol=ANGLE_TOL[dtype], rtol=0)
        np.testing.assert_allclose(v["angle_post"], dy.angle, atol=ANGLE_TOL[dtype], rtol=0)
        np.testing.assert_allclose(v["norm_hidden"], dx.norm, rtol=2 * RTOL[dtype])
        np.testing.assert_allclose(v["norm_post"], dy.norm, rtol=2 * RTOL[dtype])
        np.testing.assert_array_equal(v["max_abs_hidden"], dx.max_abs)
        np.testing.assert_allclose(v["rotation"], gn.rotation(x, y), atol=2 * ANGLE_TOL[dtype], rtol=0)
