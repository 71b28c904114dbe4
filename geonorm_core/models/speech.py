"""Whisper's input: speech from espeak-ng, the batches that feed its decoder, and the analysis
of the decoder conditioned on that speech.

Speech comes from Debian's ``espeak-ng`` (``apt-get install espeak-ng``): :func:`synthesize`
turns text into 16 kHz audio, :func:`whisper_batches` cuts a corpus into chunks that fit
Whisper's 30-second window and yields the decoder's tokens (teacher forcing: the Whisper prompt
then the chunk's transcript) with the log-mel features of the chunk's speech.
:class:`WhisperDecoderFeed` presents the model the way :func:`geonorm_core.sources.adapter.analyze`
feeds language models (``input_ids``/``attention_mask`` are the decoder's), and
:func:`analyze_whisper` runs the analysis on the decoder's (or encoder's) norm sites.
:func:`transcribe` and :func:`word_error_rate` check that the speech is what the text says.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["MAX_DECODER_TOKENS", "PROMPT_TOKENS", "SAMPLING_RATE", "WINDOW_SECONDS", "WhisperDecoderFeed",
           "analyze_whisper", "espeak_path", "synthesize", "transcribe", "whisper_batches", "word_error_rate"]

SAMPLING_RATE = 16_000      # Whisper's input rate
WINDOW_SECONDS = 30.0       # Whisper's encoder window (3000 log-mel frames)
MAX_DECODER_TOKENS = 448  # Whisper's decoder positions (max_target_positions)
PROMPT_TOKENS = ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")


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
