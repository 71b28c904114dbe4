"""The long run of the hostile-file fuzz suite (tests/test_fuzz.py's ``test_hostile_*``).

    python benchmarks/fuzz_files.py [--cases 2000] [--seeds 22 23 24]

CI runs 25 seeded mutations per target (manifests edited and resealed, geonorm's shard
headers, foreign safetensors and .npy headers); this runs ``--cases`` per target for each
seed, asserting the same contract: a correct report or a DumpError naming the file, never
another exception, a hang (30 s per case) or a different report.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[22, 23, 24])
    args = ap.parse_args()
    for seed in args.seeds:
        env = {**os.environ, "GEONORM_FUZZ_CASES": str(args.cases), "GEONORM_FUZZ_SEED": str(seed)}
        print(f"seed {seed}: {args.cases} cases per target", flush=True)
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-x", "-k", "hostile",
                              str(ROOT / "tests" / "test_fuzz.py")], env=env, cwd=ROOT)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
