"""``geonorm dump``: run a model on a text and write its norm sites' activations (resumable)."""
from __future__ import annotations

import argparse

from ..experiments.workload import progress
from . import preflight
from .options import add_model_options, check_model_options, load_workload, positive_int

HELP = "write every norm site's input and output vectors to disk as safetensors shards (resumable)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_options(p)
    p.add_argument("--out", required=True, help="dump folder (new or empty; or the dump to --resume)")
    p.add_argument("--shard-rows", type=positive_int, default=None,
                   help="rows per shard and site (default: shard files of about 32 MiB, all sites' buffers at most "
                        "2 GiB; on --resume, the dump's own)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted dump (same options)")
    p.add_argument("--sites", action="append", metavar="NAME[,NAME...]",
                   help="only these norm sites (module names; default: every residual-stream site)")
    p.add_argument("--store-dtype", default=None, help="store rows as float32, bfloat16 or float16 "
                                                       "(default: as the model computes them)")
    p.add_argument("--exclude-first-token", action="store_true", help="drop each sequence's first token")


@preflight.holds_out_lock
def run(args: argparse.Namespace) -> int:
    from ..dumps.manifest import read_manifest
    from ..dumps.writing import dump  # torch is imported only when the command runs

    preflight.writable_folder(args.out)
    check_model_options(args)
    model, _, batches, meta = load_workload(args)  # dump() checks the disk for the rows before writing
    sites = [s for part in (args.sites or []) for s in part.split(",") if s] or None
    with progress(args.max_tokens) as bar:
        path = dump(model, batches, args.out, sites=sites, dtype=args.store_dtype, shard_rows=args.shard_rows,
                    resume=args.resume, exclude_first_token=args.exclude_first_token,
                    max_tokens=args.max_tokens, meta=meta, progress=bar)
    man = read_manifest(path)
    print(f"wrote {man['tokens']} tokens x {len(man['sites'])} sites to {args.out}/ "
          f"({sum(len(s['shards']) for s in man['sites'])} shards); analyze with: "
          f"geonorm analyze-dump {args.out}")
    return 0
