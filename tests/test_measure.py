"""token_values: the per-token quantities of a norm site from the fused kernel (gn_site_values).

The kernel reads each (hidden, post) row pair once for every quantity; for 16/32-bit rows on
the SIMD paths it sums in float32 lanes with float64 carries (as decompose does), the scalar
baseline in float64.  Every quantity is held to the accuracy contract
against the float64 oracles of geonorm_core.slow: angles and rotation within 1e-4 degrees,
norms and max|x| within 1e-6 relative, the LN-RMS gap within 1e-6 absolute; exact zeros stay
exact.
"""

import numpy as np
import pytest
from nasty import ANGLE_TOL, DTYPES, RTOL, SUB64, _close, assert_angles, f64, gap_tol, nasty_rows, partners

import geonorm_core as gn
from geonorm_core import slow
from geonorm_core.analysis.measure import QUANTITY_ORDER, quantity_names, token_values


def layer_params(d, rng):
    w = rng.uniform(0.5, 2, d).astype(np.float32)
    b = (0.1 * rng.standard_normal(d)).astype(np.float32)
    # Gemma-3's case: gain exactly 0 where nasty_rows puts massive entries, x12 elsewhere, so
    # the gap hangs on the mean alone (its error is amplified by ||w|| / ||w * x||)
    wz = (12 * rng.uniform(0.5, 2, d)).astype(np.float32)
    wz[sorted({0, d // 2, d - 1})] = 0.0
    return {"unit gain": (None, None), "gain": (w, None), "gain and bias": (w, b), "bias": (None, b),
            "zero gain at the massive entries": (wz, b)}


def assert_site_values(v, x, y, w, b, eps, dtype, where):
    ref_x = slow.decompose(x)
    norm = np.nan_to_num(ref_x.norm)
    assert_angles(v["angle_hidden"], ref_x.angle, dtype, where, "angle_hidden")
    _close("norm_hidden", v["norm_hidden"], ref_x.norm, RTOL[dtype] * norm + 4 * SUB64, where)
    _close("max_abs_hidden", v["max_abs_hidden"], ref_x.max_abs, 0.0, where)
    gap = slow.ln_rms_gap(x, w, b, eps)
    _close("ln_rms_gap", v["ln_rms_gap"], gap, gap_tol(gap), where)
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


def contract_rows(d, dtype, rng):
    """The issue's adversarial rows beside nasty_rows': offsets |mu|/sigma = 10..1e4 with a
    massive entry, magnitudes 1e-18 and 1e18, exactly centred rows with a massive pair, and
    rows near the orthogonal complement of 1 (the hidden states of real models)."""
    z = rng.standard_normal((8, d))
    tiny, huge, mass = (1e-4, 1e3, 3e4) if dtype == "float16" else (1e-18, 1e18, 4e5)  # fp16 ends at 65504
    rows = [1e4 + z[0], -1e3 + z[1], 10.0 + z[2], tiny * z[3], huge * z[4], 0.02 + z[5]]
    massive = 1e3 + z[6]
    massive[d // 3] = mass
    rows.append(massive)
    centred = z[7] - z[7].mean()
    centred[0], centred[-1] = 3e3, -3e3
    rows.append(centred)
    return np.array(rows).astype(DTYPES[dtype])


@pytest.mark.parametrize("d", (96, 4096))
@pytest.mark.parametrize("dtype", DTYPES)
def test_contract_on_adversarial_pairs(simd, dtype, d):
    """Every SIMD path and dtype, whole blocks (d = 4096) and tails: the contract's tolerances,
    and its exact zeros (identical pairs rotate by exactly 0, constant rows sit at exactly 0 or
    180 degrees from 1)."""
    rng = np.random.default_rng(d + 11)
    x = np.concatenate([contract_rows(d, dtype, rng), nasty_rows(d, DTYPES[dtype], seed=3)])
    for pname, (w, b) in layer_params(d, rng).items():
        for yname, y in (*partners(x, rng).items(), ("identical", x)):
            v = token_values(x, y, gain=w, bias=b, eps=1e-6, num_threads=2)
            assert_site_values(v, x, y, w, b, 1e-6, dtype, f" [{simd} {dtype} d={d} {pname}, post={yname}]")
    v = token_values(x, x, gain=w, bias=b)
    defined = np.isfinite(v["rotation"])
    assert defined.sum() >= len(x) - 2 and (v["rotation"][defined] == 0).all()
    const = np.full((2, d), 0.1).astype(DTYPES[dtype])
    const[1] = -3
    v = token_values(const, const * 2)
    assert list(v["angle_hidden"]) == [0.0, 180.0] and list(v["angle_post"]) == [0.0, 180.0]
    assert np.isnan(v["ln_rms_gap"]).all()  # LN of a constant row is its bias: here 0, no direction
    assert list(token_values(const, const)["rotation"]) == [0.0, 0.0]


def near_agreement_rows(d, mu, delta, rng, eps):
    """Rows mu + t (sigma ~ 1) whose gained entries (30%) sit within delta of where LN and RMS
    agree (t A = mu r, G9): the gap is ~delta while the sums behind it cancel to ~delta^2."""
    sel = rng.random(d) < 0.3
    rows = []
    for _ in range(8):
        x = mu + rng.standard_normal(d)
        jitter = 1 + delta * rng.standard_normal(sel.sum())
        for _ in range(50):  # a fixed point: moving the gained entries moves mu and sigma
            m, var = x.mean(), x.var()
            a, r = 1 / np.sqrt(var + eps), 1 / np.sqrt(var + m * m + eps)
            x[sel] = m + m * r / (a - r) * jitter
        rows.append(x)
    return np.array(rows, np.float32), np.where(sel, rng.uniform(0.5, 2, d), 0).astype(np.float32)


@pytest.mark.parametrize("d", (576, 4096))
def test_gap_where_the_sums_cancel(simd, d):
    """The float32 pass's sums cancel here (to 1e-3 of their terms at delta = 0.03): the gap must
    still be within the contract, from whichever pass can vouch for it."""
    rng = np.random.default_rng(d)
    for mu in (100.0, -300.0, 600.0):
        for delta in (0.01, 0.035, 0.07):
            x, w = near_agreement_rows(d, mu, delta, rng, 1e-6)
            got = token_values(x, x, gain=w, eps=1e-6)["ln_rms_gap"]
            want = slow.ln_rms_gap(x, w, None, 1e-6)
            assert 0.3 * delta < np.median(want) < 3 * delta  # the case is what it claims
            _close("ln_rms_gap", got, want, gap_tol(want), f" [{simd} d={d} mu={mu} delta={delta}]")


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
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=0)  # a 1e-7 gap, to 3 digits


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


def test_one_set_of_quantities_between_measuring_and_accumulating():
    """A per-token quantity means the same thing on both floors: the core's output rows, in its order,
    are exactly the quantities the accumulators keep histograms of."""
    from geonorm_core.analysis.accumulate import QUANTITIES

    assert sorted(QUANTITY_ORDER) == sorted(QUANTITIES)
