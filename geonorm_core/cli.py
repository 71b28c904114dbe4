"""The `geonorm` command: analyze, swap-test, dump, analyze-dump, bench, prove, info."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Iterator


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The options every command that runs a model on a text shares (analyze, dump, swap-test)."""
    p.add_argument("--model", default="smollm2", help="smollm2, gemma3, minilm, whisper-base, a local checkpoint "
                                                      "or a cached Hugging Face id (default: smollm2)")
    p.add_argument("--text", help="a UTF-8 text file (default: the bundled public-domain corpus)")
    p.add_argument("--max-tokens", type=int, default=None, help="stop after this many tokens (default: all)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default: 256)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default: 8)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default: float32)")


def load_model_and_batches(args: argparse.Namespace, command: str) -> tuple[Any, Any, Iterator[dict], dict]:
    """(model, tokenizer, batches, meta) from the options of :func:`add_model_options`."""
    import torch

    from .corpus import default_text, read_text, token_batches
    from .models import load_model

    text = read_text(args.text) if args.text else default_text()
    dtype = getattr(torch, args.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise SystemExit(f"geonorm {command}: --dtype must be float32, bfloat16 or float16, got {args.dtype!r}")
    print(f"loading {args.model} ({args.dtype}, {args.device}) ...", file=sys.stderr, flush=True)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    if getattr(model.config, "model_type", None) == "whisper":
        # Whisper's decoder reads the text's tokens, its encoder the same text spoken (espeak-ng)
        from .whisper import WhisperDecoderFeed, whisper_batches

        model = WhisperDecoderFeed(model)
        batches = whisper_batches(text, tokenizer, seq_len=min(args.seq_len, 448), batch_size=args.batch_size,
                                  max_tokens=args.max_tokens)
    else:
        batches = token_batches(text, tokenizer, seq_len=args.seq_len, batch_size=args.batch_size,
                                max_tokens=args.max_tokens)
    meta = {"model_name": args.model, "text": args.text or "default corpus", "seq_len": args.seq_len,
            "batch_size": args.batch_size, "dtype": args.dtype, "device": args.device}
    return model, tokenizer, batches, meta


def _analyze(args: argparse.Namespace) -> int:
    from .adapter import analyze

    model, _, batches, meta = load_model_and_batches(args, "analyze")
    with progress(args.max_tokens) as bar:
        # Whisper: the causal LayerNorm decoder's sites (the encoder is analyzed from Python)
        sites = model.site_names("decoder") if hasattr(model, "site_names") else None
        report = analyze(model, batches, sites=sites, exclude_first_token=args.exclude_first_token,
                         bins=args.bins, meta=meta, progress=bar)
    print(report.table())
    paths = report.save(args.out)
    print(f"wrote {len(paths)} files to {args.out}/: " + ", ".join(p.rsplit('/', 1)[-1] for p in paths))
    return 0


class progress:
    """A tqdm bar over tokens when tqdm is installed, else a line every few seconds."""

    def __init__(self, total: int | None) -> None:
        self.total, self.bar, self.done = total, None, 0

    def __enter__(self):
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="tok", unit_scale=True, file=sys.stderr)
        except ImportError:
            pass
        return self

    def __call__(self, tokens: int) -> None:
        if self.bar is not None:
            self.bar.update(tokens - self.done)
        else:
            print(f"  {tokens} tokens", file=sys.stderr, flush=True)
        self.done = tokens

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _bench(args: argparse.Namespace) -> int:
    from . import bench

    env = bench.environment()
    print(bench.header(env), flush=True)
    cases = bench.CASES
    if args.op:
        cases = [c for c in cases if c[0] in args.op]
    rows = bench.run(cases, repeats=args.repeats, scale=args.scale,
                     progress=lambda s: print(f"  measuring {s} ...", file=sys.stderr, flush=True))
    print(bench.table(rows))
    if not args.op or "decompose" in args.op:
        n = max(64, int(32768 * args.scale))
        print("  measuring 16-bit rows/s against fp32, interleaved ...", file=sys.stderr, flush=True)
        ratios = bench.rows_per_second_vs_fp32(n, 4096, repeats=args.repeats)
        print()
        print(bench.ratio_table(ratios, f"{n}x4096"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rows": [r.as_dict() for r in rows]}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def _prove(argv: list[str]) -> int:
    from .proofs.__main__ import main as prove_main

    return prove_main(argv, prog="geonorm prove")


def _info(args: argparse.Namespace) -> int:
    from . import __version__, kernel_info

    print(json.dumps({"version": __version__, **kernel_info()}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="geonorm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    a = sub.add_parser("analyze", help="measure the geometry at every norm site of a model on a text "
                                       "(default: SmolLM2-135M on the bundled corpus)")
    add_model_options(a)
    a.add_argument("--exclude-first-token", action="store_true", help="drop each sequence's first token")
    a.add_argument("--bins", type=int, default=180, help="histogram bins over 0-180 degrees (default: 180)")
    a.add_argument("--out", default="geonorm-report", help="report folder (default: geonorm-report)")
    a.set_defaults(run=_analyze)

    b = sub.add_parser("bench", help="speed of the core against torch and a NumPy bandwidth probe")
    b.add_argument("--repeats", type=int, default=7, help="timed repeats per measurement (median)")
    b.add_argument("--scale", type=float, default=1.0, help="scale the number of rows (0.1 for a quick look)")
    b.add_argument("--op", action="append", help="only these ops (decompose, layer_norm, rms_norm, *_out)")
    b.add_argument("--json", metavar="FILE", help="also write the rows and the environment as JSON")
    b.set_defaults(run=_bench)

    # `prove` hands all its arguments to the proofs' own parser (see main below).
    sub.add_parser("prove", help="prove the geometry's identities (sympy) and cross-check the kernels "
                                 "(options: geonorm prove --help)")

    def _swap_test(args: argparse.Namespace) -> int:
        from .swap import run_cli  # torch is imported only when the command runs

        return run_cli(args)

    w = sub.add_parser("swap-test", help="run a model as is and with its norms swapped (LayerNorm without "
                                         "its mean subtraction, or RMSNorm with one) and compare")
    add_model_options(w)
    w.add_argument("--direction", choices=("auto", "remove_mean", "add_mean"), default="auto",
                   help="auto (default): a LayerNorm model loses the mean subtraction, an RMSNorm model gains it")
    w.add_argument("--out", default="geonorm-swap", help="result folder (default: geonorm-swap)")
    w.set_defaults(run=_swap_test)

    def _dump(args: argparse.Namespace) -> int:
        from .dumping import run_dump_command  # torch is imported only when the command runs

        return run_dump_command(args)

    def _analyze_dump(args: argparse.Namespace) -> int:
        from .activations import run_analyze_dump_command

        return run_analyze_dump_command(args)

    dm = sub.add_parser("dump", help="write every norm site's input and output vectors to disk as "
                                     "safetensors shards (resumable)")
    add_model_options(dm)
    dm.add_argument("--out", required=True, help="dump folder (new or empty; or the dump to --resume)")
    dm.add_argument("--shard-rows", type=int, default=None,
                    help="rows per shard and site (default: what fits 512 MiB of buffers)")
    dm.add_argument("--resume", action="store_true", help="continue an interrupted dump (same options)")
    dm.add_argument("--sites", action="append", metavar="NAME[,NAME...]",
                    help="only these norm sites (module names; default: every residual-stream site)")
    dm.add_argument("--store-dtype", default=None, help="store rows as float32, bfloat16 or float16 "
                                                        "(default: as the model computes them)")
    dm.add_argument("--exclude-first-token", action="store_true", help="drop each sequence's first token")
    dm.set_defaults(run=_dump)

    ad = sub.add_parser("analyze-dump", help="the analyze report from a geonorm dump, or from .npy/.npz/"
                                             ".safetensors/.pt arrays or a folder of them")
    ad.add_argument("path", help="dump folder, array file, or folder of array files")
    ad.add_argument("--out", default="geonorm-report", help="report folder (default: geonorm-report)")
    ad.add_argument("--block-rows", type=int, default=None, help="rows per block (default: ~32 MiB of rows)")
    ad.add_argument("--bins", type=int, default=180, help="histogram bins over 0-180 degrees (default: 180)")
    ad.add_argument("--threads", type=int, default=None, help="threads for the core (default: all cores)")
    ad.add_argument("--scheduler", metavar="ADDRESS", default=None, help="run the blocks on this Dask scheduler")
    ad.add_argument("--verify", choices=("sha256", "rehash", "size"), default="sha256",
                    help="sha256 (default): check every shard's digest before counting it, trusting a check of "
                         "the same unchanged file made before; rehash: hash every shard again; size: headers and "
                         "sizes only")
    ad.add_argument("--partial", action="store_true", help="analyze an interrupted dump's batches")
    ad.set_defaults(run=_analyze_dump)

    i = sub.add_parser("info", help="version, SIMD path and threads")
    i.set_defaults(run=_info)

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["prove"]:
        return _prove(argv[1:])
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
