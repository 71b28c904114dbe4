"""``geonorm bench``: the core's speed against torch and a NumPy bandwidth probe."""
from __future__ import annotations

import argparse
import sys

from ..durable import write_json
from .options import positive_int

HELP = "speed of the core against torch and a NumPy bandwidth probe"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeats", type=positive_int, default=7, help="timed repeats per measurement (median)")
    p.add_argument("--scale", type=float, default=1.0, help="scale the number of rows (0.1 for a quick look)")
    p.add_argument("--op", action="append",
                   help="only these ops (decompose, layer_norm, rms_norm, *_out, token_values)")
    p.add_argument("--json", metavar="FILE", help="also write the rows and the environment as JSON")


def run(args: argparse.Namespace) -> int:
    from ..experiments import bench

    env = bench.environment()
    print(bench.header(env), flush=True)
    cases = bench.CASES
    if args.op:
        cases = [c for c in cases if c[0] in args.op]
    rows = bench.run(cases, repeats=args.repeats, scale=args.scale,
                     progress=lambda s: print(f"  measuring {s} ...", file=sys.stderr, flush=True)) if cases else []
    if rows:
        print(bench.table(rows))
    if not args.op or "decompose" in args.op:
        n = max(64, int(32768 * args.scale))
        print("  measuring 16-bit rows/s against fp32, interleaved ...", file=sys.stderr, flush=True)
        ratios = bench.rows_per_second_vs_fp32(n, 4096, repeats=args.repeats)
        print()
        print(bench.ratio_table(ratios, f"{n}x4096"))
    sites = None
    if not args.op or "token_values" in args.op:
        print("  measuring token_values against decompose(h) + decompose(p), interleaved ...", file=sys.stderr,
              flush=True)
        sites = bench.site_values_ratios(repeats=args.repeats, scale=args.scale)
        print()
        print(bench.site_ratio_table(sites))
    if args.json:
        write_json(args.json, {"environment": env, "rows": [r.as_dict() for r in rows], "site_values": sites},
                   indent=2)
        print(f"wrote {args.json}")
    return 0
