"""The public operations: the geometry of hidden vectors and the norms built on it.

Notation: x in R^d, the uniform vector 1, u = 1/sqrt(d),
P = I - 1 1^T / d.  Every op works row-wise over the last axis of a (..., d)
array or CPU tensor of float16/float32/float64/bfloat16, releases the GIL, and
gives bitwise-identical results for any ``num_threads``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _arrays
from ._native import _core
from .runtime import resolve_threads

_FIELDS = ("mean", "coef", "norm", "perp_norm", "cos", "angle", "max_abs")  # geonorm.h's order


@dataclass(frozen=True)
class Decomposition:
    """The decomposition x = mu 1 + P x of each row (float64, shaped x.shape[:-1]).

    Attributes
    ----------
    mean : mu = 1^T x / d (G1).
    coef : the signed scalar projection x . u = sqrt(d) mu = ||x|| cos theta (G2).
    norm : ||x||, from ||x||^2 = d mu^2 + ||P x||^2 (G5).
    perp_norm : ||P x|| = ||x - mu 1|| (G4, G5).
    cos : cos theta = coef / norm; NaN for the zero vector.
    angle : theta = angle(x, 1) in degrees, atan2(perp_norm, coef); NaN for the zero vector.
    max_abs : max_i |x_i|, the largest component (massive activations show here).
    d : the dimension.

    Rows with NaN or Inf give NaN in every field; they and zero rows are counted
    by ``undefined_rows``.
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
        """Population standard deviation sigma = ||P x|| / sqrt(d) (G5)."""
        return self.perp_norm / np.sqrt(self.d)

    @property
    def rms(self) -> np.ndarray:
        """Root mean square ||x|| / sqrt(d), RMSNorm's statistic (G8)."""
        return self.norm / np.sqrt(self.d)

    @property
    def undefined_rows(self) -> int:
        """How many rows have no angle with 1 (zero vector, or NaN/Inf in the row)."""
        return int(np.count_nonzero(np.isnan(self.angle)))


def decompose(x: Any, *, num_threads: int | None = None) -> Decomposition:
    """Decompose each row into its component along 1 and its part orthogonal to 1.

    Parameters
    ----------
    x : array_like or torch.Tensor, shape (..., d)
        float16, float32, float64 or bfloat16; any strides; never copied (except
        big-endian input).
    num_threads : int, optional
        Threads to use; default :func:`geonorm_core.get_num_threads`.

    Returns
    -------
    Decomposition
        mean, coef, norm, perp_norm, cos, angle (and std, rms), float64, shaped
        ``x.shape[:-1]``.  Exact: two passes over each row from cache, float64
        accumulation, never E[x^2] - mu^2.
    """
    fast = _core.fast_decompose(x, num_threads)
    if fast is not None:
        values, lead, d = fast
        return Decomposition(*(values[i].reshape(lead) for i in range(len(_FIELDS))), d=d)
    arr = _arrays.as_rows(x)
    nthreads = resolve_threads(num_threads)
    lead = arr.shape[:-1]
    n = int(np.prod(lead, dtype=np.int64))
    out = np.empty((len(_FIELDS), n), dtype=np.float64)
    for block in _arrays.blocks([arr]):
        _core.decompose(block.specs[0], out.ctypes.data + 8 * block.first, n, nthreads)
    fields = {q: out[i].reshape(lead) for i, q in enumerate(_FIELDS)}
    return Decomposition(**fields, d=arr.shape[-1])


def rotation(x: Any, y: Any, *, num_threads: int | None = None) -> np.ndarray:
    """Angle in degrees between paired rows of x and y (e.g. a hidden state and its norm's output).

    Computed as 2 atan2(||x^ - y^||, ||x^ + y^||) on unit vectors (Kahan), accurate
    at 0 and 180 degrees too; NaN where either row is zero or not finite (G11, G12).

    Parameters
    ----------
    x, y : array_like or torch.Tensor, same shape (..., d); dtypes may differ.

    Returns
    -------
    numpy.ndarray of float64, shape ``x.shape[:-1]``.
    """
    fast = _core.fast_rotation(x, y, num_threads)
    if fast is not None:
        return fast
    xa, ya = _arrays.as_rows(x, "x"), _arrays.as_rows(y, "y")
    if xa.shape != ya.shape:
        raise ValueError(f"y must have the same shape as x {xa.shape}, got {ya.shape}")
    nthreads = resolve_threads(num_threads)
    out = np.empty(xa.shape[:-1], dtype=np.float64)
    for block in _arrays.blocks([xa, ya]):
        _core.rotation(block.specs[0], block.specs[1], out.ctypes.data + 8 * block.first, nthreads)
    return out


def ln_rms_gap(x: Any, weight: Any = None, bias: Any = None, eps: float = 1e-5, *,
               num_threads: int | None = None) -> np.ndarray:
    """What LayerNorm's mean subtraction changes, per row: ||LN(x) - RMS(x)|| / ||LN(x)||.

    LN(x) = weight * (x - mu 1) / sqrt(sigma^2 + eps) + bias and
    RMS(x) = weight * x / sqrt(||x||^2 / d + eps) + bias: the same layer with the
    mean subtraction removed (G9: LN(x) = RMSNorm(P x) + bias).  Zero exactly when
    x is orthogonal to 1; the swap test replaces LN by RMS.  NaN where LN(x) = 0
    or the row is zero or not finite.  Computed in float64.

    Returns
    -------
    numpy.ndarray of float64, shape ``x.shape[:-1]``.
    """
    fast = _core.fast_ln_rms_gap(x, weight, bias, eps, num_threads)
    if fast is not None:
        return fast
    arr = _arrays.as_rows(x)
    layer = _arrays.Layer(arr, weight, bias, eps, np.float64)
    nthreads = resolve_threads(num_threads)
    out = np.empty(arr.shape[:-1], dtype=np.float64)
    for block in _arrays.blocks([arr]):
        _core.ln_rms_gap(block.specs[0], layer.wp, layer.bp, layer.eps, out.ctypes.data + 8 * block.first,
                         nthreads)
    return out


def _normalize(kind: int, x: Any, weight: Any, bias: Any, eps: float, out: Any,
               num_threads: int | None) -> Any:
    """The general path of the three norms: any layout, every check (the fast path took the common case)."""
    arr = _arrays.as_rows(x)
    layer = _arrays.Layer(arr, weight, bias, eps, np.float64 if arr.dtype == np.float64 else np.float32)
    nthreads = resolve_threads(num_threads)
    if out is None:
        out, view = _arrays.empty_like(x, arr)
    else:
        view = _arrays.check_out(out, arr)
    for block in _arrays.blocks([arr, view]):
        _core.normalize(kind, block.specs[0], block.specs[1], layer.wp, layer.bp, layer.eps, nthreads)
    return out


def remove_uniform(x: Any, *, out: Any = None, num_threads: int | None = None) -> Any:
    """Remove each row's component along 1: P x = x - mu 1 (G4), so 1^T (P x) = 0.

    Returns an array (or tensor, for a tensor input) of x's dtype and shape,
    computed in at least float32 with the mean from float64 sums.
    """
    fast = _core.fast_normalize(_core.REMOVE_UNIFORM, x, None, None, 0.0, out, num_threads)
    if fast is not None:
        return fast
    return _normalize(_core.REMOVE_UNIFORM, x, None, None, 0.0, out, num_threads)


def layer_norm(x: Any, weight: Any = None, bias: Any = None, eps: float = 1e-5, *, out: Any = None,
               num_threads: int | None = None) -> Any:
    """LayerNorm over the last axis: z = alpha * (x - mu 1) / sqrt(sigma^2 + eps) + beta (G7, G8).

    Same semantics as ``torch.nn.functional.layer_norm(x, (d,), weight, bias, eps)``
    (population variance, eps inside the root).  Returns x's dtype and shape (a
    tensor for a tensor input); computes in float32 (float64 for float64 input)
    with exact two-pass statistics.
    """
    fast = _core.fast_normalize(_core.LAYER_NORM, x, weight, bias, eps, out, num_threads)
    if fast is not None:
        return fast
    return _normalize(_core.LAYER_NORM, x, weight, bias, eps, out, num_threads)


def rms_norm(x: Any, weight: Any = None, eps: float = 1e-6, *, bias: Any = None, out: Any = None,
             num_threads: int | None = None) -> Any:
    """RMSNorm over the last axis: r = g * x / sqrt(||x||^2 / d + eps) (G8), plus ``bias`` if given.

    Same semantics as ``torch.nn.functional.rms_norm(x, (d,), weight, eps)``.  ``bias``: what a
    LayerNorm becomes on a stream orthogonal to 1, RMSNorm + beta (G9; :mod:`geonorm_core.experiments.convert`),
    added in the same pass.  Returns x's dtype and shape (a tensor for a tensor input).
    """
    fast = _core.fast_normalize(_core.RMS_NORM, x, weight, bias, eps, out, num_threads)
    if fast is not None:
        return fast
    return _normalize(_core.RMS_NORM, x, weight, bias, eps, out, num_threads)
