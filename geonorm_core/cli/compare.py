"""``geonorm compare A/ B/ [C/ ...] --out DIR``: several reports side by side (HTML, PNG, Markdown, CSV)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import preflight
from .errors import UsageError
from .options import wrote

HELP = ("compare reports side by side: per-layer figures on relative depth, Tables 2-4 with a row per model "
        "beside the paper's, as compare.html + PNG + Markdown + CSV")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("reports", nargs="+", metavar="REPORT",
                   help="folders `geonorm analyze` wrote (or their report.json), two or more")
    p.add_argument("--out", default="geonorm-compare", help="output folder (default: geonorm-compare)")
    p.add_argument("--label", action="append", metavar="NAME",
                   help="name a report in tables and legends (repeat once per report, in order; default: "
                        "each report's model name)")


@preflight.holds_out_lock
def run(args: argparse.Namespace) -> int:
    from ..analysis.compare import compare

    if len(args.reports) < 2:
        raise UsageError("give at least two reports to compare (for one, open its report.html)")
    if args.label is not None and len(args.label) != len(args.reports):
        raise UsageError(f"--label: given {len(args.label)} times for {len(args.reports)} reports; name every "
                         "report or none")
    for path in args.reports:
        if not Path(path).expanduser().exists():
            raise UsageError(f"{path}: no such folder or file (give folders `geonorm analyze` wrote)")
    out = preflight.writable_folder(args.out)
    comparison = compare(args.reports, labels=args.label)
    for note in comparison.notes():
        print(f"geonorm compare: note: {note}", file=sys.stderr)
    print(comparison.to_markdown())
    print(wrote(comparison.save(out), args.out))
    return 0
