"""The per-token quantities of a norm site with torch ops, on the tensors' own device.

The torch twin of :func:`geonorm_core.analysis.measure.token_values`: the same seven quantities
(:data:`~geonorm_core.analysis.measure.QUANTITY_ORDER`, same order and meaning), computed where the
hidden states live, so a GPU run moves only 7 float64 values per token to the host instead
of two d-wide rows.  torch is imported here and nowhere else in the measurement floor.

How it stays inside the accuracy contract (docs/accuracy.md): rows are widened to float64 on the
device (fp16/bf16/fp32 embed exactly), in chunks of at most ``chunk_elements`` elements so a
bf16 batch of 32k x 4096 never needs a whole float64 copy.  float64 rows are first scaled by
an exact power of two per row (as ``slow.py`` does), so no sum of squares over- or underflows;
16/32-bit rows need no scaling, their squares stay far inside the float64 range.  Means are
corrected two-pass, never E[x^2] - mu^2; a constant row's mean is the constant itself, so its
perp norm and its deviations are exactly 0.  The rotation is Kahan's
2 atan2(||a - b||, ||a + b||) on unit rows (exactly 0 for identical or positively
proportional pairs), the LN-RMS gap is formed from the deviation vector without cancellation
(``A = a - r = mu^2 a r / (sqrt(var + eps) + sqrt(ms + eps))``, as the core does).

Undefined rows follow the core: NaN for every quantity of a row holding NaN/Inf (and the
rotation and gap of its pair), NaN angles for a zero row, NaN gap where LN(x) = 0 or is 0/0
(constant rows, eps = 0 constant rows, zero rows without bias).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .measure import QUANTITY_ORDER, quantity_names

#: Default rows per chunk: float64 temporaries of at most this many elements (256 MiB each).
CHUNK_ELEMENTS = 1 << 25

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_DEG = 180.0 / math.pi


def _pow2(k: torch.Tensor) -> torch.Tensor:
    """2**k exactly for int64 k in [-1022, 1023], built from the float64 bit pattern."""
    return ((k + 1023) << 52).view(torch.float64)


def _ldexp(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """x * 2**k for int64 k (broadcast), in steps of at most 2**+-1000 so no factor overflows.

    torch.ldexp forms 2**k first, which is inf beyond 2**1023 even when the product fits."""
    k1 = k.clamp(-1000, 1000)
    k2 = (k - k1).clamp(-1000, 1000)
    return x * _pow2(k1) * _pow2(k2) * _pow2(k - k1 - k2)


class _Rows:
    """One chunk of rows widened to float64 (scaled by 2**-e per row for float64 input), with
    its corrected two-pass mean and deviations (G1, G4, G5)."""

    def __init__(self, x: torch.Tensor, scale: bool) -> None:
        xd = x.to(torch.float64)
        lo, hi = torch.aminmax(xd, dim=-1)
        self.bad = ~(torch.isfinite(lo) & torch.isfinite(hi))  # max/min propagate NaN
        self.max_abs = torch.maximum(-lo, hi)
        if scale:
            # max|x| = m 2**e with 0.5 <= m < 1; a bad row's exponent is irrelevant (masked later)
            _, e = torch.frexp(torch.where(self.bad, 0.0, self.max_abs))
            self.e = e.to(torch.int64)
            xd = _ldexp(xd, -self.e[:, None])
            lo, hi = _ldexp(lo, -self.e), _ldexp(hi, -self.e)
        else:
            self.e = None
        d = xd.shape[-1]
        self.d = d
        self.xs = xd
        m1 = xd.sum(-1) / d
        t = xd - m1[:, None]
        mu = m1 + t.sum(-1) / d  # the corrected two-pass mean
        # a constant row's mean is its constant, so its deviations below are exact zeros
        self.mu = torch.where(lo == hi, hi, mu)
        self.t = torch.sub(xd, self.mu[:, None], out=t)
        self.perp = torch.linalg.vector_norm(self.t, dim=-1)
        self.norm_s = torch.linalg.vector_norm(xd, dim=-1)

    def unscale(self, v: torch.Tensor) -> torch.Tensor:
        return v if self.e is None else _ldexp(v, self.e)

    def angle_norm(self) -> tuple[torch.Tensor, torch.Tensor]:
        """angle(x, 1) = atan2(||Px||, sqrt(d) mu) in degrees (G2, G5) and ||x||."""
        coef = math.sqrt(self.d) * self.mu
        angle = torch.atan2(self.perp, coef) * _DEG
        angle = torch.where(self.norm_s > 0, angle, math.nan)
        return angle, self.unscale(self.norm_s)


def _gap(r: _Rows, w: torch.Tensor | None, b: torch.Tensor | None, eps: float) -> torch.Tensor:
    """||LN(x) - (RMSNorm_w(x) + b)|| / ||LN(x)|| (G9) per row.

    With a = 1/sqrt(var + eps), r = 1/sqrt(ms + eps), ms = var + mu^2, t = x - mu:
    LN(x) - (RMS(x) + b) = w (t A - mu r) with A = a - r = mu^2 a r / (sqrt(var + eps) + sqrt(ms + eps)),
    so the bias cancels exactly and A has no cancellation; LN(x) = w t a + b.  In a float64
    row scaled by 2**-e, eps becomes eps 4**-e; where that overflows (rows below ~1e-157)
    the factors are formed unscaled and the vectors scaled back, as slow.layer_norm does.
    """
    d = r.d
    var = r.perp.square() / d
    ms = r.norm_s.square() / d
    mu = r.mu
    if r.e is None:
        post_e = None
        eps_v = torch.full_like(var, eps)
    else:
        eps_s = _ldexp(torch.full_like(var, eps), -2 * r.e)
        ok = torch.isfinite(eps_s)
        post_e = torch.where(ok, 0, r.e)
        eps_v = torch.where(ok, eps_s, eps)
        var = torch.where(ok, var, _ldexp(var, 2 * r.e))
        ms = torch.where(ok, ms, _ldexp(ms, 2 * r.e))
        mu = torch.where(ok, mu, _ldexp(mu, r.e))
    sv, sm = torch.sqrt(var + eps_v), torch.sqrt(ms + eps_v)
    a, rr = 1.0 / sv, 1.0 / sm
    big_a = mu.square() * a * rr / (sv + sm)
    # scaled rows: t, mu and the factors all scaled, t a = (2**-e t)(2**e a); unscaled-factor
    # rows: the scaled t and mu times unscaled factors are the vectors times 2**-e, undone by post_e
    ta = r.t * a[:, None]
    if eps > 0:  # a zero deviation stays 0 even where a is inf (eps 4**-e flushed to 0)
        ta = torch.where(r.t == 0, 0.0, ta)
    diff = torch.addcmul(-(r.mu * rr)[:, None], r.t, big_a[:, None])
    if post_e is not None:
        ta = _ldexp(ta, post_e[:, None])
        diff = _ldexp(diff, post_e[:, None])
    if w is not None:
        ta = ta * w
        diff = diff * w
    ln = ta if b is None else ta + b
    den = torch.linalg.vector_norm(ln, dim=-1)
    num = torch.linalg.vector_norm(diff, dim=-1)
    return torch.where(den > 0, num / den, math.nan)


def _rotation(x: _Rows, y: _Rows) -> torch.Tensor:
    """angle(x, y) = 2 atan2(||a - b||, ||a + b||), a = x/||x||, b = y/||y|| (Kahan; G11, G12)."""
    ua = x.xs / x.norm_s[:, None]
    ub = y.xs / y.norm_s[:, None]
    minus = torch.linalg.vector_norm(ua - ub, dim=-1)
    plus = torch.linalg.vector_norm(ua.add_(ub), dim=-1)
    return 2.0 * torch.atan2(minus, plus) * _DEG


def _vector(v: Any, name: str, d: int, device: torch.device) -> torch.Tensor | None:
    if v is None:
        return None
    t = v if torch.is_tensor(v) else torch.as_tensor(v)
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name} must be a float tensor or array of {d} values, got dtype {t.dtype}")
    if tuple(t.shape) != (d,):
        raise ValueError(f"{name} must have shape ({d},) to match the last axis of hidden, got {tuple(t.shape)}")
    return t.detach().to(device=device, dtype=torch.float64)


def _check_rows(x: Any, name: str) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch tensor (backend='torch'), got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name} must be a float16, bfloat16, float32 or float64 tensor, got {x.dtype}")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"{name} must have shape (..., d) with d >= 1, got {tuple(x.shape)}")
    return x.detach()


def token_values_torch(hidden: torch.Tensor, post: torch.Tensor | None, *, gain: Any = None, bias: Any = None,
                       eps: float = 1e-5, rows: torch.Tensor | None = None,
                       chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """Every quantity of :mod:`geonorm_core.analysis.measure` per row, as one float64 tensor on ``hidden``'s device.

    Parameters
    ----------
    hidden, post : tensors ``(..., d)`` of fp16/bf16/fp32/fp64 on one device; ``post`` may be None
        (then only the four hidden-side quantities).
    gain, bias : the site's LayerNorm parameters for the G9 gap (None: unit gain, no bias).
    eps : the site's epsilon (finite, >= 0).
    rows : int64 indices into the flattened leading axes (on any device): only these rows are
        measured, in this order -- the padding mask applied on the device.  Index tensors with a
        known length need no device synchronization (a boolean mask would).
    chunk_elements : float64 temporaries hold at most about this many elements.

    Returns
    -------
    torch.Tensor
        ``(len(quantity_names(post is not None)), n)`` float64 on ``hidden.device``: row ``q`` is
        quantity ``quantity_names(...)[q]`` -- angle(hidden, 1) (G2), ||hidden||, max|hidden|, the
        LN-RMS gap (G9), angle(post, 1), ||post||, angle(hidden, post) (G11, G12).

    Nothing here synchronizes the device: no value is read back to the host.
    """
    h = _check_rows(hidden, "hidden")
    p = None if post is None else _check_rows(post, "post")
    if p is not None:
        if p.shape != h.shape:
            raise ValueError(f"post must have the shape of hidden {tuple(h.shape)}, got {tuple(p.shape)}")
        if p.device != h.device:
            raise ValueError(f"post is on {p.device} but hidden on {h.device}; need one device")
    eps = float(eps)
    if not (math.isfinite(eps) and eps >= 0.0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    if isinstance(chunk_elements, bool) or not isinstance(chunk_elements, int) or chunk_elements < 1:
        raise ValueError(f"chunk_elements must be a positive int, got {chunk_elements!r}")
    d = h.shape[-1]
    dev = h.device
    w = _vector(gain, "gain", d, dev)
    b = _vector(bias, "bias", d, dev)
    h2 = h.reshape(-1, d)
    p2 = None if p is None else p.reshape(-1, d)
    if rows is not None:
        if not torch.is_tensor(rows) or rows.dtype != torch.int64 or rows.ndim != 1:
            got = f"{getattr(rows, 'dtype', type(rows).__name__)} of shape {tuple(getattr(rows, 'shape', ()))}"
            raise TypeError(f"rows must be a 1-D int64 tensor of row indices, got {got}")
        rows = rows.to(dev, non_blocking=True)
        h2 = h2.index_select(0, rows)
        p2 = None if p2 is None else p2.index_select(0, rows)
    n = h2.shape[0]
    names = quantity_names(p is not None)
    out = torch.empty((len(names), n), dtype=torch.float64, device=dev)
    step = max(1, chunk_elements // d)
    for s in range(0, n, step):
        _chunk(h2[s:s + step], None if p2 is None else p2[s:s + step], w, b, eps, out[:, s:s + step])
    return out


def _chunk(h: torch.Tensor, p: torch.Tensor | None, w, b, eps: float, out: torch.Tensor) -> None:
    x = _Rows(h, h.dtype == torch.float64)
    angle, norm = x.angle_norm()
    qi = {q: i for i, q in enumerate(QUANTITY_ORDER)}
    nan = torch.tensor(math.nan, dtype=torch.float64, device=h.device)
    out[qi["angle_hidden"]] = torch.where(x.bad, nan, angle)
    out[qi["norm_hidden"]] = torch.where(x.bad, nan, norm)
    out[qi["max_abs_hidden"]] = torch.where(x.bad, nan, x.max_abs)
    out[qi["ln_rms_gap"]] = torch.where(x.bad, nan, _gap(x, w, b, eps))
    if p is None:
        return
    y = _Rows(p, p.dtype == torch.float64)
    angle, norm = y.angle_norm()
    out[qi["angle_post"]] = torch.where(y.bad, nan, angle)
    out[qi["norm_post"]] = torch.where(y.bad, nan, norm)
    out[qi["rotation"]] = torch.where(x.bad | y.bad, nan, _rotation(x, y))
