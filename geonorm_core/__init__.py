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
from .accumulate import Histogram, Moments, Quantity, SiteStats
from .corpus import default_text, token_batches
from .dumps import ActivationSite, DumpError, analyze_dump, open_activations
from .loading import ModelNotFoundError
from .measure import token_values
from .ops import Decomposition, decompose, layer_norm, ln_rms_gap, remove_uniform, rms_norm, rotation
from .report import Report
from .runtime import __version__, get_num_threads, kernel_info, set_num_threads

__all__ = [
    "Decomposition", "decompose", "rotation", "remove_uniform", "layer_norm", "rms_norm", "ln_rms_gap",
    "token_values", "kernel_info", "get_num_threads", "set_num_threads", "__version__",
    "Moments", "Histogram", "Quantity", "SiteStats", "Report",
    "analyze_dump", "open_activations", "ActivationSite", "DumpError",
    "default_text", "token_batches", "ModelNotFoundError",
]

# These need torch (and transformers): imported on first use, so the core works without them.
_TORCH_SIDE = {"NormSite": "sites", "find_norm_sites": "sites", "analyze": "adapter", "Analyzer": "adapter",
               "load_model": "models", "GeometryMonitor": "monitor", "Timeline": "monitor",
               "dump": "dumps.writing", "swap_test": "swap", "swapped": "swap",
               "SwapResult": "swap", "to_rmsnorm": "convert", "save_converted": "convert",
               "load_converted": "convert", "ConversionError": "convert", "analyze_cache": "caches"}


def __getattr__(name: str):
    if name in _TORCH_SIDE:
        import importlib

        value = getattr(importlib.import_module(f".{_TORCH_SIDE[name]}", __name__), name)
        globals()[name] = value          # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_TORCH_SIDE))
