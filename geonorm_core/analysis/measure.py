"""The per-token quantities of one norm site: one definition for every source of hidden states.

The live hooks (:mod:`geonorm_core.sources.adapter`), dumped activations and Dask blocks all
hand a site's input ("hidden") and output ("post") rows to :func:`token_values`, so a
number means the same thing whichever way the rows arrived.  NumPy arrays or CPU
torch tensors of fp32/fp64/fp16/bf16, shaped ``(..., d)``; no torch needed.

================  ==================================================================
angle_hidden      angle(hidden, 1) in degrees (G2)
angle_post        angle(post, 1)
norm_hidden       ||hidden||
norm_post         ||post||
rotation          angle(hidden, post) (G11, G12)
max_abs_hidden    max_i |hidden_i|: massive activations
ln_rms_gap        ||LN(x) - (RMSNorm_gain(x) + bias)|| / ||LN(x)|| (G9): what the mean
                  subtraction changes, for LayerNorm and RMSNorm sites alike
================  ==================================================================
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import _arrays
from .._native import _core
from ..runtime import resolve_threads

#: The per-token quantities of a norm site (their histograms: :data:`~geonorm_core.analysis.accumulate.QUANTITIES`)
#: in the order the core writes them (geonorm.h: GN_ANGLE_HIDDEN ... GN_ROTATION).
QUANTITY_ORDER = ("angle_hidden", "norm_hidden", "max_abs_hidden", "ln_rms_gap", "angle_post", "norm_post",
                  "rotation")
_HIDDEN_SIDE = 4  # the first four need no post

#: Where the values are computed: "core" (this module, the native CPU core), "torch"
#: (:mod:`geonorm_core.analysis.measure_torch`, torch ops on the tensors' own device), "auto" (torch for
#: CUDA tensors, the core otherwise).
BACKENDS = ("auto", "core", "torch")


def quantity_names(with_post: bool) -> tuple[str, ...]:
    """The quantities :func:`token_values` gives, in its order: all of them, or the hidden side's."""
    return QUANTITY_ORDER if with_post else QUANTITY_ORDER[:_HIDDEN_SIDE]


def token_values(hidden: Any, post: Any, *, gain: np.ndarray | None = None, bias: np.ndarray | None = None,
                 eps: float = 1e-5, num_threads: int | None = None,
                 out: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every quantity of the table above for each row of ``hidden``/``post`` (float64, shape ``hidden.shape[:-1]``).

    ``gain``, ``bias`` and ``eps`` are the site's LayerNorm parameters as the G9 gap
    uses them (None: unit gain, no bias); ``post`` may be None, and then only the
    hidden-side quantities are returned.  ``out``: where to write them, a float64
    array of shape ``(len(quantity_names(post is not None)), rows)`` whose rows are
    contiguous (e.g. a column slice of a bigger one); the result's arrays are its rows.

    One pass of the core (``gn_site_values``) reads each row pair from memory once
    for all of them: on the SIMD paths a 16/32-bit row is summed in float32 lanes with
    float64 carries per block, as :func:`~geonorm_core.ops.decompose` sums it, the
    hidden row's pass also taking the gain-weighted sums of the G9 gap; the rotation's
    second pass (Kahan's 2 atan2(|x^ - y^|, |x^ + y^|), G11/G12) runs over the pair
    while it is in cache.  The values are within the accuracy contract (docs/accuracy.md):
    angles and rotation within 1e-4 degrees, norms and max|x| within 1e-6 relative,
    the gap within 1e-6 absolute (rows whose gap sums cancel are re-summed in float64,
    or by the exact row function); constant rows sit at exactly 0 or 180 degrees from 1
    and identical pairs rotate by exactly 0.  The gap is bitwise
    :func:`~geonorm_core.ops.ln_rms_gap`'s.  ``num_threads``: as the ops, None (the default)
    uses :func:`~geonorm_core.get_num_threads` cores; callers that parallelize across blocks
    themselves (hooks between torch's ops, Dask tasks) pass 1.
    """
    fast = _core.fast_site_values(hidden, post, gain, bias, eps, num_threads, out)
    if fast is not None:
        values, lead = fast
        return {q: values[i].reshape(lead) for i, q in enumerate(quantity_names(post is not None))}
    h = _arrays.as_rows(hidden, "hidden")
    p = None if post is None else _arrays.as_rows(post, "post")
    if p is not None and p.shape != h.shape:
        raise ValueError(f"post must have the shape of hidden {h.shape}, got {p.shape}")
    layer = _arrays.Layer(h, gain, bias, eps, np.float64)
    nthreads = resolve_threads(num_threads)
    lead = h.shape[:-1]
    n = int(np.prod(lead, dtype=np.int64))
    names = quantity_names(p is not None)
    if out is None:
        out = np.empty((len(names), n), dtype=np.float64)
    elif not (isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (len(names), n)
              and out.flags.writeable and (n < 2 or out.strides[1] == 8) and out.strides[0] % 8 == 0
              and out.strides[0] >= 8 * n):
        raise ValueError(f"out must be a writeable float64 array of shape {(len(names), n)} with contiguous rows")
    qstride = out.strides[0] // 8
    for block in _arrays.blocks([h] if p is None else [h, p]):
        y = block.specs[1] if p is not None else None
        _core.site_values(block.specs[0], y, layer.wp, layer.bp, layer.eps, out.ctypes.data + 8 * block.first,
                          qstride, nthreads)
    return {q: out[i].reshape(lead) for i, q in enumerate(names)}
