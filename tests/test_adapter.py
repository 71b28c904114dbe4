"""The torch adapter on tiny random-initialized models: every number checked independently.

The real-model twin of these checks (SmolLM2 against output_hidden_states) is in
tests/test_analyze_real.py.
"""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tiny_models import tiny  # noqa: E402

import geonorm_core as gn  # noqa: E402
from geonorm_core import slow  # noqa: E402
from geonorm_core.analysis.report import Report  # noqa: E402
from geonorm_core.sources.adapter import Analyzer, analyze  # noqa: E402

QUANTITIES = ("angle_hidden", "angle_post", "norm_hidden", "norm_post", "rotation", "max_abs_hidden",
              "ln_rms_gap")


@pytest.fixture(scope="module")
def llama():
    return tiny("llama")


@pytest.fixture(scope="module")
def gpt2():
    return tiny("gpt2")


def batches(n=3, b=4, t=12, seed=0, pad=True):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(0, 97, (b, t), generator=g)
        mask = torch.ones(b, t, dtype=torch.long)
        if pad and i == 0:
            mask[0, 7:] = 0
            mask[2, 10:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def capture(model, batch_list):
    """Independent reference: every site's input and output, recorded by our own hooks."""
    sites = gn.find_norm_sites(model)
    got = {s.name: [] for s in sites if s.residual}
    handles = []
    for s in sites:
        if s.name in got:
            handles.append(s.module.register_forward_hook(
                lambda m, a, o, name=s.name: got[name].append((a[0].detach().double().numpy(),
                                                               o.detach().double().numpy()))))
    masks = []
    with torch.no_grad():
        for bt in batch_list:
            model(**bt)
            masks.append(bt["attention_mask"].numpy() != 0)
    for h in handles:
        h.remove()
    return {s.name: s for s in sites}, got, masks


def reference(site, pairs, masks):
    """float64 NumPy values of every quantity for the real tokens of one site."""
    vals = {q: [] for q in QUANTITIES}
    for (h, p), m in zip(pairs, masks):
        h, p = h[m], p[m]
        dh, dp = slow.decompose(h), slow.decompose(p)
        vals["angle_hidden"].append(dh.angle)
        vals["angle_post"].append(dp.angle)
        vals["norm_hidden"].append(dh.norm)
        vals["norm_post"].append(dp.norm)
        vals["max_abs_hidden"].append(np.abs(h).max(-1))
        vals["rotation"].append(slow.rotation(h, p))
        g = 1.0 if site.gain is None else site.gain.astype(np.float64)
        b = 0.0 if site.bias is None else site.bias.astype(np.float64)
        ln = slow.layer_norm(h, eps=site.eps) * g + b
        rms = slow.rms_norm(h, eps=site.eps) * g + b
        vals["ln_rms_gap"].append(np.linalg.norm(ln - rms, axis=-1) / np.linalg.norm(ln, axis=-1))
    return {q: np.concatenate(v) for q, v in vals.items()}


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_report_matches_an_independent_float64_computation(name, request):
    model = request.getfixturevalue(name)
    bl = batches()
    report = analyze(model, bl)
    sites, got, masks = capture(model, bl)
    assert set(report.sites) == set(got)
    for site_name, pairs in got.items():
        ref = reference(sites[site_name], pairs, masks)
        stats = report.sites[site_name]
        assert stats.tokens == sum(int(m.sum()) for m in masks)
        for q in QUANTITIES:
            r = ref[q]
            tol = 1e-4 if q.startswith(("angle", "rotation")) else 1e-5 * max(1.0, np.abs(r).max())
            assert abs(stats[q].mean - r.mean()) <= tol, (site_name, q, stats[q].mean, r.mean())
            assert abs(stats[q].std - r.std()) <= tol, (site_name, q)
            assert abs(stats[q].max - r.max()) <= tol and abs(stats[q].min - r.min()) <= tol, (site_name, q)


def test_site_entries_expose_the_documented_fields(llama):
    report = analyze(llama, batches(n=1))
    site = report.sites["model.layers.1.input_layernorm"]
    assert (site.layer, site.role, site.kind, site.d) == (1, "LN1", "rmsnorm", 64)
    for q in QUANTITIES:
        entry = getattr(site, q)
        assert np.isfinite([entry.mean, entry.std, entry.min, entry.max]).all()
        assert entry.histogram.total == site.tokens
    # RMSNorm without gain never rotates (G12), with a gain it does
    assert site.rotation.mean > 0.1


def test_padding_is_excluded_exactly(llama):
    """A padded batch gives the same statistics as the same real tokens without padding."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 97, (2, 9), generator=g)
    padded = {"input_ids": torch.cat([ids, torch.zeros(2, 5, dtype=torch.long)], 1),
              "attention_mask": torch.cat([torch.ones(2, 9, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long)], 1)}
    a = analyze(llama, [padded])
    b = analyze(llama, [{"input_ids": ids}])
    for name in a.sites:
        assert a.sites[name].tokens == b.sites[name].tokens == 18
        for q in QUANTITIES:
            assert a.sites[name][q].mean == pytest.approx(b.sites[name][q].mean, rel=1e-6, abs=1e-9)


def test_exclude_first_token_drops_the_first_real_token_of_each_sequence(llama):
    bl = batches(n=1)
    full = analyze(llama, bl)
    cut = analyze(llama, bl, exclude_first_token=True)
    mask = bl[0]["attention_mask"]
    for name in full.sites:
        assert cut.sites[name].tokens == full.sites[name].tokens - mask.shape[0]
    # left padding: the first real token is not at position 0
    left = {"input_ids": bl[0]["input_ids"], "attention_mask": torch.ones_like(mask)}
    left["attention_mask"][1, :3] = 0
    n = analyze(llama, [left], exclude_first_token=True).tokens
    assert n == int(left["attention_mask"].sum()) - mask.shape[0]


def test_reports_merge_and_round_trip_json(llama, tmp_path):
    bl = batches(n=4)
    whole = analyze(llama, bl)
    merged = analyze(llama, bl[:1]).merge(analyze(llama, bl[1:]))
    path = tmp_path / "r.json"
    merged.to_json(path)
    back = Report.from_json(path)
    for name in whole.sites:
        for q in QUANTITIES:
            assert back.sites[name][q].mean == pytest.approx(whole.sites[name][q].mean, rel=1e-12, abs=1e-15)
            assert back.sites[name][q].std == pytest.approx(whole.sites[name][q].std, rel=1e-9, abs=1e-12)
            assert (back.sites[name][q].histogram.counts == whole.sites[name][q].histogram.counts).all()
    json.loads(path.read_text())  # strict JSON


def test_table_and_files(gpt2, tmp_path):
    report = analyze(gpt2, batches(n=1), meta={"model_name": "tiny-gpt2"})
    table = report.table()
    assert "tiny-gpt2" in table and "paper ±" in table and "baseline SD" in table
    rows = report.layers()
    assert [r["layer"] for r in rows] == [0, 1]
    assert all(r["post1_angle"] and r["post2_angle"] and r["rotation1"] for r in rows)
    paths = report.save(tmp_path / "out")
    names = {os.path.basename(p) for p in paths}
    assert {"report.json", "sites.csv", "tables.md", "angle_per_layer.png"} <= names
    for p in paths:
        assert os.path.getsize(p) > 100


def test_bf16_model_streams_bf16_states(llama):
    model = tiny("llama").to(torch.bfloat16)
    report = analyze(model, batches(n=1))
    a = report.sites["model.layers.0.input_layernorm"].angle_hidden
    assert a.count > 0 and 60 < a.mean < 120


def test_bad_inputs_are_clear(llama):
    with pytest.raises(ValueError, match="no norm site named"):
        analyze(llama, batches(n=1), sites=["model.layers.9.nope"])
    with pytest.raises(ValueError, match="no tokens"):
        analyze(llama, [])
    with pytest.raises(TypeError, match="input_ids"):
        analyze(llama, [torch.zeros(2, 3, dtype=torch.long)])
    bad = {"input_ids": torch.zeros(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 4)}
    with pytest.raises(ValueError, match="attention_mask"):
        analyze(llama, [bad])
    with pytest.raises(ValueError, match="no LayerNorm/RMSNorm"):
        analyze(torch.nn.Sequential(torch.nn.Linear(3, 3)), batches(n=1))


def test_hooks_are_removed(llama):
    with Analyzer(llama) as an:
        an.feed(batches(n=1)[0])
        assert any(m._forward_hooks for m in llama.modules())
    assert not any(m._forward_hooks for m in llama.modules())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs on a GPU machine)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_states_come_over_through_reused_pinned_buffers(dtype):
    """CUDA hidden states reach the core through pinned host buffers that are reused across
    batches of the same shape, in the model's own dtype, and give the CPU run's numbers."""
    cpu = tiny("llama").to(dtype)
    gpu = tiny("llama").to(dtype).cuda()
    bl = batches(n=2)
    with Analyzer(gpu) as an:
        for b in bl:
            an.feed(b)
        buffers = dict(an._host._pinned)
        assert buffers and all(t.is_pinned() and t.dtype == dtype for t in buffers.values())
        an.feed(bl[0])  # same shapes: the same pinned buffers are reused, none allocated
        assert {k: id(v) for k, v in an._host._pinned.items()} == {k: id(v) for k, v in buffers.items()}
    a, b = an.report(), analyze(cpu, bl + bl[:1])
    # fp32: CPU and GPU matmuls differ in rounding only; 16-bit: in bf16/fp16 rounding of every layer
    rel, abs_ = (1e-3, 1e-3) if dtype == torch.float32 else (5e-2, 5e-3)
    assert set(a.sites) == set(b.sites)
    for name in b.sites:
        assert a.sites[name].tokens == b.sites[name].tokens
        for q in QUANTITIES:
            assert a.sites[name][q].mean == pytest.approx(b.sites[name][q].mean, rel=rel, abs=abs_), (name, q)


def test_a_row_sink_gets_the_real_token_rows_instead_of_measuring(llama):
    """Analyzer(row_sink=...) hands every site its kept rows (padding and first tokens left out)."""
    model = llama
    bl = batches()
    sites, got, masks = capture(model, bl)
    seen = {name: [] for name in got}

    def sink(site, hidden, post):
        if site.name in seen:
            seen[site.name].append((np.array(hidden, dtype=np.float64), np.array(post, dtype=np.float64)))

    with Analyzer(model, exclude_first_token=True, row_sink=sink) as an:
        for b in bl:
            an.feed(b)
    assert all(st.tokens == 0 for st in an.report().sites.values())   # nothing measured
    for name, pairs in got.items():
        for (h, p), m, (sh, sp) in zip(pairs, masks, seen[name]):
            keep = m & (np.cumsum(m, axis=1) > 1)
            np.testing.assert_array_equal(sh, h[keep])
            np.testing.assert_array_equal(sp, p[keep])
