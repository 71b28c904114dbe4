"""``geonorm analyze-dump PATH``: the analyze report from a dump or from array files.

Under ``torchrun`` the processes split the shards (shard i of the list of every site's shards
to rank i % N) and rank 0 writes the one report."""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from ..dumps.manifest import VERIFY_MODES
from ..dumps.reading import analyze_dump, open_activations
from ..dumps.stores import UnknownSiteError
from ..experiments.workload import progress
from . import preflight
from .errors import UsageError
from .options import positive_int, wrote

HELP = ("the analyze report from a geonorm dump, .npy/.npz/.safetensors/.pt arrays, or an activation store "
        "(SAELens/datasets folder, .arrow/.parquet, HDF5, zarr)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="dump folder, array file, folder of array files, or a store "
                                "(datasets folder, .arrow/.parquet, .h5/.hdf5, zarr)")
    p.add_argument("--sites", metavar="NAMES", default=None,
                   help="comma-separated sites to read (a store's column, dataset or array names; "
                        "default: all)")
    p.add_argument("--model", default=None,
                   help="the model the activations came from (a name or checkpoint, as for analyze): "
                        "the norms that hook-named sites feed give their gain, bias and eps "
                        "(see docs/stores.md)")
    p.add_argument("--out", default="geonorm-report", help="report folder (default: geonorm-report)")
    p.add_argument("--block-rows", type=positive_int, default=None, help="rows per block (default: ~32 MiB of rows)")
    p.add_argument("--bins", type=positive_int, default=180, help="histogram bins over 0-180 degrees (default: 180)")
    p.add_argument("--threads", type=positive_int, default=None, help="threads for the core (default: all cores)")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None, help="run the blocks on this Dask scheduler")
    p.add_argument("--verify", choices=VERIFY_MODES, default="sha256",
                   help="sha256 (default): check every shard's digest before counting it, trusting a check of "
                        "the same unchanged file made before; rehash: hash every shard again; size: headers and "
                        "sizes only")
    p.add_argument("--partial", action="store_true", help="analyze an interrupted dump's batches")


@preflight.holds_out_lock
def run(args: argparse.Namespace) -> int:
    from ..sources.distributed import launched

    with launched() as (group, _):
        return _run(args, lead=group is None or group.rank == 0)


def _run(args: argparse.Namespace, lead: bool) -> int:
    if not Path(args.path).exists():
        raise UsageError(f"{args.path}: no such file or folder")
    out = preflight.writable_folder(args.out)
    names = None
    if args.sites is not None:
        names = [n.strip() for n in args.sites.split(",") if n.strip()]
        if not names:
            raise UsageError("--sites: give at least one name")
    try:
        sites = open_activations(args.path, verify=args.verify, partial=args.partial, sites=names,
                                 model=args.model)
    except UnknownSiteError as exc:
        raise UsageError(f"--sites: {exc}") from None
    preflight.disk_room(out, preflight.REPORT_BYTES_FIXED + len(sites) * preflight.REPORT_BYTES_PER_SITE,
                        "the report")
    total = sum(s.rows for s in sites)
    print(f"analyzing {len(sites)} site(s), {total} rows, from {args.path} ...", file=sys.stderr, flush=True)
    with progress(total) if lead else contextlib.nullcontext() as bar:
        report = analyze_dump(sites, block_rows=args.block_rows, bins=args.bins, num_threads=args.threads,
                              scheduler=args.scheduler, progress=bar, verify=args.verify,
                              partial=args.partial)
    if not lead:
        return 0
    print(report.table() if report.layers() else report.site_table())
    print(wrote(report.save(args.out), args.out))
    return 0
