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

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..analysis.merging import batch_ranges
from ..analysis.report import Report
from ..durable import write_json
from . import distributed

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
    ranks: list = field(default_factory=list)        # each rank's own report, when several ranks made it
    rank_tokens: list = field(default_factory=list)  # the tokens each of them counted

    def check_settings(self, settings: Mapping, where: str | os.PathLike) -> None:
        """Raise ValueError naming every setting that differs from the ones this run was made with."""
        changed = [k for k in sorted(set(self.settings) | set(settings)) if self.settings.get(k) != settings.get(k)]
        if changed:
            what = "; ".join(f"{k}: {self.settings.get(k)!r} then, {settings.get(k)!r} now" for k in changed)
            raise ValueError(f"the checkpoint in {where} was made with other settings ({what}); resume with the "
                             f"same ones, or start a new run in another folder")

    def to_dict(self) -> dict:
        d = {"format": _FORMAT, "version": 1, "batches": self.batches, "tokens": self.tokens,
             "complete": self.complete, "settings": self.settings, "report": self.report.to_dict()}
        if self.ranks:
            d["ranks"] = [r.to_dict() for r in self.ranks]
            d["rank_tokens"] = list(self.rank_tokens)
        return d


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
                          complete=bool(d.get("complete")),
                          ranks=[Report.from_dict(r) for r in d.get("ranks", [])],
                          rank_tokens=[int(t) for t in d.get("rank_tokens", [])])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ValueError(f"{path} is not a checkpoint geonorm can resume from ({exc})") from None


def analyze_checkpointed(model: Any, batches: Iterable[Mapping[str, Any]], out_dir: str | os.PathLike, *,
                         every: int = 10_000, resume: bool = False, settings: Mapping | None = None,
                         sites: Sequence[str] | None = None, exclude_first_token: bool = False, bins: int = 180,
                         meta: Mapping | None = None, progress: Callable[[int], None] | None = None,
                         stop: Callable[[], bool] | None = None, num_threads: int | None = 1,
                         backend: str = "auto", part: tuple[int, int] | None = None,
                         merge_ranks: bool = True) -> tuple[Report, bool]:
    """:func:`geonorm_core.sources.adapter.analyze`, checkpointed to ``out_dir`` as it goes.

    Parameters
    ----------
    every : write the checkpoint after the batch (the round of batches, with several ranks or a
        ``part``) that brings the tokens counted since the last one to at least this many.
    resume : continue from ``out_dir``'s checkpoint: its report is restored, its batches are
        skipped (not run), and the run carries on.  A finished checkpoint returns its report.
    settings : what must be equal to resume (model, text, sequence length, ...): stored in the
        checkpoint and compared on resume (a ValueError names what differs).
    stop : polled after every batch; when it returns True the checkpoint is written and the
        partial report returned (how the command line handles Ctrl-C).
    part : ``(k, n)``: count only the batches ``i`` with ``i % n == k`` (one job of ``n`` that never
        meet, e.g. a Slurm array; merge their reports with ``geonorm merge``).
    merge_ranks : inside an initialized ``torch.distributed`` process group of several ranks (as
        ``torchrun`` makes), every rank passes the *same* batches and counts those with
        ``i % world == rank``; the ranks agree after every round of ``world`` batches (a failure
        or a stop on any rank ends all of them), rank 0 writes the checkpoint, and every rank
        returns the merged report.  False: each rank runs alone.
    The other parameters are :func:`~geonorm_core.sources.adapter.analyze`'s.

    The report's meta records the batches counted (``batches``: ``[start, stop, step]`` ranges of
    batch indices), so :func:`geonorm_core.analysis.merging.merge_reports` can refuse to count a batch twice.
    A checkpoint made by ``n`` ranks resumes with ``n`` ranks to the bitwise-same report; with
    another number of ranks (or in one process) to the same report within the merge's 1e-12.

    Returns
    -------
    (report, complete)
        ``complete`` is False when ``stop`` ended the run early; the report's meta then says
        ``partial: True``.
    """
    from .adapter import Analyzer

    if every < 1:
        raise ValueError(f"every must be a positive number of tokens, got {every}")
    group = distributed.current(merge_ranks)
    if group is not None and part is not None:
        raise ValueError("part: a run inside a process group already splits its batches by rank; "
                         "pass part=None")
    rank, world = (group.rank, group.world) if group is not None else (part or (0, 1))
    if not (0 <= rank < world):
        raise ValueError(f"part: need (k, n) with 0 <= k < n, got {part}")
    settings = dict(settings or {})
    with contextlib.nullcontext() if group is None else group.failures_shared():
        return _run(Analyzer, model, batches, out_dir, every, resume, settings, sites, exclude_first_token,
                    bins, meta, progress, stop, num_threads, backend, group, rank, world)


def _run(Analyzer, model, batches, out_dir, every, resume, settings, sites, exclude_first_token, bins, meta,
         progress, stop, num_threads, backend, group, rank, world) -> tuple[Report, bool]:
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
                  num_threads=num_threads, backend=backend, merge_ranks=False) as an:
        mine = 0  # the tokens this rank counted
        if restored is not None:
            if set(restored.report.sites) != set(an.stats):
                raise ValueError(f"the checkpoint in {out_dir} measured other norm sites than this model has")
            own = None
            if group is not None and len(restored.ranks) == group.world:  # the same split: bitwise
                own, mine = restored.ranks[rank], restored.rank_tokens[rank]
            elif group is None or rank == 0:  # one process, or another split: the whole so far on rank 0
                own, mine = restored.report, tokens
            if own is not None:
                an.stats = {name: own.sites[name] for name in an.stats}

        def save(complete: bool) -> Report:
            own = an.report()
            states = [own] if group is None else [Report.from_dict(d) for d in group.exchange(own.to_dict())]
            report = Report.from_dict(states[0].to_dict())
            for other in states[1:]:
                report.merge(other)
            whole = group is not None or world == 1
            counted = range(done_batches) if whole else range(rank, done_batches, world)
            report.meta["batches"] = batch_ranges(counted)
            if not complete:
                report.meta.update(partial=True, tokens=tokens)
            if rank == 0 or group is None:
                rank_tokens = [mine] if group is None else group_tokens
                save_checkpoint(out_dir, Checkpoint(report, done_batches, tokens, settings, complete,
                                                    ranks=states if len(states) > 1 else [],
                                                    rank_tokens=rank_tokens if len(states) > 1 else []))
            return report

        last = tokens
        stopped = False
        group_tokens = [mine]
        seen = done_batches

        def end_of_round(batches_seen: int) -> bool:
            """Agree on the tokens counted and on stopping; checkpoint when due. True: stop."""
            nonlocal tokens, done_batches, last, group_tokens
            asked = stop is not None and stop()
            if group is not None:
                answers = group.exchange((mine, asked))
                group_tokens = [t for t, _ in answers]
                asked = any(a for _, a in answers)
                tokens = sum(group_tokens)
            else:
                tokens = mine
            done_batches = batches_seen
            if progress is not None:
                progress(tokens)
            if asked:
                return True
            if tokens - last >= every:
                save(False)
                last = tokens
            return False

        for i, batch in enumerate(batches):
            if i < done_batches:
                continue  # counted before the interruption
            seen = i + 1
            if i % world == rank:
                mine += an.feed(batch)
            if seen % world == 0 and end_of_round(seen):
                stopped = True
                break
        if not stopped and seen > done_batches:
            end_of_round(seen)  # the last, partial round
        if tokens == 0:
            raise ValueError("batches: no tokens were analyzed (empty corpus, or every token masked out)")
        return save(not stopped), not stopped
