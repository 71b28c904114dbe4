"""Exact LayerNorm -> RMSNorm conversion of pre-LN models: centre every residual writer, then swap the norms.

The paper finds hidden states *nearly* orthogonal to 1, so LayerNorm's mean subtraction is nearly
redundant; deleting it outright still hurts (the swap test).  This module makes it *exactly*
redundant without changing a single output (Jiang & Gu, NeurIPS 2023; TransformerLens's
``center_writing_weights`` + ``fold_ln``, here for Hugging Face models):

1. **Centre every residual writer** (G10, G16).  LayerNorm ignores any multiple of 1 added to its
   input, so replacing each write ``w`` to the residual stream by ``P w = w - mean(w) 1`` leaves every
   downstream LayerNorm output unchanged.  ``P`` is linear, so a writer is centred by centring its
   weights: each output column of an attention/MLP output projection (``nn.Linear`` rows of
   ``weight.T``, GPT-2's transposed ``Conv1D``), its bias, and each row of the token and learned
   position embeddings.  By induction over the blocks the converted stream is ``P s`` where the
   original was ``s``: every block reads ``LN(P s) = LN(s)`` and writes ``P w``.
2. **The stream is exactly orthogonal to 1** (G17): a sum of centred writes is centred.
3. **Swap the norms** (G9, G18): on a stream ``x`` with ``1^T x = 0``,
   ``LN_{alpha,beta}(x) = RMSNorm_alpha(x) + beta`` with the same eps, so each residual-stream
   LayerNorm becomes :class:`AffineRMSNorm` (gain, same eps, the LayerNorm's bias where it had one).

Tied input/output embeddings are untied first: the unembedding reads the final norm's output
``z = alpha * y + beta``, which is not orthogonal to 1 (G13), so centring it would change the logits.

Scope: the pre-LN architectures of :data:`ARCHITECTURES` (GPT-2, GPT-Neo, GPT-J, GPT-NeoX/Pythia, OPT,
Phi, BLOOM, Whisper's decoder).  BLOOM's embedding LayerNorm *creates* the stream, so its output is
made exact by centring it (:class:`CentredEmbeddingLayerNorm`, ``P LN(e)``); Whisper's encoder stays
as it is (its stream starts at a GELU, which no weight change centres; its norms do not read the
decoder's stream).  Post-LN models (BERT/MiniLM, OPT-350m), whose LayerNorm output *is* the stream,
and RMSNorm models, which have no mean subtraction to remove, are refused with the reason.

After converting, a probe forward pass measures every converted site's input with the core: a writer
the tables missed would leave the stream visibly off 90 degrees, and the conversion raises instead of
returning a model that is silently approximate.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..durable import fsync_dir, write_text
from ..models.loading import resolve_device, resolve_dtype
from ..nn import AffineRMSNorm
from ..sources.sites import find_norm_sites

__all__ = ["ConversionError", "AffineRMSNorm", "CentredEmbeddingLayerNorm", "ARCHITECTURES", "to_rmsnorm",
           "save_converted", "load_converted", "is_converted", "convert_model", "load_model_or_converted",
           "describe", "CONVERSION_FILE"]

#: The file beside the ``save_pretrained`` output that says what :func:`to_rmsnorm` changed.
CONVERSION_FILE = "geonorm_conversion.json"
_FORMAT = 1
#: Largest |cos angle(x, 1)| the probe accepts at a converted site's input.  fp32 rounding of centred
#: writes leaves ~1e-7; a missed writer leaves ~1e-2 or more.
_PROBE_TOL = 1e-4


class ConversionError(ValueError):
    """The model cannot be converted exactly (the message says why)."""


@dataclass(frozen=True)
class Architecture:
    """Where one architecture writes to its residual stream.

    embeddings : regexes of the embedding modules (``weight`` of shape (rows, d)) whose rows the
        stream starts from (token, learned positions).
    writers : regexes of the linear maps that add to the stream (attention and MLP output projections).
    stack : only modules under a path component containing this word (Whisper: "decoder").
    embed_norms : regexes of LayerNorms applied to the embeddings before the first block (BLOOM).
    """

    embeddings: tuple[str, ...]
    writers: tuple[str, ...]
    stack: str | None = None
    embed_norms: tuple[str, ...] = ()


_BLOCK = r"(^|\.)(h|layers)\.\d+\."
ARCHITECTURES: dict[str, Architecture] = {
    "gpt2": Architecture((r"(^|\.)wte$", r"(^|\.)wpe$"),
                         (_BLOCK + r"(attn|crossattention)\.c_proj$", _BLOCK + r"mlp\.c_proj$")),
    "gpt_neo": Architecture((r"(^|\.)wte$", r"(^|\.)wpe$"),
                            (_BLOCK + r"attn\.attention\.out_proj$", _BLOCK + r"mlp\.c_proj$")),
    "gptj": Architecture((r"(^|\.)wte$",), (_BLOCK + r"attn\.out_proj$", _BLOCK + r"mlp\.fc_out$")),
    "gpt_neox": Architecture((r"(^|\.)embed_in$",),
                             (_BLOCK + r"attention\.dense$", _BLOCK + r"mlp\.dense_4h_to_h$")),
    # OPT with word_embed_proj_dim != hidden_size writes project_in(embed_tokens(ids)); embed_tokens
    # then has the wrong width and is skipped, project_in is centred as a writer
    "opt": Architecture((r"(^|\.)embed_tokens$", r"(^|\.)embed_positions$"),
                        (r"(^|\.)decoder\.project_in$", _BLOCK + r"self_attn\.out_proj$", _BLOCK + r"fc2$")),
    "phi": Architecture((r"(^|\.)embed_tokens$",), (_BLOCK + r"self_attn\.dense$", _BLOCK + r"mlp\.fc2$")),
    "bloom": Architecture((), (_BLOCK + r"self_attention\.dense$", _BLOCK + r"mlp\.dense_4h_to_h$"),
                          embed_norms=(r"(^|\.)word_embeddings_layernorm$",)),
    "whisper": Architecture((r"(^|\.)decoder\.embed_tokens$", r"(^|\.)decoder\.embed_positions$"),
                            (_BLOCK + r"(self_attn|encoder_attn)\.out_proj$", _BLOCK + r"fc2$"),
                            stack="decoder"),
}


# ---------------------------------------------------------------------------------------------
# the modules a conversion puts in
# ---------------------------------------------------------------------------------------------

class CentredEmbeddingLayerNorm(torch.nn.Module):
    """A LayerNorm on the embeddings whose output is centred: ``P LN_{alpha,beta}(e)`` (G4, G13).

    BLOOM's stream starts at ``LN(e) = alpha * y + beta``, which is not orthogonal to 1 (G13) and is
    not a writer with weights to centre; removing the mean of its output is the exact way to start a
    centred stream (every later LayerNorm sees ``P s`` for ``s``, G16).  Keeps the LayerNorm's state-dict
    names.  Not a norm site: it creates the stream rather than reading it.
    """

    geonorm_site = False  # find_norm_sites skips it (its output, P LN(e), is neither LN nor RMSNorm)

    def __init__(self, ln: torch.nn.LayerNorm) -> None:
        super().__init__()
        if not isinstance(ln, torch.nn.LayerNorm) or len(ln.normalized_shape) != 1:
            raise ConversionError(f"embedding norm: expected a 1-D torch.nn.LayerNorm, "
                                  f"got {type(ln).__name__}")
        self.normalized_shape = tuple(ln.normalized_shape)
        self.ln_eps = float(ln.eps)  # not "eps": find_norm_sites must not take this for a norm site
        self.weight = ln.weight
        self.bias = ln.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.ln_eps)
        return z - z.mean(-1, keepdim=True)


# ---------------------------------------------------------------------------------------------
# the conversion
# ---------------------------------------------------------------------------------------------

def to_rmsnorm(model: torch.nn.Module, *, inplace: bool = False, verify: bool = True) -> torch.nn.Module:
    """Convert a pre-LN Hugging Face model to RMSNorm without changing its outputs.

    Every residual writer is centred (its writes ``w`` become ``P w``, G10/G16), so the stream stays
    orthogonal to 1 (G17) and each residual-stream LayerNorm equals the RMSNorm with the same gain and
    eps plus its bias (G9/G18), which replaces it (:class:`AffineRMSNorm`).  Tied input/output
    embeddings are untied first (the unembedding must not be centred, G13).

    Parameters
    ----------
    model : torch.nn.Module
        A Hugging Face model of an architecture in :data:`ARCHITECTURES` (``model.config.model_type``),
        with float32 or float64 parameters.
    inplace : bool, default False
        Convert ``model`` itself; by default a deep copy is converted and ``model`` is untouched.
    verify : bool, default True
        Run one short forward pass and check with the core that every converted site's input is
        orthogonal to 1 (``|cos angle(x, 1)| <= 1e-4``): a residual writer the tables missed would
        show here.

    Returns
    -------
    torch.nn.Module
        The converted model (``model`` itself when ``inplace``); ``model.geonorm_conversion`` holds the
        record :func:`save_converted` writes.

    Raises
    ------
    TypeError
        If ``model`` is not a ``torch.nn.Module``.
    ConversionError
        (a ``ValueError``) when the conversion cannot be exact: an architecture outside the table, a
        post-LN model, a model without LayerNorms (RMSNorm already), half-precision or meta parameters,
        a model converted before, or a probe that finds the stream off 90 degrees.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    arch, model_type = _architecture(model)
    _check_parameters(model)
    norms = _residual_layer_norms(model, arch, model_type)
    if not inplace:
        model = copy.deepcopy(model)

    d = _d_of(model, norms)
    embed_norms = _matching(model, arch.embed_norms, arch.stack)
    embeddings = [n for n in _matching(model, arch.embeddings, arch.stack)
                  if _width_of(model.get_submodule(n)) == d]
    writers = _matching(model, arch.writers, arch.stack)
    if not writers:
        raise ConversionError(f"{model_type}: found no residual writers in {type(model).__name__}; "
                              "the architecture table does not fit this implementation")
    untied = _untie_if_centred(model, embeddings)

    with torch.no_grad():
        for name in embeddings:
            _remove_uniform_from_embedding(model.get_submodule(name))
        for name in writers:
            _remove_uniform_from_writer(model.get_submodule(name), name, d)
    _swap_norms(model, embed_norms, norms)

    record = {"format": _FORMAT, "model_class": type(model).__name__, "model_type": model_type,
              "rmsnorm_sites": norms, "centred_embedding_norms": embed_norms,
              "centred_embeddings": embeddings, "centred_writers": writers, "untied_output_embedding": untied}
    model.geonorm_conversion = record
    if verify:
        worst = _probe(model, norms)
        record["probe_max_abs_cos"] = worst
    return model


def _architecture(model: torch.nn.Module) -> tuple[Architecture, str]:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if getattr(model, "geonorm_conversion", None) is not None or any(
            isinstance(m, AffineRMSNorm) for m in model.modules()):
        raise ConversionError("model: already converted to RMSNorm (it has AffineRMSNorm modules)")
    if model_type not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        why = ""
        sites = find_norm_sites(model) if isinstance(model, torch.nn.Module) else []
        if sites and all(s.kind == "rmsnorm" for s in sites if s.residual):
            why = (" It normalizes with RMSNorm already: there is no mean subtraction to remove.")
        elif any(s.role in ("post_attn", "post_mlp") and s.kind == "layernorm" for s in sites):
            why = (" It is post-LN: the LayerNorm output is the residual stream itself, so no "
                   "weight change makes its input orthogonal to 1 and LN != RMSNorm there.")
        raise ConversionError(f"model: cannot convert model_type={model_type!r} "
                              f"({type(model).__name__}) exactly.{why} "
                              f"Supported pre-LN architectures: {known}")
    return ARCHITECTURES[model_type], model_type


def _check_parameters(model: torch.nn.Module) -> None:
    for name, p in model.named_parameters():
        if p.device.type == "meta":
            raise ConversionError(f"parameter {name!r} is on the meta device; load the weights first")
        if p.is_floating_point() and p.dtype not in (torch.float32, torch.float64):
            raise ConversionError(
                f"parameter {name!r} has dtype {p.dtype}; expected float32 or float64. Centred weights "
                f"rounded to 16 bits are centred only to ~1e-3, so the conversion would be approximate: "
                f"convert in float32 and cast afterwards if you accept that")


def _residual_layer_norms(model: torch.nn.Module, arch: Architecture, model_type: str) -> list[str]:
    sites = [s for s in find_norm_sites(model) if s.residual]
    if arch.stack is not None:
        sites = [s for s in sites if s.stack == arch.stack]
    embed_re = [re.compile(p) for p in arch.embed_norms]
    post = [s.name for s in sites if s.role in ("post_attn", "post_mlp")]
    if post:
        raise ConversionError(
            f"{model_type}: post-LN configuration (norms after the sublayers, e.g. {post[0]!r}): the "
            "LayerNorm output is the residual stream, so its input cannot be made orthogonal to 1 by "
            "centring writers and LN != RMSNorm there; only pre-LN models convert exactly")
    chosen, not_ln = [], []
    for s in sites:
        if any(r.search(s.name) for r in embed_re):
            continue
        if s.kind != "layernorm" or s.variant not in ("torch.LayerNorm", "layernorm"):
            not_ln.append(f"{s.name} ({s.variant})")
            continue
        chosen.append(s.name)
    if not chosen:
        raise ConversionError(f"{model_type}: no residual-stream LayerNorm to convert "
                              f"({', '.join(not_ln) or 'no norm sites'}); an RMSNorm model has no mean "
                              "subtraction to remove")
    if not_ln:
        raise ConversionError(f"{model_type}: residual-stream norms that are not plain LayerNorms: "
                              f"{', '.join(not_ln[:4])}; the conversion would not be exact")
    return chosen


def _matching(model: torch.nn.Module, patterns: tuple[str, ...], stack: str | None) -> list[str]:
    regs = [re.compile(p) for p in patterns]
    names = []
    for name, _ in model.named_modules():
        if stack is not None and not any(stack in part for part in name.split(".")):
            continue
        if any(r.search(name) for r in regs):
            names.append(name)
    return names


def _d_of(model: torch.nn.Module, norms: list[str]) -> int:
    return int(model.get_submodule(norms[0]).weight.shape[0])


def _width_of(module: torch.nn.Module) -> int | None:
    w = getattr(module, "weight", None)
    return int(w.shape[-1]) if isinstance(w, torch.Tensor) and w.dim() == 2 else None


def _untie_if_centred(model: torch.nn.Module, embeddings: list[str]) -> bool:
    """Give the output embedding its own copy when it shares a tensor with an embedding we centre."""
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    if out is None or not isinstance(getattr(out, "weight", None), torch.Tensor):
        return False
    centred = {model.get_submodule(n).weight.data_ptr() for n in embeddings}
    if out.weight.data_ptr() not in centred:
        return False
    out.weight = torch.nn.Parameter(out.weight.detach().clone(), requires_grad=out.weight.requires_grad)
    for cfg in _configs(model):
        cfg.tie_word_embeddings = False
    return True


def _configs(model: torch.nn.Module) -> list:
    config = getattr(model, "config", None)
    if config is None:
        return []
    found = [config]
    try:
        text = config.get_text_config()
        if text is not config:
            found.append(text)
    except Exception:  # noqa: BLE001 - not a transformers config
        pass
    return found


def _remove_uniform_from_embedding(module: torch.nn.Module) -> None:
    w = module.weight
    w64 = w.detach().double()
    w.copy_(w64 - w64.mean(dim=1, keepdim=True))  # each row is a write of d values


def _remove_uniform_from_writer(module: torch.nn.Module, name: str, d: int) -> None:
    """Remove the component along 1 from the writes ``W h + b`` of a linear map into the d-dim stream:
    ``P W`` and ``P b`` (G16; "centring" in TransformerLens's words)."""
    w = module.weight
    if isinstance(module, torch.nn.Linear) and w.shape[0] == d:
        axis = 0                                   # nn.Linear: weight (out=d, in)
    elif type(module).__name__ == "Conv1D" and getattr(module, "nf", None) == d and w.shape[1] == d:
        axis = 1                                   # GPT-2's Conv1D: weight (in, out=d)
    else:
        raise ConversionError(f"writer {name!r}: expected an nn.Linear with out_features={d} or a Conv1D "
                              f"with nf={d}, got {type(module).__name__} weight {tuple(w.shape)}")
    w64 = w.detach().double()
    w.copy_(w64 - w64.mean(dim=axis, keepdim=True))
    b = getattr(module, "bias", None)
    if isinstance(b, torch.Tensor):
        b64 = b.detach().double()
        b.copy_(b64 - b64.mean())


def _swap_norms(model: torch.nn.Module, embed_norms: list[str], norms: list[str]) -> None:
    """The conversion's module replacements, one definition for converting and for loading back:
    embedding LayerNorms -> their centred output, residual LayerNorms -> RMSNorm + bias (G18)."""
    for name in embed_norms:
        _replace(model, name, CentredEmbeddingLayerNorm(model.get_submodule(name)))
    for name in norms:
        _replace(model, name, AffineRMSNorm.from_layer_norm(model.get_submodule(name)))


def _replace(model: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


def _probe_inputs(model: torch.nn.Module) -> dict:
    config = model.config
    gen = torch.Generator().manual_seed(1234)
    vocab = int(getattr(config, "vocab_size", 2) or 2)
    ids = torch.randint(0, vocab, (2, 8), generator=gen)
    device = next(model.parameters()).device
    if getattr(config, "model_type", None) == "whisper":
        frames = 2 * int(config.max_source_positions)
        feats = torch.randn(1, int(config.num_mel_bins), frames, generator=gen)
        dtype = next(model.parameters()).dtype
        return {"input_features": feats.to(device, dtype).expand(2, -1, -1),
                "decoder_input_ids": ids.to(device)}
    return {"input_ids": ids.to(device)}


def _probe(model: torch.nn.Module, norms: list[str]) -> float:
    """Run the model once; return the largest |cos angle(x, 1)| at a converted site's input (G2)."""
    from ..ops import decompose

    seen: dict[str, float] = {}

    def hook(name):
        def pre(module, args):
            x = args[0].detach().float().cpu()
            seen[name] = float(np.nanmax(np.abs(decompose(x).cos)))
        return pre

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in norms]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(**_probe_inputs(model))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [n for n in norms if n not in seen]
    if missing:
        raise ConversionError(f"probe: converted sites {missing[:3]} never ran in a forward pass")
    worst_name = max(seen, key=seen.get)
    if not seen[worst_name] <= _PROBE_TOL:
        raise ConversionError(
            f"probe: the stream entering {worst_name!r} is not orthogonal to 1 after centring "
            f"(|cos| = {seen[worst_name]:.3g} > {_PROBE_TOL:g}): a residual writer of this model is not in "
            f"the architecture table, so the conversion would not be exact")
    return max(seen.values())


# ---------------------------------------------------------------------------------------------
# saving and loading
# ---------------------------------------------------------------------------------------------

def save_converted(model: torch.nn.Module, tokenizer: Any, out_dir: str | os.PathLike) -> list[str]:
    """Save a converted model (``save_pretrained``), its tokenizer/processor and :data:`CONVERSION_FILE`.

    Parameters
    ----------
    model : a model returned by :func:`to_rmsnorm`.
    tokenizer : its tokenizer or processor (anything with ``save_pretrained``), or None.
    out_dir : the folder to write (created if needed).

    Returns
    -------
    list of str
        The files written.
    """
    record = getattr(model, "geonorm_conversion", None)
    if record is None:
        raise ValueError(f"model: a {type(model).__name__} that to_rmsnorm did not convert "
                         "(no geonorm_conversion record)")
    if tokenizer is not None and not hasattr(tokenizer, "save_pretrained"):
        raise TypeError(f"tokenizer: expected a tokenizer/processor with save_pretrained or None, "
                        f"got {type(tokenizer).__name__}")
    from ..runtime import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    saved = {**record, "tokenizer_class": None if tokenizer is None else type(tokenizer).__name__,
             "geonorm_version": __version__}
    # Written into a staging folder, fsynced, then each file renamed into place with the record
    # last: a crash or a full disk never leaves a half-written file, nor a folder that claims
    # to hold a converted model before every file of it is complete.
    stage = Path(tempfile.mkdtemp(prefix=".geonorm-staging-", dir=out))
    try:
        model.save_pretrained(stage)
        if tokenizer is not None:
            tokenizer.save_pretrained(stage)
        write_text(stage / CONVERSION_FILE, json.dumps(saved, indent=2) + "\n")
        (out / CONVERSION_FILE).unlink(missing_ok=True)
        files = sorted(stage.iterdir(), key=lambda p: (p.name == CONVERSION_FILE, p.name))
        for p in files:
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        for p in files:
            if p.is_dir() and (out / p.name).is_dir():
                shutil.rmtree(out / p.name)
            os.replace(p, out / p.name)
        fsync_dir(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return sorted(str(out / p.name) for p in files)


def is_converted(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder :func:`save_converted` wrote."""
    return (Path(path) / CONVERSION_FILE).is_file()


def load_converted(path: str | os.PathLike, *, dtype: Any = torch.float32,
                   device: Any = "cpu") -> tuple[torch.nn.Module, Any]:
    """Load a folder :func:`save_converted` wrote, offline, in eval mode: ``(model, tokenizer_or_None)``.

    The original architecture is built from the saved config and weights, then the module replacement
    of :data:`CONVERSION_FILE` is applied again (LayerNorm -> :class:`AffineRMSNorm` with the saved gain,
    bias and eps; BLOOM's embedding norm -> :class:`CentredEmbeddingLayerNorm`).  The centred weights are
    in the checkpoint itself.  The tokenizer is the saved processor for Whisper, else the saved tokenizer;
    None when none was saved.
    """
    folder = Path(path)
    if not is_converted(folder):
        raise ValueError(f"path: {os.fspath(path)!r} has no {CONVERSION_FILE}; "
                         "not a folder save_converted wrote")
    record = json.loads((folder / CONVERSION_FILE).read_text())
    if record.get("format") != _FORMAT:
        raise ValueError(f"path: {CONVERSION_FILE} has format {record.get('format')!r}, "
                         f"this geonorm reads {_FORMAT}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    cls = getattr(transformers, record["model_class"], None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ValueError(f"path: model class {record['model_class']!r} is not in this transformers")
    dtype, device = resolve_dtype(torch, dtype), resolve_device(torch, device)
    model = cls.from_pretrained(folder, dtype=dtype, local_files_only=True)
    _swap_norms(model, record["centred_embedding_norms"], record["rmsnorm_sites"])
    model.geonorm_conversion = {k: v for k, v in record.items()
                                if k not in ("geonorm_version", "tokenizer_class")}
    model = model.to(device).eval()
    if record.get("tokenizer_class") is None:
        return model, None
    return model, _load_tokenizer(transformers, folder, record["model_type"])


def _load_tokenizer(transformers, folder: Path, model_type: str) -> Any:
    loaders = ([transformers.AutoProcessor] if model_type == "whisper" else []) + [transformers.AutoTokenizer]
    for loader in loaders:
        try:
            return loader.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, TypeError, KeyError):
            continue
    return None


def convert_model(name_or_path: str, out_dir: str | os.PathLike, *, dtype: Any = "float32") -> dict:
    """Load a model by name (:func:`geonorm_core.models.load_model`: a short name such as
    ``"whisper-base"``, a local checkpoint, a cached id), convert it (:func:`to_rmsnorm`, verified by the
    probe) and save it (:func:`save_converted`): the ``geonorm convert --model M --out DIR`` command.

    Returns
    -------
    dict
        The conversion record (also in ``out_dir/geonorm_conversion.json``); :func:`describe` prints it.
    """
    from ..models.registry import load_model

    model, tokenizer = load_model(name_or_path, dtype=dtype)
    converted = to_rmsnorm(model, inplace=True)
    save_converted(converted, tokenizer, out_dir)
    return dict(converted.geonorm_conversion)


def load_model_or_converted(name_or_path: str, *, dtype: Any = "float32",
                            device: Any = "cpu", **dispatch: Any) -> tuple[Any, Any]:
    """:func:`load_converted` for a folder :func:`save_converted` wrote, else
    :func:`geonorm_core.models.load_model` (``dispatch``: its ``device_map``, ``max_memory``,
    ``offload_folder``): what ``geonorm analyze --model`` should call."""
    dispatch = {k: v for k, v in dispatch.items() if v is not None}
    if isinstance(name_or_path, (str, os.PathLike)) and is_converted(name_or_path):
        if dispatch:
            raise ValueError(f"device_map: {name_or_path} is a converted model; it loads whole on --device")
        return load_converted(name_or_path, dtype=dtype, device=device)
    from ..models.registry import load_model

    return load_model(name_or_path, dtype=dtype, device=device, **dispatch)


def describe(record: dict) -> str:
    """A few lines saying what a conversion changed (for the command line)."""
    lines = [f"{record['model_class']} ({record['model_type']}): "
             f"{len(record['rmsnorm_sites'])} LayerNorms -> RMSNorm(+bias), "
             f"{len(record['centred_writers'])} writers and "
             f"{len(record['centred_embeddings'])} embeddings centred"]
    if record.get("centred_embedding_norms"):
        lines.append(f"embedding LayerNorm output centred: {', '.join(record['centred_embedding_norms'])}")
    if record.get("untied_output_embedding"):
        lines.append("output embedding untied from the (now centred) input embedding")
    if "probe_max_abs_cos" in record:
        lines.append("probe: max |cos angle(x, 1)| at a converted site's input = "
                     f"{record['probe_max_abs_cos']:.2g}")
    return "\n".join(lines)
