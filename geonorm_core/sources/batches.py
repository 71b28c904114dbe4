"""Tokenizer batches, checked once: what a batch must hold, the batch on a model's device, and the
tokens that count (not padding; not each sequence's first token when asked).

Every source that runs a model on batches (the adapter, the swap test, dumps, the training
monitor) goes through here, so they agree on which tokens count and fail with the same words.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["batch_on", "real_tokens"]


def batch_on(device: torch.device | str, batch: Any) -> dict[str, Any]:
    """``batch`` checked (a mapping with 2-D ``input_ids`` and, if any, an ``attention_mask`` of the
    same shape) with its tensors moved to ``device``."""
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise TypeError(f"batch must be a dict with 'input_ids' (and optionally 'attention_mask'), "
                        f"as tokenizers make them; got {type(batch).__name__}")
    inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    ids = inputs["input_ids"]
    if ids.ndim != 2:
        raise ValueError(f"batch['input_ids'] must have shape (batch, seq_len), got {tuple(ids.shape)}")
    mask = inputs.get("attention_mask")
    if mask is not None and tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"batch['attention_mask'] has shape {tuple(mask.shape)}, "
                         f"but input_ids has {tuple(ids.shape)}")
    return inputs


def real_tokens(shape: tuple[int, int], attention_mask: Any = None, *,
                exclude_first_token: bool = False) -> np.ndarray:
    """The (batch, seq_len) bool mask of the tokens to count: ``attention_mask != 0`` (every token
    without one), less each sequence's first real token when ``exclude_first_token``."""
    rows = np.ones(shape, dtype=bool)
    if attention_mask is not None:
        rows = (attention_mask.detach().cpu().numpy() if torch.is_tensor(attention_mask)
                else np.asarray(attention_mask)) != 0
    if exclude_first_token:
        rows &= np.cumsum(rows, axis=1) > 1
    return rows
