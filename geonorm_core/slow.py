"""Slow, obviously-correct float64 NumPy twins of the native kernels.

This is the test oracle (the ``bn.slow`` pattern of bottleneck): every native
kernel in :mod:`geonorm_core` has a twin here with the same name and meaning.
The twins favour being evidently right over being fast:

* the input is converted to float64 *exactly* (float16, bfloat16 and float32
  all embed exactly in float64; byte order is normalised by the conversion);
* each row is scaled by an exact power of two, 2**-e with e from ``np.frexp``
  of the row's largest magnitude, so that no sum below can overflow or
  underflow, and the scale is undone exactly at the end;
* statistics use the two-pass formulas (mean first, then the squared
  deviations), never the one-pass E[x^2] - mu^2 (docs/accuracy.md);
  the mean gets one correcting pass so that it is as accurate as float64 allows.

Rows holding NaN or +-Inf give NaN everywhere; an all-zero row gives 0 for
every statistic except ``cos`` and ``angle``, which are NaN (the angle with
the uniform vector **1** is undefined).  Results are float64 arrays shaped
``x.shape[:-1]`` (statistics) or ``x.shape`` (norm ops).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "SlowDecomposition",
    "decompose",
    "rotation",
    "remove_uniform",
    "layer_norm",
    "rms_norm",
    "ln_rms_gap",
]


def _as_float64(a, name="x"):
    """Exact float64 copy of a float array or CPU torch tensor."""
    if type(a).__module__.startswith("torch"):
        a = a.detach().cpu().double().numpy()  # fp16/bf16/fp32 -> fp64 is exact
    a = np.asarray(a)
    if a.dtype.kind != "f" and a.dtype.name != "bfloat16":
        raise TypeError(f"{name}: need a float array, got dtype {a.dtype}")
    return a.astype(np.float64)  # exact; also normalises big-endian input


def _scaled_rows(x):
    """Split x (..., d) into (xs, e, bad): x = xs * 2**e row-wise, max|xs| < 1.

    ``bad`` marks rows holding NaN or Inf; those rows of ``xs`` are zeroed so
    that later arithmetic stays quiet, and the caller writes NaN over them.
    """
    x = _as_float64(x)
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"x: need shape (..., d) with d >= 1, got {x.shape}")
    bad = ~np.isfinite(x).all(axis=-1)
    x = np.where(bad[..., None], 0.0, x)
    _, e = np.frexp(np.abs(x).max(axis=-1))  # max|x| = m * 2**e, 0.5 <= m < 1
    xs = np.ldexp(x, -e[..., None])  # exact: multiplication by a power of two
    return xs, e, bad


def _mean(xs):
    """Row means (keepdims).  The second pass adds the mean of the deviations
    from the first: it undoes the first pass's rounding (the corrected two-pass
    algorithm), so a constant row gets its constant back exactly and ||Px||
    is 0 for it, not sqrt(d) times a rounding error."""
    d = xs.shape[-1]
    m = xs.sum(axis=-1, keepdims=True) / d
    return m + (xs - m).sum(axis=-1, keepdims=True) / d


@dataclass
class SlowDecomposition:
    """Per-row decomposition of x along the uniform vector **1** (float64).

    mean = mu (G1); coef = x.u = sqrt(d) mu (G2); norm = ||x||;
    perp_norm = ||Px|| = ||x - mu 1|| (G4, G5); cos = cos(x, 1) (G2);
    angle = angle(x, 1) in degrees; std = ||Px||/sqrt(d) (G5);
    rms = ||x||/sqrt(d); max_abs = max_i |x_i|.
    """

    mean: np.ndarray
    coef: np.ndarray
    norm: np.ndarray
    perp_norm: np.ndarray
    cos: np.ndarray
    angle: np.ndarray
    max_abs: np.ndarray
    d: int

    @property
    def std(self) -> np.ndarray:
        return self.perp_norm / np.sqrt(self.d)

    @property
    def rms(self) -> np.ndarray:
        return self.norm / np.sqrt(self.d)

    @property
    def undefined_rows(self) -> int:
        return int(np.isnan(self.angle).sum())


def decompose(x) -> SlowDecomposition:
    """Two-pass float64 decomposition of each row of x (..., d).

    G1: mu = 1.x / d.  G2: x.u = sqrt(d) mu = ||x|| cos(theta).
    G4/G5: ||Px|| = sqrt(sum (x_i - mu)^2) (two-pass), ||x||^2 = d mu^2 + ||Px||^2.
    The angle is atan2(||Px||, x.u) in degrees: by G2 and G5 these are the
    legs ||x|| cos(theta) and ||x|| sin(theta), and atan2 stays accurate near
    0 and 180 degrees where arccos of the cosine does not.
    """
    xs, e, bad = _scaled_rows(x)
    d = xs.shape[-1]
    mean = _mean(xs)[..., 0]
    perp = np.sqrt(((xs - mean[..., None]) ** 2).sum(axis=-1))
    norm = np.sqrt((xs**2).sum(axis=-1))
    coef = np.sqrt(d) * mean
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.clip(coef / norm, -1.0, 1.0)  # 0/0 -> NaN for a zero row
    angle = np.degrees(np.arctan2(perp, coef))
    angle = np.where(norm == 0, np.nan, angle)

    def unscale(v):
        return np.where(bad, np.nan, np.ldexp(v, e))

    return SlowDecomposition(
        mean=unscale(mean),
        coef=unscale(coef),
        norm=unscale(norm),
        perp_norm=unscale(perp),
        cos=np.where(bad, np.nan, cos),
        angle=np.where(bad, np.nan, angle),
        max_abs=unscale(np.abs(xs).max(axis=-1)),
        d=d,
    )


def rotation(x, y) -> np.ndarray:
    """Angle in degrees between paired rows of x and y (same shape).

    Kahan's stable form 2 atan2(||a - b||, ||a + b||) with a = x/||x||,
    b = y/||y||: the rotation a norm layer applies (G11, G12).  NaN where
    either row is zero or holds NaN/Inf.
    """
    xs, _, xbad = _scaled_rows(x)
    ys, _, ybad = _scaled_rows(y)
    if xs.shape != ys.shape:
        raise ValueError(f"y: need the shape of x {xs.shape}, got {ys.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        a = xs / np.sqrt((xs**2).sum(axis=-1, keepdims=True))
        b = ys / np.sqrt((ys**2).sum(axis=-1, keepdims=True))
    diff = np.sqrt(((a - b) ** 2).sum(axis=-1))
    summ = np.sqrt(((a + b) ** 2).sum(axis=-1))
    angle = np.degrees(2.0 * np.arctan2(diff, summ))  # NaN propagates from 0/0
    return np.where(xbad | ybad, np.nan, angle)


def remove_uniform(x) -> np.ndarray:
    """P x = x - mu 1, the component of x orthogonal to **1** (G3, G4)."""
    xs, e, bad = _scaled_rows(x)
    out = np.ldexp(xs - _mean(xs), e[..., None])
    return np.where(bad[..., None], np.nan, out)


def _weight(w, d, name):
    if w is None:
        return None
    w = _as_float64(w, name)
    if w.shape != (d,):
        raise ValueError(f"{name}: need shape ({d},), got {w.shape}")
    return w


def _normalize(xs, e, bad, second_moment, eps):
    """xs * 2**e / sqrt(second_moment * 4**e + eps), without overflow.

    Divide the scaled problem through by 2**e, which turns eps into
    eps * 4**-e; only where that overflows (tiny rows, eps dominating by far)
    use the unscaled form, whose moment then flushes to 0 harmlessly.
    """
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        eps_s = np.ldexp(eps, -2 * e)
        scaled = xs / np.sqrt(second_moment + eps_s)[..., None]
        unscaled = np.ldexp(
            xs / np.sqrt(np.ldexp(second_moment, 2 * e) + eps)[..., None], e[..., None]
        )  # rounded once, after the division, so subnormal outputs stay exact
    out = np.where(np.isfinite(eps_s)[..., None], scaled, unscaled)
    if eps > 0:  # a zero numerator stays 0 even where eps * 4**-e flushed to 0
        out = np.where(xs == 0, 0.0, out)
    return np.where(bad[..., None], np.nan, out)


def layer_norm(x, weight=None, bias=None, eps=1e-5) -> np.ndarray:
    """LayerNorm over the last axis (G7, G8), float64.

    y = (x - mu 1) / sqrt(sigma^2 + eps) * weight + bias with the population
    variance sigma^2 = ||Px||^2 / d (G5), computed two-pass.  A constant row
    with eps = 0 is 0/0 = NaN, as the accuracy contract asks.
    """
    xs, e, bad = _scaled_rows(x)
    d = xs.shape[-1]
    dev = xs - _mean(xs)
    var = (dev**2).sum(axis=-1) / d
    y = _normalize(dev, e, bad, var, eps)
    w, b = _weight(weight, d, "weight"), _weight(bias, d, "bias")
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


def rms_norm(x, weight=None, eps=1e-6, bias=None) -> np.ndarray:
    """RMSNorm over the last axis (G8), float64: x / sqrt(||x||^2/d + eps) * weight (+ bias)."""
    xs, e, bad = _scaled_rows(x)
    d = xs.shape[-1]
    y = _normalize(xs, e, bad, (xs**2).sum(axis=-1) / d, eps)
    w, b = _weight(weight, d, "weight"), _weight(bias, d, "bias")
    y = y if w is None else y * w
    return y if b is None else y + b


def ln_rms_gap(x, weight=None, bias=None, eps=1e-5) -> np.ndarray:
    """||LN(x) - (RMSNorm_w(x) + b)|| / ||LN(x)|| per row (G9), float64; NaN where LN(x) = 0."""
    ln = layer_norm(x, weight, bias, eps)
    rms = rms_norm(x, weight, eps, bias)
    with np.errstate(invalid="ignore", divide="ignore"):
        den = np.sqrt((ln**2).sum(axis=-1))
        return np.where(den > 0, np.sqrt(((ln - rms) ** 2).sum(axis=-1)) / den, np.nan)
