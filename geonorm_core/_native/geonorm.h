/* geonorm native core: the geometry of hidden vectors, row by row.
 *
 * Every operation works on a batch of rows (vectors of length d) described by
 * gn_rows, reads each row from memory once, and makes its extra passes while
 * the row is in cache.  Sums are accumulated in float64; variances are two-pass
 * with the corrected term (never E[x^2] - mu^2).  See docs/identities.md.
 */
#ifndef GEONORM_H
#define GEONORM_H

#include <stdint.h>

enum gn_dtype { GN_F64 = 0, GN_F32 = 1, GN_F16 = 2, GN_BF16 = 3, GN_NDTYPES = 4 };
/* GN_AVX512_BF16: the AVX-512 path with its bf16 outputs rounded by VCVTNEPS2BF16 */
enum gn_simd { GN_SCALAR = 0, GN_AVX2 = 1, GN_AVX512 = 2, GN_AVX512_BF16 = 3, GN_NSIMD = 4 };
enum gn_norm { GN_REMOVE_UNIFORM = 0, GN_LAYER_NORM = 1, GN_RMS_NORM = 2 };

/* n0 * n1 rows of d elements; row (i, j) starts at data + i*s0 + j*s1 and its
 * elements are sd bytes apart.  Any strides work; rows that are contiguous and
 * aligned are read in place, the others are gathered into a scratch row. */
typedef struct {
    char *data;
    int64_t n0, n1, d;
    int64_t s0, s1, sd;
    int dtype;
} gn_rows;

/* The quantities of decompose, in this order: quantity q of row r is
 * out[q * qstride + r], so one output array can serve several calls. */
enum { GN_MEAN = 0, GN_COEF, GN_NORM, GN_PERP_NORM, GN_COS, GN_ANGLE, GN_MAX_ABS, GN_NQUANT };

/* Calls over fewer bytes of rows than this run on the calling thread (no OpenMP team). */
#ifndef GN_SERIAL_BYTES_DEFAULT
#define GN_SERIAL_BYTES_DEFAULT (512 << 10)
#endif
/* Sets the threshold when bytes >= 0; returns the one in force. */
int64_t gn_serial_threshold(int64_t bytes);
/* Norm outputs of at least this many bytes are written with non-temporal stores; set it (bytes >= 0)
 * and/or read it (bytes < 0). */
int64_t gn_stream_threshold(int64_t bytes);

/* n values of any dtype as float (to_double 0) or double (1). */
void gn_widen(int dtype, const void *src, int64_t n, int to_double, void *dst);

int gn_simd_supported(int level); /* 1 when this CPU runs the path */
int gn_simd_set(int level);       /* 0 on success, -1 when unsupported */
int gn_simd_active(void);

/* All return 0 on success and -1 when scratch memory could not be allocated. */
int gn_decompose(const gn_rows *x, double *out, int64_t qstride, int nthreads);
int gn_rotation(const gn_rows *x, const gn_rows *y, double *out, int nthreads);
/* ||LN(x) - (RMSNorm_w(x) + b)|| / ||LN(x)|| per row (weight, bias: NULL or d doubles);
 * the same row function as gn_site_values' gap. */
int gn_ln_rms_gap(const gn_rows *x, const double *weight, const double *bias, double eps, double *out,
                  int nthreads);
/* weight and bias: NULL or d contiguous values of the compute type
 * (float for f32/f16/bf16 rows, double for f64 rows). */
int gn_normalize(int kind, const gn_rows *x, const gn_rows *out, const void *weight,
                 const void *bias, double eps, int nthreads);

/* The per-token quantities of one norm site (geonorm_core.measure), in this order:
 * quantity q of row r is out[q * qstride + r].  A row pair is read from memory once
 * for all of them: on the SIMD paths each 16/32-bit row is summed in one pass in
 * float32 lanes with float64 carries (the hidden row's pass also takes the gap's
 * gain-weighted sums), which gives the angles, norms, max, the gap (bitwise
 * gn_ln_rms_gap's) and the norms of the rotation's Kahan pass, made from cache;
 * rows those sums cannot vouch for take float64 sums or the ops' row functions.
 * y (the norm's output) may be NULL: then only the first four are written. */
enum { GN_ANGLE_HIDDEN = 0, GN_NORM_HIDDEN, GN_MAX_ABS_HIDDEN, GN_LN_RMS_GAP, GN_ANGLE_POST, GN_NORM_POST,
       GN_ROTATION, GN_NSITE };
int gn_site_values(const gn_rows *x, const gn_rows *y, const double *weight, const double *bias, double eps,
                   double *out, int64_t qstride, int nthreads);

#endif
