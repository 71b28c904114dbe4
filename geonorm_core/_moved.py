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
    """Finds ``geonorm_core.<old>`` and loads it as the module at its new path.

    The import system stamps the old path's spec on the module it gets; :meth:`exec_module` puts
    the module's own spec back, so the module stays what it is at its new path.
    """

    def __init__(self) -> None:
        self._own_specs: dict = {}

    def find_spec(self, fullname, path=None, target=None):
        package, _, old = fullname.rpartition(".")
        if package == PACKAGE and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        new = f"{PACKAGE}.{MOVED[spec.name.rpartition('.')[2]]}"
        warnings.warn(f"{spec.name} moved to {new}; the old path goes away in the next release",
                      DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        self._own_specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module):
        # already executed at its new path; only its own spec to restore (keyed by the old name,
        # which is what the stamped spec says, so concurrent imports cannot mix them up)
        module.__spec__ = self._own_specs.pop(module.__spec__.name)


def install() -> None:
    if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
        sys.meta_path.append(_OldPaths())
