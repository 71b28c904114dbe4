"""Options several commands share, what they mean in library calls, and their pre-flight."""
from __future__ import annotations

import argparse
import json
from typing import Any, Iterator

from ..experiments.workload import model_and_batches
from . import preflight
from .errors import UsageError


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
    p.add_argument("--device", default=None,
                   help="torch device (default: cpu; under torchrun with cuda, each process its "
                        "LOCAL_RANK's GPU)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default: float32)")
    p.add_argument("--device-map", default=None, metavar="MAP",
                   help="a model larger than one device, dispatched by accelerate: 'auto', 'balanced', "
                        "'sequential', or a JSON object of module -> device (checkpoints and cached ids; "
                        "not with --device)")
    p.add_argument("--max-memory", action="append", default=None, metavar="DEVICE=SIZE",
                   help="with --device-map: the most memory a device may hold, e.g. cpu=2GiB or 0=20GiB "
                        "(repeat it, or separate with commas); what does not fit goes to --offload-folder")
    p.add_argument("--offload-folder", default=None, metavar="DIR",
                   help="with --device-map: where the layers that fit nowhere else are kept (on disk)")


def check_model_options(args: argparse.Namespace) -> str:
    """Pre-flight of :func:`add_model_options`: the text reads as UTF-8, the device and dtype
    exist, the model resolves (not loaded).  Returns what the model resolved to."""
    preflight.readable_text(args.text)
    preflight.device_and_dtype(args.device or "cpu", args.dtype)
    dispatch_options(args)
    return preflight.model_resolves(args.model)


def dispatch_options(args: argparse.Namespace) -> dict:
    """``--device-map``, ``--max-memory``, ``--offload-folder`` as ``load_model``'s keyword arguments
    (empty without ``--device-map``); a usage error for options that do not go together."""
    if args.device_map is None:
        for option, value in (("--max-memory", args.max_memory), ("--offload-folder", args.offload_folder)):
            if value is not None:
                raise UsageError(f"{option} needs --device-map (e.g. --device-map auto)")
        return {}
    if args.device is not None:
        raise UsageError(f"--device {args.device} and --device-map {args.device_map}: choose one (a device "
                         f"map places the model's parts itself)")
    device_map: Any = args.device_map
    if device_map.lstrip().startswith("{"):
        try:
            device_map = json.loads(device_map)
        except ValueError as exc:
            raise UsageError(f"--device-map: not a JSON object ({exc})") from None
    out = {"device_map": device_map}
    if args.max_memory:
        memory: dict = {}
        for item in (x for arg in args.max_memory for x in arg.split(",") if x.strip()):
            device, sep, size = item.partition("=")
            if not sep or not device.strip() or not size.strip():
                raise UsageError(f"--max-memory {item}: need DEVICE=SIZE, e.g. cpu=2GiB or 0=20GiB")
            device = device.strip()
            memory[int(device) if device.isdigit() else device] = size.strip()
        out["max_memory"] = memory
    if args.offload_folder is not None:
        out["offload_folder"] = str(preflight.writable_folder(args.offload_folder, "--offload-folder"))
    return out


def load_workload(args: argparse.Namespace) -> tuple[Any, Any, Iterator[dict], dict]:
    """(model, tokenizer, batches, meta) from the options of :func:`add_model_options`."""
    return model_and_batches(args.model, text=args.text, max_tokens=args.max_tokens, seq_len=args.seq_len,
                             batch_size=args.batch_size, device=args.device or "cpu", dtype=args.dtype,
                             **dispatch_options(args))


def wrote(paths: list[str], out: str) -> str:
    """The line every command that saves a folder ends with."""
    return f"wrote {len(paths)} files to {out}/: " + ", ".join(p.rsplit('/', 1)[-1] for p in paths)
