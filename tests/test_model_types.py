"""Every normalization layer of 36 `transformers` architectures, built tiny from a config (no hub).

For each model type (2 layers, width 64, vocabulary 128, norm parameters jittered so that gain
and bias cannot pass by accident):

* every module that normalizes hidden vectors (``nn.LayerNorm``/``nn.RMSNorm``, or a class with
  "Norm" in its name that holds no other norm) is a norm site, and nothing else is;
* the site's reported formula (kind, gain, bias, eps) reproduces the module's output on the
  model's own hidden states, captured in a forward pass;
* ``analyze`` on padded batches agrees with a float64 reference computed from those hidden states.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tiny_models import norm_formula  # noqa: E402

from geonorm_core import slow
from geonorm_core.sources.adapter import analyze
from geonorm_core.sources.sites import find_norm_sites

pytestmark = pytest.mark.slow   # 41 model types, each built and run: the full tier only

WIDTH, VOCAB = 64, 128
_GENERIC = dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=64)
_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
CONFIGS = {  # model_type -> config kwargs
    # the 15 of tests/test_sites.py (there at width 32; here at 64)
    "gpt2": dict(n_embd=WIDTH, n_layer=2, n_head=4, n_positions=64, vocab_size=VOCAB, **_IDS),
    "gpt_neox": dict(_GENERIC),
    "gptj": dict(n_embd=WIDTH, n_layer=2, n_head=4, rotary_dim=8, n_positions=64, vocab_size=VOCAB),
    "gpt_neo": dict(hidden_size=WIDTH, num_layers=2, num_heads=4, max_position_embeddings=64, vocab_size=VOCAB,
                    attention_types=[[["global", "local"], 1]]),
    "opt": dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
                word_embed_proj_dim=WIDTH, vocab_size=VOCAB, max_position_embeddings=64, **_IDS),
    "bloom": dict(hidden_size=WIDTH, n_layer=2, n_head=4, vocab_size=VOCAB),
    "llama": dict(_GENERIC), "mistral": dict(_GENERIC), "qwen2": dict(_GENERIC),
    "gemma": dict(_GENERIC, head_dim=16), "gemma3_text": dict(_GENERIC, head_dim=16),
    "phi": dict(_GENERIC), "bert": dict(_GENERIC),
    "t5": dict(d_model=WIDTH, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=VOCAB),
    # parameter-free norms, LayerNorm1P, sandwich norms, q/k norms, post-LN encoders, ...
    "olmo": dict(_GENERIC, **_IDS), "olmo2": dict(_GENERIC, **_IDS), "olmoe": dict(_GENERIC, **_IDS),
    "cohere": dict(_GENERIC, **_IDS), "nemotron": dict(_GENERIC, head_dim=16, **_IDS),
    "falcon": dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB, **_IDS),
    "qwen3": dict(_GENERIC, head_dim=16), "gemma2": dict(_GENERIC, head_dim=16),
    "phi3": dict(_GENERIC, **_IDS), "stablelm": dict(_GENERIC, **_IDS), "starcoder2": dict(_GENERIC, **_IDS),
    "mpt": dict(d_model=WIDTH, n_layers=2, n_heads=4, max_seq_len=64, vocab_size=VOCAB),
    "gpt_bigcode": dict(n_embd=WIDTH, n_layer=2, n_head=4, n_positions=64, vocab_size=VOCAB, **_IDS),
    "codegen": dict(n_embd=WIDTH, n_layer=2, n_head=4, rotary_dim=8, n_positions=64, n_ctx=64,
                    vocab_size=VOCAB, **_IDS),
    "mixtral": dict(_GENERIC), "granite": dict(_GENERIC), "persimmon": dict(_GENERIC, **_IDS),
    "exaone4": dict(_GENERIC, head_dim=16, **_IDS), "falcon_h1": dict(_GENERIC, head_dim=16, **_IDS),
    "glm": dict(_GENERIC, head_dim=16, **_IDS), "smollm3": dict(_GENERIC, **_IDS),
    "xglm": dict(d_model=WIDTH, num_layers=2, attention_heads=4, ffn_dim=128, vocab_size=VOCAB,
                 max_position_embeddings=64, **_IDS),
    "biogpt": dict(_GENERIC, **_IDS),
    "roberta": dict(_GENERIC, **_IDS), "electra": dict(_GENERIC, embedding_size=WIDTH, **_IDS),
    "distilbert": dict(dim=WIDTH, n_layers=2, n_heads=4, hidden_dim=128, vocab_size=VOCAB,
                       max_position_embeddings=64, pad_token_id=0),
    "deberta-v2": dict(_GENERIC, **_IDS),
}
_ENCODERS = {"bert", "roberta", "electra", "distilbert", "deberta-v2", "t5"}  # built with AutoModel
_NOT_DECODER_ONLY = {"t5"}  # needs decoder inputs


def build(model_type: str) -> torch.nn.Module:
    config = transformers.AutoConfig.for_model(model_type, **CONFIGS[model_type])
    torch.manual_seed(0)
    auto = transformers.AutoModel if model_type in _ENCODERS else transformers.AutoModelForCausalLM
    model = auto.from_config(config).eval()
    with torch.no_grad():  # jitter every norm's parameters away from their 0 / 1 init
        for module in model.modules():
            if _normalizes(module):
                for p in module.parameters(recurse=False):
                    p.add_(0.3 * torch.randn_like(p))
    return model


def _normalizes(module: torch.nn.Module) -> bool:
    """This test's own notion of a per-vector norm module, independent of sites.py."""
    name = type(module).__name__
    if isinstance(module, (torch.nn.LayerNorm, torch.nn.RMSNorm)):
        return True
    return "Norm" in name and not any(w in name for w in ("BatchNorm", "GroupNorm", "InstanceNorm"))


def norm_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The innermost norm modules (a container of norms, e.g. StableLM's per-head list, is not one)."""
    found = [m for m in model.modules() if _normalizes(m)]
    return [m for m in found if not any(o is not m and _normalizes(o) for o in m.modules())]


def batch(seed: int = 0, b: int = 3, t: int = 9) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, 6:] = 0  # right padding
    mask[-1, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def inputs_for(model_type: str, bt: dict) -> dict:
    if model_type in _NOT_DECODER_ONLY:
        return {**bt, "decoder_input_ids": bt["input_ids"][:, :5]}
    return bt


def capture(model, sites, bt):
    """Each site's (input, output) in float64 from our own hooks, during one forward pass."""
    got = {s.name: [] for s in sites}
    handles = [s.module.register_forward_hook(
        lambda m, a, o, n=s.name: got[n].append((a[0].detach().double().numpy(),
                                                 (o[0] if isinstance(o, tuple) else o).detach().double().numpy())))
        for s in sites]
    try:
        with torch.no_grad():
            model(**bt)
    finally:
        for h in handles:
            h.remove()
    return got


def _real_rows(mask: np.ndarray, lead: tuple) -> np.ndarray:
    """Which of a site's rows are real tokens, for the layouts these models use: (B, T), (B*T,) in
    OPT's MLP, (B, T, heads) and (B, heads, T) in q/k norms; another sequence's rows (T5's decoder)
    all count."""
    if lead[:2] == mask.shape:
        return np.broadcast_to(mask.reshape(mask.shape + (1,) * (len(lead) - 2)), lead)
    if len(lead) == 3 and (lead[0], lead[2]) == mask.shape:
        return np.broadcast_to(mask[:, None, :], lead)
    if lead == (mask.size,):
        return mask.reshape(-1)
    return np.ones(lead, bool)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def tiny(request):
    model = build(request.param)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a known architecture must not warn
        sites = find_norm_sites(model)
    return request.param, model, sites


def test_at_least_30_architectures():
    assert len(CONFIGS) >= 30


def test_every_norm_module_is_a_site(tiny):
    model_type, model, sites = tiny
    expected = norm_modules(model)
    assert expected, model_type
    assert {id(m) for m in expected} == {id(s.module) for s in sites}, model_type
    assert all(s.verified and s.kind in ("layernorm", "rmsnorm") for s in sites)
    keys = [(s.stack, s.layer, s.role) for s in sites]
    assert len(set(keys)) == len(keys), keys


def test_formula_reproduces_module_on_its_own_hidden_states(tiny):
    model_type, model, sites = tiny
    got = capture(model, sites, inputs_for(model_type, batch()))
    for site in sites:
        assert got[site.name], (model_type, site.name, "never ran")
        for x, y in got[site.name]:
            np.testing.assert_allclose(norm_formula(x, site.kind, site.gain, site.bias, site.eps), y,
                                       rtol=2e-5, atol=2e-5 * max(1.0, np.abs(y).max()),
                                       err_msg=f"{model_type} {site.name} {site.formula} eps={site.eps}")


def test_analyze_on_padded_batches_matches_float64(tiny):
    """Padding is left out where a site's rows are the input_ids' tokens; T5's decoder rows (another
    sequence, unpadded here) all count."""
    model_type, model, sites = tiny
    batches = [inputs_for(model_type, batch(0)), inputs_for(model_type, batch(1, b=2, t=7))]
    report = analyze(model, batches, sites=[s.name for s in sites])
    by_name = {s.name: s for s in sites}
    refs = {n: {q: [] for q in ("angle_hidden", "angle_post", "norm_hidden", "rotation", "ln_rms_gap")}
            for n in by_name}
    tokens = {}
    for bt in batches:
        mask = bt["attention_mask"].numpy() != 0
        for name, pairs in capture(model, sites, bt).items():
            site = by_name[name]
            for h, p in pairs:
                keep = _real_rows(mask, h.shape[:-1])
                tokens[name] = tokens.get(name, 0) + int(keep.sum())
                h, p = h[keep].reshape(-1, h.shape[-1]), p[keep].reshape(-1, p.shape[-1])  # q/k norms: per head
                g = 1.0 if site.gain is None else site.gain.astype(np.float64)
                b = 0.0 if site.bias is None else site.bias.astype(np.float64)
                ln = slow.layer_norm(h, eps=site.eps) * g + b
                rms = slow.rms_norm(h, eps=site.eps) * g + b
                r = refs[name]
                r["angle_hidden"].append(slow.decompose(h).angle)
                r["angle_post"].append(slow.decompose(p).angle)
                r["norm_hidden"].append(slow.decompose(h).norm)
                r["rotation"].append(slow.rotation(h, p))
                r["ln_rms_gap"].append(np.linalg.norm(ln - rms, axis=-1) / np.linalg.norm(ln, axis=-1))
    for name, r in refs.items():
        stats = report.sites[name]
        assert stats.tokens == tokens[name] > 0, name  # q/k norms: one row per head and token
        for q, parts in r.items():
            ref = np.concatenate(parts)
            tol = 1e-4 if q.startswith(("angle", "rotation")) else 1e-6 * max(1.0, np.abs(ref).max())
            assert abs(stats[q].mean - ref.mean()) <= tol, (model_type, name, q, stats[q].mean, ref.mean())
            assert abs(stats[q].max - ref.max()) <= tol, (model_type, name, q)


def test_parameter_free_norms_are_sites():
    """OLMo's LayerNorm, elementwise_affine=False, bias=False: gain/bias None, eps measured where hidden."""
    class PreNorm(torch.nn.Module):  # TransformerLens's LayerNormPre: no parameters, no eps attribute
        def forward(self, x):
            x = x - x.mean(-1, keepdim=True)
            return x / (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()

    class RMSNormPre(torch.nn.Module):
        def forward(self, x):
            return x / (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()

    model = torch.nn.ModuleDict({
        "plain": torch.nn.LayerNorm(16, elementwise_affine=False),
        "nobias": torch.nn.LayerNorm(16, bias=False),
        "rms": torch.nn.RMSNorm(16, elementwise_affine=False, eps=1e-6),
        "layers": torch.nn.ModuleList([torch.nn.ModuleDict({"ln1": PreNorm(), "ln2": RMSNormPre(),
                                                            "mlp": torch.nn.Linear(16, 16)})]),
    })
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        sites = {s.name: s for s in find_norm_sites(model)}
    assert set(sites) == {"plain", "nobias", "rms", "layers.0.ln1", "layers.0.ln2"}
    assert (sites["plain"].kind, sites["plain"].gain, sites["plain"].bias) == ("layernorm", None, None)
    assert sites["nobias"].bias is None and sites["nobias"].gain is not None
    assert (sites["rms"].kind, sites["rms"].gain, sites["rms"].eps) == ("rmsnorm", None, 1e-6)
    pre, rms_pre = sites["layers.0.ln1"], sites["layers.0.ln2"]
    assert (pre.kind, pre.gain, pre.bias, pre.eps, pre.d, pre.layer) == ("layernorm", None, None, 1e-5, 16, 0)
    assert (rms_pre.kind, rms_pre.eps) == ("rmsnorm", 1e-6)
    assert (pre.role, rms_pre.role) == ("LN1", "LN2")
    x = torch.randn(5, 16) * 3 + 2
    for site in sites.values():
        with torch.no_grad():
            out = site.module(x).double().numpy()
        want = norm_formula(x.double().numpy(), site.kind, site.gain, site.bias, site.eps)
        np.testing.assert_allclose(want, out, rtol=1e-5, atol=1e-5)


def test_batch_group_instance_norms_are_never_sites():
    class MyBatchNormLike(torch.nn.BatchNorm1d):
        pass

    model = torch.nn.ModuleDict({"bn": MyBatchNormLike(8), "gn": torch.nn.GroupNorm(2, 8),
                                 "inorm": torch.nn.InstanceNorm1d(8), "ln": torch.nn.LayerNorm(8)})
    assert [s.name for s in find_norm_sites(model)] == ["ln"]


@pytest.mark.parametrize("model_type, kind, variant, has_gain, has_bias, eps", [
    ("olmo", "layernorm", "layernorm", False, False, 1e-5),   # F.layer_norm(x, shape, None, None, eps=1e-5)
    ("cohere", "layernorm", "layernorm", True, False, 1e-5),
    ("nemotron", "layernorm", "layernorm-1p", True, True, 1e-5),
    ("gemma2", "rmsnorm", "gemma", True, False, 1e-6),
    ("stablelm", "layernorm", "torch.LayerNorm", True, True, 1e-5),
])
def test_what_each_family_computes(model_type, kind, variant, has_gain, has_bias, eps):
    sites = find_norm_sites(build(model_type))
    assert {(s.kind, s.variant, s.gain is not None, s.bias is not None) for s in sites} == {
        (kind, variant, has_gain, has_bias)}
    assert all(s.eps == pytest.approx(eps, rel=1e-9) for s in sites), [s.eps for s in sites]
