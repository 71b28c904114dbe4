"""layer_norm, rms_norm, remove_uniform against the oracle, torch, and the geometry."""

import math

import numpy as np
import pytest
from nasty import DIMS, DTYPES, check_op, extreme_rows_f64, f64, gap_tol, layouts, nasty_rows

import geonorm_core as gn
from geonorm_core import slow

OPS = ("layer_norm", "rms_norm", "remove_uniform")


def affine(d, dtype, seed=0):
    rng = np.random.default_rng(seed + d)
    w = rng.uniform(0.5, 2.0, d).astype(dtype)
    b = rng.normal(0.0, 1.0, d).astype(dtype)
    return w, b


# ------------------------------------------------------------- the oracle


def test_oracle_hand_computed():
    x = np.array([[1.0, 2, 3, 4], [3, 3, 3, 3], [0, 0, 0, 0]])
    s = math.sqrt(1.25)
    np.testing.assert_allclose(slow.layer_norm(x, eps=0)[0], [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s], rtol=1e-15)
    assert np.isnan(slow.layer_norm(x, eps=0)[1:]).all()  # constant row, eps = 0: 0/0
    np.testing.assert_allclose(slow.layer_norm(x, eps=1.0)[1:], 0, atol=0)
    w, b = np.array([1.0, 2, 3, 4]), np.array([0.5, 0, 0, -1])
    np.testing.assert_allclose(
        slow.layer_norm(x[:1], w, b, eps=0.75)[0], np.array([-1.5, -0.5, 0.5, 1.5]) / math.sqrt(2) * w + b,
        rtol=1e-15)
    rms = math.sqrt(7.5)
    np.testing.assert_allclose(slow.rms_norm(x, eps=0)[0], x[0] / rms, rtol=1e-15)
    np.testing.assert_allclose(slow.rms_norm(x, w, eps=0.5)[1], 3 / math.sqrt(9.5) * w, rtol=1e-15)
    np.testing.assert_array_equal(slow.rms_norm(x, eps=1e-6)[2], 0)
    np.testing.assert_array_equal(slow.remove_uniform(x), [[-1.5, -0.5, 0.5, 1.5], [0] * 4, [0] * 4])


def test_oracle_extreme_rows_agree_with_the_formula():
    x = np.array([[1e300, -1e300, 3e300], [1e-300, 2e-300, 0.0]])
    scaled = x / np.abs(x).max(axis=1, keepdims=True)
    want = slow.layer_norm(scaled, eps=0)  # layer_norm with eps=0 is scale-free
    np.testing.assert_allclose(slow.layer_norm(x, eps=0), want, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(slow.rms_norm(x, eps=0), slow.rms_norm(scaled, eps=0), rtol=1e-15)
    # with eps the tiny row is dominated by eps: y = (x - mu)/sqrt(eps)
    np.testing.assert_allclose(slow.layer_norm(x, eps=1e-5)[1], (x[1] - 1e-300) / math.sqrt(1e-5), rtol=1e-15)


# ------------------------------------------------------ native vs oracle


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_matches_oracle(simd, op, dtype, d):
    x = nasty_rows(d, DTYPES[dtype])
    w, b = affine(d, DTYPES[dtype])
    where = f" [{simd} {dtype} d={d}]"
    if op == "layer_norm":
        check_op(op, x, w, b, where=where)
        check_op(op, x, where=where + " no affine")
    elif op == "rms_norm":
        check_op(op, x, w, where=where)
        check_op(op, x, w, b, where=where + " with bias (RMSNorm + beta, G9)")
        check_op(op, x, where=where + " no weight")
    else:
        check_op(op, x, where=where)


@pytest.mark.parametrize("eps", (0.0, 1e-5))
@pytest.mark.parametrize("d", (1, 3, 17, 64))
@pytest.mark.parametrize("op", OPS)
def test_float64_extreme_range(simd, op, d, eps):
    """Rows at 1e+-300 and double subnormals: the statistics must not overflow or flush to 0."""
    x = extreme_rows_f64(d)
    w, b = affine(d, np.float64)
    where = f" [{simd} d={d} eps={eps}]"
    if op == "layer_norm":
        check_op(op, x, eps=eps, where=where)
        check_op(op, x, w, b, eps=eps, where=where)
    elif op == "rms_norm":
        check_op(op, x, w, eps=eps, where=where)
        check_op(op, x, w, b, eps=eps, where=where + " with bias")
    elif eps:
        check_op(op, x, where=where)


@pytest.mark.parametrize("eps", (0.0, 1e-12, 1e-5, 1.0, 1e3))
@pytest.mark.parametrize("op", ("layer_norm", "rms_norm"))
def test_eps(simd, op, eps):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((6, 33)) * np.array([1e-4, 1e-2, 1, 10, 1e3, 1e-20])[:, None]).astype(np.float32)
    check_op(op, x, eps=eps, where=f" [{simd} eps={eps}]")


def test_eps_zero_on_constant_and_zero_rows(simd):
    """The contract: a constant row with eps = 0 is undefined -> NaN, counted; eps > 0 is exact."""
    x = np.array([[2.0] * 17, [0.0] * 17, list(range(17))], dtype=np.float32)
    ln = gn.layer_norm(x, eps=0.0)
    assert np.isnan(ln[:2]).all() and np.isfinite(ln[2]).all()
    rn = gn.rms_norm(x, eps=0.0)
    assert np.isnan(rn[1]).all() and np.isfinite(rn[[0, 2]]).all()
    w, b = affine(17, np.float32)
    np.testing.assert_array_equal(gn.layer_norm(x, w, b, eps=1e-5)[:2], np.stack([b, b]))
    np.testing.assert_array_equal(gn.rms_norm(x, w, eps=1e-6)[1], 0)
    np.testing.assert_array_equal(gn.remove_uniform(x)[:2], 0)


@pytest.mark.parametrize("d", DIMS + (44, 48, 81, 96, 100, 127))  # + lengths whose SIMD block split rounds the sum
@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_rows(simd, dtype, d):
    """A constant row has sigma = 0 exactly, whatever d and the summation order: layer_norm
    with eps = 0 is NaN (undefined), with eps > 0 it is exactly the bias,
    remove_uniform is exactly 0 (G4), perp_norm is exactly 0 and the angle exactly 0 or 180.
    An inexact mean turns 0/0 into garbage or inf."""
    big = 2396747.0 if dtype != "float16" else 60000.0
    x = np.broadcast_to(np.array([0.1, 3.0, -big, 1e-3])[:, None], (4, d)).astype(DTYPES[dtype])
    w, b = affine(d, DTYPES[dtype])
    where = f" [{simd} {dtype} d={d}]"
    dec = gn.decompose(x)
    np.testing.assert_array_equal(np.asarray(dec.perp_norm), 0, err_msg="perp_norm" + where)
    np.testing.assert_array_equal(np.asarray(dec.angle), [0, 0, 180, 0], err_msg="angle" + where)
    np.testing.assert_array_equal(f64(gn.remove_uniform(x)), 0, err_msg="remove_uniform" + where)
    np.testing.assert_array_equal(f64(gn.layer_norm(x, w, b, eps=1e-5)), np.broadcast_to(f64(b), x.shape),
                                  err_msg="layer_norm eps=1e-5" + where)
    assert np.isnan(f64(gn.layer_norm(x, eps=0.0))).all(), "layer_norm eps=0 not NaN" + where


@pytest.mark.parametrize("wdtype", ("float16", "float32", "float64", "bfloat16"))
@pytest.mark.parametrize("dtype", ("float32", "float16", "bfloat16", "float64"))
def test_weight_of_another_float_dtype(dtype, wdtype):
    """weight/bias need only be float: any float dtype with any input dtype."""
    x = nasty_rows(33, DTYPES[dtype])
    w, b = affine(33, DTYPES[wdtype], seed=1)
    got = gn.layer_norm(x, w, b)
    assert got.dtype == x.dtype
    check_op("layer_norm", x, w, b, got=got, where=f" [{dtype} x, {wdtype} weight]")
    check_op("rms_norm", x, w, where=f" [{dtype} x, {wdtype} weight]")


def test_weight_and_bias_layouts(simd):
    """weight/bias strided, reversed, big-endian, misaligned or read-only read the same values."""
    x = nasty_rows(33, np.float32)
    w0, b0 = affine(33, np.float32, seed=2)
    for (wname, w), (bname, b) in zip(layouts(w0), layouts(b0)):
        where = f" [weight {wname}, bias {bname}]"
        check_op("layer_norm", x, w, b, where=where)
        check_op("rms_norm", x, w, where=where)


# ------------------------------------------------------------ geometry


def test_standardized_rows_lie_on_the_sphere_orthogonal_to_ones(simd):
    """G6, G7: ||y|| = sqrt(d) and y . 1 = 0 (eps = 0); ||y|| < sqrt(d) with eps."""
    rng = np.random.default_rng(8)
    d = 97
    x = rng.standard_normal((40, d)) * rng.uniform(0.1, 10, (40, 1)) + rng.uniform(-50, 50, (40, 1))
    y = gn.layer_norm(x, eps=0.0)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), math.sqrt(d), rtol=1e-13)
    np.testing.assert_allclose(y.sum(axis=1), 0, atol=1e-12)
    y_eps = gn.layer_norm(x, eps=1e-2)
    assert (np.linalg.norm(y_eps, axis=1) < math.sqrt(d)).all()
    np.testing.assert_allclose(y_eps.sum(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(gn.remove_uniform(x).sum(axis=1), 0, atol=1e-12 * np.abs(x).max())


def test_layer_norm_is_rms_norm_of_the_perp_component(simd):
    """G9: LN_{w,b}(x) = RMSNorm_w(Px) + b, eps included."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((30, 64)) + 3.0
    w, b = affine(64, np.float64)
    lhs = gn.layer_norm(x, w, b, eps=1e-3)
    rhs = gn.rms_norm(gn.remove_uniform(x), w, eps=1e-3) + b
    np.testing.assert_allclose(lhs, rhs, rtol=1e-13, atol=1e-13)


# --------------------------------------------------------------- torch


@pytest.mark.parametrize("d", (7, 64, 576))
@pytest.mark.parametrize("dtype", ("float32", "float16", "bfloat16", "float64"))
@pytest.mark.parametrize("op", ("layer_norm", "rms_norm"))
def test_agrees_with_torch(simd, op, dtype, d):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    tdt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(d)
    x = (torch.randn(64, d, generator=g, dtype=torch.float64) * 2 + 0.5).to(tdt)
    w = (torch.rand(d, generator=g, dtype=torch.float64) + 0.5).to(tdt)
    b = torch.randn(d, generator=g, dtype=torch.float64).to(tdt)
    if op == "layer_norm":
        for eps in (1e-5, 1e-2):
            torch.testing.assert_close(gn.layer_norm(x, w, b, eps=eps), F.layer_norm(x, (d,), w, b, eps=eps))
            torch.testing.assert_close(gn.layer_norm(x, eps=eps), F.layer_norm(x, (d,), eps=eps))
    else:
        for eps in (1e-6, 1e-2):
            torch.testing.assert_close(gn.rms_norm(x, w, eps=eps), F.rms_norm(x, (d,), w, eps=eps))
            torch.testing.assert_close(gn.rms_norm(x, eps=eps), F.rms_norm(x, (d,), eps=eps))


def test_torch_and_one_pass_lose_accuracy_where_geonorm_does_not(simd):
    """fp32 rows with |mean| = 1e4 * std: torch's layer_norm is off by ~1e-3 and the
    one-pass E[x^2] - mu^2 (in fp32) gets the std wrong by > 50%; geonorm stays at
    the fp32 rounding of the exact answer."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    d = 576
    x = (1e4 + rng.standard_normal((32, d))).astype(np.float32)
    ref = slow.layer_norm(x)
    exact_std = slow.decompose(x).std

    m = x.mean(axis=1, dtype=np.float32)
    one_pass_std = np.sqrt(np.maximum((x * x).mean(axis=1, dtype=np.float32) - m * m, 0))
    assert np.max(np.abs(one_pass_std / exact_std - 1)) > 0.5
    torch_err = np.abs(torch.nn.functional.layer_norm(torch.from_numpy(x), (d,)).double().numpy() - ref).max()
    assert torch_err > 1e-4

    got = gn.layer_norm(x)
    assert np.abs(got - ref).max() < 4 * np.finfo(np.float32).eps * np.abs(ref).max()
    np.testing.assert_allclose(np.asarray(gn.decompose(x).std), exact_std, rtol=1e-6)


# ----------------------------------------------------------------- out=


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", ("float32", "bfloat16", "float64"))
def test_out_is_filled_and_returned(op, dtype):
    x = nasty_rows(17, DTYPES[dtype])
    out = np.full_like(x, np.nan)
    fn = getattr(gn, op)
    got = fn(x, out=out)
    assert got is out
    check_op(op, x, got=out, where=f" [out=, {dtype}]")
    # a strided, non-contiguous out is legal too or rejected, never silently wrong
    wide = np.full((x.shape[0], 2 * x.shape[1]), np.nan, x.dtype)
    try:
        got = fn(x, out=wide[:, ::2])
    except (TypeError, ValueError) as e:
        assert "out" in str(e)
    else:
        check_op(op, x, got=wide[:, ::2], where=f" [strided out=, {dtype}]")
        assert np.isnan(f64(wide[:, 1::2])).all()


# ------------------------------------------------------------- ln_rms_gap (G9)


@pytest.mark.parametrize("d", (1, 3, 17, 576))
@pytest.mark.parametrize("dtype", DTYPES)
def test_ln_rms_gap_matches_oracle(simd, dtype, d):
    x = nasty_rows(d, DTYPES[dtype])
    rng = np.random.default_rng(d)
    w = rng.uniform(0.5, 2, d).astype(np.float32)
    b = (0.1 * rng.standard_normal(d)).astype(np.float32)
    for args in ((), (w,), (w, b)):
        got, ref = gn.ln_rms_gap(x, *args), slow.ln_rms_gap(x, *args)
        assert np.array_equal(np.isnan(got), np.isnan(ref)), (dtype, d, len(args))
        ok = ~np.isnan(ref)
        assert (np.abs(got[ok] - ref[ok]) <= gap_tol(ref[ok])).all(), (dtype, d, len(args))


def test_ln_rms_gap_is_zero_exactly_for_rows_orthogonal_to_one():
    """G9: for x ⟂ 1, LN_{w,b}(x) = RMSNorm_w(x) + b, so the gap vanishes; shifting along 1 opens it."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 64))
    x -= x.mean(axis=1, keepdims=True)
    w = rng.uniform(0.5, 2, 64)
    assert np.abs(gn.ln_rms_gap(x, w, eps=1e-5)).max() < 1e-14
    shifted = gn.ln_rms_gap(x + 0.5, w, eps=1e-5)
    assert (shifted > 0.1).all()


# ------------------------------------------------------------- bf16 rounding


def _bf16_round_reference(f32: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits, round to nearest even, NaN kept quiet (what every path must give)."""
    u = f32.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    quiet = (u >> 16) | 0x40
    return np.where(np.isnan(f32), quiet, rounded).astype(np.uint16)


@pytest.fixture(params=(False, True), ids=("stores", "streamed"))
def streamed(request):
    """Norm outputs written with plain stores, or with non-temporal ones (threshold 0) for the test."""
    from geonorm_core._native import _core

    before = _core.stream_threshold()
    _core.stream_threshold(0 if request.param else 1 << 62)
    try:
        yield request.param
    finally:
        _core.stream_threshold(before)


@pytest.mark.parametrize("rows", (1, 64))
def test_bf16_outputs_are_rounded_to_nearest_even_on_every_path(simd, streamed, rows):
    """rms_norm of constant rows +-2^k with a float32 gain w and eps = 0 is exactly +-w in float32, so
    its bf16 output is w's rounding: ties, subnormals (which VCVTNEPS2BF16 alone would flush to zero),
    the largest values (which round to Inf), Inf and NaN, on every path, streamed or not."""
    import ml_dtypes

    d = 4096
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2**32, d, dtype=np.uint64).astype(np.uint32)
    bits[:64] = (bits[:64] & 0xFFFF0000) | 0x8000  # exact ties
    bits[64:128] = bits[64:128] & 0x807FFFFF  # subnormals (and zeros)
    bits[128:132] = (0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0x7FC00001)  # max float, -max, Inf, NaN
    w = bits.view(np.float32)
    k = rng.integers(-20, 20, rows)
    signs = np.where(rng.random(rows) < 0.5, -1.0, 1.0)
    x = np.repeat((signs * np.exp2(k))[:, None], d, axis=1).astype(ml_dtypes.bfloat16)
    got = gn.rms_norm(x, w, eps=0.0).view(np.uint16)
    # and into an out= that starts one element past a vector's alignment (the streamed rows' head)
    buf = np.empty(x.size + 1, x.dtype)
    shifted = gn.rms_norm(x, w, eps=0.0, out=buf[1:].reshape(x.shape)).view(np.uint16)
    assert np.array_equal(shifted, got)
    with np.errstate(invalid="ignore"):  # signaling NaNs among the random bits
        exact = (signs[:, None] * w[None, :]).astype(np.float32)
    want = _bf16_round_reference(exact)
    assert np.array_equal(got, want), f"{np.count_nonzero(got != want)} outputs differ on {simd}, {streamed=}"
    # the data tells a rounding that flushes float32 subnormals (VCVTNEPS2BF16's) from the right one
    flushed = np.where(np.abs(exact) < np.finfo(np.float32).tiny, np.copysign(0.0, exact), exact)
    assert not np.array_equal(_bf16_round_reference(flushed.astype(np.float32)), want)


@pytest.mark.parametrize("dtype", ("float32", "bfloat16", "float16", "float64"))
@pytest.mark.parametrize("op", OPS)
def test_streamed_rows_equal_stored_rows_at_every_alignment(simd, dtype, op):
    """Streamed outputs (whole 64-byte lines with non-temporal stores, the row's ends with plain
    vector stores) are bitwise the plain ones, for every start of out= within a line and row
    lengths that are not whole lines."""
    from geonorm_core._native import _core

    dt = DTYPES[dtype]
    before = _core.stream_threshold()
    try:
        for d in (16, 37, 96, 1000):
            x = nasty_rows(d, dt)
            w, b = affine(d, dt)
            kw = {} if op == "remove_uniform" else {"weight": w} if op == "rms_norm" else {"weight": w, "bias": b}
            _core.stream_threshold(1 << 62)
            want = getattr(gn, op)(x, **kw)
            _core.stream_threshold(0)
            for shift in range(64 // x.itemsize + 1):
                buf = np.empty(x.size + shift, x.dtype)
                buf.view(np.uint8)[:] = 0xA5  # not the last call's results, which np.empty may return
                got = getattr(gn, op)(x, out=buf[shift:].reshape(x.shape), **kw)
                assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), f"d={d} shift={shift}"
    finally:
        _core.stream_threshold(before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ("layer_norm", "remove_uniform"))
def test_a_rows_output_does_not_depend_on_its_block(simd, dtype, op):
    """Short rows take their first pass eight at a time (dev_rows, one transposed reduction for the
    block): a row's output is bitwise the same alone, at any place in a block, in a strided view
    (gathered, row by row) and in a call of another length, and agrees with the oracle."""
    dt = DTYPES[dtype]
    for d in (16, 64, 100, 576, 1024):
        x = nasty_rows(d, dt)[:23]
        w, b = affine(d, dt)
        call = getattr(gn, op)
        kw = {"weight": w, "bias": b} if op == "layer_norm" else {}
        whole = as_bytes_rows(call(x, **kw))
        for i in range(x.shape[0]):
            alone = as_bytes_rows(call(x[i:i + 1], **kw))[0]
            assert alone == whole[i], f"{op} [{simd} {dtype} d={d}] row {i}: alone differs from in a block"
        for start in (1, 3, 7):
            assert as_bytes_rows(call(x[start:], **kw)) == whole[start:], f"{op} [{simd} {dtype} d={d}] from {start}"
        strided = np.zeros((x.shape[0], 2 * d), dtype=dt)[:, ::2]
        strided[...] = x
        assert as_bytes_rows(call(strided, **kw)) == whole, f"{op} [{simd} {dtype} d={d}] strided rows"
        check_op(op, x, *((w, b) if op == "layer_norm" else ()), where=f" [{simd} {dtype} d={d}]")


def as_bytes_rows(y):
    y = np.ascontiguousarray(f64(y)).view(np.uint64)
    return [row.tobytes() for row in y]
