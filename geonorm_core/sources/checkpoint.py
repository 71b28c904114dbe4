"""Long analyses that never lose their work: the mergeable report, checkpointed as it grows.

A :class:`~geonorm_core.analysis.report.Report` holds the exact state of every accumulator (Chan's
moments with their compensation terms, histogram counts), so a run's progress is that report
plus the number of batches fed.  :func:`analyze_checkpointed` writes both atomically
(:mod:`geonorm_core.durable`: a temporary file, fsync, rename) to ``checkpoint.json`` in the
output folder every ``every`` tokens and when asked to stop; with ``resume=True`` it reloads
them, skips the batches already counted and carries on.  The batches must be the same ones
in the same order (:func:`geonorm_core.models.corpus.token_batches` on the same text and settings is
deterministic), and the settings the checkpoint was made with must match: then the resumed
run ends with the report an uninterrupted run gives, bitwise.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..analysis.report import Report
from ..durable import write_json

__all__ = ["CHECKPOINT_NAME", "Checkpoint", "analyze_checkpointed", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.json"
_FORMAT = "geonorm-checkpoint"


@dataclass
class Checkpoint:
    """A run's progress: its report so far, the batches and tokens counted, the settings that
    must match to resume, and whether the run finished."""

    report: Report
    batches: int
    tokens: int
    settings: dict = field(default_factory=dict)
    complete: bool = False

    def check_settings(self, settings: Mapping, where: str | os.PathLike) -> None:
        """Raise ValueError naming every setting that differs from the ones this run was made with."""
        changed = [k for k in sorted(set(self.settings) | set(settings)) if self.settings.get(k) != settings.get(k)]
        if changed:
            what = "; ".join(f"{k}: {self.settings.get(k)!r} then, {settings.get(k)!r} now" for k in changed)
            raise ValueError(f"the checkpoint in {where} was made with other settings ({what}); resume with the "
                             f"same ones, or start a new run in another folder")

    def to_dict(self) -> dict:
        return {"format": _FORMAT, "version": 1, "batches": self.batches, "tokens": self.tokens,
                "complete": self.complete, "settings": self.settings, "report": self.report.to_dict()}


def save_checkpoint(out_dir: str | os.PathLike, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` to ``out_dir/checkpoint.json`` atomically; return the path."""
    path = Path(out_dir) / CHECKPOINT_NAME
    write_json(path, checkpoint.to_dict())
    return path


def load_checkpoint(out_dir: str | os.PathLike) -> Checkpoint | None:
    """The checkpoint in ``out_dir`` (None when there is none).

    Raises
    ------
    ValueError
        when the file is there but is not a geonorm checkpoint that this version reads.
    """
    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if d.get("format") != _FORMAT or d.get("version") != 1:
            raise ValueError(f"format {d.get('format')!r} version {d.get('version')!r}")
        return Checkpoint(report=Report.from_dict(d["report"]), batches=int(d["batches"]),
                          tokens=int(d["tokens"]), settings=dict(d.get("settings", {})),
                          complete=bool(d.get("complete")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ValueError(f"{path} is not a checkpoint geonorm can resume from ({exc})") from None


def analyze_checkpointed(model: Any, batches: Iterable[Mapping[str, Any]], out_dir: str | os.PathLike, *,
                         every: int = 10_000, resume: bool = False, settings: Mapping | None = None,
                         sites: Sequence[str] | None = None, exclude_first_token: bool = False, bins: int = 180,
                         meta: Mapping | None = None, progress: Callable[[int], None] | None = None,
                         stop: Callable[[], bool] | None = None, num_threads: int | None = 1,
                         backend: str = "auto") -> tuple[Report, bool]:
    """:func:`geonorm_core.sources.adapter.analyze`, checkpointed to ``out_dir`` as it goes.

    Parameters
    ----------
    every : write the checkpoint after the batch that brings the tokens counted since the last
        one to at least this many.
    resume : continue from ``out_dir``'s checkpoint: its report is restored, its batches are
        skipped (not run), and the run carries on.  A finished checkpoint returns its report.
    settings : what must be equal to resume (model, text, sequence length, ...): stored in the
        checkpoint and compared on resume (a ValueError names what differs).
    stop : polled after every batch; when it returns True the checkpoint is written and the
        partial report returned (how the command line handles Ctrl-C).
    The other parameters are :func:`~geonorm_core.sources.adapter.analyze`'s.

    Returns
    -------
    (report, complete)
        ``complete`` is False when ``stop`` ended the run early; the report's meta then says
        ``partial: True``.
    """
    from .adapter import Analyzer

    if every < 1:
        raise ValueError(f"every must be a positive number of tokens, got {every}")
    settings = dict(settings or {})
    done_batches, tokens = 0, 0
    restored = None
    if resume:
        restored = load_checkpoint(out_dir)
        if restored is None:
            raise ValueError(f"no checkpoint to resume in {out_dir} (run without --resume to start)")
        restored.check_settings(settings, out_dir)
        if restored.complete:
            return restored.report, True
        done_batches, tokens = restored.batches, restored.tokens
    with Analyzer(model, sites, exclude_first_token=exclude_first_token, bins=bins, meta=meta,
                  num_threads=num_threads, backend=backend) as an:
        if restored is not None:
            if set(restored.report.sites) != set(an.stats):
                raise ValueError(f"the checkpoint in {out_dir} measured other norm sites than this model has")
            an.stats = {name: restored.report.sites[name] for name in an.stats}

        def save(complete: bool) -> Report:
            report = an.report()
            if not complete:
                report.meta.update(partial=True, tokens=tokens)
            save_checkpoint(out_dir, Checkpoint(report, done_batches, tokens, settings, complete))
            return report

        last = tokens
        stopped = False
        for i, batch in enumerate(batches):
            if i < done_batches:
                continue  # counted before the interruption
            tokens += an.feed(batch)
            done_batches = i + 1
            if progress is not None:
                progress(tokens)
            if stop is not None and stop():
                stopped = True
                break
            if tokens - last >= every:
                save(False)
                last = tokens
        if tokens == 0:
            raise ValueError("batches: no tokens were analyzed (empty corpus, or every token masked out)")
        return save(not stopped), not stopped
