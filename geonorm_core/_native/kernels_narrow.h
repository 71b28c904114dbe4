/* SIMD kernels for a 16/32-bit element type, computing in float32 with float64
 * carries.  Included by geonorm.c once per (SIMD path, dtype) with the path's
 * vector macros and GN_T, GN_CT, GN_LOAD, GN_STORE, GN_TO_FLOAT, GN_FROM_FLOAT,
 * GN_RAW16 (1 for the 16-bit types) and, for those, GN_PAIR.
 *
 * Accuracy: four float32 accumulators take at most 8 terms per lane (GN_BLOCK),
 * are added pairwise in float32 and widened into float64, so a block's relative
 * error is below 9u (u = 2^-24: 7 roundings in a lane, 2 in the pairing); the
 * sum of x is only the estimate of a shift, and the
 * deviation t = x - c from the float shift c is exact by Sterbenz's lemma exactly
 * where cancellation would hurt (|mean| >> std).  The caller turns (sum; sum t^2,
 * sum t) into mean and perp norm with the corrected two-pass formula, which holds
 * for any shift c. */

#define GN_FN(op) GN_CAT(GN_ISA, op, GN_T)

/* Four float32 accumulators, added pairwise, into one float64 vector (a block's
 * end: one widening instead of four keeps it a small part of the block's work). */
#define GN_WIDEN4(a, b, c, e) GN_WIDEN1(VF_ADD(VF_ADD(a, b), VF_ADD(c, e)))
#define GN_WIDEN1(v) VD_ADD(VD_LO(v), VD_HI(v))

/* The reductions below read 2W elements per step as two float32 vectors, in
 * whatever lane order is cheapest (GN_PAIR: bf16 by interleaving with zeros,
 * fp16 through F16C); order does not matter to a sum.  For the 16-bit types the
 * max |x| is taken on the raw bits (magnitudes order like their bit patterns). */

/* Load 2W elements at p as two float32 vectors va, vb (for the 16-bit types also
 * folding their magnitudes' bits into the running max m, when TRACK). */
#if GN_RAW16
#define GN_LOAD2(p, va, vb, m, TRACK)            \
    do {                                         \
        VI raw_ = VI_LOADU(p);                   \
        GN_PAIR(p, raw_, va, vb);                \
        if (TRACK) m = VI_MAXMAG16(m, raw_);     \
    } while (0)
#else
#define GN_LOAD2(p, va, vb, m, TRACK)            \
    do {                                         \
        va = GN_LOAD(p);                         \
        vb = GN_LOAD((p) + W);                   \
        if (TRACK) m = VF_MAX(m, VF_MAX(VF_ABS(va), VF_ABS(vb))); \
    } while (0)
#endif

/* Each reduction keeps four float32 accumulators (four independent dependency
 * chains, 4W elements a step), each taking at most GN_BLOCK terms per lane before
 * the block is carried into float64. */
#define GN_BLOCK_END(i, d) ((d) - (i) > 4 * GN_BLOCK * W ? (i) + 4 * GN_BLOCK * W : (d))

/* The float64 sum of the first n entries (n <= 64: the shift's sample).  Two
 * float64 accumulators; exact for a constant row (at most 64 copies of a 24-bit
 * significand). */
GN_TARGET static double GN_FN(head)(const void *xv, int64_t n)
{
    const GN_CT *x = (const GN_CT *)xv;
    VD a = VD_ZERO, b = VD_ZERO;
    int64_t i = 0;
    for (; i + W <= n; i += W) {
        VF v = GN_LOAD(x + i);
        a = VD_ADD(a, VD_LO(v));
        b = VD_ADD(b, VD_HI(v));
    }
    double s = VD_REDUCE(VD_ADD(a, b));
    for (; i < n; i++) s += GN_TO_FLOAT(x[i]);
    return s;
}

#if GN_RAW16
#define GN_VM VI /* the running max |x|: raw bits for the 16-bit types */
#define GN_VM_ZERO VI_ZERO
#else
#define GN_VM VF
#define GN_VM_ZERO VF_ZERO
#endif

/* dev's pass over one block [i, end) of steps of 2W elements: sum t^2 and sum t (t = x - c) in four
 * float32 accumulators each, added pairwise into *q and *e, and max |x| into *m when TRACK (a
 * constant, so each caller gets its own loop).  Returns where the block's steps end. */
GN_TARGET static inline __attribute__((always_inline)) int64_t GN_FN(dev_block)(const GN_CT *x, int64_t i,
                                                                                 int64_t end, VF vc, int TRACK,
                                                                                 VF *q, VF *e, GN_VM *m)
{
    VF q0 = VF_ZERO, q1 = VF_ZERO, q2 = VF_ZERO, q3 = VF_ZERO, v0, v1, v2, v3;
    VF e0 = VF_ZERO, e1 = VF_ZERO, e2 = VF_ZERO, e3 = VF_ZERO;
    GN_VM mm = *m;
    for (; i + 4 * W <= end; i += 4 * W) {
        GN_LOAD2(x + i, v0, v1, mm, TRACK);
        GN_LOAD2(x + i + 2 * W, v2, v3, mm, TRACK);
        v0 = VF_SUB(v0, vc);
        v1 = VF_SUB(v1, vc);
        v2 = VF_SUB(v2, vc);
        v3 = VF_SUB(v3, vc);
        q0 = VF_FMA(v0, v0, q0);
        q1 = VF_FMA(v1, v1, q1);
        q2 = VF_FMA(v2, v2, q2);
        q3 = VF_FMA(v3, v3, q3);
        e0 = VF_ADD(e0, v0);
        e1 = VF_ADD(e1, v1);
        e2 = VF_ADD(e2, v2);
        e3 = VF_ADD(e3, v3);
    }
    if (i + 2 * W <= end) {
        GN_LOAD2(x + i, v0, v1, mm, TRACK);
        v0 = VF_SUB(v0, vc);
        v1 = VF_SUB(v1, vc);
        q0 = VF_FMA(v0, v0, q0);
        q1 = VF_FMA(v1, v1, q1);
        e0 = VF_ADD(e0, v0);
        e1 = VF_ADD(e1, v1);
        i += 2 * W;
    }
    *q = VF_ADD(VF_ADD(q0, q1), VF_ADD(q2, q3));
    *e = VF_ADD(VF_ADD(e0, e1), VF_ADD(e2, e3));
    *m = mm;
    return i;
}

/* dev's pass over the row's whole steps, block by block, each block carried into float64.  Returns
 * where the scalar tail starts. */
GN_TARGET static inline __attribute__((always_inline)) int64_t GN_FN(dev_steps)(const GN_CT *x, int64_t d, VF vc,
                                                                                 int TRACK, VD *q_out, VD *e_out,
                                                                                 GN_VM *m_out)
{
    VD q = VD_ZERO, e = VD_ZERO;
    GN_VM m = GN_VM_ZERO;
    int64_t i = 0;
    while (i + 2 * W <= d) {
        VF qb, eb;
        i = GN_FN(dev_block)(x, i, GN_BLOCK_END(i, d), vc, TRACK, &qb, &eb, &m);
        q = VD_ADD(q, GN_WIDEN1(qb));
        e = VD_ADD(e, GN_WIDEN1(eb));
    }
    *q_out = q;
    *e_out = e;
    *m_out = m;
    return i;
}

/* One pass over the row: sum t^2 and sum t for t = x - c, c a float (the caller
 * rounds its shift to one), and max |x|.  t is exact by Sterbenz's lemma wherever
 * x is within a factor 2 of c, i.e. exactly where cancellation would hurt, and
 * exactly 0 for a constant row. */
GN_TARGET static void GN_FN(dev)(const void *xv, int64_t d, double c, double *q_out, double *e_out, double *amax)
{
    const GN_CT *x = (const GN_CT *)xv;
    VD q, e;
    GN_VM m;
    int64_t i = GN_FN(dev_steps)(x, d, VF_SET1((float)c), 1, &q, &e, &m);
#if GN_RAW16
    double mx = GN_TO_FLOAT(VI_REDUCE_MAX16(m));
#else
    double mx = VF_REDUCE_MAX(m);
#endif
    double qs = VD_REDUCE(q), es = VD_REDUCE(e);
    for (; i < d; i++) {
        float v = GN_TO_FLOAT(x[i]), t = v - (float)c;
        qs += (double)t * t;
        es += t;
        mx = fmax(mx, fabsf(v));
    }
    *q_out = qs;
    *e_out = es;
    *amax = mx;
}

/* `dev` around c = 0 without the max, for n <= 8 rows in one call: LayerNorm's first pass over a
 * block of rows (gn_normalize_rows), and over one row (gn_row_ln_fast, so a row's bits do not
 * depend on the block it falls in).  At small d a row's pass is a few vectors and a long chain of
 * reductions, which a call per row waits on.  Here 8 rows of one block each (every lane takes at
 * most GN_BLOCK terms) have their 16 sums reduced together (VF_SUM16), in float32: 4 more
 * roundings than dev's float64 carry, a relative error below 13u of the sum of |terms|; longer rows
 * take dev's loop, row by row. */
GN_TARGET static void GN_FN(dev_rows)(const void *const *rows, int n, int64_t d, double *q_out, double *e_out)
{
    GN_VM m = GN_VM_ZERO;
    int64_t i0 = 0;
    if (d <= 4 * GN_BLOCK * W) {
        VF v[16];
        float s[16];
        for (int j = 0; j < 8; j++) v[j] = v[8 + j] = VF_ZERO;
        for (int j = 0; j < n; j++)
            i0 = GN_FN(dev_block)((const GN_CT *)rows[j], 0, d, VF_ZERO, 0, &v[j], &v[8 + j], &m);
        VF_SUM16(v, s); /* each row's sums in a fixed order: the same bits whatever its neighbours */
        for (int j = 0; j < n; j++) {
            q_out[j] = s[j];
            e_out[j] = s[8 + j];
        }
    } else {
        for (int j = 0; j < n; j++) {
            VD q, e;
            i0 = GN_FN(dev_steps)((const GN_CT *)rows[j], d, VF_ZERO, 0, &q, &e, &m);
            q_out[j] = VD_REDUCE(q);
            e_out[j] = VD_REDUCE(e);
        }
    }
    (void)m;
    for (int j = 0; j < n; j++) {
        const GN_CT *x = (const GN_CT *)rows[j];
        for (int64_t i = i0; i < d; i++) { /* the tail, as dev's (x - 0 = x) */
            const float t = GN_TO_FLOAT(x[i]);
            q_out[j] += (double)t * t;
            e_out[j] += t;
        }
    }
}

GN_TARGET static double GN_FN(sumsq)(const void *xv, int64_t d)
{
    const GN_CT *x = (const GN_CT *)xv;
    VD acc = VD_ZERO;
#if GN_RAW16
    VI unused = VI_ZERO;
#else
    VF unused = VF_ZERO;
#endif
    int64_t i = 0;
    while (i + 2 * W <= d) {
        const int64_t end = GN_BLOCK_END(i, d);
        VF a0 = VF_ZERO, a1 = VF_ZERO, a2 = VF_ZERO, a3 = VF_ZERO, v0, v1, v2, v3;
        for (; i + 4 * W <= end; i += 4 * W) {
            GN_LOAD2(x + i, v0, v1, unused, 0);
            GN_LOAD2(x + i + 2 * W, v2, v3, unused, 0);
            a0 = VF_FMA(v0, v0, a0);
            a1 = VF_FMA(v1, v1, a1);
            a2 = VF_FMA(v2, v2, a2);
            a3 = VF_FMA(v3, v3, a3);
        }
        if (i + 2 * W <= end) {
            GN_LOAD2(x + i, v0, v1, unused, 0);
            a0 = VF_FMA(v0, v0, a0);
            a1 = VF_FMA(v1, v1, a1);
            i += 2 * W;
        }
        acc = VD_ADD(acc, GN_WIDEN4(a0, a1, a2, a3));
    }
    (void)unused;
    double s = VD_REDUCE(acc);
    for (; i < d; i++) { double v = GN_TO_FLOAT(x[i]); s += v * v; }
    return s;
}

/* The rotation between two rows of this type (Kahan's 2 atan2(|x^ - y^|, |x^ + y^|),
 * the float64 row function's fast twin for rows in the safe range), written as
 * 2 atan2(|x - s y|, |x + s y|) with s = |x| / |y| (a float): scaling y onto x's
 * norm instead of both onto the unit sphere is one fused multiply-add per sum and
 * element, and s = 1 exactly for identical rows, whose difference x - 1*y is then
 * exactly 0.  Pass one (sumsq2): both sums of squares; pass two (kahan): the two
 * sums.  Float32 terms carried into float64 per block (error below 9u relative, as
 * above); the angle's error is a few u in radians whatever its size, since Kahan's
 * form does not cancel. */
#define GN_BLOCK2_END(i, d) ((d) - (i) > 2 * GN_BLOCK * W ? (i) + 2 * GN_BLOCK * W : (d))

GN_TARGET static void GN_FN(sumsq2)(const void *xv, const void *yv, int64_t d, double *nx, double *ny)
{
    const GN_CT *x = (const GN_CT *)xv, *y = (const GN_CT *)yv;
    VD sx = VD_ZERO, sy = VD_ZERO;
    int64_t i = 0;
    while (i + 2 * W <= d) {
        const int64_t end = GN_BLOCK2_END(i, d);
        VF a0 = VF_ZERO, a1 = VF_ZERO, b0 = VF_ZERO, b1 = VF_ZERO;
        for (; i + 2 * W <= end; i += 2 * W) {
            const VF x0 = GN_LOAD(x + i), x1 = GN_LOAD(x + i + W), y0 = GN_LOAD(y + i), y1 = GN_LOAD(y + i + W);
            a0 = VF_FMA(x0, x0, a0);
            a1 = VF_FMA(x1, x1, a1);
            b0 = VF_FMA(y0, y0, b0);
            b1 = VF_FMA(y1, y1, b1);
        }
        sx = VD_ADD(sx, GN_WIDEN1(VF_ADD(a0, a1)));
        sy = VD_ADD(sy, GN_WIDEN1(VF_ADD(b0, b1)));
    }
    double px = VD_REDUCE(sx), py = VD_REDUCE(sy);
    for (; i < d; i++) {
        const double u = GN_TO_FLOAT(x[i]), v = GN_TO_FLOAT(y[i]);
        px += u * u;
        py += v * v;
    }
    *nx = px;
    *ny = py;
}

GN_TARGET static void GN_FN(kahan)(const void *xv, const void *yv, int64_t d, double s, const void *nextx,
                                   const void *nexty, double *qm, double *qp)
{
    const GN_CT *x = (const GN_CT *)xv, *y = (const GN_CT *)yv;
    const float sf = (float)s;
    const VF vs = VF_SET1(sf);
    VD sm = VD_ZERO, sp = VD_ZERO;
#if GN_RAW16
    VI unused = VI_ZERO;
#else
    VF unused = VF_ZERO;
#endif
    int64_t i = 0;
    while (i + 2 * W <= d) {
        const int64_t end = GN_BLOCK2_END(i, d);
        VF m0 = VF_ZERO, m1 = VF_ZERO, p0 = VF_ZERO, p1 = VF_ZERO;
        for (; i + 2 * W <= end; i += 2 * W) {
            /* both rows in GN_PAIR's lane order: the same order, so lanes still pair x_i with y_i */
            VF x0, x1, y0, y1;
            if (nextx) { /* this pass runs from cache: meanwhile, the memory fetches the next pair */
                for (int k = 0; k < (int)(2 * W * sizeof(GN_CT)); k += 64) {
                    __builtin_prefetch((const char *)nextx + i * (int64_t)sizeof(GN_CT) + k, 0, 3);
                    __builtin_prefetch((const char *)nexty + i * (int64_t)sizeof(GN_CT) + k, 0, 3);
                }
            }
            GN_LOAD2(x + i, x0, x1, unused, 0);
            GN_LOAD2(y + i, y0, y1, unused, 0);
            const VF dm0 = VF_FNMA(vs, y0, x0), dm1 = VF_FNMA(vs, y1, x1); /* x - s y, rounded once */
            const VF dp0 = VF_FMA(vs, y0, x0), dp1 = VF_FMA(vs, y1, x1);
            m0 = VF_FMA(dm0, dm0, m0);
            m1 = VF_FMA(dm1, dm1, m1);
            p0 = VF_FMA(dp0, dp0, p0);
            p1 = VF_FMA(dp1, dp1, p1);
        }
        sm = VD_ADD(sm, GN_WIDEN1(VF_ADD(m0, m1)));
        sp = VD_ADD(sp, GN_WIDEN1(VF_ADD(p0, p1)));
    }
    (void)unused;
    double s_m = VD_REDUCE(sm), s_p = VD_REDUCE(sp);
    for (; i < d; i++) {
        const float u = GN_TO_FLOAT(x[i]), v = GN_TO_FLOAT(y[i]);
        const float dm = fmaf(-sf, v, u), dp = fmaf(sf, v, u);
        s_m += (double)dm * dm;
        s_p += (double)dp * dp;
    }
    *qm = s_m;
    *qp = s_p;
}

/* The hidden row's pass of the fused site kernel (gn_site_values): what `dev` gives
 * and, for the LN-RMS gap (G9), the sums weighted by gg = w^2 and gb = w b (floats,
 * NULL: that sum is 0), all for t = x - c in float32 lanes with float64 carries:
 *   s = {sum t^2, sum t, sum gg t^2, sum gg t, sum gb t, max |x|}.
 * Two chains of W elements per step, so each accumulator takes GN_BLOCK terms per
 * lane between carries, as in `dev`; elements are loaded in order (not GN_PAIR's
 * lane order) because the weights must line up with them. */
GN_TARGET static void GN_FN(devw)(const void *xv, int64_t d, double c, const float *gg, const float *gb,
                                  double *s)
{
    const GN_CT *x = (const GN_CT *)xv;
    const VF vc = VF_SET1((float)c);
    VD q = VD_ZERO, e = VD_ZERO, w2 = VD_ZERO, w1 = VD_ZERO, b1 = VD_ZERO;
#if GN_RAW16
    VI m = VI_ZERO;
#else
    VF m = VF_ZERO;
#endif
    int64_t i = 0;
    while (i + 2 * W <= d) {
        const int64_t end = GN_BLOCK2_END(i, d);
        VF q0 = VF_ZERO, q1 = VF_ZERO, e0 = VF_ZERO, e1 = VF_ZERO, a0 = VF_ZERO, a1 = VF_ZERO;
        VF g0 = VF_ZERO, g1 = VF_ZERO, h0 = VF_ZERO, h1 = VF_ZERO;
        for (; i + 2 * W <= end; i += 2 * W) {
            VF v0 = GN_LOAD(x + i), v1 = GN_LOAD(x + i + W);
#if GN_RAW16
            m = VI_MAXMAG16(m, VI_LOADU(x + i));
#else
            m = VF_MAX(m, VF_MAX(VF_ABS(v0), VF_ABS(v1)));
#endif
            v0 = VF_SUB(v0, vc);
            v1 = VF_SUB(v1, vc);
            q0 = VF_FMA(v0, v0, q0);
            q1 = VF_FMA(v1, v1, q1);
            e0 = VF_ADD(e0, v0);
            e1 = VF_ADD(e1, v1);
            if (gg) {
                const VF u0 = VF_MUL(VF_LOADU(gg + i), v0), u1 = VF_MUL(VF_LOADU(gg + i + W), v1);
                a0 = VF_FMA(u0, v0, a0);
                a1 = VF_FMA(u1, v1, a1);
                g0 = VF_ADD(g0, u0);
                g1 = VF_ADD(g1, u1);
            }
            if (gb) {
                h0 = VF_FMA(VF_LOADU(gb + i), v0, h0);
                h1 = VF_FMA(VF_LOADU(gb + i + W), v1, h1);
            }
        }
        q = VD_ADD(q, GN_WIDEN1(VF_ADD(q0, q1)));
        e = VD_ADD(e, GN_WIDEN1(VF_ADD(e0, e1)));
        if (gg) {
            w2 = VD_ADD(w2, GN_WIDEN1(VF_ADD(a0, a1)));
            w1 = VD_ADD(w1, GN_WIDEN1(VF_ADD(g0, g1)));
        }
        if (gb) b1 = VD_ADD(b1, GN_WIDEN1(VF_ADD(h0, h1)));
    }
#if GN_RAW16
    double mx = GN_TO_FLOAT(VI_REDUCE_MAX16(m));
#else
    double mx = VF_REDUCE_MAX(m);
#endif
    double qs = VD_REDUCE(q), es = VD_REDUCE(e), w2s = VD_REDUCE(w2), w1s = VD_REDUCE(w1), b1s = VD_REDUCE(b1);
    for (; i < d; i++) {
        const float v = GN_TO_FLOAT(x[i]), t = v - (float)c;
        qs += (double)t * t;
        es += t;
        if (gg) {
            const float u = gg[i] * t;
            w2s += (double)u * t;
            w1s += u;
        }
        if (gb) b1s += (double)(gb[i] * t);
        mx = fmax(mx, fabsf(v));
    }
    s[0] = qs;
    s[1] = es;
    s[2] = w2s;
    s[3] = w1s;
    s[4] = b1s;
    s[5] = mx;
}

#include "kernels_affine.h"

#undef GN_WIDEN4
#undef GN_WIDEN1
#undef GN_LOAD2
#undef GN_BLOCK_END
#undef GN_BLOCK2_END
#undef GN_VM
#undef GN_VM_ZERO
#undef GN_FN
