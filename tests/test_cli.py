"""The `geonorm` command's own plumbing (the subcommands' work is tested where it lives)."""
import json

import pytest

from geonorm_core import cli


def test_info_prints_the_active_path(capsys):
    assert cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["simd"] in info["available"]


def test_prove_passes_its_options_through(capsys):
    """`geonorm prove --json ...`: options go to the proofs' parser, not geonorm's."""
    pytest.importorskip("geonorm_core.proofs", reason="proofs/ maps to geonorm_core.proofs when installed")
    assert cli.main(["prove", "--json", "--only", "G5", "--no-crosscheck"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in report["identities"]] == ["G5"]


def test_bench_rejects_an_unknown_op():
    with pytest.raises(ValueError, match="op must be"):
        from geonorm_core import bench

        bench.bench_case("nope", 64, 16, "fp32", repeats=1)


def test_bench_interleaved_ratios_are_measured(capsys):
    from geonorm_core import bench

    r = bench.rows_per_second_vs_fp32(rows=64, d=256, repeats=3)
    assert set(r) == {"bf16", "fp16"}
    for v in r.values():
        assert 0 < v["min"] <= v["median"] <= v["max"] < 100
    table = bench.ratio_table(r, "64x256")
    assert table.count("\n") == 3 and "| bf16 | 64x256 |" in table
