"""The exact LayerNorm -> RMSNorm conversion: outputs unchanged, every converted site measures a zero gap.

Tiny random configs of every architecture in scope (transformers builds them offline), with norm gains
and biases drawn away from 1 and 0 and embeddings shifted along 1, so that the original stream is far
from orthogonal to 1 and deleting the mean subtraction naively changes the logits (checked: the test
has teeth).  Whisper base with its real weights through the session fixture.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

import geonorm_core as gn  # noqa: E402
from geonorm_core.experiments.convert import (  # noqa: E402
    CONVERSION_FILE,
    AffineRMSNorm,
    CentredEmbeddingLayerNorm,
    ConversionError,
    is_converted,
    load_converted,
    save_converted,
    to_rmsnorm,
)
from geonorm_core.models.corpus import default_text  # noqa: E402
from geonorm_core.sources.sites import find_norm_sites  # noqa: E402

VOCAB, D = 96, 32
LOGITS_RTOL = 1e-4   # max |logits' - logits| / max |logits|, fp32 (issue 14)
LOSS_ATOL = 1e-5     # corpus loss, nats
GAP_MAX = 1e-6       # LN-RMS gap at every converted site
ANGLE_TOL = 1e-4     # degrees from 90


def _tiny_configs() -> dict:
    T = transformers
    common = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return {
        "gpt2": T.GPT2Config(n_embd=D, n_layer=2, n_head=4, n_positions=64, **common),
        "gpt_neo": T.GPTNeoConfig(hidden_size=D, num_layers=2, num_heads=4, max_position_embeddings=64,
                                  attention_types=[[["global", "local"], 1]], window_size=8, **common),
        "gptj": T.GPTJConfig(n_embd=D, n_layer=2, n_head=4, n_positions=64, rotary_dim=4, **common),
        "gpt_neox": T.GPTNeoXConfig(hidden_size=D, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=64, max_position_embeddings=64,
                                    use_parallel_residual=True, **common),
        "gpt_neox_sequential": T.GPTNeoXConfig(hidden_size=D, num_hidden_layers=2, num_attention_heads=4,
                                               intermediate_size=64, max_position_embeddings=64,
                                               use_parallel_residual=False, **common),
        "opt": T.OPTConfig(hidden_size=D, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                           max_position_embeddings=64, word_embed_proj_dim=D, **common),
        "opt_project_in_out": T.OPTConfig(hidden_size=D, num_hidden_layers=2, num_attention_heads=4,
                                          ffn_dim=64, max_position_embeddings=64, word_embed_proj_dim=16,
                                          **common),
        "phi": T.PhiConfig(hidden_size=D, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                           max_position_embeddings=64, partial_rotary_factor=0.5, qk_layernorm=True,
                           **common),
        "bloom": T.BloomConfig(hidden_size=D, n_layer=2, n_head=4, **common),
    }


def _whisper_tiny_config():
    return transformers.WhisperConfig(
        vocab_size=VOCAB, num_mel_bins=8, d_model=D, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=16, max_target_positions=64, decoder_start_token_id=0, pad_token_id=1,
        bos_token_id=0, eos_token_id=1, begin_suppress_tokens=None, suppress_tokens=None)


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Norm gains/biases away from 1/0 and embeddings with a component along 1, so the test has teeth."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm) and mod.weight is not None:
                mod.weight.copy_(0.5 + torch.rand(mod.weight.shape, generator=gen))
                if mod.bias is not None:
                    mod.bias.copy_(0.3 * torch.randn(mod.bias.shape, generator=gen))
            elif isinstance(mod, torch.nn.Embedding) and mod.weight.shape[-1] >= 16:
                mod.weight.add_(0.5 + 0.1 * torch.randn(mod.weight.shape[0], 1, generator=gen))
    return model.eval()


def _corpus_ids(n: int = 48) -> torch.Tensor:
    """The bundled corpus as ids of the tiny vocabulary (its bytes modulo VOCAB), shaped (2, n)."""
    raw = np.frombuffer(default_text()[: 2 * n].encode("utf-8")[: 2 * n], dtype=np.uint8)
    return torch.from_numpy((raw.astype(np.int64) % VOCAB).reshape(2, n))


def _loss(logits: torch.Tensor, ids: torch.Tensor) -> float:
    return float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(),
                                                   ids[:, 1:].reshape(-1)))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def tiny_models():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {k: _perturbed(transformers.AutoModelForCausalLM.from_config(c), i)
                for i, (k, c) in enumerate(_tiny_configs().items())}


@pytest.fixture(scope="module")
def tiny_whisper():
    torch.manual_seed(7)
    return _perturbed(transformers.WhisperForConditionalGeneration(_whisper_tiny_config()), 99)


def _naive_rms(model: torch.nn.Module) -> torch.nn.Module:
    """Negative control: LayerNorm -> RMSNorm(+bias) without centring the writers."""
    import copy

    naive = copy.deepcopy(model)
    for site in find_norm_sites(naive):
        if site.residual and site.kind == "layernorm" and site.role != "embed":
            parent, _, leaf = site.name.rpartition(".")
            setattr(naive.get_submodule(parent), leaf, AffineRMSNorm.from_layer_norm(site.module))
    return naive


# ---- outputs unchanged ----------------------------------------------------------------------------
@pytest.mark.parametrize("arch", list(_tiny_configs()))
def test_logits_and_loss_unchanged(tiny_models, arch):
    model = tiny_models[arch]
    ids = _corpus_ids()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted = to_rmsnorm(model)
    with torch.no_grad():
        ref, out = model(input_ids=ids).logits, converted(input_ids=ids).logits
        naive = _naive_rms(model)(input_ids=ids).logits
    assert _rel(out, ref) <= LOGITS_RTOL
    assert abs(_loss(out, ids) - _loss(ref, ids)) <= LOSS_ATOL
    assert _rel(naive, ref) > 1e-2, "control: deleting the mean subtraction without centring must show"
    # inplace=False leaves the original alone
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    rms = [n for n, m in converted.named_modules() if isinstance(m, AffineRMSNorm)]
    assert sorted(rms) == sorted(converted.geonorm_conversion["rmsnorm_sites"]) and rms
    assert not any(isinstance(m, torch.nn.LayerNorm) and m.normalized_shape == (D,)
                   for n, m in converted.named_modules() if "embeddings_layernorm" not in n)


@pytest.mark.parametrize("arch", ["gpt2", "opt"])
def test_converted_fp32_is_closer_to_the_fp64_original(tiny_models, arch):
    """The fp32 difference is the original's rounding: its LayerNorms see a stream with a large mean."""
    import copy

    model = tiny_models[arch]
    ids = _corpus_ids()
    with torch.no_grad():
        truth = copy.deepcopy(model).double()(input_ids=ids).logits
        orig_err = _rel(model(input_ids=ids).logits.double(), truth)
        conv_err = _rel(to_rmsnorm(model)(input_ids=ids).logits.double(), truth)
    assert conv_err < orig_err / 5, (conv_err, orig_err)


def test_tied_embeddings_are_untied_and_unembedding_not_centred(tiny_models):
    model = tiny_models["gpt2"]
    assert model.lm_head.weight is model.transformer.wte.weight
    converted = to_rmsnorm(model)
    assert converted.geonorm_conversion["untied_output_embedding"] is True
    assert converted.lm_head.weight.data_ptr() != converted.transformer.wte.weight.data_ptr()
    assert torch.equal(converted.lm_head.weight, model.lm_head.weight)
    assert converted.transformer.wte.weight.double().mean(1).abs().max() < 1e-7
    # control: the tied, centred unembedding changes the logits (G13: the final norm's output is not ⟂ 1)
    ids = _corpus_ids()
    with torch.no_grad():
        converted.lm_head.weight = converted.transformer.wte.weight
        tied = converted(input_ids=ids).logits
        ref = model(input_ids=ids).logits
    assert _rel(tied, ref) > 1e-3


def test_bloom_embedding_norm_made_exact(tiny_models):
    converted = to_rmsnorm(tiny_models["bloom"])
    emb = converted.transformer.word_embeddings_layernorm
    assert isinstance(emb, CentredEmbeddingLayerNorm)
    assert converted.geonorm_conversion["untied_output_embedding"] is False  # the table is not centred


def test_whisper_tiny_decoder_converted_encoder_kept(tiny_whisper):
    model = tiny_whisper
    feats = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(3))
    ids = _corpus_ids(40)
    converted = to_rmsnorm(model)
    with torch.no_grad():
        ref = model(input_features=feats, decoder_input_ids=ids).logits
        out = converted(input_features=feats, decoder_input_ids=ids).logits
    assert _rel(out, ref) <= LOGITS_RTOL
    assert abs(_loss(out, ids) - _loss(ref, ids)) <= LOSS_ATOL
    for name, mod in converted.model.encoder.named_modules():
        assert not isinstance(mod, AffineRMSNorm), name
    names = converted.geonorm_conversion["rmsnorm_sites"]
    assert all(n.startswith("model.decoder.") for n in names)
    assert any("encoder_attn_layer_norm" in n for n in names) and "model.decoder.layer_norm" in names


# ---- geonorm measures its own conversion -----------------------------------------------------------
def _check_measured(report, names):
    assert set(report.sites) == set(names)
    for name in names:
        st = report.sites[name]
        assert st.meta["kind"] == "rmsnorm" and st.meta["has_bias"] and st.tokens > 0
        assert st.ln_rms_gap.max <= GAP_MAX, (name, st.ln_rms_gap.max)
        assert abs(st.angle_hidden.min - 90) <= ANGLE_TOL and abs(st.angle_hidden.max - 90) <= ANGLE_TOL, (
            name, st.angle_hidden.min, st.angle_hidden.max)


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "bloom", "phi"])
def test_analyze_measures_zero_gap_and_right_angles(tiny_models, arch):
    converted = to_rmsnorm(tiny_models[arch])
    names = converted.geonorm_conversion["rmsnorm_sites"]
    sites = {s.name: s for s in find_norm_sites(converted)}
    assert all(sites[n].kind == "rmsnorm" and sites[n].residual for n in names)
    report = gn.analyze(converted, [{"input_ids": _corpus_ids()}], sites=names)
    _check_measured(report, names)
    # control: the original model is far from 90 degrees and has a visible gap
    orig = gn.analyze(tiny_models[arch], [{"input_ids": _corpus_ids()}], sites=names)
    assert max(orig.sites[n].ln_rms_gap.max for n in names) > 1e-3


# ---- refusals ------------------------------------------------------------------------------------
def test_refuses_post_ln_bert():
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64)
    with pytest.raises(ConversionError, match="post-LN"):
        to_rmsnorm(transformers.BertModel(cfg))


def test_refuses_post_ln_opt():
    cfg = transformers.OPTConfig(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=2, num_attention_heads=4,
                                 ffn_dim=64, do_layer_norm_before=False, word_embed_proj_dim=D)
    with pytest.raises(ConversionError, match="post-LN"):
        to_rmsnorm(transformers.OPTForCausalLM(cfg))


def test_refuses_rmsnorm_llama():
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=64)
    with pytest.raises(ConversionError, match="RMSNorm already"):
        to_rmsnorm(transformers.LlamaForCausalLM(cfg))


def test_refuses_half_precision_and_double_conversion(tiny_models):
    with pytest.raises(ConversionError, match="bfloat16"):
        to_rmsnorm(tiny_models["gpt2"].to(torch.bfloat16), inplace=False)
    tiny_models["gpt2"].float()
    with pytest.raises(ConversionError, match="already converted"):
        to_rmsnorm(to_rmsnorm(tiny_models["gpt2"]))
    with pytest.raises(TypeError, match="model"):
        to_rmsnorm("gpt2")


def test_probe_catches_a_missed_writer(tiny_models, monkeypatch):
    from geonorm_core.experiments import convert

    table = dict(convert.ARCHITECTURES)
    arch = table["gpt_neox"]
    table["gpt_neox"] = convert.Architecture(arch.embeddings, arch.writers[:1])  # forget the MLP output
    monkeypatch.setattr(convert, "ARCHITECTURES", table)
    with pytest.raises(ConversionError, match="not orthogonal to 1"):
        to_rmsnorm(tiny_models["gpt_neox"])


# ---- save and load -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["gpt2", "bloom", "opt_project_in_out"])
def test_save_and_load_round_trip(tiny_models, arch, tmp_path):
    converted = to_rmsnorm(tiny_models[arch])
    files = save_converted(converted, None, tmp_path)
    assert str(tmp_path / CONVERSION_FILE) in files and is_converted(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded, tok = load_converted(tmp_path)
    assert tok is None
    assert [type(m).__name__ for m in loaded.modules()] == [type(m).__name__ for m in converted.modules()]
    ids = _corpus_ids()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, converted(input_ids=ids).logits)
    if arch == "gpt2":
        assert loaded.lm_head.weight.data_ptr() != loaded.transformer.wte.weight.data_ptr()


def test_load_converted_rejects_a_plain_folder(tmp_path):
    with pytest.raises(ValueError, match=CONVERSION_FILE):
        load_converted(tmp_path)


# ---- Whisper base, real weights ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def whisper_converted(whisper_base):
    model, processor = whisper_base
    return model, processor, to_rmsnorm(model)


def _whisper_inputs(processor, n_tokens: int = 64):
    from geonorm_core.models.speech import PROMPT_TOKENS

    tok = processor.tokenizer
    prompt = tok.convert_tokens_to_ids(list(PROMPT_TOKENS))
    body = tok(default_text()[:2000], add_special_tokens=False)["input_ids"][: n_tokens - len(prompt)]
    ids = torch.tensor([prompt + body])
    # espeak-ng may be absent: fixed random log-mel features stand in for speech
    feats = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(11)) * 0.5
    return ids, feats


def test_whisper_base_logits_and_loss_unchanged(whisper_converted):
    model, processor, converted = whisper_converted
    ids, feats = _whisper_inputs(processor)
    with torch.no_grad():
        ref = model(input_features=feats, decoder_input_ids=ids).logits
        out = converted(input_features=feats, decoder_input_ids=ids).logits
    assert _rel(out, ref) <= LOGITS_RTOL
    assert abs(_loss(out, ids) - _loss(ref, ids)) <= LOSS_ATOL
    assert len(converted.geonorm_conversion["rmsnorm_sites"]) == 3 * 6 + 1


def test_whisper_base_analyze_measures_zero_gap(whisper_converted):
    from geonorm_core.models.speech import WhisperDecoderFeed

    _, processor, converted = whisper_converted
    ids, feats = _whisper_inputs(processor)
    feed = WhisperDecoderFeed(converted)
    names = feed.site_names("decoder")
    assert names == converted.geonorm_conversion["rmsnorm_sites"]
    report = gn.analyze(feed, [{"input_ids": ids, "input_features": feats}], sites=names)
    _check_measured(report, names)


def test_convert_whisper_base_command_round_trip(whisper_base, tmp_path, capsys):
    """`geonorm convert --model whisper-base --out DIR`, then `geonorm analyze --model DIR` loads it back
    and measures its own conversion: a zero LN-RMS gap and hidden states at 90 degrees from 1."""
    import json
    import shutil

    from geonorm_core import cli
    from geonorm_core.experiments.convert import load_model_or_converted

    model, processor = whisper_base
    out = tmp_path / "converted"
    assert cli.main(["convert", "--model", "whisper-base", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "19 LayerNorms -> RMSNorm(+bias)" in printed and "untied" in printed and str(out) in printed
    record = json.loads((out / CONVERSION_FILE).read_text())
    assert record["probe_max_abs_cos"] < 1e-6 and record["tokenizer_class"] == "WhisperProcessor"
    loaded, proc = load_model_or_converted(str(out))
    assert type(proc).__name__ == "WhisperProcessor"
    assert sum(isinstance(m, AffineRMSNorm) for m in loaded.modules()) == 19
    ids, feats = _whisper_inputs(processor, 32)
    with torch.no_grad():
        a = loaded(input_features=feats, decoder_input_ids=ids).logits
        b = model(input_features=feats, decoder_input_ids=ids).logits
    assert _rel(a, b) <= LOGITS_RTOL
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng speaks the corpus to Whisper's encoder (CI installs it)")
    report_dir = tmp_path / "report"
    assert cli.main(["analyze", "--model", str(out), "--max-tokens", "160", "--seq-len", "80",
                     "--out", str(report_dir)]) == 0
    sites = json.loads((report_dir / "report.json").read_text())["sites"]
    assert set(record["rmsnorm_sites"]) <= set(sites)
    for name in record["rmsnorm_sites"]:
        q = sites[name]["quantities"]
        assert q["ln_rms_gap"]["moments"]["max"] <= 1e-6
        lo, hi = q["angle_hidden"]["moments"]["min"], q["angle_hidden"]["moments"]["max"]
        assert 90 - 1e-4 <= lo <= hi <= 90 + 1e-4


def test_package_exposes_the_conversion():
    assert gn.to_rmsnorm is to_rmsnorm and gn.load_converted is load_converted
