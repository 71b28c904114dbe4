"""``geonorm swap-test``: run a model as is and with its norms swapped, and compare."""
from __future__ import annotations

import argparse

from ..experiments.workload import progress
from . import preflight
from .options import add_model_options, check_model_options, load_workload, wrote

HELP = ("run a model as is and with its norms swapped (LayerNorm without its mean subtraction, or RMSNorm "
        "with one) and compare")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_options(p)
    p.add_argument("--direction", choices=("auto", "remove_mean", "add_mean"), default="auto",
                   help="auto (default): a LayerNorm model loses the mean subtraction, an RMSNorm model gains it")
    p.add_argument("--out", default="geonorm-swap", help="result folder (default: geonorm-swap)")


@preflight.holds_out_lock
def run(args: argparse.Namespace) -> int:
    from ..experiments.swap import swap_test  # torch is imported only when the command runs

    preflight.writable_folder(args.out)
    check_model_options(args)
    model, tokenizer, batches, meta = load_workload(args)
    with progress(args.max_tokens) as bar:
        result = swap_test(model, tokenizer, batches, direction=args.direction, meta=meta, progress=bar)
    print(result.table(top=10))
    print(wrote(result.save(args.out), args.out))
    return 0
