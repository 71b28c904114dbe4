/* Row functions on float64 copies of rows (rotation, LN-RMS gap), written with
 * the path's float64 vector macros, two sums per pass over the row.  Included by
 * geonorm.c once per path (GN_ISA, GN_TARGET defined; GN_TARGET empty and
 * vectors of one double for the scalar baseline). */

#define GN_ROWFN(op) GN_CAT(GN_ISA, row, op)

/* Widen a row to float64; a float64 row is also scaled by 2^-ex so that max |x|
 * is in [0.5, 1).  Returns 1, or for float64 rows 0 for a zero row (dst zeroed,
 * ex = 0) and -1 for a row with NaN/Inf. */
GN_TARGET static int GN_ROWFN(widen)(int dtype, const void *row, int64_t d, double *dst, int *ex)
{
    *ex = 0;
    int64_t k = 0;
#ifdef LOAD_F16 /* SIMD paths: W narrow elements to two float64 vectors at a time */
#define GN_WIDEN_LOOP(LOAD, CT)                                     \
    for (; k + W <= d; k += W) {                                    \
        VF v_ = LOAD((const CT *)row + k);                          \
        VD_STOREU(dst + k, VD_LO(v_));                              \
        VD_STOREU(dst + k + WD, VD_HI(v_));                         \
    }
    switch (dtype) {
    case GN_F32: GN_WIDEN_LOOP(LOAD_F32, float) break;
    case GN_F16: GN_WIDEN_LOOP(LOAD_F16, uint16_t) break;
    case GN_BF16: GN_WIDEN_LOOP(LOAD_BF16, uint16_t) break;
    default: break;
    }
#undef GN_WIDEN_LOOP
#endif
    switch (dtype) { /* the rest (all of it on the scalar path) */
    case GN_F64: memcpy(dst, row, (size_t)d * sizeof(double)); break;
    case GN_F32: for (; k < d; k++) dst[k] = ((const float *)row)[k]; break;
    case GN_F16: for (; k < d; k++) dst[k] = gn_half_to_float(((const uint16_t *)row)[k]); break;
    default: for (; k < d; k++) dst[k] = gn_u2f((uint32_t)((const uint16_t *)row)[k] << 16);
    }
    /* Squares of any 16/32-bit float are normal doubles: no rescaling needed, and a
     * NaN, Inf or zero row makes the callers' sums NaN (or 0) by itself. */
    if (dtype != GN_F64) return 1;
    double m[4] = {0};
    int bad = 0; /* a NaN or Inf entry */
    int64_t i = 0;
    for (; i + 4 <= d; i += 4)
        for (int j = 0; j < 4; j++) {
            double a = fabs(dst[i + j]);
            m[j] = a > m[j] ? a : m[j];
            bad |= !(a <= DBL_MAX);
        }
    for (; i < d; i++) {
        double a = fabs(dst[i]);
        m[0] = a > m[0] ? a : m[0];
        bad |= !(a <= DBL_MAX);
    }
    double amax = fmax(fmax(m[0], m[1]), fmax(m[2], m[3]));
    *ex = 0;
    if (bad) return -1;
    if (amax == 0.0) return 0;
    frexp(amax, ex);
    if (*ex > -1000 && *ex < 1000) { /* 2^-ex is a normal double: scaling by it is exact */
        const double scale = ldexp(1.0, -*ex);
        for (i = 0; i < d; i++) dst[i] *= scale;
    } else {
        for (i = 0; i < d; i++) dst[i] = ldexp(dst[i], -*ex);
    }
    return 1;
}

/* Two sums over float64 rows in one pass, two vector accumulators each (four
 * independent chains); `EXPRA(i)`/`EXPRB(i)` are VDs of the terms at i .. i+WD-1,
 * `TAILA(i)`/`TAILB(i)` the scalar terms at i. */
#define GN_VSUM2(outa, outb, d, EXPRA, EXPRB, TAILA, TAILB)               \
    do {                                                                   \
        VD a0_ = VD_ZERO, a1_ = VD_ZERO, b0_ = VD_ZERO, b1_ = VD_ZERO;     \
        int64_t i_ = 0;                                                    \
        for (; i_ + 2 * WD <= (d); i_ += 2 * WD) {                         \
            a0_ = VD_ADD(a0_, EXPRA(i_));                                  \
            b0_ = VD_ADD(b0_, EXPRB(i_));                                  \
            a1_ = VD_ADD(a1_, EXPRA(i_ + WD));                             \
            b1_ = VD_ADD(b1_, EXPRB(i_ + WD));                             \
        }                                                                  \
        double sa_ = VD_REDUCE(VD_ADD(a0_, a1_)), sb_ = VD_REDUCE(VD_ADD(b0_, b1_)); \
        for (; i_ < (d); i_++) {                                           \
            sa_ += TAILA(i_);                                              \
            sb_ += TAILB(i_);                                              \
        }                                                                  \
        outa = sa_;                                                        \
        outb = sb_;                                                        \
    } while (0)

/* Angle in degrees between two widened, rescaled rows: Kahan's
 * 2 atan2(|x^ - y^|, |x^ + y^|) on the unit vectors, accurate at 0 and 180 too. */
GN_TARGET static double GN_ROWFN(rotation)(const double *x, const double *y, int64_t d)
{
    double nx, ny, qm, qp;
#define SQ_X(i) VD_MUL(VD_LOADU(x + (i)), VD_LOADU(x + (i)))
#define SQ_Y(i) VD_MUL(VD_LOADU(y + (i)), VD_LOADU(y + (i)))
#define SQ_XS(i) (x[i] * x[i])
#define SQ_YS(i) (y[i] * y[i])
    GN_VSUM2(nx, ny, d, SQ_X, SQ_Y, SQ_XS, SQ_YS);
    if (!(nx > 0.0 && ny > 0.0)) return NAN;
    const double a = 1.0 / sqrt(nx), b = 1.0 / sqrt(ny);
    const VD va = VD_SET1(a), vb = VD_SET1(b);
#define DIFF(i) VD_SUB(VD_MUL(va, VD_LOADU(x + (i))), VD_MUL(vb, VD_LOADU(y + (i))))
#define SUMV(i) VD_ADD(VD_MUL(va, VD_LOADU(x + (i))), VD_MUL(vb, VD_LOADU(y + (i))))
#define DIFF2(i) VD_MUL(DIFF(i), DIFF(i))
#define SUM2(i) VD_MUL(SUMV(i), SUMV(i))
#define DIFF2S(i) ((a * x[i] - b * y[i]) * (a * x[i] - b * y[i]))
#define SUM2S(i) ((a * x[i] + b * y[i]) * (a * x[i] + b * y[i]))
    GN_VSUM2(qm, qp, d, DIFF2, SUM2, DIFF2S, SUM2S);
#undef SQ_X
#undef SQ_Y
#undef SQ_XS
#undef SQ_YS
#undef DIFF
#undef SUMV
#undef DIFF2
#undef SUM2
#undef DIFF2S
#undef SUM2S
    return 2.0 * atan2(sqrt(qm), sqrt(qp)) * (180.0 / M_PI);
}

/* One float64 pass over a 16/32-bit row (gn_row_stats): sums of t = x - c,
 * plain and weighted by gg = w^2 and gb = w b (NULL: unit gain, no bias), and
 * the largest |x|, the elements converted on the fly:
 *   s = {sum t^2, sum t, sum gg t^2, sum gg t, sum gb t, max |x|}.
 * Two accumulators per sum (the low and high halves of each load). */
GN_TARGET static void GN_ROWFN(sums)(int dtype, const void *row, int64_t d, double c, const double *gg,
                                      const double *gb, double *s)
{
    VD q0 = VD_ZERO, e0 = VD_ZERO, w20 = VD_ZERO, w10 = VD_ZERO, b10 = VD_ZERO;
    VD q1 = VD_ZERO, e1 = VD_ZERO, w21 = VD_ZERO, w11 = VD_ZERO, b11 = VD_ZERO;
    double amax = 0.0;
    int64_t k = 0;
#ifdef LOAD_F16 /* SIMD paths: W narrow elements, as two float64 vectors, per step */
    const VD vc = VD_SET1(c);
    VF m = VF_ZERO;
#define GN_SUMS_STEP(X, i, q, e, w2, w1, b1)                       \
    do {                                                           \
        const VD t_ = VD_SUB(X, vc);                               \
        q = VD_ADD(q, VD_MUL(t_, t_));                             \
        e = VD_ADD(e, t_);                                         \
        if (gg) {                                                  \
            const VD g_ = VD_MUL(VD_LOADU(gg + (i)), t_);          \
            w2 = VD_ADD(w2, VD_MUL(g_, t_));                       \
            w1 = VD_ADD(w1, g_);                                   \
        }                                                          \
        if (gb) b1 = VD_ADD(b1, VD_MUL(VD_LOADU(gb + (i)), t_));   \
    } while (0)
#define GN_SUMS_LOOP(LOAD, CT)                                        \
    for (; k + W <= d; k += W) {                                      \
        VF v_ = LOAD((const CT *)row + k);                            \
        m = VF_MAX(m, VF_ABS(v_));                                    \
        GN_SUMS_STEP(VD_LO(v_), k, q0, e0, w20, w10, b10);            \
        GN_SUMS_STEP(VD_HI(v_), k + WD, q1, e1, w21, w11, b11);       \
    }
    switch (dtype) {
    case GN_F32: GN_SUMS_LOOP(LOAD_F32, float) break;
    case GN_F16: GN_SUMS_LOOP(LOAD_F16, uint16_t) break;
    case GN_BF16: GN_SUMS_LOOP(LOAD_BF16, uint16_t) break;
    default: break;
    }
    amax = VF_REDUCE_MAX(m);
#undef GN_SUMS_LOOP
#undef GN_SUMS_STEP
#endif
    s[0] = VD_REDUCE(VD_ADD(q0, q1));
    s[1] = VD_REDUCE(VD_ADD(e0, e1));
    s[2] = VD_REDUCE(VD_ADD(w20, w21));
    s[3] = VD_REDUCE(VD_ADD(w10, w11));
    s[4] = VD_REDUCE(VD_ADD(b10, b11));
    for (; k < d; k++) { /* the rest (all of it on the scalar path) */
        const uint16_t *h = (const uint16_t *)row;
        const double x = dtype == GN_F32 ? ((const float *)row)[k]
                         : dtype == GN_F16 ? gn_half_to_float(h[k]) : gn_u2f((uint32_t)h[k] << 16);
        const double t = x - c;
        s[0] += t * t;
        s[1] += t;
        if (gg) {
            s[2] += gg[k] * t * t;
            s[3] += gg[k] * t;
        }
        if (gb) s[4] += gb[k] * t;
        amax = fabs(x) > amax ? fabs(x) : amax;
    }
    s[5] = amax;
}

/* What LayerNorm's mean subtraction changes in one row (G9):
 * ||LN(x) - (RMSNorm_w(x) + b)|| / ||LN(x)||, LN(x) = w (x - mu 1)/sqrt(sigma^2 + eps) + b.
 * The row arrives widened and rescaled by 2^-ex; both norms are invariant to
 * that scale once eps is scaled by 4^-ex, so everything runs in that domain.
 * Statistics: two-pass with the corrected term.  The difference LN - RMS is
 * w (t - x r) with t = (x - mu) a: it cancels only where the two outputs agree,
 * i.e. where the gap itself is tiny. */
GN_TARGET static double GN_ROWFN(gap)(const double *x, int64_t d, int ex, const double *w, const double *b,
                                      double eps)
{
    double s, ss, q, e, num, den;
#define X(i) VD_LOADU(x + (i))
#define XS(i) (x[i])
#define X2(i) VD_MUL(X(i), X(i))
#define X2S(i) (x[i] * x[i])
    GN_VSUM2(s, ss, d, X, X2, XS, X2S);
    const double c = s / (double)d;
    const VD vc = VD_SET1(c);
#define T(i) VD_SUB(X(i), vc)
#define TS(i) (x[i] - c)
#define T2(i) VD_MUL(T(i), T(i))
#define T2S(i) ((x[i] - c) * (x[i] - c))
    GN_VSUM2(q, e, d, T2, T, T2S, TS);
    const double mu = c + e / (double)d, var = fmax(q - e * e / (double)d, 0.0) / (double)d;
    const double eps_s = ldexp(eps, -2 * ex);
    const double a = 1.0 / sqrt(var + eps_s), r = 1.0 / sqrt(ss / (double)d + eps_s);
    const VD va = VD_SET1(a), vr = VD_SET1(r), vmu = VD_SET1(mu), one = VD_SET1(1.0), zero = VD_ZERO;
#define G(i) (w ? VD_LOADU(w + (i)) : one)
#define B(i) (b ? VD_LOADU(b + (i)) : zero)
#define DF(i) VD_MUL(G(i), VD_SUB(VD_MUL(VD_SUB(X(i), vmu), va), VD_MUL(X(i), vr)))
#define LN(i) VD_ADD(VD_MUL(G(i), VD_MUL(VD_SUB(X(i), vmu), va)), B(i))
#define DF2(i) VD_MUL(DF(i), DF(i))
#define LN2(i) VD_MUL(LN(i), LN(i))
#define GS(i) (w ? w[i] : 1.0)
#define DFS(i) (GS(i) * ((x[i] - mu) * a - x[i] * r))
#define DF2S(i) (DFS(i) * DFS(i))
#define LNS(i) (GS(i) * (x[i] - mu) * a + (b ? b[i] : 0.0))
#define LN2S(i) (LNS(i) * LNS(i))
    GN_VSUM2(num, den, d, DF2, LN2, DF2S, LN2S);
#undef X
#undef XS
#undef X2
#undef X2S
#undef T
#undef TS
#undef T2
#undef T2S
#undef G
#undef B
#undef DF
#undef LN
#undef DF2
#undef LN2
#undef GS
#undef DF2S
#undef DFS
#undef LNS
#undef LN2S
    return den > 0.0 ? sqrt(num / den) : NAN;
}

#undef GN_VSUM2
#undef GN_ROWFN
