"""The swap test itself: run a model as it is and swapped on the same tokens, probe every swapped
site, and reduce the two runs to a :class:`~.results.SwapResult`."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ...sources.batches import batch_on, real_tokens
from ...sources.sites import NormSite, hook_sites, hook_tensors
from .patching import _patched, _plan, _swapped_forward
from .results import SiteChange, SwapResult
from .statistics import _encoder_metric, _lm_metric

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
    from ...models.speech import WhisperDecoderFeed

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
    inputs = batch_on(next(model.parameters()).device, batch)
    ids = inputs["input_ids"]
    return inputs, torch.from_numpy(real_tokens(tuple(ids.shape), inputs.get("attention_mask")))


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
        :class:`~geonorm_core.models.speech.WhisperDecoderFeed` (a causal decoder; batches from
        :func:`~geonorm_core.models.speech.whisper_batches`), in eval mode.
    tokenizer : the model's tokenizer; needed for encoders (it tokenizes ``sentences``), unused
        for causal LMs (may be None).
    batches : dicts as tokenizers make them (``input_ids``, optional ``attention_mask``), e.g.
        from :func:`~geonorm_core.models.corpus.token_batches`.
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
