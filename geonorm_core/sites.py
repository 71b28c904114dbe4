"""Norm sites: every normalization layer of a torch / Hugging Face model, found and identified.

A *norm site* is one LayerNorm or RMSNorm module of a model together with what the analysis
needs to know about it: which formula it computes (verified numerically, not guessed from its
name), where it sits (transformer block, role in the block, encoder or decoder stack), its size
d, eps, and its effective gain and bias (SCIENCE.md G8).

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
from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .interop import unwrap

__all__ = ["NormSite", "find_norm_sites"]

ROLES = ("embed", "LN1", "q_norm", "k_norm", "post_attn", "cross_attn", "LN2", "post_mlp",
         "other", "final")
_EPS_ATTRS = ("eps", "variance_epsilon", "epsilon")
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

_TOL = 1e-4        # relative error under which a formula "reproduces" the module
_EPS_TOL = 1e-3    # same, for the probe at var ~ eps


@dataclass(frozen=True)
class NormSite:
    """One normalization layer of a model.

    Attributes
    ----------
    name : module name as in ``model.named_modules()``.
    module : the module itself (not in repr, equality or ``to_dict``); in a TransformerLens bridge, the
        bridge component that runs it (:mod:`geonorm_core.interop`).
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

    The site's output is ``normalize(x) * gain + bias`` (SCIENCE.md G8) with ``normalize`` the
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
        TransformerLens; :mod:`geonorm_core.interop`).
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
    tree = _Tree(inner)
    candidates = [(name, mod) for name, mod in tree.modules.items()
                  if _is_candidate(mod) and not tree.holds_candidate(name)]
    paths = [name.split(".") for name, _ in candidates]
    two_stacks = ({_stack_of(p) for p in paths} >= {"encoder", "decoder"})
    post_ln = _config_says_post_ln(inner)
    width = _model_width(inner)
    if width is None:  # no config: what a parameter-free norm of unknown size is probed at
        sizes = Counter(_size_of(m, None) for _, m in candidates) - Counter({None: len(candidates)})
        probe_width = sizes.most_common(1)[0][0] if sizes else None
    else:
        probe_width = width

    found = []
    for order, (name, module) in enumerate(candidates):
        with _as_the_forward_sees_it(module):  # weights offloaded by accelerate, loaded as its hook would
            ident = _identify(module, probe_width)
        if ident["kind"] == "unknown" and not include_unknown:
            warnings.warn(f"find_norm_sites: skipping {name!r} ({type(module).__name__}): "
                          f"{ident['why']}; pass include_unknown=True to list it", stacklevel=2)
            continue
        path = name.split(".")
        layer = _layer_of(path)
        found.append(dict(
            ident, name=name, module=module, layer=layer,
            role=_role_of(tree, path, layer, post_ln),
            stack=_stack_of(path) if two_stacks else None, order=order))

    if width is None:  # no config: the most common size among the block norms
        sizes = Counter(s["d"] for s in found
                        if s["layer"] is not None and s["role"] not in ("q_norm", "k_norm"))
        width = sizes.most_common(1)[0][0] if sizes else None

    found.sort(key=_forward_order)
    return [NormSite(name=user_names.get(s["name"], s["name"]), module=hook_on.get(s["name"], s["module"]),
                     kind=s["kind"], variant=s["variant"], formula=s["formula"], layer=s["layer"], role=s["role"], stack=s["stack"],
                     d=s["d"], eps=s["eps"], gain=s["gain"], bias=s["bias"],
                     residual=(s["d"] == width and s["role"] not in ("q_norm", "k_norm")),
                     verified=s["verified"])
            for s in found]


@contextlib.contextmanager
def _as_the_forward_sees_it(module: torch.nn.Module):
    """A module whose weights accelerate offloaded (on ``meta`` until its hook loads them for the
    forward) holds, inside this context, the tensors its forward uses: those of the hook's
    ``weights_map`` (memory or disk).  Only the module's own tensors; the meta ones come back after."""
    weights = offloaded_weights(module)
    saved = {}
    for name, value in weights.items():
        table = module._parameters if name in module._parameters else module._buffers
        saved[name] = (table, table[name])
        table[name] = torch.nn.Parameter(value, requires_grad=False) if table is module._parameters else value
    try:
        yield
    finally:
        for name, (table, old) in saved.items():
            table[name] = old


def offloaded_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors accelerate loads into ``module`` for its forward when its own are on ``meta``
    (its ``AlignDevicesHook``'s ``weights_map``), on the CPU; empty for a module that holds its weights."""
    hook = getattr(module, "_hf_hook", None)
    hooks = list(getattr(hook, "hooks", None) or ([hook] if hook is not None else []))
    own = dict(module.named_parameters(recurse=False))
    own.update(module.named_buffers(recurse=False))
    for h in hooks:
        weights_map = getattr(h, "weights_map", None)
        if not getattr(h, "offload", False) or weights_map is None:
            continue
        return {name: weights_map[name].detach().to("cpu") for name, t in own.items()
                if t is not None and t.device.type == "meta" and name in weights_map}
    return {}


# ---------------------------------------------------------------------------------------------
# 1. Candidates
# ---------------------------------------------------------------------------------------------

class _Tree:
    """The module tree of a model with ``_original_component`` path components left out.

    TransformerLens 4 re-parents every Hugging Face module it wraps under a bridge component,
    at ``<path>._original_component``; without that component the path is the Hugging Face one
    again.  Where a wrapper and the module it wraps then share a path, the inner one (the
    module that computes) keeps it.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.modules: dict[str, torch.nn.Module] = {}
        self.children: dict[str, set[str]] = {}
        for raw, module in model.named_modules():
            path = [p for p in raw.split(".") if p and p != "_original_component"]
            name = ".".join(path)
            self.modules[name] = module  # named_modules is pre-order: the inner module comes last
            if path:
                self.children.setdefault(".".join(path[:-1]), set()).add(path[-1])

    def holds_candidate(self, name: str) -> bool:
        """Whether a module below ``name`` (another module, not a wrapped twin) is a candidate."""
        prefix = name + "." if name else ""
        own = self.modules[name]
        return any(other is not own and key.startswith(prefix) and _is_candidate(other)
                   for key, other in self.modules.items() if key != name)


_NOT_PER_VECTOR = ("BatchNorm", "GroupNorm", "InstanceNorm", "SyncBatchNorm")


def _is_candidate(module: torch.nn.Module) -> bool:
    if getattr(module, "geonorm_site", True) is False:  # a module that says it is no norm site
        return False
    if isinstance(module, (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm)):
        return False  # normalize over the batch / channel groups, not each hidden vector
    if isinstance(module, (torch.nn.LayerNorm, torch.nn.RMSNorm)):
        return True
    name = type(module).__name__
    return "Norm" in name and not any(word in name for word in _NOT_PER_VECTOR)


def _eps_of(module: torch.nn.Module) -> float | None:
    """The eps the module advertises; None when it has no eps attribute (then it is measured)."""
    for attr in _EPS_ATTRS:
        eps = getattr(module, attr, None)
        if isinstance(eps, (int, float)) or (isinstance(eps, torch.Tensor) and eps.numel() == 1):
            return float(eps)
    if isinstance(module, torch.nn.RMSNorm):
        return float(torch.finfo(torch.float32).eps)  # nn.RMSNorm(eps=None) uses the dtype's eps
    return None


def _size_of(module: torch.nn.Module, width: int | None) -> int | None:
    """The normalized size: ``normalized_shape``, else the 1-D weight's length, else the model width
    (a parameter-free norm works at any size).  None when it normalizes over several axes."""
    shape = getattr(module, "normalized_shape", None)
    if isinstance(shape, int):
        return shape
    if isinstance(shape, (tuple, list, torch.Size)) and len(shape) > 0:
        return int(shape[0]) if len(shape) == 1 else None
    weight = _tensor_attr(module, "weight")
    if weight is not None:
        return int(weight.shape[0]) if weight.dim() == 1 else None
    for attr in ("hidden_size", "dim", "d_model"):
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return width


# ---------------------------------------------------------------------------------------------
# 2. Numeric verification
# ---------------------------------------------------------------------------------------------

def _identify(module: torch.nn.Module, width: int | None = None) -> dict:
    """Which formula the module computes, its variant, eps, effective gain and bias."""
    d, eps = _size_of(module, width), _eps_of(module)
    weight, bias = _tensor_attr(module, "weight"), _tensor_attr(module, "bias")
    if d is None:
        return _unknown(module, 0, eps or 0.0, "it normalizes over more than one axis, or its size is unknown")
    if eps is None:
        eps = _measure_eps(module, d)
        if isinstance(eps, str):
            return _unknown(module, d, 0.0, eps)
    probe = _probe(module, d, eps)
    if isinstance(probe, str):  # could not run it: trust only torch's own classes
        if type(module) in (torch.nn.LayerNorm, torch.nn.RMSNorm):
            kind = "layernorm" if type(module) is torch.nn.LayerNorm else "rmsnorm"
            formula = (kind, "w" if weight is not None else None, bias is not None)
            return _known(module, formula, d, eps, weight, bias, verified=False)
        return _unknown(module, d, eps, probe)
    return _known(module, probe, d, eps, weight, bias, verified=True)


def _probe(module: torch.nn.Module, d: int, eps: float):
    """Run a randomized copy; return (kind, gain_form, has_bias) or a string saying why not."""
    gen = torch.Generator().manual_seed(0x6E6F726D)  # private: the global RNG is left alone
    try:
        twin, w, b = _random_twin(module, gen)
        rows = torch.randn(2, 3, d, generator=gen) + 3.0 * torch.rand(2, 3, 1, generator=gen) + 1.0
        scale = max(1.0, 1e3 * math.sqrt(max(eps, 0.0)))  # var >> eps: eps cannot hide a formula
        with torch.no_grad():
            big = _run(twin, rows * scale)
            small = _run(twin, rows * math.sqrt(eps)) if eps > 0 else None
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot verify"
        return f"it could not be run on a float32 (2, 3, {d}) tensor ({type(exc).__name__}: {exc})"

    x = (rows * scale).double().numpy()
    errors = {}
    for kind in ("layernorm", "rmsnorm"):
        for gain_form in ((None, "w", "1+w") if w is not None else (None,)):
            for has_bias in ((False, True) if b is not None else (False,)):
                gain = None if gain_form is None else (w if gain_form == "w" else 1.0 + w)
                pred = _reference(x, kind, gain, b if has_bias else None, eps)
                errors[(kind, gain_form, has_bias)] = _rel_error(big, pred)
    best = min(errors, key=errors.get)
    if not errors[best] < _TOL:
        return ("its output matches neither LayerNorm nor RMSNorm "
                f"(closest: {best[0]}, relative error {errors[best]:.2g})")
    if small is not None:
        kind, gain_form, has_bias = best
        gain = None if gain_form is None else (w if gain_form == "w" else 1.0 + w)
        x_small = (rows * math.sqrt(eps)).double().numpy()
        err = _rel_error(small, _reference(x_small, kind, gain, b if has_bias else None, eps))
        if not err < _EPS_TOL:
            warnings.warn(f"find_norm_sites: {type(module).__name__} does not use its eps={eps:g} "
                          f"as var + eps (relative error {err:.2g} at var ~ eps)", stacklevel=4)
    return best


def _measure_eps(module: torch.nn.Module, d: int) -> float | str:
    """The eps a module without an eps attribute adds to the variance, measured from its output.

    Both formulas give ``mean(y^2) = v / (v + eps)`` for unit gain, no bias and rows of variance
    (LayerNorm) or mean square (RMSNorm) ``v``, so ``eps = v (1 / mean(y^2) - 1)``; ``v`` runs down
    from 1 until the ratio is informative (``mean(y^2)`` in [0.05, 0.95]).  Rows are centered and
    the gain set to 1 and the bias to 0, so the ratio is the same for both formulas.  Returns the
    estimate rounded to 3 significant digits, 0.0 when eps stays below 1e-12 of the variance even
    at ``v = 1e-12``, or a string saying why it could not be run.
    """
    gen = torch.Generator().manual_seed(0x657073)
    try:
        twin, _, _ = _random_twin(module, gen)
        for attr, value in (("weight", 1.0), ("bias", 0.0)):
            t = _tensor_attr(twin, attr)
            if t is not None:
                t.fill_(value)
        row = torch.randn(4, d, generator=gen, dtype=torch.float64)
        row = row - row.mean(-1, keepdim=True)
        row = row / row.pow(2).mean(-1, keepdim=True).sqrt()  # unit variance and mean square
        for v in (10.0 ** -k for k in range(13)):
            with torch.no_grad():
                y = _run(twin, (row * math.sqrt(v)).float())
            ratio = float(np.mean(y * y))
            if 0.05 <= ratio <= 0.95:
                return float(f"{v * (1.0 / ratio - 1.0):.3g}")
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot verify"
        return f"it could not be run on a float32 (4, {d}) tensor ({type(exc).__name__}: {exc})"
    return 0.0


def _random_twin(module: torch.nn.Module, gen: torch.Generator):
    """A shallow copy with its own float32 CPU tensors: weight in [0.5, 1.5), bias ~ N(0, 1/4).

    Random parameters make every candidate formula distinct (w, 1 + w and 1 never coincide),
    whatever the real weights are (Gemma initializes w = 0, Llama w = 1).  Returns the copy and
    its new weight and bias as float64 arrays (None where the module has none).
    """
    twin = copy.copy(module)  # shares submodules and hook dicts; we call forward directly
    for store in ("_parameters", "_buffers"):
        twin.__dict__[store] = {k: None if t is None else _as_float32(t).clone()
                                for k, t in module.__dict__[store].items()}
    drawn = {}
    for attr, draw in (("weight", lambda shape: 0.5 + torch.rand(shape, generator=gen)),
                       ("bias", lambda shape: 0.5 * torch.randn(shape, generator=gen))):
        current = _tensor_attr(twin, attr)
        if current is not None:
            new = draw(current.shape)
            store = next((s for s in (twin._parameters, twin._buffers) if attr in s), twin.__dict__)
            store[attr] = new
            drawn[attr] = new.double().numpy()
    return twin, drawn.get("weight"), drawn.get("bias")


def _run(twin: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    out = type(twin).forward(twin, x)  # the class's forward: no hooks, no accelerate wrappers
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        raise TypeError(f"returned {type(out).__name__} "
                        f"{tuple(out.shape) if isinstance(out, torch.Tensor) else ''}")
    return out.detach().double().numpy()


def _reference(x: np.ndarray, kind: str, gain, bias, eps: float) -> np.ndarray:
    """The candidate formulas in float64 (SCIENCE.md G7, G8); the variance is two-pass."""
    if kind == "layernorm":
        centered = x - x.mean(-1, keepdims=True)
        y = centered / np.sqrt((centered * centered).mean(-1, keepdims=True) + eps)
    else:
        y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    if gain is not None:
        y = y * gain
    if bias is not None:
        y = y + bias
    return y


def _rel_error(out: np.ndarray, pred: np.ndarray) -> float:
    err = np.max(np.abs(out - pred)) / max(np.max(np.abs(pred)), 1e-30)
    return float(err) if np.isfinite(err) else math.inf


def _known(module, formula, d, eps, weight, bias, *, verified) -> dict:
    kind, gain_form, has_bias = formula
    gain = None
    if gain_form is not None and weight is not None and weight.device.type != "meta":
        gain = _as_float32(weight)
        gain = (1.0 + gain if gain_form == "1+w" else gain).numpy()
    bias_arr = (_as_float32(bias).numpy()
                if has_bias and bias is not None and bias.device.type != "meta" else None)
    for arr in (gain, bias_arr):
        if arr is not None:
            arr.setflags(write=False)
    return dict(kind=kind, variant=_variant(module, kind, gain_form),
                formula=_formula_text(kind, gain_form, has_bias), d=d, eps=eps,
                gain=gain, bias=bias_arr, verified=verified)


def _unknown(module, d, eps, why) -> dict:
    weight = _tensor_attr(module, "weight")
    gain = None
    if weight is not None and weight.device.type != "meta" and weight.dim() == 1:
        gain = _as_float32(weight).numpy()
        gain.setflags(write=False)
    return dict(kind="unknown", variant="unknown", formula="unverified", d=d, eps=eps,
                gain=gain, bias=None, verified=False, why=why)


def _variant(module: torch.nn.Module, kind: str, gain_form: str | None) -> str:
    cls = type(module)
    if kind == "layernorm":
        if gain_form == "1+w":
            return "layernorm-1p"
        return "torch.LayerNorm" if cls is torch.nn.LayerNorm else "layernorm"
    if gain_form == "1+w":
        return "gemma"
    if cls is torch.nn.RMSNorm:
        return "torch.RMSNorm"
    return "t5" if cls.__name__.endswith("LayerNorm") else "llama"


def _formula_text(kind: str, gain_form: str | None, has_bias: bool) -> str:
    text = ("(x - mean(x)) / sqrt(var(x) + eps)" if kind == "layernorm"
            else "x / sqrt(mean(x^2) + eps)")
    text += {None: "", "w": " * w", "1+w": " * (1 + w)"}[gain_form]
    return text + (" + b" if has_bias else "")


def _tensor_attr(module: torch.nn.Module, attr: str) -> torch.Tensor | None:
    t = getattr(module, attr, None)
    return t if isinstance(t, torch.Tensor) else None


def _as_float32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float32) if t.is_floating_point() else t.detach().cpu()


# ---------------------------------------------------------------------------------------------
# 3. Layer, stack and role from the module path
# ---------------------------------------------------------------------------------------------

def _layer_of(path: list[str]) -> int | None:
    for prev, part in zip(path, path[1:]):
        if part.isdigit() and prev.lower() in _LAYER_LISTS:
            return int(part)
    return next((int(p) for p in path if p.isdigit()), None)


def _stack_of(path: list[str]) -> str | None:
    for part in path:
        low = part.lower()
        if "decoder" in low:
            return "decoder"
        if "encoder" in low:
            return "encoder"
    return None


def _role_of(tree: _Tree, path: list[str], layer: int | None, post_ln: bool) -> str:
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


def _config_says_post_ln(model: torch.nn.Module) -> bool:
    config = getattr(model, "config", None)
    return any(getattr(config, attr, True) is False
               for attr in ("do_layer_norm_before", "normalize_before"))


def _model_width(model: torch.nn.Module) -> int | None:
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


def _forward_order(site: dict):
    stack_rank = {"encoder": 0, None: 1, "decoder": 2}[site["stack"]]
    if site["layer"] is not None:
        position = site["layer"]
    else:
        position = -1 if site["role"] == "embed" else math.inf
    return (stack_rank, position, ROLES.index(site["role"]), site["order"])


def hook_sites(sites: Sequence[NormSite], make_hook: Callable[[NormSite], Callable]) -> list:
    """Register ``make_hook(site)`` as a forward hook (``with_kwargs=True``) on each site's module;
    return the handles (``handle.remove()`` takes a hook off again)."""
    return [site.module.register_forward_hook(make_hook(site), with_kwargs=True) for site in sites]


def hook_tensors(args: tuple, kwargs: dict, output: Any) -> tuple[Any, Any]:
    """(input, output) of a norm module as a forward hook registered ``with_kwargs=True`` sees
    them: the site's "hidden" and "post" tensors, whether the input came positionally or by
    keyword and whether the module returns a tensor or a tuple."""
    hidden = args[0] if args else next(v for v in kwargs.values() if torch.is_tensor(v))
    post = output[0] if isinstance(output, (tuple, list)) else output
    return hidden, post
