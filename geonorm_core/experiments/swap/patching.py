"""The swapped formulas and the context manager that puts them in a model's norm sites, and takes
them out again exactly (:func:`swapped`)."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ...sources.sites import NormSite, find_norm_sites

DIRECTIONS = ("auto", "remove_mean", "add_mean")
_KIND_FOR = {"remove_mean": "layernorm", "add_mean": "rmsnorm"}
_HALF = (torch.float16, torch.bfloat16)
_PATCHED = "_geonorm_swapped"  # marks a module whose forward is patched (no nesting)


def _remove_uniform(x: torch.Tensor) -> torch.Tensor:
    """P x = x - mean(x) 1 (G4); the mean of half-precision rows is taken in float32."""
    if x.dtype in _HALF:
        xf = x.float()
        return (xf - xf.mean(-1, keepdim=True)).to(x.dtype)
    return x - x.mean(-1, keepdim=True)


def _rms_formula(x: torch.Tensor, gain: torch.Tensor | None, bias: torch.Tensor | None,
                 eps: float) -> torch.Tensor:
    """gain * x / sqrt(mean(x^2) + eps) + bias (G8), in float32 for half-precision inputs."""
    h = x.float() if x.dtype in _HALF else x
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if gain is not None:
        h = h * gain.to(h.dtype)
    if bias is not None:
        h = h + bias.to(h.dtype)
    return h.to(x.dtype)


def _swapped_forward(site: NormSite, direction: str, forward: Callable) -> Callable:
    """The swapped site as a function of its input; ``forward`` is the module's own forward."""
    if direction == "add_mean":
        # G9: the RMSNorm of P x is the LayerNorm with the same gain and eps; the module's own
        # forward keeps its gain form (w, 1 + w) and dtype handling
        def add_mean(x, *args, **kwargs):
            return forward(_remove_uniform(x), *args, **kwargs)

        return add_mean

    # the site's verified formula says which parameters enter and how (sites.py)
    module, formula = site.module, site.formula
    one_plus, has_gain, has_bias = "* (1 + w)" in formula, "* w" in formula, formula.endswith("+ b")

    def remove_mean(x, *args, **kwargs):
        w = module.weight
        if one_plus:  # 1 + w in at least float32: w is small, the 1 would swallow a half's bits
            w = 1.0 + w.to(torch.promote_types(w.dtype, torch.float32))
        gain = w if one_plus or has_gain else None
        return _rms_formula(x, gain, module.bias if has_bias else None, site.eps)

    return remove_mean


def _plan(model: torch.nn.Module, direction: str,
          sites: Sequence[str] | str | None) -> tuple[str, list[NormSite]]:
    """(resolved direction, the sites to swap), or a ValueError that says what is wrong."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(map(repr, DIRECTIONS))}, got {direction!r}")
    found = find_norm_sites(model)
    if not found:
        raise ValueError(f"model ({type(model).__name__}) has no LayerNorm/RMSNorm norm sites to swap")
    if sites is not None:
        names = [sites] if isinstance(sites, str) else list(sites)
        if not names:
            raise ValueError("sites: empty; pass None to swap every site of the direction's kind")
        by_name = {s.name: s for s in found}
        missing = [n for n in names if n not in by_name]
        if missing:
            listing = ", ".join(list(by_name)[:8]) + (" ..." if len(by_name) > 8 else "")
            raise ValueError(f"sites: no norm site named {missing}; this model has {len(by_name)}: {listing}")
        found = [by_name[n] for n in dict.fromkeys(names)]
    kinds = {s.kind for s in found}
    if direction == "auto":
        if kinds == {"layernorm"}:
            direction = "remove_mean"
        elif kinds == {"rmsnorm"}:
            direction = "add_mean"
        else:
            raise ValueError(f"direction='auto': the sites mix LayerNorm and RMSNorm ({sorted(kinds)}); "
                             "pass direction='remove_mean' or 'add_mean'")
    want = _KIND_FOR[direction]
    chosen = [s for s in found if s.kind == want]
    wrong = [s.name for s in found if s.kind != want]
    if sites is not None and wrong:
        raise ValueError(f"direction={direction!r} swaps {want} sites only; {wrong[:4]} "
                         f"{'are' if len(wrong) > 1 else 'is'} not {want}")
    if not chosen:
        raise ValueError(f"direction={direction!r}: model ({type(model).__name__}) has no {want} sites "
                         f"(its sites are {sorted(kinds)})")
    return direction, chosen


@contextlib.contextmanager
def swapped(model: torch.nn.Module, *, direction: str = "auto",
            sites: Sequence[str] | str | None = None) -> Iterator[list[NormSite]]:
    """Swap the model's norms in place: LayerNorm -> RMSNorm or RMSNorm -> LayerNorm (G9).

    Each swapped module gets an instance ``forward`` computing the swapped formula from its live
    parameters (module docstring); forward hooks still fire.  On exit the previous ``forward``
    is restored exactly (an instance attribute, e.g. accelerate's, is put back; otherwise the
    attribute is deleted), so the model computes bit for bit what it computed before.

    Parameters
    ----------
    model : any torch model with norm sites (:func:`~geonorm_core.sources.sites.find_norm_sites`).
    direction : ``"auto"`` (LayerNorm model: remove the mean; RMSNorm model: add it),
        ``"remove_mean"`` or ``"add_mean"``.
    sites : module names to swap (default: every site of the kind the direction swaps, q/k norms
        included); each must be of that kind.

    Yields
    ------
    list of NormSite
        The swapped sites, in forward order.

    Raises
    ------
    ValueError
        unknown direction; no norm sites, none of the kind the direction swaps, or unknown/
        wrong-kind names in ``sites``; ``direction="auto"`` on sites mixing both kinds.
    RuntimeError
        a site is already swapped (nested ``swapped`` on the same modules).
    """
    direction, chosen = _plan(model, direction, sites)
    with _patched(chosen, direction):
        yield chosen


@contextlib.contextmanager
def _patched(chosen: list[NormSite], direction: str) -> Iterator[None]:
    """Patch the planned sites' forwards; restore them exactly on exit."""
    busy = [s.name for s in chosen if getattr(s.module, _PATCHED, False)]
    if busy:
        raise RuntimeError(f"sites already swapped (nested swapped()?): {busy[:4]}")
    saved: list[tuple[torch.nn.Module, Any]] = []
    try:
        for site in chosen:
            module = site.module
            saved.append((module, module.__dict__.get("forward", _PATCHED)))
            module.forward = _swapped_forward(site, direction, module.forward)
            setattr(module, _PATCHED, True)
        yield
    finally:
        for module, previous in saved:
            module.__dict__.pop(_PATCHED, None)
            if previous is _PATCHED:
                del module.__dict__["forward"]
            else:
                module.forward = previous
