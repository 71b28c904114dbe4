"""How fast analyze_dump reads a dump, against a raw sequential read of the same files, and its memory.

    python benchmarks/dump_read.py throughput [--gb 1] [--d 576] [--dtype float32]
    python benchmarks/dump_read.py memory [--gb 1 8]
    python benchmarks/dump_read.py all [--json out.json]
    python benchmarks/dump_read.py throughput --model smollm2 [--tokens 4096] [--dtype bfloat16]

Throughput: a synthetic geonorm dump (8 norm sites, ``--d``, ``--dtype``; shards of the rows
``gn.dump`` writes by default for SmolLM2-135M's 61 sites, ``default_shard_rows``, or
``--shard-rows`` to measure other dumps, e.g. 2048 as geonorm wrote SmolLM2's fp32 shards before)
is written, left alone for ``RACY_SECONDS``, read once by
analyze_dump (the first read: every shard hashed and recorded as verified), then read, in one
process and alternating, by

* raw: every shard file in manifest order, ``readinto`` 8 MiB chunks of one reused buffer
  (the bandwidth probe: what any reader of these bytes pays);
* analyze_dump(), the default (verify="sha256": shards hashed before are trusted while unchanged),
  analyze_dump(verify="rehash") (every shard hashed again) and analyze_dump(verify="size");
* compute: analyze_dump's work on rows already in memory (token_values + accumulators, same
  blocks and threads), the ceiling the kernels set whatever the storage.

``--model``: the dump is the one ``geonorm dump --model MODEL --max-tokens N --store-dtype DTYPE``
writes from a real model (its sites, gains, shard sizes and recorded batches), not a synthetic one.

Warm: the files are in the page cache (a raw read before the repeats).  Cold: every file is
dropped from the page cache (``posix_fadvise(POSIX_FADV_DONTNEED)``, which works unprivileged
for clean pages) before each run.  Reported: median seconds and GB/s over repeats, and the
ratio raw time / analyze time (>= 0.8 is the issue's bar).

Memory: for each size, a fresh process records its peak RSS after the imports, runs
analyze_dump (default settings, cold cache), and records it again.  The peak is VmHWM from
/proc/self/status, not ru_maxrss: Linux carries ru_maxrss across fork and exec, so a child
inherits the high-water mark of the benchmark process that started it.

The dumps go to ``--dir`` (default: a temporary folder under /tmp) and are deleted afterwards.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RAW_CHUNK = 8 << 20


def write_synthetic_dump(root: Path, gb: float, *, d: int = 576, dtype: str = "float32", sites: int = 8,
                         shard_rows: int | None = None) -> Path:
    """A geonorm dump of about ``gb`` GB, through the real writer (atomic shards, sha256, manifest).

    Rows are a few random blocks reused (the content does not change the reading cost): hidden
    = N(0.3, 2) per component, post = the RMSNorm of it with a gain in [0.5, 1.5].
    """
    import ml_dtypes

    from geonorm_core.dumps.writing import DumpWriter

    dt = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    if shard_rows is None:
        shard_rows = smollm2_shard_rows(d, dt.itemsize)
    rng = np.random.default_rng(0)
    gains = [rng.uniform(0.5, 1.5, d).astype(np.float32) for _ in range(sites)]
    pool = []
    for g in gains[:3]:
        h = rng.standard_normal((shard_rows, d)) * 2 + 0.3
        p = g * h / np.sqrt((h * h).mean(axis=1, keepdims=True) + 1e-6)
        pool.append((h.astype(dt), p.astype(dt)))
    specs = [{"meta": {"name": f"model.layers.{i // 2}.{('input', 'post_attention')[i % 2]}_layernorm",
                       "kind": "rmsnorm", "variant": "llama", "layer": i // 2, "role": ("LN1", "LN2")[i % 2],
                       "stack": None, "d": d, "eps": 1e-6, "has_gain": True, "has_bias": False,
                       "residual": True, "verified": True},
              "gain": gains[i], "bias": None} for i in range(sites)]
    per_checkpoint = sites * 2 * shard_rows * d * dt.itemsize
    checkpoints = max(1, round(gb * 1e9 / per_checkpoint))
    w = DumpWriter(root, specs, config={"model": "synthetic", "shard_rows": shard_rows},
                   report_meta={"model": "synthetic", "exclude_first_token": False})
    tokens = 0
    for c in range(checkpoints):
        for i, spec in enumerate(specs):
            h, p = pool[(c + i) % len(pool)]
            w.add(spec["meta"]["name"], h, p)
        tokens += shard_rows
        if c + 1 < checkpoints:
            w.checkpoint(c + 1, tokens, None)
    return w.finish(checkpoints, tokens, None)


def smollm2_shard_rows(d: int, itemsize: int, sites: int = 61) -> int:
    """The shard rows gn.dump picks by default for a model with SmolLM2-135M's 61 norm sites."""
    from geonorm_core.dumps.writing import default_shard_rows

    return default_shard_rows(sites, sites * 2 * d * itemsize)


def dump_files(root: Path) -> list[Path]:
    man = json.loads((root / "manifest.json").read_text())
    return [root / s["file"] for site in man["sites"] for s in site["shards"]]


def drop_cache(files: list[Path]) -> None:
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_read(files: list[Path], buf: bytearray) -> int:
    total = 0
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                total += n
    return total


def compute_only(root: Path, num_threads: int | None) -> float:
    """Seconds analyze_dump's compute takes on these rows with no I/O: each site's first shard, from RAM,
    fed as analyze_dump feeds it, scaled to the dump's row count."""
    from geonorm_core import get_num_threads
    from geonorm_core.analysis.measure import quantity_names
    from geonorm_core.dumps import open_activations

    if num_threads is None:  # analyze_dump's default with nothing to hash
        num_threads = get_num_threads()
    sites = open_activations(root, verify="size")
    seconds, rows_timed, rows_all = 0.0, 0, sum(s.rows for s in sites)
    for site in sites:
        h = np.array(site.hidden[0].read(0, site.hidden[0].rows))
        p = np.array(site.post[0].read(0, site.post[0].rows))
        stats, block = site.new_stats(), site.default_block_rows()
        names = quantity_names(site.post is not None)
        staged = np.empty((len(names), len(h)))
        t = time.perf_counter()
        for a in range(0, len(h), block):
            site.token_values(h[a:a + block], p[a:a + block], num_threads=num_threads,
                              out=staged[:, a:a + block])
        for a, b in site.hidden[0].units(block):
            stats.update(**{q: staged[i, a:b] for i, q in enumerate(names)})
        seconds += time.perf_counter() - t
        rows_timed += len(h)
    return seconds * rows_all / rows_timed


def write_model_dump(root: Path, tokens: int, *, model: str = "smollm2", dtype: str = "float32") -> Path:
    """The dump ``geonorm dump`` writes from a real model (default: the embedded SmolLM2-135M: 61 norm
    sites, d = 576, 281 KB a token in fp32) over the first ``tokens`` tokens of the bundled corpus,
    stored as ``dtype``, with its default shards."""
    subprocess.run([sys.executable, "-m", "geonorm_core.cli", "dump", "--model", model, "--out", str(root),
                    "--max-tokens", str(tokens), "--store-dtype", dtype], check=True, stdout=subprocess.DEVNULL)
    return root


def throughput(size: float, d: int, dtype: str, repeats: int, workdir: Path, num_threads: int | None,
               shard_rows: int | None = None, model: str | None = None) -> dict:
    """size: GB of a synthetic dump, or with ``model`` the tokens of a model's dump."""
    from geonorm_core.dumps import analyze_dump
    from geonorm_core.dumps.verify import RACY_SECONDS

    os.environ["GEONORM_CACHE_DIR"] = str(workdir / "cache")  # the record of verified shards: ours alone
    root = workdir / f"dump-{size:g}-{dtype}-{model or d}"
    t = time.perf_counter()
    if model is not None:
        write_model_dump(root, int(size), model=model, dtype=dtype)
        d = json.loads((root / "manifest.json").read_text())["sites"][0]["meta"]["d"]
    else:
        write_synthetic_dump(root, size, d=d, dtype=dtype, shard_rows=shard_rows)
    os.sync()  # no writeback running under the timings
    write_s = time.perf_counter() - t
    time.sleep(RACY_SECONDS)  # a file hashed sooner after its last write is hashed again next time
    files = dump_files(root)
    nbytes = sum(f.stat().st_size for f in files)
    buf = bytearray(RAW_CHUNK)
    t = time.perf_counter()
    analyze_dump(root, num_threads=num_threads)  # the first read: every shard hashed, and recorded
    first_s = time.perf_counter() - t
    runs = {
        "raw": lambda: raw_read(files, buf),
        "analyze": lambda: analyze_dump(root, num_threads=num_threads),  # verified before: trusted
        "analyze_rehash": lambda: analyze_dump(root, verify="rehash", num_threads=num_threads),
        "analyze_size": lambda: analyze_dump(root, verify="size", num_threads=num_threads),
    }
    rows = json.loads((root / "manifest.json").read_text())["sites"][0]["shards"][0]["rows"]
    out = {"gb": nbytes / 1e9, "files": len(files), "shard_rows": rows, "d": d, "dtype": dtype, "write_s": write_s,
           "num_threads": num_threads, "first_read": {"s": first_s, "GB/s": nbytes / first_s / 1e9}}
    for cache in ("warm", "cold"):
        times: dict[str, list[float]] = {k: [] for k in runs}
        raw_read(files, buf)  # warm the cache (and the code paths)
        for _ in range(repeats):
            for name, fn in runs.items():  # alternating, so drift hits every reader alike
                if cache == "cold":
                    drop_cache(files)
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        out[cache] = {k: {"s": med[k], "GB/s": nbytes / med[k] / 1e9, "all_s": times[k]} for k in runs}
        for k in runs:
            if k != "raw":
                out[cache][k]["ratio_to_raw"] = med["raw"] / med[k]
    c = compute_only(root, num_threads)
    out["compute_only"] = {"s": c, "GB/s": nbytes / c / 1e9}
    shutil.rmtree(root)
    return out


_CHILD = """
import json, resource, sys

def vm(key):  # this process's own counters: VmHWM is per address space, reset by exec
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key + ":"))

from geonorm_core.dumps import analyze_dump
before = vm("VmHWM")
report = analyze_dump(sys.argv[1])
print(json.dumps({"rss_before_mb": before, "rss_peak_mb": vm("VmHWM"), "rss_end_mb": vm("VmRSS"),
                  "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "tokens": report.tokens}))
"""


def memory(sizes: list[float], workdir: Path) -> list[dict]:
    rows = []
    for gb in sizes:
        root = workdir / f"dump-{gb:g}gb-mem"
        write_synthetic_dump(root, gb)
        files = dump_files(root)
        nbytes = sum(f.stat().st_size for f in files)
        drop_cache(files)
        res = subprocess.run([sys.executable, "-c", _CHILD, str(root)], capture_output=True, text=True,
                             check=True)
        child = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append({"gb": nbytes / 1e9, "files": len(files), **child})
        shutil.rmtree(root)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("throughput", "memory", "all"))
    ap.add_argument("--gb", type=float, nargs="+", default=None)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="num_threads for the core (default: all cores)")
    ap.add_argument("--shard-rows", type=int, default=None,
                    help="rows per shard (default: what gn.dump writes for SmolLM2's 61 sites)")
    ap.add_argument("--model", default=None,
                    help="measure the dump `geonorm dump --model MODEL` writes (e.g. smollm2), not a synthetic one")
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096],
                    help="with --model: tokens to dump (SmolLM2: 4096 tokens are 1.15 GB in fp32)")
    ap.add_argument("--dir", default=None, help="where the dumps go (default: a temp folder in /tmp)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="geonorm-bench-", dir=args.dir))
    result: dict = {"cpus": os.cpu_count()}
    try:
        if args.what in ("throughput", "all"):
            sizes = args.tokens if args.model else (args.gb or [1.0])
            result["throughput"] = [throughput(size, args.d, args.dtype, args.repeats, workdir, args.threads,
                                               args.shard_rows, args.model) for size in sizes]
            for r in result["throughput"]:
                print(f"\n{r['gb']:.2f} GB, {r['files']} files of {r['shard_rows']} rows, d={r['d']} {r['dtype']}, "
                      f"threads={r['num_threads']}")
                f = r["first_read"]
                print(f"  first read, hashing {f['s']:7.3f} s  {f['GB/s']:6.2f} GB/s")
                for cache in ("warm", "cold"):
                    for k, v in r[cache].items():
                        ratio = f"  ratio to raw {v['ratio_to_raw']:.2f}" if "ratio_to_raw" in v else ""
                        print(f"  {cache:4s} {k:15s} {v['s']:7.3f} s  {v['GB/s']:6.2f} GB/s{ratio}")
                c = r["compute_only"]
                print(f"  compute only         {c['s']:7.3f} s  {c['GB/s']:6.2f} GB/s")
        if args.what in ("memory", "all"):
            result["memory"] = memory(args.gb or [1.0, 8.0], workdir)
            for r in result["memory"]:
                print(f"{r['gb']:.2f} GB dump ({r['files']} files): peak RSS {r['rss_peak_mb']:.0f} MB "
                      f"(after imports {r['rss_before_mb']:.0f} MB)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
