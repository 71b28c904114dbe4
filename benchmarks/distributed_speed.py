"""The wall time of `geonorm analyze` on SmolLM2 with 1 and 2 CPU processes, and of merging.

    python benchmarks/distributed_speed.py [--tokens 8192] [--repeats 3]

Each repeat runs, one after the other (interleaved, so a noisy machine slows both alike):

* ``geonorm analyze`` in one process (torch and geonorm use every core);
* ``torchrun --nproc-per-node 2 -m geonorm_core.cli analyze`` (gloo; each rank half the cores);
* ``geonorm merge`` of the two ``--part K/2`` reports of the same run (the merge a Slurm array
  needs), and the library's ``merge_reports`` alone (best of 5, in this process).

Every figure is the wall time of the whole command (model load included) and the median over
repeats; the ratio 2-process / 1-process is what to compare across machines.  No GPU is used.
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

ROOT = Path(__file__).resolve().parent.parent


def _timed(cmd: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    shown = " ".join(cmd[cmd.index("analyze") if "analyze" in cmd else 2:])
    print(f"{elapsed:8.1f} s  {shown}", file=sys.stderr, flush=True)  # a run cut short still says this
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default="smollm2")
    args = p.parse_args()
    torchrun = shutil.which("torchrun") or sys.exit("torchrun is not on PATH")
    work = Path(tempfile.mkdtemp(prefix="geonorm-dist-bench-"))
    run = ["--model", args.model, "--max-tokens", str(args.tokens), "--checkpoint-every", str(10 ** 9)]
    geonorm = [sys.executable, "-m", "geonorm_core.cli"]
    times: dict[str, list[float]] = {"1 process": [], "2 processes (torchrun)": [], "geonorm merge (CLI)": []}
    for r in range(args.repeats):
        times["1 process"].append(_timed([*geonorm, "analyze", *run, "--out", str(work / f"one{r}")]))
        times["2 processes (torchrun)"].append(_timed(
            [torchrun, "--nproc-per-node", "2", "-m", "geonorm_core.cli", "analyze", *run,
             "--out", str(work / f"two{r}")]))
        if r == 0:
            for k in (0, 1):
                _timed([*geonorm, "analyze", *run, "--part", f"{k}/2", "--out", str(work / f"part{k}")])
        times["geonorm merge (CLI)"].append(_timed(
            [*geonorm, "merge", str(work / "part0"), str(work / "part1"), "--out", str(work / f"merged{r}")]))

    sys.path.insert(0, str(ROOT))
    from geonorm_core.analysis.merging import merge_reports
    from geonorm_core.analysis.report import Report

    parts = [Report.from_json(work / f"part{k}" / "report.json") for k in (0, 1)]
    best = min(_merge_time(merge_reports, parts) for _ in range(5))
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"tokens": args.tokens, "repeats": args.repeats, "cpus": os.cpu_count(),
                      "seconds": times, "medians": medians,
                      "ratio 2 processes / 1 process":
                          medians["2 processes (torchrun)"] / medians["1 process"],
                      "merge_reports (library, best of 5) s": best,
                      "sites": len(parts[0].sites)}, indent=1))
    shutil.rmtree(work, ignore_errors=True)


def _merge_time(merge_reports, parts) -> float:
    t0 = time.perf_counter()
    merge_reports(parts)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
