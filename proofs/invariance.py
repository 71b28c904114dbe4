"""G10, G15: what standardization forgets (a 2-D half-plane per output) and why no affine step undoes it."""

from __future__ import annotations

import sympy as sp

from .toolkit import (
    ALL_D,
    Control,
    Identity,
    d,
    dot,
    eq,
    holds,
    layer_norm,
    mean,
    proof,
    refute,
    require,
    rms_norm,
    std,
)
from .toolkit import (
    display as D,
)

FAMILY = "invariance and irreversibility"


def _y(M, x):
    """standardization with ε = 0 (G6)"""
    return (x - mean(M, x)) / std(M, x)


# ---- G10 ------------------------------------------------------------------------------------------
def claim_g10_positive(M):
    x = M.vector("x")
    c, b = M.scalar("c", positive=True), M.scalar("b", real=True)
    alpha, beta = M.vector("alpha"), M.vector("beta")
    return [
        (_y(M, c * x + b), _y(M, x)),
        (layer_norm(M, c * x + b, alpha, beta), layer_norm(M, x, alpha, beta)),
    ]


def claim_g10_negative(M):
    x = M.vector("x")
    c, b = M.scalar("c", negative=True), M.scalar("b", real=True)
    return [(_y(M, c * x + b), -_y(M, x))]


def claim_g10_fibre(M):
    """x = μ(x)·1 + σ(x)·y(x): two numbers per vector are all that is lost, so the fibre of y(x)
    is exactly the half-plane {c·x + b·1 : c > 0, b ∈ ℝ}."""
    x = M.vector("x")
    return [(mean(M, x) * M.ones() + std(M, x) * _y(M, x), x)]


def claim_g10_shift_with_eps(M):
    """With ε > 0 the shift invariance survives exactly (only the scale invariance is lost)."""
    x = M.vector("x")
    b = M.scalar("b", real=True)
    alpha, beta, eps = M.vector("alpha"), M.vector("beta"), M.scalar("epsilon", positive=True)
    return [(layer_norm(M, x + b, alpha, beta, eps), layer_norm(M, x, alpha, beta, eps))]


def claim_rms_rays(M):
    x, g = M.vector("x"), M.vector("g")
    c = M.scalar("c", positive=True)
    cn = M.scalar("c_neg", negative=True)
    return [
        (rms_norm(M, c * x, g), rms_norm(M, x, g)),            # fibres of RMSNorm: rays c > 0
        (rms_norm(M, cn * x, g), -rms_norm(M, x, g)),
        (rms_norm(M, x) * sp.sqrt(dot(M, x, x) / M.d), x),      # one number (the RMS) is lost
    ]


@proof
def prove_g10():
    require(holds(claim_g10_positive), "y(cx + b1) = y(x), c > 0")
    require(holds(claim_g10_negative), "y(cx + b1) = −y(x), c < 0")
    require(holds(claim_g10_fibre), "x = μ1 + σy: the fibre is the half-plane")
    require(holds(claim_g10_shift_with_eps), "shift invariance with ε > 0")
    require(holds(claim_rms_rays), "RMSNorm fibres are rays")


# ---- negative controls of G10 ---------------------------------------------------------------------
def claim_ln_shift_equivariant(M):
    """Wrong: LN(x + c1) = LN(x) + c."""
    x = M.vector("x")
    c = M.scalar("c", real=True)
    alpha, beta, eps = M.vector("alpha"), M.vector("beta"), M.scalar("epsilon", positive=True)
    return [(layer_norm(M, x + c, alpha, beta, eps), layer_norm(M, x, alpha, beta, eps) + c)]


def claim_rms_shift_invariant(M):
    """Wrong: RMSNorm(x + c1) = RMSNorm(x)."""
    x, g = M.vector("x"), M.vector("g")
    c = M.scalar("c", real=True)
    eps = M.scalar("epsilon", positive=True)
    return [(rms_norm(M, x + c, g, eps), rms_norm(M, x, g, eps))]


# ---- G15 ------------------------------------------------------------------------------------------
def claim_bn_undo(M):
    """BatchNorm: per-dimension statistics m, s > 0 shared by every vector of the batch;
    α = s, β = m give α⊙BN(x) + β = x for every x (the identity is representable)."""
    x, m, s = M.vector("x"), M.vector("m"), M.vector("s", positive=True)
    bn = (x - m) / s
    return [(s * bn + m, x)]


def claim_ln_collides(M):
    """For every α, β: LN_{α,β}(2x + 1) = LN_{α,β}(x)."""
    x = M.vector("x")
    alpha, beta = M.vector("alpha"), M.vector("beta")
    return [(layer_norm(M, 2 * x + 1, alpha, beta), layer_norm(M, x, alpha, beta))]


def claim_inputs_equal(M):
    """"2x + 1 = x": false for every x ∉ span 1; refuted with an exact witness."""
    x = M.vector("x")
    return [(2 * x + 1, x)]


@proof
def prove_g15():
    require(holds(claim_bn_undo), "BN: α = s, β = m undo it")
    # LN: if any f (in particular any α'⊙(·) + β') recovered x from LN_{α,β}(x), then
    # x = f(LN(x)) = f(LN(2x + 1)) = 2x + 1, which fails at the exact witness below.
    require(holds(claim_ln_collides), "LN(2x + 1) = LN(x)")
    require(refute(claim_inputs_equal) is not None, "2x + 1 ≠ x (witness)")


_x, _one = D.x, D.one


def _vec(name):
    return sp.MatrixSymbol(name, d, 1)


IDENTITIES = [
    Identity("G10", "y(c·x + b·1) = y(x) for c > 0, b ∈ ℝ; = −y(x) for c < 0 (ε = 0); fibre = half-plane "
             "{cx + b1}; RMSNorm: fibres are rays", ALL_D, prove_g10,
             lambda: (eq(_vec(r"y(c x + b \mathbf{1})"), _vec("y(x)")),
                      eq(_x, D.mu * _one + D.sigma * D.y),
                      eq(_vec(r"\mathrm{RMSNorm}(c x)"), _vec(r"\mathrm{RMSNorm}(x)"))),
             FAMILY, "Σ-linearity with c > 0 / c < 0 assumptions",
             (claim_g10_positive, claim_g10_negative, claim_g10_fibre, claim_g10_shift_with_eps, claim_rms_rays)),
    Identity("G15", "BatchNorm: α = s, β = m give α⊙BN(x) + β = x; LayerNorm: LN_{α,β}(2x+1) = LN_{α,β}(x), "
             "so no α, β (no function) recovers x", ALL_D, prove_g15,
             lambda: (eq(sp.HadamardProduct(sp.MatrixSymbol("s", d, 1), _vec(r"\mathrm{BN}(x)"))
                         + sp.MatrixSymbol("m", d, 1), _x),
                      eq(_vec(r"\mathrm{LN}_{\alpha,\beta}(2x + \mathbf{1})"), _vec(r"\mathrm{LN}_{\alpha,\beta}(x)"))),
             FAMILY, "Σ-linearity; exact witness", (claim_bn_undo, claim_ln_collides)),
]

CONTROLS = [
    Control("N5", "LN(x + c·1) = LN(x) + c", "G10", claim_ln_shift_equivariant,
            lambda: eq(_vec(r"\mathrm{LN}(x + c \mathbf{1})"), _vec(r"\mathrm{LN}(x)") + D.c * _one)),
    Control("N6", "RMSNorm invariant to shifts along 1: RMSNorm(x + c·1) = RMSNorm(x)", "G10",
            claim_rms_shift_invariant,
            lambda: eq(_vec(r"\mathrm{RMSNorm}(x + c \mathbf{1})"), _vec(r"\mathrm{RMSNorm}(x)"))),
]
