"""One report from the reports of disjoint token sets: processes, jobs of an array, texts.

:meth:`Report.merge <geonorm_core.analysis.report.Report.merge>` folds the accumulators (Chan's moments,
histogram counts) exactly; :func:`merge_reports` adds what a merge of files needs first:

* **compatibility** -- the same model, norm sites, widths ``d``, histogram bins and
  ``exclude_first_token``; otherwise :class:`IncompatibleReports` names every field that differs;
* **disjointness** -- a report made from a text carries the text's digest (``text_sha256``) and
  the batches it counted (``batches``: ``[start, stop, step]`` ranges of batch indices); two
  reports of the same text and batching that counted a batch twice are refused, and so is a
  report merged with an identical one when neither says where its tokens came from.  ``disjoint=True``
  is the user's word that the token sets are disjoint.

The merged metadata keeps what the inputs share; ``batches`` becomes the union, and what differs
is listed per input under ``parts``.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from .report import Report

__all__ = ["IncompatibleReports", "OverlappingReports", "batch_ranges", "batch_set", "merge_reports"]

#: Metadata that must be equal for token sets of one batching of one text to be comparable.
_BATCHING = ("text_sha256", "seq_len", "batch_size", "max_tokens")
#: Metadata a merge may not mix (the numbers would mean different things).
_MUST_MATCH = ("model", "model_name", "exclude_first_token", "bins")


class IncompatibleReports(ValueError):
    """Reports that do not measure the same thing (model, sites, d, bins, first token)."""


class OverlappingReports(ValueError):
    """Reports that may have counted the same tokens twice."""


def batch_ranges(indices: Iterable[int]) -> list[list[int]]:
    """Batch indices as few ``[start, stop, step]`` ranges (a round-robin share is one range)."""
    xs = sorted({int(i) for i in indices})
    out: list[list[int]] = []
    i = 0
    while i < len(xs):
        start = xs[i]
        if i + 1 == len(xs):
            out.append([start, start + 1, 1])
            break
        step = xs[i + 1] - start
        j = i + 1
        while j + 1 < len(xs) and xs[j + 1] - xs[j] == step:
            j += 1
        out.append([start, xs[j] + 1, step])
        i = j + 1
    return out


def batch_set(ranges: Sequence[Sequence[int]]) -> set[int]:
    """The batch indices of :func:`batch_ranges`' ranges."""
    return {i for start, stop, step in ranges for i in range(int(start), int(stop), int(step))}


def _differences(first: Report, other: Report) -> list[str]:
    diff = [k for k in _MUST_MATCH if first.meta.get(k) != other.meta.get(k)]
    if set(first.sites) != set(other.sites):
        diff.append("sites")
        return diff
    ds = {n: s.meta.get("d") for n, s in first.sites.items()}
    if any(other.sites[n].meta.get("d") != d for n, d in ds.items()):
        diff.append("d")
    if "bins" not in diff and any(
            q.histogram.bins != other.sites[n][name].histogram.bins
            for n, s in first.sites.items() for name, q in s.quantities.items()
            if name in other.sites[n].quantities):
        diff.append("bins")
    if not diff and any(s.meta != other.sites[n].meta for n, s in first.sites.items()):
        diff.append("site metadata")
    return diff


def _overlap(a: Report, b: Report) -> str | None:
    """Why ``a`` and ``b`` may share tokens (None: they cannot)."""
    provenance = ("text_sha256", "batches")
    if all(k in a.meta for k in provenance) and all(k in b.meta for k in provenance):
        if any(a.meta.get(k) != b.meta.get(k) for k in _BATCHING):
            return None  # another text, or the same text cut into other batches: other tokens
        both = batch_set(a.meta["batches"]) & batch_set(b.meta["batches"])
        if both:
            return f"both counted batch {min(both)} of the same text ({len(both)} batches in common)"
        return None
    if a.to_dict() == b.to_dict():
        return "they are identical"
    return None


def merge_reports(reports: Sequence[Report], *, disjoint: bool = False,
                  names: Sequence[str] | None = None, count_parts: bool = True) -> Report:
    """Merge reports of disjoint token sets into one (the inputs are not changed).

    Parameters
    ----------
    reports : two or more reports (one is returned as a copy).
    disjoint : the caller's word that the token sets are disjoint: skip the overlap check.
    names : what to call each report in errors (e.g. its folder); default ``#1``, ``#2`` ...
    count_parts : record how many reports were merged in the metadata (``merged_from``); the
        ranks of one run leave it out, so their report is the one-process report.

    Returns
    -------
    Report
        Token counts and histogram counts are the sums; means and SDs are Chan's merge, within
        1e-12 relative of one run over all the tokens.

    Raises
    ------
    IncompatibleReports
        naming the fields that differ (model, model_name, exclude_first_token, bins, sites, d).
    OverlappingReports
        when two reports may have counted the same tokens and ``disjoint`` is False.
    """
    reports = list(reports)
    if not reports:
        raise ValueError("reports: need at least one report to merge")
    names = list(names) if names is not None else [f"#{i + 1}" for i in range(len(reports))]
    first = reports[0]
    for name, other in zip(names[1:], reports[1:]):
        diff = _differences(first, other)
        if diff:
            raise IncompatibleReports(f"{name} cannot be merged with {names[0]}: they differ in "
                                      f"{', '.join(diff)}")
    if not disjoint:
        for i in range(len(reports)):
            for j in range(i + 1, len(reports)):
                why = _overlap(reports[i], reports[j])
                if why:
                    raise OverlappingReports(f"{names[j]} and {names[i]} may count the same tokens ({why}); "
                                             f"merge only reports of disjoint token sets, or say they are "
                                             f"disjoint (--disjoint)")
    merged = Report.from_dict(first.to_dict())
    for other in reports[1:]:
        merged.merge(other)
    merged.meta = _merged_meta([r.meta for r in reports])
    if not count_parts:
        del merged.meta["merged_from"]
    return merged


def _merged_meta(metas: list[dict]) -> dict:
    keys = [k for k in dict.fromkeys(k for m in metas for k in m) if k not in ("batches", "parts", "tokens")]
    shared = {k: metas[0][k] for k in keys if all(k in m and m[k] == metas[0][k] for m in metas)}
    differing = [k for k in keys if k not in shared]
    if differing:
        shared["parts"] = [{k: m.get(k) for k in differing} for m in metas]
    if all("batches" in m for m in metas):
        same_batching = all(all(m.get(k) == metas[0].get(k) for k in _BATCHING) for m in metas)
        if same_batching:
            shared["batches"] = batch_ranges(set().union(*(batch_set(m["batches"]) for m in metas)))
        else:
            for part, m in zip(shared.setdefault("parts", [{} for _ in metas]), metas):
                part["batches"] = m["batches"]
    if any(m.get("partial") for m in metas):
        shared["partial"] = True
    shared["merged_from"] = len(metas) + sum(int(m.get("merged_from", 1)) - 1 for m in metas)
    return shared
