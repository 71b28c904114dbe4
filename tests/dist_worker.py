"""One rank of the library tests in test_distributed.py, started as torchrun would start it
(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment).

    python dist_worker.py SCENARIO OUT_DIR

analyze: each rank analyzes the batches i % world == rank and writes the merged report (and
its own, ``merge_ranks=False``) as JSON; bad-batch: rank 1 gets a malformed batch; killed:
rank 1 SIGKILLs itself after its first batch.  Errors are written to OUT_DIR/error-RANK.txt.
"""
from __future__ import annotations

import datetime
import json
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
from tiny_models import tiny

import geonorm_core as gn


def batches(n: int = 6) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 97, (2, 12), generator=gen),
             "attention_mask": torch.ones(2, 12, dtype=torch.long)} for _ in range(n)]


def main() -> int:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    model = tiny("llama")
    mine = [b for i, b in enumerate(batches()) if i % world == rank]
    try:
        if scenario == "analyze":
            report = gn.analyze(model, mine)
            own = gn.analyze(model, mine, merge_ranks=False)
            with gn.Analyzer(model) as an:
                for b in mine:
                    an.feed(b)
            (out / f"merged-{rank}.json").write_text(json.dumps(report.to_dict()))
            (out / f"own-{rank}.json").write_text(json.dumps(own.to_dict()))
            (out / f"analyzer-{rank}.json").write_text(json.dumps(an.report().to_dict()))
        elif scenario == "bad-batch":
            if rank == 1:
                mine = [mine[0], {"input_ids": torch.zeros(5, dtype=torch.long)}]
            gn.analyze(model, mine)
        elif scenario == "killed":
            def progress(tokens: int) -> None:
                if rank == 1:
                    os.kill(os.getpid(), signal.SIGKILL)

            gn.analyze(model, mine, progress=progress)
        else:
            raise SystemExit(f"unknown scenario {scenario}")
    except Exception as exc:  # noqa: BLE001 - what the test reads
        (out / f"error-{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
