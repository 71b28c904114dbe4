"""Several reports side by side: the paper's comparisons for models geonorm measured.

:func:`compare` takes reports (or folders/files holding report.json) and gives a :class:`Comparison`:
Tables 2-4 with one row per model beside the paper's rows (:mod:`geonorm_core.analysis.paper`), the per-layer
figures with one line per model on relative depth (layer / number of layers, so that models of
different depth align, as the paper's figures do), and notes wherever the reports differ in what was
measured (first token excluded or not, histogram bins, partial runs, dtype, text), so that such a
comparison is never silent.  :meth:`Comparison.save` writes compare.html (self-contained), the PNG
figures, compare.md and two CSV files.

>>> gn.compare(["smollm2-report/", "gemma3-report/"]).save("smollm2-vs-gemma3")
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..durable import write_text
from .paper import QUANTITIES, markdown_table, model_label, paper_summaries, summary
from .report import Report

__all__ = ["Comparison", "compare", "load_report"]

#: Settings that change what a report measured: (meta key, how a note names it).
_MEASURED = (("exclude_first_token", "first token"), ("bins", "histogram bins"), ("dtype", "dtype"),
             ("text", "text"), ("seq_len", "sequence length"))


def load_report(path: str | os.PathLike) -> Report:
    """A report from a folder holding report.json (as ``geonorm analyze`` writes it) or a JSON file.

    Raises
    ------
    FileNotFoundError
        No report.json there (the message names the path).
    ValueError
        The file is not a geonorm report.
    """
    p = Path(path).expanduser()
    file = p / "report.json" if p.is_dir() else p
    if not file.is_file():
        raise FileNotFoundError(2, "no report.json there (give a folder `geonorm analyze` wrote, or its "
                                   "report.json)", str(path))
    try:
        return Report.from_json(file)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{file}: not a geonorm report ({type(exc).__name__}: {exc})") from None


@dataclass
class Comparison:
    """Reports compared: labels (unique, in order), the reports, and what differs between them."""

    labels: list[str]
    reports: list[Report]

    def summaries(self) -> list[dict]:
        """One :func:`~geonorm_core.analysis.paper.summary` row per report, labelled."""
        out = []
        for label, report in zip(self.labels, self.reports):
            row = summary(report)
            row["model"] = label
            row["exclude_first_token"] = bool(report.meta.get("exclude_first_token"))
            out.append(row)
        return out

    def notes(self) -> list[str]:
        """Where the reports differ in what was measured, one sentence each (empty when they agree)."""
        notes = []
        for key, what in _MEASURED:
            values = [r.meta.get(key) for r in self.reports]
            if key == "exclude_first_token":
                values = [bool(v) for v in values]
            if len({repr(v) for v in values if v is not None}) > 1:  # unknown (not recorded) is not a difference
                if key == "exclude_first_token":
                    parts = [f"{lab}: {'excluded' if v else 'included'}" for lab, v in zip(self.labels, values)]
                else:
                    parts = [f"{lab}: {'–' if v is None else v}" for lab, v in zip(self.labels, values)]
                notes.append(f"The reports differ in {what} ({'; '.join(parts)}); their numbers measure "
                             "different things there.")
        partial = [lab for lab, r in zip(self.labels, self.reports) if r.meta.get("partial")]
        if partial:
            notes.append(f"Partial (interrupted) runs: {', '.join(partial)}; their numbers are those of the tokens "
                         "counted so far.")
        tokens = [r.tokens for r in self.reports]
        if tokens and min(tokens) > 0 and max(tokens) > 4 * min(tokens):
            notes.append("Token counts differ more than fourfold (" + ", ".join(
                f"{lab}: {t:,}" for lab, t in zip(self.labels, tokens)) + "); SDs are comparable, sampling "
                "errors of the means are not.")
        return notes

    def labelled(self) -> list[tuple[str, Report]]:
        return list(zip(self.labels, self.reports))

    # -- renderings --------------------------------------------------------------------------------
    def to_markdown(self) -> str:
        """compare.md: the notes, Tables 2-4 with a row per model and the paper's rows."""
        lines = [f"# geonorm comparison: {' vs '.join(self.labels)}", ""]
        lines += [f"> **Note.** {n}" for n in self.notes()]
        lines += ["", "## Tables 2-4, averaged over layers", "",
                  ("Angles: mean over layers of the per-layer means ± the mean per-layer SD over tokens; random "
                   "baseline: 90° ± its SD at that d; the paper's rows are as published (1M tokens)."), "",
                  markdown_table(self.summaries() + paper_summaries()).rstrip("\n"), "",
                  ("Figures: compare_angle.png, compare_norm.png, compare_rotation.png, compare_gap.png "
                   "(one line per model against layer / number of layers)."), ""]
        return "\n".join(lines)

    def to_csv(self, path: str | os.PathLike) -> None:
        """compare.csv: one row per model (then the paper's), each quantity's mean, SD and paper ±."""
        head = ["model", "source", "norm", "d", "layers", "tokens", "partial", "baseline_sd"]
        head += [f"{q}_{s}" for q in QUANTITIES for s in ("mean", "sd", "paper_pm")]
        f = io.StringIO(newline="")
        w = csv.writer(f)
        w.writerow(head)
        for row in self.summaries() + paper_summaries():
            out = [row[k] for k in head[:8]]
            for q in QUANTITIES:
                v = row[q] or {}
                out += [v.get("mean"), v.get("sd"), v.get("paper_pm")]
            w.writerow(["" if x is None else x for x in out])
        write_text(path, f.getvalue())

    def layers_to_csv(self, path: str | os.PathLike) -> None:
        """compare_layers.csv: long format, one row per (model, stack, layer, quantity): mean and SD."""
        from .figures import depth_series

        keys = ("hidden_angle", "post1_angle", "post2_angle", "hidden_norm", "post1_norm", "rotation1",
                "rotation2", "gap1", "max_abs")
        f = io.StringIO(newline="")
        w = csv.writer(f)
        w.writerow(["model", "stack", "layer", "relative_depth", "quantity", "mean", "sd"])
        for label, report in self.labelled():
            for stack, depth, rows in depth_series(report):
                for x, r in zip(depth, rows):
                    for k in keys:
                        if r.get(k) is not None:
                            w.writerow([label, stack, r["layer"], repr(float(x)), k, repr(r[k][0]), repr(r[k][1])])
        write_text(path, f.getvalue())

    def to_html(self) -> str:
        """compare.html: one self-contained page (see :mod:`geonorm_core.analysis.report_html`)."""
        from .figures import comparison_figures
        from .report_html import SUMMARY_NOTE, esc, figures_html, num, page, summary_table, table

        notes = "".join(f'<p class="note" role="note"><strong>Note.</strong> {esc(n)}</p>' for n in self.notes())
        caps = {"compare_angle": "Angle of the residual stream with the uniform vector 1 per layer; bands: ± SD "
                                 "over tokens; grey: the random baseline (the widest of the models' d).",
                "compare_norm": "L2 norm of the residual stream (log scale; its SD over tokens is in each report).",
                "compare_rotation": "Rotation between a hidden state and the output of its block's first norm.",
                "compare_gap": "LN–RMS gap at the block's first norm: what mean subtraction changes."}
        figs = figures_html(comparison_figures(self.labelled()), caps)
        runs = []
        for label, r in self.labelled():
            rows = r.layers()
            m = r.meta
            runs.append(f'<tr><td class="t">{esc(label)}</td><td class="t">{esc(m.get("model", "–"))}</td>'
                        f'<td class="t">{esc(summary(r)["norm"])}</td>{num(rows[0]["d"] if rows else None, 0)}'
                        f"{num(len(rows), 0)}{num(r.tokens, 0)}"
                        f'<td class="t">{"excluded" if m.get("exclude_first_token") else "included"}</td>'
                        f'<td>{esc(m.get("bins", "–"))}</td><td class="t">{esc(m.get("dtype", "–"))}</td>'
                        f'<td class="t">{esc(m.get("device", "–"))}</td>'
                        f'<td class="t">{"partial" if m.get("partial") else "complete"}</td>'
                        f'<td class="t">{esc(m.get("geonorm_version", "–"))}</td>'
                        f'<td class="t">{esc(m.get("date", "–"))}</td></tr>')
        runs_table = table(("model", "class", "norm", "d", "layers", "tokens", "first token", "bins", "dtype",
                            "device", "status", "geonorm", "date"), runs, id="runs")
        title = " vs ".join(self.labels)
        body = (f'<header><div class="wrap"><p class="kicker">geonorm comparison · the geometry of normalization '
                f"layers</p><h1>{esc(title)}</h1><p class=\"sub\">{len(self.reports)} models on relative depth "
                "(layer / number of layers), beside the paper's seven</p></div></header><main>" + notes
                + '<section id="headline"><div class="figs">' + "".join(figs[:2]) + "</div></section>"
                + '<section id="tables"><h2>Tables 2–4, one row per model, beside the paper</h2>'
                + summary_table(self.summaries() + paper_summaries()) + f'<p class="muted">{SUMMARY_NOTE}</p>'
                + '</section><section id="figures"><h2>Rotation and LN–RMS gap</h2><div class="figs">'
                + "".join(figs[2:]) + "</div></section>"
                + f'<section id="runs-info"><h2>The runs</h2>{runs_table}</section></main>'
                + "<footer>Each model's own report.html has its per-layer and per-site tables. This page is "
                  "self-contained: it loads nothing.</footer>")
        return page(f"geonorm comparison: {title}", body)

    def _repr_html_(self) -> str:
        import matplotlib.pyplot as plt

        from .figures import comparison_figures
        from .report_html import FRAGMENT_CSS, _compact, esc, figure_img

        figs = comparison_figures(self.labelled())
        for _, f in figs[1:]:
            plt.close(f)
        notes = "".join(f"<p><strong>Note.</strong> {esc(n)}</p>" for n in self.notes())
        return (f'<div class="gn-frag"><style>{FRAGMENT_CSS}</style><h4>geonorm comparison: '
                f"{esc(' vs '.join(self.labels))}</h4>{notes}" + _compact(self.summaries())
                + figure_img(figs[0][1], alt="angle with 1 per relative depth") + "</div>")

    def save(self, out_dir: str | os.PathLike) -> list[str]:
        """Write compare.html, compare.md, compare.csv, compare_layers.csv and the PNG figures; return paths."""
        from .figures import save_comparison_figures

        os.makedirs(out_dir, exist_ok=True)
        paths = [os.path.join(out_dir, n) for n in ("compare.html", "compare.md", "compare.csv",
                                                    "compare_layers.csv")]
        for path, text in ((paths[0], self.to_html()), (paths[1], self.to_markdown())):
            write_text(path, text)   # atomic, like every file a report writes
        self.to_csv(paths[2])
        self.layers_to_csv(paths[3])
        return paths + save_comparison_figures(self.labelled(), os.fspath(out_dir))


def _unique(labels: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if labels.count(lab) == 1 else f"{lab} #{seen[lab]}")
    return out


def compare(reports: Iterable[Report | str | os.PathLike], labels: Sequence[str] | None = None) -> Comparison:
    """Compare reports (or folders/files holding report.json) side by side.

    Parameters
    ----------
    reports : two or more (one is allowed: its page beside the paper's rows).
    labels : how tables and legends name each model; default: each report's model name (a path's last
        part), numbered where two are the same.

    Returns
    -------
    Comparison
        ``.save(dir)`` writes compare.html, compare.md, compare.csv, compare_layers.csv and PNG figures;
        ``.notes()`` says where the reports measured different things.
    """
    loaded = [r if isinstance(r, Report) else load_report(r) for r in reports]
    if not loaded:
        raise ValueError("reports: need at least one report to compare")
    for i, r in enumerate(loaded):
        if not r.layers():
            raise ValueError(f"reports[{i}] ({model_label(r)}): no transformer layers to compare (a report of "
                             "bare arrays has sites but no layers)")
    if labels is None:
        labels = _unique([model_label(r) for r in loaded])
    elif len(labels) != len(loaded) or any(not str(x) for x in labels):
        raise ValueError(f"labels: need {len(loaded)} non-empty labels, got {list(labels)!r}")
    return Comparison(labels=[str(x) for x in labels], reports=loaded)
