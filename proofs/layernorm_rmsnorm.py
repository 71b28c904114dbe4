"""G8, G9, G13: LayerNorm is RMSNorm applied to Px; the affine step breaks orthogonality to 1."""

from __future__ import annotations

import sympy as sp

from .toolkit import (
    ALL_D,
    Control,
    Identity,
    Norm,
    P,
    d,
    dot,
    eq,
    holds,
    layer_norm,
    proof,
    refute,
    require,
    rms_norm,
)
from .toolkit import (
    display as D,
)

FAMILY = "LayerNorm–RMSNorm relation"


def _params(M):
    return M.vector("alpha"), M.vector("beta"), M.scalar("epsilon", positive=True)


# ---- G8: the two definitions, in torch's form and in geometric form --------------------------------
def claim_g8(M):
    x = M.vector("x")
    alpha, beta, eps = _params(M)
    g = M.vector("g")
    px = P(M, x)
    return [
        # LayerNorm = remove the mean vector, scale to radius √d (softened by ε), gain, bias
        (layer_norm(M, x, alpha, beta, eps),
         alpha * (sp.sqrt(M.d) * px / sp.sqrt(dot(M, px, px) + M.d * eps)) + beta),
        # RMSNorm = the same without the removal and without a bias
        (rms_norm(M, x, g, eps), g * (sp.sqrt(M.d) * x / sp.sqrt(dot(M, x, x) + M.d * eps))),
    ]


# ---- G9 -------------------------------------------------------------------------------------------
def claim_g9(M):
    x = M.vector("x")
    alpha, beta, eps = _params(M)
    return [(layer_norm(M, x, alpha, beta, eps), rms_norm(M, P(M, x), alpha, eps) + beta)]


def claim_g9_perp(M):
    x = M.vector("x", perp_to_ones=True)          # hypothesis: 1ᵀx = 0
    alpha, _, eps = _params(M)
    return [(layer_norm(M, x, alpha, None, eps), rms_norm(M, x, alpha, eps))]


def claim_ln_is_rms_everywhere(M):
    """Wrong without the hypothesis x ⟂ 1."""
    x = M.vector("x")
    alpha, _, eps = _params(M)
    return [(layer_norm(M, x, alpha, None, eps), rms_norm(M, x, alpha, eps))]


@proof
def prove_g9():
    require(holds(claim_g9), "LN_{α,β}(x) = RMSNorm_α(Px) + β")
    require(holds(claim_g9_perp), "x ⟂ 1 ⇒ LN_{α,0}(x) = RMSNorm_α(x)")


# ---- G13 ------------------------------------------------------------------------------------------
def claim_g13(M):
    x = M.vector("x")
    alpha, beta, eps = _params(M)
    z = layer_norm(M, x, alpha, beta, eps)
    y = layer_norm(M, x, eps=eps)
    return [(dot(M, M.ones(), z), dot(M, alpha, y) + dot(M, M.ones(), beta))]


def claim_g13_zero(M):
    """"1ᵀz = 0 for all α, β": false, refuted with an exact witness inside the proof of G13."""
    x = M.vector("x")
    alpha, beta, eps = _params(M)
    return [(dot(M, M.ones(), layer_norm(M, x, alpha, beta, eps)), 0)]


def claim_g13_uniform_gain(M):
    """The exception: a uniform gain α = c1 and a bias β ⟂ 1 keep z ⟂ 1."""
    x = M.vector("x")
    c = M.scalar("c", real=True)
    beta = M.vector("beta", perp_to_ones=True)
    eps = M.scalar("epsilon", positive=True)
    z = layer_norm(M, x, M.ones() * c, beta, eps)
    return [(dot(M, M.ones(), z), 0)]


@proof
def prove_g13():
    require(holds(claim_g13), "1ᵀz = αᵀy + 1ᵀβ")
    require(refute(claim_g13_zero) is not None, "1ᵀz ≠ 0 for some x, α, β (exact witness)")
    require(holds(claim_g13_uniform_gain), "α = c1, β ⟂ 1 ⇒ 1ᵀz = 0")


_x, _P, _a, _b = D.x, D.P, D.alpha, D.beta
_had = sp.HadamardProduct


def _vec(name):
    """A named vector for display only (e.g. LN(x)), so that it adds to other vectors."""
    return sp.MatrixSymbol(name, d, 1)


IDENTITIES = [
    Identity("G8", "LN: z = α⊙y + β = α⊙√d·Px/√(‖Px‖²+dε) + β; RMSNorm: r = g⊙x/√(‖x‖²/d+ε) = g⊙√d·x/√(‖x‖²+dε)",
             ALL_D, lambda: holds(claim_g8),
             lambda: (eq(D.z, _had(_a, D.y) + _b),
                      eq(_had(_a, D.y) + _b,
                         _had(_a, sp.sqrt(d) * _P * _x / sp.sqrt(Norm(_P * _x) ** 2 + d * D.eps)) + _b),
                      eq(D.r, _had(D.g, _x) / sp.sqrt(Norm(_x) ** 2 / d + D.eps)),
                      eq(_had(D.g, _x) / sp.sqrt(Norm(_x) ** 2 / d + D.eps),
                         sp.sqrt(d) * _had(D.g, _x) / sp.sqrt(Norm(_x) ** 2 + d * D.eps))),
             FAMILY, "Σ-linearity", (claim_g8,)),
    Identity("G9", "LN_{α,β}(x) = RMSNorm_{g=α}(Px) + β (ε included); x ⟂ 1 ⇒ LN_{α,0}(x) = RMSNorm_α(x)",
             ALL_D, prove_g9,
             lambda: (eq(_vec(r"\mathrm{LN}_{\alpha,\beta}(x)"), _vec(r"\mathrm{RMSNorm}_{\alpha}(P x)") + _b),
                      sp.Implies(eq(D.one.T * _x, 0), eq(_vec(r"\mathrm{LN}_{\alpha,0}(x)"),
                                                         _vec(r"\mathrm{RMSNorm}_{\alpha}(x)")))),
             FAMILY, "Σ-linearity; hypothesis 1ᵀx = 0 as the rule Σxᵢ = 0", (claim_g9, claim_g9_perp)),
    Identity("G13", "1ᵀz = αᵀy + 1ᵀβ, generally ≠ 0 (= 0 when α = c1 and β ⟂ 1)", ALL_D, prove_g13,
             lambda: (eq(D.one.T * D.z, _a.T * D.y + D.one.T * _b),),
             FAMILY, "Σ-linearity; exact rational witness for ≠ 0", (claim_g13, claim_g13_uniform_gain)),
]

CONTROLS = [
    Control("N7", "LN_{α,0}(x) = RMSNorm_α(x) without the hypothesis x ⟂ 1", "G9", claim_ln_is_rms_everywhere,
            lambda: eq(_vec(r"\mathrm{LN}_{\alpha,0}(x)"), _vec(r"\mathrm{RMSNorm}_{\alpha}(x)"))),
]
