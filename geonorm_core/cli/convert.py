"""``geonorm convert``: a pre-LN LayerNorm model as an RMSNorm model with the same outputs, saved."""
from __future__ import annotations

import argparse
import sys

from . import preflight

HELP = ("convert a pre-LN LayerNorm model to RMSNorm without changing its outputs (centre the residual "
        "writers, untie, swap the norms, verify) and save it")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="whisper-base, a local checkpoint or a cached Hugging Face id "
                                                  "(GPT-2, GPT-Neo, GPT-J, GPT-NeoX/Pythia, OPT, Phi, BLOOM, Whisper)")
    p.add_argument("--out", required=True, help="folder for the converted model (save_pretrained + "
                                                "geonorm_conversion.json); analyze it with geonorm analyze --model OUT")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                   help="float32 (default) or float64; 16-bit weights are refused (centring must be exact)")


@preflight.holds_out_lock
def run(args: argparse.Namespace) -> int:
    from ..experiments.convert import convert_model, describe

    out = preflight.writable_folder(args.out)
    preflight.model_resolves(args.model)
    print(f"loading {args.model} ({args.dtype}) ...", file=sys.stderr, flush=True)
    record = convert_model(args.model, out, dtype=args.dtype)
    print(describe(record))
    print(f"wrote {args.out}/ (load it with geonorm_core.load_converted or `geonorm analyze --model {args.out}`)")
    return 0
