"""G14: the null baseline. For any rotation-invariant x (x ≠ 0 a.s.), E[cos²θ] = 1/d exactly.

The proof is the symmetry argument, carried by sympy for general d:

1. w = x/‖x‖ satisfies Σ wᵢ² = 1 (deterministic) and cos θ = Σ wᵢ / √d.
2. (Σ wᵢ)² = Σ wᵢ² + Σ_{i≠j} wᵢwⱼ, with d² − d ordered pairs i ≠ j.
3. Permutations of coordinates preserve the law (exchangeability): E[wᵢ²] = m for every i, and
   Σ E[wᵢ²] = E[1] = 1 gives d·m = 1.
4. Flipping the sign of coordinate j preserves the law and maps wᵢwⱼ ↦ −wᵢwⱼ: E[wᵢwⱼ] = c = −c.
5. E[cos²θ] = (d·m + (d² − d)·c)/d = 1/d.

The law of cos θ: a coordinate of the uniform point on S^{d−1} has density ∝ (1 − t²)^{(d−3)/2}
(standard; cited, not re-derived), and t = 2u − 1 turns it into Beta((d−1)/2, (d−1)/2). We check
the change of variables and that this Beta law's second moment gives the same 1/d; the spread
(180/π)/√d degrees is confirmed numerically with the core (crosscheck G14).
"""

from __future__ import annotations

import sympy as sp

from .toolkit import ALL_D, GeneralModel, Identity, cos_angle, d, eq, norm, proof, require

FAMILY = "random baseline"


def claim_g14_unit(M):
    x = M.vector("x")
    w = x / norm(M, x)
    return [
        (M.sum(w * w), 1),
        (cos_angle(M, x, M.ones()), M.sum(w) / sp.sqrt(M.d)),
    ]


@proof
def prove_g14():
    M = GeneralModel()
    # 1. Σwᵢ² = 1 and cos θ = Σwᵢ/√d, for general d
    x = M.vector("x")
    w = x / norm(M, x)
    require(sp.simplify(M.sum(w * w) - 1) == 0, "Σ wᵢ² = 1")
    require(sp.simplify(cos_angle(M, x, M.ones()) - M.sum(w) / sp.sqrt(d)) == 0, "cos θ = Σwᵢ/√d")
    # 2. the number of ordered off-diagonal pairs: Σ_i Σ_j 1 − Σ_i 1
    n_off = M.sum(M.sum(1)) - M.sum(1)
    require(sp.simplify(n_off - (d ** 2 - d)) == 0, "#{i ≠ j} = d² − d")
    # 3.–4. the two symmetries, as equations for the unknown moments
    m, c = sp.symbols("m c", real=True)
    (m_val,) = sp.solve(sp.Eq(M.sum(m), 1), m)          # Σ_i E[wᵢ²] = E[Σ wᵢ²] = 1
    (c_val,) = sp.solve(sp.Eq(c, -c), c)                # sign flip of coordinate j
    require(m_val == 1 / d and c_val == 0, "m = 1/d, c = 0")
    # 5. E[cos²θ] = E[(Σwᵢ)²]/d by linearity of E
    e_cos2 = (M.sum(m) + n_off * c) / d
    require(sp.simplify(e_cos2.subs({m: m_val, c: c_val}) - 1 / d) == 0, "E[cos²θ] = 1/d")
    # E[cos θ] = 0 by the global flip x ↦ −x, so Var(cos θ) = 1/d as well
    e1 = sp.Symbol("e1", real=True)
    (e1_val,) = sp.solve(sp.Eq(e1, -e1), e1)
    require(sp.simplify((e_cos2 - e1 ** 2).subs({m: m_val, c: c_val, e1: e1_val}) - 1 / d) == 0,
            "Var(cos θ) = 1/d")
    # the Beta law: change of variables t = 2u − 1 in (1 − t²)^{(d−3)/2}
    u = sp.Symbol("u", positive=True)
    require(sp.expand((1 - (2 * u - 1) ** 2) - 4 * u * (1 - u)) == 0, "1 − t² = 4u(1 − u)")
    # its moments: E[U^k] = B(a + k, a)/B(a, a) with a = (d − 1)/2 > 0 (d ≥ 2); E[(2U − 1)²] must be 1/d
    a = sp.Symbol("a", positive=True)

    def moment(k):
        return sp.gamma(a + k) * sp.gamma(2 * a) / (sp.gamma(a) * sp.gamma(2 * a + k))

    second = sp.gammasimp(4 * moment(2) - 4 * moment(1) + 1)
    require(sp.simplify(second.subs(a, (d - 1) / 2) - 1 / d) == 0, "Beta((d−1)/2,(d−1)/2): E[(2U−1)²] = 1/d")


IDENTITIES = [
    Identity("G14", "isotropic x: E[cos²θ] = 1/d exactly; (1+cos θ)/2 ~ Beta((d−1)/2,(d−1)/2); "
             "angle SD ≈ (180/π)/√d°", ALL_D, prove_g14,
             lambda: (eq(sp.Symbol(r"\mathbb{E}\left[\cos^{2}\theta\right]"), 1 / d),
                      sp.Symbol(r"\tfrac{1+\cos\theta}{2} \sim "
                                r"\mathrm{Beta}\left(\tfrac{d-1}{2},\tfrac{d-1}{2}\right)"),
                      eq(sp.Symbol(r"\mathrm{SD}(\theta)"), sp.Mul(180 / sp.pi, 1 / sp.sqrt(d), evaluate=False))),
             FAMILY, "symmetry (exchangeability + sign flips) with Σ-linearity; Beta moments by Γ identities",
             (claim_g14_unit,)),
]

CONTROLS: list = []
