"""Side-by-side speed of the core against torch and a NumPy bandwidth probe.

Every number is measured in this process on the same input: geonorm, the fastest
torch composition of the same quantities, NumPy's composition (decompose), and a
probe that only moves the same bytes (``x.sum()`` reads them; ``np.copyto`` reads
and writes them).  Times are medians over repeats; the table reports GB/s and
ratios, which stay meaningful on a shared, noisy machine where absolute times do
not.  ``geonorm bench`` prints it; benchmarks/ runs the same cases under
pytest-benchmark.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass
from typing import Callable

import ml_dtypes
import numpy as np

from .. import ops
from ..analysis import measure
from ..runtime import kernel_info

DTYPES = {"fp32": np.float32, "bf16": ml_dtypes.bfloat16, "fp16": np.float16, "fp64": np.float64}


def median_time(fn: Callable[[], object], repeats: int = 7) -> float:
    """Median wall time of fn() in seconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def make_input(rows: int, d: int, dtype: str, seed: int = 0) -> np.ndarray:
    """Hidden-state-like rows: O(1) noise plus a per-row offset along 1."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, d), dtype=np.float32)
    x += rng.standard_normal((rows, 1), dtype=np.float32)
    return x.astype(DTYPES[dtype])


def probe_read(x: np.ndarray) -> Callable[[], object]:
    """NumPy reading the same bytes: a float32 sum over the buffer (16-bit types viewed as float32)."""
    flat = x.reshape(-1)
    view = flat.view(np.float32) if flat.nbytes % 4 == 0 and x.dtype.itemsize < 4 else flat
    return lambda: view.sum()


def probe_copy(x: np.ndarray) -> Callable[[], object]:
    """NumPy reading and writing the same bytes: np.copyto into a preallocated array."""
    dst = np.empty_like(x)
    return lambda: np.copyto(dst, x)


def torch_decompose(t):
    """The fastest torch composition we found of decompose's quantities (float32 results)."""
    import torch

    d = t.shape[-1]
    var, mean = torch.var_mean(t, dim=-1, correction=0)
    norm = torch.linalg.vector_norm(t, dim=-1)
    perp = torch.sqrt(var * d)
    angle = torch.rad2deg(torch.atan2(perp, mean * d ** 0.5))
    return mean, norm, perp, angle


def torch_decompose_two_pass(t):
    import torch

    d = t.shape[-1]
    mean = t.mean(dim=-1)
    norm = torch.linalg.vector_norm(t, dim=-1)
    perp = torch.linalg.vector_norm(t - mean[..., None], dim=-1)
    angle = torch.rad2deg(torch.atan2(perp, mean * d ** 0.5))
    return mean, norm, perp, angle


def numpy_decompose(x: np.ndarray):
    """The plain NumPy composition (float64 statistics, as the oracle computes them)."""
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=-1)
    norm = np.linalg.norm(x64, axis=-1)
    perp = np.linalg.norm(x64 - mean[..., None], axis=-1)
    angle = np.degrees(np.arctan2(perp, mean * np.sqrt(x.shape[-1])))
    return mean, norm, perp, angle


@dataclass
class Row:
    op: str
    dtype: str
    shape: str
    geonorm_gbs: float
    torch_gbs: float | None
    probe_gbs: float
    numpy_gbs: float | None = None

    @property
    def vs_probe(self) -> float:
        return self.geonorm_gbs / self.probe_gbs

    @property
    def vs_torch(self) -> float | None:
        return None if self.torch_gbs is None else self.geonorm_gbs / self.torch_gbs

    @property
    def vs_numpy(self) -> float | None:
        return None if self.numpy_gbs is None else self.geonorm_gbs / self.numpy_gbs

    def as_dict(self) -> dict:
        return {**asdict(self), "vs_probe": self.vs_probe, "vs_torch": self.vs_torch, "vs_numpy": self.vs_numpy}


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _gbs(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def contenders(op: str, rows: int, d: int, dtype: str) -> tuple[int, dict[str, Callable[[], object]]]:
    """The bytes an op must move and the callables that compete on the same input.

    ``op`` is ``decompose``, ``layer_norm``/``rms_norm`` (fresh output, as users
    call them) or ``layer_norm_out``/``rms_norm_out`` (into a preallocated ``out=``).
    Keys: ``geonorm``, ``probe``, and ``torch`` (when installed) and ``numpy``
    (decompose only).  Bytes: reads for decompose, reads + writes for the norms.
    """
    x = make_input(rows, d, dtype)
    base = op.removesuffix("_out")
    weight = np.random.default_rng(1).standard_normal(d).astype(np.float32) + 1.0
    bias = np.random.default_rng(2).standard_normal(d).astype(np.float32)
    torch = _torch()
    if torch is not None:
        tx = torch.from_numpy(x.view(np.int16)).view(torch.bfloat16) if dtype == "bf16" else torch.from_numpy(x)
        tw, tb = torch.from_numpy(weight).to(tx.dtype), torch.from_numpy(bias).to(tx.dtype)

    if base == "decompose":
        fns = {"geonorm": lambda: ops.decompose(x), "probe": probe_read(x), "numpy": lambda: numpy_decompose(x)}
        if torch is not None:
            fns["torch"] = lambda: torch_decompose(tx)
            fns["torch_two_pass"] = lambda: torch_decompose_two_pass(tx)
        return x.nbytes, fns
    out = np.empty_like(x) if op.endswith("_out") else None
    if base == "layer_norm":
        fns = {"geonorm": lambda: ops.layer_norm(x, weight, bias, out=out)}
        if torch is not None:
            fns["torch"] = lambda: torch.nn.functional.layer_norm(tx, (d,), tw, tb)
    elif base == "rms_norm":
        fns = {"geonorm": lambda: ops.rms_norm(x, weight, out=out)}
        if torch is not None:
            fns["torch"] = lambda: torch.nn.functional.rms_norm(tx, (d,), tw, 1e-6)
    else:
        raise ValueError(f"op must be decompose, layer_norm, rms_norm (or *_out), got {op!r}")
    fns["probe"] = probe_copy(x)
    return 2 * x.nbytes, fns


def bench_case(op: str, rows: int, d: int, dtype: str, repeats: int = 7) -> Row:
    """Measure one (op, shape, dtype) case: every contender on the same input, GB/s.

    torch is credited with its fastest composition (one-pass var_mean or two-pass).
    """
    nbytes, fns = contenders(op, rows, d, dtype)
    gbs = {}
    for name, fn in fns.items():
        reps = max(1, repeats // 3) if name == "numpy" else repeats
        gbs[name] = _gbs(nbytes, median_time(fn, reps))
    torch_gbs = max((v for k, v in gbs.items() if k.startswith("torch")), default=None)
    return Row(op, dtype, f"{rows}x{d}", gbs["geonorm"], torch_gbs, gbs["probe"], gbs.get("numpy"))


#: The cases of issue #2's speed criteria: (op, rows, d, dtype).
CASES = [
    ("decompose", 32768, 4096, "fp32"),
    ("decompose", 32768, 4096, "bf16"),
    ("decompose", 32768, 4096, "fp16"),
    ("decompose", 65536, 576, "fp32"),
    ("decompose", 256, 4096, "fp32"),  # 4 MiB: cache resident
    ("layer_norm_out", 32768, 4096, "fp32"),
    ("rms_norm_out", 32768, 4096, "fp32"),
    ("layer_norm", 32768, 4096, "fp32"),
    ("rms_norm", 32768, 4096, "fp32"),
    ("layer_norm", 32768, 4096, "bf16"),
    ("rms_norm", 32768, 4096, "bf16"),
    ("layer_norm", 65536, 576, "fp32"),
    ("rms_norm", 65536, 576, "fp32"),
]


def rows_per_second_vs_fp32(rows: int = 32768, d: int = 4096, repeats: int = 7,
                            dtypes: tuple[str, ...] = ("bf16", "fp16")) -> dict[str, dict[str, float]]:
    """decompose's rows per second on 16-bit input relative to fp32, measured interleaved.

    Each repeat times fp32 and then each 16-bit dtype back to back, so the two sides
    of every ratio see the same state of a shared machine's memory bandwidth; the
    figure is the median of the per-repeat ratios (and their min and max).
    """
    xs = {dt: make_input(rows, d, dt) for dt in ("fp32", *dtypes)}
    for x in xs.values():
        ops.decompose(x)  # warm-up: pages touched, threads started
    ratios: dict[str, list[float]] = {dt: [] for dt in dtypes}
    for _ in range(repeats):
        t = {}
        for dt, x in xs.items():
            t0 = time.perf_counter()
            ops.decompose(x)
            t[dt] = time.perf_counter() - t0
        for dt in dtypes:
            ratios[dt].append(t["fp32"] / t[dt])
    return {dt: {"median": float(np.median(r)), "min": min(r), "max": max(r)} for dt, r in ratios.items()}


def ratio_table(ratios: dict[str, dict[str, float]], shape: str) -> str:
    """The Markdown table of :func:`rows_per_second_vs_fp32`."""
    lines = ["| decompose | shape | rows/s vs fp32 (median of interleaved repeats) | min | max |",
             "|---|---|---:|---:|---:|"]
    for dt, r in ratios.items():
        lines.append(f"| {dt} | {shape} | {r['median']:.2f}x | {r['min']:.2f}x | {r['max']:.2f}x |")
    return "\n".join(lines)


#: The fused per-site pass against decompose (issue 11): (rows, d, dtype), about 128 MiB of
#: fp32 rows per side, so that both read from memory, not from cache.
SITE_CASES = [(57344, 576, "fp32"), (8192, 4096, "fp32"), (57344, 576, "bf16"), (8192, 4096, "bf16")]


def site_inputs(rows: int, d: int, dtype: str, seed: int = 0):
    """A norm site's rows as the hooks see them: hidden rows (:func:`make_input`), the site's
    LayerNorm gain and bias, and its output ``post = layer_norm(hidden)`` in the same dtype."""
    hidden = make_input(rows, d, dtype, seed)
    rng = np.random.default_rng(seed + 1)
    gain = (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(d)).astype(np.float32)
    return hidden, ops.layer_norm(hidden, gain, bias), gain, bias


def site_values_vs_decompose(rows: int, d: int, dtype: str, repeats: int = 7,
                             num_threads: int | None = None) -> dict[str, float]:
    """Time of ``token_values(h, p, gain, bias)`` over ``decompose(h) + decompose(p)`` on the same rows.

    Both read the same bytes once (each row pair: hidden and post); token_values gives the
    site's seven per-token quantities (angles with 1 (G2), norms (G5), rotation (G11, G12),
    max|h|, the LN-RMS gap (G9)), decompose the seven of one side.  Timed interleaved, the order
    alternating between repeats, so that both sides of each ratio see the same state of a
    shared machine's memory bandwidth; ``num_threads=None``: all cores for both.  Returns the
    median of the per-repeat ratios, their min and max, and the decompose side's GB/s
    (median).
    """
    h, p, gain, bias = site_inputs(rows, d, dtype)

    def dec():
        ops.decompose(h, num_threads=num_threads)
        ops.decompose(p, num_threads=num_threads)

    def site():
        measure.token_values(h, p, gain=gain, bias=bias, num_threads=num_threads)

    dec(), site()  # warm-up: pages touched, threads started
    ratios, dec_times = [], []
    for i in range(repeats):
        t = {}
        for name, fn in ((("dec", dec), ("site", site)) if i % 2 == 0 else (("site", site), ("dec", dec))):
            t0 = time.perf_counter()
            fn()
            t[name] = time.perf_counter() - t0
        ratios.append(t["site"] / t["dec"])
        dec_times.append(t["dec"])
    return {"median": float(np.median(ratios)), "min": min(ratios), "max": max(ratios),
            "decompose_gbs": _gbs(h.nbytes + p.nbytes, float(np.median(dec_times)))}


def site_values_ratios(cases=SITE_CASES, repeats: int = 7, scale: float = 1.0,
                       num_threads: int | None = None) -> list[dict]:
    """:func:`site_values_vs_decompose` for every case (rows scaled by ``scale``, at least 64)."""
    out = []
    for rows, d, dtype in cases:
        n = max(64, int(rows * scale))
        out.append({"dtype": dtype, "shape": f"{n}x{d}",
                    **site_values_vs_decompose(n, d, dtype, repeats, num_threads)})
    return out


def site_ratio_table(results: list[dict]) -> str:
    """The Markdown table of :func:`site_values_ratios` (issue 11's criterion: at most 1.3x)."""
    lines = ["| token_values(h, p, gain, bias) vs decompose(h) + decompose(p) | shape | time ratio "
             "(median of interleaved repeats) | min | max | decompose GB/s |",
             "|---|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['dtype']} | {r['shape']} | {r['median']:.2f}x | {r['min']:.2f}x | {r['max']:.2f}x | "
                     f"{r['decompose_gbs']:.1f} |")
    return "\n".join(lines)


def environment() -> dict:
    """What a reader needs to interpret the numbers: machine, threads, libraries, allocator."""
    torch = _torch()
    env = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "geonorm": kernel_info(),
        "numpy": np.__version__,
        "numpy_threads": 1,
        "torch": None if torch is None else torch.__version__,
        "torch_threads": None if torch is None else torch.get_num_threads(),
        "allocator": ({k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
                      or "glibc default"),
    }
    return env


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[Row]) -> str:
    """The Markdown table `geonorm bench` prints."""
    head = ("| op | dtype | shape | geonorm GB/s | torch GB/s | probe GB/s | vs probe | vs torch | vs NumPy |\n"
            "|---|---|---|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r.op} | {r.dtype} | {r.shape} | {r.geonorm_gbs:.1f} | {_fmt(r.torch_gbs)} | "
                     f"{r.probe_gbs:.1f} | {r.vs_probe:.2f} | {_fmt(r.vs_torch, '.2f')}x | "
                     f"{_fmt(r.vs_numpy, '.1f')}x |")
    return "\n".join(lines)


def run(cases=CASES, repeats: int = 7, scale: float = 1.0, progress: Callable[[str], None] | None = None) -> list[Row]:
    """Run every case (rows scaled by ``scale``, at least 64) and return the rows."""
    out = []
    for op, rows, d, dtype in cases:
        if progress:
            progress(f"{op} {dtype} {rows}x{d}")
        out.append(bench_case(op, max(64, int(rows * scale)), d, dtype, repeats))
    return out


def header(env: dict) -> str:
    g = env["geonorm"]
    return (f"machine: {env['cpu']}, {env['cores']} cores; geonorm {g['simd']} path, {g['num_threads']} threads; "
            f"torch {env['torch']} ({env['torch_threads']} threads); NumPy {env['numpy']} (1 thread); "
            f"allocator: {env['allocator']}")

