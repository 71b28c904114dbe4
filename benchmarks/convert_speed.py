"""What the exact LayerNorm -> RMSNorm conversion buys at inference: tokens/s and the norm ops alone.

    python benchmarks/convert_speed.py model --setting whisper-base   # real weights, the decoder
    python benchmarks/convert_speed.py model --setting gpt2-small     # GPT-2-small-shaped, random weights
    python benchmarks/convert_speed.py ops --d 512 --rows 4096        # the norm ops alone
    python benchmarks/convert_speed.py model --device cuda            # torch's kernels on a GPU
    python benchmarks/convert_speed.py verify --max-tokens 1024       # Whisper base on spoken corpus text

``verify``: Whisper base, original and converted, on the bundled corpus spoken by espeak-ng: the
decoder's next-token loss of both (must agree to 1e-5), and ``analyze`` of the converted decoder's
sites (LN-RMS gap and the angle of the stream with 1 at every converted site).

``model``: the same fixed batch runs, interleaved, through four versions of one model (one process,
fp32, ``torch.inference_mode``): the original (torch LayerNorm), the converted model
(:func:`geonorm_core.experiments.convert.to_rmsnorm`: torch ``rms_norm`` + bias), the converted model with geonorm's
native :class:`geonorm_core.nn.RMSNorm`, and the original with geonorm's native
:class:`geonorm_core.nn.LayerNorm`.  Medians of ``--repeats`` rounds, tokens/s and the ratio to the
original.  Whisper base: the decoder alone on fixed encoder states (the conversion leaves the encoder
as it is).  On a CUDA device only the torch versions run (the native kernels are CPU kernels).

``ops``: one (rows, d) fp32 array through torch ``layer_norm``, ``rms_norm``, ``rms_norm`` + bias and
geonorm's ``layer_norm``/``rms_norm``, beside a NumPy copy of the same bytes (the bandwidth probe);
median microseconds per call and the ratio to torch's ``layer_norm``.

Prints one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _setting(name: str, device: str):
    import torch
    import transformers

    if name == "whisper-base":
        from geonorm_core.models.whisper import load_whisper_base

        model, _ = load_whisper_base()
        return model, "whisper"
    if name == "gpt2-small":
        torch.manual_seed(0)
        cfg = transformers.GPT2Config(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024)
        return transformers.GPT2LMHeadModel(cfg).eval(), "lm"
    raise SystemExit(f"--setting must be whisper-base or gpt2-small, got {name!r}")


def _runner(model, kind: str, batch: int, seq: int, device: str):
    import torch

    gen = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
    if kind == "whisper":
        feats = (0.5 * torch.randn(batch, model.config.num_mel_bins, 3000, generator=gen)).to(device)
        with torch.inference_mode():
            enc = model.model.encoder(feats).last_hidden_state

        def run(m):
            out = m.model.decoder(input_ids=ids, encoder_hidden_states=enc, use_cache=False).last_hidden_state
            return m.proj_out(out)
    else:
        def run(m):
            return m(input_ids=ids, use_cache=False).logits
    return run


def bench_model(setting: str, batch: int, seq: int, repeats: int, device: str) -> dict:
    import torch

    from geonorm_core.experiments.convert import to_rmsnorm
    from geonorm_core.nn import use_native_kernels

    original, kind = _setting(setting, device)
    converted = to_rmsnorm(original)
    versions = {"original (torch LayerNorm)": original, "converted (torch rms_norm + bias)": converted}
    if device == "cpu":
        native_rms = copy.deepcopy(converted)
        use_native_kernels(native_rms)
        native_ln = copy.deepcopy(original)
        use_native_kernels(native_ln)
        versions["converted, geonorm RMSNorm kernels"] = native_rms
        versions["original, geonorm LayerNorm kernels"] = native_ln
    versions = {k: v.to(device).eval() for k, v in versions.items()}
    run = _runner(original, kind, batch, seq, device)

    def timed(m):
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = run(m)
        if device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    ref = None
    agree = {}
    for name, m in versions.items():  # warm-up, and the outputs must agree
        _, out = timed(m)
        ref = out if ref is None else ref
        agree[name] = float((out - ref).abs().max() / ref.abs().max())
    times = {k: [] for k in versions}
    for _ in range(repeats):
        for name, m in versions.items():
            times[name].append(timed(m)[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["original (torch LayerNorm)"]
    tokens = batch * seq
    return {"setting": setting, "device": device, "dtype": "float32", "batch": batch, "seq_len": seq,
            "repeats": repeats, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "versions": {k: {"median_s": round(v, 5), "tokens_per_s": round(tokens / v, 1),
                             "speed_vs_original": round(base / v, 3),
                             "max_rel_logit_diff_vs_original": agree[k]} for k, v in med.items()}}


def bench_ops(d: int, rows: int, repeats: int) -> dict:
    import numpy as np
    import torch

    import geonorm_core as gn

    F = torch.nn.functional
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, d, generator=g) + 0.3
    w, b = torch.rand(d, generator=g) + 0.5, torch.randn(d, generator=g)
    out = torch.empty_like(x)
    xn = x.numpy()
    buf = np.empty_like(xn)
    ops = {
        "numpy copy (bandwidth probe)": lambda: np.copyto(buf, xn),
        "torch layer_norm": lambda: F.layer_norm(x, (d,), w, b, 1e-5),
        "torch rms_norm": lambda: F.rms_norm(x, (d,), w, 1e-5),
        "torch rms_norm + bias": lambda: F.rms_norm(x, (d,), w, 1e-5).add_(b),
        "geonorm layer_norm": lambda: gn.layer_norm(x, w, b, 1e-5, out=out),
        "geonorm rms_norm": lambda: gn.rms_norm(x, w, 1e-5, out=out),
        "geonorm rms_norm + bias": lambda: gn.rms_norm(x, w, 1e-5, bias=b, out=out),  # one pass
    }
    times = {k: [] for k in ops}
    with torch.inference_mode():
        for f in ops.values():
            f()
        for _ in range(repeats):
            for name, f in ops.items():
                t0 = time.perf_counter()
                for _ in range(10):
                    f()
                times[name].append((time.perf_counter() - t0) / 10)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["torch layer_norm"]
    return {"rows": rows, "d": d, "dtype": "float32", "repeats": repeats,
            "torch_threads": torch.get_num_threads(),
            "geonorm_threads": gn.get_num_threads(), "simd": gn.kernel_info()["simd"],
            "ops": {k: {"median_us": round(v * 1e6, 1), "speed_vs_torch_layer_norm": round(base / v, 3)}
                    for k, v in med.items()}}


def verify_whisper(max_tokens: int, batch_size: int) -> dict:
    import torch

    from geonorm_core.experiments.convert import to_rmsnorm
    from geonorm_core.models.corpus import default_text
    from geonorm_core.models.speech import WhisperDecoderFeed, whisper_batches
    from geonorm_core.models.whisper import load_whisper_base

    model, processor = load_whisper_base()
    converted = to_rmsnorm(model)
    batches = list(whisper_batches(default_text(), processor, seq_len=448, batch_size=batch_size,
                                   max_tokens=max_tokens))

    def loss(m):
        total, count = 0.0, 0
        with torch.inference_mode():
            for b in batches:
                logits = m(input_features=b["input_features"], decoder_input_ids=b["input_ids"],
                           decoder_attention_mask=b["attention_mask"], use_cache=False).logits
                keep = b["attention_mask"][:, 1:].bool()
                nll = torch.nn.functional.cross_entropy(logits[:, :-1].double().transpose(1, 2),
                                                        b["input_ids"][:, 1:], reduction="none")
                total += float(nll[keep].sum())
                count += int(keep.sum())
        return total / count, count

    (loss_orig, n), (loss_conv, _) = loss(model), loss(converted)
    from geonorm_core.sources.adapter import analyze

    feed = WhisperDecoderFeed(converted)
    names = feed.site_names("decoder")
    report = analyze(feed, batches, sites=names)
    sites = report.sites
    return {"model": "whisper-base", "tokens": sum(int(b["attention_mask"].sum()) for b in batches),
            "predicted_tokens": n, "loss_original": loss_orig, "loss_converted": loss_conv,
            "loss_abs_diff": abs(loss_conv - loss_orig), "converted_sites": len(names),
            "max_ln_rms_gap": max(sites[k].ln_rms_gap.max for k in names),
            "max_angle_deviation_deg": max(max(abs(sites[k].angle_hidden.min - 90),
                                               abs(sites[k].angle_hidden.max - 90)) for k in names),
            "probe_max_abs_cos": converted.geonorm_conversion["probe_max_abs_cos"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("model")
    m.add_argument("--setting", default="whisper-base", help="whisper-base or gpt2-small")
    m.add_argument("--batch", type=int, default=4)
    m.add_argument("--seq-len", type=int, default=128)
    m.add_argument("--repeats", type=int, default=7)
    m.add_argument("--device", default="cpu")
    o = sub.add_parser("ops")
    o.add_argument("--d", type=int, default=512)
    o.add_argument("--rows", type=int, default=4096)
    o.add_argument("--repeats", type=int, default=15)
    v = sub.add_parser("verify")
    v.add_argument("--max-tokens", type=int, default=1024)
    v.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args(argv)
    if args.what == "verify":
        res = verify_whisper(args.max_tokens, args.batch_size)
    elif args.what == "model":
        res = bench_model(args.setting, args.batch, args.seq_len, args.repeats, args.device)
    else:
        res = bench_ops(args.d, args.rows, args.repeats)
    json.dump(res, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
