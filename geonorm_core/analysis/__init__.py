"""From rows to a report: the per-token quantities of a norm site (:mod:`.measure`, and
:mod:`.measure_torch` on the tensors' own device), the mergeable accumulators (:mod:`.accumulate`),
and the report with its tables and figures (:mod:`.report`, :mod:`.figures`).

Nothing here knows where rows come from: every source (live hooks, dumps, caches) hands rows to
:func:`.measure.token_values` and fills :class:`.accumulate.SiteStats`.
"""
