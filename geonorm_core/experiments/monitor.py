"""Geometry during training: the per-site statistics of every k-th step, on a time axis.

:class:`GeometryMonitor` attaches to any torch training loop (or, through
:meth:`GeometryMonitor.as_trainer_callback`, to a Hugging Face ``Trainer``) and, on the
steps ``step % every == 0``, measures the training forward pass of that step at every norm
site -- the quantities of :mod:`geonorm_core.analysis.measure` (angle with **1**, norms, rotation,
LN-RMS gap; docs/identities.md) -- into a :class:`Timeline`: step -> :class:`~geonorm_core.analysis.report.Report`,
plus any scalars logged beside them (the training loss).

A plain loop::

    monitor = GeometryMonitor(model, every=20)
    with monitor:                                   # attach(); detach() on exit
        for step, batch in enumerate(batches):
            with monitor.record(step):              # measures the forward on steps 0, 20, 40, ...
                out = model(**batch, labels=batch["input_ids"])
            out.loss.backward(); opt.step(); opt.zero_grad()
            monitor.log(step, loss=out.loss)
    monitor.timeline.plot("geometry.png"); monitor.timeline.to_json("geometry.json")

``monitor.step(step)`` called once per iteration before the forward does the same without a
``with`` block: it closes the previous step's recording and opens this one's when it is due.

How it records, and why it cannot change training
-------------------------------------------------
Nothing is registered on the model between recordings: on a recorded step a fresh
:class:`~geonorm_core.sources.adapter.Analyzer` (the same hooks and per-token math as ``analyze``)
is attached for the step's forward(s), and removed after.  A fresh one per step because
training changes the gains and biases that the LN-RMS gap (G9) uses, and the Analyzer reads
them when it is built; building it identifies the norm sites again (a tiny probe forward per
site: about 2 ms per site on one CPU thread, more where torch's thread pool contends).  Only
recorded steps pay anything: ``record()`` on a step that is not due costs about 2 µs, ``step()``
0.5 µs, and no hook runs.  The hooks read detached tensors into NumPy and
return nothing, so activations, gradients and the global RNG are untouched (the tests check
bitwise-equal parameters after training with and without a monitor).  A forward pre-hook on
the model, present only while recording, reads the call's ``input_ids``/``attention_mask``:
padding tokens are not counted, ``exclude_first_token`` drops each sequence's first token,
and ``max_tokens_per_step`` counts only the first N real tokens of the step (in batch order,
across gradient-accumulation micro-batches), so every step is summarized over comparable
samples.  The cap selects what is counted, not what is computed: the core still runs over
every row (its cost, O(tokens * d) per site, is small beside the forward pass).

Caveats: every forward of the model between the start and the end of a recording is counted,
so keep evaluation passes out of a recorded step (the Trainer callback does: evaluation runs
after ``on_step_end``); with gradient checkpointing, the forward recomputed during backward is
counted a second time.
"""
from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..analysis.baseline import baseline_angle_sd, null_abs_cos
from ..analysis.report import JsonFile, Report
from ..durable import atomic_file, write_text
from ..sources.adapter import Analyzer, check_backend, select_sites
from ..sources.interop import unwrap

# GeometryCallback is built on first use (module __getattr__), so that transformers is imported only then
__all__ = ["GeometryCallback",  # noqa: F822
           "GeometryMonitor", "Timeline", "plot_timelines", "timeline_figure"]

TIMELINE_FORMAT = 1  # bump when Timeline.to_dict()'s layout changes


# ---------------------------------------------------------------------------------------------
# the result: a time axis of reports
# ---------------------------------------------------------------------------------------------

@dataclass
class Timeline(JsonFile):
    """Per-site statistics at recorded training steps, and scalars logged over training.

    Attributes
    ----------
    meta : how it was recorded (model class, ``every``, sites, bins, ...), plain JSON.
    reports : step -> :class:`Report` of that step's forward pass(es).
    scalars : name -> {step: value}, e.g. ``scalars["loss"]``; ``None`` for a non-finite value.
    """

    meta: dict
    reports: dict[int, Report] = field(default_factory=dict)
    scalars: dict[str, dict[int, float | None]] = field(default_factory=dict)

    @property
    def steps(self) -> list[int]:
        """The recorded steps, in order."""
        return sorted(self.reports)

    def __getitem__(self, step: int) -> Report:
        return self.reports[step]

    def __len__(self) -> int:
        return len(self.reports)

    def series(self, key: str) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """One per-layer column of :meth:`Report.layers` over training.

        Parameters
        ----------
        key : a per-layer column: ``hidden_angle``, ``hidden_norm``, ``post1_angle``, ``gap1``,
            ``rotation1``, ``max_abs``, ... (mean and SD over tokens), or ``baseline_sd``/``ks``/
            ``outside`` (scalars; their SD is NaN).

        Returns
        -------
        dict
            layer -> (steps, means, sds), float arrays over the steps where the layer has the
            column.  Keyed by (stack, layer) for encoder-decoder models.
        """
        out: dict[Any, list[tuple[int, float, float]]] = {}
        for step in self.steps:
            for row in self.reports[step].layers():
                v = row.get(key)
                if v is None:
                    continue
                mean, sd = (v, math.nan) if np.isscalar(v) else v
                layer = (row["stack"], row["layer"]) if row["stack"] else row["layer"]
                out.setdefault(layer, []).append((step, mean, sd))
        return {k: tuple(np.array(col, dtype=np.float64) for col in zip(*pts)) for k, pts in out.items()}

    def scalar(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one logged scalar, in step order (NaN where it was not finite)."""
        pts = sorted(self.scalars.get(name, {}).items())
        return (np.array([s for s, _ in pts], dtype=np.int64),
                np.array([math.nan if v is None else v for _, v in pts], dtype=np.float64))

    # -- files -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": TIMELINE_FORMAT, "meta": self.meta,
                "reports": [{"step": s, "report": self.reports[s].to_dict()} for s in self.steps],
                "scalars": {n: [[s, v] for s, v in sorted(pts.items())] for n, pts in self.scalars.items()}}

    @classmethod
    def from_dict(cls, d: Mapping) -> Timeline:
        if d.get("format") != TIMELINE_FORMAT:
            raise ValueError(f"format: can read timeline version {TIMELINE_FORMAT}, got {d.get('format')!r}")
        return cls(meta=dict(d["meta"]),
                   reports={int(r["step"]): Report.from_dict(r["report"]) for r in d["reports"]},
                   scalars={n: {int(s): (None if v is None else float(v)) for s, v in pts}
                            for n, pts in d["scalars"].items()})

    def to_csv(self, path: str | os.PathLike) -> None:
        """Long format, one row per (step, site, quantity) and per logged (step, scalar).

        Columns: ``step, site, layer, role, quantity, mean, std, count``; a scalar row has an
        empty site, layer and role, its value in ``mean`` and empty ``std``/``count``.  Floats
        are written with ``repr``, so they read back exactly (``nan`` where undefined).
        """
        f = io.StringIO(newline="")
        w = csv.writer(f)
        w.writerow(["step", "site", "layer", "role", "quantity", "mean", "std", "count"])
        for step in self.steps:
            for name, site in self.reports[step].sites.items():
                layer = site.meta.get("layer")
                for qname, q in site.quantities.items():
                    w.writerow([step, name, "" if layer is None else layer, site.meta.get("role"),
                                qname, repr(float(q.mean)), repr(float(q.std)), q.count])
        rows = sorted((s, n, v) for n, pts in self.scalars.items() for s, v in pts.items())
        for step, name, value in rows:
            w.writerow([step, "", "", "", name, repr(math.nan if value is None else value), "", ""])
        write_text(path, f.getvalue())  # atomically (geonorm_core.durable)

    def plot(self, path: str | os.PathLike, *, label: str | None = None) -> str:
        """Write the training-geometry figure (see :func:`plot_timelines`) to ``path``; return it."""
        return plot_timelines({label or self.meta.get("model", "model"): self}, path)

    def figure(self, *, label: str | None = None):
        """The training-geometry figure of :func:`plot_timelines` as a matplotlib figure (not saved)."""
        return timeline_figure({label or self.meta.get("model", "model"): self})

    def _repr_html_(self) -> str:
        """Jupyter's view: a row per recorded step (loss, angle, norm, gap) and the figure."""
        from ..analysis.report_html import timeline_fragment

        return timeline_fragment(self)


# ---------------------------------------------------------------------------------------------
# the monitor
# ---------------------------------------------------------------------------------------------

class GeometryMonitor:
    """Record the norm-site geometry of a model's forward pass every ``every`` training steps.

    Parameters
    ----------
    model : the torch / Hugging Face model being trained (any device, train mode, autograd on).
    every : record the steps with ``step % every == 0`` (step 0 is the model at initialization).
    sites : module names to measure (default: every residual-stream norm site, as ``analyze``).
    bins : histogram bins of the angle quantities over [0, 180] degrees.
    max_tokens_per_step : count at most this many real tokens per recorded step (None: all); needs
        the model called with ``input_ids`` or ``inputs_embeds`` (else every row counts).
    exclude_first_token : do not count each sequence's first real token.
    num_threads : threads of the core inside the hooks (see :class:`Analyzer`).
    backend : ``"auto"`` (``"torch"`` for CUDA tensors, ``"core"`` for CPU ones), ``"core"`` or
        ``"torch"``: where the per-token values are computed (see :class:`Analyzer`).  With
        ``"torch"`` a recorded step's hooks never wait for the GPU; each forward's values are
        folded, after one wait, when the next forward starts or the recording ends.
    meta : extra plain-JSON metadata for the timeline (run name, hyperparameters, ...).

    The result is :attr:`timeline` (a :class:`Timeline`), filled as training runs.
    """

    def __init__(self, model: torch.nn.Module, *, every: int = 10, sites: Sequence[str] | None = None,
                 bins: int = 180, max_tokens_per_step: int | None = None, exclude_first_token: bool = False,
                 num_threads: int | None = 1, meta: Mapping | None = None, backend: str = "auto") -> None:
        self.backend = check_backend(backend)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every: need a positive int (steps with step % every == 0 are recorded), "
                             f"got {every!r}")
        if max_tokens_per_step is not None and (isinstance(max_tokens_per_step, bool)
                                                or not isinstance(max_tokens_per_step, int)
                                                or max_tokens_per_step < 1):
            raise ValueError(f"max_tokens_per_step: need a positive int or None, got {max_tokens_per_step!r}")
        try:
            json.dumps(dict(meta or {}), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"meta: need plain JSON-serializable values ({exc})") from None
        self.model = model
        self.every = every
        self.site_names = [s.name for s in select_sites(model, sites)]  # fails early on a bad name
        self.bins = bins
        self.max_tokens_per_step = max_tokens_per_step
        self.exclude_first_token = bool(exclude_first_token)
        self.num_threads = num_threads
        self.timeline = Timeline(meta={
            "model": type(model).__name__, "every": every, "sites": list(self.site_names), "bins": bins,
            "max_tokens_per_step": max_tokens_per_step, "exclude_first_token": self.exclude_first_token,
            **dict(meta or {})})
        self.attached = False
        self._analyzer: Analyzer | None = None
        self._step: int | None = None      # the step being recorded
        self._pre_hook = None
        self._budget: tuple[int, int] | None = None  # (step, tokens it may still count)

    # -- attach / detach ---------------------------------------------------------------------
    def attach(self) -> GeometryMonitor:
        """Start recording due steps (nothing is registered on the model until one comes)."""
        self.attached = True
        return self

    def detach(self) -> None:
        """Close any open recording and stop recording."""
        self.finish()
        self.attached = False

    def __enter__(self) -> GeometryMonitor:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # -- recording ---------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether ``step`` is recorded: attached and ``step % every == 0``."""
        return self.attached and step % self.every == 0

    @contextlib.contextmanager
    def record(self, step: int) -> Iterator[bool]:
        """Measure the forward passes run inside the block, if ``step`` is due; yields whether it is.

        Several blocks with the same step (micro-batches) add up to one report for the step.
        """
        started = self._begin(step) if self.due(step) else False
        try:
            yield started or self._step == step
        finally:
            if started:
                self.finish()

    def step(self, step: int) -> bool:
        """Call once per training step, before its forward: ends the previous step's recording
        and, if ``step`` is due, records every forward until the next call (or :meth:`detach`).
        Returns whether ``step`` is recorded."""
        if self._step != step:
            self.finish()
        if self.due(step):
            self._begin(step)
        return self._step == step

    def log(self, step: int, **scalars: Any) -> None:
        """Log scalars at ``step`` (``loss=...``; floats or 0-d tensors, read without grad)."""
        for name, value in scalars.items():
            v = float(value.detach()) if torch.is_tensor(value) else float(value)
            self.timeline.scalars.setdefault(name, {})[int(step)] = v if math.isfinite(v) else None

    def as_trainer_callback(self):
        """This monitor as a ``transformers.TrainerCallback`` (see :class:`GeometryCallback`)."""
        return _callback_class()(self)

    def _begin(self, step: int) -> bool:
        """Open a recording for ``step``; False if that step is already being recorded."""
        if self._step == step:
            return False
        self.finish()
        if self._budget is None or self._budget[0] != step:
            self._budget = (step, self.max_tokens_per_step)
        an = Analyzer(self.model, self.site_names, bins=self.bins, num_threads=self.num_threads,
                      backend=self.backend, merge_ranks=False,  # each rank of a DDP run records its own
                      exclude_first_token=self.exclude_first_token, meta={"step": int(step)})
        an.__enter__()
        self._analyzer, self._step = an, step
        # On the model that computes: a TransformerLens bridge or nnsight passes it input_ids by keyword.
        wrapped = unwrap(self.model)
        runs = self.model if wrapped is None else wrapped.inner
        self._pre_hook = runs.register_forward_pre_hook(self._on_forward, with_kwargs=True)
        return True

    def finish(self) -> None:
        """Close the open recording, if any, and file its report under its step."""
        if self._analyzer is None:
            return
        an, step = self._analyzer, self._step
        self._pre_hook.remove()
        an.__exit__(None, None, None)
        self._analyzer = self._step = self._pre_hook = None
        report = an.report()
        if report.tokens == 0:
            return  # no forward ran (e.g. step() at the end of training)
        report.meta.update(exclude_first_token=self.exclude_first_token,
                           max_tokens_per_step=self.max_tokens_per_step)
        if step in self.timeline.reports:
            self.timeline.reports[step].merge(report)
        else:
            self.timeline.reports[step] = report

    def _on_forward(self, module, args, kwargs) -> None:
        """Which tokens of this forward to count: real ones, within the step's budget."""
        ids = kwargs.get("input_ids")
        if ids is None and args and torch.is_tensor(args[0]) and not args[0].is_floating_point():
            ids = args[0]
        embeds = kwargs.get("inputs_embeds")
        shape = tuple(ids.shape) if ids is not None else None
        if shape is None and embeds is not None:
            shape = tuple(embeds.shape[:2])
        mask = kwargs.get("attention_mask")
        if shape is None or len(shape) != 2:
            rows = None  # an unfamiliar call: every row the sites see counts
        else:
            ok = torch.is_tensor(mask) and tuple(mask.shape) == shape
            rows = self._analyzer.token_mask(shape, mask if ok else None)
            step, left = self._budget
            if left is not None:
                flat = rows.reshape(-1)
                flat[np.flatnonzero(flat)[left:]] = False
                self._budget = (step, left - int(flat.sum()))
        self._analyzer.count_only(rows)


# ---------------------------------------------------------------------------------------------
# the Hugging Face Trainer callback
# ---------------------------------------------------------------------------------------------

@functools.cache
def _callback_class():
    from transformers import TrainerCallback  # only when asked: the monitor itself needs torch only

    class GeometryCallback(TrainerCallback):
        """Record a :class:`GeometryMonitor` inside ``transformers.Trainer``.

        The step is ``state.global_step`` at ``on_step_begin`` (optimizer steps done so far,
        so step 0 is the initialized model): due steps are recorded from ``on_step_begin``
        to ``on_step_end``, i.e. every micro-batch's forward (and backward) of that optimizer
        step, never an evaluation pass.  The Trainer's logged ``loss`` (its average since the
        last log) is logged at the step it is reported.  The monitor is attached at
        ``on_train_begin`` if it was not, and then detached at ``on_train_end``.
        """

        def __init__(self, monitor: GeometryMonitor) -> None:
            if not isinstance(monitor, GeometryMonitor):
                raise TypeError(f"monitor: need a GeometryMonitor, got {type(monitor).__name__}")
            self.monitor = monitor
            self._attached_here = False

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if model is not None and not any(m is self.monitor.model for m in model.modules()):
                raise ValueError(f"the Trainer trains a {type(model).__name__} that does not contain the "
                                 f"monitor's {type(self.monitor.model).__name__}: give both the same model")
            if not self.monitor.attached:
                self.monitor.attach()
                self._attached_here = True

        def on_step_begin(self, args, state, control, **kwargs):
            self.monitor.step(state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            self.monitor.finish()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.monitor.log(state.global_step, loss=logs["loss"])

        def on_train_end(self, args, state, control, **kwargs):
            self.monitor.finish()
            if self._attached_here:
                self.monitor.detach()
                self._attached_here = False

    return GeometryCallback


def __getattr__(name: str):
    if name == "GeometryCallback":  # built on first use: transformers is imported only then
        return _callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------
# the figure
# ---------------------------------------------------------------------------------------------

_STYLES = ("-", "--", ":", "-.")


def plot_timelines(timelines: Mapping[str, Timeline], path: str | os.PathLike, *,
                   title: str | None = None) -> str:
    """Write :func:`timeline_figure` to ``path`` (PNG, or the format its suffix names); return ``path``."""
    fig = timeline_figure(timelines, title=title)
    import matplotlib.pyplot as plt

    with atomic_file(path) as f:  # the old file or the complete new one
        fig.savefig(f, dpi=110, format=os.path.splitext(os.fspath(path))[1][1:].lower() or "png")
    plt.close(fig)
    return os.fspath(path)


def timeline_figure(timelines: Mapping[str, Timeline], *, title: str | None = None):
    """One figure of norm-site geometry over training, for one or several runs; return ``path``.

    Six panels against the training step, one line per layer (colour and marker) and per run (line
    style): the angle of the residual stream with **1** (mean over tokens; grey band: the
    random baseline 90° ± SD_null, G14); its SD over tokens (grey line: SD_null -- the SD is
    where a component along **1** shows, since a mean over tokens of either sign stays at 90°);
    the norm ‖hidden‖; the LN-RMS gap at the first norm (G9; grey: its random
    baseline E|cos θ|, unit gain); the angle of the first norm's output with **1** (G13);
    the logged loss.  The SD, norm and gap panels are on log scales.  "Hidden" is the input of
    each block's first norm (LN1).
    """
    if not timelines:
        raise ValueError("timelines: need at least one Timeline")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(2, 3, figsize=(15, 8.2))
    ax_angle, ax_sd, ax_norm, ax_gap, ax_post, ax_loss = axes.ravel()
    panels = (("hidden_angle", ax_angle, 1), ("hidden_angle", ax_sd, 2), ("hidden_norm", ax_norm, 1),
              ("gap1", ax_gap, 1), ("post1_angle", ax_post, 1))  # (column, axes, 1: means / 2: SDs)
    runs = [{key: tl.series(key) for key in ("hidden_angle", "hidden_norm", "gap1", "post1_angle")}
            for tl in timelines.values()]
    layers = sorted({layer for run in runs for series in run.values() for layer in series},
                    key=lambda layer: layer if isinstance(layer, tuple) else ("", layer))
    colors = {layer: _layer_color(i, len(layers)) for i, layer in enumerate(layers)}
    # a marker per layer as well as a colour, so that layers read apart in greyscale
    markers = {layer: "osD^vPX*"[i % 8] for i, layer in enumerate(layers)}
    dims = {int(r["d"]) for tl in timelines.values() for rep in tl.reports.values() for r in rep.layers()}
    for ti, (tl, run) in enumerate(zip(timelines.values(), runs)):
        style = _STYLES[ti % len(_STYLES)]
        for key, ax, col in panels:
            for layer, arrays in run[key].items():
                ax.plot(arrays[0], arrays[col], style, color=colors[layer], lw=1.4, marker=markers[layer], ms=3.5,
                        markevery=max(1, len(arrays[0]) // 8))
        steps, values = tl.scalar("loss")
        if steps.size:
            ax_loss.plot(steps, values, style, color="k", lw=1.0)

    for d in sorted(dims):
        sd = baseline_angle_sd(d).sd
        for ax in (ax_angle, ax_post):
            ax.axhspan(90 - sd, 90 + sd, color="0.6", alpha=0.25, lw=0)
        ax_sd.axhline(sd, color="0.45", lw=1.2)
        ax_gap.axhline(null_abs_cos(d), color="0.45", lw=1.2)
    dtext = ", ".join(f"d={d}" for d in sorted(dims))
    for ax in (ax_sd, ax_norm, ax_gap):  # these span decades over training
        ax.set_yscale("log")
    titles = ((ax_angle, "angle(hidden, 1): mean over tokens", "degrees"),
              (ax_sd, "angle(hidden, 1): SD over tokens", "degrees"),
              (ax_norm, "‖hidden‖: mean over tokens", "L2 norm"),
              (ax_gap, "LN–RMS gap at LN1 (G9): mean over tokens", "‖LN(x) − RMS(x)‖ / ‖LN(x)‖"),
              (ax_post, "angle(post-LN1, 1): mean over tokens", "degrees"),
              (ax_loss, "training loss (as logged)", "loss"))
    for ax, name, unit in titles:
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)

    handles = [Line2D([], [], color="k", ls=_STYLES[i % len(_STYLES)], label=name)
               for i, name in enumerate(timelines)]
    handles += [Line2D([], [], color=colors[layer], marker=markers[layer], ms=4, label=f"layer {layer}")
                for layer in layers]
    handles.append(Line2D([], [], color="0.45", lw=6, alpha=0.4,
                          label=f"random baseline ({dtext}): 90° ± SD_null; SD_null; E|cos θ|"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=9, frameon=False)
    fig.suptitle(title or "Norm-site geometry during training: " + " vs ".join(timelines), fontsize=12)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return fig


def _layer_color(i: int, n: int):
    import matplotlib

    return matplotlib.colormaps["viridis"](0.9 * i / max(1, n - 1))
