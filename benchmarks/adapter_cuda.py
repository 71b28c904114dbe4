"""What the analysis costs a model running on a GPU (needs CUDA for real figures; the CPU twin is adapter_overhead.py).

    python benchmarks/adapter_cuda.py [--models smollm2,llama3-8b] [--dtype bfloat16] [--tokens 32768]
    python benchmarks/adapter_cuda.py --tiny          # a seconds-long CPU run that checks it works

Two Llama-shaped models with random weights (the weights do not change the cost, and no model
hub is reachable): SmolLM2-135M's shape (d=576, 30 layers, 9 heads / 3 kv heads, MLP 1536) and
Llama-3-8B's (d=4096, 32 layers, 32 heads / 8 kv heads, MLP 14336; ``--llama-layers`` runs fewer
layers when memory or time demand it, and the output says how many ran).  The same batches run
without hooks ("plain") and with an Analyzer on every residual-stream norm site, once per
backend: "core" (every site's input and output cross to the host through pinned buffers, the
hook waits for them, the native core analyzes them on the CPU) and "torch" (the values are
computed on the GPU, only 7 float64 values per token and site cross, one wait per batch).
Repeats alternate the variants; medians in one process; the ratio hooked / plain is the figure
(the goal for "torch": <= 1.10).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

SHAPES = {
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=False),
}
TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=97)


def bench_model(name: str, cfg_kw: dict, args) -> dict:
    import torch
    import transformers

    from geonorm_core.sources.adapter import Analyzer

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**cfg_kw)
    dtype = getattr(torch, args.dtype)
    with torch.device(args.device):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
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

    def hooked(backend):
        with Analyzer(model, backend=backend) as an:
            for b in batches:
                an.feed(b)
        sync()
        return an.report()

    variants = {"plain": plain, "core": lambda: hooked("core"), "torch": lambda: hooked("torch")}
    reports = {}
    for k, f in variants.items():  # warm-up: kernels, pinned buffers, allocator pools
        reports[k] = f()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, f in variants.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = n * args.batch_size * args.seq_len
    first = next(iter(reports["torch"].sites))
    out = {
        "model": name, "d": cfg.hidden_size, "layers": cfg.num_hidden_layers, "sites": len(reports["torch"].sites),
        "tokens": tokens, "batch": [args.batch_size, args.seq_len], "median_s": med,
        "tokens_per_s": {k: tokens / v for k, v in med.items()},
        "hooked_over_plain": {k: med[k] / med["plain"] for k in ("core", "torch")},
        "first_site_angle_hidden_mean": {k: reports[k].sites[first]["angle_hidden"].mean for k in ("core", "torch")},
    }
    if args.device.startswith("cuda"):
        out["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    model = None  # frees its memory before the next model (the closures above hold it too)
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return out


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,llama3-8b", help="comma-separated: " + ", ".join(SHAPES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--llama-layers", type=int, default=None, help="run the Llama-3-8B shape with fewer layers")
    ap.add_argument("--tiny", action="store_true", help="a tiny model on the CPU: checks that the script runs")
    args = ap.parse_args()
    if args.tiny:
        args.device, args.tokens, args.seq_len, args.batch_size, args.repeats = "cpu", 64, 16, 2, 1
        models = {"tiny": TINY}
    else:
        models = {}
        for m in args.models.split(","):
            if m not in SHAPES:
                raise SystemExit(f"--models: unknown model {m!r}; known: {', '.join(SHAPES)}")
            models[m] = dict(SHAPES[m])
        if args.llama_layers and "llama3-8b" in models:
            models["llama3-8b"]["num_hidden_layers"] = args.llama_layers
    results = [bench_model(name, kw, args) for name, kw in models.items()]
    print(json.dumps({
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "dtype": args.dtype, "torch": torch.__version__, "repeats": args.repeats, "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
