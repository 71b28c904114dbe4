"""The paper's published rows (Tables 2-4), and any report as one row in their shape.

The paper measured seven models on 1M tokens and reports, averaged over layers, the angle with
the uniform vector **1** of the residual stream ("hidden", the input of LN1) and of both norms'
outputs (Table 2), the L2 norm before and after the first norm (Table 3), and the rotation between
a hidden state and each norm's output (Table 4).  :data:`PAPER_ROWS` holds those numbers, the one
place geonorm keeps them; :func:`summary` reduces a :class:`~geonorm_core.analysis.report.Report` to the same
columns (with the SD over tokens, the random baseline of the angle and the LN-RMS gap, which the
paper does not have), so that tables.md, report.html and ``geonorm compare`` print measured models
and the paper's side by side.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from .baseline import baseline_angle_sd

#: The averaged quantities of a summary row, in the paper's order (Table 2, 3, 4), then geonorm's gap.
QUANTITIES = ("hidden_angle", "post1_angle", "post2_angle", "hidden_norm", "post1_norm",
              "rotation1", "rotation2", "gap1")


@dataclass(frozen=True)
class PaperRow:
    """One model of the paper: its norm, width, depth and layer-averaged Tables 2-4 values.

    ``None`` where the paper has no value (GPT-J has no LN2).  The paper gives no SDs for these
    averages beside its "±" (a standard error of the layer average), so none are kept.
    """

    model: str
    norm: str
    d: int
    layers: int
    hidden_angle: float
    post1_angle: float | None
    post2_angle: float | None
    hidden_norm: float
    post1_norm: float
    rotation1: float
    rotation2: float | None


#: Tables 2-4 of the paper (1M tokens of Wikipedia text per model).
PAPER_ROWS: tuple[PaperRow, ...] = (
    PaperRow("GPT-2 XL", "LayerNorm", 1600, 48, 101.48, 89.95, 89.63, 236.9, 21.4, 30.5, 32.7),
    PaperRow("GPT-Neo 1.3B", "LayerNorm", 2048, 24, 89.63, 88.85, 89.47, 811.8, 6.7, 49.1, 52.8),
    PaperRow("Pythia-1.4B", "LayerNorm", 2048, 24, 89.88, 88.74, 89.39, 77.9, 46.0, 12.4, 21.7),
    PaperRow("GPT-J 6B", "LayerNorm", 4096, 28, 88.74, 89.59, None, 110.9, 49.4, 19.6, None),
    PaperRow("Pythia-6.9B", "LayerNorm", 4096, 32, 89.27, 89.02, 88.97, 216.0, 79.7, 11.0, 28.7),
    PaperRow("Llama-2-7B", "RMSNorm", 4096, 32, 89.47, 89.48, 89.72, 44.3, 26.2, 17.1, 23.5),
    PaperRow("Llama-3-8B", "RMSNorm", 4096, 32, 90.01, 90.15, 89.97, 12.1, 29.5, 19.6, 24.6),
)


def model_label(report) -> str:
    """How tables and figures name a report's model: its ``model_name`` (a path's last part), else its class."""
    name = report.meta.get("model_name") or report.meta.get("model") or "model"
    name = str(name).rstrip("/\\")
    return os.path.basename(name) if ("/" in name or os.sep in name) else name


def norm_kind(report) -> str:
    """"LayerNorm", "RMSNorm" (", 1+w" for Gemma's gain), or both joined, from the block norms' kinds."""
    roles = set(report.block_roles())
    kinds = set()
    for s in report.sites.values():
        if s.meta.get("role") in roles:
            kind = {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm"}.get(s.meta.get("kind"), str(s.meta.get("kind")))
            if kind == "RMSNorm" and "1+w" in str(s.meta.get("formula", "")).replace(" ", ""):
                kind += ", 1+w"
            kinds.add(kind)
    return " + ".join(sorted(kinds)) or "–"


def summary(report) -> dict[str, Any]:
    """A report as one row of the paper's Tables 2-4.

    Returns
    -------
    dict
        ``model``, ``norm``, ``d``, ``layers``, ``tokens``, ``partial``, ``baseline_sd`` (the SD of
        the random baseline's angle with **1** at this d: 90° ± it), ``source`` ("geonorm"), and per
        quantity of :data:`QUANTITIES` ``{"mean", "sd", "paper_pm"}`` (mean of the per-layer means,
        mean of the per-layer SDs over tokens, sqrt(sum_l sigma_l^2) / L) or ``None``.
    """
    rows, avg = report.layers(), report.averages()
    d = rows[0]["d"] if rows else None
    out: dict[str, Any] = {"model": model_label(report), "norm": norm_kind(report), "d": d,
                           "layers": len(rows), "tokens": report.tokens, "partial": bool(report.meta.get("partial")),
                           "baseline_sd": baseline_angle_sd(d).sd if d and d >= 2 else math.nan,
                           "source": "geonorm"}
    for key in QUANTITIES:
        out[key] = avg.get(key)
    return out


def paper_summary(row: PaperRow) -> dict[str, Any]:
    """A :class:`PaperRow` in :func:`summary`'s shape (``sd`` and ``paper_pm`` None, source "paper")."""
    out: dict[str, Any] = {"model": row.model, "norm": row.norm, "d": row.d, "layers": row.layers,
                           "tokens": 1_000_000, "partial": False, "baseline_sd": baseline_angle_sd(row.d).sd,
                           "source": "paper"}
    for key in QUANTITIES:
        v = getattr(row, key, None)
        out[key] = None if v is None else {"mean": v, "sd": None, "paper_pm": None}
    return out


def paper_summaries() -> list[dict[str, Any]]:
    """Every row of :data:`PAPER_ROWS` in :func:`summary`'s shape."""
    return [paper_summary(r) for r in PAPER_ROWS]


#: The columns of the side-by-side table: (header, function of a summary row -> text).
def _mean(v, digits: int = 2, sd: bool = True) -> str:
    if v is None:
        return "–"
    text = f"{v['mean']:.{digits}f}"
    return f"{text} ± {v['sd']:.{digits}f}" if sd and v.get("sd") is not None else text


def cells(row: dict[str, Any]) -> list[str]:
    """The side-by-side table's cells for one summary row (see :data:`HEADERS`); SD over tokens after ±."""
    name = f"{row['model']} ({row['source']})" + (" [partial]" if row.get("partial") else "")
    norms = "–" if row["hidden_norm"] is None else (
        f"{_mean(row['hidden_norm'], 1, False)} → {_mean(row['post1_norm'], 1, False)}")
    rot = f"{_mean(row['rotation1'], 1, False)} / {_mean(row['rotation2'], 1, False)}"
    base = "–" if not math.isfinite(row["baseline_sd"]) else f"90 ± {row['baseline_sd']:.2f}"
    return [name, row["norm"], str(row["d"]), str(row["layers"]), f"{row['tokens']:,}",
            _mean(row["hidden_angle"]), _mean(row["post1_angle"]), _mean(row["post2_angle"]), base, norms, rot,
            _mean(row["gap1"], 3, False)]


#: Headers of :func:`cells`.
HEADERS = ("model", "norm", "d", "layers", "tokens", "angle hidden (°)", "post-norm 1 (°)", "post-norm 2 (°)",
           "random baseline (°)", "‖hidden‖ → ‖post 1‖", "rotation 1 / 2 (°)", "LN–RMS gap")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Summary rows as one Markdown table (the paper's Tables 2-4 side by side)."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|---|---|---:|---:|" + "---:|" * (len(HEADERS) - 4)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"
