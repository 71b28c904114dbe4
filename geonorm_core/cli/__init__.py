"""The `geonorm` command, the top floor: options become library calls, results become files.

One module per command (``analyze``, ``swap-test``, ``convert``, ``dump``, ``analyze-dump``, ``merge``, ``compare``,
``bench``, ``prove``, ``info``), each with ``HELP``, ``add_arguments(parser)`` and ``run(args)``; the
options they share live in :mod:`.options`, the checks made before a model runs in
:mod:`.preflight`, and how a command fails in :mod:`.errors`.  Nothing in the library
imports this package.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from . import analyze, analyze_dump, bench, compare, convert, dump, errors, info, merge, prove, swap_test
from .options import add_debug_option

#: The subcommands in the order ``geonorm --help`` lists them.
COMMANDS = {"analyze": analyze, "bench": bench, "swap-test": swap_test, "convert": convert, "dump": dump,
            "analyze-dump": analyze_dump, "merge": merge, "compare": compare, "info": info}


class _Parser(argparse.ArgumentParser):
    """argparse, failing in the house style: one line, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(errors.USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="geonorm", description="The geometry of normalization layers in language models: "
                                                 "angles with the uniform vector 1, norms, rotations, the "
                                                 "LN-RMS gap, at every LayerNorm/RMSNorm of a model.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.HELP, description=command.HELP)
        command.add_arguments(p)
        add_debug_option(p)
        p.set_defaults(run=command.run)
    sub.add_parser("prove", help=prove.HELP)  # its arguments go to the proofs' own parser (see main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["prove"]:
        return prove.run_argv(argv[1:])
    args = build_parser().parse_args(argv)
    debug = errors.debug_requested(argv)
    shown = warnings.showwarning
    if not debug:
        warnings.showwarning = errors.one_line_warnings(args.command, shown)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        if debug:
            raise
        errors.print_error(args.command, "interrupted")
        return errors.INTERRUPTED
    except Exception as exc:
        code = errors.exit_code(exc)
        if code is None or debug:
            raise
        errors.print_error(args.command, errors.describe(exc))
        return code
    finally:
        warnings.showwarning = shown
