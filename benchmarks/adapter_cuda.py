"""What the analysis costs a model running on a GPU (needs CUDA; the CPU twin is adapter_overhead.py).

    python benchmarks/adapter_cuda.py [--dtype bfloat16] [--tokens 32768] [--device cuda]

A SmolLM2-135M-shaped Llama (random weights: the weights do not change the cost,
and no model hub is reachable) runs the same batches alternately without hooks and
with an Analyzer attached; medians of repeats in one process.  On a GPU every
site's input and output cross to the host through reused pinned buffers and the
core analyzes them on the CPU, so the ratio says how much of a fast GPU forward
pass the host-side analysis costs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    import torch
    import transformers

    from geonorm_core.adapter import Analyzer

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layers", type=int, default=30)
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=args.layers,
                                   num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                   tie_word_embeddings=True)
    model = transformers.AutoModelForCausalLM.from_config(cfg).to(getattr(torch, args.dtype)).to(args.device).eval()
    n = max(1, args.tokens // (args.seq_len * args.batch_size))
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len), generator=g),
                "attention_mask": torch.ones(args.batch_size, args.seq_len, dtype=torch.long)} for _ in range(n)]

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def plain():
        with torch.inference_mode():
            for b in batches:
                model(**{k: v.to(args.device) for k, v in b.items()})
        sync()

    def hooked(num_threads):
        with Analyzer(model, num_threads=num_threads) as an:
            for b in batches:
                an.feed(b)
        sync()
        return an.report()

    plain()
    report = hooked(1)  # warm-up, and pinned buffers of every shape
    times: dict[str, list[float]] = {"plain": [], "geonorm_threads1": [], "geonorm_default": []}
    for _ in range(args.repeats):
        for name in times:
            t0 = time.perf_counter()
            if name == "plain":
                plain()
            else:
                hooked(1 if name == "geonorm_threads1" else None)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = n * args.batch_size * args.seq_len
    site = next(iter(report.sites.values()))
    print(json.dumps({
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "dtype": args.dtype, "tokens": tokens, "sites": len(report.sites), "median_s": med,
        "tokens_per_s": {k: tokens / v for k, v in med.items()},
        "overhead_threads1": med["geonorm_threads1"] / med["plain"] - 1,
        "overhead_default": med["geonorm_default"] / med["plain"] - 1,
        "first_site_angle_hidden_mean": site["angle_hidden"].mean,
    }, indent=1))


if __name__ == "__main__":
    main()
