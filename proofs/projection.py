"""G1–G5: the mean vector is a projection; P removes it; Pythagoras gives the variance."""

from __future__ import annotations

import sympy as sp

from .toolkit import (
    ALL_D,
    Control,
    Dot,
    GeneralModel,
    Identity,
    Norm,
    P,
    cos_angle,
    d,
    dot,
    eq,
    holds,
    mean,
    norm,
    proof,
    require,
    variance,
)
from .toolkit import (
    display as D,
)

FAMILY = "projection and mean vector"


def _uhat(M):
    return M.ones() / sp.sqrt(M.d)


# ---- G1 ------------------------------------------------------------------------------------------
def claim_g1(M):
    x = M.vector("x")
    one, u = M.ones(), _uhat(M)
    mu = mean(M, x)
    return [
        (mu * one, dot(M, x, u) * u),            # μ1 = (x·û) û
        (dot(M, x - mu * one, one), 0),           # the residual is ⟂ 1: an orthogonal projection
    ]


@proof
def prove_g1():
    require(holds(claim_g1), "μ1 = (x·û)û and (x − μ1) ⟂ 1")
    # and μ is the least-squares coefficient: f(c) = ‖x − c1‖² is stationary at c = μ, convex
    M = GeneralModel()
    x, c = M.vector("x"), sp.Symbol("c", real=True)
    f = dot(M, x - c, x - c)
    require(sp.simplify(sp.diff(f, c).subs(c, mean(M, x))) == 0, "f'(μ) = 0")
    require(sp.simplify(sp.diff(f, c, 2) - 2 * d) == 0 and (2 * d).is_positive, "f'' = 2d > 0")


# ---- G2 ------------------------------------------------------------------------------------------
def claim_g2(M):
    x = M.vector("x")
    one = M.ones()
    xu = dot(M, x, _uhat(M))
    return [
        (xu, sp.sqrt(M.d) * mean(M, x)),
        (norm(M, x) * cos_angle(M, x, one), xu),
    ]


# ---- G3 ------------------------------------------------------------------------------------------
def claim_g3(M):
    u, v = M.vector("u"), M.vector("v")
    return [
        (dot(M, u, P(M, v)), dot(M, P(M, u), v)),   # symmetric: ⟨u, Pv⟩ = ⟨Pu, v⟩ for all u, v
        (P(M, P(M, v)), P(M, v)),                    # idempotent
        (P(M, M.ones()), 0),                         # P1 = 0
    ]


@proof
def prove_g3():
    require(holds(claim_g3), "symmetric, idempotent, P1 = 0")
    # ker P = span(1): the generic component of Pv = 0, solved for v_i, gives a value free of i,
    # so every component is the same number and v ∈ span(1); conversely P1 = 0. Rank–nullity
    # (1 ≠ 0, so dim ker P = 1) gives rank P = d − 1.
    M = GeneralModel()
    v = M.vector("v")
    (pv,) = P(M, v).components()
    sol = sp.solve(sp.Eq(pv, 0), v.comp)
    require(len(sol) == 1 and M.i not in sol[0].free_symbols, "ker P ⊆ span(1)")
    # corroboration with sympy's own matrix-expression rules (1ᵀ1 = d): tr P = d − 1 = rank P
    Pm = sp.Identity(d) - sp.OneMatrix(d, d) / d
    require(sp.simplify(sp.Trace(Pm).doit() - (d - 1)) == 0, "tr P = d − 1")
    # and the exact rank of the explicit matrix for d = 1..16 (rational arithmetic)
    for n in range(1, 17):
        require(sp.Matrix(sp.eye(n) - sp.ones(n, n) / n).rank() == n - 1, f"rank at d={n}")


# ---- G4 ------------------------------------------------------------------------------------------
def claim_g4(M):
    x = M.vector("x")
    one = M.ones()
    px = P(M, x)
    return [
        (x - mean(M, x) * one, px),
        (dot(M, one, px), 0),
    ]


# ---- G5 ------------------------------------------------------------------------------------------
def claim_g5(M, ddof=0):
    x = M.vector("x")
    px = P(M, x)
    mu = mean(M, x)
    sigma2 = variance(M, x, ddof)
    return [
        (sigma2, dot(M, px, px) / M.d),
        (sigma2, dot(M, x, x) / M.d - mu ** 2),
        (dot(M, x, x), M.d * mu ** 2 + dot(M, px, px)),
    ]


def claim_g5_unbiased(M):
    return claim_g5(M, ddof=1)


_x, _one, _u, _P = D.x, D.one, D.u, D.P
_S = sp.Sum((D.xi - D.mu) ** 2, (D.i, 1, d))

IDENTITIES = [
    Identity("G1", "μ = 1ᵀx/d; μ1 = (x·û)û, and x − μ1 ⟂ 1 (orthogonal projection onto span 1)",
             ALL_D, prove_g1,
             lambda: (eq(D.mu, (_one.T * _x) / d), eq(D.mu * _one, Dot(_x, _u) * _u)),
             FAMILY, "Σ-linearity; least squares via d/dc", (claim_g1,)),
    Identity("G2", "x·û = √d μ = ‖x‖ cos θ, θ = ∠(x, 1)", ALL_D, lambda: holds(claim_g2),
             lambda: (eq(Dot(_x, _u), sp.sqrt(d) * D.mu), eq(sp.sqrt(d) * D.mu, Norm(_x) * sp.cos(D.theta))),
             FAMILY, "Σ-linearity", (claim_g2,)),
    Identity("G3", "P = I − 11ᵀ/d is symmetric, idempotent, P1 = 0, rank P = d − 1", ALL_D, prove_g3,
             lambda: (eq(_P, _P.T), eq(_P * _P, _P), eq(_P * _one, sp.ZeroMatrix(d, 1)),
                      eq(sp.Function("rank")(_P), d - 1)),
             FAMILY, "Σ-linearity on ⟨u,Pv⟩; ker P = span 1 + rank–nullity", (claim_g3,)),
    Identity("G4", "x − μ1 = Px and 1ᵀPx = 0", ALL_D, lambda: holds(claim_g4),
             lambda: (eq(_x - D.mu * _one, _P * _x), eq(_one.T * _P * _x, 0)), FAMILY, "Σ-linearity",
             (claim_g4,)),
    Identity("G5", "σ² = (1/d)Σ(xᵢ−μ)² = ‖Px‖²/d = ‖x‖²/d − μ²; ‖x‖² = dμ² + ‖Px‖²", ALL_D,
             lambda: holds(claim_g5),
             lambda: (eq(D.sigma ** 2, _S / d), eq(_S / d, Norm(_P * _x) ** 2 / d),
                      eq(Norm(_P * _x) ** 2 / d, Norm(_x) ** 2 / d - D.mu ** 2),
                      eq(Norm(_x) ** 2, d * D.mu ** 2 + Norm(_P * _x) ** 2)),
             FAMILY, "Σ-linearity (Pythagoras)", (claim_g5,)),
]

CONTROLS = [
    Control("N1", "unbiased variance: (1/(d−1))Σ(xᵢ−μ)² = ‖Px‖²/d", "G5", claim_g5_unbiased,
            lambda: eq(sp.Sum((D.xi - D.mu) ** 2, (D.i, 1, d)) / (d - 1), Norm(_P * _x) ** 2 / d)),
]
