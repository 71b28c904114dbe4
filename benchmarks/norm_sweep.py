"""Every public op against torch's nearest equivalent, at every shape: the table of issue 19.

    python benchmarks/norm_sweep.py [--ops layer_norm rms_norm ...] [--d 64 576 ...] [--rows 1 8 ...]
                                    [--dtypes float32 bfloat16 float16] [--inputs numpy torch]
                                    [--threads 2] [--max-mb 512] [--json out.json]
    python benchmarks/norm_sweep.py --threshold [--d 64 576 4096]
    python benchmarks/norm_sweep.py --stream [--d 4096] [--dtypes float32 bfloat16]

Sweep: for each op, d, row count, dtype, input kind (NumPy array or CPU torch tensor) and out=
(given or not, for the ops that take it), geonorm's call and torch's are timed alternately in one
process (rounds of ~2 ms each, median over the rounds); the ratio is torch's time / geonorm's
(> 1: geonorm is faster).  The table ends with the worst cell.  Torch's references: F.layer_norm,
F.rms_norm, x - x.mean(-1) (remove_uniform), and for the ops torch lacks the cheapest composition of
its ops (decompose: mean, the two norms, atan2 and amax; rotation: cosine_similarity and acos;
ln_rms_gap: layer_norm, rms_norm and two norms; token_values: decompose's quantities of both rows,
the gap and the rotation).  Both libraries use --threads threads.  Cells over --max-mb of input are
skipped (and listed).

--threshold: for each d, the time of a norm on 1 thread and on 2 threads (geonorm's serial
threshold set to 0, so the team always starts) by row count, and the smallest size in bytes at which
2 threads win: what GN_SERIAL_BYTES_DEFAULT (geonorm.h) is set from.

--stream: for each d and dtype, layer_norm(out=) with plain stores and with non-temporal ones
(_core.stream_threshold 0), alternating, by output size from 1 to 256 MiB: where streaming starts
to win is what gn_stream_bytes (geonorm.c) is set from.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import ml_dtypes
import numpy as np
import torch

import geonorm_core as gn
from geonorm_core._native import _core
from geonorm_core.analysis import measure

F = torch.nn.functional
OPS = ("layer_norm", "rms_norm", "remove_uniform", "decompose", "rotation", "ln_rms_gap", "token_values")
WITH_OUT = ("layer_norm", "rms_norm", "remove_uniform")
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _torch_decompose(x):
    d = x.shape[-1]
    mean = x.mean(-1)
    norm = torch.linalg.vector_norm(x, dim=-1)
    perp = torch.linalg.vector_norm(x - mean.unsqueeze(-1), dim=-1)
    angle = torch.rad2deg(torch.atan2(perp, mean * d ** 0.5))
    return mean, norm, perp, angle, x.abs().amax(-1)


def _torch_rotation(x, y):
    return torch.rad2deg(torch.acos(F.cosine_similarity(x, y, dim=-1).clamp(-1, 1)))


def _torch_gap(x, w, b, eps):
    d = x.shape[-1]
    ln = F.layer_norm(x, (d,), w, b, eps)
    rms = F.rms_norm(x, (d,), w, eps) + b
    return torch.linalg.vector_norm(ln - rms, dim=-1) / torch.linalg.vector_norm(ln, dim=-1)


def _torch_token_values(x, y, w, b, eps):
    hx, hy = _torch_decompose(x), _torch_decompose(y)
    return hx, hy[1], hy[3], _torch_gap(x, w, b, eps), _torch_rotation(x, y)


def calls(op, x, y, w, b, xt, yt, wt, bt, out, outt, kind):
    """(geonorm's call, torch's call) for one cell."""
    a = (x, y, w, b, out) if kind == "numpy" else (xt, yt, wt, bt, outt)
    gx, gy, gw, gb, go = a
    d = xt.shape[-1]
    eps = 1e-5
    if op == "layer_norm":
        g = lambda: gn.layer_norm(gx, gw, gb, eps, out=go)
        t = lambda: F.layer_norm(xt, (d,), wt, bt, eps)
    elif op == "rms_norm":
        g = lambda: gn.rms_norm(gx, gw, eps, out=go)
        t = lambda: F.rms_norm(xt, (d,), wt, eps)
    elif op == "remove_uniform":
        g = lambda: gn.remove_uniform(gx, out=go)
        if outt is None:
            t = lambda: xt - xt.mean(-1, keepdim=True)
        else:
            t = lambda: torch.sub(xt, xt.mean(-1, keepdim=True), out=outt)
    elif op == "decompose":
        g = lambda: gn.decompose(gx)
        t = lambda: _torch_decompose(xt)
    elif op == "rotation":
        g = lambda: gn.rotation(gx, gy)
        t = lambda: _torch_rotation(xt, yt)
    elif op == "ln_rms_gap":
        g = lambda: gn.ln_rms_gap(gx, gw, gb, eps)
        t = lambda: _torch_gap(xt, wt, bt, eps)
    else:
        g = lambda: measure.token_values(gx, gy, gain=gw, bias=gb, eps=eps)
        t = lambda: _torch_token_values(xt, yt, wt, bt, eps)
    return g, t


def interleaved(fs, budget_s=0.12, rounds=9):
    """Median seconds per call of each function, timed in alternating rounds."""
    for f in fs:
        f()
    t0 = time.perf_counter()
    fs[0]()
    one = max(time.perf_counter() - t0, 1e-7)
    per_round = max(1, int(min(budget_s / rounds / len(fs), 0.004) / one))
    times = [[] for _ in fs]
    for _ in range(rounds):
        for i, f in enumerate(fs):
            t0 = time.perf_counter()
            for _ in range(per_round):
                f()
            times[i].append((time.perf_counter() - t0) / per_round)
    return [statistics.median(t) for t in times]


def data(rows, d, dtype):
    rng = np.random.default_rng(rows + d)
    x32 = (rng.standard_normal((rows, d), dtype=np.float32) * 2 + 0.3)
    y32 = x32 / np.sqrt((x32 * x32).mean(1, keepdims=True) + 1e-6)
    w32 = rng.uniform(0.5, 1.5, d).astype(np.float32)
    b32 = rng.normal(0, 0.1, d).astype(np.float32)
    tdt = TORCH_DTYPES[dtype]
    xt, yt = torch.from_numpy(x32).to(tdt), torch.from_numpy(y32).to(tdt)
    wt, bt = torch.from_numpy(w32).to(tdt), torch.from_numpy(b32).to(tdt)

    def np_of(t):
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16 else t.numpy()

    return (np_of(xt), np_of(yt), np_of(wt), np_of(bt)), (xt, yt, wt, bt)


def sweep(args) -> list[dict]:
    cells, skipped = [], []
    for op in args.ops:
        for dtype in args.dtypes:
            for d in args.d:
                for rows in args.rows:
                    size = rows * d * torch.finfo(TORCH_DTYPES[dtype]).bits // 8
                    if size > args.max_mb * 2 ** 20:
                        skipped.append(f"{op} {dtype} d={d} rows={rows}")
                        continue
                    (x, y, w, b), (xt, yt, wt, bt) = data(rows, d, dtype)
                    for kind in args.inputs:
                        for with_out in ((False, True) if op in WITH_OUT else (False,)):
                            out = np.empty_like(x) if with_out else None
                            outt = torch.empty_like(xt) if with_out else None
                            g, t = calls(op, x, y, w, b, xt, yt, wt, bt, out, outt, kind)
                            tg, tt = interleaved([g, t])
                            cell = {"op": op, "dtype": dtype, "d": d, "rows": rows, "input": kind,
                                    "out": with_out, "geonorm_us": tg * 1e6, "torch_us": tt * 1e6,
                                    "ratio": tt / tg}
                            cells.append(cell)
                            print(f"{op:15s} {dtype:8s} d={d:<5d} rows={rows:<6d} {kind:5s} "
                                  f"out={'yes' if with_out else 'no ':3s} geonorm {tg * 1e6:10.1f} us  "
                                  f"torch {tt * 1e6:10.1f} us  ratio {tt / tg:6.2f}", flush=True)
                    del x, y, xt, yt
    if skipped:
        print(f"skipped (over --max-mb {args.max_mb}): " + "; ".join(skipped))
    if cells:
        worst = min(cells, key=lambda c: c["ratio"])
        below = sum(c["ratio"] < 1.0 for c in cells)
        print(f"cells: {len(cells)}, below 1.0x: {below}")
        print(f"worst cell: {worst['op']} {worst['dtype']} d={worst['d']} rows={worst['rows']} {worst['input']} "
              f"out={'yes' if worst['out'] else 'no'}: ratio {worst['ratio']:.2f} "
              f"(geonorm {worst['geonorm_us']:.1f} us, torch {worst['torch_us']:.1f} us)")
    return cells


def threshold(args) -> list[dict]:
    before = _core.serial_threshold()
    found = []
    try:
        _core.serial_threshold(0)
        for d in args.d:
            win = None
            for rows in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096):
                x = np.random.default_rng(0).standard_normal((rows, d)).astype(np.float32)
                out = np.empty_like(x)
                one, two = interleaved([lambda x=x, out=out: gn.layer_norm(x, out=out, num_threads=1),
                                        lambda x=x, out=out: gn.layer_norm(x, out=out, num_threads=2)],
                                       rounds=15)
                nbytes = 2 * x.nbytes
                print(f"d={d:<5d} rows={rows:<5d} bytes={nbytes:<9d} 1 thread {one * 1e6:8.2f} us  "
                      f"2 threads {two * 1e6:8.2f} us  {one / two:5.2f}x", flush=True)
                if win is None and two < one * 0.95:
                    win = nbytes
            found.append({"d": d, "bytes": win})
            print(f"d={d}: 2 threads first win at {win} bytes read+written")
    finally:
        _core.serial_threshold(before)
    return found


def stream(args) -> list[dict]:
    before = _core.stream_threshold()
    found = []
    try:
        for dtype in args.dtypes:
            for d in args.d:
                win = None
                for mib in (1, 2, 4, 8, 16, 32, 64, 128, 256):
                    rows = max(1, (mib << 20) // (d * torch.finfo(TORCH_DTYPES[dtype]).bits // 8))
                    (x, _, w, b), _ = data(rows, d, dtype)
                    out = np.empty_like(x)

                    def run(threshold, x=x, w=w, b=b, out=out):
                        _core.stream_threshold(threshold)
                        gn.layer_norm(x, w, b, out=out)
                    plain, streamed = interleaved([lambda: run(1 << 62), lambda: run(0)], rounds=15)
                    print(f"{dtype:8s} d={d:<5d} out {mib:4d} MiB  stores {plain * 1e6:9.1f} us  "
                          f"streamed {streamed * 1e6:9.1f} us  {plain / streamed:5.2f}x", flush=True)
                    if win is None and streamed < plain * 0.95:
                        win = mib
                found.append({"dtype": dtype, "d": d, "MiB": win})
                print(f"{dtype} d={d}: streaming first wins at {win} MiB of output")
    finally:
        _core.stream_threshold(before)
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    p.add_argument("--d", nargs="+", type=int, default=[64, 576, 768, 2048, 4096, 8192])
    p.add_argument("--rows", nargs="+", type=int, default=[1, 8, 64, 512, 4096, 32768, 65536])
    p.add_argument("--dtypes", nargs="+", default=list(TORCH_DTYPES), choices=list(TORCH_DTYPES))
    p.add_argument("--inputs", nargs="+", default=["numpy", "torch"], choices=["numpy", "torch"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-mb", type=float, default=512)
    p.add_argument("--threshold", action="store_true")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    gn.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, geonorm {gn.__version__}, simd {gn.kernel_info()['simd']}, "
          f"threads {args.threads}, serial threshold {_core.serial_threshold()} bytes, "
          f"stream threshold {_core.stream_threshold()} bytes")
    result = threshold(args) if args.threshold else stream(args) if args.stream else sweep(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
