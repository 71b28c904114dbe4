"""Which modules might be norms: by type or by name, never BatchNorm/GroupNorm/InstanceNorm, and
the innermost of a wrapper and what it wraps; their advertised eps and normalized size."""
from __future__ import annotations

import torch

_EPS_ATTRS = ("eps", "variance_epsilon", "epsilon")


class ModuleTree:
    """The module tree of a model with ``_original_component`` path components left out.

    TransformerLens 4 re-parents every Hugging Face module it wraps under a bridge component,
    at ``<path>._original_component``; without that component the path is the Hugging Face one
    again.  Where a wrapper and the module it wraps then share a path, the inner one (the
    module that computes) keeps it.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.modules: dict[str, torch.nn.Module] = {}
        self.children: dict[str, set[str]] = {}
        for raw, module in model.named_modules():
            path = [p for p in raw.split(".") if p and p != "_original_component"]
            name = ".".join(path)
            self.modules[name] = module  # named_modules is pre-order: the inner module comes last
            if path:
                self.children.setdefault(".".join(path[:-1]), set()).add(path[-1])

    def holds_candidate(self, name: str) -> bool:
        """Whether a module below ``name`` (another module, not a wrapped twin) is a candidate."""
        prefix = name + "." if name else ""
        own = self.modules[name]
        return any(other is not own and key.startswith(prefix) and is_candidate(other)
                   for key, other in self.modules.items() if key != name)


_NOT_PER_VECTOR = ("BatchNorm", "GroupNorm", "InstanceNorm", "SyncBatchNorm")


def is_candidate(module: torch.nn.Module) -> bool:
    if getattr(module, "geonorm_site", True) is False:  # a module that says it is no norm site
        return False
    if isinstance(module, (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm)):
        return False  # normalize over the batch / channel groups, not each hidden vector
    if isinstance(module, (torch.nn.LayerNorm, torch.nn.RMSNorm)):
        return True
    name = type(module).__name__
    return "Norm" in name and not any(word in name for word in _NOT_PER_VECTOR)


def eps_of(module: torch.nn.Module) -> float | None:
    """The eps the module advertises; None when it has no eps attribute (then it is measured)."""
    for attr in _EPS_ATTRS:
        eps = getattr(module, attr, None)
        if isinstance(eps, (int, float)) or (isinstance(eps, torch.Tensor) and eps.numel() == 1):
            return float(eps)
    if isinstance(module, torch.nn.RMSNorm):
        return float(torch.finfo(torch.float32).eps)  # nn.RMSNorm(eps=None) uses the dtype's eps
    return None


def size_of(module: torch.nn.Module, width: int | None) -> int | None:
    """The normalized size: ``normalized_shape``, else the 1-D weight's length, else the model width
    (a parameter-free norm works at any size).  None when it normalizes over several axes."""
    shape = getattr(module, "normalized_shape", None)
    if isinstance(shape, int):
        return shape
    if isinstance(shape, (tuple, list, torch.Size)) and len(shape) > 0:
        return int(shape[0]) if len(shape) == 1 else None
    weight = tensor_attr(module, "weight")
    if weight is not None:
        return int(weight.shape[0]) if weight.dim() == 1 else None
    for attr in ("hidden_size", "dim", "d_model"):
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return width


def tensor_attr(module: torch.nn.Module, attr: str) -> torch.Tensor | None:
    t = getattr(module, attr, None)
    return t if isinstance(t, torch.Tensor) else None
