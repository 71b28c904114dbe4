/* SIMD kernels for float64 rows: float64 throughout, four accumulators.
 * Included by geonorm.c once per SIMD path with the path's vector macros. */

#define GN_FN(op) GN_CAT(GN_ISA, op, f64)

GN_TARGET static double GN_FN(head)(const void *xv, int64_t n)
{
    const double *x = (const double *)xv;
    VD a = VD_ZERO;
    int64_t i = 0;
    for (; i + WD <= n; i += WD) a = VD_ADD(a, VD_LOADU(x + i));
    double s = VD_REDUCE(a);
    for (; i < n; i++) s += x[i];
    return s;
}

GN_TARGET static void GN_FN(dev)(const void *xv, int64_t d, double c, double *q_out, double *e_out, double *amax)
{
    const double *x = (const double *)xv;
    const VD vc = VD_SET1(c);
    VD qa = VD_ZERO, qb = VD_ZERO, ea = VD_ZERO, eb = VD_ZERO, ma = VD_ZERO, mb = VD_ZERO;
    int64_t i = 0;
    for (; i + 2 * WD <= d; i += 2 * WD) {
        VD xa = VD_LOADU(x + i), xb = VD_LOADU(x + i + WD);
        ma = VD_MAX(ma, VD_ABS(xa));
        mb = VD_MAX(mb, VD_ABS(xb));
        VD ta = VD_SUB(xa, vc), tb = VD_SUB(xb, vc);
        qa = VD_FMA(ta, ta, qa);
        qb = VD_FMA(tb, tb, qb);
        ea = VD_ADD(ea, ta);
        eb = VD_ADD(eb, tb);
    }
    double qs = VD_REDUCE(VD_ADD(qa, qb)), es = VD_REDUCE(VD_ADD(ea, eb)), m = VD_REDUCE_MAX(VD_MAX(ma, mb));
    for (; i < d; i++) {
        double t = x[i] - c;
        qs += t * t;
        es += t;
        m = fmax(m, fabs(x[i]));
    }
    *q_out = qs;
    *e_out = es;
    *amax = m;
}

GN_TARGET static double GN_FN(sumsq)(const void *xv, int64_t d)
{
    const double *x = (const double *)xv;
    VD a = VD_ZERO, b = VD_ZERO;
    int64_t i = 0;
    for (; i + 2 * WD <= d; i += 2 * WD) {
        VD va = VD_LOADU(x + i), vb = VD_LOADU(x + i + WD);
        a = VD_FMA(va, va, a);
        b = VD_FMA(vb, vb, b);
    }
    double s = VD_REDUCE(VD_ADD(a, b));
    for (; i < d; i++) s += x[i] * x[i];
    return s;
}

/* stream: non-temporal stores, as in kernels_affine.h */
GN_TARGET static void GN_FN(affine)(const void *xv, void *ov, int64_t d, double mu, double scale,
                                    const void *wv, const void *bv, int stream)
{
    const double *x = (const double *)xv, *w = (const double *)wv, *b = (const double *)bv;
    double *o = (double *)ov;
    const VD vmu = VD_SET1(mu), vs = VD_SET1(scale);
    int64_t i = 0;
#define GN_AFFINE_VEC(i) /* the row's WD elements at i */                                             \
    (t = VD_MUL(VD_SUB(VD_LOADU(x + (i)), vmu), vs), t = w ? VD_MUL(t, VD_LOADU(w + (i))) : t, \
     b ? VD_ADD(t, VD_LOADU(b + (i))) : t)
#define GN_AFFINE_ONE(i)                  \
    do {                                  \
        double v_ = (x[i] - mu) * scale;  \
        if (w) v_ *= w[i];                \
        if (b) v_ += b[i];                \
        o[i] = v_;                        \
    } while (0)
    VD t;
    if (stream && (uintptr_t)o % 64 == 0 && d % 8 == 0) /* whole 64-byte lines only, as kernels_affine.h */
        for (; i + WD <= d; i += WD) VD_STREAM(o + i, GN_AFFINE_VEC(i));
    for (; i + WD <= d; i += WD) VD_STOREU(o + i, GN_AFFINE_VEC(i));
    for (; i < d; i++) GN_AFFINE_ONE(i);
#undef GN_AFFINE_VEC
#undef GN_AFFINE_ONE
}

#undef GN_FN
