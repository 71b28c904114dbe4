"""A run's inputs and its progress: a model and its token batches from plain settings, and a
progress bar over tokens.

Every command that runs a model on a text (``analyze``, ``dump``, ``swap-test``) starts here,
and so can any script: :func:`model_and_batches` is what the command line's model options
mean.  Whisper is fed as its users would: the decoder reads the text's tokens while the
encoder hears the same text spoken (espeak-ng).
"""
from __future__ import annotations

import hashlib
import itertools
import sys
from collections.abc import Iterator
from typing import Any

from ..runtime import __version__

__all__ = ["model_and_batches", "progress"]


def model_and_batches(model: str = "smollm2", *, text: str | None = None, max_tokens: int | None = None,
                      seq_len: int = 256, batch_size: int = 8, device: str = "cpu", dtype: str = "float32",
                      device_map: Any = None, max_memory: dict | None = None,
                      offload_folder: str | None = None) -> tuple[Any, Any, Iterator[dict], dict]:
    """``(model, tokenizer, batches, meta)`` for a model name or path and a text file.

    Parameters
    ----------
    model : a short name (``smollm2``, ``gemma3``, ``minilm``, ``whisper-base``), a local
        checkpoint, a folder ``geonorm convert`` wrote, or a cached Hugging Face id
        (:func:`geonorm_core.experiments.convert.load_model_or_converted`).
    text : a UTF-8 text file; None: the bundled public-domain corpus.
    max_tokens, seq_len, batch_size : see :func:`geonorm_core.models.corpus.token_batches`.
    device, dtype : where and in which precision the model runs.
    device_map, max_memory, offload_folder : a model dispatched by accelerate over devices and disk
        (:func:`geonorm_core.models.load_model`); ``device`` is then not used.

    Returns
    -------
    The model (Whisper wrapped in :class:`~geonorm_core.models.speech.WhisperDecoderFeed`), its
    tokenizer, an iterator of batches, and the settings as report metadata.
    """
    from ..models.corpus import default_text, read_text, text_blocks, token_batches
    from ..models.loading import import_torch_side, resolve_dtype
    from .convert import load_model_or_converted

    torch, _ = import_torch_side()
    resolve_dtype(torch, dtype)  # a bad dtype fails before the model loads
    digest = hashlib.sha256()   # which text: with the batches counted, what tells reports' tokens apart
    if text is None:
        body = default_text()
        digest.update(body.encode("utf-8"))
    else:  # streamed, never held whole (hashed in one more pass over blocks, so memory stays small)
        for block in text_blocks(text):
            digest.update(block.encode("utf-8"))
        blocks = text_blocks(text)
        first = next(blocks)   # read now, so a bad file fails before loading
        body = itertools.chain([first], blocks)
    where = device if device_map is None else f"device_map={device_map}"
    print(f"loading {model} ({dtype}, {where}) ...", file=sys.stderr, flush=True)
    net, tokenizer = load_model_or_converted(model, dtype=dtype, device=device, device_map=device_map,
                                             max_memory=max_memory, offload_folder=offload_folder)
    if getattr(net.config, "model_type", None) == "whisper":
        from ..models.speech import WhisperDecoderFeed, whisper_batches

        net = WhisperDecoderFeed(net)
        body = body if isinstance(body, str) else read_text(text)  # speech needs the whole text
        batches = whisper_batches(body, tokenizer, seq_len=min(seq_len, 448), batch_size=batch_size,
                                  max_tokens=max_tokens)
    else:
        batches = token_batches(body, tokenizer, seq_len=seq_len, batch_size=batch_size, max_tokens=max_tokens)
    meta = {"model_name": model, "text": text or "default corpus", "seq_len": seq_len,
            "batch_size": batch_size, "max_tokens": max_tokens, "dtype": dtype, "device": device,
            "geonorm_version": __version__,
            # which tokens: with the batches counted, what tells two reports' token sets apart (merging.py)
            "text_sha256": digest.hexdigest()}
    if device_map is not None:
        placed: dict[str, int] = {}  # how many of the model's parts went where (a GPU index, cpu, disk)
        for where_to in getattr(net, "hf_device_map", {}).values():
            placed[str(where_to)] = placed.get(str(where_to), 0) + 1
        meta.update(device="device_map", device_map=device_map if isinstance(device_map, str) else "explicit",
                    placement=placed)
    return net, tokenizer, batches, meta


class progress:
    """A tqdm bar over tokens when tqdm is installed, else a line every call; call it with the
    tokens done so far (the ``progress=`` callback of analyze, dump and the swap test)."""

    def __init__(self, total: int | None) -> None:
        self.total, self.bar, self.done = total, None, 0

    def __enter__(self) -> progress:
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="tok", unit_scale=True, file=sys.stderr)
        except ImportError:
            pass
        return self

    def __call__(self, tokens: int) -> None:
        if self.bar is not None:
            self.bar.update(tokens - self.done)
        else:
            print(f"  {tokens} tokens", file=sys.stderr, flush=True)
        self.done = tokens

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
