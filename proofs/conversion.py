"""G16–G18: the exact LayerNorm → RMSNorm conversion of a pre-LN model (geonorm_core.experiments.convert).

A residual stream is a sum of writes: embedding rows, then each block's output projection ``W h + b``.
Centring a writer replaces each write w by Pw (P = I − 1 1ᵀ/d; for a linear map, centre each output
column of W and the bias: (PW)h + Pb = P(Wh + b)).  G16: no downstream LayerNorm sees the change, so by
induction the converted stream is P s wherever the original was s.  G17: a sum of centred writes is
centred.  G18: on that stream each LayerNorm equals RMSNorm with the same gain and ε plus its bias.
Negative controls: a centred unembedding tied to the centred embedding changes the logits (the final
norm's output is not ⟂ 1, G13), and one uncentred writer breaks G18.
"""

from __future__ import annotations

import sympy as sp

from .toolkit import (
    ALL_D,
    Control,
    Identity,
    P,
    d,
    dot,
    eq,
    holds,
    layer_norm,
    proof,
    require,
    rms_norm,
)
from .toolkit import (
    display as D,
)

FAMILY = "LayerNorm → RMSNorm conversion"


def _params(M):
    return M.vector("alpha"), M.vector("beta"), M.scalar("epsilon", positive=True)


# ---- G16: centring a writer preserves every downstream LayerNorm output ---------------------------------
def claim_g16_write(M):
    """LN(s + Pw) = LN(s + w): the centred write differs by a multiple of 1, which LN ignores (G10, ε > 0)."""
    s, w = M.vector("s"), M.vector("w")
    alpha, beta, eps = _params(M)
    return [(layer_norm(M, s + P(M, w), alpha, beta, eps), layer_norm(M, s + w, alpha, beta, eps))]


def claim_g16_stream(M):
    """LN(Ps) = LN(s): the induction step; a block that reads the converted stream Ps sees what it saw."""
    s = M.vector("s")
    alpha, beta, eps = _params(M)
    return [(layer_norm(M, P(M, s), alpha, beta, eps), layer_norm(M, s, alpha, beta, eps))]


def claim_g16_linear(M):
    """P(a u + c v + b) = a Pu + c Pv + Pb: centring W's columns and b centres every write Wh + b."""
    u, v, b = M.vector("u"), M.vector("v"), M.vector("b")
    a, c = M.scalar("a", real=True), M.scalar("c", real=True)
    return [(P(M, u * a + v * c + b), P(M, u) * a + P(M, v) * c + P(M, b))]


@proof
def prove_g16():
    require(holds(claim_g16_linear), "P(a u + c v + b) = a Pu + c Pv + Pb (centred columns ⇒ centred writes)")
    require(holds(claim_g16_write), "LN_{α,β}(s + Pw) = LN_{α,β}(s + w), ε > 0")
    require(holds(claim_g16_stream), "LN_{α,β}(Ps) = LN_{α,β}(s) (induction: the converted stream is Ps)")


# ---- G17: a sum of centred writes is centred -------------------------------------------------------------
def claim_g17(M):
    u, v, w = M.vector("u"), M.vector("v"), M.vector("w")
    total = P(M, u) + P(M, v) + P(M, w)
    return [(dot(M, M.ones(), total), 0), (P(M, total), total)]


@proof
def prove_g17():
    require(holds(claim_g17), "1ᵀ(Pu + Pv + Pw) = 0 and P(Pu + Pv + Pw) = Pu + Pv + Pw")


# ---- G18: on a centred stream LN = RMSNorm (+ bias) ------------------------------------------------------
def claim_g18_perp(M):
    x = M.vector("x", perp_to_ones=True)            # hypothesis: 1ᵀx = 0
    alpha, beta, eps = _params(M)
    return [(layer_norm(M, x, alpha, beta, eps), rms_norm(M, x, alpha, eps) + beta)]


def claim_g18_converted(M):
    """The converted layer on the converted stream gives the original layer's output on the original."""
    s = M.vector("s")
    alpha, beta, eps = _params(M)
    return [(rms_norm(M, P(M, s), alpha, eps) + beta, layer_norm(M, s, alpha, beta, eps))]


@proof
def prove_g18():
    require(holds(claim_g18_perp), "1ᵀx = 0 ⇒ LN_{α,β}(x) = RMSNorm_α(x) + β (same ε)")
    require(holds(claim_g18_converted), "RMSNorm_α(Ps) + β = LN_{α,β}(s)")


# ---- negative controls -------------------------------------------------------------------------------------
def claim_tied_centred_unembedding(M):
    """Wrong: centring the unembedding row e (tied to a centred embedding) keeps the logit eᵀz of the
    final norm's output z = LN_{α,β}(x); z is not ⟂ 1 (G13), so (Pe)ᵀz = eᵀz − (1ᵀe)(1ᵀz)/d differs."""
    e, x = M.vector("e"), M.vector("x")
    alpha, beta, eps = _params(M)
    z = layer_norm(M, x, alpha, beta, eps)
    return [(dot(M, P(M, e), z), dot(M, e, z))]


def claim_uncentred_writer(M):
    """Wrong: a stream with one uncentred write w, Pu + w, is still fit for RMSNorm + β."""
    u, w = M.vector("u"), M.vector("w")
    alpha, beta, eps = _params(M)
    x = P(M, u) + w
    return [(layer_norm(M, x, alpha, beta, eps), rms_norm(M, x, alpha, eps) + beta)]


_P, _b = D.P, D.beta
_m = sp.Symbol("m", integer=True, positive=True)
_W, _h = sp.MatrixSymbol("W", d, _m), sp.MatrixSymbol("h", _m, 1)


def _vec(name):
    return sp.MatrixSymbol(name, d, 1)


IDENTITIES = [
    Identity("G16", "centring a writer (w → Pw; W → PW, b → Pb) preserves every downstream LayerNorm: "
             "LN(s + Pw) = LN(s + w), LN(Ps) = LN(s)", ALL_D, prove_g16,
             lambda: (eq(_vec(r"\mathrm{LN}_{\alpha,\beta}(s + P w)"),
                         _vec(r"\mathrm{LN}_{\alpha,\beta}(s + w)")),
                      eq(_vec(r"\mathrm{LN}_{\alpha,\beta}(P s)"), _vec(r"\mathrm{LN}_{\alpha,\beta}(s)")),
                      eq(_P * (_W * _h + _vec("b")), (_P * _W) * _h + _P * _vec("b"))),
             FAMILY, "Σ-linearity; ε > 0 kept symbolic",
             (claim_g16_linear, claim_g16_write, claim_g16_stream)),
    Identity("G17", "a sum of centred writes is centred: 1ᵀ(Σₖ P wₖ) = 0", ALL_D, prove_g17,
             lambda: (eq(D.one.T * (_P * _vec("u") + _P * _vec("v") + _P * _vec("w")), 0),),
             FAMILY, "Σ-linearity", (claim_g17,)),
    Identity("G18", "on a centred stream LN = RMSNorm + bias: 1ᵀx = 0 ⇒ LN_{α,β}(x) = RMSNorm_α(x) + β; "
             "RMSNorm_α(Ps) + β = LN_{α,β}(s)", ALL_D, prove_g18,
             lambda: (sp.Implies(eq(D.one.T * D.x, 0), eq(_vec(r"\mathrm{LN}_{\alpha,\beta}(x)"),
                                                          _vec(r"\mathrm{RMSNorm}_{\alpha}(x)") + _b)),
                      eq(_vec(r"\mathrm{RMSNorm}_{\alpha}(P s)") + _b,
                         _vec(r"\mathrm{LN}_{\alpha,\beta}(s)"))),
             FAMILY, "Σ-linearity; hypothesis 1ᵀx = 0 as the rule Σxᵢ = 0",
             (claim_g18_perp, claim_g18_converted)),
]

CONTROLS = [
    Control("N8", "a centred unembedding tied to the centred embedding keeps the logits: "
            "(Pe)ᵀLN(x) = eᵀLN(x)",
            "G16", claim_tied_centred_unembedding,
            lambda: eq((_P * _vec("e")).T * _vec(r"\mathrm{LN}_{\alpha,\beta}(x)"),
                       _vec("e").T * _vec(r"\mathrm{LN}_{\alpha,\beta}(x)"))),
    Control("N9", "an uncentred writer keeps the equality: LN_{α,β}(Pu + w) = RMSNorm_α(Pu + w) + β",
            "G18", claim_uncentred_writer,
            lambda: eq(_vec(r"\mathrm{LN}_{\alpha,\beta}(P u + w)"),
                       _vec(r"\mathrm{RMSNorm}_{\alpha}(P u + w)") + _b)),
]
