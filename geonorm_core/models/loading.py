"""What loading any model needs first: torch and transformers imported and checked, a dtype and a
device resolved from what users type, and the error for a name that resolves to no model.

Both loaders build on it: :mod:`geonorm_core.models` (the short names, checkpoints, cached
ids) and :mod:`geonorm_core.models.whisper` (Whisper base from its CTranslate2 file).
"""
from __future__ import annotations

__all__ = ["ModelNotFoundError", "import_torch_side", "resolve_device", "resolve_dtype"]

_DTYPES = {
    "float32": "float32", "fp32": "float32", "f32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
}


class ModelNotFoundError(ValueError):
    """The name or path given to :func:`load_model` does not resolve to a model on this machine."""


def import_torch_side():
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ImportError(f"load_model needs torch and transformers>=5 ({exc}); "
                          "install them with `pip install 'geonorm[analyze]'`") from exc
    major = int(transformers.__version__.split(".")[0])
    if major < 5:
        raise ImportError(f"load_model needs transformers>=5, found {transformers.__version__} "
                          "(4.x mis-converts the Gemma GGUF tokenizer)")
    return torch, transformers


def resolve_dtype(torch, dtype):
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch dtype, got {dtype}")
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return getattr(torch, _DTYPES[dtype.lower().removeprefix("torch.")])
    raise ValueError(
        f"dtype must be one of 'float32', 'bfloat16', 'float16' (or a torch dtype), got {dtype!r}")


def resolve_device(torch, device):
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r} is not a torch device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available to this torch build")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available")
    return dev
