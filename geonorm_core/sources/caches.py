"""Activations already in memory: a TransformerLens ``ActivationCache`` or tensors saved with nnsight.

An interpretability user often holds the hidden states already (``logits, cache =
bridge.run_with_cache(tokens)``, or ``.save()`` inside an nnsight trace).  :func:`analyze_cache`
measures them directly, no files and no second forward pass, into the same
:class:`~geonorm_core.analysis.report.Report` that :func:`~geonorm_core.sources.adapter.analyze` gives.

How each norm site's input ("hidden") and output ("post") are found, for a site named ``S``
(the names :func:`~geonorm_core.sources.sites.find_norm_sites` gives the model: ``blocks.3.ln1`` for a
TransformerLens bridge, ``model.layers.3.input_layernorm`` for nnsight / Hugging Face):

==================  ===========================  ==============================================
source              hidden                       post
==================  ===========================  ==============================================
TransformerLens     ``S.hook_in``                ``S.hook_out`` (the norm's output, gain and bias
                                                 included; ``hook_normalized`` is before them)
nnsight             ``S.input``                  ``S.output`` (``module.input.save()``,
                                                 ``module.output.save()`` put in a dict)
==================  ===========================  ==============================================

``hook_in`` is the residual stream the norm reads (``hook_resid_pre`` for ``ln1``,
``hook_resid_mid`` for ``ln2``).  The gain, bias and eps the LN-RMS gap (G9) uses are
the site's, read from the model when this is called: after ``enable_compatibility_mode()`` the
bridge has folded the gains into the next layer, so they are 1 there, as in the cache.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..analysis.report import Report
from .adapter import Analyzer
from .hook_names import HOOK_PAIRS

__all__ = ["analyze_cache"]

_PAIRS = HOOK_PAIRS  # one home for the hook-name rules: geonorm_core.sources.hook_names


def analyze_cache(cache: Mapping[str, Any], model: Any = None, *, attention_mask: Any = None,
                  sites: Sequence[str] | None = None, exclude_first_token: bool = False, bins: int = 180,
                  meta: Mapping | None = None, num_threads: int | None = 1) -> Report:
    """Measure the norm-site geometry of activations held in memory (G2-G12, docs/identities.md).

    Parameters
    ----------
    cache : a TransformerLens ``ActivationCache`` (from ``run_with_cache``), or a dict of tensors
        keyed ``"<site>.input"``/``"<site>.output"`` (nnsight ``.save()``), each ``(batch, seq, d)``
        (or ``(seq, d)``) in the model's dtype; the module docstring says which keys pair up.
    model : the model the cache came from (a ``TransformerBridge``, an nnsight ``LanguageModel``
        or the torch model); default: ``cache.model`` (an ``ActivationCache`` carries it).  Its
        norm sites give the names, gains, biases and eps.
    attention_mask : ``(batch, seq)``, 0 at padding tokens, which are not counted.
    sites : site names to measure (default: every residual-stream site present in the cache).
    exclude_first_token, bins, meta, num_threads : as in :func:`~geonorm_core.sources.adapter.analyze`.

    Returns
    -------
    Report
        As :func:`~geonorm_core.sources.adapter.analyze` returns for the same tokens.

    Raises
    ------
    TypeError
        If ``cache`` is not a mapping, or no model is given and the cache carries none.
    ValueError
        If no requested site has its pair of tensors in the cache (the message lists the keys it
        looked for), or a pair's shapes disagree with each other or with ``attention_mask``.
    """
    if not (isinstance(cache, Mapping) or (hasattr(cache, "keys") and hasattr(cache, "__getitem__"))):
        raise TypeError(f"cache: expected a TransformerLens ActivationCache or a dict of tensors, "
                        f"got {type(cache).__name__}")
    if model is None:
        model = getattr(cache, "model", None)
        if model is None:
            raise TypeError("model: this cache carries no model (a dict of saved tensors); pass the model "
                            "it came from, e.g. analyze_cache(saved, lm)")
    keys = set(cache.keys())
    an = Analyzer(model, sites, exclude_first_token=exclude_first_token, bins=bins,
                  meta={"source": "cache", **dict(meta or {})}, num_threads=num_threads,
                  merge_ranks=False)  # a cache is one rank's own: never a collective call
    pairs = {}
    for site in an.sites:
        pair = next(((site.name + i, site.name + o) for i, o in _PAIRS
                     if site.name + i in keys and site.name + o in keys), None)
        if pair is not None:
            pairs[site.name] = (site, pair)
    if not pairs:
        wanted = ", ".join(f"{an.sites[0].name}{i}/{o}" for i, o in _PAIRS)
        raise ValueError(f"cache: none of the {len(an.sites)} norm sites has its input and output in it "
                         f"(looked for e.g. {wanted}); it has {len(keys)} keys, e.g. {sorted(keys)[:4]}")
    if sites is None:  # measure what the cache holds; a named site that is missing is an error
        an.stats = {name: an.stats[name] for name in pairs}
    else:
        missing = [s.name for s in an.sites if s.name not in pairs]
        if missing:
            raise ValueError(f"sites: {missing} have no input/output pair in the cache")

    for site, (ki, ko) in pairs.values():
        hidden, post = cache[ki], cache[ko]
        hidden = hidden[0] if isinstance(hidden, (tuple, list)) else hidden  # nnsight .input of a call
        post = post[0] if isinstance(post, (tuple, list)) else post
        if tuple(hidden.shape) != tuple(post.shape):
            raise ValueError(f"cache[{ki!r}] has shape {tuple(hidden.shape)} but cache[{ko!r}] has "
                             f"{tuple(post.shape)}; expected the same (..., {site.d})")
        if hidden.dim() < 2:
            raise ValueError(f"cache[{ki!r}] has shape {tuple(hidden.shape)}; expected (batch, seq, {site.d}) "
                             f"or (seq, {site.d})")
        batched = hidden.dim() >= 3
        lead = tuple(hidden.shape[:2]) if batched else (1, int(hidden.shape[0]))  # one unbatched sequence
        rows = an.token_mask(lead, _as_mask(attention_mask, lead))
        an.count_only(rows if batched else rows[0])
        an._measure(site, hidden.detach(), post.detach())
    an.count_only(None)
    return an.report()


def _as_mask(attention_mask: Any, lead: tuple[int, int]) -> Any:
    if attention_mask is None:
        return None
    mask = attention_mask.detach().cpu().numpy() if torch.is_tensor(attention_mask) else np.asarray(attention_mask)
    if mask.ndim == 1:
        mask = mask[None, :]
    if tuple(mask.shape) != lead:
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, but the cached activations are "
                         f"(batch, seq) = {lead}")
    return mask
