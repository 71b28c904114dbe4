"""Nasty inputs and oracle comparisons shared by the test files.

Generators return arrays of the requested dtype whose *values* are the test
case: the oracle (geonorm_core.slow) reads the very same values, so nothing
here depends on how a value got rounded into the dtype.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np

import geonorm_core as gn
from geonorm_core import slow

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {
    "float16": np.dtype(np.float16),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "bfloat16": BF16,
}
# Lengths around every vector width (4/8/16 lanes) plus the real model sizes.
DIMS = (1, 2, 3, 7, 15, 16, 17, 31, 33, 64, 576, 4097)

EPS64 = np.finfo(np.float64).eps
SUB64 = np.finfo(np.float64).smallest_subnormal

# Accuracy the contract promises for decompose/rotation, by input precision.
RTOL = {"float16": 1e-6, "float32": 1e-6, "bfloat16": 1e-6, "float64": 1e-12}
ANGLE_TOL = {"float16": 1e-4, "float32": 1e-4, "bfloat16": 1e-4, "float64": 1e-12}
# The LN-RMS gap is a relative distance in [0, 2]: the accuracy contract bounds it absolutely (1e-6)
# on every dtype, SIMD path and backend.
GAP_ATOL = 1e-6


def gap_tol(ref):
    """The contract's tolerance for LN-RMS gaps `ref`: 1e-6 absolute for gaps up to 1; beyond
    that (eps dominating a tiny row, a bias dwarfing LN's output) 1e-6 relative."""
    return GAP_ATOL * np.maximum(1.0, np.nan_to_num(np.abs(f64(ref))))
# Norm ops: the output dtype's rounding, relative to the row's scale -- 2 eps for the
# half types (the core computes in fp32 and rounds once), 4 eps for fp32 (a few fp32
# operations after the fp64 statistics).  For fp64 outputs a rounding-level bound would
# need compensated sums; the contract's fp64 accuracy, 1e-12, applies as for decompose.
NORM_RTOL = {"float16": 2 * 2.0**-10, "bfloat16": 2 * 2.0**-7, "float32": 4 * 2.0**-23, "float64": 1e-12}


def finfo(dtype):
    return ml_dtypes.finfo(np.dtype(dtype))


def dtype_name(a) -> str:
    """'float32' etc. for a NumPy array or a torch tensor."""
    if type(a).__module__.startswith("torch"):
        return str(a.dtype).replace("torch.", "")
    return np.dtype(a.dtype).name  # byte order is not part of the name


# ---------------------------------------------------------------- generators


def magnitudes(dtype):
    """Row scales spanning the dtype's range (fp32 range for fp32/bf16/fp64)."""
    name = np.dtype(dtype).name
    if name == "float16":
        return (1e-3, 1.0, 1e2, 4e3)
    return (1e-30, 1e-10, 1.0, 1e10, 1e30)


def nasty_rows(d: int, dtype, seed: int = 0) -> np.ndarray:
    """A (n, d) batch of rows that break naive kernels, cast to dtype.

    mean-dominated rows (|mean|/std up to 1e6, both signs), massive single
    entries (1e4-1e5 beside O(1) values, at the first, middle and last
    position so every SIMD tail sees one), whole-row magnitudes 1e-30..1e30,
    rows up to the largest finite value of a 16/32-bit dtype,
    rows mixing those magnitudes, subnormals of the dtype, constant rows
    (angle 0/180), exactly-zero-mean rows (angle 90), one-hot, ramps and an
    all-zero row (undefined angle).
    """
    dtype = np.dtype(dtype)
    fi = finfo(dtype)
    big = float(fi.max)
    rng = np.random.default_rng(seed * 7919 + d)
    z = lambda: rng.standard_normal(d)  # noqa: E731
    rows = [z(), rng.uniform(-1, 1, d), z() * 0.1 + 0.3]
    for ratio in (1e2, 1e4, 1e6):
        for sign in (1.0, -1.0):
            if ratio * 2 < big:
                rows.append(sign * ratio + z())
    rows.append(1e-20 * (1e6 + z()) if big > 1e30 else 1e-3 * (100 + z()))
    for mass in (1e4, -1e5):
        mass = float(np.clip(mass, -big / 4, big / 4))
        for pos in sorted({0, d // 2, d - 1}):
            r = z()
            r[pos] = mass
            rows.append(r)
    for s in magnitudes(dtype):
        rows.append(z() * s)
    lo, hi = np.log10(float(fi.tiny)) + 1, np.log10(big / (10 * d))
    lo, hi = max(lo, -30.0), min(hi, 30.0)
    rows.append(rng.choice([-1.0, 1.0], d) * 10 ** rng.uniform(lo, hi, d))
    if dtype.itemsize < 8:  # up to the dtype's largest values: squares overflow fp32
        rows.append(rng.uniform(-0.5, 0.5, d) * big)
        rows.append(np.full(d, big) * rng.choice([-1.0, 1.0]))
    sub = float(fi.smallest_subnormal)
    rows.append(rng.uniform(-1, 1, d) * float(fi.tiny))  # mostly subnormal
    rows.append(rng.choice([-1.0, 1.0], d) * sub * rng.integers(1, 4, d))
    rows.append(np.full(d, 0.1))
    rows.append(np.full(d, -3.0))
    k = rng.integers(1, 50, d // 2).astype(np.float64)
    zero_mean = np.concatenate([k, -k, np.zeros(d % 2)])
    rows.append(rng.permutation(zero_mean) if d > 1 else np.array([2.0]))
    one_hot = np.zeros(d)
    one_hot[rng.integers(d)] = 2.5
    rows.append(one_hot)
    rows.append(np.arange(1.0, d + 1))
    rows.append(-np.arange(1.0, d + 1)[::-1] + d / 3)
    rows.append(np.zeros(d))
    with np.errstate(over="ignore", under="ignore"):
        out = np.array(rows, dtype=np.float64).astype(dtype)
    assert np.isfinite(out.astype(np.float64)).all()
    return out


def partners(x: np.ndarray, rng) -> dict:
    """Rows to pair with x: its LayerNorm (the paper's measurement), a nearby
    vector, its negation, a multiple (angle 0), an unrelated row, a shuffle."""
    dt = x.dtype
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        ln = slow.layer_norm(x, rng.uniform(0.5, 2, x.shape[-1]), rng.normal(0, 0.2, x.shape[-1]))
        near = f64(x) + 1e-3 * rng.standard_normal(x.shape) * slow.decompose(x).rms[:, None]
        out = {
            "layer_norm": ln.astype(dt),
            "near": near.astype(dt),
            "negated": -x,
            "doubled": (f64(x) * 2).astype(dt),
            "random": rng.standard_normal(x.shape).astype(dt),
            "shuffled": x[rng.permutation(x.shape[0])],
        }
    return {k: np.where(np.isfinite(f64(v)), v, 0).astype(dt) for k, v in out.items()}


def extreme_rows_f64(d: int, seed: int = 0) -> np.ndarray:
    """float64 rows near the ends of the double range, and double subnormals."""
    rng = np.random.default_rng(seed + 31 * d)
    z = rng.standard_normal
    rows = [
        z(d) * 1e300,
        z(d) * 1e-300,
        (1e6 + z(d)) * 1e295,
        (1e6 + z(d)) * 1e-290,
        rng.uniform(-1, 1, d) * 2.2e-308,  # subnormal doubles
        rng.choice([-1.0, 1.0], d) * SUB64 * rng.integers(1, 9, d),
        rng.choice([-1.0, 1.0], d) * 10 ** rng.uniform(-300, 300, d),
    ]
    return np.array(rows)


def with_nonfinite(a: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """Copy of a 2-D batch with NaN/+Inf/-Inf dropped into some rows.

    Returns (array, mask of the rows that now hold a non-finite value).
    """
    a = a.copy()
    n, d = a.shape
    bad = np.zeros(n, bool)
    specials = [np.nan, np.inf, -np.inf]
    for i in range(0, n, 3):
        pos = [0, d - 1, d // 2][i % 3]
        a[i, pos] = specials[i % 3]
        bad[i] = True
    if n > 4 and d > 1:  # inf - inf inside one row
        a[4, 0], a[4, -1] = np.inf, -np.inf
        bad[4] = True
    return a, bad


# ----------------------------------------------------------------- layouts


def layouts(a: np.ndarray):
    """Yield (name, view) pairs holding the values of `a` in other layouts."""
    yield "contiguous", a
    if a.ndim >= 2:
        yield "fortran", np.asfortranarray(a)
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    wide[..., ::2] = a
    yield "strided", wide[..., ::2]
    rev = np.ascontiguousarray(a[..., ::-1])
    if a.ndim >= 2:
        rev = np.ascontiguousarray(rev[::-1])
        yield "negative", rev[::-1, ..., ::-1]
    else:
        yield "negative", rev[::-1]
    if a.dtype != BF16:
        yield "big-endian", a.astype(a.dtype.newbyteorder(">"))
    yield "misaligned", misaligned(a)
    ro = a.copy()
    ro.flags.writeable = False
    yield "read-only", ro


def misaligned(a: np.ndarray, offset: int = 1) -> np.ndarray:
    """Copy of `a` whose data starts `offset` bytes into a uint8 buffer."""
    buf = np.zeros(a.nbytes + offset + 8, np.uint8)
    m = buf[offset : offset + a.nbytes].view(a.dtype).reshape(a.shape)
    m[...] = a
    assert not m.flags.aligned or a.dtype.itemsize == 1 or a.size == 0
    return m


# ------------------------------------------------------------- comparisons


def f64(a) -> np.ndarray:
    """Exact float64 copy of an array, tensor or Decomposition field."""
    if type(a).__module__.startswith("torch"):
        return a.detach().double().numpy()
    return np.asarray(a).astype(np.float64)


def _close(name, got, ref, tol, where):
    got, ref = f64(got), f64(ref)
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    nan_ref = np.isnan(ref)
    nan_mismatch = np.isnan(got) != nan_ref
    if nan_mismatch.any():
        i = np.argwhere(nan_mismatch)[0]
        raise AssertionError(
            f"{name}{where}: NaN pattern differs at {tuple(i)}: got {got[tuple(i)]!r}, "
            f"oracle {ref[tuple(i)]!r}"
        )
    tol = np.broadcast_to(tol, ref.shape)
    with np.errstate(invalid="ignore"):
        err = np.where(nan_ref, 0.0, np.abs(got - ref))
        bad = ~(err <= tol)  # also catches inf - inf
    bad &= ~(nan_ref | ((got == ref) & np.isinf(ref)))
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        raise AssertionError(
            f"{name}{where}: {bad.sum()} of {bad.size} off; first at {i}: got {got[i]!r}, "
            f"oracle {ref[i]!r}, |err| {err[i]:.3g} > tol {tol[i]:.3g}"
        )


def assert_decomposition(dec, ref, dtype, where=""):
    """Compare a Decomposition with the oracle's within the contract's tolerances.

    norm, perp_norm, std, rms: relative; mean within rtol*rms, coef within
    rtol*norm, cos within rtol, angle in degrees.  Floors: a few double
    subnormals (the result's own representability) and, for perp_norm, the
    float64 two-pass floor 8*eps*|coef| (a rounded mean leaves sqrt(d)*delta
    in the perp norm of a constant row; the oracle has that floor too).
    """
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    rtol, atol_angle = RTOL[name], ANGLE_TOL[name]
    floor = 4 * SUB64
    norm, coef = np.nan_to_num(ref.norm), np.nan_to_num(np.abs(ref.coef))
    rms = norm / np.sqrt(ref.d)
    perp_floor = 8 * EPS64 * coef
    _close("mean", dec.mean, ref.mean, rtol * rms + floor, where)
    _close("max_abs", dec.max_abs, ref.max_abs, 0 * rms, where)  # a max is exact
    _close("coef", dec.coef, ref.coef, rtol * norm + floor, where)
    _close("norm", dec.norm, ref.norm, rtol * norm + floor, where)
    _close("rms", dec.rms, ref.rms, rtol * rms + floor, where)
    _close("perp_norm", dec.perp_norm, ref.perp_norm,
           rtol * np.nan_to_num(ref.perp_norm) + perp_floor + floor, where)
    _close("std", dec.std, ref.std,
           rtol * np.nan_to_num(ref.std) + perp_floor / np.sqrt(ref.d) + floor, where)
    _close("cos", dec.cos, ref.cos, rtol, where)
    _close("angle", dec.angle, ref.angle, atol_angle, where)
    got_undef = dec.undefined_rows
    assert isinstance(got_undef, (int, np.integer)), type(got_undef)
    assert got_undef == ref.undefined_rows, f"undefined_rows{where}: {got_undef} != {ref.undefined_rows}"


def assert_angles(got, ref, dtype, where="", name="rotation"):
    dtype = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    _close(name, got, ref, ANGLE_TOL[dtype], where)


def row_max(a: np.ndarray) -> np.ndarray:
    """max |a| over the last axis (0 for an all-NaN row), kept as a column."""
    with np.errstate(invalid="ignore"):
        m = np.nanmax(np.abs(a), axis=-1, keepdims=True, initial=0.0)
    return np.nan_to_num(m, posinf=0.0)


def assert_norm_output(got, ref, out_dtype, row_scale, input_scale=0.0, where="", name="out"):
    """Norm-op output vs oracle: within NORM_RTOL[dtype] of the row's scale.

    `row_scale` (a column) is the scale of the row's output; `input_scale`
    adds the float64 working-precision floor 16*eps64*scale for outputs that
    come out of a cancellation x - mean (the oracle's own rounding there).
    """
    fi = finfo(out_dtype)
    name_dt = np.dtype(out_dtype).name
    tol = NORM_RTOL[name_dt] * row_scale + 16 * EPS64 * input_scale
    tol = tol + float(fi.smallest_subnormal)
    # Values outside the dtype's range must come back as the same infinity.
    with np.errstate(over="ignore"):
        ref_rounded = f64(np.asarray(ref).astype(out_dtype))
    ref = np.where(np.isinf(ref_rounded), ref_rounded, ref)
    _close(name, got, ref, tol, where)


def check_op(op, x, w=None, b=None, eps=None, out_dtype=None, where="", got=None):
    """Run gn.<op> (unless `got` is given) and compare with slow.<op> at the output's precision."""
    out_dtype = np.dtype(out_dtype or x.dtype)
    kw = {} if eps is None else {"eps": eps}
    if op == "layer_norm":
        got = gn.layer_norm(x, w, b, **kw) if got is None else got
        ref = slow.layer_norm(x, w, b, **kw)
        plain = slow.layer_norm(x, **kw)
        wmax = 1.0 if w is None else float(np.abs(f64(w)).max())
        bmax = 0.0 if b is None else float(np.abs(f64(b)).max())
        scale = row_max(plain) * wmax + bmax
        # the oracle's mean carries float64 rounding of size eps64*|x|
        dec = slow.decompose(x)
        e = 1e-5 if eps is None else eps
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            inv = np.nan_to_num(1 / np.hypot(dec.std, math.sqrt(e)), posinf=0.0)
        in_scale = row_max(f64(x)) * inv[..., None] * wmax
    elif op == "rms_norm":
        got = gn.rms_norm(x, w, bias=b, **kw) if got is None else got
        ref = slow.rms_norm(x, w, bias=b, **kw)
        scale, in_scale = row_max(slow.rms_norm(x, w, **kw)) + (0.0 if b is None else float(np.abs(f64(b)).max())), 0.0
    else:
        got = gn.remove_uniform(x) if got is None else got
        ref = slow.remove_uniform(x)
        scale, in_scale = row_max(ref), row_max(f64(x))
    assert got.shape == x.shape, f"{op}{where}: shape {got.shape} != {x.shape}"
    # the input's dtype; a big-endian input may come back in either byte order
    assert dtype_name(got) == out_dtype.name, f"{op}{where}: dtype {got.dtype} != {out_dtype}"
    assert_norm_output(got, ref, out_dtype, scale, in_scale, where=where, name=op)
    return got
