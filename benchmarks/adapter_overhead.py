"""What the analysis costs a model's forward pass, and that its memory does not grow with tokens.

    python benchmarks/adapter_overhead.py overhead   # SmolLM2 fp32 on CPU: forward alone vs with geonorm's hooks
    python benchmarks/adapter_overhead.py memory     # peak RSS of `geonorm analyze` for 10k vs 100k tokens

Overhead: the same batches of the default corpus run alternately without hooks
and with an Analyzer attached (median of repeats, one process, so the ratio is
meaningful on a noisy machine).  Memory: each token count runs in a fresh
process and reports its own peak RSS (ru_maxrss), after loading the model.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _batches(tokenizer, max_tokens, seq_len=256, batch_size=8, repeat=1):
    from geonorm_core.models.corpus import default_text, token_batches

    return list(token_batches(default_text() * repeat, tokenizer, seq_len=seq_len, batch_size=batch_size,
                              max_tokens=max_tokens))


def overhead(model_name: str = "smollm2", tokens: int = 4096, repeats: int = 5) -> dict:
    import torch

    from geonorm_core.models import load_model
    from geonorm_core.sources.adapter import Analyzer

    model, tok = load_model(model_name, dtype="float32")
    batches = _batches(tok, tokens)

    def plain():
        with torch.inference_mode():
            for b in batches:
                model(**b)

    results = {"plain": [], "geonorm_threads1": [], "geonorm_default": []}
    plain()  # warm-up
    for _ in range(repeats):
        for name in results:
            t0 = time.perf_counter()
            if name == "plain":
                plain()
            else:
                nt = 1 if name == "geonorm_threads1" else None  # None: the core's default threads
                with Analyzer(model, num_threads=nt) as an:
                    for b in batches:
                        an.feed(b)
            results[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in results.items()}
    out = {"model": model_name, "tokens": sum(int(b["attention_mask"].sum()) for b in batches),
           "torch_threads": torch.get_num_threads(), "median_s": med,
           "overhead_threads1": med["geonorm_threads1"] / med["plain"] - 1,
           "overhead_default": med["geonorm_default"] / med["plain"] - 1}
    return out


def _peak_rss_child(tokens: int) -> None:
    from geonorm_core.models import load_model
    from geonorm_core.sources.adapter import analyze

    model, tok = load_model("smollm2", dtype="float32")
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    from geonorm_core.models.corpus import default_text, token_batches

    text = default_text() * (1 + tokens // 50_000)  # the corpus, repeated to reach the count
    report = analyze(model, token_batches(text, tok, seq_len=256, batch_size=8, max_tokens=tokens))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"tokens": report.tokens, "rss_after_load_mib": after_load / 1024,
                      "peak_rss_mib": peak / 1024}))


def memory(counts=(10_000, 100_000)) -> list[dict]:
    rows = []
    for n in counts:
        out = subprocess.run([sys.executable, __file__, "_child", str(n)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "overhead"
    if what == "overhead":
        print(json.dumps(overhead(), indent=2))
    elif what == "memory":
        for row in memory():
            print(json.dumps(row))
    elif what == "_child":
        _peak_rss_child(int(sys.argv[2]))
    else:
        raise SystemExit(__doc__)
