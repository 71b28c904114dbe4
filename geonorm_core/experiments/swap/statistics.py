"""The end metrics and their uncertainty: the causal LM's loss and perplexity with paired BCa
bootstrap intervals over sequences, and the encoder's embedding similarities."""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np


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
