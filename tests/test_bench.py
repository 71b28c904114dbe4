"""bench.py's measurement of the fused per-site pass against decompose (issue 11)."""

import numpy as np

from geonorm_core.experiments import bench


def test_site_inputs_are_a_norm_site():
    h, p, gain, bias = bench.site_inputs(32, 64, "bf16")
    assert h.dtype == p.dtype and h.shape == p.shape == (32, 64) and gain.shape == bias.shape == (64,)
    x = h.astype(np.float64)
    t = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(p.astype(np.float64), t * gain + bias, rtol=2**-7, atol=2**-7)


def test_site_values_vs_decompose_measures_both_sides():
    r = bench.site_values_vs_decompose(256, 576, "fp32", repeats=3, num_threads=1)
    assert set(r) == {"median", "min", "max", "decompose_gbs"}
    assert 0 < r["min"] <= r["median"] <= r["max"] < 50 and r["decompose_gbs"] > 0


def test_site_ratio_table_lists_every_case():
    res = bench.site_values_ratios([(100, 64, "fp32"), (100, 96, "bf16")], repeats=2, scale=0.5, num_threads=2)
    assert [(r["dtype"], r["shape"]) for r in res] == [("fp32", "64x64"), ("bf16", "64x96")]
    lines = bench.site_ratio_table(res).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| fp32 | 64x64 | ") and lines[3].startswith("| bf16 | 64x96 | ")
