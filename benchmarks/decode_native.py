"""Tokens/s of a GPT-2-small-shaped model (random weights) with torch's norms and with geonorm's
(``geonorm_core.nn.use_native_kernels``): greedy decoding at batch 1 and a prefill of 8 x 512.

    python benchmarks/decode_native.py [--new-tokens 32] [--prompt 16] [--repeats 5] [--threads 2]

The two models share their weights (the native one is a deep copy whose norms were swapped) and run
alternately in one process; reported: median tokens/s of each and the ratio native / torch
(>= 1.0 is issue 19's bar), and whether the greedy tokens are the same.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch


def build(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)
    return GPT2LMHeadModel(cfg).eval()


def greedy(model, prompt, new_tokens):
    ids = prompt
    with torch.inference_mode():
        out = model(ids, use_cache=True)
        past = out.past_key_values
        tokens = []
        for _ in range(new_tokens):
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(nxt)
            out = model(nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
    return torch.cat(tokens, 1)


def prefill(model, batch):
    with torch.inference_mode():
        return model(batch, use_cache=False).logits[:, -1].argmax(-1)


def main(argv=None) -> int:
    import geonorm_core as gn
    from geonorm_core import nn as gnn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    gn.set_num_threads(args.threads)
    plain = build()
    native = copy.deepcopy(plain)
    swapped = gnn.use_native_kernels(native)
    print(f"torch {torch.__version__}, threads {args.threads}, {len(swapped)} norms swapped")
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 50257, (1, args.prompt), generator=g)
    batch = torch.randint(0, 50257, (8, 512), generator=g)
    same_decode = torch.equal(greedy(plain, prompt, args.new_tokens), greedy(native, prompt, args.new_tokens))
    same_prefill = torch.equal(prefill(plain, batch), prefill(native, batch))
    for name, fn, tokens in (("decode b=1", lambda m: greedy(m, prompt, args.new_tokens), args.new_tokens),
                             ("prefill 8x512", lambda m: prefill(m, batch), 8 * 512)):
        times = {"torch": [], "geonorm": []}
        for _ in range(args.repeats):
            for label, model in (("torch", plain), ("geonorm", native)):
                t0 = time.perf_counter()
                fn(model)
                times[label].append(time.perf_counter() - t0)
        tt, tg = statistics.median(times["torch"]), statistics.median(times["geonorm"])
        print(f"{name:14s} torch {tokens / tt:9.1f} tok/s   geonorm {tokens / tg:9.1f} tok/s   "
              f"ratio {tt / tg:5.3f}")
    print(f"same greedy tokens: {same_decode}; same prefill argmax: {same_prefill}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
