"""Numeric cross-checks: every identity, evaluated with geonorm_core's kernels.

The symbolic proofs say what must hold; these checks say that the code users run obeys it. Each
identity is evaluated with ``decompose``, ``rotation``, ``remove_uniform``, ``layer_norm`` and
``rms_norm`` on random and adversarial rows (odd d, a large component along 1, a massive activation,
tiny and huge scales) in float64, float32 and bfloat16, and compared with a float64 reference computed
on the exactly widened input.

Tolerances are the dtype's: ``K·u`` with u the unit roundoff (2⁻⁵³, 2⁻²⁴, 2⁻⁸) and K = 16, times the
scale a backward-stable kernel is entitled to. For outputs of a standardization that scale is
(|xᵢ| + rms(x))/√(σ² + ε): rounding the input by u moves (x − μ1)ᵢ by u(|xᵢ| + |μ|), which is what a
two-pass kernel achieves; the one-pass E[x²] − μ² formula misses it by a factor ‖x‖²/‖Px‖². Angles
get (180/π)(K·u + √(K·u)) degrees, the second term for arccos near 0°. G14 is statistical: the sample
SD of the angle against (180/π)/√d and a Kolmogorov–Smirnov test against the Beta law.

geonorm_core is imported lazily, so the symbolic part of ``python -m proofs`` runs without it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

DTYPES = ("float64", "float32", "bfloat16")
UNIT = {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "bfloat16": 2.0 ** -8}
K = 16.0
DEG = 180.0 / math.pi


def np_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


@dataclass
class CheckResult:
    id: str
    dtype: str
    ok: bool
    worst: float                      # max over the measurements of error / tolerance (≤ 1 passes)
    seconds: float
    measurements: list = field(default_factory=list)   # (name, error/tolerance)
    error: str | None = None


class Checker:
    """Collects measurements; each is error/tolerance, and the check passes if all are ≤ 1."""

    def __init__(self, dtype: str):
        self.dtype = dtype
        self.u = UNIT[dtype]
        self.tol = K * self.u
        self.measurements: list[tuple[str, float]] = []

    def close(self, name: str, actual, ref, scale) -> None:
        """max |actual − ref| / (K·u·scale), elementwise scale; NaN anywhere counts as a failure."""
        actual, ref, scale = np.broadcast_arrays(np.asarray(actual, dtype=np.float64),
                                                 np.asarray(ref, dtype=np.float64),
                                                 np.asarray(scale, dtype=np.float64))
        err = np.abs(actual - ref) / (self.tol * scale)
        ratio = float(np.max(err)) if err.size else 0.0
        if not np.all(np.isfinite(err)):
            ratio = math.inf
        self.measurements.append((name, ratio))

    def angle_close(self, name: str, actual_deg, ref_deg) -> None:
        tol = DEG * (self.tol + math.sqrt(self.tol)) + 1e-9
        err = np.abs(np.asarray(actual_deg, np.float64) - np.asarray(ref_deg, np.float64)) / tol
        ratio = float(np.max(err)) if err.size else 0.0
        if not np.all(np.isfinite(err)):
            ratio = math.inf
        self.measurements.append((name, ratio))

    def ratio(self, name: str, value: float) -> None:
        """A pre-computed error/tolerance."""
        self.measurements.append((name, float(value)))

    def true(self, name: str, cond) -> None:
        self.measurements.append((name, 0.0 if bool(np.all(cond)) else math.inf))


# --------------------------------------------------------------------------------------------------
# data: random and adversarial rows, cast to the dtype; the reference uses the cast values in float64
# --------------------------------------------------------------------------------------------------
@dataclass
class Rows:
    name: str
    x: np.ndarray        # in the dtype under test
    x64: np.ndarray      # the same values, widened exactly

    @property
    def d(self) -> int:
        return self.x.shape[-1]


def datasets(dtype: str, seed: int = 0) -> list[Rows]:
    rng = np.random.default_rng(seed)
    dt = np_dtype(dtype)
    big = 1e3 if dtype != "bfloat16" else 40.0     # bf16's spacing at 1e3 is 8: rows would go constant
    raw = {
        "gauss d=7": rng.standard_normal((24, 7)),
        "gauss d=257, scaled": rng.standard_normal((16, 257)) * rng.uniform(0.5, 4, (16, 1)),
        "large mean ±big (θ≈0°/180°)": (rng.choice([-1.0, 1.0], (16, 1)) * big
                                        + rng.standard_normal((16, 64))),
        "mixed mean (θ spread)": rng.standard_normal((32, 96)) + rng.normal(0, 2, (32, 1)),
        "massive activation d=128": _massive(rng, 16, 128, big),
        "tiny scale 1e-3": rng.standard_normal((8, 33)) * 1e-3,
        "huge scale 1e3": rng.standard_normal((8, 48)) * 1e3 + 1e3,
    }
    out = []
    for name, a in raw.items():
        x = a.astype(dt)
        x64 = x.astype(np.float64)
        keep = np.ptp(x64, axis=1) > 0                  # σ = 0 rows are undefined for ε = 0
        out.append(Rows(name, x[keep], x64[keep]))
    return out


def _massive(rng, n, dim, big):
    a = rng.standard_normal((n, dim))
    a[np.arange(n), rng.integers(0, dim, n)] = big * rng.choice([-1.0, 1.0], n)
    return a


def _params(rng, dim, dt):
    alpha = rng.uniform(0.2, 2.5, dim) * rng.choice([-1.0, 1.0], dim, p=[0.1, 0.9])
    beta = rng.normal(0, 0.5, dim)
    a, b = alpha.astype(dt), beta.astype(dt)
    return a, b, a.astype(np.float64), b.astype(np.float64)


def _weights_compute(dtype: str):
    """The core computes in float32 for narrow dtypes; the weights it sees are the dtype's values."""
    return np.float64 if dtype == "float64" else np.float32


# float64 references -------------------------------------------------------------------------------
def _mean(x):
    return x.mean(axis=-1, keepdims=True)


def _perp(x):
    return x - _mean(x)


def _nrm(x):
    return np.sqrt(np.sum(x * x, axis=-1, keepdims=True))


def _rms(x):
    return np.sqrt(np.mean(x * x, axis=-1, keepdims=True))


def _var(x):
    p = _perp(x)
    return np.mean(p * p, axis=-1, keepdims=True)


def _ln_scale(x, eps=0.0):
    """backward-error scale of a standardized output: (|xᵢ| + rms(x))/√(σ² + ε)"""
    return (np.abs(x) + _rms(x)) / np.sqrt(_var(x) + eps)


def _np_out(a):
    return np.asarray(a).astype(np.float64)


# --------------------------------------------------------------------------------------------------
# the checks, one per identity
# --------------------------------------------------------------------------------------------------
def check_g1(gn, data, C, rng):
    for r in data:
        x, x64, d = r.x, r.x64, r.d
        dec = gn.decompose(x)
        C.close(f"{r.name}: μ", dec.mean, _mean(x64)[:, 0], _rms(x64)[:, 0])
        C.close(f"{r.name}: μ = (x·û)/√d", dec.mean, dec.coef / math.sqrt(d), _rms(x64)[:, 0])
        px = _np_out(gn.remove_uniform(x))
        C.close(f"{r.name}: x = μ1 + Px", dec.mean[:, None] + px, x64, np.abs(x64) + _rms(x64))
        C.close(f"{r.name}: (x − μ1) ⟂ 1", px.sum(-1), 0.0,
                np.sum(np.abs(x64) + _rms(x64), -1))


def check_g2(gn, data, C, rng):
    for r in data:
        x64, d = r.x64, r.d
        dec = gn.decompose(r.x)
        nrm = _nrm(x64)[:, 0]
        C.close(f"{r.name}: x·û", dec.coef, x64.sum(-1) / math.sqrt(d), nrm)
        C.close(f"{r.name}: √d μ = ‖x‖cos θ", math.sqrt(d) * dec.mean, dec.norm * dec.cos, nrm)
        C.close(f"{r.name}: cos θ = cos(angle)", np.cos(np.radians(dec.angle)), dec.cos, 1.0)
        C.close(f"{r.name}: cos θ", dec.cos, x64.sum(-1) / (math.sqrt(d) * nrm), 1.0)


def check_g3(gn, data, C, rng):
    for r in data:
        x, x64 = r.x, r.x64
        px = gn.remove_uniform(x)
        ppx = _np_out(gn.remove_uniform(px))
        px64 = _np_out(px)
        # Px already carries the first rounding, u(|xᵢ| + |μ|); P removes what is left of its mean
        C.close(f"{r.name}: P(Px) = Px", ppx, px64, np.abs(px64) + _rms(px64) + _rms(x64))
        c = x[:, :1] * np.ones_like(x)                           # rows c·1, exactly representable
        C.close(f"{r.name}: P(c1) = 0", _np_out(gn.remove_uniform(c)), 0.0, np.abs(x64[:, :1]))
        v = np.roll(x, 1, axis=0)
        v64 = v.astype(np.float64)
        pv64 = _np_out(gn.remove_uniform(v))
        lhs = np.sum(x64 * pv64, -1)
        rhs = np.sum(px64 * v64, -1)
        C.close(f"{r.name}: ⟨u,Pv⟩ = ⟨Pu,v⟩", lhs, rhs,
                np.sum((np.abs(x64) + _rms(x64)) * (np.abs(v64) + _rms(v64)), -1))


def check_g4(gn, data, C, rng):
    for r in data:
        x64 = r.x64
        px = _np_out(gn.remove_uniform(r.x))
        C.close(f"{r.name}: Px = x − μ1", px, _perp(x64), np.abs(x64) + _rms(x64))
        C.close(f"{r.name}: 1ᵀPx = 0", px.sum(-1), 0.0, np.sum(np.abs(x64) + _rms(x64), -1))
        dec = gn.decompose(r.x)
        C.close(f"{r.name}: perp_norm = ‖x − μ1‖", dec.perp_norm, _nrm(_perp(x64))[:, 0],
                _nrm(x64)[:, 0])


def check_g5(gn, data, C, rng):
    for r in data:
        x64, d = r.x64, r.d
        dec = gn.decompose(r.x)
        s = _nrm(x64)[:, 0]
        C.close(f"{r.name}: σ (population)", dec.std, np.std(x64, axis=-1), np.std(x64, axis=-1))
        C.close(f"{r.name}: ‖Px‖² = dσ²", dec.perp_norm ** 2, d * dec.std ** 2, s ** 2)
        C.close(f"{r.name}: ‖x‖² = dμ² + ‖Px‖²", dec.norm ** 2, d * dec.mean ** 2 + dec.perp_norm ** 2, s ** 2)
        C.close(f"{r.name}: σ² = ‖x‖²/d − μ²", dec.std ** 2, dec.norm ** 2 / d - dec.mean ** 2, s ** 2 / d)


def check_g6(gn, data, C, rng):
    for r in data:
        x64, d = r.x64, r.d
        y = _np_out(gn.layer_norm(r.x, eps=0.0))
        sc = _ln_scale(x64)
        C.close(f"{r.name}: y = √d·Px/‖Px‖", y, math.sqrt(d) * _perp(x64) / _nrm(_perp(x64)), sc)
        C.close(f"{r.name}: ‖y‖ = √d", _nrm(y)[:, 0], math.sqrt(d), _nrm(sc)[:, 0])
        C.close(f"{r.name}: y ⟂ 1", y.sum(-1), 0.0, sc.sum(-1))


def check_g7(gn, data, C, rng):
    for r in data:
        x64, d = r.x64, r.d
        eps = float(np.median(_var(x64))) * 0.5       # an ε that matters
        y = _np_out(gn.layer_norm(r.x, eps=eps))
        sc = _ln_scale(x64, eps)
        p = _perp(x64)
        C.close(f"{r.name}: y = √d·Px/√(‖Px‖²+dε)", y, math.sqrt(d) * p / np.sqrt(_nrm(p) ** 2 + d * eps), sc)
        C.true(f"{r.name}: ‖y‖ < √d", _nrm(y)[:, 0] <= math.sqrt(d) * (1 + C.tol))
        C.close(f"{r.name}: y ⟂ 1", y.sum(-1), 0.0, sc.sum(-1))


def check_g8(gn, data, C, rng):
    try:  # torch is the semantics the core promises; without it the geometric form still checks
        import torch
    except ImportError:
        torch = None
    dt = np_dtype(C.dtype)
    for r in data:
        x64, d = r.x64, r.d
        a, b, a64, b64 = _params(rng, d, dt)
        eps = 1e-5
        z = _np_out(gn.layer_norm(r.x, a, b, eps=eps))
        geo = a64 * math.sqrt(d) * _perp(x64) / np.sqrt(_nrm(_perp(x64)) ** 2 + d * eps) + b64
        sc = np.abs(a64) * _ln_scale(x64, eps) + np.abs(b64)
        if torch is not None:
            ref = torch.nn.functional.layer_norm(torch.from_numpy(x64), (d,), torch.from_numpy(a64),
                                                 torch.from_numpy(b64), eps).numpy()
            C.close(f"{r.name}: LN = torch layer_norm", z, ref, sc)
        C.close(f"{r.name}: LN = α⊙√d·Px/√(‖Px‖²+dε) + β", z, geo, sc)
        rr = _np_out(gn.rms_norm(r.x, a, eps=1e-6))
        rsc = np.abs(a64) * (np.abs(x64) + _rms(x64)) / np.sqrt(_rms(x64) ** 2 + 1e-6)
        if torch is not None:
            rref = torch.nn.functional.rms_norm(torch.from_numpy(x64), (d,), torch.from_numpy(a64), 1e-6).numpy()
            C.close(f"{r.name}: RMSNorm = torch rms_norm", rr, rref, rsc)
        C.close(f"{r.name}: RMSNorm = g⊙√d·x/√(‖x‖²+dε)", rr,
                a64 * math.sqrt(d) * x64 / np.sqrt(_nrm(x64) ** 2 + d * 1e-6), rsc)


def check_g9(gn, data, C, rng):
    dt = np_dtype(C.dtype)
    for r in data:
        x64, d = r.x64, r.d
        a, b, a64, b64 = _params(rng, d, dt)
        eps = float(np.median(_var(x64))) * 1e-2
        z = _np_out(gn.layer_norm(r.x, a, b, eps=eps))
        via_rms = _np_out(gn.rms_norm(gn.remove_uniform(r.x), a, eps=eps)) + b64
        sc = np.abs(a64) * _ln_scale(x64, eps) + np.abs(b64)
        C.close(f"{r.name}: LN_αβ(x) = RMSNorm_α(Px) + β", z, via_rms, sc)
        xp = _perp(x64).astype(dt)                        # rows ⟂ 1 up to the dtype's rounding
        xp64 = xp.astype(np.float64)
        # the rows are ⟂ 1 only up to the rounding of x − μ1 (u(|xᵢ| + |μ|)): both scales count
        C.close(f"{r.name}: x ⟂ 1 ⇒ LN_α0(x) = RMSNorm_α(x)", _np_out(gn.layer_norm(xp, a, None, eps=eps)),
                _np_out(gn.rms_norm(xp, a, eps=eps)),
                np.abs(a64) * (_ln_scale(xp64, eps) + (np.abs(x64) + _rms(x64)) / np.sqrt(_var(xp64) + eps)))


def check_g10(gn, data, C, rng):
    dt = np_dtype(C.dtype)
    for r in data:
        x64 = r.x64
        y = _np_out(gn.layer_norm(r.x, eps=0.0))
        for c, b in ((3.0, 2.0), (0.5, -7.0), (-2.0, 1.0)):
            x2 = (c * x64 + b * _rms(x64)).astype(dt)
            x2_64 = x2.astype(np.float64)
            keep = np.ptp(x2_64, axis=1) > 0
            y2 = _np_out(gn.layer_norm(x2[keep], eps=0.0))
            C.close(f"{r.name}: y({c:g}x + b1) = {'−' if c < 0 else ''}y(x)", y2, np.sign(c) * y[keep],
                    _ln_scale(x2_64[keep]) + _ln_scale(x64[keep]))
        g, _, g64, _ = _params(rng, r.d, dt)
        rr = _np_out(gn.rms_norm(r.x, g, eps=0.0))
        x2 = (2.0 * r.x64).astype(dt)                        # exact scaling
        C.close(f"{r.name}: RMSNorm(2x) = RMSNorm(x)", _np_out(gn.rms_norm(x2, g, eps=0.0)), rr,
                np.abs(g64) * (np.abs(x64) + _rms(x64)) / _rms(x64))
        x3 = (-3.0 * r.x64).astype(dt)
        x3_64 = x3.astype(np.float64)
        C.close(f"{r.name}: RMSNorm(−3x) = −RMSNorm(x)", _np_out(gn.rms_norm(x3, g, eps=0.0)), -rr,
                np.abs(g64) * (np.abs(x3_64) + _rms(x3_64)) / _rms(x3_64))


def check_g11(gn, data, C, rng):
    for r in data:
        dec = gn.decompose(r.x)
        expect = np.abs(90.0 - dec.angle)
        px = gn.remove_uniform(r.x)
        C.angle_close(f"{r.name}: ∠(x, Px) = |90° − θ|", gn.rotation(r.x, px), expect)
        C.angle_close(f"{r.name}: ∠(x, LN(x)) = |90° − θ|", gn.rotation(r.x, gn.layer_norm(r.x, eps=1e-5)), expect)
        # Px is rounded with error u(|xᵢ| + |μ|), i.e. an angle error of about u‖x‖/‖Px‖ radians
        amp = dec.norm / dec.perp_norm
        C.close(f"{r.name}: cos∠(x, Px) = ‖Px‖/‖x‖", np.cos(np.radians(gn.rotation(r.x, px))),
                dec.perp_norm / dec.norm, amp)
        # |sin θ| = ‖Px‖/‖x‖  ⟺  (‖Px‖/‖x‖)² + cos²θ = 1 (both ≥ 0), checked in its stable form
        C.close(f"{r.name}: ‖Px‖/‖x‖ = |sin θ|", (dec.perp_norm / dec.norm) ** 2 + dec.cos ** 2, 1.0, 1.0)


def check_g12(gn, data, C, rng):
    dt = np_dtype(C.dtype)
    for r in data:
        x64 = r.x64
        C.angle_close(f"{r.name}: ∠(x, RMSNorm(x)) = 0", gn.rotation(r.x, gn.rms_norm(r.x)), 0.0)
        g, _, g64, _ = _params(rng, r.d, dt)
        gx = g64 * x64
        ref = np.degrees(np.arccos(np.clip(np.sum(gx * x64, -1) / (_nrm(x64) * _nrm(gx))[:, 0], -1, 1)))
        C.angle_close(f"{r.name}: cos∠(x, g⊙x) = Σgx²/(‖x‖‖g⊙x‖)", gn.rotation(r.x, gn.rms_norm(r.x, g)), ref)


def check_g13(gn, data, C, rng):
    dt = np_dtype(C.dtype)
    for r in data:
        x64 = r.x64
        a, b, a64, b64 = _params(rng, r.d, dt)
        eps = 1e-5
        z = _np_out(gn.layer_norm(r.x, a, b, eps=eps))
        y = _np_out(gn.layer_norm(r.x, eps=eps))
        sc = np.abs(a64) * _ln_scale(x64, eps) + np.abs(b64)
        C.close(f"{r.name}: 1ᵀz = αᵀy + 1ᵀβ", z.sum(-1), (a64 * y).sum(-1) + b64.sum(), sc.sum(-1))


def check_g14(gn, data, C, rng):
    """Isotropic Gaussian rows: angle SD vs (180/π)/√d, mean 90°, KS against the Beta law."""
    from scipy import stats

    dt = np_dtype(C.dtype)
    n = 2000
    for dim in (64, 576, 1600, 4096):
        x = rng.standard_normal((n, dim), dtype=np.float32).astype(dt)
        dec = gn.decompose(x)
        sd = float(np.std(dec.angle, ddof=1))
        formula = DEG / math.sqrt(dim)
        # sampling SE of an SD is SD/√(2(n−1)); allow 4 SE plus the O(1/d) of the approximation
        C.ratio(f"d={dim}: SD {sd:.3f}° vs (180/π)/√d = {formula:.3f}°",
                abs(sd - formula) / (formula * (4 / math.sqrt(2 * (n - 1)) + 2.0 / dim)))
        C.ratio(f"d={dim}: mean angle 90°", abs(float(np.mean(dec.angle)) - 90.0) / (4 * sd / math.sqrt(n)))
        a = (dim - 1) / 2
        p = stats.kstest((1 + dec.cos) / 2, stats.beta(a, a).cdf).pvalue
        C.ratio(f"d={dim}: KS vs Beta((d−1)/2,(d−1)/2), p={p:.3g}", 1e-3 / max(p, 1e-300))
        C.ratio(f"d={dim}: E[cos²θ]·d = {float(np.mean(dec.cos ** 2)) * dim:.3f} vs 1",
                abs(float(np.mean(dec.cos ** 2)) * dim - 1) / (4 * math.sqrt(2 / n)))


def check_g15(gn, data, C, rng):
    dt = np_dtype(C.dtype)
    for r in data:
        x64 = r.x64
        # BatchNorm over this batch: shared statistics m, s; α = s, β = m undo it
        m, s = x64.mean(0), x64.std(0) + 1e-12
        bn = ((x64 - m) / s).astype(dt).astype(np.float64)
        C.close(f"{r.name}: BN undone by α=s, β=m", s * bn + m, x64, np.abs(x64) + np.abs(m) + s)
        # LayerNorm: x and 2x + 1 collide for every α, β
        a, b, a64, b64 = _params(rng, r.d, dt)
        x2 = (2.0 * x64 + 1.0).astype(dt)
        x2_64 = x2.astype(np.float64)
        keep = np.ptp(x2_64, axis=1) > 0
        sc = np.abs(a64) * (_ln_scale(x64[keep]) + _ln_scale(x2_64[keep])) + np.abs(b64)
        C.close(f"{r.name}: LN(2x+1) = LN(x)", _np_out(gn.layer_norm(x2[keep], a, b, eps=0.0)),
                _np_out(gn.layer_norm(r.x[keep], a, b, eps=0.0)), sc)


def _writes(rng, x64, k=3):
    """k random writes per row at the scale of the rows, each with a component along 1."""
    scale = _rms(x64)
    return [scale * (rng.standard_normal(x64.shape) + rng.normal(0, 2, (x64.shape[0], 1))) for _ in range(k)]


def check_g16(gn, data, C, rng):
    """LN(s + Pw) = LN(s + w) with the core's remove_uniform and layer_norm."""
    dt = np_dtype(C.dtype)
    for r in data:
        a, b, a64, b64 = _params(rng, r.d, dt)
        eps = float(np.median(_var(r.x64))) * 1e-2 + 1e-30
        (w,) = _writes(rng, r.x64, 1)
        w_dt = w.astype(dt)
        pw = _np_out(gn.remove_uniform(w_dt))
        s1 = (r.x64 + w_dt.astype(np.float64)).astype(dt)
        s2 = (r.x64 + pw).astype(dt)
        s1_64 = s1.astype(np.float64)
        # s2 − s1 is a multiple of 1 only up to the rounding of Pw and of the two sums: u(|s| + |w|)
        sc = (np.abs(a64) * (_ln_scale(s1_64, eps) + (np.abs(w) + _rms(w)) / np.sqrt(_var(s1_64) + eps))
              + np.abs(b64))
        C.close(f"{r.name}: LN(s + Pw) = LN(s + w)", _np_out(gn.layer_norm(s2, a, b, eps=eps)),
                _np_out(gn.layer_norm(s1, a, b, eps=eps)), sc)
        sc = np.abs(a64) * _ln_scale(r.x64, eps) + np.abs(b64)
        C.close(f"{r.name}: LN(Ps) = LN(s)", _np_out(gn.layer_norm(gn.remove_uniform(r.x), a, b, eps=eps)),
                _np_out(gn.layer_norm(r.x, a, b, eps=eps)), sc)


def check_g17(gn, data, C, rng):
    """The core's remove_uniform outputs sum to a centred stream: |1ᵀΣ Pw_k| ≤ K u Σ ‖w_k‖₁."""
    dt = np_dtype(C.dtype)
    for r in data:
        ws = [w.astype(dt) for w in _writes(rng, r.x64, 3)]
        total = sum(_np_out(gn.remove_uniform(w)) for w in ws)
        l1 = sum(np.sum(np.abs(w.astype(np.float64)), axis=-1, keepdims=True) for w in ws)
        C.close(f"{r.name}: 1ᵀ(ΣPwₖ) = 0", np.sum(total, axis=-1, keepdims=True), 0.0, l1)


def check_g18(gn, data, C, rng):
    """RMSNorm_α(Ps) + β = LN_{α,β}(s), the converted layer on the converted stream, with the core."""
    dt = np_dtype(C.dtype)
    for r in data:
        a, b, a64, b64 = _params(rng, r.d, dt)
        eps = float(np.median(_var(r.x64))) * 1e-2 + 1e-30
        ps = gn.remove_uniform(r.x)
        via_rms = _np_out(gn.rms_norm(ps, a, eps=eps)) + b64
        # Ps is ⟂ 1 only up to the rounding of x − μ1 (u(|xᵢ| + |μ|)), as in G9
        spread = (np.abs(r.x64) + _rms(r.x64)) / np.sqrt(_var(r.x64) + eps)
        sc = np.abs(a64) * (_ln_scale(r.x64, eps) + spread) + np.abs(b64)
        C.close(f"{r.name}: RMSNorm_α(Ps) + β = LN_αβ(s)", via_rms,
                _np_out(gn.layer_norm(r.x, a, b, eps=eps)), sc)


CHECKS: dict[str, Callable] = {
    "G1": check_g1, "G2": check_g2, "G3": check_g3, "G4": check_g4, "G5": check_g5,
    "G6": check_g6, "G7": check_g7, "G8": check_g8, "G9": check_g9, "G10": check_g10,
    "G11": check_g11, "G12": check_g12, "G13": check_g13, "G14": check_g14, "G15": check_g15,
    "G16": check_g16, "G17": check_g17, "G18": check_g18,
}


def core_available() -> tuple[bool, str]:
    try:
        from geonorm_core import ops as gn

        gn.decompose  # noqa: B018 - the import is half-built when this attribute is missing
    except Exception as e:  # ImportError, or a half-built package
        return False, f"{type(e).__name__}: {e}"
    return True, ""


def run_check(identity: str, dtype: str, seed: int = 0, core=None) -> CheckResult:
    """Evaluate one identity with the core (or a stand-in with the same API, for tests) in one dtype."""
    if core is None:
        from geonorm_core import ops as core  # the operations the identities are checked on
    gn = core

    t0 = time.perf_counter()
    C = Checker(dtype)
    rng = np.random.default_rng([seed, int(identity[1:]), DTYPES.index(dtype)])
    err = None
    try:
        CHECKS[identity](gn, datasets(dtype, seed), C, rng)
    except Exception as e:
        err = f"{type(e).__name__}: {e}"
    worst = max((m[1] for m in C.measurements), default=0.0)
    ok = err is None and bool(C.measurements) and worst <= 1.0
    return CheckResult(identity, dtype, ok, worst, time.perf_counter() - t0, C.measurements, err)
