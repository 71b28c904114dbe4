"""The swap test (geonorm_core.experiments.swap): swapped formulas against float64 NumPy, exact restoration,
a zero-mean control that must change nothing, loss numbers against Hugging Face's own loss, the
encoder metric against a manual computation, a real SmolLM2 run, and bad input."""
import json
import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from test_adapter import batches, tiny
from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.nemotron.modeling_nemotron import NemotronLayerNorm1P
from transformers.models.t5.modeling_t5 import T5LayerNorm

from geonorm_core import cli, slow
from geonorm_core.experiments.swap import SENTENCES, SwapResult, swap_test, swapped

D = 24


def rows(rng, n=7, offset=3.0):
    """float64 rows with a clear component along 1 (so mean subtraction matters)."""
    return rng.normal(size=(n, D)) + offset * rng.uniform(0.5, 1.5, size=(n, 1))


def randomize(module, rng):
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(rng.uniform(-0.5, 1.5, D)))
        if getattr(module, "bias", None) is not None:
            module.bias.copy_(torch.from_numpy(rng.normal(0, 0.3, D)))
    return module


def run(module, x):
    with torch.no_grad():
        return module(torch.from_numpy(x)).double().numpy()


# -- the formulas ---------------------------------------------------------------------------------

@pytest.mark.parametrize("make, one_plus", [
    (lambda: torch.nn.LayerNorm(D, eps=1e-3), False),
    (lambda: torch.nn.LayerNorm(D, eps=1e-3, bias=False), False),
    (lambda: NemotronLayerNorm1P(D, eps=1e-3), True),  # gain 1 + w
])
def test_layernorm_without_its_mean_is_rmsnorm_plus_bias(rng, make, one_plus):
    ln = randomize(make().double(), rng)
    x = rows(rng)
    w = ln.weight.detach().numpy()
    b = ln.bias.detach().numpy() if ln.bias is not None else 0.0
    with swapped(ln, direction="remove_mean") as sites:
        got = run(ln, x)
    assert [s.kind for s in sites] == ["layernorm"]
    want = slow.rms_norm(x, 1.0 + w if one_plus else w, eps=1e-3) + b
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # and it is not what the LayerNorm computes: the mean mattered here
    assert np.abs(run(ln, x) - want).max() > 0.1


@pytest.mark.parametrize("cls, one_plus, tol", [
    (torch.nn.RMSNorm, False, 1e-12),   # computes in float64
    (LlamaRMSNorm, False, 2e-6),        # Hugging Face's RMSNorms normalize in float32
    (Gemma3RMSNorm, True, 2e-6),        # gain 1 + w
    (T5LayerNorm, False, 2e-6),         # RMSNorm under a LayerNorm name
])
def test_rmsnorm_with_the_mean_is_layernorm(rng, cls, one_plus, tol):
    norm = randomize(cls(D, eps=1e-3).double(), rng)
    x = rows(rng)
    w = norm.weight.detach().numpy()
    gain = 1.0 + w if one_plus else w
    with swapped(norm) as sites:  # auto: an RMSNorm gains the mean subtraction
        got = run(norm, x)
    assert sites[0].kind == "rmsnorm" and sites[0].variant != "unknown"
    want = slow.layer_norm(x, gain, None, eps=1e-3)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    assert np.abs(run(norm, x) - want).max() > 0.1


def test_half_precision_keeps_the_dtype_and_is_close(rng):
    ln = randomize(torch.nn.LayerNorm(D, eps=1e-5).double(), rng)
    x = rows(rng)
    with swapped(ln):
        want = run(ln, x)
        half = ln.to(torch.bfloat16)
        with torch.no_grad():
            out = half(torch.from_numpy(x).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    np.testing.assert_allclose(out.double().numpy(), want, rtol=2e-2, atol=2e-2 * np.abs(want).max())


def test_input_orthogonal_to_one_makes_the_swap_a_no_op(rng):
    """G9: for x ⟂ 1, LN(x) = RMSNorm(x) + b exactly, so removing the mean changes nothing."""
    ln = randomize(torch.nn.LayerNorm(D, eps=1e-5).double(), rng)
    x = rows(rng)
    centered = x - x.mean(-1, keepdims=True)
    before = run(ln, centered)
    with swapped(ln):
        np.testing.assert_allclose(run(ln, centered), before, rtol=1e-13, atol=1e-13)
        assert np.abs(run(ln, x) - before).max() > 0.1  # the same rows, uncentered: not a no-op


# -- restoration ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_restoration_is_exact(kind):
    model = tiny(kind)
    batch = batches(n=1)[0]
    with torch.no_grad():
        before = model(**batch).logits
        with swapped(model) as sites:
            during = model(**batch).logits
        after = model(**batch).logits
    assert len(sites) == 5
    assert not torch.equal(before, during)
    assert torch.equal(before, after)
    assert all("forward" not in s.module.__dict__ for s in sites)


def test_restoration_after_an_error_and_of_an_instance_forward():
    model = tiny("gpt2")
    ln = model.transformer.ln_f
    wrapper = ln.forward  # as accelerate does: an instance attribute wrapping the class forward
    ln.forward = wrapper
    with pytest.raises(KeyError), swapped(model):
        assert ln.forward is not wrapper
        raise KeyError("boom")
    assert ln.__dict__["forward"] is wrapper
    assert "forward" not in model.transformer.h[0].ln_1.__dict__
    with swapped(model), pytest.raises(RuntimeError, match="already swapped"), swapped(model):
        pass  # usable again (nothing was left marked), and not nestable


# -- swap_test on tiny causal LMs -----------------------------------------------------------------

def hf_loss(model, batch_list):
    """Hugging Face's own loss over all predicted tokens (padding labelled -100)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batch_list:
            labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
            n = int(((labels[:, 1:] != -100) & (b["attention_mask"][:, :-1] != 0)).sum())
            total += float(model(**b, labels=labels).loss) * n
            count += n
    return total / count, count


def direct_reference(model, name, batch_list, formula):
    """Relative change of one site, from its captured input: float64 NumPy, real tokens only."""
    module = model.get_submodule(name)
    seen = []
    h = module.register_forward_hook(lambda m, a, o: seen.append((a[0].double().numpy(), o.double().numpy())))
    with torch.no_grad():
        for b in batch_list:
            model(**b)
    h.remove()
    out = []
    for (x, y), b in zip(seen, batch_list):
        keep = b["attention_mask"].numpy() != 0
        alt = formula(x[keep], module)
        out.append(np.linalg.norm(alt - y[keep], axis=-1) / np.linalg.norm(y[keep], axis=-1))
    return np.concatenate(out)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_swap_test_numbers_match_a_manual_computation(kind):
    model = tiny(kind)
    bl = batches()
    res = swap_test(model, None, bl, n_resamples=999)
    m = res.metric
    loss_o, n = hf_loss(model, bl)
    with swapped(model):
        loss_s, _ = hf_loss(model, bl)
    assert m["tokens"] == n == 125 and m["sequences"] == 12
    assert m["loss"]["original"] == pytest.approx(loss_o, rel=1e-5)
    assert m["loss"]["swapped"] == pytest.approx(loss_s, rel=1e-5)
    assert m["delta_loss"] == pytest.approx(loss_s - loss_o, abs=1e-5)
    assert m["ppl"]["swapped"] == pytest.approx(math.exp(loss_s), rel=1e-5)
    assert m["ppl_ratio"] == pytest.approx(math.exp(loss_s - loss_o), rel=1e-5)
    for key in ("original", "swapped"):
        lo, hi = m["loss_ci"][key]
        assert lo < m["loss"][key] < hi
    lo, hi = m["delta_loss_ci"]
    assert lo < m["delta_loss"] < hi and hi - lo > 0
    assert m["ci_method"] == {"original": "BCa", "swapped": "BCa", "delta": "BCa"}
    assert res.meta["direction"] == ("remove_mean" if kind == "gpt2" else "add_mean")
    assert res.meta["tokens"] == 4 * 12 * 3 - 7

    # one site's direct change from its captured input, with the swapped formula in NumPy
    if kind == "gpt2":
        name = "transformer.h.1.ln_2"
        formula = lambda x, mod: (slow.rms_norm(x, mod.weight.detach().double().numpy(), eps=mod.eps)
                                  + mod.bias.detach().double().numpy())
    else:
        name = "model.layers.1.post_attention_layernorm"
        formula = lambda x, mod: slow.layer_norm(x, mod.weight.detach().double().numpy(), None,
                                                 eps=mod.variance_epsilon)
    ref = direct_reference(model, name, bl, formula)
    got = res.sites[name].direct
    assert got.count == ref.size == 4 * 12 * 3 - 7
    assert got.mean == pytest.approx(ref.mean(), rel=1e-4)
    assert got.std == pytest.approx(ref.std(), rel=1e-3)
    assert got.max == pytest.approx(ref.max(), rel=1e-4)
    # the first site sees the same input in both runs: direct == end-to-end; later ones drift
    first = res.sites[next(iter(res.sites))]
    assert first.end_to_end.mean == pytest.approx(first.direct.mean, rel=1e-6)
    assert all(c.end_to_end.count == c.direct.count for c in res.sites.values())


def centered_writes(model):
    """TransformerLens's center_writing_weights: everything written to the residual stream ⟂ 1."""
    with torch.no_grad():
        for emb in (model.transformer.wte, model.transformer.wpe):
            emb.weight -= emb.weight.mean(-1, keepdim=True)
        for block in model.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):  # Conv1D: y = x @ W + b, W is (in, out)
                proj.weight -= proj.weight.mean(-1, keepdim=True)
                proj.bias -= proj.bias.mean()
    return model


def test_a_model_whose_residual_stream_is_orthogonal_to_one_does_not_notice_the_swap():
    model = centered_writes(tiny("gpt2", tie_word_embeddings=False))
    res = swap_test(model, None, batches(), n_resamples=999)
    m = res.metric
    assert abs(m["delta_loss"]) < 1e-6
    lo, hi = m["delta_loss_ci"]
    assert abs(lo) < 1e-6 and abs(hi) < 1e-6
    assert m["ci_method"]["original"] == "BCa"
    for c in res.sites.values():
        assert c.direct.max < 1e-5 and c.end_to_end.max < 1e-5
    # the control's control: the same model uncentered does notice
    plain = swap_test(tiny("gpt2", tie_word_embeddings=False), None, batches(), n_resamples=999)
    assert min(c.direct.mean for c in plain.sites.values()) > 1e-3


def test_result_round_trips_and_renders(tmp_path):
    res = swap_test(tiny("llama"), None, batches(n=1), n_resamples=99, meta={"model_name": "tiny-llama"})
    paths = res.save(tmp_path / "out")
    assert [os.path.basename(p) for p in paths] == ["swap.json", "swap.md"]
    back = SwapResult.from_json(paths[0])
    assert back.to_dict() == json.loads(json.dumps(res.to_dict()))
    assert list(back.sites) == list(res.sites)
    table = back.table(top=3)
    assert "tiny-llama" in table and "mean subtraction added" in table
    assert table.count("| model.") == 3 and "Δloss" in table
    assert res.top_sites(1)[0] == max(res.sites, key=lambda k: res.sites[k].end_to_end.mean)
    assert len(back.table().splitlines()) > len(table.splitlines())


def test_whisper_decoder_feed_is_a_causal_lm_with_hugging_faces_loss():
    """Whisper wrapped as the CLI wraps it: the decoder's loss, every LayerNorm of both stacks swapped."""
    from geonorm_core.models.speech import WhisperDecoderFeed

    torch.manual_seed(0)
    cfg = transformers.WhisperConfig(vocab_size=97, num_mel_bins=8, encoder_layers=1, decoder_layers=2,
                                     d_model=32, encoder_attention_heads=4, decoder_attention_heads=4,
                                     encoder_ffn_dim=48, decoder_ffn_dim=48, max_source_positions=16,
                                     max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                     decoder_start_token_id=1)
    whisper = transformers.WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for m in whisper.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    bl = [dict(b, input_features=torch.randn(4, 8, 32, generator=torch.Generator().manual_seed(i)))
          for i, b in enumerate(batches(n=2))]
    res = swap_test(WhisperDecoderFeed(whisper), None, bl, n_resamples=99)

    def loss():
        total = count = 0.0
        with torch.no_grad():
            for b in bl:
                logits = whisper(input_features=b["input_features"], decoder_input_ids=b["input_ids"],
                                 decoder_attention_mask=b["attention_mask"]).logits
                valid = (b["attention_mask"][:, :-1] * b["attention_mask"][:, 1:]).bool()
                nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), b["input_ids"][:, 1:],
                                                        reduction="none")
                total += float(nll[valid].sum())
                count += int(valid.sum())
        return total / count

    before = loss()
    with swapped(whisper):
        after = loss()
    assert res.meta["direction"] == "remove_mean" and res.meta["sites"] == 1 * 2 + 1 + 2 * 3 + 1
    assert res.metric["loss"]["original"] == pytest.approx(before, rel=1e-5)
    assert res.metric["loss"]["swapped"] == pytest.approx(after, rel=1e-5)
    enc = res.sites["model.encoder.layers.0.self_attn_layer_norm"]
    assert enc.direct.count == 8 * 16  # every encoder frame counts
    assert res.sites["model.decoder.layers.1.final_layer_norm"].direct.count == 2 * 4 * 12 - 7


# -- the encoder metric ---------------------------------------------------------------------------

class WordTokenizer:
    """A stand-in tokenizer: one id per word (hashed), [CLS]=1 ... [SEP]=2, right padding."""

    def __call__(self, texts, padding=True, truncation=True, return_tensors="pt"):
        seqs = [[1] + [3 + sum(map(ord, w)) % 90 for w in t.split()] + [2] for t in texts]
        width = max(map(len, seqs))
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def embed(model, enc):
    with torch.no_grad():
        h = model(**enc).last_hidden_state.double()
    m = enc["attention_mask"].double()[..., None]
    e = (h * m).sum(1) / m.sum(1)
    return (e / e.norm(dim=-1, keepdim=True)).numpy()


def test_encoder_metric_matches_a_manual_computation():
    from scipy import stats

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48)
    model = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    tok = WordTokenizer()
    res = swap_test(model, tok, batches(n=2), sentences=SENTENCES[:12])
    m = res.metric
    enc = tok(list(SENTENCES[:12]))
    e_o = embed(model, enc)
    with swapped(model):
        e_s = embed(model, enc)
    cos = (e_o * e_s).sum(-1)
    iu = np.triu_indices(12, 1)
    rho = stats.spearmanr((e_o @ e_o.T)[iu], (e_s @ e_s.T)[iu]).statistic
    assert (m["kind"], m["sentences"], m["pairs"]) == ("encoder", 12, 66)
    assert m["cosine_mean"] == pytest.approx(cos.mean(), abs=1e-6)
    assert m["cosine_min"] == pytest.approx(cos.min(), abs=1e-6)
    assert m["spearman"] == pytest.approx(rho, abs=1e-9)
    assert m["corpus_sequences"] == 8 and 0 < m["corpus_cosine_min"] <= m["corpus_cosine_mean"] < 1
    assert res.meta["direction"] == "remove_mean" and len(res.sites) == 5  # embeddings + 2 x 2
    assert "Spearman" in res.table()


# -- a real model ---------------------------------------------------------------------------------

def test_smollm2_reverse_control(smollm2):
    from geonorm_core.models.corpus import default_text, token_batches

    model, tok = smollm2
    bl = list(token_batches(default_text(), tok, seq_len=48, batch_size=5, max_tokens=240))
    res = swap_test(model, tok, bl, n_resamples=999)
    m = res.metric
    loss_o, n = hf_loss(model, bl)
    assert res.meta["direction"] == "add_mean" and len(res.sites) == 61  # 30 x 2 + final
    assert m["tokens"] == n == 235 and m["sequences"] == 5
    assert m["loss"]["original"] == pytest.approx(loss_o, rel=1e-5)
    assert 1.0 < m["loss"]["original"] < 6.0 and np.isfinite(m["delta_loss_ci"]).all()
    # the residual stream sits at ~90 degrees from 1, so adding the mean barely moves a site directly
    directs = [c.direct.mean for c in res.sites.values()]
    assert max(directs) < 0.2 and min(directs) > 0


# -- bad input ------------------------------------------------------------------------------------

def test_bad_input_says_what_is_wrong():
    gpt2 = tiny("gpt2")
    with pytest.raises(ValueError, match="direction must be one of"):
        swap_test(gpt2, None, batches(n=1), direction="sideways")
    with pytest.raises(ValueError, match="direction must be one of"), swapped(gpt2, direction="both"):
        pass
    no_norms = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="no LayerNorm/RMSNorm"), swapped(no_norms):
        pass
    with pytest.raises(ValueError, match="has no rmsnorm sites"):
        swap_test(gpt2, None, batches(n=1), direction="add_mean")
    with pytest.raises(ValueError, match="no norm site named"):
        swap_test(gpt2, None, batches(n=1), sites=["transformer.h.9.ln_1"])
    with pytest.raises(ValueError, match="sites: empty"):
        swap_test(gpt2, None, batches(n=1), sites=[])
    mixed = torch.nn.Sequential(torch.nn.LayerNorm(8), torch.nn.RMSNorm(8))
    with pytest.raises(ValueError, match="mix LayerNorm and RMSNorm"), swapped(mixed):
        pass
    with pytest.raises(ValueError, match="swaps rmsnorm sites only"), \
            swapped(mixed, direction="add_mean", sites=["0", "1"]):
        pass
    with swapped(mixed, direction="add_mean") as sites:  # explicit: only the RMSNorm
        assert [s.name for s in sites] == ["1"]
    with pytest.raises(ValueError, match="sentences: only encoders"):
        swap_test(gpt2, None, batches(n=1), sentences=["a", "b", "c"])
    with pytest.raises(ValueError, match="confidence"):
        swap_test(gpt2, None, batches(n=1), confidence=95)
    with pytest.raises(ValueError, match="no tokens"):
        swap_test(gpt2, None, [])
    with pytest.raises(TypeError, match="input_ids"):
        swap_test(gpt2, None, [torch.zeros(2, 3, dtype=torch.long)])


def test_only_the_named_sites_are_swapped():
    model = tiny("gpt2")
    res = swap_test(model, None, batches(n=1), sites=["transformer.h.1.ln_2"], n_resamples=99)
    assert list(res.sites) == ["transformer.h.1.ln_2"] and res.meta["sites"] == 1


# -- the command ----------------------------------------------------------------------------------

def test_cli_swap_test_writes_the_result(tmp_path, monkeypatch, capsys):
    def fake_loader(args):
        assert args.command == "swap-test" and args.max_tokens == 100
        return tiny("llama"), None, iter(batches(n=2)), {"model_name": "tiny-llama"}

    monkeypatch.setattr(cli.swap_test, "load_workload", fake_loader)
    monkeypatch.setattr(cli.swap_test, "check_model_options", lambda args: "a tiny llama")
    out = tmp_path / "swap"
    assert cli.main(["swap-test", "--model", "x", "--max-tokens", "100", "--direction", "add_mean",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tiny-llama" in printed and "swap.json" in printed
    back = SwapResult.from_json(out / "swap.json")
    assert back.meta["direction"] == "add_mean" and back.meta["model_name"] == "tiny-llama"
    monkeypatch.setattr(cli.swap_test, "load_workload",
                        lambda a: (tiny("llama"), None, iter(batches(n=1)), {}))
    assert cli.main(["swap-test", "--direction", "remove_mean", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("geonorm swap-test: error:") and "has no layernorm sites" in last
