"""``geonorm analyze``: the geometry at every norm site of a model on a text.

The run checkpoints its mergeable report into ``--out`` every ``--checkpoint-every`` tokens
and on Ctrl-C; ``--resume`` continues it (:mod:`geonorm_core.sources.checkpoint`).  Under ``torchrun``
the processes split the batches (batch i to rank i % N, :mod:`geonorm_core.sources.distributed`) and
rank 0 writes the one report; ``--part K/N`` is the same split for jobs that never meet.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys

from ..analysis.measure import BACKENDS
from ..experiments.workload import progress
from ..sources.checkpoint import load_checkpoint
from . import preflight
from .errors import INTERRUPTED, UsageError
from .options import add_model_options, check_model_options, load_workload, positive_int, wrote

HELP = "measure the geometry at every norm site of a model on a text (default: SmolLM2-135M on the bundled corpus)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_options(p)
    p.add_argument("--exclude-first-token", action="store_true", help="drop each sequence's first token")
    p.add_argument("--bins", type=positive_int, default=180, help="histogram bins over 0-180 degrees (default: 180)")
    p.add_argument("--out", default="geonorm-report", help="report folder (default: geonorm-report)")
    p.add_argument("--checkpoint-every", type=positive_int, default=10_000, metavar="TOKENS",
                   help="write the report so far to OUT/checkpoint.json every this many tokens (default: 10000)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out (same options)")
    p.add_argument("--part", type=part, default=None, metavar="K/N",
                   help="count only the batches i with i %% N == K (0 <= K < N): one of N jobs that never "
                        "meet, e.g. a Slurm array; combine their reports with `geonorm merge` (torchrun "
                        "splits itself)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="where the per-token values are computed: 'torch' on the tensors' device (only 7 values "
                        "per token and site reach the host), 'core' with the native CPU core; 'auto' (default) = "
                        "torch for CUDA models, core for CPU ones")


def part(text: str) -> tuple[int, int]:
    """An argparse type: ``K/N`` with 0 <= K < N."""
    k, sep, n = text.partition("/")
    try:
        k_, n_ = int(k), int(n)
    except ValueError:
        k_ = n_ = -1
    if not sep or not (0 <= k_ < n_):
        raise argparse.ArgumentTypeError(f"{text!r}: need K/N with 0 <= K < N, e.g. 0/4")
    return k_, n_


def settings(args: argparse.Namespace) -> dict:
    """What a checkpoint must share with the run that resumes it (anything that changes the numbers)."""
    out = {k: getattr(args, k) for k in ("model", "text", "max_tokens", "seq_len", "batch_size", "dtype",
                                         "exclude_first_token", "bins")}
    if args.part is not None:
        out["part"] = list(args.part)
    return out


class _StopOnInterrupt:
    """The first Ctrl-C asks the run to stop after the batch in flight (then it checkpoints);
    a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self) -> _StopOnInterrupt:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ngeonorm analyze: stopping after this batch (Ctrl-C again to abort) ...", file=sys.stderr,
              flush=True)

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def __call__(self) -> bool:
        return self.requested


@preflight.holds_out_lock
def run(args: argparse.Namespace) -> int:
    from ..sources.distributed import launched, launched_by_torchrun

    if launched_by_torchrun():
        for option, value in (("--part", args.part), ("--device-map", args.device_map)):
            if value is not None:
                raise UsageError(f"{option} under torchrun: the processes already split the batches; "
                                 f"run {option} in a plain process")
    with launched(args.device or "cpu") as (group, device):
        if group is not None:
            args.device = device
        return _run(args, group)


def _run(args: argparse.Namespace, group) -> int:
    from ..sources.checkpoint import analyze_checkpointed

    lead = group is None or group.rank == 0  # the process that prints and writes the report
    out = preflight.writable_folder(args.out)
    existing = load_checkpoint(out)
    if args.resume and existing is None:
        raise UsageError(f"--resume: {args.out} holds no checkpoint to continue; run without --resume")
    if args.resume:
        existing.check_settings(settings(args), args.out)
    elif existing is not None and not existing.complete:
        raise UsageError(f"{args.out} holds an unfinished run ({existing.tokens} tokens counted): continue it "
                         f"with --resume, or choose another --out")
    check_model_options(args)
    preflight.disk_room(out, 2 * (preflight.REPORT_BYTES_FIXED + 256 * preflight.REPORT_BYTES_PER_SITE),
                        "the report and its checkpoint")
    model, _, batches, meta = load_workload(args)
    if group is not None:
        meta["processes"] = group.world
    with progress(args.max_tokens) if lead else contextlib.nullcontext() as bar, _StopOnInterrupt() as stop:
        # Whisper: the causal LayerNorm decoder's sites (the encoder is analyzed from Python)
        sites = model.site_names("decoder") if hasattr(model, "site_names") else None
        report, complete = analyze_checkpointed(
            model, batches, out, every=args.checkpoint_every, resume=args.resume, settings=settings(args),
            sites=sites, exclude_first_token=args.exclude_first_token, bins=args.bins, meta=meta,
            progress=bar, stop=stop, backend=args.backend, part=args.part)
    if not lead:
        return 0 if complete else INTERRUPTED
    print(report.table())
    print(wrote(report.save(out), args.out))
    if not complete:
        print(f"geonorm analyze: interrupted after {report.tokens} tokens: the partial report is in "
              f"{args.out}/; continue with the same command and --resume", file=sys.stderr)
        return INTERRUPTED
    return 0
