"""Symbolic proofs of the geometry of LayerNorm and RMSNorm (G1–G15; G16–G18 for the conversion: docs/identities.md).

Each identity is proved for a symbolic dimension d with sympy (see :mod:`.toolkit` for the method),
each plausible wrong variant (a *negative control*) must be rejected by the same checker, and each
identity is evaluated numerically with geonorm_core's kernels (:mod:`.crosscheck`).

``python -m proofs`` (from a checkout) prints the table; ``--json`` and ``--latex`` for other outputs.
"""

from __future__ import annotations

from . import conversion, invariance, layernorm_rmsnorm, projection, random_baseline, rotation, standardization
from .toolkit import Control, Identity

FAMILIES = (projection, standardization, layernorm_rmsnorm, invariance, rotation, random_baseline, conversion)


def _num(s: str) -> int:
    return int(s[1:])


def identities() -> list[Identity]:
    """G1–G18, in order (G16–G18: the LayerNorm → RMSNorm conversion)."""
    return sorted((i for f in FAMILIES for i in f.IDENTITIES), key=lambda i: _num(i.id))


def controls() -> list[Control]:
    """The negative controls N1…, in order."""
    return sorted((c for f in FAMILIES for c in f.CONTROLS), key=lambda c: _num(c.id))


__all__ = ["identities", "controls", "Identity", "Control", "FAMILIES"]
