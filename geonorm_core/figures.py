"""PNG figures of a report: the paper's plots for one model, with the random baseline beside them.

1. angle with 1 per layer (hidden, post-LN1, post-LN2), ±SD bands, and the null band 90° ± SD_null;
2. L2 norm per layer before and after the first norm (log scale);
3. rotation hidden ↔ post-norm per layer;
4. the angle histogram of the hidden states at one layer, with the Beta null density (G14).
"""
from __future__ import annotations

import os

import numpy as np

from .accumulate import baseline_angle_sd, baseline_cdf
from .durable import atomic_file


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(ax, x, rows, key, label, color):
    pts = [(xi, r[key]) for xi, r in zip(x, rows) if r.get(key) is not None]
    if not pts:
        return
    xs = np.array([p[0] for p in pts])
    m = np.array([p[1][0] for p in pts])
    s = np.array([p[1][1] for p in pts])
    ax.plot(xs, m, "o-", ms=3, color=color, label=label)
    ax.fill_between(xs, m - s, m + s, color=color, alpha=0.18, lw=0)


def _save(fig, path: str) -> None:
    """A PNG written atomically (:mod:`geonorm_core.durable`)."""
    with atomic_file(path) as f:
        fig.savefig(f, dpi=120, format="png")


def save_figures(report, out_dir: str, *, layer: int | None = None) -> list[str]:
    """Write the four figures into out_dir; return their paths."""
    plt = _plt()
    rows = report.layers()
    if not rows:
        return []
    first, second = report.block_labels()
    roles = report.block_roles()
    title = report.meta.get("model_name") or report.meta.get("model", "")
    x = np.arange(len(rows))
    ticks = [f"{r['stack'][:3]}.{r['layer']}" if r["stack"] else str(r["layer"]) for r in rows]
    paths = []

    def finish(fig, ax, name, ylabel):
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        step = max(1, len(rows) // 15)
        ax.set_xticks(x[::step], ticks[::step])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        _save(fig, path)
        plt.close(fig)
        paths.append(path)

    d = rows[0]["d"]
    null_sd = baseline_angle_sd(d).sd
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.axhspan(90 - null_sd, 90 + null_sd, color="0.6", alpha=0.3, lw=0,
               label=f"random baseline 90° ± {null_sd:.2f}° (d={d})")
    _band(ax, x, rows, "hidden_angle", "hidden (residual stream)", "C0")
    _band(ax, x, rows, "post1_angle", f"post-{first}", "C1")
    _band(ax, x, rows, "post2_angle", f"post-{second}", "C2")
    ax.set_title(f"{title}: angle with the uniform vector 1 (mean ± SD over tokens)")
    finish(fig, ax, "angle_per_layer.png", "angle with 1 (degrees)")

    fig, ax = plt.subplots(figsize=(8, 4.2))
    _band(ax, x, rows, "hidden_norm", "‖hidden‖", "C0")
    _band(ax, x, rows, "post1_norm", f"‖post-{first}‖", "C1")
    ax.set_yscale("log")
    ax.set_title(f"{title}: L2 norm before and after the norm (mean ± SD)")
    finish(fig, ax, "norm_per_layer.png", "L2 norm")

    fig, ax = plt.subplots(figsize=(8, 4.2))
    _band(ax, x, rows, "rotation1", f"hidden ↔ post-{first}", "C1")
    _band(ax, x, rows, "rotation2", f"hidden ↔ post-{second}", "C2")
    ax.set_title(f"{title}: rotation by the norm (mean ± SD)")
    finish(fig, ax, "rotation_per_layer.png", "rotation (degrees)")

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
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.bar(edges[:-1], dens, width=width, align="edge", color="C0", alpha=0.7, label="hidden states")
    t = np.linspace(max(0, lo), min(180, hi), 600)
    null = np.gradient(baseline_cdf(t, d), t)
    ax.plot(t, null, "k-", lw=1.2, label=f"random baseline (Beta null, d={d})")
    ax.set_xlim(max(0, lo), min(180, hi))
    ax.set_title(f"{title}: angle with 1 at layer {pick['layer']} ({q.count} tokens, "
                 f"{q.mean:.2f}° ± {q.std:.2f}°)")
    ax.set_xlabel("angle with 1 (degrees)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(out_dir, f"angle_histogram_layer{pick['layer']}.png")
    _save(fig, path)
    plt.close(fig)
    paths.append(path)
    return paths
