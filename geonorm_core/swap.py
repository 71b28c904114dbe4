"""The swap test: does a model use LayerNorm's mean subtraction?  Take it out and measure.

SCIENCE.md G9: ``LN_{a,b}(x) = RMSNorm_{g=a}(P x) + b``, eps included.  So a LayerNorm differs
from an RMSNorm with the same gain, bias and eps only by the projection P (the mean subtraction),
and if the hidden states are already orthogonal to **1** the two are the same function.  The
paper infers from angles near 90 degrees that the mean subtraction is redundant; the swap test
checks it causally: run the model as it is and with every norm swapped, on the same tokens.

Directions
----------
``remove_mean``  each LayerNorm becomes ``gain * x / sqrt(mean(x^2) + eps) + bias`` (same gain,
                 bias, eps; Nemotron's ``1 + w`` gain stays ``1 + w``).
``add_mean``     each RMSNorm (any variant: Llama's ``w``, Gemma's ``1 + w``, T5's) computes its own
                 formula on ``P x = x - mean(x)``: by G9 that *is* the LayerNorm with the same gain
                 and eps, and it keeps each variant's gain form and dtype handling exactly.
                 The reverse control: an RMSNorm model never learned to rely on the mean.
``auto``         ``remove_mean`` for a LayerNorm model, ``add_mean`` for an RMSNorm model.

Every site of that kind is swapped, q/k norms included (Gemma-3's): the question is whether the
model depends on mean subtraction anywhere; pass ``sites=`` to swap a subset.  Whisper (wrapped in
:class:`~geonorm_core.whisper.WhisperDecoderFeed`, as ``geonorm swap-test --model whisper-base``
does) counts as a causal LM: its decoder's next-token loss on the transcript, given the speech,
with the LayerNorms of both stacks swapped (encoder sites count every frame).  Half-precision
inputs are normalized in float32 and cast back, as torch's and Hugging Face's norms do; float32
and float64 inputs are computed in their own dtype.

What is measured
----------------
Per swapped site, per token (each row of the site's input: a token, or a (head, token) pair for
q/k norms; padding excluded), the relative output change ``||y' - y|| / ||y||``:

* **direct**: on the original run, the swapped formula applied to the site's own input against
  the site's output (what the swap changes at that site, before anything downstream moves);
* **end-to-end**: the site's output in the swapped run against the original run (the swap's
  effects accumulated through the model up to that site).

Reading the direct change *(ours)*: to first order in cos θ = cos∠(x, **1**) it is
``|mean(x)| * ||g|| / ||g ⊙ x||`` for a site with gain g and no bias (removing or adding ``mean(x) 1`` moves
the output by ``mean(x) g / rms(x)``).  So an angle near 90 degrees is not enough: where a few
massive-activation dimensions dominate ``mean(x)`` and the gain is near 0 exactly there (Gemma-3),
the mean subtraction spreads them over every dimension the gain amplifies.

End metric, causal LMs: the next-token loss (mean negative log-likelihood per predicted token)
and perplexity of both runs, and their difference, each with a bootstrap confidence interval
over sequences (``scipy.stats.bootstrap``, BCa; sequences resampled in pairs, statistic =
token-weighted loss, or its difference between the runs).  Encoders (a BERT-style sentence
encoder such as all-MiniLM-L6-v2): sentence embeddings are the mean of the last hidden state over
the attention mask, L2-normalized (sentence-transformers' pooling); reported are the cosine
similarity of each sentence's original and swapped embeddings, and the Spearman rank correlation
of all pairwise similarities of :data:`SENTENCES` before and after the swap (does the encoder
still rank sentence pairs the same way?), plus the cosine over the corpus sequences.

Example
-------
>>> with swapped(model) as sites:            # every LayerNorm is an RMSNorm in here
...     out = model(**batch)
>>> result = swap_test(model, tokenizer, batches)
>>> print(result.table()); result.save("geonorm-swap")
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .accumulate import Moments
from .durable import write_text
from .report import JsonFile
from .sites import NormSite, find_norm_sites, hook_sites, hook_tensors

__all__ = ["DIRECTIONS", "SENTENCES", "SiteChange", "SwapResult", "swap_test", "swapped"]

DIRECTIONS = ("auto", "remove_mean", "add_mean")
_KIND_FOR = {"remove_mean": "layernorm", "add_mean": "rmsnorm"}
_HALF = (torch.float16, torch.bfloat16)
_PATCHED = "_geonorm_swapped"  # marks a module whose forward is patched (no nesting)

#: The encoder's sentence set: ten topics, three sentences each, so pairwise similarities have
#: structure (same-topic pairs high, the rest low) whose ranking the swap may or may not keep.
SENTENCES: tuple[str, ...] = (
    "The cat slept on the warm windowsill all afternoon.",
    "A kitten curled up in a patch of sunlight and dozed.",
    "My dog barks at the mail carrier every morning.",
    "The central bank raised interest rates by a quarter point.",
    "Inflation pushed the cost of borrowing to a ten-year high.",
    "Stock markets fell sharply after the earnings report.",
    "She scored the winning goal in the final minute of the match.",
    "The team celebrated their championship victory with the fans.",
    "The referee showed a red card after a dangerous tackle.",
    "Preheat the oven and grease a baking tray with butter.",
    "Whisk the eggs with sugar until the mixture is pale and fluffy.",
    "This soup tastes better with fresh basil and a little garlic.",
    "The telescope captured images of a distant spiral galaxy.",
    "Astronomers detected water vapour in the atmosphere of an exoplanet.",
    "The rocket lifted off and delivered the satellite into orbit.",
    "Heavy rain is expected tonight, with strong winds along the coast.",
    "The forecast says tomorrow will be sunny and unusually warm.",
    "Snow closed the mountain pass for the third day in a row.",
    "The compiler reported a type error on line forty-two.",
    "Restart the server after you update the configuration file.",
    "The new release fixes a memory leak in the network driver.",
    "The patient was given antibiotics for a bacterial infection.",
    "Regular exercise lowers the risk of heart disease.",
    "The doctor recommended more sleep and less coffee.",
    "The train to the airport leaves every twenty minutes.",
    "Our flight was delayed for three hours because of fog.",
    "We rented a small car and drove along the coastal road.",
    "The orchestra played a symphony by Beethoven last night.",
    "He practises the violin for two hours every evening.",
    "The singer's new album mixes jazz with folk melodies.",
)


# ---------------------------------------------------------------------------------------------
# 1. The swapped formulas and the context manager
# ---------------------------------------------------------------------------------------------

def _center(x: torch.Tensor) -> torch.Tensor:
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
            return forward(_center(x), *args, **kwargs)

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
    model : any torch model with norm sites (:func:`~geonorm_core.sites.find_norm_sites`).
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


# ---------------------------------------------------------------------------------------------
# 2. Results
# ---------------------------------------------------------------------------------------------

@dataclass
class SiteChange:
    """The relative output change at one swapped site.

    ``site`` is the site's :meth:`NormSite.to_dict`; ``direct`` and ``end_to_end`` are
    :class:`~geonorm_core.accumulate.Moments` over tokens of ``||y' - y|| / ||y||`` (module
    docstring): ``.mean``, ``.std`` (population SD over tokens), ``.max``, ``.count``.
    """

    site: dict
    direct: Moments = field(default_factory=Moments)
    end_to_end: Moments = field(default_factory=Moments)

    def to_dict(self) -> dict:
        return {"site": self.site, "direct": self.direct.to_dict(), "end_to_end": self.end_to_end.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping) -> SiteChange:
        return cls(dict(d["site"]), Moments.from_dict(d["direct"]), Moments.from_dict(d["end_to_end"]))


@dataclass
class SwapResult(JsonFile):
    """What :func:`swap_test` measured.

    Attributes
    ----------
    meta : model class and name, direction, numbers of sites, tokens and sequences, settings.
    sites : module name -> :class:`SiteChange`, in forward order.
    metric : the end metric (plain JSON; NaN stored as None).  Causal LM (``kind="causal-lm"``):
        ``loss``/``ppl`` -> ``{"original", "swapped"}``, ``loss_ci``/``ppl_ci`` -> ``[lo, hi]`` per
        run, ``delta_loss`` and ``delta_loss_ci`` (swapped - original), ``ppl_ratio`` and
        ``ppl_ratio_ci`` (= exp of the former), ``ci_method`` (``"BCa"``, or ``"percentile"`` where BCa is
        undefined, per interval), ``tokens``, ``sequences``, and the per-sequence
        ``per_sequence`` -> ``{"tokens", "nll_original", "nll_swapped"}`` (NLL sums).
        Encoder (``kind="encoder"``): ``cosine_mean``, ``cosine_min``, ``cosine`` (per sentence),
        ``spearman`` (pairwise similarities, original vs swapped), ``pairs``,
        ``similarity_change_mean`` (mean |change| of a pairwise cosine), ``corpus_cosine_mean``,
        ``corpus_cosine_min``, ``sentences``.
    """

    meta: dict
    sites: dict[str, SiteChange]
    metric: dict

    # -- data ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"meta": _json_safe(self.meta), "sites": {k: v.to_dict() for k, v in self.sites.items()},
                "metric": _json_safe(self.metric)}

    @classmethod
    def from_dict(cls, d: Mapping) -> SwapResult:
        return cls(meta=dict(d["meta"]), sites={k: SiteChange.from_dict(v) for k, v in d["sites"].items()},
                   metric=dict(d["metric"]))

    def save(self, out_dir: str | os.PathLike) -> list[str]:
        """Write ``swap.json`` and ``swap.md`` (the full :meth:`table`) to ``out_dir``; return the paths."""
        os.makedirs(out_dir, exist_ok=True)
        paths = [os.path.join(out_dir, "swap.json"), os.path.join(out_dir, "swap.md")]
        self.to_json(paths[0])
        write_text(paths[1], self.table() + "\n")
        return paths

    # -- tables ----------------------------------------------------------------------------
    def top_sites(self, n: int = 5, *, by: str = "end_to_end") -> list[str]:
        """The ``n`` site names with the largest mean relative change (``by``: end_to_end or direct)."""
        if by not in ("end_to_end", "direct"):
            raise ValueError(f"by must be 'end_to_end' or 'direct', got {by!r}")
        key = lambda name: _nan_low(getattr(self.sites[name], by).mean)
        return sorted(self.sites, key=key, reverse=True)[:n]

    def table(self, top: int | None = None) -> str:
        """Markdown: the end metric, the change per role, and per site (all, or the ``top`` by
        end-to-end change)."""
        m, meta = self.metric, self.meta
        what = {"remove_mean": "mean subtraction removed (LayerNorm -> RMSNorm)",
                "add_mean": "mean subtraction added (RMSNorm -> LayerNorm)"}[meta["direction"]]
        name = meta.get("model_name") or meta["model"]
        lines = [f"### Swap test: {name}: {what} at {len(self.sites)} sites", ""]
        if m["kind"] == "causal-lm":
            conf = f"{100 * meta['confidence']:g}% CI"
            lines += [f"| run | loss ({conf}) | perplexity ({conf}) |", "|---|---|---|"]
            for run, label in (("original", "as is"), ("swapped", "swapped")):
                lines.append(f"| {label} | {_ci(m['loss'][run], m['loss_ci'][run], 4)} | "
                             f"{_ci(m['ppl'][run], m['ppl_ci'][run], 3)} |")
            delta = _ci(m["delta_loss"], m["delta_loss_ci"], 4, sign=True)
            ratio = _ci(m["ppl_ratio"], m["ppl_ratio_ci"], 4)
            lines.append(f"| swapped − as is | Δloss {delta} | ratio {ratio} |")
            methods = sorted({v for v in m.get("ci_method", {}).values() if v}) or ["none: < 2 sequences"]
            boot = f"{'/'.join(methods)}, {meta['n_resamples']} resamples"
            lines += ["", (f"{m['tokens']} predicted tokens in {m['sequences']} sequences; CI: paired "
                           f"bootstrap over sequences ({boot}).")]
        else:
            rows = [(f"cosine(original, swapped) over {m['sentences']} sentences: mean / min",
                     f"{_f(m['cosine_mean'], 4)} / {_f(m['cosine_min'], 4)}"),
                    (f"Spearman ρ of the {m['pairs']} pairwise similarities", _f(m["spearman"], 4)),
                    ("mean abs change of a pairwise similarity", _f(m["similarity_change_mean"], 4)),
                    (f"cosine over {m['corpus_sequences']} corpus sequences: mean / min",
                     f"{_f(m['corpus_cosine_mean'], 4)} / {_f(m['corpus_cosine_min'], 4)}")]
            lines += ["| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
        lines += ["", ("Relative output change ‖y′ − y‖/‖y‖ per token (mean ± SD, max); direct: swapped "
                       "formula on the original input; end-to-end: swapped run vs original run."), ""]
        lines += self._role_table() + [""]
        names = self.top_sites(top) if top is not None else list(self.sites)
        title = f"top {len(names)} sites by end-to-end change" if top is not None else "every site"
        lines += [f"Per site ({title}):", "",
                  "| site | layer | role | direct | direct max | end-to-end | end-to-end max |",
                  "|---|---|---|---|---|---|---|"]
        for name in names:
            c = self.sites[name]
            lines.append(f"| {name} | {_f(c.site.get('layer'))} | {c.site.get('role')} | {_pm(c.direct)} | "
                         f"{_f(c.direct.max, 3, pct=True)} | {_pm(c.end_to_end)} | "
                         f"{_f(c.end_to_end.max, 3, pct=True)} |")
        return "\n".join(lines)

    def _role_table(self) -> list[str]:
        """Per role: the site means averaged over layers, and the largest site mean."""
        roles: dict[str, list[SiteChange]] = {}
        for c in self.sites.values():
            roles.setdefault(c.site.get("role") or "other", []).append(c)
        head = ("role", "sites", "direct (mean over sites)", "end-to-end (mean over sites)",
                "end-to-end (largest site)")
        rows = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for role, changes in roles.items():
            direct = _mean([c.direct.mean for c in changes])
            e2e = [c.end_to_end.mean for c in changes]
            cells = (role, str(len(changes)), _f(direct, 3, pct=True), _f(_mean(e2e), 3, pct=True),
                     _f(max(e2e, key=_nan_low), 3, pct=True))
            rows.append("| " + " | ".join(cells) + " |")
        return rows


def _nan_low(v: float | None) -> float:
    return -math.inf if v is None or not math.isfinite(v) else v


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _f(v: Any, digits: int = 3, *, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, int):
        return str(v)
    return f"{100 * v:.{digits}f}%" if pct else f"{v:.{digits}f}"


def _pm(q: Moments) -> str:
    return "–" if q.count == 0 else f"{100 * q.mean:.3f}% ± {100 * q.std:.3f}%"


def _ci(v: float | None, ci: Sequence[float | None], digits: int, *, sign: bool = False) -> str:
    """``v [lo, hi]``; values of 10^4 and more (a broken model's perplexity) in e-notation."""
    def fmt(x: float) -> str:
        spec = f".{digits - 1}e" if abs(x) >= 1e4 else f".{digits}f"
        return format(x, ("+" if sign else "") + spec)

    lo, hi = ci
    bounds = "" if lo is None or hi is None else f" [{fmt(lo)}, {fmt(hi)}]"
    return ("–" if v is None else fmt(v)) + bounds


def _json_safe(v: Any) -> Any:
    """Plain JSON: NumPy scalars and arrays to Python, non-finite floats to None."""
    if isinstance(v, Mapping):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_json_safe(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v)]
    if isinstance(v, (np.integer, np.bool_)):
        return v.item()
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    return v


# ---------------------------------------------------------------------------------------------
# 3. The test
# ---------------------------------------------------------------------------------------------

class _Probe:
    """Forward hooks on the swapped sites.

    Original run: the direct change (swapped formula on the site's input vs its output), and
    the output kept.  Swapped run: the end-to-end change against the kept output.  Outside a
    run (``mode=None``) nothing is recorded.
    """

    def __init__(self, sites: list[NormSite], alternatives: dict[str, Callable]) -> None:
        self.sites, self.alternatives = sites, alternatives
        self.changes = {s.name: SiteChange(s.to_dict()) for s in sites}
        self.mode: str | None = None
        self.mask: torch.Tensor | None = None  # (B, T) bool, CPU: the real tokens
        self.kept: dict[str, list[torch.Tensor]] = {s.name: [] for s in sites}
        self._handles: list = []

    def __enter__(self) -> _Probe:
        self._handles += hook_sites(self.sites, lambda site: self._hook(site.name))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str) -> Callable:
        def hook(module, args, kwargs, output):
            if self.mode is None:
                return
            x, y = hook_tensors(args, kwargs, output)
            if self.mode == "original":
                alt = self.alternatives[name](x)
                self.changes[name].direct.update(self._rows(_relative_change(alt, y)))
                self.kept[name].append(y.detach().clone())
            else:
                if not self.kept[name]:
                    raise RuntimeError(f"site {name!r} ran more often in the swapped run than in the "
                                       "original")
                ref = self.kept[name].pop(0)
                self.changes[name].end_to_end.update(self._rows(_relative_change(y, ref)))

        return hook

    def _rows(self, rel: torch.Tensor) -> np.ndarray:
        """The values of the real tokens: the mask matched to the site's row layout."""
        values = rel.cpu().numpy()
        mask = self.mask
        if mask is None:
            return values
        b, t = mask.shape
        lead = tuple(values.shape)
        if lead == (b, t):
            keep = mask
        elif len(lead) == 3 and lead[0] == b and lead[2] == t:  # (B, heads, T): q/k norms
            keep = mask[:, None, :].expand(lead)
        elif len(lead) == 3 and lead[:2] == (b, t):  # (B, T, heads)
            keep = mask[:, :, None].expand(lead)
        else:
            return values
        return values[keep.numpy()]

    def clear(self) -> None:
        for kept in self.kept.values():
            kept.clear()


def _relative_change(new: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """||new - ref|| / ||ref|| per row, in float32 (float64 for float64 rows); NaN where ref is 0.

    float32 suffices: the difference of two nearby float32 numbers is exact, and the norms carry a
    relative error of ~1e-7, far below any change worth reporting.
    """
    dtype = torch.promote_types(new.dtype, torch.float32)
    new, ref = new.detach().to(dtype), ref.detach().to(dtype)
    den = torch.linalg.vector_norm(ref, dim=-1)
    rel = torch.linalg.vector_norm(new - ref, dim=-1) / den
    return torch.where(den > 0, rel, torch.full_like(rel, math.nan))


def _whisper_feed(model: torch.nn.Module) -> bool:
    """Is it geonorm's Whisper wrapper (a causal LayerNorm decoder conditioned on speech)?"""
    from .whisper import WhisperDecoderFeed

    return isinstance(model, WhisperDecoderFeed)


def _logits(model: torch.nn.Module, output: Any) -> torch.Tensor:
    """The next-token logits of a causal LM's output."""
    if isinstance(output, torch.Tensor):
        # WhisperDecoderFeed returns the decoder's last hidden state; Whisper's output projection
        # is tied to the decoder's token embedding
        return torch.nn.functional.linear(output, model.model.decoder.embed_tokens.weight)
    return output.logits


def _task(model: torch.nn.Module) -> str:
    """``"causal-lm"`` or ``"encoder"``."""
    if _whisper_feed(model):
        return "causal-lm"
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"swap_test supports causal LMs and encoders, not encoder-decoder models "
                         f"({type(model).__name__}; Whisper runs wrapped in whisper.WhisperDecoderFeed)")
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = type(model).__name__
    causal = {c for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
              for c in ([v] if isinstance(v, str) else v)}
    return "causal-lm" if name in causal or name.endswith(("ForCausalLM", "LMHeadModel")) else "encoder"


def _inputs(model: torch.nn.Module, batch: Mapping[str, Any]) -> tuple[dict, torch.Tensor]:
    """The batch on the model's device, and its (B, T) bool mask of real tokens on the CPU."""
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise TypeError(f"batch must be a dict with 'input_ids' (and optionally 'attention_mask'), "
                        f"as tokenizers make them; got {type(batch).__name__}")
    device = next(model.parameters()).device
    inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    ids = inputs["input_ids"]
    if ids.ndim != 2:
        raise ValueError(f"batch['input_ids'] must have shape (batch, seq_len), got {tuple(ids.shape)}")
    mask = inputs.get("attention_mask")
    if mask is not None and tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"batch['attention_mask'] has shape {tuple(mask.shape)}, but input_ids has "
                         f"{tuple(ids.shape)}")
    rows = torch.ones(ids.shape, dtype=torch.bool) if mask is None else mask.detach().cpu() != 0
    return inputs, rows


def _sequence_nll(logits: torch.Tensor, ids: torch.Tensor,
                  rows: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per sequence: the summed next-token NLL (float64) and the number of predicted tokens.

    Position t predicts token t + 1 where both are real tokens.  One sequence at a time, so a
    262k-entry vocabulary never needs more than one sequence's log-softmax in memory.
    """
    sums, counts = [], []
    valid = (rows[:, :-1] & rows[:, 1:]).to(logits.device)
    for b in range(logits.shape[0]):
        nll = torch.nn.functional.cross_entropy(logits[b, :-1].float(), ids[b, 1:], reduction="none")
        sums.append(float(nll.double()[valid[b]].sum()))
        counts.append(int(valid[b].sum()))
    return np.array(sums), np.array(counts, dtype=np.int64)


def _embed(output: Any, rows: torch.Tensor) -> torch.Tensor:
    """Mean pooling of the last hidden state over the real tokens, L2-normalized (float64)."""
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None:
        raise TypeError("swap_test: the encoder's output has no last_hidden_state")
    mask = rows.to(hidden.device, torch.float64)[..., None]
    pooled = (hidden.double() * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled, dim=-1).cpu()


def swap_test(model: torch.nn.Module, tokenizer: Any, batches: Iterable[Mapping[str, Any]], *,
              direction: str = "auto", sites: Sequence[str] | str | None = None,
              sentences: Sequence[str] | None = None, n_resamples: int = 9999, confidence: float = 0.95,
              seed: int = 0, meta: Mapping | None = None,
              progress: Callable[[int], None] | None = None) -> SwapResult:
    """Run ``model`` as it is and with its norms swapped on the same batches; compare.

    Parameters
    ----------
    model : a Hugging Face causal LM or encoder (e.g. ``BertModel``), or Whisper wrapped in
        :class:`~geonorm_core.whisper.WhisperDecoderFeed` (a causal decoder; batches from
        :func:`~geonorm_core.whisper.whisper_batches`), in eval mode.
    tokenizer : the model's tokenizer; needed for encoders (it tokenizes ``sentences``), unused
        for causal LMs (may be None).
    batches : dicts as tokenizers make them (``input_ids``, optional ``attention_mask``), e.g.
        from :func:`~geonorm_core.corpus.token_batches`.
    direction, sites : as :func:`swapped` (default: every site of the model's norm kind).
    sentences : the encoder's sentence set (default :data:`SENTENCES`); at least 3.  Not
        accepted for causal LMs.
    n_resamples, confidence, seed : of the bootstrap confidence intervals (causal LMs).
    meta : extra JSON-able fields for ``result.meta`` (the CLI records model name and settings).
    progress : called with the number of tokens done after each batch.

    Returns
    -------
    SwapResult
        per-site relative output changes and the end metric (module docstring).

    Raises
    ------
    ValueError
        bad direction/sites (see :func:`swapped`), no tokens, too few sentences, ``sentences``
        for a causal LM, an encoder-decoder model, bad ``confidence``/``n_resamples``.
    """
    direction, chosen = _plan(model, direction, sites)  # first: bad direction/sites/no norms
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive int, got {n_resamples!r}")
    task = _task(model)
    if task == "causal-lm" and sentences is not None:
        raise ValueError("sentences: only encoders are compared on a sentence set; a causal LM is "
                         "compared by its next-token loss on the batches")
    if task == "encoder":
        sentences = list(SENTENCES if sentences is None else sentences)
        if len(sentences) < 3 or not all(isinstance(s, str) and s.strip() for s in sentences):
            raise ValueError(f"sentences: need at least 3 non-empty strings, got {len(sentences)}")
        if tokenizer is None:
            raise ValueError("tokenizer: an encoder needs its tokenizer for the sentence set")
    alternatives = {s.name: _swapped_forward(s, direction, s.module.forward) for s in chosen}

    def reduce(out, inputs, rows):
        """What is kept of one run: per-sequence NLL sums and counts, or sentence embeddings."""
        if task == "causal-lm":
            return _sequence_nll(_logits(model, out), inputs["input_ids"], rows)
        return _embed(out, rows)

    def both_runs(inputs, rows, probe=None):
        """``reduce`` of the model's output as is and swapped (the probe records if given)."""
        kwargs = {"use_cache": False} if task == "causal-lm" and not _whisper_feed(model) else {}
        try:
            with torch.inference_mode():
                if probe is not None:
                    probe.mode, probe.mask = "original", rows
                # reduced at once: a big vocabulary's logits are not held twice
                orig = reduce(model(**inputs, **kwargs), inputs, rows)
                if probe is not None:
                    probe.mode = "swapped"
                with _patched(chosen, direction):
                    swap = reduce(model(**inputs, **kwargs), inputs, rows)
        finally:
            if probe is not None:
                probe.mode, probe.mask = None, None
                probe.clear()
        return orig, swap

    tokens, nll, counts, corpus_cos = 0, ([], []), [], []
    with _Probe(chosen, alternatives) as probe:
        for batch in batches:
            inputs, rows = _inputs(model, batch)
            orig, swap = both_runs(inputs, rows, probe)
            if task == "causal-lm":
                nll[0].append(orig[0])
                nll[1].append(swap[0])
                counts.append(orig[1])
            else:
                corpus_cos.append((orig * swap).sum(-1).numpy())
            tokens += int(rows.sum())
            if progress is not None:
                progress(tokens)
    if tokens == 0:
        raise ValueError("batches: no tokens were run (empty corpus, or every token masked out)")
    if task == "causal-lm":
        metric = _lm_metric(np.concatenate(nll[0]), np.concatenate(nll[1]), np.concatenate(counts),
                            n_resamples=n_resamples, confidence=confidence, seed=seed)
    else:  # the sentence set gives the end metric only; the site statistics are over the batches
        enc = tokenizer(sentences, padding=True, truncation=True, return_tensors="pt")
        e_orig, e_swap = both_runs(*_inputs(model, enc))
        metric = _encoder_metric(e_orig.numpy(), e_swap.numpy(), np.concatenate(corpus_cos))

    info = {"model": type(model).__name__, "task": task, "direction": direction, "sites": len(chosen),
            "qk_sites": sum(s.role in ("q_norm", "k_norm") for s in chosen), "tokens": tokens,
            "n_resamples": n_resamples, "confidence": confidence, "seed": seed, **dict(meta or {})}
    return SwapResult(meta=info, sites=probe.changes, metric=metric)


def _lm_metric(nll_orig: np.ndarray, nll_swap: np.ndarray, counts: np.ndarray, *, n_resamples: int,
               confidence: float, seed: int) -> dict:
    """Loss, perplexity and their change, with paired bootstrap CIs over sequences."""
    keep = counts > 0  # a one-token sequence predicts nothing
    o, s, n = nll_orig[keep], nll_swap[keep], counts[keep].astype(np.float64)
    if n.size == 0:
        raise ValueError("batches: no sequence has two tokens, so there is no next-token loss")

    def loss(a, m, axis=-1):
        return a.sum(axis) / m.sum(axis)

    def delta(a, b, m, axis=-1):
        return (b.sum(axis) - a.sum(axis)) / m.sum(axis)

    boot = {"n_resamples": n_resamples, "confidence": confidence}
    loss_o, loss_s, d = loss(o, n), loss(s, n), delta(o, s, n)
    (ci_o, how_o), (ci_s, how_s), (ci_d, how_d) = (
        _bootstrap((o, n), loss, seed=[seed, 0], **boot), _bootstrap((s, n), loss, seed=[seed, 1], **boot),
        _bootstrap((o, s, n), delta, seed=[seed, 2], **boot))
    return {
        "kind": "causal-lm", "tokens": int(n.sum()), "sequences": int(n.size),
        "loss": {"original": loss_o, "swapped": loss_s},
        "loss_ci": {"original": ci_o, "swapped": ci_s},
        "ppl": {"original": math.exp(loss_o), "swapped": math.exp(loss_s)},
        "ppl_ci": {"original": [_exp(v) for v in ci_o], "swapped": [_exp(v) for v in ci_s]},
        "delta_loss": d, "delta_loss_ci": ci_d,
        "ppl_ratio": math.exp(d), "ppl_ratio_ci": [_exp(v) for v in ci_d],
        "ci_method": {"original": how_o, "swapped": how_s, "delta": how_d},
        "per_sequence": {"tokens": n.astype(np.int64), "nll_original": o, "nll_swapped": s},
    }


def _exp(v: float) -> float:
    return math.exp(v) if math.isfinite(v) else math.nan


def _bootstrap(samples: tuple[np.ndarray, ...], statistic: Callable, *, n_resamples: int, confidence: float,
               seed: list[int]) -> tuple[list[float], str | None]:
    """([lo, hi], method) of a paired BCa bootstrap over sequences; NaNs with fewer than 2 sequences.

    Where BCa is undefined (every resample gives the same value, e.g. a swap that changes
    nothing) the percentile interval is used, which is then that value twice.
    """
    from scipy import stats

    if samples[0].size < 2:
        return [math.nan, math.nan], None
    lo = hi = math.nan
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DegenerateDataWarning: handled by the fallback
            res = stats.bootstrap(samples, statistic, n_resamples=n_resamples, confidence_level=confidence,
                                  paired=True, vectorized=True, axis=-1, method=method,
                                  rng=np.random.default_rng(seed))
        lo, hi = (float(v) for v in res.confidence_interval)
        if math.isfinite(lo) and math.isfinite(hi):
            return [lo, hi], method
    return [lo, hi], None


def _encoder_metric(e_orig: np.ndarray, e_swap: np.ndarray, corpus_cos: np.ndarray) -> dict:
    """Cosine per sentence and the rank agreement of all pairwise similarities."""
    from scipy import stats

    cos = (e_orig * e_swap).sum(-1)
    iu = np.triu_indices(len(e_orig), k=1)
    sim_o, sim_s = (e_orig @ e_orig.T)[iu], (e_swap @ e_swap.T)[iu]
    return {
        "kind": "encoder", "sentences": len(cos), "pairs": len(sim_o),
        "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "cosine": cos,
        "spearman": float(stats.spearmanr(sim_o, sim_s).statistic),
        "similarity_change_mean": float(np.abs(sim_s - sim_o).mean()),
        "corpus_sequences": int(corpus_cos.size),
        "corpus_cosine_mean": float(corpus_cos.mean()), "corpus_cosine_min": float(corpus_cos.min()),
    }
