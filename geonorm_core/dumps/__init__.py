"""Hidden states on disk: write them safely, read them from any format, analyze them anywhere.

=============  ===========================================================================
``writing``    :func:`dump`: a model's norm-site activations as resumable safetensors shards
``manifest``   geonorm's dump format: the manifest, a dump's sites opened and checked
``schema``     the manifest's schema, every field checked before use, and its own digest
``files``      regular files only, paths inside the dump only, strict JSON
``formats``    safetensors (read and write) and the arrays users have: .npy/.npz/.pt
``shards``     :class:`Shard` (rows of one file) and :class:`ActivationSite` (a site's rows)
``verify``     sha256 of shards, and the record of files already checked
``reading``    :func:`open_activations` and :func:`analyze_dump`: any source into a Report
``dask``       the same analysis on a Dask cluster (``analyze_sites``, ``analyze_array``)
=============  ===========================================================================

:func:`dump` needs torch; everything else here needs only NumPy (and Dask for ``dask``).
"""
from __future__ import annotations

from .manifest import read_manifest
from .reading import analyze_dump, open_activations
from .shards import ActivationSite, DumpError

__all__ = ["ActivationSite", "DumpError", "DumpWriter", "analyze_dump", "dump", "open_activations",
           "read_manifest"]


def __getattr__(name: str):
    if name in ("dump", "DumpWriter"):  # they need torch: imported on first use
        from . import writing

        return getattr(writing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
