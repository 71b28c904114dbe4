"""Where a site sits: its layer, its stack (encoder/decoder) and its role in the block, from the
module path and the attribute-name conventions of the common implementations (the package
docstring's table), and the forward order of the sites."""
from __future__ import annotations

import math

import torch

from .candidates import ModuleTree

ROLES = ("embed", "LN1", "q_norm", "k_norm", "post_attn", "cross_attn", "LN2", "post_mlp",
         "other", "final")
_LAYER_LISTS = {"h", "layers", "layer", "blocks", "block"}

# Attribute names of the convention table (lower case).
_LN1 = {"ln_1", "ln1", "input_layernorm", "input_layer_norm", "attention_norm", "attn_norm",
        "self_attn_layer_norm", "self_attn_norm", "ln_attn", "norm1", "norm_1",
        "layernorm_before", "pre_attention_layernorm"}
_LN2 = {"ln_2", "ln2", "post_attention_layernorm", "pre_feedforward_layernorm", "ffn_norm",
        "mlp_norm", "ln_mlp", "norm2", "norm_2", "layernorm_after", "pre_mlp_layernorm",
        "final_layer_norm", "pre_ff_layernorm"}
_POST_ATTN = {"post_attn_norm", "post_attention_norm", "post_self_attn_layernorm",
              "sa_layer_norm"}  # DistilBERT is post-LN
_POST_MLP = {"post_feedforward_layernorm", "post_ffn_norm", "post_mlp_norm",
             "post_mlp_layernorm", "output_layer_norm"}
_Q_NORM = {"q_norm", "q_layernorm", "q_layer_norm", "query_layernorm", "query_norm", "q_ln"}
_K_NORM = {"k_norm", "k_layernorm", "k_layer_norm", "key_layernorm", "key_norm", "k_ln"}
_CROSS = {"encoder_attn_layer_norm", "cross_attn_layer_norm", "cross_attention_layernorm",
          "cross_attn_norm", "crossattention_layernorm"}
_FINAL = {"ln_f", "norm", "norm_f", "final_layernorm", "final_layer_norm", "final_norm",
          "ln_final", "layer_norm", "layernorm", "post_layernorm"}
_SANDWICH_SIBLINGS = {"pre_feedforward_layernorm", "post_feedforward_layernorm"}
_MLP_WORDS = ("mlp", "ffn", "feed_forward", "feedforward", "densereludense")


def layer_of(path: list[str]) -> int | None:
    for prev, part in zip(path, path[1:]):
        if part.isdigit() and prev.lower() in _LAYER_LISTS:
            return int(part)
    return next((int(p) for p in path if p.isdigit()), None)


def stack_of(path: list[str]) -> str | None:
    for part in path:
        low = part.lower()
        if "decoder" in low:
            return "decoder"
        if "encoder" in low:
            return "encoder"
    return None


def role_of(tree: ModuleTree, path: list[str], layer: int | None, post_ln: bool) -> str:
    leaf = path[-1].lower()
    lowpath = [p.lower() for p in path]
    if leaf in _Q_NORM:
        return "q_norm"
    if leaf in _K_NORM:
        return "k_norm"
    if layer is None:  # outside the blocks
        if any("emb" in p for p in lowpath):
            return "embed"
        return "final" if leaf in _FINAL else "other"

    siblings = {n.lower() for n in tree.children.get(".".join(path[:-1]), ())} - {leaf}
    if leaf in _CROSS:
        return "cross_attn"
    if leaf == "post_attention_layernorm" and siblings & _SANDWICH_SIBLINGS:
        return "post_attn"  # Gemma2/3, OLMo2: normalizes the attention output
    if leaf in _POST_ATTN:
        return "post_attn"
    if leaf in _POST_MLP:
        return "post_mlp"
    if leaf in _LN1:
        return "post_attn" if post_ln else "LN1"
    if leaf in _LN2:
        return "post_mlp" if post_ln else "LN2"
    if len(path) >= 2 and lowpath[-2] == "output":  # BERT-style post-LN: <sublayer>.output.LayerNorm
        if any("crossattention" in p for p in lowpath):
            return "cross_attn"
        return "post_attn" if any("attention" in p for p in lowpath[:-2]) else "post_mlp"
    # A generic name (T5's ``layer_norm``): the sublayer it sits in says what it feeds.
    if any("encdec" in s or "cross" in s or s.startswith("encoder_attn") for s in siblings):
        return "cross_attn"
    if any("attn" in s or "attention" in s for s in siblings):
        return "LN1"
    if any(word in s for s in siblings for word in _MLP_WORDS):
        return "LN2"
    return "other"


def config_says_post_ln(model: torch.nn.Module) -> bool:
    config = getattr(model, "config", None)
    return any(getattr(config, attr, True) is False
               for attr in ("do_layer_norm_before", "normalize_before"))


def model_width(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    configs = [config]
    try:
        configs.insert(0, config.get_text_config())  # multimodal: the language model's width
    except Exception:  # noqa: BLE001 - not a transformers config, or no text config
        pass
    for cfg in configs:
        for attr in ("hidden_size", "d_model", "n_embd"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int):
                return value
    return None


def forward_order(site: dict):
    stack_rank = {"encoder": 0, None: 1, "decoder": 2}[site["stack"]]
    if site["layer"] is not None:
        position = site["layer"]
    else:
        position = -1 if site["role"] == "embed" else math.inf
    return (stack_rank, position, ROLES.index(site["role"]), site["order"])
