"""The compiled core: C kernels (geonorm.c) behind a thin Cython wrapper (_core.pyx)."""
