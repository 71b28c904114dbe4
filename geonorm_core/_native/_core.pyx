# cython: language_level=3, boundscheck=False, wraparound=False
"""Thin wrapper over the C core (geonorm.h): releases the GIL, nothing else.

Arrays arrive as *row specs*, tuples (address, n0, n1, d, s0, s1, sd, dtype)
that geonorm_core._arrays builds and validates; this module trusts them.
"""
from libc.stdint cimport int64_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.math cimport isfinite
import sys

cimport numpy as cnp

import numpy as np

cnp.import_array()

cdef extern from "numpy/arrayobject.h":
    object PyArray_NewLikeArray(cnp.ndarray prototype, cnp.NPY_ORDER order, void *descr, int subok)

cdef extern from "geonorm.h" nogil:
    ctypedef struct gn_rows:
        char *data
        int64_t n0, n1, d, s0, s1, sd
        int dtype
    int gn_simd_supported(int level)
    int64_t gn_serial_threshold(int64_t bytes)
    int64_t gn_stream_threshold(int64_t bytes)
    void gn_widen(int dtype, const void *src, int64_t n, int to_double, void *dst)
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

cdef extern from *:
    """
    #include <stdint.h>
    #if defined(__linux__)
    #include <sys/mman.h>
    #endif
    /* Ask for transparent huge pages under a fresh output of >= 4 MiB, as NumPy does for its own
     * large arrays (torch's CPU allocator does not): writing a fresh 512 MiB output then faults
     * 256 times instead of 131072, which is most of a large norm's time without out=.  Only the
     * whole 2 MiB pages inside the block are advised; advice is all it is (a no-op elsewhere). */
    static void gn_advise_huge(void *p, int64_t nbytes)
    {
    #if defined(__linux__) && defined(MADV_HUGEPAGE)
        const uintptr_t huge = (uintptr_t)2 << 20;
        if (nbytes < ((int64_t)4 << 20)) return;
        uintptr_t a = ((uintptr_t)p + huge - 1) & ~(huge - 1), e = ((uintptr_t)p + (uintptr_t)nbytes) & ~(huge - 1);
        if (e > a) (void)madvise((void *)a, e - a, MADV_HUGEPAGE);
    #else
        (void)p; (void)nbytes;
    #endif
    }
    """
    void gn_advise_huge(void *p, int64_t nbytes) nogil

SIMD_PATHS = ("scalar", "avx2", "avx512", "avx512_bf16")
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


def serial_threshold(int64_t nbytes=-1):
    """Calls over fewer bytes of rows run on the calling thread; set it (nbytes >= 0) and/or read it."""
    return gn_serial_threshold(nbytes)


def stream_threshold(int64_t nbytes=-1):
    """Norm outputs of at least this many bytes are written with non-temporal stores; set and/or read it."""
    return gn_stream_threshold(nbytes)


def advise_huge(uintptr_t address, int64_t nbytes):
    """Huge pages for a fresh output's memory (see gn_advise_huge); _arrays.empty_like calls it."""
    gn_advise_huge(<void *>address, nbytes)


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


# ---- the fast path: NumPy arrays and CPU tensors straight to the kernels
#
# ops.py and measure.py call these first.  They take the common case only -- a C-contiguous,
# aligned array or CPU tensor of a dtype the core reads, gain/bias of d values, a fresh or
# well-formed out= -- check it with a few C comparisons and attribute reads, and run the kernel
# without building row specs.  Anything else returns None and the caller takes the general path
# (_arrays.py), which handles every layout and raises every error; nothing is rejected here.

import ml_dtypes

cdef int _bf16_num = np.dtype(ml_dtypes.bfloat16).num
cdef object _torch = None           # the torch module, once it is imported by someone
cdef object _Tensor = None
cdef object _Parameter = None
cdef dict _torch_codes = {}
cdef int _default_threads = 0       # runtime.get_num_threads's value once chosen (0: ask runtime)
cdef object _get_threads = None     # runtime.get_num_threads


cdef struct gn_view:
    char *data
    int64_t n, d, nbytes
    int dtype, kind      # kind: 1 ndarray, 2 tensor


cdef int _np_code(cnp.ndarray a):
    cdef int t = cnp.PyArray_TYPE(a)
    if not cnp.PyArray_ISNOTSWAPPED(a):
        return -1
    if t == cnp.NPY_FLOAT32:
        return 1
    if t == cnp.NPY_FLOAT64:
        return 0
    if t == cnp.NPY_FLOAT16:
        return 2
    if t == _bf16_num:
        return 3
    return -1


cdef inline bint _torch_ready():
    global _torch, _Tensor, _Parameter
    if _torch is not None:
        return True
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "bfloat16"):
        return False
    _Tensor, _Parameter = torch.Tensor, torch.nn.Parameter
    _torch_codes.update({torch.float64: 0, torch.float32: 1, torch.float16: 2, torch.bfloat16: 3})
    _torch = torch
    return True


cdef int _view(object a, gn_view *v, bint write) except -2:
    """Fill v from a contiguous aligned array/tensor of d >= 1 and >= 1 row: 0; otherwise -1."""
    cdef cnp.ndarray arr
    cdef int nd, code, isz, i
    cdef int64_t total
    if cnp.PyArray_Check(a):
        arr = <cnp.ndarray>a
        nd = cnp.PyArray_NDIM(arr)
        if nd < 1 or not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not cnp.PyArray_ISALIGNED(arr):
            return -1
        if write and not cnp.PyArray_ISWRITEABLE(arr):
            return -1
        code = _np_code(arr)
        if code < 0:
            return -1
        v.d = cnp.PyArray_DIM(arr, nd - 1)
        total = cnp.PyArray_SIZE(arr)
        v.data = <char *>cnp.PyArray_DATA(arr)
        v.kind = 1
    else:
        if not _torch_ready():
            return -1
        if type(a) is not _Tensor and type(a) is not _Parameter:
            return -1
        code = _torch_codes.get(a.dtype, -1)
        if code < 0 or not a.is_cpu or not a.is_contiguous() or a.is_neg():
            return -1
        shape = a.shape
        nd = len(shape)
        if nd < 1:
            return -1
        v.d = shape[nd - 1]
        total = v.d
        for i in range(nd - 1):
            total *= <int64_t>shape[i]
        v.data = <char *><uintptr_t>a.data_ptr()
        v.kind = 2
    if v.d < 1 or total < 1:
        return -1
    isz = 8 if code == 0 else 4 if code == 1 else 2
    if (<uintptr_t>v.data) % isz:
        return -1
    v.dtype = code
    v.n = total // v.d
    v.nbytes = total * isz
    return 0


cdef int _tensor_vector(object a, int64_t d, gn_view *v) except -2:
    """_view for a 1-D tensor of d values (a gain or bias), with fewer of torch's attribute reads."""
    cdef int code
    if not _torch_ready() or (type(a) is not _Tensor and type(a) is not _Parameter):
        return -1
    code = _torch_codes.get(a.dtype, -1)
    if code < 0 or not a.is_cpu or a.dim() != 1 or a.numel() != d or not a.is_contiguous() or a.is_neg():
        return -1
    v.data = <char *><uintptr_t>a.data_ptr()
    if (<uintptr_t>v.data) % (8 if code == 0 else 4 if code == 1 else 2):
        return -1
    v.dtype = code
    v.n = 1
    v.d = d
    v.nbytes = d * (8 if code == 0 else 4 if code == 1 else 2)
    v.kind = 2
    return 0


cdef inline bint _overlap(const gn_view *a, const gn_view *b):
    return a.data < b.data + b.nbytes and b.data < a.data + a.nbytes


cdef bint _same_shape(object a, const gn_view *va, object b, const gn_view *vb):
    cdef int i
    if va.kind != vb.kind or va.dtype != vb.dtype or va.n != vb.n or va.d != vb.d:
        return False
    if va.kind == 1:
        if cnp.PyArray_NDIM(<cnp.ndarray>a) != cnp.PyArray_NDIM(<cnp.ndarray>b):
            return False
        for i in range(cnp.PyArray_NDIM(<cnp.ndarray>a)):
            if cnp.PyArray_DIM(<cnp.ndarray>a, i) != cnp.PyArray_DIM(<cnp.ndarray>b, i):
                return False
        return True
    return a.shape == b.shape


cdef int _vector(object p, int64_t d, int cdtype, const gn_view *avoid, const void **ptr,
                 void **owned) except -2:
    """A gain/bias as d contiguous values of the compute type (cdtype 0: double, 1: float):
    in place when it already is one (and does not overlap `avoid`), else converted into a
    malloc'd copy (*owned, for the caller to free).  0 done, -1 not for the fast path."""
    cdef gn_view v
    ptr[0] = NULL
    owned[0] = NULL
    if p is None:
        return 0
    if cnp.PyArray_Check(p):
        if cnp.PyArray_NDIM(<cnp.ndarray>p) != 1 or _view(p, &v, False) < 0 or v.d != d:
            return -1
    elif _tensor_vector(p, d, &v) < 0:
        return -1
    if v.dtype == cdtype and (avoid == NULL or not _overlap(&v, avoid)):
        ptr[0] = v.data
        return 0
    owned[0] = malloc(<size_t>(d * (8 if cdtype == 0 else 4)))
    if owned[0] == NULL:
        raise MemoryError("geonorm: no memory for a copy of a gain or bias")
    gn_widen(v.dtype, v.data, d, cdtype == 0, owned[0])
    ptr[0] = owned[0]
    return 0


cdef struct _gain_bias:
    const void *w
    const void *b
    void *wown
    void *bown


cdef int _gain_and_bias(object weight, object bias, int64_t d, int cdtype, const gn_view *avoid,
                        _gain_bias *gb) except -2:
    """Both vectors of a norm as _vector gives them (free with _free_gain_bias); -1: not for the
    fast path (nothing left to free)."""
    gb.wown = gb.bown = NULL
    if _vector(weight, d, cdtype, avoid, &gb.w, &gb.wown) < 0:
        return -1
    if _vector(bias, d, cdtype, avoid, &gb.b, &gb.bown) < 0:
        free(gb.wown)
        gb.wown = NULL
        return -1
    return 0


cdef void _free_gain_bias(_gain_bias *gb) noexcept:
    free(gb.wown)
    free(gb.bown)
    gb.wown = gb.bown = NULL


cdef int _threads(object num_threads) except -2:
    """num_threads resolved as runtime.resolve_threads does, or -1 to leave it to the general path."""
    global _default_threads
    if num_threads is None:
        if _default_threads == 0:
            if _get_threads is None:
                return -1
            _default_threads = _get_threads()
        return _default_threads
    # Up to 8 threads (runtime.max_threads()'s least value) nothing is ever clamped; more go to the
    # general path, which clamps them with a warning (and a C int never overflows here).
    if type(num_threads) is int and 1 <= num_threads <= 8:
        return num_threads
    return -1


cdef bint _eps_ok(object eps, double *e):
    if type(eps) is not float and type(eps) is not int:
        return False
    e[0] = eps
    return isfinite(e[0]) and e[0] >= 0.0


def set_default_threads(int n, get_threads=None):
    """runtime.py's default thread count (n >= 1) or its getter (n == 0: ask it on first use)."""
    global _default_threads, _get_threads
    _default_threads = n
    if get_threads is not None:
        _get_threads = get_threads


cdef inline void _spec(gn_rows *r, const gn_view *v):
    cdef int isz = 8 if v.dtype == 0 else 4 if v.dtype == 1 else 2
    r.data = v.data
    r.n0 = 1
    r.n1 = v.n
    r.d = v.d
    r.s0 = 0
    r.s1 = v.d * isz
    r.sd = isz
    r.dtype = v.dtype


cdef object _empty_like(object x, const gn_view *v):
    if v.kind == 1:
        return PyArray_NewLikeArray(<cnp.ndarray>x, cnp.NPY_CORDER, NULL, 0)
    result = _torch.empty_like(x)
    if v.nbytes >= (4 << 20):
        gn_advise_huge(<void *><uintptr_t>result.data_ptr(), v.nbytes)
    return result


def fast_normalize(int kind, x, weight, bias, eps, out, num_threads):
    """gn_normalize on the common case (see above); None when the general path must run."""
    cdef gn_view xv, ov
    cdef gn_rows xr, orows
    cdef double e = 0.0
    cdef int nt, rc, cdtype
    cdef _gain_bias gb
    if not _eps_ok(eps, &e) or _view(x, &xv, False) < 0:
        return None
    nt = _threads(num_threads)
    if nt < 0:
        return None
    if out is None:
        result = _empty_like(x, &xv)
        ov = xv
        ov.data = <char *>cnp.PyArray_DATA(<cnp.ndarray>result) if xv.kind == 1 else \
            <char *><uintptr_t>result.data_ptr()
    else:
        if _view(out, &ov, True) < 0 or not _same_shape(x, &xv, out, &ov) or _overlap(&xv, &ov):
            return None
        result = out
    cdtype = 0 if xv.dtype == 0 else 1
    if kind == REMOVE_UNIFORM:
        weight = bias = None
    if _gain_and_bias(weight, bias, xv.d, cdtype, &ov, &gb) < 0:
        return None
    _spec(&xr, &xv)
    _spec(&orows, &ov)
    with nogil:
        rc = gn_normalize(kind, &xr, &orows, gb.w, gb.b, e, nt)
    _free_gain_bias(&gb)
    if rc:
        raise MemoryError("geonorm: no memory for a scratch row")
    return result


def fast_decompose(x, num_threads):
    """gn_decompose on the common case: (the (7, rows) float64 values, x's leading shape, d), or None."""
    cdef gn_view xv
    cdef gn_rows xr
    cdef int nt, rc
    cdef cnp.npy_intp dims[2]
    if _view(x, &xv, False) < 0:
        return None
    nt = _threads(num_threads)
    if nt < 0:
        return None
    dims[0] = 7
    dims[1] = xv.n
    values = cnp.PyArray_EMPTY(2, dims, cnp.NPY_FLOAT64, 0)
    _spec(&xr, &xv)
    with nogil:
        rc = gn_decompose(&xr, <double *>cnp.PyArray_DATA(<cnp.ndarray>values), xv.n, nt)
    if rc:
        raise MemoryError("geonorm: no memory for a scratch row")
    shape = x.shape
    return values, shape[:len(shape) - 1], xv.d


cdef object _lead_empty(object x, const gn_view *v):
    """A float64 array shaped x.shape[:-1]."""
    cdef cnp.ndarray arr
    cdef int nd, i
    cdef cnp.npy_intp dims[64]
    if v.kind == 1:
        arr = <cnp.ndarray>x
        nd = cnp.PyArray_NDIM(arr)
        return cnp.PyArray_EMPTY(nd - 1, cnp.PyArray_DIMS(arr), cnp.NPY_FLOAT64, 0)
    shape = x.shape
    nd = len(shape)
    for i in range(nd - 1):
        dims[i] = shape[i]
    return cnp.PyArray_EMPTY(nd - 1, dims, cnp.NPY_FLOAT64, 0)


def fast_rotation(x, y, num_threads):
    """gn_rotation on the common case (same shapes, any dtypes): the float64 angles, or None."""
    cdef gn_view xv, yv
    cdef gn_rows xr, yr
    cdef int nt, rc
    if _view(x, &xv, False) < 0 or _view(y, &yv, False) < 0 or xv.kind != yv.kind:
        return None
    if xv.n != yv.n or xv.d != yv.d:
        return None
    if xv.kind == 1:
        if not _same_shape(x, &xv, y, &xv):  # shapes only (dtypes may differ)
            return None
    elif x.shape != y.shape:
        return None
    nt = _threads(num_threads)
    if nt < 0:
        return None
    result = _lead_empty(x, &xv)
    _spec(&xr, &xv)
    _spec(&yr, &yv)
    with nogil:
        rc = gn_rotation(&xr, &yr, <double *>cnp.PyArray_DATA(<cnp.ndarray>result), nt)
    if rc:
        raise MemoryError("geonorm: no memory for a scratch row")
    return result


def fast_ln_rms_gap(x, weight, bias, eps, num_threads):
    """gn_ln_rms_gap on the common case: the float64 gaps, or None."""
    cdef gn_view xv
    cdef gn_rows xr
    cdef double e = 0.0
    cdef int nt, rc
    cdef _gain_bias gb
    if not _eps_ok(eps, &e) or _view(x, &xv, False) < 0:
        return None
    nt = _threads(num_threads)
    if nt < 0:
        return None
    if _gain_and_bias(weight, bias, xv.d, 0, NULL, &gb) < 0:
        return None
    result = _lead_empty(x, &xv)
    _spec(&xr, &xv)
    with nogil:
        rc = gn_ln_rms_gap(&xr, <const double *>gb.w, <const double *>gb.b, e,
                           <double *>cnp.PyArray_DATA(<cnp.ndarray>result), nt)
    _free_gain_bias(&gb)
    if rc:
        raise MemoryError("geonorm: no memory for a scratch row")
    return result


def fast_site_values(hidden, post, gain, bias, eps, num_threads, out):
    """gn_site_values on the common case: (the (q, rows) float64 values, hidden's leading shape), or None.

    out: None or a float64 array (q, rows) with contiguous rows, as measure.token_values takes it."""
    cdef gn_view hv, pv
    cdef gn_rows hr, pr
    cdef const gn_rows *pp = NULL
    cdef double e = 0.0
    cdef int nt, rc, nq
    cdef _gain_bias gb
    cdef cnp.npy_intp dims[2]
    cdef cnp.ndarray o
    cdef int64_t qstride
    if not _eps_ok(eps, &e) or _view(hidden, &hv, False) < 0:
        return None
    if post is not None:
        if _view(post, &pv, False) < 0 or pv.kind != hv.kind or pv.n != hv.n or pv.d != hv.d:
            return None
        if hv.kind == 1:
            if not _same_shape(hidden, &hv, post, &hv):
                return None
        elif hidden.shape != post.shape:
            return None
    nt = _threads(num_threads)
    if nt < 0:
        return None
    nq = 7 if post is not None else 4
    if out is None:
        dims[0] = nq
        dims[1] = hv.n
        values = cnp.PyArray_EMPTY(2, dims, cnp.NPY_FLOAT64, 0)
        qstride = hv.n
    else:
        if not cnp.PyArray_Check(out):
            return None
        o = <cnp.ndarray>out
        if (cnp.PyArray_TYPE(o) != cnp.NPY_FLOAT64 or not cnp.PyArray_ISNOTSWAPPED(o) or cnp.PyArray_NDIM(o) != 2
                or cnp.PyArray_DIM(o, 0) != nq or cnp.PyArray_DIM(o, 1) != hv.n or not cnp.PyArray_ISWRITEABLE(o)
                or (hv.n >= 2 and cnp.PyArray_STRIDE(o, 1) != 8) or cnp.PyArray_STRIDE(o, 0) % 8
                or cnp.PyArray_STRIDE(o, 0) < 8 * hv.n or (<uintptr_t>cnp.PyArray_DATA(o)) % 8):
            return None
        values = out
        qstride = cnp.PyArray_STRIDE(o, 0) // 8
    if _gain_and_bias(gain, bias, hv.d, 0, NULL, &gb) < 0:
        return None
    _spec(&hr, &hv)
    if post is not None:
        _spec(&pr, &pv)
        pp = &pr
    with nogil:
        rc = gn_site_values(&hr, pp, <const double *>gb.w, <const double *>gb.b, e,
                            <double *>cnp.PyArray_DATA(<cnp.ndarray>values), qstride, nt)
    _free_gain_bias(&gb)
    if rc:
        raise MemoryError("geonorm: no memory for a scratch row")
    shape = hidden.shape
    return values, shape[:len(shape) - 1]
