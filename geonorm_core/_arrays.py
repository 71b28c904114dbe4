"""From user arrays to the core's row specs, and back.

The core reads batches of rows: (address, n0, n1, d, s0, s1, sd, dtype), row
(i, j) starting at address + i*s0 + j*s1.  This module turns NumPy arrays and CPU
torch tensors of any leading shape and strides into such specs *without copying*
(big-endian arrays are the one exception), checks everything the C code trusts,
and allocates outputs of the caller's kind (ndarray or tensor).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterator

import ml_dtypes
import numpy as np

from ._native import _core

#: Element types the core reads, with the codes of geonorm.h's gn_dtype.
DTYPE_CODES = {
    np.dtype(np.float64): 0,
    np.dtype(np.float32): 1,
    np.dtype(np.float16): 2,
    np.dtype(ml_dtypes.bfloat16): 3,
}
_SUPPORTED = "float16, float32, float64 or bfloat16"


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _torch_to_numpy(t: Any, name: str) -> np.ndarray:
    """A NumPy view of a CPU tensor's memory (bf16 through an int16 view)."""
    import torch

    if t.device.type != "cpu":
        raise ValueError(
            f"{name} is a tensor on {t.device}; geonorm's kernels run on the CPU "
            f"(move it with .cpu(), or use the torch adapter, which streams through pinned buffers)")
    t = t.detach().resolve_conj().resolve_neg()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    if t.dtype not in (torch.float16, torch.float32, torch.float64):
        raise TypeError(f"{name} must be a floating tensor ({_SUPPORTED}), got {t.dtype}")
    return t.numpy()


def as_array(x: Any, name: str) -> np.ndarray:
    """A NumPy view of x in a dtype the core reads; TypeError naming `name` otherwise."""
    arr = _torch_to_numpy(x, name) if _is_tensor(x) else np.asarray(x)
    if arr.dtype not in DTYPE_CODES:
        if arr.dtype.kind == "f" and arr.dtype.newbyteorder("=") in DTYPE_CODES:
            return arr.astype(arr.dtype.newbyteorder("="))  # big-endian: the one copy
        raise TypeError(f"{name} must be an array of {_SUPPORTED}, got dtype {arr.dtype}")
    return arr


def as_rows(x: Any, name: str = "x") -> np.ndarray:
    """as_array, plus the checks every op shares: at least 1-D, and d >= 1."""
    arr = as_array(x, name)
    if arr.ndim == 0:
        raise ValueError(f"{name} must have a last axis of vector components (shape (..., d)), got a 0-d array")
    if arr.shape[-1] == 0:
        raise ValueError(f"{name} must have d >= 1 components in its last axis, got shape {arr.shape}")
    return arr


def as_vector(v: Any, name: str, d: int, dtype: np.dtype) -> np.ndarray | None:
    """A gain or bias: None, or a private contiguous copy of its d values in the compute dtype."""
    if v is None:
        return None
    arr = as_array(v, name)
    if arr.shape != (d,):
        raise ValueError(f"{name} must have shape ({d},) to match the last axis of x, got shape {arr.shape}")
    return np.array(arr, dtype=dtype, order="C", copy=True)  # d values: a copy costs nothing and cannot alias out=


class Layer:
    """A norm layer's checked parameters: private copies of gain and bias in the compute
    dtype (kept alive here while the core reads them through wp/bp) and eps."""

    def __init__(self, arr: np.ndarray, weight: Any, bias: Any, eps: float, dtype) -> None:
        d = arr.shape[-1]
        self.weight = as_vector(weight, "weight", d, dtype)
        self.bias = as_vector(bias, "bias", d, dtype)
        self.wp = 0 if self.weight is None else self.weight.ctypes.data
        self.bp = 0 if self.bias is None else self.bias.ctypes.data
        self.eps = float(eps)
        if not (np.isfinite(self.eps) and self.eps >= 0.0):
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps}")


@dataclass(frozen=True)
class Block:
    """n0*n1 rows of every array, as row specs; `first` is the block's first row."""
    specs: tuple[tuple, ...]
    first: int
    rows: int


def blocks(arrays: list[np.ndarray]) -> Iterator[Block]:
    """Cover the rows of same-shaped arrays with as few core calls as possible.

    Leading axes that every array can merge (stride[i] == stride[i+1] * shape[i+1])
    are merged; what is left beyond two leading axes is looped over here.
    """
    shape = arrays[0].shape
    lead, d = shape[:-1], shape[-1]
    if 0 in lead:
        return
    axes: list[tuple[int, list[int]]] = []
    for i, n in enumerate(lead):
        if n == 1:
            continue
        strides = [a.strides[i] for a in arrays]
        if axes and all(p == s * n for p, s in zip(axes[-1][1], strides)):
            axes[-1] = (axes[-1][0] * n, strides)
        else:
            axes.append((n, strides))
    while len(axes) < 2:
        axes.insert(0, (1, [0] * len(arrays)))
    outer, (n0, s0), (n1, s1) = axes[:-2], axes[-2], axes[-1]
    rows = n0 * n1
    for b, index in enumerate(itertools.product(*(range(n) for n, _ in outer))):
        specs = []
        for k, a in enumerate(arrays):
            offset = sum(i * st[k] for i, (_, st) in zip(index, outer))
            specs.append((a.ctypes.data + offset, n0, n1, d, s0[k], s1[k], a.strides[-1], DTYPE_CODES[a.dtype]))
        yield Block(tuple(specs), b * rows, rows)


def empty_like(x: Any, arr: np.ndarray) -> tuple[Any, np.ndarray]:
    """A fresh contiguous output of x's kind, shape and dtype, and its NumPy view."""
    if _is_tensor(x):
        import torch

        out = torch.empty(tuple(arr.shape), dtype=x.dtype)
        view = _torch_to_numpy(out, "out")
        _core.advise_huge(view.ctypes.data, view.nbytes)  # as NumPy does for its own large arrays
        return out, view
    out = np.empty(arr.shape, dtype=arr.dtype)
    return out, out


def check_out(out: Any, arr: np.ndarray) -> np.ndarray:
    """The NumPy view of a caller's `out=`, after checking it can take the result."""
    if not (isinstance(out, np.ndarray) or _is_tensor(out)):
        raise TypeError(f"out must be a NumPy array or a torch tensor, got {type(out).__name__}")
    if isinstance(out, np.ndarray) and out.dtype.byteorder == ">":
        raise ValueError(f"out must be in native byte order, got dtype {out.dtype}")
    view = as_array(out, "out")
    if view.shape != arr.shape or view.dtype != arr.dtype:
        raise ValueError(f"out must have shape {arr.shape} and dtype {arr.dtype} like x, "
                         f"got shape {view.shape} and dtype {view.dtype}")
    if not view.flags.writeable:
        raise ValueError("out must be writeable, got a read-only array")
    try:
        overlaps = np.shares_memory(view, arr, max_work=10**6)
    except np.exceptions.TooHardError:
        overlaps = True
    if overlaps:
        raise ValueError("out must not overlap x; pass a separate array (or out=None)")
    return view
