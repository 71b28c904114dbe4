"""Options several commands share, what they mean in library calls, and their pre-flight."""
from __future__ import annotations

import argparse
from typing import Any, Iterator

from ..experiments.workload import model_and_batches
from . import preflight


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (``--max-tokens 0`` is a usage error, not an empty run)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_debug_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show the traceback of an error (also: GEONORM_DEBUG=1)")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The options every command that runs a model on a text shares (analyze, dump, swap-test)."""
    p.add_argument("--model", default="smollm2", help="smollm2, gemma3, minilm, whisper-base, a local checkpoint, "
                                                      "a folder `geonorm convert` wrote, or a cached Hugging Face "
                                                      "id (default: smollm2)")
    p.add_argument("--text", help="a UTF-8 text file (default: the bundled public-domain corpus)")
    p.add_argument("--max-tokens", type=positive_int, default=None, help="stop after this many tokens (default: all)")
    p.add_argument("--seq-len", type=positive_int, default=256, help="tokens per sequence (default: 256)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="sequences per forward pass (default: 8)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default: float32)")


def check_model_options(args: argparse.Namespace) -> str:
    """Pre-flight of :func:`add_model_options`: the text reads as UTF-8, the device and dtype
    exist, the model resolves (not loaded).  Returns what the model resolved to."""
    preflight.readable_text(args.text)
    preflight.device_and_dtype(args.device, args.dtype)
    return preflight.model_resolves(args.model)


def load_workload(args: argparse.Namespace) -> tuple[Any, Any, Iterator[dict], dict]:
    """(model, tokenizer, batches, meta) from the options of :func:`add_model_options`."""
    return model_and_batches(args.model, text=args.text, max_tokens=args.max_tokens, seq_len=args.seq_len,
                             batch_size=args.batch_size, device=args.device, dtype=args.dtype)


def wrote(paths: list[str], out: str) -> str:
    """The line every command that saves a folder ends with."""
    return f"wrote {len(paths)} files to {out}/: " + ", ".join(p.rsplit('/', 1)[-1] for p in paths)
