"""geonorm_core.nn: the native-kernel LayerNorm/RMSNorm modules agree with torch's, and fall back to it."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import geonorm_core.nn as gnn  # noqa: E402
from geonorm_core import ops  # noqa: E402
from geonorm_core._native import _core  # noqa: E402
from geonorm_core.sources.sites import find_norm_sites  # noqa: E402

F = torch.nn.functional
# float32 computation with exact statistics, rounded to the input dtype: torch's own error is the bound
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-5), torch.float64: dict(rtol=1e-12, atol=1e-12),
       torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2), torch.float16: dict(rtol=2e-3, atol=2e-3)}


def _rows(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.7).to(dtype)


def _params(d, seed):
    g = torch.Generator().manual_seed(seed + 1)
    weight = torch.rand(d, generator=g, dtype=torch.float64) + 0.5
    return weight, torch.randn(d, generator=g, dtype=torch.float64)


def _reference_rms(x, w, b, eps):
    y = F.rms_norm(x, (x.shape[-1],), w, eps)
    return y if b is None else y + b


@pytest.fixture
def calls(monkeypatch):
    """Count the native kernel calls, so a test can tell which path ran."""
    seen = {"layer_norm": 0, "rms_norm": 0}
    for name in seen:
        real = getattr(ops, name)

        def spy(*a, _real=real, _name=name, **k):
            seen[_name] += 1
            return _real(*a, **k)
        monkeypatch.setattr(ops, name, spy)
    kinds = {_core.LAYER_NORM: "layer_norm", _core.RMS_NORM: "rms_norm"}

    def fast_spy(kind, *a):  # the modules' inference path calls the core's fast path directly
        y = _core.fast_normalize(kind, *a)
        seen[kinds[kind]] += y is not None
        return y
    monkeypatch.setattr(gnn, "_fast_normalize", fast_spy)
    return seen


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [1, 7, 64, 515])
def test_layer_norm_matches_torch(dtype, d, calls):
    w, b = _params(d, d)
    ref = torch.nn.LayerNorm(d, eps=1e-5).to(dtype)
    with torch.no_grad():
        ref.weight.copy_(w), ref.bias.copy_(b)
    mod = gnn.LayerNorm.from_module(ref)
    x = _rows((3, 5, d), dtype, d)
    with torch.no_grad():
        torch.testing.assert_close(mod(x), ref(x), **TOL[dtype])
    assert calls["layer_norm"] == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("d", [3, 512, 1003])
def test_rms_norm_matches_torch(dtype, bias, d, calls):
    w, b = _params(d, d)
    ref = gnn.AffineRMSNorm(d, eps=1e-6, bias=bias, dtype=dtype)
    with torch.no_grad():
        ref.weight.copy_(w)
        if bias:
            ref.bias.copy_(b)
    mod = gnn.RMSNorm.from_module(ref)
    x = _rows((4, d), dtype, 2 * d)
    with torch.inference_mode():
        got = mod(x)
        torch.testing.assert_close(got, ref(x), **TOL[dtype])
    assert got.dtype == dtype and calls["rms_norm"] == 1


def test_non_contiguous_input(calls):
    d = 33
    mod = gnn.RMSNorm(d, eps=1e-5, bias=True)
    with torch.no_grad():
        mod.bias.normal_()
        x = _rows((6, 2 * d), torch.float32, 0)[:, ::2]
        assert not x.is_contiguous()
        want = _reference_rms(x, mod.weight, mod.bias, 1e-5)
        torch.testing.assert_close(mod(x), want, **TOL[torch.float32])
    assert calls["rms_norm"] == 1


def test_training_falls_back_to_torch_and_gradients_flow(calls):
    d = 16
    ln, rms = gnn.LayerNorm(d), gnn.RMSNorm(d, bias=True)
    x = _rows((2, d), torch.float32, 1).requires_grad_()
    (ln(x).sum() + rms(x).pow(2).sum()).backward()
    assert calls == {"layer_norm": 0, "rms_norm": 0}
    assert x.grad is not None and ln.weight.grad is not None and rms.bias.grad is not None
    ref_x = x.detach().clone().requires_grad_()
    (F.layer_norm(ref_x, (d,), eps=1e-5).sum() + (F.rms_norm(ref_x, (d,), eps=1e-6)).pow(2).sum()).backward()
    torch.testing.assert_close(x.grad, ref_x.grad)


def test_swapped_in_model_keeps_outputs():
    transformers = pytest.importorskip("transformers")
    from geonorm_core.experiments.convert import to_rmsnorm

    cfg = transformers.GPT2Config(n_embd=48, n_layer=2, n_head=4, vocab_size=64, n_positions=32,
                                  bos_token_id=0, eos_token_id=1)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    converted = to_rmsnorm(model)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = converted(input_ids=ids).logits
        names = gnn.use_native_kernels(converted)
        out = converted(input_ids=ids).logits
    assert len(names) == 2 * 2 + 1
    assert all(isinstance(converted.get_submodule(n), gnn.RMSNorm) for n in names)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    # geonorm still sees them as the RMSNorm(+bias) sites they are
    sites = {s.name: s for s in find_norm_sites(converted)}
    assert all(sites[n].kind == "rmsnorm" and sites[n].bias is not None for n in names)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="x: expected shape"):
        gnn.RMSNorm(8)(torch.zeros(2, 9))
    with pytest.raises(ValueError, match="d: expected a positive int"):
        gnn.LayerNorm(0)
    with pytest.raises(TypeError, match="model"):
        gnn.use_native_kernels(None)
