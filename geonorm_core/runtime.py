"""Which geonorm this is, which kernels run and on how many threads.

``GEONORM_SIMD=scalar|avx2|avx512`` forces a SIMD path at import (where the CPU
has it); ``GEONORM_NUM_THREADS`` sets the default thread count (else OpenMP's
default, i.e. ``OMP_NUM_THREADS`` or the number of cores).  A thread count above
:func:`max_threads` (from the environment, ``--threads`` or ``num_threads=``) is
clamped to it with a warning: more threads only slow the kernels down, and
counts past a C ``int`` would not even reach them.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from ._native import _core

#: The package's version (pyproject.toml's), recorded in reports and converted models.
__version__ = "0.1.0"

_num_threads: int = 0  # 0: not chosen yet


def max_threads() -> int:
    """The most threads the core runs: 4 per CPU core (at least 8); more are clamped to it."""
    return max(8, 4 * (os.cpu_count() or 1))


def clamp_threads(n: int, what: str = "num_threads") -> int:
    """``n`` threads, or :func:`max_threads` with a ``RuntimeWarning`` when ``n`` is larger."""
    limit = max_threads()
    if n > limit:
        warnings.warn(f"{what}={n} is more threads than this machine can use; clamped to {limit}",
                      RuntimeWarning, stacklevel=3)
        return limit
    return n


def _env_threads() -> int:
    value = os.environ.get("GEONORM_NUM_THREADS", "")
    if value.strip():
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n >= 1:
            return clamp_threads(n, "GEONORM_NUM_THREADS")
        warnings.warn(f"GEONORM_NUM_THREADS must be a positive integer, got {value!r}; ignored",
                      RuntimeWarning, stacklevel=3)
    return clamp_threads(_core.max_threads(), "OMP_NUM_THREADS")


def get_num_threads() -> int:
    """The thread count ops use when called with ``num_threads=None``."""
    global _num_threads
    if _num_threads == 0:
        _num_threads = _env_threads()
        _core.set_default_threads(_num_threads)
    return _num_threads


def set_num_threads(n: int) -> None:
    """Set the default thread count; results are bitwise identical for any n."""
    global _num_threads
    _num_threads = resolve_threads(n)
    _core.set_default_threads(_num_threads)


def resolve_threads(num_threads: int | None) -> int:
    if num_threads is None:
        return get_num_threads()
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer or None, got {num_threads!r}")
    return clamp_threads(num_threads)


def kernel_info() -> dict:
    """What runs here: the active SIMD path, the paths this CPU supports, threads.

    Returns
    -------
    dict
        ``simd``: the active path (``"scalar"``, ``"avx2"``, ``"avx512"`` or ``"avx512_bf16"``: AVX-512
        with bf16 outputs rounded by VCVTNEPS2BF16);
        ``available``: every path this CPU runs; ``forced``: the value of
        ``GEONORM_SIMD`` if set; ``openmp``: built with OpenMP; ``num_threads``.
    """
    return {
        "simd": _core.simd_active(),
        "available": _core.simd_supported(),
        "forced": os.environ.get("GEONORM_SIMD") or None,
        "openmp": _core.openmp(),
        "num_threads": get_num_threads(),
    }


def _apply_env_simd() -> None:
    forced = os.environ.get("GEONORM_SIMD", "").strip().lower()
    if not forced:
        return
    try:
        _core.set_simd(forced)
    except ValueError as err:
        warnings.warn(f"GEONORM_SIMD={forced!r} ignored: {err}; running {_core.simd_active()!r}",
                      RuntimeWarning, stacklevel=3)


_apply_env_simd()
_core.set_default_threads(0, get_num_threads)  # the ops' fast path asks get_num_threads on first use


def cache_dir() -> Path:
    """geonorm's cache folder (the assembled Gemma-3 GGUF, the record of verified dump shards).

    ``$GEONORM_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/geonorm``, else ``~/.cache/geonorm``.
    """
    if os.environ.get("GEONORM_CACHE_DIR"):
        return Path(os.environ["GEONORM_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "geonorm"
