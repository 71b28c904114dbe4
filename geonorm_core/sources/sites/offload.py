"""Norms whose weights accelerate offloaded: on ``meta`` until its hook loads them for the forward,
so a site is identified with the tensors that forward uses (its hook's ``weights_map``)."""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def as_the_forward_sees_it(module: torch.nn.Module):
    """A module whose weights accelerate offloaded (on ``meta`` until its hook loads them for the
    forward) holds, inside this context, the tensors its forward uses: those of the hook's
    ``weights_map`` (memory or disk).  Only the module's own tensors; the meta ones come back after."""
    weights = offloaded_weights(module)
    saved = {}
    for name, value in weights.items():
        table = module._parameters if name in module._parameters else module._buffers
        saved[name] = (table, table[name])
        table[name] = torch.nn.Parameter(value, requires_grad=False) if table is module._parameters else value
    try:
        yield
    finally:
        for name, (table, old) in saved.items():
            table[name] = old


def offloaded_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors accelerate loads into ``module`` for its forward when its own are on ``meta``
    (its ``AlignDevicesHook``'s ``weights_map``), on the CPU; empty for a module that holds its weights."""
    hook = getattr(module, "_hf_hook", None)
    hooks = list(getattr(hook, "hooks", None) or ([hook] if hook is not None else []))
    own = dict(module.named_parameters(recurse=False))
    own.update(module.named_buffers(recurse=False))
    for h in hooks:
        weights_map = getattr(h, "weights_map", None)
        if not getattr(h, "offload", False) or weights_map is None:
            continue
        return {name: weights_map[name].detach().to("cpu") for name, t in own.items()
                if t is not None and t.device.type == "meta" and name in weights_map}
    return {}
