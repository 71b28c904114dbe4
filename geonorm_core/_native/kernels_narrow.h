/* SIMD kernels for a 16/32-bit element type, computing in float32 with float64
 * carries.  Included by geonorm.c once per (SIMD path, dtype) with the path's
 * vector macros and GN_T, GN_CT, GN_LOAD, GN_STORE, GN_TO_FLOAT, GN_FROM_FLOAT.
 *
 * Accuracy: the sum of x is carried in float64.  In the deviation pass, float32
 * accumulators take at most 8 terms per lane (GN_BLOCK) before they are widened
 * into float64, so a block's relative error is below 7u (u = 2^-24), and the
 * deviation t = x - c from the float shift c is exact by Sterbenz's lemma exactly
 * where cancellation would hurt (|mean| >> std).  The caller turns (sum; sum t^2,
 * sum t) into mean and perp norm with the corrected two-pass formula, which holds
 * for any shift c. */

#define GN_FN(op) GN_CAT(GN_ISA, op, GN_T)

/* Widen two float32 accumulators into one float64 vector. */
#define GN_WIDEN2(a, b) VD_ADD(VD_ADD(VD_LO(a), VD_HI(a)), VD_ADD(VD_LO(b), VD_HI(b)))

/* sum x in float64 (exact for constant rows, so their shift is exact too) and max |x|. */
GN_TARGET static double GN_FN(sum)(const void *xv, int64_t d, double *amax)
{
    const GN_CT *x = (const GN_CT *)xv;
    VD a0 = VD_ZERO, a1 = VD_ZERO, b0 = VD_ZERO, b1 = VD_ZERO;
    VF ma = VF_ZERO, mb = VF_ZERO;
    int64_t i = 0;
    for (; i + 2 * W <= d; i += 2 * W) {
        VF va = GN_LOAD(x + i), vb = GN_LOAD(x + i + W);
        a0 = VD_ADD(a0, VD_LO(va));
        a1 = VD_ADD(a1, VD_HI(va));
        b0 = VD_ADD(b0, VD_LO(vb));
        b1 = VD_ADD(b1, VD_HI(vb));
        ma = VF_MAX(ma, VF_ABS(va));
        mb = VF_MAX(mb, VF_ABS(vb));
    }
    if (i + W <= d) {
        VF va = GN_LOAD(x + i);
        a0 = VD_ADD(a0, VD_LO(va));
        a1 = VD_ADD(a1, VD_HI(va));
        ma = VF_MAX(ma, VF_ABS(va));
        i += W;
    }
    double s = VD_REDUCE(VD_ADD(VD_ADD(a0, a1), VD_ADD(b0, b1))), m = VF_REDUCE_MAX(VF_MAX(ma, mb));
    for (; i < d; i++) {
        float v = GN_TO_FLOAT(x[i]);
        s += v;
        m = fmax(m, fabsf(v));
    }
    *amax = m;
    return s;
}

/* sum t^2 and sum t for t = x - c, c a float (the caller rounds its shift to one):
 * t is exact by Sterbenz's lemma wherever x is within a factor 2 of c, i.e. exactly
 * where cancellation would hurt, and exactly 0 for a constant row. */
GN_TARGET static void GN_FN(dev)(const void *xv, int64_t d, double c, double *q_out, double *e_out)
{
    const GN_CT *x = (const GN_CT *)xv;
    const VF vc = VF_SET1((float)c);
    VD q = VD_ZERO, e = VD_ZERO;
    int64_t i = 0;
    while (i + W <= d) {
        int64_t end = d - i > 2 * GN_BLOCK * W ? i + 2 * GN_BLOCK * W : d;
        VF qa = VF_ZERO, qb = VF_ZERO, ea = VF_ZERO, eb = VF_ZERO;
        for (; i + 2 * W <= end; i += 2 * W) {
            VF ta = VF_SUB(GN_LOAD(x + i), vc);
            VF tb = VF_SUB(GN_LOAD(x + i + W), vc);
            qa = VF_FMA(ta, ta, qa);
            qb = VF_FMA(tb, tb, qb);
            ea = VF_ADD(ea, ta);
            eb = VF_ADD(eb, tb);
        }
        if (i + W <= end) {
            VF ta = VF_SUB(GN_LOAD(x + i), vc);
            qa = VF_FMA(ta, ta, qa);
            ea = VF_ADD(ea, ta);
            i += W;
        }
        q = VD_ADD(q, GN_WIDEN2(qa, qb));
        e = VD_ADD(e, GN_WIDEN2(ea, eb));
    }
    double qs = VD_REDUCE(q), es = VD_REDUCE(e);
    for (; i < d; i++) {
        float t = GN_TO_FLOAT(x[i]) - (float)c;
        qs += (double)t * t;
        es += t;
    }
    *q_out = qs;
    *e_out = es;
}

GN_TARGET static double GN_FN(sumsq)(const void *xv, int64_t d)
{
    const GN_CT *x = (const GN_CT *)xv;
    VD acc = VD_ZERO;
    int64_t i = 0;
    while (i + W <= d) {
        int64_t end = d - i > 2 * GN_BLOCK * W ? i + 2 * GN_BLOCK * W : d;
        VF a = VF_ZERO, b = VF_ZERO;
        for (; i + 2 * W <= end; i += 2 * W) {
            VF va = GN_LOAD(x + i), vb = GN_LOAD(x + i + W);
            a = VF_FMA(va, va, a);
            b = VF_FMA(vb, vb, b);
        }
        if (i + W <= end) { VF va = GN_LOAD(x + i); a = VF_FMA(va, va, a); i += W; }
        acc = VD_ADD(acc, GN_WIDEN2(a, b));
    }
    double s = VD_REDUCE(acc);
    for (; i < d; i++) { double v = GN_TO_FLOAT(x[i]); s += v * v; }
    return s;
}

/* out = ((x - mu) * scale) * w + b, in float32, rounded once to the output type. */
GN_TARGET static void GN_FN(affine)(const void *xv, void *ov, int64_t d, double mu, double scale,
                                    const void *wv, const void *bv)
{
    const GN_CT *x = (const GN_CT *)xv;
    GN_CT *o = (GN_CT *)ov;
    const float *w = (const float *)wv, *b = (const float *)bv;
    const float hi = (float)mu, lo = (float)(mu - (double)hi), s = (float)scale;
    const VF vhi = VF_SET1(hi), vlo = VF_SET1(lo), vs = VF_SET1(s);
    int64_t i = 0;
    for (; i + W <= d; i += W) {
        VF t = VF_MUL(VF_SUB(VF_SUB(GN_LOAD(x + i), vhi), vlo), vs);
        if (w) t = VF_MUL(t, VF_LOADU(w + i));
        if (b) t = VF_ADD(t, VF_LOADU(b + i));
        GN_STORE(o + i, t);
    }
    for (; i < d; i++) {
        float t = ((GN_TO_FLOAT(x[i]) - hi) - lo) * s;
        if (w) t *= w[i];
        if (b) t += b[i];
        o[i] = GN_FROM_FLOAT(t);
    }
}

#undef GN_WIDEN2
#undef GN_FN
