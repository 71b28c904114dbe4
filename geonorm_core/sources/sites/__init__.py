"""Norm sites: every normalization layer of a torch / Hugging Face model, found and identified.

A *norm site* is one LayerNorm or RMSNorm module of a model together with what the analysis
needs to know about it: which formula it computes (verified numerically, not guessed from its
name), where it sits (transformer block, role in the block, encoder or decoder stack), its size
d, eps, and its effective gain and bias (G8).

How a module becomes a site
---------------------------
1. **Candidates, by what they might compute.**  Every ``torch.nn.LayerNorm`` and
   ``torch.nn.RMSNorm`` in any configuration (``elementwise_affine=False``, ``bias=False``), and
   every module whose class name contains ``"Norm"`` anywhere (``OlmoLayerNorm``,
   ``NemotronLayerNorm1P``, TransformerLens's ``LayerNormPre``/``RMSNormPre``), with or without
   parameters.  BatchNorm, InstanceNorm and GroupNorm (by type or by name) normalize over other
   axes and are never candidates.  A candidate that contains another candidate is a container or
   a wrapper (StableLM's per-head norm list, a TransformerLens bridge component around the Hugging
   Face norm it calls): the inner norms are the sites.  Path components named
   ``_original_component`` (how TransformerLens 4 nests the modules it wraps) are left out of
   names, so a wrapped model's sites carry the names of the model it wraps.  A module whose
   class sets ``geonorm_site = False`` is never a candidate (the conversion's centred embedding
   LayerNorm, which creates the stream rather than normalizing a vector of it).
2. **Numeric verification.**  The candidate's formula is identified by running it: a shallow copy
   of the module gets random float32 parameters on the CPU (so zero-initialized or all-ones
   weights cannot make two formulas look alike), its class's ``forward`` runs on a few random
   float32 rows with a clearly non-zero mean (so mean subtraction is visible), and each formula
   below is compared with the output::

       layernorm:  (x - mean(x)) / sqrt(var(x) + eps)      * gain  + bias
       rmsnorm:     x            / sqrt(mean(x^2) + eps)   * gain
       gain in {w, 1 + w, none},  bias in {b, none}

   The formula that reproduces the output (relative error < 1e-4) decides ``kind``, ``variant``
   and the effective gain: Gemma's ``x/rms * (1 + w)`` is reported with ``gain = 1 + w``, so
   downstream code always sees ``y * gain + bias``.  T5's ``T5LayerNorm`` (an RMSNorm under a
   LayerNorm name) and BERT/OPT/BLOOM's ``nn.LayerNorm`` fall out of the same test.  A second
   probe at ``var(x) ~ eps`` checks that the module really uses the eps it advertises (a warning
   if not).  The copy runs the class's ``forward`` directly, so no hook registered on the model
   ever fires, and the global torch RNG is not touched.  A module that matches no formula is
   kind ``"unknown"`` and is skipped with a warning unless ``include_unknown=True``.  A
   parameter-free norm has gain and bias None; one that keeps its eps out of sight (OLMo's
   ``F.layer_norm(..., eps=1e-5)`` with no attribute) has its eps measured from the probe at small
   variance (for LayerNorm ``mean(y^2) = var / (var + eps)``), rounded to 3 significant digits.
   Its size is ``normalized_shape``, else the weight's length, else the model width.  A module
   that cannot be run (meta device, extra forward arguments) is ``verified=False``: exact
   ``nn.LayerNorm``/``nn.RMSNorm`` keep their documented formula, anything else is unknown.

Variants (``NormSite.variant``; ``NormSite.formula`` spells the formula out):

=================  =====================================================================
variant            formula and typical owners
=================  =====================================================================
torch.LayerNorm    ``nn.LayerNorm``: (x - mean)/sqrt(var + eps) * w + b (GPT-2, GPT-J,
                   GPT-Neo, Pythia, OPT, BLOOM, Phi, BERT, Whisper)
torch.RMSNorm      ``nn.RMSNorm``: x/rms * w
layernorm          a custom class computing the LayerNorm formula
layernorm-1p       LayerNorm with gain 1 + w (Nemotron's LayerNorm1P)
llama              a custom RMSNorm class, x/rms * w (Llama, Mistral, Qwen2, ...)
gemma              x/rms * (1 + w) (Gemma, Gemma2, Gemma3)
t5                 x/rms * w computed by a class named ``...LayerNorm`` (T5; it also takes
                   the variance in float32 for half-precision inputs)
=================  =====================================================================

Where a site sits: layer, stack and role
----------------------------------------
``layer`` is the first integer component of the module path that follows a layer-list name
(``h``, ``layers``, ``layer``, ``blocks``, ``block``; otherwise the first integer component):
``transformer.h.3.ln_1`` -> 3, ``encoder.block.1.layer.0.layer_norm`` -> 1.  Norms outside the
blocks have ``layer=None``.

``stack`` is ``"encoder"`` or ``"decoder"`` for encoder-decoder models (T5, Whisper: the norm
sites' paths contain both an ``*encoder*`` and a ``*decoder*`` component) and ``None``
otherwise, so (stack, layer, role) identifies a site in every model.

``role`` follows the attribute-name conventions of the common implementations (names are
compared in lower case):

==========  ============================================================  =====================
role        attribute name (inside a block unless said otherwise)         models
==========  ============================================================  =====================
LN1         ln_1, input_layernorm, attention_norm, self_attn_layer_norm,  GPT-2, GPT-J (its one
            ln_attn, norm1, norm_1, layernorm_before, ...; a generic      LN feeds attention and
            ``layer_norm``/``norm`` whose block sublayer holds the         MLP in parallel), Neo,
            self-attention (T5's ``layer.0``)                              NeoX, Llama, OPT, Phi,
                                                                           Whisper, T5
LN2         ln_2, post_attention_layernorm (no sandwich norms in the      GPT-2, NeoX, BLOOM,
            block), pre_feedforward_layernorm, final_layer_norm (in a     Llama, Gemma2/3, OPT,
            block), ffn_norm, ln_mlp, norm2, layernorm_after, ...; a      Whisper, T5
            generic norm whose sublayer holds the MLP (T5's DenseReluDense)
post_attn   post_attention_layernorm when the block also has              Gemma2/3, OLMo2, BERT
            pre_/post_feedforward_layernorm (sandwich norm after
            attention); BERT's ``attention.output.LayerNorm`` (post-LN)
post_mlp    post_feedforward_layernorm; BERT's ``output.LayerNorm``        Gemma2/3, BERT
q_norm      q_norm, q_layernorm, query_layernorm, ...  (residual=False)   Gemma3, Qwen3, OLMo2
k_norm      k_norm, k_layernorm, key_layernorm, ...    (residual=False)   Gemma3, Qwen3, OLMo2
cross_attn  encoder_attn_layer_norm, cross_attn_layer_norm, ...; a        Whisper, BART, T5
            generic norm whose sublayer holds EncDecAttention (T5's
            decoder ``layer.1``); BERT's crossattention.output.LayerNorm
final       outside the blocks: ln_f, norm, norm_f, final_layernorm,      all decoders; both
            final_layer_norm, final_norm, layer_norm, post_layernorm      stacks of T5/Whisper
embed       outside the blocks, with "emb" in the path                    BERT, BLOOM
other       anything else
==========  ============================================================  =====================

Post-LN configurations: when the model's config says ``do_layer_norm_before=False`` or
``normalize_before=False`` (OPT-350m), the LN1/LN2 names are reported as post_attn/post_mlp.
Names alone cannot tell BART/Marian's post-LN ``self_attn_layer_norm`` from mBART/Whisper's
pre-LN one; they are reported as LN1/LN2.

``residual`` is True when ``d`` equals the model width (``config.hidden_size``/``d_model``/
``n_embd``, the text config's for multimodal models; without a config, the most common ``d``
among the block norms) and the role is not q_norm/k_norm: these sites see the residual stream.

Sites are returned in forward order: encoder stack before decoder stack; within a stack embed
norms, then blocks by index (in a block LN1, q_norm, k_norm, post_attn, cross_attn, LN2,
post_mlp, other), then final norms.
"""

import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..interop import unwrap
from .candidates import ModuleTree, is_candidate, size_of
from .formula import Formula, Identity, Unverifiable, identify
from .hooks import hook_sites, hook_tensors
from .offload import as_the_forward_sees_it
from .roles import ROLES, config_says_post_ln, forward_order, layer_of, model_width, role_of, stack_of

__all__ = ["ROLES", "Formula", "Identity", "NormSite", "Unverifiable", "find_norm_sites", "hook_sites",
           "hook_tensors", "identify"]


@dataclass(frozen=True)
class NormSite:
    """One normalization layer of a model.

    Attributes
    ----------
    name : module name as in ``model.named_modules()``.
    module : the module itself (not in repr, equality or ``to_dict``); in a TransformerLens bridge, the
        bridge component that runs it (:mod:`geonorm_core.sources.interop`).
    kind : ``"layernorm"`` (mean subtraction), ``"rmsnorm"`` or ``"unknown"``.
    variant : readable family of the formula: ``"torch.LayerNorm"``, ``"torch.RMSNorm"``,
        ``"layernorm"``, ``"layernorm-1p"``, ``"llama"``, ``"gemma"``, ``"t5"`` or ``"unknown"``.
    formula : the verified formula spelled out, e.g. ``"x / sqrt(mean(x^2) + eps) * (1 + w)"``.
    layer : transformer block index; None for norms outside the blocks (embed, final).
    role : ``"LN1"``, ``"LN2"``, ``"final"``, ``"embed"``, ``"post_attn"``, ``"post_mlp"``,
        ``"q_norm"``, ``"k_norm"``, ``"cross_attn"`` or ``"other"`` (module docstring table).
    stack : ``"encoder"``/``"decoder"`` in encoder-decoder models, else None.
    d : normalized size.
    eps : the eps the module adds to the variance (float32 machine eps for ``nn.RMSNorm(eps=None)``).
    gain : effective per-dimension gain as a read-only float32 array (``1 + w`` for Gemma), or
        None when the module has none (or its weights are on the meta device).
    bias : read-only float32 array, or None.
    residual : True when ``d`` is the model width and the site is not a q/k norm.
    verified : True when the formula was confirmed by running the module.

    The site's output is ``normalize(x) * gain + bias`` (G8) with ``normalize`` the
    LayerNorm standardization (G7) or the RMS division.
    """

    name: str
    module: torch.nn.Module = field(repr=False, compare=False)
    kind: str
    variant: str
    formula: str
    layer: int | None
    role: str
    stack: str | None
    d: int
    eps: float
    gain: np.ndarray | None = field(repr=False, compare=False)
    bias: np.ndarray | None = field(repr=False, compare=False)
    residual: bool
    verified: bool

    def to_dict(self) -> dict:
        """Return the site as a JSON-able dict.

        Returns
        -------
        dict
            Every scalar field plus ``module_class``, ``has_gain`` and ``has_bias``; no module
            and no arrays.
        """
        return {
            "name": self.name, "module_class": type(self.module).__name__,
            "kind": self.kind, "variant": self.variant, "formula": self.formula,
            "layer": self.layer, "role": self.role, "stack": self.stack, "d": self.d,
            "eps": self.eps, "has_gain": self.gain is not None, "has_bias": self.bias is not None,
            "residual": self.residual, "verified": self.verified,
        }


def find_norm_sites(model: Any, *, include_unknown: bool = False) -> list[NormSite]:
    """Find every LayerNorm/RMSNorm of ``model`` and identify its formula, layer and role.

    Parameters
    ----------
    model : torch.nn.Module, TransformerLens ``TransformerBridge`` or nnsight ``LanguageModel``
        Any torch model; Hugging Face models also give their width through ``model.config``.
        A wrapped model's sites are named as its users name them (``blocks.3.ln1`` in
        TransformerLens; :mod:`geonorm_core.sources.interop`).
    include_unknown : bool, default False
        Also return candidates whose output matches no formula (kind ``"unknown"``); by default
        they are skipped with a warning.

    Returns
    -------
    list of NormSite
        In forward order (module docstring); empty when the model has no norm.

    Raises
    ------
    TypeError
        If ``model`` is neither a ``torch.nn.Module`` nor a model wrapped by one of those libraries.

    Notes
    -----
    The formula of each candidate is verified by running a copy of it with random parameters on
    random rows (module docstring), so the model itself is neither modified nor run, and its
    hooks do not fire.
    """
    wrapped = unwrap(model)  # TransformerLens / nnsight: the torch model inside, the names users see
    if wrapped is None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, a TransformerLens TransformerBridge or an "
                            f"nnsight LanguageModel, got {type(model).__name__}")
        inner, user_names, hook_on = model, {}, {}
    else:
        inner, user_names, hook_on = wrapped.inner, wrapped.site_names, wrapped.site_modules
    tree = ModuleTree(inner)
    candidates = [(name, mod) for name, mod in tree.modules.items()
                  if is_candidate(mod) and not tree.holds_candidate(name)]
    paths = [name.split(".") for name, _ in candidates]
    two_stacks = ({stack_of(p) for p in paths} >= {"encoder", "decoder"})
    post_ln = config_says_post_ln(inner)
    width = model_width(inner)
    if width is None:  # no config: what a parameter-free norm of unknown size is probed at
        sizes = Counter(size_of(m, None) for _, m in candidates) - Counter({None: len(candidates)})
        probe_width = sizes.most_common(1)[0][0] if sizes else None
    else:
        probe_width = width

    found = []
    for order, (name, module) in enumerate(candidates):
        with as_the_forward_sees_it(module):  # weights offloaded by accelerate, loaded as its hook would
            ident = identify(module, probe_width)
        if ident.kind == "unknown" and not include_unknown:
            warnings.warn(f"find_norm_sites: skipping {name!r} ({type(module).__name__}): "
                          f"{ident.why}; pass include_unknown=True to list it", stacklevel=2)
            continue
        path = name.split(".")
        layer = layer_of(path)
        found.append(dict(
            ident=ident, d=ident.d, name=name, module=module, layer=layer,
            role=role_of(tree, path, layer, post_ln),
            stack=stack_of(path) if two_stacks else None, order=order))

    if width is None:  # no config: the most common size among the block norms
        sizes = Counter(s["d"] for s in found
                        if s["layer"] is not None and s["role"] not in ("q_norm", "k_norm"))
        width = sizes.most_common(1)[0][0] if sizes else None

    found.sort(key=forward_order)
    return [NormSite(name=user_names.get(s["name"], s["name"]), module=hook_on.get(s["name"], s["module"]),
                     kind=i.kind, variant=i.variant, formula=i.formula, layer=s["layer"], role=s["role"],
                     stack=s["stack"], d=i.d, eps=i.eps, gain=i.gain, bias=i.bias,
                     residual=(i.d == width and s["role"] not in ("q_norm", "k_norm")), verified=i.verified)
            for s in found for i in (s["ident"],)]
