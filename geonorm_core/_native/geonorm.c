/* geonorm native core: the SIMD kernels per path, their dispatch, and the batch drivers.
 *
 * Layout (one translation unit):
 *   1. the row kernels, instantiated per SIMD path and dtype from templates:
 *      kernels_scalar.h (the float64 baseline), kernels_narrow.h (fp32/fp16/bf16),
 *      kernels_f64.h, all three through kernels_path.h, and kernels_rows.h
 *      (rotation and LN-RMS gap on rows widened to float64)
 *   2. run-time dispatch (CPU probe, forced path)
 *   3. per-row mathematics (row_math.h): moments with an exact fallback, the norm ops
 *   4. the batch drivers (OpenMP over row chunks, gather/scatter of strided rows), with the
 *      per-site mathematics (site_math.h: rotation, LN-RMS gap, the fused pass's statistics)
 *      before the drivers that use it
 *
 * One build runs everywhere: the AVX2 and AVX-512 kernels carry function-level
 * target attributes and run only when the CPU has them.
 */
#include "geonorm.h"
#include "dtypes.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GN_X86 1
#endif

#define GN_CAT_(a, b, c) a##_##b##_##c
#define GN_CAT(a, b, c) GN_CAT_(a, b, c)

/* ---------------------------------------------------------------- 1. kernels */

typedef struct {
    double (*head)(const void *x, int64_t n);                                /* float64 sum of x[0..n) */
    void (*dev)(const void *x, int64_t d, double c, double *q, double *e,
                double *amax);                                               /* sum t^2, sum t, max|x| */
    double (*sumsq)(const void *x, int64_t d);                               /* sum x^2       */
    void (*affine)(const void *x, void *out, int64_t d, double mu, double scale,
                   const void *w, const void *b, int stream);                /* ((x-mu)s)w+b  */
    /* rotation's two passes over a pair of rows of one narrow type (SIMD paths only; NULL
     * elsewhere, where the float64 row functions serve) */
    void (*sumsq2)(const void *x, const void *y, int64_t d, double *nx, double *ny);
    /* nextx, nexty: rows to prefetch meanwhile (NULL: none) */
    void (*kahan)(const void *x, const void *y, int64_t d, double s, const void *nextx, const void *nexty,
                  double *qm, double *qp);
    /* the fused site pass over a hidden row (kernels_narrow.h); NULL where rotation's are */
    void (*devw)(const void *x, int64_t d, double c, const float *gg, const float *gb, double *s);
    /* dev around 0 (no max) of n short rows in one call; NULL where dev serves row by row */
    void (*dev_rows)(const void *const *rows, int n, int64_t d, double *q, double *e);
    /* affine of the rows j < n with ok[j] > 0, in one call; NULL where affine serves row by row */
    void (*affine_rows)(const void *const *rows, void *const *outs, int n, int64_t d, const double *mu,
                        const double *scale, const int *ok, const void *w, const void *b, int stream);
} gn_kernels;

/* Neumaier's compensated sum, for the paths that are the accuracy reference
 * (the scalar baseline and the exact fallback), where speed does not matter. */
typedef struct {
    double s, c;
} gn_ksum;

static inline void gn_kadd(gn_ksum *k, double v)
{
    double t = k->s + v;
    k->c += fabs(k->s) >= fabs(v) ? (k->s - t) + v : (v - t) + k->s;
    k->s = t;
}

static inline double gn_kval(gn_ksum k) { return k.s + k.c; }

/* Weights are float for the 16/32-bit types and double for float64. */
#define GN_WEIGHT(p, i) ((const float *)(p))[i]

#define GN_T f32
#define GN_CT float
#define GN_TO_DOUBLE(v) ((double)(v))
#define GN_FROM_DOUBLE(v) ((float)(v))
#include "kernels_scalar.h"
#undef GN_T
#undef GN_CT
#undef GN_TO_DOUBLE
#undef GN_FROM_DOUBLE

#define GN_T f16
#define GN_CT uint16_t
#define GN_TO_DOUBLE(v) ((double)gn_half_to_float(v))
#define GN_FROM_DOUBLE(v) gn_float_to_half((float)(v))
#include "kernels_scalar.h"
#undef GN_T
#undef GN_CT
#undef GN_TO_DOUBLE
#undef GN_FROM_DOUBLE

#define GN_T bf16
#define GN_CT uint16_t
#define GN_TO_DOUBLE(v) ((double)gn_bf16_to_float(v))
#define GN_FROM_DOUBLE(v) gn_float_to_bf16((float)(v))
#include "kernels_scalar.h"
#undef GN_T
#undef GN_CT
#undef GN_TO_DOUBLE
#undef GN_FROM_DOUBLE

#undef GN_WEIGHT
#define GN_WEIGHT(p, i) ((const double *)(p))[i]
#define GN_T f64
#define GN_CT double
#define GN_TO_DOUBLE(v) (v)
#define GN_FROM_DOUBLE(v) (v)
#include "kernels_scalar.h"
#undef GN_T
#undef GN_CT
#undef GN_TO_DOUBLE
#undef GN_FROM_DOUBLE
#undef GN_WEIGHT

/* The scalar baseline of kernels_rows.h: "vectors" of one double. */
#define GN_ISA scalar
#define GN_TARGET
#define WD 1
#define VD double
#define VD_ZERO 0.0
#define VD_SET1(v) (v)
#define VD_ADD(a, b) ((a) + (b))
#define VD_SUB(a, b) ((a) - (b))
#define VD_MUL(a, b) ((a) * (b))
#define VD_LOADU(p) (*(p))
#define VD_REDUCE(v) (v)
#include "kernels_rows.h"
#undef GN_ISA
#undef GN_TARGET
#undef WD
#undef VD
#undef VD_ZERO
#undef VD_SET1
#undef VD_ADD
#undef VD_SUB
#undef VD_MUL
#undef VD_LOADU
#undef VD_REDUCE

#define GN_KERNELS(isa, t) { GN_CAT(isa, head, t), GN_CAT(isa, dev, t), GN_CAT(isa, sumsq, t), GN_CAT(isa, affine, t) }
#define GN_KERNELS_NARROW(isa, t)                                                                    \
    { GN_CAT(isa, head, t), GN_CAT(isa, dev, t), GN_CAT(isa, sumsq, t), GN_CAT(isa, affine, t),       \
      GN_CAT(isa, sumsq2, t), GN_CAT(isa, kahan, t), GN_CAT(isa, devw, t), GN_CAT(isa, dev_rows, t),   \
      GN_CAT(isa, affine_rows, t) }

/* Each SIMD path includes kernels_path.h: kernels_narrow.h per narrow type, kernels_f64.h. */
#define GN_BLOCK 8

#ifdef GN_X86
/* GCC 11 and clang 9 know the avx512bf16 target and _mm512_cvtneps_pbh */
#if (defined(__clang__) && __clang_major__ >= 9) || (!defined(__clang__) && __GNUC__ >= 11)
#define GN_HAVE_BF16_TARGET 1
#endif
/* AVX-512 (F, BW, DQ, VL) with F16C and FMA. */
#define GN_ISA avx512
#define GN_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")))
#define W 16
#define WD 8
#define VF __m512
#define VD __m512d
#define VF_ZERO _mm512_setzero_ps()
#define VF_SET1 _mm512_set1_ps
#define VF_ADD _mm512_add_ps
#define VF_SUB _mm512_sub_ps
#define VF_MUL _mm512_mul_ps
#define VF_FMA _mm512_fmadd_ps
#define VF_FNMA _mm512_fnmadd_ps
#define VF_LOADU _mm512_loadu_ps
#define VD_ZERO _mm512_setzero_pd()
#define VD_SET1 _mm512_set1_pd
#define VD_ADD _mm512_add_pd
#define VD_SUB _mm512_sub_pd
#define VD_MUL _mm512_mul_pd
#define VD_FMA _mm512_fmadd_pd
#define VD_LOADU _mm512_loadu_pd
#define VD_STOREU _mm512_storeu_pd
#define VD_REDUCE _mm512_reduce_add_pd
#define VF_MAX _mm512_max_ps
#define VF_ABS _mm512_abs_ps
#define VF_REDUCE_MAX _mm512_reduce_max_ps
#define VD_MAX _mm512_max_pd
#define VD_ABS _mm512_abs_pd
#define VD_REDUCE_MAX _mm512_reduce_max_pd
#define VD_LO(v) _mm512_cvtps_pd(_mm512_castps512_ps256(v))
#define VD_HI(v) _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)))
#define LOAD_F32(p) _mm512_loadu_ps(p)
#define LOAD_F16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define LOAD_BF16(p) \
    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#define STORE_F32(p, v) _mm512_storeu_ps(p, v)
#define STORE_F16(p, v) \
    _mm256_storeu_si256((__m256i *)(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))
#define STORE_BF16(p, v) _mm256_storeu_si256((__m256i *)(p), _mm512_cvtepi32_epi16(avx512_bf16_bits(v)))
/* non-temporal twins of the stores, for aligned p */
#define STREAM_F32(p, v) _mm512_stream_ps(p, v)
#define STREAM_F16(p, v) \
    _mm256_stream_si256((__m256i *)(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))
#define STREAM_BF16(p, v) _mm256_stream_si256((__m256i *)(p), _mm512_cvtepi32_epi16(avx512_bf16_bits(v)))
#define VD_STREAM _mm512_stream_pd

/* 32 raw 16-bit elements: two float32 vectors (lanes permuted: fine for sums) and
 * the running max of the magnitudes' bit patterns. */
#define VI __m512i
#define VI_ZERO _mm512_setzero_si512()
#define VI_LOADU(p) _mm512_loadu_si512((const void *)(p))
#define VI_MAXMAG16(m, raw) _mm512_max_epu16(m, _mm512_and_si512(raw, _mm512_set1_epi16(0x7fff)))
#define VI_REDUCE_MAX16 avx512_reduce_max_u16
#define PAIR_BF16(p, raw, va, vb)                                                      \
    do {                                                                               \
        va = _mm512_castsi512_ps(_mm512_unpacklo_epi16(_mm512_setzero_si512(), raw)); \
        vb = _mm512_castsi512_ps(_mm512_unpackhi_epi16(_mm512_setzero_si512(), raw)); \
    } while (0)
/* fp16: convert straight from memory (a second load is cheaper than extracting a half) */
#define PAIR_F16(p, raw, va, vb)                                                   \
    do {                                                                           \
        va = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)));           \
        vb = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((p) + 16)));    \
    } while (0)

GN_TARGET static inline uint16_t avx512_reduce_max_u16(__m512i v)
{
    __m256i m = _mm256_max_epu16(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
    __m128i n = _mm_max_epu16(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
    n = _mm_max_epu16(n, _mm_srli_si128(n, 8));
    n = _mm_max_epu16(n, _mm_srli_si128(n, 4));
    n = _mm_max_epu16(n, _mm_srli_si128(n, 2));
    return (uint16_t)_mm_extract_epi16(n, 0);
}

/* float32 -> bf16 bits (round to nearest even, NaN kept quiet) in 32-bit lanes. */
GN_TARGET static inline __m512i avx512_bf16_bits(__m512 v)
{
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    __m512i qnan = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), r, qnan);
}
/* The sums of 16 vectors' lanes, out[k] = sum of v[k], in one transposed reduction: 30 shuffles
 * and 15 adds for all 16 (one reduction each takes 16 x 8).  Four roundings per sum. */
GN_TARGET static inline void avx512_sum16(const __m512 *v, float *out)
{
    __m512 s[8], t[4], u[2];
    for (int k = 0; k < 8; k++) /* per 128-bit lane: a0+a2, b0+b2, a1+a3, b1+b3 (a = v[2k], b = v[2k+1]) */
        s[k] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * k], v[2 * k + 1]), _mm512_unpackhi_ps(v[2 * k], v[2 * k + 1]));
    for (int k = 0; k < 4; k++) { /* per lane: the partial sums of v[4k .. 4k+3] */
        const __m512d x = _mm512_castps_pd(s[2 * k]), y = _mm512_castps_pd(s[2 * k + 1]);
        t[k] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    for (int k = 0; k < 2; k++) /* lanes L0+L1, L2+L3 of t[2k], then of t[2k+1] */
        u[k] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * k], t[2 * k + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(t[2 * k], t[2 * k + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    _mm512_storeu_ps(out, _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                        _mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1))));
}
#define VF_SUM16 avx512_sum16
#include "kernels_rows.h"

#ifdef GN_HAVE_BF16_TARGET
/* The bf16 affine kernel once more for CPUs with AVX512_BF16 (the avx512_bf16 path, otherwise
 * the avx512 one): its float32 -> bf16 rounding is one VCVTNEPS2BF16 instead of nine
 * instructions, the part of a bf16 norm's work that made it compute-bound.  That instruction
 * flushes float32 subnormals to zero, so a vector holding one is rounded the long way; for every
 * other value, NaN and Inf included, both give the same bits (round to nearest even, NaN quiet). */
#define GN_TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,avx512bf16")))
GN_TARGET_BF16 static inline __m256i avx512bf16_round(__m512 v)
{
    if (__builtin_expect(_mm512_fpclass_ps_mask(v, 0x20) == 0, 1)) return (__m256i)_mm512_cvtneps_pbh(v);
    return _mm512_cvtepi32_epi16(avx512_bf16_bits(v));
}
#undef GN_ISA
#undef GN_TARGET
#define GN_ISA avx512bf16
#define GN_TARGET GN_TARGET_BF16
#define GN_FN(op) GN_CAT(GN_ISA, op, GN_T)
#define GN_T bf16
#define GN_CT uint16_t
#define GN_LOAD LOAD_BF16
#define GN_STORE(p, v) _mm256_storeu_si256((__m256i *)(p), avx512bf16_round(v))
#define GN_STREAM(p, v) _mm256_stream_si256((__m256i *)(p), avx512bf16_round(v))
#define GN_TO_FLOAT(v) gn_bf16_to_float(v)
#define GN_FROM_FLOAT(v) gn_float_to_bf16(v)
#include "kernels_affine.h"
#undef GN_FN
#undef GN_T
#undef GN_CT
#undef GN_LOAD
#undef GN_STORE
#undef GN_STREAM
#undef GN_TO_FLOAT
#undef GN_FROM_FLOAT
#undef GN_ISA
#undef GN_TARGET
#define GN_ISA avx512
#define GN_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")))
#endif

#include "kernels_path.h"

/* AVX2 with F16C and FMA. */
#define GN_ISA avx2
#define GN_TARGET __attribute__((target("avx2,fma,f16c")))
#define W 8
#define WD 4
#define VF __m256
#define VD __m256d
#define VF_ZERO _mm256_setzero_ps()
#define VF_SET1 _mm256_set1_ps
#define VF_ADD _mm256_add_ps
#define VF_SUB _mm256_sub_ps
#define VF_MUL _mm256_mul_ps
#define VF_FMA _mm256_fmadd_ps
#define VF_FNMA _mm256_fnmadd_ps
#define VF_LOADU _mm256_loadu_ps
#define VD_ZERO _mm256_setzero_pd()
#define VD_SET1 _mm256_set1_pd
#define VD_ADD _mm256_add_pd
#define VD_SUB _mm256_sub_pd
#define VD_MUL _mm256_mul_pd
#define VD_FMA _mm256_fmadd_pd
#define VD_LOADU _mm256_loadu_pd
#define VD_STOREU _mm256_storeu_pd
#define VD_REDUCE avx2_reduce_pd
#define VF_MAX _mm256_max_ps
#define VF_ABS(v) _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v)
#define VF_REDUCE_MAX avx2_reduce_max_ps
#define VD_MAX _mm256_max_pd
#define VD_ABS(v) _mm256_andnot_pd(_mm256_set1_pd(-0.0), v)
#define VD_REDUCE_MAX avx2_reduce_max_pd
#define VD_LO(v) _mm256_cvtps_pd(_mm256_castps256_ps128(v))
#define VD_HI(v) _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))
#define LOAD_F32(p) _mm256_loadu_ps(p)
#define LOAD_F16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define LOAD_BF16(p) \
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
#define STORE_F32(p, v) _mm256_storeu_ps(p, v)
#define STORE_F16(p, v) _mm_storeu_si128((__m128i *)(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT))
#define STORE_BF16(p, v) _mm_storeu_si128((__m128i *)(p), avx2_bf16_bits(v))
#define STREAM_F32(p, v) _mm256_stream_ps(p, v)
#define STREAM_F16(p, v) _mm_stream_si128((__m128i *)(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT))
#define STREAM_BF16(p, v) _mm_stream_si128((__m128i *)(p), avx2_bf16_bits(v))
#define VD_STREAM _mm256_stream_pd

/* The sums of 16 vectors' lanes, out[k] = sum of v[k] (as avx512_sum16): three roundings each. */
GN_TARGET static inline void avx2_sum16(const __m256 *v, float *out)
{
    for (int h = 0; h < 2; h++) {
        const __m256 *w = v + 8 * h;
        /* per 128-bit lane: the partial sums of w[0..3], then of w[4..7] */
        const __m256 p = _mm256_hadd_ps(_mm256_hadd_ps(w[0], w[1]), _mm256_hadd_ps(w[2], w[3]));
        const __m256 r = _mm256_hadd_ps(_mm256_hadd_ps(w[4], w[5]), _mm256_hadd_ps(w[6], w[7]));
        _mm256_storeu_ps(out + 8 * h,
                         _mm256_add_ps(_mm256_permute2f128_ps(p, r, 0x20), _mm256_permute2f128_ps(p, r, 0x31)));
    }
}
#define VF_SUM16 avx2_sum16

GN_TARGET static inline double avx2_reduce_pd(__m256d v)
{
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

GN_TARGET static inline double avx2_reduce_max_pd(__m256d v)
{
    __m128d m = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_max_sd(m, _mm_unpackhi_pd(m, m)));
}

GN_TARGET static inline double avx2_reduce_max_ps(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
}

#define VI __m256i
#define VI_ZERO _mm256_setzero_si256()
#define VI_LOADU(p) _mm256_loadu_si256((const __m256i *)(p))
#define VI_MAXMAG16(m, raw) _mm256_max_epu16(m, _mm256_and_si256(raw, _mm256_set1_epi16(0x7fff)))
#define VI_REDUCE_MAX16 avx2_reduce_max_u16
#define PAIR_BF16(p, raw, va, vb)                                                      \
    do {                                                                               \
        va = _mm256_castsi256_ps(_mm256_unpacklo_epi16(_mm256_setzero_si256(), raw)); \
        vb = _mm256_castsi256_ps(_mm256_unpackhi_epi16(_mm256_setzero_si256(), raw)); \
    } while (0)
#define PAIR_F16(p, raw, va, vb)                                                   \
    do {                                                                           \
        va = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)));              \
        vb = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((p) + 8)));        \
    } while (0)

GN_TARGET static inline uint16_t avx2_reduce_max_u16(__m256i v)
{
    __m128i n = _mm_max_epu16(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    n = _mm_max_epu16(n, _mm_srli_si128(n, 8));
    n = _mm_max_epu16(n, _mm_srli_si128(n, 4));
    n = _mm_max_epu16(n, _mm_srli_si128(n, 2));
    return (uint16_t)_mm_extract_epi16(n, 0);
}

/* float32 -> 8 packed bf16 (round to nearest even, NaN kept quiet). */
GN_TARGET static inline __m128i avx2_bf16_bits(__m256 v)
{
    __m256i u = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
    __m256i qnan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    r = _mm256_blendv_epi8(r, qnan, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    __m256i packed = _mm256_packus_epi32(r, r); /* per 128-bit lane: r0-3 r0-3 | r4-7 r4-7 */
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));
}
#include "kernels_rows.h"
#include "kernels_path.h"
#endif /* GN_X86 */

typedef struct {
    int (*widen)(int dtype, const void *row, int64_t d, double *dst, int *ex);
    double (*rotation)(const double *x, const double *y, int64_t d);
    double (*gap)(const double *x, int64_t d, int ex, const double *w, const double *b, double eps);
    void (*sums)(int dtype, const void *row, int64_t d, double c, const double *gg, const double *gb, double *s);
} gn_rowops;

static const gn_rowops *gn_rowops_for(int simd)
{
    static const gn_rowops scalar = {scalar_row_widen, scalar_row_rotation, scalar_row_gap, scalar_row_sums};
#ifdef GN_X86
    static const gn_rowops avx2 = {avx2_row_widen, avx2_row_rotation, avx2_row_gap, avx2_row_sums};
    static const gn_rowops avx512 = {avx512_row_widen, avx512_row_rotation, avx512_row_gap, avx512_row_sums};
    if (simd >= GN_AVX512) return &avx512; /* avx512_bf16 differs only in a kernel */
    if (simd == GN_AVX2) return &avx2;
#endif
    (void)simd;
    return &scalar;
}

static const gn_kernels *gn_table(int simd)
{
    static const gn_kernels scalar[GN_NDTYPES] = {
        GN_KERNELS(scalar, f64), GN_KERNELS(scalar, f32), GN_KERNELS(scalar, f16), GN_KERNELS(scalar, bf16)};
#ifdef GN_X86
    static const gn_kernels avx2[GN_NDTYPES] = {
        GN_KERNELS(avx2, f64), GN_KERNELS_NARROW(avx2, f32), GN_KERNELS_NARROW(avx2, f16),
        GN_KERNELS_NARROW(avx2, bf16)};
    static const gn_kernels avx512[GN_NDTYPES] = {
        GN_KERNELS(avx512, f64), GN_KERNELS_NARROW(avx512, f32), GN_KERNELS_NARROW(avx512, f16),
        GN_KERNELS_NARROW(avx512, bf16)};
#ifdef GN_HAVE_BF16_TARGET
    static const gn_kernels avx512bf16[GN_NDTYPES] = {
        GN_KERNELS(avx512, f64), GN_KERNELS_NARROW(avx512, f32), GN_KERNELS_NARROW(avx512, f16),
        {avx512_head_bf16, avx512_dev_bf16, avx512_sumsq_bf16, avx512bf16_affine_bf16, avx512_sumsq2_bf16,
         avx512_kahan_bf16, avx512_devw_bf16, avx512_dev_rows_bf16, avx512bf16_affine_rows_bf16}};
    if (simd == GN_AVX512_BF16) return avx512bf16;
#endif
    if (simd == GN_AVX512) return avx512;
    if (simd == GN_AVX2) return avx2;
#endif
    (void)simd;
    return scalar;
}

/* --------------------------------------------------------------- 2. dispatch */

int gn_simd_supported(int level)
{
    if (level == GN_SCALAR) return 1;
#ifdef GN_X86
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (level == GN_AVX2) return avx2;
    int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    if (level == GN_AVX512) return avx512;
#ifdef GN_HAVE_BF16_TARGET
    if (level == GN_AVX512_BF16) return avx512 && __builtin_cpu_supports("avx512bf16");
#endif
#endif
    return 0;
}

static int gn_active = -1;

int gn_simd_active(void)
{
    if (gn_active < 0) {
        int best = GN_SCALAR;
        for (int level = GN_SCALAR; level < GN_NSIMD; level++)
            if (gn_simd_supported(level)) best = level;
        gn_active = best;
    }
    return gn_active;
}

int gn_simd_set(int level)
{
    if (level < 0 || level >= GN_NSIMD || !gn_simd_supported(level)) return -1;
    gn_active = level;
    return 0;
}

/* ------------------------------------------------------- 3. row mathematics */

#include "row_math.h"

/* ----------------------------------------------------------- 4. the drivers */

static char *gn_row_ptr(const gn_rows *x, int64_t r)
{
    if (x->n0 == 1) return x->data + r * x->s1; /* the common case: no division */
    int64_t i = x->n1 ? r / x->n1 : 0, j = x->n1 ? r % x->n1 : 0;
    return x->data + i * x->s0 + j * x->s1;
}

/* Rows read (or written) in place: unit element stride and element alignment. */
static int gn_rows_direct(const gn_rows *x)
{
    int64_t isz = gn_itemsize(x->dtype);
    return x->sd == isz && (uintptr_t)x->data % isz == 0 && x->s0 % isz == 0 && x->s1 % isz == 0;
}

static void gn_gather(const gn_rows *x, const char *row, char *dst)
{
    int64_t isz = gn_itemsize(x->dtype);
    for (int64_t i = 0; i < x->d; i++) memcpy(dst + i * isz, row + i * x->sd, (size_t)isz);
}

static void gn_scatter(const gn_rows *x, const char *src, char *row)
{
    int64_t isz = gn_itemsize(x->dtype);
    for (int64_t i = 0; i < x->d; i++) memcpy(row + i * x->sd, src + i * isz, (size_t)isz);
}

/* Rows per scheduling chunk, for n rows of `bytes` bytes on nt threads: about
 * 1 MiB of input, so that each thread streams long runs of memory (the hardware
 * prefetchers lose the stream at every jump: 64 KiB chunks ran the site kernel
 * at 0.78x the speed of 1 MiB ones on two threads), but at least four chunks per
 * thread down to 64 KiB ones, so that a thread the OS preempts (a busy machine,
 * torch's own pool spinning) delays one chunk, not a whole static share.  Rows
 * are independent, so results do not depend on it. */
static int64_t gn_chunk(int64_t n, int64_t bytes, int nt)
{
    int64_t rows = n / (4 * (int64_t)nt), lo = (64 << 10) / bytes, hi = (1 << 20) / bytes;
    rows = rows > hi ? hi : rows;
    rows = rows < lo ? lo : rows;
    rows = rows < 1 ? 1 : rows;
    /* then a number of equal chunks that the team divides evenly: 9 chunks on 2 threads left one
     * thread a chunk alone at the end (4096 x 576 fp32 norms ran 11% slower) */
    int64_t count = (n + rows - 1) / rows;
    count = (count + nt - 1) / nt * nt;
    rows = (n + count - 1) / count;
    return rows < 1 ? 1 : rows;
}

/* Below this many bytes of rows a call runs on the calling thread, with no OpenMP team
 * (starting one costs more than the work); benchmarks/norm_sweep.py --threshold measures it. */
static int64_t gn_serial_bytes = GN_SERIAL_BYTES_DEFAULT;

int64_t gn_serial_threshold(int64_t bytes)
{
    if (bytes >= 0) gn_serial_bytes = bytes;
    return gn_serial_bytes;
}

/* Threads: never more than rows, and one for batches too small to pay for a team
 * (n rows of `bytes` bytes read and written). */
static int gn_threads(int nthreads, int64_t n, int64_t bytes)
{
    if (nthreads < 1) nthreads = 1;
    if ((int64_t)nthreads > n) nthreads = (int)(n > 0 ? n : 1);
    if (n * bytes < gn_serial_bytes) nthreads = 1;
    return nthreads;
}

static int gn_decompose_rows(const gn_rows *x, double *out, int64_t qstride, int64_t r0, int64_t r1)
{
    const int64_t d = x->d;
    const gn_kernels *k = gn_table(gn_simd_active());
    const int direct = gn_rows_direct(x);
    char *scratch = direct ? NULL : malloc((size_t)(d * 8));
    if (!direct && !scratch) return -1;
    for (int64_t r = r0; r < r1; r++) {
        const char *row = gn_row_ptr(x, r);
        if (!direct) {
            gn_gather(x, row, scratch);
            row = scratch;
        }
        gn_row_decompose(k, x->dtype, row, d, out + r, qstride);
    }
    free(scratch);
    return 0;
}

int gn_decompose(const gn_rows *x, double *out, int64_t qstride, int nthreads)
{
    const int64_t n = x->n0 * x->n1, d = x->d, bytes = d * gn_itemsize(x->dtype);
    const int nt = gn_threads(nthreads, n, bytes);
    if (nt == 1) return gn_decompose_rows(x, out, qstride, 0, n);
    const int64_t chunk = gn_chunk(n, bytes, nt);
    int failed = 0;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t c = 0; c < (n + chunk - 1) / chunk; c++)
        failed |= gn_decompose_rows(x, out, qstride, c * chunk, c * chunk + chunk < n ? c * chunk + chunk : n);
    return failed ? -1 : 0;
}

#define GN_LN_BLOCK 8
#define GN_LN_BLOCK_BYTES 4096

/* Outputs of at least this many bytes are written with non-temporal stores: no read for ownership
 * of each line, so a large norm moves the bytes a copy moves (glibc's memcpy does the same for large
 * copies).  32768 x 4096 fp32 LayerNorm with out=: 0.74x a torch copy with plain stores, 1.02-1.12x
 * streamed.  Below the last-level cache's size streaming loses to a caller that reads the output
 * (or writes it again) from cache, so the default is 32 MiB, this host's L3 (norm_sweep.py --stream
 * measures the crossing). */
static int64_t gn_stream_bytes = (int64_t)32 << 20;

int64_t gn_stream_threshold(int64_t bytes)
{
    if (bytes >= 0) gn_stream_bytes = bytes;
    return gn_stream_bytes;
}

static int gn_normalize_rows(int kind, const gn_rows *x, const gn_rows *out, const void *weight,
                             const void *bias, double eps, int64_t r0, int64_t r1, int stream)
{
    const int64_t d = x->d;
    const gn_kernels *k = gn_table(gn_simd_active());
    const int xdirect = gn_rows_direct(x), odirect = gn_rows_direct(out);
    char *scratch = xdirect && odirect ? NULL : malloc((size_t)(2 * d * 8));
    if (!(xdirect && odirect) && !scratch) return -1;
    int64_t r = r0;
    if (kind != GN_RMS_NORM && xdirect && odirect && d * gn_itemsize(x->dtype) <= GN_LN_BLOCK_BYTES) {
        /* Short rows, GN_LN_BLOCK at a time: their statistics, then their scales in one vector
         * step, then the affine rows from cache (at small d the per-row scalar chain -- division,
         * square root -- not the vector work sets the speed; independent rows let it overlap). */
        const double inv_d = 1.0 / (double)d;
        for (; r < r1; r += GN_LN_BLOCK) {
            const int n = r1 - r < GN_LN_BLOCK ? (int)(r1 - r) : GN_LN_BLOCK;
            double mu[GN_LN_BLOCK], var[GN_LN_BLOCK], sc[GN_LN_BLOCK], q[GN_LN_BLOCK], e[GN_LN_BLOCK];
            const void *rows[GN_LN_BLOCK];
            void *outs[GN_LN_BLOCK];
            int ok[GN_LN_BLOCK];
            for (int j = 0; j < n; j++) {
                rows[j] = gn_row_ptr(x, r + j);
                outs[j] = gn_row_ptr(out, r + j);
            }
            const int ln = kind == GN_LAYER_NORM; /* remove_uniform: x - mu 1, no scale, gain or bias */
            if (k[x->dtype].dev_rows) /* the block's first pass in one call */
                k[x->dtype].dev_rows(rows, n, d, q, e);
            for (int j = 0; j < n; j++) {
                if (k[x->dtype].dev_rows) {
                    ok[j] = gn_ln_verdict(x->dtype, d, 0.0, q[j], e[j], inv_d, eps, &mu[j], &var[j]);
                    if (__builtin_expect(!ok[j], 0))
                        ok[j] = gn_row_ln_shifted(k, x->dtype, rows[j], d, e[j], inv_d, eps, &mu[j], &var[j]);
                } else {
                    ok[j] = gn_row_ln_fast(k, x->dtype, rows[j], d, inv_d, eps, &mu[j], &var[j]);
                }
                sc[j] = ln ? 1.0 / sqrt(var[j]) : 1.0;
            }
            const void *w = ln ? weight : NULL, *b = ln ? bias : NULL;
            if (k[x->dtype].affine_rows)
                k[x->dtype].affine_rows(rows, outs, n, d, mu, sc, ok, w, b, stream);
            else
                for (int j = 0; j < n; j++)
                    if (ok[j] > 0) k[x->dtype].affine(rows[j], outs[j], d, mu[j], sc[j], w, b, stream);
            for (int j = 0; j < n; j++) /* the rows the fast statistics could not vouch for */
                if (ok[j] <= 0) gn_row_normalize(k, kind, x->dtype, rows[j], outs[j], d, weight, bias, eps, stream);
        }
    }
    for (; r < r1; r++) {
        const char *row = gn_row_ptr(x, r);
        char *orow = gn_row_ptr(out, r);
        if (!xdirect) {
            gn_gather(x, row, scratch);
            row = scratch;
        }
        char *dst = odirect ? orow : scratch + d * 8;
        gn_row_normalize(k, kind, x->dtype, row, dst, d, weight, bias, eps, stream && odirect);
        if (!odirect) gn_scatter(out, dst, orow);
    }
#ifdef GN_X86
    if (stream) _mm_sfence(); /* this thread's streamed lines reach memory before the team's barrier */
#endif
    free(scratch);
    return 0;
}

int gn_normalize(int kind, const gn_rows *x, const gn_rows *out, const void *weight, const void *bias,
                 double eps, int nthreads)
{
    const int64_t n = x->n0 * x->n1, d = x->d, bytes = d * gn_itemsize(x->dtype);
    const int nt = gn_threads(nthreads, n, 2 * bytes);
    const int stream = n * bytes >= gn_stream_bytes;
    if (nt == 1) return gn_normalize_rows(kind, x, out, weight, bias, eps, 0, n, stream);
    const int64_t chunk = gn_chunk(n, bytes, nt);
    int failed = 0;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t c = 0; c < (n + chunk - 1) / chunk; c++)
        failed |= gn_normalize_rows(kind, x, out, weight, bias, eps, c * chunk,
                                    c * chunk + chunk < n ? c * chunk + chunk : n, stream);
    return failed ? -1 : 0;
}

#include "site_math.h"

static int gn_rotation_rows(const gn_rows *x, const gn_rows *y, double *out, int64_t r0, int64_t r1)
{
    const int64_t d = x->d;
    const int xdirect = gn_rows_direct(x), ydirect = gn_rows_direct(y);
    const gn_rowops *ops = gn_rowops_for(gn_simd_active());
    const gn_kernels *fast = gn_rotation_fast(x->dtype, y->dtype);
    /* widened x and y rows, then gather buffers for strided ones */
    double *scratch = malloc((size_t)(4 * d) * sizeof(double));
    if (!scratch) return -1;
    for (int64_t r = r0; r < r1; r++) {
        const char *xr = gn_row_ptr(x, r), *yr = gn_row_ptr(y, r);
        if (!xdirect) {
            gn_gather(x, xr, (char *)(scratch + 2 * d));
            xr = (const char *)(scratch + 2 * d);
        }
        if (!ydirect) {
            gn_gather(y, yr, (char *)(scratch + 3 * d));
            yr = (const char *)(scratch + 3 * d);
        }
        out[r] = gn_row_rotation(ops, fast, x->dtype, xr, y->dtype, yr, d, scratch);
    }
    free(scratch);
    return 0;
}

int gn_rotation(const gn_rows *x, const gn_rows *y, double *out, int nthreads)
{
    const int64_t n = x->n0 * x->n1, d = x->d, bytes = d * (gn_itemsize(x->dtype) + gn_itemsize(y->dtype));
    const int nt = gn_threads(nthreads, n, bytes);
    if (nt == 1) return gn_rotation_rows(x, y, out, 0, n);
    const int64_t chunk = gn_chunk(n, bytes, nt);
    int failed = 0;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t c = 0; c < (n + chunk - 1) / chunk; c++)
        failed |= gn_rotation_rows(x, y, out, c * chunk, c * chunk + chunk < n ? c * chunk + chunk : n);
    return failed ? -1 : 0;
}

static int gn_gap_rows(const gn_rows *x, const gn_gap_layer *L, double *out, int64_t r0, int64_t r1)
{
    const int64_t d = x->d;
    const int direct = gn_rows_direct(x);
    const gn_kernels *k = gn_table(gn_simd_active());
    const gn_rowops *ops = gn_rowops_for(gn_simd_active());
    double *scratch = malloc((size_t)(2 * d) * sizeof(double)); /* widened row, gather buffer */
    if (!scratch) return -1;
    for (int64_t r = r0; r < r1; r++) {
        const char *row = gn_row_ptr(x, r);
        if (!direct) {
            gn_gather(x, row, (char *)(scratch + d));
            row = (const char *)(scratch + d);
        }
        out[r] = gn_row_gap(k, ops, L, x->dtype, row, d, scratch);
    }
    free(scratch);
    return 0;
}

int gn_ln_rms_gap(const gn_rows *x, const double *weight, const double *bias, double eps, double *out,
                  int nthreads)
{
    const int64_t n = x->n0 * x->n1, d = x->d, bytes = d * gn_itemsize(x->dtype);
    gn_gap_layer L;
    if (gn_gap_prepare(&L, weight, bias, eps, d)) return -1;
    int failed = 0;
    const int nt = gn_threads(nthreads, n, bytes);
    if (nt == 1) {
        failed = gn_gap_rows(x, &L, out, 0, n);
    } else {
        const int64_t chunk = gn_chunk(n, bytes, nt);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(| : failed)
        for (int64_t c = 0; c < (n + chunk - 1) / chunk; c++)
            failed |= gn_gap_rows(x, &L, out, c * chunk, c * chunk + chunk < n ? c * chunk + chunk : n);
    }
    gn_gap_release(&L);
    return failed ? -1 : 0;
}

static int gn_site_rows(const gn_rows *x, const gn_rows *y, const gn_gap_layer *Lp, double *out,
                        int64_t qstride, int64_t r0, int64_t r1)
{
    const int64_t n = x->n0 * x->n1, d = x->d;
    const int xdirect = gn_rows_direct(x), ydirect = !y || gn_rows_direct(y);
    const gn_kernels *k = gn_table(gn_simd_active());
    const gn_rowops *ops = gn_rowops_for(gn_simd_active());
    const gn_kernels *fast = y ? gn_rotation_fast(x->dtype, y->dtype) : NULL;
    gn_gap_layer L = *Lp;
    /* widened x and y rows, then gather buffers for strided ones */
    double *scratch = malloc((size_t)(4 * d) * sizeof(double));
    if (!scratch) return -1;
    for (int64_t r = r0; r < r1; r++) {
        double *o = out + r, dec[GN_NQUANT];
        const char *xr = gn_row_ptr(x, r), *yr = y ? gn_row_ptr(y, r) : NULL;
        if (!xdirect) {
            gn_gather(x, xr, (char *)(scratch + 2 * d));
            xr = (const char *)(scratch + 2 * d);
        }
        if (y && !ydirect) {
            gn_gather(y, yr, (char *)(scratch + 3 * d));
            yr = (const char *)(scratch + 3 * d);
        }
        /* 16/32-bit rows: one pass over each row from memory (float32 lanes with
         * float64 carries on the SIMD paths), then the rotation's pass from cache */
        gn_row_stats sx, sy;
        int fx, fy = 0;
        o[GN_LN_RMS_GAP * qstride] = gn_row_gap_stats(k, ops, &L, x->dtype, xr, d, scratch, &sx, &fx);
        if (y && y->dtype != GN_F64)
            fy = gn_row_stats32(k, NULL, y->dtype, yr, d, &sy) ? 1 : gn_row_stats64(k, ops, NULL, y->dtype, yr, d, &sy) ? 2 : 0;
        if (fx) {
            gn_angle_norm(&sx, d, &o[GN_ANGLE_HIDDEN * qstride], &o[GN_NORM_HIDDEN * qstride]);
            o[GN_MAX_ABS_HIDDEN * qstride] = sx.amax;
        } else {
            gn_row_decompose(k, x->dtype, xr, d, dec, 1);
            o[GN_ANGLE_HIDDEN * qstride] = dec[GN_ANGLE];
            o[GN_NORM_HIDDEN * qstride] = dec[GN_NORM];
            o[GN_MAX_ABS_HIDDEN * qstride] = dec[GN_MAX_ABS];
        }
        if (!y) continue;
        if (fy) {
            gn_angle_norm(&sy, d, &o[GN_ANGLE_POST * qstride], &o[GN_NORM_POST * qstride]);
        } else {
            gn_row_decompose(k, y->dtype, yr, d, dec, 1);
            o[GN_ANGLE_POST * qstride] = dec[GN_ANGLE];
            o[GN_NORM_POST * qstride] = dec[GN_NORM];
        }
        /* the rotation from the two norms just found, when they are safely in range */
        const double nx = o[GN_NORM_HIDDEN * qstride], ny = o[GN_NORM_POST * qstride];
        /* (the two norms from passes of one kind, so that identical rows get identical
         * scales and rotate by exactly 0) */
        if (fast && fx && fx == fy && nx >= 0x1p-50 && ny >= 0x1p-50 && nx <= 0x1p50 && ny <= 0x1p50) {
            double qm, qp;
            /* the next pair of this chunk, for the pass to prefetch (the hardware prefetchers
             * see no misses while the pass runs from cache, and fall behind) */
            const int pre = xdirect && ydirect && r + 1 < r1 && r + 1 < n;
            const char *nextx = pre ? gn_row_ptr(x, r + 1) : NULL, *nexty = pre ? gn_row_ptr(y, r + 1) : NULL;
            fast->kahan(xr, yr, d, nx / ny, nextx, nexty, &qm, &qp);
            o[GN_ROTATION * qstride] = 2.0 * atan2(sqrt(qm), sqrt(qp)) * (180.0 / M_PI);
        } else {
            o[GN_ROTATION * qstride] = gn_row_rotation(ops, fast, x->dtype, xr, y->dtype, yr, d, scratch);
        }
    }
    free(scratch);
    return 0;
}

int gn_site_values(const gn_rows *x, const gn_rows *y, const double *weight, const double *bias, double eps,
                   double *out, int64_t qstride, int nthreads)
{
    const int64_t n = x->n0 * x->n1, d = x->d;
    const int64_t bytes = d * (gn_itemsize(x->dtype) + (y ? gn_itemsize(y->dtype) : 0));
    gn_gap_layer L;
    if (gn_gap_prepare(&L, weight, bias, eps, d)) return -1;
    int failed = 0;
    const int nt = gn_threads(nthreads, n, bytes);
    if (nt == 1) {
        failed = gn_site_rows(x, y, &L, out, qstride, 0, n);
    } else {
        const int64_t chunk = gn_chunk(n, bytes, nt);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(| : failed)
        for (int64_t c = 0; c < (n + chunk - 1) / chunk; c++)
            failed |= gn_site_rows(x, y, &L, out, qstride, c * chunk, c * chunk + chunk < n ? c * chunk + chunk : n);
    }
    gn_gap_release(&L);
    return failed ? -1 : 0;
}
