"""geonorm: the geometry of normalization layers in language models.

LayerNorm's standardization is three geometric steps: remove the component along
the uniform vector 1, normalize, scale by sqrt(d) (Gupta et al., SCIENCE.md).
This package measures that geometry on real hidden states, exactly and at the
speed of memory.

>>> import geonorm_core as gn
>>> dec = gn.decompose(x)          # mean, coef, norm, perp_norm, cos, angle per row
>>> gn.rotation(x, y)              # degrees between paired rows
>>> gn.layer_norm(x, w, b), gn.rms_norm(x, g), gn.remove_uniform(x)
"""
from .accumulate import Histogram, Moments, Quantity, SiteStats
from .dumps import ActivationSite, DumpError, analyze_dump, open_activations
from .ops import Decomposition, decompose, layer_norm, ln_rms_gap, remove_uniform, rms_norm, rotation
from .compare import Comparison, compare
from .report import Report
from .runtime import __version__, get_num_threads, kernel_info, set_num_threads

__all__ = [
    "Decomposition", "decompose", "rotation", "remove_uniform", "layer_norm", "rms_norm", "ln_rms_gap",
    "kernel_info", "get_num_threads", "set_num_threads", "__version__",
    "Moments", "Histogram", "Quantity", "SiteStats", "Report", "compare", "Comparison",
    "NormSite", "find_norm_sites", "analyze", "Analyzer", "load_model", "GeometryMonitor", "Timeline",
    "analyze_cache", "dump", "analyze_dump", "open_activations", "ActivationSite", "DumpError", "swap_test",
    "swapped", "SwapResult", "to_rmsnorm", "save_converted", "load_converted",
]

# These need torch (and transformers): imported on first use, so the core works without them.
_TORCH_SIDE = {"NormSite": "sites", "find_norm_sites": "sites", "analyze": "adapter", "Analyzer": "adapter",
               "load_model": "models", "GeometryMonitor": "monitor", "Timeline": "monitor",
               "dump": "dumps.writing", "swap_test": "swap", "swapped": "swap",
               "SwapResult": "swap", "to_rmsnorm": "convert", "save_converted": "convert",
               "load_converted": "convert", "analyze_cache": "caches"}


def __getattr__(name):
    if name in _TORCH_SIDE:
        import importlib

        return getattr(importlib.import_module(f".{_TORCH_SIDE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
