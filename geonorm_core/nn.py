"""Drop-in inference modules: LayerNorm and RMSNorm on geonorm's native kernels.

torch's CPU ``rms_norm`` is slower than its ``layer_norm`` (``geonorm bench`` shows it), although RMSNorm
does less work; geonorm's kernels read each row once and make both passes from cache.  These modules
compute the same function as ``torch.nn.LayerNorm`` / ``torch.nn.RMSNorm`` (and the converted
:class:`~geonorm_core.experiments.convert.AffineRMSNorm`, an RMSNorm with a bias) and run the native kernels when
that is possible -- a CPU tensor of float32, float64, float16 or bfloat16 with no autograd graph to
build (``torch.no_grad``/``torch.inference_mode``, or nothing requiring a gradient).  Otherwise
(CUDA and other devices, training) they fall back to torch's own ops, so they stay correct anywhere.

Outputs agree with torch's within the core's contract (float32/float64 computation with exact two-pass
statistics; the result is rounded to the input's dtype).
"""
from __future__ import annotations

from typing import Any

import torch

from . import ops
from ._native import _core
from ._native._core import fast_normalize as _fast_normalize

__all__ = ["AffineRMSNorm", "LayerNorm", "RMSNorm", "use_native_kernels"]

_NATIVE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class AffineRMSNorm(torch.nn.Module):
    """RMSNorm with a gain and an optional bias: ``r = g * x / sqrt(||x||^2 / d + eps) + b`` (G8, G9).

    What a residual-stream LayerNorm becomes once its input is orthogonal to 1:
    ``LN_{alpha,beta}(x) = RMSNorm_alpha(x) + beta`` for ``1^T x = 0`` (G9, G18), with the LayerNorm's own
    eps.  Differentiable (torch ops); ``weight``/``bias`` keep the LayerNorm's state-dict names, so a
    converted checkpoint loads into the original architecture.  ``find_norm_sites`` identifies it as an
    RMSNorm site (formula ``x / sqrt(mean(x^2) + eps) * w + b``).
    """

    def __init__(self, d: int, eps: float = 1e-5, *, bias: bool = True, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        if not isinstance(d, int) or d < 1:
            raise ValueError(f"d: expected a positive int, got {d!r}")
        self.normalized_shape = (d,)
        self.eps = float(eps)
        self.weight = torch.nn.Parameter(torch.ones(d, device=device, dtype=dtype))
        self.bias = torch.nn.Parameter(torch.zeros(d, device=device, dtype=dtype)) if bias else None

    @classmethod
    def from_layer_norm(cls, ln: torch.nn.Module) -> AffineRMSNorm:
        """The RMSNorm with ``ln``'s gain, bias and eps (sharing their tensors' values, not the objects)."""
        weight = getattr(ln, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
            raise ValueError(f"ln: {type(ln).__name__} has no 1-D gain; expected a LayerNorm with "
                             f"elementwise_affine=True")
        bias = getattr(ln, "bias", None)
        eps = getattr(ln, "eps", None)
        if eps is None:
            raise ValueError(f"ln: {type(ln).__name__} has no eps attribute")
        new = cls(int(weight.shape[0]), float(eps), bias=isinstance(bias, torch.Tensor),
                  device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            new.weight.copy_(weight)
            if new.bias is not None:
                new.bias.copy_(bias)
        new.train(ln.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.rms_norm(x, self.normalized_shape, self.weight, self.eps)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, bias={self.bias is not None}"


def _native_ok(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    if x.device.type != "cpu" or x.dtype not in _NATIVE_DTYPES or x.dim() == 0:
        return False
    needs_grad = x.requires_grad or any(p is not None and p.requires_grad for p in params)
    if torch.is_grad_enabled() and needs_grad:
        return False  # autograd needs torch's ops
    return all(p is None or p.device.type == "cpu" for p in params)


def _detached(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()


class _NativeNorm(torch.nn.Module):
    def __init__(self, d: int, eps: float, *, bias: bool, device: Any, dtype: Any,
                 num_threads: int | None) -> None:
        super().__init__()
        if not isinstance(d, int) or d < 1:
            raise ValueError(f"d: expected a positive int, got {d!r}")
        eps = float(eps)
        if not eps >= 0.0:
            raise ValueError(f"eps: expected a finite number >= 0, got {eps}")
        self.normalized_shape = (d,)
        self.eps = eps
        self.num_threads = num_threads
        self.weight = torch.nn.Parameter(torch.ones(d, device=device, dtype=dtype))
        self.bias = torch.nn.Parameter(torch.zeros(d, device=device, dtype=dtype)) if bias else None

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.normalized_shape[0]:
            raise ValueError(f"x: expected shape (..., {self.normalized_shape[0]}), got {tuple(x.shape)}")

    @classmethod
    def _from(cls, module: torch.nn.Module, *, num_threads: int | None = None):
        weight = getattr(module, "weight", None)
        shape = tuple(getattr(module, "normalized_shape", ()) or ())
        if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or len(shape) != 1:
            raise ValueError(f"module: expected a norm over the last axis with a 1-D weight, got "
                             f"{type(module).__name__} normalized_shape={shape}")
        bias = getattr(module, "bias", None)
        eps = getattr(module, "eps", None)
        if eps is None:  # nn.RMSNorm(eps=None): the input dtype's machine eps; we fix float32's
            eps = torch.finfo(torch.float32).eps
        new = cls(int(shape[0]), float(eps), bias=isinstance(bias, torch.Tensor), device=weight.device,
                  dtype=weight.dtype, num_threads=num_threads)
        with torch.no_grad():
            new.weight.copy_(weight)
            if new.bias is not None:
                new.bias.copy_(bias)
        return new.train(module.training)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, bias={self.bias is not None}, native kernels"


class LayerNorm(_NativeNorm):
    """LayerNorm ``z = alpha * (x - mu 1) / sqrt(sigma^2 + eps) + beta`` (G7, G8) on the native kernel.

    Same function and state-dict names as ``torch.nn.LayerNorm(d, eps, bias=...)``
    (``elementwise_affine=True``); :func:`geonorm_core.ops.layer_norm` when :func:`_native_ok`, else
    ``torch.nn.functional.layer_norm``.

    Parameters
    ----------
    d : normalized size (the last axis).
    eps : added to the population variance inside the root.
    bias : whether the layer has a bias beta.
    num_threads : threads for the kernel (default :func:`geonorm_core.get_num_threads`).
    """

    def __init__(self, d: int, eps: float = 1e-5, *, bias: bool = True, device: Any = None, dtype: Any = None,
                 num_threads: int | None = None) -> None:
        super().__init__(d, eps, bias=bias, device=device, dtype=dtype, num_threads=num_threads)

    @classmethod
    def from_module(cls, module: torch.nn.Module, *, num_threads: int | None = None) -> LayerNorm:
        """The native twin of a ``torch.nn.LayerNorm`` (same gain, bias, eps)."""
        return cls._from(module, num_threads=num_threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():  # inference: the core's fast path takes a well-formed call at once
            y = _fast_normalize(_core.LAYER_NORM, x, self.weight, self.bias, self.eps, None,
                                     self.num_threads)
            if y is not None:
                return y
        self._check(x)
        if _native_ok(x, self.weight, self.bias):
            return ops.layer_norm(x, _detached(self.weight), _detached(self.bias), self.eps,
                                  num_threads=self.num_threads)
        return torch.nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class RMSNorm(_NativeNorm):
    """RMSNorm ``r = g * x / sqrt(||x||^2 / d + eps) (+ b)`` (G8) on the native kernel.

    Same function as ``torch.nn.RMSNorm(d, eps)`` (``bias=False``) or, with ``bias=True``, as
    :class:`geonorm_core.experiments.convert.AffineRMSNorm`, what a LayerNorm becomes on a stream orthogonal to 1
    (G9).  :func:`geonorm_core.ops.rms_norm` (the bias added to its output) when :func:`_native_ok`,
    else ``torch.nn.functional.rms_norm``.  Parameters as :class:`LayerNorm` (``bias`` defaults to False).
    """

    def __init__(self, d: int, eps: float = 1e-6, *, bias: bool = False, device: Any = None,
                 dtype: Any = None, num_threads: int | None = None) -> None:
        super().__init__(d, eps, bias=bias, device=device, dtype=dtype, num_threads=num_threads)

    @classmethod
    def from_module(cls, module: torch.nn.Module, *, num_threads: int | None = None) -> RMSNorm:
        """The native twin of a ``torch.nn.RMSNorm`` or an ``AffineRMSNorm`` (same gain, bias, eps)."""
        return cls._from(module, num_threads=num_threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            y = _fast_normalize(_core.RMS_NORM, x, self.weight, self.bias, self.eps, None, self.num_threads)
            if y is not None:
                return y
        self._check(x)
        if _native_ok(x, self.weight, self.bias):
            return ops.rms_norm(x, _detached(self.weight), self.eps, bias=_detached(self.bias),
                                num_threads=self.num_threads)
        y = torch.nn.functional.rms_norm(x, self.normalized_shape, self.weight, self.eps)
        return y if self.bias is None else y + self.bias


def use_native_kernels(model: torch.nn.Module, *, num_threads: int | None = None) -> list[str]:
    """Replace, in place, every ``torch.nn.LayerNorm``, ``torch.nn.RMSNorm`` and converted
    ``AffineRMSNorm`` over the last axis of ``model`` by its native twin (:class:`LayerNorm`,
    :class:`RMSNorm`); return the names replaced.

    Outputs are unchanged within the core's contract; only inference (no autograd graph) on CPU tensors
    takes the native path.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    plan = []
    for name, mod in model.named_modules():
        shape = tuple(getattr(mod, "normalized_shape", ()) or ())
        if len(shape) != 1 or not isinstance(getattr(mod, "weight", None), torch.Tensor):
            continue
        if type(mod) is torch.nn.LayerNorm:
            plan.append((name, LayerNorm.from_module(mod, num_threads=num_threads)))
        elif type(mod) in (torch.nn.RMSNorm, AffineRMSNorm):
            plan.append((name, RMSNorm.from_module(mod, num_threads=num_threads)))
    for name, new in plan:
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
    return [name for name, _ in plan]
