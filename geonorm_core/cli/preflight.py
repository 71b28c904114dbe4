"""Checks made before any model runs, so a long command fails in its first second, not its last hour."""
from __future__ import annotations

import argparse
import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..durable import folder_lock
from ..sources.distributed import launched_by_torchrun
from .errors import CommandError, UsageError

#: What a report folder takes at most per norm site (JSON with 7 quantities x 180 bins, CSV,
#: Markdown) and for its four figures, generously: measured 0.4 MB for SmolLM2's 61 sites.
REPORT_BYTES_PER_SITE = 64 << 10
REPORT_BYTES_FIXED = 4 << 20


def writable_folder(path: str, option: str = "--out") -> Path:
    """Create ``path`` if needed and prove a file can be written in it (then removed)."""
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".geonorm-probe-"):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UsageError(f"{option} {path}: cannot write there ({reason}); choose a folder you can write to") from None
    return folder


def holds_out_lock(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command holding the advisory lock of its ``--out`` folder (:func:`geonorm_core.durable.folder_lock`):
    a second geonorm writing into the same folder fails at once with a one-line error naming the
    holder, and a lock left by a killed run is taken over."""
    @functools.wraps(run)
    def locked(args: argparse.Namespace) -> int:
        folder = writable_folder(args.out)
        if launched_by_torchrun() and os.environ.get("RANK", "0") != "0":
            return run(args)   # one job of torchrun's processes: rank 0 holds the folder for all of them
        with folder_lock(folder, f"geonorm {getattr(args, 'command', None) or 'command'}"):
            return run(args)
    return locked


def disk_room(folder: Path, need: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < need:
        raise CommandError(f"{folder}: {free / 1e6:.1f} MB free, {what} needs about {need / 1e6:.1f} MB; "
                           f"free some space or choose another folder")


def readable_text(path: str | None) -> None:
    """``--text``: a readable UTF-8 file (None: the bundled corpus)."""
    if path is None:
        return
    from ..models.corpus import check_text

    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"--text {path}: no such file" + (" (it is a folder)" if p.is_dir() else ""))
    if not os.access(p, os.R_OK):
        raise UsageError(f"--text {path}: not readable (permission denied)")
    try:
        check_text(p)  # read a block at a time: a 400 MB text costs no 400 MB
    except ValueError as exc:
        raise CommandError(f"--text {path}: {exc}") from None


def model_resolves(name: str) -> str:
    """``--model``: the name resolves to an installed model, without loading it."""
    from ..models.registry import resolve_model

    return resolve_model(name)


def device_and_dtype(device: str, dtype: str) -> None:
    """``--device``/``--dtype``: torch knows them and the device is there."""
    from ..models.loading import import_torch_side, resolve_device, resolve_dtype

    torch, _ = import_torch_side()
    try:
        resolve_dtype(torch, dtype)
    except ValueError as exc:
        raise UsageError(f"--dtype {dtype}: {exc}") from None
    try:
        resolve_device(torch, device)
    except ValueError as exc:
        raise UsageError(f"--device {device}: {exc}") from None
