"""The per-token quantities of one norm site: one definition for every source of hidden states.

The live hooks (:mod:`geonorm_core.adapter`), dumped activations and Dask blocks all
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

from . import ops


def token_values(hidden: Any, post: Any, *, gain: np.ndarray | None = None, bias: np.ndarray | None = None,
                 eps: float = 1e-5, num_threads: int | None = 1) -> dict[str, np.ndarray]:
    """Every quantity of the table above for each row of ``hidden``/``post`` (float64, shape ``hidden.shape[:-1]``).

    ``gain``, ``bias`` and ``eps`` are the site's LayerNorm parameters as the G9 gap
    uses them (None: unit gain, no bias); ``post`` may be None, and then only the
    hidden-side quantities are returned.
    """
    dh = ops.decompose(hidden, num_threads=num_threads)
    values = {"angle_hidden": dh.angle, "norm_hidden": dh.norm, "max_abs_hidden": dh.max_abs,
              "ln_rms_gap": ops.ln_rms_gap(hidden, gain, bias, eps, num_threads=num_threads)}
    if post is not None:
        dp = ops.decompose(post, num_threads=num_threads)
        values.update(angle_post=dp.angle, norm_post=dp.norm,
                      rotation=ops.rotation(hidden, post, num_threads=num_threads))
    return values
