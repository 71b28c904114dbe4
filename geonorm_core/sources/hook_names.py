"""What TransformerLens / SAELens hook names say: the layer and role of the norm a tensor feeds.

One home for the hook-name rules, used by :mod:`geonorm_core.sources.caches` (which hook holds a norm's input
and which its output) and by the activation stores (:mod:`geonorm_core.dumps.stores`, where a column
or dataset is named by the hook it was cached at).  A name is placed as the input of a norm site
(``role`` as :mod:`geonorm_core.sources.sites` names roles) where TransformerLens' residual stream says so:

* ``blocks.L.hook_resid_pre``, ``blocks.L.ln1.hook_in``: input of block L's first norm (``LN1``);
* ``blocks.L.hook_resid_mid``, ``blocks.L.ln2.hook_in``: input of block L's second norm (``LN2``);
* ``blocks.L.hook_resid_post``: input of block L+1's ``LN1``, or of the final norm when L is the
  model's last block (known only when the model's block count is given);
* ``ln_final.hook_in``: input of the final norm (``final``);
* other ``blocks.L.*`` hooks (``ln1.hook_normalized``, ``hook_attn_out``, ``hook_mlp_out``, ...):
  block L, no role, ordered inside the block (a norm's output is not a norm's input);
* ``hook_embed``, ``hook_pos_embed``: before block 0; ``ln_final.*``: after the last block; no role;
* anything else is not placed: it keeps its own order, after these.

Sorting by :attr:`HookPlace.order` puts a store's sites in the order a live run gives them:
by block, and in a block in the order the residual stream passes the hooks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["HOOK_PAIRS", "HookPlace", "place_hook"]

#: Suffixes of a norm's (input, output) hook pair: TransformerLens bridge hooks, nnsight saves.
HOOK_PAIRS = ((".hook_in", ".hook_out"), (".input", ".output"))

_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)\Z")
#: Where each hook of a block sits along the residual stream (sort key inside the block).
_IN_BLOCK = {"hook_resid_pre": 0, "ln1.hook_in": 1, "ln1.hook_scale": 2, "ln1.hook_normalized": 2,
             "ln1.hook_out": 2, "attn.hook_z": 3, "hook_attn_out": 4, "hook_resid_mid": 5, "ln2.hook_in": 6,
             "ln2.hook_scale": 7, "ln2.hook_normalized": 7, "ln2.hook_out": 7, "mlp.hook_post": 8,
             "hook_mlp_out": 9, "hook_resid_post": 10}
_INPUT_OF = {"hook_resid_pre": "LN1", "ln1.hook_in": "LN1", "hook_resid_mid": "LN2", "ln2.hook_in": "LN2"}
_EMBED = {"hook_embed": 0, "hook_pos_embed": 1, "hook_tokens": -1}


@dataclass(frozen=True)
class HookPlace:
    """Where a hook sits.

    Attributes
    ----------
    layer : the block of the norm whose input it is (or the block it is in, for other hooks);
        None outside the blocks.
    role : ``"LN1"``, ``"LN2"`` or ``"final"`` when the tensor is that norm's input, else None.
    order : a sort key: blocks in order, hooks in residual-stream order inside a block.
    """

    layer: int | None
    role: str | None
    order: tuple


def place_hook(name: str, n_layers: int | None = None) -> HookPlace | None:
    """The :class:`HookPlace` of a TransformerLens / SAELens hook name; None for names it does not know.

    Parameters
    ----------
    name : the hook name, e.g. ``"blocks.3.hook_resid_pre"``.
    n_layers : the model's number of blocks, when known: ``blocks.{n_layers-1}.hook_resid_post`` is
        then the final norm's input.
    """
    m = _BLOCK.match(name)
    if m:
        layer, hook = int(m.group(1)), m.group(2)
        pos = _IN_BLOCK.get(hook, 9.5 if hook.startswith("mlp.") else 3.5)
        if hook in _INPUT_OF:
            return HookPlace(layer, _INPUT_OF[hook], (1, layer, pos))
        if hook == "hook_resid_post":
            if n_layers is not None and layer == n_layers - 1:
                return HookPlace(None, "final", (1, layer, pos))
            return HookPlace(layer + 1, "LN1", (1, layer, pos))
        return HookPlace(layer, None, (1, layer, pos))
    if name in _EMBED:
        return HookPlace(None, None, (0, 0, _EMBED[name]))
    if name == "ln_final.hook_in":
        return HookPlace(None, "final", (2, 0, 0))
    if name.startswith("ln_final."):
        return HookPlace(None, None, (2, 0, 1))
    return None
