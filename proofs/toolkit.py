"""Shared toolkit for the proofs: the Identity record, the two models of ℝ^d, the checker.

How a proof works
-----------------
A *claim* is a Python function ``claim(M) -> [(lhs, rhs), ...]`` written once against a model ``M``
of ℝ^d. It builds the two sides of each equation with the operations below (sum, dot, norm, P, the
norms' definitions) and never looks at how the model stores vectors. Two models exist:

* :class:`GeneralModel` — the dimension is the sympy symbol ``d``. A vector is stored as its generic
  i-th component (an expression in ``x[i]``, ``g[i]``, ... with ``i`` symbolic), and ``M.sum`` applies
  one rule only, linearity of a finite sum::

      Σ_i (a·f_i + b·g_i) = a·Σ_i f_i + b·Σ_i g_i,   Σ_i c = d·c      (a, b, c free of i)

  What remains after the rule (``Σ_i x_i``, ``Σ_i x_i²``, ``Σ_i g_i x_i²``, …) becomes an opaque
  symbol (an *atom*), nonnegative when its summand is. A generic component that simplifies to 0
  proves the equation for every component and every d, because nothing else about d was used.
* :class:`FixedModel` — a concrete d and exact components (rationals or symbols). It is used to
  refute false claims with an exact counterexample and to prove lemmas for each d ≤ 16.

:func:`holds` is the checker: every ``sympy.simplify(lhs - rhs)`` must be exactly 0. No floats are
involved anywhere. :func:`refute` searches exact rational instances for a component that is provably
non-zero (its minimal polynomial is not ``X``): a checker that cannot say "false" proves nothing.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterable, Sequence, Union

import sympy as sp

__all__ = [
    "d", "Identity", "Control", "Vec", "GeneralModel", "FixedModel",
    "holds", "refute", "require", "mean", "P", "dot", "norm", "variance", "std",
    "layer_norm", "rms_norm", "cos_angle", "Norm", "Mean", "ones_vec", "xvec",
    "ALL_D", "D_LE_16", "display", "eq", "perp_lemma", "proof", "holds_for_each_d", "timed", "to_latex", "Model", "Dot",
]

#: the symbolic dimension
d = sp.Symbol("d", integer=True, positive=True)
_i = sp.Symbol("i", integer=True, positive=True)

ALL_D = "all d"
D_LE_16 = "d ≤ 16"


# --------------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------------
@dataclass
class Identity:
    """One identity of docs/identities.md.

    ``prove()`` returns True only if every step was verified exactly; ``expr`` is a sympy object
    (or tuple of them) whose LaTeX rendering is the statement.
    """

    id: str
    statement: str
    scope: str
    prove: Callable[[], bool]
    expr: Callable[[], object]
    family: str = ""
    method: str = ""
    #: the equational claims used by prove(), for instance checks (each must hold at exact points)
    claims: tuple = ()

    def latex(self) -> str:
        return to_latex(self.expr())


@dataclass
class Control:
    """A plausible but wrong variant of an identity. It passes when the checker REJECTS it.

    ``claim`` goes through exactly the same :func:`holds` as the true identities; ``refute()``
    additionally returns an exact counterexample.
    """

    id: str
    statement: str
    of: str
    claim: Callable[["Model"], list]
    expr: Callable[[], object]
    dims: Sequence[int] = (2, 3, 4)

    def accepted(self) -> bool:
        """True if the checker (wrongly) proves the claim for general d."""
        return holds(self.claim)

    def refute(self) -> dict | None:
        return refute(self.claim, dims=self.dims)

    def latex(self) -> str:
        return to_latex(self.expr())


def to_latex(obj) -> str:
    if isinstance(obj, (tuple, list)):
        return r",\quad ".join(to_latex(o) for o in obj)
    if isinstance(obj, str):
        return obj
    return sp.latex(obj, order="none")


# --------------------------------------------------------------------------------------------------
# vectors
# --------------------------------------------------------------------------------------------------
class Vec:
    """A vector of a model: ``comp`` is the generic component (GeneralModel) or a tuple (FixedModel).

    Arithmetic is componentwise (⊙ for Vec*Vec); a scalar added to a Vec means scalar·**1**.
    """

    __slots__ = ("model", "comp")

    def __init__(self, model, comp):
        self.model = model
        self.comp = comp

    def _zip(self, other, op):
        if isinstance(other, Vec):
            return self.model._combine(self, other, op)
        return self.model._map(self, lambda c: op(c, sp.sympify(other)))

    def __add__(self, o):
        return self._zip(o, lambda a, b: a + b)

    __radd__ = __add__

    def __sub__(self, o):
        return self._zip(o, lambda a, b: a - b)

    def __rsub__(self, o):
        return self._zip(o, lambda a, b: b - a)

    def __mul__(self, o):
        return self._zip(o, lambda a, b: a * b)

    __rmul__ = __mul__

    def __truediv__(self, o):
        return self._zip(o, lambda a, b: a / b)

    def __neg__(self):
        return self.model._map(self, lambda a: -a)

    def __pow__(self, k):
        return self.model._map(self, lambda a: a ** k)

    def components(self) -> list:
        return self.model._components(self)


class GeneralModel:
    """ℝ^d with d symbolic. See the module docstring for the single rule ``sum`` uses."""

    general = True

    def __init__(self):
        self.d = d
        self.i = _i
        self._atoms: dict = {}
        self._zero_sum: set = set()

    # vectors and scalars
    def vector(self, name: str, *, positive: bool = False, perp_to_ones: bool = False) -> Vec:
        base = sp.IndexedBase(name, positive=True) if positive else sp.IndexedBase(name, real=True)
        if perp_to_ones:
            # hypothesis Σ_i x_i = 0, used wherever the atom Σ_i x_i appears
            self._zero_sum.add(base[self.i])
        return Vec(self, base[self.i])

    def ones(self) -> Vec:
        return Vec(self, sp.Integer(1))

    def scalar(self, name: str, **assumptions):
        return sp.Symbol(name, **assumptions)

    # the one rule
    def atom(self, summand):
        """The opaque symbol standing for Σ_{i=1}^d summand (summand depends on i)."""
        summand = sp.sympify(summand)
        if summand in self._zero_sum:
            return sp.Integer(0)
        if summand not in self._atoms:
            nonneg = bool(summand.is_nonnegative)
            self._atoms[summand] = sp.Symbol(f"Σ[{summand}]", real=True, nonnegative=nonneg or None)
        return self._atoms[summand]

    def sum(self, v) -> sp.Expr:
        expr = sp.expand(v.comp if isinstance(v, Vec) else sp.sympify(v) * 1)
        if not isinstance(v, Vec):  # a scalar summed over i
            return self.d * expr
        total = sp.Integer(0)
        for term in sp.Add.make_args(expr):
            free, dep = [], []
            for f in sp.Mul.make_args(term):
                (dep if self.i in f.free_symbols else free).append(f)
            coeff = sp.Mul(*free)
            total += coeff * (self.d if not dep else self.atom(sp.Mul(*dep)))
        return total

    # plumbing for Vec
    def _combine(self, a, b, op):
        return Vec(self, op(a.comp, b.comp))

    def _map(self, a, f):
        return Vec(self, f(a.comp))

    def _components(self, v):
        return [v.comp]


class FixedModel:
    """ℝ^n for a concrete n, with exact components.

    ``values=None``: components are real symbols ``x_1..x_n`` (for lemmas at each fixed d).
    ``values=rng``: components are random small exact rationals (for counterexamples).
    """

    general = False

    def __init__(self, n: int, rng: random.Random | None = None):
        self.d = sp.Integer(n)
        self.n = n
        self.rng = rng

    def _rational(self, positive=False, negative=False):
        r = self.rng
        v = Fraction(r.randint(1, 9), r.randint(1, 4))
        if positive:
            return sp.Rational(v.numerator, v.denominator)
        if negative or r.random() < 0.5:
            v = -v
        return sp.Rational(v.numerator, v.denominator)

    def vector(self, name: str, *, positive: bool = False, perp_to_ones: bool = False) -> Vec:
        if self.rng is None:
            kw = {"positive": True} if positive else {"real": True}
            comps = [sp.Symbol(f"{name}_{k + 1}", **kw) for k in range(self.n)]
        else:
            comps = [self._rational(positive=positive) for _ in range(self.n)]
        if perp_to_ones:
            comps[-1] = -sum(comps[:-1], sp.Integer(0))
        return Vec(self, tuple(comps))

    def ones(self) -> Vec:
        return Vec(self, tuple(sp.Integer(1) for _ in range(self.n)))

    def scalar(self, name: str, **assumptions):
        if self.rng is None:
            return sp.Symbol(name, **assumptions)
        return self._rational(positive=bool(assumptions.get("positive")),
                              negative=bool(assumptions.get("negative")))

    def sum(self, v):
        if not isinstance(v, Vec):
            return self.d * sp.sympify(v)
        return sp.Add(*v.comp)

    def _combine(self, a, b, op):
        return Vec(self, tuple(op(p, q) for p, q in zip(a.comp, b.comp)))

    def _map(self, a, f):
        return Vec(self, tuple(f(p) for p in a.comp))

    def _components(self, v):
        return list(v.comp)


Model = Union[GeneralModel, FixedModel]


# --------------------------------------------------------------------------------------------------
# the geometry, written once against a model
# --------------------------------------------------------------------------------------------------
def ones_vec(M):
    return M.ones()


def xvec(M, name="x", **kw):
    return M.vector(name, **kw)


def mean(M, v):
    """μ = 1ᵀv / d"""
    return M.sum(v) / M.d


def P(M, v):
    """Pv with P = I − 1 1ᵀ/d, applied as written: Pv = v − 1 (1ᵀv) / d."""
    one = M.ones()
    return v - one * (dot(M, one, v) / M.d)


def dot(M, u, v):
    return M.sum(u * v)


def norm(M, v):
    return sp.sqrt(dot(M, v, v))


def variance(M, v, ddof=0):
    """(1/(d−ddof)) Σ (v_i − μ)²; ddof=0 is the population variance LayerNorm uses."""
    c = v - mean(M, v)
    return M.sum(c * c) / (M.d - ddof)


def std(M, v, ddof=0):
    return sp.sqrt(variance(M, v, ddof))


def layer_norm(M, x, weight=None, bias=None, eps=0, ddof=0):
    """torch semantics: (x − μ)/√(σ² + ε) ⊙ α + β, σ² the biased variance."""
    y = (x - mean(M, x)) / sp.sqrt(variance(M, x, ddof) + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def rms_norm(M, x, weight=None, eps=0):
    """torch semantics: x / √(mean(x²) + ε) ⊙ g."""
    r = x / sp.sqrt(M.sum(x * x) / M.d + eps)
    if weight is not None:
        r = r * weight
    return r


def cos_angle(M, u, v):
    return dot(M, u, v) / (norm(M, u) * norm(M, v))


# --------------------------------------------------------------------------------------------------
# checker
# --------------------------------------------------------------------------------------------------
def _is_zero_exact(expr) -> bool:
    return sp.simplify(expr) == 0


def holds(claim, model=None) -> bool:
    """True iff every (lhs, rhs) of ``claim(model)`` satisfies simplify(lhs − rhs) == 0 exactly."""
    M = model if model is not None else GeneralModel()
    for lhs, rhs in claim(M):
        diff = lhs - rhs
        comps = diff.components() if isinstance(diff, Vec) else [diff]
        for c in comps:
            if not _is_zero_exact(c):
                return False
    return True


def holds_for_each_d(claim, dims: Iterable[int] = range(1, 17)) -> bool:
    """Lemma mode: prove the claim with symbolic components for each concrete d (exact)."""
    return all(holds(claim, FixedModel(n)) for n in dims)


def _provably_nonzero(expr) -> bool:
    """Exact: a real algebraic number is 0 iff its minimal polynomial is X."""
    expr = sp.nsimplify(expr, rational=False) if expr.has(sp.Float) else expr
    if expr.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
        return False
    if expr.is_Rational:
        return expr != 0
    X = sp.Dummy("X")
    try:
        return sp.minimal_polynomial(expr, X) != X
    except Exception:  # not algebraic or too hard: do not claim anything
        return False


def refute(claim, dims: Sequence[int] = (2, 3, 4), seeds: Sequence[int] = range(6)) -> dict | None:
    """Search exact rational instances for a provable violation. Returns the witness or None."""
    for n in dims:
        for seed in seeds:
            M = FixedModel(n, random.Random(1000 * n + seed))
            for k, (lhs, rhs) in enumerate(claim(M)):
                diff = lhs - rhs
                comps = diff.components() if isinstance(diff, Vec) else [diff]
                for j, c in enumerate(comps):
                    c = sp.simplify(c)
                    if _provably_nonzero(c):
                        return {"d": n, "seed": seed, "equation": k, "component": j,
                                "difference": str(c)}
    return None


class ProofFailure(Exception):
    pass


def require(ok: bool, step: str = "") -> None:
    """One step of a multi-step proof; a failing step makes prove() return False."""
    if not ok:
        raise ProofFailure(step)


def proof(fn: Callable[[], None]) -> Callable[[], bool]:
    """Wrap a function made of require(...) steps into a prove() -> bool."""

    def prove() -> bool:
        try:
            fn()
        except ProofFailure:
            return False
        return True

    prove.__name__ = fn.__name__
    prove.__doc__ = fn.__doc__
    return prove


def timed(fn):
    t0 = time.perf_counter()
    try:
        out = fn()
        err = None
    except Exception as e:  # a crash in a proof is a failure, reported
        out, err = False, f"{type(e).__name__}: {e}"
    return out, time.perf_counter() - t0, err


# --------------------------------------------------------------------------------------------------
# display helpers (LaTeX)
# --------------------------------------------------------------------------------------------------
class Norm(sp.Function):
    """‖v‖ for display."""

    nargs = 1

    def _eval_is_commutative(self):
        return True

    def _latex(self, printer, exp=None):
        s = r"\left\|%s\right\|" % printer._print(self.args[0])
        return s if exp is None else "%s^{%s}" % (s, exp)

    def _sympystr(self, printer):
        return "‖%s‖" % printer._print(self.args[0])


class Dot(sp.Function):
    """u·v for display."""

    nargs = 2

    def _eval_is_commutative(self):
        return True

    def _latex(self, printer, exp=None):
        s = r"%s \cdot %s" % tuple(printer._print(a) for a in self.args)
        return s if exp is None else r"\left(%s\right)^{%s}" % (s, exp)


class Mean(sp.Function):
    nargs = 1

    def _eval_is_commutative(self):
        return True

    def _latex(self, printer, exp=None):
        s = r"\mu(%s)" % printer._print(self.args[0])
        return s if exp is None else "%s^{%s}" % (s, exp)


def perp_lemma(M, x):
    """Substitutions given by G5 (proved for general d): Σx_i² = ‖Px‖² + (Σx_i)²/d, ‖Px‖² = b² ≥ 0.

    Returns (subs, a, b) with a = x·û (real) and b = ‖Px‖ (nonnegative): after ``expr.subs(subs)``
    the quantities of x are written in the plane coordinates of the decomposition x = a·û + Px.
    """
    a = sp.Symbol("a", real=True)
    b = sp.Symbol("b", nonnegative=True)
    S = M.atom(x.comp)
    Q = M.atom(x.comp ** 2)
    subs = {Q: b ** 2 + a ** 2, S: sp.sqrt(M.d) * a}
    # the lemma is re-checked at every use: ‖Px‖² = b² and x·û = a under the substitution
    px = P(M, x)
    require(sp.simplify(dot(M, px, px).subs(subs) - b ** 2) == 0, "‖Px‖² = b²")
    require(sp.simplify((dot(M, x, M.ones()) / sp.sqrt(M.d)).subs(subs) - a) == 0, "x·û = a")
    return subs, a, b


class display:
    """Symbols used only to render statements with sympy's LaTeX printer."""

    x = sp.MatrixSymbol("x", d, 1)
    y = sp.MatrixSymbol("y", d, 1)
    z = sp.MatrixSymbol("z", d, 1)
    r = sp.MatrixSymbol("r", d, 1)
    one = sp.MatrixSymbol(r"\mathbf{1}", d, 1)
    u = sp.MatrixSymbol(r"\hat{u}", d, 1)
    alpha = sp.MatrixSymbol(r"\alpha", d, 1)
    beta = sp.MatrixSymbol(r"\beta", d, 1)
    g = sp.MatrixSymbol("g", d, 1)
    P = sp.MatrixSymbol("P", d, d)
    I = sp.Identity(d)
    xi = sp.IndexedBase("x")[_i]
    i = _i
    mu = sp.Symbol(r"\mu")
    sigma = sp.Symbol(r"\sigma")
    theta = sp.Symbol(r"\theta")
    eps = sp.Symbol(r"\varepsilon")
    c = sp.Symbol("c")
    b = sp.Symbol("b")


def eq(a, b):
    return sp.Eq(a, b, evaluate=False)
