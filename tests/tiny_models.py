"""Tiny random-initialized models the adapter, backend and dump tests share (no hub needed)."""
from __future__ import annotations

import numpy as np
import torch
import transformers

from geonorm_core import slow


def tiny(kind: str, dtype: torch.dtype = torch.float32, **config) -> torch.nn.Module:
    """A 2-layer Llama (RMSNorm, d=64) or GPT-2 (LayerNorm, d=48) causal LM, seeded, in eval mode,
    with learned-looking gains in [0.5, 1.5] and biases ~ N(0, 0.1), so that rotations and LN-RMS
    gaps are not trivially 0.  ``config``: extra or overriding config fields (``n_layer=4``)."""
    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(**{"hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4,
                                          "num_key_value_heads": 4, "vocab_size": 97, "num_hidden_layers": 2,
                                          **config})
    elif kind == "gpt2":
        cfg = transformers.GPT2Config(**{"n_embd": 48, "n_head": 4, "n_layer": 2, "vocab_size": 97, **config})
    else:
        raise ValueError(kind)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "weight") and m.weight is not None and m.weight.ndim == 1:
                m.weight.uniform_(0.5, 1.5)
            if hasattr(m, "bias") and isinstance(m.bias, torch.Tensor) and m.bias.ndim == 1:
                m.bias.normal_(0, 0.1)
    return model.to(dtype)


def norm_formula(x: np.ndarray, kind: str, gain, bias, eps: float) -> np.ndarray:
    """A norm site's reported formula (G7, G8) by the float64 twins of the core
    (geonorm_core.slow), an oracle independent of the site finder's own check."""
    if kind == "layernorm":
        return slow.layer_norm(x, gain, bias, eps)
    y = slow.rms_norm(x, gain, eps)
    return y if bias is None else y + bias
