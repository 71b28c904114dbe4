"""Models inside interpretability wrappers: which torch model is inside, how to call it, what its users call its norms.

Two libraries wrap a Hugging Face model and are what many geonorm users hold:

* **TransformerLens 4** ``TransformerBridge`` (``TransformerBridge.boot_transformers(name,
  hf_model=..., tokenizer=...)``, raw or after ``enable_compatibility_mode()``).  The bridge
  re-parents each Hugging Face module under a bridge component (``model.layers.0`` becomes
  ``model.layers.0._original_component``) and calls it from there in both modes, so hooks on the
  Hugging Face norm modules see every forward.  Its users name the norms by the bridge's hook
  points: ``blocks.3.ln1``, ``blocks.3.ln2``, ``ln_final`` (the prefix of ``...hook_in``).
  It is called ``bridge(input_ids, attention_mask=...)``.
* **nnsight** ``LanguageModel`` and ``TransformersModel`` (nnsight 0.8 deprecates the first for
  the second; both are an ``Envoy`` around the model, not themselves a ``torch.nn.Module``).
  Its users name modules as the wrapped Hugging Face model does (``model.layers.3.input_layernorm``),
  and run it inside a trace, ``with lm.trace(batch): ...``, or in one shot,
  ``lm.trace(batch, trace=False)`` (what geonorm does).

:func:`unwrap` recognizes both by their attributes (neither library is imported, so geonorm does
not depend on them) and returns a :class:`Wrapped`; :func:`~geonorm_core.sources.sites.find_norm_sites`
and :class:`~geonorm_core.sources.adapter.Analyzer` go through it, so ``analyze``, ``Analyzer`` and
``GeometryMonitor`` take a bridge or an nnsight model wherever they take a torch model.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Wrapped", "unwrap"]


@dataclass(frozen=True)
class Wrapped:
    """A wrapped model seen from inside.

    Attributes
    ----------
    outer : the object the user holds (a ``TransformerBridge``, an nnsight ``LanguageModel``).
    inner : the torch model that computes (the Hugging Face model); hooks go on its modules.
    library : ``"transformer_lens"`` or ``"nnsight"``.
    site_names : norm-site name in ``inner`` (``_original_component`` components left out, as
        :func:`~geonorm_core.sources.sites.find_norm_sites` names them) -> the name the wrapper's users
        see; names not in it are used as they are.
    call : runs the model on a tokenizer batch (a dict with ``input_ids``, ``attention_mask``)
        in the wrapper's own calling convention.
    site_modules : norm-site name in ``inner`` -> the module to hook instead of the one found
        there: a TransformerLens bridge component runs its own copy of the norm's formula in raw
        mode (and calls the Hugging Face module only in some configurations), so only the
        component sees every forward.  Its input and output are the wrapped norm's.
    """

    outer: Any = field(repr=False)
    inner: torch.nn.Module = field(repr=False)
    library: str
    site_names: Mapping[str, str] = field(repr=False)
    call: Callable[[Mapping[str, Any]], Any] = field(repr=False)
    site_modules: Mapping[str, torch.nn.Module] = field(default_factory=dict, repr=False)


def unwrap(model: Any) -> Wrapped | None:
    """The :class:`Wrapped` view of a TransformerLens bridge or an nnsight model; None for anything else.

    Parameters
    ----------
    model : any object; a plain ``torch.nn.Module`` (including a Hugging Face model that a
        bridge wraps) gives None.
    """
    if _is_bridge(model):
        return _bridge(model)
    if _is_nnsight(model):
        return _nnsight(model)
    return None


# --- TransformerLens 4 ---------------------------------------------------------------------------

def _is_bridge(model: Any) -> bool:
    return (isinstance(model, torch.nn.Module)
            and any(c.__name__ == "TransformerBridge" for c in type(model).__mro__)
            and isinstance(getattr(model, "original_model", None), torch.nn.Module))


def _bridge(bridge: torch.nn.Module) -> Wrapped:
    inner = bridge.original_model
    # Each bridge component holds the Hugging Face module it calls and hook points named by the
    # TransformerLens name plus ".hook_out" etc.; key them by the inner module's tree name.
    # Compatibility mode re-points some hooks to legacy aliases (ln2's hook_in is hook_resid_mid),
    # so the first hook whose name still ends with its own attribute name says it.
    tl_name, outer = {}, {}
    for component in inner.modules():
        original = getattr(component, "original_component", None)
        if not isinstance(original, torch.nn.Module):
            continue
        for attr in ("hook_out", "hook_normalized", "hook_in"):
            name = getattr(getattr(component, attr, None), "name", None)
            if isinstance(name, str) and name.endswith("." + attr):
                tl_name[id(original)] = name[: -len(attr) - 1]
                outer[id(original)] = component
                break
    site_names, site_modules = {}, {}
    for raw, module in inner.named_modules():
        if id(module) in tl_name:
            clean = ".".join(p for p in raw.split(".") if p and p != "_original_component")
            site_names[clean] = tl_name[id(module)]
            site_modules[clean] = outer[id(module)]

    def call(batch: Mapping[str, Any]) -> Any:
        batch = dict(batch)
        return bridge(batch.pop("input_ids"), **batch)

    return Wrapped(outer=bridge, inner=inner, library="transformer_lens", site_names=site_names, call=call,
                   site_modules=site_modules)


# --- nnsight --------------------------------------------------------------------------------------

def _is_nnsight(model: Any) -> bool:
    return (not isinstance(model, torch.nn.Module)
            and any(c.__module__.startswith("nnsight") for c in type(model).__mro__)
            and isinstance(getattr(model, "_module", None), torch.nn.Module)
            and callable(getattr(model, "trace", None)))


def _nnsight(lm: Any) -> Wrapped:
    def call(batch: Mapping[str, Any]) -> Any:
        # nnsight's one-shot forward: its input preparation, dispatch and the model's registered
        # edits, as in a trace.  A ``with lm.trace(...)`` here would make nnsight read this file's
        # source to find the block, which breaks when the source is missing or changed on disk.
        return lm.trace(dict(batch), trace=False)

    return Wrapped(outer=lm, inner=lm._module, library="nnsight", site_names={}, call=call)
