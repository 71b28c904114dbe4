"""The torch adapter: stream a model's hidden states through the core while it runs.

The paper wrote every hidden vector of 1M tokens to disk (2-4 TB) to measure a
handful of statistics.  Here a forward hook on each norm site hands the site's
input ("hidden") and output ("post") to the core as they are produced -- CPU
tensors in place, fp32/fp16/bf16 as they are; CUDA tensors through reused pinned
buffers -- and per-token scalars are folded into mergeable accumulators, so
memory does not grow with the number of tokens.

Per site and token, the quantities of :mod:`geonorm_core.analysis.measure`.

Two backends compute the per-token values (``backend=``): ``"core"`` hands the rows to the
native core on the CPU (as above); ``"torch"`` computes them with torch ops where the tensors
live (:mod:`geonorm_core.analysis.measure_torch`), applies the token mask there, and moves only the
7 float64 values per token and site to the host -- for CUDA tensors into pinned memory
without blocking, with one synchronization per batch.  ``"auto"`` (the default) picks
``"torch"`` for CUDA tensors and ``"core"`` for CPU ones.  Both fill the same accumulators.

Padding tokens (``attention_mask == 0``) are excluded; ``exclude_first_token``
also drops each sequence's first real token (attention sinks carry the massive
activations the paper's 9-degree SDs hint at).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from .. import _arrays
from ..analysis.accumulate import SiteStats
from ..analysis.measure import BACKENDS, quantity_names, token_values
from ..analysis.measure_torch import token_values_torch
from ..analysis.report import Report
from . import distributed
from .batches import batch_on, real_tokens
from .interop import unwrap
from .sites import NormSite, find_norm_sites, hook_sites, hook_tensors


def check_backend(backend: Any) -> str:
    """``backend`` if it is one of :data:`BACKENDS`, else a ValueError naming it."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    return backend


def select_sites(model: torch.nn.Module, sites: Sequence[str] | None = None) -> list[NormSite]:
    """The norm sites to measure: by default every residual-stream site (q/k norms excluded).

    Parameters
    ----------
    sites : module names to measure instead (any site ``find_norm_sites`` reports).
    """
    found = find_norm_sites(model)
    if not found:
        raise ValueError(f"model ({type(model).__name__}) has no LayerNorm/RMSNorm norm sites to analyze")
    if sites is None:
        chosen = [s for s in found if s.residual]
        return chosen or found
    if isinstance(sites, str):
        sites = [sites]
    by_name = {s.name: s for s in found}
    missing = [n for n in sites if n not in by_name]
    if missing:
        listing = ", ".join(list(by_name)[:8]) + (" ..." if len(by_name) > 8 else "")
        raise ValueError(f"sites: no norm site named {missing}; this model has {len(by_name)}: {listing}")
    return [by_name[n] for n in sites]


class _HostBuffers:
    """CPU views of tensors: CPU tensors as they are, CUDA tensors via reused pinned buffers."""

    def __init__(self) -> None:
        self._pinned: dict[tuple, torch.Tensor] = {}

    def __call__(self, t: torch.Tensor, key: Any) -> torch.Tensor:
        t = t.detach()
        if t.device.type == "cpu":
            return t
        if t.device.type != "cuda":
            return t.cpu()
        buf = self._pinned.get(key)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            self._pinned[key] = buf
        buf.copy_(t, non_blocking=True)
        torch.cuda.current_stream(t.device).synchronize()
        return buf


class Analyzer:
    """Hooks on a model's norm sites that accumulate the geometry of every token it runs.

    The hooks run between torch's own ops, whose OpenMP pool keeps spinning for a
    while after each one, so a second geonorm thread contends with it; the analysis
    runs on one thread by default, which keeps its cost predictable (SmolLM2 on 2
    cores, two runs: 5.2% and 5.9% added to the forward pass with one thread,
    8.8% and 3.0% with two).

    Use as a context manager (hooks are removed on exit) and feed it batches::

        with Analyzer(model) as an:
            for batch in batches:
                an.feed(batch)
        report = an.report()

    ``backend``: ``"core"``, ``"torch"`` or ``"auto"`` (``"torch"`` for CUDA tensors, ``"core"``
    for CPU ones); see the module docstring.  With ``"torch"`` a hook never synchronizes the
    device: the values wait in (pinned) host buffers until :meth:`flush`, which :meth:`feed`,
    :meth:`count_only`, :meth:`report` and leaving the context call -- one wait per batch.

    ``row_sink``: a callable ``sink(site, hidden, post)`` that takes the rows instead of measuring
    them -- each site's real-token rows as NumPy ``(rows, d)`` arrays in the hook's dtype, on the
    host (what :func:`~geonorm_core.dumps.writing.dump` writes to disk).  The arrays may be views of
    buffers reused by the next forward pass: copy what you keep.

    Inside an initialized ``torch.distributed`` process group of several ranks, each rank feeds
    its own batches and :meth:`report` is collective: every rank must call it, and every rank
    gets the report of all ranks' tokens (merged from the accumulators' state, in rank order;
    :mod:`geonorm_core.sources.distributed`).  ``merge_ranks=False`` keeps each rank's report its own.

    A model dispatched by accelerate (``device_map=``, ``max_memory=``, ``offload_folder=``) is
    measured where each site runs; offloaded sites are found and their gain and bias read from
    the weights accelerate loads for the forward (:func:`geonorm_core.sources.sites.find_norm_sites`).
    """

    def __init__(self, model: torch.nn.Module, sites: Sequence[str] | None = None, *,
                 exclude_first_token: bool = False, bins: int = 180, meta: Mapping | None = None,
                 num_threads: int | None = 1, backend: str = "auto", merge_ranks: bool = True,
                 row_sink: Callable[[NormSite, np.ndarray, np.ndarray], None] | None = None) -> None:
        self.backend = check_backend(backend)
        self.merge_ranks = bool(merge_ranks)
        self.model = model
        self._wrapped = unwrap(model)  # once: a bridge's view is built from all its modules
        self.sites = select_sites(model, sites)
        self.exclude_first_token = bool(exclude_first_token)
        self.num_threads = num_threads
        self.row_sink = row_sink
        self.stats = {s.name: SiteStats(s.to_dict(), bins=bins) for s in self.sites}
        self.meta = {"model": type(model).__name__, "exclude_first_token": self.exclude_first_token,
                     "bins": bins, **dict(meta or {})}
        self._host = _HostBuffers()
        self._handles: list = []
        self._rows: np.ndarray | None = None  # (B, T) mask of the tokens to count
        self._gain = {s.name: _as_f64(s.gain) for s in self.sites}
        self._bias = {s.name: _as_f64(s.bias) for s in self.sites}
        self._params_on: dict[tuple, torch.Tensor | None] = {}   # gains and biases on a device
        self._index_on: dict[tuple, torch.Tensor | None] = {}    # the kept rows' indices on a device
        self._pending: list[tuple[str, torch.Tensor]] = []       # (site, 7 x n values) not yet folded
        self._events: dict[torch.device, Any] = {}               # per CUDA device: after its last copy

    # -- hooks -----------------------------------------------------------------------------
    def __enter__(self) -> Analyzer:
        self._handles += hook_sites(self.sites, self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.flush()

    def _hook(self, site: NormSite) -> Callable:
        def hook(module, args, kwargs, output):
            self._measure(site, *hook_tensors(args, kwargs, output))

        return hook

    def _measure(self, site: NormSite, hidden: torch.Tensor, post: torch.Tensor) -> None:
        if self.row_sink is not None:
            h = _arrays.as_array(self._host(hidden, (site.name, "hidden")), "hidden")
            p = _arrays.as_array(self._host(post, (site.name, "post")), "post")
            keep = self._keep(tuple(h.shape[:-1]))
            self.row_sink(site, _kept(h, keep), _kept(p, keep))
            return
        backend = self.backend
        if backend == "auto":
            backend = "torch" if hidden.device.type == "cuda" else "core"
        if backend == "torch":
            self._measure_on_device(site, hidden, post)
            return
        h = self._host(hidden, (site.name, "hidden"))
        p = self._host(post, (site.name, "post"))
        values = token_values(h, p, gain=self._gain[site.name], bias=self._bias[site.name], eps=site.eps,
                              num_threads=self.num_threads)
        keep = self._keep(values["angle_hidden"].shape)
        if keep is not None:
            values = {k: v[keep] for k, v in values.items()}
        self.stats[site.name].update(**values)

    def _measure_on_device(self, site: NormSite, hidden: torch.Tensor, post: torch.Tensor) -> None:
        """The torch backend: values on the tensors' device, only they cross to the host.

        Nothing here waits for the device: the row indices were uploaded once per batch, the
        copy to pinned memory is non_blocking, and an event recorded after it is what
        :meth:`flush` waits on."""
        dev = hidden.device
        values = token_values_torch(hidden, post, gain=self._param(site.name, "gain", dev),
                                    bias=self._param(site.name, "bias", dev), eps=site.eps,
                                    rows=self._row_index(tuple(hidden.shape[:-1]), dev))
        if dev.type == "cuda":
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(dev))
            self._events[dev] = event
        else:
            host = values.cpu()
        self._pending.append((site.name, host))

    def _param(self, name: str, which: str, dev: torch.device) -> torch.Tensor | None:
        key = (name, which, dev)
        if key not in self._params_on:
            v = (self._gain if which == "gain" else self._bias)[name]
            self._params_on[key] = None if v is None else torch.from_numpy(v).to(dev)
        return self._params_on[key]

    def _row_index(self, lead: tuple, dev: torch.device) -> torch.Tensor | None:
        """Indices of the rows to count among a site's flattened rows, on ``dev`` (None: all)."""
        key = (lead, dev)
        if key not in self._index_on:
            keep = self._keep(lead)
            idx = None
            if keep is not None and not keep.all():
                idx = torch.from_numpy(np.flatnonzero(keep).astype(np.int64))
                if dev.type == "cuda":  # from pinned memory the upload does not wait for the stream
                    idx = idx.pin_memory().to(dev, non_blocking=True)
                else:
                    idx = idx.to(dev)
            self._index_on[key] = idx
        return self._index_on[key]

    def flush(self) -> None:
        """Fold the torch backend's pending values into the accumulators: one wait per CUDA device
        for the copies of the last batch, then per-site updates on the host (a no-op for "core")."""
        if not self._pending:
            return
        for event in self._events.values():
            event.synchronize()
        self._events.clear()
        pending, self._pending = self._pending, []
        for name, host in pending:
            arr = host.numpy()
            self.stats[name].update(**dict(zip(quantity_names(arr.shape[0] > 4), arr)))

    def _keep(self, lead: tuple) -> np.ndarray | None:
        """Which of a site's rows are real tokens (None: all of them)."""
        rows = self._rows
        if rows is None or lead == rows.shape:
            return rows
        if len(lead) == 2 and lead == rows.shape[::-1]:  # (T, B) layouts
            return rows.T
        if len(lead) > 2 and lead[:2] == rows.shape:  # per-head q/k norms: (B, T, heads) rows
            return np.broadcast_to(rows.reshape(rows.shape + (1,) * (len(lead) - 2)), lead)
        if len(lead) == 3 and (lead[0], lead[2]) == rows.shape:  # q/k norms after the head transpose
            return np.broadcast_to(rows[:, None, :], lead)
        if lead == (rows.size,):  # flattened (B*T, d) rows: OPT's MLP norm
            return rows.reshape(-1)
        return None  # another stack's sequence (e.g. an encoder's frames): every row counts

    # -- batches ---------------------------------------------------------------------------
    def feed(self, batch: Mapping[str, Any]) -> int:
        """Run the model on one tokenizer batch; return the number of tokens counted."""
        wrapped = self._wrapped  # TransformerLens / nnsight: their model, their calling convention
        runs = self.model if wrapped is None else wrapped.inner
        inputs = batch_on(input_device(runs), batch)
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        rows = self.token_mask(tuple(ids.shape), mask)
        self.count_only(rows)
        try:
            with torch.inference_mode():
                if wrapped is None:
                    self.model(**inputs)
                else:
                    wrapped.call(inputs)
        finally:
            self.count_only(None)
        return int(rows.sum())

    def token_mask(self, shape: tuple[int, int], attention_mask: Any = None) -> np.ndarray:
        """The (batch, seq_len) bool mask of the tokens to count: not padding, and not each
        sequence's first real token when ``exclude_first_token``."""
        return real_tokens(shape, attention_mask, exclude_first_token=self.exclude_first_token)

    def count_only(self, rows: np.ndarray | None) -> None:
        """Count only the tokens where the (batch, seq_len) mask ``rows`` is True in the forward
        passes that follow (None: every row).  :meth:`feed` sets it from its batch; a caller that
        runs the model itself (a training loop, :class:`~geonorm_core.experiments.monitor.GeometryMonitor`)
        sets it here.  Values still pending from earlier passes are folded first."""
        self.flush()
        self._rows = None if rows is None else np.asarray(rows, dtype=bool)
        self._index_on.clear()

    def report(self) -> Report:
        """The report of the tokens fed so far (of every rank's, inside a process group: a
        collective call unless ``merge_ranks=False``)."""
        self.flush()
        mine = Report(meta=dict(self.meta), sites={k: v.copy() for k, v in self.stats.items()})
        return distributed.merged(distributed.current(self.merge_ranks), mine)


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a model's inputs go: its first parameter's device, or for a model dispatched by
    accelerate (``hf_device_map``) the device of its first part (the CPU for a part on disk)."""
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        first = next(iter(device_map.values()))
        if isinstance(first, int):
            return torch.device("cuda", first)
        return torch.device("cpu" if first in ("disk", "meta") else first)
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def _kept(a: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    """A site's rows as (rows, d), only the kept ones (a copy), or all of them (a view)."""
    a = a.reshape(-1, a.shape[-1])
    return a if keep is None else a[keep.reshape(-1)]


def _as_f64(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.asarray(a, dtype=np.float64)


def analyze(model: torch.nn.Module, batches: Iterable[Mapping[str, Any]], *, sites: Sequence[str] | None = None,
            exclude_first_token: bool = False, bins: int = 180, meta: Mapping | None = None,
            progress: Callable[[int], None] | None = None, num_threads: int | None = 1,
            backend: str = "auto", merge_ranks: bool = True) -> Report:
    """Run ``model`` over ``batches`` and measure the geometry at every norm site.

    Parameters
    ----------
    model : a torch / Hugging Face model (any device; set ``eval()`` yourself or via ``load_model``),
        or one wrapped by TransformerLens (``TransformerBridge``) or nnsight (``LanguageModel``):
        it is run in its own calling convention and its sites carry the names its users see
        (:mod:`geonorm_core.sources.interop`).
    batches : dicts as tokenizers make them (``input_ids``, optional ``attention_mask``).
    sites : module names to measure (default: every residual-stream norm site).
    exclude_first_token : drop each sequence's first real token.
    bins : histogram bins for the angle quantities over [0, 180] degrees.
    progress : called with the number of tokens counted after each batch.
    num_threads : threads for the core inside the hooks (default 1; see :class:`Analyzer`).
    backend : ``"auto"`` (default: ``"torch"`` for CUDA tensors, ``"core"`` for CPU ones), ``"core"``
        (the native core on host rows) or ``"torch"`` (torch ops on the tensors' device, only the
        per-token values cross to the host).  Same quantities within the accuracy contract.
    merge_ranks : inside an initialized ``torch.distributed`` process group of several ranks, each
        rank passes its own batches and every rank returns the merged report of all of them
        (default); False: each rank's own report.  A rank that fails makes every rank raise
        :class:`geonorm_core.sources.distributed.RankFailed` naming it.

    Returns
    -------
    Report
        ``report.sites[name]`` holds each site's statistics (``.angle_hidden.mean`` ...),
        ``report.table()`` the paper's Tables 2-4 for this model.
    """
    group = distributed.current(merge_ranks)
    shared = contextlib.nullcontext() if group is None else group.failures_shared()
    with shared, Analyzer(model, sites, exclude_first_token=exclude_first_token, bins=bins, meta=meta,
                          num_threads=num_threads, backend=backend, merge_ranks=False) as an:
        tokens = 0
        for batch in batches:
            tokens += an.feed(batch)
            if progress is not None:
                progress(tokens)
    if group is not None:
        tokens = sum(group.exchange(tokens))
    if tokens == 0:
        raise ValueError("batches: no tokens were analyzed (empty corpus, or every token masked out)")
    return distributed.merged(group, an.report())
