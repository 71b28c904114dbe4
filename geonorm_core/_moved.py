"""Old module paths, kept for one release: ``import geonorm_core.measure`` still works, warns
(:class:`DeprecationWarning`) and gives the module at its new path, the very same object.

The modules moved into folders, one per floor of the house (docs/ARCHITECTURE.md); the tree stays
the map, so the old paths live in this table, not as files.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old path -> new path, both under ``geonorm_core``
MOVED = {
    "measure": "analysis.measure", "measure_torch": "analysis.measure_torch",
    "accumulate": "analysis.accumulate", "report": "analysis.report", "figures": "analysis.figures",
    "sites": "sources.sites", "adapter": "sources.adapter", "checkpoint": "sources.checkpoint",
    "interop": "sources.interop", "caches": "sources.caches",
    "loading": "models.loading", "whisper": "models.whisper", "ct2": "models.ct2", "corpus": "models.corpus",
    "swap": "experiments.swap", "convert": "experiments.convert", "monitor": "experiments.monitor",
    "bench": "experiments.bench", "workload": "experiments.workload",
    "dask": "dumps.dask",
}
PACKAGE = __name__.rpartition(".")[0]


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``geonorm_core.<old>`` and loads it as the module at its new path."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, old = fullname.rpartition(".")
        if package == PACKAGE and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        new = f"{PACKAGE}.{MOVED[spec.name.rpartition('.')[2]]}"
        warnings.warn(f"{spec.name} moved to {new}; the old path goes away in the next release",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):
        pass   # the module at the new path is already executed


def install() -> None:
    if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
        sys.meta_path.append(_OldPaths())
