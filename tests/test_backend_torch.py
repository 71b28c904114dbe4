"""backend="torch" end to end: the reports of analyze, Analyzer and GeometryMonitor agree with backend="core".

Both backends feed the same accumulators, so every statistic of every site is compared: counts
exactly, moments within the accuracy contract (angles 1e-4 degrees absolute, norms and max|x|
1e-6 relative, the gap 1e-6 absolute), histograms count for count but for values that sit
within the contract's tolerance of a bin edge (see assert_same_report).
"""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tiny_models import tiny  # noqa: E402

from geonorm_core.experiments.monitor import GeometryMonitor  # noqa: E402
from geonorm_core.sources.adapter import Analyzer, analyze  # noqa: E402

ANGLES = ("angle_hidden", "angle_post", "rotation")


def padded_batches(n=3, b=4, t=12, vocab=97):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        mask = torch.ones(b, t, dtype=torch.long)
        if i != 1:  # padded batches, and one without padding (no row selection at all)
            mask[0, 7:] = 0
            mask[2, 10:] = 0
            mask[3, :3] = 0  # left padding too
        out.append({"input_ids": torch.randint(0, vocab, (b, t), generator=g), "attention_mask": mask})
    return out


def assert_same_report(a, b, *, angle_atol=1e-4, rel=1e-6, gap_atol=1e-6):
    """Every site, quantity and statistic of two reports within the contract.

    Histograms: a value moves to the neighbouring bin only if it lies within the two backends'
    difference (<= 1e-4 degrees, in practice ~1e-12) of one of the bin edges; each move changes
    two counts by one.  Allow one move per histogram: the exact totals still must agree."""
    assert set(a.sites) == set(b.sites)
    for name, sa in a.sites.items():
        sb = b.sites[name]
        assert sa.tokens == sb.tokens, name
        assert sa.meta == sb.meta, name
        for q, qa in sa.quantities.items():
            qb = sb[q]
            ma, mb = qa.moments, qb.moments
            where = f"{name} {q}"
            assert (ma.count, ma.nan_count) == (mb.count, mb.nan_count), where
            for stat in ("mean", "std", "min", "max"):
                x, y = getattr(ma, stat), getattr(mb, stat)
                if q in ANGLES:
                    tol = angle_atol
                elif q == "ln_rms_gap":
                    tol = gap_atol * max(1.0, abs(y))
                else:
                    tol = rel * max(abs(y), abs(mb.max))  # std and mean: relative to the scale
                assert abs(x - y) <= tol, f"{where} {stat}: {x!r} vs {y!r}"
            ha, hb = qa.histogram, qb.histogram
            assert ha.total == hb.total and ha.nan == hb.nan, where
            moved = int(np.abs(ha.counts - hb.counts).sum()) + abs(ha.underflow - hb.underflow) \
                + abs(ha.overflow - hb.overflow)
            assert moved <= 2, f"{where}: histograms differ by {moved} counts"


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("exclude_first_token", [False, True])
def test_torch_backend_report_matches_core(kind, exclude_first_token):
    model = tiny(kind)
    bl = padded_batches()
    core = analyze(model, bl, backend="core", exclude_first_token=exclude_first_token)
    dev = analyze(model, bl, backend="torch", exclude_first_token=exclude_first_token)
    assert core.tokens == dev.tokens == sum(int(b["attention_mask"].sum()) for b in bl) - 4 * 3 * exclude_first_token
    assert_same_report(dev, core)
    # auto on CPU tensors is the core, number for number
    auto = analyze(model, bl, exclude_first_token=exclude_first_token)
    for name, s in auto.sites.items():
        assert s.to_dict() == core.sites[name].to_dict()


def test_torch_backend_bf16_model():
    model = tiny("llama").to(torch.bfloat16)
    bl = padded_batches(n=2)
    assert_same_report(analyze(model, bl, backend="torch"), analyze(model, bl, backend="core"))


def test_reports_of_both_backends_merge():
    model = tiny("gpt2")
    bl = padded_batches()
    both = analyze(model, bl[:2], backend="torch")
    both.merge(analyze(model, bl[2:], backend="core"))
    one = analyze(model, bl, backend="core")
    assert_same_report(both, one)


def test_torch_backend_waits_for_nothing_until_flushed():
    """The hooks only queue values; feed folds them (once), and a manual forward is folded by
    count_only / report."""
    model = tiny("llama")
    bl = padded_batches(n=1)
    with Analyzer(model, backend="torch") as an:
        an.count_only(an.token_mask(tuple(bl[0]["input_ids"].shape), bl[0]["attention_mask"]))
        with torch.inference_mode():
            model(**bl[0])
        assert len(an._pending) == len(an.sites) and all(s.tokens == 0 for s in an.stats.values())
        report = an.report()
        assert not an._pending
    assert all(s.tokens == int(bl[0]["attention_mask"].sum()) for s in report.sites.values())
    assert_same_report(report, analyze(model, bl, backend="core"))


@pytest.mark.parametrize("bad", ["gpu", "", None, 1, "Torch"])
def test_backend_is_checked(bad):
    model = tiny("gpt2")
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'core', 'torch'"):
        Analyzer(model, backend=bad)
    with pytest.raises(ValueError, match="backend must be one of"):
        analyze(model, padded_batches(n=1), backend=bad)
    with pytest.raises(ValueError, match="backend must be one of"):
        GeometryMonitor(model, backend=bad)


def test_monitor_with_torch_backend_matches_core():
    """A few training steps, recorded by two monitors; the model and batches are the same."""
    def run(backend):
        model = tiny("gpt2").train()
        torch.manual_seed(1)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        mon = GeometryMonitor(model, every=2, backend=backend)
        with mon:
            for step in range(4):
                mon.step(step)
                for bt in padded_batches(n=2):  # two micro-batches per step: one report per step
                    out = model(**bt, labels=bt["input_ids"])
                    out.loss.backward()
                opt.step()
                opt.zero_grad()
        return mon.timeline

    core, dev = run("core"), run("torch")
    assert core.steps == dev.steps == [0, 2]
    for step in core.steps:
        assert_same_report(dev[step], core[step])


def test_smollm2_full_report_matches_core(smollm2):
    """The real model: every site (all 61 norm sites, q/k norms excluded) and statistic, padded batches."""
    model, tok = smollm2
    texts = ["The geometry of a hidden vector is simple: a component along the uniform vector, and "
             "everything orthogonal to it.", "Layer normalization removes the first.",
             "RMSNorm keeps it, and the paper asks whether that matters at all for these models."]
    enc = tok(texts, return_tensors="pt", padding=True)
    bl = [{"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}]
    assert (enc["attention_mask"] == 0).any()
    core = analyze(model, bl, backend="core")
    dev = analyze(model, bl, backend="torch")
    assert len(core.sites) > 30 and core.tokens == int(enc["attention_mask"].sum())
    assert_same_report(dev, core)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs on a GPU machine)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_torch_backend_matches_core_on_the_same_states(dtype):
    """On a GPU, "auto" is "torch"; against the core fed the very same CUDA states (backend="core"),
    the report agrees within the contract, and the queued values sit in pinned host memory."""
    model = tiny("llama").to(dtype).cuda()
    bl = padded_batches()
    with Analyzer(model) as an:
        an.count_only(an.token_mask(tuple(bl[0]["input_ids"].shape), bl[0]["attention_mask"]))
        with torch.inference_mode():
            model(**{k: v.cuda() for k, v in bl[0].items()})
        assert an._pending and all(h.is_pinned() and h.dtype == torch.float64 for _, h in an._pending)
        an.count_only(None)
        for b in bl[1:]:
            an.feed(b)
    assert_same_report(an.report(), analyze(model, bl[:1] + bl[1:], backend="core"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs on a GPU machine)")
def test_cuda_hooks_never_synchronize():
    """torch.cuda.set_sync_debug_mode("error") raises on any synchronizing call inside the forward."""
    model = tiny("llama").cuda()
    bl = padded_batches(n=1)
    with Analyzer(model, backend="torch") as an:
        an.count_only(an.token_mask(tuple(bl[0]["input_ids"].shape), bl[0]["attention_mask"]))
        inputs = {k: v.cuda() for k, v in bl[0].items()}
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            with torch.inference_mode():
                model(**inputs)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        report = an.report()
    assert all(s.tokens == int(bl[0]["attention_mask"].sum()) for s in report.sites.values())


@pytest.mark.slow   # runs the benchmark script end to end
def test_cuda_benchmark_runs_at_a_tiny_scale_on_cpu():
    """benchmarks/adapter_cuda.py cannot run here at full size; --tiny keeps it from rotting."""
    import json
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "adapter_cuda.py"), "--tiny"],
                         capture_output=True, text=True, env=env, timeout=300, check=True).stdout
    res = json.loads(out)["results"][0]
    assert set(res["hooked_over_plain"]) == {"core", "torch"}
    a = res["first_site_angle_hidden_mean"]
    assert abs(a["core"] - a["torch"]) < 1e-4
