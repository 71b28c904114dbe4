"""Bad input is refused with a message naming the argument; undefined rows give NaN, row by row."""

import re

import numpy as np
import pytest
from nasty import DTYPES, assert_angles, assert_decomposition, check_op, f64, nasty_rows, with_nonfinite

import geonorm_core as gn
from geonorm_core import slow

D = 8
X = np.random.default_rng(0).standard_normal((4, D)).astype(np.float32)
W = np.ones(D, np.float32)


def refused(call, arg, *got, exc=(TypeError, ValueError)):
    """call() raises TypeError/ValueError naming `arg` and mentioning each regex in `got`."""
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    assert re.search(rf"(?<![A-Za-z0-9_]){re.escape(arg)}(?![A-Za-z0-9_])", msg), \
        f"message does not name {arg!r}: {msg!r}"
    for pattern in got:
        assert re.search(pattern, msg, re.IGNORECASE), f"message lacks /{pattern}/: {msg!r}"
    return msg


def shape_re(shape):
    """(4, 7) written as '(4, 7)', '4x7', '[4, 7]', 'torch.Size([4, 7])' ..."""
    return r"\D{1,3}".join(str(n) for n in shape) if len(shape) > 1 else rf"\b{shape[0]}\b"


ALL_OPS = {
    "decompose": lambda x: gn.decompose(x),
    "rotation": lambda x: gn.rotation(x, x),
    "layer_norm": lambda x: gn.layer_norm(x),
    "rms_norm": lambda x: gn.rms_norm(x),
    "remove_uniform": lambda x: gn.remove_uniform(x),
}
OUT_OPS = ("layer_norm", "rms_norm", "remove_uniform")


# ---------------------------------------------------------------------- x


@pytest.mark.parametrize("op", ALL_OPS)
def test_zero_dimensional_x(op):
    refused(lambda: ALL_OPS[op](np.array(1.0, np.float32)), "x", r"0-d|\(\)|ndim|dimension|scalar")


@pytest.mark.parametrize("op", ALL_OPS)
def test_empty_vectors(op):
    refused(lambda: ALL_OPS[op](np.zeros((3, 0), np.float32)), "x", r"3\D{1,3}0|d\s*(=|==|>=)\s*0|\b0\b")


@pytest.mark.parametrize("dtype", ("int8", "int32", "int64", "uint8", "bool", "complex64", "complex128", "object"))
@pytest.mark.parametrize("op", ALL_OPS)
def test_non_float_x(op, dtype):
    x = X.astype(dtype)
    refused(lambda: ALL_OPS[op](x), "x", dtype if dtype != "bool" else "bool", r"float")


@pytest.mark.parametrize("op", ALL_OPS)
def test_unsupported_float_x(op):
    if np.dtype(np.longdouble).itemsize <= 8:
        pytest.skip("long double is double on this platform")
    x = X.astype(np.longdouble)
    refused(lambda: ALL_OPS[op](x), "x", np.dtype(np.longdouble).name, r"float16|float32")


@pytest.mark.parametrize("op", ALL_OPS)
def test_non_float_tensor(op):
    torch = pytest.importorskip("torch")
    t = torch.arange(12).reshape(3, 4)
    refused(lambda: ALL_OPS[op](t), "x", r"int64|long", r"float")


# ----------------------------------------------------------- weight / bias


@pytest.mark.parametrize("length", (D - 1, D + 1, 1))
def test_weight_and_bias_of_wrong_length(length):
    bad = np.ones(length, np.float32)
    refused(lambda: gn.layer_norm(X, bad, W), "weight", rf"\b{length}\b", rf"\b{D}\b")
    refused(lambda: gn.layer_norm(X, W, bad), "bias", rf"\b{length}\b", rf"\b{D}\b")
    refused(lambda: gn.rms_norm(X, bad), "weight", rf"\b{length}\b", rf"\b{D}\b")


@pytest.mark.parametrize("dtype", ("int32", "int64", "bool", "complex64", "object"))
def test_weight_and_bias_of_non_float_dtype(dtype):
    bad = np.ones(D, dtype)
    refused(lambda: gn.layer_norm(X, bad), "weight", dtype)
    refused(lambda: gn.layer_norm(X, W, bad), "bias", dtype)
    refused(lambda: gn.rms_norm(X, bad), "weight", dtype)


# -------------------------------------------------------------------- out


@pytest.mark.parametrize("op", OUT_OPS)
def test_out_of_wrong_shape(op):
    fn = getattr(gn, op)
    for shape in ((4, D - 1), (3, D), (D,), (1, 4, D)):
        refused(lambda: fn(X, out=np.zeros(shape, np.float32)), "out", shape_re(shape), shape_re(X.shape))


@pytest.mark.parametrize("op", OUT_OPS)
def test_out_of_wrong_dtype(op):
    fn = getattr(gn, op)
    for dtype in ("float64", "float16", "int32"):
        refused(lambda: fn(X, out=np.zeros(X.shape, dtype)), "out", dtype, "float32")


@pytest.mark.parametrize("op", OUT_OPS)
def test_read_only_out(op):
    out = np.zeros_like(X)
    out.flags.writeable = False
    refused(lambda: getattr(gn, op)(X, out=out), "out", r"read.?only|writ")
    np.testing.assert_array_equal(out, 0)


@pytest.mark.parametrize("op", OUT_OPS)
def test_out_overlapping_x(op):
    fn = getattr(gn, op)
    x = X.copy()
    keep = x.copy()
    refused(lambda: fn(x, out=x), "out", r"overlap|alias|share|same memory|in.?place")
    buf = np.zeros(2 * x.size, np.float32)
    xb = buf[: x.size].reshape(x.shape)
    xb[...] = keep
    shifted = buf[D : D + x.size].reshape(x.shape)  # overlaps x from its second row on
    refused(lambda: fn(xb, out=shifted), "out", r"overlap|alias|share|same memory|in.?place")
    np.testing.assert_array_equal(x, keep)
    np.testing.assert_array_equal(xb, keep)


# ---------------------------------------------------------------- rotation


def test_rotation_with_mismatched_shapes():
    for shape in ((4, D - 1), (3, D), (D,), (2, 4, D)):
        refused(lambda: gn.rotation(X, np.zeros(shape, np.float32)), "y", shape_re(shape), shape_re(X.shape))


def test_rotation_with_bad_y():
    refused(lambda: gn.rotation(X, X.astype(np.int64)), "y", "int64")
    refused(lambda: gn.rotation(X, np.array(1.0)), "y")


# ----------------------------------------------------- NaN / Inf / zero rows


@pytest.mark.parametrize("d", (1, 7, 17, 64))
@pytest.mark.parametrize("dtype", DTYPES)
def test_nonfinite_rows_poison_only_their_own_row(simd, dtype, d):
    rng = np.random.default_rng(d)
    clean = nasty_rows(d, DTYPES[dtype])
    x, bad = with_nonfinite(clean, rng)
    where = f" [{simd} {dtype} d={d}]"
    dec = gn.decompose(x)
    ref = slow.decompose(x)
    assert np.isnan(ref.angle[bad]).all()
    assert_decomposition(dec, ref, dtype, where)  # NaN exactly where the oracle has NaN
    for f in ("mean", "coef", "norm", "perp_norm", "cos", "angle"):
        assert np.isnan(np.asarray(getattr(dec, f))[bad]).all(), f
    assert dec.undefined_rows == int(np.isnan(ref.angle).sum()) > 0
    assert_angles(gn.rotation(x, clean), slow.rotation(x, clean), dtype, where)
    assert_angles(gn.rotation(clean, x), slow.rotation(clean, x), dtype, where)
    w = np.linspace(0.5, 2, d).astype(x.dtype)
    for op, args in (("layer_norm", (w, w)), ("rms_norm", (w,)), ("remove_uniform", ())):
        got = check_op(op, x, *args, where=where)
        assert np.isnan(f64(got)[bad]).all(), f"{op}{where}: non-finite row not all NaN"
        assert not np.isnan(f64(got)[~bad]).any(), f"{op}{where}: NaN leaked"


def test_zero_vector_is_undefined_and_counted(simd):
    x = np.zeros((3, 17), np.float32)
    x[1, 4] = 1.0
    dec = gn.decompose(x)
    assert dec.undefined_rows == 2
    assert np.isnan(np.asarray(dec.angle)[[0, 2]]).all() and np.isnan(np.asarray(dec.cos)[[0, 2]]).all()
    for f in ("mean", "coef", "norm", "perp_norm", "std", "rms"):
        v = np.asarray(getattr(dec, f))
        assert v[0] == 0 and v[2] == 0, f
    assert np.isnan(np.asarray(gn.rotation(x, x))[[0, 2]]).all()


@pytest.mark.parametrize("op, which", [("layer_norm", "weight"), ("layer_norm", "bias"), ("rms_norm", "weight")])
def test_out_overlapping_weight_or_bias(op, which):
    """Never a silent wrong number -- an out= that aliases weight or bias must be
    refused (naming out) or give the same result as separate arrays."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, D)).astype(np.float32)
    w = rng.uniform(0.5, 2, D).astype(np.float32)
    b = rng.standard_normal(D).astype(np.float32)
    out = np.zeros_like(x)
    out[0], out[1] = w, b
    weight = out[0] if which == "weight" else w
    if op == "layer_norm":
        bias = out[1] if which == "bias" else b
        call, ref = (lambda: gn.layer_norm(x, weight, bias, out=out)), slow.layer_norm(x, w, b)
    else:
        call, ref = (lambda: gn.rms_norm(x, weight, out=out)), slow.rms_norm(x, w)
    try:
        got = call()
    except (TypeError, ValueError) as e:
        assert re.search(r"(?<![A-Za-z0-9_])out(?![A-Za-z0-9_])", str(e)), str(e)
        return
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6, err_msg=f"out aliases {which}")
