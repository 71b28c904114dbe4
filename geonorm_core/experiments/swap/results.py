"""What a swap test found: per-site output changes (:class:`SiteChange`) and the run's end metric
(:class:`SwapResult`), as tables, JSON and Markdown."""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...analysis.accumulate import Moments
from ...analysis.report import JsonFile
from ...durable import write_text


@dataclass
class SiteChange:
    """The relative output change at one swapped site.

    ``site`` is the site's :meth:`NormSite.to_dict`; ``direct`` and ``end_to_end`` are
    :class:`~geonorm_core.analysis.accumulate.Moments` over tokens of ``||y' - y|| / ||y||`` (module
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
