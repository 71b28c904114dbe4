"""find_norm_sites on tiny random-initialized models of every architecture the project names.

Each tiny model (width 32, 2 layers, vocabulary 128) is built once from its config, never from
a hub id, and its norm weights are jittered so that gain/bias checks cannot pass by accident
(Gemma initializes w = 0, Llama w = 1).
"""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported anywhere

torch = pytest.importorskip("torch")

from tiny_models import norm_formula  # noqa: E402

from geonorm_core.sources.sites import find_norm_sites  # noqa: E402

WIDTH = 32
_SMALL = dict(vocab_size=128)
CONFIGS = {  # model_type -> config kwargs (2 layers, width 32)
    "gpt2": dict(n_embd=WIDTH, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0),
    "gpt_neox": dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    "gptj": dict(n_embd=WIDTH, n_layer=2, n_head=2, rotary_dim=8, n_positions=64),
    "gpt_neo": dict(hidden_size=WIDTH, num_layers=2, num_heads=2, max_position_embeddings=64,
                    attention_types=[[["global", "local"], 1]]),
    "opt": dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64,
                word_embed_proj_dim=WIDTH),
    "bloom": dict(hidden_size=WIDTH, n_layer=2, n_head=2),
    "llama": dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    "mistral": dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                    intermediate_size=64),
    "qwen2": dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  intermediate_size=64),
    "gemma": dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  intermediate_size=64, head_dim=16),
    "gemma3_text": dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                        intermediate_size=64, head_dim=16),
    "phi": dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    "bert": dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    "t5": dict(d_model=WIDTH, d_kv=8, d_ff=64, num_layers=2, num_heads=2),
    "whisper": dict(d_model=WIDTH, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                    decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16,
                    max_source_positions=32, max_target_positions=32, pad_token_id=0, bos_token_id=1,
                    eos_token_id=2, decoder_start_token_id=1),
}
_NO_LM_HEAD = {"bert", "t5", "whisper"}  # built with AutoModel


def _blocks(roles, kind, stack=None, layers=2):
    return [(stack, layer, role, kind) for layer in range(layers) for role in roles]


LN, RMS = "layernorm", "rmsnorm"
EXPECTED = {  # model_type -> [(stack, layer, role, kind)] in forward order
    "gpt2": _blocks(["LN1", "LN2"], LN) + [(None, None, "final", LN)],
    "gpt_neox": _blocks(["LN1", "LN2"], LN) + [(None, None, "final", LN)],
    "gptj": _blocks(["LN1"], LN) + [(None, None, "final", LN)],
    "gpt_neo": _blocks(["LN1", "LN2"], LN) + [(None, None, "final", LN)],
    "opt": _blocks(["LN1", "LN2"], LN) + [(None, None, "final", LN)],
    "bloom": [(None, None, "embed", LN)] + _blocks(["LN1", "LN2"], LN) + [(None, None, "final", LN)],
    "llama": _blocks(["LN1", "LN2"], RMS) + [(None, None, "final", RMS)],
    "mistral": _blocks(["LN1", "LN2"], RMS) + [(None, None, "final", RMS)],
    "qwen2": _blocks(["LN1", "LN2"], RMS) + [(None, None, "final", RMS)],
    "gemma": _blocks(["LN1", "LN2"], RMS) + [(None, None, "final", RMS)],
    "gemma3_text": _blocks(["LN1", "q_norm", "k_norm", "post_attn", "LN2", "post_mlp"], RMS)
    + [(None, None, "final", RMS)],
    "phi": _blocks(["LN1"], LN) + [(None, None, "final", LN)],
    "bert": [(None, None, "embed", LN)] + _blocks(["post_attn", "post_mlp"], LN),
    "t5": _blocks(["LN1", "LN2"], RMS, "encoder") + [("encoder", None, "final", RMS)]
    + _blocks(["LN1", "cross_attn", "LN2"], RMS, "decoder") + [("decoder", None, "final", RMS)],
    "whisper": _blocks(["LN1", "LN2"], LN, "encoder") + [("encoder", None, "final", LN)]
    + _blocks(["LN1", "cross_attn", "LN2"], LN, "decoder") + [("decoder", None, "final", LN)],
}
VARIANT = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gemma": "gemma",
           "gemma3_text": "gemma", "t5": "t5"}  # the rest: torch.LayerNorm


def _build(model_type: str):
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.for_model(model_type, **_SMALL, **CONFIGS[model_type])
    torch.manual_seed(0)
    auto = transformers.AutoModel if model_type in _NO_LM_HEAD else transformers.AutoModelForCausalLM
    model = auto.from_config(config).eval()
    with torch.no_grad():  # jitter every norm's parameters away from their 0 / 1 init
        for module in model.modules():
            if type(module).__name__.endswith("Norm"):
                for p in module.parameters(recurse=False):
                    p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def tiny(request):
    """(model_type, model, sites) for one tiny model, built once for the module."""
    model = _build(request.param)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known architecture must not warn
        sites = find_norm_sites(model)
    return request.param, model, sites


def _module_eps(module) -> float:
    return float(next(getattr(module, a) for a in ("eps", "variance_epsilon", "epsilon")
                      if hasattr(module, a)))


# --- tiny Hugging Face models ------------------------------------------------------------------

def test_sites_layer_role_kind(tiny):
    model_type, _, sites = tiny
    assert [(s.stack, s.layer, s.role, s.kind) for s in sites] == EXPECTED[model_type]


def test_variant_and_verified(tiny):
    model_type, _, sites = tiny
    assert {s.variant for s in sites} == {VARIANT.get(model_type, "torch.LayerNorm")}
    assert all(s.verified for s in sites)


def test_gain_bias_eps_match_module(tiny):
    model_type, model, sites = tiny
    for site in sites:
        module = site.module
        assert model.get_submodule(site.name) is module
        weight = module.weight.detach().float().numpy()
        assert site.d == weight.shape[0]
        expected_gain = 1.0 + weight if site.variant == "gemma" else weight
        np.testing.assert_array_equal(site.gain, expected_gain.astype(np.float32))
        assert site.gain.dtype == np.float32 and not site.gain.flags.writeable
        if getattr(module, "bias", None) is None:
            assert site.bias is None
        else:
            np.testing.assert_array_equal(site.bias, module.bias.detach().float().numpy())
        assert site.eps == _module_eps(module)


def test_reported_formula_reproduces_module(tiny):
    """kind, gain, bias and eps together give the module's output: what the analysis relies on."""
    _, _, sites = tiny
    gen = torch.Generator().manual_seed(1)
    for site in sites:
        x = torch.randn(4, site.d, generator=gen) * 2.0 + 1.5  # non-zero mean
        with torch.no_grad():
            out = site.module(x).double().numpy()
        want = norm_formula(x.double().numpy(), site.kind, site.gain, site.bias, site.eps)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5,
                                   err_msg=site.name)


def test_residual_excludes_qk_norms(tiny):
    _, _, sites = tiny
    for site in sites:
        assert site.residual == (site.role not in ("q_norm", "k_norm")), site.name
        assert site.residual == (site.d == WIDTH) or site.role in ("q_norm", "k_norm")


def test_to_dict_is_json(tiny):
    _, _, sites = tiny
    for site in sites:
        record = json.loads(json.dumps(site.to_dict()))
        assert record["name"] == site.name and record["role"] == site.role
        assert record["layer"] == site.layer and record["stack"] == site.stack
        assert record["has_gain"] is True and record["has_bias"] is (site.bias is not None)
        assert record["module_class"] == type(site.module).__name__
        assert not {"module", "gain", "bias"} & record.keys()


def test_gemma_gain_is_one_plus_weight():
    model = _build("gemma")
    site = find_norm_sites(model)[0]
    np.testing.assert_allclose(site.gain, 1.0 + site.module.weight.detach().numpy(), rtol=0, atol=0)
    assert site.formula == "x / sqrt(mean(x^2) + eps) * (1 + w)"


def test_untouched_init_weights_still_identified():
    """Gemma's zero-initialized w makes 'x/rms' and 'x/rms*(1+w)' coincide; the probe is not fooled."""
    pytest.importorskip("transformers")
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    model = torch.nn.ModuleDict({"gemma_norm": GemmaRMSNorm(8), "llama_norm": LlamaRMSNorm(8),
                                 "t5_norm": T5LayerNorm(8)})
    sites = {s.name: s for s in find_norm_sites(model)}
    assert sites["gemma_norm"].variant == "gemma"
    np.testing.assert_array_equal(sites["gemma_norm"].gain, np.ones(8, np.float32))
    assert sites["llama_norm"].variant == "llama" and sites["t5_norm"].variant == "t5"
    assert {s.kind for s in sites.values()} == {"rmsnorm"}


def test_stack_and_site_keys(tiny):
    """Encoder/decoder sites carry their stack, which is also the name's first component (T5,
    Whisper); (stack, layer, role) names a site uniquely in every model."""
    _, _, sites = tiny
    for site in sites:
        assert site.stack is None or site.name.split(".")[0] == site.stack
    keys = [(s.stack, s.layer, s.role) for s in sites]
    assert len(set(keys)) == len(keys)


def test_opt_post_ln_config():
    """OPT-350m style (do_layer_norm_before=False) normalizes after each sublayer."""
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.for_model("opt", **_SMALL, **CONFIGS["opt"], do_layer_norm_before=False)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    roles = [(s.layer, s.role) for s in find_norm_sites(model)]
    assert roles == [(0, "post_attn"), (0, "post_mlp"), (1, "post_attn"), (1, "post_mlp")]


# --- plain torch modules -------------------------------------------------------------------------

class FooNorm(torch.nn.Module):
    """Named like a norm, with a 1-D weight and an eps, but only scales."""

    def __init__(self, d):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))
        self.eps = 1e-5

    def forward(self, x):
        return x * self.weight


class MyRMSNorm(torch.nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))
        self.epsilon = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.epsilon) * self.weight


class StdPlusEpsLayerNorm(torch.nn.Module):
    """The old (x - mu) / (std + eps) LayerNorm: the formula holds, but not at var ~ eps."""

    def __init__(self, d, eps=1e-2):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))
        self.bias = torch.nn.Parameter(torch.zeros(d))
        self.eps = eps

    def forward(self, x):
        c = x - x.mean(-1, keepdim=True)
        return c / (c.pow(2).mean(-1, keepdim=True).sqrt() + self.eps) * self.weight + self.bias


class LayerNorm1P(torch.nn.LayerNorm):
    """Nemotron's LayerNorm with gain 1 + w: a torch LayerNorm subclass with another formula."""

    def forward(self, x):
        return torch.nn.functional.layer_norm(x, self.normalized_shape, self.weight + 1, self.bias, self.eps)


class Block(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln_1 = torch.nn.RMSNorm(d)
        self.attn = torch.nn.Linear(d, d)
        self.ln_2 = MyRMSNorm(d)
        self.mlp = torch.nn.Linear(d, d)
        self.k_norm = MyRMSNorm(d // 2)


class Tiny(torch.nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(d) for _ in range(3)])
        self.norm = torch.nn.LayerNorm(d, bias=False)
        self.batch_norm = torch.nn.BatchNorm1d(d)
        self.group_norm = torch.nn.GroupNorm(1, d)


def test_plain_torch_model_without_config():
    sites = find_norm_sites(Tiny())
    assert [(s.layer, s.role, s.variant) for s in sites] == [
        (i, role, variant) for i in range(3)
        for role, variant in (("LN1", "torch.RMSNorm"), ("k_norm", "llama"), ("LN2", "llama"))
    ] + [(None, "final", "torch.LayerNorm")]
    assert all(s.residual == (s.d == 16) for s in sites)  # width: most common block-norm size
    assert sites[-1].bias is None and sites[-1].formula == "(x - mean(x)) / sqrt(var(x) + eps) * w"
    assert sites[0].eps == float(torch.finfo(torch.float32).eps)  # nn.RMSNorm(eps=None)


def test_layernorm_1p_subclass():
    (site,) = find_norm_sites(torch.nn.ModuleDict({"ln": LayerNorm1P(8)}))
    assert (site.kind, site.variant) == ("layernorm", "layernorm-1p")
    np.testing.assert_array_equal(site.gain, np.ones(8, np.float32) + site.module.weight.detach().numpy())


def test_no_norm_sites_gives_empty_list():
    assert find_norm_sites(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())) == []
    assert find_norm_sites(torch.nn.BatchNorm1d(4)) == []


def test_fake_norm_is_skipped_with_warning():
    model = torch.nn.ModuleDict({"foo": FooNorm(8), "real": torch.nn.LayerNorm(8)})
    with pytest.warns(UserWarning, match="'foo' .*FooNorm.*neither LayerNorm nor RMSNorm"):
        sites = find_norm_sites(model)
    assert [s.name for s in sites] == ["real"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked for: listed, not warned about
        sites = find_norm_sites(model, include_unknown=True)
    foo = next(s for s in sites if s.name == "foo")
    assert (foo.kind, foo.variant, foo.verified) == ("unknown", "unknown", False)


def test_eps_misuse_warns_but_formula_holds():
    with pytest.warns(UserWarning, match="does not use its eps"):
        (site,) = find_norm_sites(torch.nn.ModuleDict({"ln": StdPlusEpsLayerNorm(8)}))
    assert (site.kind, site.variant) == ("layernorm", "layernorm")


def test_meta_device_is_unverified():
    with torch.device("meta"):
        model = torch.nn.ModuleDict({"ln": torch.nn.LayerNorm(8), "rms": MyRMSNorm(8)})
    with pytest.warns(UserWarning, match="'rms'"):
        sites = find_norm_sites(model)
    (site,) = sites
    assert (site.name, site.kind, site.verified, site.gain) == ("ln", "layernorm", False, None)


def test_probe_fires_no_hooks_and_leaves_rng_alone():
    model = Tiny()
    calls = []
    for module in model.modules():
        module.register_forward_hook(lambda *args: calls.append(args))
    state = torch.get_rng_state()
    params = {k: v.clone() for k, v in model.state_dict().items()}
    sites = find_norm_sites(model)
    assert calls == [] and torch.equal(state, torch.get_rng_state())
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
    assert len(sites) == 10 and all(p.requires_grad for p in model.parameters())


def test_site_is_frozen_hashable_and_reprs_without_arrays():
    (site,) = find_norm_sites(torch.nn.ModuleDict({"ln": torch.nn.LayerNorm(8)}))
    with pytest.raises(AttributeError):
        site.role = "LN2"
    assert hash(site) == hash(find_norm_sites(torch.nn.ModuleDict({"ln": torch.nn.LayerNorm(8)}))[0])
    assert "gain" not in repr(site) and "module" not in repr(site)


def test_not_a_module_is_a_type_error():
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        find_norm_sites("gpt2")


def test_a_module_can_say_it_is_no_norm_site():
    """geonorm_site = False: never a candidate, and no warning about a formula it does not have."""
    import warnings

    class CentredThingNorm(torch.nn.Module):
        geonorm_site = False

        def forward(self, x):
            z = torch.nn.functional.layer_norm(x, x.shape[-1:])
            return z - z.mean(-1, keepdim=True) + 1.0  # neither LayerNorm nor RMSNorm

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb_norm = CentredThingNorm()
            self.ln = torch.nn.LayerNorm(8)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [s.name for s in find_norm_sites(Model())] == ["ln"]
    CentredThingNorm.geonorm_site = True  # the same module, not opting out: a candidate that fails
    with pytest.warns(UserWarning, match="emb_norm"):
        find_norm_sites(Model())


def test_identify_gives_typed_results():
    """A verified formula is a Formula; a module that computes no norm says why, as data."""
    from geonorm_core.sources.sites import Formula, identify

    ident = identify(torch.nn.LayerNorm(8))
    assert (ident.kind, ident.variant, ident.verified) == ("layernorm", "torch.LayerNorm", True)
    assert ident.formula == Formula("layernorm", "w", True).text == "(x - mean(x)) / sqrt(var(x) + eps) * w + b"
    assert Formula("rmsnorm", "1+w", False).variant(torch.nn.Module()) == "gemma"

    class ScaleNorm(torch.nn.Module):   # a "Norm" by name that only doubles its input
        def forward(self, x):
            return 2 * x

    odd = identify(ScaleNorm(), width=8)
    assert odd.kind == "unknown" and not odd.verified and "matches neither" in odd.why
