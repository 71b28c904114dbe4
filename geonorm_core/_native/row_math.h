/* Per-row mathematics of geonorm.c, included once into it (one translation unit, so the SIMD
 * kernels' function-level targets and the static helpers stay private to the core):
 * element access, the exact float64 twins rescaled by a power of two, the corrected two-pass
 * moments with the shifted deviation pass, the rms, decompose of one row, the affine (norm) rows
 * and remove_uniform / layer_norm / rms_norm of one row, gains widened to the compute dtype.
 */
#ifndef GN_ROW_MATH_H
#define GN_ROW_MATH_H

static double gn_elem(int dtype, const void *row, int64_t i)
{
    switch (dtype) {
    case GN_F64: return ((const double *)row)[i];
    case GN_F32: return ((const float *)row)[i];
    case GN_F16: return gn_half_to_float(((const uint16_t *)row)[i]);
    default: return gn_bf16_to_float(((const uint16_t *)row)[i]);
    }
}

/* mu, ||Px||, ||x|| of a row, each times 2^-ex (NaN for a row with NaN/Inf).
 * Ratios (cos, angle) are taken before the scale is undone, so that they stay
 * exact for rows whose statistics would be subnormal. */
typedef struct {
    double mean, perp, norm;
    int ex;
    double amax; /* max |x|, not rescaled */
} gn_moments;

/* Power-of-two exponent that brings the row's max |x| into [0.5, 1); returns 0
 * and sets *m for the rows that need no scaling: all zero or not finite. */
static int gn_row_exponent(int dtype, const void *row, int64_t d, int *ex, gn_moments *m)
{
    double amax = 0.0;
    for (int64_t i = 0; i < d; i++) {
        double a = fabs(gn_elem(dtype, row, i));
        if (isnan(a)) {
            amax = a;
            break;
        }
        if (a > amax) amax = a;
    }
    m->ex = 0;
    m->amax = isfinite(amax) ? amax : NAN;
    if (!isfinite(amax)) {
        m->mean = m->perp = m->norm = NAN;
        return 0;
    }
    if (amax == 0.0) {
        m->mean = m->perp = m->norm = 0.0;
        return 0;
    }
    frexp(amax, ex);
    return 1;
}

/* The slow exact twin of gn_row_moments: float64, rescaled by an exact power of
 * two so that no square overflows or underflows.  Taken for rows the fast path
 * cannot vouch for (non-finite sums, tiny or huge values, zero and constant rows). */
static void gn_row_moments_exact(int dtype, const void *row, int64_t d, gn_moments *m)
{
    int ex;
    if (!gn_row_exponent(dtype, row, d, &ex, m)) return;
    gn_ksum s = {0.0, 0.0}, qs = {0.0, 0.0}, es = {0.0, 0.0};
    for (int64_t i = 0; i < d; i++) gn_kadd(&s, ldexp(gn_elem(dtype, row, i), -ex));
    double c = gn_kval(s) / (double)d;
    for (int64_t i = 0; i < d; i++) {
        double t = ldexp(gn_elem(dtype, row, i), -ex) - c;
        gn_kadd(&qs, t * t);
        gn_kadd(&es, t);
    }
    double q = gn_kval(qs), e = gn_kval(es);
    double mu = c + e / (double)d, perp2 = fmax(q - e * e / (double)d, 0.0);
    m->mean = mu;
    m->perp = sqrt(perp2);
    m->norm = sqrt((double)d * mu * mu + perp2);
    m->ex = ex;
}

/* The shift of the deviation pass: the float64 mean of the first (up to) 64
 * entries (the path's head kernel).  Exact for a constant row of a narrow type
 * (a sum of at most 64 copies of a 24-bit significand is exact in float64);
 * within a fraction of sigma of the mean for the rows that occur, and checked
 * after the pass (gn_row_moments). */
static inline double gn_sample_mean(const gn_kernels *k, int dtype, const void *row, int64_t d)
{
    const int64_t n = d < 64 ? d : 64;
    return k[dtype].head(row, n) / (double)n;
}

/* mean, perp norm and norm of one row in one pass over memory: deviations from a
 * shift c (a sample mean), then the corrected two-pass formula
 *   mu = c + e/d,  ||Px||^2 = q - e^2/d   (exact for any c),
 * and ||x||^2 = d mu^2 + ||Px||^2 (G5), so no square of a raw x is taken.  The
 * formula loses accuracy as (c - mu)^2 / sigma^2 grows; when that exceeds 1/16
 * (a sample fooled by a massive entry) the pass is made again around mu, from
 * cache. */
static void gn_row_moments(const gn_kernels *k, int dtype, const void *row, int64_t d, gn_moments *m)
{
    const double tiny = dtype == GN_F64 ? 0x1p-960 : 0x1p-100; /* below: squares lost to underflow */
    double c = gn_sample_mean(k, dtype, row, d);
    if (dtype != GN_F64) c = (float)c; /* the narrow kernels shift by a float */
    if (isfinite(c)) {
        double q, e;
        k[dtype].dev(row, d, c, &q, &e, &m->amax);
        if (!(e * e / (double)d <= (q - e * e / (double)d) / 16.0)) {
            double c2 = c + e / (double)d, amax;
            if (dtype != GN_F64) c2 = (float)c2;
            if (isfinite(c2) && c2 != c) {
                c = c2;
                k[dtype].dev(row, d, c, &q, &e, &amax);
            }
        }
        double mu = c + e / (double)d, perp2 = fmax(q - e * e / (double)d, 0.0);
        double norm2 = (double)d * mu * mu + perp2;
        if (q >= tiny && isfinite(norm2)) {
            m->mean = mu;
            m->perp = sqrt(perp2);
            m->norm = sqrt(norm2);
            m->ex = 0;
            return;
        }
    }
    gn_row_moments_exact(dtype, row, d, m);
}

/* Root mean square sqrt(||x||^2 / d) times 2^-ex, exact for every finite row. */
static double gn_row_rms(const gn_kernels *k, int dtype, const void *row, int64_t d, int *ex)
{
    const double tiny = dtype == GN_F64 ? 0x1p-960 : 0x1p-100;
    double q = k[dtype].sumsq(row, d);
    *ex = 0;
    if (q >= tiny && isfinite(q)) return sqrt(q / (double)d);
    gn_moments m;
    if (!gn_row_exponent(dtype, row, d, ex, &m)) return m.norm;
    gn_ksum qs = {0.0, 0.0};
    for (int64_t i = 0; i < d; i++) {
        double v = ldexp(gn_elem(dtype, row, i), -*ex);
        gn_kadd(&qs, v * v);
    }
    return sqrt(gn_kval(qs) / (double)d);
}

static void gn_row_decompose(const gn_kernels *k, int dtype, const void *row, int64_t d, double *out,
                             int64_t qstride)
{
    gn_moments m;
    gn_row_moments(k, dtype, row, d, &m);
    double coef = m.mean * sqrt((double)d);
    double cos = NAN, angle = NAN;
    if (m.norm > 0.0) { /* the angle with 1 is undefined for the zero vector */
        cos = fmin(fmax(coef / m.norm, -1.0), 1.0);
        angle = atan2(m.perp, coef) * (180.0 / M_PI); /* well conditioned at 0 and 180 too */
    }
    if (m.ex != 0) { /* undo the exact path's rescaling (a libm call: not on the fast path) */
        m.mean = ldexp(m.mean, m.ex);
        coef = ldexp(coef, m.ex);
        m.norm = ldexp(m.norm, m.ex);
        m.perp = ldexp(m.perp, m.ex);
    }
    out[GN_MEAN * qstride] = m.mean;
    out[GN_COEF * qstride] = coef;
    out[GN_NORM * qstride] = m.norm;
    out[GN_PERP_NORM * qstride] = m.perp;
    out[GN_COS * qstride] = cos;
    out[GN_ANGLE * qstride] = angle;
    out[GN_MAX_ABS * qstride] = m.amax;
}

static void gn_store(int dtype, void *row, int64_t i, double v)
{
    switch (dtype) {
    case GN_F64: ((double *)row)[i] = v; break;
    case GN_F32: ((float *)row)[i] = (float)v; break;
    case GN_F16: ((uint16_t *)row)[i] = gn_float_to_half((float)v); break;
    default: ((uint16_t *)row)[i] = gn_float_to_bf16((float)v);
    }
}

/* The exact twin of the affine kernels for rows whose statistics were rescaled
 * by 2^-ex: y = ((x 2^-ex - mu') s') 2^out_ex * w + b, in float64. */
static void gn_row_affine_exact(int dtype, const void *row, void *orow, int64_t d, int ex, double mu, double s,
                                int out_ex, const void *w, const void *b)
{
    for (int64_t i = 0; i < d; i++) {
        double t = ldexp((ldexp(gn_elem(dtype, row, i), -ex) - mu) * s, out_ex);
        if (w) t *= dtype == GN_F64 ? ((const double *)w)[i] : ((const float *)w)[i];
        if (b) t += dtype == GN_F64 ? ((const double *)b)[i] : ((const float *)b)[i];
        gn_store(dtype, orow, i, t);
    }
}

/* 1 / sqrt(sigma^2 + eps) in the domain rescaled by 2^-ex (sigma' = sigma 2^-ex),
 * i.e. 1 / hypot(sigma', sqrt(eps) 2^-ex); when eps dominates a tiny row that
 * factor is 2^ex / sqrt(eps), returned as 1 / sqrt(eps) with 2^ex added to *out_ex
 * so the result is rounded once. */
static double gn_rstd_scaled(double sigma, double eps, int ex, int *out_ex)
{
    double root = sqrt(eps);
    if (root > 0.0 && ex < 0 && !(ldexp(root, -ex) < 0x1p60 * sigma)) {
        *out_ex += ex;
        return 1.0 / root;
    }
    return 1.0 / hypot(sigma, ldexp(root, -ex));
}

/* LayerNorm's two numbers for one row in the common case (remove_uniform's mu too): mu and sigma^2 + eps, from
 * gn_row_moments's shifted deviation pass without what only decompose needs (the two norms and
 * their square roots) and with the divisions by d as products with 1/d (a relative change of
 * 2^-53 in float64 statistics of a float32 output).  At small d these scalar steps, not the row's
 * vector work, set the speed.
 *
 * gn_ln_verdict: the two numbers from one pass around the shift c (q = sum t^2, e = sum t), and
 * whether they hold (gn_ln_from_pass writes them only then): 1 when they hold, 0 when the shift was
 * poor (the pass is made again around the mean), -1 for the rows gn_row_moments must take (squares
 * that underflow, a non-finite row).  A shift is poor when the mean is more than sigma / 2 from
 * it: sigma^2 = (q - e^2/d)/d then loses at most a factor 1 + 1/4 + 2/4 of the sums' relative
 * error to cancellation.  (decompose's gn_row_moments asks sigma / 4; at sigma / 4 a fifth of the
 * rows of d = 64 with mean 0.3 and sigma 2 took the second pass, at sigma / 2 few do.) */
static inline int gn_ln_verdict(int dtype, int64_t d, double c, double q, double e, double inv_d, double eps,
                                   double *mu, double *var)
{
    /* without branches (mu and var are written whatever the verdict): a block's rows take it in turn */
    const double tiny = dtype == GN_F64 ? 0x1p-960 : 0x1p-100;
    const double ee = e * e * inv_d, perp2 = q - ee, m = c + e * inv_d;
    const int shift_ok = ee <= perp2 * 0.25, safe = (q >= tiny) & (fabs((double)d * m * m + perp2) <= DBL_MAX);
    *mu = m;
    *var = perp2 * inv_d + eps;
    return shift_ok * (2 * safe - 1);
}

static inline int gn_ln_from_pass(int dtype, int64_t d, double c, double q, double e, double inv_d, double eps,
                                  double *mu, double *var)
{
    double m, v;
    const int r = gn_ln_verdict(dtype, d, c, q, e, inv_d, eps, &m, &v);
    if (r > 0) {
        *mu = m;
        *var = v;
    }
    return r;
}

/* The second pass, around the first pass's mean (e: its sum of t around 0), from cache. */
static int gn_row_ln_shifted(const gn_kernels *k, int dtype, const void *row, int64_t d, double e, double inv_d,
                             double eps, double *mu, double *var)
{
    double c = e * inv_d, q, amax;
    if (dtype != GN_F64) c = (float)c;
    if (!isfinite(c)) return 0;
    k[dtype].dev(row, d, c, &q, &e, &amax);
    return gn_ln_from_pass(dtype, d, c, q, e, inv_d, eps, mu, var) > 0;
}

/* Returns 0 for the rows gn_row_moments must take. */
static int gn_row_ln_fast(const gn_kernels *k, int dtype, const void *row, int64_t d, double inv_d, double eps,
                          double *mu, double *var)
{
    double q, e, amax;
    /* shift 0 first (rows sit near orthogonal to 1), with the sums gn_normalize_rows's blocks take */
    if (k[dtype].dev_rows) k[dtype].dev_rows(&row, 1, d, &q, &e);
    else k[dtype].dev(row, d, 0.0, &q, &e, &amax);
    const int r = gn_ln_from_pass(dtype, d, 0.0, q, e, inv_d, eps, mu, var);
    return r ? r > 0 : gn_row_ln_shifted(k, dtype, row, d, e, inv_d, eps, mu, var);
}

/* One row of remove_uniform (y = x - mu 1), layer_norm or rms_norm.  The SIMD
 * kernels take rows whose statistics needed no rescaling; the others (values
 * near the ends of the float64 range) take the exact float64 twin.  stream: the
 * affine kernels' non-temporal stores (gn_normalize decides). */
static void gn_row_normalize(const gn_kernels *k, int kind, int dtype, const void *row, void *orow, int64_t d,
                             const void *w, const void *b, double eps, int stream)
{
    double mu = 0.0, s = 1.0;
    int ex, out_ex = 0;
    if (kind != GN_RMS_NORM && gn_row_ln_fast(k, dtype, row, d, 1.0 / (double)d, eps, &mu, &s)) {
        if (kind == GN_LAYER_NORM) k[dtype].affine(row, orow, d, mu, 1.0 / sqrt(s), w, b, stream);
        else k[dtype].affine(row, orow, d, mu, 1.0, NULL, NULL, stream); /* remove_uniform: x - mu 1 */
        return;
    }
    /* Rows that needed no rescaling (ex == 0: their squares are finite normal doubles) take
     * 1 / sqrt(sigma^2 + eps) directly; hypot, ldexp and sqrt(eps) are libm calls that cost more
     * than the whole row at small d. */
    if (kind == GN_RMS_NORM) {
        double rms = gn_row_rms(k, dtype, row, d, &ex);
        /* b: the RMSNorm + beta of a converted LayerNorm (G9) */
        s = ex == 0 ? 1.0 / sqrt(rms * rms + eps) : gn_rstd_scaled(rms, eps, ex, &out_ex);
    } else {
        gn_moments m;
        gn_row_moments(k, dtype, row, d, &m);
        mu = m.mean;
        ex = m.ex;
        if (kind == GN_LAYER_NORM) {
            s = ex == 0 ? 1.0 / sqrt(m.perp * m.perp / (double)d + eps)
                        : gn_rstd_scaled(m.perp / sqrt((double)d), eps, ex, &out_ex);
        } else {
            out_ex = ex; /* P x = 2^ex (x' - mu') */
            w = b = NULL;
        }
    }
    if (ex == 0 && out_ex == 0)
        k[dtype].affine(row, orow, d, mu, s, w, b, stream);
    else
        gn_row_affine_exact(dtype, row, orow, d, ex, mu, s, out_ex, w, b);
}

/* n values of any dtype as float (to_double 0) or double (1): gains and biases in the compute type. */
#ifdef GN_X86
/* half -> float with F16C, 8 at a time (the AVX2 and AVX-512 paths' CPUs have it) */
__attribute__((target("avx,f16c"))) static void gn_widen_f16c(const uint16_t *h, int64_t n, float *f)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(f + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < n; i++) f[i] = gn_half_to_float(h[i]);
}
#endif

void gn_widen(int dtype, const void *src, int64_t n, int to_double, void *dst)
{
    float *f = (float *)dst;
    double *g = (double *)dst;
    const uint16_t *h = (const uint16_t *)src;
    const float *s = (const float *)src;
    const double *e = (const double *)src;
    /* one loop per pair, so that each vectorizes */
    if (to_double) {
        if (dtype == GN_F64) memcpy(g, e, (size_t)n * 8);
        else if (dtype == GN_F32) for (int64_t i = 0; i < n; i++) g[i] = s[i];
        else if (dtype == GN_BF16) for (int64_t i = 0; i < n; i++) g[i] = gn_bf16_to_float(h[i]);
        else for (int64_t i = 0; i < n; i++) g[i] = gn_half_to_float(h[i]);
    } else {
        if (dtype == GN_F64) for (int64_t i = 0; i < n; i++) f[i] = (float)e[i];
        else if (dtype == GN_F32) memcpy(f, s, (size_t)n * 4);
        else if (dtype == GN_BF16) for (int64_t i = 0; i < n; i++) f[i] = gn_bf16_to_float(h[i]);
#ifdef GN_X86
        else if (gn_simd_active() >= GN_AVX2) gn_widen_f16c(h, n, f);
#endif
        else for (int64_t i = 0; i < n; i++) f[i] = gn_half_to_float(h[i]);
    }
}

#endif /* GN_ROW_MATH_H */
