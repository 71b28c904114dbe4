"""The activation stores users already have, read as norm sites: datasets/Arrow/parquet, HDF5, zarr.

=================================  ====================================================================
store                              sites
=================================  ====================================================================
a Hugging Face ``datasets`` folder  each float column of vectors (``Sequence(Value("float32"), length=d)``,
(``save_to_disk``: SAELens's         a list, ``Array2D``/``Array3D``); 2-D/3-D rows are flattened to
``CacheActivationsRunner``), a       rows of the last axis.  Columns of other types (``token_ids``) are
folder of ``.arrow``/``.parquet``    left out and named in ``report.meta["left_out"]``.
files, or one such file
an HDF5 file (``.h5``, ``.hdf5``)    every float dataset of 2 or 3 dimensions, named by its path
a zarr store (v2 or v3)              every float array of 2 or 3 dimensions, named by its path
=================================  ====================================================================

A site's rows are one :class:`ConcatShard` over the store's own pieces (Arrow record batches and
files, parquet files, an HDF5 or zarr array), so blocks are cut exactly as for the same rows in one
``.npy`` and the report is bitwise that of the ``.npy``.  Uncompressed Arrow buffers and contiguous
HDF5 datasets are memory-mapped a block at a time (:class:`~.shards.FileShard`); chunked or compressed
data is decoded block by block by its own library.

Names are TransformerLens / SAELens hook names where they can be (:mod:`geonorm_core.sources.hook_names`):
the sites are then ordered by block and placed in layer and role; other names keep the store's
order.  ``model=`` attaches the matching norms' gain, bias and eps (:func:`attach_model`).

The libraries are an optional extra: ``pip install "geonorm[stores]"``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ...sources.hook_names import HOOK_PAIRS, place_hook
from ..shards import DEFAULT_EPS, ActivationSite, DumpError
from .columns import Column

__all__ = ["UnknownSiteError", "attach_model", "open_store", "place_sites", "select_sites", "store_kind"]

HDF5_SUFFIXES = (".h5", ".hdf5", ".he5")
ARROW_SUFFIXES = (".arrow", ".parquet", ".feather")


class UnknownSiteError(DumpError):
    """``sites=`` names a site (column, dataset, array) the source does not have: a usage error."""


def store_kind(path: Path) -> str | None:
    """``"arrow"``, ``"hdf5"`` or ``"zarr"`` for a store this module reads, else None."""
    suffix = path.suffix.lower()
    if path.is_file():
        if suffix in HDF5_SUFFIXES:
            return "hdf5"
        if suffix in ARROW_SUFFIXES:
            return "arrow"
        return None
    if not path.is_dir():
        return None
    if suffix == ".zarr" or any((path / f).is_file() for f in ("zarr.json", ".zgroup", ".zarray")):
        return "zarr"
    if any((path / f).is_file() for f in ("state.json", "dataset_dict.json")):
        return "arrow"
    from .arrow import arrow_files

    return "arrow" if arrow_files(path, strict=False) else None


def _reader(kind: str) -> Callable[[Path], tuple[list[Column], dict]]:
    if kind == "arrow":
        from .arrow import arrow_columns

        return arrow_columns
    if kind == "hdf5":
        from .hdf5 import hdf5_columns

        return hdf5_columns
    from .zarr import zarr_columns

    return zarr_columns


def open_store(path: str | os.PathLike, sites: Sequence[str] | None = None) -> list[ActivationSite]:
    """Open an Arrow/parquet/datasets, HDF5 or zarr store as norm sites (see the module docstring).

    Parameters
    ----------
    path : the store (a file or a folder).
    sites : names of the columns/datasets/arrays to read (default: every float one of 2 or 3 dims).

    Raises
    ------
    UnknownSiteError
        A name of ``sites`` that the store does not have.
    DumpError
        A store with no float data, a selected array that is not float vectors, ragged lists, a
        truncated or corrupt file: the message names the file and the problem.
    ImportError
        The library the store needs is not installed (the message names the extra).
    """
    p = Path(path)
    kind = store_kind(p)
    if kind is None:
        raise DumpError(p, "not an Arrow/parquet/datasets, HDF5 or zarr store")
    columns, extra = _reader(kind)(p)
    by_name = {c.name: c for c in columns}
    if sites is not None:
        missing = [s for s in sites if s not in by_name]
        if missing:
            raise UnknownSiteError(
                p,
                f"has no {', '.join(map(repr, missing))}; it has "
                f"{', '.join(map(repr, by_name)) or 'nothing'}",
            )
        chosen = [by_name[s] for s in dict.fromkeys(sites)]
        bad = [c for c in chosen if c.shard is None]
        if any(c.error for c in bad):
            raise next(c.error for c in bad if c.error)
        if bad:
            raise DumpError(p, "; ".join(f"{c.name!r} {c.why}" for c in bad))
    else:
        broken = [c.error for c in columns if c.error is not None]
        if broken:
            raise broken[0]
        chosen = [c for c in columns if c.shard is not None]
        if not chosen:
            why = "; ".join(f"{c.name!r} {c.why}" for c in columns) or "it is empty"
            raise DumpError(p, f"holds no float data of 2 or 3 dimensions ({why})")
    left_out = [f"{c.name}: {c.why}" for c in columns if c not in chosen]
    report_meta = {"model": p.name, "source": str(p), "format": kind, **extra, "left_out": left_out}
    out = _paired(p, chosen, report_meta)
    if not any(s.rows for s in out):
        raise DumpError(p, "holds no rows")
    return out


def _paired(root: Path, chosen: list[Column], report_meta: dict) -> list[ActivationSite]:
    """Sites from columns: a norm's ``.hook_in``/``.hook_out`` pair is one site with both sides."""
    names = {c.name: c for c in chosen}
    taken: set[str] = set()
    entries = []
    for c in chosen:
        if c.name in taken:
            continue
        post = None
        for i, o in HOOK_PAIRS:
            other = names.get(c.name[: -len(i)] + o) if c.name.endswith(i) else None
            if other is not None and (other.shard.rows, other.shard.d) == (c.shard.rows, c.shard.d):
                post = other
                taken.add(other.name)
                break
        taken.add(c.name)
        entries.append((c, post))
    sites = []
    for c, post in entries:
        name = c.name[: c.name.rindex(".")] if post is not None else c.name
        meta = {
            "name": name,
            "layer": None,
            "role": None,
            "kind": "unknown",
            "d": c.shard.d,
            "eps": DEFAULT_EPS,
            "has_gain": False,
            "has_bias": False,
            "stack": None,
            "source": str(root),
            "column": c.name,
        }
        sites.append(
            ActivationSite(
                name=name,
                meta=meta,
                hidden=[c.shard],
                post=[post.shard] if post is not None else None,
                report_meta=report_meta,
            )
        )
    return place_sites(sites)


def place_sites(sites: list[ActivationSite], n_layers: int | None = None) -> list[ActivationSite]:
    """Give hook-named sites their layer and role, and order them by block (others keep their order).

    Two sites that would be the same norm's input (``blocks.2.hook_resid_post`` and
    ``blocks.3.hook_resid_pre``) keep both, and the role goes to the one named for that norm.
    """
    # a store's path prefix (an HDF5 group, a zarr group) does not change what a hook name says
    places = {s.name: place_hook(s.meta.get("column", s.name).rsplit("/", 1)[-1], n_layers) for s in sites}
    claimed: set[tuple] = set()
    for second_pass in (False, True):  # resid_post only claims a norm no direct hook names
        for s in sites:
            pl = places[s.name]
            if pl is None or pl.role is None:
                continue
            if s.meta.get("column", s.name).endswith("hook_resid_post") != second_pass:
                continue
            key = (pl.layer, pl.role)
            s.meta["layer"], s.meta["role"] = (pl.layer, pl.role) if key not in claimed else (pl.layer, None)
            claimed.add(key)
    for s in sites:
        pl = places[s.name]
        if pl is not None and pl.role is None:
            s.meta["layer"], s.meta["role"] = pl.layer, None
    known = sorted((s for s in sites if places[s.name] is not None), key=lambda s: places[s.name].order)
    return known + [s for s in sites if places[s.name] is None]


def select_sites(sites: list[ActivationSite], names: Sequence[str] | None, path: Any) -> list[ActivationSite]:
    """The sites named by ``names`` (all when None), in the source's order; a missing name is an error."""
    if names is None:
        return sites
    have = {s.name: s for s in sites}
    missing = [n for n in names if n not in have]
    if missing:
        raise UnknownSiteError(
            path, f"has no site {', '.join(map(repr, missing))}; it has {', '.join(map(repr, have))}"
        )
    wanted = set(names)
    return [s for s in sites if s.name in wanted]


def attach_model(sites: list[ActivationSite], model: Any) -> list[ActivationSite]:
    """Give each hook-named site the gain, bias and eps of the model's norm whose input it is.

    A site is matched by the (layer, role) its hook name places it at (:mod:`geonorm_core.sources.hook_names`;
    with the model's block count, the last ``hook_resid_post`` is the final norm's input) to the norm
    :func:`~geonorm_core.sources.sites.find_norm_sites` finds at that (layer, role).  Sites that match no norm
    keep unit gain and no bias.

    Parameters
    ----------
    model : a model name or path (:func:`geonorm_core.models.load_model`) or a loaded torch model.

    Raises
    ------
    ValueError
        When a matched norm's d differs from the site's rows, or no site matches a norm.
    """
    from ...sources.sites import find_norm_sites

    label = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, (str, os.PathLike)):
        from ...models import load_model

        model, _ = load_model(str(model))
    norms = [n for n in find_norm_sites(model) if n.stack is None]
    layers = [n.layer for n in norms if n.layer is not None]
    sites = place_sites(sites, max(layers) + 1 if layers else None)
    by_place = {(n.layer, n.role): n for n in norms}
    matched = 0
    for s in sites:
        norm = by_place.get((s.meta.get("layer"), s.meta.get("role"))) if s.meta.get("role") else None
        if norm is None:
            continue
        if norm.d != s.d:
            raise ValueError(
                f"model: {label}'s {norm.name} normalizes d={norm.d}, but the rows of "
                f"{s.name!r} have d={s.d}: not the model this store came from"
            )
        s.gain, s.bias, s.eps = norm.gain, norm.bias, float(norm.eps)
        s.meta.update(
            kind=norm.kind,
            eps=float(norm.eps),
            has_gain=norm.gain is not None,
            has_bias=norm.bias is not None,
            norm=norm.name,
        )
        matched += 1
    if not matched:
        raise ValueError(
            f"model: no site of the store is the input of a norm of {label} (its sites: "
            f"{', '.join(s.name for s in sites[:4])}...; hook names such as "
            f"blocks.L.hook_resid_pre are matched)"
        )
    for s in sites:
        s.report_meta = {**s.report_meta, "model": str(label), "norms_from": str(label)}
    return sites
