"""geonorm: the geometry of normalization layers in language models.

LayerNorm's standardization is three geometric steps: remove the component along the uniform
vector 1, normalize, scale by sqrt(d) (Gupta et al.). This package measures that geometry on real
hidden states, exactly and at the speed of memory.

>>> import geonorm_core as gn
>>> dec = gn.decompose(x)          # mean, coef, norm, perp_norm, cos, angle per row
>>> gn.rotation(x, y)              # degrees between paired rows
>>> gn.layer_norm(x, w, b), gn.rms_norm(x, g), gn.remove_uniform(x)

``from geonorm_core import *`` gives the names that need only NumPy (``__all__``). The names that
need torch (models, hooks, experiments) are imported on first use, so ``import geonorm_core``
stays light; ``dir(geonorm_core)`` lists both.
"""
from . import _moved
from .analysis.accumulate import Histogram, Moments, Quantity, SiteStats
from .analysis.compare import Comparison, compare
from .analysis.measure import token_values
from .analysis.merging import merge_reports
from .analysis.report import Report
from .dumps import ActivationSite, DumpError, analyze_dump, open_activations
from .models.corpus import default_text, token_batches
from .models.loading import ModelNotFoundError
from .ops import Decomposition, decompose, layer_norm, ln_rms_gap, remove_uniform, rms_norm, rotation
from .runtime import __version__, get_num_threads, kernel_info, set_num_threads

_moved.install()   # the old flat module paths (measure, report, ...) keep working for one release

__all__ = [
    "Decomposition", "decompose", "rotation", "remove_uniform", "layer_norm", "rms_norm", "ln_rms_gap",
    "token_values", "kernel_info", "get_num_threads", "set_num_threads", "__version__",
    "Moments", "Histogram", "Quantity", "SiteStats", "Report", "compare", "Comparison", "merge_reports",
    "analyze_dump", "open_activations", "ActivationSite", "DumpError",
    "default_text", "token_batches", "ModelNotFoundError",
]

# These need torch (and transformers): imported on first use, so the core works without them.
_TORCH_SIDE = {"NormSite": "sources.sites", "find_norm_sites": "sources.sites", "analyze": "sources.adapter",
               "Analyzer": "sources.adapter", "analyze_cache": "sources.caches", "load_model": "models.registry",
               "dump": "dumps.writing", "GeometryMonitor": "experiments.monitor", "Timeline": "experiments.monitor",
               "swap_test": "experiments.swap", "swapped": "experiments.swap", "SwapResult": "experiments.swap",
               "to_rmsnorm": "experiments.convert", "save_converted": "experiments.convert",
               "load_converted": "experiments.convert", "ConversionError": "experiments.convert"}


def __getattr__(name: str):
    if name in _TORCH_SIDE:
        import importlib

        value = getattr(importlib.import_module(f".{_TORCH_SIDE[name]}", __name__), name)
        globals()[name] = value          # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_TORCH_SIDE))
