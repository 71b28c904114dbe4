"""The ops' fast path (contiguous arrays and CPU tensors straight to the kernels, small calls on the
calling thread): the same bits as the general path, the oracle's accuracy, and every error kept."""

import numpy as np
import pytest
import torch
from nasty import DTYPES, check_op, nasty_rows

import geonorm_core as gn
from geonorm_core._native import _core
from geonorm_core.analysis import measure

ROWS = (1, 2, 3, 15, 16, 17)
TORCH = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64,
         "bfloat16": torch.bfloat16}


def strided(x):
    """The same rows, not contiguous (every other row of a bigger array): the general path."""
    big = np.zeros((2 * x.shape[0], x.shape[1]), dtype=x.dtype)
    big[::2] = x
    return big[::2]


def as_tensor(x):
    return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16) if x.dtype.name == "bfloat16" \
        else torch.from_numpy(x)


def batch(d, dtype, rows):
    x = nasty_rows(d, DTYPES[dtype])
    return np.ascontiguousarray(np.resize(x, (rows, d)))


def same_bits(a, b):
    a = a.view(torch.int16).numpy() if isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 else np.asarray(a)
    b = np.asarray(b)
    assert a.shape == b.shape
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", (1, 17, 64, 577))
def test_norms_fast_path_matches_general_path_and_oracle(simd, d, dtype, rows):
    x = batch(d, dtype, rows)
    rng = np.random.default_rng(d)
    w = rng.uniform(0.5, 2, d).astype(DTYPES[dtype])
    b = rng.normal(0, 1, d).astype(DTYPES[dtype])
    for op, args in (("layer_norm", (w, b)), ("rms_norm", (w,)), ("remove_uniform", ())):
        kind = {"layer_norm": _core.LAYER_NORM, "rms_norm": _core.RMS_NORM, "remove_uniform": _core.REMOVE_UNIFORM}
        assert _core.fast_normalize(kind[op], x, *(args + (None, None))[:2], 1e-5, None, None) is not None
        got = getattr(gn, op)(x, *args)
        same_bits(got, getattr(gn, op)(strided(x), *args))
        check_op(op, x, *args, where=f" [{simd} {dtype} d={d} rows={rows}]", got=got)
        tgot = getattr(gn, op)(as_tensor(x), *(as_tensor(a) for a in args))
        assert isinstance(tgot, torch.Tensor) and tgot.dtype == TORCH[dtype]
        same_bits(tgot, got)
        out = np.full_like(x, 7)
        assert getattr(gn, op)(x, *args, out=out) is out
        same_bits(out, got)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_measurements_fast_path_match_general_path(simd, dtype, rows):
    d = 67
    x = batch(d, dtype, rows)
    y = x[::-1].copy()
    rng = np.random.default_rng(1)
    w, b = rng.uniform(0.5, 2, d), rng.normal(0, 1, d)
    assert _core.fast_decompose(x, None) is not None
    fast, general = gn.decompose(x), gn.decompose(strided(x))
    for q in ("mean", "coef", "norm", "perp_norm", "cos", "angle", "max_abs"):
        same_bits(getattr(fast, q), getattr(general, q))
        same_bits(getattr(gn.decompose(as_tensor(x)), q), getattr(fast, q))
    same_bits(gn.rotation(x, y), gn.rotation(strided(x), strided(y)))
    same_bits(gn.rotation(as_tensor(x), as_tensor(y)), gn.rotation(x, y))
    same_bits(gn.ln_rms_gap(x, w, b), gn.ln_rms_gap(strided(x), w, b))
    same_bits(gn.ln_rms_gap(as_tensor(x), torch.from_numpy(w), b), gn.ln_rms_gap(x, w, b))
    for post in (y, None):
        fast = measure.token_values(x, post, gain=w, bias=b)
        general = measure.token_values(strided(x), None if post is None else strided(post), gain=w, bias=b)
        assert fast.keys() == general.keys()
        for q in fast:
            same_bits(fast[q], general[q])


def test_serial_and_threaded_calls_give_the_same_bits():
    x = np.random.default_rng(0).standard_normal((4096, 64)).astype(np.float32)
    before = _core.serial_threshold()
    try:
        _core.serial_threshold(1 << 40)
        serial = (gn.layer_norm(x, num_threads=2), gn.decompose(x, num_threads=2).angle,
                  measure.token_values(x, x[::-1].copy(), num_threads=2)["rotation"])
        _core.serial_threshold(0)
        threaded = (gn.layer_norm(x, num_threads=2), gn.decompose(x, num_threads=2).angle,
                    measure.token_values(x, x[::-1].copy(), num_threads=2)["rotation"])
    finally:
        _core.serial_threshold(before)
    for a, b in zip(serial, threaded):
        same_bits(a, b)


def test_fast_path_keeps_the_general_paths_errors():
    x = np.ones((3, 8), np.float32)
    with pytest.raises(ValueError, match="out must not overlap x"):
        gn.layer_norm(x, out=x)
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        gn.layer_norm(x, np.ones(7, np.float32))
    with pytest.raises(ValueError, match="eps must be a finite number"):
        gn.rms_norm(x, eps=float("nan"))
    with pytest.raises(ValueError, match="num_threads must be a positive integer"):
        gn.decompose(x, num_threads=0)
    with pytest.raises(ValueError, match="out must have shape"):
        gn.layer_norm(x, out=np.empty((3, 9), np.float32))
    with pytest.raises(ValueError, match="out must be writeable"):
        ro = np.empty_like(x)
        ro.flags.writeable = False
        gn.layer_norm(x, out=ro)
    with pytest.raises(TypeError, match="x must be an array of"):
        gn.layer_norm(np.ones((2, 3), np.int32))
    with pytest.raises(ValueError, match="y must have the same shape"):
        gn.rotation(x, np.ones((3, 7), np.float32))
    with pytest.raises(ValueError, match="post must have the shape of hidden"):
        measure.token_values(x, np.ones((2, 8), np.float32))


def test_a_gain_that_aliases_out_is_read_before_it_is_written():
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    w = np.random.default_rng(1).uniform(0.5, 2, 8).astype(np.float32)
    want = gn.layer_norm(x, w.copy())
    buf = w.reshape(1, 8)  # out= is the gain's own memory
    gn.layer_norm(x, w, out=buf)
    same_bits(buf, want)


def test_a_huge_thread_count_is_clamped_not_overflowed():
    """Thread counts past what the fast path takes go to the general path, which clamps them."""
    x = np.ones((3, 8), np.float32)
    with pytest.warns(RuntimeWarning, match="clamped"):
        y = gn.layer_norm(x, num_threads=99999999999)
    np.testing.assert_array_equal(y, gn.layer_norm(x, num_threads=1))
