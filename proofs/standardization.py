"""G6, G7: standardization is "remove the mean vector, scale to the sphere of radius √d"; ε shrinks it."""

from __future__ import annotations

import sympy as sp

from .toolkit import (
    ALL_D,
    Control,
    GeneralModel,
    Identity,
    Norm,
    P,
    d,
    dot,
    eq,
    holds,
    layer_norm,
    mean,
    norm,
    perp_lemma,
    proof,
    require,
    std,
)
from .toolkit import (
    display as D,
)

FAMILY = "standardization and ε"


# ---- G6 (ε = 0; x ∉ span 1 so that σ > 0) -------------------------------------------------------
def _standardize(M, x, ddof=0):
    return (x - mean(M, x)) / std(M, x, ddof)


def claim_g6(M, ddof=0):
    x = M.vector("x")
    px = P(M, x)
    y = _standardize(M, x, ddof)
    return [
        (y, sp.sqrt(M.d) * px / norm(M, px)),   # the paper's three steps: remove, normalize, scale
        (norm(M, y), sp.sqrt(M.d)),
        (dot(M, y, M.ones()), 0),
    ]


def claim_g6_unbiased(M):
    return claim_g6(M, ddof=1)


def claim_g6_norm_d(M):
    x = M.vector("x")
    return [(norm(M, _standardize(M, x)), M.d)]


# ---- G7 (ε > 0, torch semantics) -----------------------------------------------------------------
def claim_g7(M):
    x = M.vector("x")
    eps = M.scalar("epsilon", positive=True)
    px = P(M, x)
    y = layer_norm(M, x, eps=eps)
    return [
        (y, sp.sqrt(M.d) * px / sp.sqrt(dot(M, px, px) + M.d * eps)),
        (dot(M, y, M.ones()), 0),
    ]


def claim_g7_sigma_plus_eps(M):
    """Wrong: ε added to σ instead of σ² (y = (x − μ1)/(σ + ε))."""
    x = M.vector("x")
    eps = M.scalar("epsilon", positive=True)
    px = P(M, x)
    y = (x - mean(M, x)) / (std(M, x) + eps)
    return [(y, sp.sqrt(M.d) * px / sp.sqrt(dot(M, px, px) + M.d * eps))]


@proof
def prove_g7():
    require(holds(claim_g7), "y = √d·Px/√(‖Px‖² + dε), y ⟂ 1")
    # ‖y‖ < √d: write ‖y‖² in the plane coordinates of x = a·û + Px (G5), b = ‖Px‖ ≥ 0
    M = GeneralModel()
    x = M.vector("x")
    eps = sp.Symbol("epsilon", positive=True)
    y = layer_norm(M, x, eps=eps)
    subs, a, b = perp_lemma(M, x)
    gap = sp.simplify(M.d - dot(M, y, y).subs(subs))          # d − ‖y‖²
    require(sp.simplify(gap - d ** 2 * eps / (b ** 2 + d * eps)) == 0, "d − ‖y‖² = d²ε/(‖Px‖² + dε)")
    require(gap.is_positive is True, "d − ‖y‖² > 0 (sympy's assumptions: d, ε > 0, b ≥ 0)")


_x, _P = D.x, D.P
_y_def = (_x - D.mu * D.one) / D.sigma
_y_eps = (_x - D.mu * D.one) / sp.sqrt(D.sigma ** 2 + D.eps)

IDENTITIES = [
    Identity("G6", "y = (x−μ1)/σ = √d·Px/‖Px‖, ‖y‖ = √d, y ⟂ 1 (ε = 0, x ∉ span 1)", ALL_D,
             lambda: holds(claim_g6),
             lambda: (eq(D.y, _y_def), eq(_y_def, sp.sqrt(d) * _P * _x / Norm(_P * _x)),
                      eq(Norm(D.y), sp.sqrt(d)), eq(D.one.T * D.y, 0)),
             FAMILY, "Σ-linearity", (claim_g6,)),
    Identity("G7", "y = (x−μ1)/√(σ²+ε) = √d·Px/√(‖Px‖²+dε); ‖y‖ < √d; y ⟂ 1 exactly", ALL_D, prove_g7,
             lambda: (eq(D.y, _y_eps), eq(_y_eps, sp.sqrt(d) * _P * _x / sp.sqrt(Norm(_P * _x) ** 2 + d * D.eps)),
                      sp.StrictLessThan(Norm(D.y), sp.sqrt(d)), eq(D.one.T * D.y, 0)),
             FAMILY, "Σ-linearity; positivity of d²ε/(‖Px‖²+dε) by sympy assumptions", (claim_g7,)),
]

_yu = (_x - D.mu * D.one) / sp.Symbol(r"\sigma_{d-1}")
CONTROLS = [
    Control("N2", "unbiased σ (1/(d−1)) in G6: ‖(x−μ1)/σ_{d−1}‖ = √d", "G6", claim_g6_unbiased,
            lambda: eq(Norm(_yu), sp.sqrt(d))),
    Control("N3", "‖y‖ = d instead of √d", "G6", claim_g6_norm_d, lambda: eq(Norm(D.y), d)),
    Control("N4", "ε entering as σ + ε: (x−μ1)/(σ+ε) = √d·Px/√(‖Px‖²+dε)", "G7", claim_g7_sigma_plus_eps,
            lambda: eq((_x - D.mu * D.one) / (D.sigma + D.eps),
                       sp.sqrt(d) * _P * _x / sp.sqrt(Norm(_P * _x) ** 2 + d * D.eps))),
]
