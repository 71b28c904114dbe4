"""Builds geonorm's native core: geonorm.c (the row kernels, with OpenMP and
per-function SIMD targets) and stats.c (the accumulators' per-block work),
wrapped by Cython.  The build is portable (no -march=native): the CPU is probed
at run time.  GEONORM_NO_OPENMP=1 builds without OpenMP (single-threaded) for
compilers that lack it."""
import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

native = "geonorm_core/_native"
openmp = [] if os.environ.get("GEONORM_NO_OPENMP") else ["-fopenmp"]
# -ffp-contract=off: the kernels write their FMAs explicitly; a multiply-subtract the compiler
# fused on its own would round a*x and b*y differently and break exact zeros (the rotation of
# identical rows, a*x - a*x).
compile_args = ["-O3", "-std=gnu11", "-fno-math-errno", "-ffp-contract=off", "-Wall", *openmp]
if sys.platform == "darwin" and openmp:
    compile_args = [a for a in compile_args if a != "-fopenmp"] + ["-Xpreprocessor", "-fopenmp"]

core = Extension(
    "geonorm_core._native._core",
    sources=[f"{native}/_core.pyx", f"{native}/geonorm.c", f"{native}/stats.c"],
    depends=[f"{native}/{h}" for h in
             ("geonorm.h", "dtypes.h", "row_math.h", "site_math.h", "kernels_scalar.h", "kernels_narrow.h",
              "kernels_f64.h", "kernels_path.h", "kernels_rows.h", "kernels_affine.h", "stats.h")],
    include_dirs=[native, numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=compile_args,
    extra_link_args=openmp,
)

setup(
    ext_modules=cythonize([core], language_level=3),
    # proofs/ lives at the top of the repository but installs inside the package,
    # so no generic top-level name lands in a user's site-packages.
    packages=[*find_packages(include=["geonorm_core", "geonorm_core.*"]), "geonorm_core.proofs"],
    package_dir={"geonorm_core.proofs": "proofs"},
)
