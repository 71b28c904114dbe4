"""The report of an analysis: per-site statistics, the paper's tables, figures.

A :class:`Report` is plain data -- metadata and one :class:`SiteStats` per norm
site -- so reports merge (across batches, processes, machines) and round-trip
through JSON.  Everything a reader sees is derived here:

* :meth:`Report.layers` -- one row per transformer block, the paper's columns:
  the residual stream entering the first norm ("hidden", LN1's input), the
  outputs of the block's two norms (post-LN1, post-LN2), norms and rotations;
* :meth:`Report.table` -- Tables 2-4 of the paper for this model, per layer and
  averaged over layers, with SDs over tokens, the paper's "±" convention
  (sqrt(sum_l sigma_l^2) / L, labelled as such), and the random baseline of
  G14 beside the angles (its SD, the KS distance of the measured
  angle histogram from the Beta null, and the fraction of tokens outside the
  null's 99.9% interval);
* :meth:`Report.save` -- a folder with report.json, sites.csv, tables.md, report.html (one
  self-contained page, :mod:`geonorm_core.analysis.report_html`) and PNG figures;
* ``Report._repr_html_`` -- the compact view notebooks show.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..durable import write_json, write_text
from .accumulate import SiteStats
from .baseline import baseline_angle_sd, compare_to_baseline

#: The two norms of a block, in the order the residual stream meets them, by architecture
#: family: pre-LN blocks (GPT-2, Llama, ...) and post-LN blocks (BERT).
_BLOCK_ROLES = (("LN1", "LN2"), ("post_attn", "post_mlp"))
_ROLE_LABEL = {"LN1": "LN1", "LN2": "LN2", "post_attn": "attn-LN", "post_mlp": "mlp-LN"}


class JsonFile:
    """``to_json``/``from_json`` for a class with ``to_dict``/``from_dict`` (strict JSON: no NaN).

    ``to_json`` writes atomically (:mod:`geonorm_core.durable`): the old file or the new one, never a part."""

    def to_json(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict(), indent=None)

    @classmethod
    def from_json(cls, path: str | os.PathLike):
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


@dataclass
class Report(JsonFile):
    """Statistics of every measured norm site of one model.

    Attributes
    ----------
    meta : model, tokens, settings (plain JSON).
    sites : module name -> :class:`SiteStats`; ``sites[name].angle_hidden.mean``,
        ``.std``, ``.min``, ``.max``, ``.histogram``; ``sites[name].layer``, ``.role``,
        ``.kind``, ``.d``, ``.tokens``.
    """

    meta: dict
    sites: dict[str, SiteStats] = field(default_factory=dict)

    # -- data ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"meta": self.meta, "sites": {k: v.to_dict() for k, v in self.sites.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> Report:
        return cls(meta=dict(d["meta"]), sites={k: SiteStats.from_dict(v) for k, v in d["sites"].items()})

    def merge(self, other: Report) -> Report:
        """Fold another report of the same model and sites into this one; return self."""
        if set(other.sites) != set(self.sites):
            raise ValueError("cannot merge reports over different norm sites")
        for name, site in self.sites.items():
            site.merge(other.sites[name])
        return self

    @property
    def tokens(self) -> int:
        """Tokens counted at the first site (every site sees every token)."""
        return next(iter(self.sites.values())).tokens if self.sites else 0

    # -- the paper's tables ----------------------------------------------------------------
    def block_roles(self) -> tuple[str, str]:
        """The roles of the block's two norms: ("LN1", "LN2") pre-LN, ("post_attn", "post_mlp") post-LN."""
        roles = {s.meta.get("role") for s in self.sites.values()}
        for pair in _BLOCK_ROLES:
            if pair[0] in roles:
                return pair
        return _BLOCK_ROLES[0]

    def block_labels(self) -> tuple[str, str]:
        """How tables and figures name the block's two norms (LN1/LN2, or attn-LN/mlp-LN post-LN)."""
        return tuple(_ROLE_LABEL[r] for r in self.block_roles())

    def layers(self) -> list[dict]:
        """One row per (stack, layer): the paper's per-layer columns, SD over tokens.

        Keys: stack, layer, d, tokens; hidden_angle (mean, sd) from the first norm's input;
        post1_angle, post2_angle; hidden_norm, post1_norm; rotation1, rotation2;
        gap1 (LN-RMS gap at the first norm); max_abs (hidden); baseline_sd, ks,
        outside (fraction outside the null's 99.9% interval).
        """
        first, second = self.block_roles()
        blocks: dict[tuple, dict[str, SiteStats]] = {}
        for site in self.sites.values():
            m = site.meta
            if m.get("layer") is None or m.get("role") not in (first, second):
                continue
            blocks.setdefault((m.get("stack") or "", m["layer"]), {})[m["role"]] = site
        rows = []
        for (stack, layer), pair in sorted(blocks.items()):
            a, b = pair.get(first), pair.get(second)
            ref = a or b
            d = int(ref.meta["d"])
            row: dict[str, Any] = {"stack": stack, "layer": layer, "d": d, "tokens": ref.tokens}
            row["hidden_angle"] = _ms(ref.angle_hidden)
            row["hidden_norm"] = _ms(ref.norm_hidden)
            row["max_abs"] = _ms(ref.max_abs_hidden)
            row["post1_angle"] = _ms(a.quantities.get("angle_post")) if a else None
            row["post2_angle"] = _ms(b.quantities.get("angle_post")) if b else None
            row["post1_norm"] = _ms(a.quantities.get("norm_post")) if a else None
            row["rotation1"] = _ms(a.quantities.get("rotation")) if a else None
            row["rotation2"] = _ms(b.quantities.get("rotation")) if b else None
            row["gap1"] = _ms(a.ln_rms_gap) if a else None
            row["baseline_sd"] = baseline_angle_sd(d).sd if d >= 2 else math.nan
            if d >= 2 and ref.angle_hidden.histogram.total > 0:
                cmp = compare_to_baseline(ref.angle_hidden.histogram, d)
                row["ks"], row["outside"] = cmp["ks"], cmp["outside_fraction"]
            else:
                row["ks"] = row["outside"] = math.nan
            rows.append(row)
        return rows

    def averages(self) -> dict:
        """Each per-layer column averaged over layers: the mean of the layer means, the mean
        of the layer SDs, and the paper's "±" = sqrt(sum_l sigma_l^2) / L."""
        rows = self.layers()
        out: dict[str, Any] = {"layers": len(rows)}
        for key in ("hidden_angle", "post1_angle", "post2_angle", "hidden_norm", "post1_norm",
                    "rotation1", "rotation2", "gap1", "max_abs"):
            vals = [r[key] for r in rows if r.get(key) is not None]
            if not vals:
                out[key] = None
                continue
            means = np.array([v[0] for v in vals])
            sds = np.array([v[1] for v in vals])
            out[key] = {"mean": float(means.mean()), "sd": float(sds.mean()),
                        "paper_pm": float(np.sqrt((sds ** 2).sum()) / len(sds))}
        return out

    def table(self) -> str:
        """The paper's Tables 2-4 for this model, as Markdown."""
        first, second = self.block_labels()
        rows, avg = self.layers(), self.averages()
        meta = self.meta
        label = f" (partial: {self.tokens} tokens)" if meta.get("partial") else ""
        lines = [f"# geonorm report: {meta.get('model_name') or meta.get('model', 'model')}{label}", ""]
        lines.append(f"{self.tokens} tokens; {len(rows)} layers; norm sites: {len(self.sites)}; "
                     f"first token {'excluded' if meta.get('exclude_first_token') else 'included'}.")
        if rows:
            d = rows[0]["d"]
            lines.append(f"Random baseline (G14, rotation-invariant x, d={d}): angle with 1 = 90° ± "
                         f"{baseline_angle_sd(d).sd:.2f}° (SD).")
        lines += ["", f"## Per layer (mean ± SD over tokens; {first}/{second} = the block's two norms)", ""]
        lines.append(f"| layer | angle hidden (°) | angle post-{first} | angle post-{second} | baseline SD | KS "
                     f"| outside 99.9% | ‖hidden‖ | ‖post-{first}‖ | max abs(hidden) | rotation {first} "
                     f"| rotation {second} | LN–RMS gap |")
        lines.append("|" + "---|" * 13)
        for r in rows:
            name = f"{r['stack'][:3]}.{r['layer']}" if r["stack"] else str(r["layer"])
            lines.append(f"| {name} | {_pm(r['hidden_angle'])} | {_pm(r['post1_angle'])} | "
                         f"{_pm(r['post2_angle'])} | {r['baseline_sd']:.2f} | {r['ks']:.3f} | "
                         f"{_pct(r['outside'])} | {_pm(r['hidden_norm'], 1)} | {_pm(r['post1_norm'], 1)} | "
                         f"{_pm(r['max_abs'], 1)} | {_pm(r['rotation1'])} | {_pm(r['rotation2'])} | "
                         f"{_pm(r['gap1'], 4)} |")
        lines += ["", "## Averaged over layers (the paper's Tables 2-4)", "",
                  "Mean of the per-layer means; SD = mean of the per-layer SDs over tokens; "
                  "paper ± = sqrt(Σ σ_l²)/L, the paper's convention (a standard error of the layer "
                  "average, not a spread).", "",
                  "| quantity | mean | SD over tokens | paper ± |", "|---|---:|---:|---:|"]
        labels = {"hidden_angle": "angle with 1, hidden (Table 2)",
                  "post1_angle": f"angle with 1, post-{first} (Table 2)",
                  "post2_angle": f"angle with 1, post-{second} (Table 2)",
                  "hidden_norm": "L2 norm, hidden (Table 3)", "post1_norm": f"L2 norm, post-{first} (Table 3)",
                  "rotation1": f"rotation hidden ↔ post-{first} (Table 4)",
                  "rotation2": f"rotation hidden ↔ post-{second} (Table 4)",
                  "gap1": f"LN–RMS gap at {first} (G9)", "max_abs": "max abs(hidden)"}
        for key, label in labels.items():
            v = avg.get(key)
            if v:
                digits = 4 if key == "gap1" else 2
                lines.append(f"| {label} | {v['mean']:.{digits}f} | {v['sd']:.{digits}f} | "
                             f"{v['paper_pm']:.{digits}f} |")
        if rows:
            from .paper import markdown_table, paper_summaries, summary

            lines += ["", "## Beside the paper's models (Tables 2-4, averaged over layers)", "",
                      ("Angles: mean ± SD over tokens; random baseline: 90° ± its SD at that d; the paper's "
                       "rows are as published (1M tokens)."), "",
                      markdown_table([summary(self)] + paper_summaries()).rstrip("\n")]
        return "\n".join(lines) + "\n"

    # -- files -----------------------------------------------------------------------------
    def site_table(self) -> str:
        """Mean ± SD over rows of every quantity, one line per site: the table for sources with no layers."""
        names = list(next(iter(self.sites.values())).quantities)
        lines = [f"# geonorm report: {self.meta.get('model', 'arrays')}", "",
                 "| site | rows | d | " + " | ".join(names) + " |", "|---|---:|---:|" + "---|" * len(names)]
        for name, s in self.sites.items():
            cells = [f"{s[q].mean:.4g} ± {s[q].std:.3g}" if s[q].count else "–" for q in names]
            lines.append(f"| {name} | {s.tokens} | {s.meta.get('d')} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self, path: str | os.PathLike) -> None:
        """One row per site: metadata and mean/std/min/max of every quantity."""
        names = list(next(iter(self.sites.values())).quantities) if self.sites else []
        head = ["name", "stack", "layer", "role", "kind", "d", "tokens"]
        head += [f"{q}_{s}" for q in names for s in ("mean", "std", "min", "max")]
        f = io.StringIO(newline="")
        w = csv.writer(f)
        w.writerow(head)
        for name, site in self.sites.items():
            m = site.meta
            row = [name, m.get("stack") or "", m.get("layer"), m.get("role"), m.get("kind"), m.get("d"),
                   site.tokens]
            for q in names:
                qq = site[q]
                row += [qq.mean, qq.std, qq.min, qq.max]
            w.writerow(row)
        write_text(path, f.getvalue())

    def save(self, out_dir: str | os.PathLike, *, figures: bool = True) -> list[str]:
        """Write report.json, sites.csv, tables.md and (with matplotlib) report.html and PNG figures;
        return the paths.

        Every file goes through :mod:`geonorm_core.durable` (``write_text``, ``write_json``,
        ``atomic_file``): a reader, a crash or a full disk never leaves a truncated file, and a
        failed write names its path."""
        os.makedirs(out_dir, exist_ok=True)
        paths = [os.path.join(out_dir, n) for n in ("report.json", "sites.csv", "tables.md")]
        self.to_json(paths[0])
        self.to_csv(paths[1])
        write_text(paths[2], self.table())
        if figures:
            from .figures import _save, report_figures

            figs = report_figures(self)  # drawn once: PNG files, then SVG inside report.html
            pngs = _save(figs, os.fspath(out_dir), close=False)
            paths.append(self.to_html(os.path.join(out_dir, "report.html"), figures=figs))
            paths += pngs
        return paths

    def to_html(self, path: str | os.PathLike, *, figures: list | None = None) -> str:
        """Write report.html, one self-contained page (:mod:`geonorm_core.analysis.report_html`); return its path.
        ``figures``: :func:`~geonorm_core.analysis.figures.report_figures` already drawn (default: drawn here)."""
        from .report_html import render_report

        write_text(path, render_report(self, figures=figures))
        return os.fspath(path)

    def _repr_html_(self) -> str:
        from .report_html import report_fragment

        return report_fragment(self)


def _ms(q) -> tuple[float, float] | None:
    """(mean, SD) of a quantity; None when it has no values or the site has no such quantity (no post rows)."""
    return None if q is None or q.count == 0 else (float(q.mean), float(q.std))


def _pm(v, digits: int = 2) -> str:
    return "–" if v is None else f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}"


def _pct(v: float) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{100 * v:.2f}%"
