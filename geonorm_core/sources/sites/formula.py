"""Which formula a norm module computes, found by running a randomized copy of it (the package
docstring, step 2): a typed :class:`Formula` for what it computes and an :class:`Identity` for
everything the analysis needs (size, eps, effective gain and bias), or the reason it cannot be
verified (:class:`Unverifiable`)."""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .candidates import eps_of, size_of, tensor_attr

_TOL = 1e-4        # relative error under which a formula "reproduces" the module
_EPS_TOL = 1e-3    # same, for the probe at var ~ eps


@dataclass(frozen=True)
class Formula:
    """``normalize(x) * gain + bias``: the standardization of ``kind`` (``"layernorm"`` subtracts
    the mean, ``"rmsnorm"`` does not), the gain's form (``None``, ``"w"`` or ``"1+w"``), a bias or not."""

    kind: str
    gain_form: str | None
    has_bias: bool

    @property
    def text(self) -> str:
        """The formula spelled out, e.g. ``"x / sqrt(mean(x^2) + eps) * (1 + w)"``."""
        text = ("(x - mean(x)) / sqrt(var(x) + eps)" if self.kind == "layernorm"
                else "x / sqrt(mean(x^2) + eps)")
        text += {None: "", "w": " * w", "1+w": " * (1 + w)"}[self.gain_form]
        return text + (" + b" if self.has_bias else "")

    def variant(self, module: torch.nn.Module) -> str:
        """The readable family (``NormSite.variant``): torch's classes by type, the rest by formula."""
        cls = type(module)
        if self.kind == "layernorm":
            if self.gain_form == "1+w":
                return "layernorm-1p"
            return "torch.LayerNorm" if cls is torch.nn.LayerNorm else "layernorm"
        if self.gain_form == "1+w":
            return "gemma"
        if cls is torch.nn.RMSNorm:
            return "torch.RMSNorm"
        return "t5" if cls.__name__.endswith("LayerNorm") else "llama"


class Unverifiable(Exception):
    """A candidate whose formula cannot be confirmed; the message says why."""


@dataclass(frozen=True)
class Identity:
    """What :func:`identify` found about one module."""

    kind: str                    # "layernorm", "rmsnorm" or "unknown"
    variant: str
    formula: str                 # Formula.text, or "unverified"
    d: int
    eps: float
    gain: np.ndarray | None      # effective per-dimension gain (1 + w for "1+w"), read-only float32
    bias: np.ndarray | None
    verified: bool
    why: str | None = None       # for kind "unknown": why no formula was confirmed


def identify(module: torch.nn.Module, width: int | None = None) -> Identity:
    """Which formula the module computes, its variant, eps, effective gain and bias."""
    d, eps = size_of(module, width), eps_of(module)
    weight, bias = tensor_attr(module, "weight"), tensor_attr(module, "bias")
    if d is None:
        return _unknown(module, 0, eps or 0.0,
                        "it normalizes over more than one axis, or its size is unknown")
    try:
        if eps is None:
            eps = _measure_eps(module, d)
        return _known(module, _probe(module, d, eps), d, eps, weight, bias, verified=True)
    except Unverifiable as why:
        if eps is not None and type(module) in (torch.nn.LayerNorm, torch.nn.RMSNorm):
            # could not run it: trust only torch's own classes, with their documented formula
            kind = "layernorm" if type(module) is torch.nn.LayerNorm else "rmsnorm"
            formula = Formula(kind, "w" if weight is not None else None, bias is not None)
            return _known(module, formula, d, eps, weight, bias, verified=False)
        return _unknown(module, d, eps or 0.0, str(why))


def _probe(module: torch.nn.Module, d: int, eps: float) -> Formula:
    """Run a randomized copy and return the formula that reproduces its output."""
    gen = torch.Generator().manual_seed(0x6E6F726D)  # private: the global RNG is left alone
    try:
        twin, w, b = _random_twin(module, gen)
        rows = torch.randn(2, 3, d, generator=gen) + 3.0 * torch.rand(2, 3, 1, generator=gen) + 1.0
        scale = max(1.0, 1e3 * math.sqrt(max(eps, 0.0)))  # var >> eps: eps cannot hide a formula
        with torch.no_grad():
            big = _run(twin, rows * scale)
            small = _run(twin, rows * math.sqrt(eps)) if eps > 0 else None
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot verify"
        raise Unverifiable(f"it could not be run on a float32 (2, 3, {d}) tensor "
                           f"({type(exc).__name__}: {exc})") from None

    x = (rows * scale).double().numpy()
    errors = {}
    for kind in ("layernorm", "rmsnorm"):
        for gain_form in ((None, "w", "1+w") if w is not None else (None,)):
            for has_bias in ((False, True) if b is not None else (False,)):
                formula = Formula(kind, gain_form, has_bias)
                errors[formula] = _rel_error(big, _reference(x, formula, w, b, eps))
    best = min(errors, key=errors.get)
    if not errors[best] < _TOL:
        raise Unverifiable("its output matches neither LayerNorm nor RMSNorm "
                           f"(closest: {best.kind}, relative error {errors[best]:.2g})")
    if small is not None:
        x_small = (rows * math.sqrt(eps)).double().numpy()
        err = _rel_error(small, _reference(x_small, best, w, b, eps))
        if not err < _EPS_TOL:
            warnings.warn(f"find_norm_sites: {type(module).__name__} does not use its eps={eps:g} "
                          f"as var + eps (relative error {err:.2g} at var ~ eps)", stacklevel=4)
    return best


def _measure_eps(module: torch.nn.Module, d: int) -> float:
    """The eps a module without an eps attribute adds to the variance, measured from its output.

    Both formulas give ``mean(y^2) = v / (v + eps)`` for unit gain, no bias and rows of variance
    (LayerNorm) or mean square (RMSNorm) ``v``, so ``eps = v (1 / mean(y^2) - 1)``; ``v`` runs down
    from 1 until the ratio is informative (``mean(y^2)`` in [0.05, 0.95]).  Rows are centered and
    the gain set to 1 and the bias to 0, so the ratio is the same for both formulas.  Returns the
    estimate rounded to 3 significant digits, or 0.0 when eps stays below 1e-12 of the variance
    even at ``v = 1e-12``; raises :class:`Unverifiable` when the module cannot be run.
    """
    gen = torch.Generator().manual_seed(0x657073)
    try:
        twin, _, _ = _random_twin(module, gen)
        for attr, value in (("weight", 1.0), ("bias", 0.0)):
            t = tensor_attr(twin, attr)
            if t is not None:
                t.fill_(value)
        row = torch.randn(4, d, generator=gen, dtype=torch.float64)
        row = row - row.mean(-1, keepdim=True)
        row = row / row.pow(2).mean(-1, keepdim=True).sqrt()  # unit variance and mean square
        for v in (10.0 ** -k for k in range(13)):
            with torch.no_grad():
                y = _run(twin, (row * math.sqrt(v)).float())
            ratio = float(np.mean(y * y))
            if 0.05 <= ratio <= 0.95:
                return float(f"{v * (1.0 / ratio - 1.0):.3g}")
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot verify"
        raise Unverifiable(f"it could not be run on a float32 (4, {d}) tensor "
                           f"({type(exc).__name__}: {exc})") from None
    return 0.0


def _random_twin(module: torch.nn.Module, gen: torch.Generator):
    """A shallow copy with its own float32 CPU tensors: weight in [0.5, 1.5), bias ~ N(0, 1/4).

    Random parameters make every candidate formula distinct (w, 1 + w and 1 never coincide),
    whatever the real weights are (Gemma initializes w = 0, Llama w = 1).  Returns the copy and
    its new weight and bias as float64 arrays (None where the module has none).
    """
    twin = copy.copy(module)  # shares submodules and hook dicts; we call forward directly
    for store in ("_parameters", "_buffers"):
        twin.__dict__[store] = {k: None if t is None else _as_float32(t).clone()
                                for k, t in module.__dict__[store].items()}
    drawn = {}
    for attr, draw in (("weight", lambda shape: 0.5 + torch.rand(shape, generator=gen)),
                       ("bias", lambda shape: 0.5 * torch.randn(shape, generator=gen))):
        current = tensor_attr(twin, attr)
        if current is not None:
            new = draw(current.shape)
            store = next((s for s in (twin._parameters, twin._buffers) if attr in s), twin.__dict__)
            store[attr] = new
            drawn[attr] = new.double().numpy()
    return twin, drawn.get("weight"), drawn.get("bias")


def _run(twin: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    out = type(twin).forward(twin, x)  # the class's forward: no hooks, no accelerate wrappers
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        raise TypeError(f"returned {type(out).__name__} "
                        f"{tuple(out.shape) if isinstance(out, torch.Tensor) else ''}")
    return out.detach().double().numpy()


def _reference(x: np.ndarray, formula: Formula, w, b, eps: float) -> np.ndarray:
    """``formula`` in float64 (G7, G8) with weight ``w`` and bias ``b``; the variance is two-pass."""
    if formula.kind == "layernorm":
        centered = x - x.mean(-1, keepdims=True)
        y = centered / np.sqrt((centered * centered).mean(-1, keepdims=True) + eps)
    else:
        y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    if formula.gain_form is not None:
        y = y * (w if formula.gain_form == "w" else 1.0 + w)
    if formula.has_bias:
        y = y + b
    return y


def _rel_error(out: np.ndarray, pred: np.ndarray) -> float:
    err = np.max(np.abs(out - pred)) / max(np.max(np.abs(pred)), 1e-30)
    return float(err) if np.isfinite(err) else math.inf


def _known(module, formula: Formula, d, eps, weight, bias, *, verified) -> Identity:
    gain = None
    if formula.gain_form is not None and weight is not None and weight.device.type != "meta":
        gain = _as_float32(weight)
        gain = (1.0 + gain if formula.gain_form == "1+w" else gain).numpy()
    bias_arr = (_as_float32(bias).numpy()
                if formula.has_bias and bias is not None and bias.device.type != "meta" else None)
    for arr in (gain, bias_arr):
        if arr is not None:
            arr.setflags(write=False)
    return Identity(kind=formula.kind, variant=formula.variant(module), formula=formula.text, d=d, eps=eps,
                    gain=gain, bias=bias_arr, verified=verified)


def _unknown(module, d, eps, why) -> Identity:
    weight = tensor_attr(module, "weight")
    gain = None
    if weight is not None and weight.device.type != "meta" and weight.dim() == 1:
        gain = _as_float32(weight).numpy()
        gain.setflags(write=False)
    return Identity(kind="unknown", variant="unknown", formula="unverified", d=d, eps=eps,
                    gain=gain, bias=None, verified=False, why=why)


def _as_float32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float32) if t.is_floating_point() else t.detach().cpu()
