"""``geonorm merge A/ B/ ... --out C/``: one report from the reports of disjoint token sets."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..analysis.merging import merge_reports
from ..analysis.report import Report
from . import preflight
from .errors import CommandError, UsageError
from .options import wrote

HELP = ("merge the reports of disjoint token sets (jobs of an array, --part runs, texts) into one report "
        "with every file analyze writes")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("reports", nargs="+", metavar="REPORT",
                   help="report folders (or their report.json files) that analyze or analyze-dump wrote")
    p.add_argument("--out", required=True, help="folder for the merged report")
    p.add_argument("--disjoint", action="store_true",
                   help="the token sets are disjoint although the reports cannot show it: merge anyway")
    p.add_argument("--no-figures", action="store_true", help="write the JSON, CSV and tables only")


def _read(path: str) -> Report:
    p = Path(path).expanduser()
    file = p / "report.json" if p.is_dir() else p
    if not file.is_file():
        raise UsageError(f"{path}: no report.json there" if p.is_dir() else f"{path}: no such report")
    try:
        return Report.from_dict(json.loads(file.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as exc:
        raise CommandError(f"{file}: not a geonorm report ({' '.join(str(exc).split())})") from None


@preflight.holds_out_lock
def run(args: argparse.Namespace) -> int:
    if len(args.reports) < 2:
        raise UsageError("give at least two reports to merge")
    reports = [_read(path) for path in args.reports]
    out = preflight.writable_folder(args.out)
    merged = merge_reports(reports, disjoint=args.disjoint, names=args.reports)
    print(merged.table() if merged.layers() else merged.site_table())
    print(wrote(merged.save(out, figures=not args.no_figures), args.out))
    return 0
