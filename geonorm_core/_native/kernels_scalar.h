/* The scalar baseline: plain loops in float64 with compensated sums, for one element type.
 * Included once per dtype by geonorm.c with GN_T (name), GN_CT (C type),
 * GN_TO_DOUBLE(v) and GN_FROM_DOUBLE(v) defined.  Also the obviously-correct
 * reference the SIMD paths are tested against (through the Python oracle). */

#define GN_FN(op) GN_CAT(scalar, op, GN_T)

static double GN_FN(head)(const void *xv, int64_t n)
{
    const GN_CT *x = (const GN_CT *)xv;
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += GN_TO_DOUBLE(x[i]);
    return s;
}

static void GN_FN(dev)(const void *xv, int64_t d, double c, double *q, double *e, double *amax)
{
    const GN_CT *x = (const GN_CT *)xv;
    gn_ksum qs = {0.0, 0.0}, es = {0.0, 0.0};
    double m = 0.0;
    for (int64_t i = 0; i < d; i++) {
        double v = GN_TO_DOUBLE(x[i]), t = v - c;
        gn_kadd(&qs, t * t);
        gn_kadd(&es, t);
        m = fmax(m, fabs(v));
    }
    *q = gn_kval(qs);
    *e = gn_kval(es);
    *amax = m;
}

static double GN_FN(sumsq)(const void *xv, int64_t d)
{
    const GN_CT *x = (const GN_CT *)xv;
    gn_ksum s = {0.0, 0.0};
    for (int64_t i = 0; i < d; i++) gn_kadd(&s, GN_TO_DOUBLE(x[i]) * GN_TO_DOUBLE(x[i]));
    return gn_kval(s);
}

static void GN_FN(affine)(const void *xv, void *ov, int64_t d, double mu, double scale,
                          const void *wv, const void *bv, int stream)
{
    (void)stream; /* plain stores on the baseline path */
    const GN_CT *x = (const GN_CT *)xv;
    GN_CT *o = (GN_CT *)ov;
    for (int64_t i = 0; i < d; i++) {
        double t = (GN_TO_DOUBLE(x[i]) - mu) * scale;
        if (wv) t *= GN_WEIGHT(wv, i);
        if (bv) t += GN_WEIGHT(bv, i);
        o[i] = GN_FROM_DOUBLE(t);
    }
}

#undef GN_FN
