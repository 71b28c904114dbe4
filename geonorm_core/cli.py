"""The `geonorm` command: bench, prove, info."""
from __future__ import annotations

import argparse
import json
import sys


def _bench(args: argparse.Namespace) -> int:
    from . import bench

    env = bench.environment()
    print(bench.header(env), flush=True)
    cases = bench.CASES
    if args.op:
        cases = [c for c in cases if c[0] in args.op]
    rows = bench.run(cases, repeats=args.repeats, scale=args.scale,
                     progress=lambda s: print(f"  measuring {s} ...", file=sys.stderr, flush=True))
    print(bench.table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rows": [r.as_dict() for r in rows]}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def _prove(args: argparse.Namespace) -> int:
    from .proofs.__main__ import main as prove_main

    return prove_main(args.rest, prog="geonorm prove")


def _info(args: argparse.Namespace) -> int:
    from . import __version__, kernel_info

    print(json.dumps({"version": __version__, **kernel_info()}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="geonorm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="speed of the core against torch and a NumPy bandwidth probe")
    b.add_argument("--repeats", type=int, default=7, help="timed repeats per measurement (median)")
    b.add_argument("--scale", type=float, default=1.0, help="scale the number of rows (0.1 for a quick look)")
    b.add_argument("--op", action="append", help="only these ops (decompose, layer_norm, rms_norm, *_out)")
    b.add_argument("--json", metavar="FILE", help="also write the rows and the environment as JSON")
    b.set_defaults(run=_bench)

    p = sub.add_parser("prove", help="prove the geometry's identities (sympy) and cross-check the kernels",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(run=_prove)

    i = sub.add_parser("info", help="version, SIMD path and threads")
    i.set_defaults(run=_info)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
