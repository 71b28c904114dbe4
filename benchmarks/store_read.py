"""How fast analyze_dump reads the activation stores users have, against a raw read of the same files.

    python benchmarks/store_read.py throughput [--gb 1] [--kinds arrow hdf5 ...] [--repeats 3]
    python benchmarks/store_read.py memory [--gb 2]
    python benchmarks/store_read.py all [--json out.json]

Stores (``--d`` fp32 rows, three hook-named sites, about ``--gb`` GB each), written by the library
that writes them in real life:

* ``arrow``: a ``datasets`` folder as SAELens's CacheActivationsRunner writes it (``Array2D(shape=
  (context, d))`` columns + ``token_ids``, ``Dataset.from_generator`` + ``save_to_disk``, 4 files);
* ``parquet``: the same dataset's ``to_parquet`` (snappy), as pushed to the Hub;
* ``hdf5``: h5py, contiguous datasets (memory-mapped by geonorm); ``hdf5-chunked``: chunks of 64
  sequences, uncompressed; ``hdf5-gzip``: the same chunks with gzip level 1;
* ``zarr``: zarr v3 with its default compressor (zstd), chunks of 64 sequences; ``zarr-raw``: the
  same uncompressed.

Each store is read, in one process and alternating, by ``raw`` (every file of the store,
``readinto`` 8 MiB chunks: the bandwidth probe, dump_read.py's), by ``npy`` (analyze_dump of the same
number of rows as one ``.npy`` per site: geonorm's plainest path) and by ``analyze_dump`` of the store
(default settings); ``compute only`` is analyze_dump of the rows already in RAM (the kernels' ceiling,
whatever the storage: on a small shared machine it, not the disk, is the limit).  Warm: in the page
cache; cold: every file dropped (``posix_fadvise(DONTNEED)``) before each run.  Reported: medians over
``--repeats`` and the ratios raw time / store time and .npy time / store time.

Memory: a fresh process per store kind records VmHWM after its imports and after analyze_dump
(cold cache), as dump_read.py does.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dump_read import RAW_CHUNK, drop_cache, raw_read  # the same probes as for dumps

KINDS = ("arrow", "parquet", "hdf5", "hdf5-chunked", "hdf5-gzip", "zarr", "zarr-raw")
CTX = 128
HOOKS = tuple(f"blocks.{i}.hook_resid_pre" for i in range(3))


def _pool(d: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((64, CTX, d)) * 2 + 0.3).astype(np.float32)


def write_store(kind: str, root: Path, gb: float, d: int) -> Path:
    """A store of about ``gb`` GB of fp32 rows (3 sites) written with the library that writes it."""
    pool = _pool(d)
    seqs = max(64, int(gb * 1e9 / (len(HOOKS) * CTX * d * 4)) // 64 * 64)
    if kind in ("arrow", "parquet"):
        arrow = root.parent / f"arrow-{gb:g}"
        if not arrow.exists():
            from datasets import Array2D, Dataset, Features, Sequence, Value

            features = Features(
                {
                    **{h: Array2D(shape=(CTX, d), dtype="float32") for h in HOOKS},
                    "token_ids": Sequence(Value(dtype="int32"), length=CTX),
                }
            )

            def rows():
                tok = np.zeros(CTX, np.int32)
                for i in range(seqs):
                    yield {**{h: pool[(i + k) % 64] for k, h in enumerate(HOOKS)}, "token_ids": tok}

            ds = Dataset.from_generator(rows, features=features, cache_dir=str(root.parent / "hf-cache"))
            ds.save_to_disk(str(arrow), num_shards=4)
            shutil.rmtree(root.parent / "hf-cache", ignore_errors=True)
        if kind == "arrow":
            return arrow
        from datasets import load_from_disk

        out = root.with_suffix(".parquet")
        load_from_disk(str(arrow)).to_parquet(str(out))
        return out
    if kind.startswith("hdf5"):
        import h5py

        out = root.with_suffix(".h5")
        kw = {
            "hdf5": {},
            "hdf5-chunked": {"chunks": (64, CTX, d)},
            "hdf5-gzip": {"chunks": (64, CTX, d), "compression": "gzip", "compression_opts": 1},
        }[kind]
        with h5py.File(out, "w") as f:
            for k, h in enumerate(HOOKS):
                ds = f.create_dataset(h, shape=(seqs, CTX, d), dtype=np.float32, **kw)
                for a in range(0, seqs, 64):
                    ds[a : a + 64] = np.roll(pool, k, axis=0)
        return out
    import zarr

    out = root.with_suffix(".zarr")
    g = zarr.open_group(str(out), mode="w", zarr_format=3)
    for k, h in enumerate(HOOKS):
        arr = g.create_array(
            h,
            shape=(seqs, CTX, d),
            dtype=np.float32,
            chunks=(64, CTX, d),
            compressors="auto" if kind == "zarr" else None,
        )
        for a in range(0, seqs, 64):
            arr[a : a + 64] = np.roll(pool, k, axis=0)
    return out


def store_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(f for f in path.rglob("*") if f.is_file())


class _RamShard:
    """Rows already in memory: what analyze_dump's compute costs with no I/O at all."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows_array = rows
        self.rows, self.d, self.dtype = rows.shape[0], rows.shape[1], rows.dtype
        self.path, self.sha256, self.segments = Path("ram"), None, None

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.rows_array[start:stop]

    def prefetch(self, start: int, stop: int) -> None:
        pass

    def release(self) -> None:
        pass


def _baselines(gb: float, d: int, workdir: Path) -> tuple[Path, list]:
    """The same number of rows as one .npy per site (geonorm's plainest path), and in RAM."""
    pool = _pool(d)
    seqs = max(64, int(gb * 1e9 / (len(HOOKS) * CTX * d * 4)) // 64 * 64)
    root = workdir / "npy"
    root.mkdir()
    for k, h in enumerate(HOOKS):
        a = np.lib.format.open_memmap(root / f"{h}.npy", mode="w+", dtype=np.float32, shape=(seqs * CTX, d))
        for i in range(0, seqs, 64):
            a[i * CTX : (i + 64) * CTX] = np.roll(pool, k, axis=0).reshape(-1, d)
        a.flush()
        del a
    import geonorm_core as gn

    ram = []
    for f in sorted(root.iterdir()):
        (site,) = gn.open_activations(f)
        site.hidden = [_RamShard(np.load(f))]
        ram.append(site)
    return root, ram


def throughput(kinds: list[str], gb: float, d: int, repeats: int, workdir: Path) -> list[dict]:
    import geonorm_core as gn

    out = []
    buf = bytearray(RAW_CHUNK)
    npy, ram = _baselines(gb, d, workdir)
    npy_files = store_files(npy)

    def read_npy() -> None:
        for f in npy_files:
            gn.analyze_dump(f)

    t = time.perf_counter()
    gn.analyze_dump(ram)
    compute = time.perf_counter() - t
    del ram
    for kind in kinds:
        path = write_store(kind, workdir / kind, gb, d)
        files = store_files(path)
        nbytes = sum(f.stat().st_size for f in files)
        gn.analyze_dump(path)  # first read: imports, page cache
        row: dict = {"kind": kind, "gb": nbytes / 1e9, "files": len(files)}
        runs = {
            "raw": lambda files=files: raw_read(files, buf),
            "npy": read_npy,
            "analyze_dump": lambda path=path: gn.analyze_dump(path),
        }
        for cache in ("warm", "cold"):
            times: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(repeats):
                for name, run in runs.items():  # alternating, so drift hits all alike
                    mine = npy_files if name == "npy" else files
                    if cache == "cold":
                        drop_cache(mine)
                    else:
                        raw_read(mine, buf)
                    t = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - t)
            med = {k: statistics.median(v) for k, v in times.items()}
            row[cache] = {k: {"s": s, "GB/s": nbytes / 1e9 / s} for k, s in med.items()}
            row[cache]["analyze_dump"]["ratio_to_raw"] = med["raw"] / med["analyze_dump"]
            row[cache]["analyze_dump"]["ratio_to_npy"] = med["npy"] / med["analyze_dump"]
        row["compute_only_s"] = compute
        out.append(row)
        print(
            f"{kind:13s} {row['gb']:.2f} GB {len(files):4d} files; "
            f"compute only {nbytes / 1e9 / compute:5.2f} GB/s",
            flush=True,
        )
        for c in ("warm", "cold"):
            r = row[c]
            print(
                f"    {c}: raw {r['raw']['GB/s']:5.2f} GB/s, "
                f"same rows as .npy {r['npy']['GB/s']:5.2f} GB/s, "
                f"store {r['analyze_dump']['GB/s']:5.2f} GB/s; "
                f"store/raw {r['analyze_dump']['ratio_to_raw']:.2f}, "
                f"store/npy {r['analyze_dump']['ratio_to_npy']:.2f}",
                flush=True,
            )
        if kind != "arrow":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return out


_CHILD = """
import json, sys

def vm(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key + ":"))

import geonorm_core as gn, pyarrow, h5py, zarr  # every reader's imports counted in 'before'
before = vm("VmHWM")
report = gn.analyze_dump(sys.argv[1])
print(json.dumps({"rss_before_mb": before, "rss_peak_mb": vm("VmHWM"), "tokens": report.tokens}))
"""


def memory(kinds: list[str], gb: float, d: int, workdir: Path) -> list[dict]:
    rows = []
    for kind in kinds:
        path = write_store(kind, workdir / f"{kind}-mem", gb, d)
        files = store_files(path)
        drop_cache(files)
        res = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, check=True
        )
        child = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append({"kind": kind, "gb": sum(f.stat().st_size for f in files) / 1e9, **child})
        print(
            f"{kind:13s} {rows[-1]['gb']:.2f} GB: peak RSS {child['rss_peak_mb']:.0f} MB "
            f"({child['rss_before_mb']:.0f} MB after the imports)",
            flush=True,
        )
        if kind != "arrow":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("throughput", "memory", "all"))
    ap.add_argument(
        "--gb", type=float, default=None, help="store size (default: 1 for throughput, 2 for memory)"
    )
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where the stores go (default: a temp folder in /tmp)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="geonorm-stores-", dir=args.dir))
    result: dict = {"cpus": os.cpu_count()}
    try:
        if args.what in ("throughput", "all"):
            result["throughput"] = throughput(args.kinds, args.gb or 1.0, args.d, args.repeats, workdir)
        if args.what in ("memory", "all"):
            (workdir / "mem").mkdir()
            result["memory"] = memory(args.kinds, args.gb or 2.0, args.d, workdir / "mem")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
