"""analyze_dump over very many tiny shards: time linear in their count, memory per shard small.

    python benchmarks/many_shards.py [--counts 10000 100000] [--kinds files tensors] [--dir /tmp]

Two sources, each at every count n:

* ``files``: a folder of n ``.npy`` files of 2 rows x 8 (one site, n shards; the read-ahead
  plans over n shards -- before issue 22 this was quadratic: 26 s for 10,000 files against
  2.9 s for 2,500);
* ``tensors``: one safetensors file holding n tensors of 2 rows x 8 (n sites of one shard each;
  before: 160 s and 577 MB for 20,000).

Each (kind, n) runs in a fresh process (so peak memory is its own): the file(s) are written
once, then analyze_dump runs; reported are the seconds of analyze_dump, microseconds per shard
(flat across n when the time is linear), and the process's peak RSS (VmHWM) after the imports
and at the end.  The folder is deleted afterwards.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def _vmhwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(kind: str, n: int, folder: str) -> None:
    import numpy as np

    from geonorm_core.dumps.formats import write_safetensors
    from geonorm_core.dumps.reading import analyze_dump

    rng = np.random.default_rng(0)
    if kind == "files":
        path = os.path.join(folder, "files")
        os.makedirs(path)
        for i in range(n):
            np.save(os.path.join(path, f"{i}.npy"), rng.normal(size=(2, 8)).astype(np.float32))
    else:
        path = os.path.join(folder, "many.safetensors")
        write_safetensors(path, {f"t{i}": [rng.normal(size=(2, 8)).astype(np.float32)] for i in range(n)})
    base = _vmhwm_mb()
    t = time.perf_counter()
    report = analyze_dump(path, num_threads=1)
    dt = time.perf_counter() - t
    print(json.dumps({"kind": kind, "n": n, "seconds": dt, "us_per_shard": dt / n * 1e6,
                      "rss_before_mb": base, "rss_peak_mb": _vmhwm_mb(), "sites": len(report.sites),
                      "rows": report.tokens}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--kinds", nargs="+", default=["files", "tensors"], choices=["files", "tensors"])
    ap.add_argument("--dir", default=None)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return
    print(f"{'kind':8} {'n':>8} {'seconds':>9} {'us/shard':>9} {'RSS before':>11} {'RSS peak':>9}")
    for kind in args.kinds:
        for n in args.counts:
            folder = tempfile.mkdtemp(prefix="geonorm-many-", dir=args.dir)
            try:
                out = subprocess.run([sys.executable, __file__, "--child", kind, str(n), folder],
                                     capture_output=True, text=True, check=True).stdout
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            r = json.loads(out.strip().splitlines()[-1])
            print(f"{kind:8} {n:>8} {r['seconds']:>9.2f} {r['us_per_shard']:>9.0f} "
                  f"{r['rss_before_mb']:>9.0f}MB {r['rss_peak_mb']:>7.0f}MB", flush=True)


if __name__ == "__main__":
    main()
