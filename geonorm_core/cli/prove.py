"""``geonorm prove``: the sympy proofs of docs/identities.md and the kernels' cross-check.

All its arguments go to the proofs' own parser (``geonorm prove --help``)."""
from __future__ import annotations

HELP = "prove the geometry's identities (sympy) and cross-check the kernels (options: geonorm prove --help)"


def run_argv(argv: list[str]) -> int:
    from ..proofs.__main__ import main as prove_main

    return prove_main(argv, prog="geonorm prove")
