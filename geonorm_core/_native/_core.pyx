# cython: language_level=3, boundscheck=False, wraparound=False
"""Thin wrapper over the C core (geonorm.h): releases the GIL, nothing else.

Arrays arrive as *row specs*, tuples (address, n0, n1, d, s0, s1, sd, dtype)
that geonorm_core._arrays builds and validates; this module trusts them.
"""
from libc.stdint cimport int64_t, uintptr_t

cdef extern from "geonorm.h" nogil:
    ctypedef struct gn_rows:
        char *data
        int64_t n0, n1, d, s0, s1, sd
        int dtype
    int gn_simd_supported(int level)
    int gn_simd_set(int level)
    int gn_simd_active()
    int gn_decompose(const gn_rows *x, double *out, int64_t qstride, int nthreads)
    int gn_rotation(const gn_rows *x, const gn_rows *y, double *out, int nthreads)
    int gn_ln_rms_gap(const gn_rows *x, const double *weight, const double *bias, double eps,
                      double *out, int nthreads)
    int gn_normalize(int kind, const gn_rows *x, const gn_rows *out, const void *weight,
                     const void *bias, double eps, int nthreads)
    int gn_site_values(const gn_rows *x, const gn_rows *y, const double *weight, const double *bias,
                       double eps, double *out, int64_t qstride, int nthreads)

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int gn_omp_max_threads(void) { return omp_get_max_threads(); }
    static int gn_has_openmp(void) { return 1; }
    #else
    static int gn_omp_max_threads(void) { return 1; }
    static int gn_has_openmp(void) { return 0; }
    #endif
    """
    int gn_omp_max_threads()
    int gn_has_openmp()

SIMD_PATHS = ("scalar", "avx2", "avx512")
REMOVE_UNIFORM, LAYER_NORM, RMS_NORM = 0, 1, 2


cdef gn_rows _rows(tuple spec):
    cdef gn_rows r
    r.data = <char *><uintptr_t>spec[0]
    r.n0, r.n1, r.d, r.s0, r.s1, r.sd, r.dtype = spec[1:]
    return r


def simd_supported():
    """Names of the SIMD paths this CPU can run, baseline first."""
    return [name for level, name in enumerate(SIMD_PATHS) if gn_simd_supported(level)]


def simd_active():
    return SIMD_PATHS[gn_simd_active()]


def set_simd(str name):
    """Force a SIMD path for this process (tests use it to cover every path)."""
    if name not in SIMD_PATHS:
        raise ValueError(f"SIMD path must be one of {SIMD_PATHS}, got {name!r}")
    if gn_simd_set(SIMD_PATHS.index(name)) != 0:
        raise ValueError(f"this CPU cannot run the {name!r} path; it has {simd_supported()}")


def openmp():
    return bool(gn_has_openmp())


def max_threads():
    return gn_omp_max_threads()


def decompose(tuple x, uintptr_t out, int64_t qstride, int nthreads):
    cdef gn_rows xr = _rows(x)
    cdef int rc
    with nogil:
        rc = gn_decompose(&xr, <double *>out, qstride, nthreads)
    if rc:
        raise MemoryError("geonorm: no memory for a scratch row")


def rotation(tuple x, tuple y, uintptr_t out, int nthreads):
    cdef gn_rows xr = _rows(x), yr = _rows(y)
    cdef int rc
    with nogil:
        rc = gn_rotation(&xr, &yr, <double *>out, nthreads)
    if rc:
        raise MemoryError("geonorm: no memory for a scratch row")


def normalize(int kind, tuple x, tuple out, uintptr_t weight, uintptr_t bias, double eps, int nthreads):
    cdef gn_rows xr = _rows(x), orows = _rows(out)
    cdef int rc
    with nogil:
        rc = gn_normalize(kind, &xr, &orows, <const void *>weight, <const void *>bias, eps, nthreads)
    if rc:
        raise MemoryError("geonorm: no memory for a scratch row")


def ln_rms_gap(tuple x, uintptr_t weight, uintptr_t bias, double eps, uintptr_t out, int nthreads):
    cdef gn_rows xr = _rows(x)
    cdef int rc
    with nogil:
        rc = gn_ln_rms_gap(&xr, <const double *>weight, <const double *>bias, eps, <double *>out, nthreads)
    if rc:
        raise MemoryError("geonorm: no memory for a scratch row")


def site_values(tuple x, y, uintptr_t weight, uintptr_t bias, double eps, uintptr_t out, int64_t qstride,
                int nthreads):
    """The per-token quantities of a norm site (geonorm.h's GN_ANGLE_HIDDEN ... order); y: a spec or None."""
    cdef gn_rows xr = _rows(x), yr
    cdef const gn_rows *yp = NULL
    cdef int rc
    if y is not None:
        yr = _rows(y)
        yp = &yr
    with nogil:
        rc = gn_site_values(&xr, yp, <const double *>weight, <const double *>bias, eps, <double *>out, qstride,
                            nthreads)
    if rc:
        raise MemoryError("geonorm: no memory for a scratch row")


# ---- accumulators (stats.c)
#
# What one block adds to accumulate.py's Moments, Histogram and Quantity.  The
# caller passes contiguous float64 values, the histogram's own edges (bins + 1
# of them, np.linspace(lo, hi, bins + 1)) and its int64 counts (added to in
# place).  Only the lengths of edges and counts are checked: a mismatch would
# write out of bounds.

cdef extern from "stats.h" nogil:
    ctypedef struct gn_block_stats:
        int64_t count, nan_count
        double m, r, m2, min, max
    ctypedef struct gn_histogram:
        double lo, hi
        int64_t bins
        const double *edges
        int64_t *counts
        int64_t underflow, overflow, nan
    void gn_block_moments(const double *x, int64_t n, gn_block_stats *out)
    void gn_histogram_add(gn_histogram *h, const double *x, int64_t n, int take_log10)
    void gn_quantity_add(const double *x, int64_t n, int take_log10, gn_block_stats *out, gn_histogram *h)
    double gn_log10_guess(double x)


cdef inline gn_histogram _histogram(double lo, double hi, const double[::1] edges,
                                    int64_t[::1] counts) except *:
    cdef gn_histogram h
    if counts.shape[0] < 1 or edges.shape[0] != counts.shape[0] + 1:
        raise ValueError(f"histogram: need bins >= 1 counts and bins + 1 edges, got {counts.shape[0]} "
                         f"and {edges.shape[0]}")
    h.lo, h.hi, h.bins = lo, hi, counts.shape[0]
    h.edges, h.counts = &edges[0], &counts[0]
    h.underflow = h.overflow = h.nan = 0
    return h


def block_moments(const double[::1] x):
    """(count, nan_count, m, r, m2, min, max) of one block (stats.h's gn_block_stats)."""
    cdef gn_block_stats m
    with nogil:
        gn_block_moments(&x[0], x.shape[0], &m)
    return m.count, m.nan_count, m.m, m.r, m.m2, m.min, m.max


def histogram_add(const double[::1] x, double lo, double hi, const double[::1] edges, int64_t[::1] counts,
                  bint take_log10):
    """Count x (or log10(x)) into counts; return the (underflow, overflow, nan) it adds."""
    cdef gn_histogram h = _histogram(lo, hi, edges, counts)
    with nogil:
        gn_histogram_add(&h, &x[0], x.shape[0], take_log10)
    return h.underflow, h.overflow, h.nan


def quantity_add(const double[::1] x, double lo, double hi, const double[::1] edges, int64_t[::1] counts,
                 bint take_log10):
    """block_moments(x) + histogram_add(x, ...) in one call: a 10-tuple."""
    cdef gn_histogram h = _histogram(lo, hi, edges, counts)
    cdef gn_block_stats m
    with nogil:
        gn_quantity_add(&x[0], x.shape[0], take_log10, &m, &h)
    return m.count, m.nan_count, m.m, m.r, m.m2, m.min, m.max, h.underflow, h.overflow, h.nan


def log10_guess(double x):
    """The log10 histograms' first guess at log10(x), for the tests (positive normal x only)."""
    return gn_log10_guess(x)
