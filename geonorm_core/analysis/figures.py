"""Figures of a report, and of several reports compared: the paper's plots, with the random baseline.

One report (:func:`report_figures`, written as PNGs by :func:`save_figures`):

1. angle with 1 per layer (hidden, post-LN1, post-LN2), ±SD bands, and the null band 90° ± SD_null;
2. L2 norm per layer before and after the first norm (log scale);
3. rotation hidden ↔ post-norm per layer;
4. the LN–RMS gap at the first norm per layer (G9);
5. the angle histogram of the hidden states at one layer, with the Beta null density (G14).

Several reports (:func:`comparison_figures`): the first four, one line per model, against relative
depth (layer / number of layers) so that models of different depth align.

Every series differs by marker and line style as well as colour (a colour-blind-safe palette), so the
figures read in greyscale print.  Builders return matplotlib figures; :func:`save_figures` writes PNG
and :mod:`geonorm_core.analysis.report_html` inlines them.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..durable import atomic_file
from .baseline import baseline_angle_sd, baseline_cdf

#: Okabe-Ito colours (distinct for the common colour-vision deficiencies), then markers and dashes,
#: so that no series is told apart by colour alone.
COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
DASHES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2)), (0, (1, 1)), (0, (3, 1, 1, 1)))
FIGSIZE = (8, 4.2)


def series_style(i: int) -> dict[str, Any]:
    """The i-th series' colour, marker and line style (matplotlib keyword arguments)."""
    return {"color": COLORS[i % len(COLORS)], "marker": MARKERS[i % len(MARKERS)],
            "linestyle": DASHES[i % len(DASHES)]}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(ax, x, rows, key, label, i, *, markevery=None, sd=True):
    pts = [(xi, r[key]) for xi, r in zip(x, rows) if r.get(key) is not None]
    if not pts:
        return
    xs = np.array([p[0] for p in pts])
    m = np.array([p[1][0] for p in pts])
    s = np.array([p[1][1] for p in pts])
    st = series_style(i)
    ax.plot(xs, m, ms=4, lw=1.4, label=label, markevery=markevery, mfc="white" if i % 2 else st["color"], **st)
    if sd:  # not on log scales: an SD larger than the mean (a few massive tokens) has no lower edge there
        ax.fill_between(xs, m - s, m + s, color=st["color"], alpha=0.15, lw=0)


def _title(report) -> str:
    from .paper import model_label

    return model_label(report)


def report_figures(report, *, layer: int | None = None) -> list[tuple[str, Any]]:
    """The five figures of one report as ``(file name, matplotlib figure)``; [] without layers."""
    plt = _plt()
    rows = report.layers()
    if not rows:
        return []
    first, second = report.block_labels()
    roles = report.block_roles()
    title = _title(report)
    x = np.arange(len(rows))
    ticks = [f"{r['stack'][:3]}.{r['layer']}" if r["stack"] else str(r["layer"]) for r in rows]
    figs: list[tuple[str, Any]] = []

    def finish(fig, ax, name, ylabel):
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        step = max(1, len(rows) // 15)
        ax.set_xticks(x[::step], ticks[::step])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[1]:  # hidden-only sources (no post rows) may plot no labelled line
            ax.legend(fontsize=8)
        fig.tight_layout()
        figs.append((name, fig))

    d = rows[0]["d"]
    null_sd = baseline_angle_sd(d).sd
    fig, ax = plt.subplots(figsize=FIGSIZE)
    ax.axhspan(90 - null_sd, 90 + null_sd, color="0.6", alpha=0.3, lw=0, hatch="//", ec="0.75",
               label=f"random baseline 90° ± {null_sd:.2f}° (d={d})")
    _band(ax, x, rows, "hidden_angle", "hidden (residual stream)", 0)
    _band(ax, x, rows, "post1_angle", f"post-{first}", 1)
    _band(ax, x, rows, "post2_angle", f"post-{second}", 2)
    ax.set_title(f"{title}: angle with the uniform vector 1 (mean ± SD over tokens)", fontsize=11)
    finish(fig, ax, "angle_per_layer.png", "angle with 1 (degrees)")

    fig, ax = plt.subplots(figsize=FIGSIZE)
    _band(ax, x, rows, "hidden_norm", "‖hidden‖", 0, sd=False)
    _band(ax, x, rows, "post1_norm", f"‖post-{first}‖", 1, sd=False)
    ax.set_yscale("log")
    ax.set_title(f"{title}: L2 norm before and after the norm (mean over tokens)", fontsize=11)
    finish(fig, ax, "norm_per_layer.png", "L2 norm")

    fig, ax = plt.subplots(figsize=FIGSIZE)
    _band(ax, x, rows, "rotation1", f"hidden ↔ post-{first}", 1)
    _band(ax, x, rows, "rotation2", f"hidden ↔ post-{second}", 2)
    ax.set_title(f"{title}: rotation by the norm (mean ± SD)", fontsize=11)
    finish(fig, ax, "rotation_per_layer.png", "rotation (degrees)")

    fig, ax = plt.subplots(figsize=FIGSIZE)
    _band(ax, x, rows, "gap1", f"LN–RMS gap at {first}", 3)
    ax.set_title(f"{title}: LN–RMS gap ‖LN(x) − RMS(x)‖ / ‖LN(x)‖ (mean ± SD)", fontsize=11)
    finish(fig, ax, "gap_per_layer.png", "LN–RMS gap")

    # the histogram at one layer: the middle block by default
    pick = rows[len(rows) // 2] if layer is None else next(r for r in rows if r["layer"] == layer)
    site = next(s for s in report.sites.values()
                if s.meta.get("layer") == pick["layer"] and (s.meta.get("stack") or "") == pick["stack"]
                and s.meta.get("role") in roles)
    q = site.angle_hidden
    edges, counts = q.edges, q.histogram.counts
    width = np.diff(edges)
    dens = counts / max(1, counts.sum()) / width
    lo, hi = 90 - 8 * max(null_sd, q.std if q.count else 0), 90 + 8 * max(null_sd, q.std if q.count else 0)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    ax.bar(edges[:-1], dens, width=width, align="edge", color=COLORS[0], alpha=0.7, label="hidden states")
    t = np.linspace(max(0, lo), min(180, hi), 600)
    null = np.gradient(baseline_cdf(t, d), t)
    ax.plot(t, null, "k--", lw=1.4, label=f"random baseline (Beta null, d={d})")
    ax.set_xlim(max(0, lo), min(180, hi))
    ax.set_title(f"{title}: angle with 1 at layer {pick['layer']} ({q.count} tokens, "
                 f"{q.mean:.2f}° ± {q.std:.2f}°)", fontsize=11)
    ax.set_xlabel("angle with 1 (degrees)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    figs.append((f"angle_histogram_layer{pick['layer']}.png", fig))
    return figs


def save_figures(report, out_dir: str, *, layer: int | None = None) -> list[str]:
    """Write the figures of :func:`report_figures` into out_dir as PNG; return their paths."""
    return _save(report_figures(report, layer=layer), out_dir)


def _save(figs: Sequence[tuple[str, Any]], out_dir: str, *, close: bool = True) -> list[str]:
    plt = _plt()
    paths = []
    for name, fig in figs:
        path = os.path.join(out_dir, name)
        with atomic_file(path) as f:   # a crash or a full disk never leaves half a PNG
            fig.savefig(f, dpi=120, format="png")
        if close:
            plt.close(fig)
        paths.append(path)
    return paths


#: The comparison's figures: (file name, per-layer column, title, y label, log scale).
COMPARED = (("compare_angle.png", "hidden_angle", "angle of the residual stream with the uniform vector 1",
             "angle with 1 (degrees)", False),
            ("compare_norm.png", "hidden_norm", "L2 norm of the residual stream (hidden)", "‖hidden‖", True),
            ("compare_rotation.png", "rotation1", "rotation hidden ↔ output of the block's first norm",
             "rotation (degrees)", False),
            ("compare_gap.png", "gap1", "LN–RMS gap at the block's first norm", "LN–RMS gap", False))


def depth_series(report) -> list[tuple[str, np.ndarray, list[dict]]]:
    """Per stack (``""`` for one-stack models): relative depths layer / number of layers, and the rows."""
    rows = report.layers()
    out = []
    for stack in dict.fromkeys(r["stack"] for r in rows):
        part = [r for r in rows if r["stack"] == stack]
        out.append((stack, np.array([r["layer"] for r in part], dtype=float) / len(part), part))
    return out


def comparison_figures(labelled: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The compared per-layer figures, one line per model (and stack) on relative depth.

    Parameters
    ----------
    labelled : (label, report) pairs, in legend order.
    """
    plt = _plt()
    figs = []
    for name, key, what, ylabel, log in COMPARED:
        fig, ax = plt.subplots(figsize=FIGSIZE)
        i = 0
        dims = []
        for label, report in labelled:
            series = depth_series(report)
            for stack, x, rows in series:
                if rows:
                    dims.append(rows[0]["d"])
                every = max(1, len(rows) // 12)
                legend = f"{label} ({stack})" if len(series) > 1 else label
                _band(ax, x, rows, key, legend, i, markevery=every, sd=not log)
                i += 1
        if key == "hidden_angle" and dims:
            sd = max(baseline_angle_sd(int(d)).sd for d in dims)
            ds = ", ".join(f"d={d}" for d in sorted(set(dims)))
            ax.axhspan(90 - sd, 90 + sd, color="0.6", alpha=0.25, lw=0, hatch="//", ec="0.75",
                       label=f"random baseline 90° ± {sd:.2f}° (widest of {ds})")
        if log:
            ax.set_yscale("log")
        ax.set_xlim(-0.02, 1.0)
        ax.set_title(f"{what} ({'mean over tokens' if log else 'mean ± SD over tokens'})", fontsize=11)
        ax.set_xlabel("relative depth (layer / number of layers)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[1]:  # hidden-only sources (no post rows) may plot no labelled line
            ax.legend(fontsize=8)
        fig.tight_layout()
        figs.append((name, fig))
    return figs


def save_comparison_figures(labelled: Sequence[tuple[str, Any]], out_dir: str) -> list[str]:
    """Write :func:`comparison_figures` into out_dir as PNG; return their paths."""
    return _save(comparison_figures(labelled), out_dir)
