"""Deprecated alias of :mod:`geonorm_core.dumps.dask` (kept for one release): the Dask scale-out
lives with the dumps now.  ``geonorm_core.dask.analyze_array`` keeps working."""
from .dumps.dask import *  # noqa: F401,F403
from .dumps.dask import __all__  # noqa: F401
