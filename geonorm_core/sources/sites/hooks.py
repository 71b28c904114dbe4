"""Forward hooks on norm sites, and the (input, output) tensors a hook sees."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def hook_sites(sites: Sequence, make_hook: Callable[[Any], Callable]) -> list:
    """Register ``make_hook(site)`` as a forward hook (``with_kwargs=True``) on each site's module;
    return the handles (``handle.remove()`` takes a hook off again)."""
    return [site.module.register_forward_hook(make_hook(site), with_kwargs=True) for site in sites]


def hook_tensors(args: tuple, kwargs: dict, output: Any) -> tuple[Any, Any]:
    """(input, output) of a norm module as a forward hook registered ``with_kwargs=True`` sees
    them: the site's "hidden" and "post" tensors, whether the input came positionally or by
    keyword and whether the module returns a tensor or a tuple."""
    hidden = args[0] if args else next(v for v in kwargs.values() if torch.is_tensor(v))
    post = output[0] if isinstance(output, (tuple, list)) else output
    return hidden, post
