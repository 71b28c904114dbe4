"""The proofs of docs/identities.md: every identity proved, every wrong variant rejected, the core obeys both.

Run from the repository root (``proofs/`` is a top-level folder beside ``geonorm_core/``).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import proofs  # noqa: E402
from proofs import crosscheck as cc  # noqa: E402
from proofs.__main__ import main  # noqa: E402
from proofs.toolkit import (  # noqa: E402
    ALL_D,
    D_LE_16,
    FixedModel,
    GeneralModel,
    P,
    dot,
    holds,
    holds_for_each_d,
    mean,
    refute,
    variance,
)

IDENTITIES = {i.id: i for i in proofs.identities()}
CONTROLS = {c.id: c for c in proofs.controls()}


# ---- the symbolic proofs --------------------------------------------------------------------------
def test_all_eighteen_identities_are_registered():
    """G1–G15 of docs/identities.md and G16–G18 of the LayerNorm → RMSNorm conversion."""
    assert list(IDENTITIES) == [f"G{k}" for k in range(1, 19)]
    assert all(i.scope in (ALL_D, D_LE_16) for i in IDENTITIES.values())


@pytest.mark.parametrize("ident", IDENTITIES)
def test_identity_is_proved(ident):
    assert IDENTITIES[ident].prove() is True


@pytest.mark.parametrize("ident", IDENTITIES)
def test_identity_claims_hold_at_exact_points(ident):
    """Guards the Σ-normalizer: what it proves for general d must also hold at exact instances."""
    for claim in IDENTITIES[ident].claims:
        assert refute(claim, dims=(2, 3), seeds=range(2)) is None


@pytest.mark.parametrize("ident", IDENTITIES)
def test_identity_renders_latex(ident):
    tex = IDENTITIES[ident].latex()
    assert "=" in tex and "\\" in tex


# ---- the negative controls ------------------------------------------------------------------------
def test_required_negative_controls_exist():
    texts = " ".join(c.statement for c in CONTROLS.values())
    for needle in ("unbiased variance", "unbiased σ", "‖y‖ = d", "LN(x + c·1) = LN(x) + c",
                   "RMSNorm invariant to shifts", "σ + ε", "tied to the centred embedding",
                   "uncentred writer"):
        assert needle in texts, needle


@pytest.mark.parametrize("ctl", CONTROLS)
def test_control_is_rejected_by_the_checker(ctl):
    assert CONTROLS[ctl].accepted() is False


@pytest.mark.parametrize("ctl", CONTROLS)
def test_control_has_an_exact_counterexample(ctl):
    witness = CONTROLS[ctl].refute()
    assert witness is not None
    assert witness["difference"] != "0"


def test_checker_can_say_false_and_true_in_lemma_mode():
    """The d ≤ 16 lemma machinery: exact symbolic components at each fixed d."""
    def pythagoras(M):
        x = M.vector("x")
        px = P(M, x)
        return [(dot(M, x, x), M.d * mean(M, x) ** 2 + dot(M, px, px))]

    def unbiased(M):
        x = M.vector("x")
        return [(variance(M, x, ddof=1), variance(M, x))]

    assert holds_for_each_d(pythagoras, range(1, 7))
    assert holds(pythagoras, GeneralModel())
    assert not holds(unbiased, FixedModel(3))
    assert not holds(unbiased, GeneralModel())


def test_sum_normalizer_uses_only_linearity():
    M = GeneralModel()
    x = M.vector("x")
    s, q = M.atom(x.comp), M.atom(x.comp ** 2)
    assert M.sum(3 * x + 2) == 3 * s + 2 * sp.Symbol("d", integer=True, positive=True)
    assert sp.expand(M.sum((x - 1) ** 2) - (q - 2 * s + M.d)) == 0
    assert q.is_nonnegative and s.is_nonnegative is None


# ---- the numeric cross-checks with the core -------------------------------------------------------
@pytest.mark.parametrize("dtype", cc.DTYPES)
@pytest.mark.parametrize("ident", IDENTITIES)
def test_core_obeys_identity(ident, dtype):
    res = cc.run_check(ident, dtype)
    failing = [m for m in res.measurements if not m[1] <= 1.0]
    assert res.error is None, res.error
    assert res.ok, failing[:5]


def _one_pass_core():
    """A stand-in core whose layer_norm uses the one-pass E[x²] − μ² in float32 (the classic bug)."""
    import geonorm_core as gn

    def layer_norm(x, weight=None, bias=None, eps=1e-5):
        a = np.asarray(x).astype(np.float32)
        mu = a.mean(-1, keepdims=True, dtype=np.float32)
        var = (a * a).mean(-1, keepdims=True, dtype=np.float32) - mu * mu
        y = (a - mu) / np.sqrt(np.maximum(var, 0) + np.float32(eps))
        if weight is not None:
            y = y * np.asarray(weight, np.float32)
        if bias is not None:
            y = y + np.asarray(bias, np.float32)
        return y.astype(np.asarray(x).dtype)

    return types.SimpleNamespace(decompose=gn.decompose, rotation=gn.rotation,
                                 remove_uniform=gn.remove_uniform, rms_norm=gn.rms_norm,
                                 layer_norm=layer_norm)


def _biased_eps_core():
    """A stand-in core whose layer_norm puts ε outside the root: (x − μ)/(σ + ε)."""
    import geonorm_core as gn

    def layer_norm(x, weight=None, bias=None, eps=1e-5):
        a = np.asarray(x).astype(np.float64)
        y = (a - a.mean(-1, keepdims=True)) / (a.std(-1, keepdims=True) + eps)
        if weight is not None:
            y = y * np.asarray(weight, np.float64)
        if bias is not None:
            y = y + np.asarray(bias, np.float64)
        return y.astype(np.asarray(x).dtype)

    return types.SimpleNamespace(decompose=gn.decompose, rotation=gn.rotation,
                                 remove_uniform=gn.remove_uniform, rms_norm=gn.rms_norm,
                                 layer_norm=layer_norm)


def test_crosscheck_catches_one_pass_variance():
    assert not cc.run_check("G6", "float32", core=_one_pass_core()).ok


def test_crosscheck_catches_eps_outside_the_root():
    assert not cc.run_check("G7", "float64", core=_biased_eps_core()).ok


def test_crosscheck_catches_an_uncentred_stream():
    """G18's check must fail for a core whose remove_uniform forgets to remove the mean."""
    import geonorm_core as gn

    lazy = types.SimpleNamespace(decompose=gn.decompose, rotation=gn.rotation, rms_norm=gn.rms_norm,
                                 layer_norm=gn.layer_norm, remove_uniform=lambda x, **k: np.array(x))
    assert not cc.run_check("G18", "float32", core=lazy).ok
    assert not cc.run_check("G17", "float32", core=lazy).ok
    assert cc.run_check("G18", "float32").ok


# ---- the command line -----------------------------------------------------------------------------
def test_main_json_parses_and_passes(capsys):
    rc = main(["--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["ok"] is True
    assert [r["id"] for r in report["identities"]] == [f"G{k}" for k in range(1, 19)]
    assert all(r["status"] == "proved" for r in report["identities"])
    assert all(r["status"] == "rejected" for r in report["controls"])
    assert report["crosscheck_skipped"] is None
    assert {r["id"] for r in report["crosschecks"]} == set(IDENTITIES)
    assert report["seconds"] < 60


def test_main_latex_is_a_document(capsys):
    rc = main(["--latex", "--no-crosscheck"])
    tex = capsys.readouterr().out
    assert rc == 0
    assert tex.startswith("\\documentclass") and tex.rstrip().endswith("\\end{document}")
    assert "\\sqrt{d}" in tex and "\\left\\|" in tex
    assert tex.count("\\item[") == len(IDENTITIES) + len(CONTROLS)


def test_main_table_and_exit_code_on_failure(capsys, monkeypatch):
    rc = main(["--no-crosscheck", "--only", "G5"])
    out = capsys.readouterr().out
    assert rc == 0 and "G5" in out and "proved" in out and "N1" in out
    # a broken proof must turn into exit code 1
    monkeypatch.setattr(IDENTITIES["G5"], "prove", lambda: False)
    assert main(["--no-crosscheck", "--only", "G5"]) == 1
    assert "FAILED" in capsys.readouterr().out
