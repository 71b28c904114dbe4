"""``geonorm info``: version, the SIMD path that runs, threads."""
from __future__ import annotations

import argparse
import json

HELP = "version, SIMD path and threads"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from .. import __version__, kernel_info

    print(json.dumps({"version": __version__, **kernel_info()}, indent=2))
    return 0
