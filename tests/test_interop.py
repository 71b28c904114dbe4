"""TransformerLens 4 bridges and nnsight models: analyzed live and from their caches, with the numbers
of the plain Hugging Face model on the same tokens (to the accuracy contract: 1e-4 deg, 1e-6 relative).

Tiny random Llama (RMSNorm) and GPT-2 (LayerNorm) models are built twice from one seed: one is wrapped,
its twin stays plain (a bridge re-parents the modules of the model it wraps).
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tl_bridge = pytest.importorskip("transformer_lens.model_bridge")
nnsight = pytest.importorskip("nnsight")

import geonorm_core as gn
from geonorm_core.experiments.monitor import GeometryMonitor
from geonorm_core.sources.caches import analyze_cache

QUANTITIES = ("angle_hidden", "angle_post", "norm_hidden", "norm_post", "rotation", "max_abs_hidden",
              "ln_rms_gap")
HUB_NAME = {"llama": "meta-llama/Llama-2-7b-hf", "gpt2": "gpt2"}  # picks the bridge's adapter; nothing is fetched
TL_NAMES = ["blocks.0.ln1", "blocks.0.ln2", "blocks.1.ln1", "blocks.1.ln2", "ln_final"]


def hf_model(kind: str, vocab: int):
    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                       num_key_value_heads=4, vocab_size=vocab, num_hidden_layers=2)
    else:
        cfg = transformers.GPT2Config(n_embd=48, n_head=4, n_layer=2, vocab_size=vocab, n_positions=64)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # learned-looking gains and biases
        for m in model.modules():
            if "Norm" in type(m).__name__:
                m.weight.uniform_(0.5, 1.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.normal_(0, 0.1)
    return model


def bridge(kind, tok, **compat):
    br = tl_bridge.TransformerBridge.boot_transformers(HUB_NAME[kind], hf_model=hf_model(kind, len(tok)),
                                                       tokenizer=tok)
    if compat:
        br.enable_compatibility_mode(disable_warnings=True, **compat)
    return br


def nnsight_model(kind, tok, cls="LanguageModel"):
    """nnsight 0.8 deprecates LanguageModel for TransformersModel; users hold both."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nnsight.NNsightDeprecationWarning)
        return getattr(nnsight, cls)(hf_model(kind, len(tok)), tokenizer=tok)


def batches(n=2, b=3, t=10):
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(n):
        mask = torch.ones(b, t, dtype=torch.long)
        mask[0, 6:] = 0
        mask[-1, 3:] = 0
        out.append({"input_ids": torch.randint(3, 259, (b, t), generator=g), "attention_mask": mask})
    return out


def assert_same(got, want, names):
    """Per-site statistics equal to the contract; names maps got's site names to want's."""
    assert set(got.sites) == set(names), sorted(got.sites)
    for mine, theirs in names.items():
        a, b = got.sites[mine], want.sites[theirs]
        assert a.tokens == b.tokens, mine
        for q in QUANTITIES:
            for stat in ("mean", "std", "min", "max"):
                x, y = getattr(a[q], stat), getattr(b[q], stat)
                tol = 1e-4 if q.startswith(("angle", "rotation")) else 1e-6 * max(1.0, abs(y))
                assert abs(x - y) <= tol, (mine, q, stat, x, y)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def plain(kind, byte_tokenizer):
    model = hf_model(kind, len(byte_tokenizer))
    return model, gn.analyze(model, batches())


def hf_to_tl(model):
    sites = [s for s in gn.find_norm_sites(model) if s.residual]
    return dict(zip(TL_NAMES, [s.name for s in sites]))


def test_bridge_sites_carry_transformer_lens_names(kind, byte_tokenizer):
    br = bridge(kind, byte_tokenizer)
    sites = gn.find_norm_sites(br)
    assert [s.name for s in sites] == TL_NAMES
    assert [(s.layer, s.role) for s in sites] == [(0, "LN1"), (0, "LN2"), (1, "LN1"), (1, "LN2"), (None, "final")]
    assert all(s.verified and "hook_in" in dict(s.module.named_children()) for s in sites)  # the bridge component


def test_raw_bridge_gives_the_plain_models_numbers(kind, plain, byte_tokenizer):
    model, want = plain
    got = gn.analyze(bridge(kind, byte_tokenizer), batches())
    assert_same(got, want, hf_to_tl(model))


def test_compatibility_mode_without_processing_gives_the_plain_models_numbers(kind, plain, byte_tokenizer):
    model, want = plain
    got = gn.analyze(bridge(kind, byte_tokenizer, no_processing=True), batches())
    assert_same(got, want, hf_to_tl(model))


def test_compatibility_mode_folded_is_analyzed_as_it_computes(kind, byte_tokenizer):
    """fold_ln moves the gains into the next layer: the sites' gains are 1, and the live analysis
    agrees with the cache of the same forward."""
    br = bridge(kind, byte_tokenizer, fold_ln=True)
    sites = gn.find_norm_sites(br)
    assert [s.name for s in sites] == TL_NAMES
    for s in sites:
        assert s.gain is None or np.allclose(s.gain, 1.0), s.name
    bt = batches(n=1)[0]
    live = gn.analyze(br, [bt])
    _, cache = br.run_with_cache(bt["input_ids"], attention_mask=bt["attention_mask"])
    assert_same(analyze_cache(cache, attention_mask=bt["attention_mask"]), live, {n: n for n in TL_NAMES})


@pytest.mark.parametrize("cls", ["LanguageModel", "TransformersModel"])
def test_nnsight_model_gives_the_plain_models_numbers(cls, kind, plain, byte_tokenizer):
    model, want = plain
    lm = nnsight_model(kind, byte_tokenizer, cls)
    got = gn.analyze(lm, batches())
    names = [s.name for s in gn.find_norm_sites(model) if s.residual]
    assert_same(got, want, {n: n for n in names})


def test_transformer_lens_cache_matches_live_analysis(kind, plain, byte_tokenizer):
    model, _ = plain
    br = bridge(kind, byte_tokenizer)
    bt = batches(n=1)[0]
    _, cache = br.run_with_cache(bt["input_ids"], attention_mask=bt["attention_mask"])
    got = analyze_cache(cache, attention_mask=bt["attention_mask"])
    assert_same(got, gn.analyze(model, [bt]), hf_to_tl(model))


def test_nnsight_saved_tensors_match_live_analysis(kind, plain, byte_tokenizer):
    model, _ = plain
    lm = nnsight_model(kind, byte_tokenizer)
    names = [s.name for s in gn.find_norm_sites(model) if s.residual]
    bt = batches(n=1)[0]
    saved = {}
    with lm.trace(dict(bt)):
        for name in names:
            envoy = lm
            for part in name.split("."):
                envoy = getattr(envoy, part) if not part.isdigit() else envoy[int(part)]
            saved[name + ".input"] = envoy.input.save()
            saved[name + ".output"] = envoy.output.save()
    got = analyze_cache(saved, lm, attention_mask=bt["attention_mask"])
    assert_same(got, gn.analyze(model, [bt]), {n: n for n in names})
    # one sequence without its batch axis, (seq, d), and its own mask
    one = {k: v[1] for k, v in saved.items()}
    got = analyze_cache(one, lm, attention_mask=bt["attention_mask"][1], exclude_first_token=True)
    single = {k: v[1:2] for k, v in bt.items()}
    assert_same(got, gn.analyze(model, [single], exclude_first_token=True), {n: n for n in names})


def test_cache_errors_name_what_is_wrong(byte_tokenizer):
    br = bridge("llama", byte_tokenizer)
    with pytest.raises(TypeError, match="model: this cache carries no model"):
        analyze_cache({"x": torch.zeros(1)})
    with pytest.raises(ValueError, match="none of the 5 norm sites.*blocks.0.ln1.hook_in"):
        analyze_cache({"x": torch.zeros(1)}, br)
    bt = batches(n=1)[0]
    _, cache = br.run_with_cache(bt["input_ids"])
    with pytest.raises(ValueError, match="attention_mask has shape"):
        analyze_cache(cache, attention_mask=bt["attention_mask"][:, :4])
    with pytest.raises(ValueError, match=r"sites: \['blocks.0.ln2'\] have no input/output pair"):
        analyze_cache({k: v for k, v in cache.items() if not k.startswith("blocks.0.ln2")}, br,
                      sites=["blocks.0.ln1", "blocks.0.ln2"])
    with pytest.raises(TypeError, match="cache: expected a TransformerLens ActivationCache"):
        analyze_cache([1, 2], br)
    partial = analyze_cache({k: v for k, v in cache.items() if k.startswith("blocks.1.")}, br)
    assert sorted(partial.sites) == ["blocks.1.ln1", "blocks.1.ln2"]


@pytest.mark.parametrize("wrapper", ["bridge", "nnsight"])
def test_geometry_monitor_on_wrapped_models(wrapper, plain, kind, byte_tokenizer):
    model, _ = plain
    if wrapper == "bridge":
        wrapped = bridge(kind, byte_tokenizer)
        run = lambda bt: wrapped(bt["input_ids"], attention_mask=bt["attention_mask"])
        names = hf_to_tl(model)
    else:
        wrapped = nnsight_model(kind, byte_tokenizer)

        def run(bt):
            with wrapped.trace(dict(bt)):
                pass
        names = {s.name: s.name for s in gn.find_norm_sites(model) if s.residual}
    bt = batches(n=1)[0]
    monitor = GeometryMonitor(wrapped, every=1)
    with monitor, monitor.record(0), torch.no_grad():
        run(bt)
    assert_same(monitor.timeline[0], gn.analyze(model, [bt]), names)


def test_smollm2_through_a_bridge_gives_the_plain_models_numbers(smollm2):
    """Real weights (massive activations, 30 layers): the bridge runs its own copy of each norm in raw
    mode, and its numbers still agree with the plain model's to the contract."""
    import copy

    model, tok = smollm2
    br = tl_bridge.TransformerBridge.boot_transformers("HuggingFaceTB/SmolLM2-135M", hf_model=copy.deepcopy(model),
                                                       tokenizer=tok)
    text = ("The geometry of a hidden vector is simple: a component along the uniform vector, "
            "and everything orthogonal to it.")
    enc = tok([text, text[:50]], return_tensors="pt", padding=True)
    bt = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    names = [s.name for s in gn.find_norm_sites(model) if s.residual]
    tl = [f"blocks.{i}.{ln}" for i in range(len(model.model.layers)) for ln in ("ln1", "ln2")] + ["ln_final"]
    assert len(names) == len(tl) == 61
    assert_same(gn.analyze(br, [bt]), gn.analyze(model, [bt]), dict(zip(tl, names)))
