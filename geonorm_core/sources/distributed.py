"""More than one process: geonorm inside a ``torch.distributed`` process group (``torchrun``).

geonorm writes no launcher and no transport: ``torchrun`` starts the processes and
``torch.distributed`` connects them (gloo on CPUs, NCCL on GPUs).  Everything geonorm sends
between them goes through one collective, :meth:`Group.exchange`, over a gloo group of its own
(so it works the same beside NCCL), with a timeout: every rank hands in its payload *and its
error, if it has one*; when any rank has failed, every rank raises :class:`RankFailed` naming
the failing rank and its one-line error, and a rank that died (killed, out of memory) makes the
others fail within the timeout instead of waiting forever.

What crosses is the accumulators' mergeable form (``Report.to_dict``: Chan's moments and the
histogram counts), never per-token values.

The batch assignment rule: with ``world`` processes, batch ``i`` (counting from 0 in the order
the batches come) is counted by rank ``i % world`` -- :func:`is_mine`.  The same rule splits a
dump's shards, and ``geonorm analyze --part K/N`` uses it for jobs that never meet (a Slurm array).
"""
from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from typing import Any

__all__ = ["DEFAULT_TIMEOUT", "Group", "RankFailed", "current", "is_mine", "launched", "merged"]

#: Seconds a rank waits for the others at a collective before giving up (``GEONORM_DIST_TIMEOUT``).
DEFAULT_TIMEOUT = 600.0


class RankFailed(ValueError):
    """Another rank (or this one) failed; the message names the rank and its error."""


def is_mine(index: int, rank: int, world: int) -> bool:
    """Whether item ``index`` (a batch, a dump shard) is counted by ``rank`` of ``world``:
    ``index % world == rank``."""
    return index % world == rank


def _timeout() -> float:
    raw = os.environ.get("GEONORM_DIST_TIMEOUT")
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        raise ValueError(f"GEONORM_DIST_TIMEOUT={raw!r}: need a number of seconds") from None


class Group:
    """The initialized default process group as geonorm uses it: ``rank``, ``world`` and
    :meth:`exchange`, the one collective geonorm calls."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.timeout = _timeout()
        self._pg = _control_group(dist, self.timeout)

    def mine(self, index: int) -> bool:
        """Whether item ``index`` is this rank's (:func:`is_mine`)."""
        return is_mine(index, self.rank, self.world)

    def exchange(self, payload: Any = None, error: BaseException | str | None = None) -> list[Any]:
        """Every rank's ``payload``, in rank order, on every rank (an all-gather of picklable data).

        ``error``: this rank failed; the others learn it here.  Raises :class:`RankFailed`
        when any rank handed in an error (the lowest such rank is named), or when a rank does
        not answer within the timeout (it died, or hangs).
        """
        if isinstance(error, BaseException):
            error = _one_line(error)
        out: list[Any] = [None] * self.world
        try:
            self._dist.all_gather_object(out, (error, payload), group=self._pg)
        except RuntimeError as exc:  # gloo: a peer closed its connection, or the timeout passed
            raise RankFailed(f"another process stopped answering rank {self.rank} (killed, or failed without "
                             f"a word; waited up to {self.timeout:g} s, GEONORM_DIST_TIMEOUT): "
                             f"{_one_line(exc)[:200]}") from None
        for r, (err, _) in enumerate(out):
            if err is not None:
                raise RankFailed(err if err.startswith("rank ") else f"rank {r}: {err}")
        return [p for _, p in out]

    @contextlib.contextmanager
    def failures_shared(self) -> Iterator[None]:
        """Run a rank's part; if it raises, hand the error to the others (who are at their next
        :meth:`exchange`) before raising it here too."""
        try:
            yield
        except BaseException as exc:
            if not isinstance(exc, RankFailed) and not getattr(exc, "_geonorm_shared", False):
                try:
                    exc._geonorm_shared = True  # an outer failures_shared does not hand it in again
                except AttributeError:  # pragma: no cover - exceptions without a __dict__
                    pass
                try:
                    self.exchange(None, error=f"rank {self.rank}: {_one_line(exc)}")
                except RankFailed:
                    pass
            raise


def merged(group: Group | None, report: Any) -> Any:
    """``report`` merged with every other rank's, in rank order (the same on every rank);
    ``report`` itself without a group.  Only the accumulators' state crosses."""
    if group is None:
        return report
    from ..analysis.merging import merge_reports
    from ..analysis.report import Report

    states = group.exchange(report.to_dict())
    return merge_reports([Report.from_dict(s) for s in states], disjoint=True, count_parts=False)


def _one_line(exc: BaseException | str) -> str:
    if isinstance(exc, str):
        return " ".join(exc.split())
    return " ".join(str(exc).split()) or type(exc).__name__


_CONTROL: dict[int, Any] = {}


def _control_group(dist: Any, timeout: float) -> Any:
    """A gloo group over every rank for geonorm's exchanges (the default one when it is gloo)."""
    default = dist.group.WORLD
    if dist.get_backend() == "gloo":
        return default
    key = id(default)
    if key not in _CONTROL:
        _CONTROL[key] = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout))
    return _CONTROL[key]


def current(merge: bool = True) -> Group | None:
    """The process group geonorm merges over: None unless ``merge`` and torch.distributed is
    initialized with more than one rank."""
    if not merge:
        return None
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch without distributed support
        return None
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return Group()


def launched_by_torchrun() -> bool:
    """Whether this process is one of several that ``torchrun`` started (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


@contextlib.contextmanager
def launched(device: str = "cpu") -> Iterator[tuple[Group | None, str]]:
    """Join the process group ``torchrun`` set up in the environment, for one command.

    Yields ``(group, device)``: ``group`` is None in a plain run.  Under torchrun each rank runs
    on its own device -- CUDA ``LOCAL_RANK`` when ``device`` is a CUDA device (NCCL), else the
    CPU with its share of the cores (gloo) -- and the group is destroyed on exit.  A rank whose
    command fails tells the others (:meth:`Group.failures_shared`).
    """
    if not launched_by_torchrun():
        yield None, device
        return
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    timeout = datetime.timedelta(seconds=_timeout())
    if str(device).startswith("cuda") and torch.cuda.is_available():
        device = f"cuda:{local_rank % torch.cuda.device_count()}"
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        from ..runtime import set_num_threads

        device = "cpu"
        share = max(1, (os.cpu_count() or 1) // max(1, local_world))  # torchrun sets OMP_NUM_THREADS=1
        torch.set_num_threads(share)
        set_num_threads(share)
        backend = "gloo"
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend=backend, timeout=timeout)
    try:
        group = current()
        if group is None:
            yield None, device
            return
        with group.failures_shared():
            yield group, device
        group.exchange(None)  # the last word: every rank finished (or learns who did not)
    finally:
        if created:
            _CONTROL.clear()
            dist.destroy_process_group()
