"""G11, G12: how far each step of a norm rotates x.

Standardization alone rotates x by exactly |90° − θ| (θ = ∠(x, 1)); RMSNorm without gain does not
rotate at all. Rotations of 11–50° measured after a norm therefore come from the gain (and bias).
"""

from __future__ import annotations

import sympy as sp

from .toolkit import (
    ALL_D,
    GeneralModel,
    Identity,
    Norm,
    P,
    cos_angle,
    d,
    dot,
    eq,
    holds,
    layer_norm,
    norm,
    perp_lemma,
    proof,
    require,
    rms_norm,
)
from .toolkit import (
    display as D,
)

FAMILY = "rotation"


# ---- G11 ------------------------------------------------------------------------------------------
def claim_g11(M):
    x = M.vector("x")
    px = P(M, x)
    cos_theta = cos_angle(M, x, M.ones())
    return [
        (cos_angle(M, x, px), norm(M, px) / norm(M, x)),
        ((norm(M, px) / norm(M, x)) ** 2, 1 - cos_theta ** 2),     # = sin²θ; both sides ≥ 0
    ]


@proof
def prove_g11():
    require(holds(claim_g11), "cos∠(x, Px) = ‖Px‖/‖x‖, and its square is sin²θ")
    M = GeneralModel()
    x = M.vector("x")
    eps = sp.Symbol("epsilon", positive=True)
    subs, a, b = perp_lemma(M, x)               # x = a·û + Px, b = ‖Px‖ ≥ 0 (G5)
    px = P(M, x)
    # standardization (with or without ε) is a positive multiple of Px: same angle as Px
    y = layer_norm(M, x, eps=eps)
    y0 = (x - M.sum(x) / M.d) / sp.sqrt(dot(M, px, px) / M.d)
    for yy in (y, y0):
        diff = (cos_angle(M, x, yy) - cos_angle(M, x, px)).subs(subs)
        require(sp.simplify(diff) == 0, "∠(x, y) = ∠(x, Px)")
    # polar coordinates of the plane span{û, Px}: a = r cos t, b = r sin t, r > 0, t ∈ [0, π]
    # (b ≥ 0 is what puts t in [0, π]); then t = θ and cos∠(x, Px) = sin t
    r, t = sp.Symbol("r", positive=True), sp.Symbol("t", real=True)
    polar = {a: r * sp.cos(t), b: r * sp.sin(t)}
    cos_theta = cos_angle(M, x, M.ones()).subs(subs).subs(polar)
    cos_rot = cos_angle(M, x, px).subs(subs).subs(polar)
    require(sp.simplify(cos_theta - sp.cos(t)) == 0, "cos θ = cos t, so t = θ on [0, π]")
    require(sp.simplify(cos_rot - sp.sin(t)) == 0, "cos∠(x, Px) = sin θ (= |sin θ|, θ ∈ [0, π])")
    # arccos is the inverse of cos on [0, π]; |90° − θ| ∈ [0, 90°] has cosine sin θ in both cases:
    require(sp.simplify(sp.cos(sp.pi / 2 - t) - sp.sin(t)) == 0, "θ ≤ 90°: cos(90° − θ) = sin θ")
    require(sp.simplify(sp.cos(t - sp.pi / 2) - sp.sin(t)) == 0, "θ > 90°: cos(θ − 90°) = sin θ")


# ---- G12 ------------------------------------------------------------------------------------------
def claim_g12(M):
    x, g = M.vector("x"), M.vector("g")
    eps = M.scalar("epsilon", positive=True)
    return [
        (cos_angle(M, x, rms_norm(M, x, eps=eps)), 1),
        (cos_angle(M, x, rms_norm(M, x, g, eps)), dot(M, g * x, x) / (norm(M, x) * norm(M, g * x))),
    ]


_x, _P = D.x, D.P


def _angle(u, v):
    return sp.Function(r"\angle")(u, v)


IDENTITIES = [
    Identity("G11", "cos∠(x, Px) = ‖Px‖/‖x‖ = |sin θ|; standardization rotates x by |90° − θ|", ALL_D, prove_g11,
             lambda: (eq(sp.cos(sp.Symbol(r"\angle(x, P x)")), Norm(_P * _x) / Norm(_x)),
                      eq(Norm(_P * _x) / Norm(_x), sp.Abs(sp.sin(D.theta))),
                      eq(sp.Symbol(r"\angle(x, y)"), sp.Abs(sp.pi / 2 - D.theta))),
             FAMILY, "Σ-linearity; plane coordinates from G5; cos(π/2 − θ) = sin θ", (claim_g11,)),
    Identity("G12", "RMSNorm without gain does not rotate; cos∠(x, g⊙x) = Σgᵢxᵢ²/(‖x‖‖g⊙x‖)", ALL_D,
             lambda: holds(claim_g12),
             lambda: (eq(sp.cos(sp.Symbol(r"\angle(x, \mathrm{RMSNorm}(x))")), 1),
                      eq(sp.cos(sp.Symbol(r"\angle(x, g \circ x)")),
                         sp.Sum(sp.IndexedBase("g")[D.i] * D.xi ** 2, (D.i, 1, d))
                         / (Norm(_x) * Norm(sp.HadamardProduct(D.g, _x))))),
             FAMILY, "Σ-linearity; the RMS factor is > 0", (claim_g12,)),
]

CONTROLS: list = []
